"""One ECU learning in closed loop: the loop latency of the paper's Table III and the learning
curve (success and intervention rate per model version), from a real `scarls ecu --learn` run.

Everything is measured on the running system (separate ROS 2 processes, real Zarr, the learner
training while the robot acts):

* rollout      per-episode duration (first to last control tick) and steps
* persistence  episode end -> visible on disk (scheduler's finalize)
* loading      learner: reading the new episodes from disk before a round
* training     learner: one round of gradient steps (and ms per step)
* sync         actor: fetching + verifying a checkpoint over the chunked service; and learner
               publish -> first control tick that uses it (includes waiting for the episode
               boundary, by design)
* totals       Sync. (sequential) = sum(rollout) + sum(load + train + eval) + sum(fetch), the
               same work done one after the other, vs Async. = the wall clock the ECU took.

    .venv/bin/python bench/bench_ecu_learning.py --minutes 8 --json ecu_learning.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

from scarls.episodes import EpisodeReader  # noqa: E402

FETCH_RE = re.compile(r'checkpoint v(\d+) fetched and verified \(([\d.]+) MB in ([\d.]+) s\)')


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float('nan')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--minutes', type=float, default=8.0)
    ap.add_argument('--height', type=int, default=96)
    ap.add_argument('--width', type=int, default=128)
    ap.add_argument('--keep', default=None, help='data root to keep (default: a temp dir)')
    ap.add_argument('--json', default=None)
    ap.add_argument('--extra', default='', help='more `scarls ecu` arguments')
    args = ap.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix='scarls_learn_'))
    summary_path = root / 'summary.json'
    cmd = [sys.executable, '-m', 'scarls.cli', 'ecu', '--learn', '--episodes', '0', '--minutes',
           str(args.minutes), '--data-root', str(root), '--summary', str(summary_path),
           '--height', str(args.height), '--width', str(args.width), *args.extra.split()]
    load0 = os.getloadavg()
    t0 = time.time()
    subprocess.run(cmd, check=False)
    wall = time.time() - t0
    summary = json.loads(summary_path.read_text())
    episodes = summary['episodes']
    durations, first_tick = [], {}
    for e in episodes:
        ts = np.asarray(EpisodeReader(e['path']).timestamp[:])
        durations.append(float(ts[-1] - ts[0]) + 1 / 30)
        first_tick.setdefault(e['model_version'], float(ts[0]))
    registry = json.loads((root / 'checkpoints' / 'pick_cube' / 'registry.json').read_text())
    records = registry['records'] if isinstance(registry, dict) else registry
    rounds = [r for r in records if r.get('metrics', {}).get('train_steps')]
    pretrain = rounds[0] if rounds else None
    online = rounds[1:]
    log_dir = Path(summary['log_dir'])
    actor_log = next(log_dir.glob('*_actor.log')).read_text(errors='replace')
    fetches = [(int(v), float(mb), float(s)) for v, mb, s in FETCH_RE.findall(actor_log)]
    deploy_delay = []
    for r in rounds:
        v, pub = r['version'], r['metrics'].get('published_unix')
        if r.get('approved') and v in first_tick and pub:
            deploy_delay.append(first_tick[v] - pub)
    train_s = [r['metrics']['train_seconds'] for r in online]
    ms_step = [1000 * r['metrics']['train_seconds'] / r['metrics']['train_steps'] for r in rounds]
    load_s = [r['metrics']['load_seconds'] for r in online]
    eval_s = [r['metrics']['eval_seconds'] for r in rounds]
    fin = [e['finalize_seconds'] for e in episodes]
    t_roll = float(np.sum(durations))
    t_train = float(sum(r['metrics']['train_seconds'] + r['metrics']['eval_seconds']
                        + r['metrics']['load_seconds'] for r in rounds))
    t_sync = float(sum(s for _, _, s in fetches))
    sequential = t_roll + t_train + t_sync
    result = {
        'machine': {'nproc': os.cpu_count(), 'loadavg_start': load0},
        'minutes': args.minutes, 'wall_seconds': wall, 'episodes': len(episodes),
        'rollout': {'episodes': len(episodes), 'mean_steps': float(np.mean(
            [e['steps'] for e in episodes])) if episodes else 0,
            'mean_seconds': float(np.mean(durations)) if durations else 0},
        'persistence_s': {'p50': pct(fin, 50), 'p99': pct(fin, 99), 'max': max(fin or [0])},
        'loading_s': {'p50': pct(load_s, 50), 'max': max(load_s or [0])},
        'training': {'pretrain_steps': pretrain['metrics']['train_steps'] if pretrain else 0,
                     'pretrain_s': pretrain['metrics']['train_seconds'] if pretrain else 0,
                     'rounds': len(online), 'round_s_p50': pct(train_s, 50),
                     'ms_per_step_p50': pct(ms_step, 50), 'eval_s_p50': pct(eval_s, 50)},
        'sync': {'fetches': len(fetches), 'fetch_s_p50': pct([s for *_, s in fetches], 50),
                 'mb': fetches[0][1] if fetches else 0,
                 'publish_to_first_tick_s_p50': pct(deploy_delay, 50),
                 'publish_to_first_tick_s_max': max(deploy_delay or [0])},
        'totals': {'sequential_s': sequential, 'async_s': t_roll_wall(episodes),
                   'rollout_s': t_roll, 'train_s': t_train, 'sync_s': t_sync},
        'checkpoints': summary.get('checkpoints', []),
        'per_model_version': summary.get('per_model_version', []),
    }
    tot = result['totals']
    tot['ratio'] = tot['sequential_s'] / tot['async_s'] if tot['async_s'] else float('nan')
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + '\n')
    return 0


def t_roll_wall(episodes) -> float:
    """Wall clock from the first control tick to the last (the async loop's total)."""
    starts, ends = [], []
    for e in episodes:
        ts = np.asarray(EpisodeReader(e['path']).timestamp[:])
        starts.append(float(ts[0]))
        ends.append(float(ts[-1]))
    return max(ends) - min(starts) if starts else 0.0


def print_report(r: dict) -> None:
    t = r['training']
    s = r['sync']
    rows = [
        ('Rollout', f"{r['rollout']['episodes']} episodes, mean {r['rollout']['mean_steps']:.0f} "
                    f"steps", f"{r['rollout']['mean_seconds']:.1f} s / episode"),
        ('Persistence', 'episode end -> visible', f"p50 {r['persistence_s']['p50']:.2f} s, "
                                                  f"max {r['persistence_s']['max']:.2f} s"),
        ('Loading', 'new episodes -> learner memory', f"p50 {r['loading_s']['p50']:.2f} s"),
        ('Pre-training', f"{t['pretrain_steps']} steps on demos", f"{t['pretrain_s']:.0f} s"),
        ('Training', f"{t['rounds']} rounds", f"p50 {t['round_s_p50']:.1f} s / round, "
                                               f"{t['ms_per_step_p50']:.0f} ms / step"),
        ('Evaluation', 'open loop, held-out demos', f"p50 {t['eval_s_p50']:.2f} s"),
        ('Sync', f"fetch {s['mb']:.1f} MB over the service", f"p50 {s['fetch_s_p50']:.2f} s"),
        ('Deploy', 'publish -> first tick on it', f"p50 {s['publish_to_first_tick_s_p50']:.1f} s "
                                                  f"(max {s['publish_to_first_tick_s_max']:.1f})"),
    ]
    print('\n| stage | what | time |\n|---|---|---|')
    for row in rows:
        print('| ' + ' | '.join(row) + ' |')
    tot = r['totals']
    print(f"\nSync. (sequential): {tot['sequential_s']:.0f} s = rollout {tot['rollout_s']:.0f} + "
          f"train {tot['train_s']:.0f} + sync {tot['sync_s']:.1f};  Async. (measured): "
          f"{tot['async_s']:.0f} s;  ratio {tot['ratio']:.2f}x")
    print('\n| model version | episodes | success without help | steps by the human |')
    print('|---|---|---|---|')
    for v in r['per_model_version']:
        print(f"| v{v['model_version']} | {v['episodes']} | {100 * v['success_rate']:.0f} % | "
              f"{100 * v['intervention_rate']:.0f} % |")


if __name__ == '__main__':
    raise SystemExit(main())
