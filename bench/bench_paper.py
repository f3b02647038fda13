"""The paper's two claims, measured on simulated time (docs/SIM_TIME.md, Table IV of the paper).

    .venv/bin/python bench/bench_paper.py budget           # the compute-fair default
    .venv/bin/python bench/bench_paper.py all --size small # both experiments (make bench-paper)
    .venv/bin/python bench/bench_paper.py all --size full  # 10 sim min, 3 seeds, N = 1..8

budget          training steps per CPU second of one learner alone on one core (the default
                policy, batch and image size; torch with one thread): the default budget of
                compute-fair mode (`--compute-fair` with no value).
online-offline  experiment 1, one ECU, the same simulated minutes and the same training budget
                (compute-fair): (a) demonstrations only - the learner keeps training on the
                offline demonstrations with the same budget and never sees the robot's episodes
                (its online data folder is empty), (b) HG-DAgger with the robot's takeovers (the
                default). Success of the
                deployed policy alone on unseen scenes (the closed-loop evaluation of
                scarls.learner.rollout) with a 95 % Wilson interval, per seed, and the curve
                over simulated minutes.
scaling         experiment 2, N ECUs compute-fair (`scarls fleet --rtf 0 --compute-fair`): the
                same simulated minutes for every N; episodes, labels, learner samples, final and
                best success alone, time to reach 50/70/90 %, and the wall time it took.
                `--fleet-data demos` also runs fleets whose learners train on the
                demonstrations only: N averaged learners' compute without N robots' data.

Every run writes its JSON under --out (default docs/paper/); `report` rebuilds the table
(docs/paper/table.md: every point, then each setting across its seeds) and the plots
(docs/paper/*.png, matplotlib) from them.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

TASK = 'pick_cube'
EVAL_SEED = 900_000          # unseen scenes: far from the demonstrations' and the ECUs' seeds
SIZES = {
    # sim minutes, seeds, closed-loop scenes per checkpoint, curve checkpoints, fleet sizes
    'small': {'sim_minutes': 1.5, 'seeds': [0], 'scenes': 20, 'curve': 3, 'ecus': [1, 2]},
    'full': {'sim_minutes': 10.0, 'seeds': [0, 1, 2], 'scenes': 200, 'curve': 6,
             'ecus': [1, 2, 4, 8]},
}


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a success rate k / n."""
    if n == 0:
        return (math.nan, math.nan)
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return (max(0.0, c - h), min(1.0, c + h))


# -- budget -------------------------------------------------------------------------------------
def measure_budget(args) -> dict:
    """Steps per CPU second (and per wall second) of one learner alone, on one thread."""
    import torch

    from scarls.checkpoints.registry import CheckpointRegistry
    from scarls.learner.config import MixingConfig, TrainerConfig
    from scarls.learner.demos import generate_demos
    from scarls.learner.node import DEFAULT_POLICY_CONFIG
    from scarls.learner.online import OnlineConfig, OnlineLearner, policy_config_for
    from scarls.policies import make_policy
    from scarls.robot import load_robot

    torch.set_num_threads(1)
    robot = load_robot('sim_dual6')
    with tempfile.TemporaryDirectory() as tmp:
        offline = Path(tmp) / 'offline'
        generate_demos(offline, TASK, 4, seed=0, image_shape=robot.image_shape)
        policy = make_policy('spatial', policy_config_for(
            json.loads(DEFAULT_POLICY_CONFIG), robot, offline, TASK), seed=0)
        learner = OnlineLearner(policy, CheckpointRegistry(Path(tmp) / 'ckpt'), OnlineConfig(
            trainer=TrainerConfig(batch_size=32, device='cpu', precision='fp32'),
            mixing=MixingConfig()))
        learner.load_offline(offline, TASK, heldout=1)
        learner.trainer.train_steps(learner._batch, 20)   # warm-up
        out = []
        for _ in range(args.repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            learner.trainer.train_steps(learner._batch, args.steps)
            cpu, wall = time.process_time() - c0, time.perf_counter() - w0
            out.append({'steps': args.steps, 'cpu_s': round(cpu, 3), 'wall_s': round(wall, 3),
                        'steps_per_cpu_s': round(args.steps / cpu, 2),
                        'steps_per_wall_s': round(args.steps / wall, 2)})
            print(json.dumps(out[-1]), flush=True)
    best = max(r['steps_per_cpu_s'] for r in out)
    load = os.getloadavg()[0]
    result = {'runs': out, 'steps_per_cpu_s_best': best, 'load_avg_1min': load,
              'batch_size': 32, 'image_shape': list(robot.image_shape), 'threads': 1}
    print(f'one learner alone, one thread: {best:.1f} training steps per CPU second '
          f'(best of {len(out)}; load average {load:.1f})')
    return result


# -- running scarls -----------------------------------------------------------------------------
def run_cli(cmd: list[str], log_path: Path, timeout_s: float) -> dict:
    """Run a `scarls` command, return its JSON summary (the last --summary argument)."""
    summary = Path(cmd[cmd.index('--summary') + 1])
    t0 = time.monotonic()
    with open(log_path, 'w') as log:
        proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=timeout_s,
                              cwd=ROOT, check=False)
    wall = time.monotonic() - t0
    if not summary.exists():
        raise RuntimeError(f'{" ".join(cmd)} wrote no summary (exit {proc.returncode}); '
                           f'see {log_path}')
    out = json.loads(summary.read_text())
    out['_wall_s'] = round(wall, 1)
    out['_exit'] = proc.returncode
    want = float(cmd[cmd.index('--minutes') + 1]) * 60.0
    if (out.get('simulated_s') or 0.0) < want - 1.0:
        raise RuntimeError(f'{" ".join(cmd)} stopped after {out.get("simulated_s")} of '
                           f'{want:.0f} simulated seconds (exit {proc.returncode}: '
                           f'{out.get("error") or "interrupted"}); not saved, see {log_path}')
    return out


