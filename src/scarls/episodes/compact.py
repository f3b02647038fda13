"""Compaction: rewrite finished episodes' camera arrays as short H.264 GOPs (compressed mode).

Recording stays lossless and real time (``lz4``/``raw``/``jpeg`` per frame, see
:mod:`scarls.episodes.codecs`); a finished episode can later be rewritten in place, in the
background, into the compressed form: each camera array re-chunked to ``gop`` frames per chunk,
each chunk one closed H.264 GOP (:class:`~scarls.episodes.codecs.VideoCodec`).  Everything
else (low-dimensional arrays, their checksums, the episode's index) is unchanged; the meta's
``image_codec`` becomes ``{'name': 'h264', 'lossless': False, 'level': <crf>, 'gop': K,
'preset': ..., 'compacted_from': <old codec>}`` and the cameras' sha256 cover the frames as
decoded from the new chunks.  :class:`~scarls.episodes.dataset.EpisodeDataset` and
:class:`~scarls.episodes.reader.EpisodeReader` read both forms transparently.

How an episode is replaced: the new episode directory is built next to the old one (a hidden
``.episode_<N>.zarr.compact-<pid>``; the unchanged files are hard links), its frames are
checked against the old ones' checksums first (a corrupt episode is not compacted), then the
two directories are exchanged atomically (``renameat2(RENAME_EXCHANGE)`` where available) under
the task lock, the meta is replaced atomically and the old frames are deleted.  A reader never
sees a missing episode; a dataset that indexed the episode before re-reads its layout on the
first frame that no longer decodes (see :meth:`EpisodeDataset._frame`).
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import hashlib
import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from zarr.storage import LocalStore

from scarls.episodes.codecs import (
    DEFAULT_VIDEO_GOP,
    VIDEO_FORMATS,
    VideoCodec,
    decode_video_chunk,
    encode_video_chunk,
)
from scarls.episodes.errors import SchemaError
from scarls.episodes.layout import (
    fsync_dir,
    fsync_file,
    list_episodes,
    remove_tree,
    task_lock,
)
from scarls.episodes.reader import EpisodeReader
from scarls.episodes.schema import camera_path

__all__ = ['CompactResult', 'compact_dataset', 'compact_episode', 'is_compacted']

log = logging.getLogger(__name__)

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


@dataclass(frozen=True)
class CompactResult:
    """What :func:`compact_episode` did to one episode."""

    path: Path
    skipped: bool  # already compressed: nothing done
    frames: int  # frames per camera
    cameras: tuple[str, ...]
    bytes_before: int  # camera chunk bytes
    bytes_after: int
    seconds: float

    @property
    def encode_frames_per_s(self) -> float:
        n = self.frames * len(self.cameras)
        return n / self.seconds if self.seconds > 0 and not self.skipped else 0.0

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d['path'] = str(self.path)
        d['encode_frames_per_s'] = round(self.encode_frames_per_s, 1)
        return d


def _tree_bytes(path: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.stat(os.path.join(dirpath, name)).st_size
    return total


def is_compacted(path: str | os.PathLike[str]) -> bool:
    """True if every camera array of the episode is stored with the video codec."""
    reader = EpisodeReader(path)
    return all(
        isinstance(reader.images(c).metadata.codecs[0], VideoCodec) for c in reader.cameras
    )


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two directory entries (Linux ``renameat2``); False if unsupported."""
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not on this file system
        return False
    raise OSError(err, f'renameat2({a}, {b}, RENAME_EXCHANGE): {os.strerror(err)}')


def _fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


