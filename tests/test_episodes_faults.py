"""Episode writer under faults and the per-step safety array: stale reservations whose pid was
reused, writers that never leak, a queue sized in seconds and honest drop reasons, and the
optional ``safety`` array (executed steps) with old episodes still loading."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from scarls.episodes import (
    BackgroundEpisodeWriter,
    EpisodeError,
    EpisodeMeta,
    EpisodeReader,
    EpisodeWriter,
    SchemaError,
    StepRecord,
    list_episodes,
    validate_episode,
)
from scarls.episodes.layout import (
    cleanup_task_dir,
    lock_alive,
    lock_owner,
    lost_episodes,
    process_start_time,
    read_lock_owner,
    task_lock,
)
from scarls.episodes.schema import SAFETY_CODES, executed_mask, safety_counts
from scarls.episodes.stats import dataset_stats
from scarls.episodes.tools import check_episode

CAMS = ('top', 'left', 'right')
H, W, D = 12, 16, 4


def _step(i: int) -> StepRecord:
    rng = np.random.default_rng(i)
    return StepRecord({c: rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for c in CAMS},
                      rng.normal(size=D), rng.normal(size=D), i % 2 == 0, 10.0 + i / 30)


def _writer(root: Path, **kw) -> EpisodeWriter:
    return EpisodeWriter(root, 'pick', 'ecu-t', image_shape=(H, W), state_dim=D, action_dim=D,
                         **kw)


def _dead_pid() -> int:
    p = subprocess.Popen(['true'])   # any short-lived program
    p.wait(timeout=30)
    return p.pid


# -- reservations: pid + start time -----------------------------------------------------------


def test_reservation_records_pid_and_start_time(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    lock = tmp_path / 'pick' / f'.episode_{w.index}.lock'
    start = process_start_time(os.getpid())
    assert start is not None and start > 0
    assert os.readlink(lock) == f'{os.getpid()}:{start}' == lock_owner()
    assert read_lock_owner(lock) == (os.getpid(), start)
    assert lock_alive(lock)
    w.abort()
    assert not os.path.lexists(lock)


def test_reservation_of_a_reused_pid_is_stale_and_cleaned(tmp_path: Path) -> None:
    """A crashed writer's pid now belongs to another live process (here: this test process,
    with another start time): its reservation and its temp files are cleaned, the index
    reused - the pid alone would have kept them forever."""
    task = tmp_path / 'pick'
    task.mkdir()
    me, start = os.getpid(), process_start_time(os.getpid())
    os.symlink(f'{me}:{start - 1}', task / '.episode_0.lock')        # pid reused
    tmp_dir = task / f'.episode_0.zarr.tmp-{me}'
    tmp_dir.mkdir()
    (tmp_dir / 'c.0.0.0.0').write_bytes(b'x')
    (task / f'.episode_0_meta.json.tmp-{me}').write_text('{')
    os.symlink(str(me), task / '.episode_5.lock')                     # old format: pid alone
    os.symlink(f'{me}:{start}', task / '.episode_6.lock')             # really ours: live
    (task / f'.episode_6.zarr.tmp-{me}').mkdir()
    os.symlink('not-a-pid', task / '.episode_7.lock')                 # garbage: dead
    assert not lock_alive(task / '.episode_0.lock')
    assert lock_alive(task / '.episode_5.lock') and lock_alive(task / '.episode_6.lock')
    scan_before = dataset_stats(tmp_path).totals
    assert any('.episode_0.lock' in x and 'reused' in x for x in scan_before.leftovers)
    with task_lock(task):
        actions = cleanup_task_dir(task)
    assert any('episode_0.lock' in a and 'reused' in a for a in actions)
    names = sorted(os.listdir(task))
    assert names == ['.episode_5.lock', '.episode_6.lock', f'.episode_6.zarr.tmp-{me}',
                     '.lost_episodes.jsonl', '.scarls-task.lock']   # the lost one journaled
    # the live reservations keep their indices: the next episode takes 7
    assert _writer(tmp_path).index == 7


def test_dead_writer_leftovers_cleaned_with_new_lock_format(tmp_path: Path) -> None:
    task = tmp_path / 'pick'
    task.mkdir()
    dead = _dead_pid()
    os.symlink(f'{dead}:12345', task / '.episode_0.lock')
    (task / f'.episode_0.zarr.tmp-{dead}').mkdir()
    w = _writer(tmp_path)
    assert w.index == 0
    assert sorted(os.listdir(task)) == [
        '.episode_0.lock', f'.episode_0.zarr.tmp-{os.getpid()}', '.lost_episodes.jsonl',
        '.scarls-task.lock']
    assert [(j['index'], j['pid'], j['steps_on_disk']) for j in lost_episodes(task)] == [
        (0, dead, 0)]
    w.abort()


# -- queue in seconds, honest drop reasons -------------------------------------------------------


def test_queue_sized_in_seconds_of_data(tmp_path: Path) -> None:
    bw = BackgroundEpisodeWriter(tmp_path, 'pick', 'e', image_shape=(H, W), state_dim=D,
                                 action_dim=D, fps=30.0, queue_seconds=10.0)
    assert bw.queue_capacity == 300 and bw.stats().queue_capacity == 300
    bw.abort()
    # a memory bound caps the queue for big frames: 3 x 480x640 frames = 2.7 MB per step
    bw = BackgroundEpisodeWriter(tmp_path, 'pick', 'e', image_shape=(480, 640), state_dim=D,
                                 action_dim=D, fps=30.0, queue_seconds=10.0,
                                 max_queue_bytes=100 * 2**20)
    assert bw.queue_capacity == 100 * 2**20 // (3 * 480 * 640 * 3 + 8 * (2 * D + 2))
    bw.abort()
    with pytest.raises(ValueError, match='queue_seconds'):
        BackgroundEpisodeWriter(tmp_path, 'pick', 'e', image_shape=(H, W), state_dim=D,
                                action_dim=D, queue_seconds=0.0)
    assert sorted(os.listdir(tmp_path / 'pick')) == ['.scarls-task.lock']


@pytest.mark.parametrize('write_ms, wait_ms, cause', [
    (2.0, 0.1, 'burst'),
    (50.0, 40.0, 'starved of CPU'),
    (50.0, 1.0, 'disk is too slow'),
])
def test_drop_explanation_names_the_cause(tmp_path: Path, write_ms, wait_ms, cause) -> None:
    bw = BackgroundEpisodeWriter(tmp_path, 'pick', 'e', image_shape=(H, W), state_dim=D,
                                 action_dim=D, fps=30.0, queue_size=4)
    try:
        bw._write_s, bw._wait_s = write_ms / 1e3, wait_ms / 1e3
        text = bw.explain_drop()
        assert cause in text
        assert '/4 steps = 0.1 s of data' in text and '33.3 ms' in text
        assert ('disk' in text) == (cause == 'disk is too slow')
    finally:
        bw.abort()


def test_writer_timings_are_measured(tmp_path: Path) -> None:
    bw = BackgroundEpisodeWriter(tmp_path, 'pick', 'e', image_shape=(H, W), state_dim=D,
                                 action_dim=D, queue_seconds=2.0)
    for i in range(5):
        assert bw.append(_step(i))
    ref = bw.finalize('success', 1)
    st = bw.stats()
    assert st.written == 5 and st.write_seconds > 0 and 0 <= st.cpu_wait_seconds
    assert st.period_seconds == pytest.approx(1 / 30)
    validate_episode(ref.path)


# -- the safety array ---------------------------------------------------------------------------


def _record_with_safety(root: Path, codes) -> Path:
    w = _writer(root)
    for i in range(len(codes)):
        w.append(_step(i))
    return w.finalize('success', 2, extra={'note': 1}, safety=np.asarray(codes)).path


def test_safety_array_round_trip_counts_and_validation(tmp_path: Path) -> None:
    c = SAFETY_CODES
    codes = [c['ok'], c['clamped'], c['clamped_heavily'], c['holding'], c['estopped'],
             c['fault'], c['resetting'], c['unknown'], c['ok']]
    path = _record_with_safety(tmp_path, codes)
    meta = validate_episode(path)
    assert meta.extra['note'] == 1
    counts = meta.extra['safety']
    assert counts == safety_counts(np.asarray(codes))
    assert (counts['ok'], counts['clamped'], counts['clamped_heavily'], counts['holding'],
            counts['estopped'], counts['fault'], counts['resetting'], counts['unknown'],
            counts['not_executed']) == (2, 1, 1, 1, 1, 1, 1, 1, 5)
    r = EpisodeReader(path)
    np.testing.assert_array_equal(np.asarray(r.safety[:]), codes)
    assert r.executed().tolist() == [True, True, False, False, False, False, False, True, True]
    assert check_episode(tmp_path, 'pick', 0) == []
    totals = dataset_stats(tmp_path).totals
    assert totals.not_executed_steps == 5
    assert totals.safety['estopped'] == 1 and totals.safety['clamped_heavily'] == 1
    # the array is covered by the sha256 of the meta like every other array
    arr_dir = path / 'safety'
    chunk = next(p for p in arr_dir.rglob('*') if p.is_file() and p.name != 'zarr.json')
    import zarr
    z = zarr.open_array(str(arr_dir), mode='r+')
    z[0] = c['fault']
    assert chunk.exists()
    with pytest.raises(SchemaError, match="checksum mismatch for 'safety'"):
        validate_episode(path)
    assert any("'safety'" in p.message for p in check_episode(tmp_path, 'pick', 0))


def test_episodes_without_safety_are_all_executed(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    for i in range(3):
        w.append(_step(i))
    path = w.finalize('fail', None).path
    r = EpisodeReader(path)
    assert r.safety is None and r.executed().tolist() == [True, True, True]
    meta = EpisodeMeta.load(r.meta_path)
    assert 'safety' not in meta.shapes and 'safety' not in meta.extra
    assert executed_mask(None, 2).tolist() == [True, True]
    totals = dataset_stats(tmp_path).totals
    assert totals.not_executed_steps == 0 and totals.episodes_with_safety == 0


def test_bad_safety_codes_are_refused_and_the_writer_stays_open(tmp_path: Path) -> None:
    w = _writer(tmp_path)
    w.append(_step(0))
    w.append(_step(1))
    with pytest.raises(EpisodeError, match='one per written step'):
        w.finalize('success', 1, safety=[0])
    with pytest.raises(EpisodeError, match='unknown codes'):
        w.finalize('success', 1, safety=[0, 77])
    ref = w.finalize('success', 1, safety=[0, 3])
    assert EpisodeReader(ref.path).executed().tolist() == [True, False]


def test_meta_listing_safety_without_digest_is_rejected(tmp_path: Path) -> None:
    path = _record_with_safety(tmp_path, [0, 0])
    meta_path = tmp_path / 'pick' / 'episode_0_meta.json'
    data = json.loads(meta_path.read_text())
    del data['sha256']['safety']
    meta_path.write_text(json.dumps(data))
    with pytest.raises(SchemaError, match="optional array 'safety'"):
        EpisodeReader(path)
    shutil.rmtree(tmp_path / 'pick')
    assert list_episodes(tmp_path) == []


def test_abort_waits_for_zarr_writes_still_running(tmp_path: Path) -> None:
    """A zarr call that fails (a full disk) raises while its sibling writes go on on zarr's I/O
    thread, and a late write re-creates the directories it needs: discarding the episode
    waits for them, so no temp dir comes back after the abort."""
    import asyncio

    from zarr.core import sync as zsync

    w = EpisodeWriter(tmp_path, 'pick', 'ecu0', image_shape=(8, 8), state_dim=2, action_dim=2,
                      cameras=('top',), fsync=False)
    late = w.temp_path / 'observation' / 'top' / 'zarr.json'

    async def sibling_write() -> None:      # what zarr's LocalStore does for a set()
        await asyncio.sleep(0.3)
        late.parent.mkdir(parents=True, exist_ok=True)
        late.write_text('{}')

    started = asyncio.run_coroutine_threadsafe(sibling_write(), zsync._get_loop())
    w.abort()
    started.result(timeout=30)
    assert not w.temp_path.exists(), sorted(map(str, w.temp_path.rglob('*')))
    assert not [n for n in os.listdir(tmp_path / 'pick') if n != '.scarls-task.lock']



def test_abort_past_its_deadline_discards_when_the_writer_thread_returns(tmp_path: Path) -> None:
    """abort() waits a deadline for the writer thread; a thread still inside a write past it
    (a stalled disk) would re-create the discarded episode's directories when it resumes
    (growing the arrays is a zarr metadata write). So the episode keeps its reservation
    until the thread returns, and the thread discards it then."""
    import threading

    w = BackgroundEpisodeWriter(tmp_path, 'pick', 'ecu0', image_shape=(8, 8), state_dim=2,
                                action_dim=2, cameras=('top',), fsync=False, block_size=1)
    stall, stalled = threading.Event(), threading.Event()
    write = w._inner._write

    def stalled_write(p):                   # the disk stalls on the second step (a resize)
        if w._inner.steps == 1 and not stalled.is_set():
            stalled.set()
            stall.wait(30)
        write(p)

    w._inner._write = stalled_write
    frame = {'top': np.zeros((8, 8, 3), np.uint8)}
    for i in range(3):
        assert w.append(StepRecord(frame, np.zeros(2), np.zeros(2), False, i / 30))
    assert stalled.wait(30)
    w.abort(timeout=0.2)                     # gives up waiting for the stalled thread
    task_dir = tmp_path / 'pick'
    assert lock_alive(task_dir / '.episode_0.lock'), os.listdir(task_dir)  # index still held
    stall.set()
    w._thread.join(30)
    assert not w._thread.is_alive()
    assert not w.temp_path.exists(), sorted(map(str, w.temp_path.rglob('*')))
    assert sorted(os.listdir(task_dir)) == ['.scarls-task.lock'], os.listdir(task_dir)
