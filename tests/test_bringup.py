"""The shared ECU description: both launchers (launch_ros file and `scarls ecu`) read it."""

from __future__ import annotations

import importlib.util
import re
import sys
import types
from pathlib import Path

import pytest
import yaml

from scarls.bringup import (
    ECU_ARGUMENTS,
    FLEET_ARGUMENTS,
    BringupError,
    default_params_file,
    ecu_nodes,
    fleet_nodes,
    launch_sim_time,
    lifecycle_nodes,
)

ROOT = Path(__file__).resolve().parents[1]


def test_ecu_nodes_default_description():
    specs = ecu_nodes('ecu3', backend='sim', task='pick_cube', data_root='/tmp/x')
    assert [s.name for s in specs] == ['driver', 'scheduler', 'actor', 'teleop']
    assert {s.namespace for s in specs} == {'ecu3'}
    assert [s.fqn for s in specs][0] == '/ecu3/driver'
    assert specs[0].parameters['backend'] == 'sim'
    assert specs[1].parameters['data_root'] == '/tmp/x'
    assert all(s.parameters['ecu_id'] == 'ecu3' and s.parameters['task'] == 'pick_cube'
               and s.parameters['robot'] == 'sim_dual6' for s in specs)
    seven = ecu_nodes('ecu3', robot='sim_dual7', learner=True)
    assert {s.parameters['robot'] for s in seven} == {'sim_dual7'}
    # a robot with direct-capture cameras gets one capture process per camera
    arx = ecu_nodes('ecu3', robot='arx5_pair')
    cams = [s for s in arx if s.module == 'scarls.camera.capture']
    assert [(s.name, s.executable, s.parameters['device']) for s in cams] == [
        ('camera_top', 'camera', '/dev/video0'), ('camera_left', 'camera', '/dev/video2'),
        ('camera_right', 'camera', '/dev/video4')]
    assert 'camera_top' not in [s.name for s in lifecycle_nodes(arx)]
    with pytest.raises(BringupError, match="no robot named 'ur5'"):
        ecu_nodes(robot='ur5')
    assert [s.name for s in lifecycle_nodes(specs)] == ['driver', 'scheduler', 'actor']
    with_learner = ecu_nodes('ecu3', learner=True, data_root='/tmp/x')
    assert with_learner[-1].name == 'learner' and with_learner[-1].parameters['data_root'] == \
        '/tmp/x'
    assert 'learner' in [s.name for s in lifecycle_nodes(with_learner)]
    for spec in specs:
        assert importlib.util.find_spec(spec.module) is not None, spec.module


def test_executables_are_console_scripts():
    setup_py = (ROOT / 'setup.py').read_text()
    nodes = re.search(r"NODES = \(([^)]*)\)", setup_py).group(1)
    declared = set(re.findall(r"'(\w+)'", nodes))
    assert {s.executable for s in ecu_nodes(learner=True)} == declared


@pytest.mark.parametrize('kwargs, message', [
    ({'ecu_id': '0bad'}, 'not a valid ROS namespace'),
    ({'ecu_id': 'ecu-1'}, 'not a valid ROS namespace'),
    ({'backend': 'ur5'}, 'unknown backend'),
    ({'teleop': 'joystick'}, 'unknown teleop source'),
    ({'task': '../etc'}, 'plain folder name'),
    ({'extra': {'planner': {}}}, 'unknown nodes'),
])
def test_ecu_nodes_rejects_bad_input(kwargs, message):
    with pytest.raises(BringupError, match=message):
        ecu_nodes(**kwargs)


def test_overrides_and_ros_args():
    specs = ecu_nodes(extra={'driver': {'image_height': 480, 'seed': 3},
                             'actor': {'checkpoint': '', 'flag': True}})
    driver = specs[0]
    assert driver.parameters['image_height'] == 480
    args = driver.ros_args('/p.yaml')
    assert args[:5] == ['--ros-args', '-r', '__node:=driver', '-r', '__ns:=/ecu0']
    assert '--params-file' in args and '/p.yaml' in args
    assert 'image_height:=480' in args and "backend:=''" in args and "robot:='sim_dual6'" in args
    actor_args = specs[2].ros_args(None)
    assert "checkpoint:=''" in actor_args and 'flag:=true' in actor_args


