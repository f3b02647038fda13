"""The scheduler in its own process, fed over DDS by the test (playing driver + actor): exact
frame alignment by stamp, dropped steps counted, numbering across restarts, bad data roots."""

from __future__ import annotations

import numpy as np
import pytest
from rosutil import Probe, log_text, start_nodes
from scarls_interfaces.msg import ActorState, ActorStep, DriverState, EpisodeInfo
from sensor_msgs.msg import Image

from scarls.bringup import ecu_nodes
from scarls.episodes import EpisodeReader, validate_episode
from scarls.ros import qos
from scarls.ros.conversions import image_to_msg, ns_to_stamp

pytestmark = pytest.mark.ros
NS = 'schedtest'
CAMS = ('top', 'left', 'right')
H, W = 12, 16


def _scheduler(data_root, **params):
    spec = ecu_nodes(NS, data_root=str(data_root),
                     extra={'scheduler': {'match_timeout_s': 0.5, **params}})[1]
    assert spec.name == 'scheduler'
    return spec


class FakeRobot:
    def __init__(self, probe: Probe) -> None:
        n = probe.node
        self.probe = probe
        self.cams = {c: n.create_publisher(Image, f'camera/{c}/image_raw', qos.CAMERA)
                     for c in CAMS}
        self.steps = n.create_publisher(ActorStep, 'actor/step', qos.STEPS)
        self.state = n.create_publisher(ActorState, 'actor/state', qos.STATE)
        self.driver = n.create_publisher(DriverState, 'driver/state', qos.STATE)
        self.episodes: list[EpisodeInfo] = []
        n.create_subscription(EpisodeInfo, 'scheduler/episode', self.episodes.append, qos.EVENTS)
        self.t_ns = 1_000_000_000_000
        self.rng = np.random.default_rng(0)

    TOPICS = ('camera/top/image_raw', 'camera/left/image_raw', 'camera/right/image_raw',
              'actor/step', 'actor/state')

    def publishers(self) -> list:
        return [*self.cams.values(), self.steps, self.state]

    def matched(self) -> list[int]:
        """Readers matched by each of our writers (stale ones of a killed process included)."""
        return [p.get_subscription_count() for p in self.publishers()]

    def reader_gids(self) -> set:
        node, ns = self.probe.node, '/' + NS
        return {bytes(info.endpoint_gid) for topic in self.TOPICS
                for info in node.get_subscriptions_info_by_topic(f'{ns}/{topic}')}

    def connected(self, exclude: frozenset = frozenset(), matched_before=None) -> bool:
        """The scheduler's readers are all discovered and matched by our writers (new ones
        only, after a restart: DDS keeps a killed process's endpoints until their lease
        expires, and counts them matched until then). Matched is not yet delivering: see
        :meth:`warm_up`."""
        node, ns = self.probe.node, '/' + NS
        counts = self.matched()
        for k, topic in enumerate(self.TOPICS):
            gids = {bytes(i.endpoint_gid) for i in node.get_subscriptions_info_by_topic(
                f'{ns}/{topic}')}
            if not gids - exclude or counts[k] < 1:
                return False
            # a killed reader still listed may still be counted: the count must have grown
            if matched_before is not None and gids & exclude and \
                    counts[k] <= matched_before[k]:
                return False
        return node.count_publishers('scheduler/episode') > 0

    def publish_driver_state(self, stamp_ns: int, state: str, reason: str = '') -> None:
        msg = DriverState()
        msg.header.stamp = ns_to_stamp(stamp_ns)
        msg.state, msg.reason = state, reason
        self.driver.publish(msg)

    def run_episode(self, episode_id: int, n_steps: int, *, missing=(), malformed=(),
                    driver=None, before_step=None):
        """Publish frames + steps; returns the frames each kept step used. ``driver`` maps a
        step to the driver state reported by the tick that executes it (2 ms after it);
        ``before_step(i)`` is called before step i is published."""
        used = []
        for i in range(n_steps):
            if before_step is not None:
                before_step(i)
            self.t_ns += 33_333_333
            stamp = ns_to_stamp(self.t_ns)
            frames = {c: self.rng.integers(0, 255, (H, W, 3), dtype=np.uint8) for c in CAMS}
            for c in CAMS:
                if i in missing:
                    continue
                msg = image_to_msg(frames[c], stamp, c)
                if i in malformed and c == 'left':
                    msg.encoding = 'mono8'
                self.cams[c].publish(msg)
            self.probe.spin_for(0.005)
            step = ActorStep()
            step.header.stamp = ns_to_stamp(self.t_ns + 1_000_000)
            step.episode_id, step.step = episode_id, i
            step.joint_state_stamp = stamp
            step.image_names = list(CAMS)
            step.image_stamps = [stamp] * 3
            step.observation_state = [float(i)] * 14
            step.action = [float(i) + 0.5] * 14
            step.is_intervention = 5 <= i < 9
            step.model_version = 3
            self.steps.publish(step)
            if driver and i in driver:
                self.publish_driver_state(self.t_ns + 3_000_000, *driver[i])
            if i not in missing and i not in malformed:
                used.append((i, frames))
            self.probe.spin_for(0.02)
        end = ActorState()
        end.header.stamp = ns_to_stamp(self.t_ns + 2_000_000)
        end.phase, end.previous_phase, end.event = 'SUCCESS', 'INFERENCE', 'SUCCESS'
        end.episode_id, end.steps = episode_id, n_steps
        self.state.publish(end)
        return used

    def warm_up(self, episode_id: int, attempts: int = 4) -> EpisodeInfo:
        """Record short throwaway episodes until one is reported: proof that the (re)started
        scheduler receives our streams. Matched is not yet delivering: a reader can discover
        our writers after they matched it, and a volatile reader does not ask for what was
        sent before that. Returns the reported episode (its actor id is ``episode_id`` or
        the next ones, one per attempt)."""
        seen = len(self.episodes)
        for attempt in range(attempts):
            self.run_episode(episode_id + attempt, 3)
            try:
                self.probe.wait_for(lambda: len(self.episodes) > seen, 30, 'a warm-up episode')
            except AssertionError:
                continue
            return self.episodes[-1]
        raise AssertionError(f'no warm-up episode recorded in {attempts} attempts')


