"""driver: the robot's hardware driver node (lifecycle), one interface for every backend.

Backends (parameter `backend`): `sim` (simulated dual-arm robot + three cameras + task state),
`arx5` (ARX5 arms through the vendor SDK, imported lazily at configure), `ros2_bridge` (a robot
that already speaks ROS 2, e.g. Agibot G1 class: joint states in, commands out on its topics).

Safety lives here whatever the backend: every command is checked (length, NaN) and clamped to the
joint position and velocity limits; if commands stop arriving for `watchdog_timeout_s` the robot
holds its position; `~/estop` (SetBool: true engages, false releases) latches a hold.

Topics (relative to the ECU namespace):
  out joint_states                    sensor_msgs/JointState   reliable, depth 10
  out camera/{top,left,right}/image_raw sensor_msgs/Image rgb8  reliable, depth 5 (sim backend)
  out task_state                      scarls_interfaces/TaskState (sim backend; privileged)
  in  joint_command                   sensor_msgs/JointState   reliable, depth 1 (position targets)
  out ~/fault                         std_msgs/String   transient local: why the robot cannot be
                                      commanded now ('' = OK; the driver holds meanwhile)
  ros2_bridge: in the robot's joint states, out one command topic per controller (the robot
  description's backend settings, see scarls.driver.bridge)
  out /sim/progress                   std_msgs/Header (under use_sim_time: the tick finished, for
                                      the lockstep clock; scarls.ros.simtime)
Services: ~/reset_pose (std_srvs/Trigger), ~/estop (std_srvs/SetBool).
Parameters: see config/ecu.yaml (robot, backend, backend_overrides, rate_hz, image_height/width,
seed, watchdog_timeout_s, autostart; use_sim_time). The robot description (`robot`,
config/robots/*.yaml) gives the joints, limits, cameras, control rate and the backend's own
settings.

Clocks: the control tick, the command watchdog and every stamp run on ROS time (simulated time
under use_sim_time; a clock jump restarts the watchdog). Wall time (time.monotonic) is kept for
what guards the host, not the robot: rate-limited logs, the 1 s safety/fault status heartbeats,
and polling a real robot's reset motion.
"""

from __future__ import annotations

import threading
import time

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup
from rclpy.lifecycle import LifecycleNode
from rclpy.task import Future
from scarls_interfaces.msg import ActorState, DriverState, TaskState
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import SetBool, Trigger
from trajectory_msgs.msg import JointTrajectory
from visualization_msgs.msg import MarkerArray

from scarls.diagnostics import RateMeter, Status
from scarls.diagnostics.rules import driver_status
from scarls.driver.backends import make_backend
from scarls.driver.safety import (
    BackendError,
    CommandRejected,
    ConfigError,
    EStop,
    SafetyFilter,
    SafetyStatus,
    Watchdog,
)
from scarls.robot import DEFAULT_ROBOT, load_robot
from scarls.ros import qos
from scarls.ros.conversions import (
    MessageError,
    image_to_msg,
    joint_state_to_msg,
    msg_to_positions,
    stamp_to_sec,
)
from scarls.ros.diagnostics import NodeDiagnostics
from scarls.ros.node_utils import FAILURE, SUCCESS, declare, run_node
from scarls.ros.simtime import ProgressReporter, now_s, on_time_jump
from scarls.ros.viz import VizError, robot_markers

VIZ_RATE_HZ = 10.0


class DriverNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__('driver')
        declare(self, 'ecu_id', 'ecu0', 'ECU id (for logs and metadata)', read_only=True)
        declare(self, 'task', 'pick_cube', 'Task of the simulated scene', read_only=True)
        declare(self, 'robot', DEFAULT_ROBOT,
                'Robot description: a built-in name (config/robots) or a YAML file',
                read_only=True)
        declare(self, 'backend', '',
                "Robot backend: sim | arx5 | ros2_bridge ('' = the robot description's)",
                read_only=True)
        declare(self, 'backend_overrides', '',
                "YAML/JSON mapping over the description's backend settings (e.g. '{seed: 3}')",
                read_only=True)
        declare(self, 'rate_hz', 0.0,
                "State/camera publish rate and sim step rate (Hz; 0 = the robot's control rate)")
        declare(self, 'image_height', 0, 'Sim camera height (px; 0 = the robot description)',
                read_only=True)
        declare(self, 'image_width', 0, 'Sim camera width (px; 0 = the robot description)',
                read_only=True)
        declare(self, 'seed', 0, 'Sim scene randomisation seed', read_only=True)
        declare(self, 'watchdog_timeout_s', 0.25, 'Hold position when commands stop this long')
        declare(self, 'autostart', True, 'Configure and activate at start')
        self._backend = None
        self._lock = threading.Lock()
        self._target: np.ndarray | None = None
        self._timer = None
        self._entities: dict[str, list] = {}
        self._warned_at: dict[str, float] = {}
        self._backend_lock = threading.RLock()   # the control tick vs a (sim) reset worker
        self._held: np.ndarray | None = None     # the latched hold target, while holding
        self._hold_reason = ''
        self._resetting = False
        self._status = SafetyStatus()
        self._safety_sent_at = -1e9
        self._camera_rates: dict[str, RateMeter] = {}   # wall time: frames published per s
        self._diagnostics = NodeDiagnostics(self, 'safety', self._diagnostic_status)

    # -- lifecycle -------------------------------------------------------------------------
    def _backend_params(self) -> tuple[str, dict]:
        """The backend's name and settings: the robot description's ``backend:`` mapping, then
        this node's per-launch parameters (sim: task, seed, image size, rate), then
        ``backend_overrides``."""
        robot = self._robot
        get = lambda n: self.get_parameter(n).value  # noqa: E731
        name = get('backend') or robot.backend
        params = dict(robot.backend_params) if name == robot.backend else {}
        if name == 'sim':
            params.update({'task': get('task'), 'seed': get('seed'), 'dt': 1.0 / self._rate})
            if get('image_height') > 0 and get('image_width') > 0:
                params.update({'height': get('image_height'), 'width': get('image_width')})
        overrides = get('backend_overrides')
        if overrides:
            import yaml
            try:
                extra = yaml.safe_load(overrides)
            except yaml.YAMLError as exc:
                raise ConfigError(f'backend_overrides is not YAML: {exc}') from exc
            if not isinstance(extra, dict):
                raise ConfigError(f'backend_overrides must be a mapping, got {overrides!r}')
            params.update(extra)
        return name, params

    def on_configure(self, state):
        name = '?'
        try:
            self._robot = load_robot(self.get_parameter('robot').value)
            self._rate = float(self.get_parameter('rate_hz').value) or self._robot.control_rate_hz
            name, params = self._backend_params()
            self._backend = make_backend(name, params, self._robot)
            self._backend.connect()
        except Exception as exc:  # ConfigError / BackendError carry the what-to-do message
            self.get_logger().error(f"backend '{name}' failed to configure: {exc}")
            self._backend = None
            return FAILURE
        p = {'backend': name}
        rate = self._rate
        self._dt = 1.0 / rate
        self._names = tuple(self._backend.joint_names)
        self._filter = SafetyFilter(self._backend.limits, self._dt, joint_names=self._names)
        self._watchdog = Watchdog(float(self.get_parameter('watchdog_timeout_s').value))
        self._estop = EStop()
        self._cameras = tuple(self._backend.camera_names)
        self._pub_js = self.create_publisher(JointState, 'joint_states', qos.JOINT_STATE)
        self._pub_cam = {c: self.create_publisher(Image, f'camera/{c}/image_raw', qos.CAMERA)
                         for c in self._cameras}
        self._pub_task = self.create_publisher(TaskState, 'task_state', qos.JOINT_STATE)
        self._sub_cmd = self.create_subscription(JointState, 'joint_command', self._on_command,
                                                 qos.COMMAND)
        # RViz: the arm drawn from the joint states (markers, ~10 Hz), coloured when a human
        # is in control (from the actor's state)
        self._pub_viz = self.create_publisher(MarkerArray, 'viz/robot', qos.JOINT_STATE)
        self._intervening = False
        self._sub_actor = self.create_subscription(
            ActorState, 'actor/state',
            lambda m: setattr(self, '_intervening', bool(m.intervening)), qos.STATE)
        self._viz_every, self._viz_tick = max(1, round(rate / VIZ_RATE_HZ)), 0
        group = MutuallyExclusiveCallbackGroup()
        # the reset awaits its motion (a coroutine that holds its own group meanwhile): it must
        # not share a group with the control tick or the e-stop
        self._srv_reset = self.create_service(Trigger, '~/reset_pose', self._on_reset,
                                              callback_group=MutuallyExclusiveCallbackGroup())
        self._srv_estop = self.create_service(SetBool, '~/estop', self._on_estop,
                                              callback_group=MutuallyExclusiveCallbackGroup())
        self._pub_safety = self.create_publisher(DriverState, 'driver/state', qos.STATE)
        self._entities = {'pub': [self._pub_js, *self._pub_cam.values(), self._pub_task,
                                  self._pub_viz, self._pub_safety],
                          'sub': [self._sub_cmd, self._sub_actor],
                          'srv': [self._srv_reset, self._srv_estop]}
        if name == 'ros2_bridge':
            self._setup_bridge(self._backend.config)
        self._setup_fault_report()
        self._timer_group = group
        self._progress = ProgressReporter(self)   # lockstep: the tick finished (sim time only)
        self._jump = on_time_jump(self, self._on_time_jump)
        self.get_logger().info(
            f"configured: backend={p['backend']} joints={len(self._names)} "
            f"cameras={list(self._cameras)} rate={rate:.1f} Hz")
        return SUCCESS

    def _setup_bridge(self, cfg) -> None:
        """The bridged robot's topics: its joint states in (``state_qos``), one command
        publisher per command group (controller) out."""
        from std_msgs.msg import Float64MultiArray

        from scarls.driver.bridge import command_message

        backend = self._backend
        types = {'joint_trajectory': JointTrajectory, 'float64_array': Float64MultiArray,
                 'joint_state': JointState}
        self._bridge_pubs = {}
        for group in backend.groups:
            pub = self.create_publisher(types[group.type], group.topic, qos.COMMAND)
            self._bridge_pubs[group.name] = pub
            self._entities['pub'].append(pub)
        self._bridge_message = command_message

        def on_state(msg: JointState) -> None:   # never raises: bad messages are counted
            if not backend.on_state(msg.name, msg.position, stamp_to_sec(msg.header.stamp),
                                    msg.velocity):
                stats = backend.stats
                self._warn('bridge_state', f'robot joint state ignored ({stats.rejected} of '
                           f'{stats.received} so far): {stats.last_problem}', 5.0)

        state_qos = qos.JOINT_STATE_ANY if cfg.state_qos == 'best_effort' else qos.JOINT_STATE
        self._bridge_sub = self.create_subscription(JointState, cfg.state_topic, on_state,
                                                    state_qos)
        self._entities['sub'].append(self._bridge_sub)
        self.get_logger().info(
            f'ros2_bridge: state from {cfg.state_topic} ({cfg.state_qos}); commands to '
            + ', '.join(f'{g.topic} ({g.type}, {len(g.joints) or len(self._names)} joints)'
                        for g in backend.groups))

    def _publish_bridge_commands(self, stamp) -> None:
        """Publish the bridged robot's pending commands, one message per command group."""
        pending = getattr(self._backend, 'pending_commands', None)
        if pending is None:
            return
        for cmd in pending():
            self._bridge_pubs[cmd.group].publish(self._bridge_message(cmd, stamp))

    def _setup_fault_report(self) -> None:
        self._fault: str | None = None
        self._fault_sent_at = -1e9
        self._pub_fault = self.create_publisher(String, '~/fault', qos.LATCHED)
        self._entities['pub'].append(self._pub_fault)
        self._pub_fault.publish(String(data=''))

    def _check_fault(self, backend) -> bool:
        """``backend.fault()``: on a fault hold (once), log and publish it on ``~/fault`` (''
        when it clears); True while it lasts (the tick then commands nothing and publishes no
        joint state: a faulted robot's state is not to be trusted)."""
        why = backend.fault()
        now = time.monotonic()   # wall: the fault re-send heartbeat
        if why is None:
            if self._fault is not None:
                self.get_logger().info(f'robot fault cleared (was: {self._fault})')
                self._fault = None
                self._pub_fault.publish(String(data=''))
            return False
        if self._fault is None:
            self.get_logger().error(f'robot fault: {why}: holding')
            self._hold('robot fault')
            self._fault_sent_at = -1e9
        else:
            self._warn('fault', f'robot fault: {why}: holding', 5.0)
        self._fault = why
        with self._lock:
            self._target = None
        if now - self._fault_sent_at >= 1.0:
            self._fault_sent_at = now
            self._pub_fault.publish(String(data=why))
        return True

    def on_activate(self, state):
        with self._lock:
            self._target = None
        self._timer = self.create_timer(self._dt, self._tick, callback_group=self._timer_group)
        self._progress.done_now()   # joined: the clock waits for this node's ticks from now on
        self.get_logger().info('active: publishing state, accepting commands')
        return super().on_activate(state)

    def on_deactivate(self, state):
        self._stop_timer()
        self._hold('deactivated')
        return super().on_deactivate(state)

    def on_cleanup(self, state):
        self._release()
        return SUCCESS

    def on_shutdown(self, state):
        self.safe_stop()
        return SUCCESS

    def safe_stop(self) -> None:
        """Hold position, then disconnect (called on shutdown, SIGINT/SIGTERM and errors)."""
        self._stop_timer()
        if self._backend is not None:
            self._hold('stopping')
            self._release()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self.destroy_timer(self._timer)
            self._timer = None

    def _release(self) -> None:
        for pub in self._entities.get('pub', []):
            self.destroy_publisher(pub)
        for sub in self._entities.get('sub', []):
            self.destroy_subscription(sub)
        for srv in self._entities.get('srv', []):
            self.destroy_service(srv)
        self._entities = {}
        if self._backend is not None:
            try:
                self._backend.disconnect()
            finally:
                self._backend = None

    def _hold(self, why: str) -> None:
        """Stop following commands and hold ONE target: the pose measured when the hold began
        (re-reading the measured pose every tick would let a loaded arm sag). The latch lasts
        until a fresh command is followed again."""
        with self._lock:
            self._target = None
            latch = self._held is None
        if latch:
            try:
                held = np.array(self._backend.read_state().positions, dtype=np.float64)
                self._backend.hold()
                self._held = held
                self._hold_reason = why
            except Exception as exc:  # noqa: BLE001 - a failing hold must still be reported
                self.get_logger().error(f'hold failed ({why}): {exc}')

    def _keep_holding(self) -> None:
        """Each tick while holding: command the latched pose again (a no-op for a robot whose
        own hold keeps it, e.g. the ARX5 SDK; the simulator and bridged robots need it)."""
        if self._held is None:
            self._hold(self._hold_reason or 'holding')
            return
        try:
            self._backend.write_command(self._held)
        except (BackendError, CommandRejected) as exc:
            self._warn('hold', f'holding: {exc}', 5.0)

    # -- callbacks -------------------------------------------------------------------------
    def _warn(self, key: str, text: str, period: float = 2.0) -> None:
        now = time.monotonic()   # wall: a log rate limit
        if now - self._warned_at.get(key, -1e9) >= period:
            self._warned_at[key] = now
            self.get_logger().warning(text)

    def _on_command(self, msg: JointState) -> None:
        try:
            target = msg_to_positions(msg, self._names)
        except MessageError as exc:
            self._warn(f'bad_command:{exc}', f'joint_command rejected: {exc}')
            return
        with self._lock:
            self._target = target
        self._watchdog.feed(now_s(self))   # ROS time: the robot's clock

    def _on_time_jump(self) -> None:
        """The ROS clock jumped (a simulation reset): the watchdog counts from now again."""
        if self._watchdog.last_feed is not None:
            self._watchdog.feed(now_s(self))

    async def _on_reset(self, request, response):
        """Move to the home pose. Refused while e-stopped, faulted or already resetting. The
        motion runs in a worker thread; this callback awaits it without blocking the executor,
        so e-stop, state and commands keep being served (an e-stop aborts the reset)."""
        backend = self._backend
        refusal = ('e-stop engaged: release it first' if self._estop.engaged
                   else f'robot fault: {self._fault}' if self._fault
                   else 'a reset is already running' if self._resetting
                   else 'not configured' if backend is None else '')
        if refusal:
            response.success, response.message = False, f'reset refused: {refusal}'
            self.get_logger().warning(response.message)
            return response
        with self._lock:
            self._target = None
        self._resetting = True
        done = Future()

        def work() -> None:
            try:
                if backend.concurrent_reset:
                    backend.reset_pose()
                else:
                    with self._backend_lock:
                        backend.reset_pose()
                while backend.moving and not self._estop.engaged:
                    time.sleep(self._dt)   # wall: polls a real robot's motion (sim: instant)
                done.set_result('' if not self._estop.engaged else 'aborted by the e-stop')
            except Exception as exc:  # noqa: BLE001 - MotionAborted, BackendError: report
                done.set_result(f'{type(exc).__name__}: {exc}')

        threading.Thread(target=work, name='reset_pose', daemon=True).start()
        error = await done
        self._resetting = False
        self._held = None
        if error:
            response.success, response.message = False, f'reset failed: {error}'
            self.get_logger().error(response.message)
            if not self._estop.engaged:
                self._hold('reset failed')
        else:
            response.success, response.message = True, 'reset to home pose'
            self.get_logger().info('reset pose')
        return response

    def _on_estop(self, request, response):
        backend = self._backend
        if request.data:
            self._estop.engage('service request')
            if backend is not None:
                if self._resetting and not backend.abort_motion():
                    self.get_logger().error('e-stop: the reset motion did not stop in time')
                self._held = None
                self._hold('e-stop')
            response.message = 'e-stop engaged: holding position'
            self.get_logger().warning(response.message)
        else:
            self._estop.release()
            # never jump to a command streamed before or during the stop: hold the pose
            # measured now until a fresh command arrives
            self._held = None
            if backend is not None:
                self._hold('e-stop released: waiting for a fresh command')
                try:
                    backend.enable()
                except Exception as exc:  # noqa: BLE001 - stays held; say why
                    self.get_logger().error(f'e-stop released but the robot cannot be enabled: '
                                            f'{exc}')
            response.message = 'e-stop released: holding until a fresh command'
            self.get_logger().info(response.message)
        self._report_safety()
        response.success = True
        return response

    def _tick(self) -> None:
        try:
            self._control_tick()
        except BackendError as exc:  # e.g. no state from a bridged robot yet: say so, go on
            self._warn(f'backend:{exc}', f'robot backend: {exc}')
        finally:
            self._progress.done_now()

    def _control_tick(self) -> None:
        backend = self._backend
        if backend is None:
            return
        with self._backend_lock:
            if self._check_fault(backend):
                self._safety('fault', self._fault or 'fault')
                self._publish_bridge_commands(self.get_clock().now().to_msg())
                return
            now = now_s(self)   # the watchdog runs on ROS time
            current = backend.read_state().positions
            with self._lock:
                target = self._target
            if self._estop.engaged:
                self._keep_holding()
                self._safety('estopped', self._estop.reason or '')
            elif self._resetting:
                with self._lock:
                    self._target = None   # nothing streamed during a reset is followed
                self._safety('resetting', 'moving to the home pose')
            elif target is not None and self._watchdog.expired(now):
                self._warn('watchdog', 'no joint_command for '
                           f'{self._watchdog.timeout_s:.2f} s: holding position')
                self._hold('watchdog: no joint_command for '
                           f'{self._watchdog.timeout_s:.2f} s')
                self._safety('holding', self._hold_reason)
            elif target is not None:
                try:
                    result = self._filter.filter(target, current)
                    backend.write_command(result.command)
                    self._held = None
                    if result.clamped:
                        self._warn('clamped', 'command clamped: ' + ', '.join(result.reasons),
                                   5.0)
                        self._safety('clamped', '; '.join(result.reasons))
                    else:
                        self._safety('ok', '')
                except CommandRejected as exc:
                    self._warn('rejected', f'command rejected: {exc}')
                    self._hold(f'rejected command: {exc}')
                    self._safety('holding', self._hold_reason)
            else:
                if self._held is not None:
                    self._keep_holding()
                self._safety('holding', self._hold_reason or 'waiting for a command')
            backend.step(self._dt)
            self._publish()

    def _safety(self, state: str, reason: str) -> None:
        if self._status.update(state, reason) or \
                time.monotonic() - self._safety_sent_at >= 1.0:   # wall: status heartbeat
            self._report_safety()

    def _report_safety(self) -> None:
        st = self._status
        msg = DriverState()
        msg.header.stamp = self.get_clock().now().to_msg()
        if self._estop.engaged:
            msg.state, msg.reason = 'estopped', self._estop.reason or ''
        else:
            msg.state, msg.reason = st.state, st.reason
        msg.clamped_ticks = st.ticks['clamped']
        msg.holding_ticks = st.ticks['holding']
        msg.estopped_ticks = st.ticks['estopped']
        msg.fault_ticks = st.ticks['fault']
        self._pub_safety.publish(msg)
        self._safety_sent_at = time.monotonic()

    def _diagnostic_status(self) -> Status:
        st, now = self._status, time.monotonic()
        return driver_status(
            state=st.state, reason=self._estop.reason or '' if self._estop.engaged else st.reason,
            ticks=dict(st.ticks), estopped=self._estop.engaged, fault=self._fault,
            backend=type(self._backend).__name__ if self._backend is not None else '',
            robot=self._robot.name, rate_hz=self._rate,
            camera_rates={c: self._camera_rates[c].rate(now) if c in self._camera_rates else 0.0
                          for c in self._cameras},
            expected_camera_hz=self._rate)

    def _publish(self) -> None:
        backend = self._backend
        stamp = self.get_clock().now().to_msg()
        sample = backend.read_state()
        self._pub_js.publish(joint_state_to_msg(self._names, sample.positions, stamp,
                                                sample.velocities))
        for name, frame in backend.read_cameras().items():
            self._pub_cam[name].publish(image_to_msg(frame, stamp, f'camera_{name}'))
            self._camera_rates.setdefault(name, RateMeter()).tick(time.monotonic())
        task = backend.task_state()
        if task is not None:
            msg = TaskState()
            msg.header.stamp = stamp
            msg.task = str(self.get_parameter('task').value)
            msg.success, msg.failed = bool(task.success), bool(task.failed)
            msg.names = list(task.names())
            msg.values = [float(v) for v in task.as_vector()]
            self._pub_task.publish(msg)
        self._viz_tick += 1
        layout = getattr(getattr(backend, 'sim', None), 'layout', None)
        if self._viz_tick % self._viz_every == 0 and layout is not None:
            try:
                self._pub_viz.publish(robot_markers(sample.positions, stamp, layout=layout,
                                                    intervening=self._intervening, task=task))
            except VizError as exc:
                self._warn('viz', f'robot markers skipped: {exc}', 10.0)
        self._publish_bridge_commands(stamp)


def main(args=None) -> int:
    return run_node(DriverNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
