"""Bags <-> Zarr episodes, offline.

``bag_to_episodes``: the camera frames, actor/step and actor/state messages of one ECU in a bag
go through the scheduler's own alignment (:class:`scarls.scheduler.alignment.StepAligner`) in
the order and at the times they were received, so the episodes are the ones the scheduler
would have written from that stream (same frames per step, same drops, same outcomes).

``episodes_to_bag``: episodes as the topics an ECU publishes (frames, steps, and the end of each
episode as an actor state), so a bag can be replayed into a scheduler, inspected in Foxglove, or
turned back into episodes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scarls.bags.errors import BagError
from scarls.bags.io import BagReader, BagWriter
from scarls.bags.types import default_registry
from scarls.episodes import EpisodeReader, EpisodeWriter, list_episodes
from scarls.scheduler.alignment import (
    FINALIZE_WAIT_S,
    AlignerConfig,
    DiscardedEpisode,
    SavedEpisode,
    StepAligner,
)

__all__ = ['ConversionReport', 'bag_to_episodes', 'decode_image', 'episodes_to_bag',
           'find_namespace']

log = logging.getLogger('scarls.bag')

IMAGE = 'sensor_msgs/msg/Image'
STEP = 'scarls_interfaces/msg/ActorStep'
STATE = 'scarls_interfaces/msg/ActorState'
CAMERAS = ('top', 'left', 'right')


def decode_image(msg: Any) -> np.ndarray:
    """A decoded sensor_msgs/Image (rosbags or rclpy) -> (H, W, 3) uint8; ValueError if bad.
    The same checks as the scheduler's (scarls.ros.conversions.msg_to_image)."""
    from scarls.ros.conversions import msg_to_image
    return msg_to_image(msg)


def camera_topic(ns: str, camera: str) -> str:
    return f'{ns}/camera/{camera}/image_raw'


def bag_cameras(topics, ns: str) -> tuple[str, ...]:
    """The cameras recorded for namespace ``ns`` (``<ns>/camera/<name>/image_raw`` topics), in
    the default robot's order first, then by name."""
    prefix, suffix = f'{ns}/camera/', '/image_raw'
    names = {t[len(prefix):-len(suffix)] for t in topics
             if t.startswith(prefix) and t.endswith(suffix) and '/' not in
             t[len(prefix):-len(suffix)]}
    return tuple([c for c in CAMERAS if c in names] + sorted(names - set(CAMERAS)))


def find_namespace(topics: list[str]) -> str:
    """The ECU namespace of a bag: the prefix of its actor/step topic."""
    found = sorted({t[:-len('/actor/step')] for t in topics if t.endswith('/actor/step')})
    if len(found) > 1:
        raise BagError(f'the bag holds several ECUs {found}: choose one with --namespace')
    if not found:
        raise BagError('the bag has no <namespace>/actor/step topic: it is not the recording '
                       'of an ECU (record with `scarls bag record --namespace <ecu>`)')
    return found[0]


@dataclass
class ConversionReport:
    bag: str
    namespace: str = ''
    saved: list[dict] = field(default_factory=list)
    not_rebuilt: list[dict] = field(default_factory=list)
    bad_messages: dict[str, int] = field(default_factory=dict)
    messages: int = 0

    @property
    def ok(self) -> bool:
        return not self.not_rebuilt and not self.bad_messages

    def to_dict(self) -> dict:
        return {'bag': self.bag, 'namespace': self.namespace, 'messages': self.messages,
                'saved': self.saved, 'not_rebuilt': self.not_rebuilt,
                'bad_messages': self.bad_messages, 'ok': self.ok}


class _Log:
    def info(self, msg: str) -> None:
        log.info(msg)

    def warning(self, msg: str, throttled: bool = False) -> None:
        log.warning(msg)

    def error(self, msg: str, throttled: bool = False) -> None:
        log.error(msg)


