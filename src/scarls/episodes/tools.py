"""Dataset tools over a data root: validate, repair and delete (renumbering).

A data root holds task directories ``<root>/<task>/`` laid out as described in
:mod:`scarls.episodes.layout`.  The functions here work on whole roots or single tasks and never
import ``torch`` or ``rclpy``:

* :func:`~scarls.episodes.stats.dataset_info` / :func:`~scarls.episodes.stats.dataset_stats`
  (in their own module) read the meta files only: counts, codecs, shapes, sizes, leftovers.
* :func:`validate_dataset` checks every episode against the schema and (``deep``) its sha256
  checksums, plus numbering gaps, half episodes (data without meta or the reverse) and pending
  operations.  One bad episode never stops it: every problem is reported with the file and
  what is wrong.
* :func:`delete_episodes` removes episodes and renumbers the later ones so that the indices
  stay contiguous ``0..N-1``; :func:`repair` completes an interrupted delete, moves half
  episodes aside and closes numbering gaps.
* :func:`~scarls.episodes.merge.merge_datasets` (in its own module) appends verified copies
  of the episodes of other roots.
* :func:`~scarls.episodes.lerobot_import.import_lerobot_v3` (in its own module) imports a
  LeRobot v3.0 dataset folder (parquet + mp4) as an offline buffer.

Crash safety of delete (renumbering)
------------------------------------
The whole operation runs under the task's writer lock (:func:`~scarls.episodes.layout.task_lock`)
so no writer can reserve an index meanwhile, and it is refused while a writer is recording in
the task (a live reservation or temp dir).  Before touching anything it writes a journal
``<task>/.scarls-renumber.json`` (temp file, fsync, rename) holding the full plan: first move
each deleted episode (meta, then data) into ``<task>/.trash/<stamp>-<pid>/``, then rename each
later episode ``r -> k`` in increasing order (data dir, then a rewritten meta with the new
``episode_index`` written through a temp file, then the old meta removed).  Because targets
are always lower than sources and processed in increasing order, a target name is always free.
The journal's ``done`` counter is advanced after every step, and every step is idempotent and
checks the files it expects, so a crash anywhere leaves:

* every episode either visible under exactly one index (data and meta of the same episode) or
  invisible and recorded in the journal (never two episodes under one name, never one
  episode twice), so :func:`~scarls.episodes.layout.list_episodes` and the loaders keep working;
* a journal that :func:`repair` (or ``scarls dataset repair``) rolls forward, and that
  :func:`validate_dataset` reports.

The journal is removed last; trash is kept unless ``purge=True``.

A merge (:mod:`scarls.episodes.merge`) stages its copies in ``.scarls-merge-<pid>``; the scan
here reports a killed merge's staging dir and :func:`repair` removes it.

Renumbering changes which episode a path names: stop learners/loaders reading a task before
deleting from it, and recreate :class:`~scarls.episodes.dataset.EpisodeDataset` objects after.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scarls.episodes.errors import EpisodeFormatError, SchemaError
from scarls.episodes.layout import (
    check_task_name,
    cleanup_task_dir,
    episode_dir_name,
    fsync_dir,
    lock_name,
    meta_name,
    meta_temp_name,
    owner_alive,
    pid_alive,
    read_lock_owner,
    task_lock,
)
from scarls.episodes.reader import DamagedChunk, EpisodeReader, validate_episode
from scarls.episodes.schema import EpisodeMeta, meta_array_paths

__all__ = [
    'JOURNAL_FILE',
    'TRASH_DIR',
    'ActiveWriterError',
    'DatasetToolError',
    'DeleteResult',
    'PendingOperationError',
    'Problem',
    'RepairResult',
    'ValidationReport',
    'check_episode',
    'delete_episodes',
    'format_bytes',
    'format_ranges',
    'repair',
    'validate_dataset',
]

log = logging.getLogger(__name__)

JOURNAL_FILE = '.scarls-renumber.json'
JOURNAL_FORMAT = 1
TRASH_DIR = '.trash'
STAGING_PREFIX = '.scarls-merge-'

_DIR_RE = re.compile(r'^episode_(\d+)\.zarr$')
_META_RE = re.compile(r'^episode_(\d+)_meta\.json$')
_LOCK_RE = re.compile(r'^\.episode_(\d+)\.lock$')
_TEMP_RE = re.compile(r'^\.episode_(\d+)\.zarr\.tmp-(\d+)$')
_META_TEMP_RE = re.compile(r'^\.episode_(\d+)_meta\.json\.tmp-(\d+)$')
_ORPHAN_RE = re.compile(r'^\.episode_(\d+)\.zarr\.orphan-(\d+)$')
_STAGING_RE = re.compile(r'^' + re.escape(STAGING_PREFIX) + r'(\d+)$')
_JOURNAL_TMP_RE = re.compile(r'^' + re.escape(JOURNAL_FILE) + r'\.tmp-(\d+)$')

ProgressFn = Callable[[int, int, str], None]

# Test seam: called with a label after every file-system action of a renumbering step.
_step_hook: Callable[[str], None] | None = None


def _fire(label: str) -> None:
    if _step_hook is not None:
        _step_hook(label)


# -- errors and reports ---------------------------------------------------------------------


class DatasetToolError(EpisodeFormatError):
    """A dataset operation was refused or failed; the message says why and what to do."""


class ActiveWriterError(DatasetToolError):
    """A writer (recorder or merge) is active in the task directory."""


class PendingOperationError(DatasetToolError):
    """An interrupted delete/renumber is pending in the task directory (run :func:`repair`)."""


@dataclass(frozen=True)
class Problem:
    """One finding of :func:`validate_dataset`.

    ``severity`` is ``'error'`` (data unusable or layout broken), ``'warning'`` (loading works
    but something needs attention) or ``'info'``; ``path`` is relative to the data root.
    """

    severity: str
    task: str
    path: str
    message: str
    index: int | None = None
    repairable: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        return f'{self.severity.upper()} {self.path}: {self.message}'


@dataclass
class ValidationReport:
    """Result of :func:`validate_dataset`."""

    root: str
    deep: bool
    tasks: list[str] = field(default_factory=list)
    episodes: int = 0
    valid_episodes: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == 'error']

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == 'warning']

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            'root': self.root,
            'deep': self.deep,
            'tasks': self.tasks,
            'episodes': self.episodes,
            'valid_episodes': self.valid_episodes,
            'ok': self.ok,
            'errors': len(self.errors),
            'warnings': len(self.warnings),
            'problems': [p.to_dict() for p in self.problems],
        }


@dataclass
class DeleteResult:
    """Result of :func:`delete_episodes`: what was (or, for a dry run, would be) done."""

    task: str
    deleted: list[int]
    renamed: list[tuple[int, int]]
    episodes_after: int
    trash: str | None
    purged: bool
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RepairResult:
    """Result of :func:`repair`: the actions taken and what could not be fixed."""

    root: str
    actions: list[str] = field(default_factory=list)
    remaining: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.remaining

    def to_dict(self) -> dict[str, Any]:
        return {'root': self.root, 'ok': self.ok, 'actions': self.actions,
                'remaining': self.remaining}


# -- scanning a task directory ----------------------------------------------------------------


@dataclass
class _TaskScan:
    task: str
    path: Path
    zarr: set[int] = field(default_factory=set)
    meta: set[int] = field(default_factory=set)
    live_locks: dict[int, int] = field(default_factory=dict)
    dead_locks: dict[int, int] = field(default_factory=dict)
    live_temps: list[tuple[str, int]] = field(default_factory=list)
    dead_temps: list[tuple[str, int]] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)
    live_staging: list[tuple[str, int]] = field(default_factory=list)
    dead_staging: list[tuple[str, int]] = field(default_factory=list)
    journal: bool = False
    trash: bool = False

    @property
    def visible(self) -> list[int]:
        return sorted(self.zarr & self.meta)

    @property
    def relevant(self) -> bool:
        return bool(
            self.zarr or self.meta or self.live_locks or self.dead_locks or self.live_temps
            or self.dead_temps or self.orphans or self.live_staging or self.dead_staging
            or self.journal or self.trash
        )

    def active(self) -> list[str]:
        """Descriptions of writers/merges that are alive right now."""
        out = [
            f'episode {i} reserved by live pid {pid}'
            for i, pid in sorted(self.live_locks.items())
        ]
        out += [f'{name} (live pid {pid})' for name, pid in self.live_temps]
        out += [f'{name} (merge in progress, pid {pid})' for name, pid in self.live_staging]
        return out

    def leftovers(self) -> list[str]:
        """Descriptions of what killed writers/operations left behind (nothing visible)."""
        out = [f'{name} (temp of dead writer pid {pid})' for name, pid in self.dead_temps]
        out += [
            f'{lock_name(i)} (stale reservation of dead or reused pid {pid})'
            for i, pid in sorted(self.dead_locks.items())
        ]
        out += [f'{name} (uncommitted data of a dead writer, kept)' for name in self.orphans]
        out += [f'{name} (staging of dead merge pid {pid})' for name, pid in self.dead_staging]
        for i in sorted(self.zarr - self.meta):
            if i not in self.live_locks:
                out.append(f'{episode_dir_name(i)} (data without meta)')
        for i in sorted(self.meta - self.zarr):
            out.append(f'{meta_name(i)} (meta without data)')
        if self.journal:
            out.append(f'{JOURNAL_FILE} (interrupted delete/renumber; run repair)')
        return out


def _scan_task(task_dir: Path, task: str) -> _TaskScan:
    scan = _TaskScan(task, task_dir)
    try:
        names = os.listdir(task_dir)
    except (FileNotFoundError, NotADirectoryError):
        return scan
    dead_owners: set[tuple[int, int]] = set()   # (index, pid) of stale reservations
    for name in names:
        if m := _LOCK_RE.match(name):
            owner = read_lock_owner(task_dir / name) or (-1, None)
            pid = owner[0]
            if owner_alive(*owner):
                scan.live_locks[int(m.group(1))] = pid
            else:
                scan.dead_locks[int(m.group(1))] = pid
                dead_owners.add((int(m.group(1)), pid))
    for name in names:
        if m := _DIR_RE.match(name):
            scan.zarr.add(int(m.group(1)))
        elif m := _META_RE.match(name):
            scan.meta.add(int(m.group(1)))
        elif (m := _TEMP_RE.match(name)) or (m := _META_TEMP_RE.match(name)):
            pid = int(m.group(2))
            # a temp of a writer whose reservation is stale (dead or reused pid) is dead
            alive = pid_alive(pid) and (int(m.group(1)), pid) not in dead_owners
            (scan.live_temps if alive else scan.dead_temps).append((name, pid))
        elif m := _JOURNAL_TMP_RE.match(name):
            pid = int(m.group(1))
            (scan.live_temps if pid_alive(pid) else scan.dead_temps).append((name, pid))
        elif _ORPHAN_RE.match(name):
            scan.orphans.append(name)
        elif m := _STAGING_RE.match(name):
            pid = int(m.group(1))
            (scan.live_staging if pid_alive(pid) else scan.dead_staging).append((name, pid))
        elif name == JOURNAL_FILE:
            scan.journal = True
        elif name == TRASH_DIR:
            scan.trash = True
    for lst in (scan.live_temps, scan.dead_temps, scan.live_staging, scan.dead_staging):
        lst.sort()
    scan.orphans.sort()
    return scan


def _task_names(root: Path, task: str | None) -> list[str]:
    if not root.exists():
        raise DatasetToolError(f'{root}: data root does not exist')
    if not root.is_dir():
        raise DatasetToolError(f'{root}: data root is not a directory')
    if task is not None:
        return [check_task_name(task)]
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except FileNotFoundError:
        raise DatasetToolError(f'{root}: data root does not exist') from None
    except NotADirectoryError:
        raise DatasetToolError(f'{root}: data root is not a directory') from None
    out = []
    for entry in entries:
        if not entry.is_dir():
            continue
        try:
            check_task_name(entry.name)
        except ValueError:
            continue
        if _scan_task(Path(entry.path), entry.name).relevant:
            out.append(entry.name)
    return out


def _gaps(indices: Iterable[int]) -> list[int]:
    present = set(indices)
    if not present:
        return []
    return [i for i in range(max(present) + 1) if i not in present]


def _tree_bytes(path: Path) -> int:
    total = 0
    stack = [path]
    while stack:
        p = stack.pop()
        try:
            with os.scandir(p) as it:
                for entry in it:
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(Path(entry.path))
                    else:
                        with contextlib.suppress(OSError):
                            total += entry.stat(follow_symlinks=False).st_size
        except NotADirectoryError:
            with contextlib.suppress(OSError):
                total += p.lstat().st_size
        except OSError:
            continue
    return total


def _rel(root: Path, path: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _strip(message: str, path: Path) -> str:
    """Drop a leading ``'<path>: '`` from an error message (the report names the file)."""
    prefix = f'{path}: '
    return message[len(prefix):] if message.startswith(prefix) else message


# -- validation --------------------------------------------------------------------------------


def _chunk_files(adir: Path) -> list[Path]:
    out = []
    for dirpath, _dirs, files in os.walk(adir):
        for name in files:
            if name != 'zarr.json':
                out.append(Path(dirpath) / name)
    return sorted(out)


def _modified_after(files: Iterable[Path], stamp_ns: int) -> list[Path]:
    out = []
    for f in files:
        with contextlib.suppress(OSError):
            if f.stat().st_mtime_ns > stamp_ns:
                out.append(f)
    return out


def _mismatch_message(root: Path, path: Path, key: str, meta_path: Path, expected: str,
                      got: str) -> tuple[str, str]:
    """(file, message) for a checksum mismatch of array ``key``, naming suspect chunk files."""
    adir = path / key
    files = _chunk_files(adir)
    try:
        committed = meta_path.stat().st_mtime_ns
    except OSError:
        committed = 0
    suspects = _modified_after(files, committed)
    message = (
        f'sha256 mismatch for array {key!r}: the stored data differs from what was recorded '
        f'(meta {expected[:12]}..., data {got[:12]}...)'
    )
    if len(suspects) == 1:
        note = 'this chunk file was modified after the episode was committed'
        return _rel(root, suspects[0]), f'{message}; {note}'
    if suspects:
        names = ', '.join(s.name for s in suspects[:5]) + (' ...' if len(suspects) > 5 else '')
        return _rel(root, adir), message + f'; chunk files modified after the commit: {names}'
    if len(files) == 1:
        return _rel(root, files[0]), message
    return _rel(root, adir), message + f' (one of its {len(files)} chunk files)'


def check_episode(
    root: str | os.PathLike[str], task: str, index: int, deep: bool = True
) -> list[Problem]:
    """Check episode ``index`` of ``task``; return its problems (empty if it is valid).

    Checks the meta against the schema, every array's dtype/shape/chunk files against the meta,
    and (``deep``) the sha256 of every array, decoding every frame.  A frame that cannot be
    decoded is reported with its chunk file; a checksum mismatch names the array and, where it
    can tell, the chunk file(s) modified after the episode was committed.  Never raises
    :class:`SchemaError`.
    """
    root_path = Path(root)
    task_dir = root_path / task
    path = task_dir / episode_dir_name(index)
    meta_path = task_dir / meta_name(index)
    rel = _rel(root_path, path)

    def problem(severity: str, file: str, message: str) -> Problem:
        return Problem(severity, task, file, message, index)

    try:
        meta = EpisodeMeta.load(meta_path)
    except SchemaError as exc:
        return [problem('error', _rel(root_path, meta_path), _strip(str(exc), meta_path))]
    problems: list[Problem] = []
    if meta.episode_index != index:
        problems.append(Problem(
            'warning', task, _rel(root_path, meta_path),
            f'meta says episode_index {meta.episode_index} but the file is episode {index} '
            '(repair rewrites it)', index, repairable=True))
    if meta.task != task:
        problems.append(problem(
            'warning', _rel(root_path, meta_path),
            f'meta says task {meta.task!r} but the episode is in the task directory {task!r}'))
    try:
        validate_episode(path, check_checksums=False)
    except DamagedChunk as exc:
        problems.append(problem('error', _rel(root_path, exc.chunk), _strip(str(exc), path)))
        return problems
    except SchemaError as exc:
        problems.append(problem('error', rel, _strip(str(exc), path)))
        return problems
    except Exception as exc:  # noqa: BLE001 - any zarr failure means a corrupt episode
        problems.append(problem('error', rel, f'unreadable: {type(exc).__name__}: {exc}'))
        return problems
    if not deep:
        return problems
    try:
        reader = EpisodeReader(path)
    except SchemaError as exc:  # pragma: no cover - validated just above
        problems.append(problem('error', rel, _strip(str(exc), path)))
        return problems
    for key in meta_array_paths(meta):
        arr = reader._arrays[key]
        digest = hashlib.sha256()
        bad_frames: list[Problem] = []
        if arr.ndim == 4:
            for i in range(meta.steps):
                try:
                    frame = np.ascontiguousarray(np.asarray(arr[i]))
                except Exception as exc:  # noqa: BLE001 - codec specific errors
                    chunk = path / key / arr.metadata.encode_chunk_key((i, 0, 0, 0))
                    bad_frames.append(problem(
                        'error', _rel(root_path, chunk),
                        f'frame {i} of {key!r} cannot be decoded: {type(exc).__name__}: {exc}'))
                    continue
                digest.update(frame.data)
            if bad_frames:
                problems.extend(bad_frames[:5])
                if len(bad_frames) > 5:
                    problems.append(problem(
                        'error', _rel(root_path, path / key),
                        f'{len(bad_frames) - 5} more frames of {key!r} cannot be decoded'))
                continue
        else:
            try:
                data = np.ascontiguousarray(np.asarray(arr[...]))
            except Exception as exc:  # noqa: BLE001
                problems.append(problem(
                    'error', _rel(root_path, path / key),
                    f'array {key!r} cannot be decoded: {type(exc).__name__}: {exc}'))
                continue
            digest.update(data.data)
        got = digest.hexdigest()
        expected = meta.sha256.get(key, '')
        if got != expected:
            file, message = _mismatch_message(root_path, path, key, meta_path, expected, got)
            problems.append(problem('error', file, message))
    return problems


def _load_journal(task_dir: Path) -> dict[str, Any]:
    path = task_dir / JOURNAL_FILE
    try:
        data = json.loads(path.read_text(encoding='utf-8'))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PendingOperationError(f'{path}: cannot read the journal: {exc}') from exc
    steps = data.get('steps') if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or data.get('format') != JOURNAL_FORMAT
        or not isinstance(steps, list)
        or not isinstance(data.get('done'), int)
        or not isinstance(data.get('trash'), str)
    ):
        raise PendingOperationError(f'{path}: not a journal this version understands')
    return data


def _structure_problems(root: Path, scan: _TaskScan) -> list[Problem]:
    task, task_dir = scan.task, scan.path
    out: list[Problem] = []

    def add(severity: str, path: Path, message: str, index: int | None = None,
            repairable: bool = True) -> None:
        out.append(Problem(severity, task, _rel(root, path), message, index, repairable))

    if scan.journal:
        try:
            journal = _load_journal(task_dir)
            add('error', task_dir / JOURNAL_FILE,
                f'an interrupted {journal.get("op", "delete")} is pending '
                f'({journal["done"]}/{len(journal["steps"])} steps done); run repair to '
                'complete it')
        except PendingOperationError as exc:
            add('error', task_dir / JOURNAL_FILE, _strip(str(exc), task_dir / JOURNAL_FILE),
                repairable=False)
    for i in sorted(scan.zarr - scan.meta):
        if i in scan.live_locks:
            continue  # being published right now
        add('error', task_dir / episode_dir_name(i),
            'episode data without its meta file (not loadable; repair moves it to the trash)', i)
    for i in sorted(scan.meta - scan.zarr):
        add('error', task_dir / meta_name(i),
            'meta file without episode data (not loadable; repair moves it to the trash)', i)
    gaps = _gaps(scan.zarr | scan.meta | set(scan.live_locks))
    if gaps:
        add('error', task_dir,
            f'episode numbering has gaps: {format_ranges(gaps)} missing (repair renumbers)')
    for name, pid in scan.dead_temps:
        add('warning', task_dir / name,
            f'leftover of a killed writer (pid {pid}); the next writer or repair removes it')
    for i, pid in sorted(scan.dead_locks.items()):
        add('warning', task_dir / lock_name(i),
            f'stale reservation of dead or reused pid {pid}; the next writer or repair '
            'removes it', i)
    for name in scan.orphans:
        add('warning', task_dir / name,
            'uncommitted data of a killed writer, kept for manual recovery (not loadable)',
            repairable=False)
    for name, pid in scan.dead_staging:
        add('warning', task_dir / name,
            f'staging directory of a killed merge (pid {pid}); repair removes it')
    for desc in scan.active():
        add('info', task_dir, f'writer active: {desc}', repairable=False)
    if scan.trash:
        size = _tree_bytes(task_dir / TRASH_DIR)
        add('info', task_dir / TRASH_DIR,
            f'deleted episodes kept in the trash ({format_bytes(size)}); remove it to free '
            'space',
            repairable=False)
    return out


def format_bytes(n: int | None) -> str:
    """``1234567`` -> ``'1.2 MB'`` (decimal units); ``None`` -> ``'-'``."""
    if n is None:
        return '-'
    for unit, scale in (('GB', 1e9), ('MB', 1e6), ('kB', 1e3)):
        if n >= scale:
            return f'{n / scale:.1f} {unit}'
    return f'{n} B'


def format_ranges(values: Sequence[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``'0-2, 5, 7-8'``."""
    parts: list[str] = []
    start = prev = None
    for v in values:
        if start is None:
            start = prev = v
        elif v == prev + 1:
            prev = v
        else:
            parts.append(f'{start}' if start == prev else f'{start}-{prev}')
            start = prev = v
    if start is not None:
        parts.append(f'{start}' if start == prev else f'{start}-{prev}')
    return ', '.join(parts)