def _check_episode(info, used, n_steps, log=lambda: ''):
    """The episode holds exactly the steps in ``used`` (``log()``: the scheduler's log, shown
    when it does not)."""
    meta = validate_episode(info.path)
    reader = EpisodeReader(info.path)
    why = (f'{reader.steps} of {n_steps} steps recorded, {info.dropped_steps} dropped '
           f'{meta.extra.get("dropped_by_cause")}, {len(used)} sent whole; scheduler log:\n'
           + log()[-4000:])
    assert reader.steps == len(used) == info.steps, why
    assert info.dropped_steps == n_steps - len(used) == meta.extra['dropped_steps'], why
    assert meta.outcome == 'success' and meta.model_version == 3
    for row, (i, frames) in enumerate(used):
        for c in CAMS:
            np.testing.assert_array_equal(np.asarray(reader.images(c)[row]), frames[c])
        assert float(reader.state[row][0]) == float(i)
        assert bool(reader.intervention[row]) == (5 <= i < 9)


def test_alignment_drops_and_numbering_across_restart(ros, node_group, tmp_path):
    data_root = tmp_path / 'data'
    probe = Probe(NS)
    try:
        robot = FakeRobot(probe)
        start_nodes(node_group, [_scheduler(data_root)])
        probe.wait_for(robot.connected, 60, 'the scheduler to connect')
        log = lambda: log_text(node_group, 'scheduler')  # noqa: E731
        warm = robot.warm_up(1)
        assert warm.index == 0
        actor_id = warm.actor_episode_id + 1
        used = robot.run_episode(actor_id, 20, missing={7}, malformed={12})
        probe.wait_for(lambda: len(robot.episodes) == 2, 30, 'episode 1')
        info = robot.episodes[-1]
        assert info.index == 1 and info.actor_episode_id == actor_id
        assert info.outcome == 'success'
        _check_episode(info, used, 20, log)
        assert info.finalize_seconds > 0

        used = robot.run_episode(actor_id + 1, 6)
        probe.wait_for(lambda: len(robot.episodes) == 3, 30, 'episode 2')
        assert robot.episodes[-1].index == 2
        _check_episode(robot.episodes[-1], used, 6, log)

        # restart the scheduler: numbering continues on disk
        old_readers = frozenset(robot.reader_gids())
        node_group.stop()
        node_group.nodes.clear()
        start_nodes(node_group, [_scheduler(data_root)])
        probe.wait_for(lambda: robot.connected(old_readers), 60, 'the restarted scheduler')
        warm = robot.warm_up(1)   # a new actor session counts from 1 again
        assert warm.index == 3
        used = robot.run_episode(warm.actor_episode_id + 1, 5)
        probe.wait_for(lambda: len(robot.episodes) == 5, 30, 'episode 4')
        assert robot.episodes[-1].index == 4
        _check_episode(robot.episodes[-1], used, 5, log)
    finally:
        probe.close()


