"""ARX5 backend against a test double of the vendor SDK (tests/fakes/arx5_interface.py).

Pure and fast: no ROS, no hardware. Waits are on conditions with generous deadlines; the
smoothness test runs the fake on a manual clock.
"""

from __future__ import annotations

import inspect
import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from fakes import arx5_interface as fake

from scarls.driver.arx5 import (
    ArmReading,
    Arx5Backend,
    Arx5Config,
    MotionAborted,
    arm_layouts,
    gripper_from_metres,
    gripper_to_metres,
    merge_readings,
    min_jerk,
    split_command,
)
from scarls.driver.backends import BackendError, CommandRejected, ConfigError, make_backend
from scarls.robot import RobotDescription, load_robot

FAKES = Path(__file__).resolve().parent / 'fakes'

# Public names of python/arx5_interface.pyi, real-stanford/arx5-sdk at
# 79240efc2e0d75fdc1e50a8b883c5e928fbfc681 (transcribed by hand).
PYI_NAMES = {
    'MotorType': {'EC_A4310', 'DM_J4310', 'DM_J4340', 'NONE'},
    'RobotConfig': {
        'robot_model', 'joint_pos_min', 'joint_pos_max', 'joint_vel_max', 'joint_torque_max',
        'ee_vel_max', 'gripper_vel_max', 'gripper_torque_max', 'gripper_width',
        'gripper_open_readout', 'joint_dof', 'motor_id', 'motor_type', 'gripper_motor_id',
        'gripper_motor_type', 'gravity_vector', 'base_link_name', 'eef_link_name', 'urdf_path'},
    'ControllerConfig': {
        'controller_type', 'default_kp', 'default_kd', 'default_gripper_kp',
        'default_gripper_kd', 'over_current_cnt_max', 'controller_dt', 'gravity_compensation',
        'background_send_recv', 'shutdown_to_passive', 'interpolation_method',
        'default_preview_time'},
    'RobotConfigFactory': {'get_instance', 'get_config'},
    'ControllerConfigFactory': {'get_instance', 'get_config'},
    'LogLevel': {'TRACE', 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL', 'OFF'},
    'Gain': {'kp', 'kd', 'gripper_kp', 'gripper_kd'},
    'JointState': {'timestamp', 'gripper_pos', 'gripper_vel', 'gripper_torque', 'pos', 'vel',
                   'torque'},
    'Arx5JointController': {
        'send_recv_once', 'recv_once', 'set_joint_cmd', 'set_joint_traj', 'get_joint_cmd',
        'get_timestamp', 'get_joint_state', 'get_eef_state', 'get_home_pose', 'set_gain',
        'get_gain', 'get_robot_config', 'get_controller_config', 'reset_to_home',
        'set_to_damping', 'calibrate_gripper', 'calibrate_joint', 'set_log_level'},
    'EEFState': {'timestamp', 'gripper_pos', 'gripper_vel', 'gripper_torque', 'pose_6d'},
    'Arx5CartesianController': {
        'set_eef_cmd', 'set_eef_traj', 'get_joint_cmd', 'get_eef_cmd', 'get_eef_state',
        'get_joint_state', 'get_timestamp', 'set_gain', 'get_gain', 'get_home_pose',
        'set_log_level', 'get_robot_config', 'get_controller_config', 'reset_to_home',
        'set_to_damping'},
    'Arx5Solver': {'inverse_dynamics', 'inverse_kinematics', 'multi_trial_ik',
                   'get_ik_status_name', 'forward_kinematics'},
}
# Argument names and order of the methods that take arguments, from the same .pyi.
PYI_ARGS = {
    ('Arx5JointController', 'set_joint_cmd'): ['cmd'],
    ('Arx5JointController', 'set_joint_traj'): ['traj'],
    ('Arx5JointController', 'set_gain'): ['gain'],
    ('Arx5JointController', 'set_log_level'): ['level'],
    ('RobotConfigFactory', 'get_config'): ['robot_model'],
    ('ControllerConfigFactory', 'get_config'): ['controller_type', 'joint_dof'],
}


def wait_for(condition, timeout: float = 20.0, what: str = 'condition') -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f'timed out waiting for {what}')
        time.sleep(0.01)


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch):
    fake.reset()
    monkeypatch.setitem(sys.modules, 'arx5_interface', fake)
    yield fake
    fake.reset()


