"""Simulated time over DDS: the clock process at a real-time factor, an ECU on it, lockstep.

Only simulated-time facts are asserted (the host's load changes the wall time, never them);
wall durations are printed for the record."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from rclpy.parameter import Parameter
from rosgraph_msgs.msg import Clock
from rosutil import Probe, start_nodes
from std_msgs.msg import Header

from scarls.bringup import NodeSpec, ecu_nodes
from scarls.episodes import EpisodeReader, list_episodes
from scarls.ros.simtime import PROGRESS_QOS, PROGRESS_TOPIC, BudgetGate, ProgressReporter
from scarls.sim.clock import NS, step_ns

pytestmark = pytest.mark.ros
TICK = step_ns(30.0)
H, W = 48, 64


def clock_spec(rtf: float, participants: list[str], **params) -> NodeSpec:
    return NodeSpec('clock', 'scarls.sim.clock_node', '',
                    {'rate_hz': 30.0, 'rtf': float(rtf), 'participants': participants,
                     **params})


def clock_ns(msg: Clock) -> int:
    return msg.clock.sec * NS + msg.clock.nanosec


@pytest.mark.parametrize('rtf', [2.0, 0.5])
def test_ecu_on_simulated_time_records_one_tick_per_step(ros, node_group, tmp_path, rtf):
    """`rtf` changes the wall time only: the recorded steps are 33.3 ms of simulated time
    apart, every one of them, and their stamps are simulated time (seconds since the clock
    started, not the epoch)."""
    ns = f'simtime{int(rtf * 10)}'
    data_root = tmp_path / 'data'
    image = {'image_height': H, 'image_width': W}
    sim = {'use_sim_time': True}
    specs = ecu_nodes(ns, task='pick_cube', data_root=str(data_root), extra={
        'driver': {**image, 'seed': 3, **sim},
        'scheduler': sim, 'actor': sim,
        'teleop': {**image, 'episodes': 1, 'max_steps': 60, 'fail_margin_steps': 30, **sim},
    })
    # the scripted operator joins with its first answered state
    participants = [f'/{ns}/{n}' for n in ('driver', 'actor')]
    probe = Probe(ns)
    clocks: list[int] = []
    probe.node.create_subscription(Clock, '/clock', lambda m: clocks.append(clock_ns(m)), 10)
    t0 = time.monotonic()
    try:
        start_nodes(node_group, [clock_spec(rtf, participants), *specs])
        probe.wait_for(lambda: list_episodes(data_root, 'pick_cube') or node_group.dead(),
                       240, 'the recorded episode')
        assert not node_group.dead(), [d.tail() for d in node_group.dead()]
    finally:
        probe.close()
    wall = time.monotonic() - t0
    entry = list_episodes(data_root, 'pick_cube')[0]
    stamps = np.asarray(EpisodeReader(entry.path).timestamp[:], dtype=np.float64)
    assert len(stamps) >= 30, len(stamps)
    steps_ns = np.round(np.diff(stamps) * 1e9).astype(np.int64)
    # one control tick of simulated time between consecutive steps, none skipped or doubled
    assert np.all(np.abs(steps_ns - TICK) <= 2), np.unique(steps_ns)
    # simulated time: the clock started at one tick, so the stamps are small, and within what
    # the clock published
    assert 0 < stamps[0] < stamps[-1] <= max(clocks) / NS < 3600
    print(f'rtf {rtf}: {len(stamps)} steps over {stamps[-1] - stamps[0]:.3f} simulated s; '
          f'the whole run (start-up included) took {wall:.1f} s of wall time, simulated time '
          f'reached {max(clocks) / NS:.2f} s')


class _Learner:
    """A test-process 'learner' on simulated time that trains slowly in wall time."""

    def __init__(self, namespace: str) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        self.node = rclpy.create_node('learner', namespace=namespace, parameter_overrides=[
            Parameter('use_sim_time', Parameter.Type.BOOL, True)])
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def now(self) -> int:
        return self.node.get_clock().now().nanoseconds

    def close(self) -> None:
        self.executor.shutdown()
        self.thread.join(5.0)
        self.node.destroy_node()


def test_clock_waits_for_a_learners_budget(ros, node_group):
    """Compute-fair lockstep: the clock (as fast as it may, rtf 0) never runs ahead of a
    learner that is behind its budget of training steps per simulated second, and the learner
    never trains ahead of it: at every step, done == allowed(now)."""
    ns = 'budgettest'
    rate = 30.0   # steps per simulated second; each step takes 20 ms of wall time here
    learner = _Learner(ns)
    stop = threading.Event()
    try:
        start_nodes(node_group, [clock_spec(0.0, [f'/{ns}/learner'])])
        reporter = ProgressReporter(learner.node)
        assert reporter.enabled and reporter.participant == f'/{ns}/learner'
        # joined and idle: the clock runs freely
        deadline = time.monotonic() + 60
        while learner.now() < 2 * NS:
            reporter.idle()
            assert time.monotonic() < deadline and not node_group.dead(), 'clock not running'
            time.sleep(0.05)
        # hold the clock, and let this process's view of it catch up (a free-running clock is
        # ahead of what a subscriber has seen; the budget starts from the learner's view)
        reporter.done(learner.now())
        last, still = -1, 0
        while still < 5:
            time.sleep(0.1)
            still = still + 1 if learner.now() == last else 0
            last = learner.now()
            assert time.monotonic() < deadline + 60, 'the clock did not hold'
        gate = BudgetGate(learner.node, rate, reporter, stop)
        gate.start()
        start = gate._budget.start_ns  # noqa: SLF001 - the round's start, for the checks
        records = []
        for done in range(1, 46):   # 1.5 simulated seconds of budget
            time.sleep(0.02)        # the "training step"
            now = learner.now()
            records.append((done, now))
            gate.after_step()
        gate.finish()
        for done, now in records:
            # the step that brought the count to `done` ran while the clock allowed it
            allowed_at_step = int((now - start) * rate // NS)
            assert allowed_at_step >= done, (done, now)
            # and the clock had not gone past the point where those steps were owed
            assert now <= start + int(done * NS / rate) + 2 * TICK, (done, now, start)
        assert not node_group.dead(), [d.tail() for d in node_group.dead()]
        # idle again: the clock runs on
        t_idle = learner.now()
        deadline = time.monotonic() + 30
        while learner.now() < t_idle + NS:
            assert time.monotonic() < deadline, 'the clock did not resume after the round'
            time.sleep(0.05)
        print(f'{len(records)} steps at {rate:g}/simulated s; the learner waited '
              f'{gate.waited_s:.2f} s of wall time for the clock in the round')
    finally:
        stop.set()
        learner.close()


def test_clock_holds_at_an_unfinished_participant(ros, node_group):
    """A participant that reports tick t lets the clock reach t + one tick, not further."""
    ns = 'holdtest'
    who = f'/{ns}/actor'
    probe = Probe(ns)
    clocks: list[int] = []
    probe.node.create_subscription(Clock, '/clock', lambda m: clocks.append(clock_ns(m)), 10)
    pub = probe.node.create_publisher(Header, PROGRESS_TOPIC, PROGRESS_QOS)

    def report(t_ns: int) -> None:
        msg = Header(frame_id=who)
        msg.stamp.sec, msg.stamp.nanosec = t_ns // NS, t_ns % NS
        pub.publish(msg)

    try:
        start_nodes(node_group, [clock_spec(0.0, [who], resend_s=0.05)])
        probe.wait_for(lambda: clocks, 60, 'the first /clock')
        assert max(clocks) == TICK   # waits for the participant at the first tick
        for t in (TICK, 5 * TICK, 9 * TICK):
            report(t)
            probe.wait_for(lambda t=t: max(clocks) == t + TICK, 30, f'the clock at {t + TICK}')
            probe.spin_for(0.5)   # and it stays there
            assert max(clocks) == t + TICK, (t, max(clocks))
        assert not node_group.dead()
    finally:
        probe.close()


def test_a_clock_jump_restarts_the_drivers_watchdog(ros, node_group):
    """The driver's command watchdog runs on ROS time: commands that stop for more than its
    timeout of simulated time make it hold, but a jump of the clock (a simulation reset) does
    not - the watchdog counts from the jump. Here the test process is the clock."""
    from scarls_interfaces.msg import DriverState
    from sensor_msgs.msg import JointState

    from scarls.robot import load_robot
    from scarls.ros import qos
    from scarls.ros.conversions import joint_state_to_msg, msg_to_positions, stamp_to_ns

    ns = 'jumptest'
    joints = load_robot('sim_dual6').joint_names
    probe = Probe(ns)
    n = probe.node
    clock_pub = n.create_publisher(Clock, '/clock', 10)
    cmd_pub = n.create_publisher(JointState, 'joint_command', qos.COMMAND)
    seen = {'q': None, 'stamp': -1}
    states: list[DriverState] = []

    def on_js(msg):
        seen['q'], seen['stamp'] = msg_to_positions(msg, joints), stamp_to_ns(msg.header.stamp)

    n.create_subscription(JointState, 'joint_states', on_js, qos.JOINT_STATE)
    n.create_subscription(DriverState, 'driver/state', states.append, qos.STATE)
    t = {'ns': TICK}

    def advance(dt: int = TICK, command: bool = True) -> None:
        if command:
            cmd_pub.publish(joint_state_to_msg(joints, seen['q'], n.get_clock().now().to_msg()))
            probe.spin_for(0.05)   # delivered before the clock moves on
        t['ns'] += dt
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = t['ns'] // NS, t['ns'] % NS
        clock_pub.publish(msg)
        probe.wait_for(lambda: seen['stamp'] >= t['ns'], 30, f'the driver tick at {t["ns"]}')

    def watchdog_holds(since: int) -> list[DriverState]:
        return [s for s in states if stamp_to_ns(s.header.stamp) >= since
                and 'watchdog' in s.reason]

    try:
        start_nodes(node_group, [NodeSpec('driver', 'scarls.driver.node', ns, {
            'use_sim_time': True, 'image_height': H, 'image_width': W,
            'watchdog_timeout_s': 0.25})])
        deadline = time.monotonic() + 60
        while seen['q'] is None:   # tick until the driver is up and publishing
            assert time.monotonic() < deadline and not node_group.dead(), 'no driver ticks'
            t['ns'] += TICK
            msg = Clock()
            msg.clock.sec, msg.clock.nanosec = t['ns'] // NS, t['ns'] % NS
            clock_pub.publish(msg)
            probe.spin_for(0.1)
        for _ in range(10):
            advance()
        probe.spin_for(0.3)
        before_jump = t['ns']
        assert not watchdog_holds(before_jump)
        # a commanded tick, then the clock jumps 5 s ahead: the watchdog restarts, no hold
        advance()
        advance(5 * NS)
        for _ in range(3):
            advance()
        probe.spin_for(0.5)
        assert not watchdog_holds(before_jump), [s.reason for s in watchdog_holds(before_jump)]
        # the control: commands stop for 10 ticks (> 0.25 s of simulated time): it holds
        stopped = t['ns']
        for _ in range(10):
            advance(command=False)
        probe.wait_for(lambda: watchdog_holds(stopped), 30, 'the watchdog to hold')
        assert not node_group.dead(), [d.tail() for d in node_group.dead()]
    finally:
        probe.close()


@pytest.mark.multiproc
def test_scarls_ecu_rtf_runs_and_reports_simulated_time(tmp_path, domain_id):
    """`scarls ecu --rtf 0`: a run on simulated time - the summary's times are simulated (the
    episodes saved at increasing simulated seconds, within the run's `simulated_s`), the
    recorded steps one tick apart, every node exits cleanly; a bad --param stops it at once."""
    import json
    import subprocess
    import sys

    from scarls.bringup.launcher import parent_death_preexec
    from scarls.episodes import validate_episode

    summary = tmp_path / 'summary.json'
    base = [sys.executable, '-m', 'scarls.cli', 'ecu', '--data-root', str(tmp_path / 'data'),
            '--height', str(H), '--width', str(W), '--domain-id', str(domain_id),
            '--ecu-id', 'ecusim', '--rtf', '0']
    bad = subprocess.run([*base, '--param', 'nosuchnode.x=1'], capture_output=True, text=True,
                         timeout=60, preexec_fn=parent_death_preexec())
    assert bad.returncode == 2 and 'nosuchnode' in bad.stdout + bad.stderr
    out = subprocess.run([*base, '--episodes', '2', '--max-steps', '90', '--summary',
                          str(summary), '--param', 'teleop.fail_margin_steps=30'],
                         capture_output=True, text=True, timeout=240,
                         preexec_fn=parent_death_preexec())
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(summary.read_text())
    assert data['ok'] is True and len(data['episodes']) == 2
    saved = [e['saved_s'] for e in data['episodes']]
    assert 0 < saved[0] < saved[1] <= data['simulated_s'] < 3600
    for e in data['episodes']:
        meta = validate_episode(e['path'])
        assert 0 < meta.start_time < meta.end_time <= data['simulated_s']
        stamps = np.asarray(EpisodeReader(e['path']).timestamp[:], dtype=np.float64)
        assert np.all(np.abs(np.round(np.diff(stamps) * 1e9) - TICK) <= 2)
    assert all(code == 0 for code in data['node_exit_codes'].values()), data['node_exit_codes']
    print(f"simulated {data['simulated_s']:.1f} s in {data['duration_s']:.1f} s of wall time "
          f"(factor {data['achieved_rtf']})")
