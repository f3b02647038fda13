"""Policy rollouts in the simulator without ROS: the ECU's control loop as a plain function.

* :class:`SyncChunkedController` executes action chunks exactly like the actor's
  :class:`~scarls.actor.chunking.ChunkedController` (latency-compensated chunk indexing, a new
  chunk requested when fewer than ``refill_when_remaining`` actions remain, the last command held
  while no action is available) but runs inference synchronously, with a fixed, deterministic
  latency of ``latency_ticks``.
* :func:`evaluate_closed_loop` runs the policy alone (no takeover) for real task success.
* :func:`run_hg_dagger_episode` is the loop an ECU runs with the scripted teleoperator: the policy
  acts, the :class:`~scarls.teleop.gate.InterventionGate` decides takeovers and releases, the
  expert acts while intervening; every tick becomes a
  :class:`~scarls.episodes.StepRecord` (``intervention`` = the expert was in control).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from scarls.actor.chunking import ChunkExecutor
from scarls.episodes import StepRecord
from scarls.learner.config import RolloutConfig
from scarls.policies import CAMERAS, Observation, Policy
from scarls.sim import DualArmSim, ScriptedExpert, SimConfig, sim_layout
from scarls.teleop.gate import DecisionKind, GateConfig, InterventionGate

__all__ = [
    'ECU_GATE_CONFIG',
    'EpisodeResult',
    'HGDaggerEpisode',
    'RolloutStats',
    'SyncChunkedController',
    'evaluate_closed_loop',
    'policy_cameras',
    'run_hg_dagger_episode',
    'run_policy_episode',
]

_log = logging.getLogger(__name__)

#: The scripted teleoperator's gate as the ECU runs it (config/ecu.yaml, teleop section).
ECU_GATE_CONFIG = GateConfig(
    deviation_threshold=0.3,
    deviation_ticks=3,
    release_threshold=0.08,
    min_takeover_ticks=10,
    fail_margin_steps=60,
    max_steps=300,
    stall_ticks=15,
    min_progress=0.05,
    release_progress=0.5,
)


def policy_cameras(policy: Policy) -> tuple[str, ...]:
    """Cameras a policy reads (its config's ``cameras``; none for state-only policies)."""
    return tuple(getattr(policy.config, 'cameras', ()))


class SyncChunkedController:
    """Deterministic, synchronous twin of the actor's chunked controller.

    ``tick(obs_fn, tick)`` returns the action for ``tick`` or None (hold the last command).
    ``obs_fn()`` is called only on ticks that request a new chunk, so observations (camera
    renders) are built only when the policy needs them. A chunk computed at tick ``t0`` is
    swapped in at tick ``t0 + latency_ticks`` and indexed from offset ``tick - t0``.
    """

    def __init__(
        self,
        policy_fn: Callable[[Observation], np.ndarray],
        refill_when_remaining: int = 4,
        latency_ticks: int = 1,
    ) -> None:
        if refill_when_remaining < 0 or latency_ticks < 0:
            raise ValueError('refill_when_remaining and latency_ticks must be >= 0')
        self.policy_fn = policy_fn
        self.refill_when_remaining = int(refill_when_remaining)
        self.latency_ticks = int(latency_ticks)
        self.executor = ChunkExecutor()
        self._pending: tuple[np.ndarray, int] | None = None
        self.inferences = 0

    def reset(self) -> None:
        """Forget the current chunk and any pending one (episode start, takeover)."""
        self.executor.clear()
        self._pending = None

    def tick(self, obs_fn: Callable[[], Observation], tick: int) -> np.ndarray | None:
        """The action for ``tick`` (None: hold); requests a chunk when running low."""
        if self._pending is not None and tick >= self._pending[1] + self.latency_ticks:
            self.executor.replace(*self._pending)
            self._pending = None
        action = self.executor.next_action(tick)
        low = action is None or self.executor.remaining(tick) < self.refill_when_remaining
        if low and self._pending is None:
            chunk = np.asarray(self.policy_fn(obs_fn()), dtype=np.float32)
            self.inferences += 1
            self._pending = (chunk, tick)
            if self.latency_ticks == 0:
                self.executor.replace(chunk, tick)
                self._pending = None
                action = self.executor.next_action(tick)
        return None if action is None else np.asarray(action, dtype=np.float64)


@dataclasses.dataclass(frozen=True)
class EpisodeResult:
    """Summary of one simulated episode."""

    seed: int
    """Scene seed passed to ``DualArmSim.reset``."""
    outcome: str
    """``'success'`` or ``'fail'`` (task failed or step budget used up)."""
    steps: int
    """Executed control ticks."""
    intervention_steps: int
    """Ticks under expert control."""
    takeovers: int
    """Number of times the expert took over."""
    inferences: int
    """Policy chunk inferences."""
    reasons: tuple[str, ...] = ()
    """The gate's reasons for its takeovers and releases, in order."""


@dataclasses.dataclass(frozen=True)
class RolloutStats:
    """Closed-loop results of several episodes."""

    n_episodes: int
    """Episodes run."""
    successes: int
    """Episodes whose task succeeded."""
    success_rate: float
    """``successes / n_episodes``."""
    ci95: float
    """Half width of the 95 % normal-approximation interval of ``success_rate``."""
    mean_steps: float
    """Mean executed ticks per episode (failures count the full budget)."""
    mean_success_steps: float
    """Mean ticks of the successful episodes (NaN when none)."""
    seconds: float
    """Wall-clock time of the evaluation."""
    episodes: tuple[EpisodeResult, ...] = ()
    """Per-episode results."""

    @classmethod
    def from_results(cls, results: Sequence[EpisodeResult], seconds: float) -> RolloutStats:
        """Aggregate per-episode results."""
        n = len(results)
        ok = [r for r in results if r.outcome == 'success']
        rate = len(ok) / n if n else 0.0
        return cls(
            n_episodes=n,
            successes=len(ok),
            success_rate=rate,
            ci95=1.96 * math.sqrt(rate * (1.0 - rate) / n) if n else 0.0,
            mean_steps=float(np.mean([r.steps for r in results])) if n else 0.0,
            mean_success_steps=float(np.mean([r.steps for r in ok])) if ok else math.nan,
            seconds=float(seconds),
            episodes=tuple(results),
        )


@dataclasses.dataclass(frozen=True)
class HGDaggerEpisode:
    """The recorded ticks of one HG-DAgger episode and its summary."""

    records: list[StepRecord]
    """One record per executed tick (images of ``cameras``; empty if not recorded)."""
    result: EpisodeResult
    """Summary of the episode."""


def _observation(sim: DualArmSim, cameras: Sequence[str], q: np.ndarray) -> Observation:
    return Observation(images={c: sim.render(c) for c in cameras}, state=q.astype(np.float32))


def _make_sim(image_shape: tuple[int, int], seed: int, robot: Any = None) -> DualArmSim:
    return DualArmSim(SimConfig(height=int(image_shape[0]), width=int(image_shape[1]), seed=seed),
                      sim_layout(robot))


def run_policy_episode(
    policy: Policy,
    sim: DualArmSim,
    seed: int,
    config: RolloutConfig | None = None,
) -> EpisodeResult:
    """Run the policy alone for one episode from ``sim.reset(seed)``; no expert, no records."""
    cfg = config if config is not None else RolloutConfig()
    cams = policy_cameras(policy)
    ctrl = SyncChunkedController(
        policy.predict_chunk, cfg.refill_when_remaining, cfg.latency_ticks
    )
    sim.reset(seed)
    last: np.ndarray | None = None
    outcome, steps = 'fail', cfg.max_steps
    for tick in range(cfg.max_steps + 1):
        task = sim.task_state()
        if task.success or task.failed or tick == cfg.max_steps:
            outcome, steps = ('success' if task.success else 'fail'), tick
            break
        q = sim.joint_positions()
        action = ctrl.tick(lambda q=q: _observation(sim, cams, q), tick)
        if action is None:
            action = last if last is not None else q
        last = action
        sim.step(action)
    return EpisodeResult(seed, outcome, steps, 0, 0, ctrl.inferences)


def evaluate_closed_loop(
    policy: Policy,
    n_episodes: int,
    *,
    seed: int,
    image_shape: tuple[int, int] = (96, 128),
    max_steps: int = 300,
    refill_when_remaining: int = 4,
    latency_ticks: int = 1,
    robot: Any = None,
) -> RolloutStats:
    """Task success of the policy alone on scenes ``seed .. seed + n_episodes - 1``.

    ``robot``: the simulated robot (a description or its name; default ``sim_dual6``).

    Chunks execute as on the actor (see :class:`SyncChunkedController`); an episode fails when
    the task fails or ``max_steps`` ticks pass without success.
    """
    if n_episodes < 1:
        raise ValueError(f'n_episodes must be >= 1, got {n_episodes}')
    cfg = RolloutConfig(
        max_steps=max_steps,
        refill_when_remaining=refill_when_remaining,
        latency_ticks=latency_ticks,
        image_shape=tuple(image_shape),
    )
    t0 = time.perf_counter()
    sim = _make_sim(cfg.image_shape, seed, robot) if robot is not None else \
        _make_sim(cfg.image_shape, seed)
    was_training = policy.training
    policy.eval()
    try:
        results = [run_policy_episode(policy, sim, seed + i, cfg) for i in range(n_episodes)]
    finally:
        policy.train(was_training)
    stats = RolloutStats.from_results(results, time.perf_counter() - t0)
    _log.info(
        'closed loop: %d/%d successes (%.0f %%) in %.1f s',
        stats.successes,
        stats.n_episodes,
        100 * stats.success_rate,
        stats.seconds,
    )
    return stats


def run_hg_dagger_episode(
    policy: Policy,
    gate: InterventionGate,
    expert: ScriptedExpert,
    sim: DualArmSim,
    *,
    seed: int,
    cameras: Sequence[str] = CAMERAS,
    record: bool = True,
    refill_when_remaining: int = 4,
    latency_ticks: int = 1,
    dt: float | None = None,
) -> HGDaggerEpisode:
    """One episode of the ECU loop: policy acts, the gate decides, the expert takes over.

    Per tick (as the actor and the scripted teleop do it): read ``q`` and the task state; the
    expert computes its action; while the policy is in control it produces this tick's action
    from its chunk; the gate sees both (and the task progress) and may end the episode
    (SUCCESS / FAIL, nothing executed), hand control to the expert (INTERVENE: the expert's
    action is executed from this tick on, the policy's chunk is dropped) or give it back
    (RELEASE: the policy requests a fresh chunk and the last command is held until it
    arrives). The episode budget is ``gate.config.max_steps``.
    """
    dt = sim.config.dt if dt is None else float(dt)
    cams = tuple(cameras)
    policy_cams = policy_cameras(policy)
    ctrl = SyncChunkedController(policy.predict_chunk, refill_when_remaining, latency_ticks)
    sim.reset(seed)
    gate.reset()
    was_training = policy.training
    policy.eval()
    records: list[StepRecord] = []
    reasons: list[str] = []
    intervening = False
    takeovers = 0
    human_steps = 0
    last: np.ndarray | None = None
    last_policy: np.ndarray | None = None
    outcome = 'fail'
    tick = 0
    try:
        while True:
            q = sim.joint_positions()
            task = sim.task_state()
            expert_action = expert.action(q, task)
            frames: dict[str, np.ndarray] = {}

            def obs_fn(q: np.ndarray = q, frames: dict[str, np.ndarray] = frames) -> Observation:
                for c in policy_cams:
                    if c not in frames:
                        frames[c] = sim.render(c)
                return Observation(
                    images={c: frames[c] for c in policy_cams}, state=q.astype(np.float32)
                )

            action: np.ndarray | None = None
            if not intervening:
                action = ctrl.tick(obs_fn, tick)
                if action is None:
                    action = last if last is not None else q
                last_policy = action
            decision = gate.update(
                policy_action=last_policy if last_policy is not None else q,
                expert_action=expert_action,
                current_q=q,
                step=tick,
                intervening=intervening,
                task_success=task.success,
                task_failed=task.failed,
                progress=expert.progress(q, task),
            )
            kind = decision.kind
            if kind in (DecisionKind.SUCCESS, DecisionKind.FAIL):
                outcome = 'success' if kind is DecisionKind.SUCCESS else 'fail'
                break
            if kind is DecisionKind.INTERVENE:
                intervening = True
                takeovers += 1
                ctrl.reset()
                reasons.append(f'{tick}: intervene ({decision.reason})')
            elif kind is DecisionKind.RELEASE:
                intervening = False
                reasons.append(f'{tick}: release ({decision.reason})')
                action = ctrl.tick(obs_fn, tick)
                if action is None:
                    action = last if last is not None else q
                last_policy = action
            if intervening or action is None:
                action = expert_action
                human_steps += 1
            if record:
                for c in cams:
                    if c not in frames:
                        frames[c] = sim.render(c)
                records.append(
                    StepRecord(
                        images={c: frames[c] for c in cams},
                        state=q.astype(np.float32),
                        action=np.asarray(action, dtype=np.float32),
                        intervention=intervening,
                        timestamp=tick * dt,
                    )
                )
            last = np.asarray(action, dtype=np.float64)
            sim.step(last)
            tick += 1
    finally:
        policy.train(was_training)
    result = EpisodeResult(
        seed, outcome, tick, human_steps, takeovers, ctrl.inferences, tuple(reasons)
    )
    return HGDaggerEpisode(records, result)
