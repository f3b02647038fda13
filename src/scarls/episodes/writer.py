"""Streaming episode writers.

:class:`EpisodeWriter` records one episode step by step::

    w = EpisodeWriter(root, 'pick_cube', 'ecu-01', image_shape=(480, 640), state_dim=14,
                      action_dim=14)
    w.append(StepRecord(images={'top': f0, 'left': f1, 'right': f2}, state=q, action=a,
                        intervention=False, timestamp=t))
    ref = w.finalize('success', model_version=3)   # or w.abort()

Each camera frame is encoded and written into its own chunk file as it arrives (O(1) per step,
arrays grown in blocks); low-dimensional data stays in memory and is written at finalize; all
sha256 digests are updated incrementally.  The episode lives under a hidden temp name until
:meth:`EpisodeWriter.finalize` makes it visible atomically (see :mod:`scarls.episodes.layout`).

:class:`BackgroundEpisodeWriter` has the same API but persists steps on a worker thread behind
a bounded queue (sized in steps, or in seconds of data with ``queue_seconds``): ``append``
validates the step, enqueues it and returns immediately (``False`` if the queue was full and
the step was dropped; :meth:`BackgroundEpisodeWriter.explain_drop` says why - the writer's
recent write time and CPU wait against the step period).  Failures of the worker are counted
and raised from ``finalize``.

A writer never leaks: when it cannot be created, or cannot be finalized, its temp episode is
removed and its index reservation released (``finalize(..., keep_on_error=True)`` keeps an
episode whose finalize failed open for a retry instead).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import numbers
import os
import queue
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from scarls.episodes.codecs import FrameCodec, get_frame_codec
from scarls.episodes.errors import EpisodeError, StorageError, storage_error
from scarls.episodes.layout import (
    check_task_name,
    cleanup_task_dir,
    episode_dir_name,
    fsync_dir,
    fsync_file,
    lock_name,
    meta_name,
    meta_temp_name,
    remove_tree,
    reserve_index,
    task_lock,
    temp_dir_name,
)
from scarls.episodes.schema import (
    ACTION_PATH,
    INTERVENTION_PATH,
    LOWDIM_DTYPES,
    OUTCOMES,
    SAFETY_NAMES,
    SAFETY_PATH,
    SCHEMA_VERSION,
    STATE_PATH,
    TIMESTAMP_PATH,
    EpisodeMeta,
    camera_path,
    safety_counts,
)

__all__ = [
    'BackgroundEpisodeWriter',
    'EpisodeRef',
    'EpisodeWriter',
    'StepRecord',
    'WriterStats',
]

log = logging.getLogger(__name__)

_LOWDIM_CHUNK_ROWS = 65_536


@dataclass
class StepRecord:
    """One control tick.

    ``images`` maps every camera name to a uint8 ``(H, W, 3)`` array; ``state``/``action`` are
    1-D real vectors (stored as float32, must be finite); ``intervention`` is True when a human
    was in control; ``timestamp`` is the tick's time in seconds and must strictly increase.
    """

    images: Mapping[str, np.ndarray]
    state: np.ndarray | Sequence[float]
    action: np.ndarray | Sequence[float]
    intervention: bool
    timestamp: float


@dataclass(frozen=True)
class EpisodeRef:
    """A finalized, visible episode."""

    index: int
    path: Path
    meta_path: Path
    steps: int
    intervention_steps: int
    seconds_to_finalize: float


@dataclass(frozen=True)
class WriterStats:
    """Counters of a writer (the queue fields and timings are 0 for the sync writer).

    ``write_seconds`` is the recent mean wall time the worker took per step and
    ``cpu_wait_seconds`` the part of it the worker thread spent runnable but waiting for a CPU
    (Linux schedstat; 0 where unavailable); ``period_seconds`` is the step period (1 / fps).
    """

    accepted: int
    written: int
    dropped: int
    failed: int
    queue_depth: int
    max_queue_depth: int
    queue_capacity: int = 0
    write_seconds: float = 0.0
    cpu_wait_seconds: float = 0.0
    period_seconds: float = 0.0


@dataclass
class _Prepared:
    frames: list[np.ndarray]
    state: np.ndarray
    action: np.ndarray
    intervention: bool
    timestamp: float


def _vector(value: Any, dim: int, what: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in 'fiu':
        raise EpisodeError(f'{what} must be a real-valued vector, got dtype {arr.dtype}')
    if arr.shape != (dim,):
        raise EpisodeError(f'{what} must have shape ({dim},), got {arr.shape}')
    with np.errstate(over='ignore', invalid='ignore'):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        bad = np.flatnonzero(~np.isfinite(out)).tolist()
        raise EpisodeError(f'{what} has non-finite values (NaN/inf, or beyond float32) at {bad}')
    return out


class EpisodeWriter:
    """Write one episode of ``task`` under ``root`` (created if missing).

    The constructor reserves the next episode index (cleaning leftovers of dead writers in the
    task directory) and creates the hidden temp episode.  Not thread-safe: call from one thread
    (use :class:`BackgroundEpisodeWriter` to move disk I/O off the caller's thread).
    ``fsync=False`` skips per-chunk fsync (faster, not crash-durable; renames stay atomic).
    ``index`` writes that episode number instead of the next free one (:class:`EpisodeError`
    if the task already has it).
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        task: str,
        ecu_id: str,
        *,
        cameras: Sequence[str] = ('top', 'left', 'right'),
        image_shape: tuple[int, int],
        state_dim: int,
        action_dim: int,
        fps: float = 30.0,
        codec: str = 'lz4',
        codec_level: int | None = None,
        fsync: bool = True,
        block_size: int = 256,
        index: int | None = None,
    ) -> None:
        check_task_name(task)
        if index is not None and (
                isinstance(index, bool) or not isinstance(index, int) or index < 0):
            raise ValueError(f'index must be an int >= 0 or None, got {index!r}')
        cams = tuple(cameras)
        if not cams or len(set(cams)) != len(cams) or not all(isinstance(c, str) for c in cams):
            raise ValueError(f'cameras must be unique non-empty names, got {cameras!r}')
        for cam in cams:
            check_task_name(cam)
        if len(image_shape) != 2 or min(image_shape) <= 0:
            raise ValueError(f'image_shape must be (H, W) with positive sizes, got {image_shape}')
        if state_dim <= 0 or action_dim <= 0:
            raise ValueError('state_dim and action_dim must be positive')
        if not (math.isfinite(fps) and fps > 0):
            raise ValueError(f'fps must be positive, got {fps}')
        if block_size <= 0:
            raise ValueError('block_size must be positive')
        self.task = task
        self.ecu_id = str(ecu_id)
        self.cameras = cams
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.state_dim = int(state_dim)
        self.action_dim = int(action_dim)
        self.fps = float(fps)
        self.codec: FrameCodec = get_frame_codec(codec, codec_level)
        self._fsync = fsync
        self._block = int(block_size)
        self._pid = os.getpid()
        self._state = 'open'
        self._steps = 0
        self._accepted = 0
        self._failed = 0
        self._dropped = 0
        self._interventions = 0
        self._last_ts = -math.inf
        self._first_ts = math.nan
        self._created = time.time()
        self._data_in_place = False

        self.task_dir = Path(root) / task
        try:
            self.task_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise storage_error(f'creating task directory {self.task_dir}', exc) from exc
        try:
            with task_lock(self.task_dir):
                cleanup_task_dir(self.task_dir)
                self.index = reserve_index(self.task_dir, self._pid, index)
                self.temp_path = self.task_dir / temp_dir_name(self.index, self._pid)
                try:
                    self.temp_path.mkdir()
                except BaseException:
                    (self.task_dir / lock_name(self.index)).unlink(missing_ok=True)
                    raise
        except OSError as exc:
            raise storage_error(f'reserving an episode in {self.task_dir}', exc) from exc
        self.path = self.task_dir / episode_dir_name(self.index)
        self.meta_path = self.task_dir / meta_name(self.index)
        try:
            self._create_arrays()
        except BaseException as exc:
            # whatever failed (ENOSPC in zarr's metadata write, an interrupt...): no temp dir
            # and no reservation stay behind
            self._state = 'aborted'
            self._discard()
            if isinstance(exc, OSError):
                raise storage_error(f'creating episode arrays in {self.temp_path}',
                                    exc) from exc
            raise
        log.info('recording %s episode %d in %s', task, self.index, self.temp_path)

    # -- setup -------------------------------------------------------------------------------

    def _create_arrays(self) -> None:
        h, w = self.image_shape
        self._capacity = self._block
        self._group = zarr.open_group(LocalStore(self.temp_path), mode='w', zarr_format=3)
        self._group.attrs.update({'schema_version': SCHEMA_VERSION, 'task': self.task})
        obs = self._group.create_group('observation')
        self._image_arrays: list[zarr.Array] = []
        self._image_dirs: list[Path] = []
        for cam in self.cameras:
            arr = obs.create_array(
                cam,
                shape=(self._capacity, h, w, 3),
                chunks=(1, h, w, 3),
                dtype='uint8',
                fill_value=0,
                chunk_key_encoding={'name': 'default', 'separator': '.'},
                dimension_names=('t', 'y', 'x', 'c'),
                **self.codec.zarr_kwargs(),
            )
            self._image_arrays.append(arr)
            self._image_dirs.append(self.temp_path / camera_path(cam))
        self._hashes = {camera_path(c): hashlib.sha256() for c in self.cameras}
        for key in LOWDIM_DTYPES:
            self._hashes[key] = hashlib.sha256()
        self._state_buf = np.zeros((self._capacity, self.state_dim), np.float32)
        self._action_buf = np.zeros((self._capacity, self.action_dim), np.float32)
        self._interv_buf = np.zeros((self._capacity,), np.bool_)
        self._ts_buf = np.zeros((self._capacity,), np.float64)

    # -- appending ---------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """Number of steps persisted so far."""
        return self._steps

    def stats(self) -> WriterStats:
        return WriterStats(self._accepted, self._steps, self._dropped, self._failed, 0, 0)

    def _check_open(self) -> None:
        if self._state != 'open':
            raise EpisodeError(
                f'episode {self.index} of {self.task!r} is already {self._state}; '
                'create a new writer for the next episode'
            )

    def _prepare(self, step: StepRecord, copy: bool = False) -> _Prepared:
        """Validate ``step`` and return normalised arrays; raise EpisodeError if invalid."""
        if not isinstance(step, StepRecord):
            raise EpisodeError(f'expected a StepRecord, got {type(step).__name__}')
        images = step.images
        if not isinstance(images, Mapping):
            raise EpisodeError('StepRecord.images must be a mapping camera name -> image')
        if set(images) != set(self.cameras):
            raise EpisodeError(
                f'StepRecord.images has cameras {sorted(images)}, expected exactly '
                f'{sorted(self.cameras)}'
            )
        expected = (*self.image_shape, 3)
        frames = []
        for cam in self.cameras:
            img = images[cam]
            if not isinstance(img, np.ndarray) or img.dtype != np.uint8:
                got = img.dtype if isinstance(img, np.ndarray) else type(img).__name__
                raise EpisodeError(f'image {cam!r} must be a uint8 numpy array, got {got}')
            if img.shape != expected:
                raise EpisodeError(f'image {cam!r} must have shape {expected}, got {img.shape}')
            frames.append(
                np.array(img, order='C', copy=True) if copy else np.ascontiguousarray(img)
            )
        state = _vector(step.state, self.state_dim, 'state')
        action = _vector(step.action, self.action_dim, 'action')
        if not isinstance(step.intervention, (bool, np.bool_)):
            raise EpisodeError(
                f'intervention must be a bool, got {type(step.intervention).__name__}'
            )
        ts = step.timestamp
        if isinstance(ts, bool) or not isinstance(ts, numbers.Real) or not math.isfinite(ts):
            raise EpisodeError(f'timestamp must be a finite number of seconds, got {ts!r}')
        ts = float(ts)
        if ts <= self._last_ts:
            raise EpisodeError(
                f'timestamp {ts!r} is not after the previous step ({self._last_ts!r}); '
                'timestamps must strictly increase'
            )
        return _Prepared(frames, state, action, bool(step.intervention), ts)

    def append(self, step: StepRecord) -> bool:
        """Validate and persist one step; returns True.

        Raises :class:`EpisodeError` for an invalid step (nothing is written) and
        :class:`StorageError` if the disk write fails (the step is not recorded).
        """
        self._check_open()
        prepared = self._prepare(step)
        self._last_ts = prepared.timestamp
        self._accepted += 1
        self._write(prepared)
        return True

    def _write(self, p: _Prepared) -> None:
        i = self._steps
        if i >= self._capacity:
            try:
                self._grow()
            except StorageError:
                self._failed += 1
                raise
        payloads: list[bytes] = []
        hashed: list[np.ndarray] = []
        shape = (*self.image_shape, 3)
        for frame in p.frames:
            data = self.codec.encode(frame)
            payloads.append(data)
            hashed.append(frame if self.codec.lossless else self.codec.decode(data, shape))
        written: list[Path] = []
        try:
            targets = zip(self._image_arrays, self._image_dirs, payloads, strict=True)
            for arr, adir, data in targets:
                fpath = adir / arr.metadata.encode_chunk_key((i, 0, 0, 0))
                fd = os.open(fpath, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
                written.append(fpath)
                try:
                    view = memoryview(data)
                    while view:
                        view = view[os.write(fd, view) :]
                    if self._fsync:
                        os.fsync(fd)
                finally:
                    os.close(fd)
        except OSError as exc:
            self._failed += 1
            for fpath in written:
                with contextlib.suppress(OSError):
                    fpath.unlink()
            raise storage_error(
                f'writing step {i} of episode {self.index} ({self.task})', exc
            ) from exc
        for cam, frame in zip(self.cameras, hashed, strict=True):
            self._hashes[camera_path(cam)].update(frame.data)
        self._state_buf[i] = p.state
        self._action_buf[i] = p.action
        self._interv_buf[i] = p.intervention
        self._ts_buf[i] = p.timestamp
        self._hashes[STATE_PATH].update(self._state_buf[i].data)
        self._hashes[ACTION_PATH].update(self._action_buf[i].data)
        self._hashes[INTERVENTION_PATH].update(self._interv_buf[i : i + 1].data)
        self._hashes[TIMESTAMP_PATH].update(self._ts_buf[i : i + 1].data)
        if i == 0:
            self._first_ts = p.timestamp
        self._interventions += int(p.intervention)
        self._steps = i + 1

    def _grow(self) -> None:
        new_cap = self._capacity + self._block
        h, w = self.image_shape
        try:
            for arr in self._image_arrays:
                arr.resize((new_cap, h, w, 3))
        except OSError as exc:
            raise storage_error(f'growing arrays of episode {self.index}', exc) from exc
        for name in ('_state_buf', '_action_buf', '_interv_buf', '_ts_buf'):
            old = getattr(self, name)
            new = np.zeros((new_cap, *old.shape[1:]), old.dtype)
            new[: self._capacity] = old
            setattr(self, name, new)
        self._capacity = new_cap

    # -- finishing ---------------------------------------------------------------------------

    def finalize(
        self,
        outcome: str,
        model_version: int | None,
        extra: Mapping[str, Any] | None = None,
        *,
        safety: np.ndarray | Sequence[int] | None = None,
        keep_on_error: bool = False,
    ) -> EpisodeRef:
        """Trim, fsync and atomically publish the episode; return its :class:`EpisodeRef`.

        ``outcome`` is 'success', 'fail' or 'aborted'; ``extra`` must be JSON-serialisable.
        ``safety`` (one code of :data:`scarls.episodes.schema.SAFETY_CODES` per written step)
        is stored as the ``safety`` array and counted in ``extra['safety']``.
        Invalid arguments raise :class:`EpisodeError` (nothing changes, the writer stays open).
        On :class:`StorageError` nothing becomes visible and the episode is discarded (temp dir
        removed, reservation released); with ``keep_on_error`` the writer stays open instead,
        so the caller can retry or call :meth:`abort`.
        """
        self._check_open()
        try:
            return self._finalize(outcome, model_version, extra, safety)
        except StorageError:
            if not keep_on_error:
                self.abort()
            raise

    def _safety_codes(self, safety: Any) -> np.ndarray:
        codes = np.asarray(safety)
        if codes.shape != (self._steps,) or codes.dtype.kind not in 'iu':
            raise EpisodeError(
                f'safety must be {self._steps} integer codes (one per written step), got '
                f'{codes.dtype} {codes.shape}'
            )
        unknown = sorted(set(np.unique(codes).tolist()) - set(SAFETY_NAMES))
        if unknown:
            raise EpisodeError(f'safety has unknown codes {unknown}; known: {SAFETY_NAMES}')
        return codes.astype(np.uint8)

    def _finalize(
        self,
        outcome: str,
        model_version: int | None,
        extra: Mapping[str, Any] | None,
        safety: Any,
    ) -> EpisodeRef:
        t0 = time.perf_counter()
        if outcome not in OUTCOMES:
            raise EpisodeError(f'outcome must be one of {OUTCOMES}, got {outcome!r}')
        if model_version is not None and (
                isinstance(model_version, bool) or not isinstance(model_version, int)
                or model_version < 0):
            raise EpisodeError(f'model_version must be an int >= 0 or None, got {model_version!r}')
        extra_dict = dict(extra or {})
        try:
            json.dumps(extra_dict, allow_nan=False)
        except (TypeError, ValueError) as exc:
            raise EpisodeError(f'extra must be JSON-serialisable (no NaN): {exc}') from exc
        if self._steps == 0:
            raise EpisodeError(
                f'episode {self.index} of {self.task!r} has no steps; call abort() instead'
            )
        codes = None if safety is None else self._safety_codes(safety)
        if codes is not None:
            extra_dict['safety'] = safety_counts(codes)
        n = self._steps
        h, w = self.image_shape
        try:
            for arr, adir in zip(self._image_arrays, self._image_dirs, strict=True):
                # A failed write may have left a chunk at index n; drop it before trimming.
                (adir / arr.metadata.encode_chunk_key((n, 0, 0, 0))).unlink(missing_ok=True)
                if arr.shape[0] != n:
                    arr.resize((n, h, w, 3))
            lowdim = {
                STATE_PATH: self._state_buf[:n],
                ACTION_PATH: self._action_buf[:n],
                INTERVENTION_PATH: self._interv_buf[:n],
                TIMESTAMP_PATH: self._ts_buf[:n],
            }
            if codes is not None:
                lowdim[SAFETY_PATH] = codes
            for key, data in lowdim.items():
                if key in self._group:
                    del self._group[key]
                arr = self._group.create_array(
                    key,
                    shape=data.shape,
                    dtype=data.dtype,
                    chunks=(min(n, _LOWDIM_CHUNK_ROWS), *data.shape[1:]),
                    fill_value=0,
                )
                arr[...] = data
            self._sync_tree()
        except OSError as exc:
            raise storage_error(
                f'finalizing episode {self.index} in {self.temp_path}', exc
            ) from exc
        meta = EpisodeMeta(
            task=self.task,
            episode_index=self.index,
            ecu_id=self.ecu_id,
            outcome=outcome,
            steps=n,
            fps=self.fps,
            intervention_steps=self._interventions,
            model_version=model_version,
            start_time=float(self._first_ts),
            end_time=float(self._ts_buf[n - 1]),
            image_codec=self.codec.describe(),
            cameras=list(self.cameras),
            shapes={camera_path(c): [n, h, w, 3] for c in self.cameras}
            | {k: list(v.shape) for k, v in lowdim.items()},
            dtypes={camera_path(c): 'uint8' for c in self.cameras}
            | {k: str(v.dtype) for k, v in lowdim.items()},
            sha256={k: hsh.hexdigest() for k, hsh in self._hashes.items()}
            | ({} if codes is None else {SAFETY_PATH: hashlib.sha256(codes.data).hexdigest()}),
            dropped_steps=self._dropped,
            created_unix=self._created,
            extra=extra_dict,
        )
        self._publish(meta)
        self._state = 'finalized'
        dt = time.perf_counter() - t0
        log.info(
            'episode %d of %s visible at %s (%d steps, %.3f s to finalize)',
            self.index,
            self.task,
            self.path,
            n,
            dt,
        )
        return EpisodeRef(self.index, self.path, self.meta_path, n, self._interventions, dt)

    def _sync_tree(self) -> None:
        if not self._fsync:
            return
        image_dirs = {str(d) for d in self._image_dirs}
        for dirpath, _dirnames, filenames in os.walk(self.temp_path):
            for fname in filenames:
                # image chunks were fsynced when written
                if dirpath not in image_dirs or fname == 'zarr.json':
                    fsync_file(Path(dirpath) / fname)
            fsync_dir(Path(dirpath))

    def _publish(self, meta: EpisodeMeta) -> None:
        if self.path.exists() or self.meta_path.exists():
            raise StorageError(
                f'{self.path} already exists although index {self.index} was reserved; '
                'another process ignored the reservation protocol'
            )
        try:
            os.rename(self.temp_path, self.path)
        except OSError as exc:
            raise storage_error(f'renaming {self.temp_path} to {self.path}', exc) from exc
        self._data_in_place = True
        tmp_meta = self.task_dir / meta_temp_name(self.index, self._pid)
        try:
            if self._fsync:
                fsync_dir(self.task_dir)
            with open(tmp_meta, 'w', encoding='utf-8') as fh:
                fh.write(meta.to_json())
                fh.flush()
                if self._fsync:
                    os.fsync(fh.fileno())
            os.rename(tmp_meta, self.meta_path)
            if self._fsync:
                fsync_dir(self.task_dir)
        except OSError as exc:
            # Not committed: move the data back under its hidden name so abort() can clean up.
            with contextlib.suppress(OSError):
                tmp_meta.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                os.rename(self.path, self.temp_path)
                self._data_in_place = False
            raise storage_error(f'writing meta {self.meta_path}', exc) from exc
        with contextlib.suppress(OSError):
            (self.task_dir / lock_name(self.index)).unlink()

    def _discard(self) -> None:
        # after zarr's writes still running (a call that failed on a full disk)
        remove_tree(self.temp_path)
        if self._data_in_place and not self.meta_path.exists():
            # renamed into place but never committed, and could not be moved back
            remove_tree(self.path)
        with contextlib.suppress(OSError):
            (self.task_dir / lock_name(self.index)).unlink()

    def abort(self) -> None:
        """Discard the episode (nothing becomes visible). No-op if already finished."""
        if self._state != 'open':
            return
        self._state = 'aborted'
        self._discard()
        log.info(
            'aborted episode %d of %s (%d steps discarded)', self.index, self.task, self._steps
        )

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()


_STOP = object()


#: Memory a queue sized in seconds may take at most (frames of queued steps), see
#: :class:`BackgroundEpisodeWriter`.
MAX_QUEUE_BYTES = 512 * 1024 * 1024
_EWMA = 0.1   # weight of the newest step in the writer's recent timings


def _thread_run_delay_ns(tid: int) -> int | None:
    """Nanoseconds thread ``tid`` of this process spent runnable but waiting for a CPU
    (``/proc/self/task/<tid>/schedstat``, 2nd field), or None where unavailable."""
    try:
        with open(f'/proc/self/task/{tid}/schedstat', 'rb') as fh:
            return int(fh.read().split()[1])
    except (OSError, IndexError, ValueError):
        return None


class BackgroundEpisodeWriter:
    """:class:`EpisodeWriter` whose disk I/O runs on a worker thread behind a bounded queue.

    ``append`` validates the step on the caller's thread (raising :class:`EpisodeError`),
    copies the frames (unless ``copy_frames=False``) and enqueues it without blocking; it returns
    False and counts a drop when the queue is full (:meth:`explain_drop` says why).  The queue
    holds ``queue_size`` steps, or with ``queue_seconds`` that many seconds of data at the
    writer's fps (at most ``max_queue_bytes`` of frames), so a burst of steps - a recorder
    that fell behind while starved of CPU, or held steps back until the previous episode was
    finalized - does not overflow it.  Worker failures are counted and the first one is raised
    from :meth:`finalize` as :class:`StorageError` (the episode is then discarded, see
    :meth:`EpisodeWriter.finalize`).  Dropped steps are recorded as ``dropped_steps`` in meta.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        task: str,
        ecu_id: str,
        *,
        queue_size: int = 64,
        queue_seconds: float | None = None,
        max_queue_bytes: int = MAX_QUEUE_BYTES,
        copy_frames: bool = True,
        **kwargs: Any,
    ) -> None:
        if queue_size <= 0:
            raise ValueError('queue_size must be positive')
        if queue_seconds is not None and not (math.isfinite(queue_seconds) and queue_seconds > 0):
            raise ValueError(f'queue_seconds must be positive, got {queue_seconds}')
        self._inner = EpisodeWriter(root, task, ecu_id, **kwargs)
        w = self._inner
        if queue_seconds is not None:
            h, wd = w.image_shape
            step_bytes = len(w.cameras) * h * wd * 3 + 8 * (w.state_dim + w.action_dim + 2)
            queue_size = max(1, min(math.ceil(queue_seconds * w.fps),
                                    int(max_queue_bytes) // step_bytes))
        self._capacity = int(queue_size)
        self._copy = copy_frames
        self._queue: queue.Queue[Any] = queue.Queue(maxsize=self._capacity)
        self._max_depth = 0
        self._error: BaseException | None = None
        self._last_drop_log = 0.0
        self._write_s = 0.0
        self._wait_s = 0.0
        self._exit_lock = threading.Lock()
        self._exited = False
        self._discard_at_exit = False     # abort() gave up waiting: the thread discards
        self._thread = threading.Thread(
            target=self._run, name=f'episode-writer-{task}-{w.index}', daemon=True
        )
        try:
            self._thread.start()
        except BaseException:
            w.abort()
            raise

    @property
    def index(self) -> int:
        return self._inner.index

    @property
    def path(self) -> Path:
        return self._inner.path

    @property
    def temp_path(self) -> Path:
        return self._inner.temp_path

    @property
    def steps(self) -> int:
        """Number of steps persisted so far (excludes queued steps)."""
        return self._inner.steps

    @property
    def queue_capacity(self) -> int:
        """Steps the queue holds."""
        return self._capacity

    def stats(self) -> WriterStats:
        w = self._inner
        return WriterStats(
            w._accepted, w._steps, w._dropped, w._failed, self._queue.qsize(), self._max_depth,
            self._capacity, self._write_s, self._wait_s, 1.0 / w.fps,
        )

    def explain_drop(self) -> str:
        """Why steps are being dropped, from the queue and the worker's recent timings: a disk
        too slow for the data rate, a worker starved of CPU, or a burst of steps arriving
        faster than real time while the worker keeps up."""
        st = self.stats()
        period = st.period_seconds
        head = (f'writer queue full ({st.queue_depth}/{st.queue_capacity} steps = '
                f'{st.queue_capacity * period:.1f} s of data); the writer takes '
                f'{st.write_seconds * 1e3:.1f} ms per step ({st.cpu_wait_seconds * 1e3:.1f} ms '
                f'of it waiting for a CPU) for a step period of {period * 1e3:.1f} ms')
        if st.write_seconds > period:
            if st.cpu_wait_seconds > 0.5 * st.write_seconds:
                return head + ': the recorder is starved of CPU (give recording a higher ' \
                              'priority than training, or fewer processes per core)'
            return head + ': the disk is too slow for this data rate (a faster disk, a ' \
                          'smaller image size or a compressing codec)'
        return head + ': steps arrived in a burst faster than real time (the recorder fell ' \
                      'behind, e.g. starved of CPU or waiting for the previous episode), ' \
                      'the queue is too small for it'

    def _run(self) -> None:
        try:
            self._write_queued()
        finally:
            with self._exit_lock:
                self._exited = True
                if self._discard_at_exit:
                    self._inner._discard()
                    log.info('episode %d of %s discarded now that its writer thread returned',
                             self.index, self._inner.task)

    def _write_queued(self) -> None:
        tid = threading.get_native_id()
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            t0, wait0 = time.perf_counter(), _thread_run_delay_ns(tid)
            try:
                self._inner._write(item)
            except Exception as exc:  # noqa: BLE001 - surfaced at finalize
                if self._error is None:
                    self._error = exc
                    log.error('episode %d: failed to persist a step: %s', self.index, exc)
                if not isinstance(exc, StorageError):
                    self._inner._failed += 1
            dt, wait1 = time.perf_counter() - t0, _thread_run_delay_ns(tid)
            wait = 0.0 if wait0 is None or wait1 is None else (wait1 - wait0) * 1e-9
            self._write_s += _EWMA * (dt - self._write_s)
            self._wait_s += _EWMA * (min(wait, dt) - self._wait_s)

    def append(self, step: StepRecord) -> bool:
        """Validate and enqueue a step; False if it was dropped because the queue is full."""
        w = self._inner
        w._check_open()
        prepared = w._prepare(step, copy=self._copy)
        w._last_ts = prepared.timestamp
        try:
            self._queue.put_nowait(prepared)
        except queue.Full:
            w._dropped += 1
            now = time.monotonic()
            if now - self._last_drop_log > 1.0:
                self._last_drop_log = now
                log.warning('episode %d: %d step(s) dropped so far: %s', self.index,
                            w._dropped, self.explain_drop())
            return False
        w._accepted += 1
        self._max_depth = max(self._max_depth, self._queue.qsize())
        return True

    def _stop_worker(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        if self._thread.is_alive():
            try:
                self._queue.put(_STOP, timeout=max(0.0, deadline - time.monotonic()))
            except queue.Full:
                pass
            self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            st = self.stats()
            raise StorageError(
                f'episode {self.index}: the writer thread did not drain its queue within '
                f'{timeout:.1f} s ({st.queue_depth} steps left, {st.write_seconds * 1e3:.1f} ms '
                f'per step of which {st.cpu_wait_seconds * 1e3:.1f} ms waiting for a CPU); '
                'call abort() or finalize() again'
            )

    def finalize(
        self,
        outcome: str,
        model_version: int | None,
        extra: Mapping[str, Any] | None = None,
        *,
        timeout: float = 60.0,
        safety: np.ndarray | Sequence[int] | None = None,
        keep_on_error: bool = False,
    ) -> EpisodeRef:
        """Wait (up to ``timeout`` s) for queued steps, then finalize like EpisodeWriter
        (``safety``, ``keep_on_error``: see :meth:`EpisodeWriter.finalize`)."""
        self._inner._check_open()
        if outcome not in OUTCOMES:
            raise EpisodeError(f'outcome must be one of {OUTCOMES}, got {outcome!r}')
        try:
            self._stop_worker(timeout)
            if self._error is not None:
                w = self._inner
                raise StorageError(
                    f'episode {self.index}: {w._failed} step(s) failed to persist '
                    f'(first error: {self._error}); the episode was not published'
                ) from self._error
        except StorageError:
            if not keep_on_error:
                self.abort()
            raise
        return self._inner.finalize(outcome, model_version, extra, safety=safety,
                                    keep_on_error=keep_on_error)

    def abort(self, timeout: float = 10.0) -> None:
        """Discard queued steps and the episode. No-op if already finished. A writer thread
        still inside a write after ``timeout`` s discards the episode when it returns (its
        index stays reserved until then)."""
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        try:
            self._stop_worker(timeout)
        except StorageError as exc:
            # The thread is still inside a write (a stalled disk): removing the episode now
            # would race with it (a resize re-creates directories). Keep the reservation; the
            # thread discards the episode when it returns.
            with self._exit_lock:
                if not self._exited and self._inner._state == 'open':
                    self._inner._state = 'aborted'
                    self._discard_at_exit = True
                    log.warning('episode %d: %s; it is discarded when that thread returns',
                                self.index, exc)
                    return
        self._inner.abort()

    def __enter__(self) -> BackgroundEpisodeWriter:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.abort()
