"""Tests of the backend interface, registry, sim backend and ROS 2 bridge logic (ARX5:
test_driver_arx5.py)."""

from __future__ import annotations

import numpy as np
import pytest

from scarls.driver.arx5 import Arx5Backend
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
    """The contract on the default robot (one group for all joints); the details, per command
    group and for bad states, are in test_driver_bridge.py."""
    with pytest.raises(ConfigError, match='command_type'):
        BridgeConfig(joint_names_theirs=THEIRS, command_type='twist')
    with pytest.raises(ConfigError, match='joint_names_theirs'):
        Ros2BridgeBackend(BridgeConfig(joint_names_theirs=THEIRS[:5]))
    clock = [12.0]
    cfg = BridgeConfig(joint_names_theirs=THEIRS, command_type='joint_trajectory')
    b = Ros2BridgeBackend(cfg, clock=lambda: clock[0])
    assert isinstance(b, RobotBackend) and b.joint_names == JOINT_NAMES
    b.connect()
    with pytest.raises(BackendError, match='no joint state'):
        b.read_state()
    assert b.fault() is None and b.pending_commands() == []   # waiting for the first state
    clock[0] += 0.6
    assert 'no valid joint state' in b.fault()
    assert b.on_state(list(THEIRS), HOME.tolist(), stamp=12.0)
    state = b.read_state()
    np.testing.assert_array_equal(state.positions, HOME)
    assert state.stamp == 12.0 and b.state_fresh(12.9) and not b.state_fresh(13.2)
    assert b.fault() is None
    b.write_command(HOME + 0.01)
    (cmd,) = b.pending_commands()
    assert cmd.names == THEIRS and cmd.command_type == 'joint_trajectory'
    np.testing.assert_allclose(cmd.positions[:6], HOME[:6] + 0.01)
    assert cmd.positions[6] == 1.0  # gripper clamped to its limit
    assert b.pending_commands() == []
    b.hold()
    np.testing.assert_array_equal(b.pending_commands()[0].positions, HOME)
    clock[0] += 1.0
    assert 'stale' in b.fault()
