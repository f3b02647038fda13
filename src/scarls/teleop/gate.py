"""The HG-DAgger intervention decision of the scripted teleoperator (pure logic).

A scripted expert runs alongside the policy. Every control tick the actor calls
:meth:`InterventionGate.update` with the policy's action, the expert's action, the current
joint positions, the episode step and whether the expert is currently in control; the gate
answers with a :class:`Decision`, which the actor maps onto its FSM events
(``INTERVENE``, ``RELEASE``, ``SUCCESS``, ``FAIL``; ``NONE`` = no event).

Rules, checked in this order:

1. ``SUCCESS`` when ``task_success``.
2. ``FAIL`` when ``task_failed`` or ``step >= max_steps``.
3. While the policy acts: ``INTERVENE`` when the weighted deviation
   ``||policy_action - expert_action||_w`` exceeds ``deviation_threshold`` for
   ``deviation_ticks`` consecutive ticks, or when fewer than ``fail_margin_steps`` steps remain
   (the episode is about to fail, so the expert finishes it).
4. While the expert acts: ``RELEASE`` once the expert has been in control for at least
   ``min_takeover_ticks`` ticks and the robot is back on track (``||expert_action -
   current_q||_w < release_threshold``: the expert only makes small corrections), but never
   when fewer than ``fail_margin_steps`` steps remain.

The weighted norm is ``sqrt(sum_i w_i * d_i**2)`` with ``joint_weights`` ``w`` (default: all
ones). Call :meth:`InterventionGate.reset` at the start of each episode.
"""

from __future__ import annotations

import collections
import dataclasses
import enum
import math

import numpy as np

__all__ = ['Decision', 'DecisionKind', 'GateConfig', 'InterventionGate']


class DecisionKind(enum.Enum):
    """What the gate asks the actor to do this tick."""

    NONE = 'none'
    INTERVENE = 'intervene'
    RELEASE = 'release'
    SUCCESS = 'success'
    FAIL = 'fail'


@dataclasses.dataclass(frozen=True)
class Decision:
    """The gate's answer for one tick; ``deviation`` is the policy-expert distance."""

    kind: DecisionKind
    reason: str = ''
    deviation: float = 0.0


@dataclasses.dataclass(frozen=True)
class GateConfig:
    """Thresholds of the intervention gate (joint-space distances in rad, times in ticks)."""

    deviation_threshold: float = 0.3
    deviation_ticks: int = 3
    release_threshold: float = 0.05
    min_takeover_ticks: int = 15
    fail_margin_steps: int = 30
    max_steps: int = 900
    joint_weights: tuple[float, ...] | None = None
    #: Task-progress rules (used when the caller passes ``progress``): intervene when progress
    #: grew by less than ``min_progress`` over the last ``stall_ticks`` policy ticks (0 = off);
    #: release once it grew by ``release_progress`` since the takeover began.
    stall_ticks: int = 0
    min_progress: float = 0.02
    release_progress: float = 0.5

    def __post_init__(self) -> None:
        def bad(name: str, what: str) -> ValueError:
            return ValueError(f'GateConfig.{name} {what}, got {getattr(self, name)!r}')

        for name in ('deviation_threshold', 'release_threshold', 'min_progress',
                     'release_progress'):
            v = getattr(self, name)
            if (
                isinstance(v, bool)
                or not isinstance(v, (int, float))
                or not (math.isfinite(v) and v > 0)
            ):
                raise bad(name, 'must be a finite number > 0')
        for name, lo in (
            ('deviation_ticks', 1),
            ('min_takeover_ticks', 0),
            ('stall_ticks', 0),
            ('fail_margin_steps', 0),
            ('max_steps', 1),
        ):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise bad(name, f'must be an int >= {lo}')
        if self.fail_margin_steps >= self.max_steps:
            raise bad('fail_margin_steps', f'must be < max_steps ({self.max_steps})')
        if self.joint_weights is not None:
            w = tuple(float(x) for x in self.joint_weights)
            if not w or not all(math.isfinite(x) and x >= 0 for x in w) or not any(w):
                raise bad('joint_weights', 'must be finite, >= 0 and not all zero')
            object.__setattr__(self, 'joint_weights', w)


