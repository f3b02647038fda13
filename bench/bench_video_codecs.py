"""Benchmark: candidate codecs for the compressed episode mode (short GOPs per zarr chunk).

For each option - a video codec through PyAV with a closed GOP of K frames per chunk (no B
frames), or a per-frame image codec - on the synthetic camera frames of the loader comparison
(``bench/synth_frames.py``: 480x640 scenes with +-3 sensor noise, one camera, consecutive steps)
or the simulator's renderer (``--frames sim``), it measures:

* bytes per frame;
* encode frames/s on one thread (RGB -> YUV 4:2:0 with OpenCV, then the encoder; a fresh
  encoder per chunk, as compaction does);
* random-access decode ms per frame: a random frame, decoding its chunk from the GOP's first
  frame up to it, one decoder thread, conversion to RGB included;
* encoding and decoding are interleaved across the options (chunk by chunk, read by read), so
  every option sees the same machine load;
* PSNR against the source frame (mean and min over the random frames).

    .venv/bin/python bench/bench_video_codecs.py --frames synth --gops 1,2,4,8 --json video.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from fractions import Fraction
from pathlib import Path

os.environ.setdefault('SVT_LOG', '1')  # SVT-AV1 prints its configuration otherwise

import av  # noqa: E402
import cv2  # noqa: E402
import imagecodecs  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / 'src'))
sys.path.insert(0, str(HERE))

from scarls.episodes.codecs import decode_video_chunk, encode_video_chunk  # noqa: E402

# name -> (encoder, options, decoder)
VIDEO = {
    'h264 ultrafast crf28 (scarls)': None,  # the project's codec (scarls.episodes.codecs)
    'h264 ultrafast crf23': ('libx264', {'preset': 'ultrafast', 'crf': '23',
                                         'tune': 'zerolatency'}, 'h264'),
    'h264 veryfast crf28': ('libx264', {'preset': 'veryfast', 'crf': '28',
                                        'tune': 'zerolatency'}, 'h264'),
    'hevc ultrafast crf28': ('libx265', {'preset': 'ultrafast', 'crf': '28',
                                         'x265-params': 'log-level=0'}, 'hevc'),
    'av1 svt p10 crf35 (dav1d)': ('libsvtav1', {'preset': '10', 'crf': '35'}, 'libdav1d'),
    'av1 svt p12 crf30 (dav1d)': ('libsvtav1', {'preset': '12', 'crf': '30'}, 'libdav1d'),
    'vp9 realtime cpu8 crf35': ('libvpx-vp9', {'deadline': 'realtime', 'cpu-used': '8',
                                               'crf': '35', 'b': '0'}, 'vp9'),
}
IMAGE = {
    'jpeg q90 (per frame)': (lambda f: imagecodecs.jpeg8_encode(f, level=90),
                             imagecodecs.jpeg8_decode),
    'avif q80 speed10 (per frame)': (lambda f: imagecodecs.avif_encode(f, level=80, speed=10),
                                     imagecodecs.avif_decode),
}


def frames_of(kind: str, n: int) -> list[np.ndarray]:
    if kind == 'synth':
        import synth_frames

        return [synth_frames.frame(0, 0, 0, t) for t in range(n)]
    from scarls.sim import DualArmSim, ScriptedExpert, SimConfig

    sim = DualArmSim(SimConfig(height=480, width=640))
    expert = ScriptedExpert(sim.config)
    sim.reset(0)
    out = []
    for _ in range(n):
        out.append(sim.render('top'))
        sim.step(expert.action(sim.joint_positions(), sim.task_state()))
    return out


def encode_pyav(spec: tuple, chunk: list[np.ndarray]) -> list[bytes]:
    encoder, opts, _dec = spec
    ctx = av.CodecContext.create(encoder, 'w')
    ctx.width, ctx.height, ctx.pix_fmt = 640, 480, 'yuv420p'
    ctx.time_base, ctx.framerate = Fraction(1, 30), Fraction(30)
    ctx.gop_size, ctx.max_b_frames, ctx.thread_count = len(chunk), 0, 1
    ctx.options = dict(opts)
    packets = []
    for f in chunk:
        yuv = cv2.cvtColor(f, cv2.COLOR_RGB2YUV_I420)
        packets += [bytes(p) for p in ctx.encode(av.VideoFrame.from_ndarray(yuv, 'yuv420p'))]
    return packets + [bytes(p) for p in ctx.encode(None)]


def decode_pyav(spec: tuple, packets: list[bytes], j: int, ctx, out: np.ndarray) -> None:
    seen = 0
    got = None
    for p in packets:
        for fr in ctx.decode(av.Packet(p)):
            if seen == j:
                got = fr
            seen += 1
        if got is not None:
            break
    if got is None:
        for fr in ctx.decode(None):
            if seen == j:
                got = fr
            seen += 1
    ctx.flush_buffers()
    cv2.cvtColor(got.to_ndarray(), cv2.COLOR_YUV2RGB_I420, dst=out)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(255.0**2 / max(np.mean((a.astype(np.float64) - b) ** 2), 1e-12)))


class Option:
    """One codec option at one GOP: ``encode(frames) -> chunk``, ``decode(chunk, j, out)``."""

    def __init__(self, name: str, gop: int) -> None:
        self.name, self.gop = name, gop
        self.ctx = None
        if name in VIDEO and VIDEO[name] is not None:
            self.ctx = av.CodecContext.create(VIDEO[name][2], 'r')
            self.ctx.thread_count = 1

    def encode(self, chunk: list[np.ndarray]):
        if self.name in IMAGE:
            return bytes(IMAGE[self.name][0](chunk[0]))
        if VIDEO[self.name] is None:
            return encode_video_chunk(np.stack(chunk))
        return encode_pyav(VIDEO[self.name], chunk)

    def nbytes(self, blob) -> int:
        return sum(len(p) for p in blob) if isinstance(blob, list) else len(blob)

    def decode(self, blob, j: int, k: int, out: np.ndarray) -> None:
        if self.name in IMAGE:
            IMAGE[self.name][1](blob, out=out)
        elif VIDEO[self.name] is None:
            decode_video_chunk(blob, k, out[None], first=j)
        else:
            decode_pyav(VIDEO[self.name], blob, j, self.ctx, out)


def bench_options(options: list[Option], frames: list[np.ndarray], reads: np.ndarray) -> list:
    """Encode and decode with every option, interleaved (the same load for all of them)."""
    n = len(frames)
    chunks: dict[int, list] = {id(o): [] for o in options}
    enc_s = dict.fromkeys(chunks, 0.0)
    for start in range(0, n, 8):  # 8 = a multiple of every GOP tried
        for o in options:
            for i in range(start, min(start + 8, n), o.gop):
                s = time.perf_counter()
                chunks[id(o)].append(o.encode(frames[i:i + o.gop]))
                enc_s[id(o)] += time.perf_counter() - s
    out = np.empty_like(frames[0])
    times: dict[int, list] = {id(o): [] for o in options}
    quality: dict[int, list] = {id(o): [] for o in options}
    for t in reads:
        for o in options:
            blob = chunks[id(o)][t // o.gop]
            s = time.perf_counter()
            o.decode(blob, t % o.gop, min(o.gop, n - (t // o.gop) * o.gop), out)
            times[id(o)].append(time.perf_counter() - s)
            quality[id(o)].append(psnr(out, frames[t]))
    rows = []
    for o in options:
        ms = np.asarray(times[id(o)][3:]) * 1e3  # the first reads open the decoder
        rows.append({
            'option': o.name, 'gop': o.gop,
            'bytes_per_frame': round(sum(o.nbytes(c) for c in chunks[id(o)]) / n),
            'encode_fps': round(n / enc_s[id(o)], 1), 'decode_ms': round(float(ms.mean()), 3),
            'decode_ms_median': round(float(np.median(ms)), 3),
            'psnr_mean': round(float(np.mean(quality[id(o)])), 2),
            'psnr_min': round(float(np.min(quality[id(o)])), 2)})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n\n', 1)[1])
    p.add_argument('--frames', choices=('synth', 'sim'), default='synth')
    p.add_argument('--n', type=int, default=64, help='consecutive frames (default 64)')
    p.add_argument('--gops', default='1,2,4,8', help='frames per chunk to try')
    p.add_argument('--reads', type=int, default=60, help='random frame reads per option')
    p.add_argument('--options', default='', help='comma-separated substrings to select options')
    p.add_argument('--json', type=Path)
    args = p.parse_args(argv)
    cv2.setNumThreads(1)
    frames = frames_of(args.frames, args.n)
    reads = np.random.default_rng(0).integers(0, args.n, args.reads)
    sel = [s for s in args.options.split(',') if s]
    options = [Option(name, gop) for name in [*VIDEO, *IMAGE]
               if not sel or any(x in name for x in sel)
               for gop in ([1] if name in IMAGE else [int(g) for g in args.gops.split(',')])]
    load0 = os.getloadavg()
    rows = bench_options(options, frames, reads)
    print(f'frames: {args.frames} 480x640, {args.n}; load {load0} -> {os.getloadavg()}; '
          'encode and decode interleaved across the options')
    print(f'{"option":32} {"K":>2} {"B/frame":>8} {"enc f/s":>8} {"dec ms":>7} {"median":>6} '
          f'{"PSNR":>6} {"min":>6}')
    for r in rows:
        print(f'{r["option"]:32} {r["gop"]:2d} {r["bytes_per_frame"]:8d} {r["encode_fps"]:8.1f} '
              f'{r["decode_ms"]:7.2f} {r["decode_ms_median"]:6.2f} {r["psnr_mean"]:6.2f} '
              f'{r["psnr_min"]:6.2f}')
    if args.json:
        args.json.write_text(json.dumps({'frames': args.frames, 'n': args.n, 'rows': rows,
                                         'loadavg': [load0, os.getloadavg()]}, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
