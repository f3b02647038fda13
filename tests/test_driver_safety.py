"""Tests of the driver's safety core: limits, filter, watchdog, e-stop."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scarls.driver.safety import (
    CommandRejected,
    ConfigError,
    DriverError,
    EStop,
    JointLimits,
    SafetyFilter,
    Watchdog,
)

LIMITS = JointLimits([-1.0, -2.0, 0.0], [1.0, 2.0, 1.0], [1.0, 3.0, 2.0])
DT = 0.1


def test_limits_validation() -> None:
    with pytest.raises(ConfigError, match='lower must be < upper'):
        JointLimits([0.0, 1.0], [1.0, 1.0], [1.0, 1.0])
    with pytest.raises(ConfigError, match='equal length'):
        JointLimits([0.0], [1.0, 2.0], [1.0])
    with pytest.raises(ConfigError, match='max_velocity'):
        JointLimits([0.0], [1.0], [0.0])
    assert LIMITS.size == 3
    assert JointLimits([-1.0, -2.0, 0.0], [1.0, 2.0, 1.0], [1.0, 3.0, 2.0]) == LIMITS
    with pytest.raises(ValueError):
        LIMITS.lower[0] = 5.0  # read-only
    assert issubclass(ConfigError, DriverError)


def test_filter_passes_safe_target_unchanged() -> None:
    f = SafetyFilter(LIMITS, DT)
    result = f.filter([0.05, 0.1, 0.5], [0.0, 0.0, 0.45])
    np.testing.assert_array_equal(result.command, [0.05, 0.1, 0.5])
    assert not result.clamped and result.reasons == ()


def test_filter_clamps_position() -> None:
    f = SafetyFilter(LIMITS, DT, joint_names=['a', 'b', 'c'])
    result = f.filter([5.0, 0.0, -1.0], [0.95, 0.0, 0.1])
    np.testing.assert_allclose(result.command, [1.0, 0.0, 0.0])
    assert result.clamped
    assert result.reasons == ('position limit: a, c',)


def test_filter_limits_velocity_relative_to_current() -> None:
    f = SafetyFilter(LIMITS, DT, joint_names=['a', 'b', 'c'])
    result = f.filter([1.0, -2.0, 0.5], [0.0, 0.0, 0.5])
    np.testing.assert_allclose(result.command, [0.1, -0.3, 0.5])
    assert result.reasons == ('velocity limit: a, b',)


def test_filter_leads_back_from_outside_limits() -> None:
    f = SafetyFilter(LIMITS, DT)
    result = f.filter([3.0, 0.0, 0.0], [1.5, 0.0, 0.0])
    np.testing.assert_allclose(result.command, [1.4, 0.0, 0.0])


@pytest.mark.parametrize('target', [[0.0, np.nan, 0.0], [0.0, np.inf, 0.0], [0.0, 0.0]])
def test_filter_rejects_bad_targets(target: list[float]) -> None:
    f = SafetyFilter(LIMITS, DT, joint_names=['a', 'b', 'c'])
    with pytest.raises(CommandRejected):
        f.filter(target, [0.0, 0.0, 0.0])
    with pytest.raises(CommandRejected, match='current'):
        f.filter([0.0, 0.0, 0.0], [0.0, np.nan, 0.0])


def test_filter_config_errors() -> None:
    with pytest.raises(ConfigError):
        SafetyFilter(LIMITS, 0.0)
    with pytest.raises(ConfigError):
        SafetyFilter(LIMITS, DT, joint_names=['a'])


@settings(max_examples=200, deadline=None)
@given(
    target=st.lists(st.floats(-10, 10), min_size=3, max_size=3),
    current=st.lists(st.floats(-3, 3), min_size=3, max_size=3),
)
def test_filter_invariants(target: list[float], current: list[float]) -> None:
    f = SafetyFilter(LIMITS, DT)
    cmd = f.filter(target, current).command
    cur = np.array(current)
    assert np.all(np.abs(cmd - cur) <= LIMITS.max_velocity * DT + 1e-12)
    inside = LIMITS.contains(cur)
    if inside:
        assert LIMITS.contains(cmd, tol=1e-12)


def test_watchdog() -> None:
    with pytest.raises(ConfigError):
        Watchdog(0.0)
    w = Watchdog(0.5)
    assert w.expired(0.0) and w.last_feed is None
    w.feed(10.0)
    assert w.last_feed == 10.0
    assert not w.expired(10.4)
    assert not w.expired(10.5)
    assert w.expired(10.51)
    w.feed(11.0)
    assert not w.expired(11.2)
    w.reset()
    assert w.expired(11.2)


def test_estop_latch() -> None:
    e = EStop()
    assert not e.engaged and e.reason is None
    e.engage('operator button')
    e.engage('watchdog')
    assert e.engaged and e.reason == 'operator button'
    e.release()
    assert not e.engaged and e.reason is None
    e.engage('watchdog')
    assert e.reason == 'watchdog'
