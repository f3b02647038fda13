"""On-disk layout of a task directory: names, listing, index reservation and crash cleanup.

A task directory ``<root>/<task>/`` holds::

    episode_<N>.zarr/            complete episode data (zarr v3 group)
    episode_<N>_meta.json        its meta; written last, so it is the commit point
    .episode_<N>.lock            symlink whose target is the writer's ``<pid>:<start>``
                                 (index reservation; ``<start>`` is the process start time)
    .episode_<N>.zarr.tmp-<pid>  episode being written (hidden; ignored by readers)
    .episode_<N>.zarr.orphan-<pid>  data of a writer that died between data and meta rename
    .scarls-task.lock            flock file serialising reservation + cleanup between writers

An episode is *visible* only when both ``episode_<N>.zarr`` and ``episode_<N>_meta.json`` exist.
Writers reserve an index under an exclusive ``flock`` of ``.scarls-task.lock`` and by
creating the ``.episode_<N>.lock`` symlink with ``O_EXCL`` semantics; the next index is one
more than the largest index of any existing ``episode_<N>.zarr``, meta file or live
reservation.  A reservation whose pid is dead is cleaned up by the next writer (its temp dir
removed, a renamed-but-uncommitted data dir moved aside as an orphan), so a crashed writer
neither leaves a visible gap nor gets overwritten.

Liveness uses ``kill(pid, 0)`` and the process start time: a reservation records its writer's
pid *and* start time (field 22 of ``/proc/<pid>/stat``, clock ticks since boot), so a reservation
whose pid was reused by an unrelated process (after a reboot, or a long uptime) is recognised as
stale and cleaned; the temp files of its writer go with it. Reservations of the older format
(the pid alone) and systems without ``/proc`` fall back to the pid alone. This assumes a local
file system shared by processes of one host, and that dead writers have been reaped by their
parent (a zombie still counts as alive).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from scarls.episodes.errors import EpisodeError, StorageError, storage_error

__all__ = [
    'EpisodeEntry',
    'LOST_JOURNAL',
    'cleanup_task_dir',
    'frames_on_disk',
    'lost_episodes',
    'record_lost_episode',
    'episode_dir_name',
    'fsync_dir',
    'fsync_file',
    'list_episodes',
    'lock_alive',
    'lock_name',
    'lock_owner',
    'meta_name',
    'next_index',
    'owner_alive',
    'parse_lock_owner',
    'pid_alive',
    'process_start_time',
    'read_lock_owner',
    'remove_tree',
    'settle_zarr_io',
    'task_lock',
    'temp_dir_name',
]

log = logging.getLogger(__name__)

TASK_LOCK_FILE = '.scarls-task.lock'
_EPISODE_RE = re.compile(r'^episode_(\d+)\.zarr$')
_META_RE = re.compile(r'^episode_(\d+)_meta\.json$')
_LOCK_RE = re.compile(r'^\.episode_(\d+)\.lock$')
_TEMP_RE = re.compile(r'^\.episode_(\d+)\.zarr\.tmp-(\d+)$')
_META_TEMP_RE = re.compile(r'^\.episode_(\d+)_meta\.json\.tmp-(\d+)$')
_TASK_RE = re.compile(r'^[A-Za-z0-9][A-Za-z0-9_.-]*$')


def episode_dir_name(index: int) -> str:
    return f'episode_{index}.zarr'


def meta_name(index: int) -> str:
    return f'episode_{index}_meta.json'


def lock_name(index: int) -> str:
    return f'.episode_{index}.lock'


def temp_dir_name(index: int, pid: int) -> str:
    return f'.episode_{index}.zarr.tmp-{pid}'


def meta_temp_name(index: int, pid: int) -> str:
    return f'.episode_{index}_meta.json.tmp-{pid}'


def check_task_name(task: str) -> str:
    """Return ``task`` if it is a safe single directory name, else raise ``ValueError``."""
    if not isinstance(task, str) or not _TASK_RE.match(task) or task in {'.', '..'}:
        raise ValueError(
            f'invalid task name {task!r}: use letters, digits, "_", "-", "." '
            '(no path separators, not starting with ".")'
        )
    return task


def pid_alive(pid: int) -> bool:
    """Return True if a process with ``pid`` exists (zombies count as alive)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def process_start_time(pid: int) -> int | None:
    """Start time of process ``pid`` in clock ticks since boot (``/proc/<pid>/stat`` field 22),
    or None when it has no such process or the system has no ``/proc``."""
    try:
        with open(f'/proc/{int(pid)}/stat', 'rb') as fh:
            data = fh.read()
    except OSError:
        return None
    # the command name (field 2) is in parentheses and may contain spaces or ')'
    try:
        return int(data.rsplit(b')', 1)[1].split()[19])
    except (IndexError, ValueError):
        return None


