"""A versioned directory of checkpoints with approval, deployment, rollback and retention.

Layout of ``root``::

    registry.json          the index (rewritten atomically: temporary file, fsync, rename)
    v000001.safetensors    checkpoint files written by save_checkpoint (see format.py)
    v000002.safetensors
    ...

Every :meth:`CheckpointRegistry.publish` takes the next version number (1 + the highest
version the index or the directory has ever held, so numbers survive restarts and are never
reused after retention deleted a file). Approved candidates are always stored with their
weights; rejected ones are recorded for lineage and stored without weights unless
``store_rejected_weights=True``. Each checkpoint header's ``extra`` gets the key
``'registry.approved'``, so the index can be rebuilt from the files.

Retention (after each publish, or :meth:`CheckpointRegistry.prune`): keep the weights of the
best approved checkpoint (``best_metric``), the deployed one, the ones the scheduler's deploy log
(``deploys.json``, see scarls.checkpoints.deploy) names in its newest entries - the deployed one
(e.g. after a rollback) and its predecessors, which the deploy guard may roll back to - and the
last ``keep_last`` versions; delete the other files. Their records stay in the index
without weights (lineage: version, parent, metrics, approval, for the learning curve and the
dashboard) until there are more than ``keep_records`` records, then the oldest weightless
ones go. The deployed and the best checkpoints are never deleted.

Integrity: :meth:`CheckpointRegistry.verify` re-hashes every stored file and reports missing
or corrupted ones; :meth:`CheckpointRegistry.latest`, :meth:`CheckpointRegistry.best`,
:meth:`CheckpointRegistry.mark_deployed` and :meth:`CheckpointRegistry.rollback` skip or refuse
them (hashes are cached per file identity, size and modification times, so only new or changed
files are re-read).

Recovery on open: stale temporary files are removed; a checkpoint file newer than the index
(the process stopped between writing the file and the index) is adopted from its header; a
file the index no longer lists (or lists without weights), at or below its highest version, is
the remainder of an interrupted prune and is deleted. Without an index, one is rebuilt from the
files' headers.

One process writes a registry directory; within it the object is thread-safe (e.g. a chunk
server answering while the learner publishes). Other processes (the scheduler) read it with
:func:`read_index`, which never writes, and :func:`registry_file`, which resolves a path
(symlinks included) and refuses anything that is not a checkpoint file directly inside the
registry directory.

Signing: a registry given a ``signer`` (:class:`scarls.checkpoints.signing.Signer`) and the
``robot`` description hash signs every file it writes (see format.py); :meth:`CheckpointRegistry.
resign` signs a file written before (e.g. by an older version of scarls) in place.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import logging
import math
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from scarls.checkpoints.format import (
    CheckpointError,
    CheckpointRejected,
    _write_atomic,
    file_sha256,
    read_header,
    save_checkpoint,
    sign_checkpoint_bytes,
)
from scarls.policies import Policy

__all__ = [
    'APPROVED_KEY',
    'INDEX_NAME',
    'CheckpointRecord',
    'CheckpointRegistry',
    'RegistryError',
    'RegistryIndex',
    'UnknownVersion',
    'read_index',
    'registry_file',
]

_log = logging.getLogger(__name__)

INDEX_NAME = 'registry.json'
APPROVED_KEY = 'registry.approved'
_INDEX_FORMAT = 1
_FILE_RE = re.compile(r'^v(\d+)\.safetensors$')
_KEEP: Any = object()  # "leave the deployed mark as it is"
_DEPLOY_LOG_KEEP = 3   # retention keeps the versions of the deploy log's newest entries


class RegistryError(RuntimeError):
    """A registry operation is not possible; the message says why and what to do."""


class UnknownVersion(KeyError):
    """No record with the requested version exists in the registry."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ''


def _file_name(version: int) -> str:
    return f'v{version:06d}.safetensors'


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat()


