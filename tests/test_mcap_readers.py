"""Our MCAP bags through Foxglove's own readers: the `mcap` package's reader and the
`mcap-ros2-support` decoder, which parses each channel's stored ros2msg definition itself.

- every message type installed here (every ``share/<pkg>/msg/*.msg`` of the ament prefixes,
  scarls_interfaces included), filled with varied values, written by the project's bag writer:
  bytes, times, schemas and every field read back;
- a bag recorded by ``scarls bag record`` from a live publisher process: what was published is
  what the readers decode (a latched topic included);
- episodes exported with ``scarls dataset export --format mcap``: frames and steps equal the
  Zarr arrays.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from mcap.reader import make_reader
from mcap_ros2.decoder import DecoderFactory
from rosbags.interfaces import Nodetype
from test_bags import CAMS, _make_episodes

from scarls.bags.convert import episodes_to_bag
from scarls.bags.io import BagWriter
from scarls.bags.types import default_registry
from scarls.bringup.launcher import clean_fastdds_shm, parent_death_preexec, ros_env
from scarls.episodes import EpisodeReader, list_episodes

DTYPES = {'bool': np.bool_, 'byte': np.uint8, 'char': np.uint8, 'octet': np.uint8,
          'int8': np.int8, 'uint8': np.uint8, 'int16': np.int16, 'uint16': np.uint16,
          'int32': np.int32, 'uint32': np.uint32, 'int64': np.int64, 'uint64': np.uint64,
          'float32': np.float32, 'float64': np.float64}
TEXT = list('abcXYZ é→_/0"\'\\')
_EMPTY = 'structure_needs_at_least_one_member'   # rosbags' member of empty messages


def read_mcap(bag: Path) -> tuple[object, object, list]:
    """(header, summary, [(schema, channel, message, decoded), ...]) with Foxglove's readers."""
    files = sorted(bag.glob('*.mcap'))
    assert len(files) == 1, files
    with files[0].open('rb') as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        header, summary = reader.get_header(), reader.get_summary()
        return header, summary, list(reader.iter_decoded_messages(log_time_order=False))


def installed_types() -> list[str]:
    """Every message type whose .msg file this installation has (first prefix wins)."""
    found: dict[str, None] = {}
    prefixes = [p for p in os.environ.get('AMENT_PREFIX_PATH', '').split(os.pathsep) if p]
    for prefix in [*map(Path, prefixes), Path(sys.prefix)]:
        for msg in sorted((prefix / 'share').glob('*/msg/*.msg')):
            found.setdefault(f'{msg.parent.parent.name}/msg/{msg.stem}')
    return list(found)


# -- values of any type ------------------------------------------------------------------------

def _scalar(rng, kind: str, bound: int):
    if kind == 'string':
        text = ''.join(rng.choice(TEXT, size=int(rng.integers(0, 9))))
        return text[:bound] if bound else text
    if kind == 'bool':
        return bool(rng.integers(0, 2))
    if kind in ('byte', 'char'):
        return int(rng.integers(0, 128))
    dtype = np.dtype(DTYPES[kind])
    if dtype.kind == 'f':
        return float(dtype.type(rng.normal() * 1000))
    info = np.iinfo(dtype)
    return int(rng.integers(info.min, info.max, endpoint=True,
                            dtype=np.uint64 if info.max >= 2**63 else np.int64))


def _value(registry, rng, kind, spec):
    if kind == Nodetype.BASE:
        return _scalar(rng, *spec)
    if kind == Nodetype.NAME:
        return fill(registry, rng, spec)
    (inner_kind, inner), n = spec
    if kind == Nodetype.SEQUENCE:
        n = int(rng.integers(0, (n or 3) + 1))
    if inner_kind == Nodetype.BASE and inner[0] != 'string':
        return np.array([_scalar(rng, inner[0], 0) for _ in range(n)], dtype=DTYPES[inner[0]])
    return [_value(registry, rng, inner_kind, inner) for _ in range(n)]


def fill(registry, rng, msgtype: str):
    """A message of ``msgtype`` (rosbags class) with every field set to a random value."""
    _, fields = registry.store.fielddefs[msgtype]
    return registry.store.types[msgtype](**{
        name: _value(registry, rng, kind, spec) for name, (kind, spec) in fields})


def assert_same(registry, ours, theirs, path: str) -> None:
    """``ours`` (a rosbags message) field by field against Foxglove's decoded message."""
    if hasattr(ours, '__msgtype__'):
        for name, _ in registry.store.fielddefs[ours.__msgtype__][1]:
            if name != _EMPTY:
                assert_same(registry, getattr(ours, name), getattr(theirs, name),
                            f'{path}.{name}')
    elif isinstance(ours, np.ndarray):
        if isinstance(theirs, bytes | bytearray):
            theirs = np.frombuffer(theirs, np.uint8)
        got = np.asarray(list(theirs), dtype=ours.dtype)
        np.testing.assert_array_equal(got, ours, err_msg=path)
    elif isinstance(ours, list):
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(registry, a, b, f'{path}[{i}]')
    elif isinstance(ours, float):
        assert ours == theirs or (math.isnan(ours) and math.isnan(theirs)), (path, ours, theirs)
    else:
        assert ours == theirs and type(ours) is type(theirs), (path, ours, theirs)


