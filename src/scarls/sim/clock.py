"""Simulated time: the pure logic behind the `/clock` publisher (no rclpy here).

A simulated ECU (or a fleet) runs on ROS time taken from `/clock` (``use_sim_time``). One clock
process advances it in fixed steps of one control tick. Three pieces decide when:

* :class:`Lockstep` - who has reported what, and may the clock advance. Every participant
  reports the ROS time up to which its work is done ("done until"): the driver and the actor
  the tick they finished, the scripted operator the joint state it answered, a learner the time
  up to which it has spent its training budget. A participant that holds nothing (a learner
  between rounds) reports :data:`IDLE`. The clock advances from ``now`` to ``now + step`` only
  when every expected participant has reported and each one is idle or done until ``now``.
* :class:`TrainingBudget` - compute-fair mode: a learner's training steps per simulated
  second. Within a round started at ``t0`` the learner may have done ``floor(rate * (t - t0))``
  steps at time ``t``; it waits when it is ahead, and the clock waits while it is behind.
* :class:`Pacer` - the real-time factor: one step per ``step / rtf`` of wall time as long as
  everyone keeps up; when someone does not, the clock waits (it never skips a tick) and the
  achieved factor is reported.

Every time here is an integer of nanoseconds; ``Lockstep`` and ``TrainingBudget`` speak ROS
(simulated) time, ``Pacer`` wall time (``time.monotonic_ns()`` of the clock process).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

NS = 1_000_000_000
IDLE = (1 << 31) - 1
"""``done until`` of a participant that holds nothing (in seconds: the largest ``sec`` a
``builtin_interfaces/Time`` carries; on the wire a progress stamp with this ``sec``)."""
IDLE_NS = IDLE * NS


class ClockError(ValueError):
    """A clock or budget configured with impossible values."""


def step_ns(rate_hz: float) -> int:
    """One control tick in nanoseconds, rounded exactly as ``rclpy`` rounds a timer period
    (``int(period_s * 1e9)``), so a timer of that period fires on every clock step."""
    if not rate_hz > 0:
        raise ClockError(f'the control rate must be > 0 Hz, got {rate_hz}')
    return int(1.0 / float(rate_hz) * NS)


@dataclass
class Lockstep:
    """Who has reported what; may the clock advance.

    ``participants`` are expected from the start (the clock does not advance before each has
    reported once); a participant not in that set that reports joins. ``drop`` removes one
    (e.g. its process died: the clock process decides that on wall time)."""

    participants: set[str] = field(default_factory=set)
    done_until: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.participants = set(self.participants)

    def report(self, who: str, done_until_ns: int) -> None:
        """``who`` has done its work up to ``done_until_ns`` (ROS time; :data:`IDLE_NS`: it
        holds nothing). The latest report counts (an idle learner that starts a round reports
        an earlier time again)."""
        if not who:
            raise ClockError('a progress report needs a participant id')
        self.participants.add(who)
        self.done_until[who] = int(done_until_ns)

    def drop(self, who: str) -> None:
        self.participants.discard(who)
        self.done_until.pop(who, None)

    def blocking(self, now_ns: int) -> list[str]:
        """The participants the clock waits for at ``now_ns`` (sorted; [] = it may advance)."""
        return sorted(p for p in self.participants
                      if self.done_until.get(p, -1) < now_ns)

    def may_advance(self, now_ns: int) -> bool:
        return not self.blocking(now_ns)

    def idle(self, who: str) -> bool:
        return self.done_until.get(who) == IDLE_NS


@dataclass(frozen=True)
class TrainingBudget:
    """A learner's compute-fair budget within one training round.

    ``steps_per_second`` training steps per simulated second, from ``start_ns`` (the ROS time
    the round began). ``allowed(t)`` is how many steps the round may have done at time ``t``.
    """

    steps_per_second: float
    start_ns: int

    def __post_init__(self) -> None:
        if not self.steps_per_second > 0 or not math.isfinite(self.steps_per_second):
            raise ClockError(f'a training budget must be > 0 steps per simulated second, got '
                             f'{self.steps_per_second}')

    def allowed(self, now_ns: int) -> int:
        elapsed = max(0, int(now_ns) - self.start_ns)
        # integer arithmetic on nanoseconds: no float drift over long runs
        return int(elapsed * self.steps_per_second // NS)

    def may_step(self, done: int, now_ns: int) -> bool:
        """The learner may run its next step (it has done ``done`` in this round)."""
        return done < self.allowed(now_ns)

    def done_until(self, done: int, now_ns: int) -> int:
        """What the learner reports: ``now_ns`` once it has spent the budget up to now, else
        the last time its ``done`` steps cover (the clock waits for it there)."""
        if done >= self.allowed(now_ns):
            return int(now_ns)
        # the latest t with allowed(t) <= done: done / rate seconds after the start
        return self.start_ns + int(done * NS // self.steps_per_second)


@dataclass
class Pacer:
    """Real-time factor ``rtf``: the clock advances one step per ``step_ns / rtf`` wall
    nanoseconds; ``rtf <= 0`` means as fast as the participants allow. When a step comes late
    (someone did not keep up) the schedule restarts from then: a late clock never bursts to
    catch up."""

    step_ns: int
    rtf: float
    started_wall_ns: int | None = None
    last_wall_ns: int | None = None
    steps: int = 0
    late_steps: int = 0

    def __post_init__(self) -> None:
        if self.step_ns <= 0:
            raise ClockError(f'the clock step must be > 0 ns, got {self.step_ns}')
        if not math.isfinite(self.rtf):
            raise ClockError(f'the real-time factor must be finite, got {self.rtf}')

    @property
    def wall_period_ns(self) -> int:
        return 0 if self.rtf <= 0 else int(self.step_ns / self.rtf)

    def due_in_ns(self, wall_now_ns: int) -> int:
        """Wall nanoseconds until the next step is due (<= 0: due now)."""
        if self.last_wall_ns is None:
            return 0
        return self.last_wall_ns + self.wall_period_ns - wall_now_ns

    def advanced(self, wall_now_ns: int) -> None:
        """Record a step taken at ``wall_now_ns``."""
        if self.started_wall_ns is None:
            self.started_wall_ns = wall_now_ns
        if self.last_wall_ns is not None:
            due = self.last_wall_ns + self.wall_period_ns
            if self.wall_period_ns and wall_now_ns - due > self.wall_period_ns // 2:
                self.late_steps += 1
                self.last_wall_ns = wall_now_ns   # restart the schedule: no burst
            else:
                self.last_wall_ns = due if self.wall_period_ns else wall_now_ns
        else:
            self.last_wall_ns = wall_now_ns
        self.steps += 1

    def achieved_rtf(self, wall_now_ns: int) -> float:
        """Simulated seconds per wall second since the first step (nan before two steps)."""
        if self.started_wall_ns is None or self.steps < 2:
            return math.nan
        wall = wall_now_ns - self.started_wall_ns
        return (self.steps - 1) * self.step_ns / wall if wall > 0 else math.nan


DEFAULT_TRAIN_STEPS_PER_S = 45.0
"""Compute-fair mode's default training budget (steps per simulated second): what one learner
achieves alone on one core of the reference 2-core host with the default policy, batch 32 and
96 x 128 images (``bench/bench_paper.py budget``, docs/SIM_TIME.md)."""