def test_params_file_covers_every_node():
    params = yaml.safe_load(default_params_file().read_text())
    for spec in ecu_nodes(learner=True):
        key = f'/**/{spec.name}'
        assert key in params, key
        assert 'ros__parameters' in params[key]


class _Recorder:
    """Stands in for launch / launch_ros classes (not installable here): records arguments."""

    made: list = []

    def __init__(self, *args, **kwargs):
        self.args, self.kwargs = args, kwargs
        _Recorder.made.append(self)


def _fake_launch_modules(values: dict) -> dict:
    class LaunchConfiguration:
        def __init__(self, name):
            self.name = name

        def perform(self, context):
            return context[self.name]

    classes = {name: type(name, (_Recorder,), {}) for name in (
        'LaunchDescription', 'DeclareLaunchArgument', 'OpaqueFunction', 'LifecycleNode', 'Node',
        'ExecuteProcess')}
    launch = types.ModuleType('launch')
    launch.LaunchDescription = classes['LaunchDescription']
    actions = types.ModuleType('launch.actions')
    actions.DeclareLaunchArgument = classes['DeclareLaunchArgument']
    actions.OpaqueFunction = classes['OpaqueFunction']
    actions.ExecuteProcess = classes['ExecuteProcess']
    subs = types.ModuleType('launch.substitutions')
    subs.LaunchConfiguration = LaunchConfiguration
    launch_ros = types.ModuleType('launch_ros')
    ros_actions = types.ModuleType('launch_ros.actions')
    ros_actions.LifecycleNode = classes['LifecycleNode']
    ros_actions.Node = classes['Node']
    return {'launch': launch, 'launch.actions': actions, 'launch.substitutions': subs,
            'launch_ros': launch_ros, 'launch_ros.actions': ros_actions}


