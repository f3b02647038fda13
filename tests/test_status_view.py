from __future__ import annotations

from scarls.bringup.status import EcuView, format_table


def test_table_marks_silent_ecus_and_shows_the_last_round():
    now = 100.0
    views = [EcuView('ecu1', phase='INFERENCE', episodes=12, successes_without_help=3,
                     recent_success_rate=0.25, recent_intervention_rate=0.4, model_version=3,
                     deployed_version=4, seen_at=99.5,
                     last_round={'round': 7, 'status': 'reduced', 'participants': ['a', 'b'],
                                 'version': 4, 'approved': True}),
             EcuView('ecu0', seen_at=90.0), EcuView('ecu2', seen_at=99.0, recording_ready=False)]
    lines = format_table(views, now).splitlines()
    assert lines[1].startswith('ecu0') and 'SILENT' in lines[1]
    assert lines[2].startswith('ecu1') and 'INFERENCE' in lines[2] and 'SILENT' not in lines[2]
    assert '#7 reduced (2 ECUs, v4)' in lines[2] and '25%' in lines[2] and '40%' in lines[2]
    assert lines[3].startswith('ecu2') and 'NOT RECORDING' in lines[3]
    assert 'NOT RECORDING' not in lines[1] + lines[2]
    assert 'no ECU heard' in format_table([], now)
    d = views[0].to_dict(now)
    assert d['heartbeat_age_s'] == 0.5 and 'seen_at' not in d
