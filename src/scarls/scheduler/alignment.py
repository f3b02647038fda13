"""The scheduler's recording logic without ROS: stamp alignment of steps and frames, dropped
steps, and when an episode is finalised.

The scheduler node feeds it from its subscriptions (live, with the monotonic clock); `scarls bag
to-zarr` feeds it the messages of a bag in the order they were received, with the bag's receive
times as the clock - so an offline conversion rebuilds exactly the episodes the scheduler would
have written from the same stream. Messages are duck-typed (rclpy messages or rosbags' decoded
ones: same field names), and the image decoder is injected, so no rclpy here.

Rules (the scheduler's contract):
- each step's frames are looked up by exact header stamp in the last frames of each camera; a
  step whose frames have not arrived after ``match_timeout_s`` is dropped and counted, never
  filled with other frames (also before the episode's first recorded step: such drops count
  towards the episode, so its end is not awaited for steps that were already dropped);
- an episode is finalised when the actor reported its end and all its steps arrived (or
  ``FINALIZE_WAIT_S`` after the end / after the next episode's first step, at the latest);
- the newest end per actor episode id wins (ids restart with a new actor session, and a latched
  history may replay ends of an earlier session);
- every recorded step gets the driver's safety state in force when its command was executed
  (:class:`SafetyTimeline`, from the driver/state messages, aligned by header stamp), stored
  as the episode's ``safety`` array (see :data:`scarls.episodes.schema.SAFETY_CODES`) - no
  array when no driver state was seen at all;
- an episode that cannot be stored (its writer cannot be created, or its finalize fails: disk
  full, ...) is lost whole, never partly visible; lost episodes and their steps are counted
  (:attr:`StepAligner.losses`, and in the next saved episode's meta ``recorder_losses``), and
  recording resumes with the next episode.

Steps the robot did not execute: the driver reports ``ok``, ``clamped`` (limited by its
position/velocity limits), ``holding``, ``estopped``, ``fault`` or ``resetting``. A clamped
step is *clamped heavily* (``clamped_heavily``, not executed) when the driver clamped it and its
action lay more than ``HEAVY_CLAMP_FRACTION`` (5 %) of some joint's range outside that joint's
position limits (:func:`heavy_clamp`: the robot went to the limit, not where the action said).
A velocity clamp only slows the motion toward the target (a gripper's open/close command is
velocity-clamped for a dozen ticks as a rule), and a target a hair beyond a limit (a gripper
commanded to -0.01) is reached as near as the robot can: both are executed (``clamped``).
Without the robot's limits every clamp counts as light.
"""

from __future__ import annotations

import bisect
import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scarls.episodes import BackgroundEpisodeWriter, EpisodeRef, StepRecord
from scarls.episodes.schema import SAFETY_CODES

__all__ = ['FINALIZE_WAIT_S', 'HEAVY_CLAMP_FRACTION', 'TERMINAL', 'FrameBuffer', 'JointLimits',
           'RecorderLosses', 'SafetyTimeline', 'SavedEpisode', 'StepAligner', 'heavy_clamp',
           'skew_summary', 'stamp_ns']