def bag_to_episodes(bag: str | os.PathLike[str], data_root: str | os.PathLike[str], *,
                    task: str = 'pick_cube', ecu_id: str | None = None,
                    namespace: str | None = None, codec: str = 'lz4',
                    cameras: tuple[str, ...] | None = None, match_timeout_s: float = 2.0,
                    buffer_seconds: float = 5.0, fps: float = 30.0,
                    fsync: bool = True) -> ConversionReport:
    """Rebuild the episodes of one ECU's bag under ``data_root/task`` (see the module doc).
    The parameters are the scheduler's (same defaults); ``cameras`` default to the ones the bag
    recorded for the namespace (whatever the robot had)."""
    with BagReader(bag) as reader:
        ns = find_namespace(list(reader.topics)) if namespace is None \
            else '/' + namespace.strip('/')
        if not cameras:
            cameras = bag_cameras(reader.topics, ns) or CAMERAS
        topics = {camera_topic(ns, c): c for c in cameras}
        step_topic, state_topic = f'{ns}/actor/step', f'{ns}/actor/state'
        missing = [t for t in (*topics, step_topic, state_topic) if t not in reader.topics]
        if missing:
            raise BagError(f'{reader.path}: topics needed to rebuild episodes are missing: '
                           f'{missing} (record all of the ECU, or pass --cameras)')
        for topic, want in ((step_topic, STEP), (state_topic, STATE),
                            *((t, IMAGE) for t in topics)):
            if reader.topics[topic].msgtype != want:
                raise BagError(f'{reader.path}: {topic} has type '
                               f'{reader.topics[topic].msgtype}, expected {want}')
        report = ConversionReport(str(reader.path), ns)
        now = [0.0]
        aligner = StepAligner(
            AlignerConfig(root=Path(data_root), task=task, ecu_id=ecu_id or ns.strip('/'),
                          codec=codec, fps=fps, match_timeout_s=match_timeout_s,
                          buffer_seconds=buffer_seconds, cameras=tuple(cameras),
                          writer_options={'fsync': fsync}),
            decode_image=decode_image, log=_Log(),
            on_saved=lambda s: report.saved.append(_saved_dict(s)),
            on_discarded=lambda d: report.not_rebuilt.append(_discarded_dict(d)),
            clock=lambda: now[0], writer_factory=EpisodeWriter)
        for msg in reader.messages([*topics, step_topic, state_topic]):
            report.messages += 1
            now[0] = msg.timestamp * 1e-9
            try:
                decoded = reader.decoded(msg)
            except Exception as exc:  # noqa: BLE001 - a corrupt message: count, go on
                report.bad_messages[msg.topic] = report.bad_messages.get(msg.topic, 0) + 1
                log.warning('%s: a message of %s cannot be decoded (%s): skipped',
                            reader.path, msg.topic, exc)
                continue
            if msg.topic == step_topic:
                aligner.add_step(decoded)
            elif msg.topic == state_topic:
                aligner.add_state(decoded)
            else:
                aligner.add_frame(topics[msg.topic], decoded)
            aligner.poll()
        # the stream has ended: let the scheduler's clocks run out (late frames time out,
        # ended episodes finalise), then what is still open was never ended in the bag
        horizon = now[0] + match_timeout_s + 2 * FINALIZE_WAIT_S + 1.0
        while now[0] < horizon and (aligner.pending_steps() or aligner.open_episode is not None):
            now[0] += 0.05
            aligner.poll()
        discarded = aligner.abort()
        if discarded is not None:
            report.not_rebuilt.append(_discarded_dict(discarded, 'the bag ends before the '
                                                      'actor reported the end of the episode'))
    return report


def _saved_dict(s: SavedEpisode) -> dict:
    return {'index': s.ref.index, 'path': str(s.ref.path), 'steps': s.ref.steps,
            'outcome': s.outcome, 'actor_episode_id': s.actor_episode_id,
            'dropped_steps': s.dropped_steps}


def _discarded_dict(d: DiscardedEpisode, reason: str | None = None) -> dict:
    return {'actor_episode_id': d.actor_episode_id, 'steps_seen': d.steps_seen,
            'reason': reason or d.reason}


# -- episodes -> bag -------------------------------------------------------------------------

def _exact_ns(seconds: float) -> int:
    """Integer nanoseconds whose ``ns * 1e-9`` is exactly ``seconds`` (the scheduler stores
    ``stamp_ns * 1e-9``), so a bag -> episode round trip keeps timestamps bit for bit."""
    base = round(seconds * 1e9)
    for delta in range(0, 2048):
        for ns in (base + delta, base - delta):
            if ns * 1e-9 == seconds:
                return ns
    return base


def _qos_table() -> dict[str, list]:
    """The QoS the ECU's publishers offer (scarls.ros.qos), as stored in bags."""
    from scarls.bags.rosqos import from_rclpy
    from scarls.ros import qos
    return {'camera': [from_rclpy(qos.CAMERA)], 'step': [from_rclpy(qos.STEPS)],
            'state': [from_rclpy(qos.STATE)]}


