"""Benchmark: how fast can the episode writer persist a dual-arm robot's data stream?

Each step carries three camera frames (default 480x640 RGB, drawn scenes with sensor noise),
a 14-D state and a 14-D action.  Scenarios per codec:

* ``paced``: a producer at ``--fps`` (30 Hz) feeds a BackgroundEpisodeWriter for ``--steps``
  steps; reports dropped steps, queue depth and append latency on the producer thread.
* ``max``: the synchronous EpisodeWriter appends as fast as it can (sustained persist rate).
* ``max-bg``: an unpaced producer floods the BackgroundEpisodeWriter (shows drops when the
  producer outruns the disk).

Every scenario reports the time from ``finalize()`` to the episode being visible.

    python bench/bench_recording.py --steps 500 --codecs lz4,jpeg --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

from scarls.episodes import (  # noqa: E402
    BackgroundEpisodeWriter,
    EpisodeWriter,
    StepRecord,
    list_episodes,
    validate_episode,
)

CAMS = ('top', 'left', 'right')


def make_frames(n: int, h: int, w: int, seed: int) -> list[np.ndarray]:
    """Drawn table-top scenes (gradient, table, moving objects, arm) plus sensor noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack(
        [60 + 80 * yy / h, 70 + 60 * xx / w, 90 + 40 * (yy + xx) / (h + w)], -1
    ).astype(np.float32)
    frames = []
    for i in range(n):
        img = base.copy()
        cv2.rectangle(img, (0, h // 2), (w, h), (120, 100, 80), -1)  # table
        cx, cy = int(w * (0.3 + 0.4 * np.sin(i / 9))), int(h * 0.65)
        cv2.circle(img, (cx, cy), h // 12, (30, 30, 200), -1)
        cv2.rectangle(
            img,
            (w // 2 + i % 40, h // 2 + 20),
            (w // 2 + 60 + i % 40, h // 2 + 80),
            (40, 180, 40),
            -1,
        )
        cv2.line(img, (0, 0), (cx, cy - h // 10), (200, 200, 200), max(4, w // 40))  # arm
        img += rng.normal(0.0, 3.0, img.shape).astype(np.float32)  # sensor noise
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


def steps_source(args: argparse.Namespace):
    frames = {
        c: make_frames(args.distinct_frames, args.height, args.width, k)
        for k, c in enumerate(CAMS)
    }
    rng = np.random.default_rng(0)

    def step(i: int, t: float) -> StepRecord:
        k = i % args.distinct_frames
        return StepRecord(
            {c: frames[c][k] for c in CAMS},
            rng.normal(size=14),
            rng.normal(size=14),
            i % 10 < 2,
            t,
        )

    return step


def _writer_kwargs(args: argparse.Namespace, codec: str) -> dict:
    return dict(
        image_shape=(args.height, args.width),
        state_dim=14,
        action_dim=14,
        fps=args.fps,
        codec=codec,
        fsync=not args.no_fsync,
    )


def _visible_after(root: Path, task: str, index: int, t_call: float) -> float:
    while not any(e.index == index for e in list_episodes(root, task)):
        if time.perf_counter() - t_call > 60:
            raise RuntimeError('episode did not become visible within 60 s')
    return time.perf_counter() - t_call


def run_paced(args, root: Path, codec: str, step) -> dict:
    bw = BackgroundEpisodeWriter(
        root, f'paced_{codec}', 'bench', queue_size=args.queue_size, **_writer_kwargs(args, codec)
    )
    period = 1.0 / args.fps
    lat = []
    start = time.perf_counter()
    for i in range(args.steps):
        target = start + i * period
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)  # bounded: at most one period
        t0 = time.perf_counter()
        bw.append(step(i, t0))
        lat.append(time.perf_counter() - t0)
    produce_s = time.perf_counter() - start
    t_call = time.perf_counter()
    ref = bw.finalize('success', 'bench')
    visible_s = _visible_after(root, f'paced_{codec}', ref.index, t_call)
    total_s = time.perf_counter() - start
    st = bw.stats()
    return {
        'scenario': 'paced',
        'codec': codec,
        'steps': ref.steps,
        'dropped': st.dropped,
        'failed': st.failed,
        'max_queue_depth': st.max_queue_depth,
        'producer_hz': args.steps / produce_s,
        'persisted_steps_per_s': ref.steps / total_s,
        'append_p50_ms': 1e3 * float(np.percentile(lat, 50)),
        'append_p99_ms': 1e3 * float(np.percentile(lat, 99)),
        'append_max_ms': 1e3 * max(lat),
        'finalize_to_visible_s': visible_s,
        'finalize_internal_s': ref.seconds_to_finalize,
        'path': ref.path,
    }


def run_max(args, root: Path, codec: str, step) -> dict:
    w = EpisodeWriter(root, f'max_{codec}', 'bench', **_writer_kwargs(args, codec))
    start = time.perf_counter()
    for i in range(args.steps):
        w.append(step(i, 1.0 + i / args.fps))
    write_s = time.perf_counter() - start
    t_call = time.perf_counter()
    ref = w.finalize('success', 'bench')
    visible_s = _visible_after(root, f'max_{codec}', ref.index, t_call)
    return {
        'scenario': 'max',
        'codec': codec,
        'steps': ref.steps,
        'dropped': 0,
        'failed': 0,
        'max_queue_depth': 0,
        'producer_hz': args.steps / write_s,
        'persisted_steps_per_s': args.steps / write_s,
        'append_p50_ms': 1e3 * write_s / args.steps,
        'append_p99_ms': float('nan'),
        'append_max_ms': float('nan'),
        'finalize_to_visible_s': visible_s,
        'finalize_internal_s': ref.seconds_to_finalize,
        'path': ref.path,
    }


def run_max_bg(args, root: Path, codec: str, step) -> dict:
    bw = BackgroundEpisodeWriter(
        root, f'maxbg_{codec}', 'bench', queue_size=args.queue_size, **_writer_kwargs(args, codec)
    )
    lat = []
    start = time.perf_counter()
    for i in range(args.steps):
        t0 = time.perf_counter()
        bw.append(step(i, 1.0 + i / args.fps))
        lat.append(time.perf_counter() - t0)
    produce_s = time.perf_counter() - start
    t_call = time.perf_counter()
    ref = bw.finalize('success', 'bench')
    visible_s = _visible_after(root, f'maxbg_{codec}', ref.index, t_call)
    total_s = time.perf_counter() - start
    st = bw.stats()
    return {
        'scenario': 'max-bg',
        'codec': codec,
        'steps': ref.steps,
        'dropped': st.dropped,
        'failed': st.failed,
        'max_queue_depth': st.max_queue_depth,
        'producer_hz': args.steps / produce_s,
        'persisted_steps_per_s': ref.steps / total_s,
        'append_p50_ms': 1e3 * float(np.percentile(lat, 50)),
        'append_p99_ms': 1e3 * float(np.percentile(lat, 99)),
        'append_max_ms': 1e3 * max(lat),
        'finalize_to_visible_s': visible_s,
        'finalize_internal_s': ref.seconds_to_finalize,
        'path': ref.path,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    p.add_argument('--steps', type=int, default=500, help='steps per episode (default 500)')
    p.add_argument('--height', type=int, default=480)
    p.add_argument('--width', type=int, default=640)
    p.add_argument('--fps', type=float, default=30.0, help='producer rate for "paced"')
    p.add_argument('--codecs', default='lz4,jpeg', help='comma-separated codec names')
    p.add_argument('--scenarios', default='paced,max,max-bg')
    p.add_argument('--queue-size', type=int, default=64)
    p.add_argument(
        '--distinct-frames', type=int, default=32, help='pre-rendered frames per camera, cycled'
    )
    p.add_argument('--no-fsync', action='store_true', help='disable per-chunk fsync')
    p.add_argument(
        '--root',
        type=Path,
        default=None,
        help='data root (default: a temporary directory, removed afterwards)',
    )
    p.add_argument('--validate', action='store_true', help='validate every episode (slow)')
    p.add_argument('--json', type=Path, default=None, help='write results as JSON here')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    step = steps_source(args)
    runners = {'paced': run_paced, 'max': run_max, 'max-bg': run_max_bg}
    results = []
    with tempfile.TemporaryDirectory(prefix='bench-rec-') as tmp:
        root = args.root or Path(tmp)
        for codec in args.codecs.split(','):
            for name in args.scenarios.split(','):
                r = runners[name](args, root, codec, step)
                if args.validate:
                    validate_episode(r['path'])
                r['path'] = str(r['path'])
                results.append(r)
                print(f'done {name} {codec}', file=sys.stderr, flush=True)
    hdr = (
        f'{"scenario":8} {"codec":6} {"steps":>5} {"drop":>5} {"maxQ":>4} {"prod Hz":>8} '
        f'{"persist/s":>9} {"app p50":>8} {"app p99":>8} {"fin->vis":>8}'
    )
    print(hdr)
    print('-' * len(hdr))
    for r in results:
        print(
            f'{r["scenario"]:8} {r["codec"]:6} {r["steps"]:5d} {r["dropped"]:5d} '
            f'{r["max_queue_depth"]:4d} {r["producer_hz"]:8.1f} '
            f'{r["persisted_steps_per_s"]:9.1f} {r["append_p50_ms"]:6.2f}ms '
            f'{r["append_p99_ms"]:6.2f}ms {r["finalize_to_visible_s"]:7.3f}s'
        )
    if args.json:
        doc = {
            'args': {k: str(v) for k, v in vars(args).items()},
            'machine': {'nproc': os.cpu_count(), 'platform': platform.platform()},
            'results': results,
        }
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
