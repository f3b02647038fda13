"""Health of every scarls node as ROS diagnostics (no rclpy here).

Each node reports one status once a second on ``/diagnostics`` (diagnostic_msgs/DiagnosticArray,
the topic every diagnostics viewer and ``diagnostic_aggregator`` reads): a level (OK / WARN /
ERROR), a one-line message and key-values. The rules that turn a node's state into a status are
pure functions in :mod:`scarls.diagnostics.rules`; :mod:`scarls.ros.diagnostics` is the
publisher every node attaches.
"""

from __future__ import annotations

import collections
import enum
import math
import threading
from dataclasses import dataclass, field


class Level(enum.IntEnum):
    """diagnostic_msgs/DiagnosticStatus levels."""

    OK = 0
    WARN = 1
    ERROR = 2
    STALE = 3


def _text(value) -> str:
    if isinstance(value, float):
        return 'nan' if math.isnan(value) else f'{value:.4g}'
    if isinstance(value, bool):
        return 'true' if value else 'false'
    return str(value)


@dataclass(frozen=True)
class Status:
    """One node's health: ``level``, a one-line ``message`` and ``values`` (key -> text)."""

    level: Level
    message: str
    values: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of(cls, level: Level, message: str, **values) -> Status:
        """A status whose values are turned into text (floats to 4 significant digits)."""
        return cls(Level(level), message, {k: _text(v) for k, v in values.items()})

    def with_values(self, **values) -> Status:
        return Status(self.level, self.message, {**self.values,
                                                 **{k: _text(v) for k, v in values.items()}})


def worst(problems: list[tuple[Level, str]], ok_message: str) -> tuple[Level, str]:
    """The highest level among ``problems`` and their messages joined ('; '), most severe
    first; ``(OK, ok_message)`` when there are none."""
    if not problems:
        return Level.OK, ok_message
    ranked = sorted(problems, key=lambda p: -int(p[0]))
    return ranked[0][0], '; '.join(message for _, message in ranked)


class RateMeter:
    """Events per second over the last ``window_s`` seconds (thread-safe: one thread ticks,
    another reads). ``now`` is any monotonic clock in seconds."""

    def __init__(self, window_s: float = 2.0, max_events: int = 4096) -> None:
        if not window_s > 0:
            raise ValueError('window_s must be positive')
        self.window_s = float(window_s)
        self._times: collections.deque[float] = collections.deque(maxlen=max_events)
        self._lock = threading.Lock()
        self.total = 0

    def tick(self, now: float) -> None:
        with self._lock:
            self._times.append(now)
            self.total += 1

    def _recent(self, now: float) -> list[float]:
        with self._lock:
            while self._times and self._times[0] < now - self.window_s:
                self._times.popleft()
            return list(self._times)

    def rate(self, now: float) -> float:
        """Events per second in the window (0 with fewer than two events in it)."""
        times = self._recent(now)
        if len(times) < 2 or times[-1] <= times[0]:
            return 0.0
        return (len(times) - 1) / (times[-1] - times[0])

    def max_interval(self, now: float) -> float:
        """The longest gap between events in the window, or since the last event (seconds;
        inf if nothing happened in the window)."""
        times = self._recent(now)
        if not times:
            return math.inf
        gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
        return max([now - times[-1], *gaps])
