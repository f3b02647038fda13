"""A closed-loop deploy gate for simulated ECUs: the candidate runs alone on held-out scenes.

The open-loop error (``scarls.learner.evaluation``) measures how well a policy imitates the
expert on the expert's own states; a policy that is slightly better there can still fail more
often on its own (compounding errors, a grasp decided on a sub-centimetre threshold).
bench/bench_gate.py measures how well each metric ranks a learning run's checkpoints by their
real task success (docs/BENCHMARKS.md, "Does the gate predict success?").

When the robot is simulated, the learner can instead run the candidate in the simulator - the
same synchronous twin of the actor's chunked control as :mod:`scarls.learner.rollout` - on a
small fixed set of held-out scenes: per scene whether it succeeded and the task progress it
reached (:meth:`scarls.sim.ScriptedExpert.progress`, 0 .. 4, 4 = success), normalised to
0 .. 1. :class:`ClosedLoopGate` compares candidate and deployed model *paired*, on the same
scenes (the simulator is deterministic for given weights, so the deployed model's scores are
computed once): first by the scenes solved, and only on a tie by the mean progress (in
bench/bench_gate.py the success on 10 scenes ranked versions better than the denser progress
score did).

Pure: no ROS; a policy and a robot description in, scores out.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

from scarls.common.validation import is_number
from scarls.learner.config import RolloutConfig
from scarls.learner.evaluation import GateDecision
from scarls.learner.rollout import SyncChunkedController, policy_cameras
from scarls.policies import Observation, Policy
from scarls.sim import DualArmSim, ScriptedExpert, SimConfig, sim_layout

__all__ = [
    'MAX_PROGRESS',
    'ClosedLoopGate',
    'SceneScore',
    'closed_loop_scores',
    'mean_progress',
    'success_rate',
]

#: :meth:`scarls.sim.ScriptedExpert.progress` of a solved task.
MAX_PROGRESS = 4.0


@dataclasses.dataclass(frozen=True)
class SceneScore:
    """The policy alone on one scene."""

    seed: int
    success: bool
    progress: float
    """Highest task progress reached, 0 .. 1 (1 = success)."""
    steps: int


def closed_loop_scores(
    policy: Policy,
    seeds: Sequence[int],
    *,
    config: RolloutConfig | None = None,
    robot: Any = None,
) -> list[SceneScore]:
    """Run ``policy`` alone (no takeover) once per scene seed; per scene its success and the
    highest task progress it reached. Chunks execute as on the actor
    (:class:`~scarls.learner.rollout.SyncChunkedController`); ``robot``: the simulated robot
    (a description or its name; default ``sim_dual6``)."""
    cfg = config if config is not None else RolloutConfig()
    h, w = cfg.image_shape
    sim = DualArmSim(SimConfig(height=int(h), width=int(w), seed=int(seeds[0]) if seeds else 0),
                     sim_layout(robot))
    expert = ScriptedExpert(sim.config, layout=sim.layout)
    cams = policy_cameras(policy)
    was_training = policy.training
    policy.eval()
    out = []
    try:
        for seed in seeds:
            ctrl = SyncChunkedController(policy.predict_chunk, cfg.refill_when_remaining,
                                         cfg.latency_ticks)
            sim.reset(int(seed))
            last: np.ndarray | None = None
            best, success, steps = 0.0, False, cfg.max_steps
            for tick in range(cfg.max_steps + 1):
                q = sim.joint_positions()
                task = sim.task_state()
                best = max(best, expert.progress(q, task))
                if task.success or task.failed or tick == cfg.max_steps:
                    success, steps = bool(task.success), tick
                    break

                def obs(q: np.ndarray = q) -> Observation:
                    return Observation(images={c: sim.render(c) for c in cams},
                                       state=q.astype(np.float32))

                action = ctrl.tick(obs, tick)
                if action is None:
                    action = last if last is not None else q
                last = action
                sim.step(action)
            out.append(SceneScore(int(seed), success, best / MAX_PROGRESS, steps))
    finally:
        policy.train(was_training)
    return out


def mean_progress(scores: Sequence[SceneScore]) -> float:
    """Mean of the scenes' progress (NaN without scenes)."""
    return float(np.mean([s.progress for s in scores])) if scores else math.nan


def success_rate(scores: Sequence[SceneScore]) -> float:
    """Share of successful scenes (NaN without scenes)."""
    return float(np.mean([s.success for s in scores])) if scores else math.nan


class ClosedLoopGate:
    """Approve a candidate whose mean closed-loop progress on the gate's scenes is at least
    ``floor`` and, when a deployed model's scores on the *same* scenes are given, that solves
    more of them, or as many with a mean progress not below the deployed model's by more than
    ``tolerance`` (absolute, on the 0 .. 1 progress scale).

    ``scenes`` scenes from ``seed`` (keep them apart from the scenes a benchmark evaluates
    on); :meth:`scores` runs a policy on them.
    """

    def __init__(self, scenes: int = 10, *, seed: int = 800_000, tolerance: float = 0.02,
                 floor: float = 0.0, config: RolloutConfig | None = None,
                 robot: Any = None) -> None:
        if not isinstance(scenes, int) or isinstance(scenes, bool) or scenes < 1:
            raise ValueError(f'scenes must be an int >= 1, got {scenes!r}')
        if not is_number(tolerance) or tolerance < 0:
            raise ValueError(f'tolerance must be a number >= 0, got {tolerance!r}')
        if not is_number(floor) or not 0 <= floor <= 1:
            raise ValueError(f'floor must be a number in [0, 1], got {floor!r}')
        self.seeds = tuple(range(int(seed), int(seed) + scenes))
        self.tolerance = float(tolerance)
        self.floor = float(floor)
        self.config = config if config is not None else RolloutConfig()
        self.robot = robot
        self.last_seconds = 0.0

    def scores(self, policy: Policy) -> list[SceneScore]:
        """``policy`` alone on the gate's scenes."""
        t0 = time.perf_counter()
        try:
            return closed_loop_scores(policy, self.seeds, config=self.config, robot=self.robot)
        finally:
            self.last_seconds = time.perf_counter() - t0

    def decide(self, candidate: Sequence[SceneScore],
               deployed: Sequence[SceneScore] | None) -> GateDecision:
        """Decide from the candidate's (and the deployed model's) scores on the gate's
        scenes."""
        cand = mean_progress(candidate)
        ok = sum(s.success for s in candidate)
        what = (f'closed-loop progress {cand:.3f} ({ok}/{len(candidate)} scenes solved '
                'alone)')
        if not math.isfinite(cand):
            return GateDecision(False, 'no closed-loop scores')
        if cand < self.floor:
            return GateDecision(False, f'{what} is below the floor {self.floor:.3f}')
        if deployed:
            if [s.seed for s in deployed] != [s.seed for s in candidate]:
                raise ValueError('candidate and deployed scores are not on the same scenes')
            dep = mean_progress(deployed)
            dep_ok = sum(s.success for s in deployed)
            if ok < dep_ok or (ok == dep_ok and cand < dep - self.tolerance):
                return GateDecision(False, f'{what} is worse than the deployed model\'s '
                                    f'{dep:.3f} ({dep_ok}/{len(deployed)})')
            return GateDecision(True, f'{what}, not worse than the deployed model\'s '
                                f'{dep:.3f} ({dep_ok}/{len(deployed)})')
        return GateDecision(True, what)