@dataclasses.dataclass(frozen=True)
class CheckpointRecord:
    """One published candidate.

    ``path``/``sha256`` are ``None`` for a candidate recorded without weights; ``size`` is the
    file size in bytes (0 without weights). ``revoked`` is set when a deployment was rolled
    back from this version (it is then no longer offered by :meth:`CheckpointRegistry.latest`
    or :meth:`CheckpointRegistry.best`).
    """

    version: int
    path: Path | None
    sha256: str | None
    size: int
    metrics: dict[str, float]
    approved: bool
    parent: int | None
    created: str
    policy: str = ''
    revoked: bool = False

    @property
    def has_weights(self) -> bool:
        """Whether a checkpoint file was stored for this version."""
        return self.path is not None

    def _to_json(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['path'] = None if self.path is None else self.path.name
        return d

    @classmethod
    def _from_json(cls, root: Path, d: Any) -> CheckpointRecord:
        fields = {f.name for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) != fields:
            raise ValueError(f'record must be an object with fields {sorted(fields)}, got {d!r}')
        v = d['version']
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f'record version must be an int >= 1, got {v!r}')
        name = d['path']
        if name is not None and name != _file_name(v):
            raise ValueError(f'record v{v} names file {name!r}, expected {_file_name(v)!r}')
        if name is not None and not isinstance(d['sha256'], str):
            raise ValueError(f'record v{v} has a file but no sha256')
        return cls(**{**d, 'path': None if name is None else root / name})


def _clean_metrics(metrics: Mapping[str, float]) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise CheckpointError(f'metrics must be a mapping of name -> number, got {metrics!r}')
    out: dict[str, float] = {}
    for k, v in metrics.items():
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            raise CheckpointError(f'metric {k!r} must be a finite number, got {v!r}')
        out[str(k)] = v
    return out


def _write_json_atomic(path: Path, obj: Any) -> None:
    _write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True, allow_nan=False)
                         + '\n').encode())


