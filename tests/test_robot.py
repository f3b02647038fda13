"""Robot descriptions: the built-ins, validation with messages that say what to fix, the layout."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

import scarls.robot as robot_module
from scarls.robot import (
    RobotDescription,
    RobotDescriptionError,
    builtin_robots,
    load_robot,
)
from scarls.sim import (
    HOME,
    JOINT_NAMES,
    LOWER,
    UPPER,
    DualArmSim,
    ScriptedExpert,
    SimConfig,
    sim_layout,
)


def test_builtins_load_and_have_the_promised_shapes():
    assert {'sim_dual6', 'sim_dual7', 'arx5_pair', 'agibot_g1'} <= set(builtin_robots())
    widths = {name: load_robot(name).num_joints for name in builtin_robots()}
    assert widths['sim_dual6'] == 14 and widths['arx5_pair'] == 14
    assert widths['sim_dual7'] == 16 and widths['agibot_g1'] == 16
    g1 = load_robot('agibot_g1')
    assert g1.arm('left').gripper.unit == 'radians' and g1.backend == 'ros2_bridge'
    arx = load_robot('arx5_pair')
    assert arx.arm('left').gripper.unit == 'metres' and arx.backend == 'arx5'
    assert load_robot(None) is load_robot('sim_dual6')


def test_default_robot_matches_the_module_constants_and_the_simulator():
    r = load_robot('sim_dual6')
    assert r.joint_names == robot_module.JOINT_NAMES == JOINT_NAMES
    assert r.camera_names == robot_module.CAMERAS
    assert r.arm_slice('left') == robot_module.LEFT_ARM
    assert r.arm_slice('right') == robot_module.RIGHT_ARM
    assert (r.gripper_index('left'), r.gripper_index('right')) == (
        robot_module.LEFT_GRIPPER, robot_module.RIGHT_GRIPPER)
    np.testing.assert_array_equal(r.home, HOME)
    np.testing.assert_array_equal(r.lower, LOWER)
    np.testing.assert_array_equal(r.upper, UPPER)


def test_seven_dof_layout_and_groups():
    r = load_robot('sim_dual7')
    assert r.arm_slice('right') == slice(8, 15) and r.gripper_index('right') == 15
    groups = r.joint_groups()
    assert groups['left_arm'] == tuple(range(7)) and groups['grippers'] == (7, 15)
    assert len(groups['all']) == 16


@pytest.mark.parametrize('name', ['sim_dual6', 'sim_dual7'])
def test_the_scripted_expert_solves_both_simulated_robots(name):
    layout = sim_layout(name)
    sim = DualArmSim(SimConfig(seed=5, height=24, width=32), layout)
    expert = ScriptedExpert(sim.config, layout=layout)
    assert sim.joint_positions().shape == (layout.num_joints,)
    successes = 0
    for seed in range(4):
        sim.reset(seed)
        for _ in range(300):
            sim.step(expert.action(sim.joint_positions(), sim.task_state()))
            if sim.task_state().success:
                successes += 1
                break
    assert successes == 4
    assert sim.render('top').shape == (24, 32, 3)


def test_hash_follows_content_not_comments(tmp_path):
    base = load_robot('sim_dual6')
    data = base.to_dict()
    copy = tmp_path / 'mine.yaml'
    copy.write_text('# a comment\n' + yaml.safe_dump(data))
    assert load_robot(str(copy)).hash == base.hash
    data['arms'][0]['home'][0] = 0.1
    changed = tmp_path / 'changed.yaml'
    changed.write_text(yaml.safe_dump(data))
    assert load_robot(str(changed)).hash != base.hash


def _base() -> dict:
    return load_robot('sim_dual6').to_dict()


@pytest.mark.parametrize('mutate, message', [
    (lambda d: d.pop('arms'), "missing key"),
    (lambda d: d['arms'][0].update(lower=[0.0] * 5), r'arms\[0\]\.lower: must be a list of 6'),
    (lambda d: d['arms'][0].update(home=[9.0] * 6), r'arms\[0\]\.home: outside the joint limits'),
    (lambda d: d['arms'][1].update(joints=d['arms'][0]['joints']), 'joint names must be unique'),
    (lambda d: d['arms'][0]['gripper'].update(unit='inches'), "'inches' is not one of"),
    (lambda d: d['arms'][0]['gripper'].update(open=0.0), 'open and closed must differ'),
    (lambda d: d['cameras'][0].update(source='webcam'), "'webcam' is not one of"),
    (lambda d: d['cameras'][0].update(height=8), r'cameras\[0\]\.height: must be an int in'),
    (lambda d: d['cameras'][1].update(height=480, width=640), 'share one policy resolution'),
    (lambda d: d.update(colour='red'), r"unknown key\(s\) \['colour'\]"),
    (lambda d: d.update(backend=3), 'must be a mapping with a "type"'),
    (lambda d: d['arms'][0].update(max_velocity=-1), 'must be > 0'),
])
def test_invalid_descriptions_say_what_to_fix(mutate, message):
    data = _base()
    mutate(data)
    with pytest.raises(RobotDescriptionError, match=message):
        RobotDescription.from_dict(data, 'mine.yaml')


def test_unknown_names_and_files_are_explained(tmp_path):
    with pytest.raises(RobotDescriptionError, match=r"no robot named 'ur5'.*sim_dual6"):
        load_robot('ur5')
    with pytest.raises(RobotDescriptionError, match='does not exist'):
        load_robot(str(tmp_path / 'nope.yaml'))
    bad = tmp_path / 'bad.yaml'
    bad.write_text('name: [unclosed')
    with pytest.raises(RobotDescriptionError, match='cannot read it as YAML'):
        load_robot(str(bad))


def test_gripper_units_round_trip():
    g = load_robot('arx5_pair').arm('right').gripper
    assert g.to_robot(1.0) == pytest.approx(0.088)
    assert g.from_robot(g.to_robot(0.25)) == pytest.approx(0.25)


def test_with_image_shape_resizes_every_camera():
    r = load_robot('sim_dual7').with_image_shape(48, 64)
    assert r.image_shape == (48, 64)
    assert {(c.height, c.width) for c in r.cameras} == {(48, 64)}
    assert r.joint_names == load_robot('sim_dual7').joint_names
