"""Benchmark: does `scarls bag record` keep up with an ECU's cameras?

A publisher process sends three 480x640 RGB camera streams at 30 Hz (reliable, the cameras' QoS)
for ``--seconds``; `scarls bag record` runs as its own process (raw subscriptions, MCAP or
SQLite 3). Reported: frames published vs recorded per camera, drops (missing sequence numbers),
out-of-order frames, the recorder's CPU (% of one core, over the publishing window), its peak
memory, and the MB/s written.

    python bench/bench_bag_record.py --seconds 20 --storage mcap --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

from scarls.bringup.launcher import clean_fastdds_shm, pick_domain_id, ros_env  # noqa: E402

CAMS = ('top', 'left', 'right')
NS = 'benchbag'


def publisher(seconds: float, height: int, width: int, fps: float) -> None:
    """Child process: publish the cameras once the recorder is subscribed; print counts."""
    import rclpy
    from sensor_msgs.msg import Image

    from scarls.ros import qos
    from scarls.ros.conversions import image_to_msg, ns_to_stamp

    rclpy.init()
    node = rclpy.create_node('bench_cameras', namespace=NS)
    pubs = {c: node.create_publisher(Image, f'camera/{c}/image_raw', qos.CAMERA) for c in CAMS}
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (height, width, 3), dtype=np.uint8) for _ in range(4)]
    msgs = {c: image_to_msg(frames[i], ns_to_stamp(0), c) for i, c in enumerate(CAMS)}
    end = time.monotonic() + 30
    while time.monotonic() < end and not all(p.get_subscription_count() for p in pubs.values()):
        rclpy.spin_once(node, timeout_sec=0.05)
    time.sleep(1.0)   # the recorder's subscriptions are matched: let them settle
    sent = 0
    period = 1.0 / fps
    t0 = time.monotonic()
    next_t = t0
    late = 0
    while time.monotonic() - t0 < seconds:
        stamp = ns_to_stamp(time.time_ns())
        for c in CAMS:
            m = msgs[c]
            m.header.stamp = stamp
            m.header.frame_id = f'{c}:{sent}'
            pubs[c].publish(m)
        sent += 1
        next_t += period
        wait = next_t - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        else:
            late += 1
    elapsed = time.monotonic() - t0
    time.sleep(1.0)   # reliable: let the recorder fetch the last samples
    print(json.dumps({'sent_per_camera': sent, 'elapsed_s': elapsed, 'late_ticks': late,
                      'window': [t0, t0 + elapsed]}), flush=True)
    node.destroy_node()
    rclpy.try_shutdown()


def run(seconds: float, storage: str, height: int, width: int, fps: float,
        workdir: Path) -> dict:
    env = ros_env(pick_domain_id())
    bag = workdir / f'bench_{storage}'
    rec_log = (workdir / 'recorder.log').open('w')
    rec = subprocess.Popen(
        [sys.executable, '-m', 'scarls.cli.bag', 'record', '-o', str(bag), '-s', storage,
         '--namespace', NS, '--json'], env=env, stdout=subprocess.PIPE, stderr=rec_log,
        text=True)
    proc = psutil.Process(rec.pid)
    time.sleep(2.0)
    pub = subprocess.Popen(
        [sys.executable, __file__, '--publisher', '--seconds', str(seconds), '--height',
         str(height), '--width', str(width), '--fps', str(fps)], env=env,
        stdout=subprocess.PIPE, text=True)
    # CPU of the recorder over the publishing window: sample while the publisher runs
    cpu0 = None
    peak_rss = 0
    t_cpu0 = 0.0
    while pub.poll() is None:
        times = proc.cpu_times()
        peak_rss = max(peak_rss, proc.memory_info().rss)
        if cpu0 is None and time.monotonic() > 0:
            cpu0, t_cpu0 = times.user + times.system, time.monotonic()
        cpu1, t_cpu1 = times.user + times.system, time.monotonic()
        time.sleep(0.25)
    out, _ = pub.communicate()
    pubres = json.loads(out.strip().splitlines()[-1])
    rec.send_signal(signal.SIGINT)
    summary = json.loads(rec.communicate(timeout=60)[0])
    rec_log.close()
    cpu_pct = 100.0 * (cpu1 - cpu0) / max(1e-9, t_cpu1 - t_cpu0)

    from scarls.bags.io import BagReader
    seen: dict[str, list[int]] = {c: [] for c in CAMS}
    with BagReader(bag) as reader:
        for msg in reader.messages():
            m = reader.decoded(msg)
            cam, _, seq = m.header.frame_id.partition(':')
            seen[cam].append(int(seq))
    sent = pubres['sent_per_camera']
    per_cam = {}
    for c in CAMS:
        got = seen[c]
        per_cam[c] = {'published': sent, 'recorded': len(got),
                      'dropped': len(set(range(sent)) - set(got)),
                      'out_of_order': sum(1 for a, b in zip(got, got[1:], strict=False)
                                          if b < a)}
    size = sum(f.stat().st_size for f in bag.iterdir())
    return {'storage': storage, 'seconds': pubres['elapsed_s'], 'fps': fps,
            'image': [height, width, 3], 'cameras': per_cam,
            'publisher_late_ticks': pubres['late_ticks'],
            'recorder_cpu_percent_of_one_core': round(cpu_pct, 1),
            'recorder_peak_rss_mb': round(peak_rss / 1e6, 1),
            'recorder_max_queue': summary['max_queue'],
            'recorder_exit_code': rec.returncode, 'recorder_error': summary['error'],
            'load_average_1min_after': round(os.getloadavg()[0], 2),
            'bag_mb': round(size / 1e6, 1),
            'write_mb_per_s': round(summary['bytes'] / 1e6 / pubres['elapsed_s'], 1)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--seconds', type=float, default=20.0)
    ap.add_argument('--storage', default='mcap', help='mcap, sqlite3 or mcap,sqlite3')
    ap.add_argument('--height', type=int, default=480)
    ap.add_argument('--width', type=int, default=640)
    ap.add_argument('--fps', type=float, default=30.0)
    ap.add_argument('--workdir', default=None, help='where bags go (default: a temp dir)')
    ap.add_argument('--keep', action='store_true', help='keep the bags')
    ap.add_argument('--json', default=None, help='write the results to this file')
    ap.add_argument('--publisher', action='store_true', help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.publisher:
        publisher(args.seconds, args.height, args.width, args.fps)
        return 0
    results = {'machine': {'cpus': os.cpu_count(), 'cpu': platform.processor() or
                           platform.machine(), 'python': platform.python_version(),
                           'load_average_1min_before': round(os.getloadavg()[0], 2)},
               'runs': []}
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for storage in args.storage.split(','):
            res = run(args.seconds, storage, args.height, args.width, args.fps, Path(tmp))
            results['runs'].append(res)
            print(json.dumps(res, indent=1))
            if not args.keep:
                import shutil
                shutil.rmtree(Path(tmp) / f'bench_{storage}', ignore_errors=True)
    clean_fastdds_shm()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