def registry_records(root: Path) -> list[dict]:
    reg = root / 'checkpoints' / TASK / 'registry.json'
    if not reg.exists():
        return []
    data = json.loads(reg.read_text())
    return data.get('records', data if isinstance(data, list) else [])


def deployed_versions(summary: dict) -> list[dict]:
    """Checkpoints that acted on the robot, in order, with the simulated time they were
    announced (``announced_s``)."""
    return [c for c in summary.get('checkpoints', [])
            if c.get('approved') and c.get('deployed_at_episode') is not None]


def closed_loop(root: Path, version: int, scenes: int, image_shape) -> dict:
    """Success alone of checkpoint ``version`` of the registry under ``root`` on ``scenes``
    unseen scenes (scarls.learner.rollout.evaluate_closed_loop, synchronous simulator)."""
    import torch

    from scarls.checkpoints import load_checkpoint
    from scarls.checkpoints.registry import CheckpointRegistry
    from scarls.learner.rollout import evaluate_closed_loop

    torch.set_num_threads(1)
    registry = CheckpointRegistry(root / 'checkpoints' / TASK, keep_last=10_000,
                                  keep_records=10_000)
    rec = registry.get(version)
    policy, _ = load_checkpoint(rec.path, expected_sha256=rec.sha256)
    stats = evaluate_closed_loop(policy, scenes, seed=EVAL_SEED, image_shape=tuple(image_shape))
    k = round(stats.success_rate * stats.n_episodes)
    lo, hi = wilson(k, stats.n_episodes)
    return {'version': version, 'success_rate': stats.success_rate, 'successes': k,
            'scenes': stats.n_episodes, 'ci95': [lo, hi]}


def stored(root: Path, version: int) -> bool:
    from scarls.checkpoints.registry import CheckpointRegistry
    registry = CheckpointRegistry(root / 'checkpoints' / TASK, keep_last=10_000,
                                  keep_records=10_000)
    return version in registry and registry.get(version).has_weights


def curve_points(root: Path, summary: dict, k: int, scenes: int, image_shape) -> list[dict]:
    """Success alone of about ``k`` deployed checkpoints spread over the run, at the simulated
    time each was announced; the last deployed one is always included."""
    deployed = [c for c in deployed_versions(summary) if stored(root, c['version'])]
    if not deployed:
        return []
    picks = sorted({round(i * (len(deployed) - 1) / max(1, k - 1)) for i in range(k)})
    out = []
    for i in picks:
        c = deployed[i]
        point = closed_loop(root, c['version'], scenes, image_shape)
        point['sim_minutes'] = round(c.get('announced_s', 0.0) / 60.0, 3)
        point['open_loop_error'] = c.get('metric')
        out.append(point)
        print(f"    v{c['version']} at {point['sim_minutes']:.2f} simulated min: "
              f"{100 * point['success_rate']:.0f} % of {point['scenes']} "
              f"[{100 * point['ci95'][0]:.0f}, {100 * point['ci95'][1]:.0f}]", flush=True)
    return out


def scarls_exe() -> str:
    return str(ROOT / '.venv' / 'bin' / 'scarls')


def common_args(args, root: Path, offline: Path | None = None) -> list[str]:
    return ['--data-root', str(root), '--minutes', str(args.sim_minutes), '--episodes', '0',
            '--rtf', str(args.rtf), '--compute-fair', str(args.budget),
            '--train-interval', str(args.train_interval),
            # every checkpoint keeps its weights: the curve evaluates them after the run
            '--param', 'learner.keep_checkpoints=100000',
            *(x for kv in args.param for x in ('--param', kv))]


def prepare_demos(workdir: Path, n: int, image_shape, name: str = 'offline') -> Path:
    """One set of demonstrations for every arm and fleet size (the same start); a larger set
    (``name``) begins with the same ``n`` episodes (the same seeds) and adds more."""
    from scarls.episodes import list_episodes
    from scarls.learner.demos import generate_demos
    offline = workdir / name
    have = len(list_episodes(offline, TASK))
    if not have:
        generate_demos(offline, TASK, n, seed=0, image_shape=tuple(image_shape))
    elif have != n:
        raise SystemExit(f'{offline} holds {have} demonstrations, not {n}: another number '
                         'of demonstrations needs another --workdir (and --out); fewer than '
                         'asked is an interrupted generation: delete the folder')
    return offline


