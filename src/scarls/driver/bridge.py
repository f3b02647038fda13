"""Pure logic of a backend for robots that already speak ROS 2 (e.g. an Agibot G1-class robot
running ros2_control).

The robot description (:mod:`scarls.robot`) gives our joint vector (for each arm its joints,
then its gripper), the limits, the home pose and each gripper's unit; its ``backend:`` mapping
(:class:`BridgeConfig`) gives the robot's side: the joint-state topic and its QoS, the robot's
own joint names (``joint_names_theirs``, in our order) and one command group per controller
(``command_groups``: a ``trajectory_msgs/JointTrajectory``, ``std_msgs/Float64MultiArray`` or
``sensor_msgs/JointState`` topic and the joints it takes, in the controller's order).

The ROS node subscribes to ``state_topic`` and feeds every message to
:meth:`Ros2BridgeBackend.on_state`, which never raises: NaN, malformed, missing-joint and
out-of-order messages are counted (:class:`BridgeStats`) and ignored, so the last good state is
held. When no good state arrived for ``state_timeout_s`` (measured on this machine's monotonic
clock, so a robot whose clock is skewed is not stale), :meth:`Ros2BridgeBackend.fault` says why
and commands are refused until state flows again. Each tick the node publishes
:meth:`Ros2BridgeBackend.pending_commands` (one :class:`BridgeCommand` per group, turned into a
message by :func:`command_message`). Trajectories are stamped 0 ("start when received") with a
``time_from_start``, as ros2_control's joint_trajectory_controller expects, so clock skew between
this machine and the robot cannot delay or void them.

Units: ``theirs = ours * scale + offset`` joint by joint (:class:`JointNameMap`); arm joints are
radians on both sides (scale 1), a gripper is normalised ``0 = closed .. 1 = open`` on our side
and the description's ``closed``/``open`` values in its ``unit`` on the robot's.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from scarls.driver.base import JointSample, RobotBackend, validate_command
from scarls.driver.safety import BackendError, ConfigError, DriverError, JointLimits
from scarls.robot import RobotDescription, RobotDescriptionError, load_robot

__all__ = [
    'COMMAND_TYPES',
    'STATE_QOS',
    'BridgeCommand',
    'BridgeConfig',
    'BridgeError',
    'BridgeStats',
    'CommandGroup',
    'JointNameMap',
    'Ros2BridgeBackend',
    'command_message',
    'duration_parts',
]

logger = logging.getLogger(__name__)

#: Message types a command group can be published as: ``joint_trajectory``
#: (trajectory_msgs/JointTrajectory, joint_trajectory_controller), ``float64_array``
#: (std_msgs/Float64MultiArray, forward_command_controller / position controllers),
#: ``joint_state`` (sensor_msgs/JointState, e.g. topic_based_ros2_control or a vendor bridge).
COMMAND_TYPES: tuple[str, ...] = ('joint_trajectory', 'float64_array', 'joint_state')
#: Reliability of the robot's joint-state publisher as far as our reader is concerned:
#: ``best_effort`` readers match both best-effort and reliable writers.
STATE_QOS: tuple[str, ...] = ('best_effort', 'reliable')


class BridgeError(DriverError, ValueError):
    """A state message does not match the configured joint names (or is malformed)."""


class _Rejected(BridgeError):
    """Why :meth:`Ros2BridgeBackend.on_state` ignored a message (``kind``: a BridgeStats
    counter)."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


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

    def indices(self, names: Sequence[str]) -> np.ndarray:
        """Positions of :attr:`theirs` in a message's ``names`` (extra names are ignored).

        Raises:
            BridgeError: some of :attr:`theirs` are missing.
        """
        key = tuple(names)
        if self._index_cache is None or self._index_cache[0] != key:
            where = {n: i for i, n in enumerate(key)}
            missing = [n for n in self.theirs if n not in where]
            if missing:
                raise BridgeError(
                    f'joint state lacks {missing}; configured names (joint_names_theirs) must '
                    f"all appear in the robot's messages, which carry {list(key)}"
                )
            self._index_cache = (key, np.array([where[n] for n in self.theirs], dtype=np.intp))
        return self._index_cache[1]

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
        vals = np.asarray(values, dtype=np.float64)
        if vals.shape != (len(names),):
            raise BridgeError(f'{len(names)} joint names but {vals.size} values')
        picked = vals[self.indices(names)]
        if rates:
            return picked / self.scale
        return (picked - self.offset) / self.scale


