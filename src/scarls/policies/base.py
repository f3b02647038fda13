"""Policy plug-in interface: observations, configs, the :class:`Policy` base class, registry.

A policy is a :class:`torch.nn.Module` that maps an observation to a *chunk* of ``K`` absolute
joint targets of dimension ``D`` (14 for the dual-arm robot: left arm 6 + left gripper +
right arm 6 + right gripper).

Batches (training and inference use the same keys and the same :meth:`Policy.preprocess`):

* ``'state'``: float tensor ``(B, state_dim)`` - current joint positions.
* ``'image.<camera>'``: uint8 tensor ``(B, H, W, 3)`` per camera (RGB, any resolution; all
  samples of one batch share a resolution). See :func:`image_key`.
* ``'action'``: float tensor ``(B, K, D)`` - training target, only read by :meth:`Policy.loss`.

:meth:`Policy.forward` is for training (``(B, K, D)`` tensor with grad); :meth:`Policy.
predict_chunk` is for the actor (one :class:`Observation` -> ``(K, D)`` float32 array, no grad,
eval mode).

Register a new policy type with :func:`register_policy`; build one with :func:`make_policy`.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch
from torch import nn

__all__ = [
    'ACTION_KEY',
    'CAMERAS',
    'IMAGE_KEY_PREFIX',
    'NUM_JOINTS',
    'STATE_KEY',
    'DuplicatePolicy',
    'Observation',
    'Policy',
    'PolicyConfig',
    'PolicyConfigError',
    'UnknownPolicy',
    'available_policies',
    'get_policy_class',
    'image_key',
    'make_policy',
    'observation_to_batch',
    'register_policy',
]

NUM_JOINTS = 14
CAMERAS: tuple[str, ...] = ('top', 'left', 'right')
STATE_KEY = 'state'
ACTION_KEY = 'action'
IMAGE_KEY_PREFIX = 'image.'


def image_key(camera: str) -> str:
    """Batch key of a camera's images, e.g. ``'image.top'``."""
    return IMAGE_KEY_PREFIX + camera


class PolicyConfigError(ValueError):
    """A policy configuration is invalid (the message names the field)."""


