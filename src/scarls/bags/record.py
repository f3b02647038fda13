"""`scarls bag record`: topics of the ROS graph into a rosbag2 bag (MCAP or SQLite 3).

Messages arrive through raw subscriptions (``create_subscription(..., raw=True)``): the callback
gets the serialized CDR bytes, stamps them with the receive time and hands them to a writer
thread; nothing is deserialised and the executor never waits for the disk. Topics are discovered
from the graph every half second (all of them by default, or those of one ECU namespace, or a
list), each subscribed with a QoS compatible with what its publishers offer, and stored with
those offered profiles, its message definition and its type hash.

Stopping (SIGINT, SIGTERM, ``--duration``) drains the queue and closes the bag: MCAP summary and
footer, metadata.yaml. While recording, the bag is flushed every second (the pending MCAP chunk
is written, SQLite commits), so a recorder killed with SIGKILL leaves a storage file whose
complete part `scarls bag repair` turns into a closed bag.
"""

from __future__ import annotations

import importlib
import logging
import re
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions

from scarls.bags.errors import BagError
from scarls.bags.io import BagWriter
from scarls.bags.rosqos import from_rclpy, subscription_profile
from scarls.bags.types import default_registry, split_type

__all__ = ['RecordOptions', 'Recorder', 'import_message', 'record']

log = logging.getLogger('scarls.bag')

DEFAULT_EXCLUDE = (r'^/rosout$', r'^/parameter_events$', r'(^|/)_')   # + hidden topics
FLUSH_INTERVAL_S = 1.0
DISCOVERY_INTERVAL_S = 0.5


def import_message(msgtype: str):
    """The Python message class of 'pkg/msg/Name' (needed for type support even when raw);
    BagError naming the type when its package is not importable here."""
    package, name = split_type(msgtype)
    try:
        return getattr(importlib.import_module(f'{package}.msg'), name)
    except (ImportError, AttributeError) as exc:
        raise BagError(f'message type {package}/msg/{name} is not installed here ({exc}); '
                       'source the workspace that provides it') from exc


@dataclass
class RecordOptions:
    output: Path
    storage: str = 'mcap'
    namespace: str = ''                    # ECU namespace: only its topics (+ explicit ones)
    topics: list[str] = field(default_factory=list)   # explicit topics (relative to namespace)
    exclude: list[str] = field(default_factory=list)  # regexes on full topic names
    duration: float | None = None
    depth: int = 100