@dataclass(frozen=True)
class CommandGroup:
    """One controller of the robot: the message type, its topic and the joints it takes.

    Attributes:
        name: a label for logs (e.g. ``left_arm``).
        type: one of :data:`COMMAND_TYPES`.
        topic: the controller's command topic (e.g. ``/left_arm_controller/joint_trajectory``).
        joints: our joint names, in the order the controller expects them (empty: every joint
            of the robot, in our order).
    """

    name: str
    type: str
    topic: str
    joints: tuple[str, ...] = ()

    @classmethod
    def parse(cls, data: Any, where: str) -> CommandGroup:
        if isinstance(data, CommandGroup):
            return data
        if not isinstance(data, Mapping):
            raise ConfigError(f'{where} must be a mapping {{name, type, topic, joints}}, got '
                              f'{data!r}')
        known = {'name', 'type', 'topic', 'joints'}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f'{where}: unknown key(s) {unknown}; known: {sorted(known)}')
        missing = sorted({'name', 'type', 'topic'} - set(data))
        if missing:
            raise ConfigError(f'{where}: missing key(s) {missing}')
        joints = data.get('joints') or ()
        if isinstance(joints, str) or not isinstance(joints, (list, tuple)):
            raise ConfigError(f'{where}.joints must be a list of joint names, got {joints!r}')
        group = cls(str(data['name']), str(data['type']), str(data['topic']),
                    tuple(str(j) for j in joints))
        group.check(where)
        return group

    def check(self, where: str) -> None:
        if self.type not in COMMAND_TYPES:
            raise ConfigError(f'{where}.type must be one of {list(COMMAND_TYPES)}, got '
                              f'{self.type!r}')
        if not self.name:
            raise ConfigError(f'{where}.name must not be empty')
        if not self.topic or any(c.isspace() for c in self.topic):
            raise ConfigError(f'{where}.topic must be a topic name, got {self.topic!r}')


@dataclass(frozen=True)
class BridgeConfig:
    """The ``backend:`` settings of a ``ros2_bridge`` robot description (topics are for the
    ROS node; joint names, limits, home and gripper units come from the description itself).

    Attributes:
        joint_names_theirs: the robot's joint names, in the order of our joint vector (empty:
            the robot uses our names).
        state_topic: ``sensor_msgs/JointState`` topic the robot publishes.
        state_qos: ``best_effort`` (matches best-effort and reliable publishers) or
            ``reliable`` (only reliable publishers).
        state_timeout_s: no good state for this long is a fault: the driver holds and reports.
        command_groups: one :class:`CommandGroup` (or its mapping) per controller; together
            they must take every joint exactly once. Empty: one group ``all`` from
            ``command_type`` and ``command_topic``.
        command_topic / command_type: the single group used when ``command_groups`` is empty.
        trajectory_time_s: ``time_from_start`` of a trajectory's point (0: one control period
            of the robot description, the time until the next command).
    """

    joint_names_theirs: tuple[str, ...] = ()
    state_topic: str = '/joint_states'
    state_qos: str = 'best_effort'
    state_timeout_s: float = 0.5
    command_groups: tuple[CommandGroup, ...] = ()
    command_topic: str = '/joint_command'
    command_type: str = 'joint_state'
    trajectory_time_s: float = 0.0

    def __post_init__(self) -> None:
        names = self.joint_names_theirs
        if isinstance(names, str) or not isinstance(names, (list, tuple)):
            raise ConfigError(f'joint_names_theirs must be a list of names, got {names!r}')
        object.__setattr__(self, 'joint_names_theirs', tuple(str(n) for n in names))
        if self.state_qos not in STATE_QOS:
            raise ConfigError(f'state_qos must be one of {list(STATE_QOS)}, got '
                              f'{self.state_qos!r}')
        for name in ('state_topic', 'command_topic'):
            value = getattr(self, name)
            if not isinstance(value, str) or not value or any(c.isspace() for c in value):
                raise ConfigError(f'{name} must be a non-empty topic name, got {value!r}')
        if self.command_type not in COMMAND_TYPES:
            raise ConfigError(
                f'command_type must be one of {list(COMMAND_TYPES)}, got {self.command_type!r}'
            )
        groups = self.command_groups
        if isinstance(groups, Mapping) or not isinstance(groups, (list, tuple)):
            raise ConfigError(f'command_groups must be a list of groups, got {groups!r}')
        parsed = tuple(CommandGroup.parse(g, f'command_groups[{i}]')
                       for i, g in enumerate(groups))
        for what in ('name', 'topic'):
            values = [getattr(g, what) for g in parsed]
            dup = sorted({v for v in values if values.count(v) > 1})
            if dup:
                raise ConfigError(f'command_groups: each group needs its own {what}; repeated: '
                                  f'{dup}')
        object.__setattr__(self, 'command_groups', parsed)
        for name in ('state_timeout_s', 'trajectory_time_s'):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ConfigError(f'{name} must be a number of seconds, got {value!r}')
            if not math.isfinite(value) or value < 0 or (name == 'state_timeout_s'
                                                         and value == 0):
                raise ConfigError(f'{name} must be a finite number of seconds > 0 (0 allowed '
                                  f'for trajectory_time_s), got {value!r}')

    def groups(self) -> tuple[CommandGroup, ...]:
        """The command groups (the single ``command_topic`` group when none are listed)."""
        if self.command_groups:
            return self.command_groups
        return (CommandGroup('all', self.command_type, self.command_topic),)


