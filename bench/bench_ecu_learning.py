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
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

from scarls.bringup import default_params_file  # noqa: E402
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
    ap.add_argument('--eval-checkpoints', type=int, default=8, metavar='N',
                    help='after the run, measure the task success of the policy alone (no '
                    'human) for about N of the deployed checkpoints, spread over the run, in '
                    'the simulator (0 = skip)')
    ap.add_argument('--eval-episodes', type=int, default=40,
                    help='scenes per checkpoint for --eval-checkpoints (default 40)')
    args = ap.parse_args(argv)
    root = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix='scarls_learn_'))
    root.mkdir(parents=True, exist_ok=True)
    summary_path = root / 'summary.json'
    # the ECU's parameters, but the registry keeps every checkpoint's weights for the curve
    params = yaml.safe_load(default_params_file().read_text())
    params['/**/learner']['ros__parameters']['keep_checkpoints'] = 10_000
    params_path = root / 'bench_params.yaml'
    params_path.write_text(yaml.safe_dump(params))
    cmd = [sys.executable, '-m', 'scarls.cli', 'ecu', '--learn', '--episodes', '0', '--minutes',
           str(args.minutes), '--data-root', str(root), '--summary', str(summary_path),
           '--height', str(args.height), '--width', str(args.width), '--params-file',
           str(params_path), *args.extra.split()]
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
        'curve': summary.get('curve', []),
    }
    tot = result['totals']
    tot['ratio'] = tot['sequential_s'] / tot['async_s'] if tot['async_s'] else float('nan')
    if args.eval_checkpoints > 0:
        result['closed_loop'] = eval_checkpoints(root, summary, args)
    print_report(result)
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + '\n')
    return 0


def eval_checkpoints(root: Path, summary: dict, args) -> list[dict]:
    """Task success of the policy alone (no takeover) for deployed checkpoints spread over the
    run, on the same unseen scenes, with the actor's chunking in a synchronous simulator."""
    import torch

    from scarls.checkpoints import load_checkpoint
    from scarls.checkpoints.registry import CheckpointRegistry
    from scarls.learner.rollout import evaluate_closed_loop

    torch.set_num_threads(1)
    registry = CheckpointRegistry(root / 'checkpoints' / 'pick_cube', keep_last=10_000,
                                  keep_records=10_000)
    deployed = [c for c in summary.get('checkpoints', [])
                if c.get('deployed_at_episode') is not None]
    stored = [c for c in deployed if c['version'] in registry
              and registry.get(c['version']).has_weights]
    if not stored:
        return []
    picks = sorted({stored[round(i * (len(stored) - 1) / max(1, args.eval_checkpoints - 1))]
                    ['version'] for i in range(min(args.eval_checkpoints, len(stored)))})
    out = []
    for v in picks:
        rec = registry.get(v)
        policy, _ = load_checkpoint(rec.path, expected_sha256=rec.sha256)
        stats = evaluate_closed_loop(policy, args.eval_episodes, seed=900_000,
                                     image_shape=(args.height, args.width))
        ep = next(c['deployed_at_episode'] for c in deployed if c['version'] == v)
        out.append({'version': v, 'deployed_at_episode': ep,
                    'online_episodes_trained': rec.metrics.get('online_episodes', 0.0),
                    'success_rate': stats.success_rate, 'episodes': stats.n_episodes})
        print(f'closed loop v{v} (deployed at episode {ep}): '
              f'{100 * stats.success_rate:.0f} % of {stats.n_episodes} scenes', flush=True)
    return out


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
    if r.get('curve'):
        print('\n| episodes | model versions | success without help | steps by the human |')
        print('|---|---|---|---|')
        for b in r['curve']:
            print(f"| {b['episodes'][0]}-{b['episodes'][1]} | v{b['model_versions'][0]}-"
                  f"v{b['model_versions'][1]} | {100 * b['success_rate']:.0f} % | "
                  f"{100 * b['intervention_rate']:.0f} % |")
    if r.get('closed_loop'):
        print('\n| checkpoint | deployed at episode | online episodes trained on | '
              'success alone (sim, unseen scenes) |')
        print('|---|---|---|---|')
        for c in r['closed_loop']:
            print(f"| v{c['version']} | {c['deployed_at_episode']} | "
                  f"{c['online_episodes_trained']:.0f} | {100 * c['success_rate']:.0f} % "
                  f"({c['episodes']}) |")
    print('\n| model version | episodes | success without help | steps by the human |')
    print('|---|---|---|---|')
    for v in r['per_model_version']:
        print(f"| v{v['model_version']} | {v['episodes']} | {100 * v['success_rate']:.0f} % | "
              f"{100 * v['intervention_rate']:.0f} % |")


if __name__ == '__main__':
    raise SystemExit(main())
