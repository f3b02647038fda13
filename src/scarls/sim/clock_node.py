"""clock: the simulation's `/clock` (rosgraph_msgs/Clock) at a real-time factor, in lockstep.

A thin adapter over :mod:`scarls.sim.clock`: it advances ROS time one control tick at a time,
one tick per ``tick / rtf`` of wall time, and only when every participant has reported its work
done for the current time (``lockstep``). One clock per simulated ECU, or one per fleet.

Topics:
  out /clock          rosgraph_msgs/Clock   reliable, depth 1 (read best effort by rclpy's
                      time source); the current time is re-sent every `resend_s` of wall time
                      while the clock waits, so a node that starts late learns it
  in  /sim/progress   std_msgs/Header       participant (frame_id) done until (stamp); see
                      scarls.ros.simtime
Parameters: rate_hz (the control rate: one clock step is one tick), rtf (real-time factor;
0 = as fast as the participants allow), participants (the names to wait for before the first
step: fully qualified node names such as /ecu0/actor), lockstep (wait for participants; false:
advance on the wall schedule alone), stall_warn_s and drop_after_s (wall time: a participant
that keeps the clock waiting that long is named in a warning, then dropped with an error, so a
dead process never freezes the others), max_sim_s (stop advancing there; 0 = never).

This node itself runs on wall time (it makes ROS time; it must not follow it).
"""

from __future__ import annotations

import sys
import threading
import time

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from rosgraph_msgs.msg import Clock
from std_msgs.msg import Header

from scarls.ros.node_utils import declare, print_help_if_asked
from scarls.ros.simtime import PROGRESS_READER_QOS, PROGRESS_TOPIC, stamp_ns
from scarls.sim.clock import NS, Lockstep, Pacer, step_ns

CLOCK_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                       reliability=ReliabilityPolicy.RELIABLE,
                       durability=DurabilityPolicy.VOLATILE)
STATUS_EVERY_S = 10.0