def config(**overrides) -> Arx5Config:
    base = dict(connect_probe=False, connect_timeout_s=10.0, stale_state_s=5.0,
                reset_min_duration_s=0.2, reset_max_velocity=3.0)
    base.update(overrides)
    return Arx5Config(**base)


def robot_with(**changes) -> RobotDescription:
    """arx5_pair with its arms' entries changed (``changes[arm_index] = {key: value}``)."""
    data = load_robot('arx5_pair').to_dict()
    for index, entries in changes.items():
        data['arms'][int(index[1:])].update(entries)
    return RobotDescription.from_dict(data, 'test')


def ctrl(interface: str):
    return next(c for c in fake.CONTROLLERS if c._interface == interface)


# ------------------------------------------------------------------ the fake is the real API
def test_fake_public_api_matches_the_sdk_stub(sdk) -> None:
    fake.use_manual_clock()
    rc = fake.RobotConfigFactory.get_instance().get_config('X5')
    cc = fake.ControllerConfigFactory.get_instance().get_config('joint_controller', 6)
    instances = {'RobotConfig': rc, 'ControllerConfig': cc, 'Gain': fake.Gain(6),
                 'JointState': fake.JointState(6), 'EEFState': fake.EEFState(),
                 'Arx5JointController': fake.Arx5JointController(rc, cc, 'can0')}
    classes = {n for n in dir(fake) if isinstance(getattr(fake, n), type)
               and getattr(fake, n).__module__ == fake.__name__ and not n.startswith('_')}
    assert classes == set(PYI_NAMES)
    for name, expected in PYI_NAMES.items():
        obj = instances.get(name, getattr(fake, name))
        public = {n for n in dir(obj) if not n.startswith('_')}
        assert public == expected, name
    for (cls, method), args in PYI_ARGS.items():
        params = list(inspect.signature(getattr(getattr(fake, cls), method)).parameters)
        assert params[1:] == args, (cls, method)
    with pytest.raises(ValueError, match='read-only'):
        rc.joint_vel_max[0] = 1.0  # the bindings hand out read-only copies
    with pytest.raises(TypeError):
        fake.RobotConfig()


def test_fake_starts_damped_and_interpolates_stamped_commands(sdk) -> None:
    fake.use_manual_clock()
    rc = fake.RobotConfigFactory.get_instance().get_config('X5')
    cc = fake.ControllerConfigFactory.get_instance().get_config('joint_controller', 6)
    c = fake.Arx5JointController(rc, cc, 'can0')
    start = c.get_joint_state().pos().copy()
    cmd = fake.JointState(start + 0.1, np.zeros(6), np.zeros(6), 0.04)
    c.set_joint_cmd(cmd)
    fake.advance(0.2)
    np.testing.assert_array_equal(c.get_joint_state().pos(), start)  # damped: ignored
    c.set_gain(fake.Gain(cc.default_kp, cc.default_kd, 5.0, 0.2))
    fake.advance(0.01)  # the target sent while damped was kept: the arm now goes there
    assert c.get_joint_state().pos()[0] > start[0]
    c.set_joint_cmd(fake.JointState(start, np.zeros(6), np.zeros(6), 0.0))  # unstamped: fixed
    fake.advance(0.1)
    np.testing.assert_allclose(c.get_joint_state().pos(), start)
    cmd.timestamp = c.get_timestamp() + 0.1
    c.set_joint_cmd(cmd)
    fake.advance(0.05)
    halfway = c.get_joint_state().pos()[0]
    assert start[0] + 0.04 < halfway < start[0] + 0.06  # linear, half way at half time
    fake.advance(0.1)
    np.testing.assert_allclose(c.get_joint_state().pos(), start + 0.1)
    cmd.timestamp = c.get_timestamp() - 0.5
    with pytest.raises(ValueError):  # a stamp in the past, like the SDK
        c.set_joint_cmd(cmd)


