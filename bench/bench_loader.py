"""Benchmark: per-sample read time of the training dataset over Zarr episodes.

Writes ``--episodes`` episodes of ``--steps`` steps per codec (three cameras, default 480x640,
drawn scenes with sensor noise as in bench_recording.py), fsyncs them, then measures for one
sample = three camera frames + a (chunk, 14) action chunk + state:

* ``fast warm``: :class:`EpisodeDataset` random access, files in the page cache;
* ``fast cold``: same, the sample's chunk files evicted from the page cache before each read
  (``posix_fadvise(POSIX_FADV_DONTNEED)`` after the data was fsynced; the eviction is not timed);
* ``zarr path``: the dataset with ``io='zarr'`` (zarr arrays opened once per episode, frames
  read with zarr indexing);
* ``naive``: per sample ``zarr.open_group(episode)`` then ``group['observation/<cam>'][t]`` per
  camera, ``group['action'][t:t+K]`` and ``group['observation/obs_state'][t]``;
* ``DataLoader``: samples/s through ``torch.utils.data.DataLoader`` (batch ``--batch-size``,
  random indices) for each ``--workers`` count, after the first batch: ``default`` = items +
  default collate, ``batched`` = :func:`make_loader` (frames decoded into the batch tensors);
  plus ``batched`` with ``--decode-threads`` threads and no workers;
* floors: (a) ``np.copyto`` of the same image bytes (3 x H*W*3) in memory, (b) ``pread`` of the
  same bytes uncompressed from a raw file of frames (warm page cache, and cold), (c) decoding
  the sample's three chunk files already in memory (the codec's own cost).

    python bench/bench_loader.py --episodes 3 --steps 100 --codecs lz4,jpeg --json out.json
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, RandomSampler
from zarr.storage import LocalStore

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recording import make_frames  # noqa: E402

from scarls.episodes import EpisodeWriter, StepRecord  # noqa: E402
from scarls.episodes.codecs import decode_image  # noqa: E402
from scarls.episodes.dataset import (  # noqa: E402
    EpisodeDataset,
    _decode_blosc,
    make_loader,
    tune_malloc,
)

log = logging.getLogger('bench_loader')
CAMS = ('top', 'left', 'right')


# -- setup -----------------------------------------------------------------------------------


def machine_info() -> dict:
    model = ''
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith('Model name'):
                model = line.split(':', 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {
        'nproc': os.cpu_count(),
        'cpu_model': model,
        'platform': platform.platform(),
        'python': platform.python_version(),
        'numpy': np.__version__,
        'zarr': zarr.__version__,
        'torch': torch.__version__,
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def fsync_tree(path: Path) -> None:
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)


def evict(paths: list[str]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def warm(paths: list[str]) -> None:
    for p in paths:
        with open(p, 'rb', buffering=0) as fh:
            while fh.read(1 << 22):
                pass


def write_episodes(args: argparse.Namespace, root: Path, codec: str, frames: dict) -> None:
    rng = np.random.default_rng(args.seed)
    n = len(frames[CAMS[0]])
    for e in range(args.episodes):
        w = EpisodeWriter(
            root, f'bench_{codec}', 'bench', image_shape=(args.height, args.width),
            state_dim=14, action_dim=14, codec=codec, fsync=False,
        )
        for i in range(args.steps):
            w.append(StepRecord(
                {c: frames[c][(i + 7 * e) % n] for c in CAMS},
                rng.normal(size=14), rng.normal(size=14), i % 10 < 2, float(i) / 30.0,
            ))
        w.finalize('success' if e % 2 == 0 else 'fail', model_version=0)
    fsync_tree(root / f'bench_{codec}')


def sample_files(ds: EpisodeDataset, i: int) -> list[str]:
    ep, t = ds._locate(i)
    return [f'{c.prefix}{t // c.gop}{c.suffix}' for c in ep.cameras]


# -- measurements ----------------------------------------------------------------------------


def stats_ms(times: list[float]) -> dict:
    a = np.asarray(times) * 1e3
    return {
        'n': len(times),
        'mean_ms': round(float(a.mean()), 3),
        'p50_ms': round(float(np.percentile(a, 50)), 3),
        'p90_ms': round(float(np.percentile(a, 90)), 3),
        'max_ms': round(float(a.max()), 3),
        'samples_per_s': round(float(1e3 / a.mean()), 1),
    }


def time_each(indices, fn: Callable[[int], object], before: Callable[[int], None] | None = None):
    times = []
    for i in indices:
        if before is not None:
            before(int(i))
        t0 = time.perf_counter()
        fn(int(i))
        times.append(time.perf_counter() - t0)
    return times


def naive_sample(ds: EpisodeDataset, k: int) -> Callable[[int], dict]:
    def read(i: int) -> dict:
        key, t = ds.locate(i)
        ep = ds._episodes[ds._by_key[key]]
        g = zarr.open_group(LocalStore(ep.path, read_only=True), mode='r')
        out = {f'image.{c}': g[f'observation/{c}'][t] for c in CAMS}
        out['state'] = g['observation/obs_state'][t]
        out['action'] = g['action'][t : t + k]  # not padded: the naive baseline does less work
        return out

    return read


def run_loader(ds: EpisodeDataset, kind: str, workers: int, args: argparse.Namespace) -> dict:
    """samples/s of a DataLoader; ``kind``: 'default' (items + default collate) or 'batched'.

    Repeated ``--repeat`` times (a fresh iterator, i.e. fresh workers, each time); the median
    run is reported with the range.
    """
    rates, firsts = [], []
    for rep in range(args.repeat):
        gen = torch.Generator().manual_seed(args.seed + rep)
        n_samples = (args.batches + 1) * args.batch_size
        sampler = RandomSampler(ds, replacement=True, num_samples=n_samples, generator=gen)
        if kind == 'default':
            dl = DataLoader(ds, batch_size=args.batch_size, sampler=sampler, num_workers=workers)
        else:
            dl = make_loader(ds, args.batch_size, sampler=sampler, num_workers=workers)
        t_start = time.perf_counter()
        it = iter(dl)
        next(it)  # worker start-up and the first batch are excluded
        firsts.append(time.perf_counter() - t_start)
        t0 = time.perf_counter()
        n = 0
        for b in it:
            n += b['action'].shape[0]
        rates.append(n / (time.perf_counter() - t0))
    med = float(np.median(rates))
    return {
        'kind': kind,
        'workers': workers,
        'decode_threads': ds.decode_threads,
        'batch_size': args.batch_size,
        'batches': args.batches,
        'repeat': args.repeat,
        'first_batch_s': round(float(np.median(firsts)), 3),
        'samples_per_s': round(med, 1),
        'samples_per_s_min': round(min(rates), 1),
        'samples_per_s_max': round(max(rates), 1),
        'ms_per_sample': round(1e3 / med, 3),
        'loadavg_1min': round(os.getloadavg()[0], 2),
    }


def decode_floor(ds: EpisodeDataset, indices, reps: int = 1) -> dict:
    """(c) decode only: the sample's chunk bytes already in memory, decoded into fresh arrays."""
    blobs = []
    for i in indices:
        ep, t = ds._locate(int(i))
        blobs.append([(c, Path(f'{c.prefix}{t}{c.suffix}').read_bytes()) for c in ep.cameras])

    def dec(j: int) -> None:
        for cam, data in blobs[j]:
            if cam.decoder == 'blosc':
                _decode_blosc(data, np.empty(cam.shape, np.uint8))
            elif cam.decoder == 'raw':   # no codec: a copy into a fresh array
                np.copyto(np.empty(cam.shape, np.uint8),
                          np.frombuffer(data, np.uint8).reshape(cam.shape))
            else:
                decode_image(cam.decoder, data)

    return stats_ms(time_each(range(len(blobs)), dec))


