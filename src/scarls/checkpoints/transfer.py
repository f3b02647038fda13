"""Chunked checkpoint transfer: the logic behind the ``GetCheckpointChunk`` service.

The robot computer and the workstation share no disk, and one service message must stay
small, so a checkpoint is pulled in pieces::

    request  (version, offset, length)
    reply    (ok, error, total_size, sha256, data)

:class:`ChunkServer` answers requests from a :class:`CheckpointRegistry` (or any lookup
``version -> path``); it never raises, every problem becomes ``ok=False`` with a message.
With ``allowed_root`` it serves only checkpoint files directly inside that directory, checked
(symlinks resolved) at every request, so a path swapped after it was looked up is not read.
:class:`ChunkFetcher` pulls all chunks through a ``request_fn(version, offset, length)``
(the ROS client call in the actor, a direct ``server.handle`` in tests), into a buffer whose
size is bounded by ``max_bytes``, checks that every reply announces the same size and sha256,
and verifies the sha256 of the assembled bytes.

Failure handling in the fetcher:

* ``request_fn`` raising (timeout, service unavailable) or a malformed reply (empty data
  before the end, more data than asked for): the same chunk is requested again, up to
  ``retries`` times, with exponential back-off; the transfer resumes where it stopped.
* ``ok=False`` from the server (unknown version, bad offset, file changed or missing on the
  server): :class:`TransferError` at once with the server's message - the server answered.
* size or sha256 changing between replies (the file was replaced during the transfer),
  ``total_size`` over ``max_bytes``, or a sha256 other than ``expected_sha256``:
  :class:`TransferError` at once.
* assembled bytes not matching the announced sha256 (data corrupted in transit): the whole
  transfer is repeated up to ``full_retries`` times, then :class:`TransferError`.
* ``timeout_s`` bounds the whole transfer (checked before every request and back-off);
  ``request_fn`` must bound its own call (e.g. a service call with a timeout).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from scarls.checkpoints.format import file_sha256
from scarls.checkpoints.registry import (
    CheckpointRegistry,
    RegistryError,
    UnknownVersion,
    registry_file,
)

__all__ = [
    'DEFAULT_MAX_CHUNK',
    'ChunkFetcher',
    'ChunkReply',
    'ChunkServer',
    'TransferError',
]

_log = logging.getLogger(__name__)

DEFAULT_MAX_CHUNK = 1 << 20
_MAX_CHUNK_LIMIT = 64 << 20
_UINT32_MAX = (1 << 32) - 1

PathLookup = Callable[[int], 'str | os.PathLike[str] | None']
RequestFn = Callable[[int, int, int], 'ChunkReply']
ProgressFn = Callable[[int, int], None]


class TransferError(RuntimeError):
    """A checkpoint could not be fetched; the message says why and what to try."""


@dataclasses.dataclass(frozen=True)
class ChunkReply:
    """One service reply (the fields of ``GetCheckpointChunk.srv``'s response)."""

    ok: bool
    error: str = ''
    total_size: int = 0
    sha256: str = ''
    data: bytes = b''

    @classmethod
    def failure(cls, error: str) -> ChunkReply:
        """An ``ok=False`` reply carrying ``error``."""
        return cls(ok=False, error=error)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_sha(v: object) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in '0123456789abcdef' for c in v)


