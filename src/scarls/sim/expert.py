"""Markovian scripted expert for the 'pick_cube' task.

The expert reads only the current joints and the :class:`TaskState`, so it can take over from
any state (HG-DAgger style). Its phase is derived from the state, never from a timer:

``approach`` (grasp centre above the cube, gripper opening) -> ``descend`` -> ``close`` ->
``lift`` -> ``hold``; ``retreat`` (rise first when low but misaligned), ``reopen`` (the gripper is
closed on nothing), ``recover`` (contorted wrist: move towards home in joint space) and
``failed`` (cube off the table: go home) handle off-nominal states.
The working arm is the one holding the cube, else the one on the cube's side of the table; the
other arm returns home with its gripper open. Joint targets come from one damped-least-squares IK
step on the arm's forward kinematics and respect the per-tick velocity limit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scarls.sim.config import SimCommandError, SimConfig
from scarls.sim.kinematics import ArmKinematics, dls_step
from scarls.sim.task import ARMS, TaskState
from scarls.sim.world import (
    BASE_POSITIONS,
    BASE_YAWS,
    DEFAULT_LAYOUT,
    SimLayout,
    gripper_thresholds,
)

__all__ = ['PHASES', 'ExpertPlan', 'ScriptedExpert']

#: Every phase name :meth:`ScriptedExpert.phase` can return.
PHASES: tuple[str, ...] = (
    'approach',
    'descend',
    'close',
    'lift',
    'hold',
    'retreat',
    'reopen',
    'recover',
    'failed',
)

_DOWN = np.array([0.0, 0.0, -1.0])
# nominal IK keeps wrist yaw at 0 and wrist roll equal to base yaw; beyond this: 'recover'.
_WRIST_TOLERANCE = 0.3


@dataclass(frozen=True)
class ExpertPlan:
    """The expert's intent for one tick.

    Attributes:
        phase: one of :data:`PHASES`.
        arm: the working arm (``'left'``/``'right'``), or ``''`` when both go home.
        target: desired grasp-centre position (3,) of the working arm, or None.
        gripper: desired gripper value of the working arm (0 closed .. 1 open).
    """

    phase: str
    arm: str
    target: np.ndarray | None
    gripper: float


class ScriptedExpert:
    """Scripted pick-cube expert; ``action(q, task)`` -> absolute joint targets (n,).

    ``layout`` is the simulated robot's (default ``sim_dual6``); with 7-DoF arms the redundant
    upper-arm roll is kept near its home value through the IK's null space.
    """

    def __init__(
        self,
        sim_config: SimConfig | None = None,
        pregrasp_height: float = 0.08,
        close_distance: float = 0.012,
        max_speed: float = 0.12,
        layout: SimLayout | None = None,
    ) -> None:
        self.config = sim_config if sim_config is not None else SimConfig()
        self.layout = lay = layout if layout is not None else DEFAULT_LAYOUT
        self._n = lay.num_joints
        self._slices = lay.arm_slices
        self._grip = lay.gripper_index
        self._home = lay.home
        self._lower = lay.lower
        self._upper = lay.upper
        self.pregrasp_height = float(pregrasp_height)
        self.max_speed = float(max_speed)
        self.close_distance = min(float(close_distance), 0.75 * self.config.grasp_radius)
        self.arms = {
            arm: ArmKinematics(np.array(BASE_POSITIONS[arm]), BASE_YAWS[arm], lay.dof)
            for arm in ARMS
        }
        self._contact, _, _ = gripper_thresholds(self.config.cube_size)
        self._max_step = lay.velocity_limits(self.config) * self.config.dt
        self._half = self.config.cube_size / 2.0
        self._lift_to = self._half + self.config.lift_success_height + 0.04

    def _check(self, q: np.ndarray) -> np.ndarray:
        q = np.asarray(q, dtype=np.float64)
        if q.shape != (self._n,) or not np.all(np.isfinite(q)):
            raise SimCommandError(
                f'q must be a finite ({self._n},) joint vector, got shape {q.shape}')
        return q

    def plan(self, q: np.ndarray, task: TaskState) -> ExpertPlan:
        """The phase, working arm, grasp-centre target and gripper target for state (q, task)."""
        q = self._check(q)
        if task.failed:
            return ExpertPlan('failed', '', None, 1.0)
        cube = task.cube
        if task.grasped:
            arm = task.holding_arm
            tip = self.arms[arm].grasp_point(q[self._slices[arm]])
            target = tip.copy()
            target[2] += self._lift_to - cube[2]
            phase = 'hold' if task.success else 'lift'
            return ExpertPlan(phase, arm, target, 0.0)
        arm = 'left' if cube[0] < 0.0 else 'right'
        qa = q[self._slices[arm]]
        grip = float(q[self._grip[arm]])
        if self._contorted(qa, arm):
            # contorted wrist (e.g. after a human took over): straighten out in joint space.
            return ExpertPlan('recover', arm, None, 1.0)
        tip = self.arms[arm].grasp_point(qa)
        err_xy = float(np.hypot(tip[0] - cube[0], tip[1] - cube[1]))
        height = float(tip[2] - cube[2])
        if grip < self._contact:
            return ExpertPlan('reopen', arm, tip, 1.0)
        if float(np.linalg.norm(tip - cube)) < self.close_distance:
            return ExpertPlan('close', arm, cube, 0.0)
        aligned = 0.008 if height > 0.06 else 0.015
        if grip >= 0.95 and err_xy < aligned and height > -0.01:
            return ExpertPlan('descend', arm, cube, 1.0)
        if height < 0.05 and err_xy > 0.03:
            target = tip.copy()
            target[2] = cube[2] + self.pregrasp_height
            return ExpertPlan('retreat', arm, target, 1.0)
        target = cube + np.array([0.0, 0.0, self.pregrasp_height])
        return ExpertPlan('approach', arm, target, 1.0)

    def _contorted(self, qa: np.ndarray, arm: str) -> bool:
        # wrist yaw (last joint) near 0, wrist roll (second to last) near the base yaw, and the
        # 7-DoF arm's upper-arm roll near its home value.
        if abs(qa[-1]) > _WRIST_TOLERANCE or abs(qa[-2] - qa[0]) > _WRIST_TOLERANCE:
            return True
        if self.layout.dof == 7:
            roll_home = self._home[self._slices[arm]][2]
            return abs(qa[2] - roll_home) > _WRIST_TOLERANCE
        return False

    def progress(self, q: np.ndarray, task: TaskState) -> float:
        """A task-progress measure that grows towards success (0 .. 4), from the state only.

        Not grasped: 0 .. 2.5 as the working arm's grasp point closes in on the cube (over
        40 cm); grasped: 3 .. 4 with the lift height; success: 4. The scripted operator uses it
        to notice a policy that stalls (HG-DAgger takeover) and an expert back on track.
        """
        q = self._check(q)
        if task.success:
            return 4.0
        if task.grasped:
            frac = task.lift_height / max(self.config.lift_success_height, 1e-6)
            return 3.0 + float(np.clip(frac, 0.0, 1.0))
        cube = task.cube
        arm = 'left' if cube[0] < 0.0 else 'right'
        tip = self.arms[arm].grasp_point(q[self._slices[arm]])
        dist = float(np.linalg.norm(tip - cube))
        return 2.5 * (1.0 - float(np.clip(dist / 0.4, 0.0, 1.0)))

    def phase(self, q: np.ndarray, task: TaskState) -> str:
        """The expert's current phase name (see :data:`PHASES`)."""
        return self.plan(q, task).phase

    def target_ee(self, q: np.ndarray, task: TaskState) -> tuple[str, np.ndarray | None]:
        """``(arm, grasp-centre target)`` the expert is steering towards."""
        plan = self.plan(q, task)
        return plan.arm, None if plan.target is None else plan.target.copy()

    def action(self, q: np.ndarray, task: TaskState) -> np.ndarray:
        """Absolute joint targets (n,) for the next tick (velocity- and limit-respecting)."""
        q = self._check(q)
        plan = self.plan(q, task)
        step = np.clip(self._home - q, -self._max_step, self._max_step)
        if plan.phase == 'recover':
            gi = self._grip[plan.arm]
            step[gi] = np.clip(1.0 - q[gi], -self._max_step[gi], self._max_step[gi])
        elif plan.arm:
            sl = self._slices[plan.arm]
            dq = dls_step(
                self.arms[plan.arm],
                q[sl],
                plan.target,
                _DOWN,
                max_step=self.max_speed * self.config.dt,
                rest=self._home[sl] if self.layout.dof > 6 else None,
                rest_gain=0.2,
            )
            # scale (not clip per joint) so the Cartesian direction is kept.
            ratio = float(np.max(np.abs(dq) / self._max_step[sl]))
            step[sl] = dq / ratio if ratio > 1.0 else dq
            gi = self._grip[plan.arm]
            step[gi] = np.clip(plan.gripper - q[gi], -self._max_step[gi], self._max_step[gi])
        return np.clip(q + step, self._lower, self._upper)
