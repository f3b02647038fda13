"""Fault: a learner killed again and again (SIGKILL) in a single-ECU run.

The robot must not notice: the actor keeps ticking and the scheduler keeps recording while the
learner is down; the run restarts the learner, which resumes from its registry (the approved
version it had) instead of pre-training from scratch.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from scarls.bringup import default_params_file
from scarls.bringup.launcher import parent_death_preexec
from scarls.episodes import list_episodes

pytestmark = [pytest.mark.ros, pytest.mark.faults]


def _learner_pids(ecu: str) -> list[int]:
    out = subprocess.run(['pgrep', '-f', f'scarls.learner.node .*__ns:=/{ecu}'],
                         capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()]


def _resumes(log_dir, ecu: str) -> int:
    """How often the learner came back from its registry (its log continues across restarts)."""
    logs = list(log_dir.rglob(f'{ecu}_learner.log'))
    return logs[0].read_text(errors='replace').count('resuming from v') if logs else 0


def _has_approved(registry) -> bool:
    try:
        records = json.loads(registry.read_text())['records']
    except (OSError, ValueError, KeyError):
        return False
    return any(r.get('approved') for r in records)


@pytest.mark.timeout(720)
def test_a_learner_killed_three_times_never_stops_the_robot(tmp_path, domain_id):
    params = yaml.safe_load(default_params_file().read_text())
    params['/**/learner']['ros__parameters'].update(
        {'pretrain_steps': 100, 'steps_per_round': 40, 'batch_size': 16, 'threshold': 1.0})
    params_file = tmp_path / 'params.yaml'
    params_file.write_text(yaml.safe_dump(params))
    summary = tmp_path / 'summary.json'
    ecu = 'ecukill'
    # the run is stopped (Ctrl-C) once the test has seen what it needs; --minutes only bounds it
    cmd = [sys.executable, '-m', 'scarls.cli', 'ecu', '--learn', '--episodes', '0',
           '--minutes', '8', '--demos', '3', '--data-root', str(tmp_path / 'data'),
           '--summary', str(summary), '--height', '32', '--width', '40', '--max-steps', '120',
           '--train-interval', '3', '--params-file', str(params_file),
           '--domain-id', str(domain_id), '--ecu-id', ecu]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=parent_death_preexec())
    kills = []
    data_root = tmp_path / 'data'
    try:
        registry = data_root / 'checkpoints' / 'pick_cube' / 'registry.json'
        deadline = time.monotonic() + 400
        # first kill once an approved version (pre-training) is in the registry, then twice
        # more, each time once the restarted learner has resumed from it
        while len(kills) < 3 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(1.0)
            if not _has_approved(registry) or _resumes(data_root / 'logs', ecu) < len(kills):
                continue
            pids = _learner_pids(ecu)
            if len(pids) == 1:
                os.kill(pids[0], signal.SIGKILL)
                kills.append((time.monotonic(), pids[0],
                              len(list_episodes(data_root, 'pick_cube'))))
        # then until the third restart resumed and the robot saved two episodes after the kill
        # (the run has heard of the first one by the time the second is on disk)
        while len(kills) == 3 and time.monotonic() < deadline and proc.poll() is None and (
                _resumes(data_root / 'logs', ecu) < 3
                or len(list_episodes(data_root, 'pick_cube')) <= kills[-1][2] + 1):
            time.sleep(1.0)
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert len(kills) == 3, f'killed {len(kills)} times; output:\n{out[-3000:]}'
    data = json.loads(summary.read_text())
    # stopped by the test (Ctrl-C: exit 1, not ok), with no error of its own and every node's
    # exit clean
    assert proc.returncode == 1 and data['error'] is None, out[-4000:]
    assert all(code in (0, None) for code in data['node_exit_codes'].values()), \
        data['node_exit_codes']
    restarts = [r for r in data['restarts'] if r['node'] == f'/{ecu}/learner']
    assert len(restarts) == 3, data['restarts']
    episodes = data['episodes']
    # the robot kept working through the kills: episodes were saved after each one
    for r in restarts:
        assert any(e['saved_s'] > r['at_s'] for e in episodes), (r, episodes)
    assert sum(e['dropped_steps'] for e in episodes) == 0
    log = (tmp_path / 'data' / 'logs')
    learner_logs = list(log.rglob(f'{ecu}_learner.log'))
    assert learner_logs, list(log.rglob('*'))
    text = learner_logs[0].read_text(errors='replace')
    assert text.count('resuming from v') >= 3, text[-3000:]
