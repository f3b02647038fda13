"""The ros2_bridge backend without ROS: names and units per command group, group splitting,
trajectory stamps, stale / NaN / malformed / out-of-order joint states, the homing ramp; and the
fake ros2_control robot's model driven by the backend's commands."""

from __future__ import annotations

import math

import numpy as np
import pytest
from fakes.ros2_control_robot import OUT_OF_ORDER_OFFSET, RobotModel
from hypothesis import given, settings
from hypothesis import strategies as st

from scarls.driver.backends import BackendError, CommandRejected, ConfigError, make_backend
from scarls.driver.bridge import (
    BridgeConfig,
    CommandGroup,
    Ros2BridgeBackend,
    command_message,
    duration_parts,
)
from scarls.robot import load_robot

G1 = load_robot('agibot_g1')
THEIRS = tuple(G1.backend_params['joint_names_theirs'])
GRIP_OPEN = 0.8   # agibot_g1: grippers 0.0 (closed) .. 0.8 rad (open)


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def g1_backend(**overrides) -> tuple[Ros2BridgeBackend, Clock]:
    params = {k: tuple(v) if isinstance(v, list) else v for k, v in G1.backend_params.items()}
    params.update(overrides)
    clock = Clock()
    backend = Ros2BridgeBackend(BridgeConfig(**params), G1, clock=clock)
    backend.connect()
    return backend, clock


def theirs_state(ours: np.ndarray) -> list[float]:
    """Our vector (grippers normalised) -> the robot's values (grippers in radians)."""
    out = np.array(ours, dtype=np.float64)
    out[list(G1.gripper_indices)] *= GRIP_OPEN
    return out.tolist()


def feed(backend, ours, stamp=1.0, names=THEIRS, velocities=None) -> bool:
    return backend.on_state(list(names), theirs_state(ours), stamp, velocities)


# ------------------------------------------------------------------ configuration
def test_agibot_description_makes_a_bridge_with_four_controllers() -> None:
    backend = make_backend('ros2_bridge', G1.backend_params, G1)
    assert isinstance(backend, Ros2BridgeBackend)
    assert backend.joint_names == G1.joint_names and len(backend.joint_names) == 16
    assert [(g.name, g.type) for g in backend.groups] == [
        ('left_arm', 'joint_trajectory'), ('right_arm', 'joint_trajectory'),
        ('left_gripper', 'float64_array'), ('right_gripper', 'float64_array')]
    np.testing.assert_array_equal(backend.limits.lower, G1.lower)
    np.testing.assert_array_equal(backend.limits.max_velocity, G1.max_velocity)
    assert backend.config.state_qos == 'best_effort'


@pytest.mark.parametrize(('change', 'message'), [
    ({'state_qos': 'sometimes'}, 'state_qos'),
    ({'state_timeout_s': 0}, 'state_timeout_s'),
    ({'trajectory_time_s': -1.0}, 'trajectory_time_s'),
    ({'command_type': 'twist', 'command_groups': ()}, 'command_type'),
    ({'state_topic': ''}, 'state_topic'),
    ({'joint_names_theirs': THEIRS[:15]}, 'joint_names_theirs has 15'),
    ({'joint_names_theirs': (THEIRS[0],) * 16}, 'duplicate'),
    ({'command_groups': ({'name': 'a', 'type': 'twist', 'topic': '/a'},)}, 'type must be'),
    ({'command_groups': ({'name': 'a', 'type': 'float64_array'},)}, 'missing'),
    ({'command_groups': ({'name': 'a', 'type': 'float64_array', 'topic': '/a',
                          'gain': 2},)}, 'unknown key'),
    ({'command_groups': ({'name': 'a', 'type': 'float64_array', 'topic': '/a',
                          'joints': ['left_joint1']},
                         {'name': 'b', 'type': 'float64_array', 'topic': '/a'})},
     'its own topic'),
    ({'command_groups': ({'name': 'a', 'type': 'float64_array', 'topic': '/a',
                          'joints': ['left_joint1', 'head_yaw']},)}, 'does not have'),
    ({'command_groups': ({'name': 'a', 'type': 'float64_array', 'topic': '/a',
                          'joints': ['left_joint1']},
                         {'name': 'b', 'type': 'float64_array', 'topic': '/b'})},
     "in command groups 'a' and 'b'"),
    ({'command_groups': ({'name': 'a', 'type': 'float64_array', 'topic': '/a',
                          'joints': ['left_joint1']},)}, 'in no command group'),
])
def test_bad_settings_are_explained(change, message) -> None:
    params = {**G1.backend_params, **change}
    with pytest.raises(ConfigError, match=message):
        make_backend('ros2_bridge', params, G1)