class CheckpointRegistry:
    """Versioned checkpoints under ``root`` (see the module docstring).

    ``keep_last``: how many of the newest versions retention keeps with weights (>= 1).
    ``keep_records``: how many records (with or without weights) the index keeps for lineage
    (>= ``keep_last``).
    ``store_rejected_weights``: also write files for candidates published with
    ``approved=False``. ``best_metric``/``lower_is_better``: what :meth:`best` ranks by
    by default, and which checkpoint retention keeps as "the best".
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        keep_last: int = 5,
        *,
        keep_records: int = 1000,
        store_rejected_weights: bool = False,
        best_metric: str = 'open_loop_error',
        lower_is_better: bool = True,
        signer: Any = None,
        robot: str = '',
    ) -> None:
        self.signer = signer
        self.robot = str(robot)
        if not isinstance(keep_last, int) or isinstance(keep_last, bool) or keep_last < 1:
            raise ValueError(f'keep_last must be an int >= 1, got {keep_last!r}')
        self._root = Path(root)
        self._index = self._root / INDEX_NAME
        if not isinstance(keep_records, int) or isinstance(keep_records, bool) \
                or keep_records < keep_last:
            raise ValueError(f'keep_records must be an int >= keep_last, got {keep_records!r}')
        self.keep_last = keep_last
        self.keep_records = keep_records
        self.store_rejected_weights = bool(store_rejected_weights)
        self.best_metric = best_metric
        self.lower_is_better = bool(lower_is_better)
        self._lock = threading.RLock()
        self._records: dict[int, CheckpointRecord] = {}
        self._deployed: int | None = None
        self._max_version = 0
        # version -> (file identity, sha256 of the file as found)
        self._hash_cache: dict[int, tuple[tuple[int, ...], str]] = {}
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise RegistryError(f'cannot create the registry directory {root}: {exc}') from exc
        self._open()

    # -- opening and recovery ----------------------------------------------------------------
    def _open(self) -> None:
        for pattern in ('.v*.safetensors.*.tmp', f'.{INDEX_NAME}.*.tmp'):
            for tmp in self._root.glob(pattern):
                _log.info('removing stale temporary file %s', tmp)
                with contextlib.suppress(OSError):
                    tmp.unlink()
        had_index = self._index.exists()
        if had_index:
            self._read_index()
        on_disk = {}
        for p in self._root.iterdir():
            m = _FILE_RE.match(p.name)
            if m and p.is_file():
                on_disk[int(m.group(1))] = p
        changed = False
        indexed_max = self._max_version
        weightless = {v for v, r in self._records.items() if not r.has_weights}
        for v in sorted((set(on_disk) - set(self._records)) | (set(on_disk) & weightless)):
            p = on_disk[v]
            if had_index and v <= indexed_max:
                _log.warning('removing %s: left over from an interrupted prune', p)
                with contextlib.suppress(OSError):
                    p.unlink()
                continue
            rec = self._adopt(v, p)
            if rec is not None:
                self._records[v] = rec
                changed = True
            self._max_version = max(self._max_version, v)
        self._max_version = max([self._max_version, *self._records])
        if changed or not had_index:
            self._save_index()

    def _read_index(self) -> None:
        try:
            data = json.loads(self._index.read_text())
            if not isinstance(data, dict) or data.get('format') != _INDEX_FORMAT:
                raise ValueError(f'expected an object with "format": {_INDEX_FORMAT}')
            records = {}
            for d in data['records']:
                rec = CheckpointRecord._from_json(self._root, d)
                records[rec.version] = rec
            deployed = data['deployed']
            max_version = data['max_version']
            if deployed is not None and deployed not in records:
                raise ValueError(f'deployed version {deployed} has no record')
            if not isinstance(max_version, int) or max_version < max([0, *records]):
                raise ValueError(f'max_version {max_version!r} is below a recorded version')
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(
                f'registry index {self._index} is unreadable ({exc}); move it away to rebuild '
                'the index from the checkpoint files (rejected candidates stored without '
                'weights and the deployed mark are then lost)'
            ) from exc
        self._records = records
        self._deployed = deployed
        self._max_version = max_version

    def _adopt(self, version: int, path: Path) -> CheckpointRecord | None:
        try:
            header = read_header(path)
            sha = file_sha256(path)
            size = path.stat().st_size
        except (CheckpointRejected, OSError) as exc:
            _log.warning('ignoring %s: not a readable checkpoint (%s)', path, exc)
            return None
        if header.version != version:
            _log.warning(
                'ignoring %s: its header says version %d; rename or remove it',
                path,
                header.version,
            )
            return None
        _log.warning('adopting %s into the registry index (written but never indexed)', path)
        return CheckpointRecord(
            version=version,
            path=path,
            sha256=sha,
            size=size,
            metrics=dict(header.metrics),
            approved=bool(header.extra.get(APPROVED_KEY, False)),
            parent=header.parent,
            created=header.created,
            policy=header.policy,
        )

    def _save_index(
        self,
        records: Mapping[int, CheckpointRecord] | None = None,
        deployed: int | None = _KEEP,
        max_version: int | None = None,
    ) -> None:
        """Write the index for the given state, then adopt it in memory (all or nothing)."""
        records = dict(self._records if records is None else records)
        dep = self._deployed if deployed is _KEEP else deployed
        mv = self._max_version if max_version is None else max_version
        _write_json_atomic(
            self._index,
            {
                'format': _INDEX_FORMAT,
                'max_version': mv,
                'deployed': dep,
                'records': [records[v]._to_json() for v in sorted(records)],
            },
        )
        self._records, self._deployed, self._max_version = records, dep, mv

    # -- queries -----------------------------------------------------------------------------
    @property
    def root(self) -> Path:
        """The registry directory."""
        return self._root

    def __len__(self) -> int:
        with self._lock:
            return len(self._records)

    def __contains__(self, version: object) -> bool:
        with self._lock:
            return version in self._records

    def records(self) -> list[CheckpointRecord]:
        """All records, oldest first."""
        with self._lock:
            return [self._records[v] for v in sorted(self._records)]

    def get(self, version: int) -> CheckpointRecord:
        """The record of ``version``; :class:`UnknownVersion` if there is none."""
        with self._lock:
            try:
                return self._records[version]
            except KeyError:
                raise UnknownVersion(
                    f'no checkpoint version {version!r} in {self._root}; known versions: '
                    f'{sorted(self._records)}'
                ) from None

    @property
    def deployed(self) -> CheckpointRecord | None:
        """The record marked deployed, or ``None``."""
        with self._lock:
            return None if self._deployed is None else self._records[self._deployed]

    @property
    def next_version(self) -> int:
        """The version the next :meth:`publish` will get."""
        with self._lock:
            return self._max_version + 1

    def _problem(self, rec: CheckpointRecord, *, rehash: bool = False) -> str | None:
        """Why ``rec``'s file cannot be used (None: intact)."""
        if rec.path is None:
            return 'stored without weights'
        try:
            st = rec.path.stat()
        except FileNotFoundError:
            return f'file {rec.path.name} is missing'
        except OSError as exc:
            return f'file {rec.path.name} cannot be read: {exc}'
        if st.st_size != rec.size:
            return f'file {rec.path.name} has {st.st_size} bytes, expected {rec.size}'
        key = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        cached = self._hash_cache.get(rec.version)
        if rehash or cached is None or cached[0] != key:
            try:
                sha = file_sha256(rec.path)
            except OSError as exc:
                return f'file {rec.path.name} cannot be read: {exc}'
            self._hash_cache[rec.version] = (key, sha)
        else:
            sha = cached[1]
        if sha != rec.sha256:
            return f'file {rec.path.name} is corrupted (sha256 {sha[:12]}... != {rec.sha256})'
        return None

    def _usable(self, rec: CheckpointRecord, approved_only: bool = True) -> bool:
        if approved_only and (not rec.approved or rec.revoked):
            return False
        problem = self._problem(rec) if rec.has_weights else 'no weights'
        if problem is not None and rec.has_weights:
            _log.warning('skipping checkpoint v%d: %s', rec.version, problem)
        return problem is None

    def verify(self) -> dict[int, str]:
        """Re-hash every stored file; return ``{version: problem}`` for missing/corrupted ones."""
        with self._lock:
            problems = {}
            for v in sorted(self._records):
                rec = self._records[v]
                if rec.has_weights:
                    p = self._problem(rec, rehash=True)
                    if p is not None:
                        _log.warning('checkpoint v%d: %s', v, p)
                        problems[v] = p
            return problems

    def latest(self, approved_only: bool = True) -> CheckpointRecord | None:
        """The newest intact checkpoint (approved and not revoked, unless ``approved_only``
        is False), or ``None``."""
        with self._lock:
            for v in sorted(self._records, reverse=True):
                rec = self._records[v]
                if self._usable(rec, approved_only):
                    return rec
            return None

    def best(
        self, metric: str | None = None, lower_is_better: bool | None = None
    ) -> CheckpointRecord | None:
        """The intact approved (not revoked) checkpoint with the best ``metric`` (default: the
        registry's ``best_metric``); ties go to the newer version. ``None`` if none has it."""
        metric = self.best_metric if metric is None else metric
        lower = self.lower_is_better if lower_is_better is None else lower_is_better
        with self._lock:
            return self._best(metric, lower)

    def _best(self, metric: str, lower: bool) -> CheckpointRecord | None:
        sign = 1.0 if lower else -1.0
        ranked = sorted(
            (sign * rec.metrics[metric], -rec.version)
            for rec in self._records.values()
            if metric in rec.metrics and rec.approved and not rec.revoked
        )
        for _, neg_v in ranked:
            rec = self._records[-neg_v]
            if self._usable(rec):
                return rec
        return None

    # -- changes -----------------------------------------------------------------------------
    def publish(
        self,
        policy: Policy,
        *,
        metrics: Mapping[str, float],
        parent: int | None = None,
        approved: bool,
        extra: Mapping[str, Any] | None = None,
    ) -> CheckpointRecord:
        """Record ``policy`` as the next version (with its file if approved or configured),
        then apply retention. Raises :class:`CheckpointError` for bad arguments."""
        if not isinstance(policy, Policy) or not policy.name:
            raise CheckpointError(f'expected a registered Policy, got {type(policy).__name__}')
        if not isinstance(approved, bool):
            raise CheckpointError(f'approved must be a bool, got {approved!r}')
        if parent is not None and (
            not isinstance(parent, int) or isinstance(parent, bool) or parent < 0
        ):
            raise CheckpointError(f'parent must be None or an int >= 0, got {parent!r}')
        metrics_d = _clean_metrics(metrics)
        extra_d = dict(extra or {})
        if APPROVED_KEY in extra_d:
            raise CheckpointError(f'extra must not contain the reserved key {APPROVED_KEY!r}')
        with self._lock:
            version = self._max_version + 1
            if approved or self.store_rejected_weights:
                path = self._root / _file_name(version)
                header = save_checkpoint(
                    path,
                    policy,
                    version=version,
                    parent=parent,
                    metrics=metrics_d,
                    extra={**extra_d, APPROVED_KEY: approved},
                    signer=self.signer,
                    robot=self.robot,
                )
                st = path.stat()
                sha = file_sha256(path)
                self._hash_cache[version] = (
                    (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns),
                    sha,
                )
                rec = CheckpointRecord(
                    version,
                    path,
                    sha,
                    st.st_size,
                    metrics_d,
                    approved,
                    parent,
                    header.created,
                    policy.name,
                )
            else:
                rec = CheckpointRecord(
                    version, None, None, 0, metrics_d, approved, parent, _now(), policy.name
                )
            self._save_index({**self._records, version: rec}, max_version=version)
            _log.info(
                'published checkpoint v%d (%s, %s%s)',
                version,
                policy.name,
                'approved' if approved else 'rejected',
                '' if rec.has_weights else ', no weights',
            )
            self.prune()
            return rec

    def resign(self, version: int) -> CheckpointRecord:
        """Sign ``version``'s file with the registry's signer (replacing any signature; the
        tensors are untouched) and update its record; returns the new record."""
        if self.signer is None:
            raise RegistryError('this registry has no signer: pass signer= to sign files')
        with self._lock:
            rec = self.get(version)
            problem = self._problem(rec)
            if problem is not None or rec.path is None:
                raise RegistryError(f'checkpoint v{version} cannot be signed: {problem}')
            data = sign_checkpoint_bytes(rec.path.read_bytes(), self.signer, self.robot)
            _write_atomic(rec.path, data)
            st = rec.path.stat()
            sha = file_sha256(rec.path)
            self._hash_cache[version] = ((st.st_ino, st.st_size, st.st_mtime_ns,
                                          st.st_ctime_ns), sha)
            new = dataclasses.replace(rec, sha256=sha, size=st.st_size)
            self._save_index({**self._records, version: new})
            _log.info('checkpoint v%d signed by key %s', version, self.signer.key_id)
            return new

    def mark_deployed(self, version: int) -> CheckpointRecord:
        """Mark an approved, intact, not revoked version as deployed and return it."""
        with self._lock:
            rec = self._deployable(version)
            self._save_index(deployed=version)
            _log.info('checkpoint v%d marked deployed', version)
            return rec

    def _deployable(self, version: int) -> CheckpointRecord:
        rec = self.get(version)
        if not rec.approved:
            raise RegistryError(
                f'checkpoint v{version} was not approved by the gate; deploy an approved one'
            )
        if rec.revoked:
            raise RegistryError(
                f'checkpoint v{version} was revoked by a rollback; publish it again to redeploy'
            )
        problem = self._problem(rec)
        if problem is not None:
            raise RegistryError(
                f'checkpoint v{version} cannot be deployed: {problem}; run verify() and '
                'deploy another version'
            )
        return rec

    def rollback(self, to_version: int | None = None, *, revoke: bool = True) -> CheckpointRecord:
        """Deploy ``to_version`` or else the newest intact approved version older than the
        deployed one; with ``revoke`` the version rolled back from is marked revoked (so
        :meth:`latest` does not offer it again). Returns the newly deployed record."""
        with self._lock:
            current = self.deployed
            if to_version is None:
                if current is None:
                    raise RegistryError(
                        'nothing is deployed, so there is nothing to roll back from; '
                        'pass to_version or call mark_deployed() first'
                    )
                target = next(
                    (
                        self._records[v]
                        for v in sorted(self._records, reverse=True)
                        if v < current.version and self._usable(self._records[v])
                    ),
                    None,
                )
                if target is None:
                    raise RegistryError(
                        f'no intact approved checkpoint older than the deployed '
                        f'v{current.version}; pass to_version explicitly'
                    )
            else:
                target = self._deployable(to_version)
                if current is not None and target.version == current.version:
                    raise RegistryError(f'checkpoint v{to_version} is already deployed')
            records = dict(self._records)
            if revoke and current is not None:
                records[current.version] = dataclasses.replace(current, revoked=True)
            self._save_index(records, deployed=target.version)
            _log.warning(
                'rolled back from v%s to v%d',
                None if current is None else current.version,
                target.version,
            )
            return target

    def revoke(self, versions) -> list[int]:
        """Mark ``versions`` revoked (e.g. rejected by the scheduler's deploy guard, and the
        candidates trained from them): :meth:`latest`, :meth:`best` and deploys skip them, a
        restarted learner does not resume from them. Unknown versions are ignored; returns the
        versions newly revoked."""
        with self._lock:
            records = dict(self._records)
            done = []
            for v in versions:
                rec = records.get(int(v))
                if rec is not None and not rec.revoked:
                    records[rec.version] = dataclasses.replace(rec, revoked=True)
                    done.append(rec.version)
            if done:
                self._save_index(records, deployed=None if self._deployed in done else _KEEP)
                _log.warning('checkpoint versions %s revoked', done)
            return done

    def _scheduler_deployed(self) -> set[int]:
        """The versions the scheduler's deploy log names in its last entries (the deployed one,
        which may differ from ours after a rollback, and the ones before it: the deploy
        guard's rollback target); unreadable logs name nothing."""
        try:
            log = json.loads((self._root / 'deploys.json').read_text())
            entries = [log.get('current'), *log.get('history', [])[-_DEPLOY_LOG_KEEP:]]
            versions = {e.get('version') for e in entries if isinstance(e, dict)}
        except (OSError, ValueError, AttributeError, TypeError):
            return set()
        return {v for v in versions if isinstance(v, int) and v in self._records}

    def prune(self) -> list[int]:
        """Apply retention (see the module docstring); return the versions whose weights were
        deleted."""
        with self._lock:
            ordered = sorted(self._records)
            keep = set(ordered[-self.keep_last :])
            if self._deployed is not None:
                keep.add(self._deployed)
            keep.update(self._scheduler_deployed())
            best = self._best(self.best_metric, self.lower_is_better)
            if best is not None:
                keep.add(best.version)
            doomed = [v for v in ordered if v not in keep and self._records[v].has_weights]
            records = {
                v: (dataclasses.replace(r, path=None, sha256=None, size=0) if v in doomed else r)
                for v, r in self._records.items()
            }
            extra = len(records) - self.keep_records
            if extra > 0:   # lineage cap: drop the oldest records without weights
                for v in [v for v in ordered if v not in keep][:extra]:
                    records.pop(v)
            if not doomed and len(records) == len(self._records):
                return []
            files = [self._records[v].path for v in doomed]
            self._save_index(records)
            for v, path in zip(doomed, files, strict=True):
                self._hash_cache.pop(v, None)
                if path is not None:
                    try:
                        path.unlink(missing_ok=True)
                    except OSError as exc:
                        _log.warning('could not delete %s: %s', path, exc)
            if doomed:
                _log.info('retention deleted the weights of checkpoint versions %s', doomed)
            return doomed


