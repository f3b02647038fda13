"""Fault: the disk fills up under the episode writer, again and again, at random points - in the
middle of appending frames and in the middle of finalising - on a real small file system
(a 1 MB tmpfs). Each time: a typed StorageError that says the disk is full, nothing partial
visible, no temp dir or reservation left behind, and once space returns the next episode is
recorded completely. (The live scheduler on a full disk, with its loss counts and published
status: tests/test_ros_recording_faults.py.)"""

from __future__ import annotations

import os
import random
import subprocess

import numpy as np
import pytest

from scarls.episodes import EpisodeWriter, StepRecord, list_episodes, validate_episode
from scarls.episodes.errors import StorageError

pytestmark = pytest.mark.faults
CAMS = ('top', 'left', 'right')


@pytest.fixture
def small_fs(tmp_path):
    if os.geteuid() != 0:
        if os.environ.get('CI') == 'true':
            pytest.fail('the disk-full campaign mounts a tmpfs: CI must run it as root')
        pytest.skip('mounting a tmpfs needs root')
    mnt = tmp_path / 'fs'
    mnt.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(['umount', '-l', str(mnt)], check=False)


def _fill(path, leave: int) -> None:
    """Fill the file system, then free ``leave`` bytes again."""
    with open(path, 'wb', buffering=0) as fh:
        try:
            while True:
                fh.write(b'\0' * 16384)
        except OSError:
            pass
    size = os.path.getsize(path)
    os.truncate(path, max(0, size - leave))


def _contents(task_dir, names) -> dict:
    """What is inside leftover entries (to tell which write left them)."""
    out = {}
    for name in names:
        top = task_dir / name
        out[name] = sorted(str(p.relative_to(top)) for p in top.rglob('*')) if top.is_dir() \
            else 'file'
    return out


def _used(path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _append_cost(root, frames, steps: int) -> int:
    """Bytes an episode's appends take on this file system (measured, then aborted)."""
    before = _used(root.parent)
    w = EpisodeWriter(root, 'pick', 'probe', image_shape=(24, 32), state_dim=14,
                      action_dim=14, block_size=4, fsync=False)
    for i in range(steps):
        w.append(StepRecord(frames, np.zeros(14), np.zeros(14), True, i / 30))
    cost = _used(root.parent) - before
    w.abort()
    return cost


def test_a_disk_that_fills_twenty_times_loses_only_whole_episodes(small_fs):
    rng = random.Random(5)
    data = np.random.default_rng(0)
    frames = {c: data.integers(0, 255, (24, 32, 3), dtype=np.uint8) for c in CAMS}
    where = {'create': 0, 'append': 0, 'finalize': 0}
    complete = 0
    for k in range(20):
        root = small_fs / 'data'
        filler = small_fs / 'filler'
        steps = rng.randint(5, 40)
        if k % 2:   # just enough room for the appends: the disk fills while finalising
            leave = _append_cost(root, frames, steps) + rng.randint(0, 8192)
        else:       # the disk fills somewhere among the appends
            leave = rng.randint(0, 100_000)
        _fill(filler, leave)
        w = None
        where_now = 'create'
        try:
            w = EpisodeWriter(root, 'pick', 'ecu-full', image_shape=(24, 32), state_dim=14,
                              action_dim=14, block_size=4, fsync=False)
            for i in range(steps):
                where_now = 'append'
                w.append(StepRecord(frames, np.zeros(14), np.zeros(14), True, i / 30))
            where_now = 'finalize'
            w.finalize('success', 1)
            complete += 1
        except StorageError as exc:
            assert 'No space left' in str(exc) or 'disk' in str(exc).lower(), exc
            where[where_now] += 1
        finally:
            if w is not None and w._state == 'open':   # append failed: give it up
                w.abort()
        # nothing partial visible, no leftovers of this writer
        for e in list_episodes(root, 'pick'):
            validate_episode(e.path)
        names = os.listdir(root / 'pick') if (root / 'pick').exists() else []
        left = [n for n in names if '.tmp-' in n or n.endswith('.lock')
                and n != '.scarls-task.lock']
        assert not left, (where_now, names, _contents(root / 'pick', left))
        # space returns: a whole episode is recorded
        filler.unlink()
        w = EpisodeWriter(root, 'pick', 'ecu-full', image_shape=(24, 32), state_dim=14,
                          action_dim=14, block_size=4, fsync=False)
        for i in range(5):
            w.append(StepRecord(frames, np.zeros(14), np.zeros(14), True, i / 30))
        validate_episode(w.finalize('success', 1).path)
        complete += 1
        indices = [e.index for e in list_episodes(root, 'pick')]
        assert indices == list(range(len(indices))), indices
        if k % 5 == 4:   # keep the small file system from filling with recovered episodes
            subprocess.run(['rm', '-rf', str(root)], check=True)
    # the disk filled in both places, and everything else was recorded
    assert where['append'] > 0 and where['finalize'] > 0, where
    assert complete >= 20
