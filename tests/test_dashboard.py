"""The web dashboard: its state aggregation (rates over time, lineage, latency percentiles, ECU
discovery), its HTTP server, and a real headless browser on a page fed by a running ECU."""

from __future__ import annotations

import json
import math
import re
import shutil
import time
import urllib.error
import urllib.request

import numpy as np
import pytest

from scarls.bringup.launcher import parent_death_preexec
from scarls.dashboard import parse_args
from scarls.dashboard.browser import CHROMEDRIVER, CHROMIUM, headless_chromium
from scarls.dashboard.frames import FrameStore, encode_jpeg, image_to_array
from scarls.dashboard.server import DashboardServer
from scarls.dashboard.state import STALE_S, FleetState, Series, latency_summary, percentile


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# -- pure state ------------------------------------------------------------------------------
def test_percentile_matches_numpy_linear_interpolation():
    rng = np.random.default_rng(0)
    for n in (1, 2, 5, 101):
        values = list(rng.exponential(2.0, n))
        for q in (0, 50, 90, 99, 100):
            assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert percentile([], 50) is None
    assert percentile([float('nan'), 2.0], 50) == 2.0
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    assert latency_summary([1.0, 3.0]) == {'count': 2, 'p50': 2.0, 'p99': pytest.approx(2.98),
                                           'max': 3.0}


def test_series_is_bounded_ordered_and_merges_bursts():
    s = Series(('a',), max_points=10, min_gap=0.5)
    for i in range(100):
        s.add(float(i), a=i)
    assert len(s) <= 10
    assert s.t == sorted(s.t) and s.t[-1] == 99.0 and s.t[0] == 0.0   # whole span kept
    s.add(99.2, a=float('nan'))          # a burst: replaces the last point, NaN becomes a gap
    assert s.t[-1] == 99.2 and s.values['a'][-1] is None
    s.add(50.0, a=1)                     # out of order: ignored
    assert s.t[-1] == 99.2


def test_ecus_are_discovered_from_any_global_topic():
    state = FleetState(FakeClock())
    state.heartbeat('ecu1', 1.0, phase='IDLE')
    state.learner_status('ecu0', 1.0, state='training')
    state.fleet_round('ecu2', 1.0, round=0, status='skipped')
    assert state.ecu_ids() == ['ecu0', 'ecu1', 'ecu2']
    assert state.discover('ecu3') and not state.discover('ecu3') and not state.discover('')
    assert [e['id'] for e in state.snapshot()['ecus']] == ['ecu0', 'ecu1', 'ecu2', 'ecu3']


def test_driver_safety_state_and_cameras_are_in_the_snapshot():
    state = FleetState(FakeClock())
    state.discover('ecu0')
    state.driver_state('ecu0', 'estopped', 'service request')
    state.set_cameras('ecu0', ['head', 'wrist'])
    (ecu,) = state.snapshot()['ecus']
    assert (ecu['driver'], ecu['driver_reason']) == ('estopped', 'service request')
    assert ecu['cameras'] == ['head', 'wrist']


def test_diagnostics_give_each_ecu_its_health_worst_first_and_stale_when_silent():
    clock = FakeClock()
    state = FleetState(clock)
    assert state.diagnostic('ecu0/driver: safety', 0, 'ok', 'ecu0')
    assert state.diagnostic('ecu0/learner: learner', 2, 'no demonstrations')   # id from name
    assert state.diagnostic('ecu0/actor: control', 1, 'inactive')
    assert not state.diagnostic('dashboard: web', 2, 'no ECU')      # no ECU: not shown
    # other publishers of the global topic are not ECUs (a camera's serial number as its id)
    assert not state.diagnostic('usb_cam/cam: driver', 0, 'ok', 'SN 1234')
    assert not state.diagnostic('ecu1/driver: safety', 0, 'ok', 'ecu0')   # ids disagree
    assert not state.diagnostic('driver: safety', 0, 'ok', 'ecu7')        # unknown, no ns
    assert state.ecu_ids() == ['ecu0']
    (ecu,) = state.snapshot()['ecus']
    assert ecu['health_level'] == 'ERROR'
    assert [(h['level'], h['name']) for h in ecu['health']] == [
        ('ERROR', 'learner: learner'), ('WARN', 'actor: control'), ('OK', 'driver: safety')]
    state.diagnostic('ecu0/learner: learner', 0, 'training')
    state.diagnostic('ecu0/actor: control', 0, 'INFERENCE at 30 Hz')
    assert state.snapshot()['ecus'][0]['health_level'] == 'OK'
    clock.t += 10.0                      # a node that stops publishing goes STALE
    state.diagnostic('ecu0/driver: safety', 0, 'ok', 'ecu0')
    ecu = state.snapshot()['ecus'][0]
    assert ecu['health_level'] == 'STALE'
    stale = {h['name'] for h in ecu['health'] if h['level'] == 'STALE'}
    assert stale == {'learner: learner', 'actor: control'}
    assert 'not heard for 10 s' in ecu['health'][0]['message']
    assert state.snapshot()['ecus'][0]['health'][-1]['level'] == 'OK'
    # a node started without the namespace, named by its ECU id, of a known ECU
    assert state.diagnostic('camera: camera', 1, 'no frames', 'ecu0')
    assert 'camera: camera' in {h['name'] for h in state.snapshot()['ecus'][0]['health']}
    clock.t += 200.0                     # long gone nodes are forgotten
    state.diagnostic('ecu0/driver: safety', 0, 'ok', 'ecu0')
    (ecu,) = state.snapshot()['ecus']
    assert [h['name'] for h in ecu['health']] == ['driver: safety']
    assert ecu['health_level'] == 'OK'


