"""Tests of the backend interface, registry, sim backend, ARX5 mapping and ROS 2 bridge logic."""

from __future__ import annotations

import sys
import types
from typing import ClassVar

import numpy as np
import pytest

from scarls.driver.arx5 import (
    ArmLimits,
    ArmReading,
    Arx5Backend,
    Arx5Config,
    gripper_from_metres,
    gripper_to_metres,
    limits_from_arms,
    merge_readings,
    split_command,
)
from scarls.driver.backends import (
    BackendError,
    CommandRejected,
    ConfigError,
    RobotBackend,
    SimBackend,
    available_backends,
    make_backend,
)
from scarls.driver.bridge import BridgeConfig, BridgeError, JointNameMap, Ros2BridgeBackend
from scarls.driver.safety import SafetyFilter
from scarls.sim import HOME, JOINT_NAMES, SimConfig, TaskState

THEIRS = tuple(f'idx{i:02d}_joint' for i in range(14))


# ------------------------------------------------------------------ registry + sim backend
def test_registry_names_and_unknown_name() -> None:
    assert available_backends() == ('arx5', 'ros2_bridge', 'sim')
    with pytest.raises(ConfigError, match=r"unknown robot backend 'ur5'.*'arx5'.*'sim'"):
        make_backend('ur5', {})
    with pytest.raises(ConfigError, match='valid parameters'):
        make_backend('sim', {'colour': 'red'})
    with pytest.raises(ConfigError, match='invalid parameters'):
        make_backend('sim', {'height': -3})
    assert isinstance(make_backend('sim', {'seed': 3, 'spawn_y': [-0.1, 0.1]}), SimBackend)
    assert isinstance(make_backend('arx5', {'model': 'L5'}), Arx5Backend)
    bridge = make_backend('ros2_bridge', {'joint_names_theirs': list(THEIRS)})
    assert isinstance(bridge, Ros2BridgeBackend)


def test_sim_backend_contract() -> None:
    backend = make_backend('sim', {'seed': 11})
    assert isinstance(backend, RobotBackend)
    with pytest.raises(BackendError, match='connect'):
        backend.read_state()
    backend.connect()
    assert backend.joint_names == JOINT_NAMES
    assert backend.camera_names == ('top', 'left', 'right')
    state = backend.read_state()
    np.testing.assert_array_equal(state.positions, HOME)
    assert state.stamp == 0.0
    target = HOME.copy()
    target[0] += 1.0
    backend.write_command(target)
    backend.step(1 / 30)
    moved = backend.read_state()
    assert moved.positions[0] == pytest.approx(HOME[0] + 1.5 / 30)
    assert moved.stamp == pytest.approx(1 / 30)
    backend.step(0.1)  # 3 ticks
    assert backend.read_state().stamp == pytest.approx(4 / 30)
    backend.hold()
    held = backend.read_state().positions
    backend.step(1 / 30)
    np.testing.assert_array_equal(backend.read_state().positions, held)
    images = backend.read_cameras()
    assert set(images) == {'top', 'left', 'right'}
    assert images['top'].shape == (96, 128, 3)
    task = backend.task_state()
    assert isinstance(task, TaskState) and task.steps == 5
    cube0 = task.cube_position
    backend.reset_pose()
    np.testing.assert_array_equal(backend.read_state().positions, HOME)
    assert backend.task_state().cube_position != cube0
    with pytest.raises(CommandRejected):
        backend.write_command(np.full(14, np.nan))
    # safety filter built from the backend's limits
    f = SafetyFilter(backend.limits, 1 / 30, backend.joint_names)
    assert f.filter(HOME + 5.0, HOME).clamped
    backend.disconnect()
    assert not backend.connected


def test_sim_backend_reset_sequence_is_deterministic() -> None:
    cubes = []
    for _ in range(2):
        b = SimBackend(SimConfig(seed=5))
        b.connect()
        seq = [b.task_state().cube_position]
        for _ in range(3):
            b.reset_pose()
            seq.append(b.task_state().cube_position)
        cubes.append(seq)
    assert cubes[0] == cubes[1]
    assert len(set(cubes[0])) == 4


# ------------------------------------------------------------------ ARX5
def test_gripper_units() -> None:
    assert gripper_to_metres(1.0, 0.085) == pytest.approx(0.085)
    assert gripper_to_metres(0.0, 0.085) == 0.0
    assert gripper_from_metres(0.0425, 0.085) == pytest.approx(0.5)


