"""Which topics the Foxglove bridge serves, and how each one is advertised. No rclpy here.

A channel is advertised for every topic of the ROS graph that has a publisher (or those of one
ECU namespace, or an explicit list), minus ``/rosout``, ``/parameter_events``, hidden topics and
``--exclude`` patterns, whose type has a message definition here. Its schema is the full ros2msg
definition (the type and every nested type) built from the installed .msg files by
:class:`scarls.bags.types.TypeRegistry` - the same text rosbag2 stores in a bag - so custom
types such as ``scarls_interfaces/msg/ActorState`` decode in Foxglove without the package.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from scarls.bags.errors import BagError
from scarls.bags.types import TypeRegistry, default_registry

__all__ = ['HEAVY_TYPES', 'ChannelSpec', 'RateCap', 'TopicFilter', 'channel_spec', 'is_heavy']

#: Types sent best effort with a history of 1 (a viewer must never slow the robot's publishers
#: down) and subject to ``--max-image-rate``.
HEAVY_TYPES = frozenset({'sensor_msgs/msg/Image', 'sensor_msgs/msg/CompressedImage',
                         'sensor_msgs/msg/PointCloud2'})
DEFAULT_EXCLUDE = (r'^/rosout$', r'^/parameter_events$', r'(^|/)_')
#: Global topics an ECU's view needs, served with ``namespace`` too: every node's health and
#: the simulated clock (their messages name the ECU: ``<ecu>/<node>: <what>``)
ECU_GLOBALS = frozenset({'/diagnostics', '/clock'})


def is_heavy(msgtype: str) -> bool:
    return msgtype in HEAVY_TYPES


def _split(values: str | Iterable[str]) -> list[str]:
    if isinstance(values, str):
        values = re.split(r'[\s,]+', values)
    return [v for v in values if v]


class TopicFilter:
    """The topics to serve: ``topics`` exactly when given (relative names resolve in
    ``namespace``), else every topic (under ``namespace`` when given, and the ECU_GLOBALS)
    not matching the default exclusions or ``exclude`` (regular expressions on full names)."""

    def __init__(self, namespace: str = '', topics: str | Iterable[str] = (),
                 exclude: str | Iterable[str] = ()) -> None:
        ns = namespace.strip('/')
        if ns and not re.fullmatch(r'[A-Za-z][A-Za-z0-9_]*(/[A-Za-z][A-Za-z0-9_]*)*', ns):
            raise ValueError(f'{namespace!r} is not a ROS namespace (e.g. ecu0)')
        self.namespace = f'/{ns}' if ns else ''
        self.explicit = {self.resolve(t) for t in _split(topics)}
        try:
            self.exclude = [re.compile(x) for x in (*DEFAULT_EXCLUDE, *_split(exclude))]
        except re.error as exc:
            raise ValueError(f'bad --exclude pattern: {exc}') from exc

    def resolve(self, topic: str) -> str:
        if topic.startswith('/'):
            return topic
        return f'{self.namespace}/{topic}' if self.namespace else f'/{topic}'

    def __call__(self, topic: str) -> bool:
        if self.explicit:
            return topic in self.explicit
        if self.namespace and not topic.startswith(self.namespace + '/') \
                and topic not in ECU_GLOBALS:
            return False
        return not any(x.search(topic) for x in self.exclude)


@dataclass(frozen=True)
class ChannelSpec:
    """What a Foxglove channel of one ROS topic is advertised with (ws-protocol fields)."""

    topic: str
    schema_name: str          # 'pkg/msg/Name'
    schema: str               # ros2msg: the type, then '=====' + 'MSG: pkg/msg/Name' blocks
    encoding: str = 'cdr'
    schema_encoding: str = 'ros2msg'
    heavy: bool = False


def channel_spec(topic: str, msgtype: str, registry: TypeRegistry | None = None) -> ChannelSpec:
    """The channel of ``topic``; ValueError naming the type when it has no definition here."""
    registry = registry or default_registry()
    try:
        full = registry.ensure(msgtype)
        definition, _ = registry.definition(full)
    except BagError as exc:
        raise ValueError(str(exc)) from exc
    return ChannelSpec(topic, full, definition, heavy=is_heavy(full))


class RateCap:
    """At most ``hz`` messages per second (0 = no cap): ``allow(now)`` says whether to send
    one received at ``now`` (monotonic seconds)."""

    def __init__(self, hz: float) -> None:
        if hz < 0:
            raise ValueError(f'a rate cap must be >= 0, got {hz}')
        self.interval = 1.0 / hz if hz > 0 else 0.0
        self._last: float | None = None

    def allow(self, now: float) -> bool:
        if not self.interval:
            return True
        if self._last is not None and now - self._last < self.interval:
            return False
        self._last = now
        return True
