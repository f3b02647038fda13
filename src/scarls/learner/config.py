"""Frozen, validated configuration of the learner's pure core.

Every config is a frozen dataclass whose fields are checked in ``__post_init__``; an invalid
value raises :class:`LearnerConfigError` naming the field. ``from_dict`` builds a config from a
JSON/YAML mapping and rejects unknown keys.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

from scarls.common.device import DEVICES, PRECISIONS, DeviceError, parse_device
from scarls.common.validation import is_int, is_number

__all__ = [
    'LOSSES',
    'LearnerConfigError',
    'LearnerError',
    'MixingConfig',
    'RolloutConfig',
    'TrainerConfig',
]


class LearnerError(Exception):
    """Base class of the errors raised by :mod:`scarls.learner`."""


class LearnerConfigError(LearnerError, ValueError):
    """A learner configuration value is invalid (the message names the field)."""


_C = TypeVar('_C', bound='_Config')

#: Per-entry losses :class:`TrainerConfig` accepts.
LOSSES: tuple[str, ...] = ('mse', 'l1', 'huber')


@dataclasses.dataclass(frozen=True)
class _Config:
    def _fail(self, name: str, what: str) -> None:
        raise LearnerConfigError(
            f'{type(self).__name__}.{name} {what}, got {getattr(self, name)!r}'
        )

    def _positive(self, *names: str, allow_zero: bool = False) -> None:
        for name in names:
            v = getattr(self, name)
            if not is_number(v) or v < 0 or (v == 0 and not allow_zero):
                self._fail(name, 'must be a finite number ' + ('>= 0' if allow_zero else '> 0'))

    def _int_at_least(self, name: str, lo: int) -> None:
        v = getattr(self, name)
        if not is_int(v) or v < lo:
            self._fail(name, f'must be an int >= {lo}')

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any] | None) -> _C:
        """Build from a mapping; unknown keys raise :class:`LearnerConfigError`."""
        if data is None:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise LearnerConfigError(
                f'{cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(known)}'
            )
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in data.items()}
        return cls(**values)


@dataclasses.dataclass(frozen=True)
class TrainerConfig(_Config):
    """Optimisation settings of :class:`scarls.learner.trainer.Trainer`."""

    lr: float = 1e-3
    """AdamW learning rate."""
    weight_decay: float = 1e-4
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW moment decay rates."""
    batch_size: int = 32
    """Samples per gradient step (read by the batch producers, not by the trainer itself)."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0 = no clipping)."""
    normalize_loss: bool = True
    """Divide each chunk entry's error by the policy's per-(step, joint) action scale when the
    policy has one (``action_std`` buffer), so that small joints and the gripper weigh alike."""
    loss: str = 'mse'
    """Per-entry loss on the (normalised) error: ``'mse'``, ``'l1'`` or ``'huber'``. The robust
    ones bound the gradient of each entry, so a few online labels far from what the policy
    predicts cannot dominate the batch."""
    huber_delta: float = 1.0
    """Where ``'huber'`` turns from quadratic to linear (in normalised units)."""
    num_threads: int = 1
    """torch intra-op threads (1 on shared CPUs; 0 leaves the setting alone)."""
    ema_decay: float = 0.0
    """Keep an exponential moving average of the weights with this decay per step (0 = off);
    the average is what gets evaluated and deployed (:meth:`Trainer.deployable`)."""
    device: str = 'auto'
    """Where to train: ``'auto'`` (CUDA when available, else the CPU), ``'cpu'``, ``'cuda'``,
    ``'cuda:N'`` or ``'mps'`` (:func:`scarls.common.device.resolve_device`; a device this machine
    lacks is an error when the trainer is built)."""
    precision: str = 'auto'
    """Mixed precision of the forward pass: ``'auto'`` (on CUDA bf16 when the GPU supports it,
    else fp16 with loss scaling; fp32 on the CPU and MPS), ``'fp32'``, ``'bf16'`` (CUDA or
    CPU) or ``'fp16'`` (CUDA), see :func:`scarls.common.device.resolve_precision`."""

    def __post_init__(self) -> None:
        self._positive('lr')
        self._positive('weight_decay', 'grad_clip', allow_zero=True)
        b = self.betas
        if not (
            isinstance(b, tuple) and len(b) == 2 and all(is_number(x) and 0 <= x < 1 for x in b)
        ):
            self._fail('betas', 'must be two numbers in [0, 1)')
        self._int_at_least('batch_size', 1)
        self._int_at_least('num_threads', 0)
        if self.loss not in LOSSES:
            self._fail('loss', f'must be one of {LOSSES}')
        self._positive('huber_delta')
        if not is_number(self.ema_decay) or not 0.0 <= self.ema_decay < 1.0:
            self._fail('ema_decay', 'must be in [0, 1)')
        if not isinstance(self.normalize_loss, bool):
            self._fail('normalize_loss', 'must be a bool')
        try:
            parse_device(self.device)
        except DeviceError:
            self._fail('device', f"must be one of {DEVICES} ('cuda:N': N = 0, 1, ...)")
        if self.precision not in PRECISIONS:
            self._fail('precision', f'must be one of {PRECISIONS}')