# ------------------------------------------------------------------ pure mapping
def test_gripper_metres_conversion() -> None:
    assert gripper_to_metres(1.0, 0.088) == pytest.approx(0.088)
    assert gripper_to_metres(0.5, 0.088, 0.008) == pytest.approx(0.048)
    assert gripper_from_metres(0.044, 0.088) == pytest.approx(0.5)
    robot = load_robot('arx5_pair')
    layouts = arm_layouts(robot)
    assert [(lay.name, lay.gripper, lay.open_m) for lay in layouts] == [
        ('left', 6, 0.088), ('right', 13, 0.088)]
    rng = np.random.default_rng(0)
    for _ in range(50):
        q = rng.uniform(-2, 2, 14)
        q[[6, 13]] = rng.uniform(0, 1, 2)
        left, right = split_command(q, layouts)
        np.testing.assert_array_equal(left.joints, q[0:6])
        assert right.gripper_m == pytest.approx(q[13] * 0.088)
        pos, vel = merge_readings([ArmReading(left.joints, np.zeros(6), left.gripper_m),
                                   ArmReading(right.joints, np.ones(6), right.gripper_m, 0.044)],
                                  layouts)
        np.testing.assert_allclose(pos, q, rtol=0, atol=1e-12)
        assert vel[13] == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        split_command(np.zeros(12), layouts)
    # a normalised gripper (e.g. sim_dual6) is mapped onto the SDK's width
    sim = arm_layouts(load_robot('sim_dual6'), {'left': 0.08, 'right': 0.08})
    assert sim[0].open_m == 0.08
    data = robot.to_dict()
    data['arms'][0]['gripper']['unit'] = 'radians'
    with pytest.raises(ConfigError, match='metres'):
        arm_layouts(RobotDescription.from_dict(data, 'test'))


def test_min_jerk_profile() -> None:
    tau = np.linspace(0, 1, 101)
    s = min_jerk(tau)
    assert s[0] == 0.0 and s[-1] == 1.0 and np.all(np.diff(s) >= 0)
    assert np.max(np.diff(s)) / 0.01 == pytest.approx(1.875, abs=0.01)


def test_without_sdk_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, 'arx5_interface', None)  # import fails
    backend = Arx5Backend(Arx5Config())
    assert backend.robot.name == 'arx5_pair'
    with pytest.raises(BackendError, match=r'arx5_interface.*arx5-sdk.*CAN'):
        backend.connect()
    with pytest.raises(BackendError, match='connect'):
        _ = backend.limits
    with pytest.raises(ConfigError, match='share CAN'):
        Arx5Config(left_interface='can0', right_interface='can0')
    with pytest.raises(ConfigError, match='connect_timeout_s'):
        Arx5Config(connect_timeout_s=0)
    sim_robot = make_backend('arx5', {'model': 'L5'})  # constructs without the SDK
    assert isinstance(sim_robot, Arx5Backend)
    with pytest.raises(BackendError, match="'sim_dual6' is for backend 'sim'"):
        sim_robot.connect()  # a real arm never gets the simulator's limits and home


# ------------------------------------------------------------------ connect
def test_gains_are_set_on_connect_and_commands_ignored_until_then(sdk) -> None:
    kp = (40.0, 35.0, 35.0, 15.0, 15.0, 10.0)
    backend = Arx5Backend(config(enable_on_connect=False, kp=kp, gripper_kp=4.0))
    backend.connect()
    left, right = ctrl('can0'), ctrl('can1')
    assert not left.get_gain().kp().any() and not backend.enabled  # the SDK starts damped
    q = backend.read_state().positions + 0.05
    with pytest.raises(BackendError, match='damped'):
        backend.write_command(q)
    backend.enable()
    for c in (left, right):
        np.testing.assert_array_equal(c.get_gain().kp(), kp)
        assert c.get_gain().gripper_kp == 4.0
        np.testing.assert_array_equal(c.get_gain().kd(), [2.0, 2.0, 2.0, 1.0, 1.0, 0.7])
    backend.write_command(q)
    wait_for(lambda: np.allclose(backend.read_state().positions, q, atol=1e-6), what='motion')
    backend.disconnect()
    assert not left.get_gain().kp().any()  # damped on disconnect

    fake.reset()
    backend = Arx5Backend(config())  # default: enabled at connect with the SDK's gains
    backend.connect()
    np.testing.assert_array_equal(ctrl('can0').get_gain().kp(), [80, 70, 70, 30, 30, 20])
    assert backend.enabled and backend.fault() is None
    backend.damp()
    assert not backend.enabled and not ctrl('can1').get_gain().kp().any()
    backend.enable()  # e.g. after an e-stop release
    assert ctrl('can1').get_gain().kp().any()
    backend.disconnect()


