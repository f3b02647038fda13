"""The backend registry: robot backends by name, created from a flat parameter dict.

Registry names: ``'sim'`` (:class:`scarls.driver.sim.SimBackend`), ``'arx5'``
(:class:`scarls.driver.arx5.Arx5Backend`), ``'ros2_bridge'``
(:class:`scarls.driver.bridge.Ros2BridgeBackend`); :func:`register_backend` adds more. The
interface they implement is :mod:`scarls.driver.base`; this module imports the backends and
no backend imports it. The names of the interface are re-exported here, so a caller needs
one import.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

from scarls.driver.base import JointSample, RobotBackend, validate_command
from scarls.driver.safety import BackendError, CommandRejected, ConfigError, DriverError
from scarls.driver.sim import SimBackend
from scarls.robot import RobotDescription, RobotDescriptionError, load_robot
from scarls.sim import SimConfig, SimError

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
