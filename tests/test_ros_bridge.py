"""The ros2_bridge driver against a ros2_control robot, both in real processes: the fake robot
(tests/fakes/ros2_control_robot.py: the 7-DoF simulator behind agibot_g1's topics, names and
units) and the driver node with robot ``agibot_g1``."""

from __future__ import annotations

import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rosutil import Probe, log_text, start_nodes
from sensor_msgs.msg import CompressedImage, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from scarls.bringup import NodeSpec, ecu_nodes
from scarls.robot import load_robot
from scarls.ros import qos
from scarls.ros.conversions import joint_state_to_msg, msg_to_positions

pytestmark = pytest.mark.ros
NS = 'g1bridge'
G1 = load_robot('agibot_g1')
THEIRS = tuple(G1.backend_params['joint_names_theirs'])
GRIP_OPEN = 0.8                 # agibot_g1 grippers: 0 .. 0.8 rad
FAKE = 'ros2_control_robot'
TESTS = Path(__file__).resolve().parent


def start_robot_and_driver(node_group, **fake_params) -> None:
    """The fake robot (its own process, tests/ on its path) and the agibot_g1 driver (state
    timeout 1 s: a loaded test machine must not look like a dead robot)."""
    env = node_group.env
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(TESTS), env.get('PYTHONPATH')) if p)
    node_group.start(NodeSpec(FAKE, 'fakes.ros2_control_robot', '', fake_params), None)
    driver = ecu_nodes(NS, robot='agibot_g1', extra={'driver': {
        'backend_overrides': '{state_timeout_s: 1.0}'}})[0]
    start_nodes(node_group, [driver])


class Watch:
    """What the probe sees: the driver's joint states (ours), the robot's (theirs), faults."""

    def __init__(self, probe: Probe) -> None:
        n = probe.node
        self.ours: list[JointState] = []
        self.theirs: list[JointState] = []
        self.faults: list[str] = []
        n.create_subscription(JointState, 'joint_states', self.ours.append, qos.JOINT_STATE)
        n.create_subscription(JointState, '/joint_states', self.theirs.append,
                              qos.JOINT_STATE_ANY)
        n.create_subscription(String, 'driver/fault', lambda m: self.faults.append(m.data),
                              qos.LATCHED)
        self.cmd = n.create_publisher(JointState, 'joint_command', qos.COMMAND)
        self.node = n

    def robot_q(self) -> np.ndarray:
        """The fake robot's last complete joint state, in the robot's order and units (NaN
        kept)."""
        for m in reversed(self.theirs):
            where = {name: i for i, name in enumerate(m.name)}
            if all(name in where for name in THEIRS):
                return np.array([m.position[where[name]] for name in THEIRS])
        raise AssertionError('no complete joint state from the robot')

    def send(self, q: np.ndarray) -> None:
        self.cmd.publish(joint_state_to_msg(G1.joint_names, q,
                                            self.node.get_clock().now().to_msg()))


def set_fault(probe: Probe, fault: str, every: int = 1) -> None:
    req = SetParameters.Request()
    req.parameters = [
        Parameter(name='fault', value=ParameterValue(type=ParameterType.PARAMETER_STRING,
                                                     string_value=fault)),
        Parameter(name='fault_every', value=ParameterValue(
            type=ParameterType.PARAMETER_INTEGER, integer_value=every))]
    res = probe.call(SetParameters, f'/{FAKE}/set_parameters', req)
    assert all(r.successful for r in res.results), res


def drive_until(probe: Probe, watch: Watch, target: np.ndarray, reached, timeout: float,
                what: str) -> None:
    """Send ``target`` at ~30 Hz until ``reached()`` (bounded)."""
    def step() -> bool:
        watch.send(target)
        probe.spin_for(1 / 30)
        return reached()
    probe.wait_for(step, timeout, what)


