"""The ROS side of `scarls robot check` (the command is :mod:`scarls.cli.robot`): listen to the
joint states and cameras of a robot description's driver and capture sources, report (see
:mod:`scarls.robot.check`).

Nothing is commanded: the probe never publishes joint commands. `--move-home` calls the driver's
`reset_pose` service once, after the listening window, and only when asked.
"""

from __future__ import annotations

import logging
import time

from scarls.robot.check import CameraSamples, JointSamples, evaluate

log = logging.getLogger('scarls')


def listen(robot, namespace: str, seconds: float, *, move_home: bool = False):
    """Subscribe to the robot's joint states and cameras for ``seconds``; the report."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import CompressedImage, Image, JointState

    from scarls.ros import qos
    from scarls.ros.conversions import MessageError, msg_to_positions

    ns = '/' + namespace.strip('/') if namespace else ''
    joints = JointSamples()
    cams = {c.name: CameraSamples() for c in robot.cameras}
    context = rclpy.Context()
    rclpy.init(context=context)
    node = rclpy.create_node('robot_check', context=context)
    clock = node.get_clock()

    def now() -> float:
        return clock.now().nanoseconds * 1e-9

    def on_js(msg) -> None:
        try:
            q = msg_to_positions(msg, robot.joint_names)
        except MessageError as exc:
            joints.bad += 1
            joints.last_error = str(exc)
            return
        joints.recv.append(now())
        joints.stamps.append(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)
        joints.positions.append(q)

    def on_frame(name: str, spec, msg) -> None:
        from scarls.camera.convert import CameraError, msg_to_frame
        s = cams[name]
        try:   # the frame as the camera delivers it (the check reports its native size)
            frame, stamp_ns = msg_to_frame(msg, spec, fit=False)
        except CameraError as exc:
            s.bad += 1
            s.last_error = str(exc)
            return
        s.recv.append(now())
        s.stamps.append(stamp_ns * 1e-9)
        s.shapes.add(tuple(frame.shape[:2]))
        s.encodings.add(str(getattr(msg, 'encoding', '') or getattr(msg, 'format', '')))

    node.create_subscription(JointState, f'{ns}/joint_states', on_js, qos.JOINT_STATE_ANY)
    for cam in robot.cameras:
        topic = cam.topic_name if cam.topic_name.startswith('/') else f'{ns}/{cam.topic_name}'
        node.create_subscription(CompressedImage if cam.compressed else Image, topic,
                                 lambda m, n=cam.name, c=cam: on_frame(n, c, m),
                                 qos.camera_qos(cam.qos))
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        deadline = time.monotonic() + seconds
        print(f'listening {seconds:g} s to {ns}/joint_states and '
              f'{len(robot.cameras)} camera(s) ...', flush=True)
        while time.monotonic() < deadline:
            executor.spin_once(timeout_sec=0.1)
        report = evaluate(robot, joints, cams, seconds)
        if move_home:
            _move_home(node, executor, ns, report)
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    return report


def _move_home(node, executor, ns: str, report) -> None:
    from std_srvs.srv import Trigger
    client = node.create_client(Trigger, f'{ns}/driver/reset_pose')
    if not client.wait_for_service(timeout_sec=5.0):
        report.problems.append('--move-home: the driver reset_pose service is not there')
        return
    future = client.call_async(Trigger.Request())
    deadline = time.monotonic() + 60.0
    while not future.done() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.1)
    if not future.done():
        report.problems.append('--move-home: no answer from reset_pose in 60 s')
        return
    res = future.result()
    (report.lines if res.success else report.problems).append(f'move home: {res.message}')