def compact_episode(
    path: str | os.PathLike[str],
    *,
    fmt: str = 'h264',
    gop: int = DEFAULT_VIDEO_GOP,
    crf: int | None = None,
    preset: str | None = None,
    fsync: bool = True,
) -> CompactResult:
    """Rewrite a finished episode's camera arrays as ``gop``-frame video chunks, in place.

    Raises :class:`SchemaError` if the episode is unreadable or its frames do not match the
    checksums of its meta (it is left untouched).  An episode already compressed is skipped.
    """
    if fmt not in VIDEO_FORMATS:
        raise ValueError(f'unknown video format {fmt!r}; expected one of {sorted(VIDEO_FORMATS)}')
    if isinstance(gop, bool) or not isinstance(gop, int) or not 1 <= gop <= 256:
        raise ValueError(f'gop must be an int in [1, 256], got {gop!r}')
    t_start = time.perf_counter()
    src = Path(path)
    reader = EpisodeReader(src)
    meta = reader.meta
    cams = tuple(reader.cameras)
    before = sum(_tree_bytes(src / camera_path(c)) for c in cams)
    if all(isinstance(reader.images(c).metadata.codecs[0], VideoCodec) for c in cams):
        return CompactResult(src, True, meta.steps, cams, before, before, 0.0)
    codec = VideoCodec(format=fmt, crf=crf, preset=preset)
    tmp = src.parent / f'.{src.name}.compact-{os.getpid()}'
    if tmp.exists():
        shutil.rmtree(tmp)
    skip = {tuple(camera_path(c).rsplit('/', 1)) for c in cams}

    def ignore(dirpath: str, names: list[str]) -> list[str]:
        rel = os.path.relpath(dirpath, src)
        return [n for n in names if (rel, n) in skip]

    shutil.copytree(src, tmp, copy_function=os.link, ignore=ignore)
    sha = dict(meta.sha256)
    try:
        store = LocalStore(tmp)
        for cam in cams:
            key = camera_path(cam)
            old = reader.images(cam)
            t, h, w = (int(x) for x in old.shape[:3])
            new = zarr.create_array(
                store, name=key, shape=old.shape, chunks=(gop, h, w, 3), dtype='uint8',
                serializer=codec, compressors=(), fill_value=0,
                chunk_key_encoding=old.metadata.chunk_key_encoding,
                attributes=dict(old.attrs), dimension_names=old.metadata.dimension_names,
            )
            check, digest = hashlib.sha256(), hashlib.sha256()
            decoded = np.empty((gop, h, w, 3), np.uint8)
            for t0 in range(0, t, gop):
                block = np.ascontiguousarray(old[t0:t0 + gop])
                check.update(block.data)
                n = block.shape[0]
                if n < gop:  # the last, partial GOP: repeat the last frame (cheap to code)
                    block = np.concatenate([block, np.repeat(block[-1:], gop - n, 0)])
                # chunk files written directly (what zarr would write, without its overhead)
                data = encode_video_chunk(block, fmt, codec.crf, codec.preset)
                chunk = tmp / key / new.metadata.encode_chunk_key((t0 // gop, 0, 0, 0))
                chunk.parent.mkdir(parents=True, exist_ok=True)
                chunk.write_bytes(data)
                decode_video_chunk(data, gop, decoded, fmt=fmt)
                digest.update(decoded[:n].data)
            if check.hexdigest() != meta.sha256.get(key):
                raise SchemaError(f'{src / key}: frames do not match the meta sha256; the '
                                  'episode is corrupt and was not compacted')
            sha[key] = digest.hexdigest()
        old_codec = dict(meta.image_codec)
        new_meta = dataclasses.replace(meta, sha256=sha, image_codec={
            'name': fmt, 'lossless': False, 'level': codec.crf, 'gop': gop,
            'preset': codec.preset, 'compacted_from': old_codec.get('name', ''),
        })
        meta_tmp = src.parent / f'.{reader.meta_path.name}.compact-{os.getpid()}'
        meta_tmp.write_text(new_meta.to_json(), encoding='utf-8')
        if fsync:
            _fsync_tree(tmp)
            fsync_file(meta_tmp)
        with task_lock(src.parent):
            if not _exchange(tmp, src):
                aside = src.parent / f'.{src.name}.old-{os.getpid()}'
                os.rename(src, aside)
                os.rename(tmp, src)
                os.rename(aside, tmp)
            os.replace(meta_tmp, reader.meta_path)
            if fsync:
                fsync_dir(src.parent)
    except BaseException:
        remove_tree(tmp)         # after a failed zarr call's writes, which would re-create it
        with contextlib.suppress(OSError, UnboundLocalError):
            meta_tmp.unlink()
        raise
    shutil.rmtree(tmp)  # the old frames
    after = sum(_tree_bytes(src / camera_path(c)) for c in cams)
    res = CompactResult(src, False, meta.steps, cams, before, after,
                        time.perf_counter() - t_start)
    log.info('compacted %s: %d -> %d bytes of frames in %.1f s', src, before, after, res.seconds)
    return res


def compact_dataset(
    root: str | os.PathLike[str],
    tasks: str | Sequence[str] | None = None,
    **kwargs,
) -> list[CompactResult]:
    """:func:`compact_episode` on every complete episode under ``root`` (or of ``tasks``)."""
    names = [None] if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
    out = []
    for task in names:
        for entry in list_episodes(root, task):
            out.append(compact_episode(entry.path, **kwargs))
    return out
