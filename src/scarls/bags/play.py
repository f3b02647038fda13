"""`scarls bag play`: a bag (MCAP or SQLite 3, from this project or `ros2 bag record`) back
into live topics.

Messages are published as the serialized bytes stored in the bag (``Publisher.publish(bytes)``:
no deserialisation), at their recorded receive times scaled by ``rate``, with each topic offered
the QoS its publishers offered when it was recorded (latched topics stay latched). Topics whose
type is not installed here are skipped with a warning; everything else plays.

Pause/resume: the services ``~/pause`` (std_srvs/SetBool: true pauses, false resumes) and
``~/toggle_paused`` (std_srvs/Trigger), or SPACE when stdin is a terminal.
"""

from __future__ import annotations

import logging
import select
import signal
import sys
import threading
import time
from dataclasses import dataclass, field

import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.signals import SignalHandlerOptions
from std_srvs.srv import SetBool, Trigger

from scarls.bags.errors import BagError
from scarls.bags.io import BagReader
from scarls.bags.record import import_message
from scarls.bags.rosqos import playback_profile

__all__ = ['PlayOptions', 'Player', 'parse_remaps', 'play']

log = logging.getLogger('scarls.bag')


def parse_remaps(items: list[str]) -> dict[str, str]:
    """['old:=new', ...] -> {old: new}; BagError on a malformed item."""
    out = {}
    for item in items:
        old, sep, new = item.partition(':=')
        if not sep or not old or not new:
            raise BagError(f'bad remap {item!r}: use OLD:=NEW (full topic names, or a '
                           'namespace prefix such as /ecu0:=/ecu1)')
        out[old.rstrip('/') or '/'] = new.rstrip('/') or '/'
    return out


def remap_topic(topic: str, remaps: dict[str, str]) -> str:
    """Exact topic remap first, then the longest matching namespace prefix."""
    if topic in remaps:
        return remaps[topic]
    for old in sorted(remaps, key=len, reverse=True):
        if topic.startswith(old + '/'):
            return remaps[old] + topic[len(old):]
    return topic


@dataclass
class PlayOptions:
    bag: str
    rate: float = 1.0
    loop: bool = False
    topics: list[str] = field(default_factory=list)
    remap: dict[str, str] = field(default_factory=dict)
    start_offset: float = 0.0
    delay: float = 0.5
    wait_for_subscribers: int = 0
    wait_timeout: float = 30.0
    start_paused: bool = False
    keyboard: bool = True