def test_unwritable_data_root_fails_configure(ros, node_group, tmp_path):
    blocker = tmp_path / 'not_a_dir'
    blocker.write_text('a file where the data root should be')
    probe = Probe(NS, 'probe_root')
    try:
        start_nodes(node_group, [_scheduler(blocker / 'data', autostart=False)])
        from lifecycle_msgs.msg import Transition
        assert probe.lifecycle('scheduler', Transition.TRANSITION_CONFIGURE) is False
        assert probe.lifecycle_state('scheduler') == 'unconfigured'
        assert 'is not writable' in log_text(node_group, 'scheduler')
        assert not node_group.dead()
    finally:
        probe.close()


def test_sigkill_mid_episode_leaves_nothing_partial(ros, node_group, tmp_path):
    import signal

    from scarls.bringup.launcher import clean_fastdds_shm
    from scarls.episodes import list_episodes

    data_root = tmp_path / 'data'
    probe = Probe(NS, 'probe_kill')
    try:
        robot = FakeRobot(probe)
        start_nodes(node_group, [_scheduler(data_root)])
        probe.wait_for(robot.connected, 60, 'the scheduler to connect')
        in_flight = robot.warm_up(1).actor_episode_id + 1
        # an episode in flight (no end reported), then the recorder process is killed
        robot.run_episode(in_flight, 10)
        old_readers = frozenset(robot.reader_gids())
        old_matched = robot.matched()
        task_dir = data_root / 'pick_cube'
        probe.wait_for(lambda: any(p.name.startswith('.episode_1') for p in task_dir.iterdir()),
                       10, 'the in-flight episode to be on disk')
        victim = node_group.nodes[0].process
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=10)
        clean_fastdds_shm()
        assert [e.index for e in list_episodes(data_root)] == [0]
        # restart: the next episode takes index 1, the dead writer's leftovers are cleaned
        node_group.nodes.clear()
        start_nodes(node_group, [_scheduler(data_root)])
        probe.wait_for(lambda: robot.connected(old_readers, old_matched), 60,
                       'the restarted scheduler')
        warm = robot.warm_up(in_flight + 1)
        assert warm.index == 1
        used = robot.run_episode(warm.actor_episode_id + 1, 6)
        probe.wait_for(lambda: len(robot.episodes) == 3, 30, 'the next episode')
        assert robot.episodes[-1].index == 2
        _check_episode(robot.episodes[-1], used, 6, lambda: log_text(node_group, 'scheduler'))
        assert [e.index for e in list_episodes(data_root)] == [0, 1, 2]
        assert not [p for p in task_dir.iterdir() if '.tmp-' in p.name]
    finally:
        probe.close()