def test_rates_over_time_phases_and_silence():
    clock = FakeClock()
    state = FleetState(clock)
    for i in range(5):
        clock.t = 1000.0 + i
        state.heartbeat('ecu0', clock.t, phase='INFERENCE', episodes=i,
                        recent_success_rate=0.1 * i, recent_intervention_rate=1.0 - 0.1 * i)
    ecu = state.snapshot()['ecus'][0]
    assert ecu['rates']['t'] == [1000.0, 1001.0, 1002.0, 1003.0, 1004.0]
    assert ecu['rates']['success'][0] is None   # no episode yet: no rate, not 0 %
    assert ecu['rates']['success'][1:] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert ecu['rates']['human'][-1] == pytest.approx(0.6)
    assert not ecu['silent'] and ecu['phase'] == 'INFERENCE'
    # the actor's own state replaces the heartbeat's phase, transitions become the history
    state.actor_state('ecu0', 1004.1, phase='IDLE')
    state.actor_state('ecu0', 1004.5, phase='INFERENCE')
    state.actor_state('ecu0', 1004.6, phase='INFERENCE')
    state.actor_state('ecu0', 1005.0, phase='HUMANINTERVENTION', intervening=True)
    state.heartbeat('ecu0', 1005.1, phase='SUCCESS', episodes=5)   # actor/state wins
    ecu = state.snapshot()['ecus'][0]
    assert [p for _, p in ecu['phases']] == ['IDLE', 'INFERENCE', 'HUMANINTERVENTION']
    assert ecu['phase'] == 'HUMANINTERVENTION' and ecu['intervening']
    clock.t += STALE_S + 1
    assert state.snapshot()['ecus'][0]['silent']


def test_episodes_are_kept_once_newest_first():
    state = FleetState(FakeClock())
    for index in (0, 1, 1, 2):
        state.episode('ecu0', 10.0 + index, index=index, outcome='success', steps=100,
                      intervention_steps=25 * index, model_version=1)
    recent = state.snapshot()['ecus'][0]['recent_episodes']
    assert [e['index'] for e in recent] == [2, 1, 0]
    assert recent[0]['human_share'] == 0.5


