"""'mlp': a state-only low-dimensional policy.

An MLP over the normalised joint state predicts a chunk of *deltas* from the current joint
positions; the output is the chunk of absolute targets ``state + delta`` (delta soft-bounded
by ``max_delta``). The last layer starts small (``init_output_gain``), so an untrained policy
stays close to the current pose.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import nn

from scarls.policies.base import Policy, PolicyConfig, register_policy

__all__ = ['MLPConfig', 'MLPPolicy']


@dataclasses.dataclass(frozen=True)
class MLPConfig(PolicyConfig):
    """Config of the 'mlp' policy: hidden layer widths."""

    hidden_sizes: tuple[int, ...] = (256, 256)

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check(
            len(self.hidden_sizes) >= 1 and all(h >= 1 for h in self.hidden_sizes),
            'hidden_sizes',
            'must be a non-empty list of positive widths',
        )
        self._check(
            self.action_dim <= self.state_dim,
            'action_dim',
            f'must be <= state_dim ({self.state_dim}) since actions are deltas from the state',
        )


def _small_init(layer: nn.Linear, gain: float) -> None:
    with torch.no_grad():
        layer.weight.mul_(gain)
        layer.bias.zero_()


@register_policy('mlp')
class MLPPolicy(Policy):
    """State -> chunk of absolute joint targets (via deltas)."""

    config_cls = MLPConfig

    def __init__(self, config: MLPConfig) -> None:
        super().__init__(config)
        cfg = config
        self.register_buffer('state_mean', torch.zeros(cfg.state_dim))
        self.register_buffer('state_std', torch.ones(cfg.state_dim))
        layers: list[nn.Module] = []
        width = cfg.state_dim
        for h in cfg.hidden_sizes:
            layers += [nn.Linear(width, h), nn.GELU()]
            width = h
        head = nn.Linear(width, cfg.chunk_size * cfg.action_dim)
        _small_init(head, cfg.init_output_gain)
        self.net = nn.Sequential(*layers, head)

    def preprocess(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        state = self._state(batch)
        return {'state': state, 'state_norm': (state - self.state_mean) / self.state_std}

    def _predict(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        return self._delta_to_targets(self.net(inputs['state_norm']), inputs['state'])
