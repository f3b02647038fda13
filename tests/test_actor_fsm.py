from __future__ import annotations

import itertools
import logging

import pytest

from scarls.actor.fsm import (
    TRANSITIONS,
    ActorFSM,
    Event,
    IllegalTransition,
    Phase,
    Transition,
    is_episode_active,
    is_terminal,
    legal_events,
    outcome_of,
)

EXPECTED = {
    (Phase.INIT, Event.RESET_DONE): Phase.IDLE,
    (Phase.IDLE, Event.START): Phase.INFERENCE,
    (Phase.INFERENCE, Event.INTERVENE): Phase.HUMANINTERVENTION,
    (Phase.HUMANINTERVENTION, Event.RELEASE): Phase.INFERENCE,
    (Phase.INFERENCE, Event.SUCCESS): Phase.SUCCESS,
    (Phase.INFERENCE, Event.FAIL): Phase.FAIL,
    (Phase.INFERENCE, Event.STOP): Phase.ABORTED,
    (Phase.HUMANINTERVENTION, Event.SUCCESS): Phase.SUCCESS,
    (Phase.HUMANINTERVENTION, Event.FAIL): Phase.FAIL,
    (Phase.HUMANINTERVENTION, Event.STOP): Phase.ABORTED,
    (Phase.SUCCESS, Event.EPISODE_CLOSED): Phase.IDLE,
    (Phase.FAIL, Event.EPISODE_CLOSED): Phase.IDLE,
    (Phase.ABORTED, Event.EPISODE_CLOSED): Phase.IDLE,
}

ALL_PAIRS = list(itertools.product(Phase, Event))


def test_table_is_exactly_the_specification():
    assert dict(TRANSITIONS) == EXPECTED


def test_table_is_read_only():
    with pytest.raises(TypeError):
        TRANSITIONS[(Phase.IDLE, Event.STOP)] = Phase.ABORTED  # type: ignore[index]


@pytest.mark.parametrize(('phase', 'event'), ALL_PAIRS, ids=lambda x: x.name)
def test_every_pair(phase: Phase, event: Event):
    fsm = ActorFSM(initial=phase)
    if (phase, event) in EXPECTED:
        tr = fsm.handle(event, reason='why')
        assert tr == Transition(phase, event, EXPECTED[(phase, event)], 'why')
        assert fsm.phase is EXPECTED[(phase, event)]
    else:
        with pytest.raises(IllegalTransition) as info:
            fsm.handle(event)
        assert fsm.phase is phase
        msg = str(info.value)
        assert phase.name in msg and event.name in msg
        for legal in legal_events(phase):
            assert legal.name in msg
        assert info.value.legal == legal_events(phase)


@pytest.mark.parametrize(('phase', 'event'), ALL_PAIRS, ids=lambda x: x.name)
def test_try_handle_every_pair(phase: Phase, event: Event, caplog):
    fsm = ActorFSM(initial=phase)
    with caplog.at_level(logging.WARNING, logger='scarls.actor.fsm'):
        tr = fsm.try_handle(event)
    if (phase, event) in EXPECTED:
        assert tr is not None and tr.next is EXPECTED[(phase, event)]
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    else:
        assert tr is None
        assert fsm.phase is phase
        assert any(r.levelno == logging.WARNING for r in caplog.records)


def test_default_initial_phase_and_type_checks():
    fsm = ActorFSM()
    assert fsm.phase is Phase.INIT
    with pytest.raises(TypeError):
        fsm.handle('start')  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        ActorFSM(initial='init')  # type: ignore[arg-type]


def test_phase_helpers():
    assert {p for p in Phase if is_episode_active(p)} == {Phase.INFERENCE, Phase.HUMANINTERVENTION}
    assert {p for p in Phase if is_terminal(p)} == {Phase.SUCCESS, Phase.FAIL, Phase.ABORTED}
    assert outcome_of(Phase.SUCCESS) == 'success'
    assert outcome_of(Phase.FAIL) == 'fail'
    assert outcome_of(Phase.ABORTED) == 'aborted'
    for p in (Phase.INIT, Phase.IDLE, Phase.INFERENCE, Phase.HUMANINTERVENTION):
        with pytest.raises(ValueError):
            outcome_of(p)


def test_episode_bookkeeping():
    fsm = ActorFSM()
    assert fsm.episode.episode_id == 0
    with pytest.raises(RuntimeError):
        fsm.record_step()
    fsm.handle(Event.RESET_DONE)
    fsm.handle(Event.START)
    assert fsm.episode.episode_id == 1
    fsm.record_step()
    fsm.record_step()
    fsm.handle(Event.INTERVENE)
    for _ in range(3):
        fsm.record_step()
    fsm.handle(Event.RELEASE)
    stats = fsm.record_step()
    assert (stats.steps, stats.intervention_steps, stats.interventions) == (6, 3, 1)
    assert stats.intervention_ratio == pytest.approx(0.5)
    fsm.handle(Event.SUCCESS)
    with pytest.raises(RuntimeError):
        fsm.record_step()
    assert fsm.episode.steps == 6  # kept until the next START
    fsm.handle(Event.EPISODE_CLOSED)
    fsm.handle(Event.START)
    ep = fsm.episode
    assert (ep.episode_id, ep.steps, ep.intervention_steps, ep.interventions) == (2, 0, 0, 0)
    assert ep.intervention_ratio == 0.0


def test_episode_copy_is_detached():
    fsm = ActorFSM(initial=Phase.IDLE)
    fsm.handle(Event.START)
    snap = fsm.episode
    snap.steps = 99
    assert fsm.episode.steps == 0
