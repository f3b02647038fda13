"""Benchmark: the cost of a real camera's compressed stream on the receiving side.

One process publishes a 640x480 JPEG ``sensor_msgs/CompressedImage`` stream at 30 Hz (best
effort, as camera drivers publish; ``header.stamp`` = the publish time, ``frame_id`` = a
sequence number), another subscribes (best effort, depth 1, like the actor) and turns every
message into the policy's frame with ``scarls.camera.convert.msg_to_frame`` (JPEG decode + fit)
for each target size. Over the steady window (after ``--warmup`` seconds) it reports:

* latency: from the publish stamp to the converted frame (same host, same clock), p50/p99/max;
* conversion alone (decode + fit), p50;
* CPU of the subscriber and of the publisher process, in % of one core (psutil);
* frames dropped: published in the window but never converted.

The processes run in their own ROS domain (localhost discovery, the project's Fast DDS
shared-memory profile, see ``scarls.bringup.launcher.ros_env``).

    python bench/bench_camera_path.py                        # 96x128 and 480x640, 30 s each
    python bench/bench_camera_path.py --sizes 96x128 --seconds 60 --fit crop --json cam.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

TOPIC = 'bench/camera/image_raw/compressed'
SRC_H, SRC_W = 480, 640


# ------------------------------------------------------------------------------ the frames
def synthetic_frames(n: int, seed: int = 0) -> list[np.ndarray]:
    """``n`` 640x480 RGB frames with the statistics of a tabletop scene (smooth shading, edges,
    texture and sensor noise), so JPEG sizes and decode times are like a real camera's."""
    import cv2

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SRC_H, 0:SRC_W].astype(np.float32)
    base = np.stack([90 + 60 * x / SRC_W, 80 + 50 * y / SRC_H,
                     70 + 30 * (x + y) / (SRC_W + SRC_H)], axis=-1)
    texture = rng.normal(0, 12, (SRC_H // 4, SRC_W // 4, 3)).astype(np.float32)
    base += cv2.resize(texture, (SRC_W, SRC_H), interpolation=cv2.INTER_CUBIC)
    frames = []
    for i in range(n):
        img = base.copy()
        for k in range(6):   # objects moving across the table
            cx = int((100 + 90 * k + 7 * i) % SRC_W)
            cy = int(150 + 40 * k + 20 * np.sin(i / 5 + k))
            color = [int(c) for c in rng.integers(30, 230, 3)]
            cv2.rectangle(img, (cx - 30, cy - 20), (cx + 30, cy + 20), color, -1)
            cv2.circle(img, (cx, cy), 12, [255 - c for c in color], -1)
        img += rng.normal(0, 3, img.shape).astype(np.float32)
        frames.append(np.clip(img, 0, 255).astype(np.uint8))
    return frames


# ------------------------------------------------------------------------------ the processes
def run_publisher(args) -> None:
    import psutil
    import rclpy
    from sensor_msgs.msg import CompressedImage

    from scarls.camera.convert import encode_jpeg
    from scarls.ros import qos
    from scarls.ros.conversions import ns_to_stamp

    jpegs = [encode_jpeg(f, args.quality) for f in synthetic_frames(60)]
    rclpy.init(args=[])
    node = rclpy.create_node('bench_camera_pub')
    pub = node.create_publisher(CompressedImage, TOPIC, qos.CAMERA_LATEST)
    try:
        end = time.monotonic() + 30
        while pub.get_subscription_count() == 0 and time.monotonic() < end:
            time.sleep(0.05)
        if pub.get_subscription_count() == 0:
            raise SystemExit('no subscriber matched within 30 s')
        time.sleep(0.5)
        total = int((args.warmup + args.seconds) * args.rate)
        first = int(args.warmup * args.rate)
        me = psutil.Process()
        period = 1.0 / args.rate
        start = time.monotonic()
        cpu0 = wall0 = None
        for seq in range(total):
            due = start + seq * period
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            if seq == first:
                cpu0, wall0 = sum(me.cpu_times()[:2]), time.monotonic()
            msg = CompressedImage()
            msg.format = 'rgb8; jpeg compressed bgr8'
            msg.data = jpegs[seq % len(jpegs)]
            msg.header.frame_id = str(seq)
            msg.header.stamp = ns_to_stamp(time.time_ns())
            pub.publish(msg)
        cpu = 100 * (sum(me.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0)
        print(json.dumps({'published': total - first, 'first_seq': first, 'last_seq': total - 1,
                          'cpu_percent': cpu,
                          'jpeg_kb': float(np.mean([len(j) for j in jpegs]) / 1024)}),
              flush=True)
        time.sleep(1.0)   # let the last frames arrive before this writer goes away
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


def run_subscriber(args) -> None:
    import psutil
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CompressedImage

    from scarls.camera.convert import msg_to_frame
    from scarls.robot import CameraSpec
    from scarls.ros import qos

    height, width = (int(v) for v in args.size.split('x'))
    spec = CameraSpec('bench', source='ros', topic=TOPIC, compressed=True, height=height,
                      width=width, fit=args.fit)
    first = int(args.warmup * args.rate)
    records: list[tuple[int, int, int]] = []   # seq, latency ns, conversion ns
    me = psutil.Process()
    marks: dict[str, float] = {}

    def on_image(msg) -> None:
        t0 = time.perf_counter_ns()
        frame, stamp_ns = msg_to_frame(msg, spec)
        done = time.time_ns()
        seq = int(msg.header.frame_id)
        if frame.shape != (height, width, 3):
            raise SystemExit(f'frame of shape {frame.shape}')
        if seq >= first:
            if not records:
                marks['cpu0'], marks['wall0'] = sum(me.cpu_times()[:2]), time.monotonic()
            records.append((seq, done - stamp_ns, time.perf_counter_ns() - t0))
            marks['cpu1'], marks['wall1'] = sum(me.cpu_times()[:2]), time.monotonic()
        marks['last'] = time.monotonic()

    rclpy.init(args=[])
    node = rclpy.create_node('bench_camera_sub')
    node.create_subscription(CompressedImage, TOPIC, on_image, qos.CAMERA_LATEST)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        deadline = time.monotonic() + 60 + args.warmup + args.seconds
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
            if records and time.monotonic() - marks['last'] > 3.0:
                break   # the stream ended
        if len(records) < 2:
            raise SystemExit('fewer than 2 frames received in the window')
        wall = marks['wall1'] - marks['wall0']
        print(json.dumps({
            'seqs': [r[0] for r in records],
            'latency_ms': [r[1] / 1e6 for r in records],
            'convert_ms': [r[2] / 1e6 for r in records],
            'cpu_percent': 100 * (marks['cpu1'] - marks['cpu0']) / wall if wall > 0 else None,
        }), flush=True)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()


# ------------------------------------------------------------------------------ orchestration
def machine() -> dict:
    model = ''
    try:
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    except OSError:
        pass
    return {'nproc': os.cpu_count(), 'cpu': model or platform.processor(),
            'python': platform.python_version(), 'load1': os.getloadavg()[0]}


def one_run(args, size: str) -> dict:
    from scarls.bringup.launcher import clean_fastdds_shm, pick_domain_id, ros_env

    env = ros_env(pick_domain_id())
    common = [sys.executable, __file__, '--warmup', str(args.warmup), '--seconds',
              str(args.seconds), '--rate', str(args.rate), '--quality', str(args.quality),
              '--fit', args.fit, '--size', size]
    load0 = os.getloadavg()[0]
    sub = subprocess.Popen([*common, '--role', 'sub'], env=env, stdout=subprocess.PIPE, text=True)
    time.sleep(0.5)
    pub = subprocess.Popen([*common, '--role', 'pub'], env=env, stdout=subprocess.PIPE, text=True)
    limit = 120 + args.warmup + args.seconds
    try:
        pub_out, _ = pub.communicate(timeout=limit)
        sub_out, _ = sub.communicate(timeout=limit)
    finally:
        killed = False
        for p in (pub, sub):
            if p.poll() is None:
                p.kill()
                killed = True
        if killed:
            clean_fastdds_shm()
    if pub.returncode or sub.returncode:
        raise SystemExit(f'a benchmark process failed (publisher {pub.returncode}, '
                         f'subscriber {sub.returncode})')
    p = json.loads(pub_out.strip().splitlines()[-1])
    s = json.loads(sub_out.strip().splitlines()[-1])
    seqs = set(s['seqs'])
    window = range(p['first_seq'], p['last_seq'] + 1)
    lat, conv = np.array(s['latency_ms']), np.array(s['convert_ms'])
    return {
        'size': size, 'fit': args.fit, 'published': p['published'],
        'received': len(seqs & set(window)),
        'dropped': sum(1 for q in window if q not in seqs),
        'latency_p50_ms': float(np.percentile(lat, 50)),
        'latency_p99_ms': float(np.percentile(lat, 99)),
        'latency_max_ms': float(lat.max()),
        'convert_p50_ms': float(np.percentile(conv, 50)),
        'sub_cpu_percent': s['cpu_percent'], 'pub_cpu_percent': p['cpu_percent'],
        'jpeg_kb': p['jpeg_kb'], 'load1_start': load0, 'load1_end': os.getloadavg()[0],
    }


def print_table(m: dict, rows: list[dict], args) -> None:
    print(f'\nmachine: {m["nproc"]} cores, {m["cpu"]}, Python {m["python"]}')
    print(f'stream: {SRC_W}x{SRC_H} JPEG q{args.quality} (~{rows[0]["jpeg_kb"]:.0f} KB/frame) '
          f'at {args.rate:g} Hz, best effort; window {args.seconds:g} s after {args.warmup:g} s '
          'warm-up\n')
    head = ('target', 'fit', 'published', 'dropped', 'lat p50', 'lat p99', 'lat max',
            'convert p50', 'sub CPU', 'pub CPU', 'load1')
    print('| ' + ' | '.join(head) + ' |')
    print('|' + '---|' * len(head))
    for r in rows:
        print(f'| {r["size"]} | {r["fit"]} | {r["published"]} | {r["dropped"]} | '
              f'{r["latency_p50_ms"]:.1f} ms | {r["latency_p99_ms"]:.1f} ms | '
              f'{r["latency_max_ms"]:.1f} ms | {r["convert_p50_ms"]:.2f} ms | '
              f'{r["sub_cpu_percent"]:.0f} % | {r["pub_cpu_percent"]:.0f} % | '
              f'{r["load1_start"]:.1f}-{r["load1_end"]:.1f} |')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--sizes', default='96x128,480x640', help='targets HxW, comma-separated')
    ap.add_argument('--fit', default='resize', choices=('resize', 'crop'))
    ap.add_argument('--seconds', type=float, default=30.0, help='measured window per target')
    ap.add_argument('--warmup', type=float, default=3.0)
    ap.add_argument('--rate', type=float, default=30.0)
    ap.add_argument('--quality', type=int, default=90, help='JPEG quality of the stream')
    ap.add_argument('--json', help='also write the results here')
    ap.add_argument('--role', choices=('pub', 'sub'), help=argparse.SUPPRESS)
    ap.add_argument('--size', help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.role == 'pub':
        run_publisher(args)
        return 0
    if args.role == 'sub':
        run_subscriber(args)
        return 0
    m = machine()
    rows = []
    for size in args.sizes.split(','):
        print(f'{size}: {args.warmup + args.seconds:g} s ...', flush=True)
        rows.append(one_run(args, size.strip()))
    print_table(m, rows, args)
    if args.json:
        Path(args.json).write_text(json.dumps({'machine': m, 'rows': rows}, indent=2))
    return 0


if __name__ == '__main__':
    sys.exit(main())
