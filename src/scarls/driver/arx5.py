"""Real ARX5 arms through the vendor Python SDK ``arx5_interface``, one arm per CAN interface.

The SDK is https://github.com/real-stanford/arx5-sdk (``pip install arx5-interface`` or its own
cmake build). What this backend relies on, read in its source at commit ``79240ef``
(``python/arx5_interface.pyi``, ``src/app/controller_base.cpp``, ``src/app/joint_controller.cpp``,
``include/app/config.h``, ``src/utils.cpp``):

* ``Arx5JointController(robot_config, controller_config, interface)`` with the configs from
  ``RobotConfigFactory`` / ``ControllerConfigFactory`` (``get_instance().get_config(...)``),
  edited before the constructor (whole arrays assigned, never indexed). Its constructor starts the
  arm **damped** (``kp = 0``): position commands are ignored until ``set_gain`` sets a non-zero
  ``kp``. A gripper readout outside ``0 .. gripper_width`` (wrong ``gripper_open_readout``) makes
  the constructor loop forever in the SDK's emergency state.
* ``set_joint_cmd(JointState)`` with ``timestamp`` on the controller clock (``get_timestamp()``):
  the SDK's 500 Hz loop interpolates linearly from where it is to the target, reached at that
  time. An unstamped command (timestamp 0, ``default_preview_time`` 0) is a step: streamed at
  30 Hz, it is a staircase the arm follows at its velocity limit. Every command here is stamped
  ``now + preview_time_s``; a hold is unstamped on purpose (a fixed target, at once).
* Emergencies (over-current, a sanity-check error) put the SDK's own loop into a state that no
  longer updates the joint state (its timestamp stops) and, per the source, no longer answers
  calls that take its command mutex; nothing else is exposed (no error flag, no CAN status).
  This backend therefore watches the joint-state timestamp and, as a heuristic for a silent
  CAN bus, bit-identical readings, and never calls a faulted arm's command methods again.
* The bindings keep the GIL for the whole of every call: a call that hangs freezes every Python
  thread of the process. The constructor's known hang is therefore caught in a child process
  first (``connect_probe``); the worker-thread deadline around the in-process constructor only
  helps when the SDK build releases the GIL.

The joint vector, units, limits and home pose come from the robot description
(:mod:`scarls.robot`, default ``arx5_pair``): for each arm its joints then its gripper, grippers
normalised ``0 closed .. 1 open`` and converted to the SDK's metres with the description's
``closed``/``open`` values. The mapping is pure functions (:func:`arm_layouts`,
:func:`split_command`, :func:`merge_readings`, :func:`limits_from_arms`, :func:`min_jerk`), tested
without hardware; the SDK is imported only in :meth:`Arx5Backend.connect`.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
import math
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from scarls.driver.base import JointSample, RobotBackend, validate_command
from scarls.driver.safety import BackendError, ConfigError, JointLimits
from scarls.robot import RobotDescription, RobotDescriptionError, load_robot

__all__ = [
    'DEFAULT_ROBOT',
    'SDK_INSTALL_HINT',
    'SDK_SOURCE',
    'ArmLayout',
    'ArmLimits',
    'ArmReading',
    'ArmTarget',
    'Arx5Backend',
    'Arx5Config',
    'MotionAborted',
    'arm_layouts',
    'gripper_from_metres',
    'gripper_to_metres',
    'limits_from_arms',
    'merge_readings',
    'min_jerk',
    'split_command',
]

logger = logging.getLogger(__name__)

#: The description used when the backend is given none.
DEFAULT_ROBOT = 'arx5_pair'
#: The SDK source this backend was written against.
SDK_SOURCE = 'github.com/real-stanford/arx5-sdk@79240efc2e0d75fdc1e50a8b883c5e928fbfc681'
#: Controller type given to the SDK's ControllerConfigFactory.
CONTROLLER_TYPE = 'joint_controller'

SDK_INSTALL_HINT = (
    "the ARX5 backend needs the vendor SDK Python module 'arx5_interface': install it with "
    '`pip install arx5-interface` or build it from https://github.com/real-stanford/arx5-sdk '
    "(its README: conda environment, cmake build) and put the built python/ folder on PYTHONPATH "
    "or in the backend's sdk_path; the CAN adapters of both arms must be configured and up (e.g. "
    'can0 and can1, `ip link set up can0 type can bitrate 1000000`) before connecting'
)

_CONNECT_CHECKS = (
    'check the gripper calibration (the SDK refuses a gripper readout outside 0..gripper_width '
    'and never returns: set gripper_open_readout in the robot file, e.g. -3.4 on arms whose '
    'gripper motor is mounted reversed, or recalibrate with the SDK\'s calibrate.py), that the '
    'CAN interface is up and belongs to this arm (ip -details link show {iface}), and that the '
    'arm is powered'
)


class MotionAborted(BackendError):
    """A reset motion was stopped by :meth:`Arx5Backend.abort_motion` / ``hold`` / ``damp``."""


# --------------------------------------------------------------------------- pure mapping
def gripper_to_metres(value: float, open_m: float, closed_m: float = 0.0) -> float:
    """Normalised gripper value (0 closed .. 1 open) to SDK metres (``closed_m .. open_m``)."""
    return float(closed_m) + float(value) * (float(open_m) - float(closed_m))


def gripper_from_metres(metres: float, open_m: float, closed_m: float = 0.0) -> float:
    """SDK gripper metres (``closed_m .. open_m``) to the normalised value (0 closed .. 1 open)."""
    return (float(metres) - float(closed_m)) / (float(open_m) - float(closed_m))


@dataclass(frozen=True)
class ArmLayout:
    """Where one arm lives in the joint vector, and its gripper's stroke in SDK metres.

    Attributes:
        name: arm name in the description.
        joints: the arm's joints in the joint vector.
        gripper: index of its gripper in the joint vector (None: the arm has none).
        closed_m / open_m: the gripper's SDK width (m) when fully closed / open.
    """

    name: str
    joints: slice
    gripper: int | None
    closed_m: float = 0.0
    open_m: float = 0.088

    @property
    def dof(self) -> int:
        return self.joints.stop - self.joints.start


def arm_layouts(
    robot: RobotDescription,
    sdk_widths: Mapping[str, float] | None = None,
) -> tuple[ArmLayout, ...]:
    """Per-arm layout of ``robot``'s joint vector.

    A gripper in ``metres`` uses the description's ``closed``/``open``; a ``normalized`` one is
    mapped onto ``0 .. sdk_widths[arm]`` (the SDK's ``gripper_width``, default 0.088 m).

    Raises:
        ConfigError: a gripper in radians, or a metres gripper whose stroke is not
            ``0 <= closed < open``.
    """
    out = []
    for arm in robot.arms:
        g = arm.gripper
        width = float((sdk_widths or {}).get(arm.name, 0.088))
        closed_m, open_m = 0.0, width
        if g is not None and g.unit == 'metres':
            closed_m, open_m = g.closed, g.open
            if not 0.0 <= closed_m < open_m:
                raise ConfigError(
                    f'robot {robot.name!r} arm {arm.name!r}: an ARX5 gripper needs '
                    f'0 <= closed < open metres, got closed={closed_m} open={open_m}')
        elif g is not None and g.unit != 'normalized':
            raise ConfigError(
                f'robot {robot.name!r} arm {arm.name!r}: the ARX5 SDK drives grippers in metres '
                f'of width; gripper unit {g.unit!r} is not supported (use unit: metres)')
        out.append(ArmLayout(arm.name, robot.arm_slice(arm.name), robot.gripper_index(arm.name),
                             closed_m, open_m))
    return tuple(out)


@dataclass(frozen=True, eq=False)
class ArmTarget:
    """Command for one ARX5 arm: ``joints`` (dof,) rad, ``gripper_m`` metres (None: no gripper)."""

    joints: np.ndarray
    gripper_m: float | None


@dataclass(frozen=True, eq=False)
class ArmReading:
    """State of one ARX5 arm as the SDK reports it (rad, rad/s, m, m/s)."""

    joints: np.ndarray
    velocities: np.ndarray
    gripper_m: float
    gripper_vel_m: float = 0.0


@dataclass(frozen=True, eq=False)
class ArmLimits:
    """Limits of one arm from the SDK's ``RobotConfig`` (rad, rad/s, m/s)."""

    joint_min: np.ndarray
    joint_max: np.ndarray
    joint_vel_max: np.ndarray
    gripper_vel_max: float


def _num_joints(layouts: Sequence[ArmLayout]) -> int:
    return max(max(lay.joints.stop, (lay.gripper or 0) + 1) for lay in layouts)


def split_command(q: np.ndarray, layouts: Sequence[ArmLayout]) -> tuple[ArmTarget, ...]:
    """Split a joint vector into one target per arm (in ``layouts`` order), grippers in metres.

    Raises:
        ConfigError: ``q`` does not have the layouts' length.
    """
    q = np.asarray(q, dtype=np.float64)
    n = _num_joints(layouts)
    if q.shape != (n,):
        raise ConfigError(f'expected a ({n},) joint vector, got {q.shape}')
    return tuple(
        ArmTarget(q[lay.joints].copy(),
                  None if lay.gripper is None
                  else gripper_to_metres(q[lay.gripper], lay.open_m, lay.closed_m))
        for lay in layouts)


def merge_readings(
    readings: Sequence[ArmReading],
    layouts: Sequence[ArmLayout],
) -> tuple[np.ndarray, np.ndarray]:
    """One reading per arm -> ``(positions, velocities)`` joint vectors, grippers normalised."""
    n = _num_joints(layouts)
    pos, vel = np.zeros(n), np.zeros(n)
    for lay, reading in zip(layouts, readings, strict=True):
        pos[lay.joints] = np.asarray(reading.joints, dtype=np.float64)[:lay.dof]
        vel[lay.joints] = np.asarray(reading.velocities, dtype=np.float64)[:lay.dof]
        if lay.gripper is not None:
            pos[lay.gripper] = gripper_from_metres(reading.gripper_m, lay.open_m, lay.closed_m)
            vel[lay.gripper] = reading.gripper_vel_m / (lay.open_m - lay.closed_m)
    return pos, vel


def limits_from_arms(
    robot: RobotDescription,
    layouts: Sequence[ArmLayout],
    arms: Sequence[ArmLimits],
    max_joint_velocity: float | None = None,
) -> JointLimits:
    """The tighter of the description's and the SDK's limits, joint by joint.

    Grippers keep ``0 .. 1``; their speed is the lower of the description's and the SDK's
    ``gripper_vel_max`` (m/s) over the stroke. ``max_joint_velocity`` (rad/s) caps arm joints.

    Raises:
        ConfigError: a joint's range is empty once both are applied.
    """
    lower, upper, vel = robot.lower.copy(), robot.upper.copy(), robot.max_velocity.copy()
    for lay, arm in zip(layouts, arms, strict=True):
        sl = lay.joints
        lower[sl] = np.maximum(lower[sl], np.asarray(arm.joint_min, dtype=np.float64)[:lay.dof])
        upper[sl] = np.minimum(upper[sl], np.asarray(arm.joint_max, dtype=np.float64)[:lay.dof])
        v = np.minimum(vel[sl], np.asarray(arm.joint_vel_max, dtype=np.float64)[:lay.dof])
        vel[sl] = v if max_joint_velocity is None else np.minimum(v, max_joint_velocity)
        if lay.gripper is not None:
            stroke = lay.open_m - lay.closed_m
            vel[lay.gripper] = min(vel[lay.gripper], arm.gripper_vel_max / stroke)
    empty = [robot.joint_names[i] for i in np.flatnonzero(lower >= upper)]
    if empty:
        raise ConfigError(f'joints {empty} have no range left between the robot description '
                          "and the SDK's limits; check the arm model and the description")
    return JointLimits(lower, upper, vel)


def min_jerk(tau: float | np.ndarray) -> Any:
    """Minimum-jerk progress ``s(tau)`` for ``tau`` in 0..1 (zero velocity and acceleration at
    both ends; peak velocity 1.875 times the average)."""
    t = np.clip(tau, 0.0, 1.0)
    return t * t * t * (10.0 + t * (-15.0 + 6.0 * t))


# --------------------------------------------------------------------------- configuration
def _opt_vector(value: Any, name: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value]
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f'{name} must be a list of numbers, got {value!r}') from None
    if not out or not all(math.isfinite(v) and v >= 0 for v in out):
        raise ConfigError(f'{name} must be finite numbers >= 0, got {value!r}')
    return out


