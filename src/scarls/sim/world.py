"""Kinematic dual-arm world: two 6-DoF (or 7-DoF) arms with parallel grippers, a table and a cube.

Joint vector, in the robot description's order (:class:`SimLayout`): ``[left arm joints,
left_gripper, right arm joints, right_gripper]``, (14,) for the default ``sim_dual6`` and (16,) for
``sim_dual7``; arm joints in radians, grippers normalised ``0 = closed .. 1 = open``.

Physics is kinematic: joints move towards their targets at bounded speed; a gripper that closes
onto the cube (fingers reach the cube width while the grasp centre is within
``SimConfig.grasp_radius`` of the cube centre) attaches it; opening releases it and it drops onto
the table. Closed fingers that run into a resting cube push it horizontally. A cube that ends up
off the table (and is not held) fails the task.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from scarls.sim.config import SimCommandError, SimConfig, SimConfigError
from scarls.sim.kinematics import SUPPORTED_DOF, ArmKinematics
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
    'SimLayout',
    'gripper_thresholds',
    'sim_layout',
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


@dataclass(frozen=True, eq=False)
class SimLayout:
    """The simulated robot's joint vector: names, per-arm slices and gripper indices, limits.

    Built from a robot description by :func:`sim_layout`; :data:`DEFAULT_LAYOUT` is ``sim_dual6``.
    """

    dof: int
    joint_names: tuple[str, ...]
    arm_slices: dict[str, slice]
    gripper_index: dict[str, int]
    home: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    robot_name: str = 'sim_dual6'

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    def velocity_limits(self, config: SimConfig) -> np.ndarray:
        """Per-joint speed limits (n,): ``config``'s arm speed, its gripper speed on the
        grippers (read-only)."""
        vel = np.full(self.num_joints, config.max_joint_velocity)
        vel[list(self.gripper_index.values())] = config.max_gripper_velocity
        vel.setflags(write=False)
        return vel


def sim_layout(robot=None) -> SimLayout:
    """The layout of ``robot`` (a :class:`scarls.robot.RobotDescription`, a name, or None for
    ``sim_dual6``); the simulator needs arms ``left`` and ``right`` of 6 or 7 joints, each with
    a gripper.

    Raises:
        SimConfigError: the description is not one the simulator can model.
    """
    from scarls.robot import RobotDescriptionError, load_robot

    try:
        robot = load_robot(robot)
    except RobotDescriptionError as exc:
        raise SimConfigError(str(exc)) from exc
    if robot.arm_names != ARMS:
        raise SimConfigError(f'the simulator models two arms {list(ARMS)}; robot {robot.name!r} '
                             f'has {list(robot.arm_names)}')
    dofs = {a.dof for a in robot.arms}
    if len(dofs) != 1 or next(iter(dofs)) not in SUPPORTED_DOF:
        raise SimConfigError(f'the simulator models two arms of the same DoF in '
                             f'{list(SUPPORTED_DOF)}; robot {robot.name!r} has {sorted(dofs)}')
    if any(a.gripper is None for a in robot.arms):
        raise SimConfigError(f'the simulator needs a gripper on each arm; robot {robot.name!r} '
                             'has an arm without one')
    arrays = []
    for arr in (robot.home, robot.lower, robot.upper, robot.max_velocity):
        a = np.array(arr, dtype=np.float64)
        a.setflags(write=False)
        arrays.append(a)
    return SimLayout(next(iter(dofs)), robot.joint_names,
                     {a: robot.arm_slice(a) for a in ARMS},
                     {a: int(robot.gripper_index(a)) for a in ARMS}, *arrays,
                     robot_name=robot.name)


def gripper_thresholds(cube_size: float) -> tuple[float, float, float]:
    """Gripper values ``(contact, hold, release)`` for a cube of edge ``cube_size``.

    ``contact``: the fingers touch the cube (closing past it grasps); ``hold``: a held cube stops
    the fingers here; ``release``: opening past this drops a held cube.
    """
    contact = min(0.95, cube_size / GRIPPER_STROKE)
    return contact, max(0.0, contact - 0.05), min(1.0, contact + 0.1)


DEFAULT_LAYOUT = SimLayout(
    6, JOINT_NAMES, ARM_SLICES, GRIPPER_INDEX, HOME, LOWER, UPPER,
    np.array([1.5] * 6 + [2.0] + [1.5] * 6 + [2.0]))

_FINGER_RADIUS = 0.01
_FLOOR_Z = -0.5


class DualArmSim:
    """The simulated dual-arm robot and its 'pick_cube' scene (deterministic given seeds).

    ``layout`` (default ``sim_dual6``; see :func:`sim_layout`) sets the arms' DoF, joint names,
    home pose and position limits; the speed limits come from ``config``.
    """

    CAMERA_NAMES: tuple[str, ...] = CAMERA_NAMES

    def __init__(self, config: SimConfig | None = None, layout: SimLayout | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        cfg = self.config
        self.layout = lay = layout if layout is not None else DEFAULT_LAYOUT
        self.JOINT_NAMES = lay.joint_names
        self.HOME = lay.home
        self._n = lay.num_joints
        self._arm_slices = lay.arm_slices
        self._grip = lay.gripper_index
        self.lower = lay.lower
        self.upper = lay.upper
        self.max_velocity = vel = lay.velocity_limits(cfg)
        self._max_step = vel * cfg.dt
        self.arms = {
            arm: ArmKinematics(np.array(BASE_POSITIONS[arm]), BASE_YAWS[arm], lay.dof)
            for arm in ARMS
        }
        self._half = cfg.cube_size / 2.0
        self._contact, self._hold, self._release = gripper_thresholds(cfg.cube_size)
        self._renderer = SceneRenderer(cfg.height, cfg.width, TABLE_HALF, cfg.cube_size)
        self._rng = np.random.default_rng(cfg.seed)
        self._q = self.HOME.copy()
        self._qd = np.zeros(self._n)
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
        """Current joints (n,) float64 (a copy)."""
        return self._q.copy()

    def joint_velocities(self) -> np.ndarray:
        """Joint velocities (n,) over the last tick (a copy)."""
        return self._qd.copy()

    def cube_position(self) -> np.ndarray:
        """Cube centre (3,) (a copy)."""
        return self._cube.copy()

    def grasp_point(self, arm: str) -> np.ndarray:
        """World position (3,) of ``arm``'s grasp centre."""
        return self._frames()[arm][0][-1].copy()

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
        """Arms to the home pose, a new random cube position; ``seed`` reseeds the scene RNG."""
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        cfg = self.config
        side = -1.0 if self._rng.random() < 0.5 else 1.0
        x = side * self._rng.uniform(*cfg.spawn_x)
        y = self._rng.uniform(*cfg.spawn_y)
        self._cube = np.array([x, y, self._half])
        self._q = self.HOME.copy()
        self._qd = np.zeros(self._n)
        self._holder = ''
        self._offset = np.zeros(3)
        self._failed = False
        self._steps = 0
        self._frames_cache = None
        logger.debug('sim reset: cube at %s', self._cube)

    def step(self, q_target: np.ndarray) -> None:
        """Advance one ``dt`` moving the joints towards ``q_target`` (n,) at bounded speed.

        Targets outside the joint limits are clamped.

        Raises:
            SimCommandError: wrong shape or non-finite values.
        """
        target = np.asarray(q_target, dtype=np.float64)
        if target.shape != (self._n,):
            raise SimCommandError(
                f'q_target must have shape ({self._n},) in the order {list(self.JOINT_NAMES)}, '
                f'got shape {target.shape}'
            )
        if not np.all(np.isfinite(target)):
            bad = [self.JOINT_NAMES[i] for i in np.flatnonzero(~np.isfinite(target))]
            raise SimCommandError(f'q_target has NaN/inf for {bad}; send finite radians')
        target = np.clip(target, self.lower, self.upper)
        prev = self._q
        q = prev + np.clip(target - prev, -self._max_step, self._max_step)
        if self._holder:
            gi = self._grip[self._holder]
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
            gi = self._grip[self._holder]
            tip = frames[self._holder][0][-1]
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
            gi = self._grip[arm]
            tip = frames[arm][0][-1]
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
            if q[self._grip[arm]] < self._contact:
                self._push(frames[arm][0][-1])
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
                arm: self.arms[arm].frames(self._q[self._arm_slices[arm]]) for arm in ARMS
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
            arm: (frames[arm][0], frames[arm][2], float(self._q[self._grip[arm]]))
            for arm in ARMS
        }
        return self._renderer.render(camera, self._cube, not self._failed, arms)

    def render_all(self) -> dict[str, np.ndarray]:
        """All cameras: name -> RGB image."""
        return {name: self.render(name) for name in CAMERA_NAMES}
