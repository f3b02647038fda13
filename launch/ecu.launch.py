"""One ECU on a full ROS 2 install: `ros2 launch scarls ecu.launch.py robot:=sim_dual6`.

`robot:=` names a built-in robot description (sim_dual6, sim_dual7, arx5_pair, agibot_g1) or the
path of your own YAML file: the same ECU drives real hardware by changing that one file.

The node list comes from scarls.bringup.ecu_nodes(), the same description `scarls ecu` uses, so
the two launchers cannot drift. Lifecycle nodes (driver, actor, scheduler) configure and activate
themselves (parameter autostart, default true); set autostart:=false in the params file to manage
them with `ros2 lifecycle set` or a lifecycle manager instead.

`rtf:=0.5` runs the simulated robot on simulated time at half speed (a clock node drives /clock,
every node sets use_sim_time); `compute_fair:=true` adds the compute-fair lockstep
(docs/SIM_TIME.md), as `scarls ecu --rtf` / `--compute-fair` do.
"""

from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from launch import LaunchDescription
from scarls.bringup import (
    ECU_ARGUMENTS,
    default_params_file,
    ecu_nodes,
    launch_node_actions,
    launch_sim_time,
)


def _nodes(context):
    value = {arg.name: LaunchConfiguration(arg.name).perform(context) for arg in ECU_ARGUMENTS}
    params_file = value['params_file'] or str(default_params_file())
    specs = ecu_nodes(value['ecu_id'], backend=value['backend'], task=value['task'],
                      data_root=value['data_root'], teleop=value['teleop'],
                      learner=value['learner'].lower() in ('true', '1', 'yes'),
                      robot=value['robot'])
    specs = launch_sim_time(specs, value['rtf'], value['compute_fair'], value['robot'])
    return launch_node_actions(specs, params_file, Node, LifecycleNode)


def generate_launch_description():
    return LaunchDescription([
        *[DeclareLaunchArgument(arg.name, default_value=arg.default,
                                description=arg.description) for arg in ECU_ARGUMENTS],
        OpaqueFunction(function=_nodes),
    ])
