"""'cnn': a small convolutional policy over the three cameras plus the joint state.

Each camera image (uint8, any resolution) is resized inside :meth:`CNNPolicy.preprocess` to
``image_size x image_size`` with antialiased bilinear interpolation, scaled to [-1, 1] and
encoded by one shared conv encoder; the per-camera features, a learned camera embedding and
the normalised state feed an MLP head that predicts a chunk of deltas from the current joint
positions (output: absolute targets). About 1 M parameters with the defaults; trains on CPU.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from scarls.policies.base import CAMERAS, Policy, PolicyConfig, register_policy

__all__ = ['CNNConfig', 'CNNPolicy']


@dataclasses.dataclass(frozen=True)
class CNNConfig(PolicyConfig):
    """Config of the 'cnn' policy."""

    cameras: tuple[str, ...] = CAMERAS
    image_size: int = 64
    channels: tuple[int, ...] = (32, 64, 128, 128)
    feature_dim: int = 128
    hidden_dim: int = 512

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(
            len(self.cameras) >= 1 and len(set(self.cameras)) == len(self.cameras),
            'cameras',
            'must be a non-empty list of distinct names',
        )
        self._check(self.image_size >= 16, 'image_size', 'must be >= 16')
        self._check(
            len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
            'channels',
            'must be a non-empty list of positive channel counts',
        )
        self._check(
            self.image_size % (2 ** len(self.channels)) == 0,
            'image_size',
            f'must be divisible by 2**len(channels) = {2 ** len(self.channels)}',
        )
        self._check(self.feature_dim >= 1, 'feature_dim', 'must be >= 1')
        self._check(self.hidden_dim >= 1, 'hidden_dim', 'must be >= 1')
        self._check(
            self.action_dim <= self.state_dim,
            'action_dim',
            f'must be <= state_dim ({self.state_dim}) since actions are deltas from the state',
        )


def _group_norm(ch: int) -> nn.GroupNorm:
    groups = 8 if ch % 8 == 0 else 1
    return nn.GroupNorm(groups, ch)


@register_policy('cnn')
class CNNPolicy(Policy):
    """Cameras + state -> chunk of absolute joint targets (via deltas)."""

    config_cls = CNNConfig

    def __init__(self, config: CNNConfig) -> None:
        super().__init__(config)
        cfg = config
        self.register_buffer('state_mean', torch.zeros(cfg.state_dim))
        self.register_buffer('state_std', torch.ones(cfg.state_dim))
        convs: list[nn.Module] = []
        ch_in = 3
        for i, ch in enumerate(cfg.channels):
            k = 5 if i == 0 else 3
            convs += [
                nn.Conv2d(ch_in, ch, k, stride=2, padding=k // 2),
                _group_norm(ch),
                nn.GELU(),
            ]
            ch_in = ch
        side = cfg.image_size // (2 ** len(cfg.channels))
        self.encoder = nn.Sequential(
            *convs, nn.Flatten(), nn.Linear(ch_in * side * side, cfg.feature_dim), nn.GELU()
        )
        self.camera_embedding = nn.Parameter(torch.zeros(len(cfg.cameras), cfg.feature_dim))
        head = nn.Linear(cfg.hidden_dim, cfg.chunk_size * cfg.action_dim)
        with torch.no_grad():
            head.weight.mul_(cfg.init_output_gain)
            head.bias.zero_()
        self.head = nn.Sequential(
            nn.Linear(len(cfg.cameras) * cfg.feature_dim + cfg.state_dim, cfg.hidden_dim),
            nn.GELU(),
            nn.Linear(cfg.hidden_dim, cfg.hidden_dim),
            nn.GELU(),
            head,
        )

    def _image(self, batch: Mapping[str, torch.Tensor], cam: str, n: int) -> torch.Tensor:
        img = self._camera_image(batch, cam, n)
        x = img.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        size = self.config.image_size
        if x.shape[-2:] != (size, size):
            x = F.interpolate(
                x, size=(size, size), mode='bilinear', antialias=True, align_corners=False
            )
        return x * 2.0 - 1.0

    def preprocess(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = self._state(batch)
        n = state.shape[0]
        images = torch.stack([self._image(batch, cam, n) for cam in self.config.cameras], dim=1)
        return {
            'state': state,
            'state_norm': (state - self.state_mean) / self.state_std,
            'images': images,  # (B, C, 3, S, S) in [-1, 1]
        }

    def _predict(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        images = inputs['images']
        b, c = images.shape[:2]
        feats = self.encoder(images.flatten(0, 1)).view(b, c, -1) + self.camera_embedding
        x = torch.cat([feats.flatten(1), inputs['state_norm']], dim=1)
        return self._delta_to_targets(self.head(x), inputs['state'])
