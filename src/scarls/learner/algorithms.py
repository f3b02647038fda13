"""Post-training algorithms as per-step label weights (registry: ``bc``, ``hg_dagger``).

An algorithm decides which recorded steps are training labels and how much each weighs,
from what an episode carries: its per-step ``intervention`` flags, its ``outcome`` and its
``source`` (``'offline'``: demonstrations; ``'online'``: episodes an ECU recorded with the
policy in the loop). The sampler draws steps in proportion to these weights; steps with weight
0 are never drawn, and chunk targets that fall on them are masked out of the loss.

* ``bc`` - behaviour cloning: every step of every demonstration and of every *successful*
  online episode (whoever was in control).
* ``hg_dagger`` - HG-DAgger: only expert-labelled steps: all demonstration steps and the online
  steps where the human was in control. Steps the policy executed are not labels, whatever
  the outcome.

Add one with ``@register_algorithm('<name>')`` on a :class:`Algorithm` subclass.

:func:`stale_human_steps` finds takeover steps whose command merely repeats the previous one
(the operator's device had not answered the new state yet when the control tick ran): they are
not the human's answer to that step's observation, so the learner does not use them as labels.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar, TypeVar

import numpy as np

from scarls.episodes import OUTCOMES
from scarls.learner.config import LearnerError

__all__ = [
    'SOURCES',
    'Algorithm',
    'BehaviourCloning',
    'DuplicateAlgorithm',
    'HGDagger',
    'UnknownAlgorithm',
    'available_algorithms',
    'make_algorithm',
    'register_algorithm',
    'stale_human_steps',
]

#: Where an episode comes from.
SOURCES: tuple[str, ...] = ('offline', 'online')


def stale_human_steps(intervention: np.ndarray, action: np.ndarray) -> np.ndarray:
    """``(T,)`` bool: steps under takeover (also the step before) whose action equals the
    previous step's action exactly - a command re-sent for a newer state, i.e. a false "hold"
    label. The first step of an episode is never stale."""
    flags = np.asarray(intervention, dtype=bool)
    act = np.asarray(action)
    if flags.ndim != 1 or act.ndim != 2 or act.shape[0] != flags.shape[0]:
        raise ValueError(f'intervention (T,) and action (T, D) must match, got {flags.shape} '
                         f'and {act.shape}')
    out = np.zeros(flags.shape, dtype=bool)
    if flags.shape[0] > 1:
        same = np.all(act[1:] == act[:-1], axis=1)
        out[1:] = flags[1:] & flags[:-1] & same
    return out


class UnknownAlgorithm(LearnerError, KeyError):
    """No algorithm is registered under the requested name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


class DuplicateAlgorithm(LearnerError, ValueError):
    """An algorithm name was registered twice."""


class Algorithm:
    """Base class: turns an episode's flags into per-step label weights."""

    name: ClassVar[str] = ''

    def step_weights(
        self, intervention: np.ndarray, outcome: str, source: str
    ) -> np.ndarray:
        """Label weight (>= 0) of every step, shape ``(T,)`` float32.

        Raises:
            ValueError: ``intervention`` is not 1-D, or ``outcome`` / ``source`` is unknown.
        """
        flags = np.asarray(intervention)
        if flags.ndim != 1:
            raise ValueError(f'intervention must be a 1-D array of flags, got shape {flags.shape}')
        if outcome not in OUTCOMES:
            raise ValueError(f'outcome must be one of {OUTCOMES}, got {outcome!r}')
        if source not in SOURCES:
            raise ValueError(f'source must be one of {SOURCES}, got {source!r}')
        return np.asarray(self._weights(flags.astype(bool), outcome, source), dtype=np.float32)

    def _weights(self, intervention: np.ndarray, outcome: str, source: str) -> np.ndarray:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f'{type(self).__name__}()'


_REGISTRY: dict[str, type[Algorithm]] = {}
_A = TypeVar('_A', bound=type[Algorithm])


def register_algorithm(name: str) -> Callable[[_A], _A]:
    """Class decorator registering an :class:`Algorithm` subclass under ``name``."""
    if not isinstance(name, str) or not name:
        raise ValueError(f'algorithm name must be a non-empty string, got {name!r}')

    def deco(cls: _A) -> _A:
        if not (isinstance(cls, type) and issubclass(cls, Algorithm)):
            raise TypeError(f'@register_algorithm({name!r}) needs an Algorithm subclass')
        if name in _REGISTRY:
            raise DuplicateAlgorithm(
                f'an algorithm named {name!r} is already registered '
                f'({_REGISTRY[name].__name__}); choose another name'
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_algorithms() -> tuple[str, ...]:
    """Registered algorithm names, sorted."""
    return tuple(sorted(_REGISTRY))


def make_algorithm(name: str, **kwargs: Any) -> Algorithm:
    """Build the algorithm registered under ``name``."""
    try:
        cls = _REGISTRY[name]
    except KeyError:
        raise UnknownAlgorithm(
            f'no algorithm named {name!r}; available: {list(available_algorithms())}'
        ) from None
    return cls(**kwargs)


@register_algorithm('bc')
class BehaviourCloning(Algorithm):
    """All steps of demonstrations and of successful online episodes, weight 1."""

    def _weights(self, intervention: np.ndarray, outcome: str, source: str) -> np.ndarray:
        keep = source == 'offline' or outcome == 'success'
        return np.full(intervention.shape, 1.0 if keep else 0.0)


@register_algorithm('hg_dagger')
class HGDagger(Algorithm):
    """Expert-labelled steps only: demonstrations, and online steps under human control.

    ``online_weight`` scales the online intervention steps against the demonstration steps
    (1 = equal per-step weight).
    """

    def __init__(self, online_weight: float = 1.0) -> None:
        if not (isinstance(online_weight, (int, float)) and 0 < online_weight < float('inf')):
            raise ValueError(f'online_weight must be a finite number > 0, got {online_weight!r}')
        self.online_weight = float(online_weight)

    def _weights(self, intervention: np.ndarray, outcome: str, source: str) -> np.ndarray:
        if source == 'offline':
            return np.ones(intervention.shape)
        return intervention.astype(np.float64) * self.online_weight

    def __repr__(self) -> str:
        return f'HGDagger(online_weight={self.online_weight})'
