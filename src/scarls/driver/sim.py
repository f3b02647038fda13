"""The simulated robot behind the backend interface (registry name ``'sim'``)."""

from __future__ import annotations

import numpy as np

from scarls.driver.base import JointSample, RobotBackend, validate_command
from scarls.driver.safety import ConfigError, JointLimits
from scarls.robot import RobotDescription, RobotDescriptionError, load_robot
from scarls.sim import DualArmSim, SimConfig, SimError, TaskState, sim_layout

__all__ = ['SimBackend']


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
