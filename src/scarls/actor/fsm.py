"""The actor's episode state machine (Algorithm 1 of the ScaRLS paper) as an explicit table.

The actor node drives one robot through episodes. Its life cycle is a small finite state
machine whose complete transition table is :data:`TRANSITIONS`; any ``(phase, event)`` pair
not in the table is illegal and is rejected without changing the state::

    INIT --RESET_DONE--> IDLE --START--> INFERENCE <--RELEASE/INTERVENE--> HUMANINTERVENTION
    INFERENCE | HUMANINTERVENTION --SUCCESS--> SUCCESS, --FAIL--> FAIL, --STOP--> ABORTED
    SUCCESS | FAIL | ABORTED --EPISODE_CLOSED--> IDLE

``RESET_DONE`` and ``EPISODE_CLOSED`` are internal events (the reset pose was reached; the
episode was logged, the checkpoint reloaded and the robot reset). The others come from the
operator, the teleop gate or the task checker.

:class:`ActorFSM` also keeps per-episode bookkeeping (:class:`EpisodeStats`): the episode id
increments on every ``START``; :meth:`ActorFSM.record_step` counts control steps and
intervention steps of the running episode.

Example::

    fsm = ActorFSM()
    fsm.handle(Event.RESET_DONE)
    fsm.handle(Event.START)
    fsm.record_step()
    fsm.handle(Event.SUCCESS, reason='cube in bin')
    outcome_of(fsm.phase)  # 'success'
"""

from __future__ import annotations

import dataclasses
import enum
import logging
import threading
from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal

__all__ = [
    'TRANSITIONS',
    'ActorFSM',
    'EpisodeStats',
    'Event',
    'IllegalTransition',
    'Outcome',
    'Phase',
    'Transition',
    'is_episode_active',
    'is_terminal',
    'legal_events',
    'outcome_of',
]

_log = logging.getLogger(__name__)


class Phase(enum.Enum):
    """Phase of the actor."""

    INIT = 'init'
    IDLE = 'idle'
    INFERENCE = 'inference'
    HUMANINTERVENTION = 'humanintervention'
    SUCCESS = 'success'
    FAIL = 'fail'
    ABORTED = 'aborted'


class Event(enum.Enum):
    """Event fed to the actor FSM."""

    RESET_DONE = 'reset_done'
    START = 'start'
    INTERVENE = 'intervene'
    RELEASE = 'release'
    SUCCESS = 'success'
    FAIL = 'fail'
    STOP = 'stop'
    EPISODE_CLOSED = 'episode_closed'


Outcome = Literal['success', 'fail', 'aborted']

_ACTIVE = frozenset({Phase.INFERENCE, Phase.HUMANINTERVENTION})
_TERMINAL = frozenset({Phase.SUCCESS, Phase.FAIL, Phase.ABORTED})


def _build_table() -> dict[tuple[Phase, Event], Phase]:
    table: dict[tuple[Phase, Event], Phase] = {
        (Phase.INIT, Event.RESET_DONE): Phase.IDLE,
        (Phase.IDLE, Event.START): Phase.INFERENCE,
        (Phase.INFERENCE, Event.INTERVENE): Phase.HUMANINTERVENTION,
        (Phase.HUMANINTERVENTION, Event.RELEASE): Phase.INFERENCE,
    }
    for phase in (Phase.INFERENCE, Phase.HUMANINTERVENTION):
        table[(phase, Event.SUCCESS)] = Phase.SUCCESS
        table[(phase, Event.FAIL)] = Phase.FAIL
        table[(phase, Event.STOP)] = Phase.ABORTED
    for phase in _TERMINAL:
        table[(phase, Event.EPISODE_CLOSED)] = Phase.IDLE
    return table


TRANSITIONS: Mapping[tuple[Phase, Event], Phase] = MappingProxyType(_build_table())
"""The complete transition table; pairs not in it are illegal."""


class IllegalTransition(RuntimeError):
    """An event arrived that the current phase does not accept (the state is unchanged)."""

    def __init__(self, phase: Phase, event: Event) -> None:
        self.phase = phase
        self.event = event
        self.legal = legal_events(phase)
        names = ', '.join(e.name for e in self.legal) or 'none'
        super().__init__(
            f'event {event.name} is not allowed in phase {phase.name}; '
            f'legal events from {phase.name}: {names}. The state was left unchanged.'
        )


