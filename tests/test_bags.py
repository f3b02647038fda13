"""rosbag2 bags offline: writer/reader round trip (MCAP and SQLite 3), type definitions and
hashes, episodes -> bag -> episodes, bad input (truncated, corrupt, unclosed bags, unknown types,
missing topics)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from scarls.bags.convert import bag_to_episodes, episodes_to_bag
from scarls.bags.errors import BagError
from scarls.bags.io import BagReader, BagWriter, repair_bag
from scarls.bags.types import default_registry
from scarls.episodes import EpisodeReader, EpisodeWriter, StepRecord, list_episodes

CAMS = ('top', 'left', 'right')
STEP = 'scarls_interfaces/msg/ActorStep'
STRING = 'std_msgs/msg/String'


def _string(text: str) -> bytes:
    reg = default_registry()
    return reg.serialize(reg.message(STRING)(data=text), STRING)


def _installed_hash(msgtype: str) -> str:
    package, _, name = msgtype.split('/')
    path = Path(sys.prefix) / 'share' / package / 'msg' / f'{name}.json'
    doc = json.loads(path.read_text())
    return next(h['hash_string'] for h in doc['type_hashes'] if h['type_name'] == msgtype)


def _write_small_bag(path: Path, storage: str, n: int = 20) -> list[tuple[str, int, bytes]]:
    reg = default_registry()
    Step, Time = reg.message(STEP), reg.message('builtin_interfaces/msg/Time')
    Header = reg.message('std_msgs/msg/Header')
    written = []
    with BagWriter(path, storage) as bag:
        bag.add_topic('/ecu0/chatter', STRING)
        bag.add_topic('/ecu0/actor/step', STEP)
        for i in range(n):
            t = 1_000_000_000 + i * 10_000_000
            data = _string(f'hello {i}')
            bag.write('/ecu0/chatter', t, data)
            written.append(('/ecu0/chatter', t, data))
            stamp = Time(sec=1, nanosec=i)
            step = Step(header=Header(stamp=stamp, frame_id=''), episode_id=1, step=i,
                        joint_state_stamp=stamp, image_names=['top'], image_stamps=[stamp],
                        observation_state=np.arange(3, dtype=np.float32),
                        action=np.ones(2, dtype=np.float32), is_intervention=i % 2 == 0,
                        model_version=7)
            data = reg.serialize(step, STEP)
            bag.write('/ecu0/actor/step', t + 1, data)
            written.append(('/ecu0/actor/step', t + 1, data))
            if i == n // 2:
                bag.flush()
    return written


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_round_trip_keeps_bytes_order_types_and_metadata(tmp_path, storage):
    bag = tmp_path / 'bag'
    written = _write_small_bag(bag, storage)
    meta = yaml.safe_load((bag / 'metadata.yaml').read_text())['rosbag2_bagfile_information']
    assert meta['version'] == 9 and meta['storage_identifier'] == storage
    assert meta['message_count'] == len(written)
    hashes = {t['topic_metadata']['name']: t['topic_metadata']['type_description_hash']
              for t in meta['topics_with_message_count']}
    assert hashes['/ecu0/actor/step'] == _installed_hash(STEP)
    assert hashes['/ecu0/chatter'] == _installed_hash(STRING)
    with BagReader(bag) as reader:
        got = [(m.topic, m.timestamp, m.data) for m in reader.messages()]
        assert got == written
        step = reader.topics['/ecu0/actor/step']
        # the custom type travels with its full definition (what ros2 bag / Foxglove decode)
        assert 'MSG: std_msgs/Header' in step.msgdef and 'bool is_intervention' in step.msgdef
        decoded = reader.decoded(next(reader.messages(['/ecu0/actor/step'])))
        assert decoded.model_version == 7 and list(decoded.observation_state) == [0, 1, 2]


def test_unknown_types_are_named(tmp_path):
    reg = default_registry()
    with pytest.raises(BagError, match='no message definition for nosuch_msgs/msg/Thing'):
        reg.ensure('nosuch_msgs/msg/Thing')
    from scarls.bags.record import import_message
    with pytest.raises(BagError, match='nosuch_msgs/msg/Thing is not installed'):
        import_message('nosuch_msgs/msg/Thing')
    # a type not installed here, stored with its definition: still readable and decodable
    bag = tmp_path / 'foreign'
    with BagWriter(bag, 'mcap') as w:
        w.add_topic('/x', 'nosuch_msgs/msg/Thing', msgdef='int32 a\nstring b\n',
                    type_hash='RIHS01_' + '0' * 64)
        w.write('/x', 5, bytes([0, 1, 0, 0, 7, 0, 0, 0, 2, 0, 0, 0, 104, 0]))
    with BagReader(bag) as r:
        msg = r.decoded(next(r.messages()))
        assert (msg.a, msg.b) == (7, 'h')


def test_truncated_corrupt_and_unclosed_bags(tmp_path):
    bag = tmp_path / 'bag'
    written = _write_small_bag(bag, 'mcap', n=200)
    mcap = bag / 'bag.mcap'
    # cut the file: no footer any more
    cut = tmp_path / 'cut'
    shutil.copytree(bag, cut)
    data = mcap.read_bytes()
    (cut / 'bag.mcap').write_bytes(data[:len(data) * 2 // 3])
    with pytest.raises(BagError, match=r'cut.*scarls bag repair'):
        BagReader(cut)
    report = repair_bag(cut, tmp_path / 'cut_repaired')
    assert not report['complete'] and 0 < report['messages'] < len(written)
    with BagReader(tmp_path / 'cut_repaired') as r:
        got = [(m.topic, m.timestamp, m.data) for m in r.messages()]
    assert got == written[:len(got)]     # a prefix, byte for byte
    # garbage instead of a bag
    junk = tmp_path / 'junk'
    shutil.copytree(bag, junk)
    (junk / 'bag.mcap').write_bytes(b'not an mcap file at all' * 10)
    with pytest.raises(BagError, match='junk'):
        BagReader(junk)
    with pytest.raises(BagError, match='not an MCAP file'):
        repair_bag(junk, tmp_path / 'junk_repaired')
    # no bag at all
    with pytest.raises(BagError, match='no such bag'):
        BagReader(tmp_path / 'missing')


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_unclosed_bag_is_repaired_up_to_the_last_flush(tmp_path, storage):
    bag = tmp_path / 'open'
    w = BagWriter(bag, storage)
    w.add_topic('/chatter', STRING)
    for i in range(50):
        w.write('/chatter', 1000 + i, _string(str(i)))
    w.flush()
    for i in range(50, 60):
        w.write('/chatter', 1000 + i, _string(str(i)))   # never flushed: lost like a SIGKILL
    # the process "dies" here: no close, no metadata.yaml
    with pytest.raises(BagError, match='metadata.*scarls bag repair'):
        BagReader(bag)
    report = repair_bag(bag, tmp_path / 'fixed')
    assert report['messages'] == 50
    with BagReader(tmp_path / 'fixed') as r:
        assert [m.timestamp for m in r.messages()] == list(range(1000, 1050))


def _make_episodes(root: Path, n: int, steps: int, h: int = 12, w: int = 16) -> None:
    rng = np.random.default_rng(1)
    t = 1_763_990_000.0
    for e in range(n):
        writer = EpisodeWriter(root, 'pick_cube', 'ecu7', cameras=CAMS, image_shape=(h, w),
                               state_dim=14, action_dim=14, fsync=False)
        for i in range(steps):
            t += 1 / 30
            writer.append(StepRecord(
                images={c: rng.integers(0, 255, (h, w, 3), dtype=np.uint8) for c in CAMS},
                state=rng.normal(size=14), action=rng.normal(size=14),
                intervention=3 <= i < 6, timestamp=t))
        writer.finalize(('success', 'fail')[e % 2], model_version=e + 2,
                        extra={'actor_episode_id': e + 1, 'dropped_steps': 0})
        t += 1.0


def assert_same_episodes(a_root: Path, b_root: Path) -> None:
    a, b = list_episodes(a_root, 'pick_cube'), list_episodes(b_root, 'pick_cube')
    assert [e.index for e in a] == [e.index for e in b] and a
    for ea, eb in zip(a, b, strict=True):
        ra, rb = EpisodeReader(ea.path), EpisodeReader(eb.path)
        assert ra.meta.outcome == rb.meta.outcome
        assert ra.meta.model_version == rb.meta.model_version
        for c in CAMS:
            np.testing.assert_array_equal(ra.images(c)[:], rb.images(c)[:])
        for name in ('state', 'action', 'intervention', 'timestamp'):
            np.testing.assert_array_equal(getattr(ra, name)[:], getattr(rb, name)[:])


@pytest.mark.parametrize('storage', ['mcap', 'sqlite3'])
def test_episodes_to_bag_and_back(tmp_path, storage):
    src, dst = tmp_path / 'src', tmp_path / 'dst'
    _make_episodes(src, 3, 10)
    summary = episodes_to_bag(src, 'pick_cube', tmp_path / 'bag', storage=storage,
                              episodes=[0, 2])
    assert [e['index'] for e in summary['episodes']] == [0, 2]
    assert summary['namespace'] == '/ecu7'
    with BagReader(tmp_path / 'bag') as r:
        assert r.topics['/ecu7/actor/step'].count == 20
        assert r.topics['/ecu7/camera/top/image_raw'].count == 20
        assert r.topics['/ecu7/actor/state'].offered_qos[0].durability.name == 'TRANSIENT_LOCAL'
    report = bag_to_episodes(tmp_path / 'bag', dst, fsync=False)
    assert report.ok and [e['steps'] for e in report.saved] == [10, 10]
    # the exported subset [0, 2] comes back as episodes 0 and 1
    keep = tmp_path / 'keep'
    _make_episodes(keep, 3, 10)
    shutil.rmtree(keep / 'pick_cube' / 'episode_1.zarr')
    (keep / 'pick_cube' / 'episode_1_meta.json').unlink()
    for suffix in ('.zarr', '_meta.json'):
        (keep / 'pick_cube' / f'episode_2{suffix}').rename(keep / 'pick_cube' /
                                                           f'episode_1{suffix}')
    assert_same_episodes(keep, dst)


def test_to_zarr_reports_missing_topics_and_unfinished_episodes(tmp_path):
    src = tmp_path / 'src'
    _make_episodes(src, 2, 8)
    episodes_to_bag(src, 'pick_cube', tmp_path / 'bag')
    # a bag without the ECU's steps: says which topics are missing
    with BagReader(tmp_path / 'bag') as r, BagWriter(tmp_path / 'nosteps', 'mcap') as w:
        for t in r.topics.values():
            if not t.name.endswith('actor/step'):
                w.add_topic(t.name, t.msgtype, t.offered_qos)
        w.add_topic('/ecu7/actor/step_other', STRING)
        for m in r.messages([t for t in r.topics if not t.endswith('actor/step')]):
            w.write(m.topic, m.timestamp, m.data)
    with pytest.raises(BagError, match='no <namespace>/actor/step'):
        bag_to_episodes(tmp_path / 'nosteps', tmp_path / 'out')
    # the last episode's end is cut off: the first is rebuilt, the second reported
    with BagReader(tmp_path / 'bag') as r, BagWriter(tmp_path / 'noend', 'mcap') as w:
        for t in r.topics.values():
            w.add_topic(t.name, t.msgtype, t.offered_qos)
        states = 0
        for m in r.messages():
            if m.topic.endswith('actor/state'):
                states += 1
                if states == 2:
                    continue
            w.write(m.topic, m.timestamp, m.data)
    report = bag_to_episodes(tmp_path / 'noend', tmp_path / 'out', fsync=False)
    assert len(report.saved) == 1 and not report.ok
    assert report.not_rebuilt[0]['actor_episode_id'] == 2
    assert 'ends before' in report.not_rebuilt[0]['reason']


def test_command_lines_export_info_to_zarr(tmp_path, capsys):
    from scarls.cli.bag import main as bag_main
    from scarls.cli.dataset import main as dataset_main
    _make_episodes(tmp_path / 'src', 2, 6)
    assert dataset_main(['dataset', 'export', '--format', 'sqlite3', '--data-root',
                         str(tmp_path / 'src'), '--task', 'pick_cube', '--out',
                         str(tmp_path / 'bag'), '--no-progress']) == 0
    assert dataset_main(['dataset', 'export', '--data-root', str(tmp_path / 'src'), '--task',
                         'pick_cube', '--episodes', '5', '--out', str(tmp_path / 'b2'),
                         '--no-progress']) == 2
    assert 'episodes [5] of' in capsys.readouterr().err
    assert bag_main(['info', str(tmp_path / 'bag')]) == 0
    assert '/ecu7/actor/step  [scarls_interfaces/msg/ActorStep]  12 messages' in \
        capsys.readouterr().out
    assert bag_main(['to-zarr', str(tmp_path / 'bag'), '--data-root', str(tmp_path / 'dst'),
                     '--no-fsync']) == 0
    assert_same_episodes(tmp_path / 'src', tmp_path / 'dst')
    assert bag_main(['to-zarr', str(tmp_path / 'src'), '--data-root', str(tmp_path / 'x')]) == 2
    assert 'not a readable rosbag2 bag' in capsys.readouterr().err


def test_remaps_and_playback_qos():
    from rclpy.qos import DurabilityPolicy, ReliabilityPolicy

    from scarls.bags.play import parse_remaps, remap_topic
    from scarls.bags.rosqos import from_rclpy, playback_profile
    from scarls.ros import qos

    remaps = parse_remaps(['/ecu0:=/ecu1', '/ecu0/actor/step:=/steps'])
    assert remap_topic('/ecu0/actor/step', remaps) == '/steps'
    assert remap_topic('/ecu0/camera/top/image_raw', remaps) == '/ecu1/camera/top/image_raw'
    assert remap_topic('/ecu00/x', remaps) == '/ecu00/x'
    with pytest.raises(BagError, match='OLD:=NEW'):
        parse_remaps(['/a=/b'])
    latched = playback_profile([from_rclpy(qos.STATE)])
    assert latched.durability == DurabilityPolicy.TRANSIENT_LOCAL and latched.depth == 20
    mixed = playback_profile([from_rclpy(qos.CAMERA), from_rclpy(qos.CAMERA_LATEST)])
    assert mixed.reliability == ReliabilityPolicy.RELIABLE
    assert mixed.durability == DurabilityPolicy.VOLATILE
    assert playback_profile([from_rclpy(qos.CAMERA_LATEST)]).reliability == \
        ReliabilityPolicy.BEST_EFFORT
