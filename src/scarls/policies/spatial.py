"""'spatial': a small keypoint policy (conv trunk + spatial softmax) for CPU training.

Each camera image (uint8, any resolution) is optionally average-pooled by ``pool``, scaled to
[-1, 1] and passed through one shared, shallow conv trunk; a 1x1 conv turns the features into
``keypoints`` heat maps whose spatial softmax (its temperature is the 1x1 conv's scale) gives
the expected image coordinates ``(x, y)`` in [-1, 1] of every keypoint. The keypoints of all
cameras and the normalised joint state feed an MLP that predicts a chunk of *normalised*
deltas from the current joint positions; ``action_mean`` / ``action_std`` (per chunk step and
joint, set from data with :meth:`SpatialPolicy.set_action_normalization`) scale them back to
radians, and the output is ``state + max_delta * tanh(delta / max_delta)``. The grippers
(``absolute_joints``) are predicted as absolute targets instead (no soft bound).

The trunk keeps full spatial resolution after an optional first stride, so a small object (a
4 cm cube is 2-5 pixels at 96x128) stays localisable to a fraction of a pixel, at a few
million multiply-adds per image: this is what makes it trainable on a CPU in minutes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from scarls.policies.base import CAMERAS, Policy, PolicyConfig, register_policy

__all__ = ['SpatialConfig', 'SpatialPolicy', 'spatial_softmax']


@dataclasses.dataclass(frozen=True)
class SpatialConfig(PolicyConfig):
    """Config of the 'spatial' policy.

    * ``cameras``: camera names read from the batch (``image.<camera>``).
    * ``pool``: average-pool factor applied to the images first (1 = native resolution).
    * ``channels``: conv trunk widths; the first conv is ``first_kernel`` square with stride
      ``first_stride``, the others 3x3 with stride 1.
    * ``first_stride``: stride of the first conv (1 or 2).
    * ``first_kernel``: kernel size of the first conv (odd).
    * ``keypoints``: keypoints per camera (1x1 conv maps + spatial softmax).
    * ``hidden_dim`` / ``hidden_layers``: the MLP head.
    * ``absolute_joints``: action indices predicted as absolute targets instead of deltas from
      the state (default: the two grippers). A delta of ~0 holds a gripper wherever it is, so
      small errors accumulate (a held cube slowly slips out); an absolute target pulls it back.
    * ``absolute_init``: target of the absolute joints before action statistics are fitted
      (1.0: grippers open, as in the home pose).
    """

    cameras: tuple[str, ...] = CAMERAS
    pool: int = 1
    channels: tuple[int, ...] = (16, 16)
    first_stride: int = 2
    first_kernel: int = 5
    keypoints: int = 16
    hidden_dim: int = 256
    hidden_layers: int = 2
    max_delta: float = 1.0
    absolute_joints: tuple[int, ...] = (6, 13)
    absolute_init: float = 1.0

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(
            len(self.cameras) >= 1 and len(set(self.cameras)) == len(self.cameras),
            'cameras',
            'must be a non-empty list of distinct names',
        )
        self._check(self.pool >= 1, 'pool', 'must be >= 1')
        self._check(
            len(self.channels) >= 1 and all(c >= 1 for c in self.channels),
            'channels',
            'must be a non-empty list of positive channel counts',
        )
        self._check(self.first_stride in (1, 2), 'first_stride', 'must be 1 or 2')
        self._check(
            self.first_kernel >= 1 and self.first_kernel % 2 == 1, 'first_kernel', 'must be odd'
        )
        self._check(self.keypoints >= 1, 'keypoints', 'must be >= 1')
        self._check(self.hidden_dim >= 1, 'hidden_dim', 'must be >= 1')
        self._check(self.hidden_layers >= 1, 'hidden_layers', 'must be >= 1')
        self._check(
            self.action_dim <= self.state_dim,
            'action_dim',
            f'must be <= state_dim ({self.state_dim}) since actions are deltas from the state',
        )
        self._check(
            len(set(self.absolute_joints)) == len(self.absolute_joints)
            and all(0 <= j < self.action_dim for j in self.absolute_joints),
            'absolute_joints',
            f'must be distinct action indices in [0, {self.action_dim})',
        )


def spatial_softmax(logits: torch.Tensor) -> torch.Tensor:
    """``(N, K, H, W)`` logits -> ``(N, K, 2)`` expected ``(x, y)`` in [-1, 1]."""
    n, k, h, w = logits.shape
    prob = torch.softmax(logits.reshape(n * k, h * w), dim=-1)
    ys, xs = torch.meshgrid(
        torch.linspace(-1.0, 1.0, h, dtype=logits.dtype, device=logits.device),
        torch.linspace(-1.0, 1.0, w, dtype=logits.dtype, device=logits.device),
        indexing='ij',
    )
    grid = torch.stack((xs.reshape(-1), ys.reshape(-1)), dim=1)  # (H * W, 2)
    return (prob @ grid).view(n, k, 2)


@register_policy('spatial')
class SpatialPolicy(Policy):
    """Cameras (keypoints) + state -> chunk of absolute joint targets (via deltas)."""

    config_cls = SpatialConfig

    def __init__(self, config: SpatialConfig) -> None:
        super().__init__(config)
        cfg = config
        self.register_buffer('state_mean', torch.zeros(cfg.state_dim))
        self.register_buffer('state_std', torch.ones(cfg.state_dim))
        self.register_buffer('action_mean', torch.zeros(cfg.chunk_size, cfg.action_dim))
        self.register_buffer('action_std', torch.ones(cfg.chunk_size, cfg.action_dim))
        relative = torch.ones(cfg.action_dim)
        relative[list(cfg.absolute_joints)] = 0.0
        self.register_buffer('relative_mask', relative, persistent=False)
        with torch.no_grad():
            self.action_mean[:, list(cfg.absolute_joints)] = cfg.absolute_init
        layers: list[nn.Module] = []
        ch_in = 3
        for i, ch in enumerate(cfg.channels):
            k, s = (cfg.first_kernel, cfg.first_stride) if i == 0 else (3, 1)
            layers += [nn.Conv2d(ch_in, ch, k, stride=s, padding=k // 2), nn.ReLU()]
            ch_in = ch
        layers.append(nn.Conv2d(ch_in, cfg.keypoints, 1))
        self.trunk = nn.Sequential(*layers)
        width = len(cfg.cameras) * cfg.keypoints * 2 + cfg.state_dim
        mlp: list[nn.Module] = []
        for _ in range(cfg.hidden_layers):
            mlp += [nn.Linear(width, cfg.hidden_dim), nn.GELU()]
            width = cfg.hidden_dim
        head = nn.Linear(width, cfg.chunk_size * cfg.action_dim)
        with torch.no_grad():
            head.weight.mul_(cfg.init_output_gain)
            head.bias.zero_()
        self.head = nn.Sequential(*mlp, head)

    def delta_reference(self, state: torch.Tensor) -> torch.Tensor:
        """``(B, D)`` reference the predicted deltas are added to: the current joints, except
        0 for the ``absolute_joints``."""
        return state[:, : self.config.action_dim] * self.relative_mask

    def set_action_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the (K, D) delta normalisation (stored in the checkpoint); std floored at 1e-6."""
        with torch.no_grad():
            self.action_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.action_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def preprocess(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = self._state(batch)
        n = state.shape[0]
        images = torch.stack([self._camera_image(batch, c, n) for c in self.config.cameras], dim=1)
        # convert while channels-last (contiguous), then view as NCHW: 2-5x cheaper than
        # converting the permuted uint8 tensor.
        x = (images.flatten(0, 1).to(torch.float32) * (2.0 / 255.0) - 1.0).permute(0, 3, 1, 2)
        if self.config.pool > 1:
            x = F.avg_pool2d(x, self.config.pool, ceil_mode=True)
        return {
            'state': state,
            'state_norm': (state - self.state_mean) / self.state_std,
            'images': x,  # (B * C, 3, H, W) in [-1, 1]
        }

    def keypoints(self, inputs: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Model inputs -> ``(B, C * keypoints, 2)`` image coordinates in [-1, 1]."""
        kp = spatial_softmax(self.trunk(inputs['images']))
        b = inputs['state'].shape[0]
        return kp.view(b, -1, 2)

    def _predict(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        cfg = self.config
        kp = self.keypoints(inputs)
        x = torch.cat([kp.flatten(1), inputs['state_norm']], dim=1)
        raw = self.head(x).view(-1, cfg.chunk_size, cfg.action_dim)
        delta = raw * self.action_std + self.action_mean
        bounded = cfg.max_delta * torch.tanh(delta / cfg.max_delta)
        delta = torch.where(self.relative_mask > 0, bounded, delta)
        return self.delta_reference(inputs['state'])[:, None, :] + delta