@dataclasses.dataclass(frozen=True)
class RegistryIndex:
    """A read-only snapshot of a registry's index (see :func:`read_index`)."""

    root: Path
    records: dict[int, CheckpointRecord]
    max_version: int
    deployed: int | None

    @property
    def next_version(self) -> int:
        return self.max_version + 1


def read_index(root: str | os.PathLike[str]) -> RegistryIndex:
    """Read ``<root>/registry.json`` without writing anything (for processes other than the
    registry's writer). A missing index is an empty registry; an unreadable one raises
    :class:`RegistryError`."""
    root = Path(root)
    index = root / INDEX_NAME
    try:
        data = json.loads(index.read_text())
    except FileNotFoundError:
        return RegistryIndex(root, {}, 0, None)
    except (OSError, ValueError) as exc:
        raise RegistryError(f'registry index {index} is unreadable: {exc}') from exc
    try:
        if not isinstance(data, dict) or data.get('format') != _INDEX_FORMAT:
            raise ValueError(f'expected an object with "format": {_INDEX_FORMAT}')
        records = {}
        for d in data['records']:
            rec = CheckpointRecord._from_json(root, d)
            records[rec.version] = rec
        max_version = data['max_version']
        deployed = data['deployed']
        if not isinstance(max_version, int) or max_version < max([0, *records]):
            raise ValueError(f'max_version {max_version!r} is below a recorded version')
    except (ValueError, KeyError, TypeError) as exc:
        raise RegistryError(f'registry index {index} is invalid: {exc}') from exc
    return RegistryIndex(root, records, max_version, deployed if deployed in records else None)


def registry_file(root: str | os.PathLike[str], path: str | os.PathLike[str],
                  version: int | None = None) -> Path:
    """``path`` resolved (symlinks followed) if it is a regular checkpoint file directly inside
    the registry directory ``root`` (named ``vNNNNNN.safetensors``, for ``version`` when
    given); otherwise :class:`RegistryError` saying why."""
    try:
        base = Path(root).resolve(strict=True)
    except OSError as exc:
        raise RegistryError(f'the registry directory {root} does not exist: {exc}') from exc
    if not str(path):
        raise RegistryError('no path given')
    try:
        real = Path(path).resolve(strict=True)
    except OSError as exc:
        raise RegistryError(f'{path} does not exist or cannot be resolved: {exc}') from exc
    if real.parent != base:
        raise RegistryError(f'{path} resolves to {real}, outside the registry directory {base}')
    m = _FILE_RE.match(real.name)
    if m is None:
        raise RegistryError(f'{real.name} is not a checkpoint file name (vNNNNNN.safetensors)')
    if version is not None and int(m.group(1)) != version:
        raise RegistryError(f'{real.name} is not the file of checkpoint v{version}')
    if not real.is_file():
        raise RegistryError(f'{real} is not a regular file')
    return real