TERMINAL = {'SUCCESS': 'success', 'FAIL': 'fail', 'ABORTED': 'aborted'}
FINALIZE_WAIT_S = 3.0
#: A clamp is heavy when the action lay more than this share of a joint's range outside its
#: position limits (see :func:`heavy_clamp`).
HEAVY_CLAMP_FRACTION = 0.05
DRIVER_STATES = ('ok', 'clamped', 'holding', 'estopped', 'fault', 'resetting')


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (any object with sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Log(Protocol):
    """Where the aligner reports (the node's logger, or Python logging offline).
    ``throttled`` messages may be rate-limited by the receiver."""

    def info(self, msg: str) -> None: ...
    def warning(self, msg: str, throttled: bool = False) -> None: ...
    def error(self, msg: str, throttled: bool = False) -> None: ...


@dataclass(frozen=True)
class JointLimits:
    """The robot's position and speed limits (the driver's), in the action's units."""

    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray


def heavy_clamp(action: np.ndarray, limits: JointLimits | None) -> bool:
    """Was a command the driver clamped clamped *heavily* (its action not executed)? True when
    on some joint ``action`` lies more than :data:`HEAVY_CLAMP_FRACTION` of the joint's range
    outside its position limits; False without limits (or with sizes that do not match)."""
    a = np.asarray(action, dtype=np.float64)
    if limits is None or a.shape != np.shape(limits.lower):
        return False
    lower = np.asarray(limits.lower, dtype=np.float64)
    upper = np.asarray(limits.upper, dtype=np.float64)
    outside = np.abs(a - np.clip(a, lower, upper))
    return bool(np.any(outside > HEAVY_CLAMP_FRACTION * (upper - lower)))


class SafetyTimeline:
    """The driver's safety states by header stamp (driver/state messages, published on every
    change and at 1 Hz), looked up per step.

    The state of a step commanded at stamp ``t`` is the first state the driver reported in
    ``(t, t + period]`` (the driver tick that executed the command: a change is published at
    that tick, and an e-stop at once), else the state in force at ``t`` (the last one reported
    before) - except that a command sent while the driver was ``holding`` (waiting for a
    command) that ends the hold one tick late (a busy driver took the command after its next
    tick: ``ok``/``clamped`` reported in ``(t + period, t + 2 period]``) was executed.
    Thread-safe.
    """

    def __init__(self, keep_s: float = 600.0) -> None:
        self._stamps: list[int] = []
        self._states: list[tuple[str, str]] = []
        self._keep_ns = int(keep_s * 1e9)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)

    def add(self, stamp: int, state: str, reason: str = '') -> None:
        with self._lock:
            i = bisect.bisect_right(self._stamps, stamp)
            if i and self._stamps[i - 1] == stamp:
                self._states[i - 1] = (state, reason)   # a republish of the same stamp
                return
            self._stamps.insert(i, stamp)
            self._states.insert(i, (state, reason))
            # forget what no open step can need: older than keep_s before the newest,
            # keeping the last state before that (still in force)
            cut = bisect.bisect_left(self._stamps, self._stamps[-1] - self._keep_ns) - 1
            if cut > 0:
                del self._stamps[:cut]
                del self._states[:cut]

    def state_at(self, t: int, period: int) -> tuple[str, str] | None:
        """(state, reason) of a command sent at stamp ``t`` (ns) for one control ``period``
        (ns); None when no state was reported at or before ``t + period``."""
        with self._lock:
            i = bisect.bisect_right(self._stamps, t)
            nxt = self._states[i] if i < len(self._stamps) else None
            if nxt is not None and self._stamps[i] <= t + period:
                return nxt
            now = self._states[i - 1] if i else None
            if now is not None and now[0] == 'holding' and nxt is not None \
                    and nxt[0] in ('ok', 'clamped') and self._stamps[i] <= t + 2 * period:
                return nxt
            return now


@dataclass
class RecorderLosses:
    """What the recorder lost: episodes that could not be stored (disk full, ...) or had no
    recordable step, and their steps; ``last_error`` says why the last one was lost."""

    episodes: int = 0
    steps: int = 0
    last_error: str = ''

    def to_dict(self) -> dict[str, Any]:
        return {'episodes': self.episodes, 'steps': self.steps, 'last_error': self.last_error}


@dataclass
class _Episode:
    actor_episode_id: int
    writer: Any
    started: float
    first_stamp_ns: int = 0
    steps_seen: int = 0
    dropped: int = 0
    model_version: int = 0
    #: per camera, |frame stamp - joint state stamp| (ms) of every recorded step
    skew_ms: dict[str, list[float]] = field(default_factory=dict)
    #: dropped steps by cause
    drops: collections.Counter = field(default_factory=collections.Counter)
    #: (stamp ns, action) of every step handed to the writer, in order
    written: list[tuple[int, np.ndarray]] = field(default_factory=list)


def skew_summary(skew_ms: dict[str, list[float]]) -> dict[str, dict[str, float]]:
    """Per camera: p50/p99/max of |frame stamp - joint state stamp| in ms over the steps
    (how far apart the observation's sensors were sampled; 0 for a simulator)."""
    out = {}
    for name, values in sorted(skew_ms.items()):
        if values:
            arr = np.asarray(values, dtype=np.float64)
            out[name] = {'p50': round(float(np.percentile(arr, 50)), 3),
                         'p99': round(float(np.percentile(arr, 99)), 3),
                         'max': round(float(arr.max()), 3)}
    return out


