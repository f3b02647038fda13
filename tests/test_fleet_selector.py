"""The checkpoint selector: a second open-loop test of the synchronised parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scarls.fleet import CheckpointSelector, Selection, flatten_trainable, trainable_parameters
from scarls.fleet.allreduce import _write_back
from scarls.fleet.selector import fleet_decision
from scarls.learner import EpisodeData
from scarls.learner.evaluation import CheckpointGate
from scarls.policies import make_policy

CHUNK = 5
THRESHOLD = 0.05


def _episode(t: int, seed: int, labelled: bool = True) -> EpisodeData:
    rng = np.random.default_rng(seed)
    state = np.cumsum(rng.normal(0, 0.02, (t, 14)), axis=0).astype(np.float32)
    action = np.roll(state, -1, axis=0) + 0.01
    return EpisodeData(
        task='pick',
        outcome='success',
        source='offline',
        state=state,
        action=action.astype(np.float32),
        intervention=np.full(t, labelled),
        images={},
    )


@pytest.fixture
def heldout() -> list[EpisodeData]:
    return [_episode(40, 0), _episode(30, 1)]


def _policy(seed: int = 0):
    return make_policy('mlp', {'chunk_size': CHUNK, 'hidden_sizes': [32]}, seed=seed)


def _synchronised(*seeds: int):
    """The equal-weight average of policies built with ``seeds`` (what a reduction yields)."""
    out = _policy(seeds[0])
    bufs = flatten_trainable(trainable_parameters(out))
    for s in seeds[1:]:
        for (acc, _), (b, _) in zip(
            bufs, flatten_trainable(trainable_parameters(_policy(s))), strict=True
        ):
            acc.add_(b)
    for b, ps in bufs:
        _write_back(b / len(seeds), ps)
    return out


def test_accepts_a_good_synchronised_model_and_rejects_garbage(heldout):
    sel = CheckpointSelector(THRESHOLD)
    good = sel.select(_synchronised(0, 1, 2), heldout)
    assert isinstance(good, Selection)
    assert good.approved, good.reason
    assert good.result.frames == 70 and good.metric <= THRESHOLD
    assert 'threshold' in good.reason

    garbage = _synchronised(0, 1)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for _, p in trainable_parameters(garbage):
            p.copy_(torch.randn(p.shape, generator=gen) * 10.0)
    bad = sel.select(garbage, heldout)
    assert not bad.approved
    assert bad.metric > THRESHOLD and 'above the threshold' in bad.reason


def test_non_finite_parameters_are_rejected(heldout):
    policy = _policy()
    with torch.no_grad():
        next(iter(policy.parameters())).fill_(math.nan)
    sel = CheckpointSelector(THRESHOLD).select(policy, heldout)
    assert not sel.approved and 'not finite' in sel.reason


def test_reference_metric_and_tolerance(heldout):
    policy = _synchronised(0, 1)
    metric = CheckpointSelector(THRESHOLD).evaluate(policy, heldout).mse
    strict = CheckpointSelector(THRESHOLD)
    worse = strict.select(policy, heldout, reference_metric=metric * 0.9)
    assert not worse.approved and 'worse than' in worse.reason
    assert worse.reference_metric == pytest.approx(metric * 0.9)
    assert strict.select(policy, heldout, reference_metric=metric * 1.1).approved
    lenient = CheckpointSelector(THRESHOLD, tolerance=0.2)
    assert lenient.select(policy, heldout, reference_metric=metric * 0.9).approved
    # no usable reference: the threshold alone decides
    assert strict.select(policy, heldout, reference_metric=math.nan).approved
    assert strict.select(policy, heldout, reference_metric=None).approved


def test_too_few_labelled_frames(heldout):
    unlabelled = [_episode(20, 3, labelled=False)]
    sel = CheckpointSelector(THRESHOLD).select(_policy(), unlabelled)
    assert not sel.approved and sel.result.frames == 0
    strict = CheckpointSelector(THRESHOLD, min_frames=1000).select(_policy(), heldout)
    assert not strict.approved and 'need 1000' in strict.reason


def test_the_policy_is_left_as_it_was(heldout):
    policy = _policy()
    policy.train()
    before = {k: v.clone() for k, v in policy.state_dict().items()}
    CheckpointSelector(THRESHOLD, stride=2, batch_size=7).select(policy, heldout)
    assert policy.training
    after = policy.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_stride_and_batch_size_change_only_the_sampling(heldout):
    full = CheckpointSelector(THRESHOLD, batch_size=3).evaluate(_policy(), heldout)
    ref = CheckpointSelector(THRESHOLD).evaluate(_policy(), heldout)
    assert full.mse == pytest.approx(ref.mse, rel=1e-5) and full.frames == ref.frames
    strided = CheckpointSelector(THRESHOLD, stride=2).evaluate(_policy(), heldout)
    assert strided.frames == 35


@pytest.mark.parametrize(
    'kwargs', [{'stride': 0}, {'batch_size': 0}, {'min_frames': 0}, {'tolerance': -1.0}]
)
def test_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        CheckpointSelector(THRESHOLD, **kwargs)


def test_fleet_decision_on_the_union_of_the_held_out_frames():
    gate = CheckpointGate(0.05, tolerance=0.05)
    verdicts = {'ecu1': {'metric': 0.08, 'frames': 100, 'reference': 0.09},
                'ecu0': {'metric': 0.03, 'frames': 100, 'reference': 0.04},
                'ecu2': {'metric': 0.02, 'frames': 50, 'reference': None}}
    d = fleet_decision(verdicts, gate)
    assert d.approved and d.frames == 250
    assert d.metric == pytest.approx(0.048) and d.reference == pytest.approx(0.065)
    # the order the verdicts arrive in does not matter
    again = fleet_decision(dict(reversed(list(verdicts.items()))), gate)
    assert (again.approved, again.metric, again.reason) == (d.approved, d.metric, d.reason)
    # worse than the deployed models on the frames that have a reference: rejected
    worse = {k: {**v, 'reference': 0.04 if v['reference'] else None}
             for k, v in verdicts.items()}
    assert not fleet_decision(worse, gate).approved
    # above the threshold on the union: rejected even if one ECU alone would pass
    assert not fleet_decision({**verdicts, 'ecu1': {'metric': 0.2, 'frames': 100}}, gate).approved
    # one ECU's veto (e.g. its replay check) rejects everywhere, whatever the errors
    vetoed = fleet_decision({**verdicts, 'ecu2': {**verdicts['ecu2'], 'veto': 'replay check: '
                                                  'right_arm regressed'}}, gate)
    assert not vetoed.approved and 'vetoed by ecu2: replay check' in vetoed.reason
    # unusable verdicts (no frames, NaN, missing) are left out; none usable: rejected
    assert not fleet_decision({'a': {'metric': None, 'frames': 0}}, gate).approved
    assert not fleet_decision({}, gate).approved
    only = fleet_decision({'a': {'metric': math.nan, 'frames': 9},
                           'b': {'metric': 0.01, 'frames': 10, 'reference': None}}, gate)
    assert only.approved and only.metric == pytest.approx(0.01) and only.reference is None
