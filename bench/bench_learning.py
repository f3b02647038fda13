"""Learning benchmark: BC on a few expert demos, then HG-DAgger rounds, on this CPU, no ROS.

The experiment (results of the full ECU loop are in docs/BENCHMARKS.md):

1. ``--demos`` scripted-expert demonstrations are written as ordinary Zarr episodes and loaded
   into the offline buffer.
2. Behaviour cloning for ``--bc-steps`` gradient steps, then the policy ALONE is evaluated in
   the simulator (``--eval-episodes`` fixed scenes, never used for training): round 0.
3. Each round: the current policy runs ``--round-episodes`` episodes in the ECU loop
   (policy acts, the intervention gate with the ECU's teleop settings decides takeovers, the
   scripted expert acts while intervening); the episodes are written like an ECU writes them
   and added to the online buffer; the learner trains ``--round-steps`` steps with
   task-balanced, loss-boosted online/offline mixing; the policy alone is evaluated again.
4. Rounds repeat until ``--minutes`` of wall clock (everything included) are used up.

``--algorithm bc --no-online`` is the control: the same schedule of gradient steps, on the
demonstrations only (no episodes collected).

    python bench/bench_learning.py --minutes 10 --json learning.json
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import logging
import math
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

from scarls.checkpoints import save_checkpoint  # noqa: E402
from scarls.episodes import EpisodeReader, EpisodeWriter  # noqa: E402
from scarls.learner import (  # noqa: E402
    ECU_GATE_CONFIG,
    CheckpointGate,
    EpisodeData,
    MixingConfig,
    MixingSampler,
    Trainer,
    TrainerConfig,
    build_batch,
    evaluate_closed_loop,
    evaluate_open_loop,
    fit_normalization,
    generate_demos,
    make_algorithm,
    open_loop_batches,
    policy_cameras,
    run_hg_dagger_episode,
)
from scarls.policies import make_policy  # noqa: E402
from scarls.sim import DualArmSim, ScriptedExpert, SimConfig  # noqa: E402
from scarls.teleop.gate import InterventionGate  # noqa: E402

log = logging.getLogger('bench_learning')

TASK = 'pick_cube'
#: Scene seeds: demos, held-out demos (open loop), online episodes and evaluation never overlap.
DEMO_SEED, HELDOUT_SEED, ONLINE_SEED, EVAL_SEED = 10_000, 20_000, 30_000, 90_000
#: Scenes of the final evaluation (after the budget), disjoint from the per-round ones.
FINAL_EVAL_SEED = 95_000

DEFAULT_POLICY_CONFIG: dict[str, Any] = {
    'cameras': ['top'],
    'channels': [8],
    'keypoints': 8,
    'chunk_size': 10,
    'hidden_dim': 256,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description='BC on expert demos, then HG-DAgger rounds with the ECU loop in the '
        'simulator; reports closed-loop success of the policy alone per round.'
    )
    p.add_argument('--minutes', type=float, default=10.0, help='wall-clock budget (all phases)')
    p.add_argument('--json', type=Path, help='write the results here')
    p.add_argument('--seed', type=int, default=0, help='policy init / sampling seed')
    p.add_argument('--demos', type=int, default=20, help='offline expert demonstrations')
    p.add_argument('--heldout', type=int, default=4, help='held-out demos (open-loop metric)')
    p.add_argument('--policy', default='spatial', help='registered policy name')
    p.add_argument('--policy-config', type=json.loads, default=None,
                   help=f'policy config JSON (default {json.dumps(DEFAULT_POLICY_CONFIG)})')
    p.add_argument('--algorithm', default='hg_dagger', help='bc | hg_dagger')
    p.add_argument('--no-online', action='store_true',
                   help='control run: train on the demos only (no episodes collected)')
    p.add_argument('--bc-steps', type=int, default=1000, help='gradient steps before round 1')
    p.add_argument('--round-steps', type=int, default=500, help='gradient steps per round')
    p.add_argument('--round-episodes', type=int, default=8, help='ECU episodes per round')
    p.add_argument('--max-rounds', type=int, default=1000, help='stop after this many rounds')
    p.add_argument('--eval-episodes', type=int, default=20, help='closed-loop eval episodes')
    p.add_argument('--batch-size', type=int, default=32)
    p.add_argument('--lr', type=float, default=3e-3)
    p.add_argument('--loss', default='mse', help='mse | l1 | huber (on the normalised error)')
    p.add_argument('--ema', type=float, default=0.99,
                   help='decay of the weight average that is evaluated and deployed (0 = off)')
    p.add_argument('--alpha', type=float, default=2.0, help='online boost of the mixing')
    p.add_argument('--online-weight', type=float, default=None,
                   help='base share of the online buffer (default: its share of the labels)')
    p.add_argument('--image-shape', type=int, nargs=2, default=(96, 128), metavar=('H', 'W'))
    p.add_argument('--final-eval-episodes', type=int, default=100,
                   help='after the budget: evaluate the BC policy and the final policy on this '
                   'many scenes (0 = skip; not counted in --minutes)')
    p.add_argument('--save', type=Path, help='save the final policy checkpoint here')
    p.add_argument('--data-root', type=Path, help='keep the episodes here (default: temp dir)')
    p.add_argument('--no-write', action='store_true',
                   help='keep online episodes in memory only (skip the Zarr writer)')
    p.add_argument('-v', '--verbose', action='store_true')
    return p.parse_args(argv)


class Experiment:
    """State of one run: buffers, policy, trainer, the results table."""

    def __init__(self, args: argparse.Namespace, root: Path) -> None:
        self.args = args
        self.root = root
        self.t0 = time.perf_counter()
        cfg = dict(DEFAULT_POLICY_CONFIG if args.policy_config is None else args.policy_config)
        if args.policy != 'spatial' and args.policy_config is None:
            cfg = {}
        self.policy = make_policy(args.policy, cfg, seed=args.seed)
        self.cameras = policy_cameras(self.policy)
        self.algorithm = make_algorithm(args.algorithm)
        self.sampler = MixingSampler(
            MixingConfig(alpha=args.alpha, online_weight=args.online_weight)
        )
        self.trainer = Trainer(self.policy, TrainerConfig(
            lr=args.lr, batch_size=args.batch_size, ema_decay=args.ema, loss=args.loss))
        self.episodes: dict[str, EpisodeData] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.heldout: list[EpisodeData] = []
        self.rng = np.random.default_rng(args.seed)
        self.rows: list[dict[str, Any]] = []
        self.timing = {'demos': 0.0, 'train': 0.0, 'collect': 0.0, 'eval': 0.0}
        self.online_seed = ONLINE_SEED
        self.gate = CheckpointGate(threshold=math.inf, must_not_be_worse=True)
        self.deployed_metric: float | None = None
        self._drawn: list[Any] = []

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    # -- data ------------------------------------------------------------------------------
    def add_episode(self, key: str, ep: EpisodeData) -> None:
        weights = self.algorithm.step_weights(ep.intervention, ep.outcome, ep.source)
        self.episodes[key] = ep
        self.labels[key] = weights
        self.sampler.add((ep.task, ep.source), key, ep.steps, weights)

    def make_demos(self) -> None:
        a = self.args
        t = time.perf_counter()
        shape = tuple(a.image_shape)
        refs = generate_demos(self.root / 'offline', TASK, a.demos, seed=DEMO_SEED,
                              image_shape=shape, cameras=self.cameras or ('top',))
        for ref in refs:
            ep = EpisodeData.from_reader(EpisodeReader(ref.path), source='offline',
                                         cameras=self.cameras)
            self.add_episode(f'offline/{ref.index}', ep)
        if a.heldout:
            held = generate_demos(self.root / 'heldout', TASK, a.heldout, seed=HELDOUT_SEED,
                                  image_shape=shape, cameras=self.cameras or ('top',))
            self.heldout = [EpisodeData.from_reader(EpisodeReader(r.path), source='offline',
                                                    cameras=self.cameras) for r in held]
        fit_normalization(self.policy, [self.episodes[k] for k in self.episodes])
        self.timing['demos'] += time.perf_counter() - t
        log.info('%d demos (%d steps) in %.1f s', a.demos,
                 sum(e.steps for e in self.episodes.values()), time.perf_counter() - t)

    def collect(self, n: int) -> dict[str, Any]:
        a = self.args
        t = time.perf_counter()
        sim = DualArmSim(SimConfig(height=a.image_shape[0], width=a.image_shape[1]))
        expert = ScriptedExpert(sim.config)
        gate = InterventionGate(ECU_GATE_CONFIG)
        results = []
        version = len(self.rows)
        for _ in range(n):
            seed = self.online_seed
            self.online_seed += 1
            out = run_hg_dagger_episode(self.trainer.deployable(), gate, expert, sim, seed=seed,
                                        cameras=self.cameras or ('top',))
            res = out.result
            results.append(res)
            if not a.no_write:
                w = EpisodeWriter(self.root / 'online', TASK, 'ecu0',
                                  cameras=self.cameras or ('top',),
                                  image_shape=tuple(a.image_shape), state_dim=14, action_dim=14,
                                  fsync=False)
                for rec in out.records:
                    w.append(rec)
                w.finalize(res.outcome, model_version=version, extra={'source': 'online'})
            weights = self.algorithm.step_weights(
                np.array([r.intervention for r in out.records]), res.outcome, 'online')
            ep = EpisodeData.from_records(out.records, task=TASK, outcome=res.outcome,
                                          source='online', cameras=self.cameras,
                                          keep=weights > 0)
            self.add_episode(f'online/{seed}', ep)
        dt = time.perf_counter() - t
        self.timing['collect'] += dt
        steps = sum(r.steps for r in results)
        human = sum(r.intervention_steps for r in results)
        return {
            'collected': n,
            'collected_success': sum(r.outcome == 'success' for r in results) / max(n, 1),
            'collected_steps': steps,
            'intervention_fraction': human / max(steps, 1),
            'takeovers': sum(r.takeovers for r in results),
            'collect_seconds': dt,
        }

    # -- training --------------------------------------------------------------------------
    def _batch(self) -> dict[str, torch.Tensor]:
        drawn = self.sampler.draw(self.args.batch_size, self.rng)
        self._drawn = drawn
        return build_batch(self.episodes, [(s.episode, s.frame) for s in drawn],
                           self.policy.chunk_size, cameras=self.cameras, labels=self.labels)

    def _report(self, batch: Any, result: Any) -> None:
        per: dict[tuple[str, str], list[float]] = {}
        for s, loss in zip(self._drawn, result.per_sample, strict=True):
            per.setdefault(s.buffer, []).append(float(loss))
        for key, losses in per.items():
            self.sampler.report_loss(key, float(np.mean(losses)))

    def train(self, steps: int) -> dict[str, Any]:
        t = time.perf_counter()
        stats = self.trainer.train_steps(self._batch, steps, on_step=self._report)
        self.timing['train'] += time.perf_counter() - t
        probs = self.sampler.probabilities()
        return {
            'train_steps': steps,
            'train_loss': stats.loss_mean,
            'ms_per_step': 1000 * stats.seconds / max(steps, 1),
            'p_online': sum(v for k, v in probs.items() if k[1] == 'online'),
        }

    # -- evaluation ------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        a = self.args
        t = time.perf_counter()
        stats = evaluate_closed_loop(self.trainer.deployable(), a.eval_episodes, seed=EVAL_SEED,
                                     image_shape=tuple(a.image_shape))
        out: dict[str, Any] = {
            'success_rate': stats.success_rate,
            'ci95': stats.ci95,
            'mean_steps': stats.mean_steps,
            'eval_seconds': stats.seconds,
        }
        if self.heldout:
            ol = evaluate_open_loop(self.trainer.deployable(), open_loop_batches(
                self.heldout, self.policy.chunk_size, cameras=self.cameras, stride=2))
            decision = self.gate.decide(ol.mse, self.deployed_metric)
            if decision.approved:
                self.deployed_metric = ol.mse
            out.update(open_loop_mse=ol.mse, open_loop_score=ol.score,
                       gate_approved=decision.approved)
        self.timing['eval'] += time.perf_counter() - t
        return out

    def record(self, rnd: int, **parts: Any) -> None:
        row: dict[str, Any] = {'round': rnd, 'minutes': self.elapsed() / 60.0,
                               'total_train_steps': self.trainer.total_steps}
        for part in parts.values():
            row.update(part)
        row['online_episodes'] = sum(1 for k in self.episodes if k.startswith('online/'))
        row['expert_labels'] = float(sum(w.sum() for w in self.labels.values()))
        self.rows.append(row)
        log.info('round %2d  %5.2f min  steps %5d  success %3.0f %% (+-%2.0f)  %s', rnd,
                 row['minutes'], row['total_train_steps'], 100 * row['success_rate'],
                 100 * row['ci95'],
                 ' '.join(f'{k}={v:.3g}' if isinstance(v, float) else f'{k}={v}'
                          for k, v in row.items() if k in (
                              'collected_success', 'intervention_fraction', 'train_loss',
                              'open_loop_mse', 'p_online', 'ms_per_step')))


def run(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    tmp = None
    if args.data_root is None:
        tmp = Path(tempfile.mkdtemp(prefix='bench_learning_'))
    root = args.data_root or tmp
    try:
        ex = Experiment(args, root)
        budget = args.minutes * 60.0
        ex.make_demos()
        ex.record(0, train=ex.train(args.bc_steps), ev=ex.evaluate())
        bc_state = copy.deepcopy(ex.trainer.deployable().state_dict())
        rnd = 0
        while rnd < args.max_rounds:
            per_round = ex.elapsed() / max(rnd + 1, 1) if rnd == 0 else (
                (ex.elapsed() - ex.rows[0]['minutes'] * 60.0) / rnd)
            if ex.elapsed() + per_round > budget:
                break
            rnd += 1
            collected = {} if args.no_online else ex.collect(args.round_episodes)
            ex.record(rnd, col=collected, train=ex.train(args.round_steps), ev=ex.evaluate())
        total = ex.elapsed()
        final: dict[str, Any] = {}
        if args.final_eval_episodes:
            final_policy = ex.trainer.deployable()
            bc_policy = copy.deepcopy(final_policy)
            bc_policy.load_state_dict(bc_state)
            for name, pol in (('bc', bc_policy), ('final', final_policy)):
                st = evaluate_closed_loop(pol, args.final_eval_episodes, seed=FINAL_EVAL_SEED,
                                          image_shape=tuple(args.image_shape))
                final[name] = {'success_rate': st.success_rate, 'ci95': st.ci95,
                               'n': st.n_episodes, 'mean_success_steps': st.mean_success_steps}
                log.info('final evaluation (%d new scenes): %s policy %.0f %% (+-%.0f)',
                         st.n_episodes, name, 100 * st.success_rate, 100 * st.ci95)
        if args.save:
            save_checkpoint(args.save, ex.trainer.deployable(), version=len(ex.rows),
                            metrics={'success_rate': ex.rows[-1]['success_rate']})
        return {
            'args': {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            'policy': ex.policy.name,
            'policy_config': ex.policy.config.to_dict(),
            'parameters': sum(p.numel() for p in ex.policy.parameters()),
            'trainer_config': dataclasses.asdict(ex.trainer.config),
            'rounds': ex.rows,
            'timing_seconds': ex.timing,
            'total_seconds': total,
            'final_evaluation': final,
            'final_success_rate': ex.rows[-1]['success_rate'],
            'best_success_rate': max(r['success_rate'] for r in ex.rows),
            'machine': {'python': platform.python_version(), 'torch': torch.__version__,
                        'cpus': torch.get_num_threads()},
        }
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(asctime)s %(message)s', datefmt='%H:%M:%S')
    for noisy in ('scarls.episodes', 'scarls.learner'):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    result = run(args)
    if args.json:
        args.json.write_text(json.dumps(result, indent=1, default=float))
        log.info('results written to %s', args.json)
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