@dataclass(frozen=True, eq=False)
class BridgeCommand:
    """A command for one group: their joint names, positions in their units, the trajectory
    time, the message type and topic (build the message with :func:`command_message`)."""

    group: str
    command_type: str
    topic: str
    names: tuple[str, ...]
    positions: np.ndarray
    time_from_start: float


@dataclass
class BridgeStats:
    """Joint-state messages received, accepted and ignored (by reason) since connect."""

    received: int = 0
    accepted: int = 0
    nan: int = 0
    malformed: int = 0
    missing_joint: int = 0
    out_of_order: int = 0
    nan_velocity: int = 0
    last_problem: str = ''

    @property
    def rejected(self) -> int:
        return self.nan + self.malformed + self.missing_joint + self.out_of_order


@dataclass(frozen=True)
class _Group:
    spec: CommandGroup
    index: np.ndarray          # our joint indices, in the controller's order
    names: tuple[str, ...]     # the robot's names of those joints


@dataclass
class _Homing:
    command: np.ndarray        # the ramp's current command (our units)
    target: np.ndarray
    groups: tuple[_Group, ...]   # the groups ramped tick by tick (not trajectory controllers)


def duration_parts(seconds: float) -> tuple[int, int]:
    """``seconds`` >= 0 as ``(sec, nanosec)`` of a builtin_interfaces Duration/Time."""
    ns = int(round(float(seconds) * 1e9))
    if ns < 0:
        raise ValueError(f'a duration must be >= 0 s, got {seconds!r}')
    return ns // 1_000_000_000, ns % 1_000_000_000


def command_message(cmd: BridgeCommand, stamp: Any = None) -> Any:
    """The ROS message of ``cmd``: a JointTrajectory stamped 0 ("start now") with one point at
    ``time_from_start``, a Float64MultiArray of the positions in the controller's order, or a
    JointState stamped ``stamp`` (a builtin_interfaces Time; None: 0)."""
    positions = [float(x) for x in cmd.positions]
    if cmd.command_type == 'joint_trajectory':
        from builtin_interfaces.msg import Duration
        from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

        msg = JointTrajectory()
        msg.joint_names = list(cmd.names)   # header.stamp stays 0: start when received
        sec, nanosec = duration_parts(cmd.time_from_start)
        msg.points = [JointTrajectoryPoint(positions=positions,
                                           time_from_start=Duration(sec=sec, nanosec=nanosec))]
        return msg
    if cmd.command_type == 'float64_array':
        from std_msgs.msg import Float64MultiArray

        return Float64MultiArray(data=positions)
    if cmd.command_type == 'joint_state':
        from sensor_msgs.msg import JointState

        msg = JointState(name=list(cmd.names), position=positions)
        if stamp is not None:
            msg.header.stamp = stamp
        return msg
    raise ConfigError(f'unknown command type {cmd.command_type!r}')


