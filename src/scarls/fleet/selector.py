"""The checkpoint selector: a second open-loop test of the fleet-averaged parameters.

Averaging parameters can produce a model worse than any of its parts (the ECUs' models drifted
apart, a bad weight slipped through), so the synchronised model is evaluated again on held-out
episodes before anything is published. :class:`CheckpointSelector` runs
:func:`scarls.learner.evaluation.evaluate_open_loop` on them and applies the same rule as the
learner's :class:`~scarls.learner.evaluation.CheckpointGate`: the error (rad^2, lower is better)
must be finite and at most ``threshold`` and, when a reference error is given (the deployed
model's on the same episodes, or this ECU's own pre-reduction error), not worse than it by more
than the relative ``tolerance``. Pure: it takes a policy and episodes, and never changes them.

Fleet-level selection (:meth:`CheckpointSelector.select_fleet`). Each ECU holds out its own
episodes, so ECUs judging the same averaged model alone could disagree and deploy different
rounds. Instead every participant of a reduced round posts its verdict through the
reducer and all of them apply :func:`fleet_decision` to the same agreed verdicts: the error on
the union of the held-out frames (the frame-weighted mean of the ECUs' errors) must pass the
threshold and must not be worse than the deployed models' error on the same frames. The fleet
deploys the synchronised model everywhere or nowhere.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from scarls.learner.evaluation import (
    CheckpointGate,
    GateDecision,
    OpenLoopResult,
    evaluate_open_loop,
    open_loop_batches,
)
from scarls.learner.rollout import policy_cameras
from scarls.learner.trainer import EpisodeData
from scarls.policies import Policy
from scarls.validation import is_number

__all__ = ['CheckpointSelector', 'FleetDecision', 'Selection', 'fleet_decision']


@dataclasses.dataclass(frozen=True)
class Selection:
    """Whether the synchronised model may be published, and why."""

    approved: bool
    """True: publish the synchronised model."""
    reason: str
    """Human-readable justification."""
    result: OpenLoopResult
    """The second open-loop test."""
    reference_metric: float | None = None
    """The error the candidate was compared with (None: threshold only)."""
    seconds: float = 0.0
    """Time spent evaluating."""
    fleet: FleetDecision | None = None
    """The fleet's decision when the selection was made fleet-wide (``select_fleet``)."""

    @property
    def metric(self) -> float:
        """The candidate's open-loop error (rad^2) on this ECU's held-out episodes."""
        return self.result.mse


@dataclasses.dataclass(frozen=True)
class FleetDecision:
    """The deploy decision every participant of a fleet round takes from the same verdicts."""

    approved: bool
    reason: str
    metric: float
    """Error of the synchronised model on the union of the held-out frames (NaN: none)."""
    reference: float | None
    """The deployed models' error on the same frames (None: nothing deployed to compare)."""
    frames: int
    verdicts: Mapping[str, Mapping]
    """The agreed verdicts, ``{ecu id: {'metric', 'frames', 'reference', 'veto'}}``."""


def fleet_decision(verdicts: Mapping[str, Mapping], gate: CheckpointGate) -> FleetDecision:
    """Decide from the participants' verdicts (``{'metric': error or None, 'frames': n,
    'reference': deployed error on the same frames or None, 'veto': reason or None}``), see
    the module docstring. Any veto rejects.

    Deterministic in the verdicts (independent of their order), so every ECU that reads the
    same agreed verdicts decides alike.
    """
    vetoes = {k: v['veto'] for k, v in sorted(verdicts.items()) if v.get('veto')}
    usable = {k: v for k, v in sorted(verdicts.items())
              if is_number(v.get('metric')) and int(v.get('frames') or 0) > 0}
    if vetoes:
        why = '; '.join(f'{k}: {v}' for k, v in vetoes.items())
        metric = (sum(float(v['metric']) * int(v['frames']) for v in usable.values())
                  / sum(int(v['frames']) for v in usable.values())) if usable else math.nan
        return FleetDecision(False, f'vetoed by {why}', metric, None,
                             sum(int(v['frames']) for v in usable.values()), dict(verdicts))
    if not usable:
        return FleetDecision(False, 'no participant has a usable verdict', math.nan, None, 0,
                             dict(verdicts))
    frames = sum(int(v['frames']) for v in usable.values())
    metric = sum(float(v['metric']) * int(v['frames']) for v in usable.values()) / frames
    threshold = gate.decide(metric, None)
    with_ref = {k: v for k, v in usable.items() if is_number(v.get('reference'))}
    reference = None
    if with_ref and threshold.approved:
        n = sum(int(v['frames']) for v in with_ref.values())
        reference = sum(float(v['reference']) * int(v['frames']) for v in with_ref.values()) / n
        candidate = sum(float(v['metric']) * int(v['frames']) for v in with_ref.values()) / n
        # like for like on the frames that have a reference; the threshold was checked above
        # on all the frames
        compare = CheckpointGate(math.inf, must_not_be_worse=True, tolerance=gate.tolerance)
        decision = compare.decide(candidate, reference)
        if decision.approved:
            decision = GateDecision(True, f'{threshold.reason} and not worse than the '
                                    f'deployed models ({candidate:.6g} vs {reference:.6g})')
    else:
        decision = threshold
    who = ', '.join(f'{k} {float(v["metric"]):.4g}' for k, v in usable.items())
    return FleetDecision(decision.approved,
                         f'fleet verdict over {len(usable)} ECUs ({who}; {frames} frames): '
                         f'{decision.reason}', metric, reference, frames, dict(verdicts))