@dataclass(frozen=True)
class Arx5Config:
    """Configuration of :class:`Arx5Backend` (the ``backend:`` mapping of the robot file).

    Attributes:
        model: SDK robot model of every arm (``X5``, ``L5``, ``X5_umi``...; a wrong model can
            move the arm dangerously).
        left_interface / right_interface: CAN interfaces of the arms named ``left``/``right``
            (or of the first/second arm when the description names them otherwise).
        interfaces: arm name -> CAN interface, for any number of arms (overrides the two above).
        max_joint_velocity: cap (rad/s) on every arm joint's speed limit.
        gripper_open_readout: the gripper motor's readout when fully open (SDK
            ``RobotConfig.gripper_open_readout``; None = the model's default, 5.03 on X5);
            negative on arms whose gripper motor is mounted reversed (e.g. -3.4).
        kp / kd: joint gains, one per joint (None = the SDK's defaults for the model).
        gripper_kp / gripper_kd: gripper gains (None = the SDK's defaults).
        controller_dt: the SDK's control period in seconds (None = its default, 0.002).
        preview_time_s: each command is stamped to be reached this long after it is sent, and
            the SDK interpolates towards it (None = 1.5 control periods of the description).
        connect_timeout_s: deadline for opening each arm (also for the probe process).
        connect_probe: open each arm once in a child process first, so that an SDK constructor
            that never returns (bad gripper readout) is killed at the deadline instead of
            freezing this process.
        enable_on_connect: set the gains (hold the current pose) at the end of connect().
        reset_max_velocity: joint speed (rad/s) of reset_pose (grippers: stroke fractions/s).
        reset_min_duration_s: shortest reset_pose motion.
        reset_approach: per-joint offset added to the home pose for the main reset move and
            removed in a final short move (the SDK's own reset uses +0.03 rad on joint 3 of an
            X5 to keep the folded links clear); None = straight to home.
        stale_state_s: an arm whose SDK joint state is older than this is faulted (the SDK's
            loop stopped: emergency).
        frozen_readout_s: an enabled arm whose readings stay bit-identical this long is faulted
            (no motor messages: CAN or power lost); 0 disables the check.
        damping_on_disconnect: put the arms in damping on disconnect (before the SDK's own
            damping-then-passive shutdown).
        sdk_module: import name of the vendor SDK.
        sdk_path: folder put first on ``sys.path`` before importing the SDK (its built
            ``python/`` folder); empty = the environment's PYTHONPATH.
    """

    model: str = 'X5'
    left_interface: str = 'can0'
    right_interface: str = 'can1'
    interfaces: Mapping[str, str] | None = None
    max_joint_velocity: float = 1.5
    gripper_open_readout: float | None = None
    kp: tuple[float, ...] | None = None
    kd: tuple[float, ...] | None = None
    gripper_kp: float | None = None
    gripper_kd: float | None = None
    controller_dt: float | None = None
    preview_time_s: float | None = None
    connect_timeout_s: float = 15.0
    connect_probe: bool = True
    enable_on_connect: bool = True
    reset_max_velocity: float = 0.5
    reset_min_duration_s: float = 1.0
    reset_approach: tuple[float, ...] | None = None
    stale_state_s: float = 0.25
    frozen_readout_s: float = 1.0
    damping_on_disconnect: bool = True
    sdk_module: str = 'arx5_interface'
    sdk_path: str = ''

    def __post_init__(self) -> None:
        for name in ('model', 'left_interface', 'right_interface', 'sdk_module'):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(
                    f'{name} must be a non-empty string, got {getattr(self, name)!r}')
        if not isinstance(self.sdk_path, str):
            raise ConfigError(f'sdk_path must be a string, got {self.sdk_path!r}')
        if self.interfaces is not None:
            if not isinstance(self.interfaces, Mapping) or not all(
                    isinstance(k, str) and isinstance(v, str) and v
                    for k, v in self.interfaces.items()):
                raise ConfigError('interfaces must map arm names to CAN interface names, got '
                                  f'{self.interfaces!r}')
            object.__setattr__(self, 'interfaces', dict(self.interfaces))
        elif self.left_interface == self.right_interface:
            raise ConfigError(
                f'left and right arms share CAN interface {self.left_interface!r}; '
                'give each arm its own (e.g. can0 and can1)')
        for name in ('kp', 'kd', 'reset_approach'):
            value = getattr(self, name)
            if name == 'reset_approach' and value is not None:
                try:
                    value = tuple(float(v) for v in value)
                except (TypeError, ValueError):
                    raise ConfigError(f'reset_approach must be a list of numbers, got {value!r}'
                                      ) from None
                object.__setattr__(self, name, value)
            else:
                object.__setattr__(self, name, _opt_vector(value, name))
        positive = ('max_joint_velocity', 'connect_timeout_s', 'reset_max_velocity',
                    'reset_min_duration_s', 'stale_state_s')
        optional_positive = ('controller_dt', 'preview_time_s')
        optional_any = ('gripper_open_readout', 'gripper_kp', 'gripper_kd')
        for name in (*positive, *optional_positive, *optional_any, 'frozen_readout_s'):
            v = getattr(self, name)
            if v is None and name not in positive and name != 'frozen_readout_s':
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f'{name} must be a finite number, got {v!r}')
            object.__setattr__(self, name, float(v))
        for name in (*positive, *optional_positive):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f'{name} must be > 0, got {v}')
        for name in ('gripper_kp', 'gripper_kd', 'frozen_readout_s'):
            v = getattr(self, name)
            if v is not None and v < 0:
                raise ConfigError(f'{name} must be >= 0, got {v}')
        if self.gripper_open_readout == 0.0:
            raise ConfigError('gripper_open_readout must not be 0 (the SDK divides by it)')
        for name in ('connect_probe', 'enable_on_connect', 'damping_on_disconnect'):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f'{name} must be true or false, got {getattr(self, name)!r}')

    def interface_of(self, robot: RobotDescription) -> dict[str, str]:
        """Arm name -> CAN interface for ``robot``.

        Raises:
            ConfigError: an arm has no interface, or two arms share one.
        """
        arms = robot.arm_names
        if self.interfaces is not None:
            out = {a: self.interfaces[a] for a in arms if a in self.interfaces}
            missing = [a for a in arms if a not in out]
            if missing:
                raise ConfigError(f'no CAN interface for arm(s) {missing} of robot '
                                  f'{robot.name!r}: add them to interfaces')
        elif set(arms) <= {'left', 'right'} or len(arms) == 2:
            pair = (self.left_interface, self.right_interface)
            out = {a: ({'left': pair[0], 'right': pair[1]}.get(a) or pair[i])
                   for i, a in enumerate(arms)}
        else:
            raise ConfigError(f'robot {robot.name!r} has arms {list(arms)}: give every arm its '
                              'CAN interface with interfaces: {arm: can0, ...}')
        shared = sorted({v for v in out.values() if list(out.values()).count(v) > 1})
        if shared:
            raise ConfigError(f'arms share CAN interface(s) {shared}; give each arm its own')
        return out