def link_demos(offline: Path, root: Path) -> None:
    """A fresh run folder ``root`` with the demonstrations linked in; an earlier run's folder
    (a point measured again, or an interrupted one) is moved aside, never resumed from."""
    if root.exists() and any(c.name != 'offline' for c in root.iterdir()):
        n = 1
        while root.with_name(f'{root.name}.old{n}').exists():
            n += 1
        root.rename(root.with_name(f'{root.name}.old{n}'))
        print(f'  {root.name}: an earlier run moved to {root.name}.old{n}', flush=True)
    root.mkdir(parents=True, exist_ok=True)
    target = root / 'offline'
    if not target.exists():
        target.symlink_to(offline.resolve(), target_is_directory=True)


# -- experiment 1 -------------------------------------------------------------------------------
ARMS = {
    'offline': 'demonstrations only (the robot runs and is helped; its episodes are never '
               'trained on)',
    'hg_dagger': 'HG-DAgger with online takeovers (the default)',
    'more_demos': 'HG-DAgger as (b), starting from 3x the demonstrations (--more-demos)',
    'offline_more': 'demonstrations only as (a), from 3x the demonstrations (--more-demos)',
}
ONLINE_ARMS = ('hg_dagger', 'more_demos')    # the learner trains on the robot's episodes
MORE_DEMOS_ARMS = ('more_demos', 'offline_more')


def arm_params(arm: str, root: Path) -> list[str]:
    if arm in ONLINE_ARMS:
        return []
    # the learner reads its online episodes from an empty folder; demonstrations, registry
    # and keys are the run's own
    empty = root / 'no_online_data'
    empty.mkdir(parents=True, exist_ok=True)
    return ['--param', f'learner.data_root={empty}',
            '--param', f'learner.offline_root={root / "offline"}',
            '--param', f'learner.checkpoint_dir={root / "checkpoints" / TASK}']


def experiment_online_offline(args, workdir: Path) -> list[dict]:
    offline = prepare_demos(workdir, args.demos, args.image_shape)
    more = (prepare_demos(workdir, args.more_demos, args.image_shape,
                          f'offline_{args.more_demos}')
            if set(MORE_DEMOS_ARMS) & set(args.arms) else None)
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            if done(args, 'exp1', {'arm': arm, 'seed': seed}):
                continue
            root = workdir / f'exp1_{arm}_seed{seed}'
            link_demos(more if arm in MORE_DEMOS_ARMS else offline, root)
            # a seed is the robot's scenes and the learner's weights, batches and noise
            cmd = [scarls_exe(), 'ecu', '--learn', *common_args(args, root), '--seed',
                   str(seed), '--param', f'learner.seed={seed}', *arm_params(arm, root),
                   '--summary', str(root / 'summary.json')]
            print(f'exp1 {arm} seed {seed}: {" ".join(cmd[1:])}', flush=True)
            summary = run_cli(cmd, root / 'run.log', args.timeout)
            row = summarise_ecu_run(summary, root, args, f'exp1 {arm} seed {seed}')
            row.update({'experiment': 1, 'arm': arm, 'seed': seed, **SEEDED})
            results.append(row)
            save(args, 'exp1', row, ('arm', 'seed'))
    return results


INGESTED = re.compile(r'episode (\d+) after ([\d.]+) s')
LOG_STAMP = re.compile(r'^\[\w+\] \[(\d+\.\d+)\]')


def ingestion(log_dir: Path, ecu: str) -> dict:
    """Episode end -> trainable, per episode: in simulated seconds (the learner measures it on
    ROS time) and in wall seconds (the learner's log line minus the scheduler's "saved" line,
    both stamped with the wall clock)."""
    from scarls.bringup.runner import latency_summary
    sim, wall, saved = [], [], {}
    for path in log_dir.glob(f'*/{ecu}_scheduler.log'):
        for line in path.read_text(errors='replace').splitlines():
            m = re.search(r'\]: episode (\d+) saved:', line)
            stamp = LOG_STAMP.match(line)
            if m and stamp:
                saved[int(m.group(1))] = float(stamp.group(1))
    for path in log_dir.glob(f'*/{ecu}_learner.log'):
        for line in path.read_text(errors='replace').splitlines():
            stamp = LOG_STAMP.match(line)
            if 'ingested:' not in line or not stamp:
                continue
            for idx, sec in INGESTED.findall(line):
                sim.append(float(sec))
                if int(idx) in saved:
                    wall.append(float(stamp.group(1)) - saved[int(idx)])
    return latency_summary(sim, wall)


