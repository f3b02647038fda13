"""The driver's safety behaviour with a robot whose reset takes seconds: an ARX5 pair backed by
the test double of the vendor SDK (tests/fakes/arx5_interface.py), in a real driver process.

E-stop wins over a running reset; a reset is refused while e-stopped; a released e-stop does not
jump to a command streamed before the stop (it holds the measured pose until a fresh command);
the driver publishes its safety state on driver/state.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosutil import Probe, start_nodes
from scarls_interfaces.msg import DriverState
from sensor_msgs.msg import JointState
from std_srvs.srv import SetBool, Trigger

from scarls.bringup import NodeSpec
from scarls.robot import load_robot
from scarls.ros import qos
from scarls.ros.conversions import joint_state_to_msg, msg_to_positions

pytestmark = pytest.mark.ros
NS = 'safe'
FAKES = Path(__file__).resolve().parent / 'fakes'


@pytest.fixture
def arx_driver(ros, node_group, tmp_path):
    """A driver process on an ARX5 pair (fake SDK) whose home is far from the start pose, so
    that a reset moves for seconds."""
    data = load_robot('arx5_pair').to_dict()
    data['name'] = 'arx5_pair_test'
    data['cameras'] = []
    for arm in data['arms']:
        arm['home'] = [0.0, 1.2, 1.2, 0.0, 0.0, 0.0]
    data['backend'].update({'reset_max_velocity': 0.25, 'connect_timeout_s': 60.0})
    path = tmp_path / 'arx5_pair_test.yaml'
    path.write_text(yaml.safe_dump(data))
    node_group.env = dict(node_group.env, PYTHONPATH=os.pathsep.join(
        [str(FAKES), node_group.env.get('PYTHONPATH', '')]))
    spec = NodeSpec('driver', 'scarls.driver.node', NS,
                    {'robot': str(path), 'ecu_id': NS, 'autostart': False})
    start_nodes(node_group, [spec])
    probe = Probe(NS, 'safety_probe')
    robot = load_robot(str(path))
    seen = {'q': None, 'states': []}

    def on_js(msg):
        seen['q'] = msg_to_positions(msg, robot.joint_names)

    probe.node.create_subscription(JointState, 'joint_states', on_js, qos.JOINT_STATE)
    probe.node.create_subscription(DriverState, 'driver/state',
                                   lambda m: seen['states'].append(m), qos.STATE)
    probe.configure_and_activate('driver')
    probe.wait_for(lambda: seen['q'] is not None, 30, 'joint states')
    try:
        yield probe, robot, seen
    finally:
        probe.close()


def _call_async(probe, srv_type, name, request):
    client = probe.node.create_client(srv_type, name)
    probe.wait_for(client.service_is_ready, 20, f'service {name}')
    return client.call_async(request)


def test_estop_wins_over_a_running_reset_and_a_release_waits_for_a_fresh_command(arx_driver):
    probe, robot, seen = arx_driver
    start = seen['q'].copy()
    home = robot.home
    assert np.abs(start - home).max() > 1.0
    reset = _call_async(probe, Trigger, 'driver/reset_pose', Trigger.Request())
    probe.wait_for(lambda: seen['states'] and seen['states'][-1].state == 'resetting', 20,
                   'the driver to report the reset')
    probe.wait_for(lambda: np.abs(seen['q'] - start).max() > 0.05, 20, 'the reset to move')
    # e-stop in the middle of the motion: answered while the reset is still running
    stop = probe.call(SetBool, 'driver/estop', SetBool.Request(data=True), timeout=20)
    assert stop.success and 'e-stop engaged' in stop.message
    probe.wait_for(reset.done, 20, 'the aborted reset to answer')
    assert reset.result().success is False and 'abort' in reset.result().message.lower()
    probe.wait_for(lambda: seen['states'][-1].state == 'estopped', 20, 'estopped state')

    def settled() -> bool:   # joint states still in flight from the last tick of motion
        before = seen['q'].copy()
        probe.spin_for(0.2)
        return np.allclose(seen['q'], before, atol=1e-4)
    probe.wait_for(settled, 20, 'the arms to stop')
    stopped_at = seen['q'].copy()
    assert np.abs(stopped_at - home).max() > 0.2, 'the reset ran to the end despite the e-stop'
    probe.spin_for(1.0)
    np.testing.assert_allclose(seen['q'], stopped_at, atol=1e-3)   # latched, not moving
    # no reset while e-stopped
    refused = probe.call(Trigger, 'driver/reset_pose', Trigger.Request(), timeout=20)
    assert refused.success is False and 'e-stop engaged' in refused.message
    # a command streamed while stopped must not be followed after the release
    pub = probe.node.create_publisher(JointState, 'joint_command', qos.COMMAND)
    stale = stopped_at.copy()
    stale[1] += 0.4
    for _ in range(10):
        pub.publish(joint_state_to_msg(robot.joint_names, stale,
                                       probe.node.get_clock().now().to_msg()))
        probe.spin_for(0.03)
    released = probe.call(SetBool, 'driver/estop', SetBool.Request(data=False), timeout=20)
    assert released.success and 'fresh command' in released.message
    probe.wait_for(lambda: seen['states'][-1].state == 'holding', 20, 'holding after release')
    assert 'fresh command' in seen['states'][-1].reason
    probe.spin_for(1.0)
    np.testing.assert_allclose(seen['q'], stopped_at, atol=1e-3)
    # a fresh command moves the arm again (the gains were set again on release)
    fresh = stopped_at.copy()
    fresh[1] += 0.1

    def moved() -> bool:
        pub.publish(joint_state_to_msg(robot.joint_names, fresh,
                                       probe.node.get_clock().now().to_msg()))
        return abs(seen['q'][1] - fresh[1]) < 0.02

    probe.wait_for(moved, 30, 'the arm to follow a fresh command')
    assert seen['states'][-1].state in ('ok', 'clamped')
    assert seen['states'][-1].estopped_ticks > 0


def test_reset_completes_without_an_estop(arx_driver):
    probe, robot, seen = arx_driver
    done = probe.call(Trigger, 'driver/reset_pose', Trigger.Request(), timeout=60)
    assert done.success, done.message
    np.testing.assert_allclose(seen['q'][robot.arm_slice('left')],
                               robot.home[robot.arm_slice('left')], atol=0.02)
