"""The one QoS table of scarls: code refers to these profiles by name, never by bare depth.

| stream                          | reliability | durability      | depth |
|---------------------------------|-------------|-----------------|-------|
| camera images (recorded)        | reliable    | volatile        | 5     |
| camera images (latest only)     | best effort | volatile        | 1     |
| joint state                     | reliable    | volatile        | 10    |
| control commands                | reliable    | volatile        | 1     |
| FSM state, latest checkpoint    | reliable    | transient local | 1     |
| episode/step events             | reliable    | volatile        | 100   |
| /diagnostics (1 Hz per node)    | reliable    | volatile        | 10    |

Camera publishers are reliable so the recorder can store every frame the actor used (the actor
itself subscribes best effort: it only wants the newest frame). Control commands carry a deadline;
the driver's watchdog is what actually holds the robot when commands stop.
"""

from __future__ import annotations

from rclpy.duration import Duration
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

CAMERA = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=5,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# The recorder's side: a deep reader history so a busy moment never overwrites unread frames.
CAMERA_RECORD = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=60,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
CAMERA_LATEST = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1,
    reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)
JOINT_STATE = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
COMMAND = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE,
    deadline=Duration(seconds=0.2))
LATCHED = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=1,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# fleet round reports: a late subscriber (a monitor, `scarls status`) still gets the recent rounds
ROUNDS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=100,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
EVENTS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=100,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
STEPS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=300,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)
# The actor's FSM state: latched for late joiners, and deep enough that a fast SUCCESS -> IDLE
# pair is never collapsed to the last sample for subscribers that are already matched.
STATE = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=20,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
# A reader that matches both reliable and best-effort writers (robots and camera drivers of other
# vendors often publish joint states and images best effort): used where we only listen.
JOINT_STATE_ANY = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10,
    reliability=ReliabilityPolicy.BEST_EFFORT, durability=DurabilityPolicy.VOLATILE)

# /diagnostics (diagnostic_msgs/DiagnosticArray, 1 Hz per node): what diagnostic_updater uses
DIAGNOSTICS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST, depth=10,
    reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def camera_qos(reliability: str, depth: int = 5) -> QoSProfile:
    """The reader profile for a camera of the robot description (``qos: best_effort |
    reliable``, what its driver publishes): best effort readers match both kinds of writer."""
    if reliability not in ('best_effort', 'reliable'):
        raise ValueError(f"camera qos must be 'best_effort' or 'reliable', got {reliability!r}")
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=int(depth),
        reliability=(ReliabilityPolicy.RELIABLE if reliability == 'reliable'
                     else ReliabilityPolicy.BEST_EFFORT),
        durability=DurabilityPolicy.VOLATILE)