# -- the tests ---------------------------------------------------------------------------------

def test_every_installed_type_reads_back_with_foxglove_readers(tmp_path):
    registry = default_registry()
    types = installed_types()
    packages = {t.split('/')[0] for t in types}
    assert {'std_msgs', 'sensor_msgs', 'geometry_msgs', 'visualization_msgs',
            'trajectory_msgs', 'builtin_interfaces', 'scarls_interfaces'} <= packages
    rng = np.random.default_rng(7)
    written = []
    with BagWriter(tmp_path / 'all', 'mcap', registry=registry) as bag:
        for i, msgtype in enumerate(types):
            topic = f'/types/t{i}'
            bag.add_topic(topic, msgtype)
            for k in range(3):
                msg = fill(registry, rng, msgtype)
                data = registry.serialize(msg, msgtype)
                stamp = 1_700_000_000_000_000_000 + 1000 * i + k
                bag.write(topic, stamp, data)
                written.append((topic, msgtype, stamp, msg, data))
    header, summary, records = read_mcap(tmp_path / 'all')
    assert header.profile == 'ros2'
    assert summary.statistics.message_count == len(written) == len(records)
    assert summary.statistics.channel_count == len(types)
    for (schema, channel, message, decoded), (topic, msgtype, stamp, msg, data) in zip(
            records, written, strict=True):
        assert (channel.topic, schema.name) == (topic, msgtype)
        assert (schema.encoding, channel.message_encoding) == ('ros2msg', 'cdr')
        assert yaml.safe_load(channel.metadata['offered_qos_profiles']) == []
        assert message.log_time == message.publish_time == stamp
        assert message.data == data
        assert_same(registry, msg, decoded, msgtype)


def test_exported_episodes_read_back_with_foxglove_readers(tmp_path):
    _make_episodes(tmp_path / 'data', 2, 6)
    summary = episodes_to_bag(tmp_path / 'data', 'pick_cube', tmp_path / 'bag')
    assert summary['namespace'] == '/ecu7'
    _, _, records = read_mcap(tmp_path / 'bag')
    by_topic: dict[str, list] = {}
    for schema, channel, message, decoded in records:
        by_topic.setdefault(channel.topic, []).append((schema.name, message.log_time, decoded))
    steps = by_topic['/ecu7/actor/step']
    assert {s for s, _, _ in steps} == {'scarls_interfaces/msg/ActorStep'}
    ends = [d for _, _, d in by_topic['/ecu7/actor/state']]
    readers = [EpisodeReader(e.path) for e in list_episodes(tmp_path / 'data', 'pick_cube')]
    assert [d.phase for d in ends] == [r.meta.outcome.upper() for r in readers]
    assert len(steps) == sum(r.meta.steps for r in readers) == 12
    i = 0
    for episode in readers:
        state, action = episode.state[:], episode.action[:]
        for k in range(episode.meta.steps):
            _, log_time, step = steps[i]
            assert step.step == k and list(step.image_names) == list(CAMS)
            np.testing.assert_array_equal(np.array(step.observation_state, np.float32),
                                          state[k].astype(np.float32))
            np.testing.assert_array_equal(np.array(step.action, np.float32),
                                          action[k].astype(np.float32))
            assert step.is_intervention == bool(episode.intervention[k])
            for c, cam in enumerate(CAMS):
                _, frame_time, frame = by_topic[f'/ecu7/camera/{cam}/image_raw'][i]
                assert frame.encoding == 'rgb8' and frame_time <= log_time
                assert (frame.header.stamp.sec, frame.header.stamp.nanosec) == \
                    (step.image_stamps[c].sec, step.image_stamps[c].nanosec)
                pixels = np.frombuffer(frame.data, np.uint8).reshape(frame.height, frame.width, 3)
                np.testing.assert_array_equal(pixels, episode.images(cam)[k])
            i += 1


NS = 'mcaptest'


