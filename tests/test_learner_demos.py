"""Generated demonstrations are valid episodes: expert steps, intervention flags, outcome."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from scarls.episodes import EpisodeReader, list_episodes, validate_episode
from scarls.learner import EpisodeData, generate_demos
from scarls.sim import DualArmSim, ScriptedExpert, SimConfig


def test_demos_are_valid_expert_episodes(tmp_path: Path):
    refs = generate_demos(tmp_path, 'pick_cube', 2, seed=7, image_shape=(24, 32))
    assert [r.index for r in refs] == [0, 1]
    assert [e.index for e in list_episodes(tmp_path, 'pick_cube')] == [0, 1]
    sim = DualArmSim(SimConfig(height=24, width=32))
    expert = ScriptedExpert(sim.config)
    for i, ref in enumerate(refs):
        meta = validate_episode(ref.path)
        assert meta.outcome == 'success' and meta.model_version is None
        assert meta.extra['source'] == 'offline' and meta.extra['seed'] == 7 + i
        assert meta.intervention_steps == meta.steps == ref.steps
        assert 30 < meta.steps < 300 and meta.cameras == ['top', 'left', 'right']
        reader = EpisodeReader(ref.path)
        assert reader.images('top').shape == (meta.steps, 24, 32, 3)
        ts = np.asarray(reader.timestamp[:])
        np.testing.assert_allclose(np.diff(ts), 1 / 30, rtol=1e-6)
        # the recorded actions are the expert's actions in the recorded states (replay)
        sim.reset(7 + i)
        state, action = np.asarray(reader.state[:]), np.asarray(reader.action[:])
        for t in range(meta.steps):
            np.testing.assert_allclose(state[t], sim.joint_positions(), atol=1e-5)
            expected = expert.action(sim.joint_positions(), sim.task_state())
            np.testing.assert_allclose(action[t], expected, atol=1e-5)
            sim.step(expected)
        assert sim.task_state().success
        ep = EpisodeData.from_reader(reader, source='offline', cameras=['top'])
        assert ep.steps == meta.steps and ep.intervention.all()


def test_demos_are_deterministic_and_validated(tmp_path: Path):
    a = generate_demos(tmp_path / 'a', 'pick_cube', 1, seed=3, image_shape=(16, 16),
                       cameras=('top',))
    b = generate_demos(tmp_path / 'b', 'pick_cube', 1, seed=3, image_shape=(16, 16),
                       cameras=('top',))
    ra, rb = EpisodeReader(a[0].path), EpisodeReader(b[0].path)
    assert ra.meta.sha256 == rb.meta.sha256 and ra.cameras == ['top']
    with pytest.raises(ValueError, match='n must be'):
        generate_demos(tmp_path, 'pick_cube', 0, seed=0, image_shape=(16, 16))
    with pytest.raises(ValueError):
        generate_demos(tmp_path, 'stack_cups', 1, seed=0, image_shape=(16, 16))


def test_budget_exhausted_is_a_failure(tmp_path: Path):
    (ref,) = generate_demos(tmp_path, 'pick_cube', 1, seed=5, image_shape=(16, 16),
                            cameras=('top',), max_steps=10)
    meta = validate_episode(ref.path)
    assert meta.outcome == 'fail' and meta.steps == 10
