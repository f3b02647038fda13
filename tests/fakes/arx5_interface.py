"""Test double of the ARX5 vendor SDK's Python module ``arx5_interface``.

Source read: github.com/real-stanford/arx5-sdk at commit
79240efc2e0d75fdc1e50a8b883c5e928fbfc681. The public API (class names, method names, argument
order, property names) is transcribed from ``python/arx5_interface.pyi`` (bindings:
``python/arx5_pybind.cpp``; the constructors' arguments are positional only, as pybind11 names them
``arg0, arg1...``). The behaviour is modelled on ``src/app/controller_base.cpp``,
``src/app/joint_controller.cpp``, ``include/app/config.h`` and the interpolator in
``src/utils.cpp``:

* the constructor clears the motors, reads them, runs the sanity checks and starts the arm damped
  (``kp = 0``, ``kd = default_kd``); while ``kp`` is zero the output command follows the measured
  position, so position commands are ignored until ``set_gain`` sets a non-zero ``kp``;
* ``set_gain`` refuses (RuntimeError, and the background loop stops) to raise ``kp`` above 1 from
  zero when the commanded position is more than 0.2 rad from the measured one;
* ``set_joint_cmd``: a timestamp of 0 means ``now + default_preview_time``; a timestamp within
  1 ms of now replaces the trajectory (``init_fixed``), a later one becomes the end of a linear
  segment from the current interpolated command (``override_waypoint``), an earlier one raises
  ValueError; the background loop samples the interpolator every ``controller_dt`` seconds of the
  controller clock (``get_timestamp``), clipping to the position limits and to ``joint_vel_max *
  controller_dt`` per tick;
* a gripper readout outside ``0 .. gripper_width`` (give ``SCENARIO['gripper_motor_readout']`` a
  raw motor angle, converted with ``gripper_open_readout`` as the SDK does) enters the SDK's
  emergency loop, inside the constructor too: the constructor never returns;
* an emergency (:meth:`Arx5JointController._fake_emergency`, e.g. over-current) stops the state
  updates; in the real SDK the emergency loop re-locks a mutex it holds, so every method that
  takes the command mutex (``set_joint_cmd``, ``set_gain``, ``get_gain``, ``get_joint_cmd``,
  ``set_to_damping``, ``reset_to_home``) would block forever: the fake records such calls in
  ``deadlocked_calls`` instead of blocking;
* ``reset_to_home`` blocks (gains ramped over ``max(error, 0.5)`` s, then 0.5 s more) and goes to
  the SDK's zero pose with the gripper open.

Differences a test must know: the real bindings keep the GIL during every call (a hang freezes
every Python thread); the fake's constructor hang waits with the GIL released unless
``SCENARIO['hang_holds_gil']`` is true. ``Arx5CartesianController``, ``Arx5Solver``, forward
kinematics and calibration are not modelled (they raise NotImplementedError).

Test hooks (not part of the SDK): module level :data:`SCENARIO` (also read as JSON from the
environment variable ``ARX5_FAKE_SCENARIO`` at import, for child processes), :data:`CONTROLLERS`,
:data:`RECEIVED`, :func:`reset`, :func:`use_manual_clock`, :func:`advance`,
:func:`release_hangs`; per controller the underscored ``_interface``, ``_received`` (its
commands), ``_command_log`` (``(time, pos, gripper)`` of every tick's output command),
``_deadlocked_calls``, ``_reset_to_home_calls``, ``_fake_emergency()``, ``_fake_can_lost()``.
"""

from __future__ import annotations

import collections
import ctypes
import json
import math
import os
import threading
import time
import weakref
from typing import Any

import numpy as np

#: Behaviour switches for the next controllers (see the module docstring).
SCENARIO: dict[str, Any] = {}
#: Every controller constructed (also the ones whose constructor hangs), oldest first.
CONTROLLERS: list[Arx5JointController] = []
#: Every set_joint_cmd of every controller, in call order: (interface, resolved command).
RECEIVED: list[tuple[str, JointState]] = []