def test_checkpoint_lineage_deployment_and_distribution_latency():
    state = FleetState(FakeClock())
    state.actor_state('ecu0', 99.0, phase='IDLE', model_version=0)   # what ran before
    state.learner_checkpoint('ecu0', 100.0, version=1, parent=0, metric=0.02, approved=True)
    state.deployed_checkpoint('ecu0', 100.1, version=1)
    state.actor_state('ecu0', 104.0, phase='IDLE', model_version=1)   # 4 s: episode boundary
    state.learner_checkpoint('ecu0', 110.0, version=2, parent=1, metric=0.5, approved=False)
    state.learner_checkpoint('ecu0', 120.0, version=3, parent=1, metric=float('nan'),
                             approved=True)
    state.deployed_checkpoint('ecu0', 120.2, version=3)
    # the actor's report may arrive before the learner's announcement: matched either way
    state.actor_state('ecu1', 50.0, phase='IDLE', model_version=0)
    state.actor_state('ecu1', 131.0, phase='IDLE', model_version=7)
    state.learner_checkpoint('ecu1', 130.0, version=7, parent=6, metric=0.01, approved=True)
    state.actor_state('ecu0', 121.5, phase='IDLE', model_version=3)
    snap = state.snapshot()
    ecu0 = {c['version']: c for c in snap['ecus'][0]['checkpoints']}
    assert [ecu0[v]['parent'] for v in (1, 2, 3)] == [0, 1, 1]
    assert ecu0[1]['approved'] and not ecu0[2]['approved'] and ecu0[3]['metric'] is None
    assert ecu0[1]['deployed'] == 100.1 and ecu0[2]['deployed'] is None
    assert ecu0[1]['running'] == 104.0 and ecu0[3]['current'] and not ecu0[1]['current']
    assert ecu0[1]['distribution_latency_s'] == pytest.approx(4.0)
    assert ecu0[3]['distribution_latency_s'] == pytest.approx(1.5)
    assert ecu0[2]['distribution_latency_s'] is None
    ecu1 = snap['ecus'][1]
    assert ecu1['checkpoints'][0]['distribution_latency_s'] == pytest.approx(1.0)
    dist = snap['latency']['distribution']
    assert dist['count'] == 3 and dist['p50'] == pytest.approx(1.5)
    assert dist['p99'] == pytest.approx(1.5 + 0.98 * 2.5)


def test_a_deployment_heard_before_its_learner_announcement_gets_its_lineage():
    state = FleetState(FakeClock())
    state.actor_state('ecu0', 1.0, phase='IDLE', model_version=1)
    state.fleet_round('ecu0', 11.0, round=6, status='alone', selector_passed=True, version=2,
                      approved=True)
    state.deployed_checkpoint('ecu0', 12.0, version=2)
    state.actor_state('ecu0', 13.0, phase='IDLE', model_version=2)
    assert state.latencies()['distribution']['count'] == 0   # not from the learner's stamp
    state.learner_checkpoint('ecu0', 10.0, version=2, parent=1, metric=0.03, approved=True)
    (ckpt,) = state.snapshot()['ecus'][0]['checkpoints']
    assert (ckpt['parent'], ckpt['metric'], ckpt['deployed'], ckpt['round']) == (1, 0.03, 12.0, 6)
    assert ckpt['distribution_latency_s'] == pytest.approx(3.0) and ckpt['running'] == 13.0


def test_a_version_already_running_when_the_dashboard_starts_is_not_a_latency():
    state = FleetState(FakeClock())
    state.learner_checkpoint('ecu0', 100.0, version=4, parent=3, metric=0.1, approved=True)
    state.actor_state('ecu0', 500.0, phase='INFERENCE', model_version=4)   # first sample
    snap = state.snapshot()
    assert snap['latency']['distribution']['count'] == 0
    assert snap['ecus'][0]['checkpoints'][0]['current']


def test_ingest_latencies_are_counted_once_per_episode():
    state = FleetState(FakeClock())
    state.learner_status('ecu0', 1.0, state='training', loss=0.5, metric=float('nan'),
                         ingested_episodes=[0, 1], ingest_latency_s=[0.4, 0.6])
    state.learner_status('ecu0', 2.0, state='training', loss=0.4,
                         ingested_episodes=[1, 2], ingest_latency_s=[9.9, 1.0])
    state.learner_status('ecu1', 2.0, state='idle', ingested_episodes=[0],
                         ingest_latency_s=[2.0])
    snap = state.snapshot()
    ingest = snap['latency']['ingest']
    assert ingest['count'] == 4 and ingest['p50'] == pytest.approx(0.8)
    assert ingest['p99'] == pytest.approx(float(np.percentile([0.4, 0.6, 1.0, 2.0], 99)))
    ecu0 = snap['ecus'][0]
    assert ecu0['ingest']['count'] == 3
    assert ecu0['learning']['loss'] == [0.5, 0.4] and ecu0['learning']['metric'][0] is None
    assert ecu0['learner']['state'] == 'training'


