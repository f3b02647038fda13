"""The live scheduler on a real, small file system that fills up: a tmpfs of 2 MB is filled in
the middle of an episode. The scheduler keeps running, nothing partial becomes visible, no temp
dir or reservation leaks, the lost episodes and steps are counted (EcuStatus, log, the next
episode's meta) and recording resumes once space is freed."""

from __future__ import annotations

import errno
import os
import subprocess

import pytest
from rosutil import Probe, log_text, start_nodes
from scarls_interfaces.msg import EcuStatus
from test_ros_scheduler import FakeRobot, _check_episode, _scheduler

from scarls.episodes import EpisodeReader, list_episodes
from scarls.ros import qos

pytestmark = pytest.mark.ros


def _fill(path) -> int:
    """Write ``path`` until the file system is full; returns the bytes written."""
    chunk = b'\0' * 65536
    written = 0
    with open(path, 'wb', buffering=0) as fh:
        while True:
            try:
                written += fh.write(chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                break
    # a tail smaller than the chunk
    with open(path, 'ab', buffering=0) as fh:
        for size in (4096, 512, 1):
            while True:
                try:
                    written += fh.write(b'\0' * size)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


@pytest.mark.skipif(os.geteuid() != 0, reason='mounting a tmpfs needs root')
def test_disk_full_mid_episode_loses_whole_episodes_counts_them_and_recovers(
        ros, node_group, tmp_path):
    mnt = tmp_path / 'small'
    mnt.mkdir()
    subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=2m', 'tmpfs', str(mnt)], check=True)
    data_root = mnt / 'data'
    task_dir = data_root / 'pick_cube'
    filler = mnt / 'filler'
    probe = Probe('schedtest', 'probe_full')
    try:
        robot = FakeRobot(probe)
        beats: list[EcuStatus] = []
        probe.node.create_subscription(EcuStatus, '/fleet/status', beats.append, qos.EVENTS)
        start_nodes(node_group, [_scheduler(data_root)])
        probe.wait_for(robot.connected, 30, 'the scheduler to connect')
        base = robot.warm_up(1).actor_episode_id   # episode 0

        # the next episode: the disk fills up in the middle of it
        def fill_at_10(i):
            if i == 10:
                probe.spin_for(0.3)   # the first steps reach the writer with space left
                assert _fill(filler) > 0

        robot.run_episode(base + 1, 20, before_step=fill_at_10)
        probe.wait_for(lambda: beats and beats[-1].lost_episodes == 1, 30,
                       'the first lost episode to be counted')
        # the one after: the disk is full when it begins (discarding the last one freed its chunks:
        # fill that up again) - its writer cannot be created
        _fill(mnt / 'filler2')
        robot.run_episode(base + 2, 6)
        probe.wait_for(lambda: beats and beats[-1].lost_episodes == 2, 30,
                       'the second lost episode to be counted')
        status = beats[-1]
        assert status.lost_steps == 20 + 6 and status.episodes == 1
        assert 'No space left on device' in status.recording_problem or \
            'disk is full' in status.recording_problem
        assert not node_group.dead()
        # nothing partial visible, no temp dir, no reservation left behind
        assert [e.index for e in list_episodes(data_root)] == [0]
        assert sorted(os.listdir(task_dir)) == [
            '.scarls-task.lock', 'episode_0.zarr', 'episode_0_meta.json']

        # space returns: recording resumes with the next episode, at the next index
        filler.unlink()
        (mnt / 'filler2').unlink()
        used = robot.run_episode(base + 3, 7)
        probe.wait_for(lambda: len(robot.episodes) == 2, 30, 'the episode after the recovery')
        info = robot.episodes[1]
        assert info.index == 1 and info.actor_episode_id == base + 3
        _check_episode(info, used, 7, lambda: log_text(node_group, 'scheduler'))
        losses = EpisodeReader(info.path).meta.extra['recorder_losses']
        assert (losses['episodes'], losses['steps']) == (2, 26)
        probe.wait_for(lambda: beats[-1].episodes == 2, 10, 'a heartbeat after the recovery')
        assert beats[-1].recording_problem == '' and beats[-1].lost_episodes == 2
        assert sorted(os.listdir(task_dir)) == [
            '.scarls-task.lock', 'episode_0.zarr', 'episode_0_meta.json', 'episode_1.zarr',
            'episode_1_meta.json']
        text = log_text(node_group, 'scheduler')
        assert f'actor episode {base + 1} LOST (20 steps)' in text
        assert f'actor episode {base + 2} LOST (6 steps)' in text
    finally:
        probe.close()
        node_group.stop()   # nothing may hold the mount when it goes
        subprocess.run(['umount', str(mnt)], check=True)
