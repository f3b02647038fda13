"""Real ARX5 dual-arm robot through the vendor Python SDK ``arx5_interface``.

The SDK (https://github.com/real-stanford/arx5-sdk) drives one arm per CAN interface with
``Arx5JointController(model, interface)``; joints are in radians and the gripper in metres
(``0`` closed .. ``robot_config.gripper_width`` open). This module maps the project's 14-vector
(left 6 joints, left gripper, right 6 joints, right gripper; grippers normalised 0..1) to two
such arms. The mapping is pure functions (:func:`split_command`, :func:`merge_readings`,
:func:`limits_from_arms`) so it is tested without hardware; the SDK is imported only in
:meth:`Arx5Backend.connect`.
"""

from __future__ import annotations

import importlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import numpy as np

from scarls.driver.backends import JointSample, RobotBackend, validate_command
from scarls.driver.safety import BackendError, ConfigError, JointLimits
from scarls.sim.world import JOINT_NAMES

__all__ = [
    'ARMS',
    'ARM_DOF',
    'SDK_INSTALL_HINT',
    'ArmLimits',
    'ArmReading',
    'ArmTarget',
    'Arx5Backend',
    'Arx5Config',
    'gripper_from_metres',
    'gripper_to_metres',
    'limits_from_arms',
    'merge_readings',
    'split_command',
]

logger = logging.getLogger(__name__)

#: Arm joints per ARX5 arm (the gripper is separate).
ARM_DOF = 6
#: Arms in 14-vector order.
ARMS: tuple[str, str] = ('left', 'right')

SDK_INSTALL_HINT = (
    "the ARX5 backend needs the vendor SDK Python module 'arx5_interface': build it from "
    'https://github.com/real-stanford/arx5-sdk (see its README: conda environment, cmake build) '
    'and put the built python/ directory on PYTHONPATH; the CAN adapters of both arms must be '
    'configured and up (e.g. can0 and can1, as in the SDK README) before connecting'
)


# --------------------------------------------------------------------------- pure mapping
def gripper_to_metres(value: float, width: float) -> float:
    """Normalised gripper value (0 closed .. 1 open) to SDK metres (0 .. ``width``)."""
    return float(value) * float(width)


def gripper_from_metres(metres: float, width: float) -> float:
    """SDK gripper metres (0 .. ``width``) to the normalised value (0 closed .. 1 open)."""
    return float(metres) / float(width)


@dataclass(frozen=True, eq=False)
class ArmTarget:
    """Command for one ARX5 arm: ``joints`` (6,) rad, ``gripper_m`` metres."""

    joints: np.ndarray
    gripper_m: float


@dataclass(frozen=True, eq=False)
class ArmReading:
    """State of one ARX5 arm as the SDK reports it (rad, rad/s, m, m/s)."""

    joints: np.ndarray
    velocities: np.ndarray
    gripper_m: float
    gripper_vel_m: float = 0.0


@dataclass(frozen=True, eq=False)
class ArmLimits:
    """Limits of one arm from the SDK's ``RobotConfig`` (rad, rad/s, m, m/s)."""

    joint_min: np.ndarray
    joint_max: np.ndarray
    joint_vel_max: np.ndarray
    gripper_width: float
    gripper_vel_max: float


def _slices(arm: str) -> tuple[slice, int]:
    base = 0 if arm == 'left' else ARM_DOF + 1
    return slice(base, base + ARM_DOF), base + ARM_DOF


def split_command(
    q: np.ndarray,
    gripper_widths: tuple[float, float],
) -> tuple[ArmTarget, ArmTarget]:
    """Split a 14-vector into ``(left, right)`` arm targets, grippers converted to metres.

    Raises:
        ConfigError: ``q`` is not a (14,) vector or a gripper width is not positive.
    """
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (2 * (ARM_DOF + 1),):
        raise ConfigError(f'expected a ({2 * (ARM_DOF + 1)},) joint vector, got {q.shape}')
    if min(gripper_widths) <= 0:
        raise ConfigError(f'gripper widths must be > 0 m, got {gripper_widths}')
    out = []
    for arm, width in zip(ARMS, gripper_widths, strict=True):
        sl, gi = _slices(arm)
        out.append(ArmTarget(q[sl].copy(), gripper_to_metres(q[gi], width)))
    return out[0], out[1]


