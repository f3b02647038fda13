"""Write a whole episode from arrays: data that was not recorded by an ECU.

::

    from scarls.episodes import write_episode

    ref = write_episode('data', 'pick_cube',
                        frames={'top': top, 'wrist': wrist},   # each (T, H, W, 3) uint8
                        state=state, action=action,            # (T, Ds), (T, Da)
                        fps=30)

The same episode format as a recording (:class:`~scarls.episodes.writer.EpisodeWriter` writes
it), with defaults for offline data: no ECU id, no model version, timestamps ``t / fps`` from
``start_time``, no intervention, outcome ``'success'``.  Cameras are stored in the order of
``frames``.  ``episode_index`` keeps a given episode number (e.g. the source dataset's); without
it the next free number of the task is used.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from scarls.episodes.errors import EpisodeError
from scarls.episodes.writer import EpisodeRef, EpisodeWriter, StepRecord

__all__ = ['write_episode']


def _steps(name: str, arr: Any, n: int | None) -> int:
    got = len(arr)
    if n is not None and got != n:
        raise EpisodeError(f'{name} has {got} steps, expected {n} (as the other arrays)')
    return got


def write_episode(
    root: str | os.PathLike[str],
    task: str,
    frames: Mapping[str, np.ndarray | Sequence[np.ndarray]],
    state: np.ndarray | Sequence[Sequence[float]],
    action: np.ndarray | Sequence[Sequence[float]],
    *,
    fps: float = 30.0,
    timestamps: np.ndarray | Sequence[float] | None = None,
    start_time: float = 0.0,
    intervention: np.ndarray | Sequence[bool] | None = None,
    outcome: str = 'success',
    episode_index: int | None = None,
    codec: str = 'lz4',
    codec_level: int | None = None,
    ecu_id: str = '',
    model_version: int | None = None,
    extra: Mapping[str, Any] | None = None,
    safety: np.ndarray | Sequence[int] | None = None,
    fsync: bool = True,
) -> EpisodeRef:
    """Write one complete episode of ``task`` under ``root`` and return its reference.

    ``frames`` maps each camera name to ``T`` uint8 ``(H, W, 3)`` frames (one array
    ``(T, H, W, 3)`` or a sequence of frames; every camera the same ``H, W``); ``state`` and
    ``action`` are ``(T, D)`` real arrays (stored as float32).  ``timestamps`` (seconds, strictly
    increasing) default to ``start_time + t / fps``; ``intervention`` (``T`` bools) to all False.
    ``episode_index`` writes that episode number (:class:`EpisodeError` if the task has it
    already; numbers left free in between are reported as gaps by ``scarls dataset validate``,
    and ``scarls dataset repair`` renumbers).  ``codec`` is the image codec (see
    ``scarls.episodes.CODEC_NAMES``; ``'lz4'`` is lossless, ``'jpeg'`` ~10x smaller).  The other
    arguments are as for :meth:`EpisodeWriter.finalize`.  Nothing is visible unless the whole
    episode was written: on any error the partial episode is removed.
    """
    if not frames:
        raise EpisodeError('frames must name at least one camera')
    state = np.asarray(state)
    action = np.asarray(action)
    if state.ndim != 2 or action.ndim != 2:
        raise EpisodeError(
            f'state and action must be (T, D) arrays, got {state.shape} and {action.shape}')
    n = _steps('state', state, None)
    _steps('action', action, n)
    if n == 0:
        raise EpisodeError('an episode needs at least one step')
    cams = list(frames)
    shape = None
    for cam in cams:
        _steps(f'frames[{cam!r}]', frames[cam], n)
        first = np.asarray(frames[cam][0])
        if first.ndim != 3 or first.shape[2] != 3 or first.dtype != np.uint8:
            raise EpisodeError(
                f'frames[{cam!r}] must hold uint8 (H, W, 3) frames, got {first.dtype} '
                f'{first.shape} per frame')
        if shape is not None and first.shape[:2] != shape:
            raise EpisodeError(
                f'frames[{cam!r}] are {first.shape[:2]}, frames[{cams[0]!r}] are {shape}: '
                'one episode has one image size')
        shape = first.shape[:2]
    if timestamps is None:
        ts = start_time + np.arange(n, dtype=np.float64) / float(fps)
    else:
        ts = np.asarray(timestamps, dtype=np.float64)
        if ts.shape != (n,):
            raise EpisodeError(f'timestamps must have shape ({n},), got {ts.shape}')
    if intervention is None:
        interv = np.zeros(n, dtype=bool)
    else:
        interv = np.asarray(intervention, dtype=bool)
        if interv.shape != (n,):
            raise EpisodeError(f'intervention must have shape ({n},), got {interv.shape}')
    writer = EpisodeWriter(
        root, task, ecu_id, cameras=cams, image_shape=shape, state_dim=state.shape[1],
        action_dim=action.shape[1], fps=fps, codec=codec, codec_level=codec_level, fsync=fsync,
        index=episode_index,
    )
    with writer:  # leaving it unfinalized (any error) discards the partial episode
        for t in range(n):
            writer.append(StepRecord(
                {cam: frames[cam][t] for cam in cams}, state[t], action[t], bool(interv[t]),
                float(ts[t]),
            ))
        return writer.finalize(outcome, model_version, extra, safety=safety)
