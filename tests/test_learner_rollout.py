"""Simulated rollouts: actor-like chunk execution, policy-only evaluation, the HG-DAgger loop."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pytest
import torch

from scarls.learner import (
    ECU_GATE_CONFIG,
    SyncChunkedController,
    evaluate_closed_loop,
    run_hg_dagger_episode,
)
from scarls.policies import Observation, Policy, PolicyConfig, make_policy
from scarls.sim import DualArmSim, ScriptedExpert, SimConfig
from scarls.teleop.gate import InterventionGate

torch.set_num_threads(1)


def _obs() -> Observation:
    return Observation(images={}, state=np.zeros(14, np.float32))


def test_controller_matches_the_actor_semantics():
    calls: list[int] = []

    def policy_fn(obs: Observation) -> np.ndarray:
        calls.append(len(calls))
        return np.arange(10, dtype=np.float32)[:, None] * np.ones((1, 14), np.float32)

    ctrl = SyncChunkedController(policy_fn, refill_when_remaining=4, latency_ticks=1)
    rows = []
    for tick in range(20):
        a = ctrl.tick(_obs, tick)
        rows.append(None if a is None else int(a[0]))
    # tick 0 requests (nothing to execute yet); the chunk of tick 0 starts at offset 1;
    # a refill is requested at row 6 (3 left < 4) and swapped in one tick later at offset 1
    assert rows[:10] == [None, 1, 2, 3, 4, 5, 6, 1, 2, 3]
    assert ctrl.inferences == len(calls) == 4
    ctrl.reset()
    assert ctrl.tick(_obs, 100) is None
    sync = SyncChunkedController(policy_fn, refill_when_remaining=4, latency_ticks=0)
    assert [int(sync.tick(_obs, t)[0]) for t in range(8)] == [0, 1, 2, 3, 4, 5, 0, 1]
    with pytest.raises(ValueError):
        SyncChunkedController(policy_fn, latency_ticks=-1)


class _ExpertPolicy(Policy):
    """Test double with privileged access to the simulator: one expert action per chunk."""

    def __init__(self, sim: DualArmSim) -> None:
        super().__init__(PolicyConfig(chunk_size=1))
        self.sim = sim
        self.expert = ScriptedExpert(sim.config)
        self.dummy = torch.nn.Parameter(torch.zeros(()))

    def preprocess(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {'state': batch['state']}

    def _predict(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        q = inputs['state'][0].double().numpy()
        action = self.expert.action(self.sim.joint_positions(), self.sim.task_state())
        assert np.allclose(q, self.sim.joint_positions(), atol=1e-5)
        return torch.from_numpy(action).float().view(1, 1, 14)


def test_evaluate_closed_loop_policy_alone(monkeypatch):
    import scarls.learner.rollout as rollout

    made: list[DualArmSim] = []
    real = rollout._make_sim

    def spy(shape, seed):
        made.append(real(shape, seed))
        return made[-1]

    monkeypatch.setattr(rollout, '_make_sim', spy)
    idle = make_policy('mlp', seed=0)
    stats = evaluate_closed_loop(idle, 2, seed=11, image_shape=(16, 16), max_steps=60)
    assert stats.n_episodes == 2 and stats.success_rate == 0.0 and stats.mean_steps == 60
    assert np.isnan(stats.mean_success_steps) and idle.training  # mode restored

    # an oracle that acts like the expert every tick (no latency) solves the task
    sim = DualArmSim(SimConfig(height=16, width=16))
    oracle = _ExpertPolicy(sim)
    monkeypatch.setattr(rollout, '_make_sim', lambda shape, seed: sim)
    stats = evaluate_closed_loop(oracle, 3, seed=11, image_shape=(16, 16), latency_ticks=0)
    assert stats.successes == 3 and stats.success_rate == 1.0 and stats.ci95 == 0.0
    assert 30 < stats.mean_success_steps < 200
    assert [e.seed for e in stats.episodes] == [11, 12, 13]


def test_hg_dagger_episode_takes_over_and_records():
    sim = DualArmSim(SimConfig(height=16, width=24))
    expert = ScriptedExpert(sim.config)
    gate = InterventionGate(ECU_GATE_CONFIG)
    policy = make_policy('mlp', seed=1)  # untrained: drifts, stalls -> the expert takes over
    out = run_hg_dagger_episode(policy, gate, expert, sim, seed=4, cameras=('top',))
    res = out.result
    assert res.takeovers >= 1 and res.reasons and 'intervene' in res.reasons[0]
    assert len(out.records) == res.steps
    flags = np.array([r.intervention for r in out.records])
    assert flags.sum() == res.intervention_steps
    assert not flags[0]  # the policy starts
    assert res.outcome == 'success'  # the expert finishes the pick
    assert out.records[0].images['top'].shape == (16, 24, 3)
    ts = [r.timestamp for r in out.records]
    assert ts == sorted(ts) and len(set(ts)) == len(ts)
    # during the takeover the executed action is the expert's action in that state
    t = int(np.flatnonzero(flags)[0])
    sim.reset(4)
    for rec in out.records[:t]:
        sim.step(rec.action)
    q = sim.joint_positions()
    np.testing.assert_allclose(out.records[t].state, q, atol=1e-5)
    np.testing.assert_allclose(
        out.records[t].action, expert.action(q, sim.task_state()), atol=1e-5
    )
    # without recording, same decisions (deterministic)
    again = run_hg_dagger_episode(policy, gate, expert, sim, seed=4, record=False)
    assert again.records == [] and again.result == res
