"""RViz markers of the dual-arm robot, its scene and the actor's state (pure message builders).

Everything is drawn in one fixed frame (``'world'`` by default: table top at ``z = 0``, ``x`` from
the left arm to the right arm, ``z`` up), so RViz needs no TF tree and no robot description. The
functions here only build ``visualization_msgs`` messages; publishing them is the nodes' job:

- the driver publishes :func:`robot_markers` on ``viz/robot`` (MarkerArray, ~10 Hz);
- the actor publishes :func:`actor_state_marker` on ``viz/actor_state`` (Marker, on every FSM
  transition and at 1 Hz).

Namespaces and ids are fixed (see :data:`ROBOT_NAMESPACES`), so every new array replaces the
previous one in place in RViz. Arm geometry comes from :mod:`scarls.sim.kinematics` with the same
mounting as :class:`scarls.sim.DualArmSim`, so a marker arm overlays the simulated one exactly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Point
from std_msgs.msg import ColorRGBA
from visualization_msgs.msg import Marker, MarkerArray

from scarls.sim.config import SimConfig
from scarls.sim.kinematics import ArmKinematics
from scarls.sim.task import ARMS, TaskState, TaskStateError
from scarls.sim.world import (
    BASE_POSITIONS,
    BASE_YAWS,
    DEFAULT_LAYOUT,
    GRIPPER_STROKE,
    TABLE_HALF,
    SimLayout,
)

__all__ = [
    'ARM_COLOR',
    'INTERVENTION_COLOR',
    'ROBOT_NAMESPACES',
    'TEXT_HEIGHT',
    'VizError',
    'actor_state_marker',
    'actor_text',
    'actor_text_marker',
    'expert_target_marker',
    'robot_markers',
]


class VizError(ValueError):
    """Inputs a marker cannot be built from (wrong joint count, NaN, bad task state)."""


#: Namespaces of :func:`robot_markers`; ids are 0 (left) / 1 (right) for per-arm markers.
ROBOT_NAMESPACES: tuple[str, ...] = ('table', 'arm', 'joints', 'gripper', 'grasp', 'cube')
#: Arm colour under policy control (blue) and under human control (orange), RGBA.
ARM_COLOR: tuple[float, float, float, float] = (0.20, 0.50, 1.00, 1.0)
INTERVENTION_COLOR: tuple[float, float, float, float] = (1.00, 0.55, 0.10, 1.0)
#: Height (m) above the table top where the actor's text floats.
TEXT_HEIGHT = 0.70

_TABLE_COLOR = (0.59, 0.48, 0.36, 1.0)
_JOINT_COLOR = (0.85, 0.85, 0.88, 1.0)
_FINGER_COLOR = (0.92, 0.92, 0.92, 1.0)
_GRASP_COLOR = (1.0, 0.2, 0.8, 0.9)
_CUBE_COLORS = {
    'resting': (0.95, 0.80, 0.10, 1.0),
    'grasped': (0.20, 0.80, 0.90, 1.0),
    'success': (0.10, 0.95, 0.20, 1.0),
    'failed': (0.90, 0.15, 0.10, 1.0),
}
_PHASE_COLORS = {
    'INFERENCE': (0.55, 0.80, 1.00, 1.0),
    'HUMANINTERVENTION': INTERVENTION_COLOR,
    'SUCCESS': (0.10, 0.95, 0.20, 1.0),
    'FAIL': (0.95, 0.20, 0.15, 1.0),
    'ABORTED': (0.95, 0.20, 0.15, 1.0),
}
_TEXT_COLOR = (0.95, 0.95, 0.95, 1.0)
_TARGET_COLOR = (0.10, 0.95, 0.95, 0.6)

_TABLE_THICKNESS = 0.02
_ARM_WIDTH = 0.022
_JOINT_DIAMETER = 0.032
_FINGER_WIDTH = 0.008
_GRASP_DIAMETER = 0.012
# Finger geometry along the tool x axis, relative to the grasp centre (m): the knuckle bar sits
# behind it, the fingertips just beyond it. The half-gap follows the sim's contact model exactly:
# gripper value g opens the fingers g * GRIPPER_STROKE apart.
_KNUCKLE_BACK = 0.045
_TIP_AHEAD = 0.012
_TEXT_SIZE = 0.045

_KINEMATICS: dict[tuple[str, int], ArmKinematics] = {}


def _kinematics(arm: str, dof: int) -> ArmKinematics:
    key = (arm, dof)
    if key not in _KINEMATICS:
        _KINEMATICS[key] = ArmKinematics(np.array(BASE_POSITIONS[arm]), BASE_YAWS[arm], dof)
    return _KINEMATICS[key]
_DEFAULT_CUBE_SIZE = SimConfig().cube_size


def _color(rgba: tuple[float, float, float, float]) -> ColorRGBA:
    return ColorRGBA(r=rgba[0], g=rgba[1], b=rgba[2], a=rgba[3])


def _points(xyz: np.ndarray) -> list[Point]:
    return [Point(x=x, y=y, z=z) for x, y, z in xyz.tolist()]


def _marker(
    ns: str,
    marker_id: int,
    marker_type: int,
    stamp: Time,
    frame_id: str,
    rgba: tuple[float, float, float, float],
    scale: tuple[float, float, float],
) -> Marker:
    m = Marker()
    m.header.stamp = stamp
    m.header.frame_id = frame_id
    m.ns = ns
    m.id = marker_id
    m.type = marker_type
    m.action = Marker.ADD
    m.pose.orientation.w = 1.0
    m.scale.x, m.scale.y, m.scale.z = scale
    m.color = _color(rgba)
    return m


def _at(m: Marker, xyz: Sequence[float]) -> Marker:
    m.pose.position.x, m.pose.position.y, m.pose.position.z = (float(v) for v in xyz)
    return m


def _task_state(task: Any) -> TaskState | None:
    """A sim :class:`TaskState`, a ``scarls_interfaces/TaskState`` message or None."""
    if task is None or isinstance(task, TaskState):
        return task
    try:
        return TaskState.from_vector(list(task.names), list(task.values))
    except AttributeError as exc:
        raise VizError(
            f'task must be a scarls.sim.TaskState, a TaskState message or None, '
            f'got {type(task).__name__}'
        ) from exc
    except TaskStateError as exc:
        raise VizError(f'cannot draw the cube: {exc}') from exc


def _cube_state(task: TaskState) -> str:
    if task.failed:
        return 'failed'
    if task.success:
        return 'success'
    return 'grasped' if task.grasped else 'resting'


def robot_markers(
    q: np.ndarray,
    stamp: Time,
    *,
    frame_id: str = 'world',
    intervening: bool = False,
    task: Any = None,
    cube_size: float = _DEFAULT_CUBE_SIZE,
    layout: SimLayout | None = None,
) -> MarkerArray:
    """The robot and its scene as one MarkerArray (fixed namespaces/ids, all in ``frame_id``).

    Markers (namespace, id): ``table`` 0 (flat CUBE); per arm (0 left, 1 right): ``arm``
    (LINE_STRIP base -> shoulder -> elbow -> wrist -> knuckle), ``joints`` (SPHERE_LIST at the
    joint origins), ``gripper`` (LINE_STRIP tip -> knuckle -> knuckle -> tip; the finger gap is
    ``gripper * GRIPPER_STROKE``), ``grasp`` (SPHERE at the grasp centre, = the sim's
    ``grasp_point``); and ``cube`` 0 (CUBE coloured resting/grasped/success/failed) when ``task``
    is given.

    Args:
        q: joint positions in the simulated robot's order (``layout``; (14,) for sim_dual6).
        stamp: header stamp of every marker.
        frame_id: the fixed frame the markers are expressed in.
        intervening: a human is in control: arms are drawn orange instead of blue.
        task: a :class:`scarls.sim.TaskState`, a ``scarls_interfaces/TaskState`` message, or None
            (no cube marker, e.g. on a real robot).
        cube_size: cube edge length (m).
        layout: the simulated robot's layout (default sim_dual6; 7-DoF arms are drawn too).

    Raises:
        VizError: ``q`` is not the layout's number of finite values, or ``task`` cannot be read.
    """
    lay = layout if layout is not None else DEFAULT_LAYOUT
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (lay.num_joints,):
        raise VizError(f'q must have shape ({lay.num_joints},), got {q.shape}')
    if not np.all(np.isfinite(q)):
        raise VizError('q has NaN/inf values; cannot draw the arms')
    state = _task_state(task)
    arm_rgba = INTERVENTION_COLOR if intervening else ARM_COLOR
    hx, hy = TABLE_HALF
    table = _marker(
        'table', 0, Marker.CUBE, stamp, frame_id, _TABLE_COLOR,
        (2.0 * hx, 2.0 * hy, _TABLE_THICKNESS),
    )
    markers = [_at(table, (0.0, 0.0, -0.5 * _TABLE_THICKNESS))]
    for idx, arm in enumerate(ARMS):
        points, _, tool = _kinematics(arm, lay.dof).frames(q[lay.arm_slices[arm]])
        ax, ay = tool[:, 0], tool[:, 1]
        tip = points[-1]
        knuckle = tip - ax * _KNUCKLE_BACK
        half = 0.5 * GRIPPER_STROKE * min(max(float(q[lay.gripper_index[arm]]), 0.0), 1.0)
        fingertip = tip + ax * _TIP_AHEAD

        chain = _marker('arm', idx, Marker.LINE_STRIP, stamp, frame_id, arm_rgba,
                        (_ARM_WIDTH, 0.0, 0.0))
        chain.points = _points(np.vstack((points[:-2], knuckle)))
        joints = _marker('joints', idx, Marker.SPHERE_LIST, stamp, frame_id, _JOINT_COLOR,
                         (_JOINT_DIAMETER,) * 3)
        joints.points = _points(points[:-2])
        fingers = _marker('gripper', idx, Marker.LINE_STRIP, stamp, frame_id, _FINGER_COLOR,
                          (_FINGER_WIDTH, 0.0, 0.0))
        fingers.points = _points(np.stack((
            fingertip + ay * half, knuckle + ay * half, knuckle - ay * half, fingertip - ay * half,
        )))
        grasp = _marker('grasp', idx, Marker.SPHERE, stamp, frame_id, _GRASP_COLOR,
                        (_GRASP_DIAMETER,) * 3)
        markers += [chain, joints, fingers, _at(grasp, tip)]
    if state is not None:
        cube = _marker('cube', 0, Marker.CUBE, stamp, frame_id, _CUBE_COLORS[_cube_state(state)],
                       (cube_size,) * 3)
        markers.append(_at(cube, state.cube_position))
    return MarkerArray(markers=markers)


def actor_text(
    phase: str, episode_id: int, steps: int, model_version: int, intervening: bool = False
) -> str:
    """The one-line actor summary, e.g. ``'INFERENCE  ep 3  step 120  model v2'``."""
    text = f'{phase}  ep {int(episode_id)}  step {int(steps)}  model v{int(model_version)}'
    if intervening and phase != 'HUMANINTERVENTION':
        text += '  (human)'
    return text


def actor_text_marker(
    phase: str,
    episode_id: int,
    steps: int,
    model_version: int,
    intervening: bool,
    stamp: Time,
    frame_id: str = 'world',
) -> Marker:
    """A TEXT_VIEW_FACING marker (namespace ``actor``, id 0) floating above the table centre.

    Coloured by phase (orange while a human intervenes, green on SUCCESS, red on FAIL/ABORTED).
    """
    rgba = INTERVENTION_COLOR if intervening else _PHASE_COLORS.get(phase, _TEXT_COLOR)
    m = _marker('actor', 0, Marker.TEXT_VIEW_FACING, stamp, frame_id, rgba,
                (0.0, 0.0, _TEXT_SIZE))
    m.text = actor_text(phase, episode_id, steps, model_version, intervening)
    return _at(m, (0.0, 0.0, TEXT_HEIGHT))


def actor_state_marker(msg: Any, frame_id: str = 'world') -> Marker:
    """:func:`actor_text_marker` of a ``scarls_interfaces/ActorState`` message (same stamp)."""
    return actor_text_marker(
        msg.phase, msg.episode_id, msg.steps, msg.model_version, msg.intervening,
        msg.header.stamp, frame_id,
    )


def expert_target_marker(
    position: Sequence[float] | np.ndarray | None,
    stamp: Time,
    *,
    frame_id: str = 'world',
    marker_id: int = 0,
    diameter: float = 0.03,
    intervening: bool = False,
) -> Marker:
    """A translucent SPHERE (namespace ``expert_target``) at a target grasp-centre position:
    cyan while the policy acts, orange (the intervention colour) while the expert has control.

    ``position`` None yields a DELETE of the same namespace/id (the expert has no target).

    Raises:
        VizError: ``position`` is not 3 finite values.
    """
    color = (*INTERVENTION_COLOR[:3], _TARGET_COLOR[3]) if intervening else _TARGET_COLOR
    m = _marker('expert_target', marker_id, Marker.SPHERE, stamp, frame_id, color,
                (diameter,) * 3)
    if position is None:
        m.action = Marker.DELETE
        return m
    xyz = [float(v) for v in np.asarray(position, dtype=np.float64).reshape(-1)]
    if len(xyz) != 3 or not all(math.isfinite(v) for v in xyz):
        raise VizError(f'target position must be 3 finite values, got {position!r}')
    return _at(m, xyz)
