"""Configuration and errors of the kinematic dual-arm simulator.

All geometry is in metres, angles in radians, world frame: table top at ``z = 0``, ``x`` points
from the left arm to the right arm, ``y`` points away from the viewer, ``z`` up.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ['TASKS', 'SimCommandError', 'SimConfig', 'SimConfigError', 'SimError']

#: Tasks the simulator knows.
TASKS: tuple[str, ...] = ('pick_cube',)


class SimError(Exception):
    """Base class of every error raised by :mod:`scarls.sim`."""


class SimConfigError(SimError, ValueError):
    """A :class:`SimConfig` field (or a value derived from it) is invalid."""


class SimCommandError(SimError, ValueError):
    """A command handed to the simulator is malformed (wrong shape, NaN/inf)."""


@dataclass(frozen=True)
class SimConfig:
    """Frozen, validated configuration of :class:`scarls.sim.DualArmSim`.

    Attributes:
        height: camera image height in pixels.
        width: camera image width in pixels.
        task: task name, one of :data:`TASKS`.
        seed: base seed; episode ``k`` of a backend uses ``seed + k``.
        dt: control period in seconds (30 Hz by default).
        max_joint_velocity: arm joint speed limit in rad/s (all 12 arm joints).
        max_gripper_velocity: gripper speed limit in normalised units per second
            (1.0 means a full open->close stroke takes one second).
        cube_size: cube edge length in metres.
        lift_success_height: the cube must be held this far above its resting height (m).
        grasp_radius: the grasp centre of a closing gripper must be this close to the cube
            centre (m) for the cube to attach.
        spawn_x: (min, max) |x| range of the spawned cube (distance from the table centre line).
        spawn_y: (min, max) y range of the spawned cube.
    """

    height: int = 96
    width: int = 128
    task: str = 'pick_cube'
    seed: int = 0
    dt: float = 1.0 / 30.0
    max_joint_velocity: float = 1.5
    max_gripper_velocity: float = 2.0
    cube_size: float = 0.04
    lift_success_height: float = 0.05
    grasp_radius: float = 0.02
    spawn_x: tuple[float, float] = (0.04, 0.22)
    spawn_y: tuple[float, float] = (-0.12, 0.12)

    def __post_init__(self) -> None:
        if not isinstance(self.height, int) or not isinstance(self.width, int):
            raise SimConfigError(f'height/width must be ints, got {self.height!r}x{self.width!r}')
        if not (16 <= self.height <= 4096 and 16 <= self.width <= 4096):
            raise SimConfigError(
                f'camera resolution {self.height}x{self.width} is out of range; '
                'use 16..4096 pixels per side (e.g. 96x128 or 480x640)'
            )
        if self.task not in TASKS:
            raise SimConfigError(f'unknown task {self.task!r}; known tasks: {list(TASKS)}')
        if not isinstance(self.seed, int):
            raise SimConfigError(f'seed must be an int, got {self.seed!r}')
        for name in (
            'dt',
            'max_joint_velocity',
            'max_gripper_velocity',
            'cube_size',
            'lift_success_height',
            'grasp_radius',
        ):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise SimConfigError(f'{name} must be a finite positive number, got {value!r}')
        if self.dt > 0.5:
            raise SimConfigError(f'dt={self.dt} s is too coarse; use <= 0.5 s (e.g. 1/30)')
        for name, bound in (('spawn_x', 0.3), ('spawn_y', 0.2)):
            lo, hi = getattr(self, name)
            if not (-bound <= lo <= hi <= bound):
                raise SimConfigError(
                    f'{name}={getattr(self, name)!r} must satisfy -{bound} <= min <= max <= '
                    f'{bound} so that the cube spawns on the reachable part of the table'
                )
        if self.spawn_x[0] < 0:
            raise SimConfigError('spawn_x is a range of |x|; its minimum must be >= 0')
