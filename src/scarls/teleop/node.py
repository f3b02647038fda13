"""teleop: the human in the loop - operator signals and teleoperation commands.

Sources (parameter `source`):
  scripted  the simulation's scripted expert plays the human, HG-DAgger style: it watches the
            policy's actions (actor/step) and takes over (INTERVENE) when they deviate from what
            it would do beyond a threshold, or when the episode is about to run out of time; it
            releases (RELEASE) once the robot is back on track, and declares SUCCESS / FAIL from
            the simulator's task state. It also STARTs episodes (up to `episodes`, 0 = forever).
  keyboard  a terminal operator: s=START i=INTERVENE r=RELEASE y=SUCCESS f=FAIL x=STOP
            (teleop command: hold the current position).
  leader    joint positions from a leader arm on `leader_topic` become the teleop command;
            signals come from the keyboard when a terminal is attached.

Topics (relative to the ECU namespace):
  in  joint_states, task_state (scarls_interfaces/TaskState, scripted), actor/state, actor/step,
      leader/joint_states (leader)
  out operator/signal (scarls_interfaces/OperatorSignal, reliable depth 100)
      teleop/command (sensor_msgs/JointState position targets, reliable depth 1)
      viz/expert_target (visualization_msgs/Marker, scripted, ~10 Hz: the grasp-centre target
      the expert steers to; cyan while the policy acts, orange while the expert has control)
      /sim/progress (std_msgs/Header, scripted under use_sim_time: the joint state answered,
      for the lockstep clock; scarls.ros.simtime)

Clocks: the pause before a START (start_delay_s) and every stamp run on ROS time (simulated time
under use_sim_time). Wall time guards the exchange with other processes: a signal the actor has
not reacted to is re-sent after SIGNAL_RETRY_S, and the first START waits at most
wait_for_recorder_s (of wall and of ROS time both) for this ECU's scheduler to be ready to
record (its heartbeat's recording_ready: the actor's steps matched, a frame of every camera
arrived).
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
from rclpy.node import Node
from scarls_interfaces.msg import ActorState, ActorStep, EcuStatus, OperatorSignal, TaskState
from sensor_msgs.msg import JointState
from visualization_msgs.msg import Marker

from scarls.diagnostics import Status
from scarls.diagnostics.rules import teleop_status
from scarls.robot import DEFAULT_ROBOT, load_robot
from scarls.ros import qos
from scarls.ros.conversions import MessageError, joint_state_to_msg, msg_to_positions
from scarls.ros.diagnostics import NodeDiagnostics
from scarls.ros.node_utils import declare, run_node
from scarls.ros.simtime import ProgressReporter, now_s
from scarls.ros.viz import VizError, expert_target_marker
from scarls.teleop.gate import DecisionKind, GateConfig, InterventionGate

SIGNALS = {'START': OperatorSignal.START, 'INTERVENE': OperatorSignal.INTERVENE,
           'RELEASE': OperatorSignal.RELEASE, 'SUCCESS': OperatorSignal.SUCCESS,
           'FAIL': OperatorSignal.FAIL, 'STOP': OperatorSignal.STOP}
KEYS = {'s': 'START', 'i': 'INTERVENE', 'r': 'RELEASE', 'y': 'SUCCESS', 'f': 'FAIL', 'x': 'STOP'}
ACTIVE = ('INFERENCE', 'HUMANINTERVENTION')
TERMINAL = ('SUCCESS', 'FAIL', 'ABORTED')
SIGNAL_RETRY_S = 1.0
VIZ_EVERY = 3   # expert target marker every 3rd tick (~10 Hz at 30 Hz)
LEADER_RESYNC_RAD = 0.15   # the scripted leader restarts from the robot when this far ahead


class TeleopNode(Node):
    def __init__(self) -> None:
        super().__init__('teleop')
        declare(self, 'ecu_id', 'ecu0', 'ECU id', read_only=True)
        declare(self, 'task', 'pick_cube', 'Task name', read_only=True)
        declare(self, 'source', 'scripted', 'scripted | keyboard | leader', read_only=True)
        declare(self, 'rate_hz', 30.0, 'Rate of the scripted expert / teleop commands')
        declare(self, 'episodes', 0, 'Episodes the scripted operator starts (0 = forever)')
        declare(self, 'max_steps', 300, 'Episode budget in control steps')
        declare(self, 'deviation_threshold', 0.3, 'Policy-vs-expert action deviation (rad) to '
                'take over')
        declare(self, 'deviation_ticks', 3, 'Consecutive deviating ticks before taking over')
        declare(self, 'release_threshold', 0.08, 'Expert correction below which it releases '
                '(when stall_ticks is 0)')
        declare(self, 'stall_ticks', 15, 'Take over when the policy makes less than '
                'min_progress in this many ticks (0 = off)')
        declare(self, 'min_progress', 0.05, 'Task progress expected per stall_ticks')
        declare(self, 'release_progress', 0.5, 'Release once the expert made this much progress')
        declare(self, 'min_takeover_ticks', 10, 'Minimum ticks of a takeover')
        declare(self, 'fail_margin_steps', 60, 'Take over when this few steps remain')
        declare(self, 'start_delay_s', 0.5, 'Pause in IDLE before the next START')
        declare(self, 'wait_for_recorder_s', 20.0, 'Before the first START, wait at most this '
                "long for this ECU's scheduler to be ready to record (a heartbeat with "
                'recording_ready), so the first steps are recorded; 0 = do not wait')
        declare(self, 'robot', DEFAULT_ROBOT,
                'Robot description: a built-in name (config/robots) or a YAML file',
                read_only=True)
        declare(self, 'image_height', 0, 'Sim camera height (unused by the expert; kept for '
                'the shared ECU parameters)')
        declare(self, 'image_width', 0, 'Sim camera width (see image_height)')
        declare(self, 'leader_topic', 'leader/joint_states', 'Leader arm joint states (leader)')
        self._robot = load_robot(self.get_parameter('robot').value)
        self._joints = self._robot.joint_names
        self.source = str(self.get_parameter('source').value)
        if self.source not in ('scripted', 'keyboard', 'leader'):
            raise ValueError(f'unknown teleop source {self.source!r}: use scripted, keyboard '
                             'or leader')
        self._pub_signal = self.create_publisher(OperatorSignal, 'operator/signal', qos.EVENTS)
        self._pub_cmd = self.create_publisher(JointState, 'teleop/command', qos.COMMAND)
        self.create_subscription(JointState, 'joint_states', self._on_js, qos.JOINT_STATE)
        self.create_subscription(ActorState, 'actor/state', self._on_state, qos.STATE)
        self._q: np.ndarray | None = None
        self._leader: np.ndarray | None = None
        self._phase = 'UNKNOWN'
        self._phase_since = now_s(self)   # ROS time: the robot's pauses
        self._episode_id = 0
        self._finished: set[int] = set()
        self._awaiting: tuple[str, float] | None = None
        self._lock = threading.Lock()
        if self.source == 'scripted':
            self._setup_scripted()
        elif self.source == 'leader':
            topic = str(self.get_parameter('leader_topic').value)
            self.create_subscription(JointState, topic, self._on_leader, qos.JOINT_STATE)
        if self.source in ('keyboard', 'leader'):
            self._start_keyboard()
        self._diagnostics = NodeDiagnostics(self, 'operator', self._diagnostic_status)
        self.get_logger().info(f'teleop source: {self.source}')

    def _diagnostic_status(self) -> Status:
        awaiting = self._awaiting
        return teleop_status(
            source=self.source, phase=self._phase, episode_id=self._episode_id,
            have_joint_state=self._q is not None, awaiting=awaiting[0] if awaiting else '',
            awaiting_s=time.monotonic() - awaiting[1] if awaiting else 0.0)

    # -- common ----------------------------------------------------------------------------
    def send(self, name: str, reason: str = '') -> None:
        msg = OperatorSignal()
        msg.stamp = self.get_clock().now().to_msg()
        msg.signal = SIGNALS[name]
        msg.source = self.source
        msg.reason = reason
        self._pub_signal.publish(msg)
        self._awaiting = (name, time.monotonic())   # wall: re-send guard
        self.get_logger().info(f'signal {name} ({reason})' if reason else f'signal {name}')

    def _on_js(self, msg: JointState) -> None:
        try:
            self._q = msg_to_positions(msg, self._joints)
        except MessageError:
            return
        self._q_stamp = msg.header.stamp
        if self.source == 'scripted':
            # one expert command per robot state, right when the state arrives: the actor's
            # next tick then pairs this state with the expert's answer to it (a free-running
            # timer beats against the driver's and the actor's clocks, so ticks would alternate
            # between a stale command - a "hold" label - and a double step)
            self._scripted_act()
            # lockstep: this state is answered (the clock waits for it under sim time)
            self._progress.done(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)

    def _on_state(self, msg: ActorState) -> None:
        with self._lock:
            if msg.phase != self._phase:
                self._phase = msg.phase
                self._phase_since = now_s(self)
                self._awaiting = None
                if msg.phase == 'INFERENCE' and msg.event == 'START' and self.source == 'scripted':
                    self._gate.reset()
            self._episode_id = msg.episode_id
            if msg.phase in TERMINAL and msg.episode_id not in self._finished:
                self._finished.add(msg.episode_id)
                self.get_logger().info(f'episode {msg.episode_id} finished: {msg.phase} '
                                       f'({msg.steps} steps, {msg.intervention_steps} by human)')

    # -- scripted expert (HG-DAgger) -------------------------------------------------------
    def _setup_scripted(self) -> None:
        from scarls.sim import ScriptedExpert, SimConfig, sim_layout
        from scarls.sim import TaskState as SimTaskState
        p = self.get_parameter
        self._sim_task_state = SimTaskState
        self._expert = ScriptedExpert(
            SimConfig(task=str(p('task').value), dt=1.0 / self._robot.control_rate_hz),
            layout=sim_layout(self._robot))
        self._gate = InterventionGate(GateConfig(
            deviation_threshold=float(p('deviation_threshold').value),
            deviation_ticks=int(p('deviation_ticks').value),
            release_threshold=float(p('release_threshold').value),
            min_takeover_ticks=int(p('min_takeover_ticks').value),
            stall_ticks=int(p('stall_ticks').value),
            min_progress=float(p('min_progress').value),
            release_progress=float(p('release_progress').value),
            fail_margin_steps=int(p('fail_margin_steps').value),
            max_steps=int(p('max_steps').value)))
        self._episodes = int(p('episodes').value)
        self._start_delay = float(p('start_delay_s').value)
        self._task: TaskState | None = None
        self._step: ActorStep | None = None
        self._policy_action: np.ndarray | None = None
        self.create_subscription(TaskState, 'task_state', self._on_task, qos.JOINT_STATE)
        self.create_subscription(ActorStep, 'actor/step', self._on_step, qos.STEPS)
        # the first episode waits for the recorder (a run's processes start in any order)
        self._recorder_wait = float(p('wait_for_recorder_s').value)
        self._recorder_ready_heard = False
        # the wait is over when it lasted on both clocks: wall time (another process) and ROS
        # time (a simulated clock held at start produces no frame; a fast one, many per second)
        self._started_at = (time.monotonic(), now_s(self))
        if self._recorder_wait > 0:
            ecu = str(p('ecu_id').value)
            self.create_subscription(
                EcuStatus, '/fleet/status',
                lambda m: m.ecu_id == ecu and m.recording_ready and setattr(
                    self, '_recorder_ready_heard', True), qos.EVENTS)
        # where the scripted expert steers the working arm's grasp centre, for RViz (~10 Hz)
        self._pub_target = self.create_publisher(Marker, 'viz/expert_target', qos.JOINT_STATE)
        self._target_ticks = 0
        self._done_logged = False
        self.create_timer(1.0 / float(p('rate_hz').value), self._scripted_tick)
        # joins the lockstep with its first answered state (no report before: a state the
        # driver published before this node matched it would never be answered)
        self._progress = ProgressReporter(self)

    def _on_task(self, msg: TaskState) -> None:
        self._task = msg

    def _on_step(self, msg: ActorStep) -> None:
        self._step = msg
        if not msg.is_intervention:
            self._policy_action = np.asarray(msg.action, dtype=np.float64)

    def _scripted_tick(self) -> None:
        with self._lock:
            phase, since, awaiting = self._phase, self._phase_since, self._awaiting
        now = time.monotonic()   # wall: the signal re-send guard and the recorder wait
        if awaiting is not None and now - awaiting[1] < SIGNAL_RETRY_S:
            return  # the actor has not reacted to our last signal yet
        if phase == 'IDLE':
            started = len(self._finished)
            if self._episodes and started >= self._episodes:
                if not self._done_logged:
                    self._done_logged = True
                    self.get_logger().info(f'{started} episodes done: not starting more')
                return
            if started == 0 and not self._recorder_ready(now):
                return
            if now_s(self) - since >= self._start_delay:
                self.send('START', f'episode {started + 1}')
            return

    def _recorder_ready(self, now: float) -> bool:
        """The scheduler of this ECU can record (its heartbeat says the actor's steps are
        matched and a frame of every camera arrived), or the wait is over (said once)."""
        if self._recorder_wait <= 0 or self._recorder_ready_heard:
            return True
        if min(now - self._started_at[0], now_s(self) - self._started_at[1]) \
                >= self._recorder_wait:
            if not getattr(self, '_recorder_warned', False):
                self._recorder_warned = True
                self.get_logger().warning(
                    f'this ECU\'s scheduler did not say it is ready to record within '
                    f'{self._recorder_wait:g} s (no heartbeat, or one that waits for the '
                    'actor\'s steps or a camera: see its log): starting without it (episodes '
                    'may not be recorded)')
            return True
        return False

    def _scripted_act(self) -> None:
        with self._lock:
            phase, awaiting = self._phase, self._awaiting
        if awaiting is not None and time.monotonic() - awaiting[1] < SIGNAL_RETRY_S:
            return  # the actor has not reacted to our last signal yet
        if phase not in ACTIVE or self._q is None or self._task is None:
            return
        task = self._sim_task_state.from_vector(list(self._task.names), list(self._task.values))
        if phase == 'HUMANINTERVENTION':
            # like a leader arm: the operator integrates its own commands (the robot follows a
            # tick or two behind; answering the lagging measured state would re-send the same
            # step and make the takeover zigzag), re-synchronised when the robot falls behind
            lead = self._leader
            if lead is None or float(np.max(np.abs(lead - self._q))) > LEADER_RESYNC_RAD:
                lead = self._q
            expert = self._expert.action(lead, task)
            self._leader = expert
        else:
            self._leader = None
            expert = self._expert.action(self._q, task)
        self._publish_target(task, phase == 'HUMANINTERVENTION')
        # stamped with the state it answers, so the actor records this command with that
        # observation (an HG-DAgger label is the expert's answer to what the policy saw)
        self._pub_cmd.publish(joint_state_to_msg(self._joints, expert, self._q_stamp))
        step = self._step
        steps_done = step.step + 1 if step is not None and step.episode_id == self._episode_id \
            else 0
        intervening = phase == 'HUMANINTERVENTION'
        policy_action = self._policy_action if self._policy_action is not None else self._q
        decision = self._gate.update(
            policy_action=policy_action, expert_action=expert, current_q=self._q,
            step=steps_done, intervening=intervening, task_success=bool(self._task.success),
            task_failed=bool(self._task.failed), progress=self._expert.progress(self._q, task))
        if decision.kind is not DecisionKind.NONE:
            self.send(decision.kind.name, decision.reason)

    def _publish_target(self, task, intervening: bool) -> None:
        self._target_ticks += 1
        if self._target_ticks % VIZ_EVERY:
            return
        _, target = self._expert.target_ee(self._q, task)
        try:
            marker = expert_target_marker(target, self._q_stamp, intervening=intervening)
        except VizError:
            return   # a NaN target is the planner's business; nothing to draw
        self._pub_target.publish(marker)

    # -- leader / keyboard -----------------------------------------------------------------
    def _on_leader(self, msg: JointState) -> None:
        try:
            q = msg_to_positions(msg, self._joints)
        except MessageError as exc:
            self.get_logger().warning(f'leader command dropped: {exc}', throttle_duration_sec=2.0)
            return
        self._pub_cmd.publish(joint_state_to_msg(self._joints, q, self.get_clock().now().to_msg()))

    def _start_keyboard(self) -> None:
        if not sys.stdin or not sys.stdin.isatty():
            self.get_logger().warning('no terminal attached: keyboard signals are disabled')
            return
        if self.source == 'keyboard':
            self.create_timer(0.1, self._hold_command)
        self.get_logger().info('keys: ' + '  '.join(f'{k}={v}' for k, v in KEYS.items()))
        threading.Thread(target=self._read_keys, name='keyboard', daemon=True).start()

    def _hold_command(self) -> None:
        if self._q is not None and self._phase == 'HUMANINTERVENTION':
            self._pub_cmd.publish(joint_state_to_msg(self._joints, self._q,
                                                     self.get_clock().now().to_msg()))

    def _read_keys(self) -> None:
        import termios
        import tty
        fd = sys.stdin.fileno()
        old = termios.tcgetattr(fd)
        try:
            tty.setcbreak(fd)
            while True:
                key = sys.stdin.read(1)
                if not key:
                    return
                name = KEYS.get(key.lower())
                if name:
                    self.send(name, 'keyboard')
        finally:
            termios.tcsetattr(fd, termios.TCSADRAIN, old)


def main(args=None) -> int:
    return run_node(TeleopNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
