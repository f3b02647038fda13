"""What the dashboard knows about the fleet: pure aggregation of the messages it hears, no rclpy.

`FleetState` takes plain values (the ROS node converts each message and calls one method per
topic) and hands the web page one JSON-ready `snapshot()`: ECUs discovered from any message that
names them, their phase history, heartbeat rates over time, recent episodes, the learner's loss
and open-loop metric over time, checkpoint lineage (approved, rejected, deployed, running), the
fleet's all-reduce rounds, and the p50/p99 latencies of episode ingestion (episode end ->
trainable, reported by the learner) and checkpoint distribution (approved checkpoint published
-> the actor first reporting that version). Every method is thread-safe: ROS callbacks write
from the executor thread while HTTP threads read snapshots.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from scarls.common.stats import percentile

STALE_S = 3.0
"""An ECU whose last heartbeat is older than this is shown as silent (as in `scarls status`)."""

DIAGNOSTICS_STALE_S = 5.0
"""A /diagnostics entry unheard for this long shows as STALE (nodes publish once a second)."""
DIAGNOSTICS_FORGET_S = 120.0
"""... and one unheard for this long is dropped (a node removed or renamed)."""
LEVELS = ('OK', 'WARN', 'ERROR', 'STALE')
ECU_ID_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')
"""An ECU id is a one-level ROS namespace."""

MAX_POINTS = 1200
"""Points kept per time series; older halves are thinned so a long run keeps its whole shape."""

MIN_SERIES_GAP_S = 0.5
"""Points of one series closer than this replace each other (status bursts on every change)."""

PHASE_HISTORY_S = 300.0
"""Seconds of FSM phase transitions kept per ECU (the phase strip of the page)."""

RECENT_EPISODES = 20
MAX_ROUNDS = 100
MAX_LATENCIES = 2000


def num(value) -> float | None:
    """A finite float, or None (JSON has no NaN: the page shows a gap)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def latency_summary(values) -> dict:
    values = list(values)
    return {'count': len(values), 'p50': percentile(values, 50), 'p99': percentile(values, 99),
            'max': max(values) if values else None}


class Series:
    """Time series of a few named values, bounded: past ``max_points`` every other point of the
    older half is dropped, and points closer than ``min_gap`` replace the previous one."""

    def __init__(self, names: tuple[str, ...], max_points: int = MAX_POINTS,
                 min_gap: float = MIN_SERIES_GAP_S) -> None:
        self.names = names
        self.max_points = max(4, max_points)
        self.min_gap = min_gap
        self.t: list[float] = []
        self.values: dict[str, list] = {n: [] for n in names}

    def add(self, t: float, **values) -> None:
        if self.t and t < self.t[-1]:
            return   # out of order (a late transient-local sample): the plot is time-ordered
        if self.t and t - self.t[-1] < self.min_gap:
            self.t[-1] = t
            for n in self.names:
                self.values[n][-1] = num(values.get(n))
            return
        self.t.append(t)
        for n in self.names:
            self.values[n].append(num(values.get(n)))
        if len(self.t) > self.max_points:
            half = len(self.t) // 2
            self.t[:half] = self.t[:half:2]
            for n in self.names:
                self.values[n][:half] = self.values[n][:half:2]

    def __len__(self) -> int:
        return len(self.t)

    def to_dict(self) -> dict:
        return {'t': list(self.t), **{n: list(v) for n, v in self.values.items()}}


@dataclass
class Checkpoint:
    version: int
    parent: int
    metric: float | None
    approved: bool
    published: float
    deployed: float | None = None     # announced by the ECU's scheduler to its actor
    running: float | None = None      # first reported by the actor
    round: int | None = None          # the fleet round that produced it, if any
    from_learner: bool = True         # False: only heard as deployed (its learner not yet)

    def to_dict(self, ecu: EcuState) -> dict:
        latency = ecu.distribution_latency.get(self.version)
        return {'version': self.version, 'parent': self.parent, 'metric': self.metric,
                'approved': self.approved, 'published': self.published,
                'deployed': self.deployed, 'running': self.running, 'round': self.round,
                'current': self.version == ecu.model_version and ecu.model_version > 0,
                'distribution_latency_s': latency}


