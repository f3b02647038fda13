"""Reading and validating episodes.

:class:`EpisodeReader` opens a visible episode lazily (arrays are zarr arrays; indexing reads
only the needed chunks).  :func:`validate_episode` checks an episode against its meta and
raises :class:`SchemaError` naming the file and the problem.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.storage import LocalStore

from scarls.episodes import codecs as _codecs  # registers the image and video codecs
from scarls.episodes.errors import SchemaError
from scarls.episodes.schema import (
    ACTION_PATH,
    IMAGE_DTYPE,
    INTERVENTION_PATH,
    LOWDIM_DTYPES,
    OPTIONAL_DTYPES,
    SAFETY_PATH,
    STATE_PATH,
    TIMESTAMP_PATH,
    EpisodeMeta,
    camera_path,
    executed_mask,
    meta_array_paths,
)
from scarls.episodes.writer import StepRecord

__all__ = ['EpisodeReader', 'meta_path_for', 'validate_episode']

_DIR_RE = re.compile(r'^episode_(\d+)\.zarr$')


def meta_path_for(path: str | os.PathLike[str]) -> Path:
    """Return the meta json path belonging to an ``episode_<N>.zarr`` directory."""
    p = Path(path)
    m = _DIR_RE.match(p.name)
    if not m:
        raise SchemaError(f'{p}: not an episode directory (expected a name episode_<N>.zarr)')
    return p.parent / f'episode_{m.group(1)}_meta.json'


class EpisodeReader:
    """Lazy read access to one episode directory ``.../episode_<N>.zarr``.

    Opening checks that the meta parses and every array exists; it does not read data (use
    :func:`validate_episode` for a full check).
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.meta_path = meta_path_for(self.path)
        if not self.path.is_dir():
            raise SchemaError(f'{self.path}: episode directory is missing')
        self.meta: EpisodeMeta = EpisodeMeta.load(self.meta_path)
        try:
            self._group = zarr.open_group(
                LocalStore(self.path, read_only=True), mode='r', zarr_format=3
            )
        except Exception as exc:  # noqa: BLE001 - any zarr failure means corrupt metadata
            raise SchemaError(f'{self.path}: cannot open zarr group: {exc}') from exc
        self._arrays: dict[str, zarr.Array] = {}
        for key in meta_array_paths(self.meta):
            try:
                arr = self._group[key]
            except KeyError:
                raise SchemaError(f'{self.path}: array {key!r} is missing') from None
            except Exception as exc:  # noqa: BLE001
                raise SchemaError(f'{self.path}: array {key!r} is unreadable: {exc}') from exc
            if not isinstance(arr, zarr.Array):
                raise SchemaError(f'{self.path}: {key!r} is a group, expected an array')
            self._arrays[key] = arr

    @property
    def steps(self) -> int:
        return self.meta.steps

    @property
    def cameras(self) -> list[str]:
        return list(self.meta.cameras)

    def images(self, camera: str) -> zarr.Array:
        """Lazy ``(T, H, W, 3)`` uint8 array of a camera; ``images(name)[i]`` reads one frame."""
        key = camera_path(camera)
        if key not in self._arrays:
            raise KeyError(f'no camera {camera!r} in {self.path}; cameras: {self.meta.cameras}')
        return self._arrays[key]

    @property
    def state(self) -> zarr.Array:
        return self._arrays[STATE_PATH]

    @property
    def action(self) -> zarr.Array:
        return self._arrays[ACTION_PATH]

    @property
    def intervention(self) -> zarr.Array:
        return self._arrays[INTERVENTION_PATH]

    @property
    def timestamp(self) -> zarr.Array:
        return self._arrays[TIMESTAMP_PATH]

    @property
    def safety(self) -> zarr.Array | None:
        """(T,) uint8 driver safety codes (:data:`scarls.episodes.schema.SAFETY_CODES`), or
        None for an episode recorded without them."""
        return self._arrays.get(SAFETY_PATH)

    def executed(self) -> np.ndarray:
        """(T,) bool: the step's action was executed by the robot (all True without a
        ``safety`` array: older episodes, demonstrations)."""
        safety = self.safety
        return executed_mask(None if safety is None else np.asarray(safety[:]), self.steps)

    def step(self, i: int) -> StepRecord:
        """Read step ``i`` back as a :class:`StepRecord`."""
        if not -self.steps <= i < self.steps:
            raise IndexError(f'step {i} out of range for {self.steps} steps')
        i %= self.steps
        return StepRecord(
            images={c: np.asarray(self.images(c)[i]) for c in self.meta.cameras},
            state=np.asarray(self.state[i]),
            action=np.asarray(self.action[i]),
            intervention=bool(self.intervention[i]),
            timestamp=float(self.timestamp[i]),
        )

    def __len__(self) -> int:
        return self.steps

    def __repr__(self) -> str:
        return f'EpisodeReader({str(self.path)!r}, steps={self.steps})'


def _read(path: Path, key: str, arr: zarr.Array, sel: Any) -> np.ndarray:
    try:
        return np.asarray(arr[sel])
    except Exception as exc:  # noqa: BLE001 - corrupt chunks raise codec-specific errors
        raise SchemaError(f'{path}: array {key!r} has corrupt data at {sel!r}: {exc}') from exc


