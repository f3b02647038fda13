"""Fast random-access training dataset over the Zarr episodes of a data root.

:class:`EpisodeDataset` indexes every (episode, frame) pair of the complete episodes under
``<root>/<task>/`` with a flat index, in the order the episodes were discovered (sorted by
``(task, index)`` at construction; episodes found later by :meth:`EpisodeDataset.refresh` are
appended at the end, so existing flat indices never move).  One item is a dict of numpy arrays
and Python scalars (the default ``torch`` collate turns them into tensors)::

    'image.<cam>'   uint8   (H, W, 3)  one per requested camera
    'state'         float32 (D_state,)
    'action'        float32 (K, D_action)  actions of frames t .. t+K-1; past the episode end
                                           the last action is repeated
    'action_mask'   bool    (K,)       False on the padded rows and on steps the robot did not
                                       execute (see 'executed')
    'intervention'  bool               human in control at frame t
    'executed'      bool               the robot executed the action of frame t (the episode's
                                       ``safety`` array; True throughout without one) - a
                                       frame that was not is no training sample
    'timestamp'     float              seconds
    'episode'       int                position of the episode in :meth:`episode_keys`
    'frame'         int                t
    'task'          str
    'outcome'       str                'success' | 'fail' | 'aborted'

Options for code written against LeRobot's items: ``images='stacked'`` replaces the
``'image.<cam>'`` entries by one ``'images'`` uint8 ``(n_cams, 3, H, W)`` (channels first,
cameras in ``cameras`` order; a view with channels-last strides of the decoded frames, as
``torch.channels_last``: call ``.contiguous()`` if a model needs packed CHW), and
``action_is_pad=True`` adds ``'action_is_pad'`` bool ``(K,)``, the negation of
``'action_mask'`` (True on the rows past the episode end and on steps not executed; for data
without a safety array, exactly LeRobot's padding flag).  :meth:`EpisodeDataset.get_item` with
``out=`` (an item returned before) reads the next item into the same arrays.

Reading strategy:

* The low-dimensional arrays (state, action, intervention, timestamp, safety) of an episode are
  read once, when the episode is added, checked against the sha256 in its meta and kept in memory.
* Camera frames are read per item.  When a camera array is stored the way
  :class:`~scarls.episodes.writer.EpisodeWriter` stores it - one plain chunk file per frame,
  codecs ``bytes + blosc``, ``bytes`` alone (``raw``) or the ``scarls.image`` codec, no
  sharding - the frame's chunk file is read with one ``pread`` and decoded directly (blosc with
  one thread, or the project's image decoder; ``raw`` is read straight into the output array),
  bypassing zarr's per-call machinery.  Compacted episodes (``scarls.video`` chunks of K frames,
  one H.264 GOP each, see :mod:`scarls.episodes.compact`) are read the same way: the GOP's
  chunk file, decoded up to the requested frame.  Any other layout (sharded or re-chunked
  arrays, other codecs or chunk key encodings) is read through zarr (``io='zarr'`` forces this
  path for every episode).
* Memory: compressed chunk files are read into a per-thread buffer, and frames are decoded into
  buffers of a per-process pool (:class:`_BufferPool`) that are handed out again once the
  caller dropped every reference to them - no allocation and no page faults per sample in a
  loop that uses and drops its items or batches (or the default collate, which copies them).
  Batches built in a DataLoader worker must be fresh shared memory; their pages are faulted in
  with one ``madvise(MADV_POPULATE_WRITE)`` instead of one fault per page.

Batches: ``dataset[list_of_indices]`` (:meth:`EpisodeDataset.get_batch`) returns the batch the
default collate would build from the items - torch tensors, ``'task'``/``'outcome'`` as lists -
but decodes the frames straight into the batch tensors (in a DataLoader worker: into shared
memory), saving the per-item arrays and the collate copy.  :func:`make_loader` builds a
``DataLoader`` that fetches batches this way.  ``decode_threads=N`` reads the frames of an item
or batch on N threads (the file reads and decoders release the GIL); use it with
``num_workers=0``, not in addition to worker processes.

Worker safety: the dataset holds no open file handles between calls; its only per-process state
(zarr arrays of the zarr path, the decode thread pool) is created lazily, dropped when pickled
and discarded when first used in a forked process, so it works in ``DataLoader`` workers.

Refreshing and DataLoader workers: a worker holds a copy of the dataset made when its
``DataLoader`` iterator started.  Flat indices below that copy's length stay valid forever; an
index beyond it raises ``IndexError`` in the worker, so recreate the iterator (the default,
``persistent_workers=False``, does it every epoch) after :meth:`EpisodeDataset.refresh` added
episodes, or index by ``(episode_key, frame)`` tuples, which workers resolve themselves by
loading the episode on first use.

Corrupt input: an episode whose meta or arrays are unreadable, inconsistent or fail the sha256
check is skipped with a logged warning naming the file (see :meth:`EpisodeDataset.skipped`);
a frame that cannot be read or decoded raises :class:`FrameReadError` naming the episode, frame,
camera and file.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import ctypes
import hashlib
import logging
import math
import os
import sys
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imagecodecs
import numcodecs.blosc
import numpy as np
import torch
import zarr
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    Dataset,
    RandomSampler,
    Sampler,
    SequentialSampler,
    get_worker_info,
)
from zarr.codecs import BloscCodec, BytesCodec

from scarls.episodes.codecs import ImageCodec, VideoCodec, decode_image, decode_video_chunk
from scarls.episodes.errors import SchemaError
from scarls.episodes.layout import EpisodeEntry, list_episodes
from scarls.episodes.reader import EpisodeReader, validate_episode
from scarls.episodes.schema import (
    ACTION_PATH,
    INTERVENTION_PATH,
    LOWDIM_DTYPES,
    SAFETY_PATH,
    STATE_PATH,
    TIMESTAMP_PATH,
    EpisodeMeta,
    camera_path,
    executed_mask,
)

__all__ = [
    'EpisodeDataset',
    'EpisodeInfo',
    'FrameReadError',
    'episode_key',
    'make_loader',
    'tune_malloc',
]

log = logging.getLogger(__name__)

VERIFY_LEVELS = ('none', 'lowdim', 'full')
IO_MODES = ('auto', 'zarr')
IMAGE_LAYOUTS = ('per_camera', 'stacked')
_KEY_PROBE = 987654321
_HAVE_IMAGECODECS_BLOSC = bool(getattr(getattr(imagecodecs, 'BLOSC', None), 'available', False))


class FrameReadError(SchemaError):
    """A camera frame of an indexed episode could not be read or decoded."""


def episode_key(task: str, index: int) -> str:
    """The dataset key of episode ``index`` of ``task``: ``'<task>/episode_<index>'``."""
    return f'{task}/episode_{index}'


@dataclass(frozen=True)
class EpisodeInfo:
    """Metadata of one indexed episode (arrays are read-only views of the in-memory cache)."""

    key: str
    position: int
    task: str
    index: int
    path: Path
    steps: int
    outcome: str
    model_version: int | None
    intervention: np.ndarray
    timestamp: np.ndarray
    meta: EpisodeMeta
    executed: np.ndarray | None = None
    """(T,) bool: the robot executed the step's action (all True without a safety array)."""

    @property
    def intervention_steps(self) -> int:
        return self.meta.intervention_steps


