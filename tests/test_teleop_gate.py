from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scarls.teleop.gate import Decision, DecisionKind, GateConfig, InterventionGate

D = 14
CFG = GateConfig(
    deviation_threshold=0.3,
    deviation_ticks=3,
    release_threshold=0.05,
    min_takeover_ticks=5,
    fail_margin_steps=10,
    max_steps=100,
)
ZERO = np.zeros(D)


def vec(x: float, joint: int = 0) -> np.ndarray:
    v = np.zeros(D)
    v[joint] = x
    return v


def upd(
    gate,
    *,
    policy=ZERO,
    expert=ZERO,
    q=ZERO,
    step=0,
    intervening=False,
    success=False,
    failed=False,
) -> Decision:
    return gate.update(
        policy_action=policy,
        expert_action=expert,
        current_q=q,
        step=step,
        intervening=intervening,
        task_success=success,
        task_failed=failed,
    )


def test_success_and_fail_take_precedence():
    gate = InterventionGate(CFG)
    assert upd(gate, policy=vec(5.0), success=True, failed=True).kind is DecisionKind.SUCCESS
    assert upd(gate, failed=True).kind is DecisionKind.FAIL
    assert upd(gate, failed=True, intervening=True).kind is DecisionKind.FAIL
    d = upd(gate, step=100)
    assert d.kind is DecisionKind.FAIL and 'step limit' in d.reason
    assert upd(gate, step=99).kind is not DecisionKind.FAIL


def test_intervene_after_consecutive_deviation():
    gate = InterventionGate(CFG)
    far = vec(0.31)
    assert upd(gate, policy=far, step=1).kind is DecisionKind.NONE
    assert upd(gate, policy=far, step=2).kind is DecisionKind.NONE
    d = upd(gate, policy=far, step=3)
    assert d.kind is DecisionKind.INTERVENE and 'deviates' in d.reason
    assert d.deviation == pytest.approx(0.31)


def test_deviation_counter_resets_when_back_in_tolerance():
    gate = InterventionGate(CFG)
    far, near = vec(0.5), vec(0.3)  # exactly at the threshold does not count
    kinds = [upd(gate, policy=p, step=i).kind for i, p in enumerate([far, far, near, far, far])]
    assert kinds == [DecisionKind.NONE] * 5
    assert upd(gate, policy=far, step=6).kind is DecisionKind.INTERVENE


def test_intervene_inside_fail_margin():
    gate = InterventionGate(CFG)
    assert upd(gate, step=90).kind is DecisionKind.NONE  # 10 left: not fewer than the margin
    d = upd(gate, step=91)
    assert d.kind is DecisionKind.INTERVENE and 'about to fail' in d.reason


def test_release_after_min_takeover_when_back_on_track():
    gate = InterventionGate(CFG)
    q = vec(1.0)
    on_track = q + vec(0.01, joint=3)
    kinds = [upd(gate, expert=on_track, q=q, step=20 + i, intervening=True).kind for i in range(5)]
    assert kinds == [DecisionKind.NONE] * 4 + [DecisionKind.RELEASE]
    assert gate.takeover_ticks == 5


def test_no_release_while_expert_makes_large_corrections():
    gate = InterventionGate(CFG)
    for i in range(20):
        d = upd(gate, expert=vec(0.2), q=ZERO, step=20 + i, intervening=True)
        assert d.kind is DecisionKind.NONE
    assert upd(gate, expert=vec(0.01), q=ZERO, step=40, intervening=True).kind is (
        DecisionKind.RELEASE
    )


def test_never_release_inside_fail_margin():
    gate = InterventionGate(CFG)
    for step in range(80, 100):
        d = upd(gate, step=step, intervening=True)
        expected = DecisionKind.RELEASE if 84 <= step <= 90 else DecisionKind.NONE
        assert d.kind is expected
    gate.reset()
    for step in range(91, 100):
        assert upd(gate, step=step, intervening=True).kind is DecisionKind.NONE


def test_takeover_counter_restarts_on_each_takeover_and_reset():
    gate = InterventionGate(CFG)
    for i in range(5):
        upd(gate, step=i, intervening=True)
    assert upd(gate, step=5, intervening=False).kind is DecisionKind.NONE
    # a new takeover needs min_takeover_ticks again
    kinds = [upd(gate, step=6 + i, intervening=True).kind for i in range(5)]
    assert kinds[-1] is DecisionKind.RELEASE and DecisionKind.RELEASE not in kinds[:-1]
    far = vec(1.0)
    upd(gate, policy=far, step=20)
    upd(gate, policy=far, step=21)
    gate.reset()
    assert gate.deviation_count == 0
    assert upd(gate, policy=far, step=22).kind is DecisionKind.NONE