def test_backend_overrides_reach_the_bridge() -> None:
    backend = make_backend('ros2_bridge', {**G1.backend_params, 'state_qos': 'reliable',
                                           'state_timeout_s': 1.5}, G1)
    assert backend.config.state_qos == 'reliable' and backend.config.state_timeout_s == 1.5
    with pytest.raises(ConfigError, match='valid parameters'):
        make_backend('ros2_bridge', {**G1.backend_params, 'bridge_state_topic': '/x'}, G1)


# ------------------------------------------------------------------ commands per group
def test_commands_split_into_groups_with_their_names_and_units() -> None:
    b, _ = g1_backend()
    assert feed(b, G1.home)
    q = np.array(G1.home)
    q[G1.arm_slice('left')] = np.linspace(-0.3, 0.3, 7)
    q[G1.gripper_index('left')] = 0.25
    q[G1.gripper_index('right')] = 1.0
    b.write_command(q)
    cmds = {c.group: c for c in b.pending_commands()}
    assert b.pending_commands() == []          # each command once
    left = cmds['left_arm']
    assert left.command_type == 'joint_trajectory'
    assert left.topic == '/left_arm_controller/joint_trajectory'
    assert left.names == THEIRS[0:7]
    np.testing.assert_allclose(left.positions, np.linspace(-0.3, 0.3, 7))
    assert cmds['right_arm'].names == THEIRS[8:15]
    np.testing.assert_allclose(cmds['right_arm'].positions, G1.home[8:15])
    assert cmds['left_gripper'].names == (THEIRS[7],)
    assert cmds['left_gripper'].positions.tolist() == pytest.approx([0.25 * GRIP_OPEN])
    assert cmds['right_gripper'].positions.tolist() == pytest.approx([GRIP_OPEN])
    msg = command_message(cmds['left_gripper'])
    assert type(msg).__name__ == 'Float64MultiArray'
    assert list(msg.data) == pytest.approx([0.2])


def test_a_group_takes_its_joints_in_the_controllers_order() -> None:
    groups = ({'name': 'left', 'type': 'float64_array', 'topic': '/l',
               'joints': list(reversed(G1.joint_names[:8]))},
              {'name': 'right', 'type': 'joint_state', 'topic': '/r',
               'joints': list(G1.joint_names[8:])})
    b, _ = g1_backend(command_groups=groups)
    feed(b, G1.home)
    q = np.arange(16) * 0.01
    b.write_command(q)
    cmds = {c.group: c for c in b.pending_commands()}
    assert cmds['left'].names == tuple(reversed(THEIRS[:8]))
    expected = q[:8][::-1].copy()
    expected[0] *= GRIP_OPEN   # the left gripper comes first now
    np.testing.assert_allclose(cmds['left'].positions, expected)
    js = command_message(cmds['right'], stamp=None)
    assert list(js.name) == list(THEIRS[8:])
    assert js.position[-1] == pytest.approx(q[15] * GRIP_OPEN)


def test_a_single_group_can_take_every_joint() -> None:
    b, _ = g1_backend(command_groups=(), command_type='joint_trajectory',
                      command_topic='/arm_controller/joint_trajectory')
    assert [g.name for g in b.groups] == ['all']
    feed(b, G1.home)
    b.write_command(G1.home)
    (cmd,) = b.pending_commands()
    assert cmd.names == THEIRS and cmd.topic == '/arm_controller/joint_trajectory'
    np.testing.assert_allclose(cmd.positions, theirs_state(G1.home))


def test_commands_are_clamped_and_checked() -> None:
    b, _ = g1_backend()
    feed(b, G1.home)
    q = np.array(G1.home)
    q[0], q[G1.gripper_index('left')] = 10.0, 1.7
    b.write_command(q)
    cmds = {c.group: c for c in b.pending_commands()}
    assert cmds['left_arm'].positions[0] == G1.upper[0]
    assert cmds['left_gripper'].positions[0] == pytest.approx(GRIP_OPEN)
    with pytest.raises(CommandRejected, match='NaN'):
        b.write_command(np.full(16, np.nan))
    with pytest.raises(CommandRejected, match='shape'):
        b.write_command(np.zeros(14))


