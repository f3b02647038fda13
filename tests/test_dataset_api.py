"""The dataset API as a user porting from LeRobot meets it: write_episode from arrays, and the
item options of EpisodeDataset (stacked channels-first images, action_is_pad, reusable out=)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from scarls.episodes import EpisodeError, EpisodeReader, list_episodes, write_episode
from scarls.episodes.dataset import EpisodeDataset, make_loader

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


@pytest.fixture
def two_episodes(tmp_path: Path) -> tuple[Path, list[dict]]:
    eps = [arrays(9, cams=('top', 'left', 'right'), seed=s) for s in (1, 2)]
    for a in eps:
        write_episode(tmp_path, 'pick', a['frames'], a['state'], a['action'], fsync=False)
    return tmp_path, eps


def test_stacked_channels_first_images(two_episodes) -> None:
    root, eps = two_episodes
    per_cam = EpisodeDataset(root, chunk_size=4, cameras=('top', 'left', 'right'))
    stacked = EpisodeDataset(root, chunk_size=4, cameras=('right', 'top', 'left'),
                             images='stacked')
    item = stacked[11]  # episode 1, frame 2
    assert 'image.top' not in item
    imgs = item['images']
    assert imgs.dtype == np.uint8 and imgs.shape == (3, 3, H, W)
    for c, cam in enumerate(('right', 'top', 'left')):
        np.testing.assert_array_equal(imgs[c], eps[1]['frames'][cam][2].transpose(2, 0, 1))
        np.testing.assert_array_equal(imgs[c], per_cam[11]['image.' + cam].transpose(2, 0, 1))
    # collated items and the batch read are the same (B, cams, 3, H, W) tensors
    idx = [0, 5, 9, 17]
    collated = default_collate([stacked[i] for i in idx])
    batch = stacked.get_batch(idx)
    assert batch['images'].shape == (4, 3, 3, H, W) and batch['images'].dtype == torch.uint8
    assert torch.equal(collated['images'], batch['images'])
    assert torch.equal(batch['images'].contiguous()[2, 1], torch.from_numpy(
        eps[1]['frames']['top'][0].transpose(2, 0, 1).copy()))
    assert torch.equal(collated['action'], batch['action'])


def test_images_option_validation(tmp_path: Path) -> None:
    a = arrays(3, cams=('top', 'wrist'))
    write_episode(tmp_path, 't', {c: f[:, :H // 2] for c, f in a['frames'].items()},
                  a['state'], a['action'], fsync=False)
    ds = EpisodeDataset(tmp_path, chunk_size=2, cameras=('wrist', 'top'), images='stacked')
    assert ds[0]['images'].shape == (2, 3, H // 2, W)
    np.testing.assert_array_equal(ds[2]['images'][0],
                                  a['frames']['wrist'][2, :H // 2].transpose(2, 0, 1))
    with pytest.raises(ValueError, match='one of'):
        EpisodeDataset(tmp_path, chunk_size=2, cameras=('top',), images='chw')
    with pytest.raises(ValueError, match='at least one camera'):
        EpisodeDataset(tmp_path, chunk_size=2, cameras=(), images='stacked')


def test_action_is_pad_is_lerobots_padding_flag(two_episodes) -> None:
    root, eps = two_episodes
    ds = EpisodeDataset(root, chunk_size=5, cameras=('top',), action_is_pad=True)
    plain = EpisodeDataset(root, chunk_size=5, cameras=('top',))
    assert 'action_is_pad' not in plain[0]
    last = ds[6]  # frame 6 of 9: rows 0..2 real, 3..4 past the end
    np.testing.assert_array_equal(last['action_is_pad'], [False, False, False, True, True])
    np.testing.assert_array_equal(last['action_is_pad'], ~last['action_mask'])
    np.testing.assert_array_equal(last['action'][:3], eps[0]['action'][6:9])
    batch = ds.get_batch([6, 0, 17])
    assert batch['action_is_pad'].dtype == torch.bool
    assert torch.equal(batch['action_is_pad'], ~batch['action_mask'])
    assert batch['action_is_pad'][2].tolist() == [False, True, True, True, True]


@pytest.mark.parametrize('images', ['per_camera', 'stacked'])
def test_get_item_reuses_out(two_episodes, images: str) -> None:
    root, _ = two_episodes
    ds = EpisodeDataset(root, chunk_size=4, cameras=('top', 'left', 'right'), images=images,
                        action_is_pad=True)
    out = ds.get_item(3)
    arrays_before = {k: v for k, v in out.items() if isinstance(v, np.ndarray)}
    for i in (12, 8, ('pick/episode_0', 1)):
        got = ds.get_item(i, out=out)
        assert got is out
        fresh = ds[i] if not isinstance(i, tuple) else ds.get(*i)
        assert fresh.keys() == out.keys()
        for key, value in fresh.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(out[key], value, err_msg=key)
                assert out[key] is arrays_before[key] or np.shares_memory(
                    out[key], arrays_before[key]), key  # read in place
            else:
                assert out[key] == value, key
    # an array that does not fit is replaced, the others still reused
    out['state'] = np.zeros(3, np.float32)
    ds.get_item(5, out=out)
    np.testing.assert_array_equal(out['state'], ds[5]['state'])
    assert out['action'] is arrays_before['action']


def test_dataset_info_lists_cameras_in_recorded_order(tmp_path: Path, capsys) -> None:
    from scarls.cli import dataset as dataset_cli
    from scarls.episodes.stats import dataset_info

    a = arrays(3, cams=('wrist', 'top', 'left'))
    write_episode(tmp_path, 'pick', a['frames'], a['state'], a['action'], fsync=False)
    info = dataset_info(tmp_path)
    assert list(info.tasks[0].image_shapes) == ['wrist', 'top', 'left']
    assert list(info.totals.image_shapes) == ['wrist', 'top', 'left']
    assert dataset_cli.main(['dataset', 'info', str(tmp_path)]) == 0
    assert f'cameras: wrist {H}x{W}, top {H}x{W}, left {H}x{W}' in capsys.readouterr().out


@pytest.mark.multiproc
def test_stacked_batches_through_dataloader_workers(two_episodes) -> None:
    root, eps = two_episodes
    ds = EpisodeDataset(root, chunk_size=4, cameras=('left', 'top'), images='stacked',
                        action_is_pad=True)
    seen = 0
    for batch in make_loader(ds, 5, shuffle=False, num_workers=2):
        direct = ds.get_batch(list(range(seen, seen + len(batch['frame']))))
        assert torch.equal(batch['images'], direct['images'])  # built in a worker, shared memory
        assert torch.equal(batch['action_is_pad'], direct['action_is_pad'])
        seen += len(batch['frame'])
    assert seen == len(ds) == 18
    np.testing.assert_array_equal(batch['images'][-1, 1].numpy(),
                                  eps[1]['frames']['top'][-1].transpose(2, 0, 1))
