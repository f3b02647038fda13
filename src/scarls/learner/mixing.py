"""SOP-style task-balanced mixing of online and offline buffers.

Every task has up to two buffers, keyed ``(task, 'offline')`` (demonstrations) and
``(task, 'online')`` (episodes recorded with the policy in the loop). Episodes are registered
with per-step label weights (see :mod:`scarls.learner.algorithms`); a buffer's size is the sum
of its weights.

Sampling a batch item: pick a task (uniformly over the tasks that have labelled steps when
``balance_tasks``, else in proportion to their labelled steps), then one of its buffers, then a
step of that buffer in proportion to its weight. Within a task the online buffer has weight
``online_weight`` and the offline one ``1 - online_weight`` (by default ``online_weight`` is
the online buffer's share of the task's labelled steps); each buffer keeps the mean of its
last ``window`` reported training losses, and while the online loss is higher than the offline
loss the online weight is multiplied by ``alpha`` (> 1): the learner spends more of its batch
on the states where the current policy is still wrong (the distribution shift the ECUs report),
up to ``max_online_share`` of the task's samples.

Deterministic: the same calls with the same seeded ``numpy.random.Generator`` give the same
samples.
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Hashable, Sequence

import numpy as np

from scarls.learner.config import LearnerError, MixingConfig

__all__ = ['BUFFER_KINDS', 'BufferKey', 'MixingSampler', 'Sample']

#: The two kinds of buffer every task may have.
BUFFER_KINDS: tuple[str, ...] = ('offline', 'online')

BufferKey = tuple[str, str]
"""``(task, 'online' | 'offline')``."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One drawn training step."""

    buffer: BufferKey
    """The buffer it came from."""
    episode: Hashable
    """The episode key given to :meth:`MixingSampler.add`."""
    frame: int
    """Step index within the episode."""


class _Buffer:
    def __init__(self, window: int) -> None:
        self.episodes: list[Hashable] = []
        self.weights: list[np.ndarray] = []
        self.losses: collections.deque[float] = collections.deque(maxlen=window)
        self._index: tuple[np.ndarray, np.ndarray] | None = None  # (cumsum, episode starts)

    @property
    def total(self) -> float:
        return float(sum(float(w.sum()) for w in self.weights))

    def add(self, episode: Hashable, weights: np.ndarray) -> None:
        self.episodes.append(episode)
        self.weights.append(weights)
        self._index = None

    def remove(self, episode: Hashable) -> None:
        i = self.episodes.index(episode)
        del self.episodes[i], self.weights[i]
        self._index = None

    def loss(self) -> float | None:
        return float(np.mean(self.losses)) if self.losses else None

    def draw(self, n: int, rng: np.random.Generator) -> list[tuple[Hashable, int]]:
        if self._index is None:
            cum = np.cumsum(np.concatenate(self.weights).astype(np.float64))
            lengths = np.array([len(w) for w in self.weights], dtype=np.int64)
            self._index = (cum, np.concatenate(([0], np.cumsum(lengths)[:-1])))
        cum, starts = self._index
        u = rng.random(n) * cum[-1]
        flat_idx = np.minimum(np.searchsorted(cum, u, side='right'), len(cum) - 1)
        ep_idx = np.searchsorted(starts, flat_idx, side='right') - 1
        return [
            (self.episodes[int(e)], int(i - starts[e]))
            for e, i in zip(ep_idx, flat_idx, strict=True)
        ]


def _check_key(buffer_key: BufferKey) -> BufferKey:
    if (
        not isinstance(buffer_key, tuple)
        or len(buffer_key) != 2
        or not isinstance(buffer_key[0], str)
        or not buffer_key[0]
        or buffer_key[1] not in BUFFER_KINDS
    ):
        raise ValueError(
            f'buffer_key must be (task, kind) with kind in {BUFFER_KINDS}, got {buffer_key!r}'
        )
    return buffer_key


