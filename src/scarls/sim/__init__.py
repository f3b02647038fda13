"""Pure-numpy kinematic dual-arm simulator, the 'pick_cube' task and its scripted expert.

Quick start::

    from scarls.sim import DualArmSim, ScriptedExpert, SimConfig

    sim = DualArmSim(SimConfig(seed=3))
    expert = ScriptedExpert(sim.config)
    for _ in range(300):
        sim.step(expert.action(sim.joint_positions(), sim.task_state()))
        if sim.task_state().success:
            break
    image = sim.render('top')  # (96, 128, 3) uint8 RGB
"""

from __future__ import annotations

from scarls.sim.config import TASKS, SimCommandError, SimConfig, SimConfigError, SimError
from scarls.sim.expert import PHASES, ExpertPlan, ScriptedExpert
from scarls.sim.kinematics import ArmKinematics, dls_step
from scarls.sim.render import CAMERA_NAMES, UnknownCameraError
from scarls.sim.task import ARMS, TaskState, TaskStateError
from scarls.sim.world import (
    ARM_SLICES,
    GRIPPER_INDEX,
    HOME,
    JOINT_NAMES,
    LOWER,
    TABLE_HALF,
    UPPER,
    DualArmSim,
    SimLayout,
    sim_layout,
)

__all__ = [
    'ARMS',
    'ARM_SLICES',
    'CAMERA_NAMES',
    'GRIPPER_INDEX',
    'HOME',
    'JOINT_NAMES',
    'LOWER',
    'PHASES',
    'TABLE_HALF',
    'TASKS',
    'UPPER',
    'ArmKinematics',
    'DualArmSim',
    'ExpertPlan',
    'ScriptedExpert',
    'SimCommandError',
    'SimConfig',
    'SimConfigError',
    'SimError',
    'SimLayout',
    'TaskState',
    'TaskStateError',
    'UnknownCameraError',
    'dls_step',
    'sim_layout',
]
