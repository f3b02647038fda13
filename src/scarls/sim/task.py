"""Privileged task state of the simulator, flattenable to named floats for a ROS topic."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scarls.sim.config import SimError

__all__ = ['ARMS', 'TaskState', 'TaskStateError']

#: Arm identifiers, in joint-vector order.
ARMS: tuple[str, ...] = ('left', 'right')

_NAMES: tuple[str, ...] = (
    'cube_x',
    'cube_y',
    'cube_z',
    'grasped',
    'holding_left',
    'holding_right',
    'lift_height',
    'success',
    'failed',
    'steps',
)


class TaskStateError(SimError, ValueError):
    """A (names, values) pair cannot be turned into a :class:`TaskState`."""


@dataclass(frozen=True)
class TaskState:
    """Task state of one simulator tick.

    Attributes:
        cube_position: (x, y, z) of the cube centre in the world frame (m).
        grasped: the cube is attached to a gripper.
        holding_arm: ``'left'``, ``'right'`` or ``''`` (nobody holds it).
        lift_height: cube height above its resting height on the table (m).
        success: the cube is held and lifted at least the configured height.
        failed: the cube left the table (unrecoverable without a scene reset).
        steps: simulator ticks since the last reset.
    """

    cube_position: tuple[float, float, float]
    grasped: bool = False
    holding_arm: str = ''
    lift_height: float = 0.0
    success: bool = False
    failed: bool = False
    steps: int = 0

    def __post_init__(self) -> None:
        if len(self.cube_position) != 3:
            raise TaskStateError(f'cube_position needs 3 values, got {self.cube_position!r}')
        if self.holding_arm not in ('', *ARMS):
            raise TaskStateError(
                f'holding_arm must be one of {("", *ARMS)}, got {self.holding_arm!r}'
            )
        if self.grasped != bool(self.holding_arm):
            raise TaskStateError(
                f'grasped={self.grasped} contradicts holding_arm={self.holding_arm!r}'
            )

    @property
    def cube(self) -> np.ndarray:
        """Cube position as a (3,) float64 array."""
        return np.array(self.cube_position, dtype=np.float64)

    @staticmethod
    def names() -> tuple[str, ...]:
        """Names of the values produced by :meth:`as_vector` (fixed order)."""
        return _NAMES

    def as_vector(self) -> np.ndarray:
        """Flatten to float64 values aligned with :meth:`names` (booleans as 0.0/1.0)."""
        x, y, z = self.cube_position
        return np.array(
            [
                x,
                y,
                z,
                float(self.grasped),
                float(self.holding_arm == 'left'),
                float(self.holding_arm == 'right'),
                self.lift_height,
                float(self.success),
                float(self.failed),
                float(self.steps),
            ],
            dtype=np.float64,
        )

    @classmethod
    def from_vector(cls, names: Sequence[str], values: Sequence[float]) -> TaskState:
        """Rebuild a state from ``names``/``values`` (any order; extra names are ignored).

        Raises:
            TaskStateError: lengths differ, a required name is missing or a value is not finite.
        """
        names = list(names)
        values = [float(v) for v in values]
        if len(names) != len(values):
            raise TaskStateError(f'{len(names)} names but {len(values)} values')
        table = dict(zip(names, values, strict=True))
        missing = [n for n in _NAMES if n not in table]
        if missing:
            raise TaskStateError(f'task state is missing {missing}; expected names {list(_NAMES)}')
        bad = [n for n in _NAMES if not math.isfinite(table[n])]
        if bad:
            raise TaskStateError(f'task state values for {bad} are not finite')
        left, right = table['holding_left'] > 0.5, table['holding_right'] > 0.5
        if left and right:
            raise TaskStateError('holding_left and holding_right cannot both be set')
        holding = 'left' if left else 'right' if right else ''
        return cls(
            cube_position=(table['cube_x'], table['cube_y'], table['cube_z']),
            grasped=bool(holding),
            holding_arm=holding,
            lift_height=table['lift_height'],
            success=table['success'] > 0.5,
            failed=table['failed'] > 0.5,
            steps=round(table['steps']),
        )
