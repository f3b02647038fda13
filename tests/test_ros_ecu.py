"""The four ECU nodes as separate processes on an isolated ROS_DOMAIN_ID: one closed-loop episode
with the scripted operator, checked on disk against what went over DDS."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
import yaml
from rosutil import Probe, start_nodes
from scarls_interfaces.msg import ActorState, ActorStep, EpisodeInfo, OperatorSignal
from sensor_msgs.msg import Image
from visualization_msgs.msg import Marker

from scarls.bringup import default_params_file, ecu_nodes
from scarls.bringup.launcher import parent_death_preexec
from scarls.episodes import EpisodeReader, list_episodes, validate_episode
from scarls.robot import load_robot
from scarls.ros import qos
from scarls.ros.conversions import msg_to_image, stamp_to_ns

pytestmark = pytest.mark.ros
NS = 'ecutest'
H, W = 48, 64


def test_closed_loop_episode_is_stored_exactly(ros, node_group, tmp_path):
    data_root = tmp_path / 'data'
    image = {'image_height': H, 'image_width': W}
    specs = ecu_nodes(NS, task='pick_cube', data_root=str(data_root), extra={
        'driver': {**image, 'seed': 5},
        'teleop': {**image, 'episodes': 1, 'max_steps': 150},
    })
    probe = Probe(NS)
    steps: list[ActorStep] = []
    frames: dict[str, dict[int, np.ndarray]] = {c: {} for c in ('top', 'left', 'right')}
    signals: list[OperatorSignal] = []
    states: list[ActorState] = []
    episodes: list[EpisodeInfo] = []
    targets: list[Marker] = []
    n = probe.node
    n.create_subscription(ActorStep, 'actor/step', steps.append, qos.STEPS)
    n.create_subscription(OperatorSignal, 'operator/signal', signals.append, qos.EVENTS)
    n.create_subscription(ActorState, 'actor/state', states.append, qos.STATE)
    n.create_subscription(Marker, 'viz/expert_target', targets.append, qos.JOINT_STATE)
    n.create_subscription(EpisodeInfo, 'scheduler/episode', episodes.append, qos.EVENTS)
    for cam in frames:
        n.create_subscription(
            Image, f'camera/{cam}/image_raw',
            lambda m, cam=cam: frames[cam].__setitem__(stamp_to_ns(m.header.stamp),
                                                       msg_to_image(m).copy()),
            qos.CAMERA_RECORD)
    try:
        # start everything but the operator; it starts the episode once the probe is matched
        # with every publisher it checks (on a loaded machine discovery can take seconds)
        start_nodes(node_group, [s for s in specs if s.name != 'teleop'])
        topics = ('actor/step', 'operator/signal', 'scheduler/episode',
                  *(f'camera/{c}/image_raw' for c in frames))
        probe.wait_for(lambda: all(n.count_publishers(t) > 0 for t in topics
                                   if t != 'operator/signal'), 60, 'the ECU publishers')
        start_nodes(node_group, [s for s in specs if s.name == 'teleop'])
        probe.wait_for(lambda: n.count_publishers('operator/signal') > 0, 60, 'the operator')
        probe.spin_for(1.0)
        probe.wait_for(lambda: episodes or node_group.dead(), 120, 'the saved episode')
        assert not node_group.dead(), [d.tail() for d in node_group.dead()]
        probe.spin_for(0.5)
    finally:
        probe.close()

    # RViz: the scripted expert's target, at ~10 Hz, orange while it had control
    assert len(targets) > 0.2 * len(steps) / 3, (len(targets), len(steps))
    assert all(m.ns == 'expert_target' and m.header.frame_id == 'world' for m in targets)
    added = [m for m in targets if m.action == Marker.ADD]
    assert added and all(abs(m.pose.position.x) < 2 and abs(m.pose.position.z) < 2 for m in added)
    # the untrained v0 policy is taken over by the scripted expert
    assert any(s.is_intervention for s in steps), 'no intervention: the orange check saw nothing'
    assert any(m.color.r > 0.9 and m.color.b < 0.2 for m in added)   # orange
    info = episodes[0]
    episode_steps = [s for s in steps if s.episode_id == info.actor_episode_id]
    entries = list_episodes(data_root, 'pick_cube')
    assert [e.index for e in entries] == [0] and info.index == 0
    meta = validate_episode(entries[0].path)
    reader = EpisodeReader(entries[0].path)
    t = len(episode_steps)
    assert t > 20 and info.steps == t == reader.steps == meta.steps, (t, info.steps)
    assert info.dropped_steps == 0
    assert meta.task == 'pick_cube' and meta.ecu_id == NS and meta.outcome == info.outcome
    assert [s.step for s in episode_steps] == list(range(t))

    # shapes and dtypes (Table I + intervention/timestamp)
    for cam in ('top', 'left', 'right'):
        arr = reader.images(cam)
        assert arr.shape == (t, H, W, 3) and arr.dtype == np.uint8
    state, action = np.asarray(reader.state[:]), np.asarray(reader.action[:])
    assert state.shape == (t, 14) and state.dtype == np.float32
    assert action.shape == (t, 14) and action.dtype == np.float32
    inter = np.asarray(reader.intervention[:])
    assert inter.dtype == np.bool_ and inter.shape == (t,)
    assert np.asarray(reader.timestamp[:]).dtype == np.float64

    # what the actor sent is what is stored
    np.testing.assert_array_equal(action, np.array([s.action for s in episode_steps], np.float32))
    np.testing.assert_array_equal(
        state, np.array([s.observation_state for s in episode_steps], np.float32))
    np.testing.assert_array_equal(
        np.asarray(reader.timestamp[:]),
        np.array([stamp_to_ns(s.header.stamp) * 1e-9 for s in episode_steps]))

    # the intervention flags match what the operator did: every takeover is one INTERVENE the
    # actor acted on (from its transient-local state reports; a volatile signal published
    # before the operator's writer matched the probe can be missed by the probe alone)
    np.testing.assert_array_equal(inter, [s.is_intervention for s in episode_steps])
    takeovers = int(np.sum(inter[1:] & ~inter[:-1]) + inter[0])
    n_intervene = sum(m.event == 'INTERVENE' and m.phase == 'HUMANINTERVENTION'
                      and m.episode_id == info.actor_episode_id for m in states)
    assert takeovers >= 1, 'the untrained policy should have been taken over'
    assert takeovers == n_intervene
    assert sum(s.signal == OperatorSignal.INTERVENE for s in signals) <= n_intervene
    assert meta.intervention_steps == int(inter.sum()) == info.intervention_steps
    # the human's labels are fresh: each step under takeover carries the expert's answer to that
    # step's state, not the previous command again (a stale repeat is a false "hold" label)
    steps_under_takeover = np.flatnonzero(inter[1:] & inter[:-1]) + 1
    repeats = sum(np.array_equal(action[i], action[i - 1]) for i in steps_under_takeover)
    # (a free-running operator clock repeats ~45 %; answering each state, a few % when the
    # machine is quiet, more under load)
    assert repeats <= 0.3 * max(1, len(steps_under_takeover)), (repeats, len(steps_under_takeover))

    # the frames stored are the frames the actor used (looked up by the stamps it reported)
    for cam_index, cam in enumerate(('top', 'left', 'right')):
        stored = reader.images(cam)
        for i, s in enumerate(episode_steps):
            assert list(s.image_names)[cam_index] == cam
            used = frames[cam].get(stamp_to_ns(s.image_stamps[cam_index]))
            assert used is not None, f'probe missed frame of step {i}'
            np.testing.assert_array_equal(np.asarray(stored[i]), used, err_msg=f'{cam} step {i}')
    # consecutive steps saw moving frames, not one repeated image (steps under takeover carry
    # the frames the operator answered, which repeat when a command is applied twice)
    # (how many are fresh depends on how busy the machine is - a rate, docs/BENCHMARKS.md; a
    # stuck camera or a frame reused for a run of ticks would fall far below these)
    policy_steps = [s for s in episode_steps if not s.is_intervention]
    assert len({stamp_to_ns(s.image_stamps[0]) for s in policy_steps}) > 0.5 * len(policy_steps)
    assert len({stamp_to_ns(s.image_stamps[0]) for s in episode_steps}) > 0.3 * t


@pytest.mark.parametrize('robot, joints', [('sim_dual6', 14), ('sim_dual7', 16)])
def test_scarls_ecu_command_writes_summary(tmp_path, domain_id, robot, joints):
    summary = tmp_path / 'summary.json'
    cmd = [sys.executable, '-m', 'scarls.cli', 'ecu', '--episodes', '2', '--data-root',
           str(tmp_path / 'data'), '--summary', str(summary), '--height', '32', '--width', '40',
           '--max-steps', '120', '--domain-id', str(domain_id), '--ecu-id', 'ecucli',
           '--robot', robot]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                         preexec_fn=parent_death_preexec())
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads(summary.read_text())
    assert data['ok'] is True and len(data['episodes']) == 2
    for i, row in enumerate(data['episodes']):
        assert set(row) >= {'index', 'task', 'outcome', 'steps', 'intervention_steps',
                            'model_version', 'path'}
        assert row['index'] == i and row['task'] == 'pick_cube'
        assert row['outcome'] in ('success', 'fail') and row['steps'] > 0
        assert row['model_version'] == 0
        meta = validate_episode(row['path'])
        assert meta.steps == row['steps'] and meta.intervention_steps == row['intervention_steps']
        # as wide as the robot's joints, and the episode says which robot recorded it
        assert meta.shapes['action'] == [meta.steps, joints]
        assert meta.shapes['observation/obs_state'] == [meta.steps, joints]
        assert meta.extra['robot']['name'] == robot
        assert meta.extra['robot']['hash'] == load_robot(robot).hash
        assert set(meta.extra['camera_skew_ms']) == {'top', 'left', 'right'}
    assert data['robot']['name'] == robot and len(data['robot']['joint_names']) == joints
    assert 'episode 2/2' in out.stderr + out.stdout
    assert all(code == 0 for code in data['node_exit_codes'].values()), data['node_exit_codes']


def test_run_stops_early_when_the_learner_cannot_start(tmp_path, domain_id):
    """A learner whose configuration fails stays alive unconfigured (a lifecycle node can be
    configured again); the run must not act for its whole time without learning: it ends
    with an error naming the learner and why, well before --minutes."""
    params = yaml.safe_load(default_params_file().read_text())
    params['/**/learner']['ros__parameters']['policy'] = 'no_such_policy'
    params_file = tmp_path / 'params.yaml'
    params_file.write_text(yaml.safe_dump(params))
    summary = tmp_path / 'summary.json'
    cmd = [sys.executable, '-m', 'scarls.cli', 'ecu', '--learn', '--episodes', '0',
           '--minutes', '5', '--demos', '3', '--data-root', str(tmp_path / 'data'),
           '--summary', str(summary), '--height', '32', '--width', '40',
           '--params-file', str(params_file), '--domain-id', str(domain_id),
           '--ecu-id', 'ecubad']
    t0 = time.monotonic()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=240,
                         preexec_fn=parent_death_preexec())
    assert out.returncode == 1, out.stdout + out.stderr
    assert time.monotonic() - t0 < 150
    data = json.loads(summary.read_text())
    assert data['ok'] is False
    assert 'ecubad learner cannot start' in data['error'] and 'no_such_policy' in data['error']
    assert data['learner']['state'] == 'failed'


def test_scarls_ecu_serves_the_dashboard(tmp_path, domain_id):
    """`--dashboard PORT`: one more process of the run, serving the live state of the ECU it
    runs; stopped with the ECU."""
    import socket
    import urllib.request
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        port = s.getsockname()[1]
    summary = tmp_path / 'summary.json'
    cmd = [sys.executable, '-m', 'scarls.cli', 'ecu', '--episodes', '2', '--data-root',
           str(tmp_path / 'data'), '--summary', str(summary), '--height', '32', '--width', '40',
           '--max-steps', '100', '--domain-id', str(domain_id), '--ecu-id', 'ecudash',
           '--dashboard', str(port)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=parent_death_preexec())
    seen: dict = {}
    try:
        deadline = time.monotonic() + 180
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f'http://127.0.0.1:{port}/api/state', timeout=2) as r:
                    state = json.loads(r.read())
                seen.update({e['id']: e for e in state['ecus']})
            except OSError:
                pass
            if seen.get('ecudash', {}).get('episodes', 0) >= 1:
                break
            time.sleep(0.5)
        out, _ = proc.communicate(timeout=180)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, out
    assert seen.get('ecudash', {}).get('episodes', 0) >= 1, seen
    assert seen['ecudash']['phase'] in ('INFERENCE', 'HUMANINTERVENTION', 'SUCCESS', 'FAIL',
                                        'IDLE', 'ABORTED')
    data = json.loads(summary.read_text())
    assert data['ok'] is True and data['node_exit_codes']['/dashboard'] == 0


@pytest.mark.timeout(480)
def test_scarls_ecu_learns_on_a_16_joint_robot(tmp_path, domain_id):
    """`scarls ecu --robot sim_dual7 --learn`: 16-wide demonstrations and episodes, a policy
    trained on them, approved checkpoints deployed to the actor, and the summary's learning
    record (checkpoints, per model version, curve) consistent with the episodes."""
    params = yaml.safe_load(default_params_file().read_text())
    learner = params['/**/learner']['ros__parameters']
    learner.update({'pretrain_steps': 150, 'steps_per_round': 60, 'batch_size': 16,
                    'threshold': 1.0})   # a fast, permissive gate: this checks the plumbing
    params_file = tmp_path / 'params.yaml'
    params_file.write_text(yaml.safe_dump(params))
    summary = tmp_path / 'summary.json'
    data_root = tmp_path / 'data'
    cmd = [sys.executable, '-m', 'scarls.cli', 'ecu', '--robot', 'sim_dual7', '--learn',
           '--episodes', '8', '--minutes', '3', '--demos', '4', '--data-root', str(data_root),
           '--summary', str(summary), '--height', '32', '--width', '40', '--max-steps', '150',
           '--train-interval', '5', '--params-file', str(params_file),
           '--domain-id', str(domain_id), '--ecu-id', 'ecu7']
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=400,
                         preexec_fn=parent_death_preexec())
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    data = json.loads(summary.read_text())
    demos = list_episodes(data_root / 'offline', 'pick_cube')
    assert len(demos) == 4
    assert all(validate_episode(d.path).shapes['action'][1] == 16 for d in demos)
    episodes = data['episodes']
    assert episodes, 'no episode recorded'
    for row in episodes:
        assert validate_episode(row['path']).shapes['action'][1] == 16
    checkpoints = data['checkpoints']
    approved = [c for c in checkpoints if c['approved']]
    assert approved and approved[0]['version'] == 1   # pre-training on the demonstrations
    assert [c['version'] for c in checkpoints] == sorted(c['version'] for c in checkpoints)
    deployed = [c for c in approved if c.get('deployed_at_episode') is not None]
    assert deployed, f'no approved checkpoint reached the actor: {checkpoints}'
    # an episode run by a deployed version starts at or after the episode it was deployed at
    by_version = {c['version']: c['deployed_at_episode'] for c in deployed}
    run_by_deployed = [row for row in episodes if row['model_version'] in by_version]
    assert run_by_deployed, (by_version, [row['model_version'] for row in episodes])
    for row in run_by_deployed:
        assert row['index'] >= by_version[row['model_version']]
    assert any(row['model_version'] >= 1 for row in episodes)
    per_version = data['per_model_version']
    assert sum(v['episodes'] for v in per_version) == len(episodes)
    assert [v['model_version'] for v in per_version] == sorted(
        {row['model_version'] for row in episodes})
    for v in per_version:
        rows = [r for r in episodes if r['model_version'] == v['model_version']]
        alone = sum(r['outcome'] == 'success' and r['intervention_steps'] == 0 for r in rows)
        assert v['success_rate'] == pytest.approx(alone / len(rows))
    curve = data['curve']
    assert curve[0]['episodes'][0] == episodes[0]['index']
    assert curve[-1]['episodes'][1] == episodes[-1]['index']
    assert sum(b['episodes'][1] - b['episodes'][0] + 1 for b in curve) == len(episodes)