def _import_sdk(name: str, path: str = '') -> ModuleType:
    if path and path not in sys.path:
        sys.path.insert(0, path)
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise BackendError(f'cannot import {name!r}: {SDK_INSTALL_HINT}') from exc


def _sdk_configs(sdk: ModuleType, config: Arx5Config, arm: str, dof: int,
                 gripper_width: float | None) -> tuple[Any, Any]:
    """The SDK's RobotConfig and ControllerConfig for one arm, edited as configured.

    Raises:
        BackendError: unknown model, or its DoF differs from the description's arm.
        ConfigError: gains of the wrong length.
    """
    try:
        rc = sdk.RobotConfigFactory.get_instance().get_config(config.model)
    except Exception as exc:  # the SDK raises RuntimeError listing its models
        raise BackendError(f'the ARX5 SDK does not know model {config.model!r}: {exc}') from exc
    if int(rc.joint_dof) != dof:
        raise BackendError(
            f'arm {arm!r} of the robot description has {dof} joints but SDK model '
            f'{config.model!r} has {int(rc.joint_dof)}; fix backend.model or the arm\'s joints '
            'in the robot file')
    if gripper_width is not None:
        rc.gripper_width = float(gripper_width)
    if config.gripper_open_readout is not None:
        rc.gripper_open_readout = float(config.gripper_open_readout)
    cc = sdk.ControllerConfigFactory.get_instance().get_config(CONTROLLER_TYPE, int(rc.joint_dof))
    cc.background_send_recv = True
    cc.default_preview_time = 0.0  # an unstamped command is a fixed target (used for holds)
    if config.controller_dt is not None:
        cc.controller_dt = config.controller_dt
    for name, value in (('kp', config.kp), ('kd', config.kd)):
        if value is not None:
            if len(value) != dof:
                raise ConfigError(f'{name} needs {dof} values (one per joint of arm {arm!r}), '
                                  f'got {len(value)}')
            setattr(cc, f'default_{name}', np.array(value, dtype=np.float64))
    if config.gripper_kp is not None:
        cc.default_gripper_kp = config.gripper_kp
    if config.gripper_kd is not None:
        cc.default_gripper_kd = config.gripper_kd
    return rc, cc