def merge_readings(
    left: ArmReading,
    right: ArmReading,
    gripper_widths: tuple[float, float],
) -> tuple[np.ndarray, np.ndarray]:
    """Two arm readings -> ``(positions (14,), velocities (14,))``, grippers normalised."""
    pos = np.empty(2 * (ARM_DOF + 1))
    vel = np.empty(2 * (ARM_DOF + 1))
    for arm, reading, width in zip(ARMS, (left, right), gripper_widths, strict=True):
        sl, gi = _slices(arm)
        pos[sl] = np.asarray(reading.joints, dtype=np.float64)[:ARM_DOF]
        vel[sl] = np.asarray(reading.velocities, dtype=np.float64)[:ARM_DOF]
        pos[gi] = gripper_from_metres(reading.gripper_m, width)
        vel[gi] = gripper_from_metres(reading.gripper_vel_m, width)
    return pos, vel


def limits_from_arms(
    left: ArmLimits,
    right: ArmLimits,
    max_joint_velocity: float | None = None,
) -> JointLimits:
    """14-joint limits from the two arms' SDK limits (gripper range normalised to 0..1).

    ``max_joint_velocity`` (rad/s), when given, caps the SDK's joint speed limits.
    """
    lower, upper, vel = [], [], []
    for arm in (left, right):
        arm_vel = np.asarray(arm.joint_vel_max, dtype=np.float64)[:ARM_DOF]
        if max_joint_velocity is not None:
            arm_vel = np.minimum(arm_vel, max_joint_velocity)
        lower += [*np.asarray(arm.joint_min, dtype=np.float64)[:ARM_DOF], 0.0]
        upper += [*np.asarray(arm.joint_max, dtype=np.float64)[:ARM_DOF], 1.0]
        vel += [*arm_vel, arm.gripper_vel_max / arm.gripper_width]
    return JointLimits(np.array(lower), np.array(upper), np.array(vel))


# --------------------------------------------------------------------------- backend
@dataclass(frozen=True)
class Arx5Config:
    """Configuration of :class:`Arx5Backend`.

    Attributes:
        model: SDK robot model of both arms (e.g. ``'X5'`` or ``'L5'``).
        left_interface: CAN interface of the left arm.
        right_interface: CAN interface of the right arm.
        max_joint_velocity: cap (rad/s) on the SDK's joint speed limits.
        gripper_width: override of the SDK's gripper width (m); None reads it from the SDK.
        damping_on_disconnect: put both arms in damping mode on disconnect.
        sdk_module: import name of the vendor SDK.
    """

    model: str = 'X5'
    left_interface: str = 'can0'
    right_interface: str = 'can1'
    max_joint_velocity: float = 1.5
    gripper_width: float | None = None
    damping_on_disconnect: bool = True
    sdk_module: str = 'arx5_interface'

    def __post_init__(self) -> None:
        for name in ('model', 'left_interface', 'right_interface', 'sdk_module'):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(
                    f'{name} must be a non-empty string, got {getattr(self, name)!r}'
                )
        if self.left_interface == self.right_interface:
            raise ConfigError(
                f'left and right arms share CAN interface {self.left_interface!r}; '
                'give each arm its own (e.g. can0 and can1)'
            )
        if not (math.isfinite(self.max_joint_velocity) and self.max_joint_velocity > 0):
            raise ConfigError(f'max_joint_velocity must be > 0, got {self.max_joint_velocity}')
        if self.gripper_width is not None and not self.gripper_width > 0:
            raise ConfigError(f'gripper_width must be > 0 m, got {self.gripper_width}')


