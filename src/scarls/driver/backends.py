"""The one interface every robot implements (:class:`RobotBackend`) and the backend registry.

Joint vectors are always in the order of the robot description (:mod:`scarls.robot`: for each
arm its joints then its gripper; 14 values for the default ``sim_dual6``, 16 for ``sim_dual7`` or a
G1-class robot); arm joints in radians, grippers normalised ``0 = closed .. 1 = open``. Backends
do not apply the :class:`SafetyFilter`; the driver node runs it before
:meth:`RobotBackend.write_command`.

Registry names: ``'sim'`` (:class:`SimBackend`), ``'arx5'``
(:class:`scarls.driver.arx5.Arx5Backend`), ``'ros2_bridge'``
(:class:`scarls.driver.bridge.Ros2BridgeBackend`).
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from scarls.driver.safety import (
    BackendError,
    CommandRejected,
    ConfigError,
    DriverError,
    JointLimits,
)
from scarls.robot import RobotDescription, RobotDescriptionError, load_robot
from scarls.sim import DualArmSim, SimConfig, SimError, TaskState, sim_layout

__all__ = [
    'BackendError',
    'CommandRejected',
    'ConfigError',
    'DriverError',
    'JointSample',
    'RobotBackend',
    'SimBackend',
    'available_backends',
    'make_backend',
    'register_backend',
    'validate_command',
]

logger = logging.getLogger(__name__)


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


class SimBackend(RobotBackend):
    """:class:`scarls.sim.DualArmSim` behind the backend interface.

    ``step(dt)`` advances the simulator by ``round(dt / config.dt)`` ticks (at least one) towards
    the last written command (the current position until one is written). ``reset_pose()`` plays
    the human who resets the scene: arms home and a new cube position (episode ``k`` after
    connect uses seed ``config.seed + k``).
    """

    def __init__(self, config: SimConfig | None = None,
                 robot: RobotDescription | str | None = None) -> None:
        self.config = config if config is not None else SimConfig()
        try:
            self.robot = load_robot(robot)
        except RobotDescriptionError as exc:
            raise ConfigError(str(exc)) from exc
        try:
            layout = sim_layout(self.robot)
        except SimError as exc:
            raise ConfigError(f'robot {self.robot.name!r} cannot be simulated: {exc}') from exc
        sim_cams = [c.name for c in self.robot.cameras if c.source == 'sim']
        unknown = sorted(set(sim_cams) - set(DualArmSim.CAMERA_NAMES))
        if unknown:
            raise ConfigError(f'the simulator renders cameras {list(DualArmSim.CAMERA_NAMES)}; '
                              f'robot {self.robot.name!r} asks for {unknown}')
        self._cameras = tuple(sim_cams)
        self.sim = DualArmSim(self.config, layout)
        self._limits = JointLimits(layout.lower, layout.upper, layout.max_velocity)
        self._target = self.sim.joint_positions()
        self._connected = False
        self._episode = 0

    @property
    def joint_names(self) -> tuple[str, ...]:
        return self.sim.JOINT_NAMES

    @property
    def limits(self) -> JointLimits:
        return self._limits

    @property
    def camera_names(self) -> tuple[str, ...]:
        return self._cameras

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def episode(self) -> int:
        """Scene resets since connect (the current scene uses seed ``config.seed + episode``)."""
        return self._episode

    def connect(self) -> None:
        self._connected = True
        self._episode = 0
        self.sim.reset(self.config.seed)
        self._target = self.sim.joint_positions()

    def disconnect(self) -> None:
        self._connected = False

    def read_state(self) -> JointSample:
        self._require_connected()
        return JointSample(self.sim.joint_positions(), self.sim.joint_velocities(), self.sim.time)

    def write_command(self, positions: np.ndarray) -> None:
        self._require_connected()
        self._target = self._limits.clamp(validate_command(positions, self.joint_names))

    def reset_pose(self) -> None:
        self._require_connected()
        self._episode += 1
        self.sim.reset(self.config.seed + self._episode)
        self._target = self.sim.joint_positions()

    def step(self, dt: float) -> None:
        self._require_connected()
        if not dt > 0:
            raise ConfigError(f'dt must be > 0 seconds, got {dt!r}')
        for _ in range(max(1, round(dt / self.config.dt))):
            self.sim.step(self._target)

    def read_cameras(self) -> dict[str, np.ndarray]:
        self._require_connected()
        return {name: self.sim.render(name) for name in self._cameras}

    def task_state(self) -> TaskState:
        self._require_connected()
        return self.sim.task_state()


BackendFactory = Callable[[Mapping[str, Any], RobotDescription], RobotBackend]
"""``factory(params, robot) -> backend``: ``params`` are the backend's own settings (the robot
description's ``backend:`` mapping, with per-launch overrides), ``robot`` the description."""


