from __future__ import annotations

import dataclasses
import json
import uuid

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scarls.policies import (
    CAMERAS,
    CNNConfig,
    DuplicatePolicy,
    MLPConfig,
    Observation,
    Policy,
    PolicyConfig,
    PolicyConfigError,
    UnknownPolicy,
    available_policies,
    image_key,
    make_policy,
    observation_to_batch,
    register_policy,
)

torch.set_num_threads(1)


def make_obs(rng: np.random.Generator, hw=(48, 64), state_scale=0.5) -> Observation:
    return Observation(
        images={c: rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for c in CAMERAS},
        state=(rng.standard_normal(14) * state_scale).astype(np.float32),
    )


def test_registry_lists_builtins():
    assert {'mlp', 'cnn'} <= set(available_policies())
    with pytest.raises(UnknownPolicy, match='available') as info:
        make_policy('no-such-policy')
    assert isinstance(info.value, KeyError)
    assert str(info.value).startswith("no policy named 'no-such-policy'")


def test_duplicate_registration_raises_and_keeps_original():
    name = f'dummy-{uuid.uuid4().hex}'

    @register_policy(name)
    class Dummy(Policy):
        pass

    assert Dummy.name == name and name in available_policies()
    with pytest.raises(DuplicatePolicy):

        @register_policy(name)
        class Other(Policy):
            pass

    with pytest.raises(DuplicatePolicy):
        register_policy('mlp')(Dummy)
    assert type(make_policy('mlp')).__name__ == 'MLPPolicy'
    with pytest.raises(TypeError):
        register_policy(f'x-{uuid.uuid4().hex}')(int)  # type: ignore[type-var]


@pytest.mark.parametrize('name', ['mlp', 'cnn'])
def test_seeded_init_is_deterministic_and_isolated(name):
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = make_policy(name, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)  # global RNG untouched
    b = make_policy(name, seed=7)
    c = make_policy(name, seed=8)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert any(not torch.equal(sa[k], sc[k]) for k in sa)
    obs = make_obs(np.random.default_rng(0))
    np.testing.assert_array_equal(a.predict_chunk(obs), b.predict_chunk(obs))


@pytest.mark.parametrize('name', ['mlp', 'cnn'])
def test_predict_chunk_contract(name):
    policy = make_policy(name, {'chunk_size': 5})
    policy.train()
    obs = make_obs(np.random.default_rng(1))
    out = policy.predict_chunk(obs)
    assert out.shape == (5, 14) and out.dtype == np.float32
    assert policy.training  # mode restored
    assert (policy.chunk_size, policy.action_dim) == (5, 14)
    # untrained: targets stay close to the current joint positions
    assert np.abs(out - obs.state).max() < 0.05
    # forward on the same batch gives the same result (shared preprocess)
    policy.eval()
    with torch.no_grad():
        batch_out = policy(observation_to_batch(obs))[0].numpy()
    np.testing.assert_allclose(batch_out, out, rtol=1e-6, atol=1e-6)


def test_cnn_any_resolution_and_param_count():
    policy = make_policy('cnn')
    n = sum(p.numel() for p in policy.parameters())
    assert 500_000 < n < 2_000_000
    rng = np.random.default_rng(2)
    for hw in [(480, 640), (64, 64), (37, 53)]:
        out = policy.predict_chunk(make_obs(rng, hw))
        assert out.shape == (policy.chunk_size, 14) and np.isfinite(out).all()
    obs = make_obs(rng)
    missing = Observation(images={'top': obs.images['top']}, state=obs.state)
    with pytest.raises(KeyError, match='left'):
        policy.predict_chunk(missing)


def test_outputs_are_deltas_bounded_by_max_delta():
    policy = make_policy('mlp', {'max_delta': 0.1, 'init_output_gain': 50.0})
    obs = make_obs(np.random.default_rng(3), state_scale=2.0)
    out = policy.predict_chunk(obs)
    assert np.abs(out - obs.state).max() <= 0.1 + 1e-6
    assert np.abs(out - obs.state).max() > 0.05  # large gain saturates near the bound


