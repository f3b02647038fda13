"""Deploy decisions: signed deploy records, the scheduler's deploy log and the rules both ends
apply (no rclpy here).

A *deploy record* says "ECU ``ecu`` runs checkpoint ``version`` (file sha256 ``sha256``) for
robot description ``robot``, decision number ``generation``" (``version`` 0: nothing is
deployed, run the configured initial policy). The scheduler signs it with its ECU's key and
sends it as the ``uri`` of its ``scheduler/checkpoint`` announcement (``scarls-deploy:<base64
JSON>.<base64 signature>``) and as the answer to a ``get_checkpoint`` request for version 0.

Why a generation: a rollback deploys a *lower* version, so the version cannot order deploy
decisions. The scheduler's deploy log (``<registry>/deploys.json``, written only by the
scheduler) numbers every decision - a newly approved checkpoint, a rollback, a redeploy - with a
generation that only grows, survives restarts, and is signed into the record. The actor acts on
a record only if its signature verifies against its trust list, it is for this ECU and robot,
and its generation is higher than the last one it applied (:class:`DeployFollower`): a rollback
(new generation, lower version) is followed, a replay of an older announcement (old generation)
is ignored, and a forged record (say generation or version 2**32-1) fails the signature and
cannot block later deploys. The checkpoint itself is verified separately (its own signature,
its version equal to the record's, its sha256 equal to the record's).

The scheduler auto-deploys a learner's announcement only if :func:`check_announcement` accepts
it: the version must be a record of the registry's own index (so never beyond the registry's
newest version, e.g. not 2**32-1), approved, not revoked, stored with weights, with the
announced sha256, and the announced path must resolve to that record's file inside the
registry directory.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import datetime
import json
import logging
import os
from pathlib import Path
from typing import Any

from scarls.checkpoints.format import SignatureRejected, _write_atomic
from scarls.checkpoints.registry import (
    CheckpointRecord,
    RegistryError,
    RegistryIndex,
    registry_file,
)

__all__ = [
    'DEPLOY_LOG_NAME',
    'TOKEN_PREFIX',
    'DeployEntry',
    'DeployFollower',
    'DeployLog',
    'DeployRecord',
    'DeployRefused',
    'check_announcement',
    'open_deploy_token',
    'sign_deploy_record',
]

_log = logging.getLogger(__name__)

TOKEN_PREFIX = 'scarls-deploy:'
DEPLOY_LOG_NAME = 'deploys.json'
_STATEMENT_PREFIX = b'scarls deploy record v1\n'
_MAX_TOKEN = 4096
_HISTORY = 1000


class DeployRefused(ValueError):
    """A deploy (announcement, rollback request, record) is refused; the message says why."""


@dataclasses.dataclass(frozen=True)
class DeployRecord:
    """One deploy decision (see the module docstring); ``key_id``: who signed it."""

    ecu: str
    generation: int
    version: int
    sha256: str
    robot: str
    reason: str
    key_id: str = ''

    def _body(self) -> dict[str, Any]:
        return {'ecu': self.ecu, 'generation': self.generation, 'version': self.version,
                'sha256': self.sha256, 'robot': self.robot, 'reason': self.reason,
                'key_id': self.key_id}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip('=')


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + '=' * (-len(text) % 4))


def sign_deploy_record(record: DeployRecord, signer: Any) -> str:
    """The token of ``record`` signed by ``signer`` (its ``key_id`` is filled in)."""
    record = dataclasses.replace(record, key_id=signer.key_id)
    body = json.dumps(record._body(), sort_keys=True, separators=(',', ':')).encode()
    return f'{TOKEN_PREFIX}{_b64(body)}.{_b64(signer.sign(_STATEMENT_PREFIX + body))}'


def open_deploy_token(token: str, trust: Any, *, ecu: str | None = None,
                      robot: str | None = None) -> DeployRecord:
    """The verified record of ``token``. Raises :class:`SignatureRejected` (or
    :class:`~scarls.checkpoints.format.UntrustedKey`) when it is not signed by a key of
    ``trust``, :class:`DeployRefused` when it is malformed or for another ECU or robot."""
    if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
        raise SignatureRejected(
            'the deploy announcement carries no signed deploy record (an old scheduler, or '
            'not a scheduler at all)')
    if len(token) > _MAX_TOKEN:
        raise DeployRefused(f'deploy record of {len(token)} characters is too long')
    try:
        body_b64, sig_b64 = token[len(TOKEN_PREFIX):].split('.')
        body, sig = _unb64(body_b64), _unb64(sig_b64)
        data = json.loads(body)
        record = DeployRecord(**data)
    except (ValueError, TypeError, binascii.Error) as exc:
        raise DeployRefused(f'malformed deploy record: {exc}') from exc
    ints = (record.generation, record.version)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in ints) or \
            not all(isinstance(v, str) for v in (record.ecu, record.sha256, record.robot,
                                                 record.reason, record.key_id)):
        raise DeployRefused(f'malformed deploy record: {data!r:.200}')
    trust.verify(record.key_id, _STATEMENT_PREFIX + body, sig,
                 what=f'deploy record (generation {record.generation}, v{record.version})')
    if ecu is not None and record.ecu != ecu:
        raise DeployRefused(f'deploy record is for ECU {record.ecu!r}, this is {ecu!r}')
    if robot is not None and record.robot != robot:
        raise DeployRefused(f'deploy record is for robot description {record.robot}, this '
                            f'robot is {robot}')
    return record


class DeployFollower:
    """The actor's rule for deploy records: act on a record only if its generation is newer
    than the one applied and than the one being fetched (see the module docstring)."""

    def __init__(self) -> None:
        self.applied: DeployRecord | None = None
        self.pending: DeployRecord | None = None

    @property
    def generation(self) -> int:
        """The newest generation applied or being fetched (0: none)."""
        gens = [r.generation for r in (self.applied, self.pending) if r is not None]
        return max(gens, default=0)

    def offer(self, record: DeployRecord) -> bool:
        """True (and ``record`` becomes pending) if it is newer than anything seen."""
        if record.generation <= self.generation:
            return False
        self.pending = record
        return True

    def applied_now(self, record: DeployRecord) -> None:
        """``record``'s checkpoint is now the one running."""
        if self.applied is None or record.generation > self.applied.generation:
            self.applied = record
        if self.pending is not None and self.pending.generation <= record.generation:
            self.pending = None

    def failed(self, record: DeployRecord) -> None:
        """``record`` could not be applied: forget it (a later record may be offered)."""
        if self.pending is record:
            self.pending = None