def lock_owner(pid: int | None = None) -> str:
    """The target of a reservation symlink for ``pid`` (default: this process):
    ``'<pid>:<start time>'``, or ``'<pid>'`` where the start time cannot be read."""
    pid = os.getpid() if pid is None else int(pid)
    start = process_start_time(pid)
    return str(pid) if start is None else f'{pid}:{start}'


def parse_lock_owner(text: str) -> tuple[int, int | None]:
    """``'<pid>'`` or ``'<pid>:<start>'`` -> (pid, start or None); ValueError otherwise."""
    pid, sep, start = text.partition(':')
    return int(pid), (int(start) if sep else None)


def owner_alive(pid: int, start: int | None) -> bool:
    """True if process ``pid`` exists and, when ``start`` is known, is the same process that
    wrote it (its start time matches: a reused pid is another process)."""
    if not pid_alive(pid):
        return False
    if start is None:
        return True
    now = process_start_time(pid)
    return now is None or now == start


def read_lock_owner(path: Path) -> tuple[int, int | None] | None:
    """(pid, start or None) of a reservation symlink; None if it does not exist;
    ``(-1, None)`` if it is unreadable or not ours (treated as dead so it gets cleaned)."""
    try:
        return parse_lock_owner(os.readlink(path))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return -1, None


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory so that entries created/renamed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def task_lock(task_dir: Path, timeout: float = 10.0):
    """Hold an exclusive ``flock`` on the task directory's lock file (released on exit/death)."""
    path = task_dir / TASK_LOCK_FILE
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise storage_error(f'opening task lock {path}', exc) from exc
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StorageError(
                        f'could not lock {path} within {timeout:.1f} s; another writer holds it '
                        'for too long (stuck process?)'
                    ) from None
                time.sleep(0.005)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


#: Journal of episodes lost with a dead writer (one JSON object per line), in the task folder.
LOST_JOURNAL = '.lost_episodes.jsonl'


def frames_on_disk(episode_dir: Path) -> int:
    """Frames (steps) an unfinished episode had written: the chunk files of its first camera
    (one frame per chunk). Steps still in a dead writer's memory or queue are not on disk."""
    obs = episode_dir / 'observation'
    try:
        cams = sorted(p for p in obs.iterdir() if p.is_dir() and (p / 'zarr.json').is_file())
    except OSError:
        return 0
    if not cams:
        return 0
    return sum(1 for p in cams[0].rglob('*') if p.is_file() and p.name != 'zarr.json')


def record_lost_episode(task_dir: Path, index: int, pid: int, steps: int,
                        kept: str = '') -> None:
    """Append a lost episode to the task's journal (best effort: a full disk cannot stop the
    clean-up that frees it); ``kept`` names a folder kept for manual recovery."""
    import json
    item = {'index': int(index), 'pid': int(pid), 'steps_on_disk': int(steps),
            'found_unix': round(time.time(), 3)}
    if kept:
        item['kept'] = kept
    line = json.dumps(item)
    try:
        with open(task_dir / LOST_JOURNAL, 'a', encoding='utf-8') as fh:
            fh.write(line + '\n')
    except OSError as exc:
        log.warning('%s: could not journal lost episode %d (%s)', task_dir, index, exc)


