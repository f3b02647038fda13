"""A LeRobot v3.0 dataset of our synthetic episodes, written and read by LeRobot itself.

Runs under the separate LeRobot environment (``bench/lerobot_env.sh`` creates it; LeRobot pins
its own torch, so it stays out of the project's venv), never under ``.venv``:

    py=build/lerobot-venv/bin/python
    $py bench/lerobot_dataset.py write --root /tmp/lr --episodes 6 --steps 300
    $py bench/lerobot_dataset.py time --root /tmp/lr --indices 5,17,900 --workers 2

``write`` builds the frames with ``bench/synth_frames.py`` (the scarls side calls the same
functions with the same seed and gets the same bytes; the printed ``digest`` checks it) and
writes them with ``LeRobotDataset.create`` / ``add_frame`` / ``save_episode`` / ``finalize``
(three cameras as video features, default codec, ``observation.state`` and ``action`` of 14).

``time`` opens the dataset with ``delta_timestamps`` giving a (chunk, 14) action chunk and times
``dataset[i]`` for the given indices (global frame indices, episodes in order), torch at
``--threads`` threads; ``--evict`` drops the dataset's files from the page cache before each
sample (not timed: a cold read); ``--workers``/``--batch-size`` also time a torch DataLoader;
``--dump`` saves the items (frames as uint8 HWC) to an .npz for checking against another loader.
Both print one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault('HF_HUB_OFFLINE', '1')  # a local dataset: never ask the Hub

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))

import synth_frames  # noqa: E402

REPO_ID = 'scarls/synthetic'
TASK = 'pick the red disc'


def features(h: int, w: int) -> dict:
    names = [f'j{j}' for j in range(synth_frames.DIM)]
    feats = {
        f'observation.images.{cam}': {
            'dtype': 'video', 'shape': (h, w, 3), 'names': ['height', 'width', 'channels'],
        }
        for cam in synth_frames.CAMERAS
    }
    feats['observation.state'] = {'dtype': 'float32', 'shape': (synth_frames.DIM,), 'names': names}
    feats['action'] = {'dtype': 'float32', 'shape': (synth_frames.DIM,), 'names': names}
    return feats


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob('*') if p.is_file())


def tree_files(root: Path) -> list[Path]:
    return [p for p in root.rglob('*') if p.is_file()]


def cmd_write(args: argparse.Namespace) -> dict:
    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    if args.root.exists() and any(args.root.iterdir()):
        raise SystemExit(f'{args.root} exists and is not empty')
    if args.root.exists():
        args.root.rmdir()  # LeRobot creates it
    t0 = time.perf_counter()
    ds = LeRobotDataset.create(
        REPO_ID, fps=synth_frames.FPS, features=features(args.height, args.width), root=args.root,
        robot_type='scarls_synthetic', use_videos=True, vcodec=args.vcodec,
        image_writer_threads=args.image_writer_threads,
    )
    gen_s = 0.0
    digest = hashlib.sha256()
    for e in range(args.episodes):
        g0 = time.perf_counter()
        ep = synth_frames.episode(args.seed, e, args.steps, args.height, args.width)
        synth_frames.frames_digest(ep, digest)
        gen_s += time.perf_counter() - g0
        for t in range(args.steps):
            frame = {f'observation.images.{c}': ep['frames'][c][t] for c in synth_frames.CAMERAS}
            frame['observation.state'] = ep['state'][t]
            frame['action'] = ep['action'][t]
            frame['task'] = TASK
            ds.add_frame(frame)
        ds.save_episode()
    ds.finalize()
    wall = time.perf_counter() - t0
    for p in tree_files(args.root):  # cold reads need clean pages
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    return {
        'root': str(args.root), 'lerobot': lerobot.__version__, 'episodes': args.episodes,
        'steps': args.steps, 'frames': args.episodes * args.steps,
        'cameras': list(synth_frames.CAMERAS),
        'height': args.height, 'width': args.width, 'fps': synth_frames.FPS, 'seed': args.seed,
        'vcodec': ds.vcodec, 'bytes': tree_bytes(args.root), 'write_s': round(wall, 2),
        'generate_s': round(gen_s, 2), 'digest': digest.hexdigest(),
    }


def parse_indices(args: argparse.Namespace, n: int) -> list[int]:
    if args.indices:
        return [int(i) for i in args.indices.split(',') if i.strip()]
    if args.indices_file:
        return [int(i) for i in json.loads(Path(args.indices_file).read_text())]
    rng = np.random.default_rng(args.seed)
    return [int(i) for i in rng.integers(0, n, args.samples)]


def evict(files: list[Path]) -> None:
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def stats_ms(times: list[float]) -> dict:
    ms = sorted(t * 1e3 for t in times)
    if not ms:
        return {}
    return {
        'n': len(ms), 'mean': round(statistics.fmean(ms), 3),
        'median': round(statistics.median(ms), 3), 'p90': round(ms[int(0.9 * (len(ms) - 1))], 3),
        'min': round(ms[0], 3), 'max': round(ms[-1], 3),
    }


def cmd_time(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    import lerobot
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    t0 = time.perf_counter()
    ds = LeRobotDataset(
        REPO_ID, root=args.root, video_backend=args.video_backend,
        delta_timestamps={'action': [k / synth_frames.FPS for k in range(args.chunk)]},
    )
    open_s = time.perf_counter() - t0
    indices = parse_indices(args, len(ds))
    files = tree_files(args.root)
    cams = [f'observation.images.{c}' for c in synth_frames.CAMERAS]
    times, cpu, dump = [], [], {'index': [], 'action': [], 'action_is_pad': [], 'state': []}
    dump.update({c: [] for c in cams})
    for i in indices:
        if args.evict:
            evict(files)
        s, c0 = time.perf_counter(), time.process_time()
        item = ds[i]
        times.append(time.perf_counter() - s)
        cpu.append(time.process_time() - c0)  # CPU of all threads: robust to other load
        if args.dump:
            dump['index'].append(i)
            for c in cams:
                dump[c].append((item[c].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy())
            dump['action'].append(item['action'].numpy())
            dump['action_is_pad'].append(item['action_is_pad'].numpy())
            dump['state'].append(item['observation.state'].numpy())
    item = ds[indices[0]]
    out = {
        'loader': f'lerobot {lerobot.__version__}', 'root': str(args.root), 'len': len(ds),
        'video_backend': ds.video_backend, 'threads': args.threads, 'evict': args.evict,
        'open_s': round(open_s, 3), 'action_shape': list(item['action'].shape),
        'image_shape': list(item[cams[0]].shape), 'image_dtype': str(item[cams[0]].dtype),
        'ms_per_sample': stats_ms(times[args.skip:]), 'first_ms': round(times[0] * 1e3, 3),
        'cpu_ms_per_sample': stats_ms(cpu[args.skip:]),
    }
    if args.dump:
        np.savez(args.dump, **{k.replace('.', '_'): np.stack(v) for k, v in dump.items()})
        out['dump'] = str(args.dump)
    if args.workers is not None:
        out['dataloader'] = time_dataloader(ds, args)
    return out


def time_dataloader(ds, args: argparse.Namespace) -> dict:
    import torch
    from lerobot.datasets import video_utils
    from torch.utils.data import DataLoader, RandomSampler

    # the decoders the item timing opened must not be shared with forked workers (a training
    # script's main process decodes nothing before its DataLoader starts)
    video_utils._default_decoder_cache.clear()
    gen = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        ds, batch_size=args.batch_size, num_workers=args.workers,
        sampler=RandomSampler(ds, replacement=True, generator=gen,
                              num_samples=args.batch_size * (args.batches + 1)),
        persistent_workers=False,
    )
    it = iter(loader)
    next(it)  # workers started, first batch out: not timed
    t0 = time.perf_counter()
    n = 0
    for batch in it:
        n += len(batch['index'])
    dt = time.perf_counter() - t0
    return {'workers': args.workers, 'batch_size': args.batch_size, 'samples': n,
            'samples_per_s': round(n / dt, 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    sub = p.add_subparsers(dest='cmd', required=True)
    w = sub.add_parser('write', help='write the synthetic episodes with LeRobot')
    w.add_argument('--root', type=Path, required=True)
    w.add_argument('--episodes', type=int, default=6)
    w.add_argument('--steps', type=int, default=300)
    w.add_argument('--height', type=int, default=480)
    w.add_argument('--width', type=int, default=640)
    w.add_argument('--seed', type=int, default=0)
    w.add_argument('--vcodec', default='libsvtav1', help="LeRobot's default")
    w.add_argument('--image-writer-threads', type=int, default=4)
    t = sub.add_parser('time', help='time LeRobotDataset[i] with an action chunk')
    t.add_argument('--root', type=Path, required=True)
    t.add_argument('--indices', help='comma-separated global frame indices')
    t.add_argument('--indices-file', help='a JSON list of indices')
    t.add_argument('--samples', type=int, default=200, help='random indices when none are given')
    t.add_argument('--seed', type=int, default=0)
    t.add_argument('--chunk', type=int, default=50, help='action chunk length (delta_timestamps)')
    t.add_argument('--threads', type=int, default=1, help='torch.set_num_threads')
    t.add_argument('--video-backend', default=None, help="LeRobot's default (torchcodec) if unset")
    t.add_argument('--evict', action='store_true', help='cold: drop the files from the page cache')
    t.add_argument('--skip', type=int, default=0, help='leave the first N out of the stats')
    t.add_argument('--dump', type=Path, help='save the items to this .npz')
    t.add_argument('--workers', type=int, help='also time a DataLoader with this many workers')
    t.add_argument('--batch-size', type=int, default=8)
    t.add_argument('--batches', type=int, default=25)
    args = p.parse_args(argv)
    out = cmd_write(args) if args.cmd == 'write' else cmd_time(args)
    print(json.dumps(out))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
