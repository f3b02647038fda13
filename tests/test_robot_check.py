"""`scarls robot check`: the verdict from samples (pure), and the real command against a driver
process (it reads state and cameras of a 16-joint robot, and names a camera nobody publishes)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml

from scarls.bringup.launcher import parent_death_preexec
from scarls.robot import load_robot
from scarls.robot.check import CameraSamples, JointSamples, evaluate


def _samples(robot, *, rate=30.0, n=60, offset=0.0, q=None):
    js = JointSamples()
    cams = {c.name: CameraSamples() for c in robot.cameras}
    q = robot.home if q is None else q
    for i in range(n):
        t = 100.0 + i / rate
        js.recv.append(t + 0.002)
        js.stamps.append(t)
        js.positions.append(np.array(q))
        for s in cams.values():
            s.recv.append(t + 0.004)
            s.stamps.append(t + offset)
            s.shapes.add((96, 128))
            s.encodings.add('rgb8')
    return js, cams


def test_a_healthy_robot_passes():
    robot = load_robot('sim_dual7')
    rep = evaluate(robot, *_samples(robot), seconds=2.0)
    assert rep.ok, rep.problems
    assert rep.data['joint_states']['rate_hz'] == pytest.approx(30.0)
    assert set(rep.data['cameras']) == {'top', 'left', 'right'}


def test_problems_are_named():
    robot = load_robot('sim_dual6')
    q = robot.home.copy()
    q[1] = 5.0                                     # left_joint2 far beyond its limit
    js, cams = _samples(robot, rate=10.0, q=q)
    cams['right'] = CameraSamples()                 # silent camera
    rep = evaluate(robot, js, cams, seconds=2.0)
    text = '\n'.join(rep.problems)
    assert 'outside their limits' in text and 'left_joint2' in text
    assert 'joint states at 10.0 Hz' in text
    assert 'camera right: no frames on camera/right/image_raw' in text
    assert not rep.ok
    skewed = evaluate(robot, *_samples(robot, n=20, offset=2.0), seconds=1.0)
    assert [p for p in skewed.problems if 'nearest joint state' in p] == [
        f'camera {c}: frames are 1.683 s from the nearest joint state (unsynchronised clocks '
        'or stamps)' for c in ('top', 'left', 'right')]
    silent = evaluate(robot, JointSamples(), {}, seconds=2.0)
    assert any('no joint states' in p for p in silent.problems)


def _run(args, timeout=180):
    return subprocess.run([sys.executable, '-m', 'scarls.cli', *args], capture_output=True,
                          text=True, timeout=timeout, preexec_fn=parent_death_preexec())


@pytest.mark.multiproc
def test_offline_check_and_bad_files(tmp_path):
    out = _run(['robot', 'check', '--robot', 'agibot_g1', '--offline'])
    assert out.returncode == 0, out.stderr
    assert 'agibot_g1: left 7-DoF + gripper, right 7-DoF + gripper; 16 joints' in out.stdout
    assert 'right_gripper' in out.stdout and 'radians' in out.stdout
    bad = tmp_path / 'bad.yaml'
    data = load_robot('sim_dual6').to_dict()
    data['arms'][0]['lower'] = [0.0]
    bad.write_text(yaml.safe_dump(data))
    out = _run(['robot', 'check', '--robot', str(bad), '--offline'])
    assert out.returncode == 2
    assert 'arms[0].lower: must be a list of 6 numbers' in out.stderr


@pytest.mark.ros
def test_check_reads_a_16_joint_robot_and_names_a_silent_camera(tmp_path, domain_id):
    data = load_robot('sim_dual7').to_dict()
    data['name'] = 'sim_dual7_extra_camera'
    data['cameras'].append({'name': 'wrist', 'source': 'ros', 'topic': '/nobody/image_raw',
                            'height': 96, 'width': 128})
    path = tmp_path / 'robot.yaml'
    path.write_text(yaml.safe_dump(data))
    report = tmp_path / 'report.json'
    out = _run(['robot', 'check', '--robot', str(path), '--seconds', '4',
                '--domain-id', str(domain_id), '--namespace', 'chk', '--json', str(report)])
    assert out.returncode == 1, out.stdout + out.stderr
    got = json.loads(report.read_text())
    assert got['robot']['name'] == 'sim_dual7_extra_camera'
    assert len(got['robot']['joint_names']) == 16
    assert got['joint_states']['messages'] > 0 and got['joint_states']['malformed'] == 0
    assert got['joint_states']['outside_limits'] == []
    for cam in ('top', 'left', 'right'):
        assert got['cameras'][cam]['messages'] > 0
        assert got['cameras'][cam]['shapes'] == [[96, 128]]
    assert got['cameras']['wrist']['messages'] == 0
    assert got['problems'] == [
        'camera wrist: no frames on /nobody/image_raw in 4 s'], got['problems']