def _build(config_cls: type, params: Mapping[str, Any], backend: str) -> Any:
    fields = {f.name for f in dataclasses.fields(config_cls)}
    unknown = sorted(set(params) - fields)
    if unknown:
        raise ConfigError(
            f'unknown parameter(s) {unknown} for backend {backend!r}; '
            f'valid parameters: {sorted(fields)}'
        )
    try:
        return config_cls(**params)
    except (DriverError, SimError, TypeError, ValueError) as exc:
        raise ConfigError(f'invalid parameters for backend {backend!r}: {exc}') from exc


def _make_sim(params: Mapping[str, Any], robot: RobotDescription) -> RobotBackend:
    params = dict(params)
    for key in ('spawn_x', 'spawn_y'):  # YAML/ROS parameters arrive as lists
        if key in params and isinstance(params[key], list):
            params[key] = tuple(params[key])
    params.setdefault('dt', 1.0 / robot.control_rate_hz)
    if robot.cameras:
        params.setdefault('height', robot.image_shape[0])
        params.setdefault('width', robot.image_shape[1])
    return SimBackend(_build(SimConfig, params, 'sim'), robot)


def _make_arx5(params: Mapping[str, Any], robot: RobotDescription) -> RobotBackend:
    from scarls.driver.arx5 import Arx5Backend, Arx5Config

    return Arx5Backend(_build(Arx5Config, params, 'arx5'), robot=robot)


def _make_bridge(params: Mapping[str, Any], robot: RobotDescription) -> RobotBackend:
    from scarls.driver.bridge import BridgeConfig, Ros2BridgeBackend

    params = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()}
    return Ros2BridgeBackend(_build(BridgeConfig, params, 'ros2_bridge'), robot=robot)


_REGISTRY: dict[str, BackendFactory] = {
    'sim': _make_sim,
    'arx5': _make_arx5,
    'ros2_bridge': _make_bridge,
}


def register_backend(name: str, factory: BackendFactory) -> None:
    """Register ``factory(params) -> RobotBackend`` under ``name`` (replaces nothing).

    Raises:
        ConfigError: ``name`` is empty or already registered.
    """
    if not name or name in _REGISTRY:
        raise ConfigError(f'backend name {name!r} is empty or already registered')
    _REGISTRY[name] = factory


def available_backends() -> tuple[str, ...]:
    """Registered backend names, sorted."""
    return tuple(sorted(_REGISTRY))


def make_backend(name: str, params: Mapping[str, Any] | None = None,
                 robot: RobotDescription | str | None = None) -> RobotBackend:
    """Create (not connect) the backend ``name`` for ``robot`` (a description or its name;
    default ``sim_dual6``) from a flat parameter dict.

    Raises:
        ConfigError: unknown backend name (the message lists the known ones) or bad parameters.
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ConfigError(
            f'unknown robot backend {name!r}; known backends: {list(available_backends())}'
        ) from None
    try:
        description = load_robot(robot)
    except RobotDescriptionError as exc:
        raise ConfigError(str(exc)) from exc
    backend = factory(dict(params or {}), description)
    logger.info('created robot backend %r (%s)', name, type(backend).__name__)
    return backend
