"""Crash tests: SIGKILL a real writer process mid-episode and mid-finalize.

After the kill (and reaping the child), no partial episode may be visible, list_episodes must
be consistent and every listed episode valid, and a new writer must continue the numbering
without a visible gap and without overwriting anything.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from scarls.episodes import EpisodeWriter, StepRecord, list_episodes, validate_episode

pytestmark = pytest.mark.multiproc   # a writer in a child process, killed

SRC = Path(__file__).resolve().parents[1] / 'src'
CAMS = ('top', 'left', 'right')

CHILD = textwrap.dedent(
    """
    import sys
    import numpy as np
    from scarls.episodes import BackgroundEpisodeWriter, EpisodeWriter, StepRecord
    from scarls.episodes import writer as writer_mod

    root, mode = sys.argv[1], sys.argv[2]
    kw = dict(image_shape=(24, 32), state_dim=14, action_dim=14, block_size=8)
    if mode == 'background':
        w = BackgroundEpisodeWriter(root, 'pick', 'ecu-crash', **kw)
    else:
        w = EpisodeWriter(root, 'pick', 'ecu-crash', **kw)
    print('INDEX', w.index, flush=True)
    rng = np.random.default_rng(0)

    def step(i):
        imgs = {c: rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for c in
                ('top', 'left', 'right')}
        return StepRecord(imgs, rng.normal(size=14), rng.normal(size=14), i % 2 == 0,
                          1.0 + i / 30)

    if mode in ('append', 'background'):
        i = 0
        while True:  # killed by the parent
            w.append(step(i))
            print('STEP', i, flush=True)
            i += 1
    for i in range(30):
        w.append(step(i))
    if mode == 'finalize-hook':
        real = writer_mod.meta_temp_name

        def hook(index, pid):
            # data dir already renamed into place, meta not yet written: wait to be killed
            print('IN_FINALIZE', flush=True)
            sys.stdin.readline()
            return real(index, pid)

        writer_mod.meta_temp_name = hook
    print('FINALIZING', flush=True)
    w.finalize('success', 1)
    print('DONE', flush=True)
    sys.stdin.readline()
    """
)


def _record(root: Path, n: int = 2) -> None:
    rng = np.random.default_rng(1)
    for _ in range(n):
        w = EpisodeWriter(root, 'pick', 'ecu-0', image_shape=(24, 32), state_dim=14, action_dim=14)
        for i in range(3):
            imgs = {c: rng.integers(0, 255, (24, 32, 3), dtype=np.uint8) for c in CAMS}
            w.append(StepRecord(imgs, np.zeros(14), np.ones(14), False, float(i)))
        w.finalize('success', 1)


def _run_and_kill(root: Path, mode: str, wait_for: str) -> subprocess.CompletedProcess | str:
    script = root.parent / 'child.py'
    script.write_text(CHILD)
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.Popen(
        [sys.executable, str(script), str(root), mode],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    seen = []
    try:
        for line in proc.stdout:
            seen.append(line.strip())
            if line.startswith(wait_for):
                break
        else:
            pytest.fail(f'child ended before {wait_for!r}: {seen}')
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait(timeout=30)  # reap: a zombie would still count as a live writer
    assert proc.returncode == -signal.SIGKILL
    return '\n'.join(seen)


def _check_consistent(root: Path) -> list[int]:
    entries = list_episodes(root, 'pick')
    idx = [e.index for e in entries]
    assert idx == list(range(len(idx))), f'visible gap in {idx}'
    for e in entries:
        validate_episode(e.path)
    return idx


def _continue_numbering(root: Path, expected: int) -> None:
    w = EpisodeWriter(root, 'pick', 'ecu-1', image_shape=(24, 32), state_dim=14, action_dim=14)
    assert w.index == expected
    w.append(
        StepRecord(
            {c: np.zeros((24, 32, 3), np.uint8) for c in CAMS},
            np.zeros(14),
            np.zeros(14),
            True,
            5.0,
        )
    )
    w.finalize('success', 1)
    assert _check_consistent(root) == list(range(expected + 1))
    hidden_tmp = [
        n
        for n in os.listdir(root / 'pick')
        if '.tmp-' in n or (n.endswith('.lock') and n != '.scarls-task.lock')
    ]
    assert hidden_tmp == [], hidden_tmp


@pytest.mark.parametrize('mode', ['append', 'background'])
def test_sigkill_mid_episode(tmp_path: Path, mode: str) -> None:
    root = tmp_path / 'data'
    _record(root, 2)
    out = _run_and_kill(root, mode, 'STEP 20')
    assert 'INDEX 2' in out
    names = os.listdir(root / 'pick')
    assert any(n.startswith('.episode_2.zarr.tmp-') for n in names)  # leftover, hidden
    assert 'episode_2.zarr' not in names
    assert _check_consistent(root) == [0, 1]
    _continue_numbering(root, 2)  # dead writer's index reused, temp dir removed


def test_sigkill_between_data_rename_and_meta(tmp_path: Path) -> None:
    root = tmp_path / 'data'
    _record(root, 2)
    _run_and_kill(root, 'finalize-hook', 'IN_FINALIZE')
    names = os.listdir(root / 'pick')
    assert 'episode_2.zarr' in names and 'episode_2_meta.json' not in names
    assert _check_consistent(root) == [0, 1]  # data without meta is not visible
    _continue_numbering(root, 2)
    orphans = [n for n in os.listdir(root / 'pick') if '.orphan-' in n]
    assert len(orphans) == 1 and orphans[0].startswith('.episode_2.zarr.orphan-')


def test_sigkill_somewhere_in_finalize(tmp_path: Path) -> None:
    root = tmp_path / 'data'
    _record(root, 2)
    _run_and_kill(root, 'finalize', 'FINALIZING')
    visible = _check_consistent(root)
    assert visible in ([0, 1], [0, 1, 2])  # either fully published or not at all
    _continue_numbering(root, len(visible))
