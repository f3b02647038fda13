"""Tests of the training dataset over Zarr episodes (EpisodeDataset, make_loader)."""

from __future__ import annotations

import logging
import os
import pickle
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader, default_collate
from zarr.storage import LocalStore

from scarls.episodes import EpisodeReader, EpisodeWriter, StepRecord
from scarls.episodes.dataset import EpisodeDataset, FrameReadError, make_loader

torch.set_num_threads(1)

CAMS = ('top', 'left', 'right')
H, W = 24, 32
D = 14


def scene(rng: np.random.Generator, i: int) -> np.ndarray:
    """Gradient + moving box + noise: compressible but not trivial."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], -1).astype(np.float64)
    x0 = (3 * i) % (W - 8)
    img[6:14, x0 : x0 + 8] = (200, 40, 40)
    img += rng.normal(0.0, 3.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_episode(root: Path, task: str, steps: int, *, codec: str = 'lz4', seed: int = 0,
                  outcome: str = 'success', finalize: bool = True) -> dict:
    """Write one episode; return what was written (and the writer if not finalized)."""
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(root, task, 'ecu-test', image_shape=(H, W), state_dim=D, action_dim=D,
                      codec=codec, fsync=False)
    rec: dict = {'images': {c: [] for c in CAMS}, 'state': [], 'action': [], 'interv': [],
                 'ts': []}
    for i in range(steps):
        images = {c: scene(rng, i + 5 * k) for k, c in enumerate(CAMS)}
        state = rng.normal(size=D).astype(np.float32)
        action = rng.normal(size=D).astype(np.float32)
        interv = bool(rng.random() < 0.3)
        ts = 10.0 + i / 30.0
        w.append(StepRecord(images=images, state=state, action=action, intervention=interv,
                            timestamp=ts))
        for c in CAMS:
            rec['images'][c].append(images[c])
        rec['state'].append(state)
        rec['action'].append(action)
        rec['interv'].append(interv)
        rec['ts'].append(ts)
    rec = {k: (v if k == 'images' else np.asarray(v)) for k, v in rec.items()}
    rec['images'] = {c: np.stack(v) for c, v in rec['images'].items()}
    if finalize:
        ref = w.finalize(outcome, model_version=1)
        rec['key'] = f'{task}/episode_{ref.index}'
        rec['path'] = ref.path
    else:
        rec['writer'] = w
    return rec


def assert_item_matches(item: dict, rec: dict, t: int, k: int) -> None:
    steps = len(rec['action'])
    for c in CAMS:
        assert item[f'image.{c}'].dtype == np.uint8
        np.testing.assert_array_equal(item[f'image.{c}'], rec['images'][c][t])
    np.testing.assert_array_equal(item['state'], rec['state'][t])
    rows = [min(t + j, steps - 1) for j in range(k)]
    np.testing.assert_array_equal(item['action'], rec['action'][rows])
    np.testing.assert_array_equal(item['action_mask'], [t + j < steps for j in range(k)])
    assert item['intervention'] == rec['interv'][t]
    assert item['timestamp'] == rec['ts'][t]
    assert item['frame'] == t


def assert_batch_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype, key
            assert torch.equal(a[key], b[key]), key
        else:
            assert a[key] == b[key], key


@pytest.fixture
def three(tmp_path: Path) -> tuple[Path, list[dict]]:
    """Episodes of 3 and 5 steps in task 'a' and one of 2 steps in task 'b'."""
    recs = [
        write_episode(tmp_path, 'a', 3, seed=1),
        write_episode(tmp_path, 'a', 5, seed=2, outcome='fail'),
        write_episode(tmp_path, 'b', 2, seed=3),
    ]
    return tmp_path, recs


def test_lz4_items_equal_what_was_written(tmp_path: Path) -> None:
    rec = write_episode(tmp_path, 'pick', 6, codec='lz4')
    ds = EpisodeDataset(tmp_path, chunk_size=4)
    assert all(c.direct and c.decoder == 'blosc' for c in ds._episodes[0].cameras)
    assert len(ds) == 6
    for t in range(6):
        item = ds[t]
        assert_item_matches(item, rec, t, 4)
        assert item['state'].dtype == np.float32 and item['action'].dtype == np.float32
        assert item['action'].shape == (4, D) and item['action_mask'].dtype == np.bool_
        assert (item['episode'], item['task'], item['outcome']) == (0, 'pick', 'success')


@pytest.mark.parametrize('codec', ['lz4', 'raw', 'jpeg'])
def test_fast_path_equals_zarr_path_and_reader(tmp_path: Path, codec: str) -> None:
    rec = write_episode(tmp_path, 'pick', 5, codec=codec)
    fast = EpisodeDataset(tmp_path, chunk_size=3)
    slow = EpisodeDataset(tmp_path, chunk_size=3, io='zarr')
    assert all(c.direct for c in fast._episodes[0].cameras)
    assert not any(c.direct for c in slow._episodes[0].cameras)
    reader = EpisodeReader(rec['path'])
    for t in range(5):
        a, b = fast[t], slow[t]
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
        for c in CAMS:
            stored = np.asarray(reader.images(c)[t])
            np.testing.assert_array_equal(a[f'image.{c}'], stored)
            if codec == 'jpeg':  # lossy, but close to what was recorded
                err = a[f'image.{c}'].astype(float) - rec['images'][c][t]
                assert 10 * np.log10(255**2 / np.mean(err**2)) > 24
            else:
                np.testing.assert_array_equal(a[f'image.{c}'], rec['images'][c][t])


def test_chunk_padding_and_mask_at_episode_end(tmp_path: Path) -> None:
    rec = write_episode(tmp_path, 'pick', 7)
    ds = EpisodeDataset(tmp_path, chunk_size=5)
    act = rec['action']
    item = ds[4]
    np.testing.assert_array_equal(item['action'], act[[4, 5, 6, 6, 6]])
    np.testing.assert_array_equal(item['action_mask'], [True, True, True, False, False])
    item = ds[6]
    np.testing.assert_array_equal(item['action'], np.repeat(act[6:7], 5, axis=0))
    np.testing.assert_array_equal(item['action_mask'], [True, False, False, False, False])
    item = ds[2]
    np.testing.assert_array_equal(item['action'], act[2:7])
    assert item['action_mask'].all()
    # a chunk longer than the episode
    long = EpisodeDataset(tmp_path, chunk_size=10)
    assert long[0]['action_mask'].sum() == 7
    np.testing.assert_array_equal(long[0]['action'][7:], np.repeat(act[6:7], 3, axis=0))


def test_index_mapping_across_episodes_and_tasks(three) -> None:
    root, recs = three
    ds = EpisodeDataset(root, chunk_size=2)
    keys = [r['key'] for r in recs]
    assert ds.episode_keys() == keys == ['a/episode_0', 'a/episode_1', 'b/episode_0']
    assert ds.episode_lengths().tolist() == [3, 5, 2]
    assert len(ds) == 10 and ds.num_episodes == 3
    expect = [(keys[0], t) for t in range(3)] + [(keys[1], t) for t in range(5)]
    expect += [(keys[2], t) for t in range(2)]
    assert [ds.locate(i) for i in range(10)] == expect
    assert ds.locate(-1) == (keys[2], 1)
    assert ds[torch.tensor(4)]['frame'] == ds[np.int64(4)]['frame'] == 1
    assert ds.step_indices(keys[1]) == range(3, 8)
    assert ds.step_indices(2) == range(8, 10)
    for i, (key, t) in enumerate(expect):
        pos = keys.index(key)
        item = ds[i]
        assert (item['episode'], item['frame'], item['task']) == (pos, t, key.split('/')[0])
        assert_item_matches(item, recs[pos], t, 2)
        np.testing.assert_array_equal(ds.get(key, t)['action'], item['action'])
        np.testing.assert_array_equal(ds[(key, t)]['image.top'], item['image.top'])
    for bad in (10, -11):
        with pytest.raises(IndexError):
            ds[bad]
    with pytest.raises(IndexError):
        ds.get(keys[0], 3)
    with pytest.raises(KeyError, match='no episode'):
        ds.get('a/episode_9', 0)
    only_a = EpisodeDataset(root, 'a', chunk_size=2)
    assert only_a.episode_keys() == keys[:2]
    assert EpisodeDataset(root, ['b', 'a']).episode_keys() == keys
    fails = EpisodeDataset(root, episode_filter=lambda m: m.outcome == 'fail')
    assert fails.episode_keys() == [keys[1]] and len(fails) == 5
    assert ds[3]['outcome'] == 'fail'


def test_episode_info_for_sampling_weights(three) -> None:
    root, recs = three
    ds = EpisodeDataset(root)
    infos = ds.episodes()
    assert [i.outcome for i in infos] == ['success', 'fail', 'success']
    for info, rec in zip(infos, recs, strict=True):
        np.testing.assert_array_equal(info.intervention, rec['interv'])
        np.testing.assert_array_equal(info.timestamp, rec['ts'])
        assert info.steps == len(rec['action']) and info.model_version == 1
        assert info.intervention_steps == int(rec['interv'].sum())
        assert not info.intervention.flags.writeable
    assert ds.episode_info('a/episode_1').position == 1


def test_refresh_sees_new_episodes_at_the_end(three) -> None:
    root, recs = three
    seen: list[str] = []
    ds = EpisodeDataset(root, chunk_size=3, on_new_episode=seen.append)
    assert seen == [r['key'] for r in recs]
    before = [ds.locate(i) for i in range(len(ds))]
    assert ds.refresh() == 0
    pending = write_episode(root, 'a', 4, seed=9, finalize=False)  # still being recorded
    assert ds.refresh() == 0
    rec = pending['writer'].finalize('success', model_version=2)
    new = write_episode(root, 'a', 2, seed=8)  # 'a' sorts before 'b' but goes to the end
    assert ds.refresh() == 2
    assert ds.episode_keys()[-2:] == [f'a/episode_{rec.index}', new['key']]
    assert seen[-2:] == ds.episode_keys()[-2:]
    assert [ds.locate(i) for i in range(len(before))] == before
    assert len(ds) == 10 + 4 + 2
    assert_item_matches(ds[len(ds) - 1], new, 1, 3)
    assert ds.refresh() == 0


def test_worker_copy_resolves_keys_of_later_episodes(three) -> None:
    root, _recs = three
    ds = EpisodeDataset(root, chunk_size=2, io='zarr')
    ds[0]  # fills the per-process zarr cache, which must not be pickled
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._zarr_cache == {}
    new = write_episode(root, 'c', 3, seed=5)
    assert ds.refresh() == 1
    with pytest.raises(IndexError, match='recreate the iterator'):
        copy[len(ds) - 1]
    assert_item_matches(copy[(new['key'], 2)], new, 2, 2)  # loads the episode lazily
    np.testing.assert_array_equal(copy[(new['key'], 0)]['image.left'], ds[10]['image.left'])


def test_get_batch_equals_default_collate(three) -> None:
    root, _recs = three
    ds = EpisodeDataset(root, chunk_size=4)
    idx = [9, 0, 4, 4, 7, 2]
    expect = default_collate([ds[i] for i in idx])
    assert_batch_equal(ds.get_batch(idx), expect)
    assert_batch_equal(ds[np.asarray(idx)], expect)
    shared = ds.get_batch(torch.tensor(idx), shared=True)
    assert shared['image.top'].is_shared() and not ds.get_batch(idx)['image.top'].is_shared()
    assert_batch_equal(shared, expect)
    threaded = EpisodeDataset(root, chunk_size=4, decode_threads=3)
    try:
        assert_batch_equal(threaded[idx], expect)
        np.testing.assert_array_equal(threaded[4]['image.right'], ds[4]['image.right'])
    finally:
        threaded.close()


@pytest.mark.multiproc
@pytest.mark.parametrize('codec', ['lz4', 'raw', 'jpeg'])
def test_dataloader_workers_return_the_same_as_direct_access(tmp_path: Path, codec: str) -> None:
    write_episode(tmp_path, 'a', 5, seed=1, codec=codec)
    write_episode(tmp_path, 'a', 4, seed=2, codec=codec)
    ds = EpisodeDataset(tmp_path, chunk_size=3)
    direct = [default_collate([ds[i] for i in range(j, min(j + 4, len(ds)))])
              for j in range(0, len(ds), 4)]
    for workers in (0, 2):
        got = list(DataLoader(ds, batch_size=4, shuffle=False, num_workers=workers))
        assert len(got) == len(direct)
        for a, b in zip(got, direct, strict=True):
            assert_batch_equal(a, b)
    got = list(make_loader(ds, 4, shuffle=False, num_workers=2))
    for a, b in zip(got, direct, strict=True):
        assert_batch_equal(a, b)
    gen = torch.Generator().manual_seed(3)
    shuffled = list(make_loader(ds, 4, generator=gen, num_workers=1, drop_last=True))
    assert len(shuffled) == 2
    for batch in shuffled:
        for j in range(4):
            key, t = ds.locate(int(ds.step_indices(int(batch['episode'][j])).start)
                               + int(batch['frame'][j]))
            np.testing.assert_array_equal(batch['image.top'][j].numpy(),
                                          ds.get(key, t)['image.top'])


def _chunk_file(path: Path, name: str) -> Path:
    arr = zarr.open_array(LocalStore(path / name, read_only=True), mode='r')
    return path / name / arr.metadata.encode_chunk_key((0,) * arr.ndim)


def test_corrupt_episodes_are_skipped_with_a_warning(tmp_path: Path, caplog) -> None:
    good = write_episode(tmp_path, 'a', 3, seed=1)
    garbage = write_episode(tmp_path, 'a', 3, seed=2)
    changed = write_episode(tmp_path, 'a', 3, seed=3)
    no_frame = write_episode(tmp_path, 'a', 3, seed=4)
    bad_meta = write_episode(tmp_path, 'a', 3, seed=5)
    _chunk_file(garbage['path'], 'action').write_bytes(b'\x00garbage' * 20)
    arr = zarr.open_array(LocalStore(changed['path'] / 'observation/obs_state'), mode='r+')
    arr[1, 2] = 123.0  # valid zarr data that differs from what was recorded
    os.unlink(no_frame['path'] / 'observation' / 'left' / 'c.2.0.0.0')
    meta = bad_meta['path'].parent / f'{bad_meta["path"].name[:-5]}_meta.json'
    meta.write_text(meta.read_text()[:40])
    with caplog.at_level(logging.WARNING, logger='scarls.episodes.dataset'):
        ds = EpisodeDataset(tmp_path)
    assert ds.episode_keys() == [good['key']]
    skipped = ds.skipped()
    assert set(skipped) == {garbage['key'], changed['key'], no_frame['key'], bad_meta['key']}
    assert 'sha256 mismatch' in skipped[changed['key']]
    assert str(changed['path'] / 'observation/obs_state') in skipped[changed['key']]
    assert str(garbage['path']) in skipped[garbage['key']]
    assert 'c.2.0.0.0' in skipped[no_frame['key']]
    assert str(meta) in skipped[bad_meta['key']]
    text = caplog.text
    for rec in (garbage, changed, no_frame):
        assert str(rec['path']) in text
    assert str(meta) in text
    caplog.clear()
    assert ds.refresh() == 0  # skipped episodes are not retried (or logged) again
    assert 'skipping' not in caplog.text
    assert_item_matches(ds[2], good, 2, 50)


def test_full_verify_detects_corrupt_image_data(tmp_path: Path, caplog) -> None:
    rec = write_episode(tmp_path, 'a', 3, codec='lz4')
    other = write_episode(tmp_path, 'a', 3, seed=7, codec='lz4')
    fresh = np.random.default_rng(0).integers(0, 255, (1, H, W, 3), dtype=np.uint8)
    arr = zarr.open_array(LocalStore(rec['path'] / 'observation/top'), mode='r+')
    arr[1:2] = fresh  # decodes fine, but is not what was recorded
    assert EpisodeDataset(tmp_path).episode_keys() == [rec['key'], other['key']]
    with caplog.at_level(logging.WARNING, logger='scarls.episodes.dataset'):
        full = EpisodeDataset(tmp_path, verify='full')
    assert full.episode_keys() == [other['key']]
    assert 'checksum mismatch' in full.skipped()[rec['key']]


def test_undecodable_frame_raises_naming_episode_and_frame(tmp_path: Path) -> None:
    write_episode(tmp_path, 'a', 4, codec='jpeg')
    rec = write_episode(tmp_path, 'a', 3, codec='lz4', seed=2)
    ds = EpisodeDataset(tmp_path)
    (rec['path'] / 'observation' / 'right' / 'c.1.0.0.0').write_bytes(b'not blosc at all' * 4)
    i = ds.step_indices(rec['key']).start + 1
    with pytest.raises(FrameReadError, match=r"a/episode_1 frame 1 camera 'right'.*c\.1\.0\.0\.0"):
        ds[i]
    os.unlink(rec['path'] / 'observation' / 'top' / 'c.2.0.0.0')
    with pytest.raises(FrameReadError, match=r'a/episode_1 frame 2 camera .top.: cannot read'):
        ds.get(rec['key'], 2)
    with pytest.raises(FrameReadError, match='a/episode_1 frame 1'):
        ds.get_batch([0, i])
    jpeg_frame = ds._episodes[0].cameras[0].prefix + '3.0.0.0'
    Path(jpeg_frame).write_bytes(b'\xff\xd8 truncated')
    with pytest.raises(FrameReadError, match='a/episode_0 frame 3 camera .top.: cannot decode'):
        ds[3]
    assert ds[0]['frame'] == 0  # other frames still read


def test_truncated_raw_frame_raises_naming_the_file(tmp_path: Path) -> None:
    rec = write_episode(tmp_path, 'a', 3, codec='raw')
    ds = EpisodeDataset(tmp_path)
    chunk = rec['path'] / 'observation' / 'left' / 'c.1.0.0.0'
    chunk.write_bytes(chunk.read_bytes()[:-5])
    with pytest.raises(FrameReadError, match=r"frame 1 camera 'left'.*c\.1\.0\.0\.0.*bytes"):
        ds[1]
    np.testing.assert_array_equal(ds[2]['image.left'], rec['images']['left'][2])


def test_argument_validation_and_empty_root(tmp_path: Path) -> None:
    ds = EpisodeDataset(tmp_path / 'missing')
    assert len(ds) == 0 and ds.episode_keys() == [] and ds.refresh() == 0
    for kwargs in ({'chunk_size': 0}, {'verify': 'some'}, {'io': 'mmap'},
                   {'cameras': ('top', 'top')}, {'decode_threads': -1}):
        with pytest.raises(ValueError):
            EpisodeDataset(tmp_path, **kwargs)


def test_missing_camera_is_skipped(tmp_path: Path, caplog) -> None:
    write_episode(tmp_path, 'a', 2)
    with caplog.at_level(logging.WARNING, logger='scarls.episodes.dataset'):
        ds = EpisodeDataset(tmp_path, cameras=('top', 'wrist'))
    assert len(ds) == 0 and "missing ['wrist']" in caplog.text
    lowdim = EpisodeDataset(tmp_path, cameras=())
    assert len(lowdim) == 2 and not any(k.startswith('image.') for k in lowdim[0])


@pytest.mark.multiproc
def test_tune_malloc_in_a_fresh_process() -> None:
    code = ('import logging, sys\n'
            'from scarls.episodes.dataset import tune_malloc\n'
            'sys.exit(0 if tune_malloc(32 << 20, 64 << 20) else 3)\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=60)
    expect = 0 if platform.libc_ver()[0] == 'glibc' else 3
    assert out.returncode == expect, out.stderr


def test_steps_not_executed_are_masked_and_flagged(tmp_path: Path) -> None:
    """An episode with a safety array: a frame whose action the robot did not execute is
    flagged (``executed``) and never a target (``action_mask``); episodes without the array
    count as executed throughout."""
    from scarls.episodes.schema import SAFETY_CODES as C
    rec = write_episode(tmp_path, 'pick', 6, finalize=False)
    codes = [C['ok'], C['estopped'], C['clamped'], C['holding'], C['clamped_heavily'], C['ok']]
    rec['writer'].finalize('success', 1, safety=codes)
    write_episode(tmp_path, 'pick', 3, seed=1)
    ds = EpisodeDataset(tmp_path, 'pick', chunk_size=3, cameras=CAMS)
    executed = [True, False, True, False, False, True]
    assert ds.episode_info(0).executed.tolist() == executed
    assert ds.episode_info(1).executed.tolist() == [True] * 3
    assert [ds.get(0, t)['executed'] for t in range(6)] == executed
    assert ds.get(0, 0)['action_mask'].tolist() == [True, False, True]
    assert ds.get(0, 5)['action_mask'].tolist() == [True, False, False]   # padding
    assert ds.get(1, 1)['action_mask'].tolist() == [True, True, False]
    batch = ds.get_batch([0, 2, 7])
    assert batch['executed'].tolist() == [True, True, True]
    assert batch['action_mask'].tolist() == [[True, False, True], [True, False, False],
                                             [True, True, False]]
    # the safety array is verified like the other low-dimensional arrays
    z = zarr.open_array(str(tmp_path / 'pick' / 'episode_0.zarr' / 'safety'), mode='r+')
    z[0] = C['fault']
    ds = EpisodeDataset(tmp_path, 'pick', chunk_size=3, cameras=CAMS)
    assert ds.num_episodes == 1 and 'sha256 mismatch' in str(ds.skipped())
