"""`scarls status` hears a running ECU's heartbeat over DDS (a real ECU in separate processes)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from rosutil import Probe, start_nodes
from scarls_interfaces.msg import EcuStatus

from scarls.bringup import ecu_nodes
from scarls.bringup.launcher import parent_death_preexec

pytestmark = pytest.mark.ros


def test_status_lists_the_running_ecu(ros, node_group, tmp_path, domain_id):
    image = {'image_height': 32, 'image_width': 40}
    specs = ecu_nodes('statustest', data_root=str(tmp_path / 'data'), extra={
        'driver': image, 'teleop': {**image, 'episodes': 1, 'max_steps': 120}})
    probe = Probe('statustest')
    beats: list[EcuStatus] = []
    from scarls.ros import qos
    probe.node.create_subscription(EcuStatus, '/fleet/status', beats.append, qos.EVENTS)
    try:
        start_nodes(node_group, specs)
        probe.wait_for(lambda: any(b.episodes >= 1 for b in beats) or node_group.dead(), 120,
                       'a heartbeat counting the saved episode')
        assert not node_group.dead(), [d.tail() for d in node_group.dead()]
        out = subprocess.run(
            [sys.executable, '-m', 'scarls.cli', 'status', '--domain-id', str(domain_id),
             '--seconds', '8', '--json'], capture_output=True, text=True, timeout=60,
            preexec_fn=parent_death_preexec())
    finally:
        probe.close()
    assert out.returncode == 0, out.stdout + out.stderr
    views = {v['ecu_id']: v for v in json.loads(out.stdout)}
    ecu = views['statustest']
    assert ecu['episodes'] == 1 and ecu['task'] == 'pick_cube'
    assert ecu['phase'] in ('IDLE', 'SUCCESS', 'FAIL', 'INFERENCE', 'HUMANINTERVENTION')
    # a heartbeat heard while it listened (8 s), whatever the load
    assert ecu['heartbeat_age_s'] is not None and ecu['heartbeat_age_s'] < 8.0
    assert 0.0 <= ecu['recent_intervention_rate'] <= 1.0