def test_trajectories_start_now_whatever_the_clocks() -> None:
    """Header stamp 0 ("start when received") plus time_from_start: a robot whose clock is
    ahead or behind ours executes it at once (a stamp on our clock would be in its past or
    future, and joint_trajectory_controller would drop or delay it)."""
    b, _ = g1_backend()
    feed(b, G1.home)
    b.write_command(G1.home)
    cmd = next(c for c in b.pending_commands() if c.command_type == 'joint_trajectory')
    assert cmd.time_from_start == pytest.approx(1.0 / G1.control_rate_hz)
    from builtin_interfaces.msg import Time
    msg = command_message(cmd, stamp=Time(sec=1_700_000_000, nanosec=5))
    assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0)
    assert list(msg.joint_names) == list(THEIRS[:7]) and len(msg.points) == 1
    point = msg.points[0]
    assert (point.time_from_start.sec, point.time_from_start.nanosec) == (0, 33_333_333)
    np.testing.assert_allclose(point.positions, G1.home[:7])
    b2, _ = g1_backend(trajectory_time_s=1.25)
    feed(b2, G1.home)
    b2.write_command(G1.home)
    assert b2.pending_commands()[0].time_from_start == 1.25
    assert duration_parts(1.25) == (1, 250_000_000)
    assert duration_parts(0.0) == (0, 0)
    with pytest.raises(ValueError):
        duration_parts(-0.1)


# ------------------------------------------------------------------ state in
def test_state_in_their_names_order_and_units() -> None:
    b, _ = g1_backend()
    q = np.array(G1.home)
    q[G1.gripper_index('right')] = 0.5
    vel = np.linspace(-1, 1, 16)
    order = list(reversed(range(16)))
    names = ['waist_yaw'] + [THEIRS[i] for i in order]
    pos_theirs = theirs_state(q)
    vel_theirs = theirs_state(vel)
    assert b.on_state(names, [9.9] + [pos_theirs[i] for i in order], 5.0,
                      [0.0] + [vel_theirs[i] for i in order])
    s = b.read_state()
    np.testing.assert_allclose(s.positions, q)
    np.testing.assert_allclose(s.velocities, vel)       # passed through, grippers normalised
    assert s.stamp == 5.0
    assert feed(b, q, stamp=6.0, velocities=[])          # no velocities: zeros
    np.testing.assert_array_equal(b.read_state().velocities, np.zeros(16))
    bad_vel = vel_theirs.copy()
    bad_vel[3] = math.nan
    assert feed(b, q, stamp=7.0, velocities=bad_vel)     # unknown velocity reads 0
    v = b.read_state().velocities
    assert v[3] == 0.0 and v[4] == pytest.approx(vel[4])
    assert b.stats.nan_velocity == 1 and b.stats.accepted == 3


@pytest.mark.parametrize(('names', 'positions', 'kind'), [
    (THEIRS, [math.nan] + [0.0] * 15, 'nan'),
    (THEIRS, [0.0] * 15 + [math.inf], 'nan'),
    (THEIRS[:-1], [0.0] * 15, 'missing_joint'),
    (THEIRS, [0.0] * 15, 'malformed'),
    ((), (), 'missing_joint'),
    (THEIRS, ['a'] * 16, 'malformed'),
])
def test_bad_states_are_counted_and_the_last_good_one_held(names, positions, kind) -> None:
    b, clock = g1_backend()
    assert feed(b, G1.home, stamp=1.0)
    assert not b.on_state(list(names), positions, 2.0)
    np.testing.assert_array_equal(b.read_state().positions, G1.home)
    stats = b.stats
    assert getattr(stats, kind) == 1 and stats.rejected == 1 and stats.received == 2
    assert b.fault() is None                               # still fresh
    clock.t += 1.0                                         # only bad messages since
    assert not b.on_state(list(names), positions, 3.0)
    why = b.fault()
    assert why is not None and 'stale' in why and '2 message(s) ignored' in why
    assert stats.last_problem[:10] in why


def test_malformed_velocities_are_rejected() -> None:
    b, _ = g1_backend()
    assert not feed(b, G1.home, velocities=[0.0] * 3)
    assert b.stats.malformed == 1


@settings(max_examples=200, deadline=None)
@given(names=st.lists(st.sampled_from([*THEIRS, 'x', '']), max_size=20),
       values=st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=True),
                                 st.text(max_size=2), st.none()), max_size=20),
       stamp=st.floats(allow_nan=True, allow_infinity=True),
       velocities=st.one_of(st.none(), st.lists(st.floats(), max_size=20)))