def _open_nofollow(path: str, flags: int) -> int:
    """Open without following a symlink put in place after the path was checked."""
    return os.open(path, flags | os.O_NOFOLLOW)


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class ChunkServer:
    """Serve checkpoint bytes in chunks of at most ``max_chunk`` bytes.

    ``source`` is a :class:`CheckpointRegistry` (the announced sha256 is the one recorded at
    publish time, and a file whose size differs from the record is refused), a mapping
    ``version -> path`` or a callable ``version -> path or None`` (the sha256 is computed from
    the file and recomputed whenever the file changes). ``allowed_root``: serve only checkpoint
    files directly inside this directory (see the module docstring). Thread-safe.
    """

    def __init__(
        self,
        source: CheckpointRegistry | Mapping[int, str | os.PathLike[str]] | PathLookup,
        max_chunk: int = DEFAULT_MAX_CHUNK,
        *,
        allowed_root: str | os.PathLike[str] | None = None,
    ) -> None:
        if not _is_int(max_chunk) or not 1 <= max_chunk <= _MAX_CHUNK_LIMIT:
            raise ValueError(
                f'max_chunk must be an int in [1, {_MAX_CHUNK_LIMIT}], got {max_chunk!r}'
            )
        if not (isinstance(source, (CheckpointRegistry, Mapping)) or callable(source)):
            raise TypeError(
                'source must be a CheckpointRegistry, a mapping version -> path or a '
                f'callable version -> path, got {type(source).__name__}'
            )
        self._source = source
        self.allowed_root = None if allowed_root is None else Path(allowed_root)
        self.max_chunk = max_chunk
        self._lock = threading.Lock()
        self._sha_cache: dict[str, tuple[tuple[int, ...], str]] = {}

    def _resolve(self, version: int) -> tuple[Path, str | None, int | None] | str:
        """``(path, recorded sha or None, recorded size or None)`` or an error message."""
        src = self._source
        if isinstance(src, CheckpointRegistry):
            try:
                rec = src.get(version)
            except UnknownVersion as exc:
                return f'unknown checkpoint version {version}: {exc}'
            if rec.path is None:
                return (
                    f'checkpoint v{version} was recorded without weights (a rejected '
                    'candidate); there is nothing to send'
                )
            return rec.path, rec.sha256, rec.size
        try:
            path = src.get(version) if isinstance(src, Mapping) else src(version)
        except Exception as exc:  # a user lookup may fail in any way
            return f'checkpoint lookup for v{version} failed: {exc}'
        if path is None:
            return f'unknown checkpoint version {version}'
        return Path(path), None, None

    def _confined(self, version: int, path: Path) -> Path | str:
        if self.allowed_root is None:
            return path
        try:
            return registry_file(self.allowed_root, path)
        except RegistryError as exc:
            _log.warning('refusing to serve checkpoint v%d: %s', version, exc)
            return f'checkpoint v{version} is not served: it is not a file of the registry'


    def _sha(self, path: Path, st: os.stat_result) -> str:
        key = str(path)
        with self._lock:
            cached = self._sha_cache.get(key)
        if cached is not None and cached[0] == _stat_key(st):
            return cached[1]
        sha = file_sha256(path)
        with self._lock:
            self._sha_cache[key] = (_stat_key(st), sha)
        return sha

    def handle(self, version: int, offset: int, length: int) -> ChunkReply:
        """Answer one request: up to ``min(length, max_chunk)`` bytes from ``offset``.

        ``offset == total_size`` yields an empty, successful reply. Never raises.
        """
        if not _is_int(version) or version < 0:
            return ChunkReply.failure(f'version must be an int >= 0, got {version!r}')
        if not _is_int(offset) or offset < 0:
            return ChunkReply.failure(f'offset must be an int >= 0, got {offset!r}')
        if not _is_int(length) or length < 1:
            return ChunkReply.failure(f'length must be an int >= 1, got {length!r}')
        resolved = self._resolve(version)
        if isinstance(resolved, str):
            return ChunkReply.failure(resolved)
        path, sha, size = resolved
        confined = self._confined(version, path)
        if isinstance(confined, str):
            return ChunkReply.failure(confined)
        path = confined
        opener = _open_nofollow if self.allowed_root is not None else None
        try:
            with open(path, 'rb', opener=opener) as f:
                st = os.fstat(f.fileno())
                total = st.st_size
                if size is not None and total != size:
                    return ChunkReply.failure(
                        f'checkpoint v{version} changed on the server: {total} bytes on disk, '
                        f'{size} recorded; the server should run verify()'
                    )
                if sha is None:
                    sha = self._sha(path, st)
                if offset > total:
                    return ChunkReply.failure(
                        f'offset {offset} is beyond the end of checkpoint v{version} '
                        f'({total} bytes)'
                    )
                n = min(length, self.max_chunk, total - offset)
                f.seek(offset)
                data = f.read(n)
        except FileNotFoundError:
            return ChunkReply.failure(f'checkpoint v{version} file is missing on the server')
        except OSError as exc:
            return ChunkReply.failure(f'cannot read checkpoint v{version} on the server: {exc}')
        if len(data) != n:
            return ChunkReply.failure(
                f'short read of checkpoint v{version} (the file is changing); retry later'
            )
        return ChunkReply(ok=True, total_size=total, sha256=sha, data=data)