def test_sdk_configs_come_from_the_description_and_config(sdk) -> None:
    robot = robot_with(a0={'gripper': {'name': 'left_gripper', 'unit': 'metres', 'closed': 0.0,
                                       'open': 0.082, 'max_velocity': 2.0, 'home': 1.0}})
    backend = Arx5Backend(config(gripper_open_readout=-3.4, controller_dt=0.004,
                                 model='L5', left_interface='can3'), robot=robot)
    backend.connect()
    left, right = ctrl('can3'), ctrl('can1')
    assert left.get_robot_config().robot_model == 'L5'
    assert left.get_robot_config().gripper_width == pytest.approx(0.082)
    assert right.get_robot_config().gripper_width == pytest.approx(0.088)
    assert left.get_robot_config().gripper_open_readout == -3.4
    cc = left.get_controller_config()
    assert cc.controller_dt == 0.004 and cc.background_send_recv
    assert cc.default_preview_time == 0.0  # unstamped = fixed target (holds)
    # limits: the tighter of description and SDK, the joint speed cap applied
    lim = backend.limits
    assert lim.upper[1] == pytest.approx(3.14) and lim.lower[1] == pytest.approx(-0.05)
    assert lim.max_velocity[0] == 1.5 and lim.upper[6] == 1.0
    assert lim.max_velocity[6] == pytest.approx(min(2.0, 0.3 / 0.082))
    # the gripper in metres of the description's stroke
    q = backend.read_state().positions
    q[6], q[13] = 0.5, 0.25
    backend.write_command(q)
    wait_for(lambda: abs(left.get_joint_state().gripper_pos - 0.041) < 1e-6
             and abs(right.get_joint_state().gripper_pos - 0.022) < 1e-6, what='grippers')
    assert backend.read_state().positions[6] == pytest.approx(0.5)
    with pytest.raises(CommandRejected):
        backend.write_command(np.zeros(7))
    backend.disconnect()


def test_joint_layout_follows_the_description(sdk) -> None:
    base = load_robot('arx5_pair').to_dict()
    arm = base['arms'][0]
    arms = []
    for name in ('a', 'b', 'c'):
        entry = {**arm, 'name': name, 'joints': [f'{name}_j{i}' for i in range(6)]}
        entry['gripper'] = {**arm['gripper'], 'name': f'{name}_gripper'}
        arms.append(entry)
    del arms[1]['gripper']
    data = {**base, 'name': 'three_arms', 'arms': arms}
    robot = RobotDescription.from_dict(data, 'test')
    with pytest.raises(ConfigError, match='interfaces'):
        Arx5Backend(config(), robot=robot)
    ifaces = {'a': 'can0', 'b': 'can1', 'c': 'can2'}
    backend = Arx5Backend(config(interfaces=ifaces), robot=robot)
    backend.connect()
    assert backend.joint_names == robot.joint_names and len(backend.joint_names) == 20
    assert [c._interface for c in fake.CONTROLLERS] == ['can0', 'can1', 'can2']
    assert ctrl('can1').get_gain().gripper_kp == 0.0  # arm b has no gripper
    q = backend.read_state().positions
    q[robot.arm_slice('c')] += 0.05
    q[robot.gripper_index('c')] = 0.5
    backend.write_command(q)
    wait_for(lambda: np.allclose(backend.read_state().positions, q, atol=1e-6), what='motion')
    np.testing.assert_allclose(ctrl('can2').get_joint_state().pos(), q[robot.arm_slice('c')])
    backend.disconnect()

    seven = robot_with(a0={'joints': [f'left_joint{i}' for i in range(1, 8)],
                           'lower': -1.0, 'upper': 1.0, 'max_velocity': 2.0, 'home': 0.0})
    with pytest.raises(BackendError, match=r"'left'.*7 joints.*'X5' has 6"):
        Arx5Backend(config(), robot=seven).connect()
    with pytest.raises(BackendError, match='does not know model'):
        Arx5Backend(config(model='Z9')).connect()