def _import_sdk(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise BackendError(f'cannot import {name!r}: {SDK_INSTALL_HINT}') from exc


class Arx5Backend(RobotBackend):
    """Two ARX5 arms (left, right), one ``Arx5JointController`` each.

    ``limits`` are read from the SDK at :meth:`connect` (so build the SafetyFilter after it).
    The SDK streams commands in its own background thread, so :meth:`step` is a no-op.
    """

    def __init__(
        self,
        config: Arx5Config | None = None,
        clock: Callable[[], float] = time.monotonic,
        robot: Any = None,
    ) -> None:
        self.config = config if config is not None else Arx5Config()
        self._clock = clock
        self.robot = robot
        self._sdk: ModuleType | None = None
        self._ctrl: dict[str, Any] = {}
        self._widths: tuple[float, float] = (1.0, 1.0)
        self._limits: JointLimits | None = None

    @property
    def joint_names(self) -> tuple[str, ...]:
        return JOINT_NAMES

    @property
    def limits(self) -> JointLimits:
        if self._limits is None:
            raise BackendError('ARX5 limits are read from the robot; call connect() first')
        return self._limits

    @property
    def connected(self) -> bool:
        return bool(self._ctrl)

    @property
    def gripper_widths(self) -> tuple[float, float]:
        """Gripper widths (m) of (left, right) in use."""
        return self._widths

    def connect(self) -> None:
        if self.connected:
            return
        sdk = _import_sdk(self.config.sdk_module)
        ctrl: dict[str, Any] = {}
        arm_limits = []
        widths = []
        for arm, iface in zip(
            ARMS, (self.config.left_interface, self.config.right_interface), strict=True
        ):
            try:
                c = sdk.Arx5JointController(self.config.model, iface)
            except Exception as exc:  # the SDK raises plain RuntimeError on CAN failures
                raise BackendError(
                    f'cannot open the {arm} ARX5 arm (model {self.config.model!r}) on CAN '
                    f'interface {iface!r}: {exc}; check that the interface is up '
                    f'(ip link show {iface}) and the arm is powered'
                ) from exc
            cfg = c.get_robot_config()
            if int(cfg.joint_dof) != ARM_DOF:
                raise BackendError(
                    f'{arm} arm reports {cfg.joint_dof} joints; this backend supports '
                    f'{ARM_DOF}-DoF ARX5 arms'
                )
            width = self.config.gripper_width or float(cfg.gripper_width)
            widths.append(width)
            arm_limits.append(
                ArmLimits(
                    np.array(cfg.joint_pos_min, dtype=np.float64),
                    np.array(cfg.joint_pos_max, dtype=np.float64),
                    np.array(cfg.joint_vel_max, dtype=np.float64),
                    width,
                    float(cfg.gripper_vel_max),
                )
            )
            ctrl[arm] = c
        self._sdk = sdk
        self._widths = (widths[0], widths[1])
        self._limits = limits_from_arms(
            arm_limits[0],
            arm_limits[1],
            self.config.max_joint_velocity,
        )
        self._ctrl = ctrl
        logger.info(
            'ARX5 connected: left=%s right=%s model=%s',
            self.config.left_interface,
            self.config.right_interface,
            self.config.model,
        )

    def disconnect(self) -> None:
        if self.config.damping_on_disconnect:
            for c in self._ctrl.values():
                c.set_to_damping()
        self._ctrl = {}
        self._sdk = None

    def _reading(self, arm: str) -> ArmReading:
        js = self._ctrl[arm].get_joint_state()
        return ArmReading(
            np.array(js.pos(), dtype=np.float64),
            np.array(js.vel(), dtype=np.float64),
            float(js.gripper_pos),
            float(js.gripper_vel),
        )

    def read_state(self) -> JointSample:
        self._require_connected()
        pos, vel = merge_readings(self._reading('left'), self._reading('right'), self._widths)
        return JointSample(pos, vel, float(self._clock()))

    def write_command(self, positions: np.ndarray) -> None:
        self._require_connected()
        q = self.limits.clamp(validate_command(positions, self.joint_names))
        zeros = np.zeros(ARM_DOF)
        for arm, target in zip(ARMS, split_command(q, self._widths), strict=True):
            cmd = self._sdk.JointState(target.joints, zeros, zeros, target.gripper_m)
            self._ctrl[arm].set_joint_cmd(cmd)

    def reset_pose(self) -> None:
        """Both arms to the SDK home pose (blocks for a few seconds per arm, SDK behaviour)."""
        self._require_connected()
        for c in self._ctrl.values():
            c.reset_to_home()