class InterventionGate:
    """Stateful per-episode intervention decision (see the module docstring for the rules)."""

    def __init__(self, config: GateConfig | None = None) -> None:
        self.config = config if config is not None else GateConfig()
        w = self.config.joint_weights
        self._weights = None if w is None else np.asarray(w, dtype=np.float64)
        self.reset()

    def reset(self) -> None:
        """Forget the counters (call at the start of every episode)."""
        self._deviation_count = 0
        self._takeover_ticks = 0
        self._was_intervening = False
        self._progress: collections.deque[float] = collections.deque(
            maxlen=self.config.stall_ticks + 1)
        self._takeover_progress: float | None = None

    @property
    def deviation_count(self) -> int:
        """Consecutive ticks the policy has deviated from the expert."""
        return self._deviation_count

    @property
    def takeover_ticks(self) -> int:
        """Ticks the expert has been in control in the current takeover."""
        return self._takeover_ticks

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """Weighted joint-space distance ``sqrt(sum w * (a - b)**2)``."""
        a = np.asarray(a, dtype=np.float64).reshape(-1)
        b = np.asarray(b, dtype=np.float64).reshape(-1)
        if a.shape != b.shape:
            raise ValueError(f'cannot compare actions of shapes {a.shape} and {b.shape}')
        d2 = (a - b) ** 2
        if self._weights is not None:
            if self._weights.shape != d2.shape:
                raise ValueError(
                    f'joint_weights has {self._weights.size} entries but actions have '
                    f'{d2.size}; give one weight per joint'
                )
            d2 = d2 * self._weights
        return float(np.sqrt(d2.sum()))

    def update(
        self,
        *,
        policy_action: np.ndarray,
        expert_action: np.ndarray,
        current_q: np.ndarray,
        step: int,
        intervening: bool,
        task_success: bool,
        task_failed: bool,
        progress: float | None = None,
    ) -> Decision:
        """Decide for this tick (see the module docstring).

        ``progress`` is an optional task-progress measure that grows as the task gets closer
        to done (e.g. :meth:`scarls.sim.ScriptedExpert.progress`); with ``stall_ticks`` > 0 a
        policy that stops making progress is taken over, and a takeover is released once the
        expert has made ``release_progress`` of progress.
        """
        cfg = self.config
        if intervening != self._was_intervening:
            self._deviation_count = 0
            self._takeover_ticks = 0
            self._was_intervening = intervening
            self._progress.clear()
            self._takeover_progress = progress if intervening else None
        deviation = self.distance(policy_action, expert_action)
        if not math.isfinite(deviation):
            raise ValueError('policy_action or expert_action contains NaN or inf')
        if task_success:
            return Decision(DecisionKind.SUCCESS, 'task succeeded', deviation)
        if task_failed:
            return Decision(DecisionKind.FAIL, 'task failed', deviation)
        if step >= cfg.max_steps:
            return Decision(
                DecisionKind.FAIL, f'step limit reached ({step} >= {cfg.max_steps})', deviation
            )
        remaining = cfg.max_steps - step
        in_fail_margin = remaining < cfg.fail_margin_steps
        if not intervening:
            if deviation > cfg.deviation_threshold:
                self._deviation_count += 1
            else:
                self._deviation_count = 0
            if self._deviation_count >= cfg.deviation_ticks:
                return Decision(
                    DecisionKind.INTERVENE,
                    f'policy deviates from expert by {deviation:.3f} > '
                    f'{cfg.deviation_threshold} for {self._deviation_count} ticks',
                    deviation,
                )
            if progress is not None and cfg.stall_ticks > 0:
                self._progress.append(float(progress))
                if len(self._progress) > cfg.stall_ticks:
                    gained = self._progress[-1] - self._progress[0]
                    if gained < cfg.min_progress:
                        return Decision(
                            DecisionKind.INTERVENE,
                            f'no progress: {gained:+.3f} < {cfg.min_progress} in '
                            f'{cfg.stall_ticks} ticks',
                            deviation,
                        )
            if in_fail_margin:
                return Decision(
                    DecisionKind.INTERVENE,
                    f'about to fail: {remaining} steps left < margin {cfg.fail_margin_steps}',
                    deviation,
                )
            return Decision(DecisionKind.NONE, '', deviation)
        self._takeover_ticks += 1
        if self._takeover_ticks < cfg.min_takeover_ticks or in_fail_margin:
            return Decision(DecisionKind.NONE, '', deviation)
        if progress is not None and cfg.stall_ticks > 0:
            if self._takeover_progress is None:
                self._takeover_progress = float(progress)
            gained = float(progress) - self._takeover_progress
            if gained >= cfg.release_progress:
                return Decision(
                    DecisionKind.RELEASE,
                    f'back on track: progress {gained:+.2f} after {self._takeover_ticks} '
                    'takeover ticks',
                    deviation,
                )
            return Decision(DecisionKind.NONE, '', deviation)
        correction = self.distance(expert_action, current_q)
        if correction < cfg.release_threshold:
            return Decision(
                DecisionKind.RELEASE,
                f'back on track: expert correction {correction:.3f} < {cfg.release_threshold} '
                f'after {self._takeover_ticks} takeover ticks',
                deviation,
            )
        return Decision(DecisionKind.NONE, '', deviation)