# --------------------------------------------------------------------------- probe process
_PROBE_CODE = 'import sys; from scarls.driver.arx5 import _probe_main; sys.exit(_probe_main())'
_PROBE_MARK = 'ARX5_PROBE '


def _probe_main() -> int:
    """Child process: open one arm with the given settings, report its state, close it."""
    try:
        req = json.loads(sys.stdin.read())
        config = Arx5Config(**req['config'])
        sdk = _import_sdk(config.sdk_module, config.sdk_path)
        rc, cc = _sdk_configs(sdk, config, req['arm'], req['dof'], req['gripper_width'])
        ctrl = sdk.Arx5JointController(rc, cc, req['interface'])
        st = ctrl.get_joint_state()
        out = {'ok': True, 'pos': [float(x) for x in st.pos()],
               'gripper_m': float(st.gripper_pos)}
        del ctrl  # the SDK's own shutdown: damping, then passive
    except Exception as exc:  # noqa: BLE001 - reported to the parent
        out = {'ok': False, 'error': f'{type(exc).__name__}: {exc}'}
    print(_PROBE_MARK + json.dumps(out), flush=True)
    return 0 if out['ok'] else 1


def _tail(text: str | bytes | None, lines: int = 4) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors='replace')
    kept = [ln.strip() for ln in (text or '').splitlines() if ln.strip()][-lines:]
    return ' | '.join(kept)


