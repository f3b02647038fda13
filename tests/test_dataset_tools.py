"""Tests of the dataset tools (info, stats, validate, delete, merge, repair) and their CLI."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from scarls.cli import dataset as dataset_cli
from scarls.episodes import (
    EpisodeReader,
    EpisodeWriter,
    StepRecord,
    list_episodes,
    tools,
    validate_episode,
)
from scarls.episodes.dataset import EpisodeDataset
from scarls.episodes.merge import merge_datasets
from scarls.episodes.stats import dataset_info, dataset_stats
from scarls.episodes.tools import (
    JOURNAL_FILE,
    ActiveWriterError,
    DatasetToolError,
    PendingOperationError,
    delete_episodes,
    repair,
    validate_dataset,
)

SRC = Path(__file__).resolve().parents[1] / 'src'
CAMS = ('top', 'wrist')
H, W = 8, 12
DS, DA = 3, 2
DEAD_PID = 999_999_999  # above any pid_max: never alive

# task 'a': (steps, outcome, intervention steps); task 'b' likewise
A_EPISODES = [(3, 'success', (0,)), (4, 'fail', ()), (5, 'success', (1, 2)), (3, 'aborted', ()),
              (6, 'success', (5,))]
B_EPISODES = [(2, 'fail', (0, 1)), (4, 'success', ())]


def write_episode(root: Path, task: str, steps: int, seed: int, outcome: str = 'success',
                  interv: tuple[int, ...] = ()) -> dict:
    """Write one episode; return what was written."""
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(root, task, f'ecu-{seed % 2}', cameras=CAMS, image_shape=(H, W),
                      state_dim=DS, action_dim=DA, fsync=False)
    rec: dict = {'images': {c: [] for c in CAMS}, 'state': [], 'action': [], 'interv': []}
    for i in range(steps):
        images = {c: rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for c in CAMS}
        state = rng.normal(size=DS).astype(np.float32)
        action = rng.normal(size=DA).astype(np.float32)
        w.append(StepRecord(images, state, action, i in interv, 10.0 + i / 30))
        for c in CAMS:
            rec['images'][c].append(images[c])
        rec['state'].append(state)
        rec['action'].append(action)
        rec['interv'].append(i in interv)
    ref = w.finalize(outcome, model_version=seed % 3)
    rec = {k: (v if k == 'images' else np.asarray(v)) for k, v in rec.items()}
    rec['images'] = {c: np.stack(v) for c, v in rec['images'].items()}
    rec.update(task=task, index=ref.index, outcome=outcome, seed=seed)
    return rec


def fingerprint(path: Path) -> bytes:
    """Content identity of an episode on disk: its action array."""
    return np.asarray(EpisodeReader(path).action[:]).tobytes()


def assert_loads(root: Path, task: str, recs: list[dict]) -> None:
    """EpisodeDataset indexes exactly ``recs`` as episodes 0..N-1 with the written content."""
    ds = EpisodeDataset(root, task, chunk_size=1, cameras=CAMS)  # frames compared below
    assert ds.skipped() == {}
    assert ds.episode_keys() == [f'{task}/episode_{i}' for i in range(len(recs))]
    for pos, rec in enumerate(recs):
        info = ds.episode_info(pos)
        assert info.steps == len(rec['action'])
        assert info.outcome == rec['outcome']
        assert info.meta.episode_index == pos
        np.testing.assert_array_equal(info.intervention, rec['interv'])
        for t in range(info.steps):
            item = ds.get(pos, t)
            for c in CAMS:
                np.testing.assert_array_equal(item[f'image.{c}'], rec['images'][c][t])
            np.testing.assert_array_equal(item['state'], rec['state'][t])
            np.testing.assert_array_equal(item['action'][0], rec['action'][t])
    assert [e.index for e in list_episodes(root, task)] == list(range(len(recs)))


@pytest.fixture(scope='module')
def template(tmp_path_factory) -> tuple[Path, dict[str, list[dict]]]:
    root = tmp_path_factory.mktemp('template') / 'data'
    recs = {'a': [], 'b': []}
    for task, eps, base in (('a', A_EPISODES, 0), ('b', B_EPISODES, 100)):
        for k, (steps, outcome, interv) in enumerate(eps):
            recs[task].append(write_episode(root, task, steps, base + k, outcome, interv))
    return root, recs


@pytest.fixture
def data(template, tmp_path) -> tuple[Path, dict[str, list[dict]]]:
    """A fresh copy of the template root (task 'a': 5 episodes, task 'b': 2)."""
    src, recs = template
    root = tmp_path / 'data'
    shutil.copytree(src, root, symlinks=True)
    return root, recs


def flip_byte(path: Path) -> None:
    buf = bytearray(path.read_bytes())
    buf[len(buf) // 2] ^= 0xFF
    path.write_bytes(bytes(buf))
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # coarse-mtime file systems


# -- info / stats -------------------------------------------------------------------------------


def test_stats_numbers(data) -> None:
    root, _ = data
    s = dataset_stats(root)
    assert [t.task for t in s.tasks] == ['a', 'b']
    a, b = s.tasks
    assert (a.episodes, a.steps) == (5, 21)
    assert a.outcomes == {'success': 3, 'fail': 1, 'aborted': 1}
    assert (a.intervention_steps, a.episodes_with_intervention) == (4, 3)
    assert a.intervention_rate == pytest.approx(4 / 21)
    assert a.episode_intervention_rate == pytest.approx(3 / 5)
    assert a.success_rate == pytest.approx(3 / 4)
    assert (b.episodes, b.steps) == (2, 6)
    assert (b.intervention_steps, b.episodes_with_intervention) == (2, 1)
    tot = s.totals
    assert (tot.episodes, tot.steps, tot.intervention_steps) == (7, 27, 6)
    assert tot.outcomes == {'success': 4, 'fail': 2, 'aborted': 1}
    assert a.model_versions == {'0': 2, '1': 2, '2': 1}
    assert a.seconds == pytest.approx(21 / 30)
    assert a.bytes is None  # stats do not walk the data


def test_info_sizes_codecs_shapes_and_leftovers(data) -> None:
    root, _ = data
    (root / 'a' / f'.episode_5.zarr.tmp-{DEAD_PID}').mkdir()
    os.symlink(str(DEAD_PID), root / 'a' / '.episode_5.lock')
    info = dataset_info(root)
    a = info.tasks[0]
    assert (a.first_index, a.last_index, a.gaps) == (0, 4, [])
    assert a.codecs == {'lz4 (level 5)': 5}
    assert a.image_shapes == {'top': [f'{H}x{W}'], 'wrist': [f'{H}x{W}']}
    assert (a.state_dims, a.action_dims, a.fps) == ([DS], [DA], [30.0])
    on_disk = sum(f.stat().st_size for i in range(5)
                  for f in [*(root / 'a' / f'episode_{i}.zarr').rglob('*'),
                            root / 'a' / f'episode_{i}_meta.json'] if f.is_file())
    assert a.bytes == on_disk
    assert info.totals.bytes == a.bytes + info.tasks[1].bytes
    assert any('.tmp-' in x and 'dead writer' in x for x in a.leftovers)
    assert any('stale reservation' in x for x in a.leftovers)
    assert a.active_writers == []


# -- validate -----------------------------------------------------------------------------------


def test_validate_clean_root(data) -> None:
    root, _ = data
    report = validate_dataset(root)
    assert report.ok and report.errors == [] and report.warnings == []
    assert (report.episodes, report.valid_episodes) == (7, 7)


@pytest.mark.parametrize('target', ['observation/top/c.1.0.0.0', 'action/c/0/0'])
def test_validate_flags_flipped_byte(data, target: str) -> None:
    root, _ = data
    chunk = root / 'a' / 'episode_2.zarr' / target
    assert chunk.is_file()
    flip_byte(chunk)
    seen = []
    report = validate_dataset(root, progress=lambda d, t, label: seen.append((d, t)))
    assert seen[-1] == (7, 7)
    assert not report.ok
    assert (report.episodes, report.valid_episodes) == (7, 6)  # the rest keeps working
    [err] = report.errors
    key = target.rsplit('/c', 1)[0]
    assert err.index == 2 and err.task == 'a'
    assert err.path == f'a/episode_2.zarr/{target}'
    assert 'sha256 mismatch' in err.message and repr(key) in err.message
    # quick mode checks structure only
    assert validate_dataset(root, deep=False).ok


def test_validate_undecodable_chunk_names_file(data) -> None:
    root, _ = data
    chunk = root / 'b' / 'episode_1.zarr' / 'observation' / 'wrist' / 'c.3.0.0.0'
    chunk.write_bytes(b'not a blosc frame')
    report = validate_dataset(root, task='b')
    [err] = report.errors
    assert err.path == 'b/episode_1.zarr/observation/wrist/c.3.0.0.0'
    assert 'frame 3' in err.message and 'cannot be decoded' in err.message


def test_validate_missing_meta_gap_and_repair(data) -> None:
    root, recs = data
    (root / 'a' / 'episode_1_meta.json').unlink()
    shutil.rmtree(root / 'a' / 'episode_3.zarr')
    (root / 'a' / 'episode_3_meta.json').unlink()
    (root / 'a' / f'.scarls-merge-{DEAD_PID}').mkdir()
    report = validate_dataset(root, task='a')
    by_path = {p.path: p for p in report.problems}
    assert by_path['a/episode_1.zarr'].severity == 'error'
    assert 'without its meta' in by_path['a/episode_1.zarr'].message
    assert 'gaps: 3 missing' in by_path['a'].message  # 1 is a half episode, reported above
    assert by_path[f'a/.scarls-merge-{DEAD_PID}'].severity == 'warning'
    assert report.valid_episodes == 3

    res = repair(root)
    assert res.ok, res.remaining
    assert any('moved half episode episode_1.zarr' in a for a in res.actions)
    assert any('closed numbering gaps 1, 3' in a for a in res.actions)
    assert validate_dataset(root).errors == []
    assert_loads(root, 'a', [recs['a'][i] for i in (0, 2, 4)])
    assert not (root / 'a' / f'.scarls-merge-{DEAD_PID}').exists()
    assert repair(root).actions == []  # idempotent


# -- delete -------------------------------------------------------------------------------------


def test_delete_middle_renumbers_and_loads(data) -> None:
    root, recs = data
    res = delete_episodes(root, 'a', [1, 3])
    assert res.deleted == [1, 3] and res.renamed == [(2, 1), (4, 2)]
    assert res.episodes_after == 3
    assert_loads(root, 'a', [recs['a'][i] for i in (0, 2, 4)])
    assert_loads(root, 'b', recs['b'])  # other tasks untouched
    assert validate_dataset(root).errors == []
    trash = root / 'a' / res.trash
    for i in (1, 3):  # deleted episodes are kept whole in the trash
        validate_episode(trash / f'episode_{i}.zarr')
        assert fingerprint(trash / f'episode_{i}.zarr') == recs['a'][i]['action'].tobytes()
    assert not (root / 'a' / JOURNAL_FILE).exists()
    # the writer continues the numbering without a gap
    assert write_episode(root, 'a', 2, 50)['index'] == 3
    # deleting the last one needs no renumbering; purge removes the trash entry
    res = delete_episodes(root, 'a', [3], purge=True)
    assert res.renamed == [] and res.purged
    assert [e.index for e in list_episodes(root, 'a')] == [0, 1, 2]


def test_delete_refusals(data) -> None:
    root, _ = data
    with pytest.raises(DatasetToolError, match='no episode 7'):
        delete_episodes(root, 'a', [7])
    w = EpisodeWriter(root, 'a', 'ecu', cameras=CAMS, image_shape=(H, W), state_dim=DS,
                      action_dim=DA, fsync=False)
    try:
        with pytest.raises(ActiveWriterError, match='writer is active'):
            delete_episodes(root, 'a', [0])
    finally:
        w.abort()
    dry = delete_episodes(root, 'a', [0], dry_run=True)
    assert dry.renamed == [(1, 0), (2, 1), (3, 2), (4, 3)]
    assert [e.index for e in list_episodes(root, 'a')] == [0, 1, 2, 3, 4]


def _labels(root: Path, indices: list[int]) -> list[str]:
    seen: list[str] = []
    tools._step_hook = seen.append
    try:
        delete_episodes(root, 'a', indices, fsync=False)
    finally:
        tools._step_hook = None
    return seen


class _Crash(Exception):
    pass


def test_interrupted_delete_never_loses_an_episode(template, tmp_path) -> None:
    src, recs = template
    probe = tmp_path / 'probe'
    shutil.copytree(src, probe, symlinks=True)
    labels = _labels(probe, [0, 2])
    assert labels[0] == 'journal-written' and labels[-1] == 'journal-removed'
    assert 'rename-data:1->0' in labels and 'unlink-meta:4' in labels
    everything = {r['action'].tobytes(): r for r in recs['a']}
    expected = [recs['a'][i] for i in (1, 3, 4)]
    for n, label in enumerate(labels[:-1]):
        root = tmp_path / f'crash{n}'
        shutil.copytree(src, root, symlinks=True)

        def hook(at: str, label: str = label) -> None:
            if at == label:
                raise _Crash(at)

        tools._step_hook = hook
        try:
            with pytest.raises(_Crash):
                delete_episodes(root, 'a', [0, 2], fsync=False)  # same steps, less disk wait
        finally:
            tools._step_hook = None
        # after the crash: every visible episode is whole and distinct, loading works
        visible = list_episodes(root, 'a')
        prints = []
        for e in visible:
            validate_episode(e.path, check_checksums=False)
            prints.append(fingerprint(e.path))
        assert len(set(prints)) == len(prints), label
        assert set(prints) <= set(everything), label
        ds = EpisodeDataset(root, 'a', chunk_size=1, cameras=CAMS)
        assert ds.skipped() == {} and ds.num_episodes == len(visible), label
        # the interruption is reported, and refuses further edits until repaired
        report = validate_dataset(root, task='a', deep=False)
        assert any('interrupted delete' in p.message for p in report.errors), label
        with pytest.raises(PendingOperationError):
            delete_episodes(root, 'a', [1])
        res = repair(root, 'a', fsync=False)
        assert res.ok and any('completed the interrupted delete' in a for a in res.actions)
        assert_loads(root, 'a', expected)
        trash = next((root / 'a' / '.trash').iterdir())
        assert sorted(fingerprint(p) for p in trash.glob('*.zarr')) == sorted(
            recs['a'][i]['action'].tobytes() for i in (0, 2))
        assert validate_dataset(root, task='a', deep=False).errors == [], label


@pytest.mark.parametrize(('delete', 'crash_at', 'new_index', 'order'), [
    ([0], 'rename-data:4->3', 5, [1, 2, 3, 4]),  # writer sees old meta 4: gap, compacted
    ([0], 'unlink-meta:4', 4, [1, 2, 3, 4]),     # last step done, not recorded
    ([4], 'trash:episode_4.zarr', 4, [0, 1, 2, 3]),  # trash step done, not recorded
])
def test_interrupted_delete_then_writer_then_repair(data, delete, crash_at, new_index,
                                                    order) -> None:
    """A writer recording while a crashed delete is pending never loses its episode."""
    root, recs = data

    def hook(at: str) -> None:
        if at == crash_at:
            raise _Crash(at)

    tools._step_hook = hook
    try:
        with pytest.raises(_Crash):
            delete_episodes(root, 'a', delete)
    finally:
        tools._step_hook = None
    new = write_episode(root, 'a', 3, 77, 'fail')
    assert new['index'] == new_index
    res = repair(root, 'a')
    assert res.ok, res.remaining
    assert_loads(root, 'a', [*(recs['a'][i] for i in order), new])


CHILD = textwrap.dedent(
    """
    import sys
    from scarls.episodes import tools

    def hook(label):
        if label == sys.argv[2]:
            print('AT', label, flush=True)
            sys.stdin.readline()  # wait to be killed

    tools._step_hook = hook
    tools.delete_episodes(sys.argv[1], 'a', [1])
    print('DONE', flush=True)
    """
)


@pytest.mark.multiproc
def test_sigkilled_delete_is_completed_by_repair(data, tmp_path) -> None:
    root, recs = data
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen([sys.executable, '-c', CHILD, str(root), 'rename-data:2->1'],
                            env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        assert line.strip() == 'AT rename-data:2->1', line
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    names = os.listdir(root / 'a')
    assert 'episode_1.zarr' in names and 'episode_1_meta.json' not in names
    assert 'episode_2_meta.json' in names and 'episode_2.zarr' not in names
    assert [e.index for e in list_episodes(root, 'a')] == [0, 3, 4]  # gap, nothing broken
    res = repair(root, 'a', lock_timeout=5.0)  # the dead process's lock is free
    assert res.ok, res.remaining
    assert_loads(root, 'a', [recs['a'][i] for i in (0, 2, 3, 4)])


# -- merge --------------------------------------------------------------------------------------


def test_merge_two_roots(data, tmp_path) -> None:
    dst, recs = data
    src1, src2 = tmp_path / 'src1', tmp_path / 'src2'
    s1 = [write_episode(src1, 'a', 3, 201, 'success', (1,)), write_episode(src1, 'a', 2, 202)]
    c1 = [write_episode(src1, 'c', 4, 203, 'fail')]
    s2 = [write_episode(src2, 'a', 2, 301), write_episode(src2, 'a', 3, 302, 'fail'),
          write_episode(src2, 'a', 4, 303)]
    flip_byte(src2 / 'a' / 'episode_1.zarr' / 'observation' / 'wrist' / 'c.2.0.0.0')
    seen = []
    res = merge_datasets(dst, [src1, src2], progress=lambda d, t, label: seen.append(d))
    assert seen == list(range(1, 7))
    assert not res.ok
    [skip] = res.skipped
    assert (skip['source'], skip['task'], skip['index']) == (str(src2), 'a', 1)
    assert 'episode_1.zarr/observation/wrist/c.2.0.0.0' in skip['reason']
    assert 'sha256 mismatch' in skip['reason']
    assert [(c['dst_task'], c['dst_index']) for c in res.copied] == [
        ('a', 5), ('a', 6), ('c', 0), ('a', 7), ('a', 8)]
    assert_loads(dst, 'a', [*recs['a'], *s1, s2[0], s2[2]])
    assert_loads(dst, 'c', c1)
    meta = json.loads((dst / 'a' / 'episode_8_meta.json').read_text())
    assert meta['episode_index'] == 8
    assert meta['extra']['merged_from'] == {'source': 'src2', 'task': 'a', 'index': 2}
    assert validate_dataset(dst).errors == []
    assert not any(n.startswith('.scarls-merge-') for n in os.listdir(dst / 'a'))
    # merging again copies nothing: everything is already there (or still corrupt)
    again = merge_datasets(dst, [src1, src2])
    assert again.copied == [] and len(again.duplicates) == 5 and len(again.skipped) == 1
    with pytest.raises(DatasetToolError, match='cannot be the destination'):
        merge_datasets(dst, [dst])


def test_merge_refuses_pending_delete(data, tmp_path) -> None:
    root, _ = data
    src = tmp_path / 'src'
    write_episode(src, 'a', 2, 400)
    (root / 'a' / JOURNAL_FILE).write_text('{}')
    with pytest.raises(PendingOperationError):
        merge_datasets(root, [src])
    report = validate_dataset(root, deep=False)
    assert any(p.path == f'a/{JOURNAL_FILE}' for p in report.errors)


# -- CLI ----------------------------------------------------------------------------------------


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, '-m', 'scarls.cli.dataset', 'dataset', *args],
                          capture_output=True, text=True, env=env, timeout=120)


@pytest.mark.multiproc
def test_cli_subprocess(data, tmp_path) -> None:
    root, recs = data
    out = run_cli('stats', str(root), '--json')
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)['totals']['episodes'] == 7
    flip_byte(root / 'b' / 'episode_0.zarr' / 'observation' / 'top' / 'c.1.0.0.0')
    out = run_cli('validate', str(root))
    assert out.returncode == 1
    assert 'ERROR b/episode_0.zarr/observation/top/c.1.0.0.0: sha256 mismatch' in out.stdout
    assert '7 episodes in 2 task(s): 6 valid, 1 error(s)' in out.stdout
    out = run_cli('delete', str(root), '--task', 'a', '1', '3-3', '--purge')
    assert out.returncode == 0, out.stderr
    assert 'deleted episodes 1, 3 of a (removed for good)' in out.stdout
    assert 'renumbered 2 episode(s): 2->1, 4->2' in out.stdout
    out = run_cli('delete', str(root), '--task', 'a', '9')
    assert out.returncode == 2 and 'no episode 9' in out.stderr
    out = run_cli('validate', str(root), '--task', 'a', '--json')
    assert out.returncode == 0 and json.loads(out.stdout)['valid_episodes'] == 3


def test_cli_in_process(data, tmp_path, capsys) -> None:
    root, _ = data
    assert dataset_cli.main(['dataset', 'info', str(root)]) == 0
    text = capsys.readouterr().out
    assert 'task a: 5 episodes (0-4), 21 steps' in text
    assert f'cameras: top {H}x{W}, wrist {H}x{W}' in text
    assert dataset_cli.main(['dataset', 'stats', str(root), '--task', 'b']) == 0
    assert 'b ' in capsys.readouterr().out
    src = tmp_path / 'src'
    write_episode(src, 'b', 2, 500)
    assert dataset_cli.main(['dataset', 'merge', str(root), str(src), '--no-progress']) == 0
    assert '1 copied, 0 already present, 0 skipped' in capsys.readouterr().out
    assert dataset_cli.main(['dataset', 'repair', str(root)]) == 0
    assert 'nothing to repair' in capsys.readouterr().out
    assert dataset_cli.main(['dataset', 'info', str(tmp_path / 'missing')]) == 2
    assert 'does not exist' in capsys.readouterr().err
    with pytest.raises(SystemExit):
        dataset_cli.main(['dataset', 'delete', str(root), '--task', 'a', 'x'])


def test_plugs_into_a_scarls_style_parser() -> None:
    parser = argparse.ArgumentParser(prog='scarls')
    sub = parser.add_subparsers(dest='command', required=True)
    dataset_cli.add_dataset_parser(sub)
    args = parser.parse_args(['dataset', 'validate', 'data', '--quick', '--task', 'pick'])
    assert args.func is dataset_cli.run_dataset
    assert (args.dataset_command, args.root, args.quick, args.task) == (
        'validate', 'data', True, 'pick')


def test_parse_indices() -> None:
    assert dataset_cli.parse_indices(['3', '5-7', '1,2', '7']) == [1, 2, 3, 5, 6, 7]
    for bad in (['x'], ['5-3'], ['-1']):
        with pytest.raises(argparse.ArgumentTypeError):
            dataset_cli.parse_indices(bad)


# -- LeRobot v3 import --------------------------------------------------------------------------

LR_H, LR_W, LR_FPS = 16, 32, 10


def lr_color(k: int) -> np.ndarray:
    return np.array([(k * 53) % 256, (k * 97) % 256, (k * 29 + 40) % 256], np.uint8)


def make_lerobot_v3(folder: Path) -> dict:
    """A tiny LeRobot v3.0 folder: 'top' as mp4 video, 'wrist' as embedded PNG images.

    Episodes 0 (5 frames) and 1 (4 frames) share one video file; episode 2's video segment
    points past the end of the file (a broken episode).
    """
    import av
    import imagecodecs
    import pyarrow as pa
    import pyarrow.parquet as pq

    lengths = [5, 4, 3]
    rng = np.random.default_rng(7)
    video = folder / 'videos' / 'observation.images.top' / 'chunk-000' / 'file-000.mp4'
    video.parent.mkdir(parents=True)
    out = av.open(str(video), 'w')
    stream = out.add_stream('mpeg4', rate=LR_FPS)
    stream.width, stream.height, stream.pix_fmt = LR_W, LR_H, 'yuv420p'
    stream.options = {'qscale': '1'}
    for k in range(sum(lengths[:2])):
        img = np.ascontiguousarray(np.broadcast_to(lr_color(k), (LR_H, LR_W, 3)))
        for packet in stream.encode(av.VideoFrame.from_ndarray(img, format='rgb24')):
            out.mux(packet)
    for packet in stream.encode():
        out.mux(packet)
    out.close()
    rows: dict[str, list] = {k: [] for k in (
        'index', 'episode_index', 'frame_index', 'timestamp', 'task_index', 'observation.state',
        'action', 'next.success', 'complementary_info.is_intervention',
        'observation.images.wrist')}
    wrist: list[np.ndarray] = []
    ep_rows = []
    start = 0
    for ep, n in enumerate(lengths):
        for i in range(n):
            img = rng.integers(0, 256, (LR_H, LR_W, 3), dtype=np.uint8)
            wrist.append(img)
            rows['index'].append(start + i)
            rows['episode_index'].append(ep)
            rows['frame_index'].append(i)
            rows['timestamp'].append(np.float32(i / LR_FPS))
            rows['task_index'].append(0)
            rows['observation.state'].append(rng.normal(size=3).astype(np.float32).tolist())
            rows['action'].append(rng.normal(size=2).astype(np.float32).tolist())
            rows['next.success'].append(ep == 0 and i == n - 1)
            rows['complementary_info.is_intervention'].append(ep == 0 and i in (1, 2))
            rows['observation.images.wrist'].append(
                {'bytes': bytes(imagecodecs.png_encode(img)), 'path': None})
        from_ts = start / LR_FPS if ep < 2 else 5.0
        ep_rows.append({
            'episode_index': ep, 'tasks': ['pick the cube'], 'length': n,
            'data/chunk_index': 0, 'data/file_index': 0,
            'dataset_from_index': start, 'dataset_to_index': start + n,
            'videos/observation.images.top/chunk_index': 0,
            'videos/observation.images.top/file_index': 0,
            'videos/observation.images.top/from_timestamp': from_ts,
            'videos/observation.images.top/to_timestamp': from_ts + n / LR_FPS,
        })
        start += n
    types = {
        'timestamp': pa.float32(), 'observation.state': pa.list_(pa.float32(), 3),
        'action': pa.list_(pa.float32(), 2),
        'observation.images.wrist': pa.struct([('bytes', pa.binary()), ('path', pa.string())]),
    }
    table = pa.table({k: pa.array(v, type=types.get(k)) for k, v in rows.items()})
    (folder / 'data' / 'chunk-000').mkdir(parents=True)
    pq.write_table(table, folder / 'data' / 'chunk-000' / 'file-000.parquet')
    (folder / 'meta' / 'episodes' / 'chunk-000').mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(ep_rows),
                   folder / 'meta' / 'episodes' / 'chunk-000' / 'file-000.parquet')
    cam = {'shape': [LR_H, LR_W, 3], 'names': ['height', 'width', 'channels']}
    info = {
        'codebase_version': 'v3.0', 'robot_type': 'so100', 'fps': LR_FPS,
        'total_episodes': 3, 'chunks_size': 1000,
        'data_path': 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet',
        'video_path': 'videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4',
        'features': {
            'observation.state': {'dtype': 'float32', 'shape': [3]},
            'action': {'dtype': 'float32', 'shape': [2]},
            'observation.images.top': {'dtype': 'video', **cam},
            'observation.images.wrist': {'dtype': 'image', **cam},
            'timestamp': {'dtype': 'float32', 'shape': [1]},
        },
    }
    (folder / 'meta' / 'info.json').write_text(json.dumps(info))
    return {'rows': rows, 'wrist': wrist, 'lengths': lengths}


def test_import_lerobot_v3(tmp_path, capsys) -> None:
    from scarls.episodes.lerobot_import import import_lerobot_v3

    folder = tmp_path / 'so100_pick'
    src = make_lerobot_v3(folder)
    root = tmp_path / 'data'
    res = import_lerobot_v3(folder, root, 'pick', fsync=False, codec='lz4')  # exact frames
    assert [(i['episode_index'], i['index'], i['steps']) for i in res.imported] == [
        (0, 0, 5), (1, 1, 4)]
    [fail] = res.failed  # the broken episode is reported, the others imported
    assert fail['episode_index'] == 2
    assert 'file-000.mp4' in fail['reason'] and 'ends before' in fail['reason']
    assert validate_dataset(root).errors == []
    start = 0
    for ep, n in enumerate(src['lengths'][:2]):
        r = EpisodeReader(root / 'pick' / f'episode_{ep}.zarr')
        rows = slice(start, start + n)
        state = np.asarray(src['rows']['observation.state'][rows])
        np.testing.assert_array_equal(r.state[:], state)
        np.testing.assert_array_equal(r.action[:], np.asarray(src['rows']['action'][rows]))
        np.testing.assert_array_equal(r.timestamp[:], np.float32(np.arange(n) / LR_FPS))
        np.testing.assert_array_equal(
            r.intervention[:], src['rows']['complementary_info.is_intervention'][rows])
        assert r.meta.outcome == ('success' if ep == 0 else 'fail')
        assert r.meta.fps == LR_FPS and r.meta.cameras == ['top', 'wrist']
        assert r.meta.extra['lerobot'] == {'dataset': 'so100_pick', 'episode_index': ep,
                                           'tasks': ['pick the cube']}
        for i in range(n):
            np.testing.assert_array_equal(r.images('wrist')[i], src['wrist'][start + i])
            top = np.asarray(r.images('top')[i]).astype(int)
            assert np.abs(top - lr_color(start + i)).mean() < 4  # lossy video, right frame
        start += n
    again = import_lerobot_v3(folder, root, 'pick', fsync=False, codec='lz4')
    assert again.imported == [] and again.already_present == [0, 1]
    # CLI: one episode, one camera, resized
    code = dataset_cli.main(['dataset', 'import-lerobot', str(folder), str(tmp_path / 'small'),
                             '--task', 't', '--episodes', '1', '--cameras', 'wrist',
                             '--image-size', '8x16', '--no-progress'])
    assert code == 0
    assert '1 imported, 0 already present, 0 failed' in capsys.readouterr().out
    r = EpisodeReader(tmp_path / 'small' / 't' / 'episode_0.zarr')
    assert r.images('wrist').shape == (4, 8, 16, 3) and r.cameras == ['wrist']


def test_import_lerobot_is_compressed_by_default_and_reports_sizes(tmp_path, capsys) -> None:
    from scarls.episodes.lerobot_import import import_lerobot_v3

    folder = tmp_path / 'so100_pick'
    src = make_lerobot_v3(folder)
    estimates = []
    res = import_lerobot_v3(folder, tmp_path / 'jpeg', 'pick', fsync=False, episodes=[0, 1],
                            on_estimate=lambda total, source: estimates.append((total, source)))
    assert [i['index'] for i in res.imported] == [0, 1] and res.ok
    meta = EpisodeReader(tmp_path / 'jpeg' / 'pick' / 'episode_0.zarr').meta
    assert meta.image_codec['name'] == 'jpeg' and meta.image_codec['lossless'] is False
    assert res.bytes_written == sum(i['bytes'] for i in res.imported) > 0
    lengths = src['lengths']
    assert 0 < res.source_bytes <= sum(p.stat().st_size for p in folder.rglob('*') if p.is_file())
    [(total, source)] = estimates  # once, after the first episode, for both episodes' steps
    per_step = res.imported[0]['bytes'] / lengths[0]
    assert total == round(per_step * (lengths[0] + lengths[1]))
    assert source == res.source_bytes or abs(source - res.source_bytes) <= 1
    # compacted: H.264 GOPs, read back by the dataset; LeRobot numbers kept
    comp = import_lerobot_v3(folder, tmp_path / 'h264', 'pick', fsync=False, episodes=[1],
                             compact=True, keep_episode_index=True)
    [item] = comp.imported
    assert item['index'] == 1 and item['compacted'] is True
    reader = EpisodeReader(tmp_path / 'h264' / 'pick' / 'episode_1.zarr')
    assert reader.meta.image_codec['name'] == 'h264'
    ds = EpisodeDataset(tmp_path / 'h264', chunk_size=2, cameras=('top', 'wrist'))
    for t in range(lengths[1]):  # smooth colours (the wrist camera is noise: no lossy check)
        top = ds.read_frame('pick/episode_1', 'top', t).astype(int)
        assert np.abs(top - lr_color(lengths[0] + t)).mean() < 8
    # a kept number that the task already has: that episode is reported, nothing overwritten
    other = tmp_path / 'taken'
    write_episode(other, 'pick', 3, 5)  # episode 0, not from LeRobot
    taken = import_lerobot_v3(folder, other, 'pick', fsync=False, episodes=[0, 1],
                              keep_episode_index=True)
    assert [i['index'] for i in taken.imported] == [1]
    assert [f['episode_index'] for f in taken.failed] == [0]
    assert 'episode 0 already exists' in taken.failed[0]['reason']
    # the CLI says what it is about to write, and warns when that is far above the source
    code = dataset_cli.main(['dataset', 'import-lerobot', str(folder), str(tmp_path / 'cli'),
                             '--task', 't', '--episodes', '0-1', '--codec', 'lz4',
                             '--no-progress'])
    out = capsys.readouterr()
    assert code == 0
    m = re.search(r'writing about .* \(lz4; the LeRobot source: .*, ([0-9.]+)x\)', out.err)
    assert m, out.err
    assert ('warning: the import will take' in out.err) == (float(m.group(1)) > 4)
    assert 'written (the LeRobot source:' in out.out


def test_stats_show_drops_by_cause_steps_not_executed_and_recorder_losses(tmp_path,
                                                                           capsys) -> None:
    from scarls.episodes.schema import SAFETY_CODES as C
    root = tmp_path / 'data'
    rng = np.random.default_rng(0)

    def episode(steps, safety=None, extra=None):
        w = EpisodeWriter(root, 'r', 'ecu-0', cameras=CAMS, image_shape=(H, W), state_dim=DS,
                          action_dim=DA, fsync=False)
        for i in range(steps):
            w.append(StepRecord({c: rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
                                 for c in CAMS}, np.zeros(DS), np.zeros(DA), False, 1.0 + i))
        w.finalize('success', 1, extra=extra, safety=safety)

    episode(3)                                                       # recorded before: plain
    episode(4, [C['ok'], C['clamped'], C['holding'], C['estopped']],
            {'dropped_steps': 7, 'dropped_by_cause': {'no_frames': 5, 'queue_full': 2}})
    episode(3, [C['clamped_heavily'], C['fault'], C['ok']],
            {'recorder_losses': {'episodes': 2, 'steps': 310, 'last_error': 'disk full'}})
    s = dataset_stats(root).totals
    assert s.not_executed_steps == 4 and s.episodes_with_safety == 2
    assert s.safety['clamped'] == 1 and s.safety['ok'] == 2
    assert s.dropped_by_cause == {'no_frames': 5, 'queue_full': 2}
    assert (s.lost_episodes, s.lost_steps) == (2, 310)
    assert dataset_cli.main(['dataset', 'stats', str(root)]) == 0
    text = capsys.readouterr().out
    assert ('steps not executed by the robot: 4 (clamped heavily 1, held 1, e-stopped 1, '
            'robot fault 1, resetting 0; 2 of 3 episodes record the driver state); clamped '
            'lightly (executed): 1') in text
    assert 'lost by the recorder: 2 episodes, 310 steps' in text
    assert 'dropped steps: 7 (frames never arrived 5, writer queue full 2)' in text
    assert dataset_cli.main(['dataset', 'stats', str(root), '--json']) == 0
    totals = json.loads(capsys.readouterr().out)['totals']
    assert totals['not_executed_steps'] == 4 and totals['lost_episodes'] == 2
