"""The fleet's key: HMAC-SHA256 over every record the learners exchange through the store.

The rendezvous store (a torch.distributed TCPStore) has no access control of its own: any
host that reaches its port can read, write and delete keys. So every value a learner writes
is *sealed* with the fleet's shared secret and every reader *opens* it, ignoring (and
logging) what fails:

    sealed = b'scarls-fleet1.' + hex(HMAC-SHA256(secret, context \\0 name \\0 payload)) + b'.'
             + payload

``name`` is the store key the value is written under and ``context`` the store's epoch
(see :mod:`scarls.fleet.allreduce`), so a record copied to another key (another rank, another
round, another kind of record) or into a later store lifetime does not verify. The payload
stays readable: nothing in the store is secret, only its origin matters.

:class:`SignedStore` applies the same seal to a whole :class:`torch.distributed.Store`, for
the keys torch itself writes: the process group of a round exchanges its members' network
addresses through the store, and a forged address would let a stranger take part in the
all-reduce.

The secret is 32 random bytes, kept hex-encoded in a file readable by its owner only
(:func:`write_key_file`, ``python -m scarls.fleet keygen FILE``) or given in the environment
(:data:`KEY_FILE_ENV`: a file; :data:`KEY_ENV`: the hex itself). ``scarls fleet`` makes one per
run. What the key does not protect is listed in docs/SECURITY.md ("Fleet rendezvous and DDS").
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping
from pathlib import Path

import torch.distributed as dist

__all__ = [
    'KEY_ENV',
    'KEY_FILE_ENV',
    'FleetKey',
    'FleetKeyError',
    'SignedStore',
    'write_key_file',
]

_log = logging.getLogger(__name__)

#: Environment variable: path of the fleet's key file.
KEY_FILE_ENV = 'SCARLS_FLEET_KEY_FILE'
#: Environment variable: the fleet's key itself (hex); the file wins when both are set.
KEY_ENV = 'SCARLS_FLEET_KEY'

_MAGIC = b'scarls-fleet1.'
_MAC_HEX = 64
_KEY_BYTES = 32
_MIN_KEY_BYTES = 16


class FleetKeyError(ValueError):
    """The fleet key is missing, unreadable or malformed (the message says which)."""


class FleetKey:
    """A fleet's shared secret: seals and opens store records (module docstring)."""

    def __init__(self, secret: bytes) -> None:
        if not isinstance(secret, bytes) or len(secret) < _MIN_KEY_BYTES:
            raise FleetKeyError(f'a fleet key must be at least {_MIN_KEY_BYTES} bytes')
        self._secret = secret

    def __repr__(self) -> str:  # never the secret itself
        return f'FleetKey(id={self.key_id})'

    @property
    def key_id(self) -> str:
        """A short fingerprint to compare keys in logs (reveals nothing usable)."""
        return hashlib.sha256(b'scarls-fleet-key-id\0' + self._secret).hexdigest()[:12]

    @classmethod
    def generate(cls) -> FleetKey:
        """A new random key."""
        return cls(secrets.token_bytes(_KEY_BYTES))

    @classmethod
    def from_hex(cls, text: str) -> FleetKey:
        """From its hex form (as in a key file)."""
        try:
            secret = bytes.fromhex(text.strip())
        except ValueError:
            raise FleetKeyError('the fleet key is not hex (expected 64 hex digits)') from None
        return cls(secret)

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> FleetKey:
        """Read a key file (:func:`write_key_file`); warns when others may read it."""
        p = Path(path).expanduser()
        try:
            text = p.read_text()
            mode = p.stat().st_mode
        except OSError as e:
            raise FleetKeyError(f'cannot read the fleet key file {p}: {e.strerror}') from None
        if mode & 0o077:
            _log.warning('fleet key file %s is readable by others (mode %o): chmod 600 it',
                         p, mode & 0o777)
        try:
            return cls.from_hex(text)
        except FleetKeyError as e:
            raise FleetKeyError(f'{p}: {e}') from None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *,
                 path: str | os.PathLike | None = None) -> FleetKey | None:
        """``path`` if given, else :data:`KEY_FILE_ENV`, else :data:`KEY_ENV`; None if none."""
        env = os.environ if environ is None else environ
        if path:
            return cls.from_file(path)
        if env.get(KEY_FILE_ENV):
            return cls.from_file(env[KEY_FILE_ENV])
        if env.get(KEY_ENV):
            return cls.from_hex(env[KEY_ENV])
        return None

    def hex(self) -> str:
        """The key in hex (to write it to a file or hand it to a process)."""
        return self._secret.hex()

    # -- records -------------------------------------------------------------------------
    def _mac(self, context: str, name: str, payload: bytes) -> bytes:
        msg = b'%s\0%s\0%s' % (context.encode(), name.encode(), payload)
        return hmac.new(self._secret, msg, hashlib.sha256).hexdigest().encode()

    def seal(self, name: str, payload: bytes | str, context: str = '') -> bytes:
        """``payload`` with its MAC, to be written under store key ``name``."""
        data = payload.encode() if isinstance(payload, str) else bytes(payload)
        return _MAGIC + self._mac(context, name, data) + b'.' + data

    def open(self, name: str, sealed: bytes | str | None, context: str = '') -> bytes | None:
        """The payload of a record read from key ``name``, or None when it does not verify
        (not sealed, another key, another store key or context, altered)."""
        if sealed is None:
            return None
        raw = sealed.encode() if isinstance(sealed, str) else bytes(sealed)
        head = len(_MAGIC)
        if not raw.startswith(_MAGIC) or len(raw) < head + _MAC_HEX + 1 \
                or raw[head + _MAC_HEX:head + _MAC_HEX + 1] != b'.':
            return None
        mac, data = raw[head:head + _MAC_HEX], raw[head + _MAC_HEX + 1:]
        if not hmac.compare_digest(mac, self._mac(context, name, data)):
            return None
        return data


