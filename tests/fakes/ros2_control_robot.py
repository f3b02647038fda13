"""Test double of a robot that already speaks ROS 2 through ros2_control (Agibot G1 class), in its
own process.

It plays the robot the ``ros2_bridge`` backend drives: the project's kinematic simulator with two
7-DoF arms and grippers (``sim_layout('sim_dual7')``, 16 joints, the pick_cube scene) behind the
topics of a robot description (default ``agibot_g1``):

* publishes ``sensor_msgs/JointState`` on the description's ``state_topic`` (best effort unless
  ``state_qos:=reliable``) at ``rate_hz`` (100) with the robot's own names
  (``joint_names_theirs``) and units (grippers in the description's ``unit``, e.g. radians),
  positions and velocities, stamped with the robot's clock (``clock_offset_s`` skews it);
* one controller per ``command_groups`` entry, as ros2_control's controllers behave:
  ``joint_trajectory`` (joint_trajectory_controller: the group's joint names in any order, all of
  them; header stamp 0 = start now, otherwise the start time on the robot's clock; a trajectory
  that ends in the past is rejected; the last point is the target), ``float64_array``
  (forward_command_controller: exactly one value per joint, in the group's order) and
  ``joint_state`` (names + positions). Malformed commands are counted and ignored;
* steps its simulator at ``rate_hz`` towards the last accepted targets (bounded joint speed);
* publishes the sim's top/left/right cameras as ``sensor_msgs/CompressedImage`` (jpeg,
  format ``rgb8; jpeg compressed bgr8`` as image_transport's compressed publisher writes it) on
  the description's camera topics at ``camera_rate_hz`` (30), best effort;
* publishes the privileged ``scarls_interfaces/TaskState`` on
  ``/<task_state_namespace>/task_state`` (reliable, like the driver's sim backend) when
  ``task_state_namespace`` is set;
* ``~/reset_scene`` (std_srvs/Trigger): arms home and a new cube (the human resetting the scene).

Fault injection for tests (parameters, also changeable while running with ``set_parameters``):
``fault`` = ``nan`` (a NaN position), ``drop_joint`` (the last configured joint left out),
``stale`` (no joint states at all), ``out_of_order`` (messages stamped 0.5 s before the previous
one, positions offset by ``OUT_OF_ORDER_OFFSET``, between the normal ones) or '' (none);
``fault_every`` N: only every N-th message is faulty (1 = all).

Run::

    python tests/fakes/ros2_control_robot.py --ros-args -p robot:=agibot_g1 -p fault:=nan
    python -m fakes.ros2_control_robot --ros-args ...     # with tests/ on PYTHONPATH
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass

import numpy as np

#: ``fault:=out_of_order`` offsets the positions of the late messages by this much (rad / unit),
#: so a test sees whether a receiver adopted them.
OUT_OF_ORDER_OFFSET = 0.5
FAULTS = ('', 'nan', 'drop_joint', 'stale', 'out_of_order')
JPEG_FORMAT = 'rgb8; jpeg compressed bgr8'


@dataclass
class ControllerStats:
    """Commands one controller received, accepted and rejected."""

    received: int = 0
    accepted: int = 0
    rejected: int = 0
    last_problem: str = ''


class RobotModel:
    """The robot's side without ROS: the simulator, the description's names and units, the
    controllers' command checks and the fault injection. Usable directly in tests."""

    def __init__(self, robot='agibot_g1', rate_hz: float = 100.0, seed: int = 0,
                 height: int = 0, width: int = 0, task: str = 'pick_cube') -> None:
        from scarls.driver.bridge import BridgeConfig
        from scarls.robot import load_robot
        from scarls.sim import DualArmSim, SimConfig, sim_layout

        self.robot = load_robot(robot)
        params = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in self.robot.backend_params.items()}
        self.config = BridgeConfig(**params)
        layout = sim_layout('sim_dual7')
        ours = self.robot.joint_names
        if len(ours) != layout.num_joints:
            raise ValueError(f'robot {self.robot.name!r} has {len(ours)} joints; the fake '
                             f'simulates {layout.num_joints} ({list(layout.joint_names)})')
        self.theirs = self.config.joint_names_theirs or ours
        h = height or (self.robot.image_shape[0] or 96)
        w = width or (self.robot.image_shape[1] or 128)
        self.sim = DualArmSim(SimConfig(dt=1.0 / rate_hz, seed=seed, height=h, width=w,
                                        task=task), layout)
        self.seed = seed
        self.episode = 0
        # their unit = ours * scale + offset; ours = the sim's (grippers normalised)
        self.scale, self.offset = np.ones(len(ours)), np.zeros(len(ours))
        for arm in self.robot.arms:
            if arm.gripper is not None:
                i = self.robot.gripper_index(arm.name)
                self.scale[i] = arm.gripper.open - arm.gripper.closed
                self.offset[i] = arm.gripper.closed
        self.index = {name: i for i, name in enumerate(self.theirs)}
        self.target = self.sim.joint_positions()
        self.controllers = {}
        for g in self.config.groups():
            joints = g.joints or ours
            self.controllers[g.name] = (g, [self.theirs[ours.index(j)] for j in joints])
        self.stats = {name: ControllerStats() for name in self.controllers}
        self.pending: list[tuple[float, dict[str, float]]] = []   # (start, {their name: value})
        self.fault = ''
        self.fault_every = 1
        self._count = 0
        self._last_stamp = 0.0

    # ------------------------------------------------------------------ commands
    def _set(self, targets: dict[str, float]) -> None:
        for name, value in targets.items():
            i = self.index[name]
            self.target[i] = (value - self.offset[i]) / self.scale[i]

    def _reject(self, group: str, why: str) -> bool:
        self.stats[group].rejected += 1
        self.stats[group].last_problem = why
        return False

    def on_float64_array(self, group: str, data) -> bool:
        """forward_command_controller: one value per joint of the group, in its order."""
        st = self.stats[group]
        st.received += 1
        names = self.controllers[group][1]
        values = [float(x) for x in data]
        if len(values) != len(names):
            return self._reject(group, f'{len(values)} values for {len(names)} joints')
        if not all(math.isfinite(v) for v in values):
            return self._reject(group, 'NaN/inf in the command')
        self._set(dict(zip(names, values, strict=True)))
        st.accepted += 1
        return True

    def on_joint_state(self, group: str, names, positions) -> bool:
        st = self.stats[group]
        st.received += 1
        allowed = set(self.controllers[group][1])
        if len(names) != len(positions) or not set(names) <= allowed or not names:
            return self._reject(group, f'joints {list(names)} are not this controller\'s '
                                f'{sorted(allowed)} (or lengths differ)')
        values = [float(x) for x in positions]
        if not all(math.isfinite(v) for v in values):
            return self._reject(group, 'NaN/inf in the command')
        self._set(dict(zip(names, values, strict=True)))
        st.accepted += 1
        return True

    def on_trajectory(self, group: str, names, points, stamp: float, now: float) -> bool:
        """joint_trajectory_controller: all the group's joints in any order; stamp 0 starts
        now; a trajectory whose last point lies in the past (robot clock) is rejected."""
        st = self.stats[group]
        st.received += 1
        mine = self.controllers[group][1]
        if sorted(names) != sorted(mine):
            return self._reject(group, f'joint names {list(names)} do not match the '
                                f'controller\'s {mine}')
        if not points:
            return self._reject(group, 'empty trajectory')
        last_positions, last_time = points[-1]
        if len(last_positions) != len(names) or not all(math.isfinite(float(v))
                                                        for v in last_positions):
            return self._reject(group, 'a point has the wrong size or NaN/inf')
        start = now if stamp == 0.0 else stamp
        if start + last_time < now:
            return self._reject(group, f'trajectory ends {now - start - last_time:.3f} s in '
                                'the past (header stamp on another clock?)')
        self.pending.append((start, dict(zip(names, (float(v) for v in last_positions),
                                              strict=True))))
        st.accepted += 1
        return True

    # ------------------------------------------------------------------ time
    def step(self, now: float) -> None:
        """Activate trajectories whose start has come, then one sim tick towards the target."""
        due = [p for p in self.pending if p[0] <= now]
        if due:
            self.pending = [p for p in self.pending if p[0] > now]
            for _, targets in due:
                self._set(targets)
        self.sim.step(self.target)

    def reset_scene(self) -> None:
        self.episode += 1
        self.sim.reset(self.seed + self.episode)
        self.target = self.sim.joint_positions()
        self.pending.clear()

    # ------------------------------------------------------------------ state out
    def joint_state(self, now: float) -> tuple[list[str], list[float], list[float], float] | None:
        """(names, positions, velocities, stamp) of the next message, or None (``stale``)."""
        pos = self.sim.joint_positions() * self.scale + self.offset
        vel = self.sim.joint_velocities() * self.scale
        names = list(self.theirs)
        stamp = now
        self._count += 1
        faulty = self.fault and self._count % max(1, self.fault_every) == 0
        if faulty and self.fault == 'stale':
            return None
        if faulty and self.fault == 'nan':
            pos[0] = math.nan
        elif faulty and self.fault == 'drop_joint':
            names, pos, vel = names[:-1], pos[:-1], vel[:-1]
        elif faulty and self.fault == 'out_of_order':
            stamp = self._last_stamp - 0.5
            pos = pos + OUT_OF_ORDER_OFFSET
        if not (faulty and self.fault == 'out_of_order'):
            self._last_stamp = stamp
        return names, pos.tolist(), vel.tolist(), stamp