def test_arx5_split_merge_round_trip() -> None:
    rng = np.random.default_rng(0)
    widths = (0.085, 0.088)
    for _ in range(50):
        q = rng.uniform(-2, 2, 14)
        q[[6, 13]] = rng.uniform(0, 1, 2)
        left, right = split_command(q, widths)
        np.testing.assert_array_equal(left.joints, q[0:6])
        np.testing.assert_array_equal(right.joints, q[7:13])
        assert left.gripper_m == pytest.approx(q[6] * 0.085)
        pos, vel = merge_readings(
            ArmReading(left.joints, np.zeros(6), left.gripper_m),
            ArmReading(right.joints, np.ones(6), right.gripper_m, 0.044),
            widths,
        )
        np.testing.assert_allclose(pos, q, rtol=0, atol=1e-12)
        np.testing.assert_array_equal(vel[7:13], 1.0)
        assert vel[13] == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        split_command(np.zeros(12), widths)


def test_arx5_limits_from_arms() -> None:
    arm = ArmLimits(np.full(6, -3.0), np.full(6, 3.0), np.array([3.0, 3, 3, 1, 1, 1]), 0.08, 0.16)
    lim = limits_from_arms(arm, arm, max_joint_velocity=2.0)
    assert lim.size == 14
    assert lim.lower[6] == 0.0 and lim.upper[6] == 1.0
    np.testing.assert_allclose(lim.max_velocity[:7], [2, 2, 2, 1, 1, 1, 2.0])


def test_arx5_without_sdk_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, 'arx5_interface', None)  # import fails
    backend = Arx5Backend(Arx5Config())
    with pytest.raises(BackendError, match=r'arx5_interface.*arx5-sdk.*CAN'):
        backend.connect()
    with pytest.raises(BackendError, match='connect'):
        _ = backend.limits
    with pytest.raises(ConfigError, match='share CAN'):
        Arx5Config(left_interface='can0', right_interface='can0')


class _FakeJointState:
    def __init__(self, pos, vel, torque, gripper_pos) -> None:
        self._pos = np.array(pos, dtype=float)
        self._vel = np.array(vel, dtype=float)
        self._torque = np.array(torque, dtype=float)
        self.gripper_pos = float(gripper_pos)
        self.gripper_vel = 0.0
        self.timestamp = 0.0

    def pos(self) -> np.ndarray:
        return self._pos

    def vel(self) -> np.ndarray:
        return self._vel

    def torque(self) -> np.ndarray:
        return self._torque


class _FakeController:
    """Stand-in for the vendor SDK's Arx5JointController: state follows commands at once."""

    instances: ClassVar[list[_FakeController]] = []

    def __init__(self, model: str, interface: str) -> None:
        if interface == 'can_down':
            raise RuntimeError('CAN socket failed')
        self.model, self.interface = model, interface
        self.state = _FakeJointState(np.zeros(6), np.zeros(6), np.zeros(6), 0.0)
        self.homed = 0
        self.damped = False
        _FakeController.instances.append(self)

    def get_robot_config(self) -> types.SimpleNamespace:
        return types.SimpleNamespace(
            joint_dof=6,
            gripper_width=0.08,
            gripper_vel_max=0.1,
            joint_pos_min=np.array([-3.14, -0.05, -0.1, -1.6, -1.57, -2.0]),
            joint_pos_max=np.array([2.6, 3.5, 3.2, 1.55, 1.57, 2.0]),
            joint_vel_max=np.array([5.0, 5.0, 5.5, 5.5, 5.0, 5.0]),
        )

    def set_joint_cmd(self, cmd: _FakeJointState) -> None:
        self.state = cmd

    def get_joint_state(self) -> _FakeJointState:
        return self.state

    def reset_to_home(self) -> None:
        self.homed += 1
        self.state = _FakeJointState(np.zeros(6), np.zeros(6), np.zeros(6), 0.0)

    def set_to_damping(self) -> None:
        self.damped = True