class Ros2BridgeBackend(RobotBackend):
    """Backend whose I/O is done by a ROS node: it feeds states in and publishes commands out.

    Args:
        config: the description's backend settings.
        robot: the robot description (or its name; None: the default robot).
        clock: monotonic seconds (receive times and staleness; tests pass a fake clock).
    """

    def __init__(self, config: BridgeConfig, robot: RobotDescription | str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.config = config
        try:
            self.robot = load_robot(robot)
        except RobotDescriptionError as exc:
            raise ConfigError(str(exc)) from exc
        ours = self.robot.joint_names
        theirs = config.joint_names_theirs or ours
        if len(theirs) != len(ours):
            raise ConfigError(
                f'joint_names_theirs has {len(theirs)} names; robot {self.robot.name!r} has '
                f'{len(ours)} joints {list(ours)} (list the robot\'s name of each, in this order)')
        scale, offset = np.ones(len(ours)), np.zeros(len(ours))
        for arm in self.robot.arms:
            if arm.gripper is not None:
                i = self.robot.gripper_index(arm.name)
                scale[i] = arm.gripper.open - arm.gripper.closed
                offset[i] = arm.gripper.closed
        self.names = JointNameMap(ours, theirs, scale, offset)
        self._groups = self._resolve_groups(config.groups())
        self._limits = JointLimits(self.robot.lower, self.robot.upper, self.robot.max_velocity)
        self._home = np.array(self.robot.home, dtype=np.float64)
        self._traj_time = config.trajectory_time_s or 1.0 / self.robot.control_rate_hz
        self._clock = clock
        self._lock = threading.Lock()
        self._connected = False
        self._connected_at = 0.0
        self._state: JointSample | None = None
        self._received_at: float | None = None
        self._rejected_since_good = 0
        self._stats = BridgeStats()
        self._pending: dict[str, BridgeCommand] = {}
        self._homing: _Homing | None = None
        self._reset_until = 0.0   # a homing trajectory sent to the robot arrives by then

    def _resolve_groups(self, groups: Sequence[CommandGroup]) -> tuple[_Group, ...]:
        ours = self.names.ours
        where = {n: i for i, n in enumerate(ours)}
        taken: dict[str, str] = {}
        resolved = []
        for g in groups:
            joints = g.joints or ours
            unknown = [j for j in joints if j not in where]
            if unknown:
                raise ConfigError(f'command group {g.name!r} names joints {unknown} that robot '
                                  f'{self.robot.name!r} does not have; its joints: {list(ours)}')
            for j in joints:
                if j in taken:
                    raise ConfigError(f'joint {j!r} is in command groups {taken[j]!r} and '
                                      f'{g.name!r}; each joint belongs to one group')
                taken[j] = g.name
            index = np.array([where[j] for j in joints], dtype=np.intp)
            resolved.append(_Group(g, index, tuple(self.names.theirs[i] for i in index)))
        left = [j for j in ours if j not in taken]
        if left:
            raise ConfigError(f'joints {left} are in no command group; every joint of robot '
                              f'{self.robot.name!r} must be commanded by one controller')
        return tuple(resolved)

    # ------------------------------------------------------------------ contract
    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.robot.joint_names

    @property
    def limits(self) -> JointLimits:
        return self._limits

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def groups(self) -> tuple[CommandGroup, ...]:
        """The command groups in publishing order (one topic and message type each)."""
        return tuple(g.spec for g in self._groups)

    @property
    def stats(self) -> BridgeStats:
        """A copy of the joint-state counters."""
        with self._lock:
            return replace(self._stats)

    def connect(self) -> None:
        with self._lock:
            self._connected = True
            self._connected_at = self._clock()
            self._state, self._received_at = None, None
            self._rejected_since_good = 0
            self._stats = BridgeStats()
            self._pending, self._homing = {}, None

    def disconnect(self) -> None:
        with self._lock:
            self._connected = False
            self._pending, self._homing = {}, None

    # ------------------------------------------------------------------ state in
    def on_state(
        self,
        names: Sequence[str],
        positions: Sequence[float],
        stamp: float,
        velocities: Sequence[float] | None = None,
    ) -> bool:
        """Feed one received joint-state message (names/values in the robot's convention;
        ``stamp`` in seconds of the robot's clock, 0 = unstamped). Never raises.

        Returns:
            True when the message became the current state; False when it was ignored (NaN
            positions, malformed, a configured joint missing, or a stamp older than the current
            state's): the reason is counted in :attr:`stats` and the last good state is kept.
        """
        now = self._clock()
        try:
            sample = self._convert(names, positions, float(stamp), velocities)
        except (TypeError, ValueError, IndexError) as exc:   # _Rejected is a ValueError
            kind = exc.kind if isinstance(exc, _Rejected) else 'malformed'
            with self._lock:
                self._stats.received += 1
                setattr(self._stats, kind, getattr(self._stats, kind) + 1)
                self._stats.last_problem = str(exc) or repr(exc)
                self._rejected_since_good += 1
            return False
        with self._lock:
            self._stats.received += 1
            last = self._state
            fresh = self._received_at is not None and (
                now - self._received_at <= self.config.state_timeout_s)
            if last is not None and fresh and 0 < sample.stamp < last.stamp:
                # older than the state we hold: a reordered message (or a second publisher);
                # once the state is stale anyway, a jump back is a restarted robot clock
                self._stats.out_of_order += 1
                self._stats.last_problem = (f'stamp {sample.stamp:.3f} s is older than the '
                                            f'current state ({last.stamp:.3f} s)')
                self._rejected_since_good += 1
                return False
            self._state = sample
            self._received_at = now
            self._rejected_since_good = 0
            self._stats.accepted += 1
            return True

    def _convert(self, names: Sequence[str], positions: Sequence[float], stamp: float,
                 velocities: Sequence[float] | None) -> JointSample:
        names = list(names)
        if not math.isfinite(stamp):
            raise _Rejected(f'stamp is {stamp}', 'malformed')
        if len(positions) != len(names):
            raise _Rejected(f'{len(names)} joint names but {len(positions)} positions',
                            'malformed')
        try:
            index = self.names.indices(names)
        except BridgeError as exc:
            raise _Rejected(str(exc), 'missing_joint') from None
        raw = np.asarray(positions, dtype=np.float64)[index]
        bad = np.flatnonzero(~np.isfinite(raw))
        if bad.size:
            raise _Rejected(f'NaN/inf position for {[self.names.theirs[i] for i in bad]}',
                            'nan')
        pos = (raw - self.names.offset) / self.names.scale
        vel = np.zeros(len(pos))
        if velocities is not None and len(velocities) > 0:
            if len(velocities) != len(names):
                raise _Rejected(f'{len(names)} joint names but {len(velocities)} velocities',
                                'malformed')
            rates = np.asarray(velocities, dtype=np.float64)[index] / self.names.scale
            finite = np.isfinite(rates)
            if not finite.all():
                with self._lock:   # unknown velocities read as 0; the positions are good
                    self._stats.nan_velocity += 1
            vel = np.where(finite, rates, 0.0)
        return JointSample(pos, vel, stamp)

    def _fresh(self, now: float) -> bool:
        return self._received_at is not None and (
            now - self._received_at <= self.config.state_timeout_s)

    def state_fresh(self, now: float | None = None) -> bool:
        """True when a good state arrived within ``state_timeout_s`` (this machine's clock)."""
        with self._lock:
            return self._fresh(self._clock() if now is None else now)

    def fault(self) -> str | None:
        """Why commands cannot be executed now (no good joint state within
        ``state_timeout_s``, also counted from connect), or None."""
        if not self._connected:
            return None
        now = self._clock()
        topic = self.config.state_topic
        with self._lock:
            if self._fresh(now):
                return None
            if self._received_at is None:
                waited = now - self._connected_at
                if waited <= self.config.state_timeout_s:
                    return None   # just connected: read_state() says it is waiting
                why = f'no valid joint state on {topic!r} yet ({waited:.1f} s after connect)'
            else:
                why = (f'joint state on {topic!r} is stale: the last valid one arrived '
                       f'{now - self._received_at:.2f} s ago (state_timeout_s '
                       f'{self.config.state_timeout_s:g})')
            if self._rejected_since_good:
                why += (f'; {self._rejected_since_good} message(s) ignored since, the last '
                        f'because: {self._stats.last_problem}')
            else:
                why += ('; is the robot publishing, and do state_topic and state_qos '
                        f'({self.config.state_qos}) match its publisher?')
            return why

    def read_state(self) -> JointSample:
        """The last good state (check :meth:`fault` for its freshness).

        Raises:
            BackendError: not connected, or no good state received yet.
        """
        self._require_connected()
        with self._lock:
            state = self._state
        if state is None:
            raise BackendError(
                f'no joint state received yet on {self.config.state_topic!r}; is the robot '
                'publishing and is the topic name right?'
            )
        return state

    # ------------------------------------------------------------------ commands out
    def write_command(self, positions: np.ndarray) -> None:
        """Queue absolute targets (our order and units) for every group; ends a homing move.

        Raises:
            CommandRejected: wrong length or NaN.
            BackendError: not connected, or the robot's state is stale (see :meth:`fault`).
        """
        self._require_connected()
        q = self._limits.clamp(validate_command(positions, self.joint_names))
        why = self.fault()
        if why is not None:
            raise BackendError(f'command not sent: {why}')
        with self._lock:
            self._homing = None
            self._queue(q, self._groups, self._traj_time)

    def _queue(self, q: np.ndarray, groups: Sequence[_Group], time_from_start: float) -> None:
        """Replace the pending command of each of ``groups`` (our vector ``q``); under lock."""
        theirs = self.names.to_theirs(q)
        for g in groups:
            self._pending[g.spec.name] = BridgeCommand(
                g.spec.name, g.spec.type, g.spec.topic, g.names, theirs[g.index],
                time_from_start)

    def pending_commands(self) -> list[BridgeCommand]:
        """The commands to publish now, at most one per group, in group order (empty: nothing
        new); each is returned once."""
        with self._lock:
            pending, self._pending = self._pending, {}
        return [pending[g.spec.name] for g in self._groups if g.spec.name in pending]

    def hold(self) -> None:
        """Command the measured pose and end a homing move; with a stale state, send nothing
        (the robot's controllers keep their last target)."""
        self._require_connected()
        with self._lock:
            self._homing = None
            self._reset_until = 0.0
            fresh = self._fresh(self._clock())
            state = self._state
        if not fresh or state is None:
            with self._lock:
                self._pending = {}
            logger.info('hold: no fresh joint state from the robot; no command sent')
            return
        self.write_command(state.positions)

    def reset_pose(self) -> None:
        """Move to the description's home pose within the joints' speed limits, from the
        measured pose: trajectory controllers get one trajectory that arrives when the slowest
        joint can (the robot finishes it on its own), the other groups a ramp of targets, one
        per :meth:`step`. A later command or a hold ends the move.

        Raises:
            BackendError: not connected, or no fresh state to start from.
        """
        self._require_connected()
        why = self.fault()
        if why is not None:
            raise BackendError(f'cannot move home: {why}')
        start = self.read_state().positions.copy()
        target = self._limits.clamp(self._home)
        duration = float(np.max(np.abs(target - start) / self._limits.max_velocity))
        traj = [g for g in self._groups if g.spec.type == 'joint_trajectory']
        ramp = tuple(g for g in self._groups if g.spec.type != 'joint_trajectory')
        with self._lock:
            self._queue(target, traj, max(duration, self._traj_time))
            self._homing = _Homing(start, target, ramp) if ramp else None
            self._reset_until = self._clock() + (max(duration, self._traj_time) if traj else 0.0)

    @property
    def homing(self) -> bool:
        """True while the ramp of a :meth:`reset_pose` is running."""
        return self._homing is not None

    @property
    def moving(self) -> bool:
        """A :meth:`reset_pose` is under way: its ramp runs, or the trajectory sent to the
        robot's controllers has not had its time yet (a hold or a command ends both)."""
        with self._lock:
            return self._homing is not None or self._clock() < self._reset_until

    def step(self, dt: float) -> None:
        """Advance a homing ramp by ``dt`` seconds (queues its next target)."""
        if not dt > 0:
            raise ConfigError(f'dt must be > 0 seconds, got {dt!r}')
        with self._lock:
            homing = self._homing
        if homing is None:
            return
        if self.fault() is not None:
            logger.warning('homing stopped: the joint state is stale')
            with self._lock:
                self._homing = None
            return
        max_step = self._limits.max_velocity * dt
        homing.command = homing.command + np.clip(homing.target - homing.command,
                                                  -max_step, max_step)
        done = bool(np.allclose(homing.command, homing.target, atol=1e-9))
        with self._lock:
            if self._homing is homing:
                self._queue(homing.command, homing.groups, self._traj_time)
                if done:
                    self._homing = None
