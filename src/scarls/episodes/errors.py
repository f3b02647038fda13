"""Typed exceptions of the episode format.

All three derive from :class:`EpisodeFormatError`, so a recorder can catch the family, but
callers usually want to treat them differently:

* :class:`EpisodeError` - the caller did something invalid (bad step, wrong state); fix the input.
* :class:`SchemaError` - an episode on disk is missing, malformed or corrupt.
* :class:`StorageError` - the file system refused (no permission, disk full, ...); nothing
  partial was made visible.
"""

from __future__ import annotations

import errno

__all__ = ['EpisodeError', 'EpisodeFormatError', 'SchemaError', 'StorageError', 'storage_error']


class EpisodeFormatError(Exception):
    """Base class of all episode format errors."""


class EpisodeError(EpisodeFormatError):
    """Invalid use of a writer or an invalid step; nothing was written for that call."""


class SchemaError(EpisodeFormatError):
    """An episode on disk does not match the schema (missing, malformed or corrupt data)."""


class StorageError(EpisodeFormatError):
    """The storage layer failed (permission, disk full, I/O error)."""


_HINTS = {
    errno.ENOSPC: 'the disk is full; free space or point the recorder at another data root',
    errno.EDQUOT: 'the disk quota is exceeded; free space or raise the quota',
    errno.EACCES: 'permission denied; fix the ownership/permissions of the data root',
    errno.EPERM: 'operation not permitted; fix the ownership/permissions of the data root',
    errno.EROFS: 'the file system is read-only; use a writable data root',
}


def storage_error(action: str, exc: OSError) -> StorageError:
    """Build a :class:`StorageError` for an ``OSError`` raised while doing ``action``."""
    hint = _HINTS.get(exc.errno or 0, 'check the data root and the system logs')
    name = errno.errorcode.get(exc.errno or 0, 'OSError')
    return StorageError(f'{action} failed: {exc.strerror or exc} ({name}); {hint}')