@pytest.fixture
def fake_sdk(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    module = types.ModuleType('arx5_interface')
    module.Arx5JointController = _FakeController
    module.JointState = _FakeJointState
    monkeypatch.setitem(sys.modules, 'arx5_interface', module)
    _FakeController.instances = []
    return module


def test_arx5_backend_with_fake_sdk(fake_sdk: types.ModuleType) -> None:
    backend = make_backend('arx5', {'model': 'L5', 'left_interface': 'can3'})
    clock = iter(range(100))
    backend._clock = lambda: float(next(clock))
    backend.connect()
    left, right = _FakeController.instances
    assert (left.model, left.interface, right.interface) == ('L5', 'can3', 'can1')
    sim = SimBackend()
    # same joint order and conventions as the sim backend
    assert backend.joint_names == sim.joint_names
    lim = backend.limits
    assert lim.size == sim.limits.size == 14
    assert lim.lower[6] == sim.limits.lower[6] == 0.0 and lim.upper[13] == sim.limits.upper[13]
    assert lim.max_velocity[0] == 1.5 and lim.max_velocity[6] == pytest.approx(0.1 / 0.08)
    q = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.25, -0.1, 0.5, 1.0, -0.4, 0.2, -0.6, 0.75])
    backend.write_command(q)
    assert left.state.gripper_pos == pytest.approx(0.02)
    np.testing.assert_array_equal(right.state.pos(), q[7:13])
    state = backend.read_state()
    np.testing.assert_allclose(state.positions, q, rtol=0, atol=1e-12)
    assert state.stamp == 0.0
    # out-of-range commands are clamped to the SDK limits, malformed ones rejected
    backend.write_command(np.full(14, 10.0))
    assert left.state.pos()[0] == pytest.approx(2.6) and left.state.gripper_pos == 0.08
    with pytest.raises(CommandRejected):
        backend.write_command(np.zeros(7))
    backend.hold()
    backend.reset_pose()
    assert left.homed == right.homed == 1
    backend.step(1 / 30)  # no-op
    assert backend.read_cameras() == {} and backend.task_state() is None
    backend.disconnect()
    assert left.damped and right.damped and not backend.connected


def test_arx5_can_failure_is_explained(fake_sdk: types.ModuleType) -> None:
    backend = Arx5Backend(Arx5Config(right_interface='can_down'))
    with pytest.raises(BackendError, match=r"right ARX5 arm.*'can_down'.*ip link"):
        backend.connect()


# ------------------------------------------------------------------ ROS 2 bridge
def test_joint_name_map() -> None:
    m = JointNameMap(JOINT_NAMES, THEIRS)
    vec = np.arange(14.0)
    np.testing.assert_array_equal(m.to_theirs(vec), vec)
    names = ['head_yaw', *reversed(THEIRS)]
    values = [9.0, *reversed(vec.tolist())]
    np.testing.assert_array_equal(m.from_theirs(names, values), vec)
    with pytest.raises(BridgeError, match='idx03_joint'):
        m.from_theirs([n for n in THEIRS if n != 'idx03_joint'], np.zeros(13))
    with pytest.raises(BridgeError):
        m.from_theirs(THEIRS, np.zeros(3))
    with pytest.raises(ConfigError, match='duplicate'):
        JointNameMap(['a', 'b'], ['x', 'x'])
    scaled = JointNameMap(['a', 'g'], ['A', 'G'], scale=[1.0, 120.0], offset=[0.5, 0.0])
    np.testing.assert_allclose(scaled.to_theirs([0.0, 0.5]), [0.5, 60.0])
    np.testing.assert_allclose(scaled.from_theirs(['G', 'A'], [60.0, 0.5]), [0.0, 0.5])
    rates = scaled.from_theirs(['G', 'A'], [60.0, 0.5], rates=True)  # no offset for rates
    np.testing.assert_allclose(rates, [0.5, 0.5])


def test_bridge_backend_flow() -> None:
    with pytest.raises(ConfigError, match='command_type'):
        BridgeConfig(joint_names_theirs=THEIRS, command_type='twist')
    with pytest.raises(ConfigError, match='joint_names_theirs'):
        BridgeConfig(joint_names_theirs=THEIRS[:5])
    cfg = BridgeConfig(joint_names_theirs=THEIRS, command_type='joint_trajectory')
    b = Ros2BridgeBackend(cfg)
    b.connect()
    with pytest.raises(BackendError, match='no joint state'):
        b.read_state()
    assert b.pending_command() is None
    b.on_state(list(THEIRS), HOME.tolist(), stamp=12.0)
    state = b.read_state()
    np.testing.assert_array_equal(state.positions, HOME)
    assert state.stamp == 12.0 and b.state_fresh(12.4) and not b.state_fresh(13.0)
    b.write_command(HOME + 0.01)
    cmd = b.pending_command()
    assert cmd is not None and cmd.names == THEIRS and cmd.command_type == 'joint_trajectory'
    np.testing.assert_allclose(cmd.positions[:6], HOME[:6] + 0.01)
    assert cmd.positions[6] == 1.0  # gripper clamped to its limit
    assert b.pending_command() is None
    b.hold()
    np.testing.assert_array_equal(b.pending_command().positions, HOME)
