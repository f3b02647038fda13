"""More DDS participants on one host than Fast DDS's default discovery reaches: every process
is one participant, so a simulated fleet of 8 ECUs (5 nodes each, a clock, a monitor) has 42.
With ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST participants find each other only through the
well-known ports of the initial peer range; participants past it never find one another (an
8-ECU fleet ran with the last ECUs' schedulers blind to their learners). The shipped profile
widens the range to every participant a domain has room for."""

from __future__ import annotations

import time

import pytest

pytestmark = pytest.mark.ros
CROWD = 40


def test_forty_participants_on_one_host_all_discover_each_other(ros):
    contexts, nodes = [], []
    try:
        for i in range(CROWD):
            ctx = ros.Context()
            ros.init(args=[], context=ctx)
            contexts.append(ctx)
            nodes.append(ros.create_node(f'crowd{i}', context=ctx))
        want = {f'crowd{i}' for i in range(CROWD)}
        # the last ones created hold the highest participant ids: they must see everyone
        watchers = nodes[-4:]
        deadline = time.monotonic() + 90
        missing: dict = {}
        while time.monotonic() < deadline:
            missing = {w.get_name(): sorted(want - set(w.get_node_names()))
                       for w in watchers}
            if not any(missing.values()):
                break
            time.sleep(0.5)
        assert not any(missing.values()), f'not discovered after 90 s: {missing}'
    finally:
        for node in nodes:
            node.destroy_node()
        for ctx in contexts:
            ros.try_shutdown(context=ctx)


def test_fleet_refuses_more_ecus_than_one_host_discovers(tmp_path):
    import subprocess
    import sys
    root = tmp_path / 'fleet'
    run = subprocess.run([sys.executable, '-m', 'scarls.cli', 'fleet', '--ecus', '24',
                          '--minutes', '1', '--data-root', str(root)],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2, run.stderr
    assert '24 ECUs are 122 DDS participants' in run.stderr + run.stdout
    assert 'at most 23 ECUs per host' in run.stderr + run.stdout
    assert not root.exists()


def test_the_participant_limit_is_the_profiles_initial_peer_range():
    import xml.etree.ElementTree as ET

    from scarls.bringup import config_file
    from scarls.bringup.launcher import DDS_PARTICIPANTS_PER_HOST
    ns = {'dds': 'http://www.eprosima.com'}
    ranges = ET.parse(config_file('fastdds_shm.xml')).getroot().findall(
        './/dds:transport_descriptor[dds:type="UDPv4"]/dds:maxInitialPeersRange', ns)
    assert [int(r.text) for r in ranges] == [DDS_PARTICIPANTS_PER_HOST]