def floors(frames: dict, raw_path: Path, rng: np.random.Generator, n: int, cold: int) -> dict:
    srcs = [f for c in CAMS for f in frames[c]]
    nbytes = srcs[0].nbytes
    dst = [np.empty_like(srcs[0]) for _ in CAMS]
    pick = rng.integers(0, len(srcs), (n, len(CAMS)))

    def copy(r: int) -> None:
        for d, j in zip(dst, pick[r], strict=True):
            np.copyto(d, srcs[j])

    copy_t = time_each(range(n), copy)
    with open(raw_path, 'wb') as fh:
        for f in srcs:
            fh.write(f.tobytes())
        fh.flush()
        os.fsync(fh.fileno())
    fd = os.open(raw_path, os.O_RDONLY)
    bufs = [np.empty(nbytes, np.uint8) for _ in CAMS]
    try:
        warm([str(raw_path)])

        def pread_alloc(r: int) -> None:
            for j in pick[r]:
                os.pread(fd, nbytes, int(j) * nbytes)

        def pread_into(r: int) -> None:
            for b, j in zip(bufs, pick[r], strict=True):
                os.preadv(fd, [b], int(j) * nbytes)

        def drop(r: int) -> None:
            for j in pick[r]:
                os.posix_fadvise(fd, int(j) * nbytes, nbytes, os.POSIX_FADV_DONTNEED)

        alloc_t = time_each(range(n), pread_alloc)
        into_t = time_each(range(n), pread_into)
        cold_t = time_each(range(cold), pread_alloc, before=drop)
    finally:
        os.close(fd)
    return {
        'image_bytes_per_sample': nbytes * len(CAMS),
        'a_copyto': stats_ms(copy_t),
        'b_pread_warm': stats_ms(alloc_t),
        'b_preadv_into_warm': stats_ms(into_t),
        'b_pread_cold': stats_ms(cold_t),
    }