def summarise_ecu_run(summary: dict, root: Path, args, label: str) -> dict:
    eps = summary.get('episodes', [])
    labels = sum(e['intervention_steps'] for e in eps)
    print(f'  {label}: {len(eps)} episodes, {labels} human-labelled steps, simulated '
          f"{summary.get('simulated_s', 0):.0f} s in {summary.get('_wall_s', 0):.0f} s wall "
          f"(rtf {summary.get('achieved_rtf', 0):.2f}); ok={summary.get('ok')} "
          f"{summary.get('error') or ''}", flush=True)
    curve = curve_points(root, summary, args.curve, args.scenes, args.image_shape)
    final = curve[-1] if curve else None
    best = max(curve, key=lambda p: p['success_rate']) if curve else None
    learner = summary.get('learner') or {}
    log_dir = Path(summary['log_dir']).parent if summary.get('log_dir') else root / 'logs'
    return {
        'ingestion': ingestion(log_dir, summary.get('_ecu', 'ecu0')),
        'deploy_latency': summary.get('deploy_latency'),
        'ok': summary.get('ok'), 'error': summary.get('error'),
        'simulated_s': summary.get('simulated_s'), 'wall_s': summary.get('_wall_s'),
        'achieved_rtf': summary.get('achieved_rtf'), 'episodes': len(eps),
        'labels': labels, 'samples_trained': learner.get('samples_trained'),
        'success_with_help': summary.get('success_rate'),
        'checkpoints': len(deployed_versions(summary)),
        'final': final, 'best': best, 'curve': curve,
        'time_to': {str(t): next((p['sim_minutes'] for p in curve
                                  if p['success_rate'] >= t / 100), None)
                    for t in (50, 70, 90)},
    }


# -- experiment 2 -------------------------------------------------------------------------------
FLEET_DATA = {
    'online': 'the learners train on their robots\' episodes (the default)',
    'demos': 'the learners train on the demonstrations only (the robots run and are helped; '
             'their episodes are never trained on): what N averaged learners add without N '
             'robots\' data',
}


DATA_WORDS = {'online': 'their episodes', 'demos': 'demos only'}


def exp2_dir(n: int, seed: int, data: str) -> str:
    return f'exp2_n{n}_seed{seed}' if data == 'online' else f'exp2_n{n}_{data}_seed{seed}'


def fleet_data_params(data: str, root: Path) -> list[str]:
    if data == 'online':
        return []
    # every learner reads its online episodes from one empty folder and keeps its checkpoints
    # where its ECU's scheduler deploys them from
    empty = root / 'no_online_data'
    empty.mkdir(parents=True, exist_ok=True)
    return ['--param', f'learner.data_root={empty}',
            '--param', f'learner.checkpoint_dir={root}/{{ecu}}/checkpoints/{TASK}']


def experiment_scaling(args, workdir: Path) -> list[dict]:
    offline = prepare_demos(workdir, args.demos, args.image_shape)
    results = []
    for seed, n, data in itertools.product(args.seeds, args.ecus, args.fleet_data):
        if done(args, 'exp2', {'n': n, 'seed': seed, 'data': data}):
            continue
        root = workdir / exp2_dir(n, seed, data)
        link_demos(offline, root)
        cmd = [scarls_exe(), 'fleet', '--ecus', str(n), *common_args(args, root), '--seed',
               str(seed), *fleet_data_params(data, root), '--summary',
               str(root / 'summary.json')]
        print(f'exp2 N={n} seed {seed} ({FLEET_DATA[data]}): {" ".join(cmd[1:])}',
              flush=True)
        summary = run_cli(cmd, root / 'run.log', args.timeout * max(1, n))
        rows = {}
        for ecu, view in (summary.get('ecus') or {}).items():
            rows[ecu] = summarise_ecu_run({**view, '_ecu': ecu, **{k: summary.get(k) for k in (
                'simulated_s', '_wall_s', 'achieved_rtf', 'ok', 'error', 'log_dir')}},
                root / ecu, args, f'exp2 N={n} seed {seed} {ecu}')
            if n > 1:   # the fleet deploys the same averaged policy: one ECU's curve tells
                break
        ecus = summary.get('ecus') or {}
        row = {'experiment': 2, 'n': n, 'seed': seed, 'data': data, **SEEDED,
               'ok': summary.get('ok'),
               'error': summary.get('error'), 'simulated_s': summary.get('simulated_s'),
               'wall_s': summary.get('_wall_s'), 'achieved_rtf': summary.get('achieved_rtf'),
               'episodes': sum(len(v.get('episodes', [])) for v in ecus.values()),
               'labels': sum(e['intervention_steps'] for v in ecus.values()
                             for e in v.get('episodes', [])),
               'samples_trained': sum((v.get('learner') or {}).get('samples_trained') or 0
                                      for v in ecus.values()),
               'rounds': len(summary.get('rounds', [])),
               'deploy_latency_all': pooled_deploy_latency(ecus),
               'ecu0': next(iter(rows.values()), None)}
        results.append(row)
        save(args, 'exp2', row, ('n', 'seed', 'data'))
    return results


def pooled_deploy_latency(ecus: dict) -> dict:
    """Deploy -> acting on it, over every ECU of a fleet (simulated and wall seconds)."""
    from scarls.bringup.runner import deploy_latencies, latency_summary
    sim, wall, missed = [], [], 0
    for view in ecus.values():
        lat = deploy_latencies(view.get('deploys', []), view.get('loads', []), raw=True)
        sim += lat['sim']
        wall += lat['wall']
        missed += lat['not_loaded']
    return {'not_loaded': missed, **latency_summary(sim, wall)}