class Recorder:
    """The recording machinery around one rclpy node (see the module doc)."""

    def __init__(self, node: Node, options: RecordOptions) -> None:
        self.node = node
        self.options = options
        ns = options.namespace.strip('/')
        self.namespace = f'/{ns}' if ns else ''
        self.explicit = {self._resolve(t) for t in options.topics}
        self.exclude = [re.compile(x) for x in (*DEFAULT_EXCLUDE, *options.exclude)]
        custom = {'scarls.recorder': 'scarls bag record'}
        if ns:
            custom['scarls.namespace'] = self.namespace
        # the bag lives on the writer thread (SQLite connections stay on the thread that made
        # them): topics are added through the same queue as messages, in order
        self.bag: BagWriter | None = None
        self._opened = threading.Event()
        self._custom = custom
        self._queue: deque[tuple] = deque()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._subs: dict[str, object] = {}
        self._skipped: dict[str, str] = {}
        self.max_queue = 0
        self.bytes = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._write_loop, name='bag-writer', daemon=True)
        self._thread.start()
        self._opened.wait()
        if self.error is not None:
            raise self.error
        self._timer = node.create_timer(DISCOVERY_INTERVAL_S, self.discover)
        self.discover()

    def _resolve(self, topic: str) -> str:
        if topic.startswith('/'):
            return topic
        return f'{self.namespace}/{topic}' if self.namespace else f'/{topic}'

    def _wanted(self, topic: str) -> bool:
        """Explicit topics: exactly those; else every topic (of the namespace), minus the
        excluded ones (/rosout, /parameter_events, hidden topics, --exclude)."""
        if self.explicit:
            return topic in self.explicit
        if self.namespace and not topic.startswith(self.namespace + '/'):
            return False
        return not any(x.search(topic) for x in self.exclude)

    def discover(self) -> None:
        """Subscribe to new topics (type known, at least one publisher to adapt the QoS to)."""
        for topic, types in self.node.get_topic_names_and_types():
            if topic in self._subs or topic in self._skipped or not self._wanted(topic):
                continue
            if len(types) != 1:
                self._skip(topic, f'published with several types {types}')
                continue
            infos = self.node.get_publishers_info_by_topic(topic)
            if not infos:
                continue   # only subscribers so far: wait for a publisher's QoS
            msgtype = types[0]
            try:
                cls = import_message(msgtype)
                default_registry().ensure(msgtype)
            except BagError as exc:
                self._skip(topic, str(exc))
                continue
            with self._cond:
                self._queue.append(('topic', topic, msgtype,
                                    [from_rclpy(i.qos_profile) for i in infos]))
            qos = subscription_profile([i.qos_profile for i in infos], self.options.depth)
            self._subs[topic] = self.node.create_subscription(
                cls, topic, lambda data, t=topic: self._on_message(t, data), qos, raw=True)
            log.info('recording %s [%s]', topic, msgtype)

    def _skip(self, topic: str, why: str) -> None:
        self._skipped[topic] = why
        log.warning('not recording %s: %s', topic, why)

    def _on_message(self, topic: str, data: bytes) -> None:
        stamp = time.time_ns()
        with self._cond:
            self._queue.append(('msg', topic, stamp, data))
            if len(self._queue) > self.max_queue:
                self.max_queue = len(self._queue)
            self._cond.notify()

    def _write_loop(self) -> None:
        try:
            self.bag = BagWriter(self.options.output, self.options.storage,
                                 registry=default_registry(), custom_data=self._custom)
        except BagError as exc:
            self.error = exc
            return
        finally:
            self._opened.set()
        try:
            self._write_until_stopped()
        finally:
            try:
                self.bag.close()
            except BagError as exc:
                self.error = self.error or exc
                log.error('%s', exc)

    def _write_until_stopped(self) -> None:
        last_flush = time.monotonic()
        while True:
            with self._cond:
                if not self._queue and not self._stop.is_set():
                    self._cond.wait(timeout=0.2)
                batch = list(self._queue)
                self._queue.clear()
            try:
                for item in batch:
                    if item[0] == 'msg':
                        _, topic, stamp, data = item
                        self.bag.write(topic, stamp, data)
                        self.bytes += len(data)
                    else:
                        _, topic, msgtype, offered = item
                        self.bag.add_topic(topic, msgtype, offered)
                now = time.monotonic()
                if now - last_flush >= FLUSH_INTERVAL_S:
                    self.bag.flush()
                    last_flush = now
            except Exception as exc:  # noqa: BLE001 - disk full...: stop, say why
                self.error = exc
                log.error('writing %s failed: %s; recording stops', self.bag.path, exc)
                self._stop.set()
                return
            if self._stop.is_set():
                with self._cond:
                    if not self._queue:
                        return

    @property
    def failed(self) -> bool:
        return self.error is not None

    def close(self) -> dict:
        """Stop receiving, write what is queued, close the bag; a summary dict."""
        self.node.destroy_timer(self._timer)
        for sub in self._subs.values():
            self.node.destroy_subscription(sub)
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join()
        counts = dict(self.bag.counts) if self.bag is not None else {}
        return {'bag': str(self.options.output), 'storage': self.options.storage,
                'messages': sum(counts.values()), 'bytes': self.bytes,
                'topics': counts, 'skipped': dict(self._skipped),
                'max_queue': self.max_queue, 'error': repr(self.error) if self.error else None}


def record(options: RecordOptions, ros_args: list[str] | None = None,
           ready: threading.Event | None = None) -> dict:
    """Record until SIGINT/SIGTERM or ``options.duration``; returns the summary."""
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    rclpy.init(args=ros_args, signal_handler_options=SignalHandlerOptions.NO)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node = recorder = None
    try:
        node = rclpy.create_node('scarls_bag_recorder')
        recorder = Recorder(node, options)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        if ready is not None:
            ready.set()
        end = None if options.duration is None else time.monotonic() + options.duration
        while not stop.is_set() and not recorder.failed:
            if end is not None and time.monotonic() >= end:
                break
            executor.spin_once(timeout_sec=0.1)
        summary = recorder.close()
        recorder = None
        return summary
    finally:
        if recorder is not None:
            try:
                recorder.close()
            except Exception as exc:  # noqa: BLE001 - already failing: report, do not mask
                log.error('closing the bag failed: %s', exc)
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        for s, handler in old.items():
            signal.signal(s, handler)
