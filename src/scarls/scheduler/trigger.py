"""When to trigger training (Algorithm 2, OnDataNotification): pure logic, no ROS.

After each saved episode the scheduler checks its quality; once enough good data arrived and at
least `min_interval_s` passed since the last trigger, it triggers the learner. A trigger that
cannot fire yet stays pending (it fires on a later poll), so no data is forgotten.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class TriggerConfigError(ValueError):
    """Invalid training-trigger settings."""


@dataclass(frozen=True)
class TriggerConfig:
    """Settings of the training trigger."""

    #: T_interval of the paper: minimum seconds between two triggers.
    min_interval_s: float = 10.0
    #: An episode shorter than this is not worth training on (quality check).
    min_steps: int = 10
    #: An episode with more than this fraction of dropped steps fails the quality check.
    max_dropped_fraction: float = 0.05
    #: New good episodes needed before a trigger.
    min_new_episodes: int = 1

    def __post_init__(self) -> None:
        if not (math.isfinite(self.min_interval_s) and self.min_interval_s >= 0):
            raise TriggerConfigError(f'min_interval_s must be >= 0, got {self.min_interval_s}')
        if self.min_steps < 1 or self.min_new_episodes < 1:
            raise TriggerConfigError('min_steps and min_new_episodes must be >= 1')
        if not 0.0 <= self.max_dropped_fraction <= 1.0:
            raise TriggerConfigError('max_dropped_fraction must be within [0, 1]')


@dataclass(frozen=True)
class Quality:
    ok: bool
    reason: str


class TrainTrigger:
    def __init__(self, config: TriggerConfig | None = None) -> None:
        self.config = config or TriggerConfig()
        self._new = 0
        self._last: float | None = None
        self.triggers = 0

    @property
    def pending(self) -> int:
        """Good episodes saved since the last trigger."""
        return self._new

    def check_quality(self, steps: int, dropped_steps: int, outcome: str) -> Quality:
        cfg = self.config
        if steps < cfg.min_steps:
            return Quality(False, f'only {steps} steps (< {cfg.min_steps})')
        total = steps + dropped_steps
        if dropped_steps > cfg.max_dropped_fraction * total:
            return Quality(False, f'{dropped_steps} of {total} steps dropped')
        if outcome not in ('success', 'fail', 'aborted'):
            return Quality(False, f'unknown outcome {outcome!r}')
        return Quality(True, 'ok')

    def on_episode(self, steps: int, dropped_steps: int, outcome: str) -> Quality:
        quality = self.check_quality(steps, dropped_steps, outcome)
        if quality.ok:
            self._new += 1
        return quality

    def poll(self, now: float) -> bool:
        """True when training should be triggered now (then the pending count resets)."""
        if self._new < self.config.min_new_episodes:
            return False
        if self._last is not None and now - self._last < self.config.min_interval_s:
            return False
        self._last = now
        self._new = 0
        self.triggers += 1
        return True

    def retry_later(self, episodes: int) -> None:
        """The learner could not take the trigger (busy/absent): keep the data pending."""
        self._new += episodes
