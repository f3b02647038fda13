"""The live deploy guard: keep what the robot has.

Every deployed checkpoint passed the learner's gate, an estimate from held-out data; the robot's
episodes are the real test. :class:`DeployGuard` tracks, per model version, the episodes the
robot ran with it (outcome, steps, steps by the human) and decides after each episode:

* **probation** - a freshly deployed version runs at least ``min_episodes`` episodes before a
  newer checkpoint may replace it (:meth:`DeployGuard.hold`): otherwise a version is replaced
  after 2-3 episodes and no test could ever tell whether it was worse (nor serve as the next
  version's reference);
* **rollback** - when the deployed version's rate of episodes that needed help (a takeover, or
  a failure) is significantly higher than its predecessor's: a one-sided Fisher exact test on
  the 2x2 table (version, predecessor) x (success without help, needed help) (mid-p by
  default), p < ``alpha``,
  once both have at least ``min_episodes`` episodes (the predecessor's newest
  ``reference_episodes`` count). The verdict names the version to roll back to; the caller
  (the scheduler) checks that it is approved, signed and intact before deploying it, and
  refuses to roll back otherwise;
* **rejected lineage** - a version rolled back from is *rejected*: never deployed again by
  itself, and neither is a candidate trained from it (:meth:`DeployGuard.tainted`: its parent
  is rejected or tainted), until the learner, told of the rollback, trains from the
  predecessor again.

The test is repeated after every episode while a version stays deployed, so its false-alarm
rate is above ``alpha`` when a version runs long; bench/bench_gate.py measures it (and the
power) by simulation, docs/GATE.md has the numbers. Pure logic: no ROS, no files except the
optional JSON state (:meth:`DeployGuard.save`, :meth:`DeployGuard.load`), which the scheduler
keeps next to its deploy log so a restart forgets nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from scarls.checkpoints.format import _write_atomic

__all__ = [
    'GUARD_STATE_NAME',
    'DeployGuard',
    'GuardConfig',
    'GuardVerdict',
    'VersionStats',
    'fisher_exact_less',
]

GUARD_STATE_NAME = 'guard.json'
#: Episode outcomes the guard counts (an operator's abort says nothing about the policy).
COUNTED = ('success', 'fail')


def fisher_exact_less(a: int, b: int, c: int, d: int, *, mid_p: bool = False) -> float:
    """One-sided Fisher exact p-value that the first row's success share is lower than the
    second's, for the table ``[[a, b], [c, d]]`` (rows: groups; columns: success, not): the
    probability, with all margins fixed, of ``a`` or fewer successes in the first row. With
    ``mid_p`` only half the probability of exactly ``a`` counts (Lancaster's mid-p: the
    exact test's false-alarm rate at these sample sizes is far below its level, the mid-p's
    close to it)."""
    for v in (a, b, c, d):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ValueError(f'table entries must be ints >= 0, got {(a, b, c, d)}')
    n1, k, n = a + b, a + c, a + b + c + d
    if n1 == 0 or n1 == n:
        return 1.0
    total = math.comb(n, n1)
    lo = max(0, n1 - (n - k))
    tail = sum(math.comb(k, x) * math.comb(n - k, n1 - x) for x in range(lo, a + 1))
    if mid_p:
        tail -= 0.5 * math.comb(k, a) * math.comb(n - k, n1 - a)
    return min(1.0, tail / total)


@dataclasses.dataclass(frozen=True)
class GuardConfig:
    """Settings of :class:`DeployGuard`."""

    enabled: bool = True
    """False: track only, never hold a deploy nor roll back."""
    min_episodes: int = 8
    """Episodes a deployed version (and its predecessor) must have run before a verdict, and
    before a newer checkpoint may replace it (probation)."""
    reference_episodes: int = 40
    """The predecessor's newest episodes that are compared with."""
    alpha: float = 0.05
    """Significance level of the one-sided test."""
    mid_p: bool = True
    """Mid-p Fisher test (False: the exact, conservative one; see :func:`fisher_exact_less`)."""

    def __post_init__(self) -> None:
        for name in ('min_episodes', 'reference_episodes'):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f'GuardConfig.{name} must be an int >= 1, got {v!r}')
        if self.reference_episodes < self.min_episodes:
            raise ValueError('GuardConfig.reference_episodes must be >= min_episodes')
        if not (isinstance(self.alpha, (int, float)) and 0 < self.alpha < 1):
            raise ValueError(f'GuardConfig.alpha must be in (0, 1), got {self.alpha!r}')


