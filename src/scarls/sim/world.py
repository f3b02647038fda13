"""Kinematic dual-arm world: two 6-DoF arms with parallel grippers, a table and a cube.

Joint vector (14,): ``[left_joint1..6, left_gripper, right_joint1..6, right_gripper]``; arm
joints in radians, grippers normalised ``0 = closed .. 1 = open``.

Physics is kinematic: joints move towards their targets at bounded speed; a gripper that closes
onto the cube (fingers reach the cube width while the grasp centre is within
``SimConfig.grasp_radius`` of the cube centre) attaches it; opening releases it and it drops onto
the table. Closed fingers that run into a resting cube push it horizontally. A cube that ends up
off the table (and is not held) fails the task.
"""

from __future__ import annotations

import logging

import numpy as np

from scarls.sim.config import SimCommandError, SimConfig
from scarls.sim.kinematics import ArmKinematics
from scarls.sim.render import CAMERA_NAMES, SceneRenderer
from scarls.sim.task import ARMS, TaskState

__all__ = [
    'ARM_SLICES',
    'BASE_POSITIONS',
    'BASE_YAWS',
    'GRIPPER_INDEX',
    'GRIPPER_STROKE',
    'HOME',
    'JOINT_NAMES',
    'LOWER',
    'TABLE_HALF',
    'UPPER',
    'DualArmSim',
    'gripper_thresholds',
]

logger = logging.getLogger(__name__)

JOINT_NAMES: tuple[str, ...] = tuple(
    f'{arm}_{j}'
    for arm in ARMS
    for j in ('joint1', 'joint2', 'joint3', 'joint4', 'joint5', 'joint6', 'gripper')
)
#: Slice of each arm's 6 joints in the 14-vector, and the index of its gripper.
ARM_SLICES: dict[str, slice] = {'left': slice(0, 6), 'right': slice(7, 13)}
GRIPPER_INDEX: dict[str, int] = {'left': 6, 'right': 13}

_ARM_HOME = (0.0, -1.75, 1.85, 1.47, 0.0, 0.0, 1.0)
_ARM_LOWER = (-1.8, -2.2, -0.2, -1.8, -2.8, -1.6, 0.0)
_ARM_UPPER = (1.8, 0.6, 2.9, 2.2, 2.8, 1.6, 1.0)
HOME = np.array(_ARM_HOME * 2, dtype=np.float64)
LOWER = np.array(_ARM_LOWER * 2, dtype=np.float64)
UPPER = np.array(_ARM_UPPER * 2, dtype=np.float64)
for _a in (HOME, LOWER, UPPER):
    _a.setflags(write=False)

#: Half extents (x, y) of the table top, centred on the world origin.
TABLE_HALF: tuple[float, float] = (0.40, 0.25)
#: Arm base positions (on the table's short edges) and yaws (facing the table centre).
BASE_POSITIONS: dict[str, tuple[float, float, float]] = {
    'left': (-0.45, 0.0, 0.0),
    'right': (0.45, 0.0, 0.0),
}
BASE_YAWS = {'left': 0.0, 'right': np.pi}

#: Full finger opening (m) of gripper value 1.0.
GRIPPER_STROKE = 0.08


def gripper_thresholds(cube_size: float) -> tuple[float, float, float]:
    """Gripper values ``(contact, hold, release)`` for a cube of edge ``cube_size``.

    ``contact``: the fingers touch the cube (closing past it grasps); ``hold``: a held cube stops
    the fingers here; ``release``: opening past this drops a held cube.
    """
    contact = min(0.95, cube_size / GRIPPER_STROKE)
    return contact, max(0.0, contact - 0.05), min(1.0, contact + 0.1)


_FINGER_RADIUS = 0.01
_FLOOR_Z = -0.5


