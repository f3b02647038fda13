"""Open-loop evaluation of a policy on held-out episodes, and the checkpoint deployment gate.

Open loop: for every expert-labelled step of the held-out episodes, predict the chunk from the
recorded observation and compare it with the recorded expert actions (padding and chunk
entries that are not labels masked out). The metric is the mean squared joint error in rad^2
(lower is better); the score normalises it against the *hold* predictor that repeats the
current joint positions: ``score = clip(1 - mse / mse_hold, 0, 1)`` (1 = perfect, 0 = no
better than standing still).

:class:`CheckpointGate` decides whether a candidate checkpoint may replace the deployed one.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Hashable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch

from scarls.learner.trainer import MASK_KEY, EpisodeData, build_batch
from scarls.policies import ACTION_KEY, STATE_KEY, Policy

__all__ = [
    'CheckpointGate',
    'GateDecision',
    'OpenLoopResult',
    'evaluate_open_loop',
    'open_loop_batches',
]

#: Optional batch key of per-sample weights; samples with weight 0 are skipped.
WEIGHT_KEY = 'weight'
#: Dataset item key of the per-frame intervention flag (used when no weight is given).
INTERVENTION_KEY = 'intervention'


@dataclasses.dataclass(frozen=True)
class OpenLoopResult:
    """Open-loop chunk error on held-out expert-labelled steps."""

    mse: float
    """Mean squared joint error (rad^2) over valid chunk entries, averaged per frame; lower is
    better."""
    baseline_mse: float
    """The same error of the hold predictor (every chunk entry = the current joints)."""
    score: float
    """``clip(1 - mse / baseline_mse, 0, 1)``; higher is better."""
    frames: int
    """Number of evaluated frames."""

    @property
    def rmse(self) -> float:
        """Root of :attr:`mse` (rad)."""
        return math.sqrt(self.mse) if math.isfinite(self.mse) else math.nan


def open_loop_batches(
    episodes: Mapping[Hashable, EpisodeData] | Sequence[EpisodeData],
    chunk_size: int,
    *,
    cameras: Sequence[str] = (),
    labels: Mapping[Hashable, np.ndarray] | None = None,
    batch_size: int = 64,
    stride: int = 1,
) -> Iterator[dict[str, torch.Tensor]]:
    """Batches over every ``stride``-th labelled frame of ``episodes`` (in order).

    ``labels`` maps episode keys to per-step weights (None: the intervention flags, i.e. the
    steps the expert controlled); chunk entries on unlabelled steps are masked.
    """
    eps = dict(enumerate(episodes)) if isinstance(episodes, Sequence) else dict(episodes)
    lab = {
        k: (np.asarray(labels[k]) if labels is not None else e.intervention.astype(np.float32))
        for k, e in eps.items()
    }
    samples = [
        (k, int(t)) for k in eps for t in np.flatnonzero(lab[k] > 0)[:: max(1, int(stride))]
    ]
    for i in range(0, len(samples), batch_size):
        yield build_batch(
            eps, samples[i : i + batch_size], chunk_size, cameras=cameras, labels=lab
        )


def evaluate_open_loop(
    policy: Policy, batches: Iterable[Mapping[str, torch.Tensor]]
) -> OpenLoopResult:
    """Open-loop metric of ``policy`` over ``batches``.

    Batches carry ``'state'``, the policy's image keys, ``'action'`` (B, K, D) and optionally
    ``'action_mask'`` (B, K) and a per-sample ``'weight'`` or ``'intervention'`` (B,) (samples
    with 0 / False are skipped: only expert-labelled steps count), i.e. the items of an
    episode dataset collated.
    """
    was_training = policy.training
    policy.eval()
    total = total_hold = 0.0
    frames = 0
    try:
        with torch.inference_mode():
            for batch in batches:
                target = batch[ACTION_KEY].to(torch.float32)
                b, k, d = target.shape
                keep = torch.ones(b, dtype=torch.bool)
                if WEIGHT_KEY in batch:
                    keep = batch[WEIGHT_KEY].reshape(b) > 0
                elif INTERVENTION_KEY in batch:
                    keep = batch[INTERVENTION_KEY].reshape(b).to(torch.bool)
                mask = batch.get(MASK_KEY)
                m = (torch.ones(b, k) if mask is None else mask.to(torch.float32)) * keep[:, None]
                counts = m.sum(dim=1)
                valid = counts > 0
                if not bool(valid.any()):
                    continue
                pred = policy(batch).to(torch.float32)
                hold = batch[STATE_KEY].to(torch.float32)[:, None, :d].expand(b, k, d)
                for out, acc in ((pred, 'model'), (hold, 'hold')):
                    per = ((out - target) ** 2).mean(dim=2)
                    per_frame = (per * m).sum(dim=1)[valid] / counts[valid]
                    if acc == 'model':
                        total += float(per_frame.sum())
                    else:
                        total_hold += float(per_frame.sum())
                frames += int(valid.sum())
    finally:
        policy.train(was_training)
    if frames == 0:
        return OpenLoopResult(math.nan, math.nan, 0.0, 0)
    mse, base = total / frames, total_hold / frames
    score = float(np.clip(1.0 - mse / base, 0.0, 1.0)) if base > 0 else float(mse == 0)
    return OpenLoopResult(mse, base, score, frames)


@dataclasses.dataclass(frozen=True)
class GateDecision:
    """Whether a candidate checkpoint may be deployed, and why."""

    approved: bool
    """True: deploy the candidate."""
    reason: str
    """Human-readable justification."""


class CheckpointGate:
    """Approve a candidate when its metric (lower is better) is at most ``threshold`` and,
    with ``must_not_be_worse``, not worse than the deployed checkpoint's metric by more than
    the relative ``tolerance``. Non-finite candidate metrics are always rejected; a missing or
    non-finite deployed metric (nothing deployed yet) skips the comparison.
    """

    def __init__(
        self, threshold: float, must_not_be_worse: bool = True, tolerance: float = 0.0
    ) -> None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
            raise ValueError(f'threshold must be a number, got {threshold!r}')
        if math.isnan(threshold):
            raise ValueError('threshold must not be NaN')
        if not (isinstance(tolerance, (int, float)) and 0 <= tolerance < math.inf):
            raise ValueError(f'tolerance must be a finite number >= 0, got {tolerance!r}')
        self.threshold = float(threshold)
        self.must_not_be_worse = bool(must_not_be_worse)
        self.tolerance = float(tolerance)

    def decide(self, candidate_metric: float, deployed_metric: float | None) -> GateDecision:
        """Decide for one candidate (see the class docstring)."""
        cand = float(candidate_metric)
        if not math.isfinite(cand):
            return GateDecision(False, f'candidate metric {cand} is not finite')
        if cand > self.threshold:
            return GateDecision(
                False, f'candidate metric {cand:.6g} is above the threshold {self.threshold:.6g}'
            )
        if self.must_not_be_worse and deployed_metric is not None:
            dep = float(deployed_metric)
            limit = dep * (1.0 + self.tolerance) if dep >= 0 else dep
            if math.isfinite(dep) and cand > limit:
                return GateDecision(
                    False,
                    f'candidate metric {cand:.6g} is worse than the deployed {dep:.6g}'
                    + (f' (tolerance {self.tolerance:.0%})' if self.tolerance else ''),
                )
            if math.isfinite(dep):
                return GateDecision(
                    True,
                    f'candidate metric {cand:.6g} <= threshold {self.threshold:.6g} and not '
                    f'worse than the deployed {dep:.6g}',
                )
        return GateDecision(
            True, f'candidate metric {cand:.6g} <= threshold {self.threshold:.6g}'
        )
