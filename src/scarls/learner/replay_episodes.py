"""Recorded episodes for the replay check (:mod:`scarls.learner.replay_check`).

:class:`ReplayEpisode` is an :class:`~scarls.learner.trainer.EpisodeData` plus a name and
optional task-stage labels: :meth:`ReplayEpisode.load` reads a Zarr episode,
:meth:`ReplayEpisode.from_records` wraps steps from any other source (e.g. a converted bag).
:func:`iter_disk_episodes` reads the episodes of a data root lazily and lists the ones it
skipped (:class:`SkippedEpisode`); :func:`check_fit` says whether a policy can read an episode.
Pure logic: no ROS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from scarls.episodes import EpisodeReader, StepRecord, list_episodes
from scarls.episodes.schema import ACTION_PATH, INTERVENTION_PATH, STATE_PATH
from scarls.learner.config import LearnerError
from scarls.learner.rollout import policy_cameras
from scarls.learner.trainer import EpisodeData
from scarls.policies import Policy

__all__ = [
    'STAGES_KEY',
    'ReplayEpisode',
    'ReplayInputError',
    'SkippedEpisode',
    'check_fit',
    'iter_disk_episodes',
    'stage_labels',
]

_log = logging.getLogger('scarls.learner.replay_check')

#: Key in an episode meta's ``extra`` holding its task stages: ``[[start_step, name], ...]``.
STAGES_KEY = 'stages'


class ReplayInputError(LearnerError):
    """An episode or a policy cannot be replayed (the message names the file and the problem)."""


# -- episodes ----------------------------------------------------------------------------------


def stage_labels(stages: Any, steps: int, source: str = '<episode>') -> np.ndarray:
    """``(T,)`` stage names from ``[[start_step, name], ...]`` (sorted starts, the first 0).

    Each stage lasts until the next one starts. Raises :class:`ReplayInputError` naming
    ``source`` for a malformed list.
    """
    if not isinstance(stages, (list, tuple)) or not stages:
        raise ReplayInputError(f'{source}: {STAGES_KEY!r} must be a non-empty list of '
                               f'[start_step, name] pairs, got {stages!r}')
    starts, names = [], []
    for item in stages:
        if (not isinstance(item, (list, tuple)) or len(item) != 2
                or isinstance(item[0], bool) or not isinstance(item[0], int)
                or not isinstance(item[1], str) or not item[1]):
            raise ReplayInputError(f'{source}: stage entry {item!r} must be [start_step, name]')
        starts.append(int(item[0]))
        names.append(item[1])
    if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:], strict=False)) \
            or starts[-1] >= max(steps, 1):
        raise ReplayInputError(f'{source}: stage starts {starts} must begin at 0, increase and '
                               f'stay below the {steps} steps')
    out = np.empty(steps, dtype=object)
    bounds = [*starts, steps]
    for i, name in enumerate(names):
        out[bounds[i]:bounds[i + 1]] = name
    return out


@dataclasses.dataclass
class ReplayEpisode:
    """One recorded episode to replay, from any source.

    ``data`` holds the arrays (its ``images`` may keep only some frames: steps whose frames are
    missing are not compared). ``stages`` (optional, ``(T,)`` str) names the task stage of every
    step. ``fps`` turns step indices into seconds in reports.
    """

    name: str
    """How reports name the episode, e.g. ``'pick_cube/episode_3'``."""
    data: EpisodeData
    fps: float | None = None
    stages: np.ndarray | None = None
    path: Path | None = None
    """Where it was read from (None for in-memory sources)."""
    model_version: int | None = None
    """The model that drove its policy steps, when known."""

    def __post_init__(self) -> None:
        if self.stages is not None:
            self.stages = np.asarray(self.stages, dtype=object)
            if self.stages.shape != (self.data.steps,):
                raise ReplayInputError(f'{self.name}: stages must be ({self.data.steps},), got '
                                       f'{self.stages.shape}')

    @property
    def steps(self) -> int:
        return self.data.steps

    @classmethod
    def from_records(
        cls,
        name: str,
        records: Sequence[StepRecord],
        *,
        task: str,
        outcome: str = 'success',
        source: str = 'online',
        fps: float | None = None,
        stages: Sequence[str] | None = None,
        cameras: Sequence[str] | None = None,
        model_version: int | None = None,
    ) -> ReplayEpisode:
        """From in-memory steps (e.g. a bag converted to :class:`StepRecord` ticks)."""
        data = EpisodeData.from_records(records, task=task, outcome=outcome, source=source,
                                        cameras=cameras)
        return cls(name, data, fps=fps,
                   stages=None if stages is None else np.asarray(stages, dtype=object),
                   model_version=model_version)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        cameras: Sequence[str] | None = None,
        stride: int = 1,
        name: str | None = None,
    ) -> ReplayEpisode:
        """Read a Zarr episode (``.../episode_<N>.zarr``).

        Only the frames of the steps a replay with ``stride`` compares are read. The sha256 of
        the state, action and intervention arrays is checked against the meta. Any problem
        raises :class:`ReplayInputError` naming the file.
        """
        p = Path(path)
        try:
            reader = EpisodeReader(p)
            arrays = {}
            for key, arr in ((STATE_PATH, reader.state), (ACTION_PATH, reader.action),
                             (INTERVENTION_PATH, reader.intervention)):
                try:
                    arrays[key] = np.asarray(arr[:])
                except Exception as exc:  # noqa: BLE001 - codec errors of any type
                    raise ReplayInputError(f'{p}: array {key!r} is unreadable (corrupt '
                                           f'data): {exc}') from exc
            keep = _sampled_mask(arrays[INTERVENTION_PATH].astype(bool), stride)
            # cameras the episode lacks are left out here; check_fit names them
            cams = tuple(c for c in (cameras or ()) if c in reader.cameras)
            try:
                data = EpisodeData.from_reader(reader, source=str(reader.meta.extra.get(
                    'source', 'online')), cameras=cams, keep=keep)
            except Exception as exc:  # noqa: BLE001
                raise ReplayInputError(f'{p}: camera frames of {list(cams)} are unreadable '
                                       f'(corrupt data): {exc}') from exc
            for key, arr in ((STATE_PATH, data.state), (ACTION_PATH, data.action),
                             (INTERVENTION_PATH, data.intervention)):
                digest = hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()
                if digest != reader.meta.sha256.get(key):
                    raise ReplayInputError(
                        f'{p}: checksum mismatch for {key!r} (stored data differs from what '
                        'was recorded; the episode is corrupt)')
            meta = reader.meta
            stages = (stage_labels(meta.extra[STAGES_KEY], data.steps, str(reader.meta_path))
                      if STAGES_KEY in meta.extra else None)
        except ReplayInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - schema, codec and zarr errors alike
            text = str(exc)
            raise ReplayInputError(text if str(p) in text else f'{p}: {text}') from exc
        return cls(name or f'{meta.task}/episode_{meta.episode_index}', data, fps=meta.fps,
                   stages=stages, path=p, model_version=meta.model_version)


def _sampled_mask(intervention: np.ndarray, stride: int) -> np.ndarray:
    """(T,) bool: the steps a replay with ``stride`` compares (every stride-th of each mode)."""
    keep = np.zeros(intervention.shape, dtype=bool)
    for flags in (intervention, ~intervention):
        keep[np.flatnonzero(flags)[:: max(1, int(stride))]] = True
    return keep


@dataclasses.dataclass(frozen=True)
class SkippedEpisode:
    """An episode that was not checked, and why."""

    name: str
    reason: str
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def iter_disk_episodes(
    root: str | os.PathLike[str],
    task: str,
    *,
    indices: Iterable[int] | None = None,
    cameras: Sequence[str] | None = None,
    stride: int = 1,
    skipped: list[SkippedEpisode] | None = None,
) -> Iterator[ReplayEpisode]:
    """Yield the episodes of ``<root>/<task>/`` (only ``indices`` if given), one at a time.

    An episode that cannot be read is logged, appended to ``skipped`` and left out; the others
    are still yielded. An index that does not exist is reported the same way.
    """
    entries = list_episodes(root, task)
    if indices is not None:
        wanted = sorted(set(int(i) for i in indices))
        have = {e.index: e for e in entries}
        for i in wanted:
            if i not in have:
                _skip(skipped, SkippedEpisode(
                    f'{task}/episode_{i}', f'no episode {i} of {task!r} under {root}', None))
        entries = [have[i] for i in wanted if i in have]
    for entry in entries:
        try:
            yield ReplayEpisode.load(entry.path, cameras=cameras, stride=stride,
                                     name=f'{entry.task}/episode_{entry.index}')
        except ReplayInputError as exc:
            _skip(skipped, SkippedEpisode(f'{entry.task}/episode_{entry.index}', str(exc),
                                          str(entry.path)))


def _skip(skipped: list[SkippedEpisode] | None, item: SkippedEpisode) -> None:
    _log.warning('episode %s skipped: %s', item.name, item.reason)
    if skipped is not None:
        skipped.append(item)


def check_fit(policy: Policy, episode: ReplayEpisode, label: str = 'policy') -> None:
    """Raise :class:`ReplayInputError` when ``policy`` cannot read ``episode`` (cameras,
    state or action dimension)."""
    where = str(episode.path) if episode.path is not None else episode.name
    cfg = policy.config
    d = episode.data
    cams = [c for c in policy_cameras(policy) if c not in d.images]
    if cams:
        raise ReplayInputError(
            f'{label} ({policy.name} policy) reads camera(s) {cams} but episode {where} has '
            f'{sorted(d.images)}')
    if d.state.ndim != 2 or d.state.shape[1] != cfg.state_dim:
        raise ReplayInputError(
            f'{label} ({policy.name} policy) expects state_dim {cfg.state_dim} but episode '
            f'{where} has states of shape {tuple(d.state.shape)}')
    if d.action.ndim != 2 or d.action.shape[1] != cfg.action_dim:
        raise ReplayInputError(
            f'{label} ({policy.name} policy) predicts action_dim {cfg.action_dim} but episode '
            f'{where} has actions of shape {tuple(d.action.shape)}')