@dataclasses.dataclass
class VersionStats:
    """The robot's episodes with one model version (newest last)."""

    version: int
    alone: list[bool] = dataclasses.field(default_factory=list)
    """Per episode: succeeded without any takeover."""
    steps: int = 0
    intervention_steps: int = 0

    @property
    def episodes(self) -> int:
        return len(self.alone)

    def counts(self, last: int | None = None) -> tuple[int, int]:
        """(successes without help, episodes that needed help) over the newest ``last``."""
        window = self.alone if last is None else self.alone[-last:]
        ok = sum(window)
        return ok, len(window) - ok

    @property
    def intervention_rate(self) -> float:
        """Share of the steps the human controlled."""
        return self.intervention_steps / self.steps if self.steps else math.nan

    def describe(self, last: int | None = None) -> str:
        ok, bad = self.counts(last)
        n = ok + bad
        share = f', {100 * self.intervention_rate:.0f} % of steps by the human' \
            if self.steps else ''
        return f'v{self.version}: {ok}/{n} alone ({100 * ok / n:.0f} %){share}' if n \
            else f'v{self.version}: no episodes'


@dataclasses.dataclass(frozen=True)
class GuardVerdict:
    """What to do after an episode."""

    action: str
    """``'none'`` (keep watching), ``'passed'`` (probation over, a held checkpoint may deploy)
    or ``'rollback'`` (deploy ``target`` instead of ``version``)."""
    version: int
    """The deployed version judged."""
    reason: str
    target: int | None = None
    """Rollback: the version to deploy (the predecessor)."""
    p_value: float = math.nan


