"""The Foxglove bridge node: ROS 2 topics to Foxglove clients over a WebSocket.

One rclpy node and one Foxglove SDK WebSocket server (``foxglove.start_server``, the SDK's own
threads). Every half second the node polls the graph: each wanted topic with a publisher gets
a Foxglove channel (schema: the full ros2msg definition, message encoding: cdr); a topic whose
publishers are gone for 2 s is unadvertised. A topic is subscribed in ROS only while at least
one client subscribes to its channel (the server's listener reports (un)subscriptions from its
threads; they only record demand and wake the node through a guard condition, so every rclpy
call stays on the executor's thread). Subscriptions are raw: the serialized CDR bytes go to
the client as they arrived, never deserialised.

QoS: cameras (and point clouds) best effort, history 1 - the driver never waits or resends for
a viewer; other topics reliable / transient local when all their publishers are (latched topics
such as ``actor/state`` deliver their current value at once), history 10.

Parameters: host, port, namespace, topics, exclude, max_image_rate (the command-line flags are
their defaults; ``-p port:=8765`` overrides).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import foxglove
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from scarls.bags.errors import BagError
from scarls.bags.record import import_message
from scarls.bags.rosqos import subscription_profile
from scarls.foxglove.topics import ChannelSpec, RateCap, TopicFilter, channel_spec
from scarls.ros.node_utils import declare

DISCOVERY_INTERVAL_S = 0.5
GONE_AFTER_S = 2.0
#: Messages queued per client before the oldest is dropped (the SDK's default, 1024, would be
#: up to ~1 GB of 640x480 frames for a client on a slow link).
MESSAGE_BACKLOG = 128
HEAVY_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1,
                       reliability=ReliabilityPolicy.BEST_EFFORT,
                       durability=DurabilityPolicy.VOLATILE)
DEPTH = 10


@dataclass
class _Topic:
    spec: ChannelSpec
    msg_class: type
    channel: foxglove.Channel
    cap: RateCap
    subscription: object | None = None
    last_seen: float = field(default_factory=time.monotonic)
    sent: int = 0


class _Listener:
    """The server's callbacks (called on the SDK's threads): record demand, wake the node."""

    def __init__(self, wake) -> None:
        self._wake = wake
        self._lock = threading.Lock()
        self._demand: dict[int, set[int]] = {}

    def on_subscribe(self, client, channel) -> None:
        with self._lock:
            self._demand.setdefault(channel.id, set()).add(client.id)
        self._wake()

    def on_unsubscribe(self, client, channel) -> None:
        with self._lock:
            clients = self._demand.get(channel.id)
            if clients is not None:
                clients.discard(client.id)
                if not clients:
                    del self._demand[channel.id]
        self._wake()

    def wanted(self) -> set[int]:
        with self._lock:
            return set(self._demand)


class FoxgloveBridge(Node):
    def __init__(self, host: str = '127.0.0.1', port: int = 8765, namespace: str = '',
                 topics: str = '', exclude: str = '', max_image_rate: float = 0.0) -> None:
        super().__init__('foxglove_bridge')
        declare(self, 'host', host, 'address the WebSocket server listens on', read_only=True)
        declare(self, 'port', int(port), 'WebSocket port (0 = any free port)', read_only=True)
        declare(self, 'namespace', namespace, "serve only this ECU's topics ('' = all)",
                read_only=True)
        declare(self, 'topics', topics, "exactly these topics, space/comma separated ('' = "
                'every topic)', read_only=True)
        declare(self, 'exclude', exclude, 'regular expressions of topics not to serve',
                read_only=True)
        declare(self, 'max_image_rate', float(max_image_rate),
                'most camera frames per second and topic sent to clients (0 = every frame)',
                read_only=True)
        p = self.get_parameter
        self.filter = TopicFilter(str(p('namespace').value), str(p('topics').value),
                                  str(p('exclude').value))
        self._image_rate = float(p('max_image_rate').value)
        RateCap(self._image_rate)   # ValueError now rather than at the first frame
        self._topics: dict[str, _Topic] = {}
        self._skipped: set[str] = set()
        self._guard = self.create_guard_condition(self._update_subscriptions)
        self._listener = _Listener(self._guard.trigger)
        self._fg = foxglove.Context()
        host = str(p('host').value)
        name = f'scarls {self.filter.namespace.strip("/")}'.strip()
        self.server = foxglove.start_server(
            name=name, host=host, port=int(p('port').value), context=self._fg,
            server_listener=self._listener, message_backlog_size=MESSAGE_BACKLOG)
        self.url = f'ws://{host}:{self.server.port}'
        self._timer = self.create_timer(DISCOVERY_INTERVAL_S, self._discover)
        self.get_logger().info(
            f'foxglove bridge on {self.url} serving '
            f'{self.filter.namespace or "every namespace"} (open it in Foxglove: '
            'Open connection > Foxglove WebSocket)')
        self._discover()

    # -- graph -------------------------------------------------------------------------------
    def _discover(self) -> None:
        now = time.monotonic()
        present = {}
        for topic, types in self.get_topic_names_and_types():
            if self.filter(topic) and len(types) == 1 and self.count_publishers(topic) > 0:
                present[topic] = types[0]
        for topic, msgtype in present.items():
            known = self._topics.get(topic)
            if known is not None and known.spec.schema_name != msgtype:
                self._remove(topic)   # the same name, another type: advertise it anew
                known = None
            if known is None:
                self._add(topic, msgtype)
            else:
                known.last_seen = now
        for topic in [t for t, s in self._topics.items()
                      if t not in present and now - s.last_seen > GONE_AFTER_S]:
            self._remove(topic)
        self._update_subscriptions()

    def _add(self, topic: str, msgtype: str) -> None:
        if topic in self._skipped:
            return
        try:
            spec = channel_spec(topic, msgtype)
            msg_class = import_message(spec.schema_name)
        except (ValueError, BagError) as exc:
            self._skipped.add(topic)
            self.get_logger().warning(f'not serving {topic}: {exc}')
            return
        channel = foxglove.Channel(
            topic, message_encoding=spec.encoding, context=self._fg,
            schema=foxglove.Schema(name=spec.schema_name, encoding=spec.schema_encoding,
                                   data=spec.schema.encode()))
        cap = RateCap(self._image_rate if spec.heavy else 0.0)
        self._topics[topic] = _Topic(spec, msg_class, channel, cap)
        self.get_logger().info(f'advertised {topic} [{spec.schema_name}]')

    def _remove(self, topic: str) -> None:
        state = self._topics.pop(topic)
        if state.subscription is not None:
            self.destroy_subscription(state.subscription)
        state.channel.close()
        self.get_logger().info(f'unadvertised {topic} (no publisher)')

    # -- subscriptions -----------------------------------------------------------------------
    def _update_subscriptions(self) -> None:
        """Subscribe to the topics some client subscribes to; drop the others'."""
        wanted = self._listener.wanted()
        for topic, state in self._topics.items():
            demanded = state.channel.id() in wanted
            if demanded and state.subscription is None:
                state.subscription = self.create_subscription(
                    state.msg_class, topic, lambda data, t=topic: self._forward(t, data),
                    self._qos(topic, state.spec), raw=True)
                self.get_logger().info(f'subscribed to {topic} (a client wants it)')
            elif not demanded and state.subscription is not None:
                self.destroy_subscription(state.subscription)
                state.subscription = None
                self.get_logger().info(f'unsubscribed from {topic} (no client wants it)')

    def _qos(self, topic: str, spec: ChannelSpec) -> QoSProfile:
        if spec.heavy:
            return HEAVY_QOS
        return subscription_profile(
            [i.qos_profile for i in self.get_publishers_info_by_topic(topic)], DEPTH)

    def _forward(self, topic: str, data: bytes) -> None:
        state = self._topics.get(topic)
        if state is None:
            return
        if not state.cap.allow(time.monotonic()):
            return
        state.channel.log(data, log_time=time.time_ns())
        state.sent += 1

    # -- lifetime ----------------------------------------------------------------------------
    def safe_stop(self) -> None:
        """Stop serving (clients see the connection close); called by run_node on exit."""
        self.destroy_timer(self._timer)
        self.server.stop()
        for topic in list(self._topics):
            state = self._topics.pop(topic)
            if state.subscription is not None:
                self.destroy_subscription(state.subscription)
            state.channel.close()