def write_key_file(path: str | os.PathLike, key: FleetKey | None = None) -> FleetKey:
    """Write ``key`` (default: a new one) to ``path``, readable by its owner only; an existing
    file is replaced atomically. Returns the key."""
    key = key or FleetKey.generate()
    p = Path(path).expanduser()
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f'.{p.name}.{os.getpid()}.tmp')
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, (key.hex() + '\n').encode())
    finally:
        os.close(fd)
    os.replace(tmp, p)
    return key


class RejectLog:
    """Logs each refused record once per store key (the readers poll: no flood)."""

    def __init__(self, limit: int = 1000) -> None:
        self._seen: set[str] = set()
        self._limit = limit
        self._lock = threading.Lock()
        self.count = 0
        """Refused records seen (every read, not only the logged ones)."""

    def refused(self, key: str, what: str = 'a record') -> None:
        with self._lock:
            self.count += 1
            if key in self._seen:
                return
            if len(self._seen) >= self._limit:
                self._seen.clear()
            self._seen.add(key)
        _log.warning('fleet store: ignoring %s at %s that does not verify with the fleet '
                     'key (written by a stranger or another fleet)', what, key)


class SignedStore(dist.Store):
    """A :class:`torch.distributed.Store` whose values are sealed with a :class:`FleetKey`.

    Given to a round's process group (Gloo and NCCL exchange their members' addresses with
    ``set``/``get``/``wait``), so that the group only connects to addresses written by a
    holder of the key. ``get`` of a key holding a record that does not verify waits (polling
    every ``poll_s``) for a valid one until ``timeout_s``, then raises: a stranger's record
    written first is overwritten by the member's own and never read.
    """

    def __init__(self, inner: dist.Store, key: FleetKey, context: str, *,
                 timeout_s: float, poll_s: float = 0.05,
                 rejects: RejectLog | None = None) -> None:
        super().__init__()
        self._inner = inner
        self._key = key
        self._context = context
        self._timeout_s = float(timeout_s)
        self._poll_s = float(poll_s)
        self._rejects = rejects or RejectLog()

    def set(self, key: str, value: bytes | str) -> None:
        self._inner.set(key, self._key.seal(key, value, self._context))

    def get(self, key: str) -> bytes:
        end = time.monotonic() + self._timeout_s
        while True:
            data = self._key.open(key, self._inner.get(key), self._context)
            if data is not None:
                return data
            self._rejects.refused(f'{self._context}:{key}', 'a process-group record')
            if time.monotonic() >= end:
                raise RuntimeError(f'fleet store: no verified value for {key!r} '
                                   f'within {self._timeout_s:g} s')
            time.sleep(self._poll_s)

    def check(self, keys: list[str]) -> bool:
        return self._inner.check(keys)

    def wait(self, keys: list[str], timeout=None) -> None:
        if timeout is None:
            self._inner.wait(keys)
        else:
            self._inner.wait(keys, timeout)

    def add(self, key: str, amount: int) -> int:
        # counters cannot be sealed (the server adds to them); torch's Gloo/NCCL set-up does
        # not use them, and a forged counter can only stall, never inject
        return self._inner.add(key, amount)

    def compare_set(self, key: str, expected: bytes | str, desired: bytes | str) -> bytes:
        raise NotImplementedError('compare_set is not used on a signed process-group store')

    def delete_key(self, key: str) -> bool:
        return self._inner.delete_key(key)

    def num_keys(self) -> int:
        return self._inner.num_keys()

    def set_timeout(self, timeout) -> None:
        self._inner.set_timeout(timeout)