def test_fleet_rounds_merge_the_reports_of_all_learners():
    state = FleetState(FakeClock())
    state.learner_checkpoint('ecu1', 9.0, version=5, parent=4, metric=0.01, approved=True)
    common = {'participants': ['ecu0', 'ecu1'], 'member_ids': ['ecu0', 'ecu1', 'ecu2'],
              'member_metrics': [0.01, 0.03, float('nan')], 'member_weights': [0.75, 0.25, 0.0]}
    state.fleet_round('ecu0', 10.0, round=3, status='reduced', selector_passed=True, version=8,
                      approved=True, **common)
    state.fleet_round('ecu1', 10.5, round=3, status='reduced', selector_passed=True, version=5,
                      approved=True, **common)
    state.fleet_round('ecu2', 10.2, round=3, status='skipped', member_ids=['ecu2'],
                      member_metrics=[0.9], member_weights=[0.0])
    state.learner_checkpoint('ecu0', 9.5, version=8, parent=7, metric=0.01, approved=True)
    snap = state.snapshot()
    (r,) = snap['rounds']
    assert r['participants'] == ['ecu0', 'ecu1'] and r['t'] == 10.5
    assert r['weights'] == {'ecu0': 0.75, 'ecu1': 0.25}
    assert r['metrics'] == {'ecu0': 0.01, 'ecu1': 0.03, 'ecu2': 0.9}
    assert r['selector_passed'] is True and r['version'] == {'ecu0': 8, 'ecu1': 5}
    assert r['status'] == {'ecu0': 'reduced', 'ecu1': 'reduced', 'ecu2': 'skipped'}
    by_ecu = {e['id']: e for e in snap['ecus']}
    assert by_ecu['ecu1']['checkpoints'][0]['round'] == 3   # reported after its checkpoint
    assert by_ecu['ecu0']['checkpoints'][0]['round'] == 3   # ... and before it
    state.fleet_round('ecu1', 20.0, round=4, status='reduced', selector_passed=False,
                      participants=['ecu0', 'ecu1'])
    state.fleet_round('ecu0', 20.0, round=4, status='reduced', selector_passed=True,
                      participants=['ecu0', 'ecu1'])
    assert state.snapshot()['rounds'][1]['selector_passed'] is False


def test_snapshot_is_strict_json_even_with_nan_inputs():
    state = FleetState(FakeClock())
    nan = float('nan')
    state.heartbeat('ecu0', 1.0, episodes=1, recent_success_rate=nan,
                    recent_intervention_rate=math.inf)
    state.learner_status('ecu0', 1.0, state='starting', loss=nan, metric=nan,
                         deployed_metric=nan, ingested_episodes=[0], ingest_latency_s=[nan])
    state.episode('ecu0', 1.0, index=0, outcome='fail', steps=0, intervention_steps=0,
                  model_version=0, finalize_seconds=nan)
    json.dumps(state.snapshot(), allow_nan=False)


# -- frames and HTTP ------------------------------------------------------------------------
def _image(height: int, width: int):
    from sensor_msgs.msg import Image
    img = np.zeros((height, width, 3), np.uint8)
    img[..., 0] = 255   # red in rgb8
    return Image(height=height, width=width, encoding='rgb8', step=width * 3,
                 data=img.tobytes())


def test_frames_are_decoded_and_encoded_only_when_asked_and_once():
    import cv2
    from rclpy.serialization import serialize_message

    msg = _image(480, 640)
    bgr = image_to_array(msg)
    assert bgr.shape == (480, 640, 3) and bgr[0, 0].tolist() == [0, 0, 255]
    frames = FrameStore(max_width=320)
    assert frames.jpeg('ecu0', 'top') is None and frames.wanted() == {'ecu0'}
    for _ in range(30):
        frames.put('ecu0', 'top', serialize_message(msg))
    assert frames.encoded == 0
    data, age = frames.jpeg('ecu0', 'top')
    assert frames.jpeg('ecu0', 'top')[0] == data and frames.encoded == 1 and age >= 0
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (240, 320, 3) and decoded[120, 160, 2] > 200
    frames.drop('ecu0')
    assert frames.jpeg('ecu0', 'top') is None
    with pytest.raises(ValueError):
        image_to_array(type(msg)(height=1, width=1, encoding='yuv422', step=2, data=b'00'))
    assert encode_jpeg(np.zeros((10, 20), np.uint8))[:2] == b'\xff\xd8'


def _get(url: str) -> tuple[int, bytes, str]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, r.read(), r.headers.get('Content-Type', '')
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), ''