def bench_codec(args: argparse.Namespace, root: Path, codec: str, frames: dict) -> dict:
    t0 = time.perf_counter()
    write_episodes(args, root, codec, frames)
    write_s = time.perf_counter() - t0
    task = f'bench_{codec}'
    t0 = time.perf_counter()
    ds = EpisodeDataset(root, task, chunk_size=args.chunk)
    build_s = time.perf_counter() - t0
    dz = EpisodeDataset(root, task, chunk_size=args.chunk, io='zarr')
    assert all(c.direct for ep in ds._episodes for c in ep.cameras)
    rng = np.random.default_rng(args.seed)
    idx = rng.integers(0, len(ds), args.samples)
    cold_idx = rng.integers(0, len(ds), args.cold_samples)
    all_files = [f for i in range(len(ds)) for f in sample_files(ds, i)]
    for i in idx[:20]:  # the fast path and the zarr path return the same data
        a, b = ds[int(i)], dz[int(i)]
        assert all(np.array_equal(a[k], b[k]) for k in a), f'mismatch at {i}'
    data_bytes = sum(os.path.getsize(f) for f in all_files)
    res: dict = {
        'codec': codec,
        'episodes': ds.num_episodes,
        'frames': len(ds),
        'image_bytes_on_disk_per_sample': round(data_bytes / len(ds)),
        'write_s': round(write_s, 2),
        'dataset_build_s': round(build_s, 3),
    }
    t0 = time.perf_counter()
    for _ in range(100):
        ds.refresh()
    res['refresh_noop_ms'] = round((time.perf_counter() - t0) * 10, 3)
    log.info('%s: warm random access', codec)
    warm(all_files)
    time_each(idx[:20], ds.__getitem__)
    f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    res['fast_warm'] = stats_ms(time_each(idx, ds.__getitem__))
    res['fast_warm']['minflt_per_sample'] = round(
        (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0) / len(idx), 1)
    time_each(idx[:20], dz.__getitem__)
    res['zarr_path_warm'] = stats_ms(time_each(idx, dz.__getitem__))
    naive = naive_sample(ds, args.chunk)
    res['naive_warm'] = stats_ms(time_each(idx[: max(20, args.samples // 3)], naive))
    log.info('%s: cold random access', codec)

    def drop(i: int) -> None:
        evict(sample_files(ds, i))

    res['fast_cold'] = stats_ms(time_each(cold_idx, ds.__getitem__, before=drop))
    dt = None
    if args.decode_threads > 1:
        dt = EpisodeDataset(root, task, chunk_size=args.chunk, decode_threads=args.decode_threads)
        res['fast_cold_threads'] = stats_ms(time_each(cold_idx, dt.__getitem__, before=drop))
        res['fast_cold_threads']['decode_threads'] = args.decode_threads
    res['zarr_path_cold'] = stats_ms(time_each(cold_idx, dz.__getitem__, before=drop))
    res['naive_cold'] = stats_ms(time_each(cold_idx, naive, before=drop))
    warm(all_files)
    res['decode_only'] = decode_floor(ds, idx)
    batches = idx[: (len(idx) // args.batch_size) * args.batch_size].reshape(-1, args.batch_size)
    for shared in (False, True):  # what a DataLoader worker pays for shared-memory batches
        ds.get_batch(batches[0], shared=shared)
        f0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        t = time_each(range(len(batches)), lambda j, s=shared: ds.get_batch(batches[j], shared=s))
        key = f'get_batch_{"shared" if shared else "private"}'
        res[key] = stats_ms([x / args.batch_size for x in t])
        res[key]['minflt_per_sample'] = round(
            (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
            / (len(batches) * args.batch_size), 1)
    if dt is not None:
        time_each(idx[:20], dt.__getitem__)
        res['fast_warm_threads'] = stats_ms(time_each(idx, dt.__getitem__))
        res['fast_warm_threads']['decode_threads'] = args.decode_threads
    res['loader'] = []
    for kind in ('default', 'batched'):
        for w in args.workers:
            log.info('%s: DataLoader %s num_workers=%d', codec, kind, w)
            res['loader'].append(run_loader(ds, kind, w, args))
    if dt is not None:
        log.info('%s: DataLoader batched num_workers=0 decode_threads=%d', codec,
                 args.decode_threads)
        res['loader'].append(run_loader(dt, 'batched', 0, args))
        dt.close()
    return res


# -- report ----------------------------------------------------------------------------------


def report(doc: dict) -> None:
    fl = doc['floors']
    print(f'machine: {doc["machine"]["nproc"]} cores, {doc["machine"]["cpu_model"]}; '
          f'load avg before {doc["loadavg_before"]}, after {doc["loadavg_after"]}')
    print(f'sample = 3 x {doc["args"]["height"]}x{doc["args"]["width"]}x3 uint8 + '
          f'({doc["args"]["chunk"]}, 14) action chunk; times per sample (mean / p50 / p90 ms)')
    rows = [
        ('floor (a) np.copyto of the image bytes', fl['a_copyto']),
        ('floor (b) pread raw frames, warm', fl['b_pread_warm']),
        ('floor (b) preadv into buffers, warm', fl['b_preadv_into_warm']),
        ('raw pread, cold', fl['b_pread_cold']),
    ]
    for r in doc['results']:
        c = r['codec']
        rows += [
            (f'{c}: decode only (floor c), warm', r['decode_only']),
            (f'{c}: fast path, warm', r['fast_warm']),
            *([(f'{c}: fast path, {r["fast_warm_threads"]["decode_threads"]} decode threads, '
                'warm', r['fast_warm_threads'])] if 'fast_warm_threads' in r else []),
            (f'{c}: get_batch, private memory, per sample', r['get_batch_private']),
            (f'{c}: get_batch, shared memory, per sample', r['get_batch_shared']),
            (f'{c}: fast path, cold', r['fast_cold']),
            *([(f'{c}: fast path, {r["fast_cold_threads"]["decode_threads"]} decode threads, '
                'cold', r['fast_cold_threads'])] if 'fast_cold_threads' in r else []),
            (f'{c}: zarr path (io=zarr), warm', r['zarr_path_warm']),
            (f'{c}: zarr path (io=zarr), cold', r['zarr_path_cold']),
            (f'{c}: naive open_group per sample, warm', r['naive_warm']),
            (f'{c}: naive open_group per sample, cold', r['naive_cold']),
        ]
    for name, s in rows:
        faults = f'  {s["minflt_per_sample"]} faults' if 'minflt_per_sample' in s else ''
        print(f'  {name:44} {s["mean_ms"]:8.3f} {s["p50_ms"]:8.3f} {s["p90_ms"]:8.3f}{faults}')
    for r in doc['results']:
        print(f'{r["codec"]}: {r["image_bytes_on_disk_per_sample"]} B on disk per sample; '
              f'build {r["dataset_build_s"]} s for {r["episodes"]} episodes; refresh() no-op '
              f'{r["refresh_noop_ms"]} ms')
        for lr in r['loader']:
            print(f'  DataLoader {lr["kind"]:8} batch {lr["batch_size"]} workers {lr["workers"]} '
                  f'threads {lr["decode_threads"]}: {lr["samples_per_s"]:6.1f} samples/s '
                  f'[{lr["samples_per_s_min"]:.0f}-{lr["samples_per_s_max"]:.0f}] '
                  f'({lr["ms_per_sample"]:.3f} ms/sample; first batch {lr["first_batch_s"]} s; '
                  f'load {lr["loadavg_1min"]})')
    for key, val in doc['summary'].items():
        print(f'{key}: {val}')


def summarize(doc: dict) -> dict:
    out = {}
    fb = doc['floors']['b_pread_warm']['mean_ms']
    for r in doc['results']:
        c = r['codec']
        fw = r['fast_warm']['mean_ms']
        out[f'{c}_warm_vs_floor_b'] = round(fw / fb, 2)
        out[f'{c}_warm_vs_read_plus_decode'] = round(
            fw / (fb + r['decode_only']['mean_ms']), 2
        )
        out[f'{c}_speedup_vs_naive_warm'] = round(r['naive_warm']['mean_ms'] / fw, 1)
        out[f'{c}_speedup_vs_zarr_path_warm'] = round(r['zarr_path_warm']['mean_ms'] / fw, 2)
        out[f'{c}_speedup_vs_naive_cold'] = round(
            r['naive_cold']['mean_ms'] / r['fast_cold']['mean_ms'], 1
        )
        out[f'{c}_vs_paper_25ms_warm'] = round(25.0 / fw, 1)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    p.add_argument('--episodes', type=int, default=3, help='episodes per codec (default 3)')
    p.add_argument('--steps', type=int, default=100, help='steps per episode (default 100)')
    p.add_argument('--height', type=int, default=480)
    p.add_argument('--width', type=int, default=640)
    p.add_argument('--codecs', default='lz4,raw,jpeg', help='comma-separated codec names')
    p.add_argument('--chunk', type=int, default=50, help='action chunk length K (default 50)')
    p.add_argument('--distinct-frames', type=int, default=30,
                   help='pre-rendered frames per camera, cycled (default 30)')
    p.add_argument('--samples', type=int, default=300, help='warm random samples (default 300)')
    p.add_argument('--cold-samples', type=int, default=60, help='cold samples (default 60)')
    p.add_argument('--workers', default='0,1,2', help='DataLoader num_workers values')
    p.add_argument('--batch-size', type=int, default=8)
    p.add_argument('--batches', type=int, default=30,
                   help='timed batches per loader run (default 30)')
    p.add_argument('--repeat', type=int, default=3,
                   help='runs per loader configuration; the median is reported (default 3)')
    p.add_argument('--decode-threads', type=int, default=3,
                   help='also measure decode_threads=N with num_workers=0 (0: skip)')
    p.add_argument('--tune-malloc', action='store_true',
                   help='call scarls.episodes.dataset.tune_malloc() first')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--root', type=Path, default=None,
                   help='data directory (default: a temporary directory, removed afterwards)')
    p.add_argument('--json', type=Path, default=None, help='write results as JSON here')
    args = p.parse_args(argv)
    args.workers = [int(w) for w in args.workers.split(',')]
    logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s')
    logging.getLogger('scarls').setLevel(logging.WARNING)
    torch.set_num_threads(1)
    if args.tune_malloc and not tune_malloc():
        log.warning('tune_malloc() is not available here')
    doc: dict = {
        'args': {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        'machine': machine_info(),
        'loadavg_before': loadavg(),
    }
    log.info('rendering %d frames per camera', args.distinct_frames)
    frames = {
        c: make_frames(args.distinct_frames, args.height, args.width, k)
        for k, c in enumerate(CAMS)
    }
    with tempfile.TemporaryDirectory(prefix='bench-loader-') as tmp:
        root = args.root or Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(args.seed)
        log.info('floors')
        doc['floors'] = floors(frames, root / 'raw_frames.bin', rng, args.samples,
                               args.cold_samples)
        doc['results'] = []
        for codec in args.codecs.split(','):
            log.info('%s: writing %d episodes', codec, args.episodes)
            doc['results'].append(bench_codec(args, root, codec, frames))
    doc['loadavg_after'] = loadavg()
    doc['summary'] = summarize(doc)
    report(doc)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
