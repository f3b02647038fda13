"""Fault: hostile or corrupt bytes through every loader a node reads (hypothesis).

Robot descriptions, episode meta, episode chunk files through the learner's loading path, bag
files and checkpoint files: whatever the bytes, the loader raises its typed error with a
message, never another exception, never a crash, with bounded memory.
"""

from __future__ import annotations

import json
import resource
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scarls.bags.errors import BagError
from scarls.bags.io import BagReader
from scarls.bringup import BringupError, default_params_file, load_params_file
from scarls.bringup.launcher import parent_death_preexec
from scarls.checkpoints import CheckpointRejected, load_checkpoint, save_checkpoint
from scarls.episodes import EpisodeReader, EpisodeWriter, StepRecord, validate_episode
from scarls.episodes.errors import EpisodeFormatError
from scarls.episodes.schema import EpisodeMeta
from scarls.learner.online import OnlineLearner
from scarls.learner.trainer import EpisodeData
from scarls.policies import make_policy
from scarls.robot import RobotDescription, RobotDescriptionError, load_robot

pytestmark = pytest.mark.faults
FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])

# any JSON-like value, to put where a field is expected
_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                      children, max_size=4),
    max_leaves=12)


@pytest.fixture(autouse=True)
def _memory_bound():
    """No loader may allocate gigabytes on crafted input: cap this process's address space
    (generous: torch and numpy are loaded) while the fuzzing runs."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = 8 << 30
    resource.setrlimit(resource.RLIMIT_AS, (cap if hard == resource.RLIM_INFINITY
                                            else min(cap, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _mutate(data, path: list, value):
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return data


def _paths(data, prefix=()):
    if isinstance(data, dict):
        for k, v in data.items():
            yield (*prefix, k)
            yield from _paths(v, (*prefix, k))
    elif isinstance(data, list):
        for i, v in enumerate(data):
            yield (*prefix, i)
            yield from _paths(v, (*prefix, i))


ROBOT = load_robot('sim_dual7').to_dict()
ROBOT_PATHS = list(_paths(ROBOT))


@FUZZ
@given(st.sampled_from(ROBOT_PATHS), _values)
def test_robot_descriptions_fail_typed(path, value):
    data = json.loads(json.dumps(ROBOT))
    _mutate(data, list(path), value)
    try:
        RobotDescription.from_dict(data, 'fuzz.yaml')
    except RobotDescriptionError as exc:
        assert 'fuzz.yaml' in str(exc)


@FUZZ
@given(st.binary(max_size=2000))
def test_robot_description_files_of_random_bytes_fail_typed(tmp_path, blob):
    f = tmp_path / 'robot.yaml'
    f.write_bytes(blob)
    try:
        load_robot(str(f))
    except RobotDescriptionError:
        pass


def _episode(root: Path) -> Path:
    w = EpisodeWriter(root, 'pick', 'ecu-fuzz', image_shape=(16, 16), state_dim=16,
                      action_dim=16, block_size=4, fsync=False)
    rng = np.random.default_rng(0)
    for i in range(9):
        w.append(StepRecord({c: rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)
                             for c in ('top', 'left', 'right')},
                            np.full(16, i, np.float32), np.zeros(16, np.float32), True, i / 30))
    return w.finalize('success', 1).path


@pytest.fixture(scope='module')
def good_episode(tmp_path_factory) -> Path:
    return _episode(tmp_path_factory.mktemp('fuzz_ep'))


@FUZZ
@given(data=st.data())
def test_episode_meta_fails_typed(good_episode, data):
    meta = json.loads(good_episode.with_name(
        good_episode.name.replace('.zarr', '_meta.json')).read_text())
    path = data.draw(st.sampled_from(list(_paths(meta))))
    _mutate(meta, list(path), data.draw(_values))
    try:
        EpisodeMeta.from_dict(meta, 'fuzz_meta.json')
    except EpisodeFormatError as exc:
        assert 'fuzz_meta.json' in str(exc)


@FUZZ
@given(data=st.data())
def test_corrupt_chunk_files_are_caught_on_the_learners_path(tmp_path, good_episode, data):
    """A flipped, truncated or replaced chunk file: validation names it, and the learner's
    loader (EpisodeReader -> EpisodeData) raises a typed error instead of training on it."""
    import tempfile
    tmp_path = Path(tempfile.mkdtemp(dir=tmp_path))   # one folder per example
    ep = tmp_path / good_episode.name
    shutil.copytree(good_episode, ep)
    meta = good_episode.with_name(good_episode.name.replace('.zarr', '_meta.json'))
    shutil.copy(meta, tmp_path / meta.name)
    chunks = sorted(p for p in ep.rglob('*') if p.is_file() and p.name != 'zarr.json')
    target = data.draw(st.sampled_from(chunks))
    blob = bytearray(target.read_bytes())
    how = data.draw(st.sampled_from(['flip', 'truncate', 'random', 'empty']))
    if how == 'flip' and blob:
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == 'truncate':
        blob = blob[:data.draw(st.integers(0, max(0, len(blob) - 1)))]
    elif how == 'random':
        blob = bytearray(data.draw(st.binary(min_size=1, max_size=4000)))
    else:
        blob = bytearray()
    if bytes(blob) == target.read_bytes():
        return
    target.write_bytes(bytes(blob))
    # the learner's own path: its cheap check, then the load; only typed errors, and a
    # corruption that neither notices must have left the data as it was (a flipped bit in a
    # compressed stream can decode to the same bytes)
    try:
        reader = OnlineLearner._verified_reader(ep)
        got = EpisodeData.from_reader(reader, source='online')
    except EpisodeFormatError as exc:
        assert str(exc)
        return
    # nothing noticed: only a flipped bit inside a chunk's payload can get here (blosc has no
    # checksum of its own; `scarls dataset validate` - sha256 of every array - finds it); the
    # damage is then that bit, never a truncated or replaced chunk read as a black frame
    assert how == 'flip', f'{how} damage of {target.name} went unnoticed'
    want = EpisodeData.from_reader(EpisodeReader(good_episode), source='online')
    differ = sum(int((got.images[c] != want.images[c]).sum()) for c in want.images)
    differ += int((got.state != want.state).sum() + (got.action != want.action).sum())
    if differ == 0:
        return   # a bit the decoder ignores (e.g. a header's version byte): no damage
    assert differ <= 8, differ
    with pytest.raises(EpisodeFormatError, match='checksum|cannot be decoded'):
        validate_episode(ep, check_checksums=True)


@FUZZ
@given(st.binary(max_size=5000))
def test_bags_of_random_bytes_fail_typed(tmp_path, blob):
    import tempfile
    bag = Path(tempfile.mkdtemp(dir=tmp_path)) / 'bag'
    bag.mkdir()
    (bag / 'bag_0.mcap').write_bytes(blob)
    try:
        with BagReader(bag) as reader:
            for _ in reader.messages(list(reader.topics)):
                pass
    except BagError as exc:
        assert str(exc)


@pytest.fixture(scope='module')
def good_checkpoint(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp('fuzz_ckpt') / 'ckpt.safetensors'
    policy = make_policy('mlp', {'state_dim': 14, 'action_dim': 14, 'hidden_sizes': [16]})
    save_checkpoint(path, policy, version=1)
    return path.read_bytes()


@FUZZ
@given(data=st.data())
def test_checkpoints_of_damaged_bytes_fail_typed(good_checkpoint, data):
    blob = bytearray(good_checkpoint)
    how = data.draw(st.sampled_from(['flip', 'truncate', 'random', 'header']))
    if how == 'flip':
        i = data.draw(st.integers(0, len(blob) - 1))
        blob[i] ^= 1 << data.draw(st.integers(0, 7))
    elif how == 'truncate':
        blob = blob[:data.draw(st.integers(0, len(blob) - 1))]
    elif how == 'random':
        blob = bytearray(data.draw(st.binary(max_size=3000)))
    else:   # a header that claims a huge length
        blob[:8] = data.draw(st.integers(0, 2**63 - 1)).to_bytes(8, 'little')
    try:
        load_checkpoint(bytes(blob))
    except CheckpointRejected as exc:
        assert str(exc)


def test_the_fuzzed_robot_file_format_is_the_shipped_one():
    # the mutations above start from a description that loads
    assert RobotDescription.from_dict(yaml.safe_load(yaml.safe_dump(ROBOT)), 'x').num_joints == 16


PARAMS = yaml.safe_load(default_params_file().read_text())
PARAM_PATHS = list(_paths(PARAMS))


@FUZZ
@given(st.sampled_from(PARAM_PATHS), _values)
def test_params_files_fail_typed_before_any_node_starts(tmp_path, path, value):
    import tempfile
    data = json.loads(json.dumps(PARAMS))
    _mutate(data, list(path), value)
    f = Path(tempfile.mkdtemp(dir=tmp_path)) / 'params.yaml'
    f.write_text(yaml.safe_dump(data))
    try:
        load_params_file(f)
    except BringupError as exc:
        assert 'params.yaml' in str(exc)


@FUZZ
@given(st.binary(max_size=3000))
def test_params_files_of_random_bytes_fail_typed(tmp_path, blob):
    import tempfile
    f = Path(tempfile.mkdtemp(dir=tmp_path)) / 'params.yaml'
    f.write_bytes(blob)
    try:
        load_params_file(f)
    except BringupError as exc:
        assert 'params.yaml' in str(exc)


def test_a_bad_params_file_stops_scarls_ecu_before_it_starts(tmp_path):
    import subprocess
    import sys
    bad = tmp_path / 'params.yaml'
    bad.write_text('/**/driver:\n  ros__parameters:\n    rate_hz: {nested: 1}\n')
    out = subprocess.run([sys.executable, '-m', 'scarls.cli', 'ecu', '--episodes', '1',
                          '--params-file', str(bad), '--data-root', str(tmp_path / 'd')],
                         capture_output=True, text=True, timeout=120,
                         preexec_fn=parent_death_preexec())
    assert out.returncode == 2, out.stderr[-2000:]
    assert '/**/driver.rate_hz' in out.stderr and 'not a ROS parameter value' in out.stderr
    assert not (tmp_path / 'd' / 'logs').exists() or not any((tmp_path / 'd' / 'logs').rglob(
        '*.log'))