# -- report -------------------------------------------------------------------------------------
RUN_ARGS = ('sim_minutes', 'scenes', 'curve', 'budget', 'train_interval', 'demos', 'more_demos',
            'rtf', 'param')


def load_results(args, name: str) -> list[dict]:
    """The points already measured under --out with this run's settings (RUN_ARGS); points
    measured with other settings are dropped when this run saves."""
    path = Path(args.out) / f'{name}.json'
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    rows = data.get('results', [])
    for r in rows:
        r.setdefault('run_args', {k: data.get('args', {}).get(k) for k in RUN_ARGS})
        if r['run_args'].get('param') is None:      # points measured before --param
            r['run_args']['param'] = []
        if name == 'exp2':
            r.setdefault('data', 'online')     # points measured before the demos-only fleet
    return [r for r in rows if r['run_args'] == run_args(args)]


def run_args(args) -> dict:
    return {k: getattr(args, k) for k in RUN_ARGS}


#: Points measured since a seed is the learner's too (exp. 1: `learner.seed`; every learner
#: of a fleet pre-trains on the shared stream, then draws its own batches and noise, its
#: rank's stream); earlier exp. 1 points of seeds > 0 trained the learner of seed 0, earlier
#: fleets' learners drew the same batches (no `learner_seeded`) or pre-trained each on its
#: own stream (`learner_seeded` without `shared_pretrain`).
SEEDED = {'learner_seeded': True, 'shared_pretrain': True}


def properly_seeded(row: dict) -> bool:
    if row.get('experiment') == 1 or 'arm' in row:
        return bool(row.get('learner_seeded')) or row.get('seed') == 0  # seed 0: it was 0 anyway
    if row.get('n') == 1:
        return True                                  # one learner: its seed was the run's
    return bool(row.get('shared_pretrain'))


def seed_cell(row: dict) -> str:
    if properly_seeded(row):
        return str(row['seed'])
    if 'arm' in row:
        return f"{row['seed']} (learner seed 0)"
    if row.get('learner_seeded'):
        return f"{row['seed']} (own pre-training)"
    return f"{row['seed']} (shared draws)"


def done(args, name: str, key: dict) -> bool:
    """Resume: a point already measured with the same settings is not run again (--fresh
    runs every point); nor are points measured before seeds reached the learner, unless
    that made no difference (:func:`properly_seeded`): those are run again."""
    if args.fresh:
        return False
    for r in load_results(args, name):
        if all(r.get(k) == v for k, v in key.items()) and properly_seeded(r):
            print(f'{name} {key}: measured already (in {args.out}; --fresh runs it again)',
                  flush=True)
            return True
    return False


