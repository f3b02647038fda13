"""Ed25519 keys, trust lists and signatures for checkpoints and deploy records.

Key directory (``key_dir``; nodes and ``scarls keys`` resolve it the same way: the explicit
setting, else ``$SCARLS_KEY_DIR``, else ``<data_root>/keys``)::

    learner-<ecu>.key    private key of ECU <ecu>'s learner (PEM PKCS#8, mode 0600)
    learner-<ecu>.pub    its public key: one line ``scarls-ed25519 <base64> <comment>``
    trusted_keys         the trust list: public key lines (same format), ``#`` comments
    revoked_keys         the revocation list: ``<key id> <date> <reason>`` lines, ``#``
                         comments (next to the trust list: ``<trust file dir>/revoked_keys``)

A key id is the first 16 hex digits of the sha256 of the raw 32-byte public key.

What is signed (see :func:`scarls.checkpoints.format.signature_statement`): a checkpoint's
content digest (the sha256 of its JSON header, which holds ``payload_sha256`` over every
tensor's name, dtype, shape and bytes), its version and the robot description hash it was
trained for. The signature is stored in the checkpoint itself (safetensors metadata entry
``scarls.signature``), so a checkpoint travels as one file. A scheduler's deploy decision is a
signed *deploy record* (:mod:`scarls.checkpoints.deploy`).

Verification (:meth:`TrustList.verify`) raises :class:`~scarls.checkpoints.format.
UntrustedKey` for a key that is not in the trust list (the message names the key id and how
to trust it), :class:`~scarls.checkpoints.format.RevokedKey` for a revoked one (whatever the
trust list says) and :class:`~scarls.checkpoints.format.SignatureRejected` for a bad signature.
Both files are re-read when they change, so ``scarls keys trust`` and ``scarls keys revoke``
take effect without a restart. A revocation list that cannot be read, or holds a line that is
not a key id, refuses every signature (a revocation is never skipped); a revoked key cannot be
trusted again (make a new key: ``scarls keys rotate``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import logging
import os
import re
import tempfile
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from scarls.checkpoints.format import (
    RevokedKey,
    SignatureRejected,
    UntrustedKey,
    _write_atomic,
)

__all__ = [
    'KEY_DIR_ENV',
    'PUBLIC_KEY_PREFIX',
    'REVOKED_FILE',
    'TRUST_FILE',
    'KeyStoreError',
    'PublicKey',
    'RevocationListError',
    'Signer',
    'TrustList',
    'ensure_key',
    'key_id',
    'learner_key_name',
    'node_signer',
    'parse_public_key',
    'read_public_keys',
    'resolve_key_dir',
]

_log = logging.getLogger(__name__)

KEY_DIR_ENV = 'SCARLS_KEY_DIR'
TRUST_FILE = 'trusted_keys'
REVOKED_FILE = 'revoked_keys'
_KEY_ID_RE = re.compile(r'^[0-9a-fA-F]{16}$')
PUBLIC_KEY_PREFIX = 'scarls-ed25519'
_NAME_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$')
_MAX_TRUST_BYTES = 1 << 20


class KeyStoreError(RuntimeError):
    """A key or trust list file cannot be created, read or parsed; the message says which."""


class RevocationListError(KeyStoreError, SignatureRejected):
    """The revocation list cannot be read or parsed: every signature is refused (a
    :class:`SignatureRejected` too, so whoever handles refused checkpoints handles it)."""


def key_id(public: Ed25519PublicKey) -> str:
    """16 hex digits identifying a public key."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def learner_key_name(ecu_id: str) -> str:
    """The key name of ECU ``ecu_id``'s learner (``learner-<ecu>``)."""
    return f'learner-{ecu_id}'