def test_joint_weights():
    cfg = GateConfig(
        deviation_threshold=0.3,
        deviation_ticks=1,
        release_threshold=0.05,
        min_takeover_ticks=0,
        fail_margin_steps=0,
        max_steps=100,
        joint_weights=(0.0,) * 6 + (1.0,) + (1.0,) * 7,
    )
    gate = InterventionGate(cfg)
    assert upd(gate, policy=vec(5.0, joint=0)).kind is DecisionKind.NONE  # weight 0
    assert upd(gate, policy=vec(0.5, joint=6)).kind is DecisionKind.INTERVENE
    with pytest.raises(ValueError, match='one weight per joint'):
        upd(gate, policy=np.zeros(3), expert=np.zeros(3), q=np.zeros(3))
    assert gate.distance(np.ones(D), np.zeros(D)) == pytest.approx(np.sqrt(8.0))


def test_input_validation():
    gate = InterventionGate(CFG)
    with pytest.raises(ValueError, match='shapes'):
        upd(gate, policy=np.zeros(3))
    with pytest.raises(ValueError, match='NaN'):
        upd(gate, policy=np.full(D, np.nan))


@pytest.mark.parametrize(
    'kwargs',
    [
        {'deviation_threshold': 0.0},
        {'deviation_threshold': float('nan')},
        {'release_threshold': -1.0},
        {'deviation_ticks': 0},
        {'max_steps': 0},
        {'fail_margin_steps': 900},
        {'min_takeover_ticks': 1.5},
        {'joint_weights': (0.0, 0.0)},
        {'joint_weights': (-1.0,)},
    ],
)
def test_config_validation(kwargs):
    with pytest.raises(ValueError):
        GateConfig(**kwargs)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 0.2)), max_size=60))
def test_property_release_and_intervene_respect_their_guards(ticks):
    """Simulate the actor following the gate; no decision ever violates its guard."""
    gate = InterventionGate(CFG)
    intervening = False
    for step, (dev, corr) in enumerate(ticks):
        d = upd(
            gate, policy=vec(dev), expert=vec(corr), q=ZERO, step=step, intervening=intervening
        )
        if d.kind is DecisionKind.RELEASE:
            assert intervening and gate.takeover_ticks >= CFG.min_takeover_ticks
            assert corr < CFG.release_threshold and CFG.max_steps - step >= CFG.fail_margin_steps
            intervening = False
        elif d.kind is DecisionKind.INTERVENE:
            assert not intervening
            assert abs(dev - corr) > CFG.deviation_threshold or (
                CFG.max_steps - step < CFG.fail_margin_steps
            )
            intervening = True


# -- task-progress rules (stall takeover, release on progress) -----------------------------

def _progress_gate(**kw):
    from scarls.teleop.gate import GateConfig, InterventionGate
    cfg = dict(deviation_threshold=0.3, deviation_ticks=3, stall_ticks=5, min_progress=0.1,
               release_progress=0.5, min_takeover_ticks=2, fail_margin_steps=10, max_steps=100)
    cfg.update(kw)
    return InterventionGate(GateConfig(**cfg))


def _tick(gate, step, progress, intervening=False):
    q = np.zeros(14)
    return gate.update(policy_action=q, expert_action=q, current_q=q, step=step,
                       intervening=intervening, task_success=False, task_failed=False,
                       progress=progress)


def test_stalled_policy_is_taken_over_after_stall_ticks():
    from scarls.teleop.gate import DecisionKind
    gate = _progress_gate()
    kinds = [_tick(gate, t, 1.0).kind for t in range(6)]
    assert kinds[:5] == [DecisionKind.NONE] * 5
    assert kinds[5] is DecisionKind.INTERVENE


def test_progressing_policy_is_left_alone():
    from scarls.teleop.gate import DecisionKind
    gate = _progress_gate()
    kinds = {_tick(gate, t, 0.05 * t).kind for t in range(60)}
    assert kinds == {DecisionKind.NONE}


def test_release_after_expert_progress_only():
    from scarls.teleop.gate import DecisionKind
    gate = _progress_gate()
    assert _tick(gate, 0, 1.0, intervening=True).kind is DecisionKind.NONE
    assert _tick(gate, 1, 1.2, intervening=True).kind is DecisionKind.NONE
    assert _tick(gate, 2, 1.4, intervening=True).kind is DecisionKind.NONE
    decision = _tick(gate, 3, 1.6, intervening=True)
    assert decision.kind is DecisionKind.RELEASE and 'progress' in decision.reason


def test_progress_config_validated():
    with pytest.raises(ValueError, match='min_progress'):
        _progress_gate(min_progress=0.0)
    with pytest.raises(ValueError, match='stall_ticks'):
        _progress_gate(stall_ticks=-1)
