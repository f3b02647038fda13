"""Tests of the Zarr episode format: writer, reader, validator, numbering and storage errors."""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scarls.episodes import (
    BackgroundEpisodeWriter,
    EpisodeError,
    EpisodeMeta,
    EpisodeReader,
    EpisodeWriter,
    SchemaError,
    StepRecord,
    StorageError,
    available_codecs,
    list_episodes,
    validate_episode,
)
from scarls.episodes import writer as writer_mod
from scarls.episodes.codecs import get_frame_codec

CAMS = ('top', 'left', 'right')
H, W = 24, 32
D = 14


def scene(rng: np.random.Generator, i: int, noise: float = 2.0) -> np.ndarray:
    """Smooth drawn scene (gradient + moving box) with sensor noise."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = np.stack([xx * 255 // W, yy * 255 // H, np.full_like(xx, 90)], -1).astype(np.float64)
    x0 = (3 * i) % (W - 8)
    img[6:14, x0 : x0 + 8] = (200, 40, 40)
    img += rng.normal(0.0, noise, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def make_step(rng: np.random.Generator, i: int, *, t0: float = 100.0) -> StepRecord:
    return StepRecord(
        images={c: scene(rng, i + k) for k, c in enumerate(CAMS)},
        state=rng.normal(size=D),
        action=rng.normal(size=D).astype(np.float32),
        intervention=bool(i % 3 == 0),
        timestamp=t0 + i / 30.0,
    )


def new_writer(root: Path, task: str = 'pick', **kw) -> EpisodeWriter:
    kw.setdefault('image_shape', (H, W))
    kw.setdefault('state_dim', D)
    kw.setdefault('action_dim', D)
    return EpisodeWriter(root, task, 'ecu-1', **kw)


def record(root: Path, task: str = 'pick', n: int = 5, seed: int = 0, **kw):
    rng = np.random.default_rng(seed)
    w = new_writer(root, task, **kw)
    steps = [make_step(rng, i) for i in range(n)]
    for s in steps:
        w.append(s)
    return w.finalize('success', 7, {'note': 'x'}), steps


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float('inf') if mse == 0 else 10 * np.log10(255.0**2 / mse)


# -- round trip -------------------------------------------------------------------------------


@pytest.mark.parametrize('codec', ['lz4', 'zstd', 'raw'])
def test_round_trip_lossless_exact(tmp_path: Path, codec: str) -> None:
    ref, steps = record(tmp_path, n=11, codec=codec, block_size=4)
    assert ref.index == 0
    assert ref.steps == 11
    assert ref.intervention_steps == 4  # i = 0, 3, 6, 9
    assert ref.path == tmp_path / 'pick' / 'episode_0.zarr'
    assert ref.meta_path == tmp_path / 'pick' / 'episode_0_meta.json'
    r = EpisodeReader(ref.path)
    assert r.steps == 11 and len(r) == 11
    for c in CAMS:
        arr = r.images(c)
        assert arr.shape == (11, H, W, 3) and arr.dtype == np.uint8
        for i in (0, 5, 10):
            np.testing.assert_array_equal(arr[i], steps[i].images[c])
    np.testing.assert_array_equal(
        r.state[:], np.stack([np.float32(s.state) for s in steps]).astype(np.float32)
    )
    np.testing.assert_array_equal(r.action[:], np.stack([s.action for s in steps]))
    assert r.state.dtype == np.float32 and r.action.dtype == np.float32
    assert r.intervention.dtype == np.bool_ and r.timestamp.dtype == np.float64
    assert r.intervention[:].tolist() == [s.intervention for s in steps]
    assert r.timestamp[:].tolist() == [s.timestamp for s in steps]
    m = r.meta
    assert (m.task, m.ecu_id, m.outcome) == ('pick', 'ecu-1', 'success')
    assert m.model_version == 7
    assert m.steps == 11 and m.intervention_steps == 4 and m.fps == 30.0
    assert m.start_time == steps[0].timestamp and m.end_time == steps[-1].timestamp
    assert m.cameras == list(CAMS) and m.extra == {'note': 'x'}
    assert m.image_codec['name'] == codec and m.image_codec['lossless'] is True
    assert m.shapes['observation/top'] == [11, H, W, 3]
    assert m.shapes['observation/obs_state'] == [11, D]
    top = np.stack([s.images['top'] for s in steps])
    assert m.sha256['observation/top'] == hashlib.sha256(top.tobytes()).hexdigest()
    ts = np.array([s.timestamp for s in steps])
    assert m.sha256['timestamp'] == hashlib.sha256(ts.tobytes()).hexdigest()
    assert validate_episode(ref.path).steps == 11
    back = r.step(4)
    np.testing.assert_array_equal(back.images['left'], steps[4].images['left'])
    assert back.timestamp == steps[4].timestamp and back.intervention == steps[4].intervention
    # raw zarr can read it without the package's reader
    g = zarr.open_group(str(ref.path), mode='r')
    np.testing.assert_array_equal(g['observation/right'][7], steps[7].images['right'])


LOSSY = [c for c in available_codecs() if not get_frame_codec(c).lossless]


@pytest.mark.parametrize('codec', LOSSY)
def test_lossy_codec_round_trip_psnr_and_checksum(tmp_path: Path, codec: str) -> None:
    ref, steps = record(tmp_path, n=4, codec=codec)
    r = EpisodeReader(ref.path)
    assert r.meta.image_codec['lossless'] is False
    for i, s in enumerate(steps):
        for c in CAMS:
            got = r.images(c)[i]
            assert got.shape == (H, W, 3) and got.dtype == np.uint8
            assert psnr(got, s.images[c]) > 25.0, (codec, i, c)  # tiny frames, sharp edges
    validate_episode(ref.path)  # checksum is over decoded-as-stored frames


@pytest.mark.parametrize('codec', available_codecs())
def test_frame_codec_full_size(codec: str) -> None:
    rng = np.random.default_rng(1)
    yy, xx = np.mgrid[0:480, 0:640]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.float64)
    img = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    fc = get_frame_codec(codec)
    data = fc.encode(img)
    back = fc.decode(data, img.shape)
    assert back.shape == img.shape
    if fc.lossless:
        np.testing.assert_array_equal(back, img)
    else:
        assert psnr(back, img) > 28.0
        assert len(data) < img.nbytes / 4


def test_unknown_codec_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match='unknown image codec'):
        new_writer(tmp_path, codec='gif')
    assert list_episodes(tmp_path) == []


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rows=st.lists(
        st.tuples(
            st.lists(st.floats(-1e6, 1e6, width=32), min_size=3, max_size=3),
            st.booleans(),
            st.floats(1e-3, 10.0),
        ),
        min_size=1,
        max_size=6,
    )
)
def test_lowdim_round_trip_property(tmp_path_factory, rows) -> None:
    root = tmp_path_factory.mktemp('prop')
    img = np.zeros((4, 4, 3), np.uint8)
    w = EpisodeWriter(
        root,
        'p',
        'e',
        cameras=('top',),
        image_shape=(4, 4),
        state_dim=3,
        action_dim=3,
        fsync=False,
    )
    t = 0.0
    for vec, flag, dt in rows:
        t += dt
        w.append(StepRecord({'top': img}, vec, vec[::-1], flag, t))
    ref = w.finalize('fail', None)
    r = EpisodeReader(ref.path)
    np.testing.assert_array_equal(r.state[:], np.array([v for v, _, _ in rows], np.float32))
    assert r.intervention[:].tolist() == [f for _, f, _ in rows]
    assert ref.intervention_steps == sum(f for _, f, _ in rows)
    validate_episode(ref.path)


# -- step validation --------------------------------------------------------------------------


def _bad_steps(rng):
    good = make_step(rng, 0)
    imgs = dict(good.images)

    def with_(**kw):
        d = dict(
            images=good.images,
            state=good.state,
            action=good.action,
            intervention=good.intervention,
            timestamp=good.timestamp + 1,
        )
        d.update(kw)
        return StepRecord(**d)

    missing = {k: v for k, v in imgs.items() if k != 'left'}
    extra = imgs | {'wrist': imgs['top']}
    return {
        'missing camera': (with_(images=missing), 'expected exactly'),
        'extra camera': (with_(images=extra), 'expected exactly'),
        'float image': (with_(images=imgs | {'top': imgs['top'].astype(np.float32)}), 'uint8'),
        'wrong shape': (with_(images=imgs | {'top': imgs['top'][:, :-1]}), 'shape'),
        'not an array': (with_(images=imgs | {'top': imgs['top'].tolist()}), 'numpy array'),
        'nan state': (with_(state=np.full(D, np.nan)), 'non-finite'),
        'state dim': (with_(state=np.zeros(D + 1)), r'state must have shape \(14,\)'),
        'huge action': (with_(action=np.full(D, 1e300)), 'non-finite'),
        'string action': (with_(action=['a'] * D), 'real-valued'),
        'int intervention': (with_(intervention=1), 'intervention must be a bool'),
        'nan timestamp': (with_(timestamp=float('nan')), 'finite'),
        'old timestamp': (with_(timestamp=good.timestamp), 'strictly increase'),
    }


@pytest.mark.parametrize('case', list(_bad_steps(np.random.default_rng(0))))
def test_invalid_step_raises_and_writes_nothing(tmp_path: Path, case: str) -> None:
    rng = np.random.default_rng(0)
    w = new_writer(tmp_path)
    w.append(make_step(np.random.default_rng(0), 0))
    files_before = sorted(p.name for p in (w.temp_path / 'observation' / 'top').iterdir())
    bad, msg = _bad_steps(rng)[case]
    with pytest.raises(EpisodeError, match=msg):
        w.append(bad)
    assert w.steps == 1
    assert sorted(p.name for p in (w.temp_path / 'observation' / 'top').iterdir()) == files_before
    w.append(make_step(rng, 1))
    ref = w.finalize('success', 1)
    assert ref.steps == 2
    validate_episode(ref.path)


def test_finalize_argument_errors_and_state(tmp_path: Path) -> None:
    w = new_writer(tmp_path)
    with pytest.raises(EpisodeError, match='no steps'):
        w.finalize('success', 1)
    w.append(make_step(np.random.default_rng(0), 0))
    with pytest.raises(EpisodeError, match='outcome must be one of'):
        w.finalize('great', 1)
    with pytest.raises(EpisodeError, match='model_version must be an int'):
        w.finalize('success', 'v1')
    with pytest.raises(EpisodeError, match='JSON'):
        w.finalize('success', 1, {'x': object()})
    with pytest.raises(EpisodeError, match='JSON'):
        w.finalize('success', 1, {'x': float('nan')})
    ref = w.finalize('aborted', 1)
    assert EpisodeMeta.load(ref.meta_path).outcome == 'aborted'
    with pytest.raises(EpisodeError, match='already finalized'):
        w.append(make_step(np.random.default_rng(0), 1))
    with pytest.raises(EpisodeError, match='already finalized'):
        w.finalize('success', 1)
    w.abort()  # no-op after finalize
    assert [e.index for e in list_episodes(tmp_path)] == [0]


def test_finalize_leaves_no_temp(tmp_path: Path) -> None:
    ref, _ = record(tmp_path, n=40)
    assert ref.seconds_to_finalize > 0   # how long it takes: bench/bench_recording.py
    names = sorted(os.listdir(tmp_path / 'pick'))
    assert names == ['.scarls-task.lock', 'episode_0.zarr', 'episode_0_meta.json']


# -- numbering, abort, temp dirs ----------------------------------------------------------------


def test_numbering_continues_after_restart(tmp_path: Path) -> None:
    for _ in range(2):
        record(tmp_path, n=2)
    assert [e.index for e in list_episodes(tmp_path, 'pick')] == [0, 1]
    # "restart": fresh writer objects only see the directory
    ref, _ = record(tmp_path, n=2)
    assert ref.index == 2
    # an existing episode dir without meta (or a meta without dir) is never overwritten
    (tmp_path / 'pick' / 'episode_5.zarr').mkdir()
    (tmp_path / 'pick' / 'episode_7_meta.json').write_text('{}')
    assert record(tmp_path, n=1)[0].index == 8
    assert [e.index for e in list_episodes(tmp_path)] == [0, 1, 2, 8]


def test_abort_leaves_nothing_and_index_is_reused(tmp_path: Path) -> None:
    record(tmp_path, n=2)
    w = new_writer(tmp_path)
    assert w.index == 1
    w.append(make_step(np.random.default_rng(0), 0))
    w.abort()
    assert sorted(os.listdir(tmp_path / 'pick')) == [
        '.scarls-task.lock',
        'episode_0.zarr',
        'episode_0_meta.json',
    ]
    with pytest.raises(EpisodeError, match='already aborted'):
        w.append(make_step(np.random.default_rng(0), 1))
    assert record(tmp_path, n=1)[0].index == 1


def test_context_manager_aborts_unfinished(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), new_writer(tmp_path) as w:
        w.append(make_step(np.random.default_rng(0), 0))
        raise RuntimeError('boom')
    assert list_episodes(tmp_path) == []
    assert not w.temp_path.exists()


def test_two_open_writers_do_not_collide(tmp_path: Path) -> None:
    a, b = new_writer(tmp_path), new_writer(tmp_path)
    assert (a.index, b.index) == (0, 1)
    rng = np.random.default_rng(0)
    b.append(make_step(rng, 0))
    rb = b.finalize('success', 1)
    c = new_writer(tmp_path)  # a is still open (live reservation) -> 2
    assert c.index == 2
    a.append(make_step(rng, 0))
    ra = a.finalize('fail', 1)
    c.abort()
    assert (ra.index, rb.index) == (0, 1)
    assert [e.index for e in list_episodes(tmp_path)] == [0, 1]


@pytest.mark.multiproc
def test_two_processes_reserve_distinct_indices(tmp_path: Path) -> None:
    code = (
        'import sys; from scarls.episodes import EpisodeWriter\n'
        'w = EpisodeWriter(sys.argv[1], "pick", "e", image_shape=(4, 4), state_dim=1, '
        'action_dim=1)\n'
        'print(w.index, flush=True); sys.stdin.readline(); w.abort()\n'
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / 'src'))
    procs = [
        subprocess.Popen(
            [sys.executable, '-c', code, str(tmp_path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for _ in range(3)
    ]
    try:
        indices = sorted(int(p.stdout.readline()) for p in procs)
    finally:
        for p in procs:
            p.communicate('\n', timeout=30)
    assert indices == [0, 1, 2]
    assert record(tmp_path, n=1)[0].index == 0


def _dead_pid() -> int:
    p = subprocess.Popen(['true'])   # any short-lived program
    p.wait(timeout=30)
    return p.pid


def test_temp_dirs_ignored_and_cleaned(tmp_path: Path, caplog) -> None:
    record(tmp_path, n=2)
    task = tmp_path / 'pick'
    dead = _dead_pid()
    dead_tmp = task / f'.episode_1.zarr.tmp-{dead}'
    shutil.copytree(task / 'episode_0.zarr', dead_tmp)
    os.symlink(str(dead), task / '.episode_1.lock')
    live_tmp = task / f'.episode_9.zarr.tmp-{os.getpid()}'
    live_tmp.mkdir()
    (task / f'.episode_4_meta.json.tmp-{dead}').write_text('{')
    assert [e.index for e in list_episodes(tmp_path)] == [0]
    validate_episode(task / 'episode_0.zarr')
    with caplog.at_level(logging.INFO, logger='scarls.episodes'):
        ref, _ = record(tmp_path, n=1)
    assert ref.index == 1  # the dead writer's index is reused: no visible gap
    assert not dead_tmp.exists()
    assert not (task / f'.episode_4_meta.json.tmp-{dead}').exists()
    assert live_tmp.exists()  # owner alive: left alone
    assert f'.episode_1.zarr.tmp-{dead}' in caplog.text
    assert [e.index for e in list_episodes(tmp_path)] == [0, 1]


def test_uncommitted_data_dir_moved_aside(tmp_path: Path) -> None:
    record(tmp_path, n=1)
    task = tmp_path / 'pick'
    dead = _dead_pid()
    shutil.copytree(task / 'episode_0.zarr', task / 'episode_1.zarr')  # renamed, no meta
    os.symlink(str(dead), task / '.episode_1.lock')
    assert [e.index for e in list_episodes(tmp_path)] == [0]
    ref, _ = record(tmp_path, n=1)
    assert ref.index == 1
    assert (task / f'.episode_1.zarr.orphan-{dead}').is_dir()
    validate_episode(ref.path)


def test_list_episodes_sorting_and_missing_root(tmp_path: Path) -> None:
    assert list_episodes(tmp_path / 'nope') == []
    assert list_episodes(tmp_path, 'nope') == []
    for task in ('b_task', 'a_task'):
        for _ in range(2):
            record(tmp_path, task, n=1)
    (tmp_path / 'a_task' / 'episode_10.zarr').mkdir()  # no meta -> invisible
    got = [(e.task, e.index) for e in list_episodes(tmp_path)]
    assert got == [('a_task', 0), ('a_task', 1), ('b_task', 0), ('b_task', 1)]
    assert [e.index for e in list_episodes(tmp_path, 'b_task')] == [0, 1]
    with pytest.raises(ValueError, match='invalid task name'):
        list_episodes(tmp_path, '../etc')


# -- validator --------------------------------------------------------------------------------


def _edit_meta(meta_path: Path, fn) -> None:
    d = json.loads(meta_path.read_text())
    fn(d)
    meta_path.write_text(json.dumps(d))


def _corruptions():
    def rm_array(ref):
        shutil.rmtree(ref.path / 'action')

    def bad_json(ref):
        ref.meta_path.write_text('{"task": ')

    def no_meta(ref):
        ref.meta_path.unlink()

    def missing_key(ref):
        _edit_meta(ref.meta_path, lambda d: d.pop('outcome'))

    def wrong_type(ref):
        _edit_meta(ref.meta_path, lambda d: d.update(steps='5'))

    def t_mismatch(ref):
        _edit_meta(ref.meta_path, lambda d: d.update(steps=4))

    def shape_mismatch(ref):
        _edit_meta(ref.meta_path, lambda d: d['shapes'].update({'action': [5, 3]}))

    def wrong_dtype(ref):
        g = zarr.open_group(str(ref.path), mode='a')
        data = g['action'][:]
        del g['action']
        g.create_array('action', data=data.astype(np.float64))

    def short_array(ref):
        g = zarr.open_group(str(ref.path), mode='a')
        g['timestamp'].resize((4,))

    def bad_checksum(ref):
        g = zarr.open_group(str(ref.path), mode='a')
        g['observation/obs_state'][2, 0] = 1234.5

    def swapped_frame(ref):
        d = ref.path / 'observation' / 'left'
        shutil.copyfile(d / 'c.1.0.0.0', d / 'c.3.0.0.0')

    def garbage_chunk(ref):
        (ref.path / 'observation' / 'top' / 'c.2.0.0.0').write_bytes(b'not a blosc frame')

    def missing_chunk(ref):
        (ref.path / 'observation' / 'right' / 'c.4.0.0.0').unlink()

    def bad_zarr_json(ref):
        (ref.path / 'intervention' / 'zarr.json').write_text('{oops')

    def wrong_interventions(ref):
        _edit_meta(ref.meta_path, lambda d: d.update(intervention_steps=0))

    def bad_outcome(ref):
        _edit_meta(ref.meta_path, lambda d: d.update(outcome='maybe'))

    def bad_version(ref):
        _edit_meta(ref.meta_path, lambda d: d.update(schema_version=99))

    return {
        'missing array': (rm_array, "'action' is missing"),
        'bad meta json': (bad_json, 'not valid JSON'),
        'no meta': (no_meta, 'meta file is missing'),
        'missing meta key': (missing_key, "missing the key 'outcome'"),
        'wrong meta type': (wrong_type, "'steps' has type str"),
        'T mismatch': (t_mismatch, 'meta says'),
        'shape mismatch': (shape_mismatch, 'meta says'),
        'wrong dtype': (wrong_dtype, "'action' has dtype float64"),
        'short array': (short_array, "'timestamp' has shape"),
        'checksum state': (bad_checksum, "checksum mismatch for 'observation/obs_state'"),
        'swapped frame': (swapped_frame, "checksum mismatch for 'observation/left'"),
        'garbage chunk': (garbage_chunk, "frame 2 of 'observation/top' cannot be decoded"),
        'missing chunk': (missing_chunk, "frame 4 of 'observation/right' is missing"),
        'bad zarr.json': (bad_zarr_json, "'intervention'"),
        'intervention count': (wrong_interventions, 'intervention_steps=0'),
        'bad outcome': (bad_outcome, "outcome 'maybe'"),
        'schema version': (bad_version, 'unsupported schema_version 99'),
    }


@pytest.mark.parametrize('case', list(_corruptions()))
def test_validator_catches_corruption(tmp_path: Path, case: str) -> None:
    ref, _ = record(tmp_path, n=5)
    validate_episode(ref.path)
    corrupt, msg = _corruptions()[case]
    corrupt(ref)
    with pytest.raises(SchemaError, match=msg) as info:
        validate_episode(ref.path)
    assert 'episode_0' in str(info.value)  # names the file


def test_validator_without_checksums_skips_hashing(tmp_path: Path) -> None:
    ref, _ = record(tmp_path, n=5)
    g = zarr.open_group(str(ref.path), mode='a')
    g['action'][0, 0] = 99.0
    assert validate_episode(ref.path, check_checksums=False).steps == 5
    with pytest.raises(SchemaError, match='checksum'):
        validate_episode(ref.path)


def test_reader_rejects_non_episode_path(tmp_path: Path) -> None:
    with pytest.raises(SchemaError, match='not an episode directory'):
        EpisodeReader(tmp_path)
    with pytest.raises(SchemaError, match='episode directory is missing'):
        EpisodeReader(tmp_path / 'episode_3.zarr')


# -- storage errors ---------------------------------------------------------------------------


def test_missing_root_is_created(tmp_path: Path) -> None:
    ref, _ = record(tmp_path / 'a' / 'b', n=1)
    assert ref.path.is_dir()


def test_root_not_a_directory_is_storage_error(tmp_path: Path) -> None:
    (tmp_path / 'file').write_text('x')
    with pytest.raises(StorageError, match='creating task directory'):
        new_writer(tmp_path / 'file')


def _enospc(*_a, **_k):
    raise OSError(errno.ENOSPC, 'No space left on device')


def test_disk_full_on_append(tmp_path: Path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    w = new_writer(tmp_path)
    w.append(make_step(rng, 0))
    monkeypatch.setattr(writer_mod.os, 'write', _enospc)
    with pytest.raises(StorageError, match='disk is full') as info:
        w.append(make_step(rng, 1))
    assert 'ENOSPC' in str(info.value)
    assert w.steps == 1 and w.stats().failed == 1
    assert not (w.temp_path / 'observation' / 'top' / 'c.1.0.0.0').exists()
    monkeypatch.undo()
    w.append(make_step(rng, 2))
    ref = w.finalize('success', 1)
    assert ref.steps == 2
    validate_episode(ref.path)


def _failing_meta_open(monkeypatch) -> None:
    real_open = open

    def failing_open(path, *a, **k):
        if 'meta.json.tmp' in str(path):
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_open(path, *a, **k)

    monkeypatch.setattr('builtins.open', failing_open)


def test_disk_full_on_meta_write_publishes_nothing_and_cleans_up(tmp_path: Path,
                                                                 monkeypatch) -> None:
    w = new_writer(tmp_path)
    w.append(make_step(np.random.default_rng(0), 0))
    _failing_meta_open(monkeypatch)
    with pytest.raises(StorageError, match='disk is full'):
        w.finalize('success', 1)
    monkeypatch.undo()
    assert list_episodes(tmp_path) == []
    # the writer discarded the episode: no temp dir, no reservation, nothing half visible
    assert sorted(os.listdir(tmp_path / 'pick')) == ['.scarls-task.lock']
    w.abort()   # a no-op now
    assert new_writer(tmp_path).index == 0   # the index is free again


def test_disk_full_on_meta_write_keep_on_error_allows_a_retry(tmp_path: Path,
                                                              monkeypatch) -> None:
    w = new_writer(tmp_path)
    w.append(make_step(np.random.default_rng(0), 0))
    _failing_meta_open(monkeypatch)
    with pytest.raises(StorageError, match='disk is full'):
        w.finalize('success', 1, keep_on_error=True)
    monkeypatch.undo()
    assert list_episodes(tmp_path) == []
    assert not (tmp_path / 'pick' / 'episode_0.zarr').exists()
    assert w.temp_path.exists()  # still open: caller decides
    ref = w.finalize('success', 1)   # space is back: the retry publishes it
    validate_episode(ref.path)
    assert sorted(os.listdir(tmp_path / 'pick')) == [
        '.scarls-task.lock', 'episode_0.zarr', 'episode_0_meta.json']


def test_constructor_failure_leaves_no_temp_and_no_reservation(tmp_path: Path,
                                                                monkeypatch) -> None:
    def boom(self):
        self.temp_path.joinpath('partial').write_text('x')   # something was written
        raise OSError(errno.ENOSPC, 'No space left on device')

    monkeypatch.setattr(writer_mod.EpisodeWriter, '_create_arrays', boom)
    with pytest.raises(StorageError, match='disk is full'):
        new_writer(tmp_path)

    def interrupted(self):
        raise KeyboardInterrupt

    monkeypatch.setattr(writer_mod.EpisodeWriter, '_create_arrays', interrupted)
    with pytest.raises(KeyboardInterrupt):
        new_writer(tmp_path)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path / 'pick')) == ['.scarls-task.lock']
    assert record(tmp_path, n=1)[0].index == 0


# -- background writer ------------------------------------------------------------------------


def test_background_writer_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    bw = BackgroundEpisodeWriter(
        tmp_path,
        'pick',
        'ecu-1',
        image_shape=(H, W),
        state_dim=D,
        action_dim=D,
        queue_size=64,
        block_size=8,
    )
    steps = [make_step(rng, i) for i in range(25)]
    for s in steps:
        assert bw.append(s) is True
    # frames are copied: mutating the caller's buffer after append must not matter
    steps[-1].images['top'][:] = 0
    ref = bw.finalize('success', 1)
    st_ = bw.stats()
    assert (st_.accepted, st_.written, st_.dropped, st_.failed) == (25, 25, 0, 0)
    assert ref.steps == 25
    r = EpisodeReader(ref.path)
    assert r.meta.dropped_steps == 0
    assert r.images('top')[24].any()
    np.testing.assert_array_equal(r.images('left')[13], steps[13].images['left'])
    validate_episode(ref.path)


def test_background_writer_drops_when_queue_full(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    bw = BackgroundEpisodeWriter(
        tmp_path, 'pick', 'ecu-1', image_shape=(H, W), state_dim=D, action_dim=D, queue_size=1
    )
    gate = threading.Event()
    real_write = bw._inner._write

    def slow_write(p):
        gate.wait(10)
        real_write(p)

    bw._inner._write = slow_write
    assert bw.append(make_step(rng, 0))
    deadline = time.monotonic() + 10
    while bw.stats().queue_depth and time.monotonic() < deadline:
        time.sleep(0.001)
    results = [bw.append(make_step(rng, i)) for i in range(1, 5)]
    assert results == [True, False, False, False]
    assert bw.stats().dropped == 3 and bw.stats().max_queue_depth == 1
    gate.set()
    ref = bw.finalize('fail', 1)
    assert ref.steps == 2
    assert EpisodeMeta.load(ref.meta_path).dropped_steps == 3


def test_background_writer_surfaces_errors_at_finalize(tmp_path: Path, monkeypatch) -> None:
    bw = BackgroundEpisodeWriter(
        tmp_path, 'pick', 'ecu-1', image_shape=(H, W), state_dim=D, action_dim=D
    )
    with pytest.raises(EpisodeError):
        bw.append(StepRecord({}, np.zeros(D), np.zeros(D), False, 1.0))  # validated in caller
    monkeypatch.setattr(writer_mod.os, 'write', _enospc)
    for i in range(3):
        assert bw.append(make_step(np.random.default_rng(0), i))
    with pytest.raises(StorageError, match=r'3 step\(s\) failed to persist'):
        bw.finalize('success', 1)
    monkeypatch.undo()
    assert list_episodes(tmp_path) == []
    # discarded by finalize itself: nothing leaks even if the caller never calls abort()
    assert sorted(os.listdir(tmp_path / 'pick')) == ['.scarls-task.lock']
    bw.abort()
    assert sorted(os.listdir(tmp_path / 'pick')) == ['.scarls-task.lock']