def resolve_key_dir(key_dir: str | os.PathLike[str] | None,
                    data_root: str | os.PathLike[str] | None = 'data') -> Path:
    """The key directory: ``key_dir`` if given, else ``$SCARLS_KEY_DIR``, else
    ``<data_root>/keys`` (``data_root`` defaults to ``data``, the runs' default)."""
    if key_dir:
        return Path(key_dir).expanduser().resolve()
    env = os.environ.get(KEY_DIR_ENV, '')
    if env:
        return Path(env).expanduser().resolve()
    return (Path(data_root or 'data').expanduser() / 'keys').resolve()


@dataclasses.dataclass(frozen=True)
class PublicKey:
    """A public key with its id and comment (one line of a ``.pub`` or trust list file)."""

    key: Ed25519PublicKey
    key_id: str
    comment: str = ''

    def line(self) -> str:
        """The one-line text form: ``scarls-ed25519 <base64> <comment>``."""
        raw = self.key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        text = f'{PUBLIC_KEY_PREFIX} {base64.b64encode(raw).decode()}'
        return f'{text} {self.comment}' if self.comment else text


def parse_public_key(line: str) -> PublicKey:
    """Parse ``scarls-ed25519 <base64 of the 32 raw bytes> [comment]``."""
    parts = line.strip().split(None, 2)
    if len(parts) < 2 or parts[0] != PUBLIC_KEY_PREFIX:
        raise KeyStoreError(
            f'not a scarls public key (expected "{PUBLIC_KEY_PREFIX} <base64> [comment]"): '
            f'{line.strip()[:80]!r}')
    try:
        raw = base64.b64decode(parts[1], validate=True)
        key = Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise KeyStoreError(f'malformed {PUBLIC_KEY_PREFIX} key {parts[1][:20]!r}...: {exc}') \
            from exc
    return PublicKey(key, key_id(key), parts[2].strip() if len(parts) > 2 else '')


def read_public_keys(path: str | os.PathLike[str]) -> list[PublicKey]:
    """The public keys of a ``.pub`` file (blank and ``#`` lines skipped); a malformed line
    raises :class:`KeyStoreError`, so does an unreadable file."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise KeyStoreError(f'cannot read {path}: {exc.strerror}') from exc
    return [parse_public_key(ln) for ln in lines if ln.strip() and not ln.lstrip().startswith('#')]


class Signer:
    """A private Ed25519 key that signs statements (``sign``) under its ``key_id``."""

    def __init__(self, private: Ed25519PrivateKey, name: str = '') -> None:
        self._private = private
        self.name = name
        self.public = PublicKey(private.public_key(), key_id(private.public_key()), name)
        self.key_id = self.public.key_id

    @classmethod
    def generate(cls, name: str = '') -> Signer:
        """A new random key (tests, ``scarls keys init``)."""
        return cls(Ed25519PrivateKey.generate(), name)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Signer:
        """Load a PEM private key file; :class:`KeyStoreError` when it cannot be used."""
        path = Path(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise KeyStoreError(f'cannot read the signing key {path}: {exc.strerror}') from exc
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError) as exc:
            raise KeyStoreError(f'{path} is not an unencrypted PEM private key: {exc}') from exc
        if not isinstance(private, Ed25519PrivateKey):
            raise KeyStoreError(f'{path} is not an Ed25519 key')
        return cls(private, path.stem)

    def sign(self, message: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``message``."""
        return self._private.sign(message)

    def private_pem(self) -> bytes:
        return self._private.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption())


