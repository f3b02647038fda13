"""The 'spatial' keypoint policy the learning recipe uses."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scarls.checkpoints import load_checkpoint, save_checkpoint
from scarls.policies import (
    CAMERAS,
    Observation,
    PolicyConfigError,
    available_policies,
    make_policy,
    observation_to_batch,
)
from scarls.policies.spatial import spatial_softmax

torch.set_num_threads(1)


def _obs(rng: np.random.Generator, hw=(96, 128)) -> Observation:
    return Observation(
        images={c: rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for c in CAMERAS},
        state=(rng.standard_normal(14) * 0.3).astype(np.float32),
    )


def test_spatial_softmax_finds_the_peak():
    logits = torch.full((1, 2, 5, 9), -50.0)
    logits[0, 0, 0, 0] = 50.0  # top-left
    logits[0, 1, 4, 6] = 50.0  # bottom row, 7th column
    kp = spatial_softmax(logits)
    np.testing.assert_allclose(kp[0, 0].numpy(), [-1.0, -1.0], atol=1e-5)
    np.testing.assert_allclose(kp[0, 1].numpy(), [-1.0 + 2 * 6 / 8, 1.0], atol=1e-5)
    uniform = spatial_softmax(torch.zeros(1, 1, 4, 4))
    np.testing.assert_allclose(uniform.numpy(), 0.0, atol=1e-6)


def test_predict_chunk_contract_and_normalisation():
    assert 'spatial' in available_policies()
    policy = make_policy('spatial', {'chunk_size': 6}, seed=0)
    obs = _obs(np.random.default_rng(0))
    out = policy.predict_chunk(obs)
    assert out.shape == (6, 14) and out.dtype == np.float32
    arm = [i for i in range(14) if i not in (6, 13)]
    # untrained: the arms stay near the current pose, the grippers (absolute) stay open
    assert np.abs(out[:, arm] - obs.state[arm]).max() < 0.05
    np.testing.assert_allclose(out[:, [6, 13]], 1.0, atol=0.05)
    policy.set_action_normalization(torch.full((6, 14), 0.2), torch.full((6, 14), 0.1))
    shifted = policy.predict_chunk(obs)
    np.testing.assert_allclose(shifted[:, arm] - obs.state[arm], 0.2, atol=0.02)
    np.testing.assert_allclose(shifted[:, [6, 13]], 0.2, atol=0.02)  # absolute targets
    with torch.no_grad():
        batch_out = policy(observation_to_batch(obs))[0].numpy()
    np.testing.assert_allclose(batch_out, shifted, atol=1e-6)
    # any resolution; a missing camera is named
    assert policy.predict_chunk(_obs(np.random.default_rng(1), (40, 52))).shape == (6, 14)
    with pytest.raises(KeyError, match='left'):
        policy.predict_chunk(Observation(images={'top': obs.images['top']}, state=obs.state))


def test_deterministic_init_and_checkpoint_roundtrip(tmp_path):
    a = make_policy('spatial', {'cameras': ['top'], 'pool': 2}, seed=3)
    b = make_policy('spatial', {'cameras': ['top'], 'pool': 2}, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(),
                                                  b.state_dict().values(), strict=True))
    a.set_action_normalization(torch.full((10, 14), 0.01), torch.full((10, 14), 0.02))
    path = tmp_path / 'spatial.safetensors'
    save_checkpoint(path, a, version=1)
    loaded, header = load_checkpoint(path)
    assert header.policy == 'spatial' and loaded.config == a.config
    obs = _obs(np.random.default_rng(2), (48, 64))
    obs = Observation(images={'top': obs.images['top']}, state=obs.state)
    np.testing.assert_array_equal(loaded.predict_chunk(obs), a.predict_chunk(obs))


def test_backward_reaches_the_trunk():
    policy = make_policy('spatial', {'cameras': ['top', 'left']}, seed=0)
    batch = observation_to_batch(_obs(np.random.default_rng(4), (32, 32)))
    policy(batch).sum().backward()
    assert policy.trunk[0].weight.grad is not None
    assert float(policy.trunk[0].weight.grad.abs().sum()) > 0


@pytest.mark.parametrize(
    'bad',
    [{'cameras': []}, {'pool': 0}, {'channels': []}, {'first_stride': 3},
     {'first_kernel': 4}, {'keypoints': 0}, {'hidden_layers': 0}, {'action_dim': 20},
     {'absolute_joints': [6, 6]}, {'absolute_joints': [14]}],
)
def test_config_validation(bad):
    with pytest.raises(PolicyConfigError):
        make_policy('spatial', bad)