def test_launch_file_builds_the_same_nodes(monkeypatch):
    for name, module in _fake_launch_modules({}).items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location('ecu_launch', ROOT / 'launch' / 'ecu.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _Recorder.made = []
    description = module.generate_launch_description()
    entities = description.args[0]
    declared = [e for e in entities if type(e).__name__ == 'DeclareLaunchArgument']
    assert [(d.args[0], d.kwargs['default_value']) for d in declared] == \
        [(a.name, a.default) for a in ECU_ARGUMENTS]
    assert all(d.kwargs['description'] for d in declared)
    opaque = [e for e in entities if type(e).__name__ == 'OpaqueFunction'][0]
    context = {a.name: a.default for a in ECU_ARGUMENTS}
    context.update(ecu_id='ecu7', backend='arx5', data_root='/data')
    nodes = opaque.kwargs['function'](context)
    expected = ecu_nodes('ecu7', backend='arx5', data_root='/data')
    assert [n.kwargs['name'] for n in nodes] == [s.name for s in expected]
    assert [n.kwargs['executable'] for n in nodes] == [s.executable for s in expected]
    assert {n.kwargs['namespace'] for n in nodes} == {'ecu7'}
    assert [type(n).__name__ for n in nodes] == ['LifecycleNode', 'LifecycleNode',
                                                 'LifecycleNode', 'Node']
    for node, s in zip(nodes, expected, strict=True):
        params_file, overrides = node.kwargs['parameters']
        assert params_file == str(default_params_file())
        assert overrides == s.parameters


def test_fleet_launch_file_builds_the_fleet_description(monkeypatch):
    for name, module in _fake_launch_modules({}).items():
        monkeypatch.setitem(sys.modules, name, module)
    spec = importlib.util.spec_from_file_location('fleet_launch',
                                                  ROOT / 'launch' / 'fleet.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    entities = description.args[0]
    declared = [e for e in entities if type(e).__name__ == 'DeclareLaunchArgument']
    assert [d.args[0] for d in declared] == [a.name for a in FLEET_ARGUMENTS]
    opaque = [e for e in entities if type(e).__name__ == 'OpaqueFunction'][0]
    context = {a.name: a.default for a in FLEET_ARGUMENTS}
    context.update(ecus='3', data_root='/fleet', rendezvous_port='29600')
    actions = opaque.kwargs['function'](context)
    rendezvous, nodes = actions[0], actions[1:]
    assert type(rendezvous).__name__ == 'ExecuteProcess'
    assert rendezvous.kwargs['cmd'][-4:] == ['--addr', '127.0.0.1', '--port', '29600']
    expected = fleet_nodes(3, data_root='/fleet', rendezvous_port=29600)
    assert [(n.kwargs['namespace'], n.kwargs['name']) for n in nodes] == \
        [(s.namespace, s.name) for s in expected]
    assert {n.kwargs['namespace'] for n in nodes} == {'ecu0', 'ecu1', 'ecu2'}
    learners = [n for n in nodes if n.kwargs['name'] == 'learner']
    ranks = [n.kwargs['parameters'][1]['fleet_rank'] for n in learners]
    assert ranks == [0, 1, 2]
    for n in learners:
        p = n.kwargs['parameters'][1]
        assert p['fleet'] is True and p['fleet_world_size'] == 3 and p['fleet_port'] == 29600
        assert p['offline_root'] == '/fleet/offline'
    drivers = [n.kwargs['parameters'][1] for n in nodes if n.kwargs['name'] == 'driver']
    assert [d['seed'] for d in drivers] == [0, 1000, 2000]   # each ECU its own scenes
    schedulers = [n.kwargs['parameters'][1] for n in nodes if n.kwargs['name'] == 'scheduler']
    assert [d['data_root'] for d in schedulers] == ['/fleet/ecu0', '/fleet/ecu1', '/fleet/ecu2']


def _launch_file(monkeypatch, name: str):
    for mod_name, module in _fake_launch_modules({}).items():
        monkeypatch.setitem(sys.modules, mod_name, module)
    spec = importlib.util.spec_from_file_location(name, ROOT / 'launch' / f'{name}.launch.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    description = module.generate_launch_description()
    return [e for e in description.args[0] if type(e).__name__ == 'OpaqueFunction'][0]


def test_launch_files_put_the_nodes_on_simulated_time(monkeypatch):
    from scarls.sim.clock import DEFAULT_TRAIN_STEPS_PER_S
    opaque = _launch_file(monkeypatch, 'ecu')
    context = {a.name: a.default for a in ECU_ARGUMENTS}
    # wall time by default: no clock, no use_sim_time
    nodes = opaque.kwargs['function'](context)
    assert 'clock' not in [n.kwargs['name'] for n in nodes]
    assert not any(n.kwargs['parameters'][1].get('use_sim_time') for n in nodes)
    context.update(rtf='0.5', compute_fair='true', learner='true')
    nodes = opaque.kwargs['function'](context)
    clock, rest = nodes[0], nodes[1:]
    assert (clock.kwargs['name'], clock.kwargs['executable'], clock.kwargs['namespace']) == \
        ('clock', 'clock', '')
    p = clock.kwargs['parameters'][1]
    assert p['rtf'] == 0.5 and p['rate_hz'] == 30.0
    assert p['participants'] == ['/ecu0/driver', '/ecu0/actor', '/ecu0/learner']
    assert all(n.kwargs['parameters'][1]['use_sim_time'] is True for n in rest)
    learner = [n for n in rest if n.kwargs['name'] == 'learner'][0]
    assert learner.kwargs['parameters'][1]['train_steps_per_s'] == DEFAULT_TRAIN_STEPS_PER_S
    # a fleet: one clock for every ECU, a budget given as a number
    opaque = _launch_file(monkeypatch, 'fleet')
    context = {a.name: a.default for a in FLEET_ARGUMENTS}
    context.update(ecus='2', compute_fair='20')
    actions = opaque.kwargs['function'](context)
    clocks = [a for a in actions if a.kwargs.get('name') == 'clock']
    assert len(clocks) == 1 and clocks[0].kwargs['parameters'][1]['rtf'] == 0.0
    assert len(clocks[0].kwargs['parameters'][1]['participants']) == 6
    learners = [a for a in actions if a.kwargs.get('name') == 'learner']
    assert [a.kwargs['parameters'][1]['train_steps_per_s'] for a in learners] == [20.0, 20.0]


def test_launch_files_give_the_nodes_the_dds_profile_unless_one_is_chosen(monkeypatch):
    """A launch_ros fleet of 7+ ECUs on one host needs the profile's initial-peer range (more
    than 32 participants), and camera streams its shared-memory segment: both launch files
    select it as `scarls ecu|fleet` do, unless the user selected a profile of their own."""
    from scarls.bringup import DDS_PROFILE_KEYS, config_file
    profile = config_file('fastdds_shm.xml')
    assert profile is not None and profile.name == 'fastdds_shm.xml'
    for key in DDS_PROFILE_KEYS:
        monkeypatch.delenv(key, raising=False)
    for name, arguments in (('ecu', ECU_ARGUMENTS), ('fleet', FLEET_ARGUMENTS)):
        opaque = _launch_file(monkeypatch, name)
        context = {a.name: a.default for a in arguments}
        nodes = [a for a in opaque.kwargs['function'](context)
                 if type(a).__name__ != 'ExecuteProcess']
        assert nodes and all(n.kwargs['additional_env'] ==
                             {'FASTDDS_DEFAULT_PROFILES_FILE': str(profile)} for n in nodes)
    for key in DDS_PROFILE_KEYS:
        monkeypatch.setenv(key, '/etc/my_profile.xml')
        opaque = _launch_file(monkeypatch, 'ecu')
        nodes = opaque.kwargs['function']({a.name: a.default for a in ECU_ARGUMENTS})
        assert not any('additional_env' in n.kwargs for n in nodes)
        monkeypatch.delenv(key)


def test_launch_sim_time_rejects_what_it_cannot_read():
    specs = ecu_nodes('ecu0')
    assert launch_sim_time(specs, '', '', 'sim_dual6') == specs
    assert launch_sim_time(specs, '', 'false', 'sim_dual6') == specs
    with pytest.raises(BringupError, match='no number'):
        launch_sim_time(specs, 'fast', '', 'sim_dual6')
    with pytest.raises(BringupError, match='compute_fair'):
        launch_sim_time(specs, '', 'lots', 'sim_dual6')
    with pytest.raises(BringupError, match='>= 0'):
        launch_sim_time(specs, '-1', '', 'sim_dual6')


def test_fleet_nodes_rejects_an_empty_fleet():
    with pytest.raises(BringupError, match='at least 1 ECU'):
        fleet_nodes(0)


def test_param_overrides_reach_that_node_of_every_ecu():
    from scarls.cli.common import with_params
    specs = with_params(fleet_nodes(2), ['learner.keep_checkpoints=100', 'driver.seed=7'])
    learners = [s for s in specs if s.name == 'learner']
    assert [s.parameters['keep_checkpoints'] for s in learners] == [100, 100]
    assert all(s.parameters['fleet'] is True for s in learners)   # the rest stays
    assert {s.parameters['seed'] for s in specs if s.name == 'driver'} == {7}
    with pytest.raises(ValueError, match='no node'):
        with_params(ecu_nodes('ecu0'), ['learner.seed=1'])   # no learner in this run
    with pytest.raises(ValueError, match='NODE.NAME=VALUE'):
        with_params(ecu_nodes('ecu0'), ['seed=1'])


def test_param_values_name_each_ecu_with_the_ecu_field():
    from scarls.cli.common import with_params
    specs = with_params(fleet_nodes(3), ['learner.checkpoint_dir=/runs/{ecu}/ckpt',
                                         'learner.data_root=/runs/empty'])
    learners = [s for s in specs if s.name == 'learner']
    assert [s.parameters['checkpoint_dir'] for s in learners] == [
        '/runs/ecu0/ckpt', '/runs/ecu1/ckpt', '/runs/ecu2/ckpt']
    assert {s.parameters['data_root'] for s in learners} == {'/runs/empty'}
    # the id is text whatever it looks like in YAML, and `{ecu}` alone is no mapping
    on = with_params(ecu_nodes('on', learner=True), ['learner.fleet_addr={ecu}',
                                                      'learner.seed=3'])
    params = next(s for s in on if s.name == 'learner').parameters
    assert (params['fleet_addr'], params['seed']) == ('on', 3)
    # in one ECU it is that ECU's id
    one = with_params(ecu_nodes('lab3', learner=True), ['learner.checkpoint_dir=/r/{ecu}'])
    assert next(s for s in one if s.name == 'learner').parameters['checkpoint_dir'] == '/r/lab3'
