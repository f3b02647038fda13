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
reducer and all of them apply :func:`fleet_decision` to the same agreed verdicts: every
participant's verdict must be there and plausible, every participant's own error must pass the
threshold, and the error on the union of the held-out frames (each ECU's share capped) must not
be worse than the deployed models' error on the same frames. The fleet deploys the synchronised
model everywhere or nowhere, and a participant's report (its error, its frame count) can only
ever reject a model, never approve one that another participant's own evaluation fails.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Hashable, Mapping, Sequence

import numpy as np

from scarls.common.validation import is_number
from scarls.fleet.weights import cap_weights
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

__all__ = [
    'DEFAULT_MAX_EPISODE_FRAMES',
    'DEFAULT_MAX_SHARE',
    'DEFAULT_OWN_TOLERANCE',
    'CheckpointSelector',
    'FleetDecision',
    'Selection',
    'fleet_decision',
    'verdict_problem',
]


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
    """Error of the synchronised model on the union of the held-out frames, each ECU's share
    capped (NaN: no valid verdict)."""
    reference: float | None
    """The deployed models' error on the same frames (None: nothing deployed to compare)."""
    frames: int
    verdicts: Mapping[str, Mapping]
    """The agreed verdicts, ``{ecu id: {'metric', 'frames', 'episodes', 'reference',
    'veto'}}``."""


DEFAULT_MAX_EPISODE_FRAMES = 18_000
"""Most labelled frames one held-out episode can hold (10 minutes at 30 Hz): a verdict that
claims more frames than ``episodes * max_episode_frames`` is refused."""

DEFAULT_MAX_SHARE = 0.5
"""Largest share of one ECU's frames in the union (raised to ``1/n`` for ``n`` verdicts)."""

DEFAULT_OWN_TOLERANCE = 0.25
"""How much worse than its deployed model (relative) a participant's own error may be."""


def verdict_problem(verdict: Mapping, max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES
                    ) -> str | None:
    """Why a participant's verdict cannot count, or None: the error must be a finite number
    >= 0, ``frames`` and ``episodes`` ints >= 1 with ``frames <= episodes *
    max_episode_frames`` (its held-out episodes could not hold more labelled frames), the
    reference None or a finite number >= 0."""
    if not isinstance(verdict, Mapping):
        return 'not a mapping'
    metric, frames, episodes = (verdict.get(k) for k in ('metric', 'frames', 'episodes'))
    if not is_number(metric) or metric < 0:
        return f'no usable error ({metric!r})'
    if not _is_count(frames) or frames < 1:
        return f'no labelled frames ({frames!r})'
    if not _is_count(episodes) or episodes < 1:
        return f'no held-out episodes ({episodes!r})'
    if frames > episodes * max_episode_frames:
        return (f'claims {frames} labelled frames in {episodes} held-out episodes (at most '
                f'{max_episode_frames} per episode)')
    ref = verdict.get('reference')
    if ref is not None and (not is_number(ref) or ref < 0):
        return f'unusable reference error ({ref!r})'
    return None


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _shares(frames: Mapping[str, int], max_share: float) -> dict[str, float]:
    total = sum(frames.values())
    return cap_weights({k: n / total for k, n in frames.items()}, max_share)


def fleet_decision(
    verdicts: Mapping[str, Mapping],
    gate: CheckpointGate,
    participants: Sequence[str] | None = None,
    *,
    max_share: float = DEFAULT_MAX_SHARE,
    max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES,
    own_tolerance: float = DEFAULT_OWN_TOLERANCE,
) -> FleetDecision:
    """Decide from the participants' verdicts (``{'metric': error or None, 'frames': n,
    'episodes': held-out episodes, 'reference': deployed error on the same frames or None,
    'veto': reason or None}``). ``participants``: the ECUs that reduced the model (default:
    the verdicts' ECUs). Approve only if all of these hold:

    1. no participant vetoes;
    2. every participant's verdict is there and valid (:func:`verdict_problem`);
    3. every participant's *own* error passes the threshold and is at most ``own_tolerance``
       (relative) worse than its own deployed model's - nobody deploys a model that fails on
       its own held-out episodes, whatever the others report;
    4. on the union of the held-out frames, each ECU's share capped at ``max_share``
       (:func:`scarls.fleet.weights.cap_weights`), the error passes the threshold and is not
       worse than the deployed models' error on the frames that have one (tolerance of
       ``gate``).

    A participant's claims can therefore never approve a model that fails 1-3 on another
    participant; they can move the union's comparison (4) by at most their capped share, so
    the worst a liar achieves is a model within ``own_tolerance`` of each honest ECU's
    deployed one. Deterministic in the
    verdicts (independent of their order), so every ECU that reads the same agreed verdicts
    decides alike - a participant whose verdict missed the agreement rejects like the others.
    """
    verdicts = {str(k): v for k, v in verdicts.items()}
    who = sorted(str(k) for k in participants) if participants is not None \
        else sorted(verdicts)
    valid = {k: v for k, v in sorted(verdicts.items())
             if k in who and verdict_problem(v, max_episode_frames) is None}
    frames = sum(int(v['frames']) for v in valid.values())
    union = math.nan
    if valid:
        shares = _shares({k: int(v['frames']) for k, v in valid.items()}, max_share)
        union = math.fsum(shares[k] * float(v['metric']) for k, v in valid.items())

    def reject(reason: str) -> FleetDecision:
        return FleetDecision(False, reason, union, None, frames, dict(verdicts))

    vetoes = {k: v.get('veto') for k, v in sorted(verdicts.items())
              if isinstance(v, Mapping) and v.get('veto')}
    if vetoes:
        return reject('vetoed by ' + '; '.join(f'{k}: {v}' for k, v in vetoes.items()))
    if not who:
        return reject('no participant has a usable verdict')
    missing = [k for k in who if k not in verdicts]
    if missing:
        return reject(f'no verdict from {", ".join(missing)} before the verdicts were fixed '
                      '(every participant must judge the model)')
    refused = {k: verdict_problem(verdicts[k], max_episode_frames) for k in who
               if k not in valid}
    if refused:
        return reject('refused verdict of ' + '; '.join(f'{k}: {v}' for k, v in refused.items()))
    own = CheckpointGate(gate.threshold, must_not_be_worse=True,
                         tolerance=max(own_tolerance, gate.tolerance))
    failing = {k: own.decide(float(v['metric']),
                             float(v['reference']) if is_number(v.get('reference')) else None)
               for k, v in valid.items()}
    failing = {k: d for k, d in failing.items() if not d.approved}
    if failing:
        return reject('fails on the own held-out episodes of '
                      + '; '.join(f'{k}: {d.reason}' for k, d in failing.items()))
    threshold = gate.decide(union, None)
    with_ref = {k: v for k, v in valid.items() if is_number(v.get('reference'))}
    reference = None
    if with_ref and threshold.approved:
        shares = _shares({k: int(v['frames']) for k, v in with_ref.items()}, max_share)
        reference = math.fsum(shares[k] * float(v['reference']) for k, v in with_ref.items())
        candidate = math.fsum(shares[k] * float(v['metric']) for k, v in with_ref.items())
        # like for like on the frames that have a reference; the threshold was checked above
        # on all the frames
        compare = CheckpointGate(math.inf, must_not_be_worse=True, tolerance=gate.tolerance)
        decision = compare.decide(candidate, reference)
        if decision.approved:
            decision = GateDecision(True, f'{threshold.reason} and not worse than the '
                                    f'deployed models ({candidate:.6g} vs {reference:.6g})')
    else:
        decision = threshold
    listing = ', '.join(f'{k} {float(v["metric"]):.4g}' for k, v in valid.items())
    return FleetDecision(decision.approved,
                         f'fleet verdict over {len(valid)} ECUs ({listing}; {frames} frames): '
                         f'{decision.reason}', union, reference, frames, dict(verdicts))


class CheckpointSelector:
    """Re-evaluate a synchronised policy on held-out episodes and decide (module docstring).

    ``stride`` and ``batch_size`` are passed to
    :func:`~scarls.learner.evaluation.open_loop_batches`; ``min_frames`` rejects a verdict
    drawn from too few labelled frames. ``max_share``, ``max_episode_frames`` and
    ``own_tolerance`` are the fleet rule's bounds (:func:`fleet_decision`; the same on every
    ECU of a fleet).
    """

    def __init__(
        self,
        threshold: float,
        *,
        tolerance: float = 0.0,
        stride: int = 1,
        batch_size: int = 64,
        min_frames: int = 1,
        max_share: float = DEFAULT_MAX_SHARE,
        max_episode_frames: int = DEFAULT_MAX_EPISODE_FRAMES,
        own_tolerance: float = DEFAULT_OWN_TOLERANCE,
    ) -> None:
        self.gate = CheckpointGate(threshold, must_not_be_worse=True, tolerance=tolerance)
        if not isinstance(stride, int) or isinstance(stride, bool) or stride < 1:
            raise ValueError(f'stride must be an int >= 1, got {stride!r}')
        if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
            raise ValueError(f'batch_size must be an int >= 1, got {batch_size!r}')
        if not isinstance(min_frames, int) or isinstance(min_frames, bool) or min_frames < 1:
            raise ValueError(f'min_frames must be an int >= 1, got {min_frames!r}')
        if not is_number(max_share) or not 0 < max_share <= 1:
            raise ValueError(f'max_share must be a number in (0, 1], got {max_share!r}')
        if not _is_count(max_episode_frames) or max_episode_frames < 1:
            raise ValueError(f'max_episode_frames must be an int >= 1, got '
                             f'{max_episode_frames!r}')
        self.stride = stride
        self.batch_size = batch_size
        self.min_frames = min_frames
        if not is_number(own_tolerance) or own_tolerance < 0:
            raise ValueError(f'own_tolerance must be a number >= 0, got {own_tolerance!r}')
        self.max_share = float(max_share)
        self.own_tolerance = float(own_tolerance)
        self.max_episode_frames = max_episode_frames

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
                   'episodes': len(episodes),
                   'reference': ref if ref is not None and math.isfinite(ref) else None,
                   'veto': veto}
        verdicts = reducer.agree_verdicts(round_result, verdict)
        participants = list(getattr(round_result, 'participants', ()) or verdicts)
        fleet = fleet_decision(verdicts, self.gate, participants, max_share=self.max_share,
                               max_episode_frames=self.max_episode_frames,
                               own_tolerance=self.own_tolerance)
        return Selection(fleet.approved, fleet.reason, result, ref,
                         time.perf_counter() - t0, fleet)