def test_connect_deadline_when_the_sdk_constructor_hangs(sdk) -> None:
    # a reversed gripper motor reads negative: outside 0..gripper_width, the SDK's start-up check
    # enters its emergency loop inside the constructor and never returns
    fake.SCENARIO['gripper_motor_readout'] = {'can1': -2.0}
    backend = Arx5Backend(config(connect_timeout_s=0.5))
    with pytest.raises(BackendError) as info:
        backend.connect()
    msg = str(info.value)
    assert "right ARX5 arm on 'can1' did not open within 0.5 s" in msg
    for hint in ('gripper calibration', 'gripper_open_readout', 'CAN interface', 'powered'):
        assert hint in msg
    assert not backend.connected
    assert not ctrl('can0').get_gain().kp().any()  # the arm that opened is left damped
    fake.release_hangs()

    fake.reset()
    fake.SCENARIO['gripper_motor_readout'] = {'can1': -2.0}
    backend = Arx5Backend(config(gripper_open_readout=-3.4))  # the fix: readout sign
    backend.connect()
    assert backend.read_state().positions[13] == pytest.approx(2.0 / 3.4)
    backend.disconnect()

    fake.reset()
    fake.SCENARIO['fail_interfaces'] = ['can_down']
    with pytest.raises(BackendError, match=r"right ARX5 arm.*'can_down'.*ip link"):
        Arx5Backend(config(right_interface='can_down')).connect()


@pytest.mark.multiproc
def test_probe_process_catches_a_hang_that_holds_the_gil(sdk, monkeypatch) -> None:
    """The real bindings keep the GIL while the constructor loops: only a child process can be
    stopped at the deadline."""
    monkeypatch.setenv('ARX5_FAKE_SCENARIO', json.dumps(
        {'gripper_motor_readout': {'can1': -2.0}, 'hang_holds_gil': True}))
    backend = Arx5Backend(config(connect_probe=True, connect_timeout_s=6.0,
                                 sdk_path=str(FAKES)))
    with pytest.raises(BackendError, match=r"right ARX5 arm on 'can1'.*probe process killed"):
        backend.connect()
    assert fake.CONTROLLERS == []  # nothing was opened in this process
    monkeypatch.setenv('ARX5_FAKE_SCENARIO', json.dumps({'unpowered': ['can0']}))
    with pytest.raises(BackendError, match=r"left ARX5 arm.*'can0'.*None of the motors"):
        backend.connect()
    monkeypatch.setenv('ARX5_FAKE_SCENARIO', '{}')
    backend.connect()
    assert backend.enabled and len(fake.CONTROLLERS) == 2
    backend.disconnect()


# ------------------------------------------------------------------ smooth motion
def _max_step_and_still_share(log, start: float, end: float) -> tuple[float, float]:
    pos = np.array([p[0] for t, p, _ in log if start <= t <= end])
    steps = np.abs(np.diff(pos))
    return float(steps.max()), float(np.mean(steps < 1e-9))


def test_stamped_commands_make_a_smooth_commanded_trajectory(sdk) -> None:
    """30 Hz targets moving at 0.6 rad/s: the SDK ticks every 2 ms, so a smooth command moves
    ~1.2 mrad per tick. Unstamped targets make a staircase (a jump per target at the SDK's
    velocity limit, then standing still)."""
    fake.use_manual_clock()
    backend = Arx5Backend(config())
    backend.connect()
    left = ctrl('can0')
    q0 = backend.read_state().positions
    rate, speed = 30.0, 0.6

    def stream(send) -> tuple[float, float]:
        t0 = left.get_timestamp()
        for k in range(1, 46):
            q = q0.copy()
            q[0] += speed * k / rate
            send(q)
            fake.advance(1 / rate)
        return _max_step_and_still_share(left._command_log, t0 + 0.2, left.get_timestamp())

    smooth_step, smooth_still = stream(backend.write_command)
    assert left._received[-1].timestamp > 0  # stamped
    ideal = speed * left.get_controller_config().controller_dt
    assert smooth_step < 1.5 * ideal and smooth_still < 0.05

    q0 = backend.read_state().positions

    def unstamped(q):  # what set_joint_cmd without a timestamp does at 30 Hz
        for c, target in zip((left, ctrl('can1')), split_command(q, backend.layouts),
                             strict=True):
            c.set_joint_cmd(fake.JointState(target.joints, np.zeros(6), np.zeros(6),
                                            target.gripper_m))

    stair_step, stair_still = stream(unstamped)
    assert stair_step > 5 * smooth_step and stair_still > 0.7
    backend.disconnect()


# ------------------------------------------------------------------ reset
def _home_robot() -> RobotDescription:
    g = {'unit': 'metres', 'closed': 0.0, 'open': 0.088, 'max_velocity': 2.0, 'home': 0.5}
    return robot_with(a0={'home': [0.1, 0.2, 0.3, 0.0, 0.0, 0.1],
                          'gripper': {**g, 'name': 'left_gripper'}},
                      a1={'home': [-0.1, 0.4, 0.2, 0.0, 0.0, -0.1],
                          'gripper': {**g, 'name': 'right_gripper'}})