_HANG_RELEASE = threading.Event()
_CLOCK: dict[str, Any] = {'manual': False, 'now': 0.0, 'next_tick': 0.0}
_CLOCK_LOCK = threading.RLock()


def _now() -> float:
    return _CLOCK['now'] if _CLOCK['manual'] else time.monotonic()


def reset() -> None:
    """Stop every fake controller, release hangs, forget the scenario, back to the real clock."""
    _HANG_RELEASE.set()
    for ctrl in CONTROLLERS:
        ctrl._fake_stop()
    CONTROLLERS.clear()
    RECEIVED.clear()
    SCENARIO.clear()
    SCENARIO.update(json.loads(os.environ.get('ARX5_FAKE_SCENARIO') or '{}'))
    _CLOCK.update(manual=False, now=0.0)
    _HANG_RELEASE.clear()


def use_manual_clock(start: float = 100.0) -> None:
    """Controllers made from now on run no background thread: :func:`advance` moves time."""
    _CLOCK.update(manual=True, now=float(start), next_tick=float(start))


def advance(seconds: float) -> None:
    """Manual clock: move time forward, ticking every controller at its ``controller_dt``."""
    end = _CLOCK['now'] + seconds
    with _CLOCK_LOCK:
        while True:  # ticks on a fixed grid of the clock, like the SDK's loop
            live = [c for c in CONTROLLERS if c._constructed and not c._stopped]
            step = min((c._cc.controller_dt for c in live), default=0.002)
            if _CLOCK['next_tick'] <= _CLOCK['now']:
                _CLOCK['next_tick'] = _CLOCK['now'] + step
            if not live or _CLOCK['next_tick'] > end + 1e-12:
                _CLOCK['now'] = end
                return
            _CLOCK['now'] = _CLOCK['next_tick']
            _CLOCK['next_tick'] += step
            for c in live:
                c._tick()


def release_hangs() -> None:
    """Let constructors stuck in the emergency loop raise (so their threads end)."""
    _HANG_RELEASE.set()


def _readonly(value: Any) -> np.ndarray:
    arr = np.array(value, dtype=np.float64)
    arr.setflags(write=False)  # like the bindings: assign a whole new array, never index
    return arr


class _Value:
    """A pybind11 enum value."""

    def __init__(self, owner: str, label: str) -> None:
        self._label = f'{owner}.{label}'

    def __repr__(self) -> str:
        return f'<{self._label}>'


class MotorType:
    EC_A4310: MotorType
    DM_J4310: MotorType
    DM_J4340: MotorType
    NONE: MotorType


for _label in ('EC_A4310', 'DM_J4310', 'DM_J4340', 'NONE'):
    setattr(MotorType, _label, _Value('MotorType', _label))


class LogLevel:
    TRACE: LogLevel
    DEBUG: LogLevel
    INFO: LogLevel
    WARNING: LogLevel
    ERROR: LogLevel
    CRITICAL: LogLevel
    OFF: LogLevel