def save(args, name: str, row: dict, key: tuple[str, ...]) -> None:
    """Add (or replace) one point of ``name`` under --out, keeping the other points."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    row['run_args'] = run_args(args)
    rows = [r for r in load_results(args, name) if any(r.get(k) != row.get(k) for k in key)]
    rows.append(row)
    rows.sort(key=lambda r: tuple(str(r.get(k)) if k == 'arm' else
                                  list(FLEET_DATA).index(r[k]) if k == 'data' else r.get(k)
                                  for k in reversed(key)))
    (out / f'{name}.json').write_text(json.dumps({'args': {
        k: v for k, v in vars(args).items() if k != 'func'}, 'results': rows}, indent=1))


def pct(x) -> str:
    return '-' if x is None else f'{100 * x:.0f} %'


def tt(x) -> str:
    """Time to a success level, in simulated minutes ('-': not reached)."""
    return '-' if x is None else f'{x:.2f}'


def ing(d: dict | None) -> str:
    if not d or not d.get('n'):
        return '-'
    return f"{d['sim_p50']} / {d['sim_p99']} ({d['wall_p50']} / {d['wall_p99']}), n={d['n']}"


def ole(x) -> str:
    return '-' if x is None else f'{x:.2g}'


def ci(p: dict | None) -> str:
    if not p:
        return '-'
    return f"{100 * p['success_rate']:.0f} % [{100 * p['ci95'][0]:.0f}, " \
           f"{100 * p['ci95'][1]:.0f}] (n={p['scenes']})"


def refresh(args, work: Path) -> None:
    """Recompute what the runs under ``work`` recorded (ingestion from the logs; deploy latency
    and each curve point's open-loop error from the summaries) for the saved results, so a
    point measured by an older version of this script reports the same columns."""
    for name in ('exp1', 'exp2'):
        path = Path(args.out) / f'{name}.json'
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        for r in data['results']:
            root = work / (f"exp1_{r['arm']}_seed{r['seed']}" if name == 'exp1'
                           else exp2_dir(r['n'], r['seed'], r.get('data', 'online')))
            if not (root / 'summary.json').exists():
                continue
            summary = json.loads((root / 'summary.json').read_text())
            ecus = summary.get('ecus') or {'ecu0': summary}
            row = r if name == 'exp1' else r.get('ecu0')
            if row is None:
                continue
            row['ingestion'] = ingestion(root / 'logs', 'ecu0')
            row['deploy_latency'] = ecus['ecu0'].get('deploy_latency')
            if name == 'exp2':
                r['deploy_latency_all'] = pooled_deploy_latency(ecus)
            metric = {c['version']: c.get('metric') for c in ecus['ecu0'].get('checkpoints', [])}
            for point in row.get('curve', []):
                point['open_loop_error'] = metric.get(point['version'])
            for key in ('final', 'best'):
                if row.get(key):
                    row[key]['open_loop_error'] = metric.get(row[key]['version'])
        path.write_text(json.dumps(data, indent=1))


def report(args) -> str:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    lines = []
    exp1 = json.loads((out / 'exp1.json').read_text())['results'] \
        if (out / 'exp1.json').exists() else []
    exp2 = json.loads((out / 'exp2.json').read_text())['results'] \
        if (out / 'exp2.json').exists() else []
    if exp1:
        lines += ['### Experiment 1: online vs offline (one ECU, compute-fair)', '',
                  '| arm | seed | simulated min | wall min | episodes | '
                  'human labels (collected) | learner samples | final success alone [95 %] | '
                  'best | t50 / t70 / t90 (sim min) | ingestion p50 / p99 sim s (wall s) | '
                  'deploy -> acting p50 / p99 sim s (wall s) |',
                  '|---|---|---|---|---|---|---|---|---|---|---|---|']
        for r in exp1:
            t = r['time_to']
            lines.append(
                f"| {r['arm']} | {seed_cell(r)} | {(r['simulated_s'] or 0) / 60:.1f} | "
                f"{(r['wall_s'] or 0) / 60:.1f} | {r['episodes']} | {r['labels']} | "
                f"{r['samples_trained']} | {ci(r['final'])} | {ci(r['best'])} | "
                f"{tt(t['50'])} / {tt(t['70'])} / {tt(t['90'])} | {ing(r.get('ingestion'))} | "
                f"{ing(r.get('deploy_latency'))} |")
        lines.append('')
    if exp2:
        lines += ['### Experiment 2: N ECUs, compute-fair (Table IV analogue)', '',
                  '| N | learners train on | seed | simulated min | wall min | achieved rtf | '
                  'episodes | human labels '
                  '| learner samples | fleet rounds | open-loop error (final) | '
                  'final success alone [95 %] | best | '
                  't50 / t70 / t90 (sim min) | ingestion p50 / p99 sim s (wall s), ecu0 | '
                  'deploy -> acting p50 / p99 sim s (wall s), all ECUs |',
                  '|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|']
        for r in exp2:
            e = r.get('ecu0') or {'final': None, 'best': None, 'time_to': {}}
            t = e.get('time_to', {})
            lines.append(
                f"| {r['n']} | {DATA_WORDS[r.get('data', 'online')]} | {seed_cell(r)} | "
                f"{(r['simulated_s'] or 0) / 60:.1f} | "
                f"{(r['wall_s'] or 0) / 60:.1f} | {r['achieved_rtf']} | {r['episodes']} | "
                f"{r['labels']} | {r['samples_trained']} | {r['rounds']} | "
                f"{ole((e.get('final') or {}).get('open_loop_error'))} | {ci(e['final'])} | "
                f"{ci(e['best'])} | {tt(t.get('50'))} / {tt(t.get('70'))} / {tt(t.get('90'))} | "
                f"{ing(e.get('ingestion'))} | {ing(r.get('deploy_latency_all'))} |")
        lines.append('')
    lines += across_seeds(exp1, exp2)
    lines += error_ranks(exp1, exp2)
    text = '\n'.join(lines)
    (out / 'table.md').write_text(text + '\n')
    print(text)
    plot(out, exp1, exp2)
    return text


def seed_summary(points: list[dict]) -> dict:
    """One setting over its seeds: final and best success alone per seed, their mean, the
    final policies' successes pooled over every seed's scenes (a Wilson interval of the
    pooled rate: seed-to-seed spread shows in the per-seed column, not in it), and the median
    time to 50/70/90 % over the seeds (a seed that never got there counts as later than all)."""
    finals = [p['final'] for p in points if p.get('final')]
    bests = [p['best'] for p in points if p.get('best')]
    k = sum(f['successes'] for f in finals)
    n = sum(f['scenes'] for f in finals)

    def median_time(level: str):
        times = sorted(math.inf if (p.get('time_to') or {}).get(level) is None
                       else p['time_to'][level] for p in points)
        if not times:
            return None
        m = times[(len(times) - 1) // 2] if len(times) % 2 else \
            (times[len(times) // 2 - 1] + times[len(times) // 2]) / 2
        return None if math.isinf(m) else m

    return {'seeds': len(points),
            'finals': [f['success_rate'] for f in finals],
            'final_mean': sum(f['success_rate'] for f in finals) / len(finals) if finals else None,
            'pooled': {'success_rate': k / n, 'successes': k, 'scenes': n,
                       'ci95': list(wilson(k, n))} if n else None,
            'best_mean': sum(b['success_rate'] for b in bests) / len(bests) if bests else None,
            'time_to': {lv: median_time(lv) for lv in ('50', '70', '90')}}


def across_seeds(exp1: list[dict], exp2: list[dict]) -> list[str]:
    """The tables' settings over their seeds (settings measured with one seed, and points
    measured before seeds reached the learners, are left out)."""
    groups: dict[tuple, list[dict]] = {}
    for r in filter(properly_seeded, exp1):
        groups.setdefault(('exp. 1', r['arm']), []).append(r)
    for r in filter(properly_seeded, exp2):
        groups.setdefault(('exp. 2', f"N = {r['n']}, {DATA_WORDS[r.get('data', 'online')]}"),
                          []).append(r.get('ecu0') or {})
    rows = [(g, seed_summary(points)) for g, points in groups.items() if len(points) > 1]
    if not rows:
        return []
    lines = ['### Across seeds', '',
             '| experiment | setting | seeds | final success alone per seed | mean | '
             'pooled final [95 %] | mean best | median t50 / t70 / t90 (sim min) |',
             '|---|---|---|---|---|---|---|---|']
    for (exp, setting), m in rows:
        t = m['time_to']
        lines.append(f"| {exp} | {setting} | {m['seeds']} | "
                     f"{', '.join(pct(f) for f in m['finals'])} | {pct(m['final_mean'])} | "
                     f"{ci(m['pooled'])} | {pct(m['best_mean'])} | "
                     f"{tt(t['50'])} / {tt(t['70'])} / {tt(t['90'])} |")
    return lines + ['']


def run_curve(row: dict) -> list[dict]:
    """A point's success curve: experiment 1's own, a fleet's ecu0's."""
    return row['curve'] if 'curve' in row else (row.get('ecu0') or {}).get('curve', [])


def error_ranks(exp1: list[dict], exp2: list[dict]) -> list[str]:
    """Does the open-loop error the learner records rank a run's versions as success alone
    does? Spearman over each run's curve (sign: + when lower error goes with higher success;
    the recorded error's held-out set grows during a run, docs/GATE.md)."""
    import numpy as np
    from bench_gate import spearman
    rows = []
    for exp, rs in (('exp. 1', exp1), ('exp. 2', exp2)):
        for r in rs:
            curve = run_curve(r)
            errors = [p.get('open_loop_error') for p in curve]
            if len(curve) < 4 or None in errors:
                continue
            rho = spearman([-e for e in errors], [p['success_rate'] for p in curve])
            setting = r['arm'] if 'arm' in r else \
                f"N = {r['n']}, {DATA_WORDS[r.get('data', 'online')]}"
            rows.append((exp, setting, seed_cell(r), len(curve), rho))
    if not rows:
        return []
    lines = ['### Recorded open-loop error against success alone, over each run\'s versions', '',
             '| experiment | setting | seed | versions '
             '| Spearman (+: lower error, higher success) |',
             '|---|---|---|---|---|']
    lines += [f'| {e} | {s} | {seed} | {n} | {rho:+.2f} |' for e, s, seed, n, rho in rows]
    for exp in ('exp. 1', 'exp. 2'):
        rhos = [rho for e, *_, rho in rows if e == exp and np.isfinite(rho)]
        if rhos:
            lines.append(f'| {exp} | median of {len(rhos)} runs | | | {np.median(rhos):+.2f} '
                         f'({sum(r > 0 for r in rhos)} positive) |')
    return lines + ['']


