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
  filled with other frames;
- an episode is finalised when the actor reported its end and all its steps arrived (or
  ``FINALIZE_WAIT_S`` after the end / after the next episode's first step, at the latest);
- the newest end per actor episode id wins (ids restart with a new actor session, and a latched
  history may replay ends of an earlier session).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scarls.episodes import BackgroundEpisodeWriter, EpisodeRef, StepRecord

__all__ = ['FINALIZE_WAIT_S', 'TERMINAL', 'FrameBuffer', 'SavedEpisode', 'StepAligner',
           'skew_summary', 'stamp_ns']

TERMINAL = {'SUCCESS': 'success', 'FAIL': 'fail', 'ABORTED': 'aborted'}
FINALIZE_WAIT_S = 3.0


def stamp_ns(stamp: Any) -> int:
    """builtin_interfaces/Time (any object with sec, nanosec) -> integer nanoseconds."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


class Log(Protocol):
    """Where the aligner reports (the node's logger, or Python logging offline).
    ``throttled`` messages may be rate-limited by the receiver."""

    def info(self, msg: str) -> None: ...
    def warning(self, msg: str, throttled: bool = False) -> None: ...
    def error(self, msg: str, throttled: bool = False) -> None: ...


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


class StepAligner:
    """Steps + frames + episode ends in, Zarr episodes out (see the module doc).

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
        capacity = max(10, int(float(config.buffer_seconds) * float(config.fps) * 1.5))
        self.frames = {c: FrameBuffer(capacity) for c in config.cameras}
        self._pending: collections.deque[tuple[float, Any]] = collections.deque()
        self._ends: dict[int, tuple[str, int, float, int]] = {}
        self.cond = threading.Condition()
        self._episode: _Episode | None = None

    @property
    def cameras(self) -> tuple[str, ...]:
        return tuple(self.config.cameras)

    # -- inputs (cheap; never touch the disk) ------------------------------------------------
    def add_frame(self, camera: str, msg: Any) -> None:
        buffer = self.frames.get(camera)
        if buffer is not None:
            buffer.add(msg)

    def add_step(self, msg: Any) -> None:
        with self.cond:
            self._pending.append((self._clock(), msg))
            self.cond.notify()

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

    @property
    def open_episode(self) -> int | None:
        """Actor episode id of the episode being written, if any."""
        return None if self._episode is None else self._episode.actor_episode_id

    def pending_steps(self) -> int:
        with self.cond:
            return len(self._pending)

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
            images = self._match(step)
            if images is None:
                if self._clock() - received < self._timeout:
                    return  # frames may still be on their way
                with self.cond:
                    self._pending.popleft()
                self._count_drop(step, 'frames never arrived')
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

    def _count_drop(self, step: Any, why: str) -> None:
        episode = self._ensure_episode(step, None)
        if episode is not None:
            episode.dropped += 1
            episode.steps_seen += 1
        self._log.warning(f'step {step.step} of actor episode {step.episode_id} dropped: {why}',
                          throttled=True)

    def _ensure_episode(self, step: Any, images) -> _Episode | None:
        if self._episode is not None:
            return self._episode
        if images is None:
            return None
        c = self.config
        first = next(iter(images.values()))
        writer = self._writer_factory(
            c.root, c.task, c.ecu_id, cameras=c.cameras, image_shape=tuple(first.shape[:2]),
            state_dim=len(step.observation_state), action_dim=len(step.action), fps=c.fps,
            codec=c.codec, **c.writer_options)
        self._episode = _Episode(step.episode_id, writer, started=self._clock(),
                                 first_stamp_ns=stamp_ns(step.header.stamp))
        return self._episode

    def _append(self, step: Any, images: dict[str, np.ndarray]) -> None:
        try:
            episode = self._ensure_episode(step, images)
            accepted = episode.writer.append(StepRecord(
                images=images,
                state=np.asarray(step.observation_state, dtype=np.float32),
                action=np.asarray(step.action, dtype=np.float32),
                intervention=bool(step.is_intervention),
                timestamp=stamp_ns(step.header.stamp) * 1e-9))
            episode.steps_seen += 1
            episode.model_version = int(step.model_version)
            if accepted:
                js_ns = stamp_ns(step.joint_state_stamp)
                for name, stamp in zip(step.image_names, step.image_stamps, strict=False):
                    episode.skew_ms.setdefault(name, []).append(
                        abs(stamp_ns(stamp) - js_ns) * 1e-6)
            if not accepted:
                episode.dropped += 1
                self._log.warning('writer queue full: step dropped (disk too slow?)',
                                  throttled=True)
        except Exception as exc:  # noqa: BLE001 - EpisodeError/StorageError: drop, say why
            if self._episode is not None:
                self._episode.dropped += 1
                self._episode.steps_seen += 1
            self._log.error(f'step {step.step} not recorded: {exc}', throttled=True)

    def _maybe_finalize(self, force: bool = False) -> None:
        episode = self._episode
        if episode is None:
            # an episode that ended before any of its steps could be matched: forget it
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
        self._ends.pop(episode.actor_episode_id, None)
        recorded = episode.steps_seen - episode.dropped
        if recorded == 0:
            episode.writer.abort()
            self._log.error(f'actor episode {episode.actor_episode_id}: no step could be '
                            'recorded, nothing written')
            self._on_discarded(DiscardedEpisode(episode.actor_episode_id, episode.steps_seen,
                                                'no step could be recorded'))
            return
        dropped = episode.dropped + max(0, steps - episode.steps_seen)
        try:
            ref = episode.writer.finalize(outcome, int(episode.model_version), extra={
                **self.config.extra_meta,
                'camera_skew_ms': skew_summary(episode.skew_ms),
                'actor_episode_id': episode.actor_episode_id,
                'dropped_steps': dropped})
        except Exception as exc:  # noqa: BLE001 - StorageError (disk full...): nothing visible
            self._log.error(f'episode of actor episode {episode.actor_episode_id} could not '
                            f'be saved: {exc}')
            self._on_discarded(DiscardedEpisode(episode.actor_episode_id, episode.steps_seen,
                                                f'could not be saved: {exc}'))
            return
        self._on_saved(SavedEpisode(ref, outcome, int(episode.model_version),
                                    int(episode.actor_episode_id), int(dropped),
                                    float(self._clock() - t_end)))