def test_reset_moves_both_arms_together_to_the_description_home(sdk) -> None:
    robot = _home_robot()
    backend = Arx5Backend(config(reset_approach=[0.0, 0.0, 0.03, 0.0, 0.0, 0.0]), robot=robot)
    backend.connect()
    backend.reset_pose()
    assert np.allclose(backend.read_state().positions, robot.home, atol=0.02)
    wait_for(lambda: np.allclose(backend.read_state().positions, robot.home, atol=1e-6),
             what='the home pose')
    assert ctrl('can0').get_joint_state().gripper_pos == pytest.approx(0.044)
    order = [iface for iface, _ in fake.RECEIVED]
    # interleaved, not one arm after the other
    assert order.index('can1') < len(order) - 1 - order[::-1].index('can0')
    assert all(c._reset_to_home_calls == 0 for c in fake.CONTROLLERS)  # not the SDK's zero
    assert not backend.moving
    backend.disconnect()


@pytest.mark.parametrize('stop', ['abort_motion', 'hold', 'damp'])
def test_reset_is_abortable_from_another_thread(sdk, stop: str) -> None:
    robot = _home_robot()
    backend = Arx5Backend(config(reset_max_velocity=0.05), robot=robot)  # ~12 s motion
    backend.connect()
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            backend.reset_pose()
            outcome.append(None)
        except BaseException as exc:  # noqa: BLE001
            outcome.append(exc)

    worker = threading.Thread(target=run)
    worker.start()
    wait_for(lambda: len(ctrl('can1')._received) > 5, what='reset streaming')
    with pytest.raises(BackendError, match='reset_pose is moving'):
        backend.write_command(backend.read_state().positions)
    getattr(backend, stop)()  # returns once the motion loop has stopped
    sent = len(fake.RECEIVED)
    worker.join(timeout=20)
    assert not worker.is_alive() and isinstance(outcome[0], MotionAborted)
    assert not backend.moving
    time.sleep(0.2)  # nothing more is streamed
    assert len(fake.RECEIVED) == sent
    if stop != 'damp':
        last = ctrl('can0')._received[-1]
        assert abs(last.timestamp - ctrl('can0').get_timestamp()) < 0.3  # a fixed hold
    assert not np.allclose(backend.read_state().positions, robot.home, atol=0.05)
    backend.disconnect()


# ------------------------------------------------------------------ faults
def test_sdk_emergency_becomes_a_fault_and_stops_commands(sdk) -> None:
    fake.use_manual_clock()
    backend = Arx5Backend(config(stale_state_s=0.1))
    backend.connect()
    q = backend.read_state().positions
    backend.write_command(q)
    fake.advance(0.05)
    assert backend.fault() is None
    right = ctrl('can1')
    right._fake_emergency()  # e.g. over-current: the SDK's loop stops
    fake.advance(0.3)
    why = backend.fault()
    assert why is not None and why.startswith('right arm (can1)')
    assert 'stopped updating' in why and 'restart' in why
    before = len(fake.RECEIVED)
    with pytest.raises(BackendError, match='ARX5 fault'):
        backend.write_command(q)
    with pytest.raises(BackendError, match='ARX5 fault'):
        backend.hold()
    with pytest.raises(BackendError, match='ARX5 fault'):
        backend.enable()
    with pytest.raises(BackendError, match='ARX5 fault'):
        backend.reset_pose()
    assert len(fake.RECEIVED) == before  # nothing sent to any arm
    backend.read_state()  # the state can still be read
    backend.disconnect()
    assert right._deadlocked_calls == []  # never called what blocks forever in the real SDK
    assert not ctrl('can0').get_gain().kp().any()


def test_silent_can_bus_becomes_a_fault(sdk) -> None:
    fake.use_manual_clock()
    backend = Arx5Backend(config(frozen_readout_s=0.5))
    backend.connect()
    for _ in range(10):
        fake.advance(0.1)
        assert backend.fault() is None
    ctrl('can0')._fake_can_lost()
    for _ in range(10):
        fake.advance(0.1)
        backend.fault()
    why = backend.fault()
    assert why is not None and 'left arm (can0)' in why and 'no new motor data' in why
    with pytest.raises(BackendError, match='CAN'):
        backend.write_command(backend.read_state().positions)
    backend.disconnect()