def _write_new(path: Path, data: bytes, mode: int) -> bool:
    """Create ``path`` with ``data`` unless it exists (atomic: never a half-written key, and
    of two processes creating it at once exactly one wins). True if this call created it."""
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=path.parent)
    try:
        with os.fdopen(fd, 'wb') as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def ensure_key(key_dir: str | os.PathLike[str], name: str, *, trust: bool = True,
               trust_file: str | os.PathLike[str] | None = None) -> Signer:
    """The signer ``<key_dir>/<name>.key``, created (with ``<name>.pub``) if missing; with
    ``trust`` its public key is added to ``trust_file`` (default ``<key_dir>/trusted_keys``;
    what ``scarls keys init`` does; safe when several processes call it at once). A key on
    the revocation list next to that file is refused (:class:`KeyStoreError`)."""
    if not _NAME_RE.match(name):
        raise KeyStoreError(f'key name {name!r}: use letters, digits, _ . - (max 64)')
    directory = Path(key_dir)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise KeyStoreError(f'cannot create the key directory {directory}: {exc.strerror}') \
            from exc
    path = directory / f'{name}.key'
    if not path.exists():
        fresh = Signer.generate(name)
        if _write_new(path, fresh.private_pem(), 0o600):
            _log.info('created signing key %s (key id %s)', path, fresh.key_id)
    trust_list = TrustList(trust_file or directory / TRUST_FILE)
    signer = trust_list.refuse_revoked(Signer.load(path))
    pub = directory / f'{name}.pub'
    if not pub.exists():
        _write_new(pub, (signer.public.line() + '\n').encode(), 0o644)
    if trust:
        trust_list.add(signer.public)
    return signer


def node_signer(trust: TrustList, key_dir: str | os.PathLike[str], signing_key: str,
                ecu_id: str) -> tuple[Signer, str | None]:
    """The signer of a learner or scheduler: ``signing_key`` if given, else the ECU's learner
    key in ``key_dir`` (created if missing, :func:`ensure_key`); refused if revoked on
    ``trust`` (:class:`KeyStoreError`). Returns it with :meth:`TrustList.own_key_warning`
    (what to log when ``trust`` does not hold it)."""
    name = learner_key_name(ecu_id)
    signer = trust.refuse_revoked(
        Signer.load(signing_key) if signing_key else ensure_key(key_dir, name))
    pub = Path(signing_key).with_suffix('.pub') if signing_key else Path(key_dir) / f'{name}.pub'
    return signer, trust.own_key_warning(signer, pub)


def _replace_text(path: Path, text: str) -> None:
    """Write a key list atomically (a reader sees the old or the new file), readable by all."""
    _write_atomic(path, text.encode(), mode=0o644)


def _append_line(path: Path, line: str, header: str) -> None:
    """Append ``line`` to a key list (created with ``header`` if missing), atomically."""
    old = path.read_text() if path.exists() else header
    if old and not old.endswith('\n'):
        old += '\n'
    _replace_text(path, old + line + '\n')


