"""The one QoS table of scarls: code refers to these profiles by name, never by bare depth.

| stream                          | reliability | durability      | depth |
|---------------------------------|-------------|-----------------|-------|
| camera images (recorded)        | reliable    | volatile        | 5     |
| camera images (latest only)     | best effort | volatile        | 1     |
| joint state                     | reliable    | volatile        | 10    |
| control commands                | reliable    | volatile        | 1     |
| FSM state, latest checkpoint    | reliable    | transient local | 1     |
| episode/step events             | reliable    | volatile        | 100   |

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
