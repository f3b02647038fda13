"""Merge data roots: ``scarls dataset merge`` (:func:`merge_datasets`).

Merge copies each source episode into a hidden staging dir (``.scarls-merge-<pid>``), checks the
copy, and publishes it with the writer's own protocol (reserve the next index under the task
lock, rename data into place, write meta last), so a killed merge leaves nothing visible that is
incomplete and frees its index for the next writer.  Episodes already in the destination (same
meta fingerprint) are skipped.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scarls.episodes.errors import EpisodeFormatError
from scarls.episodes.layout import (
    cleanup_task_dir,
    episode_dir_name,
    fsync_dir,
    fsync_file,
    lock_name,
    meta_name,
    reserve_index,
    task_lock,
)
from scarls.episodes.schema import EpisodeMeta
from scarls.episodes.tools import (
    STAGING_PREFIX,
    DatasetToolError,
    ProgressFn,
    _check_no_pending,
    _scan_task,
    _task_names,
    _write_meta,
    check_episode,
)

__all__ = ['MergeResult', 'merge_datasets']

log = logging.getLogger(__name__)

@dataclass
class MergeResult:
    """Result of :func:`merge_datasets`."""

    root: str
    copied: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    duplicates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.skipped

    def to_dict(self) -> dict[str, Any]:
        return {'root': self.root, 'ok': self.ok, 'copied': self.copied,
                'skipped': self.skipped, 'duplicates': self.duplicates}


def _fingerprint(meta_data: dict[str, Any]) -> str:
    """Identity of an episode's content: the digest of its per-array sha256 table."""
    table = meta_data.get('sha256', {})
    return hashlib.sha256(json.dumps(table, sort_keys=True).encode()).hexdigest()


def _dst_fingerprints(task_dir: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    for index in _scan_task(task_dir, task_dir.name).visible:
        with contextlib.suppress(OSError, ValueError):
            data = json.loads((task_dir / meta_name(index)).read_text(encoding='utf-8'))
            if isinstance(data, dict):
                out.setdefault(_fingerprint(data), index)
    return out


def _file_table(path: Path) -> dict[str, int]:
    table = {}
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            p = Path(dirpath) / name
            table[str(p.relative_to(path))] = p.stat().st_size
    return table


def _fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fsync_file(Path(dirpath) / name)
        fsync_dir(Path(dirpath))


def merge_datasets(
    dst_root: str | os.PathLike[str],
    src_roots: Sequence[str | os.PathLike[str]],
    task: str | None = None,
    *,
    verify: bool = True,
    skip_duplicates: bool = True,
    fsync: bool = True,
    lock_timeout: float = 10.0,
    progress: ProgressFn | None = None,
) -> MergeResult:
    """Append copies of the episodes of ``src_roots`` (one task or all) to ``dst_root``.

    Every source episode is validated first (``verify``: including its sha256 checksums); a bad
    one is skipped with the file and what is wrong, and the rest are copied.  Episodes whose
    content is already in the destination task (same checksums) are skipped as duplicates
    unless ``skip_duplicates=False``, so re-running an interrupted merge copies only what is
    missing.  Copies get the next free indices of the destination task (after its last
    episode), their meta records the new ``episode_index`` and ``extra['merged_from']``.
    Never overwrites; works while writers record into the destination (same reservation
    protocol).  Raises :class:`DatasetToolError` for a missing source root, a source equal to the
    destination, or a pending interrupted operation in a destination task.
    """
    dst = Path(dst_root)
    result = MergeResult(str(dst))
    dst_resolved = dst.resolve()
    sources: list[tuple[Path, str, int]] = []
    for src in src_roots:
        src_path = Path(src)
        if src_path.resolve() == dst_resolved:
            raise DatasetToolError(f'{src_path}: a source cannot be the destination root')
        for name in _task_names(src_path, task):
            for index in _scan_task(src_path / name, name).visible:
                sources.append((src_path, name, index))
    fingerprints: dict[str, dict[str, int]] = {}
    for n, (src_path, name, index) in enumerate(sources, 1):
        label = f'{src_path}/{name}/{episode_dir_name(index)}'
        entry = {'source': str(src_path), 'task': name, 'index': index}
        problems = [p for p in check_episode(src_path, name, index, deep=verify)
                    if p.severity == 'error']
        if problems:
            reason = '; '.join(f'{src_path / p.path}: {p.message}' for p in problems)
            result.skipped.append({**entry, 'reason': reason})
            log.info('merge: skipping %s: %s', label, reason)
        else:
            task_dir = dst / name
            task_dir.mkdir(parents=True, exist_ok=True)
            if name not in fingerprints:
                _check_no_pending(task_dir)
                fingerprints[name] = _dst_fingerprints(task_dir) if skip_duplicates else {}
            src_meta = json.loads(
                (src_path / name / meta_name(index)).read_text(encoding='utf-8'))
            fp = _fingerprint(src_meta)
            if skip_duplicates and fp in fingerprints[name]:
                result.duplicates.append({**entry, 'existing_index': fingerprints[name][fp]})
            else:
                try:
                    new_index = _copy_episode(src_path, name, index, dst, src_meta, fsync,
                                              lock_timeout)
                except (EpisodeFormatError, OSError, ValueError) as exc:
                    result.skipped.append({**entry, 'reason': f'copy failed: {exc}'})
                    log.info('merge: copying %s failed: %s', label, exc)
                else:
                    fingerprints[name][fp] = new_index
                    result.copied.append({**entry, 'dst_task': name, 'dst_index': new_index})
        if progress is not None:
            progress(n, len(sources), label)
    return result


def _copy_episode(src_root: Path, task: str, index: int, dst_root: Path,
                  src_meta: dict[str, Any], fsync: bool, lock_timeout: float) -> int:
    src_dir = src_root / task / episode_dir_name(index)
    task_dir = dst_root / task
    staging = task_dir / f'{STAGING_PREFIX}{os.getpid()}'
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    staged = staging / 'episode.zarr'
    try:
        shutil.copytree(src_dir, staged, symlinks=False)
        if _file_table(staged) != _file_table(src_dir):
            raise DatasetToolError(f'{staged}: the copy differs from {src_dir} (files or sizes)')
        if fsync:
            _fsync_tree(staged)
        meta = EpisodeMeta.from_dict(src_meta, source=str(src_root / task / meta_name(index)))
        with task_lock(task_dir, lock_timeout):
            _check_no_pending(task_dir)
            cleanup_task_dir(task_dir)
            new = reserve_index(task_dir, os.getpid())
            final = task_dir / episode_dir_name(new)
            try:
                os.rename(staged, final)
                if fsync:
                    fsync_dir(task_dir)

                extra = dict(meta.extra)
                extra['merged_from'] = {'source': src_root.name, 'task': task, 'index': index}
                _write_meta(task_dir, new, dict(src_meta, extra=extra), fsync)
            except BaseException:
                if final.exists() and not (task_dir / meta_name(new)).exists():
                    with contextlib.suppress(OSError):
                        os.rename(final, staged)
                raise
            finally:
                with contextlib.suppress(OSError):
                    (task_dir / lock_name(new)).unlink()
        return new
    finally:
        shutil.rmtree(staging, ignore_errors=True)