class TrustList:
    """The public keys a node accepts signatures from (a text file, see the module docstring),
    minus the keys of the revocation list next to it (``revoked_path``, default
    ``<trust file dir>/revoked_keys``).

    Reads are cached by the files' identity, size and change times; :meth:`add` and
    :meth:`revoke` change them under an exclusive lock (``<revocation list>.lock``) and
    rewrite them atomically.
    """

    def __init__(self, path: str | os.PathLike[str],
                 revoked_path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path)
        self.revoked_path = Path(revoked_path) if revoked_path else \
            self.path.with_name(REVOKED_FILE)
        self._cache: tuple[tuple[int, ...], dict[str, PublicKey]] | None = None
        self._revoked_cache: tuple[tuple[int, ...], dict[str, str]] | None = None

    @staticmethod
    def _stat_key(path: Path) -> tuple[int, ...] | None:
        try:
            st = path.stat()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise KeyStoreError(f'cannot read {path}: {exc.strerror}') from exc
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    @staticmethod
    def _read_lines(path: Path, what: str) -> list[str]:
        try:
            with open(path, 'rb') as f:
                text = f.read(_MAX_TRUST_BYTES + 1)
        except OSError as exc:
            raise KeyStoreError(f'cannot read the {what} {path}: {exc.strerror}') from exc
        if len(text) > _MAX_TRUST_BYTES:
            raise KeyStoreError(f'{what} {path} is larger than 1 MB')
        return text.decode(errors='replace').splitlines()

    def _trusted(self) -> dict[str, PublicKey]:
        """The trust list file's keys, revoked or not."""
        stat = self._stat_key(self.path)
        if stat is None:
            return {}
        if self._cache is not None and self._cache[0] == stat:
            return self._cache[1]
        keys: dict[str, PublicKey] = {}
        for n, line in enumerate(self._read_lines(self.path, 'trust list'), 1):
            if not line.strip() or line.lstrip().startswith('#'):
                continue
            try:
                pk = parse_public_key(line)
            except KeyStoreError as exc:
                _log.warning('%s line %d ignored: %s', self.path, n, exc)
                continue
            keys[pk.key_id] = pk
        self._cache = (stat, keys)
        return keys

    def revoked(self) -> dict[str, str]:
        """``{key_id: entry}`` of the revocation list (date and reason as written; empty if
        the file does not exist). Raises :class:`KeyStoreError` when the file cannot be read
        or a line is not a key id: a revocation is never skipped."""
        try:
            stat = self._stat_key(self.revoked_path)
            if stat is None:
                return {}
            if self._revoked_cache is not None and self._revoked_cache[0] == stat:
                return self._revoked_cache[1]
            lines = self._read_lines(self.revoked_path, 'revocation list')
        except KeyStoreError as exc:
            raise RevocationListError(f'{exc}: every signature is refused until it can be '
                                      'read') from exc
        revoked: dict[str, str] = {}
        for n, line in enumerate(lines, 1):
            if not line.strip() or line.lstrip().startswith('#'):
                continue
            kid, *entry = line.split(None, 1)
            if not _KEY_ID_RE.match(kid):
                raise RevocationListError(
                    f'revocation list {self.revoked_path} line {n} does not start with a '
                    f'16-hex-digit key id ({line.strip()[:40]!r}): every signature is refused '
                    'until it is fixed')
            revoked[kid.lower()] = entry[0].strip() if entry else ''
        self._revoked_cache = (stat, revoked)
        return revoked

    def keys(self) -> dict[str, PublicKey]:
        """``{key_id: PublicKey}`` of the trusted keys that are not revoked (empty if the file
        does not exist); unparsable trust list lines are skipped with a warning."""
        trusted, revoked = self._trusted(), self.revoked()
        if not revoked:
            return trusted
        return {kid: pk for kid, pk in trusted.items() if kid not in revoked}

    def __contains__(self, kid: object) -> bool:
        return kid in self.keys()

    def is_revoked(self, kid: str) -> bool:
        return str(kid).lower() in self.revoked()

    def refuse_revoked(self, signer: Signer) -> Signer:
        """``signer``, unless its key is revoked here (:class:`KeyStoreError`, saying how to
        replace it): what signs must not be a key its own host refuses."""
        entry = self.revoked().get(signer.key_id)
        if entry is not None:
            raise KeyStoreError(
                f'the signing key {signer.key_id} ({signer.name or "?"}) is revoked here '
                f'({self.revoked_path}: {entry or "no reason given"}): `scarls keys rotate` '
                'replaces it with a new key')
        return signer

    def own_key_warning(self, signer: Signer, pub_file: str | os.PathLike[str] | None = None
                        ) -> str | None:
        """Why what ``signer`` signs would be refused on this host (its key is not on this
        trust list), with the command that trusts it; ``None`` if it is trusted. A node whose
        ``trust_file`` is not the list its key was created in warns with this at start."""
        if signer.key_id in self:
            return None
        fix = (f'`scarls keys trust --trust-file {self.path} {pub_file}` is run'
               if pub_file and Path(pub_file).is_file() else
               f'its public key line is added to that file: {signer.public.line()}')
        return (f'the signing key {signer.key_id} ({signer.name or "?"}) is not in the trust '
                f'list {self.path}: checkpoints and deploys it signs are refused here until '
                + fix)

    def _locked(self):
        """The key directory's lock (one for both lists: a revocation is never lost to a
        concurrent trust, whichever trust file the writer was given)."""
        self.revoked_path.parent.mkdir(parents=True, exist_ok=True)
        lock = open(self.revoked_path.with_name(self.revoked_path.name + '.lock'),  # noqa: SIM115
                    'a')
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        self._cache = self._revoked_cache = None
        return lock

    def add(self, public: PublicKey) -> bool:
        """Trust ``public``; False if it was already trusted. A revoked key raises
        :class:`KeyStoreError` (make a new key instead)."""
        with self._locked():
            revoked = self.revoked()
            if public.key_id in revoked:
                raise KeyStoreError(
                    f'key {public.key_id} is revoked in {self.revoked_path} '
                    f'({revoked[public.key_id] or "no reason given"}) and cannot be trusted '
                    'again: make a new key (`scarls keys rotate` on its host) and trust that')
            if public.key_id in self._trusted():
                return False
            _append_line(self.path, public.line(),
                         '# scarls trusted public keys: checkpoints and deploy records signed '
                         'by one of these are accepted\n')
            self._cache = None
        _log.info('trusted key %s (%s) in %s', public.key_id, public.comment or 'no comment',
                  self.path)
        return True

    def revoke(self, kid: str, reason: str = '') -> tuple[bool, bool]:
        """Revoke key ``kid`` (16 hex digits): add it to the revocation list (first, so a
        crash in between never leaves it trusted) and remove its lines from the trust list.
        Returns (newly revoked, removed from the trust list)."""
        kid = str(kid).strip().lower()
        if not _KEY_ID_RE.match(kid):
            raise KeyStoreError(f'{kid!r} is not a key id (16 hex digits, `scarls keys list`)')
        reason = ' '.join(str(reason).split())
        with self._locked():
            newly = kid not in self.revoked()
            if newly:
                stamp = datetime.datetime.now(datetime.UTC).strftime('%Y-%m-%dT%H:%M:%SZ')
                _append_line(self.revoked_path, f'{kid} {stamp} {reason or "revoked"}',
                             '# scarls revoked keys: nothing signed by these is accepted, '
                             'whatever the trust list says\n# <key id> <date> <reason>\n')
            removed = False
            if self.path.exists():
                kept = []
                for line in self.path.read_text().splitlines():
                    try:
                        drop = parse_public_key(line).key_id == kid
                    except KeyStoreError:
                        drop = False
                    removed |= drop
                    if not drop:
                        kept.append(line)
                if removed:
                    _replace_text(self.path, '\n'.join(kept) + '\n')
            self._cache = self._revoked_cache = None
        _log.warning('revoked key %s in %s%s', kid, self.revoked_path,
                     f' and removed it from {self.path}' if removed else '')
        return newly, removed

    def verify(self, kid: str, message: bytes, signature: bytes, *, what: str) -> PublicKey:
        """Check that ``signature`` over ``message`` was made by trusted key ``kid``; return
        the key. ``what`` names the signed object in error messages."""
        entry = self.revoked().get(str(kid).lower())
        if entry is not None:
            raise RevokedKey(
                f'{what} is signed by key {kid}, which is revoked in {self.revoked_path} '
                f'({entry or "no reason given"}): it is refused whatever the trust list says; '
                'deploy a checkpoint signed by a trusted key')
        public = self._trusted().get(kid)   # not revoked (above)
        if public is None:
            raise UntrustedKey(
                f'{what} is signed by key {kid}, which is not in the trust list {self.path} '
                f'({len(self.keys())} trusted key(s)); if that key is yours, copy its .pub file '
                'from the learner\'s key directory and run `scarls keys trust FILE` here')
        try:
            public.key.verify(signature, message)
        except InvalidSignature:
            raise SignatureRejected(
                f'{what}: the signature of key {kid} does not match its content (forged or '
                'modified after signing)') from None
        return public
