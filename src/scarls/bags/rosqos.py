"""QoS profiles between rclpy and rosbag2 metadata (rosbags' Qos tuples).

The recorder stores the profiles each publisher offered; the player offers them again (the way
`ros2 bag play` adapts): transient local only if every recorded publisher was transient local
(latched topics stay latched), best effort only if every one was best effort, the deepest
history depth recorded.
"""

from __future__ import annotations

from collections.abc import Iterable

from rclpy.duration import Duration
from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    LivelinessPolicy,
    QoSProfile,
    ReliabilityPolicy,
)
from rosbags.interfaces import (
    Qos,
    QosDurability,
    QosHistory,
    QosLiveliness,
    QosReliability,
    QosTime,
)

__all__ = ['from_rclpy', 'playback_profile', 'subscription_profile']

_INFINITE_NS = 0x7FFFFFFFFFFFFFFF


def _time(duration) -> QosTime:
    ns = int(getattr(duration, 'nanoseconds', 0))
    if ns <= 0 or ns >= _INFINITE_NS:
        return QosTime(0x7FFFFFFF, 0xFFFFFFFF) if ns >= _INFINITE_NS else QosTime(0, 0)
    return QosTime(ns // 1_000_000_000, ns % 1_000_000_000)


def from_rclpy(profile: QoSProfile) -> Qos:
    """An offered rclpy profile as stored in metadata.yaml / MCAP channel metadata."""
    return Qos(
        history=QosHistory(int(profile.history)),
        depth=int(profile.depth),
        reliability=QosReliability(int(profile.reliability)),
        durability=QosDurability(int(profile.durability)),
        deadline=_time(profile.deadline),
        lifespan=_time(profile.lifespan),
        liveliness=QosLiveliness(int(profile.liveliness)),
        liveliness_lease_duration=_time(profile.liveliness_lease_duration),
        avoid_ros_namespace_conventions=bool(profile.avoid_ros_namespace_conventions),
    )


def subscription_profile(offered: Iterable[QoSProfile], depth: int = 100) -> QoSProfile:
    """What the recorder subscribes with: compatible with every offered profile (reliable and
    transient local only when all publishers offer it), deep enough for bursts."""
    offered = list(offered)
    reliable = bool(offered) and all(
        p.reliability == ReliabilityPolicy.RELIABLE for p in offered)
    latched = bool(offered) and all(
        p.durability == DurabilityPolicy.TRANSIENT_LOCAL for p in offered)
    return QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)


def playback_profile(recorded: Iterable[Qos], default_depth: int = 10) -> QoSProfile:
    """What the player offers for a topic, from the profiles recorded for it (see module)."""
    recorded = list(recorded)
    if not recorded:
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=default_depth,
                          reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.VOLATILE)
    best_effort = all(q.reliability == QosReliability.BEST_EFFORT for q in recorded)
    latched = all(q.durability == QosDurability.TRANSIENT_LOCAL for q in recorded)
    depth = max((int(q.depth) for q in recorded), default=0) or default_depth
    profile = QoSProfile(
        history=HistoryPolicy.KEEP_LAST, depth=depth,
        reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
        else ReliabilityPolicy.RELIABLE,
        durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)
    if all(q.liveliness == QosLiveliness.MANUAL_BY_TOPIC for q in recorded):
        profile.liveliness = LivelinessPolicy.MANUAL_BY_TOPIC
    lifespans = {(q.lifespan.sec, q.lifespan.nsec) for q in recorded}
    if len(lifespans) == 1:
        sec, nsec = lifespans.pop()
        if 0 < sec < 0x7FFFFFFF:
            profile.lifespan = Duration(seconds=sec, nanoseconds=nsec)
    return profile
