"""Pure logic of a backend for robots that already speak ROS 2 (e.g. an Agibot G1 class robot).

The ROS node (written on top of this module) subscribes to ``BridgeConfig.state_topic`` and
feeds every message to :meth:`Ros2BridgeBackend.on_state`; each control tick it publishes
:meth:`Ros2BridgeBackend.pending_command` (if not None) on ``BridgeConfig.command_topic`` as a
``sensor_msgs/JointState`` or a one-point ``trajectory_msgs/JointTrajectory``
(``command_type``). Their joint names and units map to ours through :class:`JointNameMap`:
``theirs = ours * scale + offset`` joint by joint.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scarls.driver.backends import JointSample, RobotBackend, validate_command
from scarls.driver.safety import BackendError, ConfigError, DriverError, JointLimits
from scarls.sim.world import HOME, JOINT_NAMES, LOWER, UPPER

__all__ = [
    'COMMAND_TYPES',
    'BridgeCommand',
    'BridgeConfig',
    'BridgeError',
    'JointNameMap',
    'Ros2BridgeBackend',
]

logger = logging.getLogger(__name__)

#: Message types the bridge can publish commands as.
COMMAND_TYPES: tuple[str, ...] = ('joint_state', 'joint_trajectory')


class BridgeError(DriverError, ValueError):
    """A state message does not match the configured joint names."""


class JointNameMap:
    """Maps our joint vector to the robot's joint names (``ours[i]`` <-> ``theirs[i]``).

    Args:
        ours: our joint names in vector order.
        theirs: the robot's names for the same joints, same order.
        scale: optional per-joint factor, ``theirs = ours * scale + offset`` (non-zero).
        offset: optional per-joint offset.
    """

    def __init__(
        self,
        ours: Sequence[str],
        theirs: Sequence[str],
        scale: Sequence[float] | None = None,
        offset: Sequence[float] | None = None,
    ) -> None:
        self.ours = tuple(ours)
        self.theirs = tuple(theirs)
        n = len(self.ours)
        if n == 0 or len(self.theirs) != n:
            raise ConfigError(
                f'need the same non-zero number of our and their joint names, got {n} and '
                f'{len(self.theirs)}'
            )
        for label, names in (('ours', self.ours), ('theirs', self.theirs)):
            dup = sorted({x for x in names if names.count(x) > 1})
            if dup:
                raise ConfigError(f'duplicate joint names in {label}: {dup}')
        self.scale = np.ones(n) if scale is None else np.asarray(scale, dtype=np.float64)
        self.offset = np.zeros(n) if offset is None else np.asarray(offset, dtype=np.float64)
        if self.scale.shape != (n,) or self.offset.shape != (n,):
            raise ConfigError(f'scale and offset need {n} values each')
        if (
            np.any(self.scale == 0)
            or not np.all(np.isfinite(self.scale))
            or not np.all(np.isfinite(self.offset))
        ):
            raise ConfigError('scale must be finite and non-zero, offset finite')
        self._index_cache: tuple[tuple[str, ...], np.ndarray] | None = None

    def to_theirs(self, vec: np.ndarray | Sequence[float]) -> np.ndarray:
        """Our vector -> values aligned with :attr:`theirs`."""
        arr = np.asarray(vec, dtype=np.float64)
        if arr.shape != (len(self.ours),):
            raise BridgeError(f'expected {len(self.ours)} values in our order, got {arr.shape}')
        return arr * self.scale + self.offset

    def from_theirs(
        self,
        names: Sequence[str],
        values: Sequence[float] | np.ndarray,
        rates: bool = False,
    ) -> np.ndarray:
        """Their (names, values) in any order, extra joints ignored -> our vector.

        With ``rates=True`` the values are velocities (scaled, offset not applied).

        Raises:
            BridgeError: lengths differ or some of :attr:`theirs` are missing.
        """
        key = tuple(names)
        vals = np.asarray(values, dtype=np.float64)
        if vals.shape != (len(key),):
            raise BridgeError(f'{len(key)} joint names but {vals.size} values')
        if self._index_cache is None or self._index_cache[0] != key:
            where = {n: i for i, n in enumerate(key)}
            missing = [n for n in self.theirs if n not in where]
            if missing:
                raise BridgeError(
                    f'joint state lacks {missing}; configured names (joint_names_theirs) must '
                    f"all appear in the robot's messages, which carry {list(key)}"
                )
            self._index_cache = (key, np.array([where[n] for n in self.theirs]))
        picked = vals[self._index_cache[1]]
        if rates:
            return picked / self.scale
        return (picked - self.offset) / self.scale


@dataclass(frozen=True)
class BridgeConfig:
    """Configuration of :class:`Ros2BridgeBackend` (topic names are for the ROS node).

    Attributes:
        joint_names_theirs: the robot's joint names, aligned with ``joint_names_ours``.
        state_topic: ``sensor_msgs/JointState`` topic the robot publishes.
        command_topic: topic the robot accepts position commands on.
        command_type: ``'joint_state'`` or ``'joint_trajectory'``.
        trajectory_time_s: ``time_from_start`` of the single trajectory point.
        joint_names_ours: our names (defaults to the dual-arm 14-joint names).
        lower / upper / max_velocity: limits in our units (default: the simulator's limits).
        home: home pose in our units used by :meth:`Ros2BridgeBackend.reset_pose`.
        scale / offset: unit conversion per joint (``theirs = ours * scale + offset``).
        state_timeout_s: a state older than this is stale (:meth:`Ros2BridgeBackend.state_fresh`).
    """

    joint_names_theirs: tuple[str, ...]
    state_topic: str = '/joint_states'
    command_topic: str = '/joint_command'
    command_type: str = 'joint_state'
    trajectory_time_s: float = 1.0 / 30.0
    joint_names_ours: tuple[str, ...] = JOINT_NAMES
    lower: tuple[float, ...] = tuple(LOWER.tolist())
    upper: tuple[float, ...] = tuple(UPPER.tolist())
    max_velocity: tuple[float, ...] = (1.5,) * 6 + (2.0,) + (1.5,) * 6 + (2.0,)
    home: tuple[float, ...] = tuple(HOME.tolist())
    scale: tuple[float, ...] | None = None
    offset: tuple[float, ...] | None = None
    state_timeout_s: float = 0.5

    def __post_init__(self) -> None:
        if self.command_type not in COMMAND_TYPES:
            raise ConfigError(
                f'command_type must be one of {list(COMMAND_TYPES)}, got {self.command_type!r}'
            )
        for name in ('state_topic', 'command_topic'):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ConfigError(f'{name} must be a non-empty topic name')
        n = len(self.joint_names_ours)
        for name in ('joint_names_theirs', 'lower', 'upper', 'max_velocity', 'home'):
            if len(getattr(self, name)) != n:
                raise ConfigError(
                    f'{name} has {len(getattr(self, name))} entries; need {n} (one per joint '
                    f'of {list(self.joint_names_ours)})'
                )
        for name in ('trajectory_time_s', 'state_timeout_s'):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f'{name} must be > 0 seconds, got {value!r}')

    def limits(self) -> JointLimits:
        """The configured limits as :class:`JointLimits`."""
        return JointLimits(np.array(self.lower), np.array(self.upper), np.array(self.max_velocity))


@dataclass(frozen=True, eq=False)
class BridgeCommand:
    """A command to publish: their joint names, positions in their units, trajectory time."""

    names: tuple[str, ...]
    positions: np.ndarray
    time_from_start: float
    command_type: str


class Ros2BridgeBackend(RobotBackend):
    """Backend whose I/O is done by a ROS node: it feeds states in and publishes commands out."""

    def __init__(self, config: BridgeConfig, robot: Any = None) -> None:
        self.config = config
        self.robot = robot
        self.names = JointNameMap(
            config.joint_names_ours, config.joint_names_theirs, config.scale, config.offset
        )
        self._limits = config.limits()
        self._connected = False
        self._state: JointSample | None = None
        self._pending: BridgeCommand | None = None

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.config.joint_names_ours

    @property
    def limits(self) -> JointLimits:
        return self._limits

    @property
    def connected(self) -> bool:
        return self._connected

    def connect(self) -> None:
        self._connected = True

    def disconnect(self) -> None:
        self._connected = False
        self._pending = None

    def on_state(
        self,
        names: Sequence[str],
        positions: Sequence[float],
        stamp: float,
        velocities: Sequence[float] | None = None,
    ) -> None:
        """Feed one received joint-state message (names/positions in the robot's convention).

        Empty ``velocities`` (common in JointState messages) count as unknown (zeros).
        """
        pos = self.names.from_theirs(names, positions)
        if velocities is not None and len(velocities) == len(names):
            vel = self.names.from_theirs(names, velocities, rates=True)
        else:
            vel = np.zeros(len(self.joint_names))
        self._state = JointSample(pos, vel, float(stamp))

    def state_fresh(self, now: float) -> bool:
        """True when a state arrived within ``state_timeout_s`` before ``now``."""
        return self._state is not None and now - self._state.stamp <= self.config.state_timeout_s

    def read_state(self) -> JointSample:
        self._require_connected()
        if self._state is None:
            raise BackendError(
                f'no joint state received yet on {self.config.state_topic!r}; is the robot '
                'publishing and is the topic name right?'
            )
        return self._state

    def write_command(self, positions: np.ndarray) -> None:
        self._require_connected()
        q = self._limits.clamp(validate_command(positions, self.joint_names))
        self._pending = BridgeCommand(
            self.names.theirs,
            self.names.to_theirs(q),
            self.config.trajectory_time_s,
            self.config.command_type,
        )

    def pending_command(self) -> BridgeCommand | None:
        """The command to publish now, or None; returns each command once."""
        cmd, self._pending = self._pending, None
        return cmd

    def reset_pose(self) -> None:
        """Command the configured home pose (the robot moves there at its own pace)."""
        self.write_command(np.array(self.config.home))