def validate_dataset(
    root: str | os.PathLike[str],
    task: str | None = None,
    deep: bool = True,
    progress: ProgressFn | None = None,
) -> ValidationReport:
    """Check every episode under ``root`` (or one task); never raises for a bad episode.

    Reports corrupt or malformed episodes (with the file and what is wrong), checksum
    mismatches (``deep``), numbering gaps, half episodes, pending interrupted operations and
    leftovers of killed writers.  ``progress(done, total, label)`` is called after each episode.
    Raises :class:`DatasetToolError` only if ``root`` does not exist.
    """
    root_path = Path(root)
    report = ValidationReport(str(root_path), deep)
    names = _task_names(root_path, task)
    report.tasks = names
    scans = [_scan_task(root_path / t, t) for t in names]
    if task is not None and not (root_path / task).is_dir():
        report.problems.append(Problem('error', task, task, 'task directory does not exist'))
    total = sum(len(s.visible) for s in scans)
    done = 0
    for scan in scans:
        report.problems.extend(_structure_problems(root_path, scan))
        for index in scan.visible:
            problems = check_episode(root_path, scan.task, index, deep)
            report.episodes += 1
            if not any(p.severity == 'error' for p in problems):
                report.valid_episodes += 1
            report.problems.extend(problems)
            done += 1
            if progress is not None:
                progress(done, total, f'{scan.task}/{episode_dir_name(index)}')
    return report


