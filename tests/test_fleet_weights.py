"""Reduction weights: normalised inverse error over the ECUs that pass the threshold."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from scarls.fleet import DEFAULT_EPS, cap_weights, passes_threshold, reduction_weights


def test_closed_form_and_sum_to_one():
    metrics = {'a': 0.01, 'b': 0.02, 'c': 0.04}
    w = reduction_weights(metrics, threshold=0.05, eps=1e-4)
    inv = {k: 1 / (e + 1e-4) for k, e in metrics.items()}
    total = sum(inv.values())
    assert w == pytest.approx({k: v / total for k, v in inv.items()}, rel=1e-12)
    assert math.fsum(w.values()) == pytest.approx(1.0, abs=1e-15)
    assert list(w) == ['a', 'b', 'c']  # order of the input
    assert w['a'] > w['b'] > w['c']  # lower error, more weight
    # halving the error (nearly) doubles the weight
    assert w['a'] / w['b'] == pytest.approx((0.02 + 1e-4) / (0.01 + 1e-4))


def test_failing_and_invalid_metrics_get_no_weight():
    metrics = {
        'ok': 0.01,
        'at_bar': 0.05,
        'above': 0.0500001,
        'nan': math.nan,
        'inf': math.inf,
        'none': None,
        'negative': -0.1,
    }
    w = reduction_weights(metrics, threshold=0.05)
    assert set(w) == {'ok', 'at_bar'}  # mse <= threshold passes
    assert math.fsum(w.values()) == pytest.approx(1.0)


def test_renormalised_over_the_participants():
    full = reduction_weights({0: 0.01, 1: 0.03, 2: 0.02})
    without_1 = reduction_weights({0: 0.01, 1: 0.3, 2: 0.02}, threshold=0.05)
    assert set(without_1) == {0, 2}
    ratio = full[0] / full[2]
    assert without_1[0] / without_1[2] == pytest.approx(ratio)
    assert without_1[0] + without_1[2] == pytest.approx(1.0)


def test_single_and_empty():
    assert reduction_weights({'x': 0.03}, 0.05) == {'x': 1.0}
    assert reduction_weights({'x': 0.3}, 0.05) == {}
    assert reduction_weights({}) == {}


def test_eps_bounds_a_zero_error_and_scale_invariance():
    w = reduction_weights({'perfect': 0.0, 'good': 0.01}, eps=DEFAULT_EPS)
    assert w['perfect'] == pytest.approx(0.0101 / 0.0102, rel=1e-9)
    assert 0 < w['good'] < 0.01
    # with a negligible eps, multiplying every error by a constant keeps the weights
    a = reduction_weights({'p': 0.01, 'q': 0.03}, eps=1e-12)
    b = reduction_weights({'p': 10.0, 'q': 30.0}, eps=1e-12)
    assert a == pytest.approx(b)


def test_no_threshold_and_bad_arguments():
    assert set(reduction_weights({'a': 5.0, 'b': 1.0})) == {'a', 'b'}
    for eps in (0.0, -1.0, math.nan, math.inf, True):
        with pytest.raises(ValueError, match='eps'):
            reduction_weights({'a': 1.0}, eps=eps)
    with pytest.raises(ValueError, match='threshold'):
        reduction_weights({'a': 1.0}, threshold=math.nan)


def test_passes_threshold_table():
    assert passes_threshold(0.05, 0.05)
    assert passes_threshold(0.0, 0.05)
    assert passes_threshold(7.0, None)
    assert not passes_threshold(0.051, 0.05)
    assert not passes_threshold(math.nan, 0.05)
    assert not passes_threshold(math.inf, None)
    assert not passes_threshold(None, 0.05)
    assert not passes_threshold(-1.0, None)
    assert not passes_threshold(True, None)  # type: ignore[arg-type]


@pytest.mark.parametrize(('weights', 'cap', 'want'), [
    ({'a': 0.99, 'b': 0.01}, 0.75, {'a': 0.75, 'b': 0.25}),          # a liar's tiny error
    ({'a': 0.6, 'b': 0.4}, 0.75, {'a': 0.6, 'b': 0.4}),              # under the cap: unchanged
    ({'a': 0.9, 'b': 0.06, 'c': 0.04}, 0.5, {'a': 0.5, 'b': 0.3, 'c': 0.2}),
    ({'a': 0.5, 'b': 0.49, 'c': 0.01}, 0.4, {'a': 0.4, 'b': 0.4, 'c': 0.2}),  # twice round
    ({'a': 0.9, 'b': 0.1}, 0.3, {'a': 0.5, 'b': 0.5}),               # cap below 1/n: 1/n
    ({'a': 1.0}, 0.75, {'a': 1.0}),
    ({}, 0.75, {}),
])
def test_cap_weights(weights, cap, want):
    got = cap_weights(weights, cap)
    assert list(got) == list(want) and got == pytest.approx(want)
    if got:
        assert math.fsum(got.values()) == pytest.approx(1.0)


def test_a_tiny_reported_error_takes_at_most_the_cap():
    w = cap_weights(reduction_weights({'liar': 0.0, 'a': 0.01, 'b': 0.02}), 0.75)
    assert w['liar'] == pytest.approx(0.75)
    assert w['a'] / w['b'] == pytest.approx((0.02 + DEFAULT_EPS) / (0.01 + DEFAULT_EPS))
    for bad in (0.0, -0.1, 1.5, math.nan, True):
        with pytest.raises(ValueError, match='max_share'):
            cap_weights({'a': 1.0}, bad)


@pytest.mark.multiproc
def test_package_import_is_light():
    code = (
        'import sys, scarls.fleet\n'
        'assert "torch" not in sys.modules, "torch imported"\n'
        'assert "rclpy" not in sys.modules, "rclpy imported"\n'
        'scarls.fleet.reduction_weights({"a": 0.1})\n'
    )
    subprocess.run([sys.executable, '-c', code], check=True, timeout=60)
