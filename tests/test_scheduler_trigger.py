from __future__ import annotations

import pytest

from scarls.scheduler.trigger import TrainTrigger, TriggerConfig, TriggerConfigError


def test_quality_checks():
    t = TrainTrigger(TriggerConfig(min_steps=10, max_dropped_fraction=0.1))
    assert t.check_quality(100, 0, 'success').ok
    assert not t.check_quality(5, 0, 'success').ok
    bad = t.check_quality(90, 20, 'fail')
    assert not bad.ok and '20 of 110' in bad.reason
    assert not t.check_quality(50, 0, 'exploded').ok


def test_interval_and_pending_data():
    t = TrainTrigger(TriggerConfig(min_interval_s=10.0, min_new_episodes=2))
    assert not t.poll(0.0)
    t.on_episode(50, 0, 'success')
    assert not t.poll(1.0)               # one episode is not enough
    t.on_episode(50, 0, 'fail')
    assert t.poll(2.0) and t.pending == 0
    t.on_episode(50, 0, 'success')
    t.on_episode(50, 0, 'success')
    assert not t.poll(5.0)               # T_interval not elapsed: stays pending
    assert t.pending == 2
    assert t.poll(12.5) and t.triggers == 2


def test_bad_episodes_do_not_count_and_retry_keeps_data():
    t = TrainTrigger(TriggerConfig(min_interval_s=0.0))
    t.on_episode(3, 0, 'success')
    assert not t.poll(0.0)
    t.on_episode(30, 0, 'success')
    assert t.poll(1.0)
    t.retry_later(1)
    assert t.pending == 1 and t.poll(2.0)


def test_config_validation():
    with pytest.raises(TriggerConfigError):
        TriggerConfig(min_interval_s=-1)
    with pytest.raises(TriggerConfigError):
        TriggerConfig(max_dropped_fraction=2)
