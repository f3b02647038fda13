"""Helpers for the real multi-process ROS 2 tests: a probe node in the test process, node
processes started with the project's own launcher, lifecycle calls, bounded waits."""

from __future__ import annotations

import time
from pathlib import Path

import rclpy
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.executors import SingleThreadedExecutor

from scarls.bringup import NodeSpec, default_params_file
from scarls.bringup.launcher import ProcessGroup, ros_env


class Probe:
    """A node in the test process with a spinning helper and bounded waits."""

    def __init__(self, namespace: str, name: str = 'probe') -> None:
        self.node = rclpy.create_node(name, namespace=namespace)
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)

    def spin_for(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.executor.spin_once(timeout_sec=0.02)

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return
            self.executor.spin_once(timeout_sec=0.02)
        if not predicate():
            raise AssertionError(f'timed out after {timeout:.0f} s waiting for {what}')

    def call(self, srv_type, name: str, request, timeout: float = 10.0):
        client = self.node.create_client(srv_type, name)
        try:
            self.wait_for(client.service_is_ready, timeout, f'service {name}')
            future = client.call_async(request)
            self.wait_for(future.done, timeout, f'response of {name}')
            return future.result()
        finally:
            self.node.destroy_client(client)

    def lifecycle(self, node_name: str, transition_id: int, timeout: float = 60.0) -> bool:
        # generous: a CI run once got no configure response within 15 s (a test failed)
        request = ChangeState.Request()
        request.transition.id = transition_id
        return self.call(ChangeState, f'{node_name}/change_state', request, timeout).success

    def lifecycle_state(self, node_name: str, timeout: float = 30.0) -> str:
        return self.call(GetState, f'{node_name}/get_state', GetState.Request(),
                         timeout).current_state.label

    def configure_and_activate(self, node_name: str) -> None:
        assert self.lifecycle(node_name, Transition.TRANSITION_CONFIGURE), \
            f'{node_name} failed to configure'
        assert self.lifecycle(node_name, Transition.TRANSITION_ACTIVATE), \
            f'{node_name} failed to activate'

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()


def start_nodes(group: ProcessGroup, specs: list[NodeSpec]) -> None:
    for spec in specs:
        group.start(spec, str(default_params_file()))


def new_group(domain_id: int, log_dir: Path) -> ProcessGroup:
    return ProcessGroup(ros_env(domain_id), log_dir)


def log_text(group: ProcessGroup, name: str) -> str:
    for node in group.nodes:
        if node.spec.name == name:
            return node.log_path.read_text(errors='replace')
    raise KeyError(name)