def episodes_to_bag(data_root: str | os.PathLike[str], task: str, out: str | os.PathLike[str],
                    *, episodes: list[int] | None = None, storage: str = 'mcap',
                    namespace: str | None = None,
                    progress: Callable[[int, int, str], None] | None = None) -> dict:
    """Write episodes of ``task`` as an ECU's topics into a new bag; returns a summary.

    Per step: the frame of every camera (rgb8, stamped with the step's time), then the
    ActorStep that used them; after the last step, a terminal ActorState with the outcome.
    Receive times in the bag are the step times, so playback keeps the recorded pace."""
    entries = list_episodes(data_root, task)
    if not entries:
        raise BagError(f'no episodes of task {task!r} under {data_root}')
    if episodes is not None:
        have = {e.index for e in entries}
        missing = sorted(set(episodes) - have)
        if missing:
            raise BagError(f'episodes {missing} of {task!r} do not exist under {data_root} '
                           f'(there are {len(entries)}: 0-{max(have)})')
        entries = [e for e in entries if e.index in set(episodes)]
    registry = default_registry()
    Image = registry.message(IMAGE)
    Step, State = registry.message(STEP), registry.message(STATE)
    Header, Time = registry.message('std_msgs/msg/Header'), registry.message(
        'builtin_interfaces/msg/Time')
    readers = [EpisodeReader(e.path) for e in entries]
    ns = '/' + (namespace or readers[0].meta.ecu_id or 'ecu0').strip('/')
    cameras = readers[0].cameras
    qos = _qos_table()
    written = []
    with BagWriter(out, storage, registry=registry,
                   custom_data={'scarls.namespace': ns, 'scarls.task': task,
                                'scarls.exported_from': str(data_root)}) as bag:
        for c in cameras:
            bag.add_topic(camera_topic(ns, c), IMAGE, qos['camera'])
        bag.add_topic(f'{ns}/actor/step', STEP, qos['step'])
        bag.add_topic(f'{ns}/actor/state', STATE, qos['state'])
        last_ns, last_id = -1, 0   # a first episode may start at time 0 (simulated clock)
        for n, reader in enumerate(readers):
            meta = reader.meta
            if reader.cameras != cameras:
                raise BagError(f'{reader.path}: cameras {reader.cameras} differ from the first '
                               f'episode\'s {cameras}: export them separately')
            # the actor's episode ids, kept while they increase (a scheduler closes an episode
            # when the next id starts); renumbered upwards where a new actor session restarted
            episode_id = max(int(meta.extra.get('actor_episode_id', 0) or 0), last_id + 1)
            last_id = episode_id
            state = np.asarray(reader.state[:], dtype=np.float32)
            action = np.asarray(reader.action[:], dtype=np.float32)
            intervention = np.asarray(reader.intervention[:], dtype=bool)
            stamps = [_exact_ns(float(t)) for t in np.asarray(reader.timestamp[:])]
            if stamps and stamps[0] <= last_ns:
                raise BagError(f'{reader.path}: its steps start before the previous episode '
                               'ends; export the episodes one by one')
            for i, t_ns in enumerate(stamps):
                stamp = Time(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000)
                for c in cameras:
                    frame = np.ascontiguousarray(reader.images(c)[i], dtype=np.uint8)
                    h, w = frame.shape[:2]
                    msg = Image(header=Header(stamp=stamp, frame_id=c), height=h, width=w,
                                encoding='rgb8', is_bigendian=0, step=w * 3,
                                data=frame.reshape(-1))
                    bag.write(camera_topic(ns, c), t_ns, registry.serialize(msg, IMAGE))
                msg = Step(header=Header(stamp=stamp, frame_id=''), episode_id=episode_id,
                           step=i, joint_state_stamp=stamp, image_names=list(cameras),
                           image_stamps=[stamp] * len(cameras), observation_state=state[i],
                           action=action[i], is_intervention=bool(intervention[i]),
                           model_version=int(meta.model_version or 0))
                bag.write(f'{ns}/actor/step', t_ns + 1, registry.serialize(msg, STEP))
            end_ns = (stamps[-1] if stamps else last_ns) + 2
            end = _state_message(State, Header, Time, end_ns, meta, episode_id, len(stamps),
                                 int(intervention.sum()))
            bag.write(f'{ns}/actor/state', end_ns, registry.serialize(end, STATE))
            last_ns = end_ns
            written.append({'index': meta.episode_index, 'steps': len(stamps),
                            'outcome': meta.outcome, 'actor_episode_id': episode_id})
            if progress is not None:
                progress(n + 1, len(readers), f'episode {meta.episode_index}')
        counts = dict(bag.counts)
    return {'bag': str(out), 'storage': storage, 'namespace': ns, 'episodes': written,
            'topics': counts}


def _state_message(State, Header, Time, t_ns: int, meta, episode_id: int, steps: int,
                   interventions: int):
    """The actor's terminal state for an episode's outcome (all fields of ActorState set,
    whatever fields this installation's definition has)."""
    phase = {'success': 'SUCCESS', 'fail': 'FAIL', 'aborted': 'ABORTED'}[meta.outcome]
    values = {
        'header': Header(stamp=Time(sec=t_ns // 1_000_000_000, nanosec=t_ns % 1_000_000_000),
                         frame_id=''),
        'phase': phase, 'previous_phase': 'INFERENCE', 'event': phase,
        'reason': 'exported from a Zarr episode', 'episode_id': episode_id, 'steps': steps,
        'intervention_steps': interventions, 'model_version': int(meta.model_version or 0),
        'intervening': False,
    }
    kwargs = {}
    for f in dataclasses.fields(State):
        if f.name in values:
            kwargs[f.name] = values[f.name]
        elif f.default is not dataclasses.MISSING:
            kwargs[f.name] = f.default
        else:
            kwargs[f.name] = _zero(f.type)
    return State(**kwargs)


def _zero(type_name: Any) -> Any:
    text = str(type_name)
    if 'str' in text:
        return ''
    if 'bool' in text:
        return False
    if 'float' in text:
        return 0.0
    if 'int' in text:
        return 0
    if 'ndarray' in text or 'list' in text:
        return []
    return None

