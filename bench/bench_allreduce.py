"""Benchmark the fleet's all-reduce over Gloo on loopback against the ring all-reduce bound.

For every (parameter size S, number of ECU processes N):

* raw     one ``ProcessGroupGloo.allreduce`` of an S-byte float32 buffer (a barrier before
          each repetition; median over repetitions of the slowest rank), its algorithm
          bandwidth S / t, and the ring bound ``2 (N - 1) / N * S / B`` where B is this
          machine's loopback TCP bandwidth, measured first (one process streams a buffer to
          another over a 127.0.0.1 socket);
* round   one :meth:`scarls.fleet.FleetReducer.reduce` with the same parameters (rendezvous,
          membership, readiness, a fresh process group, flatten + scale + all-reduce + write
          back), median of the ranks' ``reduce_seconds`` and whole-call ``seconds``;
* memory  peak RSS per process.

Combinations whose estimated memory, N * (3 S + 0.4 GB) (the parameter, the flat buffer, the raw
buffer and a torch process), exceeds ``--max-memory-gb`` are skipped and listed as such.

It also reports what sending only the trainable parameters saves for the ACT policy with a
frozen ResNet-18 backbone (``freeze_backbone=True``) against sending its whole state dict
(``--act-round`` also times a fleet round of both variants with two processes).

    .venv/bin/python bench/bench_allreduce.py --sizes-mb 10,100 --procs 2,3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import platform
import queue
import resource
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

MB = 1e6
TORCH_PROCESS_GB = 0.4  # resident size of an idle torch process, for the memory estimate


def machine_info() -> dict:
    model = ''
    try:
        out = subprocess.run(
            ['lscpu'], capture_output=True, text=True, timeout=10, check=False
        ).stdout
        for line in out.splitlines():
            if line.startswith('Model name'):
                model = line.split(':', 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    mem_gb = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 1e9
    import torch

    return {
        'nproc': os.cpu_count(),
        'cpu_model': model,
        'mem_gb': round(mem_gb, 1),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'torch': torch.__version__,
    }


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


# -- loopback bandwidth -------------------------------------------------------------------------

_CHUNK = 4 << 20


def _bw_sender(port: int, total: int) -> None:
    payload = memoryview(bytearray(os.urandom(1024)) * (_CHUNK // 1024))
    with socket.create_connection(('127.0.0.1', port)) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sent = 0
        while sent < total:
            n = min(_CHUNK, total - sent)
            s.sendall(payload[:n])
            sent += n


def loopback_bandwidth(total_bytes: int, repeat: int) -> dict:
    """Bytes/s of one TCP stream over 127.0.0.1 between two processes (best and median)."""
    ctx = mp.get_context('spawn')
    rates = []
    buf = bytearray(_CHUNK)
    view = memoryview(buf)
    for _ in range(repeat):
        with socket.socket() as srv:
            srv.bind(('127.0.0.1', 0))
            srv.listen(1)
            proc = ctx.Process(target=_bw_sender, args=(srv.getsockname()[1], total_bytes))
            proc.start()
            try:
                conn, _ = srv.accept()
                with conn:
                    got = conn.recv_into(view)
                    t0 = time.perf_counter()
                    while got < total_bytes:
                        n = conn.recv_into(view)
                        if n == 0:
                            break
                        got += n
                    dt = time.perf_counter() - t0
            finally:
                proc.join(30)
                if proc.is_alive():
                    proc.kill()
        rates.append((got - _CHUNK) / dt)
    return {
        'bytes_per_s': max(rates),
        'median_bytes_per_s': statistics.median(rates),
        'total_bytes': total_bytes,
        'repeat': repeat,
    }


# -- all-reduce workers -------------------------------------------------------------------------


def _worker(
    port: int, rank: int, n: int, numel: int, repeat: int, ns: str, q: Any, go: Any
) -> None:
    import datetime

    import torch
    import torch.distributed as dist
    from torch import nn

    from scarls.fleet import FleetConfig, FleetReducer, Rendezvous

    torch.set_num_threads(1)
    try:
        model = nn.Module()
        model.w = nn.Parameter(torch.full((numel,), float(rank + 1)))
        cfg = FleetConfig(
            threshold=1.0,
            deadline_s=600.0,
            ready_timeout_s=120.0,
            reduce_timeout_s=1800.0,
            store_timeout_s=60.0,
            namespace=ns,
        )
        reducer = FleetReducer(
            cfg, f'ecu{rank}', rendezvous=Rendezvous('127.0.0.1', port, rank, n)
        )
        q.put(('ready', rank, None))
        go.wait(600)
        rounds = []
        for _ in range(repeat + 1):
            res = reducer.reduce(model, 0.01)
            if res.status != 'reduced':
                raise RuntimeError(f'round {res.round}: {res.status} ({res.reason})')
            rounds.append(
                {
                    'seconds': res.seconds,
                    'reduce_seconds': res.reduce_seconds,
                    'wait_seconds': res.wait_seconds,
                    'payload_bytes': res.payload_bytes,
                }
            )
        del model
        store = dist.TCPStore(
            '127.0.0.1', port, None, False, datetime.timedelta(seconds=60), wait_for_workers=False
        )
        gloo = dist.ProcessGroupGloo
        opts = gloo._Options()
        opts._timeout = datetime.timedelta(seconds=1800)
        opts._devices = [gloo.create_device(hostname='127.0.0.1')]
        pg = gloo(dist.PrefixStore(f'{ns}/raw', store), rank, n, opts)
        buf = torch.ones(numel)
        raw = []
        for _ in range(repeat + 1):
            pg.barrier().wait()
            t0 = time.perf_counter()
            pg.allreduce([buf]).wait()
            raw.append(time.perf_counter() - t0)
        del pg
        reducer.close()
        q.put(
            ('result', rank, {'rounds': rounds[1:], 'raw': raw[1:], 'peak_rss_mb': peak_rss_mb()})
        )
    except Exception as e:  # reported to the parent, which marks the combination failed
        q.put(('error', rank, f'{type(e).__name__}: {e}'))


def run_combo(size_bytes: int, n: int, repeat: int, timeout_s: float) -> dict:
    from scarls.fleet import serve_rendezvous

    ctx = mp.get_context('spawn')
    q = ctx.Queue()
    go = ctx.Event()
    ns = f'bench/{size_bytes}/{n}'
    host = serve_rendezvous('127.0.0.1', 0)
    procs = [
        ctx.Process(target=_worker, args=(host.port, k, n, size_bytes // 4, repeat, ns, q, go))
        for k in range(n)
    ]
    msgs: dict[str, dict[int, Any]] = {'ready': {}, 'result': {}, 'error': {}}
    try:
        for p in procs:
            p.start()
        end = time.monotonic() + timeout_s
        while time.monotonic() < end:
            if len(msgs['ready']) == n:
                go.set()
            if len(msgs['result']) + len(msgs['error']) == n:
                break
            if any(p.exitcode not in (None, 0) for p in procs):
                break
            try:
                kind, rank, payload = q.get(timeout=0.5)
                msgs[kind][rank] = payload
            except queue.Empty:
                pass
    finally:
        for p in procs:
            if p.is_alive() and len(msgs['result']) < n:
                p.kill()
        for p in procs:
            p.join(30)
            if p.is_alive():
                p.kill()
        host.close()
    if msgs['error'] or len(msgs['result']) < n:
        return {
            'status': 'failed',
            'error': '; '.join(msgs['error'].values()) or 'timeout or crash',
        }
    res = msgs['result']
    raw = [max(res[k]['raw'][i] for k in res) for i in range(repeat)]
    reduce_s = [r['reduce_seconds'] for k in res for r in res[k]['rounds']]
    round_s = [r['seconds'] for k in res for r in res[k]['rounds']]
    return {
        'status': 'ok',
        'raw_s': statistics.median(raw),
        'raw_min_s': min(raw),
        'round_reduce_s': statistics.median(reduce_s),
        'round_s': statistics.median(round_s),
        'payload_bytes': res[0]['rounds'][0]['payload_bytes'],
        'peak_rss_mb': max(res[k]['peak_rss_mb'] for k in res),
    }


# -- trainable-only savings ---------------------------------------------------------------------


def act_savings(config: dict) -> list[dict]:
    from scarls.fleet import state_bytes, trainable_parameters
    from scarls.policies import make_policy

    out = []
    for frozen in (False, True):
        policy = make_policy('act', {**config, 'freeze_backbone': frozen})
        sent = sum(p.numel() * 4 for _, p in trainable_parameters(policy))
        full = state_bytes(policy)
        out.append(
            {
                'policy': 'act',
                'freeze_backbone': frozen,
                'sent_bytes': sent,
                'state_bytes': full,
                'saved_bytes': full - sent,
                'saved_fraction': (full - sent) / full,
            }
        )
    return out


def _act_worker(port: int, rank: int, config: dict, frozen: bool, q: Any) -> None:
    import torch

    from scarls.fleet import FleetConfig, FleetReducer, Rendezvous
    from scarls.policies import make_policy

    torch.set_num_threads(1)
    policy = make_policy('act', {**config, 'freeze_backbone': frozen})
    red = FleetReducer(
        FleetConfig(deadline_s=120.0, reduce_timeout_s=600.0, namespace=f'act/{frozen}'),
        rendezvous=Rendezvous('127.0.0.1', port, rank, 2),
    )
    res = [red.reduce(policy, 0.01) for _ in range(3)]
    q.put((rank, [(r.status, r.reduce_seconds, r.payload_bytes) for r in res[1:]]))


def act_rounds(config: dict) -> list[dict]:
    from scarls.fleet import serve_rendezvous

    ctx = mp.get_context('spawn')
    out = []
    for frozen in (False, True):
        q = ctx.Queue()
        with serve_rendezvous('127.0.0.1', 0) as host:
            procs = [
                ctx.Process(target=_act_worker, args=(host.port, k, config, frozen, q))
                for k in range(2)
            ]
            try:
                for p in procs:
                    p.start()
                got = [q.get(timeout=600) for _ in procs]
            finally:
                for p in procs:
                    p.join(30)
                    if p.is_alive():
                        p.kill()
        times = [t for _, rs in got for status, t, _ in rs if status == 'reduced']
        out.append(
            {
                'freeze_backbone': frozen,
                'processes': 2,
                'payload_bytes': got[0][1][0][2],
                'round_reduce_s': statistics.median(times) if times else None,
            }
        )
    return out


# -- report -------------------------------------------------------------------------------------


def report(doc: dict) -> None:
    m = doc['machine']
    bw = doc['loopback']['bytes_per_s']
    print(
        f'machine: {m["nproc"]} cores, {m["cpu_model"]}, {m["mem_gb"]} GB; torch {m["torch"]}; '
        f'load avg before {doc["loadavg_before"]}, after {doc["loadavg_after"]}'
    )
    print(
        f'loopback TCP bandwidth B = {bw / 1e9:.2f} GB/s (best of {doc["loopback"]["repeat"]}; '
        f'median {doc["loopback"]["median_bytes_per_s"] / 1e9:.2f} GB/s)'
    )
    print(
        f'{"size MB":>8} {"N":>2} {"raw s":>8} {"algbw GB/s":>10} {"ring bound s":>12} '
        f'{"raw/bound":>9} {"round s":>8} {"reduce s":>8} {"RSS MB":>7}  status'
    )
    for r in doc['results']:
        head = f'{r["size_mb"]:8.0f} {r["procs"]:2d}'
        if r['status'] != 'ok':
            print(
                f'{head} {"":>8} {"":>10} {r["ring_bound_s"]:12.3f} {"":>9} {"":>8} {"":>8} '
                f'{"":>7}  {r["status"]}: {r.get("error", "")}'
            )
            continue
        print(
            f'{head} {r["raw_s"]:8.3f} {r["size_mb"] * MB / r["raw_s"] / 1e9:10.2f} '
            f'{r["ring_bound_s"]:12.3f} {r["raw_s"] / r["ring_bound_s"]:9.2f} '
            f'{r["round_s"]:8.3f} {r["round_reduce_s"]:8.3f} {r["peak_rss_mb"]:7.0f}  ok'
        )
    for s in doc['act_savings']:
        print(
            f'act freeze_backbone={s["freeze_backbone"]!s:5}: sends '
            f'{s["sent_bytes"] / MB:.1f} MB of a {s["state_bytes"] / MB:.1f} MB state dict '
            f'(saves {s["saved_bytes"] / MB:.1f} MB, {s["saved_fraction"]:.1%})'
        )
    for a in doc.get('act_rounds', []):
        print(
            f'act freeze_backbone={a["freeze_backbone"]!s:5}: fleet round with 2 processes '
            f'{a["round_reduce_s"]:.3f} s for {a["payload_bytes"] / MB:.1f} MB'
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split('\n\n', 1)[1],
    )
    p.add_argument(
        '--sizes-mb',
        default='10,100,500,1700',
        help='parameter sizes in MB (float32), comma-separated',
    )
    p.add_argument('--procs', default='2,3,4', help='numbers of ECU processes, comma-separated')
    p.add_argument(
        '--repeat',
        type=int,
        default=3,
        help='timed repetitions per combination after one warm-up (default 3)',
    )
    p.add_argument(
        '--max-memory-gb',
        type=float,
        default=12.0,
        help='skip combinations whose estimated memory exceeds this (default 12)',
    )
    p.add_argument(
        '--bw-mb',
        type=float,
        default=512.0,
        help='bytes streamed per loopback bandwidth measurement (default 512 MB)',
    )
    p.add_argument(
        '--timeout',
        type=float,
        default=1800.0,
        help='seconds allowed per combination (default 1800)',
    )
    p.add_argument(
        '--act-round',
        action='store_true',
        help='also time a fleet round of the ACT policy, frozen and trainable backbone',
    )
    p.add_argument(
        '--act-config',
        default='{}',
        help='JSON ACTConfig fields for the savings and --act-round (default: the defaults)',
    )
    p.add_argument('--json', type=Path, default=None, help='write results as JSON here')
    args = p.parse_args(argv)
    sizes = [float(s) for s in args.sizes_mb.split(',') if s]
    procs = [int(n) for n in args.procs.split(',') if n]
    doc: dict = {
        'args': {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        'machine': machine_info(),
        'loadavg_before': loadavg(),
    }
    doc['loopback'] = loopback_bandwidth(int(args.bw_mb * MB), 3)
    bw = doc['loopback']['bytes_per_s']
    doc['results'] = []
    for size_mb in sizes:
        size = int(size_mb * MB) // 4 * 4
        for n in procs:
            row: dict = {
                'size_mb': size_mb,
                'procs': n,
                'ring_bound_s': 2 * (n - 1) / n * size / bw,
                'estimated_memory_gb': n * (3 * size / 1e9 + TORCH_PROCESS_GB),
            }
            if row['estimated_memory_gb'] > args.max_memory_gb:
                row['status'] = 'skipped'
                row['error'] = (
                    f'needs ~{row["estimated_memory_gb"]:.1f} GB > '
                    f'--max-memory-gb {args.max_memory_gb:g}'
                )
            else:
                print(f'... {size_mb:g} MB x {n} processes', file=sys.stderr, flush=True)
                row.update(run_combo(size, n, args.repeat, args.timeout))
            doc['results'].append(row)
    act_config = json.loads(args.act_config)
    doc['act_savings'] = act_savings(act_config)
    if args.act_round:
        doc['act_rounds'] = act_rounds(act_config)
    doc['loadavg_after'] = loadavg()
    report(doc)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