def lost_episodes(task_dir: Path) -> list[dict]:
    """The journal of episodes lost with dead writers (oldest first; unreadable lines skipped)."""
    import json
    try:
        lines = (task_dir / LOST_JOURNAL).read_text(encoding='utf-8').splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        try:
            item = json.loads(line)
        except ValueError:
            continue
        if isinstance(item, dict) and isinstance(item.get('steps_on_disk'), int):
            out.append(item)
    return out


def cleanup_task_dir(task_dir: Path) -> list[str]:
    """Remove leftovers of dead writers in ``task_dir``; return what was done (also logged).

    Must be called while holding :func:`task_lock`.  Only entries whose owner is dead are
    touched: a reservation whose pid is dead or was reused (another start time), and the temp
    files of such a writer; a temp file without a reservation of its writer is judged by its
    pid.  A data dir renamed into place whose meta was never written is moved aside to
    ``.episode_<N>.zarr.orphan-<pid>`` (kept for manual recovery), freeing its index.
    """
    actions: list[str] = []
    try:
        names = os.listdir(task_dir)
    except FileNotFoundError:
        return actions
    name_set = set(names)
    live: set[tuple[int, int]] = set()    # (index, pid) of live reservations
    stale: set[tuple[int, int]] = set()   # (index, pid) of reservations removed here
    for name in names:
        m = _LOCK_RE.match(name)
        if not m:
            continue
        index = int(m.group(1))
        owner = read_lock_owner(task_dir / name)
        if owner is None:
            continue
        pid, start = owner
        if owner_alive(pid, start):
            live.add((index, pid))
            continue
        final = episode_dir_name(index)
        if final in name_set and meta_name(index) not in name_set:
            orphan = f'.episode_{index}.zarr.orphan-{pid}'
            os.rename(task_dir / final, task_dir / orphan)
            record_lost_episode(task_dir, index, pid, frames_on_disk(task_dir / orphan),
                                kept=orphan)
            actions.append(f'moved uncommitted {final} of dead writer pid {pid} to {orphan}')
            log.warning('%s: %s', task_dir, actions[-1])
        os.unlink(task_dir / name)
        stale.add((index, pid))
        reused = ' was reused by another process' if pid_alive(pid) else ' is dead'
        actions.append(f'removed stale reservation {name} (pid {pid}{reused})')
    for name in names:
        m = _TEMP_RE.match(name) or _META_TEMP_RE.match(name)
        if not m:
            continue
        key = (int(m.group(1)), int(m.group(2)))
        pid = key[1]
        if key in live or (key not in stale and pid_alive(pid)):
            continue
        path = task_dir / name
        if path.is_dir():
            if _TEMP_RE.match(name):   # a dead writer's episode: say what was lost with it
                record_lost_episode(task_dir, key[0], pid, frames_on_disk(path))
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        actions.append(f'removed leftover {name} of dead writer pid {pid}')
    for action in actions:
        log.info('%s: %s', task_dir, action)
    return actions


def lock_alive(path: Path) -> bool:
    """True if the reservation symlink at ``path`` exists and its writer is alive."""
    owner = read_lock_owner(path)
    return owner is not None and owner_alive(*owner)


def next_index(task_dir: Path) -> int:
    """Smallest safe next index: 1 + max index of any data dir, meta file or live reservation."""
    best = -1
    for name in os.listdir(task_dir):
        m = _EPISODE_RE.match(name) or _META_RE.match(name)
        if m:
            best = max(best, int(m.group(1)))
            continue
        m = _LOCK_RE.match(name)
        if m and lock_alive(task_dir / name):
            best = max(best, int(m.group(1)))
    return best + 1


