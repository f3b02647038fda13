"""A fleet of ECUs on a full ROS 2 install: `ros2 launch scarls fleet.launch.py ecus:=4`.

The node list comes from scarls.bringup.fleet_nodes(), the same description `scarls fleet`
uses: N complete ECUs (namespaces ecu0..ecu<N-1>, data under <data_root>/ecu<i>, scene seed
seed + 1000 i, learners in the fleet's all-reduce), plus the rendezvous store
(`python -m scarls.fleet rendezvous`), the only central process. For one ECU per machine, run
ecu.launch.py on each host with the learner's fleet_* parameters instead (docs/FLEET.md).
`rtf:=` and `compute_fair:=` put the whole fleet on one simulated clock (docs/SIM_TIME.md).
"""

import sys

from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from launch import LaunchDescription
from scarls.bringup import (
    FLEET_ARGUMENTS,
    default_params_file,
    fleet_nodes,
    launch_node_actions,
    launch_sim_time,
)


def _nodes(context):
    value = {arg.name: LaunchConfiguration(arg.name).perform(context) for arg in FLEET_ARGUMENTS}
    params_file = value['params_file'] or str(default_params_file())
    specs = fleet_nodes(int(value['ecus']), data_root=value['data_root'], task=value['task'],
                        rendezvous_addr=value['rendezvous_addr'],
                        rendezvous_port=int(value['rendezvous_port']), seed=int(value['seed']),
                        robot=value['robot'], fleet_key_file=value['fleet_key_file'])
    specs = launch_sim_time(specs, value['rtf'], value['compute_fair'], value['robot'])
    rendezvous = ExecuteProcess(
        cmd=[sys.executable, '-m', 'scarls.fleet', 'rendezvous', '--addr',
             value['rendezvous_addr'], '--port', value['rendezvous_port']],
        name='rendezvous', output='screen')
    return [rendezvous, *launch_node_actions(specs, params_file, Node, LifecycleNode)]


def generate_launch_description():
    return LaunchDescription([
        *[DeclareLaunchArgument(arg.name, default_value=arg.default,
                                description=arg.description) for arg in FLEET_ARGUMENTS],
        OpaqueFunction(function=_nodes),
    ])
