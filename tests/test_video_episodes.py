"""Compressed mode (H.264 GOP chunks, compaction) and the dataset's frame buffer reuse."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from scarls.episodes import EpisodeWriter, StepRecord, validate_episode
from scarls.episodes.codecs import (
    VideoChunkError,
    VideoCodec,
    decode_video_chunk,
    encode_video_chunk,
)
from scarls.episodes.compact import compact_dataset, compact_episode, is_compacted
from scarls.episodes.dataset import EpisodeDataset, FrameReadError, make_loader
from scarls.episodes.errors import SchemaError

torch.set_num_threads(1)

CAMS = ('top', 'left')
H, W = 48, 64
D = 6


def scene(rng: np.random.Generator, i: int) -> np.ndarray:
    """A camera-like frame: gradient background, a moving box, mild sensor noise."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], -1).astype(np.float64)
    x0 = (3 * i) % (W - 16)
    img[12:28, x0 : x0 + 16] = (200, 40, 40)
    img += rng.normal(0.0, 2.0, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


def write(root: Path, task: str, steps: int, seed: int = 0, codec: str = 'lz4') -> dict:
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(root, task, 'ecu-test', image_shape=(H, W), state_dim=D, action_dim=D,
                      cameras=CAMS, codec=codec, fsync=False)
    rec: dict = {'images': {c: [] for c in CAMS}, 'action': []}
    for i in range(steps):
        images = {c: scene(rng, i + 7 * k) for k, c in enumerate(CAMS)}
        action = rng.normal(size=D).astype(np.float32)
        w.append(StepRecord(images=images, state=rng.normal(size=D).astype(np.float32),
                            action=action, intervention=i % 3 == 0, timestamp=i / 30.0))
        for c in CAMS:
            rec['images'][c].append(images[c])
        rec['action'].append(action)
    ref = w.finalize('success', model_version=1)
    rec['path'] = ref.path
    rec['images'] = {c: np.stack(v) for c, v in rec['images'].items()}
    rec['action'] = np.stack(rec['action'])
    return rec


# -- the codec ---------------------------------------------------------------------------------


def test_video_chunk_roundtrip_and_random_access() -> None:
    rng = np.random.default_rng(1)
    frames = np.stack([scene(rng, i) for i in range(5)])
    data = encode_video_chunk(frames)
    assert len(data) < frames.nbytes / 10
    full = np.empty_like(frames)
    decode_video_chunk(data, 5, full)
    for i in range(5):
        assert psnr(full[i], frames[i]) > 25.0
    for j in range(5):  # any frame alone decodes to the same pixels as in the full decode
        one = np.empty((1, H, W, 3), np.uint8)
        decode_video_chunk(data, 5, one, first=j)
        np.testing.assert_array_equal(one[0], full[j])
    with pytest.raises(ValueError, match='out of range'):
        decode_video_chunk(data, 5, np.empty((1, H, W, 3), np.uint8), first=5)


def test_damaged_video_chunks_raise_a_clear_error() -> None:
    rng = np.random.default_rng(2)
    data = encode_video_chunk(np.stack([scene(rng, i) for i in range(4)]))
    out = np.empty((1, H, W, 3), np.uint8)
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x10
    cases = {
        'crc32 mismatch': bytes(flipped),
        'truncated or padded': data[:-3],
        'not a video chunk': b'JUNK' + data[4:],
        'shorter than the video chunk header': data[:7],
        'holds 4 frames, the array says 8': data,
    }
    for message, blob in cases.items():
        frames = 8 if 'array says' in message else 4
        with pytest.raises(VideoChunkError, match=message):
            decode_video_chunk(blob, frames, out, first=0)
    decode_video_chunk(data, 4, out, first=3)  # the decoder is still usable afterwards


def test_video_codec_through_zarr(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    frames = np.stack([scene(rng, i) for i in range(7)])
    arr = zarr.create_array(tmp_path / 'a', shape=frames.shape, chunks=(4, H, W, 3),
                            dtype='uint8', serializer=VideoCodec(crf=20), compressors=())
    arr[:] = frames
    back = zarr.open_array(tmp_path / 'a', mode='r')
    assert back.metadata.codecs[0] == VideoCodec(format='h264', crf=20, preset='ultrafast')
    got = back[:]
    assert got.shape == frames.shape
    assert min(psnr(got[i], frames[i]) for i in range(7)) > 25.0
    np.testing.assert_array_equal(back[5], got[5])
    with pytest.raises(ValueError, match='even height and width'):
        zarr.create_array(tmp_path / 'b', shape=(2, 5, 6, 3), chunks=(2, 5, 6, 3),
                          dtype='uint8', serializer=VideoCodec(), compressors=())


# -- compaction and the dataset -----------------------------------------------------------------


@pytest.mark.parametrize('codec', ['lz4', 'jpeg'])
def test_compacted_episode_reads_transparently(tmp_path: Path, codec: str) -> None:
    recs = [write(tmp_path, 'pick', 10, seed=0, codec=codec),
            write(tmp_path, 'pick', 7, seed=1, codec=codec)]
    before = EpisodeDataset(tmp_path, 'pick', chunk_size=3, cameras=CAMS)
    ref = [before[i] for i in range(len(before))]
    results = compact_dataset(tmp_path, 'pick', gop=4, fsync=False)
    assert [r.skipped for r in results] == [False, False]
    assert all(r.bytes_after < r.bytes_before for r in results)
    for rec, res in zip(recs, results, strict=True):
        assert res.path == rec['path'] and is_compacted(rec['path'])
        validate_episode(rec['path'], check_checksums=True)  # new sha256 of the decoded frames
        meta = json.loads((rec['path'].parent / f'{rec["path"].stem}_meta.json').read_text())
        assert meta['image_codec']['name'] == 'h264' and meta['image_codec']['gop'] == 4
        assert meta['image_codec']['compacted_from'] == codec
        steps = len(rec['action'])
        adir = rec['path'] / 'observation' / 'top'
        files = [f for f in adir.rglob('*') if f.is_file() and f.name != 'zarr.json']
        assert len(files) == -(-steps // 4)  # one chunk file per GOP, the last one partial
    assert not [n for n in os.listdir(tmp_path / 'pick') if 'compact' in n]  # no leftovers
    ds = EpisodeDataset(tmp_path, 'pick', chunk_size=3, cameras=CAMS)
    dz = EpisodeDataset(tmp_path, 'pick', chunk_size=3, cameras=CAMS, io='zarr')
    assert all(c.decoder == 'video' and c.gop == 4 for ep in ds._episodes for c in ep.cameras)
    assert len(ds) == len(ref) == 17
    for i in [16, 0, 9, 3, 10, 15, 5]:  # random order: every position in a GOP
        item, old = ds[i], ref[i]
        np.testing.assert_array_equal(item['action'], old['action'])
        np.testing.assert_array_equal(item['action_mask'], old['action_mask'])
        for c in CAMS:
            assert psnr(item[f'image.{c}'], old[f'image.{c}']) > 25.0
            np.testing.assert_array_equal(item[f'image.{c}'], dz[i][f'image.{c}'])
    batch = ds.get_batch([4, 12, 4])
    np.testing.assert_array_equal(batch['image.left'][0].numpy(), ds[4]['image.left'])
    np.testing.assert_array_equal(batch['image.left'][2], batch['image.left'][0])
    assert compact_episode(recs[0]['path']).skipped  # idempotent


def test_dataset_indexed_before_compaction_keeps_reading(tmp_path: Path) -> None:
    rec = write(tmp_path, 'pick', 9)
    ds = EpisodeDataset(tmp_path, 'pick', chunk_size=2, cameras=CAMS)
    loader = make_loader(ds, 3, shuffle=False)
    assert ds[5]['image.top'].shape == (H, W, 3)
    compact_episode(rec['path'], gop=3, fsync=False)
    item = ds[8]  # the old layout's chunk files are gone: the layout is read again
    assert psnr(item['image.top'], rec['images']['top'][8]) > 25.0
    assert psnr(item['image.left'], rec['images']['left'][8]) > 25.0
    assert [b['frame'].tolist() for b in loader] == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_damaged_compacted_chunk_names_the_frame(tmp_path: Path) -> None:
    rec = write(tmp_path, 'pick', 8)
    compact_episode(rec['path'], gop=4, fsync=False)
    ds = EpisodeDataset(tmp_path, 'pick', chunk_size=2, cameras=CAMS)
    adir = rec['path'] / 'observation' / 'left'
    chunk = adir / zarr.open_array(adir, mode='r').metadata.encode_chunk_key((1, 0, 0, 0))
    data = bytearray(chunk.read_bytes())
    data[-10] ^= 0xFF
    chunk.write_bytes(bytes(data))
    ds[2]  # another GOP is fine
    with pytest.raises(FrameReadError, match=r"frame 6 camera 'left'.*crc32 mismatch"):
        ds[6]


def test_corrupt_episode_is_not_compacted(tmp_path: Path) -> None:
    rec = write(tmp_path, 'pick', 6)
    meta_path = rec['path'].parent / f'{rec["path"].stem}_meta.json'
    meta = json.loads(meta_path.read_text())
    meta['sha256']['observation/top'] = '0' * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(SchemaError, match='do not match the meta sha256'):
        compact_episode(rec['path'], fsync=False)
    assert not is_compacted(rec['path'])
    assert not [n for n in os.listdir(tmp_path / 'pick') if 'compact' in n]


# -- frame buffer reuse -------------------------------------------------------------------------


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__['data'][0]


@pytest.mark.parametrize('decode_threads', [0, 3])
def test_items_reuse_frame_buffers_only_once_dropped(tmp_path: Path, decode_threads: int) -> None:
    rec = write(tmp_path, 'pick', 12)
    ds = EpisodeDataset(tmp_path, 'pick', chunk_size=2, cameras=CAMS,
                        decode_threads=decode_threads)
    first = ds[0]
    addrs = {_addr(first[f'image.{c}']) for c in CAMS}
    del first
    for i in range(1, 12):  # a loop that drops each item: the same few buffers every time
        item = ds[i]
        np.testing.assert_array_equal(item['image.top'], rec['images']['top'][i])
        assert {_addr(item[f'image.{c}']) for c in CAMS} == addrs
        del item
    kept = ds[3]['image.left']  # held by the caller (the item dict itself is dropped)
    view = torch.from_numpy(ds[4]['image.top'])[10:20]  # only a tensor view is held
    for i in range(12):
        ds[i]
        ds.get_batch([i, (i + 1) % 12])
    np.testing.assert_array_equal(kept, rec['images']['left'][3])
    np.testing.assert_array_equal(view.numpy(), rec['images']['top'][4][10:20])


def test_private_batches_reuse_buffers_only_once_dropped(tmp_path: Path) -> None:
    rec = write(tmp_path, 'pick', 10)
    ds = EpisodeDataset(tmp_path, 'pick', chunk_size=2, cameras=CAMS)
    b = ds.get_batch([1, 2])
    ptr = b['image.top'].data_ptr()
    del b
    assert ds.get_batch([3, 4])['image.top'].data_ptr() == ptr
    row = ds.get_batch([5, 6])['image.top'][1]  # a view of the batch tensor is kept
    for i in range(8):
        ds.get_batch([i, i + 1])
    np.testing.assert_array_equal(row.numpy(), rec['images']['top'][6])


def test_dataset_compact_command(tmp_path: Path, capsys) -> None:
    from scarls.cli import dataset as dataset_cli

    rec = write(tmp_path, 'pick', 5)
    assert dataset_cli.main(['dataset', 'compact', str(tmp_path), '--gop', '2',
                             '--no-fsync']) == 0
    assert '1 compacted' in capsys.readouterr().out
    assert is_compacted(rec['path'])
    assert dataset_cli.main(['dataset', 'compact', str(tmp_path), '--json']) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r['skipped'] for r in out['compacted']] == [True] and out['failed'] == []
    assert dataset_cli.main(['dataset', 'validate', str(tmp_path)]) == 0