class Player:
    """Publishers + the timed publishing thread + pause control around one rclpy node."""

    def __init__(self, node, options: PlayOptions, reader: BagReader | None = None) -> None:
        if options.rate <= 0:
            raise BagError(f'--rate must be positive, got {options.rate}')
        self.node = node
        self.options = options
        self.reader = reader or BagReader(options.bag)
        self.publishers: dict[str, object] = {}
        self.skipped: dict[str, str] = {}
        wanted = options.topics or list(self.reader.topics)
        missing = [t for t in wanted if t not in self.reader.topics]
        if missing:
            log.warning('%s has no topics %s (it has %s)', self.reader.path, missing,
                        sorted(self.reader.topics))
        for topic in wanted:
            info = self.reader.topics.get(topic)
            if info is None:
                continue
            try:
                cls = import_message(info.msgtype)
            except BagError as exc:
                self.skipped[topic] = str(exc)
                log.warning('skipping %s: %s', topic, exc)
                continue
            out = remap_topic(topic, options.remap)
            self.publishers[topic] = node.create_publisher(
                cls, out, playback_profile(info.offered_qos))
        if not self.publishers:
            raise BagError(f'{self.reader.path}: nothing to play (no selected topic of a type '
                           'installed here)')
        self.published = 0
        self.done = threading.Event()
        self.error: BaseException | None = None
        self._paused = threading.Event()
        if options.start_paused:
            self._paused.set()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pause_shift = 0.0
        node.create_service(SetBool, '~/pause', self._on_pause)
        node.create_service(Trigger, '~/toggle_paused', self._on_toggle)
        self._thread = threading.Thread(target=self._run, name='bag-player', daemon=True)

    # -- control ---------------------------------------------------------------------------
    @property
    def paused(self) -> bool:
        return self._paused.is_set()

    def set_paused(self, paused: bool) -> None:
        if paused != self.paused:
            (self._paused.set if paused else self._paused.clear)()
            self._wake.set()
            log.info('%s', 'paused' if paused else 'resumed')

    def _on_pause(self, request, response):
        self.set_paused(bool(request.data))
        response.success, response.message = True, 'paused' if self.paused else 'playing'
        return response

    def _on_toggle(self, request, response):
        self.set_paused(not self.paused)
        response.success, response.message = True, 'paused' if self.paused else 'playing'
        return response

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5.0)

    # -- playing ---------------------------------------------------------------------------
    def _sleep_until(self, target: float) -> bool:
        """Wait until monotonic ``target``, shifted by any pause (added to self._pause_shift so
        later messages keep their spacing); False when stopped."""
        while not self._stop.is_set():
            if self._paused.is_set():
                t0 = time.monotonic()
                while self._paused.is_set() and not self._stop.is_set():
                    self._wake.wait(0.1)
                    self._wake.clear()
                shift = time.monotonic() - t0
                self._pause_shift += shift
                target += shift
                continue
            left = target - time.monotonic()
            if left <= 0:
                return True
            self._wake.wait(min(left, 0.1))
            self._wake.clear()
        return False

    def _wait_for_subscribers(self) -> bool:
        """Until every publisher has ``wait_for_subscribers`` matched readers (bounded by
        ``wait_timeout``); False when stopped."""
        want = self.options.wait_for_subscribers
        end = time.monotonic() + self.options.wait_timeout
        while not self._stop.is_set():
            short = [t for t, p in self.publishers.items() if p.get_subscription_count() < want]
            if not short:
                return True
            if time.monotonic() > end:
                log.warning('after %.0f s, fewer than %d subscribers on %s: playing anyway',
                            self.options.wait_timeout, want, short)
                return True
            self._stop.wait(0.05)
        return False

    def _run(self) -> None:
        try:
            if self.options.wait_for_subscribers > 0 and not self._wait_for_subscribers():
                return
            if self.options.delay > 0 and not self._sleep_until(
                    time.monotonic() + self.options.delay):
                return
            first = self.reader.start_time
            start_ns = first + int(self.options.start_offset * 1e9)
            while not self._stop.is_set():
                self._pause_shift = 0.0
                t0 = time.monotonic()
                for msg in self.reader.messages(list(self.publishers), start_ns=start_ns):
                    due = t0 + (msg.timestamp - start_ns) * 1e-9 / self.options.rate \
                        + self._pause_shift
                    if not self._sleep_until(due):
                        return
                    self.publishers[msg.topic].publish(msg.data)
                    self.published += 1
                if not self.options.loop:
                    break
        except BagError as exc:
            self.error = exc
            log.error('%s', exc)
        except Exception as exc:  # noqa: BLE001 - e.g. the context shut down: report
            if rclpy.ok():
                self.error = exc
                log.error('playback failed: %r', exc)
        finally:
            self.done.set()


def _keyboard(player: Player, stop: threading.Event) -> None:
    """SPACE toggles pause while stdin is a terminal (cbreak mode, restored at exit)."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        while not stop.is_set() and not player.done.is_set():
            ready, _, _ = select.select([sys.stdin], [], [], 0.2)
            if ready and sys.stdin.read(1) == ' ':
                player.set_paused(not player.paused)
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def play(options: PlayOptions, ros_args: list[str] | None = None) -> dict:
    """Play until the bag ends (never with --loop) or SIGINT/SIGTERM; returns a summary."""
    reader = BagReader(options.bag)   # fail on a bad bag before touching ROS
    stop = threading.Event()

    def on_signal(signum, frame) -> None:
        stop.set()

    rclpy.init(args=ros_args, signal_handler_options=SignalHandlerOptions.NO)
    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    node = player = None
    try:
        node = rclpy.create_node('scarls_bag_player')
        player = Player(node, options, reader)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        player.start()
        if options.keyboard and sys.stdin.isatty():
            threading.Thread(target=_keyboard, args=(player, stop), daemon=True).start()
            log.info('SPACE pauses/resumes')
        while not stop.is_set() and not player.done.is_set():
            executor.spin_once(timeout_sec=0.1)
        # let reliable readers fetch the last samples before the writers go away
        end = time.monotonic() + 0.5
        while not stop.is_set() and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        return {'bag': str(reader.path), 'published': player.published,
                'topics': sorted(player.publishers), 'skipped': dict(player.skipped),
                'error': str(player.error) if player.error else None}
    finally:
        if player is not None:
            player.stop()
        if node is not None:
            node.destroy_node()
        rclpy.try_shutdown()
        for s, handler in old.items():
            signal.signal(s, handler)
        reader.close()
