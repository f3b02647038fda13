"""The one interface every robot implements: :class:`RobotBackend`, its joint-state reading
(:class:`JointSample`) and the command check every backend applies (:func:`validate_command`).

Joint vectors are always in the order of the robot description (:mod:`scarls.robot`: for each
arm its joints then its gripper; 14 values for the default ``sim_dual6``, 16 for ``sim_dual7`` or a
G1-class robot); arm joints in radians, grippers normalised ``0 = closed .. 1 = open``. Backends
do not apply the :class:`SafetyFilter`; the driver node runs it before
:meth:`RobotBackend.write_command`. A backend module imports this one and never the registry
(:mod:`scarls.driver.backends`) or another backend.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import numpy as np

from scarls.driver.safety import BackendError, CommandRejected, JointLimits
from scarls.sim import TaskState

__all__ = ['JointSample', 'RobotBackend', 'validate_command']


@dataclass(frozen=True, eq=False)
class JointSample:
    """One joint-state reading.

    Attributes:
        positions: (n,) float64 positions.
        velocities: (n,) float64 velocities (per second).
        stamp: time of the reading in seconds (backend clock: sim time or monotonic).
    """

    positions: np.ndarray
    velocities: np.ndarray
    stamp: float


def validate_command(positions: np.ndarray | Any, joint_names: tuple[str, ...]) -> np.ndarray:
    """``positions`` as a finite float64 vector of ``len(joint_names)``, else CommandRejected."""
    arr = np.asarray(positions, dtype=np.float64)
    if arr.shape != (len(joint_names),):
        raise CommandRejected(
            f'command must have shape ({len(joint_names)},) in the order {list(joint_names)}, '
            f'got shape {arr.shape}'
        )
    bad = np.flatnonzero(~np.isfinite(arr))
    if bad.size:
        raise CommandRejected(f'command has NaN/inf for {[joint_names[i] for i in bad]}')
    return arr


class RobotBackend(ABC):
    """A robot (simulated, real through a vendor SDK, or bridged over ROS 2).

    Lifecycle: ``connect()`` -> (``read_state()`` / ``write_command()`` / ``step()``)* ->
    ``disconnect()``. Methods other than ``connect`` raise :class:`BackendError` when not
    connected.
    """

    @property
    @abstractmethod
    def joint_names(self) -> tuple[str, ...]:
        """Joint names in vector order."""

    @property
    @abstractmethod
    def limits(self) -> JointLimits:
        """Position/velocity limits in vector order."""

    @property
    def camera_names(self) -> tuple[str, ...]:
        """Cameras :meth:`read_cameras` returns (empty when the backend has none)."""
        return ()

    @property
    @abstractmethod
    def connected(self) -> bool:
        """True between :meth:`connect` and :meth:`disconnect`."""

    @abstractmethod
    def connect(self) -> None:
        """Open the connection to the robot."""

    @abstractmethod
    def disconnect(self) -> None:
        """Close the connection (idempotent)."""

    @abstractmethod
    def read_state(self) -> JointSample:
        """Latest joint positions/velocities."""

    @abstractmethod
    def write_command(self, positions: np.ndarray) -> None:
        """Send absolute joint position targets (already safety-filtered)."""

    def hold(self) -> None:
        """Command the current position (stop moving)."""
        self.write_command(self.read_state().positions)

    @abstractmethod
    def reset_pose(self) -> None:
        """Bring the robot to its home pose (sims also reset the scene)."""

    def step(self, dt: float) -> None:  # noqa: B027 - optional hook, no-op by default
        """Advance the world by ``dt`` seconds (no-op on real hardware)."""

    def read_cameras(self) -> dict[str, np.ndarray]:
        """Camera name -> RGB uint8 image (H, W, 3); empty when the backend has no cameras."""
        return {}

    def task_state(self) -> TaskState | None:
        """Privileged task state (simulators only; None on real robots)."""
        return None

    #: :meth:`reset_pose` blocks for the motion and may run in a worker thread while the control
    #: loop reads the state (and :meth:`abort_motion` stops it); False: the driver serialises
    #: it with the control loop (a simulator's reset is instant).
    concurrent_reset: bool = False

    @property
    def moving(self) -> bool:
        """A reset motion is still under way (the driver's reset waits for it to end)."""
        return False

    def abort_motion(self) -> bool:
        """Stop a reset motion now (e-stop); True when it stopped. Default: nothing runs."""
        return True

    def enable(self) -> None:  # noqa: B027 - optional hook, no-op by default
        """Make commands move the robot again (e.g. set the gains after an e-stop)."""

    def fault(self) -> str | None:
        """Why the robot cannot execute commands right now (an SDK emergency, a limp arm, stale
        state from a bridged robot), or None when it can. The driver holds and reports it."""
        return None

    def _require_connected(self) -> None:
        if not self.connected:
            raise BackendError(f'{type(self).__name__} is not connected; call connect() first')
