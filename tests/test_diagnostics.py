"""The pure part of /diagnostics: levels, rate meters and every node's status rules."""

from __future__ import annotations

import math

import pytest

from scarls.diagnostics import Level, RateMeter, Status, rules, worst


def test_status_values_are_text():
    st = Status.of(Level.WARN, 'm', a=1, b=0.123456, c=True, d=math.nan, e='x')
    assert st.values == {'a': '1', 'b': '0.1235', 'c': 'true', 'd': 'nan', 'e': 'x'}
    assert st.with_values(f=2).values['f'] == '2' and 'f' not in st.values


def test_worst_orders_by_severity():
    assert worst([], 'fine') == (Level.OK, 'fine')
    level, message = worst([(Level.WARN, 'w'), (Level.ERROR, 'e')], 'fine')
    assert level is Level.ERROR and message == 'e; w'


def test_rate_meter():
    meter = RateMeter(window_s=2.0)
    assert meter.rate(0.0) == 0.0 and meter.max_interval(0.0) == math.inf
    for i in range(31):
        meter.tick(10.0 + i / 30)
    assert meter.rate(11.0) == pytest.approx(30.0)
    assert meter.max_interval(11.0) == pytest.approx(1 / 30)
    assert meter.max_interval(11.5) == pytest.approx(0.5)   # nothing since the last tick
    assert meter.rate(20.0) == 0.0 and meter.total == 31     # the window moved on
    with pytest.raises(ValueError):
        RateMeter(window_s=0)


def _driver(**kw):
    args = dict(state='ok', reason='', ticks={'ok': 5, 'estopped': 0}, estopped=False,
                fault=None, backend='SimBackend', robot='sim_dual6', rate_hz=30.0,
                camera_rates={'top': 30.0}, expected_camera_hz=30.0)
    return rules.driver_status(**{**args, **kw})


def test_driver_levels():
    assert _driver().level is Level.OK
    assert _driver(estopped=True, reason='service request').level is Level.ERROR
    assert _driver(fault='motor 3 over temperature').message.startswith('robot fault')
    assert _driver(state='holding', reason='watchdog: no joint_command').level is Level.WARN
    assert _driver(state='holding', reason='waiting for a command').level is Level.OK
    slow = _driver(camera_rates={'top': 10.0})
    assert slow.level is Level.WARN and 'camera top' in slow.message
    both = _driver(estopped=True, camera_rates={'top': 0.0})
    assert both.level is Level.ERROR and both.message.startswith('e-stop')
    assert _driver(estopped=True).values['safety_state'] == 'estopped'
    assert _driver().values['camera_top_hz'] == '30'


def test_camera_levels():
    st = lambda hz, fps=30.0: rules.camera_status(  # noqa: E731
        camera='wrist', rate_hz=hz, expected_hz=fps, published=3, source='opencv')
    assert st(0.0).level is Level.ERROR
    assert st(10.0).level is Level.WARN
    assert st(29.0).level is Level.OK
    assert st(5.0, fps=0.0).level is Level.OK   # the device's own rate: nothing to compare


def _recorder(**kw):
    args = dict(phase='INFERENCE', saved=3, open_episode=4, pending_steps=0, queue_depth=2,
                queue_capacity=300, writer_dropped=0, episode_dropped=0, lost_episodes=0,
                lost_steps=0, recording_problem='', deployed_version=1)
    return rules.recorder_status(**{**args, **kw})


def test_recorder_levels():
    assert _recorder().level is Level.OK
    assert _recorder(queue_depth=250).level is Level.WARN
    assert _recorder(episode_dropped=2).level is Level.WARN
    assert _recorder(lost_episodes=1, lost_steps=40).level is Level.WARN
    assert _recorder(recording_problem='disk full').level is Level.ERROR
    assert 'waiting' in _recorder(open_episode=None).message
    unready = _recorder(waiting_for=['camera top (no frame yet)'])
    assert unready.level is Level.WARN and 'not ready to record' in unready.message
    assert 'camera top' in unready.message


def _learner(**kw):
    args = dict(state='idle', detail='', rounds=2, loss=0.1, metric=0.2, version=2,
                approved=True, deployed_version=2, fleet=None)
    return rules.learner_status(**{**args, **kw})


def test_learner_levels():
    assert _learner().level is Level.OK and _learner().values['fleet'] == 'false'
    assert _learner(state='failed', detail='cannot start: x').level is Level.ERROR
    assert _learner(detail='last round failed: OSError()').level is Level.WARN
    fleet = {'rank': 1, 'world_size': 2, 'round': 3, 'status': 'reduced', 'reason': '',
             'participants': ('ecu0', 'ecu1')}
    ok = _learner(fleet=fleet)
    assert ok.level is Level.OK and ok.values['fleet_participants'] == 'ecu0,ecu1'
    assert ok.values['fleet_rank'] == '1' and ok.values['fleet_world_size'] == '2'
    assert _learner(fleet={**fleet, 'status': 'missed'}).level is Level.WARN


def _actor(**kw):
    args = dict(phase='INFERENCE', episode_id=2, steps=40, intervention_steps=3,
                model_version=1, policy='mlp', in_episode=True, tick_rate_hz=30.0,
                max_tick_gap_s=0.04, expected_hz=30.0, ticks=100, stale_observations=0,
                stale_in_window=0, sync='done', sync_reason='', driver_state='ok')
    return rules.actor_status(**{**args, **kw})


def test_actor_levels():
    assert _actor().level is Level.OK
    assert _actor(tick_rate_hz=20.0).level is Level.WARN
    assert _actor(max_tick_gap_s=0.2).level is Level.WARN
    assert _actor(tick_rate_hz=0.0, in_episode=False, max_tick_gap_s=math.inf).level \
        is Level.OK
    assert _actor(stale_in_window=3).level is Level.WARN
    assert _actor(sync='failed', sync_reason='no scheduler').level is Level.WARN
    assert _actor(max_tick_gap_s=math.inf).values['max_tick_gap_ms'] == '-1'


def test_teleop_levels():
    st = lambda **kw: rules.teleop_status(**{**dict(  # noqa: E731
        source='scripted', phase='IDLE', episode_id=1, have_joint_state=True, awaiting='',
        awaiting_s=0.0), **kw})
    assert st().level is Level.OK
    assert st(have_joint_state=False).level is Level.WARN
    assert st(awaiting='START', awaiting_s=1.0).level is Level.OK
    assert st(awaiting='START', awaiting_s=9.0).level is Level.WARN
