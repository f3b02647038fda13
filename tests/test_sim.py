"""Tests of the kinematic dual-arm simulator, the pick_cube task and the scripted expert."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scarls.sim import (
    CAMERA_NAMES,
    HOME,
    JOINT_NAMES,
    LOWER,
    TABLE_HALF,
    UPPER,
    DualArmSim,
    ScriptedExpert,
    SimCommandError,
    SimConfig,
    SimConfigError,
    TaskState,
    TaskStateError,
    UnknownCameraError,
    dls_step,
)


def run_expert(sim: DualArmSim, expert: ScriptedExpert, budget: int = 300) -> int | None:
    """Steps until success, or None."""
    for t in range(budget):
        task = sim.task_state()
        if task.success:
            return t
        if task.failed:
            return None
        sim.step(expert.action(sim.joint_positions(), task))
    return budget if sim.task_state().success else None


def test_joint_layout_and_limits() -> None:
    assert len(JOINT_NAMES) == 14
    assert JOINT_NAMES[:7] == (
        'left_joint1',
        'left_joint2',
        'left_joint3',
        'left_joint4',
        'left_joint5',
        'left_joint6',
        'left_gripper',
    )
    assert JOINT_NAMES[13] == 'right_gripper'
    sim = DualArmSim()
    assert sim.lower.shape == sim.upper.shape == sim.max_velocity.shape == (14,)
    assert np.all(sim.lower < sim.upper)
    assert np.all((HOME >= LOWER) & (HOME <= UPPER))
    assert sim.lower[6] == 0.0 and sim.upper[6] == 1.0
    np.testing.assert_array_equal(sim.joint_positions(), HOME)


def test_config_validation() -> None:
    with pytest.raises(SimConfigError, match='unknown task'):
        SimConfig(task='stack')
    with pytest.raises(SimConfigError, match='resolution'):
        SimConfig(height=4)
    with pytest.raises(SimConfigError, match='dt'):
        SimConfig(dt=-1.0)


def test_determinism_and_reset_randomises_cube() -> None:
    a, b = DualArmSim(SimConfig(seed=7)), DualArmSim(SimConfig(seed=7))
    rng = np.random.default_rng(0)
    for _ in range(20):
        target = rng.uniform(LOWER, UPPER)
        a.step(target)
        b.step(target)
    np.testing.assert_array_equal(a.joint_positions(), b.joint_positions())
    np.testing.assert_array_equal(a.render('top'), b.render('top'))
    cubes = set()
    for seed in range(10):
        a.reset(seed)
        cube = a.cube_position()
        cubes.add(tuple(np.round(cube, 6)))
        assert abs(cube[0]) <= TABLE_HALF[0] and abs(cube[1]) <= TABLE_HALF[1]
        assert a.task_state().steps == 0 and not a.task_state().grasped
    assert len(cubes) == 10
    a.reset(3)
    c1 = a.cube_position()
    a.reset(3)
    np.testing.assert_array_equal(c1, a.cube_position())


def test_step_respects_velocity_and_position_limits() -> None:
    sim = DualArmSim()
    q0 = sim.joint_positions()
    sim.step(UPPER + 10.0)
    dq = sim.joint_positions() - q0
    assert np.all(np.abs(dq) <= sim.max_velocity * sim.config.dt + 1e-12)
    np.testing.assert_allclose(sim.joint_velocities(), dq / sim.config.dt)
    for _ in range(200):
        sim.step(UPPER + 10.0)
    np.testing.assert_allclose(sim.joint_positions(), UPPER)


def test_step_rejects_bad_commands() -> None:
    sim = DualArmSim()
    with pytest.raises(SimCommandError, match='shape'):
        sim.step(np.zeros(13))
    bad = HOME.copy()
    bad[3] = np.nan
    with pytest.raises(SimCommandError, match='left_joint4'):
        sim.step(bad)


def test_fk_and_dls_ik_reach_table_targets() -> None:
    sim = DualArmSim()
    kin = sim.arms['left']
    home_tip = kin.grasp_point(HOME[:6])
    np.testing.assert_allclose(home_tip, [-0.25, 0.0, 0.25], atol=0.01)
    # Jacobian matches finite differences.
    q = HOME[:6] + np.array([0.1, 0.2, -0.1, 0.3, 0.2, -0.2])
    jac, tip, _ = kin.jacobian(q)
    for i in range(6):
        dq = np.zeros(6)
        dq[i] = 1e-6
        fd = (kin.grasp_point(q + dq) - tip) / 1e-6
        np.testing.assert_allclose(jac[:3, i], fd, atol=1e-5)
    target = np.array([-0.15, 0.1, 0.02])
    q = HOME[:6].copy()
    for _ in range(100):
        q = q + dls_step(kin, q, target, np.array([0.0, 0.0, -1.0]))
    points, _, tool = kin.frames(q)
    np.testing.assert_allclose(points[6], target, atol=1e-4)
    np.testing.assert_allclose(tool[:, 0], [0.0, 0.0, -1.0], atol=1e-3)
    # right arm is the mirror image of the left one
    right_tip = sim.arms['right'].grasp_point(HOME[7:13])
    np.testing.assert_allclose(right_tip, home_tip * np.array([-1.0, 1.0, 1.0]), atol=1e-12)


def test_grasp_lift_release_and_fall() -> None:
    sim = DualArmSim(SimConfig(seed=1))
    expert = ScriptedExpert(sim.config)
    steps = run_expert(sim, expert)
    assert steps is not None
    task = sim.task_state()
    assert task.grasped and task.success and task.lift_height >= 0.05
    arm = task.holding_arm
    assert arm == ('left' if task.cube_position[0] < 0 else 'right')
    # cube follows the gripper
    before = sim.cube_position()
    q = sim.joint_positions()
    tip_before = sim.grasp_point(arm)
    sim.step(q)
    np.testing.assert_allclose(sim.cube_position() - before, sim.grasp_point(arm) - tip_before)
    # opening the gripper drops the cube onto the table
    q = sim.joint_positions()
    q[6 if arm == 'left' else 13] = 1.0
    for _ in range(10):
        sim.step(q)
    task = sim.task_state()
    assert not task.grasped and not task.success and not task.failed
    assert task.cube_position[2] == pytest.approx(sim.config.cube_size / 2)


def test_cube_pushed_off_table_fails() -> None:
    sim = DualArmSim(SimConfig(seed=2))
    sim._cube[:] = [TABLE_HALF[0] - 0.021, 0.0, 0.02]  # at the right table edge
    # closed left fingers swept through the cube towards +x push it over the edge.
    sim._q[6] = 0.0
    sim._check_on_table()
    assert not sim.task_state().failed
    sim._push(np.array([TABLE_HALF[0] - 0.03, 0.0, 0.02]))
    sim._check_on_table()
    task = sim.task_state()
    assert task.failed and task.cube_position[2] < 0


def test_expert_success_rate_50_seeds() -> None:
    sim = DualArmSim()
    expert = ScriptedExpert(sim.config)
    results = []
    for seed in range(100, 150):
        sim.reset(seed)
        results.append(run_expert(sim, expert))
    succeeded = [r for r in results if r is not None]
    assert len(succeeded) / len(results) >= 0.95
    assert np.median(succeeded) < 200


def test_expert_takes_over_from_perturbed_states() -> None:
    sim = DualArmSim()
    expert = ScriptedExpert(sim.config)
    rng = np.random.default_rng(5)
    ok = 0
    for seed in range(20):
        sim.reset(seed)
        target = rng.uniform(LOWER, UPPER)
        for _ in range(int(rng.integers(5, 30))):
            sim.step(target)
        ok += run_expert(sim, expert) is not None
    assert ok >= 18


def test_expert_is_markovian() -> None:
    sim = DualArmSim(SimConfig(seed=4))
    expert = ScriptedExpert(sim.config)
    phases = []
    for _ in range(120):
        q, task = sim.joint_positions(), sim.task_state()
        action = expert.action(q, task)
        np.testing.assert_array_equal(action, ScriptedExpert(sim.config).action(q, task))
        assert np.all(np.abs(action - q) <= sim.max_velocity * sim.config.dt + 1e-9)
        phases.append(expert.phase(q, task))
        sim.step(action)
    order = [p for i, p in enumerate(phases) if i == 0 or phases[i - 1] != p]
    assert order[:4] == ['approach', 'descend', 'close', 'lift']
    arm, target = expert.target_ee(sim.joint_positions(), sim.task_state())
    assert arm in ('left', 'right') and target is not None and target.shape == (3,)


def test_random_policies_rarely_succeed() -> None:
    sim = DualArmSim()
    rng = np.random.default_rng(1)
    wins = 0
    for seed in range(40):
        sim.reset(seed)
        for _ in range(300):
            target = rng.uniform(LOWER, UPPER) if seed % 2 else HOME + rng.normal(0.0, 0.3, 14)
            sim.step(target)
            if sim.task_state().success:
                wins += 1
                break
    assert wins / 40 < 0.2


@pytest.mark.parametrize('shape', [(96, 128), (480, 640)])
def test_render_shapes_and_cube_visibility(shape: tuple[int, int]) -> None:
    sim = DualArmSim(SimConfig(height=shape[0], width=shape[1], seed=0))
    images = {name: sim.render(name) for name in CAMERA_NAMES}
    for image in images.values():
        assert image.shape == (*shape, 3) and image.dtype == np.uint8
        # the red cube is visible
        red = (image[..., 0] > 150) & (image[..., 1] < 100) & (image[..., 2] < 100)
        assert red.sum() >= 3
    assert not np.array_equal(images['left'], images['right'])
    sim._cube[:2] += [0.05 * -np.sign(sim._cube[0]), 0.05]
    for name in CAMERA_NAMES:
        assert np.count_nonzero(np.any(sim.render(name) != images[name], axis=-1)) >= 4
    with pytest.raises(UnknownCameraError, match='top'):
        sim.render('wrist')


def test_task_state_vector_round_trip() -> None:
    state = TaskState((0.1, -0.2, 0.07), True, 'right', 0.05, True, False, 42)
    names, values = state.names(), state.as_vector()
    assert len(names) == values.shape[0] and values.dtype == np.float64
    assert TaskState.from_vector(names, values) == state
    shuffled = [*list(zip(names, values.tolist(), strict=True))[::-1], ('extra', 1.0)]
    assert TaskState.from_vector([n for n, _ in shuffled], [v for _, v in shuffled]) == state
    with pytest.raises(TaskStateError, match='cube_z'):
        TaskState.from_vector(names[:2] + names[3:], np.delete(values, 2))
    with pytest.raises(TaskStateError):
        TaskState((0.0, 0.0, 0.0), grasped=True, holding_arm='')


@settings(max_examples=50, deadline=None)
@given(
    x=st.floats(-0.5, 0.5),
    y=st.floats(-0.5, 0.5),
    z=st.floats(-1, 1),
    holding=st.sampled_from(['', 'left', 'right']),
    lift=st.floats(-1, 1),
    success=st.booleans(),
    failed=st.booleans(),
    steps=st.integers(0, 10_000),
)
def test_task_state_round_trip_property(
    x: float,
    y: float,
    z: float,
    holding: str,
    lift: float,
    success: bool,
    failed: bool,
    steps: int,
) -> None:
    state = TaskState((x, y, z), bool(holding), holding, lift, success, failed, steps)
    assert TaskState.from_vector(state.names(), state.as_vector()) == state