def test_http_server_serves_page_state_and_frames():
    from rclpy.serialization import serialize_message

    state = FleetState()
    state.heartbeat('ecu0', time.time(), phase='IDLE', episodes=0)
    frames = FrameStore()
    server = DashboardServer(state, frames, '127.0.0.1', 0)
    server.start()
    try:
        base = server.url
        status, body, ctype = _get(base)
        assert status == 200 and b'uPlot.iife.min.js' in body and ctype.startswith('text/html')
        for name in ('app.js', 'style.css', 'vendor/uPlot.iife.min.js', 'vendor/uPlot.min.css'):
            assert _get(base + 'static/' + name)[0] == 200, name
        assert _get(base + 'static/../state.py')[0] == 404
        assert _get(base + 'static/%2e%2e/state.py')[0] == 404
        status, body, ctype = _get(base + 'api/state')
        assert status == 200 and ctype == 'application/json'
        assert json.loads(body)['ecus'][0]['phase'] == 'IDLE'
        assert _get(base + 'api/camera/ecu0/top.jpg')[0] == 204
        assert _get(base + 'api/camera/ecu0/back.jpg')[0] == 404
        frames.put('ecu0', 'top', serialize_message(_image(32, 40)))
        status, body, ctype = _get(base + 'api/camera/ecu0/top.jpg')
        assert status == 200 and ctype == 'image/jpeg' and body[:2] == b'\xff\xd8'
        assert _get(base + 'nothing')[0] == 404
    finally:
        server.stop()
        server.stop()


def test_command_line_keeps_ros_args_apart():
    args, ros = parse_args(['--port', '0', '--ros-args', '-r', '__node:=dashboard',
                            '-p', 'port:=9000'])
    assert args.port == 0 and args.host == '127.0.0.1' and ros[0] == '--ros-args'
    args, ros = parse_args(['--host', '0.0.0.0', '--domain-id', '42'])
    assert (args.host, args.domain_id, ros) == ('0.0.0.0', 42, [])


@pytest.mark.ros
def test_the_dashboard_process_serves_and_stops_cleanly_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys

    log = tmp_path / 'dashboard.log'
    with open(log, 'wb') as out:
        proc = subprocess.Popen([sys.executable, '-m', 'scarls.dashboard', '--port', '0'],
                                stdout=out, stderr=subprocess.STDOUT,
                                preexec_fn=parent_death_preexec())
    try:
        url = _wait_for_url(log, proc, 30)
        assert _get(url + 'healthz')[1] == b'ok\n'
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait_for_url(log, proc, timeout: float) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end and proc.poll() is None:
        found = re.search(r'dashboard on (http://\S+)', log.read_text(errors='replace'))
        if found:
            return found.group(1)
        time.sleep(0.2)
    raise AssertionError(f'the dashboard did not come up: {log.read_text(errors="replace")}')


# -- a real ECU, the dashboard process, a real browser ----------------------------------------
def _fake_learner(probe, ecu: str) -> None:
    """Publish what a learner of ECU ``ecu`` would (status, checkpoints, a fleet round) so the
    page's learner panels get data without the minute a real learner needs to start."""
    from scarls_interfaces.msg import CheckpointInfo, FleetRound, LearnerStatus

    from scarls.ros import qos

    node = probe.node
    now = node.get_clock().now().to_msg()
    ckpt_pub = node.create_publisher(CheckpointInfo, f'/{ecu}/learner/checkpoint', qos.STATE)
    for version, parent, metric, approved in ((1, 0, 0.02, True), (2, 1, 0.05, False),
                                              (3, 1, 0.01, True)):
        msg = CheckpointInfo(version=version, parent=parent, metric=metric, approved=approved)
        msg.header.stamp = now
        ckpt_pub.publish(msg)
    rounds = node.create_publisher(FleetRound, '/fleet/rounds', qos.ROUNDS)
    msg = FleetRound(ecu_id=ecu, round=0, status='reduced', participants=[ecu, 'ghost2'],
                     member_ids=[ecu, 'ghost2'], member_metrics=[0.01, 0.03],
                     member_weights=[0.75, 0.25], selector_passed=True, version=3,
                     approved=True)
    msg.header.stamp = now
    rounds.publish(msg)
    status = node.create_publisher(LearnerStatus, '/fleet/learners', qos.EVENTS)
    step = {'n': 0}

    def tick() -> None:
        step['n'] += 1
        m = LearnerStatus(ecu_id=ecu, state='training', rounds=step['n'], round_step=step['n'],
                          round_steps=100, loss=1.0 / step['n'], metric=0.01, version=3,
                          approved=True, ingested_episodes=[step['n']],
                          ingest_latency_s=[0.1 * step['n']])
        m.header.stamp = node.get_clock().now().to_msg()
        status.publish(m)

    node.create_timer(0.5, tick)