@dataclasses.dataclass(frozen=True)
class Transition:
    """One applied transition."""

    prev: Phase
    event: Event
    next: Phase
    reason: str = ''


@dataclasses.dataclass
class EpisodeStats:
    """Bookkeeping of the current (or last) episode.

    ``episode_id`` is 0 before the first ``START`` and increments on every ``START``.
    ``steps`` counts control steps of the episode, ``intervention_steps`` those taken while
    the human was in control.
    """

    episode_id: int = 0
    steps: int = 0
    intervention_steps: int = 0
    interventions: int = 0

    @property
    def intervention_ratio(self) -> float:
        """Fraction of steps under human control (0.0 for an empty episode)."""
        return self.intervention_steps / self.steps if self.steps else 0.0


def legal_events(phase: Phase) -> tuple[Event, ...]:
    """Events accepted in ``phase``, in declaration order."""
    return tuple(e for e in Event if (phase, e) in TRANSITIONS)


def is_episode_active(phase: Phase) -> bool:
    """True while an episode runs (INFERENCE or HUMANINTERVENTION)."""
    return phase in _ACTIVE


def is_terminal(phase: Phase) -> bool:
    """True for the end-of-episode phases SUCCESS, FAIL and ABORTED."""
    return phase in _TERMINAL


def outcome_of(phase: Phase) -> Outcome:
    """Map a terminal phase to its outcome label; raise ``ValueError`` for other phases."""
    if phase is Phase.SUCCESS:
        return 'success'
    if phase is Phase.FAIL:
        return 'fail'
    if phase is Phase.ABORTED:
        return 'aborted'
    raise ValueError(
        f'phase {phase.name} is not terminal; outcome_of() needs SUCCESS, FAIL or ABORTED'
    )


class ActorFSM:
    """The actor's phase plus episode bookkeeping. Thread-safe (one internal lock)."""

    def __init__(self, initial: Phase = Phase.INIT) -> None:
        if not isinstance(initial, Phase):
            raise TypeError(f'initial must be a Phase, got {initial!r}')
        self._phase = initial
        self._stats = EpisodeStats()
        self._lock = threading.Lock()

    @property
    def phase(self) -> Phase:
        """The current phase."""
        return self._phase

    @property
    def episode(self) -> EpisodeStats:
        """A copy of the bookkeeping of the current (or last) episode."""
        with self._lock:
            return dataclasses.replace(self._stats)

    def can_handle(self, event: Event) -> bool:
        """True when ``event`` is legal in the current phase."""
        return (self._phase, event) in TRANSITIONS

    def handle(self, event: Event, reason: str = '') -> Transition:
        """Apply ``event``; raise :class:`IllegalTransition` (state unchanged) if illegal."""
        if not isinstance(event, Event):
            raise TypeError(f'event must be an Event, got {event!r}')
        with self._lock:
            prev = self._phase
            nxt = TRANSITIONS.get((prev, event))
            if nxt is None:
                raise IllegalTransition(prev, event)
            self._phase = nxt
            if event is Event.START:
                self._stats = EpisodeStats(episode_id=self._stats.episode_id + 1)
            elif event is Event.INTERVENE:
                self._stats.interventions += 1
        _log.debug('actor %s --%s--> %s %s', prev.name, event.name, nxt.name, reason)
        return Transition(prev=prev, event=event, next=nxt, reason=reason)

    def try_handle(self, event: Event, reason: str = '') -> Transition | None:
        """Like :meth:`handle` but log an illegal event at WARNING and return None."""
        try:
            return self.handle(event, reason)
        except IllegalTransition as exc:
            _log.warning('ignored: %s (reason: %s)', exc, reason or '-')
            return None

    def record_step(self) -> EpisodeStats:
        """Count one control step of the running episode; return a copy of the stats.

        Steps taken in HUMANINTERVENTION also count as intervention steps. Raises
        :class:`RuntimeError` when no episode is active.
        """
        with self._lock:
            if self._phase not in _ACTIVE:
                raise RuntimeError(
                    f'record_step() called in phase {self._phase.name}; steps can only be '
                    'recorded during INFERENCE or HUMANINTERVENTION'
                )
            self._stats.steps += 1
            if self._phase is Phase.HUMANINTERVENTION:
                self._stats.intervention_steps += 1
            return dataclasses.replace(self._stats)
