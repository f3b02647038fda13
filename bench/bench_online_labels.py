"""Why the robot's takeovers do not raise success alone: the same training on recorded data.

Trains the ECU's learner (``scarls.learner.online.OnlineLearner``, the default policy, batch,
learning rate and weight average of config/ecu.yaml) for a fixed number of steps in one process,
no ROS, and measures success alone on unseen scenes after each block of steps:

* ``demos``: the demonstrations only;
* ``online``: the demonstrations plus the online episodes of a recorded run (``--online``: an
  ECU's data root, e.g. a ``bench_paper.py`` run), mixed as the ECU mixes them (online labels at
  most ``max_online_share`` of a batch, default 0.3);
* ``online_uncapped``: the same with the online share following the label counts (no cap);
* ``more_demos``: ``--more-demos`` demonstrations instead (the same first ones, more scenes).

    .venv/bin/python bench/bench_online_labels.py --online RUN/pick_cube/.. --json out.json
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

TASK = 'pick_cube'
EVAL_SEED = 900_000   # the scenes of bench_paper.py


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p = k / n
    d = 1 + z * z / n
    c = (p + z * z / (2 * n)) / d
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, c - h), min(1.0, c + h)


def run(arm: str, args, offline: Path, more: Path, tmp: Path) -> dict:
    import torch

    from scarls.checkpoints.registry import CheckpointRegistry
    from scarls.learner.config import MixingConfig, TrainerConfig
    from scarls.learner.node import DEFAULT_POLICY_CONFIG
    from scarls.learner.online import OnlineConfig, OnlineLearner, policy_config_for
    from scarls.learner.rollout import evaluate_closed_loop
    from scarls.policies import make_policy
    from scarls.robot import load_robot

    torch.manual_seed(args.seed)
    robot = load_robot('sim_dual6')
    demos = more if arm == 'more_demos' else offline
    policy = make_policy('spatial', policy_config_for(json.loads(DEFAULT_POLICY_CONFIG), robot,
                                                      demos, TASK), seed=args.seed)
    mixing = MixingConfig(max_online_share=1.0) if arm == 'online_uncapped' else MixingConfig()
    learner = OnlineLearner(policy, CheckpointRegistry(tmp / arm / 'ckpt'), OnlineConfig(
        seed=args.seed, trainer=TrainerConfig(lr=3e-3, batch_size=32, ema_decay=0.99,
                                              device='cpu', precision='fp32'),
        mixing=mixing))
    learner.load_offline(demos, TASK, heldout=2)
    online = 0
    if arm.startswith('online'):
        online = learner.refresh_online(args.online, TASK)
    # hg_dagger trains on every demonstration step and on the takeover steps of the robot's
    labels = {src: sum(len(ep.action) if src == 'offline' else int(ep.intervention.sum())
                       for ep in learner.episodes.values() if ep.source == src)
              for src in ('offline', 'online')}
    points, done = [], 0
    t0 = time.process_time()
    for _ in range(args.blocks):
        learner.trainer.train_steps(learner._batch, args.block_steps)
        done += args.block_steps
        stats = evaluate_closed_loop(learner.trainer.deployable(), args.scenes, seed=EVAL_SEED)
        k = round(stats.success_rate * stats.n_episodes)
        lo, hi = wilson(k, stats.n_episodes)
        points.append({'steps': done, 'success_rate': k / stats.n_episodes, 'ci95': [lo, hi],
                       'scenes': stats.n_episodes})
        print(f'{arm:16s} {done:6d} steps: {100 * k / stats.n_episodes:3.0f} % of '
              f'{stats.n_episodes} [{100 * lo:.0f}, {100 * hi:.0f}]  '
              f'({time.process_time() - t0:.0f} CPU s)', flush=True)
    return {'arm': arm, 'online_episodes': online, 'episodes': len(learner.episodes),
            'labelled_steps': labels, 'points': points}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--online', type=Path, required=True,
                    help='data root of a recorded ECU run (holds pick_cube/episode_N.zarr)')
    ap.add_argument('--arms', default='demos,online,online_uncapped,more_demos')
    ap.add_argument('--demos', type=int, default=20)
    ap.add_argument('--more-demos', type=int, default=60)
    ap.add_argument('--blocks', type=int, default=3)
    ap.add_argument('--block-steps', type=int, default=1500)
    ap.add_argument('--scenes', type=int, default=200)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--json', type=Path)
    args = ap.parse_args(argv)
    from scarls.learner.demos import generate_demos
    from scarls.robot import load_robot
    shape = load_robot('sim_dual6').image_shape
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        offline, more = tmp / 'offline', tmp / 'more'
        generate_demos(offline, TASK, args.demos, seed=0, image_shape=shape)
        if 'more_demos' in args.arms:
            generate_demos(more, TASK, args.more_demos, seed=0, image_shape=shape)
        for arm in args.arms.split(','):
            out.append(run(arm, args, offline, more, tmp))
            if args.json:
                args.json.write_text(json.dumps({'args': {k: str(v) for k, v in
                                                          vars(args).items()},
                                                 'results': out}, indent=1))
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