def reserve_index(task_dir: Path, pid: int, index: int | None = None) -> int:
    """Reserve and return a fresh episode index in ``task_dir`` for process ``pid`` (must hold
    :func:`task_lock`); the reservation records the pid and its start time.

    With ``index``, reserve exactly that one: :class:`EpisodeError` if an episode (or another
    writer's reservation) already has it.
    """
    owner = lock_owner(pid)
    if index is not None:
        if (task_dir / episode_dir_name(index)).exists() or (task_dir / meta_name(index)).exists():
            raise EpisodeError(f'{task_dir}: episode {index} already exists')
        try:
            os.symlink(owner, task_dir / lock_name(index))
        except FileExistsError:
            raise EpisodeError(
                f'{task_dir}: episode {index} is being written by another writer') from None
        return index
    index = next_index(task_dir)
    for _ in range(10_000):
        if (
            not (task_dir / episode_dir_name(index)).exists()
            and not (task_dir / meta_name(index)).exists()
        ):
            try:
                os.symlink(owner, task_dir / lock_name(index))
                return index
            except FileExistsError:
                pass
        index += 1
    raise StorageError(f'could not reserve an episode index in {task_dir}')


@dataclass(frozen=True)
class EpisodeEntry:
    """A complete (visible) episode found by :func:`list_episodes`."""

    task: str
    index: int
    path: Path
    meta_path: Path


def list_episodes(root: str | os.PathLike[str], task: str | None = None) -> list[EpisodeEntry]:
    """Return complete episodes under ``root`` (one task or all), sorted by (task, index).

    Only episodes whose data dir and meta file both exist are returned; hidden temp/orphan dirs
    are ignored.  A missing root or task directory yields an empty list.
    """
    root_path = Path(root)
    if task is not None:
        tasks = [check_task_name(task)]
    else:
        try:
            tasks = sorted(
                e.name for e in os.scandir(root_path) if e.is_dir() and _TASK_RE.match(e.name)
            )
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise storage_error(f'listing {root_path}', exc) from exc
    out: list[EpisodeEntry] = []
    for t in tasks:
        tdir = root_path / t
        try:
            names = set(os.listdir(tdir))
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                continue
            raise storage_error(f'listing {tdir}', exc) from exc
        for name in names:
            m = _EPISODE_RE.match(name)
            if m and meta_name(int(m.group(1))) in names:
                idx = int(m.group(1))
                out.append(EpisodeEntry(t, idx, tdir / name, tdir / meta_name(idx)))
    out.sort(key=lambda e: (e.task, e.index))
    return out


def settle_zarr_io(timeout: float = 10.0) -> bool:
    """Wait (up to ``timeout`` s) until zarr's I/O loop has no task left; True if it has none.

    zarr runs a synchronous call's reads and writes as concurrent tasks on its own thread;
    when one of them fails (a full disk) the call raises at once while its siblings go on,
    and a late write re-creates the directories it needs (``LocalStore`` makes parents).
    """
    try:
        from zarr.core import sync as zsync
        loop = zsync.loop[0]
    except (ImportError, AttributeError, IndexError):  # another zarr layout: nothing to wait
        return True
    if loop is None or loop.is_closed() or not loop.is_running():
        return True

    async def _others_done() -> bool:
        me = asyncio.current_task()
        others = [t for t in asyncio.all_tasks() if t is not me]
        if not others:
            return True
        _done, pending = await asyncio.wait(others, timeout=timeout)
        return not pending

    try:
        return asyncio.run_coroutine_threadsafe(_others_done(), loop).result(timeout + 1.0)
    except (concurrent.futures.TimeoutError, RuntimeError):
        return False


def remove_tree(path: Path, attempts: int = 20) -> None:
    """Remove a directory tree that may still be written to, until it is gone (a bounded
    number of attempts); logs what stays behind instead of raising. zarr's pending writes
    (:func:`settle_zarr_io`: those of a call that failed) end first, as they would
    re-create the directories."""
    settle_zarr_io()
    for attempt in range(attempts):
        shutil.rmtree(path, ignore_errors=True)
        if not os.path.lexists(path):
            return
        time.sleep(0.005 * (attempt + 1))
        settle_zarr_io(1.0)
    log.warning('could not remove %s (files keep appearing or cannot be removed): the first '
                'writer of this task after this process has exited removes it', path)