class ClockNode(Node):
    def __init__(self) -> None:
        super().__init__('clock')
        declare(self, 'rate_hz', 30.0, 'Control rate (Hz): one clock step is one tick',
                read_only=True)
        declare(self, 'rtf', 1.0, 'Real-time factor (simulated s per wall s; 0 = as fast as '
                'the participants allow)')
        declare(self, 'participants', [''], 'Participants to wait for (fully qualified node '
                'names, e.g. /ecu0/actor); others join when they first report',
                string_array=True)
        declare(self, 'lockstep', True, 'Advance only when every participant is done')
        declare(self, 'stall_warn_s', 5.0, 'Wall seconds of waiting before naming who blocks')
        declare(self, 'drop_after_s', 120.0, 'Wall seconds a participant may block the clock '
                'before it is dropped (0 = never)')
        declare(self, 'max_sim_s', 0.0, 'Stop advancing at this simulated time (0 = never)')
        declare(self, 'resend_s', 0.2, 'Re-send the current time this often while waiting')
        p = lambda n: self.get_parameter(n).value  # noqa: E731
        self.step = step_ns(float(p('rate_hz')))
        self.lockstep = Lockstep({x for x in p('participants') if x})
        self.pacer = Pacer(self.step, float(p('rtf')))
        self.wait_for = bool(p('lockstep'))
        self._stall_warn = float(p('stall_warn_s'))
        self._drop_after = float(p('drop_after_s'))
        self._max_ns = int(float(p('max_sim_s')) * NS)
        self._resend = float(p('resend_s'))
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self.now = 0
        self.waited_s = 0.0
        self._pub = self.create_publisher(Clock, '/clock', CLOCK_QOS)
        self.create_subscription(Header, PROGRESS_TOPIC, self._on_progress,
                                 PROGRESS_READER_QOS)
        self.get_logger().info(
            f'clock: {self.step / 1e6:.3f} ms steps at rtf {self.pacer.rtf:g}'
            + (f', lockstep on {sorted(self.lockstep.participants)}' if self.wait_for
               else ', free running'))

    def _on_progress(self, msg: Header) -> None:
        with self._cond:
            self.lockstep.report(msg.frame_id, stamp_ns(msg.stamp))
            self._cond.notify_all()

    def _publish(self) -> None:
        msg = Clock()
        msg.clock.sec, msg.clock.nanosec = int(self.now // NS), int(self.now % NS)
        self._pub.publish(msg)

    def run(self) -> None:
        """The clock loop (its own thread; the executor delivers the progress reports)."""
        self.now = self.step   # time 0 means "no clock yet" to every node: start one tick in
        self._publish()
        self.pacer.advanced(time.monotonic_ns())
        last_status = time.monotonic()
        while not self._stop.is_set() and rclpy.ok():
            with self._cond:
                blocking = self.lockstep.blocking(self.now) if self.wait_for else []
                due = self.pacer.due_in_ns(time.monotonic_ns())
                done = self._max_ns and self.now >= self._max_ns
                if blocking or due > 0 or done:
                    timeout = self._resend if blocking or done else min(due / NS, self._resend)
                    t0 = time.monotonic()
                    if not self._cond.wait(timeout) and (blocking or done):
                        self._publish()   # for nodes that start late
                    if blocking:
                        self._stalled(blocking, time.monotonic() - t0)
                    continue
                self._since_blocked = None
                self.now += self.step
            self._publish()
            self.pacer.advanced(time.monotonic_ns())
            if time.monotonic() - last_status >= STATUS_EVERY_S:
                last_status = time.monotonic()
                self.get_logger().info(
                    f'simulated {self.now / NS:.1f} s, achieved rtf '
                    f'{self.pacer.achieved_rtf(time.monotonic_ns()):.2f} (target '
                    f'{self.pacer.rtf:g}), {self.pacer.late_steps} late steps, '
                    f'{self.waited_s:.1f} s waited for participants')

    _since_blocked: tuple[tuple[str, ...], float, bool] | None = None

    def _stalled(self, blocking: list[str], waited: float) -> None:
        """Account the wait; warn once after ``stall_warn_s``, drop after ``drop_after_s``
        (called with the condition held)."""
        self.waited_s += waited
        key = tuple(blocking)
        now = time.monotonic()
        if self._since_blocked is None or self._since_blocked[0] != key:
            self._since_blocked = (key, now, False)
            return
        _, since, warned = self._since_blocked
        if not warned and now - since >= self._stall_warn:
            self._since_blocked = (key, since, True)
            self.get_logger().warning(
                f'simulated time held at {self.now / NS:.3f} s for {now - since:.1f} s: '
                f'waiting for {list(blocking)}')
        if self._drop_after > 0 and now - since >= self._drop_after:
            for who in blocking:
                self.lockstep.drop(who)
            self.get_logger().error(f'{list(blocking)} kept the clock waiting '
                                    f'{now - since:.0f} s: dropped from the lockstep')
            self._since_blocked = None

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()


def main(args=None) -> int:
    if print_help_if_asked(__name__, args):
        return 0
    rclpy.init(args=args)
    node = executor = spinner = None
    try:
        node = ClockNode()
        executor = SingleThreadedExecutor()
        executor.add_node(node)

        def spin() -> None:
            try:
                executor.spin()
            except ExternalShutdownException:   # SIGINT/SIGTERM: the loop sees rclpy.ok()
                pass

        spinner = threading.Thread(target=spin, name='spin', daemon=True)
        spinner.start()
        node.run()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()
            sys.stderr.write(f'clock stopped at simulated {node.now / NS:.3f} s, achieved rtf '
                             f'{node.pacer.achieved_rtf(time.monotonic_ns()):.2f}, '
                             f'{node.waited_s:.1f} s waited for participants\n')
            if executor is not None:
                executor.shutdown(timeout_sec=2.0)
            if spinner is not None:
                spinner.join(timeout=2.0)
            node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