# -- atomic small-file helpers ---------------------------------------------------------------


def _write_json_atomic(path: Path, tmp: Path, data: Any, fsync: bool) -> None:
    text = json.dumps(data, indent=1, sort_keys=True, allow_nan=False)
    with open(tmp, 'w', encoding='utf-8') as fh:
        fh.write(text)
        fh.flush()
        if fsync:
            os.fsync(fh.fileno())
    os.rename(tmp, path)
    if fsync:
        fsync_dir(path.parent)


def _write_journal(task_dir: Path, journal: dict[str, Any], fsync: bool) -> None:
    tmp = task_dir / f'{JOURNAL_FILE}.tmp-{os.getpid()}'
    _write_json_atomic(task_dir / JOURNAL_FILE, tmp, journal, fsync)


def _write_meta(task_dir: Path, index: int, data: dict[str, Any], fsync: bool) -> None:
    """Atomically write ``episode_<index>_meta.json`` with ``data`` (episode_index set)."""
    data = dict(data, episode_index=index)
    _write_json_atomic(task_dir / meta_name(index), task_dir / meta_temp_name(index, os.getpid()),
                       data, fsync)


def _rewrite_meta(task_dir: Path, src: Path, index: int, fsync: bool) -> None:
    """Write ``episode_<index>_meta.json`` from the meta at ``src`` with a new episode_index."""
    _write_meta(task_dir, index, json.loads(src.read_text(encoding='utf-8')), fsync)