class DeployGuard:
    """Per-version episode statistics and the rollback decision (module docstring)."""

    def __init__(self, config: GuardConfig | None = None) -> None:
        self.config = config if config is not None else GuardConfig()
        self.stats: dict[int, VersionStats] = {}
        self.predecessor: dict[int, int] = {}
        """version -> the version it replaced (the one it is compared with)."""
        self.rejected: dict[int, str] = {}
        """version -> why it was rolled back from."""
        self.tainted_versions: set[int] = set()
        self.deployed: int = 0
        self.passed: set[int] = set()
        """Versions whose probation is over."""

    # -- deploys ---------------------------------------------------------------------------
    def on_deploy(self, version: int, *, rollback: bool = False) -> None:
        """``version`` is deployed now. A new version's predecessor is the version deployed
        before it (skipping rejected ones; none for the initial policy, version 0); a
        rollback target keeps its own predecessor and statistics."""
        version = int(version)
        if version == self.deployed:
            return
        if not rollback and version not in self.predecessor:
            prev = self.deployed
            while prev in self.rejected:
                prev = self.predecessor.get(prev, 0)
            if prev > 0:
                self.predecessor[version] = prev
        if rollback:
            self.passed.add(version)
        self.deployed = version
        self.stats.setdefault(version, VersionStats(version))

    def hold(self) -> str | None:
        """Why a newer checkpoint must wait before replacing the deployed one (probation),
        or None."""
        cfg, v = self.config, self.deployed
        if not cfg.enabled or v == 0 or v in self.passed:
            return None
        n = self.stats[v].episodes if v in self.stats else 0
        if n >= cfg.min_episodes:
            return None
        return f'v{v} is on probation: {n} of {cfg.min_episodes} episodes run'

    def tainted(self, version: int, parent: int | None) -> str | None:
        """Why candidate ``version`` trained from ``parent`` must not be deployed (it descends
        from a rejected version), or None. A tainted candidate taints its descendants."""
        p = int(parent or 0)
        if p not in self.rejected and p not in self.tainted_versions:
            return None
        self.tainted_versions.add(int(version))
        return (f'it was trained from the rejected v{p}' if p in self.rejected
                else f'it was trained from v{p}, itself trained from a rejected version')

    # -- episodes ----------------------------------------------------------------------------
    def record(self, version: int, outcome: str, steps: int, intervention_steps: int
               ) -> GuardVerdict:
        """Count one episode of ``version`` and judge the deployed version."""
        version = int(version)
        if outcome in COUNTED and version > 0:
            st = self.stats.setdefault(version, VersionStats(version))
            st.alone.append(outcome == 'success' and int(intervention_steps) == 0)
            st.steps += int(steps)
            st.intervention_steps += int(intervention_steps)
        return self.judge()

    def judge(self) -> GuardVerdict:
        """The verdict on the deployed version given the episodes so far."""
        cfg, v = self.config, self.deployed
        prev = self.predecessor.get(v)
        if not cfg.enabled or v == 0 or prev is None or v in self.rejected:
            return GuardVerdict('none', v, 'nothing to compare with')
        st, ref = self.stats.get(v, VersionStats(v)), self.stats.get(prev, VersionStats(prev))
        if st.episodes < cfg.min_episodes or ref.episodes < cfg.min_episodes:
            return GuardVerdict('none', v, f'too few episodes ({st.describe()}; '
                                f'{ref.describe(cfg.reference_episodes)})')
        a, b = st.counts()
        c, d = ref.counts(cfg.reference_episodes)
        p = fisher_exact_less(a, b, c, d, mid_p=self.config.mid_p)
        compared = f'{st.describe()} vs predecessor {ref.describe(cfg.reference_episodes)}'
        if p < cfg.alpha:
            test = 'mid-p' if cfg.mid_p else 'exact'
            return GuardVerdict('rollback', v, f'significantly worse than its predecessor '
                                f'({compared}; one-sided Fisher {test} p = {p:.3f} < '
                                f'{cfg.alpha:g})', target=prev, p_value=p)
        if v not in self.passed:
            self.passed.add(v)
            return GuardVerdict('passed', v, f'probation passed ({compared}; p = {p:.3f})',
                                p_value=p)
        return GuardVerdict('none', v, f'not significantly worse ({compared}; p = {p:.3f})',
                            p_value=p)

    def reject(self, version: int, reason: str) -> None:
        """``version`` was rolled back from: never deployed again by itself."""
        self.rejected[int(version)] = str(reason)

    # -- persistence --------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return {'format': 1, 'deployed': self.deployed,
                'stats': [dataclasses.asdict(s) for s in sorted(self.stats.values(),
                                                                 key=lambda s: s.version)],
                'predecessor': {str(k): v for k, v in sorted(self.predecessor.items())},
                'rejected': {str(k): v for k, v in sorted(self.rejected.items())},
                'tainted': sorted(self.tainted_versions), 'passed': sorted(self.passed)}

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the state atomically to ``path``."""
        _write_atomic(Path(path), (json.dumps(self.to_json(), indent=1) + '\n').encode())

    @classmethod
    def load(cls, path: str | os.PathLike[str], config: GuardConfig | None = None
             ) -> DeployGuard:
        """The guard saved at ``path`` (a new one when there is no file). Raises ValueError
        when the file is unreadable or invalid."""
        guard = cls(config)
        try:
            data = json.loads(Path(path).read_text())
        except FileNotFoundError:
            return guard
        except (OSError, ValueError) as exc:
            raise ValueError(f'guard state {path} is unreadable: {exc}') from exc
        try:
            if data.get('format') != 1:
                raise ValueError('expected "format": 1')
            guard.deployed = _count(data['deployed'])
            for s in data['stats']:
                st = VersionStats(_count(s['version']), [bool(x) for x in s['alone']],
                                  _count(s['steps']), _count(s['intervention_steps']))
                guard.stats[st.version] = st
            guard.predecessor = {_count(int(k)): _count(v)
                                 for k, v in data['predecessor'].items()}
            guard.rejected = {_count(int(k)): str(v) for k, v in data['rejected'].items()}
            guard.tainted_versions = set(_ints(data['tainted']))
            guard.passed = set(_ints(data['passed']))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f'guard state {path} is invalid: {exc}') from exc
        return guard


def _count(v: Any) -> int:
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise ValueError(f'expected an int >= 0, got {v!r}')
    return v


def _ints(values: Iterable[Any]) -> list[int]:
    return [_count(v) for v in values]
