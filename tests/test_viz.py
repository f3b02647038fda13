"""Tests of the RViz marker builders (scarls.ros.viz) and the RViz config (config/scarls.rviz)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from builtin_interfaces.msg import Time
from scarls_interfaces.msg import ActorState
from scarls_interfaces.msg import TaskState as TaskStateMsg
from visualization_msgs.msg import Marker, MarkerArray

from scarls.robot import JOINT_NAMES
from scarls.ros.viz import (
    ARM_COLOR,
    INTERVENTION_COLOR,
    ROBOT_NAMESPACES,
    VizError,
    actor_state_marker,
    actor_text_marker,
    expert_target_marker,
    robot_markers,
)
from scarls.sim import ARM_SLICES, HOME, DualArmSim, ScriptedExpert, SimConfig, TaskState

RVIZ = Path(__file__).resolve().parents[1] / 'config' / 'scarls.rviz'
STAMP = Time(sec=12, nanosec=345)


def _by_key(array: MarkerArray) -> dict[tuple[str, int], Marker]:
    return {(m.ns, m.id): m for m in array.markers}


def _xyz(points) -> np.ndarray:
    return np.array([[p.x, p.y, p.z] for p in points])


def _pos(marker: Marker) -> np.ndarray:
    p = marker.pose.position
    return np.array([p.x, p.y, p.z])


def _rgba(marker: Marker) -> tuple[float, float, float, float]:
    c = marker.color
    return (c.r, c.g, c.b, c.a)


def test_robot_markers_types_ids_frame_and_stamp():
    sim = DualArmSim(SimConfig(seed=1))
    array = robot_markers(sim.joint_positions(), STAMP, task=sim.task_state())
    assert isinstance(array, MarkerArray)
    markers = _by_key(array)
    assert len(markers) == len(array.markers) == 10  # keys are unique
    expected = {
        ('table', 0): Marker.CUBE,
        ('cube', 0): Marker.CUBE,
        **{('arm', i): Marker.LINE_STRIP for i in (0, 1)},
        **{('joints', i): Marker.SPHERE_LIST for i in (0, 1)},
        **{('gripper', i): Marker.LINE_STRIP for i in (0, 1)},
        **{('grasp', i): Marker.SPHERE for i in (0, 1)},
    }
    assert {k: m.type for k, m in markers.items()} == expected
    assert {m.ns for m in array.markers} == set(ROBOT_NAMESPACES)
    for m in array.markers:
        assert m.header.frame_id == 'world'
        assert m.header.stamp == STAMP
        assert m.action == Marker.ADD
        assert m.pose.orientation.w == 1.0
        assert m.color.a > 0.0
        assert m.scale.x > 0.0
    assert len(markers['arm', 0].points) == 6
    assert len(markers['gripper', 1].points) == 4
    table = markers['table', 0]
    assert table.scale.x == pytest.approx(0.8) and table.scale.y == pytest.approx(0.5)
    assert table.pose.position.z < 0.0  # its top is the table plane z = 0
    other = robot_markers(HOME, STAMP, frame_id='ecu0/world')
    assert {m.header.frame_id for m in other.markers} == {'ecu0/world'}
    assert ('cube', 0) not in _by_key(other)  # no task state: no cube (real robot)


def test_ids_are_stable_across_calls():
    a = robot_markers(HOME, STAMP, task=TaskState(cube_position=(0.1, 0.0, 0.02)))
    q = HOME.copy()
    q[1] += 0.4
    b = robot_markers(q, Time(sec=13), intervening=True,
                      task=TaskState(cube_position=(0.2, 0.1, 0.02)))
    assert [(m.ns, m.id, m.type) for m in a.markers] == [(m.ns, m.id, m.type) for m in b.markers]


def test_arm_geometry_follows_the_joints_and_matches_the_sim():
    sim = DualArmSim(SimConfig(seed=4))
    expert = ScriptedExpert(sim.config)
    for _ in range(40):
        sim.step(expert.action(sim.joint_positions(), sim.task_state()))
    q = sim.joint_positions()
    markers = _by_key(robot_markers(q, STAMP, task=sim.task_state()))
    for idx, arm in enumerate(('left', 'right')):
        np.testing.assert_allclose(_pos(markers['grasp', idx]), sim.grasp_point(arm), atol=1e-12)
        points = sim.arms[arm].frames(q[ARM_SLICES[arm]])[0]
        np.testing.assert_allclose(_xyz(markers['arm', idx].points)[:5], points[:5], atol=1e-12)
        np.testing.assert_allclose(_xyz(markers['joints', idx].points), points[:5], atol=1e-12)
    np.testing.assert_allclose(_pos(markers['cube', 0]), sim.cube_position(), atol=1e-12)

    moved = q.copy()
    moved[JOINT_NAMES.index('left_joint2')] += 0.3
    after = _by_key(robot_markers(moved, STAMP))
    left_before, left_after = _xyz(markers['arm', 0].points), _xyz(after['arm', 0].points)
    np.testing.assert_allclose(left_after[:2], left_before[:2])  # base and shoulder stay put
    assert np.linalg.norm(left_after[2:] - left_before[2:], axis=1).min() > 1e-3
    np.testing.assert_allclose(_xyz(after['arm', 1].points), _xyz(markers['arm', 1].points))


def test_finger_opening_follows_the_gripper_joint():
    def gap(value: float) -> float:
        q = HOME.copy()
        q[JOINT_NAMES.index('right_gripper')] = value
        tips = _xyz(_by_key(robot_markers(q, STAMP))['gripper', 1].points)
        return float(np.linalg.norm(tips[0] - tips[3]))

    assert gap(0.0) == pytest.approx(0.0, abs=1e-12)
    assert gap(0.5) == pytest.approx(0.04)
    assert gap(1.0) == pytest.approx(0.08)
    assert gap(1.7) == pytest.approx(0.08)  # clipped to the stroke


def test_intervening_changes_the_arm_colour_only():
    plain = _by_key(robot_markers(HOME, STAMP))
    human = _by_key(robot_markers(HOME, STAMP, intervening=True))
    for idx in (0, 1):
        assert _rgba(plain['arm', idx]) == pytest.approx(ARM_COLOR)
        assert _rgba(human['arm', idx]) == pytest.approx(INTERVENTION_COLOR)
    assert _rgba(plain['table', 0]) == _rgba(human['table', 0])


def test_cube_colour_follows_the_task_state_and_accepts_the_message():
    def color(task) -> tuple[float, ...]:
        return _rgba(_by_key(robot_markers(HOME, STAMP, task=task))['cube', 0])

    resting = TaskState(cube_position=(0.1, 0.0, 0.02))
    held = TaskState(cube_position=(0.1, 0.0, 0.05), grasped=True, holding_arm='left')
    lifted = TaskState(cube_position=(0.1, 0.0, 0.2), grasped=True, holding_arm='left',
                       success=True)
    failed = TaskState(cube_position=(0.5, 0.0, -0.5), failed=True)
    colours = {color(t) for t in (resting, held, lifted, failed)}
    assert len(colours) == 4

    msg = TaskStateMsg(names=list(held.names()), values=held.as_vector().tolist())
    assert color(msg) == color(held)
    np.testing.assert_allclose(_pos(_by_key(robot_markers(HOME, STAMP, task=msg))['cube', 0]),
                               held.cube)
    with pytest.raises(VizError, match='cube'):
        robot_markers(HOME, STAMP, task=TaskStateMsg(names=['cube_x'], values=[0.0]))
    with pytest.raises(VizError, match='TaskState'):
        robot_markers(HOME, STAMP, task=42)


def test_bad_joint_vectors_raise_typed_errors():
    with pytest.raises(VizError, match='shape'):
        robot_markers(np.zeros(13), STAMP)
    q = HOME.copy()
    q[3] = np.nan
    with pytest.raises(VizError, match='NaN'):
        robot_markers(q, STAMP)


def test_actor_text_marker():
    m = actor_text_marker('INFERENCE', 3, 120, 2, False, STAMP)
    assert m.type == Marker.TEXT_VIEW_FACING
    assert (m.ns, m.id, m.header.frame_id) == ('actor', 0, 'world')
    assert m.text == 'INFERENCE  ep 3  step 120  model v2'
    assert m.pose.position.z > 0.5 and m.scale.z > 0.0
    human = actor_text_marker('HUMANINTERVENTION', 3, 121, 2, True, STAMP, 'ecu0/world')
    assert 'HUMANINTERVENTION' in human.text and 'model v2' in human.text
    assert human.header.frame_id == 'ecu0/world'
    assert _rgba(human) == pytest.approx(INTERVENTION_COLOR)
    assert _rgba(human) != _rgba(m)

    msg = ActorState(phase='SUCCESS', episode_id=7, steps=250, model_version=5)
    msg.header.stamp = STAMP
    from_msg = actor_state_marker(msg)
    assert from_msg.text == 'SUCCESS  ep 7  step 250  model v5'
    assert from_msg.header.stamp == STAMP


def test_expert_target_marker():
    m = expert_target_marker([0.1, -0.05, 0.12], STAMP, marker_id=1)
    assert (m.ns, m.id, m.type, m.action) == ('expert_target', 1, Marker.SPHERE, Marker.ADD)
    np.testing.assert_allclose(_pos(m), [0.1, -0.05, 0.12])
    assert expert_target_marker(None, STAMP).action == Marker.DELETE
    # orange (the intervention colour) while the expert has control, cyan otherwise
    human = expert_target_marker([0.1, -0.05, 0.12], STAMP, intervening=True).color
    assert (human.r, human.g, human.b) == pytest.approx(INTERVENTION_COLOR[:3])
    assert m.color.b > 0.9 and m.color.r < 0.2
    with pytest.raises(VizError):
        expert_target_marker([0.0, np.inf, 0.0], STAMP)


def test_rviz_config_parses_and_references_the_topics():
    config = yaml.safe_load(RVIZ.read_text())
    manager = config['Visualization Manager']
    assert manager['Global Options']['Fixed Frame'] == 'world'
    assert manager['Views']['Current']['Class'] == 'rviz_default_plugins/Orbit'
    displays = {d['Name']: d for d in manager['Displays']}
    topics = {d['Class']: [] for d in displays.values()}
    for d in displays.values():
        if 'Topic' in d:
            topics[d['Class']].append(d['Topic']['Value'])
    assert 'rviz_default_plugins/Grid' in topics
    assert topics['rviz_default_plugins/MarkerArray'] == ['/ecu0/viz/robot']
    assert topics['rviz_default_plugins/Marker'] == ['/ecu0/viz/actor_state',
                                                     '/ecu0/viz/expert_target']
    assert sorted(topics['rviz_default_plugins/Image']) == sorted(
        f'/ecu0/camera/{c}/image_raw' for c in ('top', 'left', 'right'))
    for d in displays.values():
        if d['Class'] == 'rviz_default_plugins/Image':
            assert d['Topic']['Reliability Policy'] == 'Best Effort'
    assert set(displays['Robot']['Namespaces']) == set(ROBOT_NAMESPACES)
    assert [p['Class'] for p in config['Panels']][0] == 'rviz_common/Displays'