def test_driver_bridges_the_fake_ros2_control_robot(ros, node_group):
    """Names and units both ways, per-controller commands that move the robot although its
    clock is 30 s ahead of ours (trajectories stamped 0), velocities passed through, the reset
    pose, and the robot's compressed cameras."""
    probe = Probe(NS)
    watch = Watch(probe)
    frames = []
    probe.node.create_subscription(CompressedImage, G1.camera('top').topic_name,
                                   frames.append, qos.CAMERA_LATEST)
    try:
        start_robot_and_driver(node_group, clock_offset_s=30.0)
        probe.wait_for(lambda: len(watch.ours) >= 5 and watch.theirs, 30,
                       'joint states of the driver and of the robot')
        assert list(watch.ours[-1].name) == list(G1.joint_names)     # our names, 16 joints
        assert set(THEIRS) <= set(watch.theirs[-1].name)            # the robot's names
        ours = msg_to_positions(watch.ours[-1], G1.joint_names)
        robot = watch.robot_q()
        arm = [i for i in range(16) if i not in G1.gripper_indices]
        np.testing.assert_allclose(ours[arm], robot[arm], atol=1e-6)   # not moving yet
        grips = list(G1.gripper_indices)
        np.testing.assert_allclose(ours[grips], robot[grips] / GRIP_OPEN, atol=1e-6)
        assert robot[grips] == pytest.approx([GRIP_OPEN] * 2)            # open, in radians
        probe.wait_for(lambda: watch.faults and watch.faults[-1] == '', 10, 'no fault')

        target = ours.copy()
        j = G1.arm_slice('right').start + 1           # right arm joint 2 (a trajectory group)
        target[j] += 0.3
        target[G1.gripper_index('left')] = 0.25       # a Float64MultiArray group
        n_before = len(watch.ours)
        drive_until(probe, watch, target,
                    lambda: abs(watch.robot_q()[j] - target[j]) < 0.01
                    and abs(watch.robot_q()[7] - 0.25 * GRIP_OPEN) < 0.01, 30,
                    'the fake robot to reach the commanded pose')
        assert abs(watch.robot_q()[G1.gripper_index('right')] - GRIP_OPEN) < 1e-6
        moving = [abs(m.velocity[j]) for m in watch.ours[n_before:] if len(m.velocity) == 16]
        assert max(moving) > 0.1, 'the robot\'s velocities reach our joint states'
        log = log_text(node_group, FAKE)
        assert 'rejected' not in log, log[-2000:]

        res = probe.call(Trigger, 'driver/reset_pose', Trigger.Request())
        assert res.success, res.message
        home = np.array(G1.home)
        home[grips] *= GRIP_OPEN
        probe.wait_for(lambda: np.allclose(watch.robot_q(), home, atol=1e-3), 30,
                       'the robot at the home pose of the description')

        probe.wait_for(lambda: frames, 10, 'a compressed camera frame')
        assert frames[-1].format == 'rgb8; jpeg compressed bgr8'
        img = cv2.imdecode(np.frombuffer(bytes(frames[-1].data), np.uint8), cv2.IMREAD_COLOR)
        assert img is not None and img.shape == (*G1.image_shape, 3)
        assert not node_group.dead()
    finally:
        probe.close()


def test_bad_or_stale_robot_state_holds_and_reports(ros, node_group):
    probe = Probe(NS, 'probe_faults')
    watch = Watch(probe)
    try:
        start_robot_and_driver(node_group, cameras=False)
        probe.wait_for(lambda: len(watch.ours) >= 5 and watch.theirs, 30, 'joint states')
        probe.wait_for(lambda: watch.faults and watch.faults[-1] == '', 10, 'no fault')
        home = msg_to_positions(watch.ours[-1], G1.joint_names)

        # every 2nd message late (and offset) or missing a joint: ignored, the rest flows
        for fault in ('out_of_order', 'drop_joint'):
            set_fault(probe, fault, every=2)
            n = len(watch.ours)
            probe.wait_for(lambda n=n: len(watch.ours) >= n + 30, 10,
                           f'joint states with {fault} messages in between')
            for m in watch.ours[n:]:
                q = msg_to_positions(m, G1.joint_names)
                np.testing.assert_allclose(q, home, atol=1e-6)   # the robot does not move
        assert watch.faults[-1] == ''
        set_fault(probe, '')

        for fault, expect in (('nan', 'NaN'), ('stale', 'is the robot publishing')):
            set_fault(probe, fault)
            probe.wait_for(lambda e=expect: watch.faults and e in watch.faults[-1], 15,
                           f'the driver to report the {fault} state')
            assert 'stale' in watch.faults[-1]
            before, robot_before = len(watch.ours), watch.robot_q() if fault == 'nan' else None
            moved = home.copy()
            moved[0] += 0.2
            for _ in range(30):           # commands while faulted: held, nothing published
                watch.send(moved)
                probe.spin_for(1 / 30)
            assert len(watch.ours) == before, 'no joint states from a faulted robot'
            if robot_before is not None:    # the robot still reports (NaN aside): unmoved
                np.testing.assert_allclose(watch.robot_q()[1:], robot_before[1:], atol=1e-9)
            set_fault(probe, '')
            probe.wait_for(lambda b=before: watch.faults[-1] == '' and len(watch.ours) > b, 15,
                           f'the driver to recover from the {fault} state')
            assert not node_group.dead()
        log = log_text(node_group, 'driver')
        assert 'robot joint state ignored' in log and 'robot fault' in log
        assert 'fault cleared' in log

        # and the robot obeys again
        target = msg_to_positions(watch.ours[-1], G1.joint_names)
        target[0] += 0.2
        drive_until(probe, watch, target, lambda: abs(watch.robot_q()[0] - target[0]) < 0.01,
                    30, 'the robot to move after the faults')
        assert not node_group.dead()
        assert all(math.isfinite(x) for m in watch.ours for x in m.position)
    finally:
        probe.close()