def test_driver_safety_state_recorded_per_step(ros, node_group, tmp_path):
    """The driver's state in force when each step was executed ends up in the episode's
    safety array (e-stopped and held steps are not executed), counted in meta."""
    from scarls_interfaces.msg import EcuStatus

    from scarls.episodes.schema import SAFETY_CODES
    data_root = tmp_path / 'data'
    probe = Probe(NS, 'probe_safety')
    beats: list = []
    try:
        robot = FakeRobot(probe)
        probe.node.create_subscription(EcuStatus, '/fleet/status', beats.append, qos.EVENTS)
        # the state in force before the episode, latched (the scheduler starts later)
        robot.publish_driver_state(robot.t_ns, 'holding', 'waiting for a first command')
        start_nodes(node_group, [_scheduler(data_root)])
        probe.wait_for(lambda: robot.connected() and robot.driver.get_subscription_count(),
                       60, 'the scheduler to connect')
        robot.warm_up(1)
        driver = {0: ('ok', ''), 3: ('estopped', 'service request'),
                  6: ('holding', 'e-stop released: waiting for a fresh command'),
                  7: ('ok', ''), 8: ('clamped', 'position limit: left_joint1')}
        robot.run_episode(robot.episodes[-1].actor_episode_id + 1, 10, driver=driver)
        probe.wait_for(lambda: len(robot.episodes) == 2, 30, 'episode 1')
        reader = EpisodeReader(robot.episodes[-1].path)
        c = SAFETY_CODES
        # step 8: clamped at a position limit, its action (8.5 rad) far outside the limits
        assert np.asarray(reader.safety[:]).tolist() == [
            c['ok'], c['ok'], c['ok'], c['estopped'], c['estopped'], c['estopped'],
            c['holding'], c['ok'], c['clamped_heavily'], c['clamped_heavily']]
        assert reader.executed().sum() == 4
        assert reader.meta.extra['safety']['not_executed'] == 6
        validate_episode(robot.episodes[-1].path)
        probe.wait_for(lambda: beats, 10, 'a status heartbeat')
        assert beats[-1].lost_episodes == 0 and beats[-1].recording_problem == ''
    finally:
        probe.close()


def test_heartbeat_says_ready_to_record_once_steps_and_every_camera_arrive(
        ros, node_group, tmp_path):
    """The operator's (and the scripted expert's) first START waits for ``recording_ready``:
    false while the actor's steps have no publisher or a camera has sent no frame, true once
    every one arrives, and the log says which one it waited for."""
    from scarls_interfaces.msg import EcuStatus

    probe = Probe(NS, 'probe_ready')
    beats: list = []
    try:
        probe.node.create_subscription(EcuStatus, '/fleet/status', beats.append, qos.EVENTS)
        start_nodes(node_group, [_scheduler(tmp_path / 'data')])
        probe.wait_for(lambda: beats, 60, 'a first heartbeat')
        assert not beats[-1].recording_ready   # no step publisher, no frame yet
        robot = FakeRobot(probe)
        probe.wait_for(robot.connected, 60, 'the scheduler to connect')

        def frames(cams) -> None:
            robot.t_ns += 33_333_333
            for c in cams:
                robot.cams[c].publish(image_to_msg(np.zeros((H, W, 3), np.uint8),
                                                   ns_to_stamp(robot.t_ns), c))

        # steps matched, frames of two of the three cameras: still not ready, beat after beat
        seen = len(beats)
        probe.wait_for(lambda: (frames(CAMS[:2]), len(beats) >= seen + 3)[1], 60,
                       'three more heartbeats')
        assert not any(b.recording_ready for b in beats)
        # the third camera's frames arrive: ready
        probe.wait_for(lambda: (frames(CAMS), beats[-1].recording_ready)[1], 60,
                       'a heartbeat that says ready to record')
        assert 'ready to record' in log_text(node_group, 'scheduler')
    finally:
        probe.close()