@pytest.mark.ros
def test_browser_shows_a_running_ecu_live(ros, node_group, tmp_path):
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        pytest.skip(f'headless browser test needs {" and ".join(missing)} '
                    '(Debian: apt-get install chromium chromium-driver)')
    from rosutil import Probe, start_nodes

    from scarls.bringup import NodeSpec, ecu_nodes

    image = {'image_height': 48, 'image_width': 64}
    start_nodes(node_group, ecu_nodes('dashtest', data_root=str(tmp_path / 'data'), extra={
        'driver': image, 'teleop': {**image, 'episodes': 0, 'max_steps': 90}}))
    start_nodes(node_group, [NodeSpec('dashboard', 'scarls.dashboard', '', {'port': 0})])
    dashboard = node_group.nodes[-1]
    url = _wait_for_url(dashboard.log_path, dashboard.process, 60)
    probe = Probe('dashtest', 'fake_learner')
    _fake_learner(probe, 'ghost')
    driver = headless_chromium(tmp_path / 'chromium-profile', window=(1400, 1600))
    try:
        driver.get(url)
        assert driver.title == 'scarls fleet'

        def js(expr: str):
            return driver.execute_script(f'return {expr};')

        phases: list[str] = []
        acting = {'INFERENCE', 'HUMANINTERVENTION'}
        deadline = time.monotonic() + 90
        # the FSM passes INIT and IDLE before it acts: wait for an acting phase, not for any
        # three (a loaded host may show UNKNOWN, INIT, IDLE first)
        while (len(set(phases)) < 3 or not set(phases) & acting) and \
                time.monotonic() < deadline:
            probe.spin_for(0.5)
            phase = js("(document.querySelector('[data-ecu=\"dashtest\"] .phase') || {})"
                       ".textContent")
            if phase and (not phases or phases[-1] != phase):
                phases.append(phase)
        assert not node_group.dead(), [d.tail() for d in node_group.dead()]
        assert len(set(phases)) >= 3, f'the page showed phases {phases}'
        assert set(phases) & acting, phases
        before = js('window.scarlsDashboard.plots.success.points')
        updates = js('window.scarlsDashboard.updates')
        probe.wait_for(lambda: js('window.scarlsDashboard.plots.success.points') > before
                       and js('window.scarlsDashboard.updates') > updates, 30,
                       'the success plot and the page to update')
        assert js('window.scarlsDashboard.errors') == 0
        # the camera frames of the running ECU
        probe.wait_for(lambda: js("document.querySelector('[data-ecu=\"dashtest\"] "
                                  "img[data-cam=\"top\"]').naturalWidth") > 0, 20,
                       'a camera frame on the page')
        # the ECU's health, from its nodes' /diagnostics
        health = "document.querySelector('[data-ecu=\"dashtest\"] td[data-field=\"health\"]')"
        probe.wait_for(lambda: 'dashtest' not in (js(f'{health}.title') or '')
                       and 'driver: safety' in (js(f'{health}.title') or ''), 45,
                       "the driver's diagnostics in the ECU's health")
        # no learner in this ECU and every node publishing: nothing is STALE
        assert js(f'{health}.dataset.level') in ('OK', 'WARN', 'ERROR')
        assert js(f'{health}.textContent').strip() not in ('', '-')
        # the learner panels, from the fake learner's messages
        probe.wait_for(lambda: (js('window.scarlsDashboard.plots.loss.points') or 0) >= 3, 20,
                       'the loss plot to fill')
        loss_points = js('window.scarlsDashboard.plots.loss.points')
        probe.wait_for(lambda: js('window.scarlsDashboard.plots.loss.points') > loss_points, 30,
                       'the loss plot to grow')
        probe.wait_for(lambda: js("document.querySelectorAll('svg.lineage[data-ecu=\"ghost\"] "
                                  "g.ckpt').length") == 3, 20, 'the lineage of ghost')
        assert js("document.querySelectorAll('svg.lineage g.ckpt.rejected').length") == 1
        rounds = js("document.getElementById('rounds-table').textContent")
        assert 'ghost 0.75' in rounds and 'passed' in rounds
        latency = js("document.getElementById('latency-numbers').textContent")
        assert 'ingestion ghost' in latency
        driver.save_screenshot(str(tmp_path / 'dashboard.png'))
        logs = [e for e in driver.get_log('browser') if e['level'] == 'SEVERE']
        assert not logs, logs
    finally:
        driver.quit()
        probe.close()
    codes = node_group.stop()
    assert codes['/dashboard'] == 0, dashboard.tail()
