"""SIGKILL the episode writer at random points, many times, and check the data root after each.

Run as a script (a fresh interpreter: no ROS, no threads of a test runner to inherit); it forks
one writer process per trial. The writer records episodes as fast as it can (small frames, a
small block size so that the arrays grow and chunks are written often, an episode finalised
every few steps, the background writer or the synchronous one) and reports over a pipe every
step it appended and every episode it finalised. The campaign kills it with SIGKILL after a
random delay (so kills land mid-append, during array growth, mid-finalize, between the renames),
reaps it, then checks what a restarted writer and a reader see:

* no half-visible episode: every listed episode validates (meta, shapes, sha256);
* no numbering gap: the visible indices are exactly 0..n-1;
* nothing lost silently: every episode the writer finalised is visible, and the steps of the
  episode it was writing when killed are the lost ones (reported);
* leftovers cleaned: after a new writer opens the task, no temp file or reservation of the dead
  writer is left;
* every lost episode counted: the new writer journals the dead writer's unfinished episode with
  the steps it had on disk (`<task>/.lost_episodes.jsonl`, shown by `scarls dataset stats`).

    python tests/faults/writer_kill_campaign.py --trials 300 --json kills.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SRC = Path(__file__).resolve().parents[2] / 'src'
sys.path.insert(0, str(SRC))

from scarls.episodes import (  # noqa: E402 - after the path set-up for a plain script
    BackgroundEpisodeWriter,
    EpisodeWriter,
    StepRecord,
    list_episodes,
    validate_episode,
)
from scarls.episodes.layout import lost_episodes  # noqa: E402

CAMS = ('top', 'left', 'right')
SHAPE = (24, 32)


def _writer_loop(root: str, mode: str, fd: int, seed: int) -> None:
    """The child: record episodes until killed; report 'A <index> <steps>' per append and
    'F <index>' per finalised episode."""
    rng = np.random.default_rng(seed)
    out = os.fdopen(fd, 'w', buffering=1)
    frames = {c: rng.integers(0, 255, (*SHAPE, 3), dtype=np.uint8) for c in CAMS}
    while True:
        kw = dict(image_shape=SHAPE, state_dim=14, action_dim=14, block_size=4, fsync=False)
        w = (BackgroundEpisodeWriter if mode == 'background' else EpisodeWriter)(
            root, 'pick', 'ecu-kill', **kw)
        steps = int(rng.integers(3, 40))
        for i in range(steps):
            w.append(StepRecord(frames, np.full(14, i, np.float32), np.zeros(14, np.float32),
                                bool(i % 2), float(i) / 30))
            out.write(f'A {w.index} {i + 1}\n')
        w.finalize('success', 1)
        out.write(f'F {w.index}\n')


def trial(root: Path, mode: str, delay: float, seed: int, checked: int = 0) -> dict:
    """One kill; episodes below ``checked`` were validated after an earlier kill (a dead
    writer never touches a finalised episode, so only the newer ones are validated again)."""
    r, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the writer
        os.close(r)
        try:
            _writer_loop(str(root), mode, wfd, seed)
        finally:
            os._exit(0)
    os.close(wfd)
    time.sleep(delay)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    with os.fdopen(r) as fh:
        lines = fh.read().splitlines()
    finalised, appended = set(), {}
    for line in lines:
        parts = line.split()
        if len(parts) == 2 and parts[0] == 'F':
            finalised.add(int(parts[1]))
        elif len(parts) == 3 and parts[0] == 'A':
            appended[int(parts[1])] = int(parts[2])
    before = sorted(e.index for e in list_episodes(root, 'pick'))
    problems = []
    if before != list(range(len(before))):
        problems.append(f'numbering gap: {before}')
    for e in list_episodes(root, 'pick'):
        if e.index < checked:
            continue
        try:
            validate_episode(e.path)
        except Exception as exc:  # noqa: BLE001 - a campaign reports, it does not stop
            problems.append(f'episode {e.index} does not validate: {exc}')
    missing = sorted(finalised - set(before))
    if missing:
        problems.append(f'finalised but not visible: {missing}')
    unfinished = [i for i in appended if i not in finalised]
    lost_steps = sum(appended[i] for i in unfinished if i not in before)
    # a restarted writer cleans the dead writer's leftovers and continues the numbering
    journal_before = len(lost_episodes(root / 'pick'))
    w = EpisodeWriter(root, 'pick', 'ecu-restart', image_shape=SHAPE, state_dim=14,
                      action_dim=14, fsync=False)
    next_index = w.index
    w.abort()
    journal = [j for j in lost_episodes(root / 'pick')[journal_before:] if j['pid'] == pid]
    lost_now = [i for i in unfinished if i not in before]
    counted = sum(j['steps_on_disk'] for j in journal)
    if lost_now and not journal:
        problems.append(f'episode {lost_now} of the dead writer lost without a journal entry')
    # (+1: the kill may land between an append and its report on the pipe)
    if counted > lost_steps + len(lost_now):
        problems.append(f'journal counts {counted} steps lost, the writer appended {lost_steps}')
    # (a data dir renamed into place whose meta never came is kept as .orphan-<pid> for manual
    # recovery, and journaled: accounted for, not a leftover)
    left = [n for n in os.listdir(root / 'pick') if (n.endswith(f'-{pid}') or
            f'.tmp-{pid}' in n) and '.orphan-' not in n]
    if left:
        problems.append(f'leftovers of the dead writer {pid}: {left}')
    if next_index != len(before):
        problems.append(f'the restarted writer took index {next_index}, expected {len(before)}')
    return {'delay_s': round(delay, 4), 'mode': mode, 'visible': len(before),
            'finalised_now': len(finalised), 'lost_episode': bool(unfinished and any(
                i not in before for i in unfinished)), 'lost_steps': lost_steps,
            'journal_episodes': len(journal), 'journal_steps': counted,
            'problems': problems}


def run(trials: int, seed: int = 0, max_delay: float = 0.6) -> dict:
    import shutil
    rng = random.Random(seed)
    results = []
    t0 = time.monotonic()
    episodes = 0
    root = None
    for k in range(trials):
        if k % 25 == 0:   # a fresh data root now and then keeps the listing small
            if root is not None:
                episodes += len(list_episodes(root, 'pick'))
                shutil.rmtree(root, ignore_errors=True)
            root = Path(tempfile.mkdtemp(prefix='scarls-kill-'))
            checked = 0
        mode = 'background' if k % 2 else 'append'
        results.append(trial(root, mode, rng.uniform(0.0, max_delay), seed * 100_000 + k,
                             checked))
        checked = results[-1]['visible']
    episodes += len(list_episodes(root, 'pick'))
    shutil.rmtree(root, ignore_errors=True)
    return {'trials': trials, 'seconds': round(time.monotonic() - t0, 1),
            'episodes_written': episodes,
            'kills_with_a_lost_episode': sum(r['lost_episode'] for r in results),
            'lost_steps': sum(r['lost_steps'] for r in results),
            'journaled_episodes': sum(r['journal_episodes'] for r in results),
            'journaled_steps': sum(r['journal_steps'] for r in results),
            'trials_with_problems': [r for r in results if r['problems']],
            'results': results}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--trials', type=int, default=200)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--json', default=None)
    args = ap.parse_args(argv)
    summary = run(args.trials, args.seed)
    brief = {k: v for k, v in summary.items() if k != 'results'}
    print(json.dumps(brief, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(summary, indent=1))
    return 1 if summary['trials_with_problems'] else 0


if __name__ == '__main__':
    sys.exit(main())