def test_no_state_message_can_raise(names, values, stamp, velocities) -> None:
    b, _ = g1_backend()
    accepted = b.on_state(names, values, stamp, velocities)
    assert accepted in (True, False)
    if accepted:
        assert np.all(np.isfinite(b.read_state().positions))
    assert b.stats.received == 1


def test_out_of_order_stamps_are_ignored() -> None:
    b, clock = g1_backend()
    q1, q2 = np.array(G1.home), np.array(G1.home) + 0.1
    assert feed(b, q1, stamp=10.0)
    clock.t += 0.01
    assert not feed(b, q2, stamp=9.5)                      # older than the held state
    np.testing.assert_allclose(b.read_state().positions, q1)
    assert b.stats.out_of_order == 1
    assert feed(b, q2, stamp=10.0)                         # same stamp: a repeat is fine
    assert feed(b, q2, stamp=10.02)
    assert b.read_state().stamp == 10.02
    clock.t += 5.0                                         # stale: a robot clock restart ...
    assert feed(b, q1, stamp=0.5)                          # ... starts a new timeline
    assert b.read_state().stamp == 0.5 and b.fault() is None


def test_unstamped_states_are_never_out_of_order() -> None:
    b, _ = g1_backend()
    assert feed(b, G1.home, stamp=0.0)
    assert feed(b, G1.home + 0.01, stamp=0.0)
    assert b.stats.out_of_order == 0


# ------------------------------------------------------------------ stale state, faults
def test_stale_state_is_a_fault_and_commands_are_refused() -> None:
    b, clock = g1_backend(state_timeout_s=0.2)
    assert b.fault() is None                  # just connected: waiting for the first state
    clock.t += 0.3
    why = b.fault()
    assert why is not None and "no valid joint state on '/joint_states' yet" in why
    assert 'state_qos (best_effort)' in why
    with pytest.raises(BackendError, match='no joint state'):
        b.read_state()
    feed(b, G1.home)
    assert b.fault() is None and b.state_fresh()
    clock.t += 0.19
    assert b.fault() is None
    clock.t += 0.02
    why = b.fault()
    assert why is not None and 'stale' in why and '0.21 s ago' in why
    with pytest.raises(BackendError, match='stale'):
        b.write_command(G1.home)
    b.hold()                                  # nothing to hold on: nothing sent
    assert b.pending_commands() == []
    with pytest.raises(BackendError, match='cannot move home'):
        b.reset_pose()
    np.testing.assert_array_equal(b.read_state().positions, G1.home)   # last good state
    feed(b, G1.home, stamp=2.0)
    assert b.fault() is None
    b.hold()
    assert len(b.pending_commands()) == 4
    b.disconnect()
    assert b.fault() is None
    with pytest.raises(BackendError, match='connect'):
        b.read_state()


# ------------------------------------------------------------------ reset pose
def test_reset_pose_goes_home_within_the_speed_limits() -> None:
    """Trajectory controllers get one trajectory timed for the slowest joint (the robot finishes
    it even if the driver stops); the grippers' forward controllers a ramp, one target a tick."""
    b, _ = g1_backend()
    start = np.array(G1.home)
    start[G1.arm_slice('left')] += 0.5
    start[G1.gripper_index('left')] = 0.0
    feed(b, start)
    b.reset_pose()
    slowest = np.max(np.abs(G1.home - start) / G1.max_velocity)   # the gripper: 1.0 at 1.5/s
    assert slowest == pytest.approx(1 / 1.5)
    arms = {c.group: c for c in b.pending_commands()}
    assert sorted(arms) == ['left_arm', 'right_arm']
    for name, arm in (('left_arm', 'left'), ('right_arm', 'right')):
        assert arms[name].time_from_start == pytest.approx(slowest)
        np.testing.assert_allclose(arms[name].positions, G1.home[G1.arm_slice(arm)])
    assert b.homing
    dt = 1.0 / G1.control_rate_hz
    prev, steps = start[[7, 15]], 0
    while b.homing and steps < 1000:
        b.step(dt)
        cmds = b.pending_commands()
        assert [c.group for c in cmds] == ['left_gripper', 'right_gripper']
        grip = np.array([c.positions[0] for c in cmds]) / GRIP_OPEN
        assert np.all(np.abs(grip - prev) <= G1.max_velocity[[7, 15]] * dt + 1e-9)
        prev, steps = grip, steps + 1
    np.testing.assert_allclose(prev, G1.home[[7, 15]], atol=1e-9)
    assert steps == math.ceil(slowest / dt - 1e-9)
    b.reset_pose()
    b.step(dt)
    b.pending_commands()
    b.write_command(start)                    # a command ends the ramp
    assert not b.homing and len(b.pending_commands()) == 4
    b.step(dt)
    assert b.pending_commands() == []


