"""Benchmark: scarls' EpisodeDataset against LeRobot 0.4.4 on the same samples, in one run.

The same synthetic episodes (``bench/synth_frames.py``: 3 cameras 480x640 with sensor noise,
14-D state and action, 30 fps) are stored three ways:

* a LeRobot v3.0 dataset written by LeRobot's own writer (AV1 video, its defaults), through
  ``bench/lerobot_dataset.py`` in the separate LeRobot environment (``bench/lerobot_env.sh``);
* scarls Zarr episodes written with ``EpisodeWriter``, lossless (``--codecs``, default lz4);
* the same episodes compacted into the compressed mode (``scarls.episodes.compact``: H.264 GOPs
  of ``--gop`` frames per zarr chunk).

One sample = the three frames of step t + a (50, 14) action chunk (+ state, padding mask).  Every
loader runs in a fresh process (LeRobot's under its own environment's python) on the same
indices, at one torch thread; the loaders are interleaved over ``--reps`` repetitions (the order
rotates each repetition) and the load average is recorded next to every run, so ratios are
measured in the same run under the same load:

* ``warm``: ``dataset[i]`` with the files in the page cache (``--skip`` first samples excluded);
* ``cold``: every file of the dataset evicted from the page cache before each sample
  (``posix_fadvise(DONTNEED)``, not timed);
* ``DataLoader``: samples/s, ``--workers`` workers, batch ``--batch-size``, random indices,
  first batch excluded: LeRobot's items + default collate; scarls ``make_loader`` (batched) and
  the default ``DataLoader(dataset, batch_size)``;
* ``floor``: a 20-line loader that preads each lossless chunk file and blosc-decodes it into a
  preallocated buffer (plus the same action-chunk slicing) - what the format costs at least;
* ``zarr``: plain zarr-python, arrays opened once per episode and cached, ``arr[t]``.

Minor page faults per warm sample (``ru_minflt``) are reported for the scarls loaders.  Besides
wall time, every per-sample timing records the process's CPU time (all its threads): on a
machine shared with other work, CPU time shows what a sample costs, wall time what it took.

    bash bench/lerobot_env.sh     # once: build/lerobot-venv
    .venv/bin/python bench/bench_lerobot_compare.py --work build/loader-compare --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 'src'))
sys.path.insert(0, str(HERE))

import synth_frames  # noqa: E402

TASK = 'synthetic'
CHUNK = 50


# -- one loader in this (fresh) process ----------------------------------------------------------


def _stats(times: list[float]) -> dict:
    a = np.asarray(times) * 1e3
    return {'n': len(a), 'mean': round(float(a.mean()), 3),
            'median': round(float(np.median(a)), 3), 'p90': round(float(np.percentile(a, 90)), 3)}


def _evict_all(files: list[str]) -> None:
    for p in files:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def _files(root: Path) -> list[str]:
    return [str(p) for p in root.rglob('*') if p.is_file()]


def _floor_loader(root: Path, cams: tuple[str, ...]):
    """The floor: pread each frame's lz4 chunk file into a reused buffer, blosc-decode it into
    preallocated frame buffers, slice the action chunk."""
    import imagecodecs

    from scarls.episodes.dataset import EpisodeDataset

    ds = EpisodeDataset(root, TASK, chunk_size=CHUNK, cameras=cams)  # only for the file names
    eps = [([(c.prefix, c.suffix) for c in ep.cameras], ep.action_padded) for ep in ds._episodes]
    starts = np.cumsum([0] + [ep.steps for ep in ds._episodes])
    bufs = [np.empty(c.shape, np.uint8) for c in ds._episodes[0].cameras]
    raw = bytearray(4 << 20)

    def get(i: int) -> dict:
        e = int(np.searchsorted(starts, i, 'right') - 1)
        files, act = eps[e]
        t = i - int(starts[e])
        for buf, (prefix, suffix) in zip(bufs, files, strict=True):
            fd = os.open(f'{prefix}{t}{suffix}', os.O_RDONLY)
            n = os.preadv(fd, [raw], 0)
            os.close(fd)
            imagecodecs.blosc_decode(memoryview(raw)[:n], numthreads=1, out=buf.reshape(-1))
        return {'image': bufs, 'action': act[t:t + CHUNK]}

    return get, len(ds)


def _zarr_loader(root: Path, cams: tuple[str, ...]):
    import zarr

    from scarls.episodes.dataset import EpisodeDataset

    ds = EpisodeDataset(root, TASK, chunk_size=CHUNK, cameras=cams)
    arrays = [{c: zarr.open_array(ep.path / 'observation' / c, mode='r') for c in cams}
              for ep in ds._episodes]
    acts = [zarr.open_array(ep.path / 'action', mode='r') for ep in ds._episodes]

    def get(i: int) -> dict:
        key, t = ds.locate(i)
        e = ds._by_key[key]
        return {**{c: arrays[e][c][t] for c in cams}, 'action': acts[e][t:t + CHUNK]}

    return get, len(ds)


def cmd_run(args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(1)
    from scarls.episodes.dataset import EpisodeDataset, make_loader

    cams = synth_frames.CAMERAS
    indices = [int(i) for i in json.loads(Path(args.indices_file).read_text())]
    t0 = time.perf_counter()
    if args.loader == 'floor':
        get, n = _floor_loader(args.root, cams)
    elif args.loader == 'zarr':
        get, n = _zarr_loader(args.root, cams)
    else:
        ds = EpisodeDataset(args.root, TASK, chunk_size=CHUNK, cameras=cams)
        get, n = ds.__getitem__, len(ds)
    open_s = time.perf_counter() - t0
    files = _files(args.root) if args.evict else []
    times, cpu = [], []
    f0 = 0
    for k, i in enumerate(indices):
        if k == args.skip:
            f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        if args.evict:
            _evict_all(files)
        s, c0 = time.perf_counter(), time.process_time()
        get(i)
        times.append(time.perf_counter() - s)
        cpu.append(time.process_time() - c0)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / max(
        1, len(indices) - args.skip)
    out = {'loader': args.loader, 'len': n, 'open_s': round(open_s, 3), 'evict': args.evict,
           'ms_per_sample': _stats(times[args.skip:]),
           'cpu_ms_per_sample': _stats(cpu[args.skip:]), 'minflt_per_sample': round(faults, 1)}
    if args.workers is not None and args.loader not in ('floor', 'zarr'):
        from torch.utils.data import DataLoader, RandomSampler

        rates = {}
        for kind in ('batched', 'default'):
            gen = torch.Generator().manual_seed(args.seed)
            sampler = RandomSampler(ds, replacement=True, generator=gen,
                                    num_samples=args.batch_size * (args.batches + 1))
            if kind == 'batched':
                dl = make_loader(ds, args.batch_size, sampler=sampler, num_workers=args.workers)
            else:
                dl = DataLoader(ds, batch_size=args.batch_size, sampler=sampler,
                                num_workers=args.workers)
            it = iter(dl)
            next(it)
            s = time.perf_counter()
            m = sum(len(b['frame']) for b in it)
            rates[kind] = round(m / (time.perf_counter() - s), 1)
        out['dataloader'] = {'workers': args.workers, 'batch_size': args.batch_size, **rates}
    return out


# -- setup ---------------------------------------------------------------------------------------


def tree_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob('*') if p.is_file())


def frame_bytes(root: Path) -> int:
    return sum(tree_bytes(d) for d in root.glob(f'{TASK}/episode_*.zarr/observation/*')
               if d.name != 'obs_state')


def write_scarls(root: Path, codec: str, args: argparse.Namespace) -> float:
    from scarls.episodes import EpisodeWriter, StepRecord

    t0 = time.perf_counter()
    for e in range(args.episodes):
        ep = synth_frames.episode(args.seed, e, args.steps)
        w = EpisodeWriter(root, TASK, 'bench', image_shape=(480, 640), state_dim=14,
                          action_dim=14, cameras=synth_frames.CAMERAS, codec=codec, fsync=False)
        for t in range(args.steps):
            w.append(StepRecord({c: ep['frames'][c][t] for c in synth_frames.CAMERAS},
                                ep['state'][t], ep['action'][t], False, t / synth_frames.FPS))
        ref = w.finalize('success', model_version=None)
        if ref.index != e:
            raise SystemExit(f'{root}: expected episode {e}, got {ref.index} (not empty?)')
    return time.perf_counter() - t0


def fsync_tree(root: Path) -> None:
    for p in _files(root):
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def run_json(cmd: list[str]) -> dict:
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if res.returncode != 0:
        raise SystemExit(f'{cmd} failed:\n{res.stderr[-3000:]}')
    return json.loads(res.stdout.strip().splitlines()[-1])


def cmd_bench(args: argparse.Namespace) -> dict:
    from scarls.episodes.compact import compact_dataset

    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    lr_py = str(args.lerobot_python)
    lr_root = args.lerobot_root or work / 'lerobot'
    doc: dict = {'machine': machine(), 'args': {k: str(v) for k, v in vars(args).items()},
                 'loadavg_start': os.getloadavg(), 'setup': {}}
    if not (lr_root / 'meta' / 'info.json').exists() or not (lr_root / 'data').exists():
        if lr_root.exists():
            shutil.rmtree(lr_root)
        print(f'writing the LeRobot dataset to {lr_root}', file=sys.stderr)
        doc['setup']['lerobot_write'] = run_json(
            [lr_py, str(HERE / 'lerobot_dataset.py'), 'write', '--root', str(lr_root),
             '--episodes', str(args.episodes), '--steps', str(args.steps),
             '--seed', str(args.seed)])
    info = json.loads((lr_root / 'meta' / 'info.json').read_text())
    if (info['total_episodes'], info['total_frames']) != (args.episodes,
                                                          args.episodes * args.steps):
        raise SystemExit(f'{lr_root} holds {info["total_episodes"]} episodes / '
                         f'{info["total_frames"]} frames, not {args.episodes} x {args.steps}')
    roots = {}
    for codec in args.codecs.split(','):
        root = work / f'scarls-{codec}'
        if not (root / TASK).exists():
            print(f'writing scarls {codec} episodes', file=sys.stderr)
            doc['setup'][f'write_{codec}_s'] = round(write_scarls(root, codec, args), 1)
            fsync_tree(root)
        roots[codec] = root
    video = work / f'scarls-h264-gop{args.gop}'
    if not (video / TASK).exists():
        src = roots[args.codecs.split(',')[0]]
        print(f'compacting a copy of {src.name}', file=sys.stderr)
        shutil.copytree(src, video)
        res = compact_dataset(video, TASK, gop=args.gop, crf=args.crf)
        doc['setup']['compact'] = {
            'frames_per_s': round(sum(r.frames * len(r.cameras) for r in res)
                                  / sum(r.seconds for r in res), 1),
            'seconds': round(sum(r.seconds for r in res), 1)}
        fsync_tree(video)
    doc['bytes'] = {'lerobot': tree_bytes(lr_root),
                    'lerobot_videos': tree_bytes(lr_root / 'videos'),
                    **{f'scarls-{c}': tree_bytes(r) for c, r in roots.items()},
                    **{f'scarls-{c}_frames': frame_bytes(r) for c, r in roots.items()},
                    'scarls-h264': tree_bytes(video), 'scarls-h264_frames': frame_bytes(video)}
    n = args.episodes * args.steps
    rng = np.random.default_rng(args.seed)
    warm_idx = [int(i) for i in rng.integers(0, n, args.samples + args.skip)]
    cold_idx = [int(i) for i in rng.integers(0, n, args.cold_samples + 1)]
    idx_files = {}
    for name, idx in (('warm', warm_idx), ('cold', cold_idx)):
        idx_files[name] = work / f'indices-{name}.json'
        idx_files[name].write_text(json.dumps(idx))
    me = [sys.executable, str(Path(__file__).resolve()), 'run']

    def lerobot(cold: bool) -> list[str]:
        cmd = [lr_py, str(HERE / 'lerobot_dataset.py'), 'time', '--root', str(lr_root),
               '--indices-file', str(idx_files['cold' if cold else 'warm']), '--threads', '1',
               '--chunk', str(CHUNK)]
        if cold:
            return [*cmd, '--evict', '--skip', '1']
        return [*cmd, '--skip', str(args.skip), '--workers', str(args.workers),
                '--batch-size', str(args.batch_size), '--batches', str(args.batches)]

    def scarls(loader: str, root: Path, cold: bool) -> list[str]:
        cmd = [*me, '--loader', loader, '--root', str(root), '--seed', str(args.seed),
               '--indices-file', str(idx_files['cold' if cold else 'warm'])]
        if cold:
            return [*cmd, '--evict', '--skip', '1']
        cmd += ['--skip', str(args.skip)]
        if loader == 'scarls':
            cmd += ['--workers', str(args.workers), '--batch-size', str(args.batch_size),
                    '--batches', str(args.batches)]
        return cmd

    first = roots[args.codecs.split(',')[0]]
    loaders = {'lerobot': lambda cold: lerobot(cold)}
    for codec, root in roots.items():
        loaders[f'scarls {codec}'] = lambda cold, r=root: scarls('scarls', r, cold)
    loaders['scarls h264 (compressed)'] = lambda cold: scarls('scarls', video, cold)
    loaders['floor (pread + blosc)'] = lambda cold: scarls('floor', first, cold)
    loaders['zarr-python, cached arrays'] = lambda cold: scarls('zarr', first, cold)
    names = list(loaders)
    runs: dict[str, list[dict]] = {k: [] for k in names}
    for rep in range(args.reps):
        order = names[rep % len(names):] + names[:rep % len(names)]
        for name in order:
            for cold in (False, True) if rep < args.cold_reps else (False,):
                load = os.getloadavg()[0]
                print(f'rep {rep} {name} {"cold" if cold else "warm"} (load {load:.2f})',
                      file=sys.stderr)
                r = run_json(loaders[name](cold))
                r['loadavg_1min'] = round(load, 2)
                r['rep'] = rep
                r['cold'] = cold
                runs[name].append(r)
    doc['runs'] = runs
    doc['loadavg_end'] = os.getloadavg()
    doc['summary'] = summarize(doc)
    return doc


def summarize(doc: dict) -> dict:
    """Per loader: the median over repetitions of each run's median ms per sample (wall and
    CPU time of the process), DataLoader rates; ratios taken per repetition (the loaders of one
    repetition ran back to back, under about the same load), then their median."""
    def med(r: dict, key: str) -> float:
        return r[key]['median']

    out = {}
    for name, rs in doc['runs'].items():
        warm = [r for r in rs if not r['cold']]
        cold = [med(r, 'ms_per_sample') for r in rs if r['cold']]
        row = {'warm_ms': round(float(np.median([med(r, 'ms_per_sample') for r in warm])), 2),
               'warm_range': [round(min(med(r, 'ms_per_sample') for r in warm), 2),
                              round(max(med(r, 'ms_per_sample') for r in warm), 2)],
               'warm_cpu_ms': round(float(np.median([med(r, 'cpu_ms_per_sample')
                                                     for r in warm])), 2),
               'cold_ms': round(float(np.median(cold)), 2) if cold else None,
               'minflt': [r.get('minflt_per_sample') for r in warm],
               'load': [r['loadavg_1min'] for r in rs]}
        dl = [r['dataloader'] for r in warm if 'dataloader' in r]
        for key in ('samples_per_s', 'batched', 'default'):
            vals = [d[key] for d in dl if key in d]
            if vals:
                row[f'dl_{key}'] = round(float(np.median(vals)), 1)
        out[name] = row

    def ratios(base: str, name: str, key: str, invert: bool = False) -> float | None:
        ref = {r['rep']: r for r in doc['runs'][base] if not r['cold']}
        vals = [(med(ref[r['rep']], key) / med(r, key)) if not invert else
                (med(r, key) / med(ref[r['rep']], key))
                for r in doc['runs'][name] if not r['cold'] and r['rep'] in ref]
        return round(float(np.median(vals)), 2) if vals else None

    lr = {r['rep']: r for r in doc['runs']['lerobot'] if not r['cold']}
    for name, rs in doc['runs'].items():
        if name != 'lerobot':
            out[name]['speedup_vs_lerobot_warm'] = ratios('lerobot', name, 'ms_per_sample')
            out[name]['speedup_vs_lerobot_cpu'] = ratios('lerobot', name, 'cpu_ms_per_sample')
            dl = [(r['dataloader']['batched'], lr[r['rep']]['dataloader']['samples_per_s'])
                  for r in rs if not r['cold'] and 'dataloader' in r and r['rep'] in lr]
            if dl:
                out[name]['dl_speedup_vs_lerobot'] = round(
                    float(np.median([a / b for a, b in dl])), 2)
        out[name]['vs_floor_warm'] = ratios('floor (pread + blosc)', name, 'ms_per_sample', True)
        out[name]['vs_floor_cpu'] = ratios('floor (pread + blosc)', name, 'cpu_ms_per_sample',
                                           True)
    return out


def machine() -> dict:
    model = ''
    try:
        for line in subprocess.run(['lscpu'], capture_output=True, text=True,
                                   timeout=10).stdout.splitlines():
            if line.startswith('Model name'):
                model = line.split(':', 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {'nproc': os.cpu_count(), 'cpu': model, 'platform': platform.platform(),
            'python': platform.python_version()}


def report(doc: dict) -> None:
    s, b = doc['summary'], doc['bytes']
    print(f'machine: {doc["machine"]["nproc"]} cores, {doc["machine"]["cpu"]}; load avg '
          f'{doc["loadavg_start"]} -> {doc["loadavg_end"]}')
    print(f'bytes: LeRobot {b["lerobot"]:,} (videos {b["lerobot_videos"]:,}); '
          + '; '.join(f'{k} {v:,}' for k, v in b.items() if k.startswith('scarls')))
    print('ms per sample: median of the repetitions\' medians; ratios per repetition')
    print(f'{"loader":28} {"warm":>7} {"range":>12} {"CPU":>6} {"cold":>7} {"xLR":>5} '
          f'{"xLR CPU":>7} {"/floor":>6} {"/fl CPU":>7} {"DL batched":>10} {"DL default":>10} '
          f'{"DL xLR":>6} minflt')
    for name, r in s.items():
        rng = f'{r["warm_range"][0]}-{r["warm_range"][1]}'
        print(f'{name[:28]:28} {r["warm_ms"]:7.2f} {rng:>12} {r["warm_cpu_ms"]:6.2f} '
              f'{r["cold_ms"] or 0:7.2f} {r.get("speedup_vs_lerobot_warm") or 1:5.1f} '
              f'{r.get("speedup_vs_lerobot_cpu") or 1:7.1f} {r.get("vs_floor_warm") or 0:6.2f} '
              f'{r.get("vs_floor_cpu") or 0:7.2f} '
              f'{r.get("dl_batched", r.get("dl_samples_per_s", 0)):10.1f} '
              f'{r.get("dl_default", 0):10.1f} {r.get("dl_speedup_vs_lerobot") or 1:6.1f} '
              f'{r["minflt"]}')
    print('load per run:', {k: v['load'] for k, v in s.items()})


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    sub = p.add_subparsers(dest='cmd')
    r = sub.add_parser('run', help='(internal) time one loader in this process, print JSON')
    r.add_argument('--loader', choices=('scarls', 'floor', 'zarr'), required=True)
    r.add_argument('--root', type=Path, required=True)
    r.add_argument('--indices-file', required=True)
    r.add_argument('--evict', action='store_true')
    r.add_argument('--skip', type=int, default=5)
    r.add_argument('--workers', type=int)
    r.add_argument('--batch-size', type=int, default=8)
    r.add_argument('--batches', type=int, default=25)
    r.add_argument('--seed', type=int, default=0)
    p.add_argument('--work', type=Path, default=Path('build/loader-compare'),
                   help='datasets are written here once and reused (default build/loader-compare)')
    p.add_argument('--lerobot-python', type=Path, default=Path('build/lerobot-venv/bin/python'))
    p.add_argument('--lerobot-root', type=Path, help='an existing LeRobot dataset of the same '
                   'episodes (default: <work>/lerobot, written if missing)')
    p.add_argument('--episodes', type=int, default=6)
    p.add_argument('--steps', type=int, default=300)
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--codecs', default='lz4', help='lossless scarls codecs (the first one is '
                   'compacted and read by the floor and zarr loaders)')
    p.add_argument('--gop', type=int, default=4)
    p.add_argument('--crf', type=int, default=None)
    p.add_argument('--samples', type=int, default=150)
    p.add_argument('--skip', type=int, default=5)
    p.add_argument('--cold-samples', type=int, default=30)
    p.add_argument('--reps', type=int, default=3)
    p.add_argument('--cold-reps', type=int, default=1, help='repetitions that also run cold')
    p.add_argument('--workers', type=int, default=2)
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--batches', type=int, default=25)
    p.add_argument('--json', type=Path)
    args = p.parse_args(argv)
    if args.cmd == 'run':
        print(json.dumps(cmd_run(args)))
        return 0
    doc = cmd_bench(args)
    report(doc)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