def _node_class():
    from rclpy.node import Node

    class Ros2ControlRobot(Node):
        """The ROS side of :class:`RobotModel` (see the module docstring)."""

        def __init__(self) -> None:
            super().__init__('ros2_control_robot')
            from rcl_interfaces.msg import ParameterDescriptor, SetParametersResult
            from scarls_interfaces.msg import TaskState
            from sensor_msgs.msg import CompressedImage, JointState
            from std_msgs.msg import Float64MultiArray
            from std_srvs.srv import Trigger
            from trajectory_msgs.msg import JointTrajectory

            from scarls.ros import qos

            def declare(name, default, text):
                return self.declare_parameter(name, default,
                                              ParameterDescriptor(description=text)).value
            robot = declare('robot', 'agibot_g1', 'robot description (name or YAML file)')
            rate = float(declare('rate_hz', 100.0, 'sim step and joint-state rate (Hz)'))
            cam_rate = float(declare('camera_rate_hz', 30.0, 'camera rate (Hz)'))
            cameras = bool(declare('cameras', True, 'publish the compressed camera images'))
            height = int(declare('image_height', 0, "camera height (0: the description's)"))
            width = int(declare('image_width', 0, "camera width (0: the description's)"))
            seed = int(declare('seed', 0, 'scene seed'))
            task = str(declare('task', 'pick_cube', 'task of the simulated scene'))
            ns = str(declare('task_state_namespace', '',
                             "publish TaskState on /<ns>/task_state ('' = not at all)"))
            self._offset = float(declare('clock_offset_s', 0.0,
                                         "the robot clock's offset from this host's (s)"))
            state_qos = str(declare('state_qos', 'best_effort',
                                    'joint-state publisher reliability'))
            self.model = RobotModel(robot, rate, seed, height, width, task)
            self.model.fault = self._check_fault(declare('fault', '', f'one of {FAULTS}'))
            self.model.fault_every = int(declare('fault_every', 1,
                                                 'only every N-th message is faulty'))
            self._result = SetParametersResult
            self.add_on_set_parameters_callback(self._on_params)
            self._JointState, self._Image, self._TaskState = JointState, CompressedImage, TaskState
            self._task = task
            cfg = self.model.config
            pub_qos = qos.JOINT_STATE if state_qos == 'reliable' else qos.JOINT_STATE_ANY
            self._pub_js = self.create_publisher(JointState, cfg.state_topic, pub_qos)
            self._subs = []
            for name, (group, _) in self.model.controllers.items():
                if group.type == 'float64_array':
                    cb = (lambda n: lambda m: self.model.on_float64_array(n, m.data))(name)
                    msg_type = Float64MultiArray
                elif group.type == 'joint_state':
                    cb = (lambda n: lambda m: self.model.on_joint_state(
                        n, list(m.name), list(m.position)))(name)
                    msg_type = JointState
                else:
                    cb = (lambda n: lambda m: self._on_trajectory(n, m))(name)
                    msg_type = JointTrajectory
                self._subs.append(self.create_subscription(msg_type, group.topic, cb,
                                                           qos.JOINT_STATE))
            self._cams = {}
            if cameras:
                for cam in self.model.robot.cameras:
                    if cam.name in self.model.sim.CAMERA_NAMES:
                        self._cams[cam.name] = self.create_publisher(
                            CompressedImage, cam.topic_name, qos.camera_qos('best_effort'))
            self._pub_task = None
            if ns:
                self._pub_task = self.create_publisher(TaskState, f'/{ns.strip("/")}/task_state',
                                                       qos.JOINT_STATE)
            self.create_service(Trigger, '~/reset_scene', self._on_reset)
            self.create_timer(1.0 / rate, self._tick)
            if self._cams or self._pub_task is not None:
                self.create_timer(1.0 / cam_rate, self._tick_aux)
            self.get_logger().info(
                f'fake ros2_control robot {self.model.robot.name}: state on {cfg.state_topic} '
                f'({state_qos}, {rate:g} Hz), controllers '
                + ', '.join(f'{g.topic} ({g.type})' for g, _ in self.model.controllers.values())
                + f', cameras {list(self._cams)}, fault {self.model.fault!r}')

        @staticmethod
        def _check_fault(value: str) -> str:
            if value not in FAULTS:
                raise ValueError(f'fault must be one of {FAULTS}, got {value!r}')
            return value

        def _on_params(self, params):
            for p in params:
                if p.name == 'fault':
                    if p.value not in FAULTS:
                        return self._result(successful=False,
                                            reason=f'fault must be one of {FAULTS}')
                    self.model.fault = p.value
                    self.get_logger().info(f'fault injection: {p.value!r}')
                elif p.name == 'fault_every':
                    self.model.fault_every = max(1, int(p.value))
                elif p.name == 'clock_offset_s':
                    self._offset = float(p.value)
            return self._result(successful=True)

        def _now(self) -> float:
            return self.get_clock().now().nanoseconds * 1e-9 + self._offset

        @staticmethod
        def _stamp(seconds: float):
            from builtin_interfaces.msg import Time
            ns = max(0, int(round(seconds * 1e9)))
            return Time(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)

        def _on_trajectory(self, group: str, msg) -> None:
            stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
            points = [(list(p.positions),
                       p.time_from_start.sec + p.time_from_start.nanosec * 1e-9)
                      for p in msg.points]
            if not self.model.on_trajectory(group, list(msg.joint_names), points, stamp,
                                            self._now()):
                self.get_logger().warning(
                    f'{group}: trajectory rejected: {self.model.stats[group].last_problem}',
                    throttle_duration_sec=2.0)

        def _on_reset(self, request, response):
            self.model.reset_scene()
            response.success, response.message = True, 'scene reset'
            return response

        def _tick(self) -> None:
            now = self._now()
            self.model.step(now)
            out = self.model.joint_state(now)
            if out is None:
                return
            names, pos, vel, stamp = out
            msg = self._JointState(name=names, position=pos, velocity=vel)
            msg.header.stamp = self._stamp(stamp)
            self._pub_js.publish(msg)

        def _tick_aux(self) -> None:
            import cv2

            stamp = self._stamp(self._now())
            for name, pub in self._cams.items():
                frame = self.model.sim.render(name)
                ok, buf = cv2.imencode('.jpg', cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                if not ok:
                    continue
                msg = self._Image(format=JPEG_FORMAT, data=buf.tobytes())
                msg.header.stamp = stamp
                msg.header.frame_id = f'camera_{name}'
                pub.publish(msg)
            if self._pub_task is not None:
                task = self.model.sim.task_state()
                msg = self._TaskState()
                msg.header.stamp = stamp
                msg.task = self._task
                msg.success, msg.failed = bool(task.success), bool(task.failed)
                msg.names = list(task.names())
                msg.values = [float(v) for v in task.as_vector()]
                self._pub_task.publish(msg)

    return Ros2ControlRobot


def main(args=None) -> int:
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor

    rclpy.init(args=args)
    node = None
    try:
        node = _node_class()()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    sys.exit(main())