@dataclass(frozen=True)
class _Camera:
    name: str
    direct: bool  # read the chunk file ourselves (else through zarr)
    decoder: str  # 'blosc', 'raw', an image format ('jpeg', ...), 'video'; '' for zarr
    shape: tuple[int, int, int]
    prefix: str  # chunk file path = prefix + str(frame // gop) + suffix
    suffix: str
    gop: int = 1  # frames per chunk (> 1 only for video chunks)
    video_format: str = ''


@dataclass
class _Episode:
    key: str
    position: int
    task: str
    index: int
    path: Path
    meta: EpisodeMeta
    steps: int
    state: np.ndarray  # (T, Ds) float32
    action_padded: np.ndarray  # (T + K - 1, Da) float32, last row repeated
    intervention: np.ndarray  # (T,) bool
    timestamp: np.ndarray  # (T,) float64
    cameras: tuple[_Camera, ...]
    executed_padded: np.ndarray  # (T + K - 1,) bool, False on the padding


def _readonly(arr: np.ndarray) -> np.ndarray:
    arr.setflags(write=False)
    return arr


_SCRATCH = threading.local()  # per thread: a reusable read buffer for compressed chunk files


def _read_chunk(path: str) -> memoryview:
    """Read a chunk file into this thread's reusable buffer; valid until the thread's next read.

    Reading into fresh ``bytes`` would allocate (and page-fault in) ~0.2-0.7 MB per frame.
    """
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        buf = getattr(_SCRATCH, 'buf', None)
        if buf is None or len(buf) < size:
            buf = np.empty(max(size, 1 << 20) * 5 // 4, np.uint8)
            _SCRATCH.buf = buf
        view = memoryview(buf)[:size]
        done = 0
        while done < size:  # short reads (signals, network file systems)
            n = os.preadv(fd, [view[done:]], done)
            if n <= 0:
                raise OSError(f'chunk file ended after {done} of {size} bytes')
            done += n
        return view
    finally:
        os.close(fd)


_MADV_POPULATE_WRITE = 23  # Linux >= 5.14
_PAGE = os.sysconf('SC_PAGE_SIZE') if hasattr(os, 'sysconf') else 4096
_madvise = None
if sys.platform.startswith('linux'):  # the advice value is Linux's
    try:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        _madvise.restype = ctypes.c_int
    except (OSError, AttributeError):
        _madvise = None
_populate_ok = _madvise is not None


def _populate(ptr: int, nbytes: int) -> bool:
    """Fault in the pages of a fresh buffer with one ``madvise`` call instead of one trap each.

    Writing into fresh memory costs one page fault per 4 KiB page (~675 per 480x640x3 sample,
    micro-seconds each on a virtual machine); ``MADV_POPULATE_WRITE`` maps them in one system
    call.  Best effort: returns False (and stops trying) where the kernel does not support it.
    """
    global _populate_ok
    if not _populate_ok or nbytes < 16 * _PAGE:
        return False
    start = ptr & ~(_PAGE - 1)
    if _madvise(start, ptr + nbytes - start, _MADV_POPULATE_WRITE) != 0:
        _populate_ok = False
        return False
    return True


class _BufferPool:
    """Frame and batch buffers that are handed out again once nobody references them.

    An item or a batch gets its image arrays from here.  A buffer is free again when the only
    reference left is the pool's own: every numpy view, ``torch.from_numpy`` tensor (and every
    view of that tensor, through its storage) keeps a reference to the buffer, so data a caller
    still holds is never overwritten.  Steady state - items or batches used and dropped, as in a
    training loop or the default collate - allocates nothing and page-faults nothing.  Holds at
    most ``max_bytes``; beyond that, buffers are allocated fresh and not kept.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self.allocated = 0  # buffers created (pooled or not), for tests and benchmarks
        self._bufs: dict[tuple[int, ...], list[np.ndarray]] = {}
        self._lock = threading.Lock()

    def __reduce__(self) -> tuple:
        return (_BufferPool, (self.max_bytes,))  # an empty pool in the receiving process

    def get(self, shape: tuple[int, ...]) -> np.ndarray:
        """A uint8 array of ``shape`` that no one else references (contents undefined)."""
        with self._lock:
            bufs = self._bufs.get(shape)
            if bufs is not None:
                for k in range(len(bufs)):
                    buf = bufs[k]
                    # references: the pool's list, ``buf`` here and getrefcount's argument
                    if sys.getrefcount(buf) == 3:
                        return buf[...]
            self.allocated += 1
            buf = np.empty(shape, np.uint8)
            _populate(buf.ctypes.data, buf.nbytes)
            if self.nbytes + buf.nbytes > self.max_bytes:
                return buf
            self.nbytes += buf.nbytes
            self._bufs.setdefault(shape, []).append(buf)
            return buf[...]


def _read_into(path: str, out: np.ndarray) -> None:
    """Read an uncompressed chunk file straight into ``out`` (C-contiguous uint8)."""
    view = memoryview(out.reshape(-1))
    fd = os.open(path, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        if size != out.nbytes:
            raise ValueError(f'chunk file has {size} bytes, expected {out.nbytes}')
        done = 0
        while done < size:  # short reads (signals, network file systems)
            n = os.preadv(fd, [view[done:]], done)
            if n <= 0:
                raise ValueError(f'chunk file ended after {done} of {size} bytes')
            done += n
    finally:
        os.close(fd)


def _decode_blosc(data: bytes, out: np.ndarray) -> None:
    """Decode a blosc chunk into ``out`` (C-contiguous uint8) with one thread, no global state."""
    if _HAVE_IMAGECODECS_BLOSC:
        flat = out.reshape(-1)
        res = imagecodecs.blosc_decode(data, numthreads=1, out=flat)
        if res.nbytes != out.nbytes:
            raise ValueError(f'decoded {res.nbytes} bytes, expected {out.nbytes}')
        return
    nbytes, _cbytes, _blocksize = numcodecs.blosc._cbuffer_sizes(data)
    if nbytes != out.nbytes:
        raise ValueError(f'blosc header says {nbytes} bytes, expected {out.nbytes}')
    numcodecs.blosc.decompress(data, out)


def _check_chunk_files(adir: Path, prefix: str, suffix: str, steps: int) -> None:
    """Raise SchemaError unless chunk files 0..steps-1 exist (a missing one would read as 0)."""
    nested = '/' in prefix + suffix  # nested chunk keys: stat each file
    try:
        names = set() if nested else set(os.listdir(adir))
    except OSError as exc:
        raise SchemaError(f'{adir}: cannot list chunk files: {exc}') from exc
    for i in range(steps):
        name = f'{prefix}{i}{suffix}'
        if not ((adir / name).is_file() if nested else name in names):
            raise SchemaError(f'{adir / name}: chunk file of frame {i} is missing')


def _one_resolution(key: str, cameras: list[str]) -> str:
    return (f"images='stacked' needs one resolution for all cameras {cameras}; episode {key} "
            'has several')


def _frame_target(arr: Any, shape: tuple[int, ...], chw: bool = False) -> np.ndarray | None:
    """The writable C-contiguous HWC uint8 buffer behind a previous item's image entry."""
    if isinstance(arr, torch.Tensor):
        if arr.device.type != 'cpu':
            return None
        arr = arr.numpy()
    if not isinstance(arr, np.ndarray):
        return None
    if chw:
        if arr.ndim != 4:
            return None
        arr = arr.transpose(0, 2, 3, 1)
    if (arr.shape != shape or arr.dtype != np.uint8 or not arr.flags.c_contiguous
            or not arr.flags.writeable):
        return None
    return arr


def _fill(dst: Any, src: np.ndarray) -> np.ndarray:
    """``src`` copied into ``dst`` if it fits (same shape and dtype, writable), else a copy."""
    if isinstance(dst, torch.Tensor) and dst.device.type == 'cpu':
        dst = dst.numpy()
    if (isinstance(dst, np.ndarray) and dst.shape == src.shape and dst.dtype == src.dtype
            and dst.flags.writeable):
        np.copyto(dst, src)
        return dst
    return src.copy()


def _empty(shape: tuple[int, ...], dtype: torch.dtype, shared: bool) -> torch.Tensor:
    """An uninitialised tensor; in shared memory if ``shared`` (as the default collate does).

    A shared tensor is fresh memory every time (the receiving process owns it once sent); its
    pages are faulted in with one ``madvise`` call rather than one fault per page.
    """
    if shared:
        proto = torch.empty(0, dtype=dtype)
        storage = proto._typed_storage()._new_shared(math.prod(shape), device=proto.device)
        out = proto.new(storage).resize_(*shape)
        _populate(out.data_ptr(), out.numel() * out.element_size())
        return out
    return torch.empty(shape, dtype=dtype)


class EpisodeDataset(Dataset):
    """Random access by flat index over the frames of all complete episodes under ``root``.

    Parameters
    ----------
    root:
        Data root holding ``<task>/episode_<N>.zarr`` directories.
    tasks:
        A task name, a list of task names, or None for every task directory under ``root``.
    chunk_size:
        ``K``, the number of future actions per item.
    cameras:
        Cameras to load (each item gets ``'image.<cam>'``); an episode without one of them is
        skipped with a warning.  May be empty (low-dimensional data only).
    episode_filter:
        Optional ``filter(meta: EpisodeMeta) -> bool``; episodes for which it returns False are
        not indexed (evaluated once per episode).
    verify:
        ``'lowdim'`` (default) checks the sha256 of the low-dimensional arrays and the presence
        of every frame's chunk file; ``'full'`` also decodes every frame and checks the image
        sha256 (slow: it reads the whole episode); ``'none'`` only checks shapes and presence.
    io:
        ``'auto'`` reads chunk files directly where the layout allows, ``'zarr'`` always reads
        frames through zarr (slower; for comparison and exotic stores).
    on_new_episode:
        Optional callback called with each newly indexed episode key (at construction and in
        :meth:`refresh`), in index order; not called in DataLoader workers.
    decode_threads:
        Read the frames of one item/batch on this many threads (0 or 1: on the caller's
        thread).  Helps with ``num_workers=0`` when a core is free.
    images:
        ``'per_camera'`` (default): one ``'image.<cam>'`` (H, W, 3) entry per camera;
        ``'stacked'``: one ``'images'`` (n_cams, 3, H, W) entry (batches: (B, n_cams, 3, H, W);
        every camera must have the same resolution).
    action_is_pad:
        Also return ``'action_is_pad'`` (``~action_mask``), LeRobot's name and sense.

    ``episode_filter`` must be picklable if DataLoader workers are started with ``spawn``.

    Memory: the frames of items and the image tensors of private batches come from a
    per-process pool of buffers that are reused once the caller dropped every reference to
    them (see ``buffer_pool_bytes``), so a training loop neither allocates nor page-faults per
    sample; frames a caller keeps are never overwritten.

    Not safe for concurrent :meth:`refresh` calls from several threads; reading items from
    other threads while one thread refreshes is fine (new episodes only become visible once
    fully added).
    """

    buffer_pool_bytes: int = 256 << 20
    """Most bytes of frame/batch buffers kept for reuse per process (fresh ones beyond)."""

    def __init__(
        self,
        root: str | os.PathLike[str],
        tasks: str | Sequence[str] | None = None,
        *,
        chunk_size: int = 50,
        cameras: Sequence[str] = ('top', 'left', 'right'),
        episode_filter: Callable[[EpisodeMeta], bool] | None = None,
        verify: str = 'lowdim',
        io: str = 'auto',
        on_new_episode: Callable[[str], Any] | None = None,
        decode_threads: int = 0,
        images: str = 'per_camera',
        action_is_pad: bool = False,
    ) -> None:
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f'chunk_size must be an int >= 1, got {chunk_size!r}')
        if verify not in VERIFY_LEVELS:
            raise ValueError(f'verify must be one of {VERIFY_LEVELS}, got {verify!r}')
        if io not in IO_MODES:
            raise ValueError(f'io must be one of {IO_MODES}, got {io!r}')
        if isinstance(decode_threads, bool) or not isinstance(decode_threads, int) or not (
            0 <= decode_threads <= 64
        ):
            raise ValueError(f'decode_threads must be an int in [0, 64], got {decode_threads!r}')
        if images not in IMAGE_LAYOUTS:
            raise ValueError(f'images must be one of {IMAGE_LAYOUTS}, got {images!r}')
        cams = (cameras,) if isinstance(cameras, str) else tuple(cameras)
        if images == 'stacked' and not cams:
            raise ValueError("images='stacked' needs at least one camera")
        if len(set(cams)) != len(cams) or not all(isinstance(c, str) and c for c in cams):
            raise ValueError(f'cameras must be unique non-empty names, got {cameras!r}')
        self.root = Path(root)
        self.tasks: tuple[str, ...] | None = (
            None if tasks is None else (tasks,) if isinstance(tasks, str) else tuple(tasks)
        )
        self.chunk_size = chunk_size
        self.cameras = cams
        self.verify = verify
        self.io = io
        self._filter = episode_filter
        self._on_new = on_new_episode
        self._episodes: list[_Episode] = []
        self._offsets: list[int] = [0]  # offsets[i] = flat index of episode i's first frame
        self._by_key: dict[str, int] = {}
        self._skipped: dict[str, str] = {}  # key -> reason (corrupt or inconsistent)
        self._filtered: set[str] = set()
        self._dims: tuple[int, int] | None = None  # (state_dim, action_dim) of the first episode
        self.decode_threads = decode_threads
        self.images = images
        self.action_is_pad = bool(action_is_pad)
        # per-process state, created lazily and never inherited (see _local)
        self._pid = os.getpid()
        self._zarr_cache: dict[str, Any] = {}
        self._pool: ThreadPoolExecutor | None = None
        self._buffers = _BufferPool(self.buffer_pool_bytes)
        self.refresh()

    # -- pickling / per-process state -------------------------------------------------------

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state['_zarr_cache'] = {}
        state['_pool'] = None
        state['_on_new'] = None  # a main-process callback
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _local(self) -> None:
        """Drop per-process state inherited through fork (zarr objects, the thread pool)."""
        if self._pid != os.getpid():
            self._zarr_cache = {}
            self._pool = None  # its threads do not exist in this process
            # buffers referenced by the parent's objects look free here but are shared
            # copy-on-write with the parent: start afresh
            self._buffers = _BufferPool(self.buffer_pool_bytes)
            self._pid = os.getpid()

    def _zarr_array(self, ep: _Episode, cam: str) -> zarr.Array:
        self._local()
        key = f'{ep.key}:{cam}'
        arr = self._zarr_cache.get(key)
        if arr is None:
            arr = EpisodeReader(ep.path).images(cam)
            self._zarr_cache[key] = arr
        return arr

    def _run_jobs(self, jobs: list[tuple[_Episode, _Camera, int, np.ndarray | None]]) -> list:
        """Read frames, on ``decode_threads`` threads if configured (the decoders drop the GIL)."""
        self._local()
        if self.decode_threads < 2 or len(jobs) < 2:
            return [self._frame(*job) for job in jobs]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(
                self.decode_threads - 1, thread_name_prefix='scarls-decode'
            )
        n = min(self.decode_threads, len(jobs))
        parts = [jobs[k::n] for k in range(n)]
        # parts 1.. on the pool, part 0 on the calling thread
        futures = [self._pool.submit(self._read_part, p) for p in parts[1:]]
        try:
            first = self._read_part(parts[0])
        finally:
            concurrent.futures.wait(futures)  # never leave threads writing into our buffers
        results = [first] + [f.result() for f in futures]  # re-raises the first error
        out: list = [None] * len(jobs)
        for k, res in enumerate(results):
            out[k::n] = res
        return out

    def _read_part(self, jobs: list[tuple[_Episode, _Camera, int, np.ndarray | None]]) -> list:
        return [self._frame(*job) for job in jobs]

    def close(self) -> None:
        """Stop the decode threads (if any); the dataset stays usable (they restart lazily)."""
        pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            with contextlib.suppress(Exception):
                pool.shutdown(wait=True)

    # -- discovery ---------------------------------------------------------------------------

    def _list(self) -> list[EpisodeEntry]:
        if self.tasks is None:
            return list_episodes(self.root)
        out: list[EpisodeEntry] = []
        for task in self.tasks:
            out.extend(list_episodes(self.root, task))
        out.sort(key=lambda e: (e.task, e.index))
        return out

    def refresh(self) -> int:
        """Index complete episodes that appeared since the last call; return how many.

        Costs one directory listing per task when nothing is new.  New episodes are appended
        at the end of the flat index (sorted by task and index among themselves).
        """
        added = 0
        for entry in self._list():
            key = episode_key(entry.task, entry.index)
            if key in self._by_key or key in self._skipped or key in self._filtered:
                continue
            if self._add(entry, key):
                added += 1
        return added

    def _skip(self, key: str, reason: str) -> None:
        self._skipped[key] = reason
        log.warning('skipping episode %s: %s', key, reason)

    def _add(self, entry: EpisodeEntry, key: str) -> bool:
        try:
            meta = EpisodeMeta.load(entry.meta_path)
        except SchemaError as exc:
            self._skip(key, str(exc))
            return False
        if self._filter is not None and not self._filter(meta):
            self._filtered.add(key)
            return False
        try:
            ep = self._load(entry, key, meta)
        except SchemaError as exc:
            self._skip(key, str(exc))
            return False
        except Exception as exc:  # noqa: BLE001 - any failure to read means a corrupt episode
            self._skip(key, f'{entry.path}: unreadable: {type(exc).__name__}: {exc}')
            return False
        self._episodes.append(ep)
        self._offsets.append(self._offsets[-1] + ep.steps)  # makes it visible to len()
        self._by_key[key] = ep.position
        if self._on_new is not None and get_worker_info() is None:
            self._on_new(key)
        return True

    def _load(self, entry: EpisodeEntry, key: str, meta: EpisodeMeta) -> _Episode:
        path = entry.path
        missing = [c for c in self.cameras if c not in meta.cameras]
        if missing:
            raise SchemaError(
                f'{path}: has cameras {meta.cameras}, the dataset needs {list(self.cameras)} '
                f'(missing {missing})'
            )
        if meta.steps < 1:
            raise SchemaError(f'{path}: episode has no steps')
        if self.verify == 'full':
            validate_episode(path, check_checksums=True)
        reader = EpisodeReader(path)
        t = meta.steps
        low: dict[str, np.ndarray] = {}
        arrays = {
            STATE_PATH: reader.state,
            ACTION_PATH: reader.action,
            INTERVENTION_PATH: reader.intervention,
            TIMESTAMP_PATH: reader.timestamp,
        }
        for name, dtype in LOWDIM_DTYPES.items():
            arr = arrays[name]
            try:
                data = np.ascontiguousarray(np.asarray(arr[...]))
            except Exception as exc:  # noqa: BLE001 - codec errors of corrupt chunks
                raise SchemaError(f'{path / name}: array is unreadable: {exc}') from exc
            if data.dtype != dtype or data.shape[:1] != (t,):
                raise SchemaError(
                    f'{path}: array {name!r} has dtype {data.dtype} shape {data.shape}, '
                    f'expected {dtype} with {t} steps'
                )
            if self.verify != 'none':
                digest = hashlib.sha256(data.data).hexdigest()
                if digest != meta.sha256.get(name):
                    raise SchemaError(
                        f'{path / name}: sha256 mismatch (stored data differs from what was '
                        'recorded; the episode is corrupt)'
                    )
            low[name] = data
        codes = None
        if SAFETY_PATH in meta.shapes:
            try:
                codes = np.ascontiguousarray(np.asarray(reader.safety[...]))
            except Exception as exc:  # noqa: BLE001 - codec errors of corrupt chunks
                raise SchemaError(f'{path / SAFETY_PATH}: array is unreadable: {exc}') from exc
            if self.verify != 'none' and \
                    hashlib.sha256(codes.data).hexdigest() != meta.sha256.get(SAFETY_PATH):
                raise SchemaError(f'{path / SAFETY_PATH}: sha256 mismatch (stored data differs '
                                  'from what was recorded; the episode is corrupt)')
        executed = executed_mask(codes, t)
        state, action = low[STATE_PATH], low[ACTION_PATH]
        if state.ndim != 2 or action.ndim != 2:
            raise SchemaError(
                f'{path}: state/action must be 2-D, got {state.shape} and {action.shape}'
            )
        dims = (state.shape[1], action.shape[1])
        if self._dims is None:
            self._dims = dims
        elif dims != self._dims:
            raise SchemaError(
                f'{path}: state/action dims {dims} differ from the dataset\'s {self._dims}'
            )
        cams = tuple(self._camera(reader, path, c, t) for c in self.cameras)
        k = self.chunk_size
        padded = np.concatenate([action, np.repeat(action[-1:], k - 1, axis=0)], axis=0)
        executed_padded = np.concatenate([executed, np.zeros(k - 1, dtype=bool)])
        return _Episode(
            key=key,
            position=len(self._episodes),
            task=entry.task,
            index=entry.index,
            path=path,
            meta=meta,
            steps=t,
            state=_readonly(state),
            action_padded=_readonly(padded),
            intervention=_readonly(low[INTERVENTION_PATH]),
            timestamp=_readonly(low[TIMESTAMP_PATH]),
            cameras=cams,
            executed_padded=_readonly(executed_padded),
        )

    def _camera(self, reader: EpisodeReader, path: Path, cam: str, steps: int) -> _Camera:
        key = camera_path(cam)
        arr = reader.images(cam)
        md = arr.metadata
        if (
            arr.dtype != np.uint8
            or arr.ndim != 4
            or arr.shape[0] != steps
            or arr.shape[3] != 3
            or arr.chunks[1:] != tuple(arr.shape[1:])
            or (arr.chunks[0] != 1 and not isinstance(md.codecs[0], VideoCodec))
        ):
            raise SchemaError(
                f'{path / key}: expected uint8 (T={steps}, H, W, 3) with one frame per chunk '
                f'(or K per video chunk), got {arr.dtype} {arr.shape} chunks {arr.chunks}'
            )
        shape = (int(arr.shape[1]), int(arr.shape[2]), 3)
        probe = md.encode_chunk_key((_KEY_PROBE, 0, 0, 0))
        prefix, _, suffix = probe.partition(str(_KEY_PROBE))
        codecs = tuple(md.codecs)
        decoder = ''
        gop = 1
        if len(codecs) == 1 and isinstance(codecs[0], VideoCodec):
            decoder = 'video'
            gop = int(arr.chunks[0])
        elif (
            len(codecs) == 2
            and isinstance(codecs[0], BytesCodec)
            and isinstance(codecs[1], BloscCodec)
        ):
            decoder = 'blosc'
        elif len(codecs) == 1 and isinstance(codecs[0], ImageCodec):
            decoder = codecs[0].format
        elif len(codecs) == 1 and isinstance(codecs[0], BytesCodec):
            decoder = 'raw'
        adir = path / key
        if adir.is_dir():
            _check_chunk_files(adir, prefix, suffix, -(-steps // gop))
        direct = self.io == 'auto' and bool(decoder) and adir.is_dir()
        return _Camera(
            name=cam,
            direct=direct,
            decoder=decoder if direct else '',
            shape=shape,
            prefix=os.path.join(str(adir), prefix),
            suffix=suffix,
            gop=gop,
            video_format=codecs[0].format if decoder == 'video' else '',
        )

    # -- index -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._offsets[-1]

    def episode_keys(self) -> list[str]:
        """Keys of the indexed episodes in index order (new episodes at the end)."""
        return [ep.key for ep in self._episodes[: len(self._offsets) - 1]]

    def episode_lengths(self) -> np.ndarray:
        """Number of frames of each indexed episode (int64, same order as episode_keys())."""
        return np.diff(np.asarray(self._offsets, dtype=np.int64))

    @property
    def num_episodes(self) -> int:
        return len(self._offsets) - 1

    def skipped(self) -> dict[str, str]:
        """Episodes that were not indexed because they are corrupt/inconsistent: key -> reason."""
        return dict(self._skipped)

    def _episode(self, key: str | int) -> _Episode:
        if isinstance(key, str):
            pos = self._by_key.get(key)
            if pos is None:
                # e.g. a DataLoader worker copy made before the main process refreshed
                self.refresh()
                pos = self._by_key.get(key)
            if pos is None:
                reason = self._skipped.get(key)
                extra = f' (skipped: {reason})' if reason else ''
                raise KeyError(f'no episode {key!r} in the dataset at {self.root}{extra}')
            return self._episodes[pos]
        if isinstance(key, bool) or not isinstance(key, (int, np.integer)):
            raise TypeError(f'episode must be a key (str) or a position (int), got {key!r}')
        n = self.num_episodes
        if not -n <= key < n:
            raise IndexError(f'episode position {key} out of range for {n} episodes')
        return self._episodes[int(key) % n]

    def episode_info(self, key: str | int) -> EpisodeInfo:
        """Metadata, outcome and intervention array of an episode (by key or position)."""
        ep = self._episode(key)
        return EpisodeInfo(
            key=ep.key,
            position=ep.position,
            task=ep.task,
            index=ep.index,
            path=ep.path,
            steps=ep.steps,
            outcome=ep.meta.outcome,
            model_version=ep.meta.model_version,
            intervention=ep.intervention,
            timestamp=ep.timestamp,
            meta=ep.meta,
            executed=ep.executed_padded[: ep.steps],
        )

    def episodes(self) -> list[EpisodeInfo]:
        """:meth:`episode_info` of every indexed episode, in index order."""
        return [self.episode_info(i) for i in range(self.num_episodes)]

    def step_indices(self, key: str | int) -> range:
        """Flat indices of an episode's frames (e.g. for a weighted episode sampler)."""
        ep = self._episode(key)
        start = self._offsets[ep.position]
        return range(start, start + ep.steps)

    def locate(self, i: int) -> tuple[str, int]:
        """Map a flat index to ``(episode_key, frame)``."""
        ep, t = self._locate(i)
        return ep.key, t

    def _locate(self, i: int) -> tuple[_Episode, int]:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise TypeError(f'index must be an int, got {type(i).__name__}')
        offsets = self._offsets
        n = offsets[-1]
        if not -n <= i < n:
            raise IndexError(
                f'index {i} out of range for {n} frames (a DataLoader worker holds a copy made '
                'when its iterator started; recreate the iterator after refresh() or index by '
                '(episode_key, frame))'
            )
        i = int(i) % n
        pos = bisect.bisect_right(offsets, i) - 1
        return self._episodes[pos], i - offsets[pos]

    # -- items -------------------------------------------------------------------------------

    def __getitem__(self, i: int | tuple[str, int] | Sequence[int]) -> dict[str, Any]:
        """One item for an int or an ``(episode_key, frame)`` tuple; a batch for a list/array."""
        if isinstance(i, tuple):
            return self.get(*i)
        if isinstance(i, np.ndarray | torch.Tensor) and i.ndim == 0:
            i = int(i)
        elif isinstance(i, list | range | np.ndarray | torch.Tensor):
            return self.get_batch(i)
        ep, t = self._locate(i)
        return self._item(ep, t)

    def _resolve(self, i: Any) -> tuple[_Episode, int]:
        if isinstance(i, tuple):
            key, frame = i
            ep = self._episode(key)
            if not 0 <= frame < ep.steps:
                raise IndexError(f'frame {frame} out of range for {ep.key} ({ep.steps} frames)')
            return ep, int(frame)
        return self._locate(int(i) if isinstance(i, torch.Tensor) else i)

    def get_batch(
        self, indices: Sequence[int] | np.ndarray | torch.Tensor, *, shared: bool | None = None
    ) -> dict[str, Any]:
        """A collated batch of torch tensors, the same as ``default_collate`` of the items.

        Frames are decoded straight into the batch tensors, which saves the per-item arrays and
        the copy of the default collate.  The image tensors are allocated in shared memory if
        ``shared`` (default: only in a DataLoader worker, as the default collate does).  Use it
        with a batch sampler and ``batch_size=None`` (see :func:`make_loader`).  Indices may be
        flat ints or ``(episode_key, frame)`` tuples.
        """
        if isinstance(indices, torch.Tensor | np.ndarray):
            indices = indices.tolist()
        locs = [self._resolve(i) for i in indices]
        if not locs:
            raise ValueError('get_batch needs at least one index')
        n = len(locs)
        if shared is None:
            shared = get_worker_info() is not None
        batch: dict[str, Any] = {}
        jobs: list[tuple[_Episode, _Camera, int, np.ndarray | None]] = []
        for c, name in enumerate(self.cameras):
            shape = locs[0][0].cameras[c].shape
            for ep, _t in locs:
                if ep.cameras[c].shape != shape:
                    raise ValueError(
                        f'camera {name!r}: {ep.key} has frames {ep.cameras[c].shape}, '
                        f'{locs[0][0].key} has {shape}; one batch needs one resolution'
                    )
            if self.images == 'stacked':
                if c == 0:
                    stack = self._batch_buffer((n, len(self.cameras), *shape), shared)
                    batch['images'] = stack.permute(0, 1, 4, 2, 3)
                elif shape != tuple(stack.shape[2:]):
                    raise ValueError(_one_resolution(locs[0][0].key, list(self.cameras)))
                arr = stack[:, c].numpy()
            else:
                out = self._batch_buffer((n, *shape), shared)
                arr = out.numpy()
                batch['image.' + name] = out
            jobs.extend((ep, ep.cameras[c], t, arr[j]) for j, (ep, t) in enumerate(locs))
        self._run_jobs(jobs)
        k = self.chunk_size
        frames = np.asarray([t for _, t in locs], dtype=np.int64)
        batch['state'] = torch.from_numpy(np.stack([ep.state[t] for ep, t in locs]))
        batch['action'] = torch.from_numpy(
            np.stack([ep.action_padded[t : t + k] for ep, t in locs])
        )
        batch['action_mask'] = torch.from_numpy(
            np.stack([ep.executed_padded[t : t + k] for ep, t in locs]))
        if self.action_is_pad:
            batch['action_is_pad'] = ~batch['action_mask']
        batch['executed'] = torch.from_numpy(
            np.asarray([ep.executed_padded[t] for ep, t in locs], dtype=np.bool_))
        batch['intervention'] = torch.from_numpy(
            np.asarray([ep.intervention[t] for ep, t in locs], dtype=np.bool_)
        )
        batch['timestamp'] = torch.from_numpy(
            np.asarray([ep.timestamp[t] for ep, t in locs], dtype=np.float64)
        )
        batch['episode'] = torch.as_tensor([ep.position for ep, _ in locs], dtype=torch.int64)
        batch['frame'] = torch.from_numpy(frames)
        batch['task'] = [ep.task for ep, _ in locs]
        batch['outcome'] = [ep.meta.outcome for ep, _ in locs]
        return batch

    def get(self, key: str | int, frame: int, *, out: dict[str, Any] | None = None
            ) -> dict[str, Any]:
        """The item of ``frame`` of an episode given by key (or position); ``out``: see
        :meth:`get_item`."""
        ep = self._episode(key)
        if isinstance(frame, bool) or not isinstance(frame, (int, np.integer)):
            raise TypeError(f'frame must be an int, got {type(frame).__name__}')
        if not 0 <= frame < ep.steps:
            raise IndexError(f'frame {frame} out of range for {ep.key} ({ep.steps} frames)')
        return self._item(ep, int(frame), out)

    def get_item(self, i: int | tuple[str, int], *, out: dict[str, Any] | None = None
                 ) -> dict[str, Any]:
        """Item ``i`` (a flat index or an ``(episode_key, frame)`` tuple), as ``dataset[i]``.

        With ``out`` (an item this dataset returned before), the item is read into ``out``'s
        arrays and ``out`` is returned: no allocation per item in a loop that reuses one dict.
        An array that does not fit (another resolution or dimension, or an image entry that is
        not the C-contiguous frame buffer an item returns) is replaced by a new one.
        """
        ep, t = self._resolve(i)
        return self._item(ep, t, out)

    def _batch_buffer(self, shape: tuple[int, ...], shared: bool) -> torch.Tensor:
        if shared:
            return _empty(shape, torch.uint8, True)
        self._local()
        return torch.from_numpy(self._buffers.get(shape))

    def _item(self, ep: _Episode, t: int, out: dict[str, Any] | None = None) -> dict[str, Any]:
        k = self.chunk_size
        item: dict[str, Any] = {} if out is None else out
        if self.images == 'stacked':
            shape = ep.cameras[0].shape
            if any(cam.shape != shape for cam in ep.cameras):
                raise ValueError(_one_resolution(ep.key, list(self.cameras)))
            dst = _frame_target(item.get('images'), (len(ep.cameras), *shape), chw=True)
            if dst is None:
                self._local()
                dst = self._buffers.get((len(ep.cameras), *shape))
            self._run_jobs([(ep, cam, t, dst[c]) for c, cam in enumerate(ep.cameras)])
            item['images'] = dst.transpose(0, 3, 1, 2)
        else:
            frames = self._run_jobs([
                (ep, cam, t, _frame_target(item.get('image.' + cam.name), cam.shape))
                for cam in ep.cameras
            ])
            for cam, img in zip(ep.cameras, frames, strict=True):
                item['image.' + cam.name] = img
        item['state'] = _fill(item.get('state'), ep.state[t])
        item['action'] = _fill(item.get('action'), ep.action_padded[t : t + k])
        item['action_mask'] = _fill(item.get('action_mask'), ep.executed_padded[t : t + k])
        if self.action_is_pad:
            pad = _fill(item.get('action_is_pad'), item['action_mask'])
            item['action_is_pad'] = np.logical_not(pad, out=pad)
        item['intervention'] = bool(ep.intervention[t])
        item['executed'] = bool(ep.executed_padded[t])
        item['timestamp'] = float(ep.timestamp[t])
        item['episode'] = ep.position
        item['frame'] = t
        item['task'] = ep.task
        item['outcome'] = ep.meta.outcome
        return item

    def read_frame(self, key: str | int, camera: str, frame: int) -> np.ndarray:
        """One camera frame ``(H, W, 3)`` uint8 of an episode."""
        ep = self._episode(key)
        for cam in ep.cameras:
            if cam.name == camera:
                if not 0 <= frame < ep.steps:
                    raise IndexError(f'frame {frame} out of range for {ep.key}')
                return self._frame(ep, cam, int(frame))
        raise KeyError(f'camera {camera!r} is not loaded; cameras: {list(self.cameras)}')

    def _frame(
        self, ep: _Episode, cam: _Camera, t: int, out: np.ndarray | None = None
    ) -> np.ndarray:
        """Read frame ``t`` of a camera (into ``out`` if given, a C-contiguous (H, W, 3)).

        If the frame cannot be read because the episode was rewritten in place since it was
        indexed (compacted: see :mod:`scarls.episodes.compact`), the episode's camera layout
        is read again and the frame read once more.
        """
        try:
            return self._read_frame(ep, cam, t, out)
        except FrameReadError:
            new = next((c for c in ep.cameras if c.name == cam.name), cam)
            if new == cam and not self._reprobe(ep):  # (else: re-read by another call)
                raise
        new = next(c for c in ep.cameras if c.name == cam.name)
        return self._read_frame(ep, new, t, out)

    def _reprobe(self, ep: _Episode) -> bool:
        """Re-read an episode's camera layouts; True if they changed."""
        try:
            reader = EpisodeReader(ep.path)
            cams = tuple(self._camera(reader, ep.path, c, ep.steps) for c in self.cameras)
        except Exception:  # noqa: BLE001 - unreadable now: report the original error
            return False
        if cams == ep.cameras:
            return False
        log.info('episode %s was rewritten in place; reading its new layout', ep.key)
        ep.cameras = cams
        for c in self.cameras:
            self._zarr_cache.pop(f'{ep.key}:{c}', None)
        return True

    def _read_frame(
        self, ep: _Episode, cam: _Camera, t: int, out: np.ndarray | None
    ) -> np.ndarray:
        if not cam.direct:
            try:
                img = np.asarray(self._zarr_array(ep, cam.name)[t])
            except Exception as exc:  # noqa: BLE001 - codec/storage specific errors
                raise FrameReadError(
                    f'episode {ep.key} frame {t} camera {cam.name!r}: cannot read '
                    f'{ep.path / camera_path(cam.name)} through zarr: {exc}'
                ) from exc
            if img.shape != cam.shape or img.dtype != np.uint8:
                raise FrameReadError(
                    f'episode {ep.key} frame {t} camera {cam.name!r}: zarr returned '
                    f'{img.dtype} {img.shape}, expected uint8 {cam.shape}'
                )
            if out is None:
                return img
            out[...] = img
            return out
        fpath = f'{cam.prefix}{t // cam.gop}{cam.suffix}'
        if out is None:
            out = self._buffers.get(cam.shape)
        if cam.decoder == 'raw':
            try:
                _read_into(fpath, out)
            except (OSError, ValueError) as exc:
                raise FrameReadError(
                    f'episode {ep.key} frame {t} camera {cam.name!r}: cannot read {fpath}: {exc}'
                ) from exc
            return out
        try:
            data = _read_chunk(fpath)
        except OSError as exc:
            raise FrameReadError(
                f'episode {ep.key} frame {t} camera {cam.name!r}: cannot read {fpath}: {exc}'
            ) from exc
        try:
            if cam.decoder == 'blosc':
                _decode_blosc(data, out)
                return out
            if cam.decoder == 'video':
                decode_video_chunk(data, cam.gop, out[None], fmt=cam.video_format,
                                   first=t % cam.gop)
                return out
            img = decode_image(cam.decoder, data, out=out)
            if img.shape != cam.shape:
                raise ValueError(f'decoded shape {img.shape}, expected {cam.shape}')
        except Exception as exc:  # noqa: BLE001 - decoders raise library-specific errors
            raise FrameReadError(
                f'episode {ep.key} frame {t} camera {cam.name!r}: cannot decode {fpath} '
                f'({cam.decoder}, {len(data)} bytes): {exc}'
            ) from exc
        if img is not out:
            out[...] = img
        return out

    def __repr__(self) -> str:
        return (
            f'EpisodeDataset({str(self.root)!r}, episodes={self.num_episodes}, '
            f'frames={len(self)}, chunk_size={self.chunk_size}, cameras={list(self.cameras)})'
        )


def make_loader(
    dataset: EpisodeDataset,
    batch_size: int,
    *,
    shuffle: bool = True,
    sampler: Sampler[int] | None = None,
    drop_last: bool = False,
    generator: torch.Generator | None = None,
    **kwargs: Any,
) -> DataLoader:
    """A DataLoader that fetches whole batches with :meth:`EpisodeDataset.get_batch`.

    Yields the same batches as ``DataLoader(dataset, batch_size, shuffle=...)`` with the default
    collate, faster.  ``sampler`` (e.g. a ``WeightedRandomSampler`` over flat indices) replaces
    the random/sequential order; other keyword arguments (``num_workers``, ``pin_memory``,
    ``persistent_workers``, ...) go to the DataLoader.
    """
    if sampler is None:
        sampler = (
            RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
        )
    batches = BatchSampler(sampler, batch_size, drop_last)
    return DataLoader(dataset, sampler=batches, batch_size=None, **kwargs)


_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def tune_malloc(mmap_threshold: int = 64 << 20, trim_threshold: int = 256 << 20) -> bool:
    """Opt-in, process-wide: let glibc reuse freed large blocks instead of unmapping them.

    Not needed for :class:`EpisodeDataset`: its items and batches reuse pooled buffers and never
    allocate frames per sample.  It still helps other code that allocates and frees large
    arrays per step (e.g. model inputs built outside the dataset): by default glibc serves
    blocks of ~1 MB and more with ``mmap`` or trims them off the heap when freed, so the next
    allocation page-faults fresh memory in again.  Raising ``M_MMAP_THRESHOLD`` and
    ``M_TRIM_THRESHOLD`` with ``mallopt`` keeps up to ``trim_threshold`` bytes of freed memory for
    reuse (forked workers inherit it).  Returns False if ``mallopt`` is unavailable (not glibc)
    or refused.
    """
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, int(trim_threshold)) == 1 and ok
    if not ok:
        log.warning('mallopt refused mmap_threshold=%d trim_threshold=%d', mmap_threshold,
                    trim_threshold)
    return ok