class DualArmSim:
    """The simulated dual-arm robot and its 'pick_cube' scene (deterministic given seeds)."""

    JOINT_NAMES: tuple[str, ...] = JOINT_NAMES
    CAMERA_NAMES: tuple[str, ...] = CAMERA_NAMES
    HOME: np.ndarray = HOME

    def __init__(self, config: SimConfig | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        cfg = self.config
        self.lower = LOWER
        self.upper = UPPER
        vel = np.full(14, cfg.max_joint_velocity)
        vel[[6, 13]] = cfg.max_gripper_velocity
        vel.setflags(write=False)
        self.max_velocity = vel
        self._max_step = vel * cfg.dt
        self.arms = {
            arm: ArmKinematics(np.array(BASE_POSITIONS[arm]), BASE_YAWS[arm]) for arm in ARMS
        }
        self._half = cfg.cube_size / 2.0
        self._contact, self._hold, self._release = gripper_thresholds(cfg.cube_size)
        self._renderer = SceneRenderer(cfg.height, cfg.width, TABLE_HALF, cfg.cube_size)
        self._rng = np.random.default_rng(cfg.seed)
        self._q = HOME.copy()
        self._qd = np.zeros(14)
        self._cube = np.zeros(3)
        self._holder = ''
        self._offset = np.zeros(3)
        self._failed = False
        self._steps = 0
        self._frames_cache: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] | None = None
        self.reset(cfg.seed)

    # ------------------------------------------------------------------ state
    @property
    def time(self) -> float:
        """Simulated seconds since the last reset."""
        return self._steps * self.config.dt

    def joint_positions(self) -> np.ndarray:
        """Current joints (14,) float64 (a copy)."""
        return self._q.copy()

    def joint_velocities(self) -> np.ndarray:
        """Joint velocities (14,) over the last tick (a copy)."""
        return self._qd.copy()

    def cube_position(self) -> np.ndarray:
        """Cube centre (3,) (a copy)."""
        return self._cube.copy()

    def grasp_point(self, arm: str) -> np.ndarray:
        """World position (3,) of ``arm``'s grasp centre."""
        return self._frames()[arm][0][6].copy()

    def task_state(self) -> TaskState:
        """Privileged task state of the current tick."""
        lift = float(self._cube[2] - self._half) if not self._failed else 0.0
        held = bool(self._holder)
        return TaskState(
            cube_position=(float(self._cube[0]), float(self._cube[1]), float(self._cube[2])),
            grasped=held,
            holding_arm=self._holder,
            lift_height=lift,
            success=held and lift >= self.config.lift_success_height - 1e-9,
            failed=self._failed,
            steps=self._steps,
        )

    # --------------------------------------------------------------- dynamics
    def reset(self, seed: int | None = None) -> None:
        """Arms to :data:`HOME`, a new random cube position; ``seed`` reseeds the scene RNG."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        cfg = self.config
        side = -1.0 if self._rng.random() < 0.5 else 1.0
        x = side * self._rng.uniform(*cfg.spawn_x)
        y = self._rng.uniform(*cfg.spawn_y)
        self._cube = np.array([x, y, self._half])
        self._q = HOME.copy()
        self._qd = np.zeros(14)
        self._holder = ''
        self._offset = np.zeros(3)
        self._failed = False
        self._steps = 0
        self._frames_cache = None
        logger.debug('sim reset: cube at %s', self._cube)

    def step(self, q_target: np.ndarray) -> None:
        """Advance one ``dt`` moving the joints towards ``q_target`` (14,) at bounded speed.

        Targets outside the joint limits are clamped.

        Raises:
            SimCommandError: wrong shape or non-finite values.
        """
        target = np.asarray(q_target, dtype=np.float64)
        if target.shape != (14,):
            raise SimCommandError(
                f'q_target must have shape (14,) in the order {list(JOINT_NAMES)}, '
                f'got shape {target.shape}'
            )
        if not np.all(np.isfinite(target)):
            bad = [JOINT_NAMES[i] for i in np.flatnonzero(~np.isfinite(target))]
            raise SimCommandError(f'q_target has NaN/inf for {bad}; send finite radians')
        target = np.clip(target, LOWER, UPPER)
        prev = self._q
        q = prev + np.clip(target - prev, -self._max_step, self._max_step)
        if self._holder:
            gi = GRIPPER_INDEX[self._holder]
            q[gi] = max(q[gi], self._hold)
        self._q = q
        self._frames_cache = None
        frames = self._frames()
        if not self._failed:
            self._update_cube(prev, q, frames)
        self._qd = (q - prev) / self.config.dt
        self._steps += 1

    def _update_cube(
        self,
        prev: np.ndarray,
        q: np.ndarray,
        frames: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    ) -> None:
        if self._holder:
            gi = GRIPPER_INDEX[self._holder]
            tip = frames[self._holder][0][6]
            if q[gi] > self._release:
                logger.debug('%s gripper released the cube', self._holder)
                self._holder = ''
                self._cube[2] = self._half
                self._check_on_table()
                return
            self._cube = tip + self._offset
            self._cube[2] = max(self._cube[2], self._half)
            return
        for arm in ARMS:
            gi = GRIPPER_INDEX[arm]
            tip = frames[arm][0][6]
            if (
                prev[gi] >= self._contact > q[gi]
                and np.linalg.norm(tip - self._cube) < self.config.grasp_radius
            ):
                self._holder = arm
                self._offset = self._cube - tip
                q[gi] = max(q[gi], self._hold)
                logger.debug('%s gripper grasped the cube', arm)
                return
        for arm in ARMS:
            if q[GRIPPER_INDEX[arm]] < self._contact:
                self._push(frames[arm][0][6])
        self._check_on_table()

    def _push(self, tip: np.ndarray) -> None:
        reach = self._half + _FINGER_RADIUS
        d = self._cube - tip
        if abs(d[2]) >= reach or abs(d[0]) >= reach or abs(d[1]) >= reach:
            return
        u = d[:2]
        norm = float(np.hypot(u[0], u[1]))
        u = np.array([1.0, 0.0]) if norm < 1e-9 else u / norm
        self._cube[:2] = tip[:2] + u * ((reach + 1e-3) / max(abs(u[0]), abs(u[1])))

    def _check_on_table(self) -> None:
        hx, hy = TABLE_HALF
        if abs(self._cube[0]) > hx or abs(self._cube[1]) > hy:
            self._failed = True
            self._cube[2] = _FLOOR_Z
            logger.debug('cube left the table: task failed')

    def _frames(self) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
        if self._frames_cache is None:
            self._frames_cache = {
                arm: self.arms[arm].frames(self._q[ARM_SLICES[arm]]) for arm in ARMS
            }
        return self._frames_cache

    # -------------------------------------------------------------- rendering
    def render(self, camera: str) -> np.ndarray:
        """RGB image (H, W, 3) uint8 of camera ``'top'``, ``'left'`` or ``'right'``.

        Raises:
            UnknownCameraError: another name.
        """
        frames = self._frames()
        arms = {
            arm: (frames[arm][0], frames[arm][2], float(self._q[GRIPPER_INDEX[arm]]))
            for arm in ARMS
        }
        return self._renderer.render(camera, self._cube, not self._failed, arms)

    def render_all(self) -> dict[str, np.ndarray]:
        """All cameras: name -> RGB image."""
        return {name: self.render(name) for name in CAMERA_NAMES}