@dataclasses.dataclass(frozen=True)
class DeployEntry:
    """One line of the deploy log."""

    generation: int
    version: int
    sha256: str
    reason: str
    at: str


class DeployLog:
    """The scheduler's persistent deploy history (``<registry>/deploys.json``, rewritten
    atomically): the last generation, the current deploy and the recent decisions."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.generation = 0
        self.current: DeployEntry | None = None
        self.history: list[DeployEntry] = []
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            raise RegistryError(f'deploy log {self.path} is unreadable ({exc}); move it away '
                                'to start a new one (the actor then follows the next deploy '
                                'only once its generation is higher: restart the actor)') \
                from exc
        try:
            self.generation = int(data['generation'])
            self.history = [DeployEntry(**e) for e in data['history']]
            cur = data['current']
            self.current = None if cur is None else DeployEntry(**cur)
        except (KeyError, TypeError, ValueError) as exc:
            raise RegistryError(f'deploy log {self.path} is invalid: {exc}') from exc

    def record(self, version: int, sha256: str, reason: str) -> DeployEntry:
        """Log a new deploy decision (the next generation) and make it current."""
        entry = DeployEntry(self.generation + 1, int(version), sha256, reason,
                            datetime.datetime.now(datetime.UTC).isoformat())
        history = [*self.history, entry][-_HISTORY:]
        data = {'generation': entry.generation, 'current': dataclasses.asdict(entry),
                'history': [dataclasses.asdict(e) for e in history]}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomic(self.path, (json.dumps(data, indent=1) + '\n').encode())
        self.generation, self.current, self.history = entry.generation, entry, history
        return entry


def check_announcement(index: RegistryIndex, version: int, sha256: str,
                       uri: str) -> tuple[CheckpointRecord, Path]:
    """The registry record and file of an approved checkpoint announcement, or
    :class:`DeployRefused` saying why it is not deployable (see the module docstring)."""
    if version > index.max_version:
        raise DeployRefused(
            f'v{version} is beyond the registry\'s newest version v{index.max_version} '
            f'({index.root}): not a checkpoint this ECU\'s learner published')
    rec = index.records.get(version)
    if rec is None:
        raise DeployRefused(f'v{version} is not in the registry index of {index.root}')
    if not rec.approved or rec.revoked:
        raise DeployRefused(f'v{version} is {"revoked" if rec.revoked else "not approved"} '
                            'in the registry')
    if rec.path is None or rec.sha256 is None:
        raise DeployRefused(f'v{version} has no weights in the registry')
    if sha256 and sha256 != rec.sha256:
        raise DeployRefused(f'announced sha256 {sha256[:12]}... differs from the registry\'s '
                            f'{rec.sha256[:12]}... for v{version}')
    try:
        real = registry_file(index.root, rec.path, version)
        if uri and registry_file(index.root, uri, version) != real:
            raise RegistryError(f'{uri} is not the registry\'s file of v{version}')
    except RegistryError as exc:
        raise DeployRefused(f'announced path refused: {exc}') from exc
    return rec, real
