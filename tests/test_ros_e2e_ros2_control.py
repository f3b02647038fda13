"""A whole ECU on a robot that already speaks ROS 2, not on the built-in simulator.

The robot is a separate process that behaves like a ros2_control robot with two 7-DoF arms
(tests/fakes/ros2_control_robot.py: joint states best effort at 100 Hz in its own joint names and
radians, one controller per arm and gripper - JointTrajectory and Float64MultiArray in -, JPEG
compressed camera images out at 96x128). The ECU is the real one: driver (ros2_bridge backend),
actor, scripted teleop, scheduler and learner, each in its own process, configured by one robot
description derived from config/robots/agibot_g1.yaml (its cameras brought to 48x64 for the
policy). The test plays the human who resets the scene after each episode.

It checks that episodes are recorded 16 joints wide from the compressed cameras, that the learner
trains on demonstrations of that robot and deploys a checkpoint the actor then runs, and it
reports the actor's observation age (tick time minus the stamps of the joint state and frames it
acted on) - the number docs/HARDWARE.md quotes.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import yaml
from rosutil import Probe
from scarls_interfaces.msg import ActorState, ActorStep, CheckpointInfo, EpisodeInfo
from std_srvs.srv import Trigger

from scarls.bringup import NodeSpec, default_params_file, ecu_nodes
from scarls.episodes import validate_episode
from scarls.learner.demos import generate_demos
from scarls.robot import load_robot
from scarls.ros import qos
from scarls.ros.conversions import stamp_to_ns

pytestmark = pytest.mark.ros
NS = 'g1ecu'
TESTS = Path(__file__).resolve().parent


def _robot_file(tmp_path: Path) -> Path:
    data = load_robot('agibot_g1').to_dict()
    data['name'] = 'agibot_g1_test'
    for cam in data['cameras']:
        cam.update(height=48, width=64)
    data['backend']['state_timeout_s'] = 1.0   # a loaded test machine is no dead robot
    path = tmp_path / 'agibot_g1_test.yaml'
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.timeout(540)
def test_whole_ecu_on_a_ros2_control_robot(ros, node_group, tmp_path):
    robot_path = _robot_file(tmp_path)
    robot = load_robot(str(robot_path))
    data_root = tmp_path / 'data'
    generate_demos(data_root / 'offline', 'pick_cube', 3, seed=50_000, image_shape=(48, 64),
                   robot=robot, max_steps=250)
    params = yaml.safe_load(default_params_file().read_text())
    params['/**/learner']['ros__parameters'].update(
        {'pretrain_steps': 120, 'steps_per_round': 40, 'batch_size': 16, 'threshold': 1.0,
         'heldout_demos': 1})
    params_file = tmp_path / 'params.yaml'
    params_file.write_text(yaml.safe_dump(params))
    env = node_group.env
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(TESTS), env.get('PYTHONPATH')) if p)
    node_group.start(NodeSpec('ros2_control_robot', 'fakes.ros2_control_robot', '', {
        'robot': str(robot_path), 'task_state_namespace': NS, 'image_height': 96,
        'image_width': 128, 'seed': 7}), None)
    specs = ecu_nodes(NS, robot=str(robot_path), data_root=str(data_root), learner=True,
                      extra={'teleop': {'max_steps': 200},
                             'scheduler': {'train_interval_s': 3.0}})
    assert [s.name for s in specs] == ['driver', 'scheduler', 'actor', 'teleop', 'learner']
    for spec in specs:
        node_group.start(spec, str(params_file))
    probe = Probe(NS, 'e2e_probe')
    episodes: list[EpisodeInfo] = []
    steps: list[ActorStep] = []
    deployed: list[CheckpointInfo] = []
    phases: list[str] = []
    reset_scene = probe.node.create_client(Trigger, '/ros2_control_robot/reset_scene')

    def on_state(msg: ActorState) -> None:
        if msg.phase in ('SUCCESS', 'FAIL') and (not phases or phases[-1] != msg.phase):
            reset_scene.call_async(Trigger.Request())   # the human resets the scene
        phases.append(msg.phase)

    probe.node.create_subscription(EpisodeInfo, 'scheduler/episode', episodes.append,
                                   qos.EVENTS)
    probe.node.create_subscription(ActorStep, 'actor/step', steps.append, qos.STEPS)
    probe.node.create_subscription(CheckpointInfo, 'scheduler/checkpoint', deployed.append,
                                   qos.LATCHED)
    probe.node.create_subscription(ActorState, 'actor/state', on_state, qos.STATE)
    try:
        probe.wait_for(lambda: sum(e.model_version >= 1 for e in episodes) >= 3, 400,
                       'three episodes run by a deployed checkpoint (learner pre-training, '
                       'deploy)')
        assert not node_group.dead(), [n.spec.fqn for n in node_group.dead()]
    finally:
        probe.close()
    assert deployed and deployed[-1].approved and deployed[-1].version >= 1
    for info in episodes:
        meta = validate_episode(info.path)
        assert meta.shapes['action'] == [meta.steps, 16]
        assert meta.shapes['observation/obs_state'] == [meta.steps, 16]
        for cam in ('top', 'left', 'right'):
            assert meta.shapes[f'observation/{cam}'] == [meta.steps, 48, 64, 3]
        assert meta.extra['robot']['name'] == 'agibot_g1_test'
        assert set(meta.extra['camera_skew_ms']) == {'top', 'left', 'right'}
    # the actor's observation age: tick stamp minus the stamps of what it acted on
    js_age = [(stamp_to_ns(s.header.stamp) - stamp_to_ns(s.joint_state_stamp)) * 1e-6
              for s in steps if not s.is_intervention]
    img_age = [(stamp_to_ns(s.header.stamp) - stamp_to_ns(t)) * 1e-6
               for s in steps if not s.is_intervention for t in s.image_stamps]
    assert js_age and img_age
    report = {name: {'p50_ms': round(float(np.percentile(v, 50)), 2),
                     'p99_ms': round(float(np.percentile(v, 99)), 2), 'n': len(v)}
              for name, v in (('joint_state', js_age), ('frames', img_age))}
    (tmp_path / 'observation_age.json').write_text(json.dumps(report))
    print('observation age (policy ticks):', json.dumps(report))
    # every acted-on observation was within the actor's max_observation_age_s (0.25 s)
    assert max(js_age) <= 250.0 and max(img_age) <= 250.0