class UnknownPolicy(KeyError):
    """No policy is registered under the requested name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


class DuplicatePolicy(ValueError):
    """A policy name was registered twice."""


@dataclasses.dataclass(frozen=True)
class Observation:
    """One observation of the robot.

    ``images`` maps camera name to a uint8 ``(H, W, 3)`` RGB array (any resolution);
    ``state`` is the float32 joint-position vector (converted on construction).
    """

    images: Mapping[str, np.ndarray]
    state: np.ndarray

    def __post_init__(self) -> None:
        state = np.asarray(self.state, dtype=np.float32)
        if state.ndim != 1:
            raise ValueError(f'Observation.state must be 1-D, got shape {state.shape}')
        if not np.isfinite(state).all():
            raise ValueError('Observation.state contains NaN or inf')
        object.__setattr__(self, 'state', state)
        images = dict(self.images)
        for cam, img in images.items():
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
                raise ValueError(f'image {cam!r} must be a uint8 numpy array')
            if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
                raise ValueError(f'image {cam!r} must have shape (H, W, 3), got {img.shape}')
        object.__setattr__(self, 'images', images)


def observation_to_batch(obs: Observation) -> dict[str, torch.Tensor]:
    """Turn one observation into a batch of size 1 (see the module docstring for keys)."""
    batch = {STATE_KEY: torch.from_numpy(obs.state.copy()).unsqueeze(0)}
    for cam, img in obs.images.items():
        batch[image_key(cam)] = torch.from_numpy(np.ascontiguousarray(img)).unsqueeze(0)
    return batch


_C = TypeVar('_C', bound='PolicyConfig')


def _coerce(name: str, value: Any, annotation: Any) -> Any:
    """Convert a JSON value to the declared field type, or raise PolicyConfigError."""
    origin = typing.get_origin(annotation)
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str):
            return value
    elif origin is tuple:
        (item_type, _) = typing.get_args(annotation)
        if isinstance(value, (list, tuple)):
            return tuple(_coerce(f'{name}[]', v, item_type) for v in value)
    elif origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(name, value, arg)
            except PolicyConfigError:
                continue
    else:
        return value
    raise PolicyConfigError(f'config field {name!r}: expected {annotation}, got {value!r}')


@dataclasses.dataclass(frozen=True)
class PolicyConfig:
    """Fields shared by all policies. Subclasses add their own (all JSON-serialisable).

    * ``chunk_size``: K, actions predicted per inference.
    * ``action_dim`` / ``state_dim``: D and the state length (14 for the dual-arm robot).
    * ``max_delta``: bound on |target - current state| per joint (rad), soft (tanh).
    * ``init_output_gain``: scale of the last layer at initialisation, so an untrained
      policy drifts slowly instead of slamming the joints.
    """

    chunk_size: int = 10
    action_dim: int = NUM_JOINTS
    state_dim: int = NUM_JOINTS
    max_delta: float = 0.5
    init_output_gain: float = 0.01

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _coerce(f.name, getattr(self, f.name), hints[f.name]))
        self._check(self.chunk_size >= 1, 'chunk_size', 'must be >= 1')
        self._check(self.action_dim >= 1, 'action_dim', 'must be >= 1')
        self._check(self.state_dim >= 1, 'state_dim', 'must be >= 1')
        self._check(
            math.isfinite(self.max_delta) and self.max_delta > 0, 'max_delta', 'must be > 0'
        )
        self._check(
            math.isfinite(self.init_output_gain) and self.init_output_gain > 0,
            'init_output_gain',
            'must be > 0',
        )

    def _check(self, ok: bool, name: str, what: str) -> None:
        if not ok:
            raise PolicyConfigError(
                f'{type(self).__name__}.{name} {what}, got {getattr(self, name)!r}'
            )

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (tuples become lists)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    @classmethod
    def from_dict(cls: type[_C], data: Mapping[str, Any] | None) -> _C:
        """Build from a dict; unknown keys or wrong types raise :class:`PolicyConfigError`.

        Missing keys take their defaults.
        """
        if data is None:
            return cls()
        if not isinstance(data, Mapping):
            raise PolicyConfigError(f'{cls.__name__}: expected a mapping, got {type(data)}')
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise PolicyConfigError(
                f'{cls.__name__}: unknown field(s) {unknown}; known fields: {sorted(known)}'
            )
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise PolicyConfigError(f'{cls.__name__}: {exc}') from exc


class Policy(nn.Module):
    """Base class of all policies.

    Subclasses set ``config_cls``, implement :meth:`preprocess` (raw batch -> model inputs)
    and :meth:`_predict` (model inputs -> ``(B, K, D)`` absolute targets). The registry sets
    ``name``.
    """

    name: ClassVar[str] = ''
    config_cls: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(self, config: PolicyConfig) -> None:
        super().__init__()
        if not isinstance(config, self.config_cls):
            raise PolicyConfigError(
                f'{type(self).__name__} needs a {self.config_cls.__name__}, got {type(config)}'
            )
        self.config = config

    @property
    def chunk_size(self) -> int:
        """K: actions per predicted chunk."""
        return self.config.chunk_size

    @property
    def action_dim(self) -> int:
        """D: dimension of one action."""
        return self.config.action_dim

    def preprocess(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Convert a raw batch into model inputs (shared by training and inference)."""
        raise NotImplementedError

    def _predict(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Raw batch -> ``(B, K, D)`` absolute joint targets."""
        return self._predict(self.preprocess(batch))

    def loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Mean squared error between ``forward(batch)`` and ``batch['action']``."""
        if ACTION_KEY not in batch:
            raise KeyError(f'batch has no {ACTION_KEY!r} key (expected (B, K, D) targets)')
        pred = self.forward(batch)
        target = batch[ACTION_KEY].to(pred.dtype)
        if target.shape != pred.shape:
            raise ValueError(f'action target shape {tuple(target.shape)} != {tuple(pred.shape)}')
        return torch.nn.functional.mse_loss(pred, target)

    def predict_chunk(self, obs: Observation) -> np.ndarray:
        """One observation -> ``(K, D)`` float32 targets (eval mode, no grad)."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                out = self.forward(observation_to_batch(obs))
        finally:
            self.train(was_training)
        return out[0].detach().cpu().numpy().astype(np.float32, copy=True)

    # -- helpers for subclasses --------------------------------------------------------
    def set_normalization(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Set the state normalisation (the ``state_mean``/``state_std`` buffers a subclass
        registers, so it is stored in the checkpoint); std is floored at 1e-6."""
        if not hasattr(self, 'state_mean') or not hasattr(self, 'state_std'):
            raise NotImplementedError(f'{self.name} policy has no state normalisation')
        with torch.no_grad():
            self.state_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
            self.state_std.copy_(torch.as_tensor(std, dtype=torch.float32).clamp_min(1e-6))

    def _camera_image(self, batch: Mapping[str, torch.Tensor], cam: str, n: int) -> torch.Tensor:
        """The ``(n, H, W, 3)`` uint8 image of camera ``cam``, with a clear error when it is
        missing or malformed."""
        key = image_key(cam)
        if key not in batch:
            raise KeyError(
                f'{self.name} policy needs camera {cam!r} (batch key {key!r}); got keys '
                f'{sorted(batch)}'
            )
        img = batch[key]
        if img.dtype != torch.uint8 or img.ndim != 4 or img.shape[-1] != 3 or img.shape[0] != n:
            raise ValueError(
                f'{key} must be a uint8 tensor of shape ({n}, H, W, 3), '
                f'got {img.dtype} {tuple(img.shape)}'
            )
        return img

    def _state(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        if STATE_KEY not in batch:
            raise KeyError(f'batch has no {STATE_KEY!r} key (expected (B, state_dim) floats)')
        state = batch[STATE_KEY].to(torch.float32)
        if state.ndim != 2 or state.shape[1] != self.config.state_dim:
            raise ValueError(
                f'{self.name}: state must have shape (B, {self.config.state_dim}), '
                f'got {tuple(state.shape)}'
            )
        return state

    def _delta_to_targets(self, raw: torch.Tensor, state: torch.Tensor) -> torch.Tensor:
        """``raw (B, K*D)`` -> absolute targets ``state[:, :D] + soft-bounded delta``."""
        cfg = self.config
        delta = raw.view(-1, cfg.chunk_size, cfg.action_dim)
        delta = cfg.max_delta * torch.tanh(delta / cfg.max_delta)
        return state[:, None, : cfg.action_dim] + delta


_REGISTRY: dict[str, type[Policy]] = {}

_P = TypeVar('_P', bound=type[Policy])


def register_policy(name: str) -> Callable[[_P], _P]:
    """Class decorator registering a :class:`Policy` subclass under ``name``.

    Registering a name twice raises :class:`DuplicatePolicy`.
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f'policy name must be a non-empty string, got {name!r}')

    def deco(cls: _P) -> _P:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f'@register_policy({name!r}) needs a Policy subclass, got {cls!r}')
        if name in _REGISTRY:
            raise DuplicatePolicy(
                f'a policy named {name!r} is already registered ({_REGISTRY[name].__name__}); '
                'choose another name'
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_policies() -> tuple[str, ...]:
    """Registered policy names, sorted."""
    return tuple(sorted(_REGISTRY))


def get_policy_class(name: str) -> type[Policy]:
    """The class registered under ``name``; raise :class:`UnknownPolicy` if none."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise UnknownPolicy(
            f'no policy named {name!r}; available: {list(available_policies())}'
        ) from None


def make_policy(
    name: str, config: Mapping[str, Any] | PolicyConfig | None = None, seed: int = 0
) -> Policy:
    """Build policy ``name`` from ``config`` (dict or config object, None: defaults).

    The random initialisation depends only on ``seed`` (the global torch RNG is untouched).
    """
    cls = get_policy_class(name)
    cfg = config if isinstance(config, PolicyConfig) else cls.config_cls.from_dict(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        policy = cls(cfg)
    return policy
