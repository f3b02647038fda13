"""`colcon build` of the whole repository into an install space, used as a ROS 2 user would.

A copy of the working tree (what `git clone` would give, plus uncommitted files) is built with
plain `colcon build` at its root (colcon_defaults.yaml names both packages, colcon.meta their
arguments), against the venv's ROS 2 (AMENT_PREFIX_PATH, like a sourced /opt/ros/<distro>).
Then, with only `install/local_setup.sh` sourced in bash: the launch files, parameters, RViz
and Foxglove configurations and robot files are where `ros2 launch scarls ...` looks,
`import scarls` / `scarls_interfaces` resolve to the install space, ament_index finds both
packages, the command-line executables answer `--help`, and the ECU's node executables in
`lib/scarls` - what `ros2 run scarls <node>` and launch_ros start - come up (lifecycle nodes
active) and stop cleanly on SIGINT.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rosutil import Probe

from scarls.bringup import ecu_nodes
from scarls.bringup.launcher import parent_death_preexec

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
NODES = ('driver', 'actor', 'teleop', 'scheduler', 'learner')
TOOLS = ('scarls', 'foxglove', 'dashboard', 'camera', 'clock')
NS = 'colcon'


def _copy_working_tree(dest: Path) -> None:
    files = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others',
                            '--exclude-standard'], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split('\0')
    for rel in filter(None, files):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def _user_env(domain_id: int) -> dict:
    """A shell environment with ROS 2 (the venv, as a sourced distro would be) and nothing of
    scarls on any path: what the install space adds is all there is."""
    keep = ('HOME', 'LANG', 'TMPDIR', 'SCARLS_TEST_RUN', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
            'FASTDDS_DEFAULT_PROFILES_FILE', 'RMW_IMPLEMENTATION')
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.update(PATH=f'{VENV / "bin"}:/usr/bin:/bin', VIRTUAL_ENV=str(VENV),
               AMENT_PREFIX_PATH=str(VENV), ROS_DOMAIN_ID=str(domain_id),
               PYTHONUNBUFFERED='1')
    return env


def _sourced(install: Path, command: str) -> list[str]:
    return ['bash', '-c', f'source {install}/local_setup.sh && {command}']


@pytest.fixture(scope='module')
def workspace(tmp_path_factory, domain_id):
    ws = tmp_path_factory.mktemp('ws')
    _copy_working_tree(ws)
    env = _user_env(domain_id)
    run = subprocess.run(['colcon', 'build', '--event-handlers', 'console_cohesion+'],
                         cwd=ws, env=env, capture_output=True, text=True, timeout=1500)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    assert 'Finished <<< scarls_interfaces' in run.stdout, run.stdout[-4000:]
    assert 'Finished <<< scarls ' in run.stdout, run.stdout[-4000:]
    return ws, ws / 'install', env


@pytest.mark.timeout(1800)   # the interface build: ~1 min on 2 quiet cores, minutes under load
def test_install_space_layout(workspace):
    _, install, _ = workspace
    prefix, share = install / 'scarls', install / 'scarls' / 'share' / 'scarls'
    for exe in (*NODES, *TOOLS):
        path = prefix / 'lib' / 'scarls' / exe
        assert path.is_file() and os.access(path, os.X_OK), path
        assert path.read_text().startswith(f'#!{VENV / "bin" / "python"}'), path
    for rel in ('launch/ecu.launch.py', 'launch/fleet.launch.py', 'config/ecu.yaml',
                'config/scarls.rviz', 'config/foxglove_layout.json', 'config/fastdds_shm.xml',
                'package.xml'):
        assert (share / rel).is_file(), rel
    robots = {p.stem for p in (share / 'config' / 'robots').glob('*.yaml')}
    assert {'sim_dual6', 'sim_dual7', 'arx5_pair', 'agibot_g1'} <= robots
    index = 'share/ament_index/resource_index/packages'
    assert (prefix / index / 'scarls').is_file()
    assert (install / 'scarls_interfaces' / index / 'scarls_interfaces').is_file()
    assert (install / 'scarls_interfaces' / 'share' / 'scarls_interfaces' / 'msg'
            / 'ActorState.msg').is_file()


@pytest.mark.timeout(1800)
def test_sourced_install_space_resolves_to_itself(workspace, tmp_path):
    _, install, env = workspace
    script = (
        'import json, scarls, scarls_interfaces.msg\n'
        'from ament_index_python.packages import get_package_prefix as prefix\n'
        'from ament_index_python.packages import get_package_share_directory as share\n'
        'from scarls.bringup import default_params_file\n'
        'from scarls.robot import load_robot\n'
        'print(json.dumps({"scarls": scarls.__file__, '
        '"interfaces": scarls_interfaces.msg.__file__, "share": share("scarls"), '
        '"prefix": prefix("scarls"), "ifshare": share("scarls_interfaces"), '
        '"params": str(default_params_file()), "robot": load_robot("sim_dual7").name}))\n')
    out = subprocess.run(_sourced(install, f'python -c {shlex.quote(script)}'), cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got['scarls'].startswith(str(install / 'scarls' / 'lib')), got
    assert got['interfaces'].startswith(str(install / 'scarls_interfaces' / 'lib')), got
    assert got['share'] == str(install / 'scarls' / 'share' / 'scarls')
    assert got['prefix'] == str(install / 'scarls')
    assert got['ifshare'] == str(install / 'scarls_interfaces' / 'share' / 'scarls_interfaces')
    assert got['params'] == str(install / 'scarls' / 'share' / 'scarls' / 'config' / 'ecu.yaml')
    assert got['robot'] == 'sim_dual7'
    for tool in ('scarls', 'foxglove', 'dashboard'):
        exe = install / 'scarls' / 'lib' / 'scarls' / tool
        run = subprocess.run(_sourced(install, f'{exe} --help'), cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 0 and 'usage:' in run.stdout, (tool, run.stderr[-2000:])
    listed = subprocess.run(_sourced(install, 'scarls robot list'), cwd=tmp_path,
                            env=dict(env, PATH=f'{install}/scarls/lib/scarls:{env["PATH"]}'),
                            capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0 and 'sim_dual6' in listed.stdout, listed.stderr[-2000:]


@pytest.mark.timeout(1800)
def test_node_executables_start_and_stop(workspace, ros, tmp_path):
    _, install, env = workspace
    lib = install / 'scarls' / 'lib' / 'scarls'
    params = install / 'scarls' / 'share' / 'scarls' / 'config' / 'ecu.yaml'
    specs = [s for s in ecu_nodes(NS, data_root=str(tmp_path / 'data')) if s.name in NODES]
    assert [s.name for s in specs] == ['driver', 'scheduler', 'actor', 'teleop']
    procs: dict[str, subprocess.Popen] = {}
    probe = Probe(NS, 'colcon_probe')
    try:
        for spec in specs:   # as `ros2 run scarls <node> --ros-args ...` / launch_ros start them
            cmd = shlex.join([str(lib / spec.executable), *spec.ros_args(str(params))])
            log = open(tmp_path / f'{spec.name}.log', 'wb')  # noqa: SIM115 - the child owns it
            procs[spec.name] = subprocess.Popen(
                _sourced(install, f'exec {cmd}'), cwd=tmp_path, env=env, stdout=log,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                preexec_fn=parent_death_preexec())
            log.close()
        for name in ('driver', 'scheduler', 'actor'):
            probe.wait_for(lambda n=name: _active(probe, n), 180, f'{name} active')
        probe.wait_for(lambda: 'teleop' in probe.node.get_node_names(), 60, 'teleop up')
        for name, proc in procs.items():
            assert proc.poll() is None, (name, (tmp_path / f'{name}.log').read_text()[-2000:])
    finally:
        probe.close()
        for proc in procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        codes = {}
        for name, proc in procs.items():
            try:
                codes[name] = proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait(timeout=10)
    assert codes == {name: 0 for name in procs}, {
        n: (c, (tmp_path / f'{n}.log').read_text()[-1500:]) for n, c in codes.items()}


def _active(probe: Probe, name: str) -> bool:
    try:
        return probe.lifecycle_state(name, timeout=5) == 'active'
    except AssertionError:
        return False