@dataclass(frozen=True)
class SavedEpisode:
    """An episode that became visible on disk."""

    ref: EpisodeRef
    outcome: str
    model_version: int
    actor_episode_id: int
    dropped_steps: int
    finalize_seconds: float
    #: per-step safety codes (None: no driver state seen)
    safety: np.ndarray | None = None


@dataclass(frozen=True)
class DiscardedEpisode:
    """An episode that could not be written (no step recorded, a storage error, or still open
    when recording stopped)."""

    actor_episode_id: int
    steps_seen: int
    reason: str


class FrameBuffer:
    """The last frames of one camera, looked up by exact header stamp."""

    def __init__(self, capacity: int) -> None:
        self._frames: dict[int, Any] = {}
        self._order: collections.deque[int] = collections.deque()
        self._capacity = capacity
        self._lock = threading.Lock()

    def add(self, msg: Any) -> None:
        key = stamp_ns(msg.header.stamp)
        with self._lock:
            if key not in self._frames:
                self._order.append(key)
            self._frames[key] = msg
            while len(self._order) > self._capacity:
                self._frames.pop(self._order.popleft(), None)

    def get(self, key: int) -> Any | None:
        with self._lock:
            return self._frames.get(key)

    def __len__(self) -> int:
        with self._lock:
            return len(self._order)


@dataclass
class AlignerConfig:
    root: Path
    task: str
    ecu_id: str
    codec: str = 'lz4'
    fps: float = 30.0
    match_timeout_s: float = 2.0
    buffer_seconds: float = 5.0
    cameras: tuple[str, ...] = ('top', 'left', 'right')
    writer_options: dict[str, Any] = field(default_factory=dict)
    #: Recorded in every episode's meta ``extra`` (e.g. ``{'robot': {name, hash, ...}}``).
    extra_meta: dict[str, Any] = field(default_factory=dict)
    #: The robot's limits, to tell heavy clamps from light ones (see :func:`heavy_clamp`).
    joint_limits: JointLimits | None = None