@pytest.mark.ros
def test_recorded_bag_reads_back_with_foxglove_readers(ros, tmp_path, domain_id):
    from rosutil import Probe
    from scarls_interfaces.msg import ActorState, LearnerStatus
    from sensor_msgs.msg import JointState
    from std_msgs.msg import String

    from scarls.ros import qos
    from scarls.ros.conversions import image_to_msg, ns_to_stamp

    probe = Probe(NS)
    rec = None
    try:
        n = probe.node
        pubs = {'chatter': n.create_publisher(String, 'chatter', qos.EVENTS),
                'joint_states': n.create_publisher(JointState, 'joint_states', qos.EVENTS),
                'camera/top/image_raw': n.create_publisher(type(image_to_msg(
                    np.zeros((2, 2, 3), np.uint8), ns_to_stamp(0), 'top')),
                    'camera/top/image_raw', qos.EVENTS),
                'learner/status': n.create_publisher(LearnerStatus, 'learner/status',
                                                     qos.EVENTS),
                'actor/state': n.create_publisher(ActorState, 'actor/state', qos.STATE)}
        latched = ActorState(phase='IDLE', previous_phase='INIT', model_version=4)
        pubs['actor/state'].publish(latched)   # before the recorder exists: latched
        bag = tmp_path / 'rec'
        log_path = tmp_path / 'record.log'
        rec = subprocess.Popen(
            [sys.executable, '-m', 'scarls.cli.bag', 'record', '-o', str(bag), '--namespace',
             NS], env=ros_env(domain_id), stdout=log_path.open('w'), stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, preexec_fn=parent_death_preexec())
        probe.wait_for(lambda: all(p.get_subscription_count() >= 1 for p in pubs.values()),
                       60, 'the recorder on every topic')
        rng = np.random.default_rng(3)
        sent: dict[str, list] = {'actor/state': [latched]}
        for i in range(25):
            t = ns_to_stamp(1_700_000_000_000_000_000 + i * 33_333_333)
            msgs = {
                'chatter': String(data=f'message {i}: é→ "quoted"'),
                'joint_states': JointState(name=[f'j{k}' for k in range(14)],
                                           position=rng.normal(size=14).tolist(),
                                           velocity=[], effort=[]),
                'camera/top/image_raw': image_to_msg(
                    rng.integers(0, 255, (12, 16, 3), dtype=np.uint8), t, 'top'),
                'learner/status': LearnerStatus(
                    ecu_id=NS, state='training', loss=math.nan if i == 0 else 1.0 / (i + 1),
                    metric=0.5, ingested_episodes=[i, i + 1], ingest_latency_s=[0.25, 0.5],
                    samples_trained=2**40 + i),
            }
            msgs['joint_states'].header.stamp = t
            for topic, msg in msgs.items():
                pubs[topic].publish(msg)
                sent.setdefault(topic, []).append(msg)
            probe.spin_for(0.02)
        probe.spin_for(1.0)
        rec.send_signal(signal.SIGINT)
        assert rec.wait(timeout=60) == 0, log_path.read_text()
        rec = None

        _, summary, records = read_mcap(bag)
        got: dict[str, list] = {}
        for schema, channel, _, decoded in records:
            assert channel.topic.startswith(f'/{NS}/')
            assert (schema.encoding, channel.message_encoding) == ('ros2msg', 'cdr')
            got.setdefault(channel.topic[len(NS) + 2:], []).append(decoded)
        assert {t: len(m) for t, m in got.items()} == {t: len(m) for t, m in sent.items()}
        for a, b in zip(sent['chatter'], got['chatter'], strict=True):
            assert a.data == b.data
        for a, b in zip(sent['joint_states'], got['joint_states'], strict=True):
            assert list(a.name) == list(b.name) and list(a.position) == list(b.position)
            assert (a.header.stamp.sec, a.header.stamp.nanosec) == \
                (b.header.stamp.sec, b.header.stamp.nanosec)
        for a, b in zip(sent['camera/top/image_raw'], got['camera/top/image_raw'], strict=True):
            assert (a.height, a.width, a.encoding, a.step) == (b.height, b.width, b.encoding,
                                                               b.step)
            assert bytes(a.data) == bytes(b.data)
        for a, b in zip(sent['learner/status'], got['learner/status'], strict=True):
            assert (a.loss == b.loss) or (math.isnan(a.loss) and math.isnan(b.loss))
            assert (a.metric, a.samples_trained) == (b.metric, b.samples_trained)
            assert list(a.ingested_episodes) == list(b.ingested_episodes)
            assert list(a.ingest_latency_s) == list(b.ingest_latency_s)
        (state,) = got['actor/state']
        assert (state.phase, state.previous_phase, state.model_version) == ('IDLE', 'INIT', 4)
        # the offered QoS of each topic, as rosbag2 stores it in the channel metadata
        offered = {c.topic: yaml.safe_load(c.metadata['offered_qos_profiles'])
                   for c in summary.channels.values()}
        assert offered[f'/{NS}/actor/state'][0]['durability'] == 'transient_local'
        assert offered[f'/{NS}/chatter'][0]['reliability'] == 'reliable'
    finally:
        if rec is not None:
            rec.kill()
            rec.wait()
            clean_fastdds_shm()
        probe.close()
