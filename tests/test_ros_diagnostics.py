"""Every node of a running ECU publishes its health on /diagnostics (diagnostic_msgs), with the
keys a diagnostics viewer shows, and the level follows the node's state: an e-stop makes the
driver's status an ERROR (and its release clears it), a learner that cannot start reports an
ERROR with the reason while unconfigured."""

from __future__ import annotations

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rosutil import Probe, start_nodes
from std_srvs.srv import SetBool

from scarls.bringup import ecu_nodes
from scarls.ros import qos

pytestmark = pytest.mark.ros
NS = 'diag'

EXPECTED = {
    f'{NS}/driver: safety': {'safety_state', 'reason', 'camera_top_hz', 'camera_left_hz',
                             'camera_right_hz', 'estopped_ticks', 'fault_ticks', 'rate_hz',
                             'lifecycle'},
    f'{NS}/scheduler: recorder': {'actor_phase', 'episodes_saved', 'pending_steps',
                                  'writer_queue', 'writer_queue_capacity', 'writer_dropped',
                                  'episode_dropped_steps', 'lost_episodes', 'lifecycle'},
    f'{NS}/actor: control': {'phase', 'episode_id', 'tick_rate_hz', 'max_tick_gap_ms',
                             'stale_observations', 'model_version', 'driver_state',
                             'lifecycle'},
    f'{NS}/teleop: operator': {'source', 'actor_phase', 'awaiting_signal', 'lifecycle'},
    f'{NS}/learner: learner': {'state', 'detail', 'rounds', 'fleet', 'lifecycle'},
}
OK, ERROR = DiagnosticStatus.OK, DiagnosticStatus.ERROR


@pytest.mark.timeout(420)   # the waits below add up to more than the default
def test_every_node_reports_on_diagnostics_and_an_estop_is_an_error(ros, node_group, tmp_path):
    # the learner has no demonstrations under this data root: it cannot start, and says so
    specs = ecu_nodes(NS, data_root=str(tmp_path / 'data'), learner=True)
    start_nodes(node_group, specs)
    probe = Probe(NS, 'diagnostics_probe')
    latest: dict[str, DiagnosticStatus] = {}
    history: list[DiagnosticStatus] = []

    def on_diagnostics(msg: DiagnosticArray) -> None:
        for status in msg.status:
            if status.name.startswith(f'{NS}/'):
                latest[status.name] = status
                history.append(status)

    probe.node.create_subscription(DiagnosticArray, '/diagnostics', on_diagnostics,
                                   qos.DIAGNOSTICS)
    values = lambda name: {kv.key: kv.value for kv in latest[name].values}  # noqa: E731
    try:
        def all_reporting() -> bool:
            return set(EXPECTED) <= set(latest) and all(
                values(n).get('lifecycle') == 'active' for n in EXPECTED
                if not n.endswith('learner'))
        probe.wait_for(all_reporting, 120, 'a status from every node, its lifecycle active')
        for name, keys in EXPECTED.items():
            assert keys <= set(values(name)), (name, sorted(values(name)))
            assert latest[name].hardware_id == NS, name

        learner = latest[f'{NS}/learner: learner']
        assert learner.level == ERROR, learner
        assert 'no demonstrations' in learner.message, learner.message
        assert values(f'{NS}/learner: learner')['lifecycle'] == 'unconfigured'

        driver = f'{NS}/driver: safety'
        # the scripted operator runs episodes: the driver follows commands and the cameras run
        probe.wait_for(lambda: latest[driver].level == OK
                       and values(driver)['safety_state'] in ('ok', 'clamped')
                       and float(values(driver)['camera_top_hz']) > 0, 120,
                       'the driver following commands with its cameras running')
        assert float(values(f'{NS}/actor: control')['tick_rate_hz']) > 0

        assert probe.call(SetBool, 'driver/estop', SetBool.Request(data=True)).success
        probe.wait_for(lambda: latest[driver].level == ERROR, 30, 'an ERROR from the driver')
        assert 'e-stop' in latest[driver].message, latest[driver].message
        assert values(driver)['safety_state'] == 'estopped'
        assert int(values(driver)['estopped_ticks']) > 0

        assert probe.call(SetBool, 'driver/estop', SetBool.Request(data=False)).success
        probe.wait_for(lambda: latest[driver].level != ERROR, 30,
                       'the driver ERROR to clear once the e-stop is released')
        assert values(driver)['safety_state'] != 'estopped'
    finally:
        probe.close()
