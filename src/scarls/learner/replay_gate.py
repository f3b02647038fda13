"""The replay gate: replay episodes through a candidate (and a baseline) and decide whether it
may deploy (:class:`ReplayGate`, its verdict :class:`ReplayDecision`). The margins are
:class:`~scarls.learner.replay_check.ReplayGateConfig`; the measuring is
:func:`~scarls.learner.replay_check.run_replay`. Pure logic: no ROS.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from scarls.learner.replay_check import (
    Regression,
    ReplayConfig,
    ReplayGateConfig,
    ReplayReport,
    run_replay,
)
from scarls.learner.replay_episodes import ReplayEpisode, SkippedEpisode
from scarls.policies import Policy

__all__ = ['ReplayDecision', 'ReplayGate']


@dataclasses.dataclass(frozen=True)
class ReplayDecision:
    """The replay check's verdict on a candidate."""

    approved: bool
    reason: str
    regressions: tuple[Regression, ...]
    """Every regressed cell in the gated modes: all episodes together (``episode='*'``)
    first, then per episode."""
    report: ReplayReport

    @property
    def regressed_episodes(self) -> list[str]:
        return sorted({r.episode for r in self.regressions if r.episode != '*'})

    def to_dict(self) -> dict[str, Any]:
        return {'approved': self.approved, 'reason': self.reason,
                'regressions': [r.to_dict() for r in self.regressions],
                'regressed_episodes': self.regressed_episodes}


class ReplayGate:
    """Replay episodes through a candidate (and a baseline) and decide whether it may deploy.

    ``check(candidate, episodes, baseline=...)`` runs :func:`run_replay` and :meth:`decide`.
    The rules, in order: reject when no episode could be checked, when an episode was skipped
    and ``allow_skipped`` is False, when the gated modes hold fewer than ``min_frames`` compared
    frames, when the candidate's error is not finite or above ``max_mse``, and - with a
    baseline - when any cell of all episodes together (gated mode x segment x joint group)
    regresses, or more than ``max_regressed_share`` of the episodes regress. Otherwise approve.
    """

    def __init__(self, config: ReplayGateConfig | None = None,
                 replay: ReplayConfig | None = None) -> None:
        self.config = config or ReplayGateConfig()
        self.replay = replay or ReplayConfig()

    def check(
        self,
        candidate: Policy,
        episodes: Iterable[ReplayEpisode],
        *,
        baseline: Policy | None = None,
        labels: tuple[str, str] = ('candidate', 'baseline'),
        skipped: Sequence[SkippedEpisode] = (),
        progress: Callable[[int, str], None] | None = None,
    ) -> ReplayDecision:
        """Replay and decide (see the class docstring)."""
        report = run_replay(candidate, episodes, baseline=baseline, config=self.replay,
                            gate=self.config, labels=labels, skipped=skipped,
                            progress=progress)
        return self.decide(report)

    def decide(self, report: ReplayReport) -> ReplayDecision:
        """The verdict on an existing report (its regressed cells are recomputed with this
        gate's margins)."""
        cfg = self.config
        regs: list[Regression] = []
        gated_total = [c for c in report.total if c.mode in cfg.gate_modes]
        if report.baseline is not None:
            for c in gated_total:
                for g, s in c.candidate.items():
                    b = c.baseline[g] if c.baseline else None
                    if b is not None and cfg.regresses(s.mse, b.mse):
                        regs.append(Regression('*', c.mode, c.segment, g, s.mse, b.mse))
            for e in report.episodes:
                for c in e.cells:
                    if c.mode not in cfg.gate_modes or c.baseline is None:
                        continue
                    for g, s in c.candidate.items():
                        if cfg.regresses(s.mse, c.baseline[g].mse):
                            regs.append(Regression(e.name, c.mode, c.segment, g, s.mse,
                                                   c.baseline[g].mse))

        def done(ok: bool, reason: str) -> ReplayDecision:
            return ReplayDecision(ok, reason, tuple(regs), report)

        if not report.episodes:
            why = '; '.join(f'{s.name}: {s.reason}' for s in report.skipped[:3])
            return done(False, 'no episode could be checked' + (f' ({why})' if why else ''))
        if report.skipped and not cfg.allow_skipped:
            return done(False, f'{len(report.skipped)} episode(s) could not be checked: '
                        + '; '.join(s.name for s in report.skipped[:5]))
        frames = sum(c.frames for c in gated_total if c.segment == 'all')
        modes = '+'.join(cfg.gate_modes)
        if frames < cfg.min_frames:
            return done(False, f'only {frames} compared frames in mode {modes} (need '
                        f'{cfg.min_frames})')
        main = [c for c in gated_total if c.segment == 'all']
        for c in main:
            m = c.candidate['all'].mse
            if not math.isfinite(m):
                return done(False, f'candidate error on {c.mode} steps is not finite')
            if cfg.max_mse is not None and m > cfg.max_mse:
                return done(False, f'candidate mse {m:.4g} on {c.mode} steps is above the '
                            f'limit {cfg.max_mse:.4g}')
        n_eps = len(report.episodes)
        if report.baseline is not None:
            total_regs = [r for r in regs if r.episode == '*']
            if total_regs:
                worst = sorted(total_regs, key=lambda r: -r.ratio)[:3]
                return done(False, 'candidate is worse than the baseline: '
                            + '; '.join(r.describe() for r in worst)
                            + (f' (+{len(total_regs) - 3} more cells)'
                               if len(total_regs) > 3 else ''))
            bad = sorted({r.episode for r in regs if r.episode != '*'
                          and r.segment == 'all' and r.group == 'all'})
            if len(bad) > cfg.max_regressed_share * n_eps:
                return done(False, f'candidate is worse than the baseline on {len(bad)} of '
                            f'{n_eps} episodes (more than {cfg.max_regressed_share:.0%}): '
                            + ', '.join(bad[:5]) + (' ...' if len(bad) > 5 else ''))
        summary = ', '.join(f'{c.mode} mse {c.candidate["all"].mse:.4g}'
                            + (f' (baseline {c.baseline["all"].mse:.4g})' if c.baseline else '')
                            for c in main)
        what = ('not worse than the baseline beyond the margins' if report.baseline is not None
                else 'no baseline to compare with')
        skipped = f'; {len(report.skipped)} episode(s) skipped' if report.skipped else ''
        return done(True, f'{n_eps} episode(s), {frames} frames: {summary}; {what}{skipped}')