@dataclasses.dataclass(frozen=True)
class MixingConfig(_Config):
    """Online/offline buffer mixing of :class:`scarls.learner.mixing.MixingSampler` (SOP)."""

    alpha: float = 2.0
    """Boost (> 1) of the online buffer's weight while its windowed loss exceeds the offline
    buffer's windowed loss of the same task."""
    online_weight: float | None = None
    """Base share of a task's online buffer (the offline buffer has ``1 - online_weight``);
    None: its share of the task's labelled steps, so a few fresh episodes are not replayed
    dozens of times per round."""
    max_online_share: float = 0.3
    """Cap of the online buffer's share of a task's samples after the boost. Measured: online
    takeover labels at 25 % of the batch left closed-loop success unchanged, at 50-85 % they
    lowered it (docs/BENCHMARKS.md); 1.0 = no cap."""
    window: int = 50
    """Number of most recent loss reports averaged per buffer (sliding window)."""
    balance_tasks: bool = True
    """Give every task with data the same share of a batch (else: share by labelled steps)."""

    def __post_init__(self) -> None:
        if not is_number(self.alpha) or self.alpha < 1.0:
            self._fail('alpha', 'must be a finite number >= 1')
        if self.online_weight is not None and (
            not is_number(self.online_weight) or not 0.0 < self.online_weight < 1.0
        ):
            self._fail('online_weight', 'must be None or in (0, 1)')
        if not is_number(self.max_online_share) or not 0.0 < self.max_online_share <= 1.0:
            self._fail('max_online_share', 'must be in (0, 1]')
        self._int_at_least('window', 1)
        if not isinstance(self.balance_tasks, bool):
            self._fail('balance_tasks', 'must be a bool')


@dataclasses.dataclass(frozen=True)
class RolloutConfig(_Config):
    """How policy episodes run in the simulator (mirrors the actor node)."""

    max_steps: int = 300
    """Episode budget in control ticks (10 s at 30 Hz), as the teleop ``max_steps``."""
    refill_when_remaining: int = 4
    """Request the next chunk when fewer actions remain (the actor's parameter)."""
    latency_ticks: int = 1
    """Ticks between taking an observation and executing its chunk (>= 1 on the real actor,
    whose worker thread delivers a chunk at the earliest on the next tick; 0 = idealised)."""
    image_shape: tuple[int, int] = (96, 128)
    """Camera resolution (H, W) of the simulator."""

    def __post_init__(self) -> None:
        self._int_at_least('max_steps', 1)
        self._int_at_least('refill_when_remaining', 0)
        self._int_at_least('latency_ticks', 0)
        s = self.image_shape
        if not (isinstance(s, tuple) and len(s) == 2 and all(is_int(x) and x >= 16 for x in s)):
            self._fail('image_shape', 'must be (H, W) with ints >= 16')
