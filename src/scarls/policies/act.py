"""'act': an ACT-style (Action Chunking with Transformers) policy.

Architecture (follows the ACT paper, Zhao et al. 2023, with the changes listed below):

* **Backbone**: a ResNet-18 written out here (no torchvision), shared by all cameras. Each
  camera image (uint8, any resolution) is resized in :meth:`ACTPolicy.preprocess` to
  ``image_size`` (H, W), normalised with the ImageNet mean/std and encoded to a stride-32
  feature map, projected to ``hidden_dim`` by a 1x1 conv. Parameter names follow the usual
  ResNet-18 layout (``conv1``, ``bn1``, ``layer1.0.conv1``, ..., ``layer4.1.bn2``,
  ``layerN.0.downsample.{0,1}``), so existing ResNet-18 weights can be loaded with
  :meth:`ACTPolicy.load_backbone_weights` when ``backbone_norm='frozen_batch'`` and
  ``backbone_width=64``.
* **Encoder**: tokens ``[latent, state, camera features ...]``; image tokens get a 2-D sine
  position embedding plus a learned per-camera embedding, the two 1-D tokens a learned one.
* **Decoder**: ``chunk_size`` learned queries attend to the encoder output; a linear head
  gives one ``action_dim`` vector per query.
* **CVAE** (``use_cvae``, on by default): during :meth:`ACTPolicy.loss` a separate transformer
  encodes ``[CLS, state, action chunk]`` into a Gaussian latent ``z`` (``latent_dim``), sampled
  with the reparameterisation trick, and the loss adds ``kl_weight * KL(q(z) || N(0, I))``.
  :meth:`ACTPolicy.forward` and :meth:`ACTPolicy.predict_chunk` always use ``z = 0`` (the prior
  mean), as ACT does at test time, so inference is deterministic. With ``use_cvae=False`` the
  latent token is dropped and :meth:`ACTPolicy.loss` is exactly the contract's loss.

Differences from the reference implementation, for this code base:

* Outputs follow the scarls contract: the head predicts soft-bounded *deltas* from the
  current joint positions (``max_delta``, small ``init_output_gain``) and the policy returns
  absolute targets, like 'mlp' and 'cnn'. Raise ``max_delta`` for long chunks of fast motion.
* The reconstruction term is the contract's mean squared error (``recon_loss='mse'``);
  ``recon_loss='l1'`` selects ACT's L1 loss.
* ``backbone_norm='group'`` (default) uses GroupNorm, which trains from scratch with small
  batches and has no running statistics (so every rank of a fleet holds identical buffers);
  ``'frozen_batch'`` uses fixed BatchNorm statistics for pretrained weights.
* ``dec_layers`` defaults to 1: the reference code configures 7 decoder layers but only the
  first one affects its output.
* The transformer layers add position embeddings once at the input (not in every layer).

``freeze_backbone=True`` sets ``requires_grad=False`` on all backbone parameters (the 1x1
projection stays trainable), so optimisers and fleet all-reduces that use only trainable
parameters skip them; the backbone also stays in eval mode.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from scarls.policies.base import (
    ACTION_KEY,
    CAMERAS,
    Policy,
    PolicyConfig,
    register_policy,
)

__all__ = ['ACTConfig', 'ACTPolicy', 'ResNet18']

_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
_NORMS = ('group', 'frozen_batch')
_RECON_LOSSES = ('mse', 'l1')


@dataclasses.dataclass(frozen=True)
class ACTConfig(PolicyConfig):
    """Config of the 'act' policy (defaults: the ACT paper's sizes, 96x128 images).

    * ``cameras``: camera names, in token order. ``image_size``: ``(H, W)`` the images are
      resized to (each side >= 32).
    * ``backbone_width``: channels of the first ResNet stage (64 = ResNet-18; smaller values
      give a narrower network with the same layout). ``backbone_norm``: ``'group'`` or
      ``'frozen_batch'``. ``freeze_backbone``: do not train the backbone.
    * ``hidden_dim``, ``num_heads``, ``enc_layers``, ``dec_layers``, ``ff_dim``, ``dropout``:
      the transformer.
    * ``use_cvae``, ``latent_dim``, ``cvae_layers``, ``kl_weight``: the CVAE latent.
    * ``recon_loss``: ``'mse'`` (the contract's loss) or ``'l1'`` (ACT's).
    """

    chunk_size: int = 50
    cameras: tuple[str, ...] = CAMERAS
    image_size: tuple[int, ...] = (96, 128)
    backbone_width: int = 64
    backbone_norm: str = 'group'
    freeze_backbone: bool = False
    hidden_dim: int = 512
    num_heads: int = 8
    enc_layers: int = 4
    dec_layers: int = 1
    ff_dim: int = 3200
    dropout: float = 0.1
    use_cvae: bool = True
    latent_dim: int = 32
    cvae_layers: int = 4
    kl_weight: float = 10.0
    recon_loss: str = 'mse'

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(
            len(self.cameras) >= 1 and len(set(self.cameras)) == len(self.cameras),
            'cameras',
            'must be a non-empty list of distinct names',
        )
        self._check(
            len(self.image_size) == 2 and all(s >= 32 for s in self.image_size),
            'image_size',
            'must be [height, width] with both >= 32 (the backbone has stride 32)',
        )
        self._check(self.backbone_width >= 1, 'backbone_width', 'must be >= 1')
        self._check(self.backbone_norm in _NORMS, 'backbone_norm', f'must be one of {_NORMS}')
        self._check(self.hidden_dim >= 1, 'hidden_dim', 'must be >= 1')
        self._check(
            self.num_heads >= 1 and self.hidden_dim % self.num_heads == 0,
            'num_heads',
            f'must be >= 1 and divide hidden_dim ({self.hidden_dim})',
        )
        self._check(self.hidden_dim % 2 == 0, 'hidden_dim', 'must be even (sine embedding)')
        self._check(self.enc_layers >= 1, 'enc_layers', 'must be >= 1')
        self._check(self.dec_layers >= 1, 'dec_layers', 'must be >= 1')
        self._check(self.ff_dim >= 1, 'ff_dim', 'must be >= 1')
        self._check(0.0 <= self.dropout < 1.0, 'dropout', 'must be in [0, 1)')
        self._check(self.latent_dim >= 1, 'latent_dim', 'must be >= 1')
        self._check(self.cvae_layers >= 1, 'cvae_layers', 'must be >= 1')
        self._check(
            math.isfinite(self.kl_weight) and self.kl_weight >= 0, 'kl_weight', 'must be >= 0'
        )
        self._check(
            self.recon_loss in _RECON_LOSSES, 'recon_loss', f'must be one of {_RECON_LOSSES}'
        )
        self._check(
            self.action_dim <= self.state_dim,
            'action_dim',
            f'must be <= state_dim ({self.state_dim}) since actions are deltas from the state',
        )


# -- ResNet-18 -------------------------------------------------------------------------------


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters (all buffers, never trained)."""

    def __init__(self, ch: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.register_buffer('weight', torch.ones(ch))
        self.register_buffer('bias', torch.zeros(ch))
        self.register_buffer('running_mean', torch.zeros(ch))
        self.register_buffer('running_var', torch.ones(ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def _norm(kind: str, ch: int) -> nn.Module:
    if kind == 'frozen_batch':
        return FrozenBatchNorm2d(ch)
    return nn.GroupNorm(math.gcd(32, ch), ch)


class _BasicBlock(nn.Module):
    def __init__(self, ch_in: int, ch: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(ch_in, ch, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, ch)
        self.conv2 = nn.Conv2d(ch, ch, 3, 1, 1, bias=False)
        self.bn2 = _norm(norm, ch)
        self.downsample: nn.Module | None = None
        if stride != 1 or ch_in != ch:
            self.downsample = nn.Sequential(
                nn.Conv2d(ch_in, ch, 1, stride, bias=False), _norm(norm, ch)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return F.relu(out + identity)


class ResNet18(nn.Module):
    """ResNet-18 trunk without pooling/classifier: ``(N, 3, H, W)`` -> ``(N, 8w, H/32, W/32)``."""

    def __init__(self, width: int = 64, norm: str = 'group') -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = _norm(norm, width)
        chans = (width, 2 * width, 4 * width, 8 * width)
        ch_in = width
        for i, ch in enumerate(chans):
            stride = 1 if i == 0 else 2
            layer = nn.Sequential(
                _BasicBlock(ch_in, ch, stride, norm), _BasicBlock(ch, ch, 1, norm)
            )
            self.add_module(f'layer{i + 1}', layer)
            ch_in = ch
        self.out_channels = ch_in
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode='fan_out', nonlinearity='relu')

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.bn1(self.conv1(x))), 3, 2, 1)
        for i in range(1, 5):
            x = getattr(self, f'layer{i}')(x)
        return x


# -- position embeddings ---------------------------------------------------------------------


def _sine_1d(n: int, dim: int, device: torch.device) -> torch.Tensor:
    """``(n, dim)`` sine/cosine embedding of positions ``0..n-1``."""
    pos = torch.arange(n, dtype=torch.float32, device=device)[:, None]
    freq = torch.exp(
        torch.arange(0, dim, 2, dtype=torch.float32, device=device) * (-math.log(10000.0) / dim)
    )
    out = torch.zeros(n, dim, device=device)
    out[:, 0::2] = torch.sin(pos * freq)
    out[:, 1::2] = torch.cos(pos * freq[: dim // 2])
    return out


def _sine_2d(h: int, w: int, dim: int, device: torch.device) -> torch.Tensor:
    """``(h * w, dim)`` DETR-style embedding: half the channels for y, half for x."""
    half = dim // 2
    ey = _sine_1d(h, half, device)[:, None, :].expand(h, w, half)
    ex = _sine_1d(w, dim - half, device)[None, :, :].expand(h, w, dim - half)
    return torch.cat([ey, ex], dim=-1).reshape(h * w, dim)


def _encoder(cfg: ACTConfig, layers: int) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(
        cfg.hidden_dim,
        cfg.num_heads,
        cfg.ff_dim,
        cfg.dropout,
        activation='relu',
        batch_first=True,
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


# -- the policy ------------------------------------------------------------------------------


@register_policy('act')
class ACTPolicy(Policy):
    """Cameras + state -> transformer -> chunk of absolute joint targets (via deltas)."""

    config_cls = ACTConfig

    def __init__(self, config: ACTConfig) -> None:
        super().__init__(config)
        cfg = config
        h = cfg.hidden_dim
        self.register_buffer('state_mean', torch.zeros(cfg.state_dim))
        self.register_buffer('state_std', torch.ones(cfg.state_dim))
        self.register_buffer(
            'pixel_mean', torch.tensor(_IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False
        )
        self.register_buffer(
            'pixel_std', torch.tensor(_IMAGENET_STD).view(1, 3, 1, 1), persistent=False
        )
        self.backbone = ResNet18(cfg.backbone_width, cfg.backbone_norm)
        self.input_proj = nn.Conv2d(self.backbone.out_channels, h, 1)
        self.camera_embed = nn.Parameter(torch.zeros(len(cfg.cameras), h))
        self.state_proj = nn.Linear(cfg.state_dim, h)
        n_1d = 2 if cfg.use_cvae else 1  # [latent,] state
        self.token_pos = nn.Parameter(torch.randn(n_1d, h) * 0.02)
        self.encoder = _encoder(cfg, cfg.enc_layers)
        dec_layer = nn.TransformerDecoderLayer(
            h, cfg.num_heads, cfg.ff_dim, cfg.dropout, activation='relu', batch_first=True
        )
        self.decoder = nn.TransformerDecoder(dec_layer, cfg.dec_layers, norm=nn.LayerNorm(h))
        self.queries = nn.Parameter(torch.randn(cfg.chunk_size, h) * 0.02)
        self.head = nn.Linear(h, cfg.action_dim)
        with torch.no_grad():
            self.head.weight.mul_(cfg.init_output_gain)
            self.head.bias.zero_()
        if cfg.use_cvae:
            self.latent_proj = nn.Linear(cfg.latent_dim, h)
            self.cvae_cls = nn.Parameter(torch.randn(1, h) * 0.02)
            self.cvae_state_proj = nn.Linear(cfg.state_dim, h)
            self.cvae_action_proj = nn.Linear(cfg.action_dim, h)
            self.cvae_encoder = _encoder(cfg, cfg.cvae_layers)
            self.cvae_out = nn.Linear(h, 2 * cfg.latent_dim)
            self.register_buffer(
                'cvae_pos',
                _sine_1d(cfg.chunk_size + 2, h, torch.device('cpu')),
                persistent=False,
            )
        if cfg.freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
            self.backbone.eval()

    # -- training-mode handling / weights ----------------------------------------------------
    def train(self, mode: bool = True) -> ACTPolicy:
        super().train(mode)
        if self.config.freeze_backbone:
            self.backbone.eval()
        return self

    def load_backbone_weights(self, tensors: Mapping[str, torch.Tensor]) -> None:
        """Load ResNet-18 weights into the backbone (strict; ``fc.*`` and
        ``*.num_batches_tracked`` entries are ignored). Keys use the ResNet-18 layout, e.g.
        ``conv1.weight``, ``bn1.running_mean``, ``layer2.0.downsample.0.weight``."""
        own = {
            k: v
            for k, v in tensors.items()
            if not k.startswith('fc.') and not k.endswith('num_batches_tracked')
        }
        try:
            self.backbone.load_state_dict(own, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                'backbone weights do not fit this ACTConfig (ResNet-18 weights need '
                f"backbone_width=64 and backbone_norm='frozen_batch'): {exc}"
            ) from exc

    # -- contract ----------------------------------------------------------------------------
    def _image(self, batch: Mapping[str, torch.Tensor], cam: str, n: int) -> torch.Tensor:
        img = self._camera_image(batch, cam, n)
        x = img.to(self.state_mean.device).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        size = tuple(self.config.image_size)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode='bilinear', antialias=True, align_corners=False)
        return (x - self.pixel_mean) / self.pixel_std

    def preprocess(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Validate and normalise a raw batch; inputs are moved to the policy's device."""
        state = self._state(batch).to(self.state_mean.device)
        n = state.shape[0]
        images = torch.stack([self._image(batch, cam, n) for cam in self.config.cameras], dim=1)
        return {
            'state': state,
            'state_norm': (state - self.state_mean) / self.state_std,
            'images': images,  # (B, C, 3, H, W), ImageNet-normalised
        }

    def _image_tokens(self, images: torch.Tensor) -> torch.Tensor:
        b, c = images.shape[:2]
        feat = self.input_proj(self.backbone(images.flatten(0, 1)))  # (B*C, h, fh, fw)
        _, hd, fh, fw = feat.shape
        tokens = feat.flatten(2).transpose(1, 2).reshape(b, c, fh * fw, hd)
        pos = _sine_2d(fh, fw, hd, feat.device)
        tokens = tokens + pos[None, None] + self.camera_embed[None, :, None, :]
        return tokens.reshape(b, c * fh * fw, hd)

    def _decode(self, inputs: dict[str, torch.Tensor], z: torch.Tensor | None) -> torch.Tensor:
        state_norm = inputs['state_norm']
        b = state_norm.shape[0]
        one_d = [self.state_proj(state_norm)]
        if self.config.use_cvae:
            if z is None:
                z = state_norm.new_zeros(b, self.config.latent_dim)
            one_d.insert(0, self.latent_proj(z))
        one_d_tokens = torch.stack(one_d, dim=1) + self.token_pos[None]
        src = torch.cat([one_d_tokens, self._image_tokens(inputs['images'])], dim=1)
        memory = self.encoder(src)
        tgt = self.queries[None].expand(b, -1, -1)
        out = self.decoder(tgt, memory)  # (B, K, h)
        raw = self.head(out)  # (B, K, D)
        return self._delta_to_targets(raw.reshape(b, -1), inputs['state'])

    def _predict(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._decode(inputs, None)  # CVAE: z = prior mean

    def _posterior(
        self, inputs: dict[str, torch.Tensor], action: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        cfg = self.config
        delta = (action - inputs['state'][:, None, : cfg.action_dim]) / cfg.max_delta
        b = delta.shape[0]
        tokens = torch.cat(
            [
                self.cvae_cls[None].expand(b, -1, -1),
                self.cvae_state_proj(inputs['state_norm'])[:, None],
                self.cvae_action_proj(delta),
            ],
            dim=1,
        )
        out = self.cvae_encoder(tokens + self.cvae_pos[None])[:, 0]
        mu, logvar = self.cvae_out(out).chunk(2, dim=-1)
        return mu, logvar.clamp(-10.0, 10.0)

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Reconstruction loss (+ ``kl_weight * KL`` with the CVAE) against ``batch['action']``.

        With ``use_cvae=False`` and ``recon_loss='mse'`` this is the contract's MSE of
        :meth:`forward`.
        """
        cfg = self.config
        if ACTION_KEY not in batch:
            raise KeyError(f'batch has no {ACTION_KEY!r} key (expected (B, K, D) targets)')
        inputs = self.preprocess(batch)
        b = inputs['state'].shape[0]
        target = batch[ACTION_KEY].to(device=inputs['state'].device, dtype=torch.float32)
        if tuple(target.shape) != (b, cfg.chunk_size, cfg.action_dim):
            raise ValueError(
                f'action target shape {tuple(target.shape)} != '
                f'{(b, cfg.chunk_size, cfg.action_dim)}'
            )
        kl = None
        if cfg.use_cvae:
            mu, logvar = self._posterior(inputs, target)
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
            pred = self._decode(inputs, z)
            kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(-1).mean()
        else:
            pred = self._decode(inputs, None)
        if cfg.recon_loss == 'l1':
            recon = F.l1_loss(pred, target)
        else:
            recon = F.mse_loss(pred, target)
        return recon if kl is None else recon + cfg.kl_weight * kl