@dataclass
class EcuState:
    ecu_id: str
    first_seen: float
    task: str = ''
    cameras: tuple[str, ...] = ()    # discovered from the ECU's camera topics
    driver: str = ''                 # the driver's safety state (driver/state) and why
    driver_reason: str = ''
    phase: str = 'UNKNOWN'
    phase_since: float | None = None
    episode_id: int = 0
    steps: int = 0
    intervention_steps: int = 0
    intervening: bool = False
    model_version: int = 0            # the actor's running version (actor/state)
    actor_seen: float | None = None
    episodes: int = 0
    successes_without_help: int = 0
    recent_success_rate: float | None = None
    recent_intervention_rate: float | None = None
    deployed_version: int = 0
    heartbeat: float | None = None
    phases: deque = field(default_factory=deque)   # (t, phase) transitions
    rates: Series = field(default_factory=lambda: Series(('success', 'human', 'episodes')))
    recent: deque = field(default_factory=lambda: deque(maxlen=RECENT_EPISODES))
    episode_indices: set = field(default_factory=set)
    learner: dict | None = None
    learner_seen: float | None = None
    learning: Series = field(default_factory=lambda: Series(('loss', 'metric',
                                                             'deployed_metric')))
    checkpoints: dict[int, Checkpoint] = field(default_factory=dict)
    version_first_seen: dict[int, float] = field(default_factory=dict)
    distribution_latency: dict[int, float] = field(default_factory=dict)
    ingested: dict[int, float] = field(default_factory=dict)   # episode index -> latency
    health: dict[str, tuple[int, str, float]] = field(default_factory=dict)
    # /diagnostics: '<node>: <what>' -> (level, message, wall time heard)

    def match_distribution(self, version: int) -> None:
        """Checkpoint ``version`` published (approved) and later reported by the actor: one
        distribution latency, measured once."""
        ckpt = self.checkpoints.get(version)
        seen = self.version_first_seen.get(version)
        if ckpt is None or seen is None or not ckpt.approved or not ckpt.from_learner:
            return
        if version not in self.distribution_latency and seen >= ckpt.published:
            self.distribution_latency[version] = seen - ckpt.published


def health(entries: dict[str, tuple[int, str, float]], now: float) -> dict:
    """An ECU's /diagnostics for the page: every entry worst first (an entry unheard for
    DIAGNOSTICS_STALE_S is STALE: its node stopped publishing; one unheard for
    DIAGNOSTICS_FORGET_S is dropped from ``entries``) and the worst level."""
    rows = []
    for entry, (level, message, heard) in list(entries.items()):
        age = now - heard
        if age > DIAGNOSTICS_FORGET_S:
            del entries[entry]
            continue
        if age > DIAGNOSTICS_STALE_S:
            level, message = 3, f'not heard for {age:.0f} s (last: {message})'
        rows.append({'name': entry, 'level': LEVELS[level], 'message': message, 'age_s': age,
                     '_rank': level})
    rows.sort(key=lambda r: (-r['_rank'], r['name']))
    worst = LEVELS[rows[0]['_rank']] if rows else None
    return {'health': [{k: v for k, v in r.items() if k != '_rank'} for r in rows],
            'health_level': worst}


