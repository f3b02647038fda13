"""The driver node in its own process, driven over DDS: limits, watchdog, e-stop, reset, bad
commands and backends that cannot start."""

from __future__ import annotations

import numpy as np
import pytest
from rosutil import Probe, log_text, start_nodes
from sensor_msgs.msg import Image, JointState
from std_srvs.srv import SetBool, Trigger

from scarls.bringup import ecu_nodes
from scarls.robot import JOINT_NAMES
from scarls.ros import qos
from scarls.ros.conversions import joint_state_to_msg, msg_to_positions
from scarls.sim.world import HOME, LOWER, UPPER

pytestmark = pytest.mark.ros
NS = 'drvtest'
RATE = 30.0


def _driver(**params):
    spec = ecu_nodes(NS, extra={'driver': {'autostart': False, 'image_height': 24,
                                           'image_width': 32, **params}})[0]
    assert spec.name == 'driver'
    return spec


class Robot:
    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.states: list[np.ndarray] = []
        self.images: list[Image] = []
        probe.node.create_subscription(
            JointState, 'joint_states',
            lambda m: self.states.append(msg_to_positions(m, JOINT_NAMES)), qos.JOINT_STATE)
        probe.node.create_subscription(Image, 'camera/top/image_raw', self.images.append,
                                       qos.CAMERA)
        self.cmd = probe.node.create_publisher(JointState, 'joint_command', qos.COMMAND)

    def command(self, q, seconds: float) -> None:
        """Stream the target at 30 Hz for `seconds`."""
        ticks = int(seconds * RATE)
        for _ in range(ticks):
            self.cmd.publish(joint_state_to_msg(JOINT_NAMES, q, self.probe.node.get_clock().now()
                                                .to_msg()))
            self.probe.spin_for(1.0 / RATE)

    def latest(self) -> np.ndarray:
        return self.states[-1].copy()


@pytest.fixture
def robot(ros, node_group):
    probe = Probe(NS)
    start_nodes(node_group, [_driver()])
    probe.configure_and_activate('driver')
    r = Robot(probe)
    probe.wait_for(lambda: len(r.states) > 5 and r.images, 20, 'joint states and images')
    yield r
    probe.close()


def test_state_and_cameras_published(robot):
    n0 = len(robot.states)
    robot.probe.spin_for(1.0)
    rate = len(robot.states) - n0
    assert 20 <= rate <= 40, f'{rate} joint states in 1 s'
    img = robot.images[-1]
    assert (img.height, img.width, img.encoding) == (24, 32, 'rgb8')
    np.testing.assert_allclose(robot.latest(), HOME, atol=1e-9)


def test_commands_are_clamped_to_position_and_velocity_limits(robot):
    start = robot.latest()
    n0 = len(robot.states)
    robot.command(UPPER + 10.0, 2.5)
    moved = np.array(robot.states[n0:])
    assert np.all(moved <= UPPER + 1e-9) and np.all(moved >= LOWER - 1e-9)
    # velocity: per published state, no joint moves more than its limit allows per tick
    from scarls.sim import DualArmSim
    max_step = DualArmSim().max_velocity / RATE
    steps = np.abs(np.diff(np.vstack([start, moved]), axis=0))
    assert np.all(steps <= max_step * 1.001 + 1e-9), steps.max(axis=0)
    assert np.any(np.abs(robot.latest() - start) > 0.1), 'the robot should have moved'


def test_watchdog_holds_when_commands_stop(robot, node_group):
    target = LOWER.copy()        # far from home: several seconds away at the velocity limit
    robot.command(target, 0.3)   # start moving towards it
    robot.probe.spin_for(0.6)    # commands stop: watchdog (0.25 s) must hold
    held = robot.latest()
    robot.probe.spin_for(1.0)
    np.testing.assert_allclose(robot.latest(), held, atol=1e-9)
    assert np.any(np.abs(held - target) > 0.1), 'it held before reaching the target'
    assert 'holding position' in log_text(node_group, 'driver')


def test_bad_commands_are_ignored_and_logged(robot, node_group):
    before = robot.latest()
    bad = [
        joint_state_to_msg(JOINT_NAMES[:13], before[:13], robot.probe.node.get_clock().now()
                           .to_msg()),
        joint_state_to_msg(JOINT_NAMES, np.where(np.arange(14) == 3, np.nan, before),
                           robot.probe.node.get_clock().now().to_msg()),
        joint_state_to_msg([], before[:5], robot.probe.node.get_clock().now().to_msg()),
    ]
    for msg in bad * 5:
        robot.cmd.publish(msg)
        robot.probe.spin_for(0.05)
    robot.probe.spin_for(0.5)
    np.testing.assert_allclose(robot.latest(), before, atol=1e-9)
    text = log_text(node_group, 'driver')
    assert 'joint_command rejected' in text and 'NaN' in text
    assert not node_group.dead()
    n0 = len(robot.states)
    robot.probe.spin_for(0.5)
    assert len(robot.states) > n0, 'the driver keeps publishing'


def test_estop_latches_a_hold_until_released(robot, node_group):
    res = robot.probe.call(SetBool, 'driver/estop', SetBool.Request(data=True))
    assert res.success
    before = robot.latest()
    target = np.clip(HOME + 0.5, LOWER, UPPER)
    robot.command(target, 1.0)
    np.testing.assert_allclose(robot.latest(), before, atol=1e-9)
    assert robot.probe.call(SetBool, 'driver/estop', SetBool.Request(data=False)).success
    robot.command(target, 1.0)
    assert np.abs(robot.latest() - before).max() > 0.05
    assert 'e-stop engaged' in log_text(node_group, 'driver')


def test_reset_pose_service(robot):
    robot.command(np.clip(HOME + 0.4, LOWER, UPPER), 1.0)
    assert np.abs(robot.latest() - HOME).max() > 0.05
    res = robot.probe.call(Trigger, 'driver/reset_pose', Trigger.Request())
    assert res.success, res.message
    robot.probe.spin_for(0.3)
    np.testing.assert_allclose(robot.latest(), HOME, atol=1e-9)


@pytest.mark.parametrize('params, message', [
    ({'backend': 'ur5'}, 'unknown robot backend'),
    ({'robot': 'arx5_pair'}, 'arx5-sdk'),                 # the vendor SDK is not installed
    ({'robot': 'sim_dual6', 'backend': 'arx5'}, 'arx5'),   # a sim robot is no ARX5 pair
    ({'robot': 'no_such_robot'}, "no robot named 'no_such_robot'"),
])
def test_backend_that_cannot_start_fails_configure_clearly(ros, node_group, params, message):
    probe = Probe(NS, 'probe_cfg')
    try:
        start_nodes(node_group, [_driver(**params)])
        from lifecycle_msgs.msg import Transition
        assert probe.lifecycle('driver', Transition.TRANSITION_CONFIGURE) is False
        assert probe.lifecycle_state('driver') == 'unconfigured'
        assert message in log_text(node_group, 'driver')
        assert not node_group.dead(), 'a failed configure must not kill the node'
    finally:
        probe.close()
