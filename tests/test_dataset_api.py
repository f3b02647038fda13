"""The dataset API as a user porting from LeRobot meets it: write_episode from arrays, and the
item options of EpisodeDataset (stacked channels-first images, action_is_pad, reusable out=)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from scarls.episodes import EpisodeError, EpisodeReader, list_episodes, write_episode

torch.set_num_threads(1)

H, W = 24, 32


def arrays(steps: int, cams=('top', 'wrist'), seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        'frames': {c: rng.integers(0, 256, (steps, H, W, 3), dtype=np.uint8) for c in cams},
        'state': rng.normal(size=(steps, 6)).astype(np.float32),
        'action': rng.normal(size=(steps, 7)).astype(np.float32),
    }


def test_write_episode_defaults_for_offline_data(tmp_path: Path) -> None:
    a = arrays(12)
    ref = write_episode(tmp_path, 'pick', a['frames'], a['state'], a['action'], fps=15)
    assert ref.index == 0 and ref.steps == 12
    reader = EpisodeReader(ref.path)
    meta = reader.meta
    assert meta.ecu_id == '' and meta.model_version is None and meta.outcome == 'success'
    assert meta.fps == 15 and meta.intervention_steps == 0
    assert meta.cameras == ['top', 'wrist']
    np.testing.assert_array_equal(reader.timestamp[...], np.arange(12) / 15)
    np.testing.assert_array_equal(reader.images('wrist')[...], a['frames']['wrist'])
    np.testing.assert_array_equal(reader.state[...], a['state'])
    np.testing.assert_array_equal(reader.action[...], a['action'])
    # the next one takes the next free number
    assert write_episode(tmp_path, 'pick', a['frames'], a['state'], a['action']).index == 1


def test_write_episode_keeps_a_given_episode_number(tmp_path: Path) -> None:
    a = arrays(5)
    ref = write_episode(tmp_path, 'pick', a['frames'], a['state'], a['action'],
                        episode_index=41, outcome='fail', ecu_id='arm-3', model_version=2,
                        intervention=[True, False, False, True, True], start_time=100.0)
    assert ref.index == 41 and ref.path.name == 'episode_41.zarr'
    meta = EpisodeReader(ref.path).meta
    assert (meta.outcome, meta.ecu_id, meta.model_version) == ('fail', 'arm-3', 2)
    assert meta.intervention_steps == 3 and meta.start_time == 100.0
    with pytest.raises(EpisodeError, match='episode 41 already exists'):
        write_episode(tmp_path, 'pick', a['frames'], a['state'], a['action'], episode_index=41)
    # without a number: after the highest one
    assert write_episode(tmp_path, 'pick', a['frames'], a['state'], a['action']).index == 42
    assert [e.index for e in list_episodes(tmp_path, 'pick')] == [41, 42]


def test_write_episode_rejects_bad_input_and_leaves_nothing(tmp_path: Path) -> None:
    a = arrays(6)
    with pytest.raises(EpisodeError, match='7 steps, expected 6'):
        write_episode(tmp_path, 't', a['frames'], a['state'], np.zeros((7, 7)))
    with pytest.raises(EpisodeError, match='uint8'):
        write_episode(tmp_path, 't', {'top': a['frames']['top'].astype(np.float32)},
                      a['state'], a['action'])
    with pytest.raises(EpisodeError, match='one image size'):
        write_episode(tmp_path, 't', {'a': a['frames']['top'],
                                      'b': np.zeros((6, H + 1, W, 3), np.uint8)},
                      a['state'], a['action'])
    bad_ts = np.arange(6) / 30.0
    bad_ts[3] = bad_ts[2]  # not strictly increasing: fails while writing
    with pytest.raises(EpisodeError):
        write_episode(tmp_path, 't', a['frames'], a['state'], a['action'], timestamps=bad_ts)
    with pytest.raises(EpisodeError, match='outcome'):
        write_episode(tmp_path, 't', a['frames'], a['state'], a['action'], outcome='great')
    task_dir = tmp_path / 't'
    assert list_episodes(tmp_path) == []
    left = {p.name for p in task_dir.iterdir()} if task_dir.exists() else set()
    assert left <= {'.scarls-task.lock'}  # no data, meta, temp dir or reservation