# --------------------------------------------------------------------------- backend
@dataclass
class _Arm:
    layout: ArmLayout
    interface: str
    ctrl: Any
    gain: Any
    fault: str | None = None
    signature: bytes = b''
    same_since: float | None = None


class Arx5Backend(RobotBackend):
    """ARX5 arms (one ``Arx5JointController`` each) laid out by a robot description.

    ``limits`` are read from the SDK at :meth:`connect` (build the SafetyFilter after it).
    The SDK streams commands in its own 500 Hz thread, so :meth:`step` is a no-op.

    States: connected + enabled (gains set: commands move the arms), connected + damped (the
    SDK's start state and :meth:`damp`: commands are refused), faulted (:meth:`fault` is not
    None: nothing is sent to that arm again; restart the driver).

    Threading contract:

    * :meth:`connect` / :meth:`disconnect`: one thread, nothing else running.
    * :meth:`write_command`: the control thread only (one caller). It raises BackendError while
      :meth:`reset_pose` runs in another thread, while damped and while faulted.
    * :meth:`reset_pose` blocks the calling thread for the motion (both arms together); run it
      in a worker. :meth:`abort_motion`, :meth:`hold` and :meth:`damp` may be called from any
      other thread: the motion stops within one control period (``1 / control_rate_hz``) -
      they return once the motion loop has exited and the arms hold - and ``reset_pose``
      raises :class:`MotionAborted`.
    * :meth:`read_state`, :meth:`fault`, :meth:`enable`: any thread.
    """

    concurrent_reset = True

    def __init__(
        self,
        config: Arx5Config | None = None,
        clock: Callable[[], float] = time.monotonic,
        robot: RobotDescription | str | None = None,
    ) -> None:
        self.config = config if config is not None else Arx5Config()
        self._clock = clock
        try:
            self.robot = load_robot(robot if robot is not None else DEFAULT_ROBOT)
        except RobotDescriptionError as exc:
            raise ConfigError(str(exc)) from exc
        self._interfaces = self.config.interface_of(self.robot)
        self._layouts = arm_layouts(self.robot)  # validates gripper units now
        if self.config.reset_approach is not None:
            n = self.robot.num_joints
            got = len(self.config.reset_approach)
            if got not in {a.dof for a in self.robot.arms} | {n}:
                raise ConfigError(f'reset_approach needs one value per arm joint (applied to '
                                  f'every arm) or {n} values, got {got}')
        self._sdk: ModuleType | None = None
        self._arms: list[_Arm] = []
        self._limits: JointLimits | None = None
        self._enabled = False
        self._holding = False
        self._lock = threading.Lock()
        self._abort = threading.Event()
        self._motion_owner: int | None = None
        self._motion_idle = threading.Event()
        self._motion_idle.set()

    # ------------------------------------------------------------------ properties
    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.robot.joint_names

    @property
    def limits(self) -> JointLimits:
        if self._limits is None:
            raise BackendError('ARX5 limits are read from the robot; call connect() first')
        return self._limits

    @property
    def connected(self) -> bool:
        return bool(self._arms)

    @property
    def enabled(self) -> bool:
        """Gains are set: position commands move the arms."""
        return self.connected and self._enabled

    @property
    def moving(self) -> bool:
        """A :meth:`reset_pose` motion is running."""
        return not self._motion_idle.is_set()

    @property
    def layouts(self) -> tuple[ArmLayout, ...]:
        """Per-arm layout in use (grippers' SDK widths known after connect)."""
        return self._layouts

    @property
    def preview_time_s(self) -> float:
        """How far ahead (s) each streamed command is stamped."""
        return self.config.preview_time_s or 1.5 / self.robot.control_rate_hz

    @property
    def interfaces(self) -> dict[str, str]:
        """Arm name -> CAN interface."""
        return dict(self._interfaces)

    # ------------------------------------------------------------------ connect
    def _gripper_width(self, arm_name: str) -> float | None:
        g = self.robot.arm(arm_name).gripper
        return g.open if g is not None and g.unit == 'metres' else None

    def connect(self) -> None:
        """Open every arm (in parallel), check it against the description, set the gains.

        Raises:
            BackendError: SDK missing, unknown model or DoF mismatch, an arm that cannot be
                opened or does not open within ``connect_timeout_s`` (the message says what to
                check), or gains the SDK refuses.
        """
        if self.connected:
            return
        if self.robot.backend != 'arx5':
            raise BackendError(
                f'robot description {self.robot.name!r} is for backend {self.robot.backend!r}, '
                'not arx5: its limits and home pose are not an ARX5\'s; give the driver the ARX5 '
                'robot (e.g. arx5_pair)')
        cfg = self.config
        sdk = _import_sdk(cfg.sdk_module, cfg.sdk_path)
        plans = []
        for arm in self.robot.arms:
            rc, cc = _sdk_configs(sdk, cfg, arm.name, arm.dof, self._gripper_width(arm.name))
            plans.append((arm.name, self._interfaces[arm.name], rc, cc))
        if cfg.connect_probe:
            self._probe(plans)
        ctrls = self._construct(sdk, plans)
        try:
            self._adopt(sdk, ctrls)
            if cfg.enable_on_connect:
                self.enable()
        except BaseException:
            self._drop(damp=True)
            raise
        logger.info('ARX5 connected: %s, model %s, preview %.3f s',
                    ', '.join(f'{a}={i}' for a, i in self._interfaces.items()), cfg.model,
                    self.preview_time_s)

    def _probe(self, plans: list) -> None:
        """Open each arm once in a child process (in parallel) within the deadline."""
        errors: dict[str, str] = {}

        def run(arm: str, iface: str, rc: Any) -> None:
            req = {'config': dataclasses.asdict(self.config), 'arm': arm,
                   'dof': int(rc.joint_dof), 'gripper_width': self._gripper_width(arm),
                   'interface': iface}
            try:
                proc = subprocess.run([sys.executable, '-c', _PROBE_CODE], input=json.dumps(req),
                                      capture_output=True, text=True,
                                      timeout=self.config.connect_timeout_s,
                                      env=dict(os.environ))
            except subprocess.TimeoutExpired as exc:
                errors[arm] = (
                    f'the {arm} ARX5 arm on {iface!r} did not open within '
                    f'{self.config.connect_timeout_s:g} s (probe process killed; SDK output: '
                    f'{_tail(exc.stdout) or "none"}); '
                    + _CONNECT_CHECKS.format(iface=iface))
                return
            marks = [ln for ln in proc.stdout.splitlines() if ln.startswith(_PROBE_MARK)]
            result = json.loads(marks[-1][len(_PROBE_MARK):]) if marks else {
                'ok': False, 'error': f'exit code {proc.returncode}: '
                                      f'{_tail(proc.stderr) or _tail(proc.stdout)}'}
            if not result['ok']:
                errors[arm] = self._open_error(arm, iface, result['error'])
            else:
                logger.info('ARX5 %s arm on %s probed: joints %s, gripper %.4f m', arm, iface,
                            np.round(result['pos'], 3).tolist(), result['gripper_m'])

        threads = [threading.Thread(target=run, args=(a, i, rc), daemon=True,
                                    name=f'arx5-probe-{a}') for a, i, rc, _ in plans]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise BackendError('; '.join(errors[a] for a, *_ in plans if a in errors))

    def _open_error(self, arm: str, iface: str, error: Any) -> str:
        return (f'cannot open the {arm} ARX5 arm (model {self.config.model!r}) on CAN interface '
                f'{iface!r}: {error}; check that the interface is up (ip link show {iface}) and '
                'the arm is powered')

    def _construct(self, sdk: ModuleType, plans: list) -> dict[str, Any]:
        """Construct the controllers in worker threads (in parallel), within the deadline."""
        results: dict[str, Any] = {}

        def run(arm: str, iface: str, rc: Any, cc: Any) -> None:
            try:
                results[arm] = sdk.Arx5JointController(rc, cc, iface)
            except Exception as exc:  # noqa: BLE001 - the SDK raises plain RuntimeError
                results[arm] = exc

        threads = {a: threading.Thread(target=run, args=(a, i, rc, cc), daemon=True,
                                       name=f'arx5-connect-{a}') for a, i, rc, cc in plans}
        for t in threads.values():
            t.start()
        deadline = time.monotonic() + self.config.connect_timeout_s
        for t in threads.values():
            t.join(max(0.0, deadline - time.monotonic()))
        hung = [a for a, t in threads.items() if t.is_alive()]
        failed = {a: r for a, r in results.items() if isinstance(r, Exception)}
        ok = {a: r for a, r in results.items() if not isinstance(r, Exception)}
        if hung or failed:
            for ctrl in ok.values():  # opened ones go back to damping
                self._damp_ctrl(ctrl)
            msgs = [f'the {a} ARX5 arm on {self._interfaces[a]!r} did not open within '
                    f'{self.config.connect_timeout_s:g} s (the SDK constructor is still '
                    'running: restart the driver after fixing it); '
                    + _CONNECT_CHECKS.format(iface=self._interfaces[a]) for a in hung]
            msgs += [self._open_error(a, self._interfaces[a], e) for a, e in failed.items()]
            raise BackendError('; '.join(msgs))
        return ok

    def _adopt(self, sdk: ModuleType, ctrls: dict[str, Any]) -> None:
        arms, arm_limits, widths = [], [], {}
        for arm in self.robot.arms:
            ctrl = ctrls[arm.name]
            rc, cc = ctrl.get_robot_config(), ctrl.get_controller_config()
            if int(rc.joint_dof) != arm.dof:
                raise BackendError(f'the {arm.name} arm reports {rc.joint_dof} joints; the robot '
                                   f'description gives it {arm.dof}')
            widths[arm.name] = float(rc.gripper_width)
            arm_limits.append(ArmLimits(np.array(rc.joint_pos_min, dtype=np.float64),
                                        np.array(rc.joint_pos_max, dtype=np.float64),
                                        np.array(rc.joint_vel_max, dtype=np.float64),
                                        float(rc.gripper_vel_max)))
            gripper_kp = float(cc.default_gripper_kp) if arm.gripper is not None else 0.0
            gain = sdk.Gain(np.array(cc.default_kp, dtype=np.float64),
                            np.array(cc.default_kd, dtype=np.float64), gripper_kp,
                            float(cc.default_gripper_kd))
            arms.append((arm.name, ctrl, gain))
        layouts = arm_layouts(self.robot, widths)
        limits = limits_from_arms(self.robot, layouts, arm_limits, self.config.max_joint_velocity)
        self._sdk, self._layouts, self._limits = sdk, layouts, limits
        self._arms = [_Arm(lay, self._interfaces[name], ctrl, gain)
                      for lay, (name, ctrl, gain) in zip(layouts, arms, strict=True)]
        self._enabled = False

    # ------------------------------------------------------------------ enable / damp
    def enable(self) -> None:
        """Hold the current pose, then set the configured gains (idempotent).

        Call after connect (done there unless ``enable_on_connect`` is false), after
        :meth:`damp`, and when an e-stop is released.

        Raises:
            BackendError: not connected, faulted, or the SDK refused the gains.
        """
        self._require_connected()
        self._raise_if_faulted()
        for arm in self._arms:
            try:
                self._hold_arm(arm)
                self._holding = True
                arm.ctrl.set_gain(arm.gain)
            except Exception as exc:  # the SDK refuses kp far from the commanded pose
                self._set_fault(arm, f'the SDK refused the gains ({exc}); its control loop '
                                'has stopped: restart the driver')
                raise BackendError(self.fault() or str(exc)) from exc
        self._enabled = True
        logger.info('ARX5 arms enabled (gains set, holding the current pose)')

    def damp(self) -> None:
        """Stop any motion and put every healthy arm in the SDK's damping mode (``kp = 0``).

        Commands are refused until :meth:`enable`. An X5 slowly sinks under damping.
        """
        self.abort_motion()
        for arm in self._arms:
            if arm.fault is None:
                self._damp_ctrl(arm.ctrl)
        self._enabled = False

    @staticmethod
    def _damp_ctrl(ctrl: Any) -> None:
        try:
            ctrl.set_to_damping()
        except Exception as exc:  # noqa: BLE001 - best effort on the way out
            logger.warning('ARX5 set_to_damping failed: %s', exc)

    # ------------------------------------------------------------------ disconnect
    def disconnect(self) -> None:
        """Stop motion, hold, damp (if configured) and close the arms (idempotent).

        The SDK's destructor damps each arm for 2 s and keeps the GIL meanwhile. A faulted
        arm's controller is never destroyed (its destructor would wait forever on the SDK's
        stuck loop): it is kept until the process exits.
        """
        if not self._arms:
            return
        self.abort_motion()
        if self._enabled:
            try:
                self._hold_all()
            except BackendError as exc:
                logger.warning('ARX5 hold before disconnect failed: %s', exc)
        self._drop(damp=self.config.damping_on_disconnect)

    def _drop(self, damp: bool) -> None:
        for arm in self._arms:
            if arm.fault is not None:
                _KEPT.append(arm.ctrl)
                logger.error('ARX5 %s arm is faulted (%s); its SDK controller is kept until '
                             'the process exits', arm.layout.name, arm.fault)
            elif damp:
                self._damp_ctrl(arm.ctrl)
        self._arms = []
        self._enabled = False
        self._sdk = None

    # ------------------------------------------------------------------ faults
    def fault(self) -> str | None:
        """Why the arms cannot execute commands (latched until the driver restarts), or None."""
        if not self._arms:
            return None
        for arm in self._arms:
            if arm.fault is None:
                self._check_arm(arm)
        faults = [f'{a.layout.name} arm ({a.interface}): {a.fault}' for a in self._arms
                  if a.fault is not None]
        return '; '.join(faults) or None

    def _set_fault(self, arm: _Arm, why: str) -> None:
        with self._lock:
            if arm.fault is None:
                arm.fault = why
                logger.error('ARX5 %s arm (%s) faulted: %s', arm.layout.name, arm.interface, why)

    def _check_arm(self, arm: _Arm) -> None:
        try:
            st = arm.ctrl.get_joint_state()
            now = float(arm.ctrl.get_timestamp())
        except Exception as exc:  # noqa: BLE001 - any SDK error is a fault
            self._set_fault(arm, f'reading the SDK failed: {exc}')
            return
        age = now - float(st.timestamp)
        if age > self.config.stale_state_s:
            self._set_fault(arm, f'the SDK stopped updating the joint state {age:.2f} s ago (its '
                            'control loop stopped: an emergency such as over-current or a joint '
                            'or gripper reading out of range; see the SDK log). The arm is no '
                            'longer commanded: restart the driver after checking the arm')
            return
        if self.config.frozen_readout_s <= 0 or not self._enabled:
            arm.same_since = None
            return
        sig = b''.join(np.asarray(a, dtype=np.float64).tobytes()
                       for a in (st.pos(), st.vel(), st.torque(), [st.gripper_pos]))
        if sig != arm.signature or arm.same_since is None:
            arm.signature, arm.same_since = sig, now
        elif now - arm.same_since > self.config.frozen_readout_s:
            self._set_fault(arm, f'no new motor data for {now - arm.same_since:.1f} s (every '
                            'reading unchanged): the CAN adapter or bus is down or the arm lost '
                            'power; restart the driver after checking them')

    def _raise_if_faulted(self) -> None:
        why = self.fault()
        if why is not None:
            raise BackendError(f'ARX5 fault: {why}')

    # ------------------------------------------------------------------ state / commands
    def _reading(self, arm: _Arm) -> ArmReading:
        js = arm.ctrl.get_joint_state()
        return ArmReading(np.array(js.pos(), dtype=np.float64),
                          np.array(js.vel(), dtype=np.float64),
                          float(js.gripper_pos), float(js.gripper_vel))

    def read_state(self) -> JointSample:
        self._require_connected()
        pos, vel = merge_readings([self._reading(a) for a in self._arms], self._layouts)
        return JointSample(pos, vel, float(self._clock()))

    def write_command(self, positions: np.ndarray) -> None:
        """Send absolute targets, stamped ``preview_time_s`` ahead for the SDK's interpolation.

        Raises:
            CommandRejected: wrong length or NaN.
            BackendError: not connected, a reset is running, damped, or faulted.
        """
        self._require_connected()
        q = self.limits.clamp(validate_command(positions, self.joint_names))
        owner = self._motion_owner
        if owner is not None and owner != threading.get_ident():
            raise BackendError('reset_pose is moving the arms; command not sent')
        self._send(q)

    def _send(self, q: np.ndarray) -> None:
        self._raise_if_faulted()
        if not self._enabled:
            raise BackendError('ARX5 arms are damped (no gains): call enable() first')
        self._holding = False
        zeros_for = {}
        for arm, target in zip(self._arms, split_command(q, self._layouts), strict=True):
            dof = arm.layout.dof
            zeros = zeros_for.setdefault(dof, np.zeros(dof))
            try:
                gripper = target.gripper_m if target.gripper_m is not None else 0.0
                cmd = self._sdk.JointState(target.joints, zeros, zeros, gripper)
                cmd.timestamp = float(arm.ctrl.get_timestamp()) + self.preview_time_s
                arm.ctrl.set_joint_cmd(cmd)
            except Exception as exc:  # noqa: BLE001 - an SDK error here is a fault
                self._set_fault(arm, f'set_joint_cmd failed: {exc}')
                raise BackendError(f'ARX5 fault: {self.fault()}') from exc

    def _hold_arm(self, arm: _Arm) -> None:
        st = arm.ctrl.get_joint_state()
        dof = arm.layout.dof
        cmd = self._sdk.JointState(np.array(st.pos(), dtype=np.float64), np.zeros(dof),
                                   np.zeros(dof), float(st.gripper_pos))
        arm.ctrl.set_joint_cmd(cmd)  # unstamped: a fixed target now (default_preview_time 0)

    def _hold_all(self) -> None:
        self._raise_if_faulted()
        for arm in self._arms:
            try:
                self._hold_arm(arm)
            except Exception as exc:  # noqa: BLE001
                self._set_fault(arm, f'holding failed: {exc}')
                raise BackendError(f'ARX5 fault: {self.fault()}') from exc
        self._holding = True  # repeated holds keep this target (no creeping under gravity)

    def hold(self) -> None:
        """Stop any reset motion and hold the measured pose (a no-op while damped, and while
        already holding: a hold every tick keeps the first hold's target).

        Raises:
            BackendError: faulted (nothing can be sent).
        """
        self._require_connected()
        self.abort_motion()
        if self._enabled and not self._holding:
            self._hold_all()

    def abort_motion(self, timeout_s: float = 2.0) -> bool:
        """Stop a running :meth:`reset_pose` (from another thread); returns once it stopped.

        Returns False if the motion did not stop within ``timeout_s`` (an SDK call blocked).
        """
        self._abort.set()
        if self._motion_owner == threading.get_ident():
            return True
        return self._motion_idle.wait(timeout_s)

    # ------------------------------------------------------------------ reset
    def _home(self) -> np.ndarray:
        return np.clip(self.robot.home, self.limits.lower, self.limits.upper)

    def _approach_offset(self) -> np.ndarray:
        off = np.zeros(self.robot.num_joints)
        ra = self.config.reset_approach
        if ra is None:
            return off
        if len(ra) == self.robot.num_joints:
            return np.array(ra)
        for lay in self._layouts:
            if lay.dof == len(ra):
                off[lay.joints] = ra
        return off

    def reset_pose(self) -> None:
        """Move every arm at once to the description's home pose (minimum-jerk, streamed at the
        description's control rate, joints at most ``reset_max_velocity``), then hold it.

        Blocks for the motion (seconds); abortable from another thread (see the class doc).

        Raises:
            MotionAborted: stopped by abort_motion / hold / damp.
            BackendError: not connected, faulted, or a reset already running.
        """
        self._require_connected()
        with self._lock:
            if self._motion_owner is not None:
                raise BackendError('a reset_pose motion is already running')
            self._motion_owner = threading.get_ident()
            self._motion_idle.clear()
            self._abort.clear()
        try:
            if not self._enabled:
                self.enable()
            home = self._home()
            offset = self._approach_offset()
            start = self.read_state().positions
            if np.any(offset):
                approach = np.clip(home + offset, self.limits.lower, self.limits.upper)
                self._move(start, approach, self.config.reset_min_duration_s)
                self._move(approach, home, 0.5)
            else:
                self._move(start, home, self.config.reset_min_duration_s)
            self._settle(home)
            logger.info('ARX5 arms at the home pose of %s', self.robot.name)
        finally:
            with self._lock:
                self._motion_owner = None
                self._motion_idle.set()

    def _wait_or_abort(self, seconds: float) -> None:
        if self._abort.wait(max(0.0, seconds)):
            try:
                self._hold_all()
            except BackendError as exc:
                raise MotionAborted(f'reset_pose aborted; holding failed: {exc}') from exc
            raise MotionAborted('reset_pose aborted: the arms hold where they are')

    def _settle(self, goal: np.ndarray, tolerance: float = 0.02, timeout_s: float = 2.0) -> None:
        """Wait until the SDK has reached the last stamped target and the arms are near it."""
        period = 1.0 / self.robot.control_rate_hz
        self._wait_or_abort(self.preview_time_s + 2 * period)
        deadline = self._clock() + timeout_s
        while True:
            error = float(np.max(np.abs(self.read_state().positions - goal)))
            if error <= tolerance:
                return
            if self._clock() > deadline:
                logger.warning('ARX5 reset: %.3f from the home pose after %.1f s (tolerance '
                               '%.3f); holding there', error, timeout_s, tolerance)
                return
            self._wait_or_abort(period)

    def _move(self, start: np.ndarray, goal: np.ndarray, min_duration: float) -> None:
        delta = goal - start
        speed = np.minimum(self.limits.max_velocity, self.config.reset_max_velocity)
        duration = max(min_duration, 1.875 * float(np.max(np.abs(delta) / speed)))
        period = 1.0 / self.robot.control_rate_hz
        t0 = self._clock()
        tick = 0
        while True:
            tick += 1
            tau = min(1.0, (self._clock() - t0) / duration)
            self._send(start + delta * min_jerk(tau))
            if tau >= 1.0:
                return
            self._wait_or_abort(t0 + tick * period - self._clock())


#: Controllers of faulted arms, kept alive (their SDK destructor would never return).
_KEPT: list[Any] = []
