from __future__ import annotations

import numpy as np
import pytest
import torch

from scarls.checkpoints import file_sha256, load_checkpoint, save_checkpoint
from scarls.policies import (
    ACTConfig,
    ACTPolicy,
    Observation,
    PolicyConfigError,
    available_policies,
    make_policy,
)
from scarls.policies.act import ResNet18

torch.set_num_threads(1)

CAMS = ('top', 'left', 'right')
TINY = {
    'chunk_size': 6,
    'image_size': [32, 48],
    'backbone_width': 8,
    'hidden_dim': 32,
    'num_heads': 2,
    'enc_layers': 1,
    'dec_layers': 1,
    'ff_dim': 64,
    'latent_dim': 4,
    'cvae_layers': 1,
    'dropout': 0.0,
}


def tiny(**over) -> ACTPolicy:
    policy = make_policy('act', {**TINY, **over}, seed=0)
    assert isinstance(policy, ACTPolicy)
    return policy


def batch(n=4, hw=(40, 56), k=6, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    state = torch.randn(n, 14, generator=g) * 0.5
    out = {'state': state}
    for cam in CAMS:
        out[f'image.{cam}'] = torch.randint(0, 256, (n, *hw, 3), generator=g, dtype=torch.uint8)
    out['action'] = state[:, None, :] + 0.2 * torch.randn(n, k, 14, generator=g)
    return out


def obs(hw=(96, 128)) -> Observation:
    rng = np.random.default_rng(1)
    return Observation(
        images={c: rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for c in CAMS},
        state=(rng.standard_normal(14) * 0.3).astype(np.float32),
    )


def test_registered_with_paper_defaults():
    assert 'act' in available_policies()
    cfg = ACTConfig()
    assert cfg.chunk_size == 50 and cfg.image_size == (96, 128) and cfg.cameras == CAMS
    assert (cfg.hidden_dim, cfg.num_heads, cfg.enc_layers, cfg.use_cvae) == (512, 8, 4, True)
    assert ACTConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ('field', 'value'),
    [
        ('image_size', [16, 64]),
        ('image_size', [64]),
        ('num_heads', 3),
        ('backbone_norm', 'batch'),
        ('recon_loss', 'huber'),
        ('cameras', ['top', 'top']),
        ('dropout', 1.0),
    ],
)
def test_invalid_config_names_the_field(field, value):
    with pytest.raises(PolicyConfigError, match=field):
        ACTConfig.from_dict({field: value})


def test_resnet18_layout_and_stride():
    n_params = sum(p.numel() for p in ResNet18(width=64).parameters())
    assert n_params == 11_176_512  # ResNet-18 without its classifier
    names = set(ResNet18(width=64, norm='frozen_batch').state_dict())
    assert len(names) == 100  # 20 convs + 20 norms x (weight, bias, mean, var)
    assert {
        'conv1.weight',
        'bn1.running_var',
        'layer2.0.downsample.0.weight',
        'layer4.1.bn2.bias',
    } <= names
    small = ResNet18(width=8)
    assert small(torch.zeros(2, 3, 96, 128)).shape == (2, 64, 3, 4)


@pytest.mark.parametrize('use_cvae', [True, False])
def test_shapes_and_predict_chunk(use_cvae):
    policy = tiny(use_cvae=use_cvae)
    b = batch(n=3)
    out = policy(b)
    assert out.shape == (3, 6, 14) and out.requires_grad
    # untrained: targets stay close to the current joint positions
    assert (out - b['state'][:, None]).abs().max() < 0.1
    chunk = policy.predict_chunk(obs())
    assert chunk.shape == (6, 14) and chunk.dtype == np.float32 and np.isfinite(chunk).all()
    np.testing.assert_array_equal(chunk, policy.predict_chunk(obs()))  # z = 0: deterministic
    assert policy.training  # predict_chunk restores the mode


def test_bad_inputs_are_explained():
    policy = tiny()
    b = batch()
    del b['image.left']
    with pytest.raises(KeyError, match="camera 'left'"):
        policy(b)
    b = batch()
    b['image.top'] = b['image.top'].float()
    with pytest.raises(ValueError, match='uint8'):
        policy(b)
    b = batch()
    b['action'] = b['action'][:, :3]
    with pytest.raises(ValueError, match='action target shape'):
        policy.loss(b)


def test_loss_without_cvae_is_the_contract_mse():
    policy = tiny(use_cvae=False).eval()
    b = batch()
    with torch.no_grad():
        expected = torch.nn.functional.mse_loss(policy(b), b['action'])
        assert torch.allclose(policy.loss(b), expected)


@pytest.mark.parametrize('over', [{}, {'use_cvae': False}, {'recon_loss': 'l1'}])
def test_training_reduces_loss_on_fixed_batch(over):
    torch.manual_seed(0)
    policy = tiny(kl_weight=0.1, **over)
    b = batch(n=4)
    opt = torch.optim.Adam(policy.parameters(), lr=2e-3)
    policy.eval()
    with torch.no_grad():
        before = policy.loss(b).item()
    policy.train()
    for _ in range(25):
        opt.zero_grad()
        loss = policy.loss(b)
        loss.backward()
        opt.step()
    policy.eval()
    with torch.no_grad():
        after = policy.loss(b).item()
    assert after < 0.5 * before, (before, after)


def test_cvae_encoder_gets_gradients():
    policy = tiny()
    policy.loss(batch()).backward()
    assert policy.cvae_out.weight.grad is not None
    assert policy.cvae_out.weight.grad.abs().sum() > 0


def test_checkpoint_round_trip(tmp_path):
    policy = tiny()
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01 * torch.randn_like(p))
        policy.set_normalization(torch.full((14,), 0.1), torch.full((14,), 2.0))
    path = tmp_path / 'act.safetensors'
    header = save_checkpoint(path, policy, version=1, metrics={'open_loop_error': 0.2})
    assert header.policy == 'act' and header.policy_config['chunk_size'] == 6
    loaded, _ = load_checkpoint(path, expected_sha256=file_sha256(path))
    assert isinstance(loaded, ACTPolicy) and loaded.config == policy.config
    np.testing.assert_array_equal(loaded.predict_chunk(obs()), policy.predict_chunk(obs()))


def test_frozen_backbone_is_not_trainable():
    policy = tiny(freeze_backbone=True)
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    frozen = {n for n, p in policy.named_parameters() if not p.requires_grad}
    assert frozen and all(n.startswith('backbone.') for n in frozen)
    assert not any(n.startswith('backbone.') for n in trainable)
    assert 'input_proj.weight' in trainable
    assert not policy.train().backbone.training
    before = {k: v.clone() for k, v in policy.backbone.state_dict().items()}
    opt = torch.optim.Adam([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    policy.loss(batch()).backward()
    opt.step()
    after = policy.backbone.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    # still a valid checkpoint: frozen weights are saved too
    full = tiny()
    assert set(policy.state_dict()) == set(full.state_dict())


def test_load_backbone_weights():
    src = tiny(backbone_norm='frozen_batch')
    dst = tiny(backbone_norm='frozen_batch', freeze_backbone=True)
    weights = dict(src.backbone.state_dict())
    weights['fc.weight'] = torch.zeros(10, 64)
    weights['bn1.num_batches_tracked'] = torch.tensor(0)
    dst.load_backbone_weights(weights)
    assert torch.equal(dst.backbone.conv1.weight, src.backbone.conv1.weight)
    with pytest.raises(ValueError, match='backbone_width=64'):
        tiny(backbone_width=16, backbone_norm='frozen_batch').load_backbone_weights(weights)
