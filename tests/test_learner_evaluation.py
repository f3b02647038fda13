"""Open-loop metric (perfect vs bad model, labelled steps only) and the checkpoint gate."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from scarls.learner import (
    CheckpointGate,
    EpisodeData,
    evaluate_open_loop,
    open_loop_batches,
)
from scarls.policies import Policy, PolicyConfig


class _Oracle(Policy):
    """Test double: predicts the batch's own targets (perfect) or targets + ``offset`` (bad)."""

    offset = 0.0

    def preprocess(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {'action': batch['action']}

    def _predict(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return inputs['action'] + self.offset


class _Bad(_Oracle):
    offset = 0.5


def _episode(t: int, intervention: np.ndarray, seed: int = 0) -> EpisodeData:
    rng = np.random.default_rng(seed)
    state = np.cumsum(rng.normal(0, 0.02, (t, 14)), axis=0).astype(np.float32)
    action = np.roll(state, -1, axis=0) + 0.01
    return EpisodeData(
        task='pick',
        outcome='success',
        source='online',
        state=state,
        action=action.astype(np.float32),
        intervention=intervention,
        images={},
    )


def test_perfect_vs_bad_model():
    eps = [_episode(30, np.ones(30, bool), 0), _episode(25, np.ones(25, bool), 1)]
    cfg = PolicyConfig(chunk_size=5)
    perfect = evaluate_open_loop(_Oracle(cfg), open_loop_batches(eps, 5, batch_size=16))
    bad = evaluate_open_loop(_Bad(cfg), open_loop_batches(eps, 5, batch_size=16))
    assert perfect.frames == bad.frames == 55
    assert perfect.mse == 0.0 and perfect.score == 1.0 and perfect.rmse == 0.0
    assert bad.mse == pytest.approx(0.25) and bad.score == 0.0
    assert perfect.baseline_mse == pytest.approx(bad.baseline_mse) and bad.baseline_mse > 0
    assert bad.mse > perfect.mse  # lower is better


def test_only_expert_labelled_steps_count():
    flags = np.zeros(20, bool)
    flags[5:12] = True
    ep = _episode(20, flags)
    res = evaluate_open_loop(_Bad(PolicyConfig(chunk_size=4)), open_loop_batches([ep], 4))
    assert res.frames == 7
    none = evaluate_open_loop(
        _Bad(PolicyConfig(chunk_size=4)), open_loop_batches([_episode(9, np.zeros(9, bool))], 4)
    )
    assert none.frames == 0 and math.isnan(none.mse) and none.score == 0.0


def test_dataset_style_batches_use_the_intervention_key():
    b, k = 6, 3
    state = torch.zeros(b, 14)
    batch = {
        'state': state,
        'action': torch.ones(b, k, 14),
        'action_mask': torch.tensor([[True, True, False]] * b),
        'intervention': torch.tensor([True, False, True, False, True, False]),
    }
    res = evaluate_open_loop(_Bad(PolicyConfig(chunk_size=k)), [batch])
    assert res.frames == 3
    assert res.mse == pytest.approx(0.25) and res.baseline_mse == pytest.approx(1.0)
    assert res.score == pytest.approx(0.75)


def test_gate_threshold_and_not_worse():
    gate = CheckpointGate(threshold=0.1)
    assert gate.decide(0.05, None).approved
    above = gate.decide(0.2, None)
    assert not above.approved and 'above the threshold' in above.reason
    assert gate.decide(0.05, 0.06).approved
    worse = gate.decide(0.05, 0.04)
    assert not worse.approved and 'worse than the deployed' in worse.reason
    assert gate.decide(0.05, 0.05).approved  # equal is not worse
    assert gate.decide(0.05, float('nan')).approved  # nothing comparable deployed
    assert not gate.decide(float('nan'), None).approved
    assert not gate.decide(float('inf'), None).approved
    lenient = CheckpointGate(threshold=0.1, must_not_be_worse=False)
    assert lenient.decide(0.05, 0.01).approved
    tolerant = CheckpointGate(threshold=1.0, tolerance=0.1)
    assert tolerant.decide(0.105, 0.1).approved and not tolerant.decide(0.115, 0.1).approved
    with pytest.raises(ValueError):
        CheckpointGate(threshold=float('nan'))
    with pytest.raises(ValueError):
        CheckpointGate(threshold=1.0, tolerance=-0.1)