class _Retry(Exception):
    """A chunk attempt failed in a way worth retrying."""


class ChunkFetcher:
    """Pull checkpoint ``version`` through ``request_fn`` (see the module docstring).

    ``progress(received_bytes, total_bytes)`` is called after every chunk. ``clock`` and
    ``sleep`` can be replaced (tests). :meth:`fetch` may be called again after a failure.
    """

    def __init__(
        self,
        request_fn: RequestFn,
        version: int,
        *,
        chunk_size: int = DEFAULT_MAX_CHUNK,
        timeout_s: float = 120.0,
        max_bytes: int = 1 << 30,
        expected_sha256: str | None = None,
        retries: int = 3,
        full_retries: int = 1,
        retry_delay_s: float = 0.2,
        progress: ProgressFn | None = None,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not callable(request_fn):
            raise TypeError('request_fn must be callable as request_fn(version, offset, length)')
        if not _is_int(version) or version < 0:
            raise ValueError(f'version must be an int >= 0, got {version!r}')
        if not _is_int(chunk_size) or not 1 <= chunk_size <= _UINT32_MAX:
            raise ValueError(f'chunk_size must be an int in [1, 2**32 - 1], got {chunk_size!r}')
        if not timeout_s > 0:
            raise ValueError(f'timeout_s must be > 0, got {timeout_s!r}')
        if not _is_int(max_bytes) or max_bytes < 1:
            raise ValueError(f'max_bytes must be an int >= 1, got {max_bytes!r}')
        if not _is_int(retries) or retries < 0 or not _is_int(full_retries) or full_retries < 0:
            raise ValueError(
                f'retries and full_retries must be ints >= 0, got {retries!r}, {full_retries!r}'
            )
        if expected_sha256 is not None:
            expected_sha256 = expected_sha256.strip().lower()
            if not _is_sha(expected_sha256):
                raise ValueError(f'expected_sha256 must be 64 hex digits, got {expected_sha256!r}')
        self._request_fn = request_fn
        self.version = version
        self.chunk_size = chunk_size
        self.timeout_s = float(timeout_s)
        self.max_bytes = max_bytes
        self.expected_sha256 = expected_sha256
        self.retries = retries
        self.full_retries = full_retries
        self.retry_delay_s = float(retry_delay_s)
        self._progress = progress
        self._clock = clock
        self._sleep = sleep
        self.requests = 0  # requests sent by the last fetch()
        self.failed_attempts = 0  # retried chunk attempts in the last fetch()

    def fetch(self) -> bytes:
        """Return the verified checkpoint bytes or raise :class:`TransferError`."""
        self.requests = self.failed_attempts = 0
        deadline = self._clock() + self.timeout_s
        for attempt in range(self.full_retries + 1):
            data, sha = self._pull(deadline)
            actual = hashlib.sha256(data).hexdigest()
            if actual == sha:
                _log.info(
                    'fetched checkpoint v%d: %d bytes in %d requests',
                    self.version,
                    len(data),
                    self.requests,
                )
                return bytes(data)
            _log.warning(
                'checkpoint v%d: sha256 of the received bytes %s != announced %s (pass %d of %d)',
                self.version,
                actual,
                sha,
                attempt + 1,
                self.full_retries + 1,
            )
        raise TransferError(
            f'checkpoint v{self.version}: received bytes do not match the announced sha256 '
            f'after {self.full_retries + 1} transfer(s); the data is corrupted in transit or '
            "the server's file is corrupt (run verify() on the server)"
        )

    def _pull(self, deadline: float) -> tuple[bytearray, str]:
        buf: bytearray | None = None
        total = -1
        sha = ''
        offset = 0
        while buf is None or offset < total:
            want = self.chunk_size if buf is None else min(self.chunk_size, total - offset)
            reply = self._request(offset, want, deadline)
            if buf is None:
                total, sha = reply.total_size, reply.sha256
                if total > self.max_bytes:
                    raise TransferError(
                        f'checkpoint v{self.version} is {total} bytes, over the limit '
                        f'max_bytes={self.max_bytes}; raise max_bytes if this is expected'
                    )
                if self.expected_sha256 is not None and sha != self.expected_sha256:
                    raise TransferError(
                        f'the server announces sha256 {sha} for checkpoint v{self.version}, '
                        f'expected {self.expected_sha256}; the announcement and the server '
                        'disagree - request the announced version again'
                    )
                buf = bytearray(total)
            elif (reply.total_size, reply.sha256) != (total, sha):
                raise TransferError(
                    f'checkpoint v{self.version} changed on the server during the transfer '
                    f'({total} bytes, sha256 {sha[:12]}... -> {reply.total_size} bytes, '
                    f'sha256 {reply.sha256[:12]}...); fetch it again'
                )
            n = len(reply.data)
            if n > total - offset:
                raise TransferError(
                    f'checkpoint v{self.version}: the server sent {n} bytes at offset {offset} '
                    f'of {total}; the server is broken'
                )
            buf[offset : offset + n] = reply.data
            offset += n
            if self._progress is not None:
                self._progress(offset, total)
        return buf, sha

    def _request(self, offset: int, length: int, deadline: float) -> ChunkReply:
        failures = 0
        while True:
            if self._clock() > deadline:
                raise TransferError(
                    f'checkpoint v{self.version}: transfer timed out after {self.timeout_s:g} s '
                    f'at offset {offset}; check the link or raise timeout_s'
                )
            self.requests += 1
            try:
                return self._attempt(offset, length)
            except _Retry as exc:
                failures += 1
                self.failed_attempts += 1
                if failures > self.retries:
                    raise TransferError(
                        f'checkpoint v{self.version}: chunk at offset {offset} failed '
                        f'{failures} times; last error: {exc}'
                    ) from None
                _log.warning(
                    'checkpoint v%d: chunk at offset %d failed (%s); retry %d of %d',
                    self.version,
                    offset,
                    exc,
                    failures,
                    self.retries,
                )
                delay = self.retry_delay_s * 2 ** (failures - 1)
                delay = min(delay, max(0.0, deadline - self._clock()))
                if delay > 0:
                    self._sleep(delay)

    def _attempt(self, offset: int, length: int) -> ChunkReply:
        try:
            reply = self._request_fn(self.version, offset, length)
        except Exception as exc:  # transport errors of any kind are retried
            raise _Retry(f'request failed: {exc!r}') from exc
        if not isinstance(reply, ChunkReply):
            raise _Retry(f'request_fn returned {type(reply).__name__}, not a ChunkReply')
        if not reply.ok:
            raise TransferError(
                f'the server refused checkpoint v{self.version} (offset {offset}): '
                f'{reply.error or "no reason given"}'
            )
        if not _is_int(reply.total_size) or reply.total_size < 0 or not _is_sha(reply.sha256):
            raise _Retry(
                f'malformed reply (total_size={reply.total_size!r}, sha256={reply.sha256!r})'
            )
        data = reply.data
        if not isinstance(data, bytes):
            try:
                data = bytes(data)
            except (TypeError, ValueError) as exc:
                raise _Retry(f'reply data is not bytes: {exc}') from exc
            reply = dataclasses.replace(reply, data=data)
        if len(data) > length:
            raise _Retry(f'reply has {len(data)} bytes, more than the {length} requested')
        if not data and offset < reply.total_size:
            raise _Retry(f'empty reply at offset {offset} of {reply.total_size}')
        return reply