for _label in ('TRACE', 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL', 'OFF'):
    setattr(LogLevel, _label, _Value('LogLevel', _label))


class _Config:
    _arrays: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self._arrays:
            value = _readonly(value)
        object.__setattr__(self, name, value)

    def _copy(self):
        out = object.__new__(type(self))
        for k, v in vars(self).items():
            if isinstance(v, np.ndarray):
                v = _readonly(v)
            object.__setattr__(out, k, list(v) if isinstance(v, list) else v)
        return out


class RobotConfig(_Config):
    """Does not have a constructor, use RobotConfigFactory.get_instance().get_config(...)."""

    _arrays = ('joint_pos_min', 'joint_pos_max', 'joint_vel_max', 'joint_torque_max',
               'ee_vel_max', 'gravity_vector')
    robot_model: str
    joint_pos_min: np.ndarray
    joint_pos_max: np.ndarray
    joint_vel_max: np.ndarray
    joint_torque_max: np.ndarray
    ee_vel_max: np.ndarray
    gripper_vel_max: float
    gripper_torque_max: float
    gripper_width: float
    gripper_open_readout: float
    joint_dof: int
    motor_id: list[int]
    motor_type: list[MotorType]
    gripper_motor_id: int
    gripper_motor_type: MotorType
    gravity_vector: np.ndarray
    base_link_name: str
    eef_link_name: str
    urdf_path: str

    def __init__(self) -> None:
        raise TypeError('arx5_interface.RobotConfig: No constructor defined!')


class ControllerConfig(_Config):
    """Does not have a constructor, use ControllerConfigFactory.get_instance().get_config(...)."""

    _arrays = ('default_kp', 'default_kd')
    controller_type: str
    default_kp: np.ndarray
    default_kd: np.ndarray
    default_gripper_kp: float
    default_gripper_kd: float
    over_current_cnt_max: int
    controller_dt: float
    gravity_compensation: bool
    background_send_recv: bool
    shutdown_to_passive: bool
    interpolation_method: str
    default_preview_time: float

    def __init__(self) -> None:
        raise TypeError('arx5_interface.ControllerConfig: No constructor defined!')


def _robot_config(model, pos_min, pos_max, vel_max, torque_max, width, readout, motors):
    rc = object.__new__(RobotConfig)
    ec, dm, dm40 = MotorType.EC_A4310, MotorType.DM_J4310, MotorType.DM_J4340
    kinds = {'X': [ec, ec, ec, dm, dm, dm], 'L': [dm40, dm40, dm40, dm, dm, dm],
             '7': [dm40] * 4 + [dm] * 3}[motors]
    values = dict(robot_model=model, joint_pos_min=pos_min, joint_pos_max=pos_max,
                  joint_vel_max=vel_max, joint_torque_max=torque_max,
                  ee_vel_max=[0.6, 0.6, 0.6, 1.8, 1.8, 1.8], gripper_vel_max=0.3,
                  gripper_torque_max=1.5, gripper_width=width, gripper_open_readout=readout,
                  joint_dof=len(pos_min),
                  motor_id=list(range(1, 8)) if motors == '7' else [1, 2, 4, 5, 6, 7],
                  motor_type=kinds, gripper_motor_id=8, gripper_motor_type=dm,
                  gravity_vector=[0.0, 0.0, -9.807], base_link_name='base_link',
                  eef_link_name='eef_link', urdf_path=f'models/{model}.urdf')
    for k, v in values.items():
        setattr(rc, k, v)
    return rc


_X5_MIN, _X5_MAX = [-3.14, -0.05, -0.1, -1.6, -1.57, -2], [2.618, 3.50, 3.20, 1.55, 1.57, 2]
_X5_VEL, _X5_TORQUE = [5.0, 5.0, 5.5, 5.5, 5.0, 5.0], [30.0, 40.0, 30.0, 15.0, 10.0, 10.0]
_X7_VEL, _X7_TORQUE = [3.0, 5.0, 5.0, 5.5, 5.5, 5.0, 5.0], [30.0, 30.0, 40.0, 30.0, 15, 10, 10]


class RobotConfigFactory:
    _instance: RobotConfigFactory | None = None

    def __init__(self) -> None:
        self._configs = {
            'X5': _robot_config('X5', _X5_MIN, _X5_MAX, _X5_VEL, _X5_TORQUE, 0.088, 5.03, 'X'),
            'X5_umi': _robot_config('X5_umi', _X5_MIN, _X5_MAX, _X5_VEL, _X5_TORQUE, 0.086, 4.90,
                                    'X'),
            'L5': _robot_config('L5', _X5_MIN, _X5_MAX, _X5_VEL, _X5_TORQUE, 0.088, 5.03, 'L'),
            'L5_umi': _robot_config('L5_umi', _X5_MIN, _X5_MAX, _X5_VEL, _X5_TORQUE, 0.086, 4.90,
                                    'L'),
            'X7_left': _robot_config(
                'X7_left', [-2.09439, -1.5, -1.5, -1.5, -1.2, -0.3, -0.7854],
                [2.09439, 0.3, 1.5, 0.3, 1.2, 0.7854, 0.7854], _X7_VEL, _X7_TORQUE, 0.088, 5.03,
                '7'),
            'X7_right': _robot_config(
                'X7_right', [-2.09439, -0.3, -1.5, -0.3, -1.2, -0.7854, -0.7854],
                [2.09439, 1.5, 1.5, 1.5, 1.2, 0.3, 0.7854], _X7_VEL, _X7_TORQUE, 0.088, 5.03,
                '7'),
        }

    @classmethod
    def get_instance(cls) -> RobotConfigFactory:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def get_config(self, robot_model: str) -> RobotConfig:
        if robot_model not in self._configs:
            raise RuntimeError('Unknown robot model. Currently available: '
                               + ' '.join(self._configs) + ' ')
        return self._configs[robot_model]._copy()


def _controller_config(kind, kp, kd, preview):
    cc = object.__new__(ControllerConfig)
    values = dict(controller_type=kind, default_kp=kp, default_kd=kd, default_gripper_kp=5.0,
                  default_gripper_kd=0.2, over_current_cnt_max=20, controller_dt=0.002,
                  gravity_compensation=True, background_send_recv=True,
                  shutdown_to_passive=True, interpolation_method='linear',
                  default_preview_time=preview)
    for k, v in values.items():
        setattr(cc, k, v)
    return cc


class ControllerConfigFactory:
    _instance: ControllerConfigFactory | None = None

    def __init__(self) -> None:
        self._configs = {
            'joint_controller_7': _controller_config(
                'joint_controller', [80.0, 70.0, 70.0, 70.0, 30.0, 30.0, 20.0],
                [2.0, 2.0, 2.0, 2.0, 1.0, 1.0, 0.7], 0.0),
            'joint_controller_6': _controller_config(
                'joint_controller', [80.0, 70.0, 70.0, 30.0, 30.0, 20.0],
                [2.0, 2.0, 2.0, 1.0, 1.0, 0.7], 0.0),
            'cartesian_controller_7': _controller_config(
                'cartesian_controller', [300.0, 300.0, 300.0, 300.0, 80.0, 50.0, 40.0],
                [5.0, 5.0, 5.0, 5.0, 1.0, 1.0, 1.0], 0.1),
            'cartesian_controller_6': _controller_config(
                'cartesian_controller', [200.0, 200.0, 200.0, 120.0, 80.0, 60.0],
                [5.0, 5.0, 5.0, 1.0, 1.0, 1.0], 0.1),
        }

    @classmethod
    def get_instance(cls) -> ControllerConfigFactory:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def get_config(self, controller_type: str, joint_dof: int) -> ControllerConfig:
        key = f'{controller_type}_{joint_dof}'
        if key not in self._configs:
            raise RuntimeError('Unknown controller type. Currently available: joint_controller, '
                               'cartesian_controller')
        return self._configs[key]._copy()


class Gain:
    def __init__(self, *args: Any) -> None:
        if len(args) == 1:
            dof = int(args[0])
            self._kp, self._kd = np.zeros(dof), np.zeros(dof)
            self.gripper_kp = self.gripper_kd = 0.0
        elif len(args) == 4:
            self._kp = np.array(args[0], dtype=np.float64)
            self._kd = np.array(args[1], dtype=np.float64)
            if self._kp.shape != self._kd.shape:
                raise ValueError('Length of kp is not equal to kd.')
            self.gripper_kp, self.gripper_kd = float(args[2]), float(args[3])
        else:
            raise TypeError('__init__(): incompatible constructor arguments')

    def kp(self) -> np.ndarray:
        return self._kp

    def kd(self) -> np.ndarray:
        return self._kd

    def __add__(self, other: Gain) -> Gain:
        return Gain(self._kp + other._kp, self._kd + other._kd,
                    self.gripper_kp + other.gripper_kp, self.gripper_kd + other.gripper_kd)

    def __mul__(self, scalar: float) -> Gain:
        return Gain(self._kp * scalar, self._kd * scalar, self.gripper_kp * scalar,
                    self.gripper_kd * scalar)


class JointState:
    def __init__(self, *args: Any) -> None:
        self.timestamp = 0.0
        self.gripper_pos = self.gripper_vel = self.gripper_torque = 0.0
        if len(args) == 1:
            dof = int(args[0])
            self._pos, self._vel, self._torque = np.zeros(dof), np.zeros(dof), np.zeros(dof)
        elif len(args) in (4, 6):
            self._pos, self._vel, self._torque = (np.array(a, dtype=np.float64)
                                                  for a in args[:3])
            if not self._pos.shape == self._vel.shape == self._torque.shape:
                raise ValueError('pos, vel and torque must have the same length')
            self.gripper_pos = float(args[3])
            if len(args) == 6:
                self.gripper_vel, self.gripper_torque = float(args[4]), float(args[5])
        else:
            raise TypeError('__init__(): incompatible constructor arguments')

    def __add__(self, other: JointState) -> JointState:
        return JointState(self._pos + other._pos, self._vel + other._vel,
                          self._torque + other._torque, self.gripper_pos + other.gripper_pos,
                          self.gripper_vel + other.gripper_vel,
                          self.gripper_torque + other.gripper_torque)

    def __mul__(self, scalar: float) -> JointState:
        return JointState(self._pos * scalar, self._vel * scalar, self._torque * scalar,
                          self.gripper_pos * scalar, self.gripper_vel * scalar,
                          self.gripper_torque * scalar)

    def pos(self) -> np.ndarray:
        return self._pos

    def vel(self) -> np.ndarray:
        return self._vel

    def torque(self) -> np.ndarray:
        return self._torque

    def _copy(self, timestamp: float | None = None) -> JointState:
        out = self * 1.0
        out.timestamp = self.timestamp if timestamp is None else timestamp
        return out


class EEFState:
    def __init__(self, *args: Any) -> None:
        self.timestamp = 0.0
        self.gripper_pos = self.gripper_vel = self.gripper_torque = 0.0
        self._pose = np.zeros(6) if not args else np.array(args[0], dtype=np.float64)
        if len(args) >= 2:
            self.gripper_pos = float(args[1])
        if len(args) == 4:
            self.gripper_vel, self.gripper_torque = float(args[2]), float(args[3])

    def __add__(self, other: EEFState) -> EEFState:
        return EEFState(self._pose + other._pose, self.gripper_pos + other.gripper_pos,
                        self.gripper_vel + other.gripper_vel,
                        self.gripper_torque + other.gripper_torque)

    def __mul__(self, scalar: float) -> EEFState:
        return EEFState(self._pose * scalar, self.gripper_pos * scalar,
                        self.gripper_vel * scalar, self.gripper_torque * scalar)

    def pose_6d(self) -> np.ndarray:
        return self._pose


class _Interpolator:
    """JointStateInterpolator (linear) of src/utils.cpp."""

    def __init__(self) -> None:
        self.traj: list[JointState] = []

    def init_fixed(self, state: JointState) -> None:
        self.traj = [state._copy()]

    def override_waypoint(self, now: float, end: JointState) -> None:
        if end.timestamp <= now:
            raise ValueError('End time must be no less than current time')
        if now < self.traj[0].timestamp:
            raise RuntimeError('Current time must be no less than start time')
        self.traj = [self.interpolate(now), end._copy()]

    def override_traj(self, now: float, traj: list[JointState]) -> None:
        traj = [s for s in traj if s.timestamp >= now]
        if traj:
            self.traj = [self.interpolate(now)] + [s._copy() for s in traj]

    def interpolate(self, t: float) -> JointState:
        if t <= 0:
            raise ValueError('Interpolate time must be greater than 0')
        tr = self.traj
        if len(tr) == 1 or t <= tr[0].timestamp:
            return tr[0]._copy(t)
        if t >= tr[-1].timestamp:
            return tr[-1]._copy(t)
        for a, b in zip(tr, tr[1:], strict=False):
            if a.timestamp <= t <= b.timestamp:
                out = a + (b + a * -1.0) * ((t - a.timestamp) / (b.timestamp - a.timestamp))
                out.timestamp = t
                return out
        return tr[-1]._copy(t)


def _not_modelled(name: str):
    def method(self, *args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError(f'{name} is not modelled by the fake arx5_interface')
    method.__name__ = name
    return method


class Arx5JointController:
    """One arm on one CAN interface, with the SDK's 500 Hz background loop (see module doc)."""

    def __init__(self, *args: Any) -> None:
        if len(args) == 2:
            factory = RobotConfigFactory.get_instance()
            rc = factory.get_config(args[0])
            cc = ControllerConfigFactory.get_instance().get_config('joint_controller',
                                                                   rc.joint_dof)
            interface = args[1]
        elif len(args) == 3:
            rc, cc, interface = args[0]._copy(), args[1]._copy(), args[2]
        else:
            raise TypeError('__init__(): incompatible constructor arguments')
        self._rc, self._cc, self._interface = rc, cc, str(interface)
        self._constructed = self._stopped = self._emergency = False
        self._can_lost = False
        self._running = False
        self._cmd_lock = threading.Lock()
        dof = rc.joint_dof
        self._gain = Gain(dof)
        self._received: list[JointState] = []  # every set_joint_cmd, with its resolved timestamp
        self._command_log: collections.deque = collections.deque(maxlen=200_000)
        self._deadlocked_calls: list[str] = []
        self._reset_to_home_calls = 0
        self._log_level = LogLevel.INFO
        CONTROLLERS.append(self)
        if self._interface in SCENARIO.get('fail_interfaces', ()):
            raise RuntimeError(
                f'Failed to open USB-CAN adapter with interface name {self._interface}')
        if self._interface in SCENARIO.get('unpowered', ()):
            raise RuntimeError('None of the motors are initialized. Please check the connection '
                               'or power of the arm.')
        self._start = _now() - 1e-3
        self._rng = np.random.default_rng(len(CONTROLLERS))
        initial = SCENARIO.get('initial_pos', {}).get(self._interface)
        pos = np.array(initial if initial is not None else [0.01] * dof, dtype=np.float64)
        readout = SCENARIO.get('gripper_motor_readout', {}).get(self._interface, 0.0)
        self._state = JointState(pos, np.zeros(dof), np.zeros(dof),
                                 readout / rc.gripper_open_readout * rc.gripper_width)
        self._state.timestamp = self.get_timestamp()
        if not self._sane():  # the SDK's init_robot_ -> enter_emergency_state_: never returns
            self._hang()
        self._gain = Gain(dof)
        self._gain._kd = np.array(cc.default_kd)
        self._output = self._state._copy()
        self._output._vel[:] = 0.0
        self._interp = _Interpolator()
        self._interp.init_fixed(self._output)
        self._constructed = True
        self._running = bool(cc.background_send_recv)
        self._thread = None
        if not _CLOCK['manual']:
            self._thread = threading.Thread(target=_background, args=(weakref.ref(self),),
                                            name=f'fake-arx5-{self._interface}', daemon=True)
            self._thread.start()

    # -- behaviour ----------------------------------------------------------------------------
    def _hang(self) -> None:
        if SCENARIO.get('hang_holds_gil'):
            libc = ctypes.PyDLL(None)  # a PyDLL call keeps the GIL, like the real bindings
            while True:
                libc.usleep(100_000)
        _HANG_RELEASE.wait()
        raise RuntimeError('fake arx5_interface: released from the emergency loop by the test')

    def _sane(self) -> bool:
        rc, st = self._rc, self._state
        if st.gripper_pos < -0.005 or st.gripper_pos > rc.gripper_width + 0.005:
            return False
        return bool(np.all(np.abs(st._pos) <= rc.joint_pos_max + 3.14))

    def _fake_stop(self) -> None:
        self._stopped = True

    def _fake_emergency(self) -> None:
        """Over-current (or any sanity error): the SDK's emergency loop; state stops updating."""
        self._emergency = True

    def _fake_can_lost(self) -> None:
        """The CAN adapter stops delivering motor messages: readings freeze, stamps go on."""
        self._can_lost = True

    def _deadlocks(self, name: str) -> bool:
        if self._emergency:
            self._deadlocked_calls.append(name)
            return True
        return False

    def _tick(self) -> None:
        if self._stopped or not self._running or self._emergency:
            return
        rc, dt = self._rc, self._cc.controller_dt
        now = self.get_timestamp()
        with self._cmd_lock:
            prev, gain = self._output, self._gain
            out = self._interp.interpolate(now)
            out._pos = np.clip(out._pos, rc.joint_pos_min, rc.joint_pos_max)
            for i in range(rc.joint_dof):
                if gain._kp[i] > 0:
                    step = out._pos[i] - prev._pos[i]
                    if abs(step) > rc.joint_vel_max[i] * dt:
                        out._pos[i] = prev._pos[i] + math.copysign(rc.joint_vel_max[i] * dt, step)
                else:
                    out._pos[i] = self._state._pos[i]
            if gain.gripper_kp > 0:
                step = out.gripper_pos - prev.gripper_pos
                if abs(step) / dt > rc.gripper_vel_max:
                    out.gripper_pos = prev.gripper_pos + math.copysign(rc.gripper_vel_max * dt,
                                                                       step)
            else:
                out.gripper_pos = self._state.gripper_pos
            out.gripper_pos = min(max(out.gripper_pos, 0.0), rc.gripper_width)
            self._output = out
            self._command_log.append((now, out._pos.copy(), out.gripper_pos))
        st = self._state
        if not self._can_lost:
            new = out._pos if gain._kp.max() > 0 else st._pos
            st._vel = (new - st._pos) / dt
            st._pos = new.copy()
            st._torque = self._rng.normal(0.0, 0.01, rc.joint_dof)  # current noise
            if gain.gripper_kp > 0:
                st.gripper_vel = (out.gripper_pos - st.gripper_pos) / dt
                st.gripper_pos = out.gripper_pos
        st.timestamp = now

    # -- the SDK's methods (python/arx5_interface.pyi) ----------------------------------------
    def send_recv_once(self) -> None:
        if not self._running:
            self._tick_manual()

    def _tick_manual(self) -> None:
        self._running = True
        try:
            self._tick()
        finally:
            self._running = False

    def recv_once(self) -> None:
        return None

    def set_joint_cmd(self, cmd: JointState) -> None:
        if self._deadlocks('set_joint_cmd'):
            return
        now = self.get_timestamp()
        new = cmd._copy()
        if new.timestamp == 0:
            new.timestamp = now + self._cc.default_preview_time
        with self._cmd_lock:
            self._received.append(new._copy())
            RECEIVED.append((self._interface, new._copy()))
            if abs(new.timestamp - now) < 1e-3:
                self._interp.init_fixed(new)
            else:
                self._interp.override_waypoint(now, new)

    def set_joint_traj(self, traj: list[JointState]) -> None:
        if self._deadlocks('set_joint_traj'):
            return
        with self._cmd_lock:
            self._interp.override_traj(self.get_timestamp(), list(traj))

    def get_joint_cmd(self) -> JointState:
        if self._deadlocks('get_joint_cmd'):
            return self._output._copy()
        with self._cmd_lock:
            return self._output._copy()

    def get_timestamp(self) -> float:
        return _now() - self._start

    def get_joint_state(self) -> JointState:
        return self._state._copy()

    def set_gain(self, gain: Gain) -> None:
        if self._deadlocks('set_gain'):
            return
        if not self._gain._kp.any() and gain._kp.any():
            err = float(np.max(np.abs(self._state._pos - self._output._pos)))
            if err > 0.2 and gain._kp.max() > 1:
                self._running = False
                raise RuntimeError('Cannot set kp to non-zero when the joint pos cmd is far from '
                                   'current pos.')
        with self._cmd_lock:
            self._gain = Gain(gain._kp, gain._kd, gain.gripper_kp, gain.gripper_kd)

    def get_gain(self) -> Gain:
        self._deadlocks('get_gain')
        return Gain(self._gain._kp, self._gain._kd, self._gain.gripper_kp, self._gain.gripper_kd)

    def get_robot_config(self) -> RobotConfig:
        return self._rc._copy()

    def get_controller_config(self) -> ControllerConfig:
        return self._cc._copy()

    def reset_to_home(self) -> None:
        if self._deadlocks('reset_to_home'):
            return
        self._reset_to_home_calls += 1
        rc, cc = self._rc, self._cc
        init_gain = self.get_gain()
        target_gain = init_gain if init_gain._kp.any() else Gain(
            cc.default_kp, cc.default_kd, cc.default_gripper_kp, cc.default_gripper_kd)
        st = self.get_joint_state()
        err = max(float(np.max(np.abs(st._pos))),
                  abs(st.gripper_pos - rc.gripper_width) * 2 / rc.gripper_width)
        wait = max(err, 0.5)
        target = JointState(rc.joint_dof)
        target._pos[2] = 0.03
        target.gripper_pos = rc.gripper_width
        target.timestamp = self.get_timestamp() + wait
        start = JointState(st._pos, np.zeros(rc.joint_dof), np.zeros(rc.joint_dof),
                           st.gripper_pos)
        start.timestamp = self.get_timestamp()
        with self._cmd_lock:
            self._interp.traj = [start, target]
        steps = max(1, int(wait / cc.controller_dt))
        for i in range(steps + 1):  # gains ramped while the arm moves (blocks, like the SDK)
            alpha = i / steps
            with self._cmd_lock:
                self._gain = init_gain * (1 - alpha) + target_gain * alpha
            _sleep(cc.controller_dt)
        target._pos[2] = 0.0
        target.timestamp = self.get_timestamp() + 0.5
        with self._cmd_lock:
            self._interp.override_waypoint(self.get_timestamp(), target)

    def set_to_damping(self) -> None:
        if self._deadlocks('set_to_damping'):
            return
        with self._cmd_lock:
            self._gain = Gain(np.zeros(self._rc.joint_dof), self._cc.default_kd, 0.0, 0.0)
        _sleep(0.01)
        st = self.get_joint_state()
        st._vel[:] = 0.0
        st._torque[:] = 0.0
        with self._cmd_lock:
            self._interp.init_fixed(st)

    def set_log_level(self, level: LogLevel) -> None:
        self._log_level = level

    get_eef_state = _not_modelled('get_eef_state')
    get_home_pose = _not_modelled('get_home_pose')
    calibrate_gripper = _not_modelled('calibrate_gripper')
    calibrate_joint = _not_modelled('calibrate_joint')


def _sleep(seconds: float) -> None:
    if _CLOCK['manual']:
        advance(seconds)
    else:
        time.sleep(seconds)


def _background(ref: weakref.ref) -> None:
    """The SDK's background_send_recv_ thread: one tick per controller_dt."""
    while True:
        ctrl = ref()
        if ctrl is None or ctrl._stopped:
            return
        dt = ctrl._cc.controller_dt
        ctrl._tick()
        del ctrl
        time.sleep(dt)


class Arx5CartesianController:
    __init__ = _not_modelled('Arx5CartesianController')


for _name in ('set_eef_cmd', 'set_eef_traj', 'get_joint_cmd', 'get_eef_cmd', 'get_eef_state',
              'get_joint_state', 'get_timestamp', 'set_gain', 'get_gain', 'get_home_pose',
              'set_log_level', 'get_robot_config', 'get_controller_config', 'reset_to_home',
              'set_to_damping'):
    setattr(Arx5CartesianController, _name, _not_modelled(_name))


class Arx5Solver:
    __init__ = _not_modelled('Arx5Solver')


for _name in ('inverse_dynamics', 'inverse_kinematics', 'multi_trial_ik', 'get_ik_status_name',
              'forward_kinematics'):
    setattr(Arx5Solver, _name, _not_modelled(_name))

del _name, _label
reset()