def test_reset_pose_ramps_every_group_without_trajectory_controllers() -> None:
    b, _ = g1_backend(command_groups=(), command_type='joint_state')
    start = np.array(G1.home)
    start[0] += 0.1
    feed(b, start)
    b.reset_pose()
    assert b.pending_commands() == []         # nothing before the first tick
    dt = 1.0 / G1.control_rate_hz
    for _ in range(3):
        b.step(dt)
        (cmd,) = b.pending_commands()
        assert cmd.group == 'all' and cmd.time_from_start == pytest.approx(dt)
    np.testing.assert_allclose(cmd.positions[0], G1.home[0], atol=1e-9)   # 0.1 rad at 1 rad/s
    assert not b.homing


# ------------------------------------------------------------------ the fake robot's model
def test_fake_robot_follows_the_bridge_commands() -> None:
    """Backend commands -> the fake's controllers -> its joint states -> backend state: the
    joint names, gripper units and group split agree end to end."""
    robot = RobotModel('agibot_g1', rate_hz=100.0)
    b, clock = g1_backend()
    now = 50.0
    names, pos, vel, stamp = robot.joint_state(now)
    assert names == list(THEIRS)
    assert b.on_state(names, pos, stamp, vel)
    start = b.read_state().positions
    np.testing.assert_allclose(start, robot.sim.joint_positions(), atol=1e-12)
    target = start.copy()
    target[G1.arm_slice('right')] += 0.2
    target[G1.gripper_index('left')] = 0.3
    b.write_command(target)
    for cmd in b.pending_commands():
        if cmd.command_type == 'joint_trajectory':
            assert robot.on_trajectory(cmd.group, list(cmd.names),
                                       [(cmd.positions.tolist(), cmd.time_from_start)], 0.0, now)
        else:
            assert robot.on_float64_array(cmd.group, cmd.positions)
    for _ in range(100):
        now += 0.01
        clock.t += 0.01
        robot.step(now)
        assert b.on_state(*robot.joint_state(now)[:2], now, robot.joint_state(now)[2])
    np.testing.assert_allclose(b.read_state().positions, target, atol=1e-6)


def test_fake_robot_controllers_reject_what_ros2_control_rejects() -> None:
    robot = RobotModel('agibot_g1')
    assert not robot.on_float64_array('left_gripper', [0.1, 0.2])
    assert not robot.on_float64_array('left_gripper', [math.nan])
    left = list(THEIRS[:7])
    assert not robot.on_trajectory('left_arm', left[:6], [([0.0] * 6, 0.1)], 0.0, 10.0)
    assert not robot.on_trajectory('left_arm', left, [], 0.0, 10.0)
    # stamped on a clock 5 s behind the robot's: ends in the past, dropped
    assert not robot.on_trajectory('left_arm', left, [([0.0] * 7, 0.1)], 5.0, 10.0)
    assert 'in the past' in robot.stats['left_arm'].last_problem
    assert robot.stats['left_arm'].rejected == 3
    assert robot.on_trajectory('left_arm', list(reversed(left)), [([0.1] * 7, 0.1)], 0.0, 10.0)


def test_fake_robot_fault_injection() -> None:
    robot = RobotModel('agibot_g1')
    robot.fault = 'nan'
    assert math.isnan(robot.joint_state(1.0)[1][0])
    robot.fault = 'drop_joint'
    assert len(robot.joint_state(1.0)[0]) == 15
    robot.fault = 'stale'
    assert robot.joint_state(1.0) is None
    robot = RobotModel('agibot_g1')
    robot.fault, robot.fault_every = 'out_of_order', 2   # every 2nd message: late, offset
    b, _ = g1_backend()
    seen = []
    for i in range(6):
        names, pos, vel, stamp = robot.joint_state(10.0 + i * 0.01)
        seen.append(b.on_state(names, pos, stamp, vel))
    assert seen == [True, False] * 3
    assert b.stats.out_of_order == 3
    assert not np.any(np.abs(b.read_state().positions - robot.sim.joint_positions())
                      > OUT_OF_ORDER_OFFSET / 2)
    with pytest.raises(ValueError, match='has 14 joints'):
        RobotModel(load_robot('sim_dual6'))
    assert CommandGroup.parse({'name': 'a', 'type': 'joint_state', 'topic': '/a'},
                              'g').joints == ()
