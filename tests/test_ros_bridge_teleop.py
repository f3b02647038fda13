"""Other backends and teleop sources in real processes: the ros2_bridge driver against a robot
that speaks ROS 2 (played by the test), the leader-arm teleop, the keyboard teleop through a
pseudo-terminal, and the scripted operator's wait for the recorder."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import time

import numpy as np
import pytest
from rosutil import Probe, start_nodes
from scarls_interfaces.msg import ActorState, EcuStatus, OperatorSignal
from sensor_msgs.msg import JointState

from scarls.bringup import default_params_file, ecu_nodes
from scarls.bringup.launcher import parent_death_preexec
from scarls.robot import JOINT_NAMES
from scarls.ros import qos
from scarls.ros.conversions import joint_state_to_msg, msg_to_positions
from scarls.sim.world import HOME

pytestmark = pytest.mark.ros
NS = 'bridgetest'
THEIRS = [f'g1_{name}' for name in reversed(JOINT_NAMES)]   # another order, other names


def test_ros2_bridge_maps_names_and_forwards_commands(ros, node_group):
    """The default robot behind the bridge with one JointState command topic for all joints
    (the backend's settings through backend_overrides); the agibot_g1 robot with one
    controller per group against a ros2_control robot: test_ros_bridge.py."""
    overrides = {'state_topic': '/g1/joint_states', 'state_qos': 'reliable',
                 'command_topic': '/g1/joint_command', 'command_type': 'joint_state',
                 'joint_names_theirs': [f'g1_{n}' for n in JOINT_NAMES]}
    spec = ecu_nodes(NS, backend='ros2_bridge', extra={'driver': {
        'backend_overrides': json.dumps(overrides)}})[0]
    probe = Probe(NS)
    ours, theirs_cmd = [], []
    n = probe.node
    robot_pub = n.create_publisher(JointState, '/g1/joint_states', qos.JOINT_STATE)
    n.create_subscription(JointState, '/g1/joint_command', theirs_cmd.append, qos.COMMAND)
    n.create_subscription(JointState, 'joint_states',
                          lambda m: ours.append(msg_to_positions(m, JOINT_NAMES)),
                          qos.JOINT_STATE)
    cmd_pub = n.create_publisher(JointState, 'joint_command', qos.COMMAND)
    robot_q = HOME.copy()
    robot_q[3] += 0.1
    reported = dict(zip([f'g1_{n}' for n in JOINT_NAMES], robot_q, strict=True))

    def robot_state() -> JointState:
        return joint_state_to_msg(THEIRS, [reported[name] for name in THEIRS],
                                  n.get_clock().now().to_msg())
    try:
        start_nodes(node_group, [spec])
        probe.wait_for(lambda: robot_pub.get_subscription_count() > 0, 20, 'the bridge driver')
        for _ in range(60):   # the robot reports its state in its own names and order
            robot_pub.publish(robot_state())
            probe.spin_for(1 / 30)
            if ours:
                break
        assert ours, 'the driver republishes the bridged state'
        np.testing.assert_allclose(ours[-1], robot_q, atol=1e-9)
        target = robot_q.copy()
        target[0] += 0.01   # small: within the per-tick velocity limit
        for _ in range(30):
            robot_pub.publish(robot_state())
            cmd_pub.publish(joint_state_to_msg(JOINT_NAMES, target,
                                               n.get_clock().now().to_msg()))
            probe.spin_for(1 / 30)
        assert theirs_cmd, 'commands reach the robot'
        last = theirs_cmd[-1]
        assert list(last.name) == [f'g1_{n}' for n in JOINT_NAMES]
        np.testing.assert_allclose(last.position, target, atol=1e-9)
    finally:
        probe.close()


def test_leader_arm_becomes_the_teleop_command(ros, node_group):
    spec = ecu_nodes(NS, teleop='leader')[3]
    assert spec.name == 'teleop'
    probe = Probe(NS, 'probe_leader')
    got = []
    leader = probe.node.create_publisher(JointState, 'leader/joint_states', qos.JOINT_STATE)
    probe.node.create_subscription(JointState, 'teleop/command',
                                   lambda m: got.append(msg_to_positions(m, JOINT_NAMES)),
                                   qos.COMMAND)
    q = HOME + 0.05
    try:
        start_nodes(node_group, [spec])
        probe.wait_for(lambda: leader.get_subscription_count() > 0, 20, 'the teleop node')
        for _ in range(30):
            leader.publish(joint_state_to_msg(JOINT_NAMES, q, probe.node.get_clock().now()
                                              .to_msg()))
            probe.spin_for(1 / 30)
        assert got
        np.testing.assert_allclose(got[-1], q, atol=1e-12)
    finally:
        probe.close()


def test_keyboard_operator_sends_signals(ros, tmp_path, domain_id):
    spec = ecu_nodes(NS, teleop='keyboard')[3]
    probe = Probe(NS, 'probe_keys')
    signals = []
    probe.node.create_subscription(OperatorSignal, 'operator/signal', signals.append, qos.EVENTS)
    master, slave = pty.openpty()
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, '-m', spec.module,
                             *spec.ros_args(str(default_params_file()))],
                            stdin=slave, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=env, start_new_session=True, preexec_fn=parent_death_preexec())
    os.close(slave)
    try:
        probe.wait_for(lambda: probe.node.count_publishers('operator/signal') > 0, 20,
                       'the keyboard teleop')
        probe.spin_for(1.0)
        for key in 'sir':
            os.write(master, key.encode())
            probe.spin_for(0.2)
        deadline = time.monotonic() + 10
        while len(signals) < 3 and time.monotonic() < deadline:
            probe.spin_for(0.1)
        assert [s.signal for s in signals[:3]] == [OperatorSignal.START, OperatorSignal.INTERVENE,
                                                   OperatorSignal.RELEASE]
        assert all(s.source == 'keyboard' for s in signals)
    finally:
        proc.send_signal(2)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        os.close(master)
        probe.close()


def test_scripted_operator_starts_only_once_the_recorder_is_ready(ros, node_group):
    """The first START waits for this ECU's heartbeat to say ``recording_ready`` (steps and
    every camera arrive at the scheduler): no START while it says not ready, one once it does.
    The test plays the actor (IDLE) and the scheduler's heartbeat."""
    spec = ecu_nodes(NS, extra={'teleop': {'wait_for_recorder_s': 600.0}})[3]
    assert spec.name == 'teleop'
    probe = Probe(NS, 'probe_start')
    n = probe.node
    signals: list = []
    n.create_subscription(OperatorSignal, 'operator/signal', signals.append, qos.EVENTS)
    state = n.create_publisher(ActorState, 'actor/state', qos.STATE)
    status = n.create_publisher(EcuStatus, '/fleet/status', qos.EVENTS)

    def beat(ready: bool, ecu: str = NS) -> None:
        msg = EcuStatus()
        msg.ecu_id, msg.phase, msg.recording_ready = ecu, 'IDLE', ready
        status.publish(msg)

    def starts() -> list:
        return [s for s in signals if s.signal == OperatorSignal.START]

    idle = ActorState()
    idle.phase, idle.event = 'IDLE', 'RESET_DONE'
    try:
        start_nodes(node_group, [spec])
        probe.wait_for(lambda: state.get_subscription_count() > 0 and
                       status.get_subscription_count() > 0 and
                       n.count_publishers('operator/signal') > 0, 60, 'the operator')
        state.publish(idle)
        # not ready, or another ECU ready: the operator waits (5 heartbeats)
        for k in range(10):
            beat(False) if k % 2 else beat(True, ecu='another_ecu')
            probe.spin_for(0.5)
        assert not starts(), signals
        probe.wait_for(lambda: (beat(True), probe.spin_for(0.2), starts())[2], 60,
                       'a START once the recorder is ready')
        assert len(starts()) == 1
    finally:
        probe.close()