# -- renumbering (delete / compact) ------------------------------------------------------------


def _do_trash_step(task_dir: Path, trash: Path, index: int, fsync: bool) -> list[str]:
    notes: list[str] = []
    trash.mkdir(parents=True, exist_ok=True)
    for name in (meta_name(index), episode_dir_name(index)):  # meta first: uncommit, then data
        src, dst = task_dir / name, trash / name
        if os.path.lexists(dst):
            # already moved; a file now at ``src`` is a newer episode (a writer reused the
            # freed index while this step was done but not yet recorded): leave it alone
            continue
        if os.path.lexists(src):
            os.rename(src, dst)
            if fsync:
                fsync_dir(task_dir)
            _fire(f'trash:{name}')
        else:
            notes.append(f'{name} was neither in place nor in the trash (removed by someone else)')
    return notes


def _do_rename_step(task_dir: Path, old: int, new: int, fsync: bool) -> None:
    z_old, z_new = task_dir / episode_dir_name(old), task_dir / episode_dir_name(new)
    m_old, m_new = task_dir / meta_name(old), task_dir / meta_name(new)
    if not m_new.exists():
        if z_old.exists() and not z_new.exists():
            os.rename(z_old, z_new)
            if fsync:
                fsync_dir(task_dir)
            _fire(f'rename-data:{old}->{new}')
        elif not (z_new.exists() and not z_old.exists()):
            raise PendingOperationError(
                f'{task_dir}: cannot move episode {old} to {new}: expected {z_old.name} and no '
                f'{z_new.name}, found {"both" if z_old.exists() else "neither"}; resolve by hand'
            )
        if not m_old.exists():
            raise PendingOperationError(
                f'{m_old}: meta of episode {old} is missing while moving it to {new}; '
                'resolve by hand'
            )
        _rewrite_meta(task_dir, m_old, new, fsync)
        _fire(f'rename-meta:{old}->{new}')
    elif not z_new.exists():
        raise PendingOperationError(
            f'{m_new}: exists without {z_new.name} while moving episode {old}; resolve by hand'
        )
    if m_old.exists() and _same_content(m_old, m_new):
        # (a meta of other content at the old name belongs to an episode a writer published
        # at the freed index after this step was done but before it was recorded: keep it)
        m_old.unlink()
        if fsync:
            fsync_dir(task_dir)
        _fire(f'unlink-meta:{old}')


