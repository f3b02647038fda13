"""Benchmark the per-frame image codecs of the episode format on 480x640 RGB frames.

For each codec: mean bytes per stored frame, compression ratio (raw / stored), encode-only
throughput, writer throughput (EpisodeWriter with one camera: encode + checksum (+ decode for
lossy codecs) + chunk file write + fsync), per-frame decode time through zarr, and PSNR.

    python bench/bench_codecs.py --frames 60 --json out.json
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_recording import make_frames  # noqa: E402

from scarls.episodes import EpisodeReader, EpisodeWriter, StepRecord, available_codecs  # noqa: E402
from scarls.episodes.codecs import get_frame_codec  # noqa: E402


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float('inf') if mse == 0 else 10 * np.log10(255.0**2 / mse)


def bench_codec(codec: str, frames: list[np.ndarray], root: Path, fsync: bool) -> dict:
    fc = get_frame_codec(codec)
    h, w, _ = frames[0].shape
    t0 = time.perf_counter()
    sizes = [len(fc.encode(f)) for f in frames]
    enc_s = time.perf_counter() - t0

    wr = EpisodeWriter(
        root,
        f'codec_{codec}',
        'bench',
        cameras=('top',),
        image_shape=(h, w),
        state_dim=1,
        action_dim=1,
        codec=codec,
        fsync=fsync,
    )
    t0 = time.perf_counter()
    for i, f in enumerate(frames):
        wr.append(StepRecord({'top': f}, [0.0], [0.0], False, float(i)))
    write_s = time.perf_counter() - t0
    ref = wr.finalize('success', None)

    arr = EpisodeReader(ref.path).images('top')
    t0 = time.perf_counter()
    decoded = [np.asarray(arr[i]) for i in range(len(frames))]
    dec_s = time.perf_counter() - t0
    quality = min(psnr(d, f) for d, f in zip(decoded, frames, strict=True))
    raw = frames[0].nbytes
    return {
        'codec': codec,
        'lossless': fc.lossless,
        'level': fc.level,
        'bytes_per_frame': float(np.mean(sizes)),
        'ratio': raw / float(np.mean(sizes)),
        'encode_fps': len(frames) / enc_s,
        'write_fps': len(frames) / write_s,
        'decode_ms': 1e3 * dec_s / len(frames),
        'min_psnr_db': quality,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    p.add_argument('--frames', type=int, default=60, help='distinct frames per codec')
    p.add_argument('--height', type=int, default=480)
    p.add_argument('--width', type=int, default=640)
    p.add_argument('--codecs', default=','.join(available_codecs()))
    p.add_argument('--no-fsync', action='store_true')
    p.add_argument('--json', type=Path, default=None, help='write results as JSON here')
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    frames = make_frames(args.frames, args.height, args.width, seed=0)
    results = []
    with tempfile.TemporaryDirectory(prefix='bench-codec-') as tmp:
        for codec in args.codecs.split(','):
            results.append(bench_codec(codec, frames, Path(tmp), not args.no_fsync))
    hdr = (
        f'{"codec":7} {"lossless":8} {"bytes/frame":>11} {"ratio":>6} {"enc f/s":>8} '
        f'{"write f/s":>9} {"decode":>8} {"PSNR min":>8}'
    )
    print(hdr)
    print('-' * len(hdr))
    for r in results:
        print(
            f'{r["codec"]:7} {str(r["lossless"]):8} {r["bytes_per_frame"]:11.0f} '
            f'{r["ratio"]:6.2f} {r["encode_fps"]:8.1f} {r["write_fps"]:9.1f} '
            f'{r["decode_ms"]:6.2f}ms {r["min_psnr_db"]:8.1f}'
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
