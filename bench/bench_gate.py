"""Does the deploy gate's metric predict closed-loop success? Rank correlation over versions.

Every checkpoint the learner deploys passed the open-loop gate (error on held-out expert steps
under a threshold, not worse than the deployed model's), yet on the robot consecutive versions
swing by 20-30 points of success. This benchmark takes the checkpoints of one learning run
(`scarls ecu --learn`, every version's weights kept) and measures, per version:

* the ground truth: task success of the policy ALONE (no takeover) in the simulator over
  ``--scenes`` unseen scenes (seeds 900000...), with the actor's chunked control;
* the gate's metric as the learner recorded it (``open_loop_error`` in the registry: held-out
  demonstrations + every 5th online episode's takeover steps, a set that grows over the run);
* open-loop variants on a fixed set of ``--heldout-demos`` fresh expert demonstrations
  (unseen scenes 700000...): the plain error, the error on the chunk entries the actor actually
  executes, the error on the decisive phases (descend, close, lift), the gripper error;
* a short closed-loop evaluation on ``--gate-scenes`` other held-out scenes (800000...): its
  success rate and its mean task progress (scarls.learner.sim_gate, what the learner's
  ``gate_metric: closed_loop`` runs).

and reports each metric's Spearman rank correlation with the ground truth (sign: positive =
the metric ranks the versions as their success does; errors are negated), a one-sided
permutation p-value, and the split-half reliability of the ground truth itself (success on
the even vs the odd scenes): no metric can correlate much better with a noisy ground truth
than that ground truth with itself.

    .venv/bin/python bench/bench_gate.py --minutes 7 --json gate.json          # run + measure
    .venv/bin/python bench/bench_gate.py --data-root DIR --json gate.json      # an earlier run

``--data-root`` must be the data root of a ``scarls ecu --learn`` run whose learner kept every
checkpoint's weights (``keep_checkpoints`` large, as this script sets it); rejected candidates
have no weights and are not measured.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

from scarls.checkpoints import load_checkpoint  # noqa: E402
from scarls.checkpoints.registry import read_index  # noqa: E402
from scarls.learner import MASK_KEY, EpisodeData, RolloutConfig, build_batch  # noqa: E402
from scarls.learner.rollout import policy_cameras  # noqa: E402
from scarls.learner.sim_gate import closed_loop_scores  # noqa: E402
from scarls.policies import ACTION_KEY  # noqa: E402
from scarls.sim import DualArmSim, ScriptedExpert, SimConfig  # noqa: E402

HELDOUT_SEED, GATE_SEED, EVAL_SEED = 700_000, 800_000, 900_000
DECISIVE = ('descend', 'close', 'lift')


# -- statistics (numpy only) ---------------------------------------------------------------------
def ranks(x) -> np.ndarray:
    """Ranks 1..n, ties averaged."""
    x = np.asarray(x, dtype=float)
    order = np.argsort(x, kind='mergesort')
    r = np.empty(len(x))
    r[order] = np.arange(1, len(x) + 1)
    for v in np.unique(x):
        tie = x == v
        if tie.sum() > 1:
            r[tie] = r[tie].mean()
    return r


def spearman(x, y) -> float:
    rx, ry = ranks(x), ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return float('nan')
    return float(np.corrcoef(rx, ry)[0, 1])


def permutation_p(x, y, n: int = 20_000, seed: int = 0) -> float:
    """One-sided p-value of a Spearman correlation at least as large under independence."""
    rho = spearman(x, y)
    if not np.isfinite(rho):
        return float('nan')
    rng = np.random.default_rng(seed)
    rx, ry = ranks(x), ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    perms = np.array([rx @ rng.permutation(ry) for _ in range(n)]) / denom
    return float((np.sum(perms >= rho - 1e-12) + 1) / (n + 1))


def bootstrap_ci(x, y, n: int = 4000, seed: int = 1) -> tuple[float, float]:
    """95 % percentile interval of the Spearman correlation, resampling versions."""
    rng = np.random.default_rng(seed)
    x, y = np.asarray(x, float), np.asarray(y, float)
    vals = []
    for _ in range(n):
        i = rng.integers(0, len(x), len(x))
        r = spearman(x[i], y[i])
        if np.isfinite(r):
            vals.append(r)
    return (float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))) if vals \
        else (float('nan'), float('nan'))


# -- held-out expert demonstrations with their phases ---------------------------------------------
def expert_demos(n: int, seed: int, image_shape, cameras) -> tuple[list[EpisodeData], list]:
    sim = DualArmSim(SimConfig(height=image_shape[0], width=image_shape[1], seed=seed))
    expert = ScriptedExpert(sim.config, layout=sim.layout)
    demos, phases = [], []
    for s in range(seed, seed + n):
        sim.reset(s)
        states, actions, frames, ph = [], [], {c: [] for c in cameras}, []
        for _ in range(300):
            task = sim.task_state()
            if task.success or task.failed:
                break
            q = sim.joint_positions()
            a = expert.action(q, task)
            ph.append(expert.phase(q, task))
            for c in cameras:
                frames[c].append(sim.render(c))
            states.append(q.astype(np.float32))
            actions.append(a.astype(np.float32))
            sim.step(a)
        t = len(states)
        demos.append(EpisodeData(task='pick_cube', outcome='success', source='offline',
                                 state=np.stack(states), action=np.stack(actions),
                                 intervention=np.ones(t, dtype=bool),
                                 images={c: np.stack(v) for c, v in frames.items()}))
        phases.append(np.array(ph))
    return demos, phases


def open_loop_variants(policy, demos, phases, rollout: RolloutConfig, stride: int = 2) -> dict:
    """Open-loop errors (rad^2) of ``policy`` on the demos: plain, on the executed chunk
    entries, on the decisive phases, gripper only."""
    cams = policy_cameras(policy)
    k = policy.chunk_size
    eps = dict(enumerate(demos))
    labels = {i: np.ones(d.steps, np.float32) for i, d in eps.items()}
    samples = [(i, t) for i, d in eps.items() for t in range(0, d.steps, stride)]
    lo = rollout.latency_ticks
    hi = min(k, k - rollout.refill_when_remaining + rollout.latency_ticks)
    executed = torch.zeros(k)
    executed[lo:hi] = 1.0
    lay = DualArmSim(SimConfig()).layout
    grip = sorted(lay.gripper_index.values())
    per_all, per_exec, per_grip, decisive = [], [], [], []
    was = policy.training
    policy.eval()
    with torch.inference_mode():
        for j in range(0, len(samples), 64):
            part = samples[j:j + 64]
            batch = build_batch(eps, part, k, cameras=cams, labels=labels)
            pred = policy(batch).float()
            target = batch[ACTION_KEY].float()
            m = batch[MASK_KEY].float()
            err = ((pred - target) ** 2).mean(dim=2)
            gerr = ((pred - target)[..., grip] ** 2).mean(dim=2)
            per_all += ((err * m).sum(1) / m.sum(1).clamp(min=1)).tolist()
            me = m * executed
            per_exec += ((err * me).sum(1) / me.sum(1).clamp(min=1)).tolist()
            per_grip += ((gerr * m).sum(1) / m.sum(1).clamp(min=1)).tolist()
            decisive += [phases[i][t] in DECISIVE for i, t in part]
    policy.train(was)
    per_all, decisive = np.array(per_all), np.array(decisive)
    return {'open_loop': float(per_all.mean()),
            'open_loop_executed': float(np.mean(per_exec)),
            'open_loop_decisive': float(per_all[decisive].mean()),
            'open_loop_gripper': float(np.mean(per_grip))}


# -- a learning run whose checkpoints all keep their weights -------------------------------------
def learning_run(root: Path, minutes: float, extra: str) -> None:
    from scarls.bringup import default_params_file
    params = yaml.safe_load(default_params_file().read_text())
    params['/**/learner']['ros__parameters']['keep_checkpoints'] = 10_000
    params_path = root / 'bench_gate_params.yaml'
    params_path.write_text(yaml.safe_dump(params))
    cmd = [sys.executable, '-m', 'scarls.cli', 'ecu', '--learn', '--episodes', '0', '--minutes',
           str(minutes), '--data-root', str(root), '--summary', str(root / 'summary.json'),
           '--params-file', str(params_path), *extra.split()]
    subprocess.run(cmd, check=False)


def replay_training(src: Path, out: Path, task: str, rounds: int, per_round: int,
                    seed: int) -> None:
    """Versions without a robot: the ECU's learner (``OnlineLearner``, the node's settings)
    pre-trains on ``src``'s demonstrations, then sees ``src``'s online episodes ``per_round``
    at a time, in recording order, one training round each; every candidate is stored with
    its weights, rejected ones too."""
    from scarls.checkpoints.registry import CheckpointRegistry
    from scarls.episodes import list_episodes
    from scarls.learner import MixingConfig, TrainerConfig
    from scarls.learner.online import OnlineConfig, OnlineLearner, policy_config_for
    from scarls.policies import make_policy
    from scarls.robot import load_robot

    cfg = {'cameras': ['top'], 'channels': [8], 'keypoints': 8, 'chunk_size': 10,
           'hidden_dim': 256}   # the learner node's default policy_config
    policy = make_policy('spatial', policy_config_for(cfg, load_robot('sim_dual6'),
                                                      src / 'offline', task), seed=seed)
    registry = CheckpointRegistry(out / 'checkpoints' / task, keep_last=1_000_000,
                                  keep_records=1_000_000, store_rejected_weights=True)
    learner = OnlineLearner(policy, registry, OnlineConfig(
        steps_per_round=500, pretrain_steps=1000, seed=seed,
        trainer=TrainerConfig(lr=3e-3, batch_size=32, ema_decay=0.99),
        mixing=MixingConfig()))
    learner.load_offline(src / 'offline', task, heldout=2)
    t0 = time.time()
    learner.train_round(1000)
    stage = out / 'stage' / task
    stage.mkdir(parents=True, exist_ok=True)
    online = list_episodes(src, task)
    for r in range(rounds):
        for e in online[r * per_round:(r + 1) * per_round]:
            for f in (e.path, e.meta_path):
                (stage / f.name).symlink_to(f.resolve())
        learner.refresh_online(out / 'stage', task)
        res = learner.train_round(500)
        print(f'replay round {r + 1}: v{res.version} error {res.metric:.5f} '
              f'{"approved" if res.approved else "rejected"} ({learner.online_episodes} online '
              f'episodes) [{time.time() - t0:.0f} s]', flush=True)


def guard_characteristics(trials: int = 4000, seed: int = 0) -> list[dict]:
    """How often the deploy guard (scarls.checkpoints.guard, the scheduler's settings) rolls
    back a new version, by simulation: the predecessor ran ``ref`` episodes with success-alone
    probability ``p_old``, the new version runs ``looks`` episodes with ``p_new`` and is judged
    after each one from the ``min_episodes``-th on (every look can roll back)."""
    from scarls.checkpoints.guard import DeployGuard, GuardConfig

    rng = np.random.default_rng(seed)
    out = []
    cases = [(0.5, 0.5), (0.7, 0.7), (0.9, 0.9), (0.7, 0.5), (0.7, 0.4), (0.7, 0.3),
             (0.6, 0.2), (0.9, 0.5)]
    for ref, looks in ((8, 8), (20, 8), (20, 20)):
        for p_old, p_new in cases:
            rolled = 0
            for _ in range(trials):
                guard = DeployGuard(GuardConfig(min_episodes=8))
                guard.on_deploy(1)
                for ok in rng.random(ref) < p_old:
                    guard.record(1, 'success', 100, 0 if ok else 30)
                guard.on_deploy(2)
                for ok in rng.random(looks) < p_new:
                    if guard.record(2, 'success', 100, 0 if ok else 30).action == 'rollback':
                        rolled += 1
                        break
            out.append({'reference_episodes': ref, 'new_episodes': looks, 'p_old': p_old,
                        'p_new': p_new, 'rollback_rate': rolled / trials})
    return out


METRICS = [  # (key, label, higher is better)
    ('recorded', "gate's open-loop error as recorded by the learner", False),
    ('open_loop', 'open-loop error, fixed held-out demos', False),
    ('open_loop_executed', 'open-loop error, executed chunk entries only', False),
    ('open_loop_decisive', 'open-loop error, decisive phases (descend/close/lift)', False),
    ('open_loop_gripper', 'open-loop error, grippers only', False),
    ('gate_success', 'closed-loop success, gate scenes', True),
    ('gate_progress', 'closed-loop progress, gate scenes', True),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--data-root', type=Path, help='an earlier `scarls ecu --learn` run')
    ap.add_argument('--minutes', type=float, default=7.0,
                    help='without --data-root: length of the learning run to make')
    ap.add_argument('--extra', default='', help='more `scarls ecu` arguments for the run')
    ap.add_argument('--replay-from', type=Path,
                    help='make the versions without a robot: the learner replays this run\'s '
                    'demonstrations and online episodes (see replay_training) into --data-root')
    ap.add_argument('--rounds', type=int, default=24, help='with --replay-from')
    ap.add_argument('--per-round', type=int, default=3,
                    help='with --replay-from: online episodes added per round')
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--task', default='pick_cube')
    ap.add_argument('--versions', type=int, default=30,
                    help='most versions to measure (spread over the run)')
    ap.add_argument('--scenes', type=int, default=60, help='ground-truth scenes per version')
    ap.add_argument('--gate-scenes', type=int, default=10,
                    help='scenes of the short closed-loop evaluation')
    ap.add_argument('--heldout-demos', type=int, default=8)
    ap.add_argument('--json', type=Path)
    ap.add_argument('--guard-only', action='store_true',
                    help="only simulate the deploy guard's rollback rates (no checkpoints)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    if args.guard_only:
        rows = guard_characteristics()
        print('| predecessor episodes | new version episodes (judged from the 8th) | '
              'success alone: predecessor -> new | rolled back |')
        print('|---|---|---|---|')
        for r in rows:
            print(f"| {r['reference_episodes']} | {r['new_episodes']} | {r['p_old']:.0%} -> "
                  f"{r['p_new']:.0%} | {100 * r['rollback_rate']:.1f} % |")
        if args.json:
            args.json.write_text(json.dumps(rows, indent=1) + '\n')
        return 0
    root = args.data_root
    if args.replay_from is not None:
        root = root or Path(tempfile.mkdtemp(prefix='scarls_gate_'))
        if not (root / 'checkpoints' / args.task / 'registry.json').exists():
            replay_training(args.replay_from, root, args.task, args.rounds, args.per_round,
                            args.seed)
    elif root is None:
        root = Path(tempfile.mkdtemp(prefix='scarls_gate_'))
        learning_run(root, args.minutes, args.extra)
    index = read_index(root / 'checkpoints' / args.task)
    stored = [r for v, r in sorted(index.records.items()) if r.has_weights]
    if len(stored) < 3:
        print(f'only {len(stored)} checkpoints with weights under {root}: nothing to rank')
        return 1
    n = min(args.versions, len(stored))
    picks = sorted({stored[round(i * (len(stored) - 1) / max(1, n - 1))].version
                    for i in range(n)})
    rollout = RolloutConfig()
    t0 = time.time()
    first, _ = load_checkpoint(index.records[picks[0]].path)
    demos, phases = expert_demos(args.heldout_demos, HELDOUT_SEED, rollout.image_shape,
                                 policy_cameras(first))
    eval_seeds = list(range(EVAL_SEED, EVAL_SEED + args.scenes))
    gate_seeds = list(range(GATE_SEED, GATE_SEED + args.gate_scenes))
    rows = []
    for v in picks:
        rec = index.records[v]
        policy, _ = load_checkpoint(rec.path, expected_sha256=rec.sha256)
        row = {'version': v, 'approved': rec.approved,
               'online_episodes': rec.metrics.get('online_episodes', 0.0),
               'recorded': rec.metrics.get('open_loop_error')}
        row.update(open_loop_variants(policy, demos, phases, rollout))
        gate = closed_loop_scores(policy, gate_seeds, config=rollout)
        row['gate_success'] = float(np.mean([s.success for s in gate]))
        row['gate_progress'] = float(np.mean([s.progress for s in gate]))
        truth = closed_loop_scores(policy, eval_seeds, config=rollout)
        row['per_scene'] = [int(s.success) for s in truth]
        row['success'] = float(np.mean(row['per_scene']))
        rows.append(row)
        print(f"v{v}: success {100 * row['success']:.0f} % ({args.scenes} scenes); recorded "
              f"{row['recorded']:.3g}, open loop {row['open_loop']:.3g}, executed "
              f"{row['open_loop_executed']:.3g}, decisive {row['open_loop_decisive']:.3g}, "
              f"gripper {row['open_loop_gripper']:.3g}; gate scenes "
              f"{100 * row['gate_success']:.0f} %, progress {row['gate_progress']:.3f} "
              f"[{time.time() - t0:.0f} s]", flush=True)
    success = np.array([r['success'] for r in rows])
    per_scene = np.array([r['per_scene'] for r in rows])
    half = spearman(per_scene[:, 0::2].mean(1), per_scene[:, 1::2].mean(1))
    # Spearman-Brown: the reliability of the full set from the two halves
    reliability = 2 * half / (1 + half) if np.isfinite(half) and half > -1 else float('nan')
    result = {'data_root': str(root), 'versions': len(rows), 'scenes': args.scenes,
              'gate_scenes': args.gate_scenes, 'heldout_demos': args.heldout_demos,
              'machine': {'nproc': os.cpu_count(), 'loadavg': os.getloadavg()},
              'seconds': time.time() - t0,
              'ground_truth_split_half': half, 'ground_truth_reliability': reliability,
              'rows': rows, 'correlations': {}}
    print(f'\n{len(rows)} versions, ground truth over {args.scenes} scenes each; split-half '
          f'rank correlation of the ground truth {half:.2f} (reliability {reliability:.2f})\n')
    print('| metric | Spearman rho with success alone | 95 % CI (bootstrap over versions) '
          '| p (one-sided, permutation) |')
    print('|---|---|---|---|')
    for key, label, higher in METRICS:
        x = np.array([np.nan if r[key] is None else float(r[key]) for r in rows])
        ok = np.isfinite(x)
        xs = x[ok] if higher else -x[ok]
        rho = spearman(xs, success[ok])
        lo, hi = bootstrap_ci(xs, success[ok])
        p = permutation_p(xs, success[ok])
        result['correlations'][key] = {'label': label, 'rho': rho, 'ci95': [lo, hi], 'p': p,
                                       'versions': int(ok.sum())}
        print(f'| {label} | {rho:+.2f} | {lo:+.2f} .. {hi:+.2f} | {p:.3f} |')
    print('\n| version | online episodes | success alone | recorded gate error | open loop | '
          'executed entries | decisive phases | gate scenes: success, progress |')
    print('|---|---|---|---|---|---|---|---|')
    for r in rows:
        print(f"| v{r['version']} | {r['online_episodes']:.0f} | {100 * r['success']:.0f} % | "
              f"{r['recorded']:.3g} | {r['open_loop']:.3g} | {r['open_loop_executed']:.3g} | "
              f"{r['open_loop_decisive']:.3g} | {100 * r['gate_success']:.0f} %, "
              f"{r['gate_progress']:.3f} |")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
