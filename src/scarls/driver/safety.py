"""Command safety for every robot backend: limits, a rate/position filter, a watchdog, an e-stop.

All times are plain floats in seconds from a monotonic clock chosen by the caller, so the logic
is deterministic and testable; nothing here sleeps or reads a clock.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    'BackendError',
    'CommandRejected',
    'ConfigError',
    'DriverError',
    'EStop',
    'FilterResult',
    'JointLimits',
    'SAFETY_STATES',
    'SafetyFilter',
    'SafetyStatus',
    'Watchdog',
]

logger = logging.getLogger(__name__)


class DriverError(Exception):
    """Base class of every error raised by :mod:`scarls.driver`."""


class ConfigError(DriverError, ValueError):
    """Invalid driver/backend configuration."""


class CommandRejected(DriverError, ValueError):
    """A joint command (or the state it is checked against) is unusable: wrong length, NaN/inf."""


class BackendError(DriverError, RuntimeError):
    """A backend cannot do what was asked (not connected, SDK missing, no state yet...)."""


def _vector(values: Sequence[float] | np.ndarray) -> np.ndarray:
    arr = np.array(values, dtype=np.float64).reshape(-1)
    arr.setflags(write=False)
    return arr


@dataclass(frozen=True, eq=False)
class JointLimits:
    """Position limits and speed limits of an n-joint robot (read-only float64 arrays).

    Attributes:
        lower: (n,) lower position limits (rad, or normalised units for grippers).
        upper: (n,) upper position limits, each strictly above ``lower``.
        max_velocity: (n,) positive speed limits per second.
    """

    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray

    def __post_init__(self) -> None:
        lower = _vector(self.lower)
        upper = _vector(self.upper)
        vel = _vector(self.max_velocity)
        if not (lower.shape == upper.shape == vel.shape) or lower.size == 0:
            raise ConfigError(
                f'lower/upper/max_velocity must be non-empty and of equal length, got '
                f'{lower.size}/{upper.size}/{vel.size}'
            )
        if not (
            np.all(np.isfinite(lower)) and np.all(np.isfinite(upper)) and np.all(np.isfinite(vel))
        ):
            raise ConfigError('joint limits must be finite numbers')
        bad = np.flatnonzero(lower >= upper)
        if bad.size:
            raise ConfigError(f'lower must be < upper; violated at joint indices {bad.tolist()}')
        if np.any(vel <= 0):
            raise ConfigError(
                f'max_velocity must be > 0; violated at {np.flatnonzero(vel <= 0).tolist()}'
            )
        object.__setattr__(self, 'lower', lower)
        object.__setattr__(self, 'upper', upper)
        object.__setattr__(self, 'max_velocity', vel)

    @property
    def size(self) -> int:
        """Number of joints."""
        return int(self.lower.size)

    def clamp(self, q: np.ndarray) -> np.ndarray:
        """``q`` clamped into ``[lower, upper]``."""
        return np.clip(q, self.lower, self.upper)

    def contains(self, q: np.ndarray, tol: float = 0.0) -> bool:
        """True when every joint of ``q`` is within the limits (with tolerance ``tol``)."""
        q = np.asarray(q, dtype=np.float64)
        return bool(np.all(q >= self.lower - tol) and np.all(q <= self.upper + tol))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, JointLimits):
            return NotImplemented
        return bool(
            np.array_equal(self.lower, other.lower)
            and np.array_equal(self.upper, other.upper)
            and np.array_equal(self.max_velocity, other.max_velocity)
        )

    __hash__ = None  # type: ignore[assignment]


@dataclass(frozen=True, eq=False)
class FilterResult:
    """Output of :meth:`SafetyFilter.filter`.

    Attributes:
        command: (n,) safe command to send.
        clamped: True when the command differs from the requested target.
        reasons: human-readable reasons, e.g. ``'position limit: left_joint2'``.
    """

    command: np.ndarray
    clamped: bool
    reasons: tuple[str, ...] = field(default=())


class SafetyFilter:
    """Clamps targets to position limits and to ``max_velocity * dt`` per tick from ``current``.

    Targets with the wrong length or NaN/inf are rejected (:class:`CommandRejected`), never
    repaired. The command always lies between ``current`` and the position-clamped target, so a
    robot that starts outside its limits is led back inside at the speed limit.
    """

    def __init__(
        self,
        limits: JointLimits,
        dt: float,
        joint_names: Sequence[str] | None = None,
    ) -> None:
        if not (isinstance(dt, (int, float)) and math.isfinite(dt) and dt > 0):
            raise ConfigError(f'dt must be a positive number of seconds, got {dt!r}')
        if joint_names is not None and len(joint_names) != limits.size:
            raise ConfigError(
                f'{len(joint_names)} joint names for {limits.size} joints in the limits'
            )
        self.limits = limits
        self.dt = float(dt)
        self.joint_names = (
            tuple(joint_names)
            if joint_names is not None
            else tuple(f'joint{i}' for i in range(limits.size))
        )
        self._max_step = limits.max_velocity * self.dt

    def _check(self, what: str, values: np.ndarray | Sequence[float]) -> np.ndarray:
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (self.limits.size,):
            raise CommandRejected(
                f'{what} must have shape ({self.limits.size},) in the order '
                f'{list(self.joint_names)}, got shape {arr.shape}'
            )
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            raise CommandRejected(
                f'{what} has NaN/inf for {[self.joint_names[i] for i in bad]}; '
                'the command was dropped, send finite values'
            )
        return arr

    def filter(
        self,
        target: np.ndarray | Sequence[float],
        current: np.ndarray | Sequence[float],
    ) -> FilterResult:
        """Make ``target`` safe to send given the measured ``current`` positions.

        Raises:
            CommandRejected: ``target`` or ``current`` has the wrong length or NaN/inf.
        """
        tgt = self._check('target', target)
        cur = self._check('current', current)
        reasons: list[str] = []
        pos = np.clip(tgt, self.limits.lower, self.limits.upper)
        hit = np.flatnonzero(pos != tgt)
        if hit.size:
            reasons.append('position limit: ' + ', '.join(self.joint_names[i] for i in hit))
        delta = pos - cur
        step = np.clip(delta, -self._max_step, self._max_step)
        hit = np.flatnonzero(step != delta)
        if hit.size:
            reasons.append('velocity limit: ' + ', '.join(self.joint_names[i] for i in hit))
        cmd = cur + step
        # keep exactly the requested value when nothing was limited.
        cmd = np.where(step == delta, pos, cmd)
        return FilterResult(command=cmd, clamped=bool(reasons), reasons=tuple(reasons))


class Watchdog:
    """Expires when :meth:`feed` was not called for more than ``timeout_s`` seconds.

    A watchdog that was never fed counts as expired.
    """

    def __init__(self, timeout_s: float) -> None:
        if not (
            isinstance(timeout_s, (int, float)) and math.isfinite(timeout_s) and timeout_s > 0
        ):
            raise ConfigError(f'timeout_s must be a positive number of seconds, got {timeout_s!r}')
        self.timeout_s = float(timeout_s)
        self._last: float | None = None

    @property
    def last_feed(self) -> float | None:
        """Time of the last :meth:`feed`, or None."""
        return self._last

    def feed(self, now: float) -> None:
        """Record activity at time ``now`` (seconds, monotonic clock)."""
        self._last = float(now)

    def expired(self, now: float) -> bool:
        """True when never fed or the last feed is more than ``timeout_s`` before ``now``."""
        return self._last is None or (float(now) - self._last) > self.timeout_s

    def reset(self) -> None:
        """Forget the last feed (the watchdog is expired until fed again)."""
        self._last = None


class EStop:
    """Latched emergency stop: stays engaged (keeping the first reason) until :meth:`release`."""

    def __init__(self) -> None:
        self._reason: str | None = None

    @property
    def engaged(self) -> bool:
        """True while the stop is latched."""
        return self._reason is not None

    @property
    def reason(self) -> str | None:
        """Why it was first engaged, or None when released."""
        return self._reason

    def engage(self, reason: str) -> None:
        """Latch the stop. Engaging again while engaged keeps the first reason."""
        if self._reason is None:
            self._reason = str(reason) or 'unspecified'
            logger.warning('e-stop engaged: %s', self._reason)

    def release(self) -> None:
        """Clear the latch (an explicit operator action)."""
        if self._reason is not None:
            logger.warning('e-stop released (was: %s)', self._reason)
        self._reason = None


#: The driver's safety states, see ``scarls_interfaces/DriverState``.
SAFETY_STATES = ('ok', 'clamped', 'holding', 'estopped', 'fault', 'resetting')


class SafetyStatus:
    """The driver's safety state of the current tick and per-state tick counters.

    :meth:`update` returns True when the state or its reason changed (the node publishes then,
    and at a low rate otherwise).
    """

    def __init__(self) -> None:
        self.state = 'holding'
        self.reason = 'waiting for a first command'
        self.ticks = {s: 0 for s in SAFETY_STATES}

    def update(self, state: str, reason: str = '') -> bool:
        if state not in SAFETY_STATES:
            raise ValueError(f'unknown safety state {state!r}; known: {SAFETY_STATES}')
        self.ticks[state] += 1
        changed = (state, reason) != (self.state, self.reason)
        self.state, self.reason = state, reason
        return changed
