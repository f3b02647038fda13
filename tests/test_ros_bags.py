"""`scarls bag record` / `play` as their own processes over DDS: a recorded ECU stream comes
back in order with its timing, replaying it into a fresh scheduler rebuilds the very episodes
the live scheduler wrote (and so does `to-zarr` offline), pause works, a SIGKILLed recording
is repaired."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from rosutil import Probe, start_nodes
from scarls_interfaces.msg import ActorState, ActorStep, EpisodeInfo
from sensor_msgs.msg import Image
from std_msgs.msg import String
from std_srvs.srv import SetBool
from test_bags import assert_same_episodes

from scarls.bags.convert import bag_to_episodes
from scarls.bags.errors import BagError
from scarls.bags.io import BagReader, repair_bag
from scarls.bringup import ecu_nodes
from scarls.bringup.launcher import clean_fastdds_shm, parent_death_preexec, ros_env
from scarls.ros import qos
from scarls.ros.conversions import image_to_msg, ns_to_stamp

pytestmark = pytest.mark.ros
NS = 'bagtest'
CAMS = ('top', 'left', 'right')
TOPICS = [f'camera/{c}/image_raw' for c in CAMS] + ['actor/step', 'actor/state']
H, W = 12, 16


def _bag_cli(domain_id, log_path, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-m', 'scarls.cli.bag', *args],
                            env=ros_env(domain_id), stdout=log_path.open('w'),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            preexec_fn=parent_death_preexec())


def _stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 20.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        clean_fastdds_shm()
        raise


def _reap(*procs: subprocess.Popen | None) -> None:
    """Kill what a failing test left running (a passing one stopped its processes itself)."""
    left = [p for p in procs if p is not None and p.poll() is None]
    for proc in left:
        proc.kill()
        proc.wait()
    if left:
        clean_fastdds_shm()


def _scheduler(data_root):
    return ecu_nodes(NS, data_root=str(data_root),
                     extra={'scheduler': {'match_timeout_s': 0.5}})[1]


class Robot:
    """The test plays driver + actor: camera frames, steps and the end of each episode."""

    def __init__(self, probe: Probe) -> None:
        n = probe.node
        self.probe = probe
        self.cams = {c: n.create_publisher(Image, f'camera/{c}/image_raw', qos.CAMERA)
                     for c in CAMS}
        self.steps = n.create_publisher(ActorStep, 'actor/step', qos.STEPS)
        self.state = n.create_publisher(ActorState, 'actor/state', qos.STATE)
        self.episodes: list[EpisodeInfo] = []
        n.create_subscription(EpisodeInfo, 'scheduler/episode', self.episodes.append,
                              qos.EVENTS)
        self.t_ns = 1_700_000_000_000_000_000
        self.rng = np.random.default_rng(0)

    def readers(self) -> int:
        return min(p.get_subscription_count()
                   for p in [*self.cams.values(), self.steps, self.state])

    def run_episode(self, episode_id: int, n_steps: int) -> None:
        for i in range(n_steps):
            self.t_ns += 33_333_333
            stamp = ns_to_stamp(self.t_ns)
            for c in CAMS:
                frame = self.rng.integers(0, 255, (H, W, 3), dtype=np.uint8)
                self.cams[c].publish(image_to_msg(frame, stamp, c))
            step = ActorStep()
            step.header.stamp = ns_to_stamp(self.t_ns + 1_000_000)
            step.episode_id, step.step = episode_id, i
            step.joint_state_stamp = stamp
            step.image_names, step.image_stamps = list(CAMS), [stamp] * 3
            step.observation_state = [float(i)] * 14
            step.action = [float(i) + 0.5] * 14
            step.is_intervention = 4 <= i < 7
            step.model_version = 2
            self.steps.publish(step)
            self.probe.spin_for(0.03)
        end = ActorState()
        end.header.stamp = ns_to_stamp(self.t_ns + 2_000_000)
        end.phase, end.previous_phase, end.event = 'SUCCESS', 'INFERENCE', 'SUCCESS'
        end.episode_id, end.steps = episode_id, n_steps
        self.state.publish(end)
        self.probe.spin_for(0.05)


def test_record_play_rebuilds_the_same_episodes(ros, node_group, tmp_path, domain_id):
    bag = tmp_path / 'ecu_bag'
    probe = Probe(NS)
    rec = play = None
    try:
        robot = Robot(probe)
        start_nodes(node_group, [_scheduler(tmp_path / 'live')])
        rec = _bag_cli(domain_id, tmp_path / 'record.log', 'record', '-o', str(bag),
                       '--namespace', NS, '--topics', *TOPICS)
        probe.wait_for(lambda: robot.readers() >= 2, 30, 'the scheduler and the recorder')
        probe.spin_for(1.0)
        robot.run_episode(1, 12)
        robot.run_episode(2, 9)
        probe.wait_for(lambda: len(robot.episodes) == 2, 20, 'the live episodes')
        probe.spin_for(0.5)
        assert _stop(rec) == 0, (tmp_path / 'record.log').read_text()
        with BagReader(bag) as reader:
            counts = {t.name: t.count for t in reader.topics.values()}
            assert counts == {f'/{NS}/{t}': n for t, n in zip(
                TOPICS, [21, 21, 21, 21, 2], strict=True)}, counts
            steps = [reader.decoded(m) for m in reader.messages([f'/{NS}/actor/step'])]
            recorded = [m.timestamp for m in reader.messages([f'/{NS}/actor/step'])]
            assert [(s.episode_id, s.step) for s in steps] == \
                [(1, i) for i in range(12)] + [(2, i) for i in range(9)]
            qos_state = reader.topics[f'/{NS}/actor/state'].offered_qos[0]
            assert qos_state.durability.name == 'TRANSIENT_LOCAL'

        # offline: the scheduler's alignment over the bag gives the live episodes
        report = bag_to_episodes(bag, tmp_path / 'offline', ecu_id=NS, match_timeout_s=0.5,
                                 fsync=False)
        assert report.ok, report.to_dict()
        assert_same_episodes(tmp_path / 'live', tmp_path / 'offline')

        # live: a fresh scheduler fed by `scarls bag play` writes the same episodes again
        def readers() -> set:
            return {bytes(i.endpoint_gid) for t in TOPICS
                    for i in probe.node.get_subscriptions_info_by_topic(f'/{NS}/{t}')}

        old_readers = readers()
        node_group.stop()
        node_group.nodes.clear()
        robot.episodes.clear()
        for pub in [*robot.cams.values(), robot.steps, robot.state]:
            probe.node.destroy_publisher(pub)
        start_nodes(node_group, [_scheduler(tmp_path / 'replayed')])
        probe.wait_for(lambda: len(readers() - old_readers) >= len(TOPICS), 30,
                       'the new scheduler')
        got: list[tuple[int, int]] = []
        probe.node.create_subscription(
            ActorStep, 'actor/step', lambda m: got.append((time.monotonic(), m.step)),
            qos.STEPS)
        # the probe reads every played topic too, so the player can wait for both readers
        # (the scheduler and the probe) on each of them before its first message
        for cam in CAMS:
            probe.node.create_subscription(Image, f'camera/{cam}/image_raw', lambda m: None,
                                           qos.CAMERA)
        probe.node.create_subscription(ActorState, 'actor/state', lambda m: None, qos.STATE)
        probe.spin_for(1.0)
        play = _bag_cli(domain_id, tmp_path / 'play.log', 'play', str(bag),
                        '--wait-for-subscribers', '2', '--delay', '0.5')
        probe.wait_for(lambda: play.poll() is not None, 40, 'the player to finish')
        probe.wait_for(lambda: len(robot.episodes) == 2, 10,
                       f'the replayed episodes (probe got {len(got)} steps)')
        assert play.returncode == 0, (tmp_path / 'play.log').read_text()
        assert_same_episodes(tmp_path / 'live', tmp_path / 'replayed')
        # order and timing: every step, in order, spaced like the recording
        assert [s for _, s in got] == list(range(12)) + list(range(9))
        played = np.diff([t for t, _ in got])
        original = np.diff(recorded) * 1e-9
        assert abs(played.sum() - original.sum()) < 0.25 * original.sum() + 0.2
        assert np.median(np.abs(played - original)) < 0.02
    finally:
        probe.close()
        _reap(rec, play)


def test_pause_service_and_sigkill_recovery(ros, tmp_path, domain_id):
    bag = tmp_path / 'chatter'
    probe = Probe(NS, 'probe_chatter')
    rec = play = None
    try:
        pub = probe.node.create_publisher(String, 'chatter', qos.EVENTS)
        rec = _bag_cli(domain_id, tmp_path / 'record.log', 'record', '-o', str(bag),
                       '--namespace', NS)
        probe.wait_for(lambda: pub.get_subscription_count() >= 1, 30, 'the recorder')
        probe.spin_for(0.5)
        for i in range(100):
            pub.publish(String(data=str(i)))
            probe.spin_for(0.02)
        # the recorder flushes every second: wait until all 100 are in the file on disk
        tries = iter(range(10_000))

        def flushed() -> bool:
            try:
                report = repair_bag(bag, tmp_path / f'flushed{next(tries)}')
            except BagError:   # nothing complete on disk yet
                return False
            return report['topics'].get(f'/{NS}/chatter') == 100
        probe.wait_for(flushed, 30, 'the recorder to flush the 100 messages')
        rec.send_signal(signal.SIGKILL)
        rec.wait(timeout=10)
        clean_fastdds_shm()
        with pytest.raises(BagError, match='scarls bag repair'):
            BagReader(bag)
        report = repair_bag(bag, tmp_path / 'repaired')
        assert report['topics'] == {f'/{NS}/chatter': 100}, report

        # play the repaired bag paused, resume through ~/pause
        got: list[str] = []
        probe.node.create_subscription(String, 'chatter', lambda m: got.append(m.data),
                                       qos.EVENTS)
        probe.node.destroy_publisher(pub)
        play = _bag_cli(domain_id, tmp_path / 'play.log', 'play', str(tmp_path / 'repaired'),
                        '--start-paused', '--rate', '4', '--delay', '0')
        probe.wait_for(lambda: probe.node.count_publishers(f'/{NS}/chatter') >= 1, 30,
                       'the player')
        probe.spin_for(1.0)
        assert got == []
        reply = probe.call(SetBool, '/scarls_bag_player/pause', SetBool.Request(data=False))
        assert reply.success and reply.message == 'playing'
        probe.wait_for(lambda: len(got) == 100, 20, 'the resumed playback')
        assert got == [str(i) for i in range(100)]
        assert _stop(play) == 0
    finally:
        probe.close()
        _reap(rec, play)