class MixingSampler:
    """Task-balanced, loss-boosted sampler over per-task online and offline buffers."""

    def __init__(self, config: MixingConfig | None = None) -> None:
        self.config = config if config is not None else MixingConfig()
        self._buffers: dict[BufferKey, _Buffer] = {}
        self._owner: dict[Hashable, BufferKey] = {}

    # -- contents ------------------------------------------------------------------------
    def add(
        self,
        buffer_key: BufferKey,
        episode_key: Hashable,
        n_steps: int,
        step_weights: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        """Register an episode of ``n_steps`` steps with label weights (None: all 1).

        Raises:
            ValueError: bad key, a duplicate episode key, or weights that are not ``n_steps``
                finite values >= 0.
        """
        key = _check_key(buffer_key)
        if episode_key in self._owner:
            raise ValueError(
                f'episode {episode_key!r} was already added to {self._owner[episode_key]}'
            )
        if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 0:
            raise ValueError(f'n_steps must be an int >= 0, got {n_steps!r}')
        w = (
            np.ones(n_steps, dtype=np.float64)
            if step_weights is None
            else np.asarray(step_weights, dtype=np.float64).reshape(-1)
        )
        if w.shape != (n_steps,):
            raise ValueError(f'step_weights must have {n_steps} entries, got {w.shape[0]}')
        if not np.isfinite(w).all() or (w < 0).any():
            raise ValueError('step_weights must be finite and >= 0')
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _Buffer(self.config.window)
        buf.add(episode_key, w)
        self._owner[episode_key] = key

    def remove(self, episode_key: Hashable) -> None:
        """Forget an episode (e.g. deleted from disk); an emptied buffer goes too.
        KeyError if unknown."""
        key = self._owner.pop(episode_key)
        buf = self._buffers[key]
        buf.remove(episode_key)
        if not buf.episodes:
            del self._buffers[key]

    def buffer_of(self, episode_key: Hashable) -> BufferKey:
        """The buffer an episode was added to (KeyError if unknown)."""
        return self._owner[episode_key]

    def buffers(self) -> dict[BufferKey, dict[str, float | int | None]]:
        """Per buffer: ``episodes``, labelled ``steps`` (sum of weights) and windowed ``loss``."""
        return {
            k: {'episodes': len(b.episodes), 'steps': b.total, 'loss': b.loss()}
            for k, b in sorted(self._buffers.items())
        }

    # -- losses --------------------------------------------------------------------------
    def report_loss(self, buffer_key: BufferKey, loss: float) -> None:
        """Add a training loss measured on samples of ``buffer_key`` to its window."""
        key = _check_key(buffer_key)
        loss = float(loss)
        if not math.isfinite(loss):
            raise ValueError(f'loss must be finite, got {loss}')
        buf = self._buffers.get(key)
        if buf is None:
            buf = self._buffers[key] = _Buffer(self.config.window)
        buf.losses.append(loss)

    def windowed_loss(self, buffer_key: BufferKey) -> float | None:
        """Mean of the buffer's last ``window`` reported losses (None before any report)."""
        buf = self._buffers.get(_check_key(buffer_key))
        return None if buf is None else buf.loss()

    def boosted(self, task: str) -> bool:
        """True while the task's online loss is higher than its offline loss."""
        on = self.windowed_loss((task, 'online'))
        off = self.windowed_loss((task, 'offline'))
        return on is not None and off is not None and on > off

    # -- sampling ------------------------------------------------------------------------
    def probabilities(self) -> dict[BufferKey, float]:
        """Probability that a batch item comes from each buffer with labelled steps."""
        cfg = self.config
        totals = {k: b.total for k, b in self._buffers.items() if b.total > 0}
        tasks = sorted({k[0] for k in totals})
        if not tasks:
            return {}
        task_steps = {t: sum(v for k, v in totals.items() if k[0] == t) for t in tasks}
        all_steps = sum(task_steps.values())
        out: dict[BufferKey, float] = {}
        for task in tasks:
            share = 1.0 / len(tasks) if cfg.balance_tasks else task_steps[task] / all_steps
            on_key, off_key = (task, 'online'), (task, 'offline')
            if on_key in totals and off_key in totals:
                base = cfg.online_weight
                if base is None:
                    base = totals[on_key] / (totals[on_key] + totals[off_key])
                w_on = base * (cfg.alpha if self.boosted(task) else 1.0)
                w_off = 1.0 - base
                p_on = min(w_on / (w_on + w_off), cfg.max_online_share)
                out[on_key] = share * p_on
                out[off_key] = share * (1.0 - p_on)
            else:
                out[on_key if on_key in totals else off_key] = share
        return dict(sorted(out.items()))

    def draw(self, batch_size: int, rng: np.random.Generator) -> list[Sample]:
        """``batch_size`` samples (with replacement) according to :meth:`probabilities`.

        Raises:
            LearnerError: no buffer has a labelled step.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f'batch_size must be an int >= 1, got {batch_size!r}')
        probs = self.probabilities()
        if not probs:
            raise LearnerError('nothing to sample: no buffer has a step with weight > 0')
        keys = list(probs)
        p = np.array([probs[k] for k in keys])
        which = rng.choice(len(keys), size=batch_size, p=p / p.sum())
        out: list[Sample | None] = [None] * batch_size
        for b in range(len(keys)):
            slots = np.flatnonzero(which == b)
            if slots.size == 0:
                continue
            drawn = self._buffers[keys[b]].draw(int(slots.size), rng)
            for slot, (episode, frame) in zip(slots, drawn, strict=True):
                out[int(slot)] = Sample(keys[b], episode, frame)
        return [s for s in out if s is not None]

    def sample(self, batch_size: int, rng: np.random.Generator) -> list[tuple[Hashable, int]]:
        """``batch_size`` ``(episode_key, frame)`` pairs (see :meth:`draw`)."""
        return [(s.episode, s.frame) for s in self.draw(batch_size, rng)]