class CheckpointSelector:
    """Re-evaluate a synchronised policy on held-out episodes and decide (module docstring).

    ``stride`` and ``batch_size`` are passed to
    :func:`~scarls.learner.evaluation.open_loop_batches`; ``min_frames`` rejects a verdict
    drawn from too few labelled frames.
    """

    def __init__(
        self,
        threshold: float,
        *,
        tolerance: float = 0.0,
        stride: int = 1,
        batch_size: int = 64,
        min_frames: int = 1,
    ) -> None:
        self.gate = CheckpointGate(threshold, must_not_be_worse=True, tolerance=tolerance)
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f'stride must be an int >= 1, got {stride!r}')
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f'batch_size must be an int >= 1, got {batch_size!r}')
        if not isinstance(min_frames, int) or isinstance(min_frames, bool) or min_frames < 1:
            raise ValueError(f'min_frames must be an int >= 1, got {min_frames!r}')
        self.stride = stride
        self.batch_size = batch_size
        self.min_frames = min_frames

    @property
    def threshold(self) -> float:
        """Highest error that may be published (rad^2)."""
        return self.gate.threshold

    def evaluate(
        self,
        policy: Policy,
        episodes: Mapping[Hashable, EpisodeData] | Sequence[EpisodeData],
        labels: Mapping[Hashable, np.ndarray] | None = None,
    ) -> OpenLoopResult:
        """Open-loop error of ``policy`` on ``episodes`` (expert-labelled steps, or ``labels``)."""
        batches = open_loop_batches(
            episodes,
            policy.config.chunk_size,
            cameras=policy_cameras(policy),
            labels=labels,
            batch_size=self.batch_size,
            stride=self.stride,
        )
        return evaluate_open_loop(policy, batches)

    def select(
        self,
        policy: Policy,
        episodes: Mapping[Hashable, EpisodeData] | Sequence[EpisodeData],
        *,
        reference_metric: float | None = None,
        labels: Mapping[Hashable, np.ndarray] | None = None,
    ) -> Selection:
        """Evaluate ``policy`` on ``episodes`` and decide whether it may be published.

        ``reference_metric``: the error not to be worse than (measured on the same episodes);
        None or NaN compares with the threshold only.
        """
        t0 = time.perf_counter()
        result = self.evaluate(policy, episodes, labels)
        seconds = time.perf_counter() - t0
        ref = None if reference_metric is None else float(reference_metric)
        if result.frames < self.min_frames:
            return Selection(
                False,
                f'only {result.frames} held-out labelled frames (need {self.min_frames})',
                result,
                ref,
                seconds,
            )
        usable_ref = ref if ref is not None and math.isfinite(ref) else None
        decision = self.gate.decide(result.mse, usable_ref)
        return Selection(decision.approved, decision.reason, result, ref, seconds)

    def select_fleet(
        self,
        policy: Policy,
        episodes: Mapping[Hashable, EpisodeData] | Sequence[EpisodeData],
        reducer,
        round_result,
        *,
        reference_metric: float | None = None,
        labels: Mapping[Hashable, np.ndarray] | None = None,
        veto: str | None = None,
    ) -> Selection:
        """Fleet-level selection of the synchronised ``policy`` of ``round_result``'s round:
        evaluate it here, exchange verdicts through ``reducer``
        (:meth:`~scarls.fleet.FleetReducer.agree_verdicts`) and decide with
        :func:`fleet_decision` - the same decision on every participant.
        ``reference_metric``: this ECU's deployed model's error on the same episodes;
        ``veto``: why this ECU refuses the model whatever its error (e.g. the replay
        regression check), which rejects it on every participant."""
        t0 = time.perf_counter()
        result = self.evaluate(policy, episodes, labels)
        ref = None if reference_metric is None else float(reference_metric)
        enough = result.frames >= self.min_frames and math.isfinite(result.mse)
        verdict = {'metric': float(result.mse) if enough else None,
                   'frames': int(result.frames) if enough else 0,
                   'reference': ref if ref is not None and math.isfinite(ref) else None,
                   'veto': veto}
        verdicts = reducer.agree_verdicts(round_result, verdict)
        fleet = fleet_decision(verdicts, self.gate)
        return Selection(fleet.approved, fleet.reason, result, ref,
                         time.perf_counter() - t0, fleet)