def _same_content(a: Path, b: Path) -> bool:
    """True if two meta files describe the same data (same per-array sha256 table)."""
    try:
        ta = json.loads(a.read_text(encoding='utf-8')).get('sha256')
        tb = json.loads(b.read_text(encoding='utf-8')).get('sha256')
    except (OSError, ValueError, AttributeError):
        return False
    return ta is not None and ta == tb


def _run_journal(task_dir: Path, journal: dict[str, Any], fsync: bool) -> list[str]:
    """Roll the journal forward from its ``done`` step; remove it when complete."""
    notes: list[str] = []
    trash = task_dir / journal['trash']
    steps = journal['steps']
    for n in range(journal['done'], len(steps)):
        step = steps[n]
        if step['kind'] == 'trash':
            notes += _do_trash_step(task_dir, trash, int(step['index']), fsync)
        elif step['kind'] == 'rename':
            _do_rename_step(task_dir, int(step['from']), int(step['to']), fsync)
        else:
            raise PendingOperationError(f'{task_dir / JOURNAL_FILE}: unknown step {step!r}')
        journal['done'] = n + 1
        _write_journal(task_dir, journal, fsync)
        _fire(f'journal:{n + 1}')
    (task_dir / JOURNAL_FILE).unlink()
    if fsync:
        fsync_dir(task_dir)
    _fire('journal-removed')
    return notes


