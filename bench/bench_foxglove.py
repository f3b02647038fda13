"""Benchmark: what does the Foxglove bridge (`scarls foxglove`) cost while a client watches?

For each camera resolution: a simulated ECU (`scarls ecu --episodes 0`, no learner; driver,
scheduler, actor, teleop as separate processes) in its own ROS domain, the bridge serving its
namespace, and one client on this host speaking Foxglove's WebSocket protocol (the
`websockets` package, subprotocol ``foxglove.sdk.v1``) subscribed to the three cameras,
``joint_states``, ``actor/state`` and ``driver/state``, as a Foxglove app showing the shipped
layout would be. After ``--warmup`` seconds (start, discovery, the subscriptions reaching ROS)
it measures over ``--seconds``:

* the bridge process's CPU in % of one core (psutil: user + system time over the window) and
  its resident memory at the end of the window;
* per camera, the frames per second that reached the client, and the bytes per second sent to
  it (all message frames, websocket payload);
* the 1-minute load average at the start and end of the window (the machine's other work).

    python bench/bench_foxglove.py                                   # 96x128 and 480x640, 60 s
    python bench/bench_foxglove.py --resolution 96x128 --seconds 30 --json foxglove.json

Results and the machine they were measured on: docs/FOXGLOVE.md ("Cost").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

from scarls.bringup.launcher import parent_death_preexec, pick_domain_id, ros_env

SUBPROTOCOL = 'foxglove.sdk.v1'
CAMERAS = ('top', 'left', 'right')
OTHER_TOPICS = ('joint_states', 'actor/state', 'driver/state')


def scarls_command() -> list[str]:
    exe = Path(sys.executable).with_name('scarls')
    return [str(exe)] if exe.exists() else [sys.executable, '-m', 'scarls.cli']


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def wait_for_line(path: Path, text: str, proc: subprocess.Popen, timeout: float) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if path.exists() and text in path.read_text(errors='replace'):
            return
        if proc.poll() is not None:
            raise RuntimeError(f'{proc.args[0]} exited (code {proc.returncode}); see {path}')
        time.sleep(0.2)
    raise RuntimeError(f'no "{text}" in {path} within {timeout:.0f} s')


def stop(proc: subprocess.Popen, grace: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


async def client_session(url: str, topics: list[str], warmup: float, seconds: float,
                         bridge: psutil.Process, deadline: float) -> dict:
    """Connect, subscribe to ``topics``, and count what arrives over the window."""
    import websockets

    while True:   # the bridge listens a moment after it starts
        try:
            ws = await websockets.connect(url, subprotocols=[SUBPROTOCOL], max_size=None)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)
    channels: dict[str, int] = {}
    counts = {t: 0 for t in topics}
    sent_bytes = 0
    counting = False
    subscribed: dict[int, str] = {}
    async with ws:
        async def pump(until: float) -> None:
            nonlocal sent_bytes
            while time.monotonic() < until:
                try:
                    frame = await asyncio.wait_for(ws.recv(), max(0.01, until - time.monotonic()))
                except TimeoutError:
                    return
                if isinstance(frame, str):
                    msg = json.loads(frame)
                    if msg.get('op') == 'advertise':
                        for ch in msg['channels']:
                            channels[ch['topic']] = ch['id']
                    continue
                if counting and frame[0] == 0x01:   # message data
                    counts[subscribed[int.from_bytes(frame[1:5], 'little')]] += 1
                    sent_bytes += len(frame)

        while not all(t in channels for t in topics):
            if time.monotonic() > deadline:
                missing = [t for t in topics if t not in channels]
                raise RuntimeError(f'the bridge never advertised {missing}')
            await pump(time.monotonic() + 0.5)
        subs = []
        for i, topic in enumerate(topics, start=1):
            subscribed[i] = topic
            subs.append({'id': i, 'channelId': channels[topic]})
        await ws.send(json.dumps({'op': 'subscribe', 'subscriptions': subs}))
        await pump(time.monotonic() + warmup)
        counting = True
        cpu0, t0, load0 = bridge.cpu_times(), time.monotonic(), os.getloadavg()[0]
        await pump(t0 + seconds)
        cpu1, t1, load1 = bridge.cpu_times(), time.monotonic(), os.getloadavg()[0]
        rss = bridge.memory_info().rss
    window = t1 - t0
    busy = (cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)
    return {'window_s': round(window, 1),
            'bridge_cpu_percent_of_one_core': round(100.0 * busy / window, 1),
            'bridge_rss_mb': round(rss / 1e6),
            'messages_per_s': {t: round(n / window, 1) for t, n in counts.items()},
            'sent_mb_per_s': round(sent_bytes / window / 1e6, 1),
            'load1_window_start': round(load0, 2), 'load1_window_end': round(load1, 2)}


def run(height: int, width: int, args, work: Path) -> dict:
    domain = pick_domain_id()
    env = ros_env(domain)
    root = work / f'{height}x{width}'
    root.mkdir(parents=True)
    minutes = (args.warmup + args.seconds + 90.0) / 60.0
    ecu_cmd = [*scarls_command(), 'ecu', '--episodes', '0', '--minutes', f'{minutes:.2f}',
               '--height', str(height), '--width', str(width), '--domain-id', str(domain),
               '--ecu-id', args.ecu_id, '--data-root', str(root / 'data')]
    port = free_port()
    bridge_cmd = [*scarls_command(), 'foxglove', '--domain-id', str(domain), '--namespace',
                  args.ecu_id, '--port', str(port)]
    topics = [f'/{args.ecu_id}/camera/{c}/image_raw' for c in CAMERAS] + \
        [f'/{args.ecu_id}/{t}' for t in OTHER_TOPICS]
    procs: list[subprocess.Popen] = []
    logs = []
    try:
        ecu_log = root / 'scarls_ecu.out'
        logs.append(open(ecu_log, 'wb'))  # noqa: SIM115 - closed in finally
        ecu = subprocess.Popen(ecu_cmd, env=env, stdout=logs[-1], stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL, preexec_fn=parent_death_preexec())
        procs.append(ecu)
        wait_for_line(ecu_log, 'ECU up', ecu, timeout=180)
        logs.append(open(root / 'foxglove.out', 'wb'))  # noqa: SIM115 - closed in finally
        bridge = subprocess.Popen(bridge_cmd, env=env, stdout=logs[-1],
                                  stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                  preexec_fn=parent_death_preexec())
        procs.append(bridge)
        result = asyncio.run(client_session(
            f'ws://127.0.0.1:{port}', topics, args.warmup, args.seconds,
            psutil.Process(bridge.pid), deadline=time.monotonic() + 120))
    finally:
        for proc in reversed(procs):
            stop(proc)
        for log in logs:
            log.close()
    cams = [result['messages_per_s'][t] for t in topics[:len(CAMERAS)]]
    result.update({'height': height, 'width': width, 'domain_id': domain,
                   'camera_frames_per_s': cams, 'ecu_command': ' '.join(ecu_cmd),
                   'bridge_command': ' '.join(bridge_cmd)})
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--resolution', default='96x128,480x640',
                        help='camera sizes HxW, comma-separated (default 96x128,480x640)')
    parser.add_argument('--seconds', type=float, default=60.0, help='measured window (s)')
    parser.add_argument('--warmup', type=float, default=10.0,
                        help='seconds between subscribing and the window')
    parser.add_argument('--ecu-id', default='ecu0')
    parser.add_argument('--json', type=Path, help='write the results to this file')
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in r.split('x')) for r in args.resolution.split(',')]
    results = []
    with tempfile.TemporaryDirectory(prefix='bench_foxglove_') as tmp:
        for height, width in sizes:
            res = run(height, width, args, Path(tmp))
            results.append(res)
            print(json.dumps(res), flush=True)
    print(f'\nmachine: {os.cpu_count()} cores; window {args.seconds:.0f} s after a '
          f'{args.warmup:.0f} s warm-up')
    print('| frames | bridge CPU (% of one core) | bridge RSS | per camera to the client | sent '
          '| load (1 min) |')
    print('|---|---|---|---|---|---|')
    for r in results:
        cams = r['camera_frames_per_s']
        print(f"| {r['height']} × {r['width']} | {r['bridge_cpu_percent_of_one_core']} % | "
              f"{r['bridge_rss_mb']} MB | {min(cams)}-{max(cams)} frames/s | "
              f"{r['sent_mb_per_s']} MB/s | {r['load1_window_start']}-{r['load1_window_end']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