def validate_episode(path: str | os.PathLike[str], check_checksums: bool = True, *,
                     lowdim_checksums: bool = False) -> EpisodeMeta:
    """Check an episode's meta, arrays, dtypes, shapes, counts, that every frame's chunk file
    exists (a missing chunk would read as a black frame) and (optionally) sha256.

    ``check_checksums`` verifies the sha256 of every array (decoding every frame);
    ``lowdim_checksums`` only those of the small arrays (state, action, intervention,
    timestamp, safety) - the cheap check a trainer does before using an episode.
    Returns the parsed meta; raises :class:`SchemaError` describing the first problem found.
    """
    reader = EpisodeReader(path)
    p, meta = reader.path, reader.meta
    t = meta.steps
    for cam in meta.cameras:
        key = camera_path(cam)
        arr = reader._arrays[key]
        _check_array(p, key, arr, IMAGE_DTYPE, meta)
        # one frame per chunk, or K frames per chunk of the video codec (compacted episodes)
        gop = int(arr.chunks[0]) if isinstance(arr.metadata.codecs[0], _codecs.VideoCodec) else 1
        if arr.ndim != 4 or arr.shape[3] != 3 or arr.chunks != (gop, *arr.shape[1:]):
            raise SchemaError(
                f'{p}: image array {key!r} must be (T, H, W, 3) with one frame per chunk, '
                f'got shape {arr.shape} chunks {arr.chunks}'
            )
        adir = p / key
        frame_bytes = int(np.prod(arr.shape[1:]))
        codec = str(meta.image_codec.get('name', ''))
        for i in range(-(-t // gop)):
            chunk = adir / arr.metadata.encode_chunk_key((i, 0, 0, 0))
            if not chunk.is_file():
                raise SchemaError(f'{p}: frame {i} of {key!r} is missing (no chunk file {chunk})')
            problem = _chunk_problem(chunk, codec, frame_bytes)
            if problem:
                raise DamagedChunk(f'{p}: frame {i} of {key!r} cannot be decoded: the chunk '
                                   f'file is damaged ({problem})', chunk)
    for key, dtype in LOWDIM_DTYPES.items():
        _check_array(p, key, reader._arrays[key], dtype, meta)
    for key, dtype in OPTIONAL_DTYPES.items():
        if key in reader._arrays:
            _check_array(p, key, reader._arrays[key], dtype, meta)
    interv = _read(p, INTERVENTION_PATH, reader.intervention, slice(None))
    if int(interv.sum()) != meta.intervention_steps:
        raise SchemaError(
            f'{p}: meta says intervention_steps={meta.intervention_steps} but the intervention '
            f'array has {int(interv.sum())}'
        )
    if not (check_checksums or lowdim_checksums):
        return meta
    for key in meta_array_paths(meta):
        arr = reader._arrays[key]
        if not check_checksums and arr.ndim == 4:
            continue   # images: only their presence was checked
        digest = hashlib.sha256()
        if arr.ndim == 4:
            for i in range(t):
                digest.update(np.ascontiguousarray(_read(p, key, arr, i)).data)
        else:
            digest.update(np.ascontiguousarray(_read(p, key, arr, slice(None))).data)
        if digest.hexdigest() != meta.sha256[key]:
            raise SchemaError(
                f'{p}: checksum mismatch for {key!r} (stored data differs from what was '
                'recorded; the episode is corrupt)'
            )
    return meta


_BLOSC_HEADER = 16


class DamagedChunk(SchemaError):
    """One frame's chunk file is damaged (``chunk``: its path)."""

    def __init__(self, message: str, chunk: Path) -> None:
        super().__init__(message)
        self.chunk = chunk


def _chunk_problem(chunk: Path, codec: str, frame_bytes: int) -> str:
    """A cheap integrity check of one frame's chunk file without decoding it: a blosc chunk's
    header must announce the frame's size and exactly the file's length (a truncated or padded
    chunk can otherwise decode without an error into a partly black frame); a raw chunk must
    be the frame's size. '' when nothing is wrong (other codecs: not checked here)."""
    try:
        size = chunk.stat().st_size
        if codec in ('lz4', 'zstd'):
            with open(chunk, 'rb') as fh:
                head = fh.read(_BLOSC_HEADER)
            if len(head) < _BLOSC_HEADER:
                return f'{size} bytes, shorter than a blosc header'
            nbytes, cbytes = (int.from_bytes(head[4:8], 'little'),
                              int.from_bytes(head[12:16], 'little'))
            if nbytes != frame_bytes:
                return f'blosc header says {nbytes} bytes decoded, a frame is {frame_bytes}'
            if cbytes != size:
                return f'blosc header says {cbytes} bytes, the file has {size}'
        elif codec == 'raw' and size != frame_bytes:
            return f'{size} bytes, a raw frame is {frame_bytes}'
    except OSError as exc:
        return f'cannot read it: {exc}'
    return ''


def _check_array(p: Path, key: str, arr: zarr.Array, dtype: np.dtype, meta: EpisodeMeta) -> None:
    if arr.dtype != dtype:
        raise SchemaError(f'{p}: array {key!r} has dtype {arr.dtype}, expected {dtype}')
    if meta.dtypes.get(key) != str(dtype):
        raise SchemaError(
            f'{p}: meta dtype of {key!r} is {meta.dtypes.get(key)!r}, expected {str(dtype)!r}'
        )
    if list(arr.shape) != meta.shapes[key]:
        raise SchemaError(
            f'{p}: array {key!r} has shape {list(arr.shape)} but meta says {meta.shapes[key]}'
        )
    if not arr.shape or arr.shape[0] != meta.steps:
        raise SchemaError(
            f'{p}: array {key!r} has {arr.shape[0] if arr.shape else 0} steps, meta says '
            f'{meta.steps} (T mismatch)'
        )