def _batch(rng: np.random.Generator, b: int, k: int, with_images: bool) -> dict[str, torch.Tensor]:
    state = torch.from_numpy(rng.standard_normal((b, 14)).astype(np.float32))
    batch = {'state': state, 'action': state[:, None, :].expand(b, k, 14) + 0.2}
    if with_images:
        for c in CAMERAS:
            batch[image_key(c)] = torch.from_numpy(
                rng.integers(0, 256, (b, 40, 40, 3), dtype=np.uint8)
            )
    return batch


def test_mlp_trains():
    policy = make_policy('mlp', {'chunk_size': 4, 'hidden_sizes': [64]}, seed=0)
    batch = _batch(np.random.default_rng(4), 32, 4, with_images=False)
    opt = torch.optim.Adam(policy.parameters(), lr=3e-3)
    first = policy.loss(batch).item()
    for _ in range(150):
        opt.zero_grad()
        loss = policy.loss(batch)
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_cnn_backward_reaches_encoder():
    policy = make_policy('cnn', {'chunk_size': 3})
    batch = _batch(np.random.default_rng(5), 2, 3, with_images=True)
    out = policy(batch)
    assert out.shape == (2, 3, 14)
    policy.loss(batch).backward()
    grad = policy.encoder[0].weight.grad
    assert grad is not None and grad.abs().sum() > 0


def test_batch_validation():
    policy = make_policy('mlp')
    with pytest.raises(KeyError, match='state'):
        policy({})
    with pytest.raises(ValueError, match='state'):
        policy({'state': torch.zeros(2, 7)})
    with pytest.raises(KeyError, match='action'):
        policy.loss({'state': torch.zeros(2, 14)})


def test_observation_validation():
    img = np.zeros((4, 4, 3), np.uint8)
    obs = Observation(images={'top': img}, state=[0.0] * 14)
    assert obs.state.dtype == np.float32
    with pytest.raises(ValueError):
        Observation(images={'top': img.astype(np.float32)}, state=np.zeros(14))
    with pytest.raises(ValueError):
        Observation(images={'top': np.zeros((4, 4), np.uint8)}, state=np.zeros(14))
    with pytest.raises(ValueError):
        Observation(images={}, state=np.zeros((2, 7)))
    with pytest.raises(ValueError):
        Observation(images={}, state=np.full(14, np.nan))


def test_config_dict_roundtrip_and_validation():
    for cfg in (MLPConfig(), CNNConfig(image_size=32, channels=(8, 16))):
        d = json.loads(json.dumps(cfg.to_dict()))
        assert type(cfg).from_dict(d) == cfg
    with pytest.raises(dataclasses.FrozenInstanceError):
        MLPConfig().chunk_size = 3  # type: ignore[misc]
    with pytest.raises(PolicyConfigError, match='unknown'):
        MLPConfig.from_dict({'chunk_sise': 3})
    with pytest.raises(PolicyConfigError, match='chunk_size'):
        MLPConfig.from_dict({'chunk_size': 0})
    with pytest.raises(PolicyConfigError, match='chunk_size'):
        MLPConfig.from_dict({'chunk_size': 'ten'})
    with pytest.raises(PolicyConfigError, match='hidden_sizes'):
        MLPConfig.from_dict({'hidden_sizes': []})
    with pytest.raises(PolicyConfigError, match='image_size'):
        CNNConfig.from_dict({'image_size': 60})
    with pytest.raises(PolicyConfigError, match='max_delta'):
        PolicyConfig(max_delta=float('nan'))
    with pytest.raises(PolicyConfigError):
        make_policy('cnn', MLPConfig())


@settings(max_examples=40, deadline=None)
@given(
    chunk=st.integers(1, 64),
    hidden=st.lists(st.integers(1, 512), min_size=1, max_size=4),
    delta=st.floats(1e-3, 10.0, allow_nan=False),
)
def test_mlp_config_roundtrip_property(chunk, hidden, delta):
    cfg = MLPConfig.from_dict({'chunk_size': chunk, 'hidden_sizes': hidden, 'max_delta': delta})
    assert cfg.hidden_sizes == tuple(hidden)
    assert MLPConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