class StepAligner:
    """Steps + frames + episode ends (+ driver states) in, Zarr episodes out (see the module
    doc).

    ``decode_image(msg)`` (or ``decode_image(msg, camera)`` with ``decode_per_camera``) turns
    an image message into an (H, W, 3) uint8 array and raises ``ValueError`` for a malformed
    one; ``clock()`` is "now" in seconds;
    ``on_saved`` / ``on_discarded`` are called from :meth:`poll` (the caller's thread).
    ``writer_factory`` makes the episode writer (the node: a background writer, so the
    subscription path never waits for the disk; offline: the synchronous one, which never drops).
    """

    def __init__(self, config: AlignerConfig, *, decode_image: Callable[..., np.ndarray],
                 decode_per_camera: bool = False,
                 log: Log, on_saved: Callable[[SavedEpisode], None] = lambda s: None,
                 on_discarded: Callable[[DiscardedEpisode], None] = lambda d: None,
                 clock: Callable[[], float] = time.monotonic,
                 writer_factory: Callable[..., Any] = BackgroundEpisodeWriter) -> None:
        self.config = config
        self._decode = decode_image
        self._per_camera = bool(decode_per_camera)
        self._log = log
        self._on_saved = on_saved
        self._on_discarded = on_discarded
        self._clock = clock
        self._writer_factory = writer_factory
        self._timeout = float(config.match_timeout_s)
        self._period_ns = int(1e9 / float(config.fps))
        capacity = max(10, int(float(config.buffer_seconds) * float(config.fps) * 1.5))
        self.frames = {c: FrameBuffer(capacity) for c in config.cameras}
        self.safety = SafetyTimeline()
        self._pending: collections.deque[tuple[float, Any]] = collections.deque()
        self._ends: dict[int, tuple[str, int, float, int]] = {}
        self.cond = threading.Condition()
        self._episode: _Episode | None = None
        #: actor episode id -> steps dropped before its writer existed
        self._early: dict[int, collections.Counter] = {}
        #: actor episode id -> [steps, error] of an episode being lost (no writer possible)
        self._lost: dict[int, list] = {}
        self.losses = RecorderLosses()
        """Everything lost since the recorder started (read from other threads)."""
        self._unreported = RecorderLosses()   # since the last saved episode

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.config.cameras)

    def cameras_without_frames(self) -> list[str]:
        """Cameras no frame has arrived from yet: a step taken now could not be recorded
        (safe from any thread)."""
        return [c for c, buffer in self.frames.items() if not len(buffer)]

    # -- inputs (cheap; never touch the disk) ------------------------------------------------
    def add_frame(self, camera: str, msg: Any) -> None:
        buffer = self.frames.get(camera)
        if buffer is not None:
            buffer.add(msg)

    def add_step(self, msg: Any) -> None:
        with self.cond:
            self._pending.append((self._clock(), msg))
            self.cond.notify()

    def add_driver_state(self, msg: Any) -> None:
        """A scarls_interfaces/DriverState (state, reason, header stamp)."""
        state = str(msg.state)
        if state not in DRIVER_STATES:
            self._log.warning(f'driver state {state!r} unknown: recorded as unknown',
                              throttled=True)
            state = 'unknown'
        self.safety.add(stamp_ns(msg.header.stamp), state, str(msg.reason))

    def add_state(self, msg: Any) -> None:
        outcome = TERMINAL.get(msg.phase)
        if outcome is None and msg.event == 'EPISODE_CLOSED':
            outcome = TERMINAL.get(msg.previous_phase)
        if outcome is None or msg.episode_id == 0:
            return
        stamp = stamp_ns(msg.header.stamp)
        with self.cond:
            known = self._ends.get(msg.episode_id)
            if known is None or stamp > known[3]:
                self._ends[msg.episode_id] = (outcome, int(msg.steps), self._clock(), stamp)
                self.cond.notify()

    # -- work (one thread) -------------------------------------------------------------------
    def wait(self, timeout: float) -> None:
        with self.cond:
            self.cond.wait(timeout=timeout)

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def poll(self) -> None:
        """Append what can be matched, drop what timed out, finalise what has ended."""
        self._drain()
        self._maybe_finalize()
        self._settle_unrecorded()

    @property
    def open_episode(self) -> int | None:
        """Actor episode id of the episode being written, if any."""
        return None if self._episode is None else self._episode.actor_episode_id

    def pending_steps(self) -> int:
        with self.cond:
            return len(self._pending)

    def open_episode_counters(self) -> tuple[Any | None, int]:
        """The open episode's writer counters (``WriterStats``: queue depth and capacity,
        drops) and its dropped steps; ``(None, 0)`` between episodes. Safe from any thread."""
        episode = self._episode
        if episode is None:
            return None, 0
        return episode.writer.stats(), int(episode.dropped)

    def abort(self) -> DiscardedEpisode | None:
        """Stop: an unfinished episode is discarded (never left half-visible)."""
        episode, self._episode = self._episode, None
        if episode is None:
            return None
        episode.writer.abort()
        return DiscardedEpisode(episode.actor_episode_id, episode.steps_seen,
                                'unfinished when recording stopped')

    def _drain(self) -> None:
        while True:
            with self.cond:
                if not self._pending:
                    return
                received, step = self._pending[0]
            episode = self._episode
            if episode is not None and step.episode_id != episode.actor_episode_id:
                if step.episode_id < episode.actor_episode_id:
                    with self.cond:
                        self._pending.popleft()  # a late step of an episode already closed
                    continue
                # the next episode has begun: the current one must be finalised first
                self._maybe_finalize(force=self._clock() - received > FINALIZE_WAIT_S)
                if self._episode is not None:
                    return
            lost = self._lost.get(step.episode_id)
            if lost is not None:   # its writer could not be created: the episode is lost
                with self.cond:
                    self._pending.popleft()
                lost[0] += 1
                continue
            images = self._match(step)
            if images is None:
                if self._clock() - received < self._timeout:
                    return  # frames may still be on their way
                with self.cond:
                    self._pending.popleft()
                self._count_drop(step, 'no_frames', 'frames never arrived')
                continue
            with self.cond:
                self._pending.popleft()
            self._append(step, images)

    def _match(self, step: Any) -> dict[str, np.ndarray] | None:
        images = {}
        for name, stamp in zip(step.image_names, step.image_stamps, strict=False):
            if name not in self.frames:
                continue
            msg = self.frames[name].get(stamp_ns(stamp))
            if msg is None:
                return None
            try:
                images[name] = self._decode(msg, name) if self._per_camera else self._decode(msg)
            except ValueError as exc:
                self._log.warning(f'camera {name}: frame not decodable: {exc}', throttled=True)
                return None
        if set(images) != set(self.config.cameras):
            return None
        return images

    def _count_drop(self, step: Any, cause: str, why: str) -> None:
        episode = self._episode
        if episode is not None and episode.actor_episode_id == step.episode_id:
            episode.dropped += 1
            episode.steps_seen += 1
            episode.drops[cause] += 1
        else:   # before the episode's first recorded step: counted when (if) it opens
            self._early.setdefault(step.episode_id, collections.Counter())[cause] += 1
        self._log.warning(f'step {step.step} of actor episode {step.episode_id} dropped: {why}',
                          throttled=True)

    def _ensure_episode(self, step: Any, images) -> _Episode | None:
        if self._episode is not None:
            return self._episode
        self._settle_older(step.episode_id)
        c = self.config
        first = next(iter(images.values()))
        try:
            writer = self._writer_factory(
                c.root, c.task, c.ecu_id, cameras=c.cameras,
                image_shape=tuple(first.shape[:2]), state_dim=len(step.observation_state),
                action_dim=len(step.action), fps=c.fps, codec=c.codec, **c.writer_options)
        except Exception as exc:  # noqa: BLE001 - StorageError (disk full...): episode lost
            early = self._early.pop(step.episode_id, collections.Counter())
            self._lost[step.episode_id] = [1 + sum(early.values()), str(exc)]
            self._log.error(f'actor episode {step.episode_id} cannot be recorded: {exc}; '
                            'its steps are lost (counted), recording resumes with the next '
                            'episode')
            return None
        early = self._early.pop(step.episode_id, collections.Counter())
        self._episode = _Episode(step.episode_id, writer, started=self._clock(),
                                 first_stamp_ns=stamp_ns(step.header.stamp),
                                 steps_seen=sum(early.values()), dropped=sum(early.values()),
                                 drops=early)
        return self._episode

    def _settle_older(self, episode_id: int) -> None:
        """A newer actor episode has begun: older ones without an episode on disk are lost,
        also when their end was never reported (e.g. the actor died)."""
        for old in sorted(k for k in self._lost if k < episode_id):
            steps, error = self._lost.pop(old)
            with self.cond:
                self._ends.pop(old, None)
            self._lose(old, steps, f'could not be stored: {error}')
        for old in sorted(k for k in self._early if k < episode_id):
            steps = sum(self._early.pop(old).values())
            with self.cond:
                self._ends.pop(old, None)
            self._log.error(f'actor episode {old}: no step could be recorded ({steps} '
                            'dropped), nothing written')
            self._lose(old, steps, 'no step could be recorded')

    def _append(self, step: Any, images: dict[str, np.ndarray]) -> None:
        episode = self._ensure_episode(step, images)
        if episode is None:
            return
        try:
            state = np.asarray(step.observation_state, dtype=np.float32)
            action = np.asarray(step.action, dtype=np.float32)
            stamp = stamp_ns(step.header.stamp)
            accepted = episode.writer.append(StepRecord(
                images=images, state=state, action=action,
                intervention=bool(step.is_intervention), timestamp=stamp * 1e-9))
        except Exception as exc:  # noqa: BLE001 - EpisodeError/StorageError: drop, say why
            episode.dropped += 1
            episode.steps_seen += 1
            episode.drops['not_stored'] += 1
            self._log.error(f'step {step.step} not recorded: {exc}', throttled=True)
            return
        episode.steps_seen += 1
        episode.model_version = int(step.model_version)
        if not accepted:
            episode.dropped += 1
            episode.drops['queue_full'] += 1
            explain = getattr(episode.writer, 'explain_drop', None)
            why = explain() if explain is not None else 'writer queue full'
            self._log.warning(f'step {step.step} of actor episode {step.episode_id} dropped: '
                              f'{why}', throttled=True)
            return
        episode.written.append((stamp, action))
        js_ns = stamp_ns(step.joint_state_stamp)
        for name, stamp_i in zip(step.image_names, step.image_stamps, strict=False):
            episode.skew_ms.setdefault(name, []).append(abs(stamp_ns(stamp_i) - js_ns) * 1e-6)

    def _safety_codes(self, episode: _Episode) -> np.ndarray | None:
        """One safety code per written step (None when no driver state was ever seen)."""
        if not len(self.safety):
            return None
        codes = np.empty(len(episode.written), dtype=np.uint8)
        for i, (stamp, action) in enumerate(episode.written):
            known = self.safety.state_at(stamp, self._period_ns)
            if known is None:
                name = 'unknown'
            else:
                name = known[0]
                if name == 'clamped' and heavy_clamp(action, self.config.joint_limits):
                    name = 'clamped_heavily'
            codes[i] = SAFETY_CODES[name]
        return codes

    def _lose(self, actor_episode_id: int, steps: int, reason: str) -> None:
        for losses in (self.losses, self._unreported):
            losses.episodes += 1
            losses.steps += int(steps)
            losses.last_error = reason
        self._on_discarded(DiscardedEpisode(actor_episode_id, int(steps), reason))

    def _settle_unrecorded(self) -> None:
        """Actor episodes that ended without an episode on disk: lost (counted)."""
        with self.cond:
            ended = {k: v for k, v in self._ends.items()
                     if k in self._lost or k in self._early}
        for episode_id, (_outcome, steps, t_end, _stamp) in ended.items():
            lost = self._lost.get(episode_id)
            seen = lost[0] if lost is not None else sum(self._early[episode_id].values())
            if seen < steps and self._clock() - t_end < FINALIZE_WAIT_S:
                continue   # some steps are still in flight
            with self.cond:
                self._ends.pop(episode_id, None)
            if lost is not None:
                self._lost.pop(episode_id)
                self._lose(episode_id, max(steps, seen), f'could not be stored: {lost[1]}')
            else:
                self._early.pop(episode_id)
                self._log.error(f'actor episode {episode_id}: no step could be recorded '
                                f'({seen} dropped), nothing written')
                self._lose(episode_id, max(steps, seen), 'no step could be recorded')

    def _maybe_finalize(self, force: bool = False) -> None:
        episode = self._episode
        if episode is None:
            return
        end = self._ends.get(episode.actor_episode_id)
        if end is not None and end[3] < episode.first_stamp_ns:
            end = None  # the end of an older episode with the same id (earlier session)
        if end is None and not force:
            return
        outcome, steps, t_end, _ = end if end is not None else (
            'aborted', episode.steps_seen, self._clock(), 0)
        if episode.steps_seen < steps and self._clock() - t_end < FINALIZE_WAIT_S \
                and not force:
            return  # some steps are still in flight
        self._episode = None
        with self.cond:
            self._ends.pop(episode.actor_episode_id, None)
        recorded = episode.steps_seen - episode.dropped
        if recorded == 0:
            episode.writer.abort()
            self._log.error(f'actor episode {episode.actor_episode_id}: no step could be '
                            'recorded, nothing written')
            self._lose(episode.actor_episode_id, max(steps, episode.steps_seen),
                       'no step could be recorded')
            return
        missing = max(0, steps - episode.steps_seen)
        if missing:
            episode.drops['not_received'] += missing
        dropped = episode.dropped + missing
        safety = self._safety_codes(episode)
        extra = {**self.config.extra_meta,
                 'camera_skew_ms': skew_summary(episode.skew_ms),
                 'actor_episode_id': episode.actor_episode_id,
                 'dropped_steps': dropped,
                 'dropped_by_cause': dict(sorted(episode.drops.items()))}
        if self._unreported.episodes:
            extra['recorder_losses'] = self._unreported.to_dict()
        try:
            ref = episode.writer.finalize(outcome, int(episode.model_version), extra=extra,
                                          safety=safety)
        except Exception as exc:  # noqa: BLE001 - StorageError (disk full...): nothing visible
            # the writer discarded the episode (temp dir and reservation); make sure of it
            episode.writer.abort()
            self._log.error(f'episode of actor episode {episode.actor_episode_id} could not '
                            f'be saved: {exc}')
            self._lose(episode.actor_episode_id, max(steps, episode.steps_seen),
                       f'could not be saved: {exc}')
            return
        self._unreported = RecorderLosses()
        self._on_saved(SavedEpisode(ref, outcome, int(episode.model_version),
                                    int(episode.actor_episode_id), int(dropped),
                                    float(self._clock() - t_end), safety))
