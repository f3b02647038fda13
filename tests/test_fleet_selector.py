"""The checkpoint selector: a second open-loop test of the synchronised parameters."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scarls.fleet import flatten_trainable, trainable_parameters
from scarls.fleet.params import _write_back
from scarls.learner import EpisodeData
from scarls.learner.evaluation import CheckpointGate
from scarls.learner.selector import CheckpointSelector, Selection, fleet_decision
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


def _v(metric, frames=100, reference=None, episodes=2, veto=None):
    return {'metric': metric, 'frames': frames, 'episodes': episodes, 'reference': reference,
            'veto': veto}


GATE = CheckpointGate(0.05, tolerance=0.05)
HONEST = {'ecu1': _v(0.045, 100, 0.05), 'ecu0': _v(0.03, 100, 0.04), 'ecu2': _v(0.02, 50)}


def test_fleet_decision_on_the_union_of_the_held_out_frames():
    d = fleet_decision(HONEST, GATE)
    assert d.approved and d.frames == 250, d.reason
    # frame shares 0.4 / 0.4 / 0.2 (none above the cap of 1/2)
    assert d.metric == pytest.approx(0.045 * 0.4 + 0.03 * 0.4 + 0.02 * 0.2)
    assert d.reference == pytest.approx((0.05 + 0.04) / 2)
    # the order the verdicts arrive in does not matter
    again = fleet_decision(dict(reversed(list(HONEST.items()))), GATE)
    assert (again.approved, again.metric, again.reason) == (d.approved, d.metric, d.reason)
    # worse than the deployed models on the frames that have a reference: rejected
    worse = {k: {**v, 'reference': 0.03 if v['reference'] else None} for k, v in HONEST.items()}
    assert not fleet_decision(worse, GATE).approved
    # one ECU's veto (e.g. its replay check, or the sanity check of the reduced model)
    vetoed = fleet_decision({**HONEST, 'ecu2': {**HONEST['ecu2'], 'veto': 'replay check: '
                                                'right_arm regressed'}}, GATE)
    assert not vetoed.approved and 'vetoed by ecu2: replay check' in vetoed.reason
    assert not fleet_decision({}, GATE).approved


@pytest.mark.parametrize(('change', 'why'), [
    # an ECU's own evaluation fails: nobody deploys, whatever the others report
    ({'ecu1': _v(0.08, 100, 0.09)}, 'own held-out episodes of ecu1'),
    # ... even when another claims a perfect model on a huge held-out set
    ({'ecu1': _v(0.08, 100, 0.09), 'ecu0': _v(0.0, 10**9, 1.0, episodes=10**6)},
     'own held-out episodes of ecu1'),
    # more labelled frames than its held-out episodes can hold: refused, so no deploy
    ({'ecu0': _v(0.0, 10**9, 1.0, episodes=2)}, 'refused verdict of ecu0: claims 1000000000'),
    # no usable error, no frames, no episodes, a negative error, a bad reference
    ({'ecu0': _v(None, 0)}, 'refused verdict of ecu0: no usable error'),
    ({'ecu0': _v(math.nan)}, 'refused verdict of ecu0'),
    ({'ecu0': _v(-0.5)}, 'refused verdict of ecu0'),
    ({'ecu0': _v(0.01, 0)}, 'no labelled frames'),
    ({'ecu0': _v(0.01, 10, episodes=0)}, 'no held-out episodes'),
    ({'ecu0': _v(0.01, 10, reference='low')}, 'unusable reference'),
    ({'ecu0': _v(0.01, True)}, 'no labelled frames'),
    ({'ecu0': 'approve'}, 'refused verdict of ecu0: not a mapping'),
])
def test_a_participants_report_can_only_reject(change, why):
    d = fleet_decision({**HONEST, **change}, GATE)
    assert not d.approved and why in d.reason, d.reason


def test_a_missing_participant_verdict_rejects():
    d = fleet_decision({k: HONEST[k] for k in ('ecu0', 'ecu1')}, GATE, ['ecu0', 'ecu1', 'ecu2'])
    assert not d.approved and 'no verdict from ecu2' in d.reason
    # a verdict from an ECU that did not reduce the model does not count
    extra = fleet_decision({**HONEST, 'stranger': _v(0.0, 10**6, 9.0, episodes=10**3)}, GATE,
                           ['ecu0', 'ecu1', 'ecu2'])
    assert extra.approved and extra.metric == pytest.approx(
        fleet_decision(HONEST, GATE).metric)


def test_one_ecus_share_of_the_union_is_capped():
    """A participant that claims many frames (within what its episodes can hold) counts for at
    most half of the union (1/n with more participants)."""
    honest = {'ecu0': _v(0.03, 100, 0.03), 'ecu1': _v(0.04, 100, 0.04), 'ecu3': _v(0.02, 100)}
    liar = {'ecu2': _v(0.0, 100_000, 0.05, episodes=50)}
    d = fleet_decision({**honest, **liar}, GATE)
    # uncapped, the liar's frames would make the union error ~0.0001
    assert d.metric == pytest.approx(0.5 * 0.0 + (0.03 + 0.04 + 0.02) / 6)
    assert d.reference == pytest.approx(0.5 * 0.05 + 0.25 * 0.03 + 0.25 * 0.04)


def test_a_liar_cannot_deploy_a_model_worse_than_an_honest_ecus_deployed_one():
    """The union's comparison with the deployed models can be carried by a liar's capped
    share, but never past an honest ECU's own bound: its own error at most 25 % worse than
    its deployed model's."""
    liar = {'ecu2': _v(0.0, 100, 0.05)}
    # the honest ECUs are 10 % worse than their deployed models (within the own bound): the
    # liar's share carries the union comparison - the documented worst case
    slightly = {'ecu0': _v(0.033, 100, 0.03), 'ecu1': _v(0.044, 100, 0.04)}
    assert not fleet_decision(slightly, GATE).approved
    assert fleet_decision({**slightly, **liar}, GATE).approved
    # 50 % worse on ecu0: rejected, whatever the liar reports
    much = {'ecu0': _v(0.045, 100, 0.03), 'ecu1': _v(0.044, 100, 0.04)}
    d = fleet_decision({**much, **liar}, GATE)
    assert not d.approved and 'own held-out episodes of ecu0' in d.reason, d.reason
    assert 'worse than the deployed' in d.reason


def test_selector_posts_a_complete_verdict_and_decides_with_the_participants(heldout):
    class _Reducer:
        def __init__(self):
            self.posted = None

        def agree_verdicts(self, result, verdict):
            self.posted = dict(verdict)
            return {'ecu0': dict(verdict)}    # ecu1's verdict missed the agreement

    class _Round:
        participants = ('ecu0', 'ecu1')

    reducer = _Reducer()
    sel = CheckpointSelector(1e9).select_fleet(_policy(), heldout, reducer, _Round())
    assert set(reducer.posted) == {'metric', 'frames', 'episodes', 'reference', 'veto'}
    assert reducer.posted['episodes'] == len(heldout) and reducer.posted['frames'] > 0
    assert not sel.approved and 'no verdict from ecu1' in sel.reason
