"""Simulated time on the node side: ROS time helpers, clock-jump handling, lockstep progress.

Every scarls node honours ROS 2's standard ``use_sim_time`` parameter: with it set, ROS time
(``node.get_clock()``, timers made with ``create_timer``, message stamps) follows ``/clock``,
published by the simulation's clock process (``scarls.sim.clock_node``). Which timeouts run on
which clock is a rule of the house:

* **ROS time** - everything the robot's behaviour depends on: the control period, the driver's
  command watchdog, FSM timeouts (reset, stale teleop), the scripted operator's delays, the
  scheduler's train interval, stamps and latencies of robot data. Use :func:`now_s` /
  ``create_timer``, never ``time.monotonic()``.
* **Wall time** - waits that guard our own processes, not the robot: a service call that never
  answers, a torch.distributed collective, a subprocess, a checkpoint transfer, rate-limited
  logs, status heartbeats for humans. These keep ``time.monotonic()`` and say so.

Before the first ``/clock`` message ROS time is 0 and ROS-time timers do not fire: that is not a
fault (the clock has not started). A jump of the clock (a simulation reset: time goes backwards,
or sim time is switched on) restarts what measures a span of ROS time: :func:`on_time_jump`.

Lockstep: with a clock that waits for its participants (``scarls ecu --rtf X``), each node that
must finish work per tick reports how far it got on :data:`PROGRESS_TOPIC` with a
:class:`ProgressReporter` (a ``std_msgs/Header``: ``frame_id`` = the participant, ``stamp`` =
the ROS time its work is done until; ``stamp.sec`` = :data:`scarls.sim.clock.IDLE`: it holds
nothing). Without ``use_sim_time`` the reporter is inert and nothing changes.
"""

from __future__ import annotations

import threading
import time

from builtin_interfaces.msg import Time
from rclpy.clock import Clock, ClockType, JumpThreshold
from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from std_msgs.msg import Header

from scarls.sim.clock import IDLE, IDLE_NS, NS, TrainingBudget

PROGRESS_TOPIC = '/sim/progress'
# each participant's latest report is latched (transient local, depth 1 per writer), so a clock
# that starts or matches late still learns it; the clock reads with a deep history (many writers)
PROGRESS_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
PROGRESS_READER_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=100,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# a forward jump this large is a skip, not a step (the clock steps one tick at a time)
JUMP_FORWARD_S = 1.0


def uses_sim_time(node) -> bool:
    return bool(node.get_parameter('use_sim_time').value)


def now_ns(node) -> int:
    """The node's ROS time in nanoseconds (0 before the first ``/clock`` under sim time)."""
    return int(node.get_clock().now().nanoseconds)


def now_s(node) -> float:
    """The node's ROS time in seconds: the clock of everything the robot's behaviour depends
    on (wall time on a real robot, simulated time under ``use_sim_time``)."""
    return now_ns(node) / NS


def wall_clock() -> Clock:
    """A steady (wall) clock for ``node.create_timer(..., clock=wall_clock())``: heartbeats
    for people and monitors that must keep their pace whatever simulated time does."""
    return Clock(clock_type=ClockType.STEADY_TIME)


def on_time_jump(node, callback) -> object:
    """Call ``callback()`` after the node's ROS clock jumps: backwards by any amount (a reset of
    the simulation), forwards by more than :data:`JUMP_FORWARD_S`, or when sim time is
    switched on or off. Keep the returned handle as long as the callback should fire."""
    threshold = JumpThreshold(min_forward=Duration(seconds=JUMP_FORWARD_S),
                              min_backward=Duration(nanoseconds=-1), on_clock_change=True)
    return node.get_clock().create_jump_callback(threshold,
                                                 post_callback=lambda _jump: callback())


def _stamp(ns: int) -> Time:
    if ns >= IDLE_NS:
        return Time(sec=IDLE, nanosec=0)
    return Time(sec=int(ns // NS), nanosec=int(ns % NS))


def stamp_ns(stamp: Time) -> int:
    """A progress stamp as nanoseconds (:data:`IDLE_NS` for the idle marker)."""
    if stamp.sec >= IDLE:
        return IDLE_NS
    return int(stamp.sec) * NS + int(stamp.nanosec)


class ProgressReporter:
    """Reports this node's lockstep progress to the clock (inert without ``use_sim_time``).

    ``participant`` defaults to the node's fully qualified name (``/ecu0/actor``); the clock
    process is told which participants to wait for by the same names."""

    def __init__(self, node, participant: str | None = None) -> None:
        self.enabled = uses_sim_time(node)
        self.participant = participant or node.get_fully_qualified_name()
        self._node = node
        self._pub = node.create_publisher(Header, PROGRESS_TOPIC, PROGRESS_QOS) \
            if self.enabled else None
        self._last: int | None = None

    def done(self, until_ns: int) -> None:
        """This participant's work is done up to ROS time ``until_ns``."""
        if self._pub is None or until_ns == self._last:
            return
        self._last = int(until_ns)
        self._pub.publish(Header(frame_id=self.participant, stamp=_stamp(int(until_ns))))

    def done_now(self) -> None:
        self.done(now_ns(self._node))

    def idle(self) -> None:
        """This participant holds nothing until it reports again."""
        self.done(IDLE_NS)

    def destroy(self) -> None:
        if self._pub is not None:
            self._node.destroy_publisher(self._pub)
            self._pub = None


class BudgetGate:
    """Compute-fair training: blocks a learner's training thread so that within a round it
    does ``steps_per_second`` steps per simulated second, and reports how far it got.

    ``start()`` at the beginning of a round, ``after_step()`` after each step (it returns once
    the next step is within budget, or raises whatever ``stopped()`` says to), ``finish()`` when
    the round's training ends (the learner then holds nothing)."""

    def __init__(self, node, steps_per_second: float, reporter: ProgressReporter,
                 stop_event: threading.Event) -> None:
        self._node = node
        self.rate = float(steps_per_second)
        self._reporter = reporter
        self._stop = stop_event
        self._budget: TrainingBudget | None = None
        self._done = 0
        self.waited_s = 0.0

    def start(self) -> None:
        self._budget = TrainingBudget(self.rate, now_ns(self._node))
        self._done = 0
        self._report()
        self._wait()

    def after_step(self) -> None:
        if self._budget is None:
            return
        self._done += 1
        self._report()
        self._wait()

    def finish(self) -> None:
        self._budget = None
        self._reporter.idle()

    def _report(self) -> None:
        self._reporter.done(self._budget.done_until(self._done, now_ns(self._node)))

    def _wait(self) -> None:
        """Until the next step is within budget (the clock advances meanwhile: report each
        new time at which the budget is spent). Wall-time polling: this guards our own
        thread, the clock is what it waits for."""
        t0 = time.monotonic()
        while not self._budget.may_step(self._done, now_ns(self._node)):
            self._report()
            if self._stop.wait(0.002):
                break
        self.waited_s += time.monotonic() - t0
