"""Chunk targets with padding/label masks, the masked loss, and a real training smoke test."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from scarls.common.device import DeviceError
from scarls.episodes import StepRecord
from scarls.learner import (
    EpisodeData,
    LearnerConfigError,
    LearnerError,
    MixingSampler,
    Trainer,
    TrainerConfig,
    build_batch,
    chunk_targets,
    fit_normalization,
    masked_chunk_loss,
)
from scarls.policies import make_policy

torch.set_num_threads(1)


def _records(t: int, cams=('top',), hw=(8, 10), flags=None) -> list[StepRecord]:
    out = []
    for i in range(t):
        out.append(
            StepRecord(
                images={c: np.full((*hw, 3), i, np.uint8) for c in cams},
                state=np.full(14, i, np.float32),
                action=np.full(14, i + 1, np.float32),
                intervention=bool(flags[i]) if flags is not None else True,
                timestamp=i / 30,
            )
        )
    return out


def test_chunk_targets_pad_and_mask():
    action = np.arange(5, dtype=np.float32)[:, None] * np.ones((1, 14), np.float32)
    chunk, valid = chunk_targets(action, 3, 4)
    np.testing.assert_array_equal(chunk[:, 0], [3, 4, 4, 4])  # padded with the last action
    np.testing.assert_array_equal(valid, [True, True, False, False])
    labels = np.array([1, 1, 0, 1, 1])
    _, valid = chunk_targets(action, 0, 4, labels)
    np.testing.assert_array_equal(valid, [True, True, False, True])


def test_episode_data_and_batch():
    flags = np.array([0, 1, 1, 0, 1], bool)
    ep = EpisodeData.from_records(
        _records(5, ('top', 'left'), flags=flags), task='t', outcome='fail', source='online',
        keep=flags,
    )
    assert ep.steps == 5 and ep.images['top'].shape == (3, 8, 10, 3)
    assert ep.frame('left', 4)[0, 0, 0] == 4
    with pytest.raises(KeyError, match='not kept'):
        ep.frame('top', 0)
    batch = build_batch({'e': ep}, [('e', 1), ('e', 4)], 3, cameras=('top',),
                        labels={'e': flags.astype(np.float32)})
    assert batch['state'].shape == (2, 14) and batch['action'].shape == (2, 3, 14)
    assert batch['image.top'].shape == (2, 8, 10, 3) and batch['image.top'].dtype == torch.uint8
    np.testing.assert_array_equal(batch['action_mask'].numpy(),
                                  [[True, True, False], [True, False, False]])
    with pytest.raises(LearnerError):
        EpisodeData.from_records(_records(3), task='t', outcome='fail', source='online',
                                 keep=np.ones(2, bool))


def test_masked_loss_ignores_masked_entries():
    pred = torch.zeros(2, 3, 4)
    target = torch.zeros(2, 3, 4)
    target[0, 2] = 100.0  # masked: must not count
    target[1, 0] = 1.0
    mask = torch.tensor([[True, True, False], [True, True, True]])
    loss, per = masked_chunk_loss(pred, target, mask)
    assert per.tolist() == pytest.approx([0.0, 1.0 / 3.0])
    assert float(loss) == pytest.approx(1.0 / 6.0)
    loss, per = masked_chunk_loss(pred, target, torch.zeros(2, 3, dtype=torch.bool))
    assert float(loss) == 0.0
    scaled, _ = masked_chunk_loss(pred, target, mask, scale=torch.full((3, 4), 2.0))
    assert float(scaled) == pytest.approx(1.0 / 24.0)
    with pytest.raises(ValueError):
        masked_chunk_loss(pred, target[:, :2])


def _linear_episodes(n: int, t: int, rng: np.random.Generator) -> dict[str, EpisodeData]:
    eps = {}
    for i in range(n):
        state = rng.normal(0, 0.5, (t, 14)).astype(np.float32)
        action = (state * 0.9 + 0.1).astype(np.float32)  # a learnable map of the state
        eps[f'e{i}'] = EpisodeData(task='t', outcome='success', source='offline', state=state,
                                   action=action, intervention=np.ones(t, bool), images={})
    return eps


def test_trainer_reduces_loss_on_fixed_data():
    rng = np.random.default_rng(0)
    eps = _linear_episodes(4, 40, rng)
    policy = make_policy('mlp', {'chunk_size': 1, 'hidden_sizes': [64]}, seed=0)
    fit_normalization(policy, eps.values())
    sampler = MixingSampler()
    for k, e in eps.items():
        sampler.add(('t', 'offline'), k, e.steps)
    trainer = Trainer(policy, TrainerConfig(lr=3e-3, batch_size=32))
    fixed = build_batch(eps, sampler.sample(64, np.random.default_rng(1)), 1)
    first = trainer.train_step(fixed).loss
    seen = []
    stats = trainer.train_steps(lambda: fixed, 150, on_step=lambda b, r: seen.append(r.loss))
    assert stats.steps == 150 == len(seen) and trainer.total_steps == 151
    assert stats.loss_last < 0.1 * first
    assert stats.seconds > 0 and stats.steps_per_second > 0


def test_spatial_policy_trains_on_images():
    rng = np.random.default_rng(0)
    policy = make_policy('spatial', {'cameras': ['top'], 'chunk_size': 2, 'channels': [4],
                                     'keypoints': 2, 'hidden_dim': 32}, seed=0)
    # the target moves with the position of a bright square in the image
    n = 32
    images = np.zeros((n, 16, 16, 3), np.uint8)
    xs = rng.integers(2, 14, n)
    for i, x in enumerate(xs):
        images[i, 6:9, x - 1 : x + 2] = 255
    state = np.zeros((n, 14), np.float32)
    action = np.zeros((n, 2, 14), np.float32)
    action[:, :, 0] = ((xs - 8) / 6.0)[:, None] * 0.1
    batch = {'state': torch.from_numpy(state), 'image.top': torch.from_numpy(images),
             'action': torch.from_numpy(action)}
    policy.set_action_normalization(torch.zeros(2, 14), torch.full((2, 14), 0.1))
    trainer = Trainer(policy, TrainerConfig(lr=1e-2, normalize_loss=False))
    first = trainer.train_step(batch).loss
    stats = trainer.train_steps(lambda: batch, 100)
    assert stats.loss_last < 0.2 * first


def test_fit_normalization_sets_buffers():
    eps = _linear_episodes(2, 30, np.random.default_rng(3))
    policy = make_policy('spatial', {'cameras': ['top'], 'chunk_size': 3})
    out = fit_normalization(policy, eps.values())
    assert out['action_mean'].shape == (3, 14)
    np.testing.assert_allclose(policy.action_std.numpy(), out['action_std'], rtol=1e-6)
    np.testing.assert_allclose(policy.state_mean.numpy(), out['state_mean'], rtol=1e-5)
    assert (policy.action_std.numpy() >= 0.005 - 1e-9).all()
    with pytest.raises(LearnerError):
        fit_normalization(policy, [])


def test_trainer_config_validation_and_nonfinite_loss():
    for bad in ({'lr': 0}, {'batch_size': 0}, {'betas': (0.9, 1.0)}, {'grad_clip': -1}):
        with pytest.raises(LearnerConfigError):
            TrainerConfig(**bad)
    policy = make_policy('mlp', {'chunk_size': 1})
    trainer = Trainer(policy)
    batch = {'state': torch.zeros(2, 14), 'action': torch.full((2, 1, 14), float('nan'))}
    with pytest.raises(LearnerError, match='non-finite'):
        trainer.train_step(batch)


# -- device and precision ------------------------------------------------------------------


def _fixed_batch(chunk: int = 2) -> dict[str, torch.Tensor]:
    eps = _linear_episodes(2, 30, np.random.default_rng(5))
    samples = [(k, t) for k in eps for t in range(0, 30, 3)]
    return build_batch(eps, samples, chunk)


def test_trainer_on_the_cpu_is_the_plain_adamw_step():
    """device 'cpu' (and 'auto' on a CPU-only machine) trains exactly as before devices."""
    batch = _fixed_batch()
    cfg = {'chunk_size': 2, 'hidden_sizes': [32]}
    ref = make_policy('mlp', cfg, seed=0)
    opt = torch.optim.AdamW(ref.parameters(), lr=1e-3, betas=(0.9, 0.999), weight_decay=1e-4)
    trainer = Trainer(make_policy('mlp', cfg, seed=0), TrainerConfig(device='cpu'))
    assert trainer.device == torch.device('cpu')
    assert trainer.amp_dtype is None and trainer.scaler is None
    for _ in range(3):
        result = trainer.train_step(batch)
        ref.train()
        loss, per = masked_chunk_loss(ref(batch), batch['action'], batch['action_mask'],
                                      getattr(ref, 'action_std', None))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()
        assert result.loss == float(loss.detach()) and result.grad_norm == float(norm)
        np.testing.assert_array_equal(result.per_sample, per.numpy())
    for (name, a), b in zip(trainer.policy.state_dict().items(), ref.state_dict().values(),
                            strict=True):
        assert torch.equal(a, b), name


def test_trainer_device_settings():
    for bad in ({'device': 'gpu'}, {'device': 'cuda:'}, {'precision': 'half'}):
        with pytest.raises(LearnerConfigError, match=next(iter(bad))):
            TrainerConfig(**bad)
    assert TrainerConfig().device == 'auto' and TrainerConfig().precision == 'auto'
    assert TrainerConfig.from_dict({'device': 'cuda:1', 'precision': 'bf16'}).device == 'cuda:1'
    trainer = Trainer(make_policy('mlp', {'chunk_size': 1}))   # 'auto': CUDA when present
    assert trainer.device.type == ('cuda' if torch.cuda.is_available() else 'cpu')
    assert next(trainer.policy.parameters()).device.type == trainer.device.type
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="device 'cuda' is not available"):
            Trainer(make_policy('mlp', {'chunk_size': 1}), TrainerConfig(device='cuda'))
    with pytest.raises(DeviceError, match="'fp16' is not supported on cpu"):
        Trainer(make_policy('mlp', {'chunk_size': 1}),
                TrainerConfig(device='cpu', precision='fp16'))


def test_trainer_mixed_precision_when_asked_on_the_cpu():
    """The autocast path, run for real: bf16 forward, fp32 weights and loss."""
    batch = _fixed_batch()
    policy = make_policy('mlp', {'chunk_size': 2, 'hidden_sizes': [32]}, seed=0)
    trainer = Trainer(policy, TrainerConfig(device='cpu', precision='bf16', lr=3e-3))
    assert trainer.amp_dtype == torch.bfloat16 and trainer.scaler is None
    first = trainer.train_step(batch).loss
    stats = trainer.train_steps(lambda: batch, 60)
    assert np.isfinite(stats.loss_last) and stats.loss_last < 0.5 * first
    assert all(p.dtype == torch.float32 for p in policy.parameters())


def test_trainer_loss_scaler_path():
    """The fp16 step (scaled loss, unscale, clip, scaler step) with a CPU scaler standing in
    for CUDA's: it trains like the plain step."""
    batch = _fixed_batch()
    trainer = Trainer(make_policy('mlp', {'chunk_size': 2, 'hidden_sizes': [32]}, seed=0),
                      TrainerConfig(device='cpu', lr=3e-3))
    trainer.scaler = torch.amp.GradScaler('cpu', init_scale=2.0**10)
    first = trainer.train_step(batch)
    assert np.isfinite(first.grad_norm) and trainer.scaler.get_scale() == 2.0**10
    stats = trainer.train_steps(lambda: batch, 60)
    assert stats.loss_last < 0.5 * first.loss

