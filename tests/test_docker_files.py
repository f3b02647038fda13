"""docker/compose.yaml (a two-ECU fleet) and docker/fleet-ecu.sh, read as compose reads them.

The image itself is built and smoke-tested by docker/build.sh (minutes; docs/CONTAINER.md has
a measured run); here: every service runs that image on the host network with the fleet's
environment - one ROS domain, the rendezvous the store listens on, distinct ranks that cover
the world size, one data folder and ECU id each - and the ECU entry script hands `scarls ecu`
the project's parameters with the learner in the fleet.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from scarls.bringup import default_params_file, load_params_file

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / 'docker' / 'compose.yaml'
ENTRY = ROOT / 'docker' / 'fleet-ecu.sh'


def _services() -> dict:
    return yaml.safe_load(COMPOSE.read_text())['services']


def _arg(command: list[str], flag: str) -> str:
    return command[command.index(flag) + 1]


def test_compose_runs_a_two_ecu_fleet_from_the_image():
    services = _services()
    ecus = {name: s for name, s in services.items() if name.startswith('ecu')}
    assert set(services) == {'setup', 'rendezvous', *ecus} and len(ecus) == 2
    for name, service in services.items():
        assert service['image'] == 'localhost/scarls:latest', name
        assert service['network_mode'] == 'host' and service['ipc'] == 'host', name
        assert service['environment']['ROS_DOMAIN_ID'] == '42', name
        assert './fleet-data:/fleet' in service['volumes'], name
    rendezvous = services['rendezvous']['command']
    assert rendezvous[:4] == ['python', '-m', 'scarls.fleet', 'rendezvous']
    addr, port = _arg(rendezvous, '--addr'), _arg(rendezvous, '--port')
    ranks, ids, roots = set(), set(), set()
    for name, service in ecus.items():
        env, cmd = service['environment'], service['command']
        assert (env['MASTER_ADDR'], env['MASTER_PORT']) == (addr, port), name
        assert int(env['WORLD_SIZE']) == len(ecus), name
        ranks.add(int(env['RANK']))
        assert env['SCARLS_FLEET_KEY_FILE'].startswith('/fleet/'), name
        assert env['OFFLINE_ROOT'].startswith('/fleet/'), name
        assert cmd[0] == '/opt/scarls/docker/fleet-ecu.sh', name
        assert _arg(cmd, '--ecu-id') == name
        ids.add(_arg(cmd, '--ecu-id'))
        roots.add(_arg(cmd, '--data-root'))
        assert service['depends_on']['setup']['condition'] == 'service_completed_successfully'
        assert 'rendezvous' in service['depends_on']
    assert ranks == set(range(len(ecus))) and len(ids) == len(roots) == len(ecus)
    setup = ' '.join(services['setup']['command'])
    key = ecus['ecu0']['environment']['SCARLS_FLEET_KEY_FILE']
    offline = ecus['ecu0']['environment']['OFFLINE_ROOT']
    assert f'keygen {key}' in setup and f'--root {offline}' in setup
    # the Dockerfile puts the repository where the services expect it
    dockerfile = (ROOT / 'docker' / 'Dockerfile').read_text()
    assert re.search(r'^WORKDIR /opt/scarls$', dockerfile, re.M)
    assert re.search(r'^ARG BASE=', dockerfile, re.M) and 'FROM ${BASE}' in dockerfile


@pytest.mark.multiproc
def test_fleet_entry_script_puts_the_learner_in_the_fleet(tmp_path):
    assert os.access(ENTRY, os.X_OK)
    params = tmp_path / 'params.yaml'
    env = dict(os.environ, PATH=f'{Path(sys.executable).parent}:{os.environ["PATH"]}',
               PARAMS_OUT=str(params), OFFLINE_ROOT='/fleet/offline')
    # the script ends in `scarls ecu --learn --params-file <params> "$@"`: with --help, the real
    # command line parses everything and stops there
    run = subprocess.run(['sh', str(ENTRY), '--ecu-id', 'ecu1', '--help'], env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert 'usage: scarls ecu' in run.stdout
    merged = load_params_file(params)   # the project's own check of a parameters file
    shipped = load_params_file(default_params_file())
    learner = merged['/**/learner']['ros__parameters']
    assert learner['fleet'] is True and learner['offline_root'] == '/fleet/offline'
    for node, values in shipped.items():   # everything else as shipped
        for key, value in values['ros__parameters'].items():
            if (node, key) not in (('/**/learner', 'fleet'), ('/**/learner', 'offline_root')):
                assert merged[node]['ros__parameters'][key] == value, (node, key)