def _new_trash_name(task_dir: Path, label: str) -> str:
    """A fresh ``.trash/<utc stamp>-<pid>-<label>[-n]`` name (relative to the task dir)."""
    stamp = time.strftime('%Y%m%dT%H%M%S', time.gmtime())
    base = f'{TRASH_DIR}/{stamp}-{os.getpid()}-{label}'
    name, n = base, 1
    while os.path.lexists(task_dir / name):
        n += 1
        name = f'{base}-{n}'
    return name


def _plan(visible: Sequence[int], delete: set[int]) -> tuple[list[int], list[tuple[int, int]]]:
    deleted = sorted(i for i in visible if i in delete)
    remaining = [i for i in visible if i not in delete]
    renames = [(old, new) for new, old in enumerate(remaining) if old != new]
    return deleted, renames


def _check_no_active(scan: _TaskScan, what: str) -> None:
    active = scan.active()
    if active:
        raise ActiveWriterError(
            f'{scan.path}: refusing to {what} while a writer is active ({"; ".join(active)}); '
            'stop recording/merging into this task and retry'
        )


def _check_no_pending(task_dir: Path) -> None:
    if (task_dir / JOURNAL_FILE).exists():
        raise PendingOperationError(
            f'{task_dir / JOURNAL_FILE}: an interrupted delete/renumber is pending; run '
            '`scarls dataset repair` first'
        )


