"""Offline expert demonstrations, written as ordinary episodes (no ROS).

The scripted expert plays the human demonstrator in the simulator at 30 Hz. Each tick is
recorded the way an ECU records a tick under human control (the observation of the tick, the
joint targets executed at that tick, ``intervention=True``), so demonstrations go through the
same episode format, reader and batch building as the episodes the ECUs record; the learner
cuts the same K-step action chunks from both. The outcome comes from the task.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from typing import Any

from scarls.episodes import EpisodeRef, EpisodeWriter, StepRecord
from scarls.policies import CAMERAS
from scarls.robot import load_robot
from scarls.sim import DualArmSim, ScriptedExpert, SimConfig, sim_layout

__all__ = ['DEMO_ECU_ID', 'generate_demos', 'record_expert_episode']

_log = logging.getLogger(__name__)

#: ``ecu_id`` stored in the meta of generated demonstrations.
DEMO_ECU_ID = 'demo'


def record_expert_episode(
    sim: DualArmSim,
    expert: ScriptedExpert,
    seed: int,
    *,
    cameras: Sequence[str] = CAMERAS,
    max_steps: int = 300,
) -> tuple[list[StepRecord], str]:
    """Run the expert alone from ``sim.reset(seed)``; return ``(records, outcome)``.

    The episode ends (nothing recorded for that tick) when the task succeeds or fails, or
    after ``max_steps`` ticks (outcome ``'fail'``).
    """
    sim.reset(seed)
    records: list[StepRecord] = []
    dt = sim.config.dt
    for tick in range(max_steps + 1):
        task = sim.task_state()
        if task.success or task.failed or tick == max_steps:
            return records, 'success' if task.success else 'fail'
        q = sim.joint_positions()
        action = expert.action(q, task)
        records.append(
            StepRecord(
                images={c: sim.render(c) for c in cameras},
                state=q.astype('float32'),
                action=action.astype('float32'),
                intervention=True,
                timestamp=tick * dt,
            )
        )
        sim.step(action)
    return records, 'fail'  # pragma: no cover - the loop always returns


def generate_demos(
    root: str | os.PathLike[str],
    task: str,
    n: int,
    *,
    seed: int,
    image_shape: tuple[int, int],
    codec: str = 'lz4',
    max_steps: int = 300,
    cameras: Sequence[str] | None = None,
    fsync: bool = False,
    robot: Any = None,
) -> list[EpisodeRef]:
    """Write ``n`` expert demonstrations of ``task`` under ``root``; scenes ``seed .. seed+n-1``.

    Episodes are finalised with ``model_version=None`` and ``extra={'source': 'offline',
    'seed': <scene seed>, 'demonstrator': 'scripted_expert', 'robot': {name, hash, ...}}``.
    ``robot`` is the simulated robot (a description or its name; default ``sim_dual6``), whose
    cameras are recorded unless ``cameras`` is given. ``fsync=False`` (default) skips
    per-frame fsync: demonstrations can be regenerated, so durability is not worth the time.

    Raises:
        ValueError: ``n < 1``; :class:`~scarls.sim.SimConfigError` for an unknown task or a
            bad resolution; :class:`~scarls.episodes.EpisodeError` from the writer.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f'n must be an int >= 1, got {n!r}')
    h, w = (int(image_shape[0]), int(image_shape[1]))
    description = load_robot(robot)
    layout = sim_layout(description)
    cameras = tuple(cameras) if cameras else description.camera_names
    sim = DualArmSim(SimConfig(height=h, width=w, task=task, seed=seed,
                               dt=1.0 / description.control_rate_hz), layout)
    expert = ScriptedExpert(sim.config, layout=layout)
    refs: list[EpisodeRef] = []
    t0 = time.perf_counter()
    for i in range(n):
        scene = seed + i
        records, outcome = record_expert_episode(
            sim, expert, scene, cameras=cameras, max_steps=max_steps
        )
        writer = EpisodeWriter(
            root,
            task,
            DEMO_ECU_ID,
            cameras=tuple(cameras),
            image_shape=(h, w),
            state_dim=len(records[0].state),
            action_dim=len(records[0].action),
            fps=1.0 / sim.config.dt,
            codec=codec,
            fsync=fsync,
        )
        try:
            for rec in records:
                writer.append(rec)
            refs.append(
                writer.finalize(
                    outcome,
                    model_version=None,
                    extra={'source': 'offline', 'seed': scene, 'demonstrator': 'scripted_expert',
                           'robot': description.identity},
                )
            )
        except BaseException:
            writer.abort()
            raise
    _log.info('%d demonstrations of %r written under %s in %.1f s', n, task, root,
              time.perf_counter() - t0)
    return refs