def plot(out: Path, exp1: list[dict], exp2: list[dict]) -> None:
    try:
        import matplotlib
        matplotlib.use('Agg')
        import matplotlib.pyplot as plt
    except ImportError:
        print('matplotlib is not installed: no plots (pip install matplotlib)')
        return
    for name, rows, key in (('exp1_curves.png', exp1, 'arm'), ('exp2_curves.png', exp2, 'n')):
        if not rows:
            continue
        fig, ax = plt.subplots(figsize=(6, 4))
        # one colour per setting (arm, or N and data), one line style per seed
        setting = lambda r, key=key: (str(r[key]), r.get('data', 'online'))  # noqa: E731
        settings = sorted({setting(r) for r in rows},
                          key=lambda s: (s[1] != 'online', int(s[0]) if key == 'n' else s[0]))
        colours = plt.get_cmap('tab10').colors
        styles = ('-', '--', ':', '-.')
        for r in sorted(rows, key=lambda r: (settings.index(setting(r)), r['seed'])):
            curve = run_curve(r)
            if not curve:
                continue
            xs = [p['sim_minutes'] for p in curve]
            ys = [100 * p['success_rate'] for p in curve]
            lo = [100 * p['ci95'][0] for p in curve]
            hi = [100 * p['ci95'][1] for p in curve]
            label = f"{'N=' if key == 'n' else ''}{r[key]} seed {r['seed']}"
            if r.get('data', 'online') != 'online':
                label += f" ({DATA_WORDS[r['data']]})"
            colour = colours[settings.index(setting(r)) % len(colours)]
            ax.plot(xs, ys, marker='o', markersize=4, color=colour,
                    linestyle=styles[r['seed'] % len(styles)], label=label)
            ax.fill_between(xs, lo, hi, color=colour, alpha=0.06)
        ax.set_xlim(left=0)
        ax.set_xlabel('simulated minutes')
        ax.set_ylabel('success alone on unseen scenes (%)')
        ax.set_ylim(0, 100)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6, ncol=2, loc='lower right')
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        print(f'wrote {out / name}')


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('what', choices=('budget', 'online-offline', 'scaling', 'all', 'report'))
    ap.add_argument('--size', choices=sorted(SIZES), default=None,
                    help='preset sizes (small: make bench-paper; full: the issue\'s sizes)')
    ap.add_argument('--sim-minutes', type=float, default=None)
    ap.add_argument('--seeds', default=None, help='comma-separated seeds')
    ap.add_argument('--ecus', default=None, help='fleet sizes, comma-separated')
    ap.add_argument('--scenes', type=int, default=None, help='closed-loop scenes per point')
    ap.add_argument('--curve', type=int, default=None, help='checkpoints per curve')
    ap.add_argument('--arms', default='offline,hg_dagger,more_demos')
    ap.add_argument('--fleet-data', default='online',
                    help='experiment 2: what the learners train on, comma-separated: online '
                         '(their robots\' episodes) and/or demos (demonstrations only: the '
                         'fleet\'s compute without its data)')
    ap.add_argument('--rtf', type=float, default=0.0,
                    help='target real-time factor (0: as fast as the lockstep allows)')
    ap.add_argument('--budget', type=float, default=None,
                    help='training steps per simulated second (default: the measured one)')
    ap.add_argument('--train-interval', type=float, default=10.0)
    ap.add_argument('--param', action='append', default=[], metavar='NODE.NAME=VALUE',
                    help="a node parameter for every run (scarls ecu/fleet --param), e.g. "
                         "scheduler.guard_min_episodes=4; part of a point's settings")
    ap.add_argument('--demos', type=int, default=20)
    ap.add_argument('--more-demos', type=int, default=60,
                    help="demonstrations of experiment 1's arm (c) 'more_demos'")
    ap.add_argument('--timeout', type=float, default=3600.0, help='wall seconds per run')
    ap.add_argument('--steps', type=int, default=150, help='budget: steps per repeat')
    ap.add_argument('--repeats', type=int, default=3, help='budget: repeats')
    ap.add_argument('--workdir', default=None, help='keep the runs here (default: a temp dir)')
    ap.add_argument('--out', default=None,
                    help='results (default: docs/paper/, docs/paper/full/ for --size full); '
                         'points already there with the same settings are not run again')
    ap.add_argument('--fresh', action='store_true',
                    help='run every point even if --out has it already')
    args = ap.parse_args(argv)
    preset = SIZES[args.size or 'small']
    args.sim_minutes = args.sim_minutes or preset['sim_minutes']
    args.seeds = [int(s) for s in args.seeds.split(',')] if args.seeds else preset['seeds']
    args.ecus = [int(s) for s in args.ecus.split(',')] if args.ecus else preset['ecus']
    args.scenes = args.scenes or preset['scenes']
    args.curve = args.curve or preset['curve']
    args.arms = [a for a in args.arms.split(',') if a]
    args.fleet_data = [a for a in args.fleet_data.split(',') if a]
    if not args.fleet_data or set(args.fleet_data) - set(FLEET_DATA):
        ap.error(f'--fleet-data: one or more of {sorted(FLEET_DATA)}')
    unknown = sorted(set(args.arms) - set(ARMS))
    if unknown:
        ap.error(f'unknown arm(s) {unknown}; known: {sorted(ARMS)}')
    args.image_shape = (96, 128)
    if args.out is None:
        args.out = str(ROOT / 'docs' / 'paper' / ('full' if args.size == 'full' else ''))
    if args.budget is None:
        from scarls.sim.clock import DEFAULT_TRAIN_STEPS_PER_S
        args.budget = DEFAULT_TRAIN_STEPS_PER_S
    if args.what == 'budget':
        result = measure_budget(args)
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / 'budget.json').write_text(json.dumps(result, indent=1))
        return 0
    if args.what == 'report':
        if args.workdir:
            refresh(args, Path(args.workdir))
        report(args)
        return 0
    work = (Path(args.workdir).resolve() if args.workdir
            else Path(tempfile.mkdtemp(prefix='bench-paper-')))
    work.mkdir(parents=True, exist_ok=True)
    print(f'runs under {work}; results to {args.out}', flush=True)
    t0 = time.monotonic()
    try:
        if args.what in ('online-offline', 'all'):
            experiment_online_offline(args, work)
        if args.what in ('scaling', 'all'):
            experiment_scaling(args, work)
    except (RuntimeError, KeyboardInterrupt, subprocess.TimeoutExpired) as exc:
        why = 'interrupted' if isinstance(exc, KeyboardInterrupt) else str(exc)
        print(f'bench-paper stopped: {why}\nthe points measured before are saved in '
              f'{args.out}; the same command measures the rest (measured points are skipped)',
              file=sys.stderr, flush=True)
        return 1
    report(args)
    print(f'bench-paper took {(time.monotonic() - t0) / 60:.1f} min of wall time')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