def _renumber(
    root: Path, task: str, delete: set[int], *, op: str, purge: bool, dry_run: bool,
    fsync: bool, lock_timeout: float,
) -> DeleteResult:
    task_dir = root / check_task_name(task)
    if not task_dir.is_dir():
        raise DatasetToolError(f'{task_dir}: task directory does not exist')
    trash_rel: str | None = None
    with task_lock(task_dir, lock_timeout):
        _check_no_pending(task_dir)
        if not dry_run:
            cleanup_task_dir(task_dir)  # dead writers' leftovers (nothing visible changes)
        scan = _scan_task(task_dir, task)
        _check_no_active(scan, op)
        halves = sorted(scan.zarr ^ scan.meta)
        if halves:
            raise DatasetToolError(
                f'{task_dir}: episodes {format_ranges(halves)} have data without meta or meta '
                'without data; run `scarls dataset repair` first'
            )
        visible = scan.visible
        unknown = sorted(delete - set(visible))
        if unknown:
            raise DatasetToolError(
                f'{task_dir}: no episode {format_ranges(unknown)} (episodes: '
                f'{format_ranges(visible) or "none"})'
            )
        deleted, renames = _plan(visible, delete)
        result = DeleteResult(task, deleted, renames, len(visible) - len(deleted), None, False,
                              dry_run)
        if dry_run or (not deleted and not renames):
            return result
        trash_rel = _new_trash_name(task_dir, op)
        journal = {
            'format': JOURNAL_FORMAT,
            'op': op,
            'task': task,
            'pid': os.getpid(),
            'created_unix': time.time(),
            'trash': trash_rel,
            'steps': [{'kind': 'trash', 'index': i} for i in deleted]
            + [{'kind': 'rename', 'from': a, 'to': b} for a, b in renames],
            'done': 0,
        }
        _write_journal(task_dir, journal, fsync)
        _fire('journal-written')
        for note in _run_journal(task_dir, journal, fsync):
            log.warning('%s: %s', task_dir, note)
        result.trash = trash_rel if deleted else None
    log.info('%s: %s %s, renumbered %d episode(s)', task_dir, op,
             format_ranges(deleted) or 'nothing', len(renames))
    if purge and deleted:
        shutil.rmtree(task_dir / trash_rel, ignore_errors=True)
        with contextlib.suppress(OSError):
            (task_dir / TRASH_DIR).rmdir()  # only if empty
        result.purged = True
    return result


def delete_episodes(
    root: str | os.PathLike[str],
    task: str,
    indices: Iterable[int],
    *,
    purge: bool = False,
    dry_run: bool = False,
    fsync: bool = True,
    lock_timeout: float = 10.0,
) -> DeleteResult:
    """Delete episodes of ``task`` and renumber the later ones to keep ``0..N-1`` contiguous.

    Deleted episodes are moved to ``<root>/<task>/.trash/<stamp>-<pid>/`` (removed for good
    with ``purge=True``).  Crash-safe through a journal (see the module docstring); refused with
    :class:`ActiveWriterError` while a writer is recording in the task, with
    :class:`PendingOperationError` while an interrupted operation is pending, and with
    :class:`DatasetToolError` for unknown indices or half episodes.  Existing gaps are closed
    too.  The writer lock is held for the whole operation (about one rename and one small meta
    write per renumbered episode): writers starting meanwhile wait for it.
    """
    wanted = set()
    for i in indices:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or i < 0:
            raise DatasetToolError(f'episode indices must be ints >= 0, got {i!r}')
        wanted.add(int(i))
    return _renumber(Path(root), task, wanted, op='delete', purge=purge, dry_run=dry_run,
                     fsync=fsync, lock_timeout=lock_timeout)