class FleetState:
    """The dashboard's model of the fleet. ``clock`` gives wall-clock seconds (message header
    stamps are wall clock too, so both can be compared)."""

    def __init__(self, clock=time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._ecus: dict[str, EcuState] = {}
        self._rounds: dict[int, dict] = {}
        self._ingest: deque = deque(maxlen=MAX_LATENCIES)          # (t_end, ecu, latency)
        self._distribution: deque = deque(maxlen=MAX_LATENCIES)    # (t, ecu, version, latency)
        self.revision = 0

    # -- discovery ------------------------------------------------------------------------
    def _ecu(self, ecu_id: str) -> EcuState:
        ecu = self._ecus.get(ecu_id)
        if ecu is None:
            ecu = self._ecus[ecu_id] = EcuState(ecu_id, self.clock())
        self.revision += 1
        return ecu

    def ecu_ids(self) -> list[str]:
        with self._lock:
            return sorted(self._ecus)

    def diagnostic(self, name: str, level: int, message: str,
                   hardware_id: str = '') -> str | None:
        """One /diagnostics status of a scarls node (``<ecu>/<node>: <what>``, ``hardware_id``
        the ECU id) for that ECU's health; returns the ECU's id. Statuses that name no ECU -
        other publishers of the global topic (a camera driver's serial number as hardware id,
        no namespace) - are ignored (None); a status of an ECU already known is kept without
        the namespace."""
        name, hardware_id = str(name), str(hardware_id or '')
        ecu_id, slash, entry = name.partition('/')
        if not slash:                       # no namespace: only for an ECU named by its id
            ecu_id, entry = hardware_id, name
            if ecu_id not in self._ecus:
                return None
        elif hardware_id and hardware_id != ecu_id:
            return None
        if not entry or not ECU_ID_RE.match(ecu_id):
            return None
        with self._lock:
            e = self._ecu(ecu_id)
            e.health[entry] = (min(max(int(level), 0), 3), str(message), self.clock())
            self.revision += 1
        return ecu_id

    def driver_state(self, ecu_id: str, state: str, reason: str) -> None:
        """The driver's safety state (ok, clamped, holding, estopped, fault, resetting)."""
        with self._lock:
            e = self._ecu(ecu_id)
            e.driver, e.driver_reason = str(state), str(reason)
            self.revision += 1

    def set_cameras(self, ecu_id: str, cameras) -> None:
        """The camera names an ECU publishes (from the ROS graph)."""
        with self._lock:
            if ecu_id in self._ecus:
                self._ecus[ecu_id].cameras = tuple(cameras)

    def discover(self, ecu_id: str) -> bool:
        """Note an ECU named by some message; True if it is new."""
        if not ecu_id:
            return False
        with self._lock:
            if ecu_id in self._ecus:
                return False
            self._ecu(ecu_id)
            return True

    # -- inputs, one per topic -------------------------------------------------------------
    def heartbeat(self, ecu_id: str, t: float, *, task: str = '', phase: str = '',
                  episodes: int = 0, successes_without_help: int = 0,
                  recent_success_rate: float | None = None,
                  recent_intervention_rate: float | None = None, model_version: int = 0,
                  deployed_version: int = 0) -> None:
        """/fleet/status (EcuStatus)."""
        with self._lock:
            ecu = self._ecu(ecu_id)
            ecu.heartbeat = self.clock()
            ecu.task = task or ecu.task
            ecu.episodes = int(episodes)
            ecu.successes_without_help = int(successes_without_help)
            ecu.recent_success_rate = num(recent_success_rate)
            ecu.recent_intervention_rate = num(recent_intervention_rate)
            # the scheduler's current deployment (a rollback lowers it)
            ecu.deployed_version = int(deployed_version)
            if ecu.actor_seen is None and phase:
                self._set_phase(ecu, phase, t)   # no actor/state heard (yet): heartbeat's phase
                ecu.model_version = int(model_version)
            ecu.rates.add(t, success=recent_success_rate if episodes else None,
                          human=recent_intervention_rate if episodes else None,
                          episodes=episodes)

    def actor_state(self, ecu_id: str, t: float, *, phase: str, episode_id: int = 0,
                    steps: int = 0, intervention_steps: int = 0, model_version: int = 0,
                    intervening: bool = False) -> None:
        """<ecu>/actor/state (ActorState), ``t`` its header stamp."""
        with self._lock:
            ecu = self._ecu(ecu_id)
            first = ecu.actor_seen is None
            ecu.actor_seen = self.clock()
            if first:   # the actor's own (latched) history replaces the heartbeat's phase
                ecu.phases.clear()
                ecu.phase = 'UNKNOWN'
            self._set_phase(ecu, phase, t)
            ecu.episode_id, ecu.steps = int(episode_id), int(steps)
            ecu.intervention_steps, ecu.intervening = int(intervention_steps), bool(intervening)
            version = int(model_version)
            if version != ecu.model_version or first:
                # the first sample only tells what ran before we listened: not a distribution
                if not first and version not in ecu.version_first_seen:
                    ecu.version_first_seen[version] = t
                    ckpt = ecu.checkpoints.get(version)
                    if ckpt is not None and ckpt.running is None:
                        ckpt.running = t
                    self._match(ecu, version)
                ecu.model_version = version

    def _set_phase(self, ecu: EcuState, phase: str, t: float) -> None:
        if phase and phase != ecu.phase:
            ecu.phase, ecu.phase_since = phase, t
            ecu.phases.append((t, phase))
        while len(ecu.phases) > 1 and ecu.phases[1][0] < t - PHASE_HISTORY_S:
            ecu.phases.popleft()

    def episode(self, ecu_id: str, t: float, *, index: int, outcome: str, steps: int,
                intervention_steps: int, model_version: int, dropped_steps: int = 0,
                finalize_seconds: float | None = None) -> None:
        """<ecu>/scheduler/episode (EpisodeInfo), ``t`` its header stamp (when saved)."""
        with self._lock:
            ecu = self._ecu(ecu_id)
            if index in ecu.episode_indices:
                return
            ecu.episode_indices.add(index)
            ecu.recent.append({
                'index': int(index), 't': t, 'outcome': outcome, 'steps': int(steps),
                'intervention_steps': int(intervention_steps),
                'human_share': intervention_steps / steps if steps else None,
                'model_version': int(model_version), 'dropped_steps': int(dropped_steps),
                'finalize_seconds': num(finalize_seconds)})

    def learner_checkpoint(self, ecu_id: str, t: float, *, version: int, parent: int,
                           metric: float | None, approved: bool) -> None:
        """<ecu>/learner/checkpoint (CheckpointInfo, one per candidate), ``t`` its stamp."""
        with self._lock:
            ecu = self._ecu(ecu_id)
            version = int(version)
            ckpt = ecu.checkpoints.get(version)
            if ckpt is None:
                ckpt = ecu.checkpoints[version] = Checkpoint(
                    version, int(parent), num(metric), bool(approved), t)
                ckpt.running = ecu.version_first_seen.get(version)
                if version == ecu.model_version and ecu.model_version and ckpt.running is None:
                    ckpt.running = ecu.actor_seen   # already running when we started listening
            elif not ckpt.from_learner:   # heard as deployed first: now its lineage
                ckpt.parent, ckpt.metric, ckpt.published = int(parent), num(metric), t
                ckpt.from_learner = True
            else:
                ckpt.approved = ckpt.approved or bool(approved)
            if ckpt.round is None:   # its fleet round may have been reported first
                for r in self._rounds.values():
                    if r['version'].get(ecu_id) == version:
                        ckpt.round = r['round']
            self._match(ecu, version)

    def deployed_checkpoint(self, ecu_id: str, t: float, *, version: int) -> None:
        """<ecu>/scheduler/checkpoint (CheckpointInfo: the version deployed to the actor)."""
        with self._lock:
            ecu = self._ecu(ecu_id)
            ecu.deployed_version = int(version)   # the newest deploy decision (or rollback)
            ckpt = ecu.checkpoints.get(int(version))
            if ckpt is not None and ckpt.deployed is None:
                ckpt.deployed = t
            elif ckpt is None:
                # deployed before we heard the learner (or it was adopted from a peer)
                ecu.checkpoints[int(version)] = Checkpoint(int(version), 0, None, True, t, t,
                                                           from_learner=False)

    def learner_status(self, ecu_id: str, t: float, *, state: str, detail: str = '',
                       rounds: int = 0, round_step: int = 0, round_steps: int = 0,
                       loss: float | None = None, metric: float | None = None,
                       version: int = 0, approved: bool = False, deployed_version: int = 0,
                       deployed_metric: float | None = None, online_episodes: int = 0,
                       offline_episodes: int = 0, samples_trained: int = 0,
                       ingested_episodes=(), ingest_latency_s=()) -> None:
        """/fleet/learners (LearnerStatus), ``t`` its header stamp."""
        with self._lock:
            ecu = self._ecu(ecu_id)
            ecu.learner_seen = self.clock()
            ecu.learner = {
                'state': state, 'detail': detail, 'rounds': int(rounds),
                'round_step': int(round_step), 'round_steps': int(round_steps),
                'loss': num(loss), 'metric': num(metric), 'version': int(version),
                'approved': bool(approved), 'deployed_version': int(deployed_version),
                'deployed_metric': num(deployed_metric), 'online_episodes': int(online_episodes),
                'offline_episodes': int(offline_episodes),
                'samples_trained': int(samples_trained), 't': t}
            ecu.learning.add(t, loss=loss, metric=metric, deployed_metric=deployed_metric)
            for index, latency in zip(ingested_episodes, ingest_latency_s, strict=False):
                latency = num(latency)
                if latency is None or int(index) in ecu.ingested:
                    continue
                ecu.ingested[int(index)] = latency
                self._ingest.append((t - latency, ecu_id, latency))   # at the episode's end

    def fleet_round(self, ecu_id: str, t: float, *, round: int, status: str,  # noqa: A002
                    participants=(), member_ids=(), member_metrics=(), member_weights=(),
                    selector_passed: bool = False, version: int = 0,
                    approved: bool = False) -> None:
        """/fleet/rounds (FleetRound: one per learner and round), merged per round number."""
        with self._lock:
            ecu = self._ecu(ecu_id)
            r = self._rounds.setdefault(int(round), {
                'round': int(round), 't': t, 'participants': [], 'metrics': {}, 'weights': {},
                'selector_passed': None, 'version': {}, 'status': {}})
            r['t'] = max(r['t'], t)
            if participants and not r['participants']:
                r['participants'] = list(participants)
            for member, metric, weight in zip(member_ids, member_metrics, member_weights,
                                              strict=False):
                if num(metric) is not None:
                    r['metrics'].setdefault(member, num(metric))
                if num(weight):
                    r['weights'].setdefault(member, num(weight))
            r['status'][ecu_id] = status
            if status in ('reduced', 'alone'):
                passed = bool(selector_passed)
                r['selector_passed'] = passed if r['selector_passed'] is None \
                    else r['selector_passed'] and passed
                if approved:
                    r['version'][ecu_id] = int(version)
                    ckpt = ecu.checkpoints.get(int(version))
                    if ckpt is not None:
                        ckpt.round = int(round)
            while len(self._rounds) > MAX_ROUNDS:
                del self._rounds[min(self._rounds)]

    def _match(self, ecu: EcuState, version: int) -> None:
        had = version in ecu.distribution_latency
        ecu.match_distribution(version)
        if not had and version in ecu.distribution_latency:
            self._distribution.append((ecu.version_first_seen[version], ecu.ecu_id, version,
                                       ecu.distribution_latency[version]))

    # -- output ----------------------------------------------------------------------------
    def latencies(self) -> dict:
        with self._lock:
            return self._latencies()

    def _latencies(self) -> dict:
        ingest = [x[2] for x in self._ingest]
        dist = [x[3] for x in self._distribution]
        return {
            'ingest': {**latency_summary(ingest),
                       'recent': [[t, e, v] for t, e, v in list(self._ingest)[-200:]]},
            'distribution': {**latency_summary(dist),
                             'recent': [[t, e, ver, v] for t, e, ver, v in
                                        list(self._distribution)[-200:]]},
        }

    def snapshot(self) -> dict:
        """Everything the page shows, JSON-ready (no NaN: missing values are None)."""
        now = self.clock()
        with self._lock:
            ecus = []
            for ecu_id in sorted(self._ecus):
                e = self._ecus[ecu_id]
                age = now - e.heartbeat if e.heartbeat is not None else None
                learner = dict(e.learner) if e.learner else None
                if learner is not None:
                    learner['age_s'] = now - e.learner_seen
                ecus.append({
                    'id': ecu_id, 'task': e.task, 'cameras': list(e.cameras),
                    'driver': e.driver, 'driver_reason': e.driver_reason,
                    'phase': e.phase, 'phase_since': e.phase_since,
                    'episode_id': e.episode_id, 'steps': e.steps,
                    'intervention_steps': e.intervention_steps, 'intervening': e.intervening,
                    'model_version': e.model_version, 'deployed_version': e.deployed_version,
                    'episodes': e.episodes, 'successes_without_help': e.successes_without_help,
                    'recent_success_rate': e.recent_success_rate,
                    'recent_intervention_rate': e.recent_intervention_rate,
                    'heartbeat_age_s': age, 'silent': age is None or age > STALE_S,
                    'phases': [[t, p] for t, p in e.phases],
                    'recent_episodes': list(e.recent)[::-1],
                    'rates': e.rates.to_dict(), 'learning': e.learning.to_dict(),
                    'learner': learner,
                    'checkpoints': [c.to_dict(e) for _, c in sorted(e.checkpoints.items())],
                    'ingest': latency_summary(e.ingested.values()),
                    'distribution': latency_summary(e.distribution_latency.values()),
                    **health(e.health, now),
                })
            rounds = [self._rounds[k] for k in sorted(self._rounds)]
            return {'now': now, 'revision': self.revision, 'ecus': ecus,
                    'rounds': [dict(r, participants=list(r['participants']),
                                    metrics=dict(r['metrics']), weights=dict(r['weights']),
                                    version=dict(r['version']), status=dict(r['status']))
                               for r in rounds],
                    'latency': self._latencies()}