# -- repair ------------------------------------------------------------------------------------


def repair(
    root: str | os.PathLike[str],
    task: str | None = None,
    *,
    fsync: bool = True,
    lock_timeout: float = 10.0,
) -> RepairResult:
    """Bring task directories back to a clean, contiguous layout; report what remains.

    Per task: completes an interrupted delete/renumber from its journal; removes leftovers of
    killed writers and merges; moves half episodes (data without meta or meta without data) to
    the trash; rewrites metas whose ``episode_index`` disagrees with their file name; closes
    numbering gaps by renumbering (only when no writer is active).  Corrupt episodes are left in
    place (the loaders skip them; see :func:`validate_dataset`, delete them explicitly).
    """
    root_path = Path(root)
    result = RepairResult(str(root_path))
    for name in _task_names(root_path, task):
        task_dir = root_path / name
        if not task_dir.is_dir():
            result.remaining.append(f'{name}: task directory does not exist')
            continue
        try:
            _repair_task(root_path, name, result, fsync, lock_timeout)
        except (DatasetToolError, OSError) as exc:
            result.remaining.append(f'{name}: {exc}')
    return result


def _repair_task(root: Path, task: str, result: RepairResult, fsync: bool,
                 lock_timeout: float) -> None:
    task_dir = root / task
    actions = result.actions

    def act(message: str) -> None:
        actions.append(f'{task}: {message}')
        log.info('%s: %s', task_dir, message)

    with task_lock(task_dir, lock_timeout):
        if (task_dir / JOURNAL_FILE).exists():
            journal = _load_journal(task_dir)
            done, total = journal['done'], len(journal['steps'])
            for note in _run_journal(task_dir, journal, fsync):
                act(note)
            act(f'completed the interrupted {journal.get("op", "delete")} '
                f'(steps {done + 1}-{total} of {total})')
        for action in cleanup_task_dir(task_dir):
            act(action)
        scan = _scan_task(task_dir, task)
        for name, pid in scan.dead_temps:  # e.g. journal temp files of a killed operation
            with contextlib.suppress(OSError):
                (task_dir / name).unlink()
                act(f'removed leftover {name} of dead pid {pid}')
        for name, pid in scan.dead_staging:
            shutil.rmtree(task_dir / name, ignore_errors=True)
            act(f'removed staging directory {name} of dead merge pid {pid}')
        halves = sorted(i for i in scan.zarr ^ scan.meta if i not in scan.live_locks)
        if halves:
            trash = task_dir / _new_trash_name(task_dir, 'repair')
            trash.mkdir(parents=True, exist_ok=True)
            for i in halves:
                for name in (episode_dir_name(i), meta_name(i)):
                    if os.path.lexists(task_dir / name):
                        os.rename(task_dir / name, trash / name)
                        act(f'moved half episode {name} to {_rel(task_dir, trash)}')
            if fsync:
                fsync_dir(task_dir)
        scan = _scan_task(task_dir, task)
        for index in scan.visible:
            meta_path = task_dir / meta_name(index)
            try:
                data = json.loads(meta_path.read_text(encoding='utf-8'))
            except (OSError, ValueError):
                continue  # reported by validate
            if isinstance(data, dict) and data.get('episode_index') != index:
                _rewrite_meta(task_dir, meta_path, index, fsync)
                act(f'rewrote episode_index of {meta_name(index)} '
                    f'({data.get("episode_index")} -> {index})')
        gaps = _gaps(scan.zarr | scan.meta | set(scan.live_locks))
    if gaps:
        if scan.active():
            result.remaining.append(
                f'{task}: numbering gaps {format_ranges(gaps)} remain because a writer is active '
                f'({"; ".join(scan.active())}); run repair again when it is done'
            )
            return
        res = _renumber(root, task, set(), op='compact', purge=False, dry_run=False,
                        fsync=fsync, lock_timeout=lock_timeout)
        act(f'closed numbering gaps {format_ranges(gaps)} '
            f'({len(res.renamed)} episode(s) renumbered)')


_MOVED = {
    'MergeResult': 'scarls.episodes.merge',
    'merge_datasets': 'scarls.episodes.merge',
    'DatasetSummary': 'scarls.episodes.stats',
    'TaskSummary': 'scarls.episodes.stats',
    'dataset_info': 'scarls.episodes.stats',
    'dataset_stats': 'scarls.episodes.stats',
    'ImportResult': 'scarls.episodes.lerobot_import',
    'import_lerobot_v3': 'scarls.episodes.lerobot_import',
}


def __getattr__(name: str) -> Any:
    """Names that moved to their own modules, still importable from here."""
    if name in _MOVED:
        import importlib
        return getattr(importlib.import_module(_MOVED[name]), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
