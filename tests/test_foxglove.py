"""The Foxglove bridge: which topics it serves and how (pure), and a real Foxglove WebSocket
client (the `websockets` package speaking the protocol) against the bridge serving a real sim
driver process: the advertisement, subscriptions, CDR payloads decoded with Foxglove's own
ros2msg decoder (mcap_ros2), cameras subscribed in ROS only while the client wants them."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path

import pytest
from mcap.records import Schema
from mcap_ros2.decoder import DecoderFactory
from rosutil import Probe, log_text, start_nodes

from scarls.bags.types import default_registry
from scarls.bringup import NodeSpec, ecu_nodes
from scarls.foxglove import parse_args, serve
from scarls.foxglove.topics import ECU_GLOBALS, RateCap, TopicFilter, channel_spec
from scarls.robot import JOINT_NAMES

ROOT = Path(__file__).resolve().parents[1]
SUBPROTOCOL = 'foxglove.sdk.v1'


# -- which topics, advertised how (no ROS) ---------------------------------------------------

@pytest.mark.parametrize(('namespace', 'topics', 'exclude', 'topic', 'served'), [
    ('', (), (), '/ecu0/joint_states', True),
    ('', (), (), '/fleet/status', True),
    ('', (), (), '/rosout', False),
    ('', (), (), '/parameter_events', False),
    ('', (), (), '/ecu0/_hidden', False),
    ('', (), (), '/_hidden/topic', False),
    ('ecu0', (), (), '/ecu0/camera/top/image_raw', True),
    ('ecu0', (), (), '/ecu1/camera/top/image_raw', False),
    ('ecu0', (), (), '/ecu01/joint_states', False),
    ('ecu0', (), (), '/diagnostics', True),      # every node's health, and sim time
    ('ecu0', (), (), '/clock', True),
    ('ecu0', (), (), '/fleet/status', False),
    ('ecu0', (), ('diagnostics',), '/diagnostics', False),
    ('/ecu0/', (), (), '/ecu0/actor/state', True),
    ('ecu0', (), ('camera',), '/ecu0/camera/top/image_raw', False),
    ('ecu0', (), ('camera',), '/ecu0/joint_states', True),
    ('ecu0', ('joint_states', '/fleet/status'), (), '/ecu0/joint_states', True),
    ('ecu0', ('joint_states', '/fleet/status'), (), '/fleet/status', True),
    ('ecu0', ('joint_states', '/fleet/status'), (), '/ecu0/actor/state', False),
    ('', ('joint_states',), (), '/joint_states', True),
    ('', 'a/b, /c  d', (), '/a/b', True),
    ('', 'a/b, /c  d', (), '/d', True),
    ('', 'a/b, /c  d', (), '/e', False),
])
def test_topic_filter(namespace, topics, exclude, topic, served):
    assert TopicFilter(namespace, topics, exclude)(topic) is served


@pytest.mark.parametrize(('namespace', 'exclude'), [('0ecu', ()), ('ecu 0', ()),
                                                     ('ecu0', ('(',))])
def test_topic_filter_refuses_bad_input(namespace, exclude):
    with pytest.raises(ValueError):
        TopicFilter(namespace, (), exclude)


def test_rate_cap():
    assert all(RateCap(0).allow(t) for t in (0.0, 0.0, 0.001))
    cap = RateCap(4)                                   # one per 0.25 s
    frames = [i / 32 for i in range(64)]               # 2 s of a 32 Hz camera (exact floats)
    assert [t for t in frames if cap.allow(t)] == [k / 4 for k in range(8)]
    with pytest.raises(ValueError):
        RateCap(-1)


def test_the_command_refuses_bad_input_before_touching_ros(capsys):
    assert serve(parse_args(['--namespace', '1bad'])[0]) == 2
    assert 'not a ROS namespace' in capsys.readouterr().err
    assert serve(parse_args(['--max-image-rate', '-1'])[0]) == 2


def test_scarls_command_has_the_foxglove_subcommand():
    from scarls.cli import build_parser
    args = build_parser().parse_args(['foxglove', '--port', '9000', '--namespace', 'ecu3',
                                      '--domain-id', '42', '--max-image-rate', '5'])
    assert (args.port, args.namespace, args.domain_id, args.max_image_rate) == \
        (9000, 'ecu3', 42, 5.0)
    assert args.func is serve


def _decoder(spec):
    schema = Schema(id=1, name=spec.schema_name, encoding=spec.schema_encoding,
                    data=spec.schema.encode())
    return DecoderFactory().decoder_for(spec.encoding, schema)


def test_channels_carry_full_definitions_that_foxglove_decodes():
    """The advertised schema alone (ros2msg, nested types included) decodes the bytes a ROS
    publisher writes - with Foxglove's decoder, not ours."""
    registry = default_registry()
    image = channel_spec('/ecu0/camera/top/image_raw', 'sensor_msgs/msg/Image')
    assert (image.schema_name, image.encoding, image.schema_encoding, image.heavy) == \
        ('sensor_msgs/msg/Image', 'cdr', 'ros2msg', True)
    assert 'MSG: std_msgs/Header' in image.schema and 'MSG: builtin_interfaces/Time' in \
        image.schema
    Image = registry.message('sensor_msgs/msg/Image')
    Header = registry.message('std_msgs/msg/Header')
    Time = registry.message('builtin_interfaces/msg/Time')
    import numpy as np
    pixels = np.arange(4 * 5 * 3, dtype=np.uint8)
    data = registry.serialize(Image(Header(Time(3, 4), 'top'), 4, 5, 'rgb8', 0, 15, pixels),
                              'sensor_msgs/msg/Image')
    msg = _decoder(image)(data)
    assert (msg.height, msg.width, msg.encoding, msg.header.frame_id) == (4, 5, 'rgb8', 'top')
    assert bytes(msg.data) == pixels.tobytes()

    state = channel_spec('/ecu0/actor/state', 'scarls_interfaces/msg/ActorState')
    assert not state.heavy and 'string phase' in state.schema
    assert channel_spec('/x', 'scarls_interfaces/LearnerStatus').schema_name == \
        'scarls_interfaces/msg/LearnerStatus'
    with pytest.raises(ValueError, match='no message definition'):
        channel_spec('/x', 'no_such_pkg/msg/Nothing')


def test_shipped_layout_names_the_panels_and_topics():
    layout = json.loads((ROOT / 'config' / 'foxglove_layout.json').read_text())
    configs = layout['configById']
    kinds = {key.split('!')[0] for key in configs}
    assert {'Image', 'Plot', 'StateTransitions'} <= kinds
    text = json.dumps(configs)
    for topic in ('/ecu0/camera/top/image_raw', '/ecu0/camera/left/image_raw',
                  '/ecu0/camera/right/image_raw', '/ecu0/joint_states', '/ecu0/actor/state',
                  '/ecu0/learner/status', '/ecu0/driver/state'):
        assert topic in text, topic
    # every panel of the layout tree has a configuration
    panels = set(re.findall(r'"([A-Za-z0-9]+![A-Za-z0-9]+)"', json.dumps(layout['layout'])))
    assert panels and panels <= set(configs)


# -- a real client against a real driver -----------------------------------------------------

NS = 'fgtest'
H, W = 24, 32


class Client:
    """A Foxglove WebSocket client: advertisements, subscriptions, decoded messages."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.channels: dict[str, dict] = {}
        self.decoders: dict[int, object] = {}
        self.subscriptions: dict[int, str] = {}
        self.messages: dict[str, list] = {}
        self.server_info: dict | None = None
        self._next = 1

    async def pump(self, timeout: float) -> None:
        try:
            frame = await asyncio.wait_for(self.ws.recv(), timeout)
        except TimeoutError:
            return
        if isinstance(frame, str):
            msg = json.loads(frame)
            if msg['op'] == 'serverInfo':
                self.server_info = msg
            elif msg['op'] == 'advertise':
                for ch in msg['channels']:
                    self.channels[ch['topic']] = ch
            elif msg['op'] == 'unadvertise':
                for topic in [t for t, c in self.channels.items()
                              if c['id'] in msg['channelIds']]:
                    del self.channels[topic]
            return
        assert frame[0] == 0x01, f'unexpected binary opcode {frame[0]}'   # message data
        sub_id = int.from_bytes(frame[1:5], 'little')
        log_time = int.from_bytes(frame[5:13], 'little')
        topic = self.subscriptions[sub_id]
        decoded = self.decoders[sub_id](frame[13:])
        self.messages.setdefault(topic, []).append((log_time, decoded))

    async def subscribe(self, topic: str) -> None:
        ch = self.channels[topic]
        sub_id, self._next = self._next, self._next + 1
        schema = Schema(id=sub_id, name=ch['schemaName'], encoding=ch['schemaEncoding'],
                        data=ch['schema'].encode())
        self.decoders[sub_id] = DecoderFactory().decoder_for(ch['encoding'], schema)
        self.subscriptions[sub_id] = topic
        await self.ws.send(json.dumps({'op': 'subscribe',
                                       'subscriptions': [{'id': sub_id, 'channelId': ch['id']}]}))

    async def unsubscribe(self, topic: str) -> None:
        ids = [i for i, t in self.subscriptions.items() if t == topic]
        await self.ws.send(json.dumps({'op': 'unsubscribe', 'subscriptionIds': ids}))


async def _until(client: Client, predicate, timeout: float, what: str, tick=None) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f'timed out after {timeout:.0f} s waiting for '
                                 f'{what() if callable(what) else what}')
        if tick is not None:
            tick()
        await client.pump(0.1)


def _bridge_url(node_group, timeout: float = 60.0) -> str:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        m = re.search(r'foxglove bridge on (ws://127\.0\.0\.1:\d+)', log_text(node_group,
                                                                            'foxglove'))
        if m:
            return m.group(1)
        assert not node_group.dead(), log_text(node_group, 'foxglove')
        time.sleep(0.1)
    raise AssertionError('the bridge never said where it listens:\n'
                         + log_text(node_group, 'foxglove'))


@pytest.mark.ros
def test_foxglove_client_sees_a_running_driver(ros, node_group):
    import websockets
    from scarls_interfaces.msg import ActorState, LearnerStatus

    from scarls.ros import qos

    probe = Probe(NS)
    try:
        # the actor's phase and the learner's metrics, as the actor and learner publish them
        actor_pub = probe.node.create_publisher(ActorState, 'actor/state', qos.STATE)
        learner_pub = probe.node.create_publisher(LearnerStatus, 'learner/status', qos.EVENTS)
        actor_pub.publish(ActorState(phase='IDLE', previous_phase='INIT', model_version=7))
        status = LearnerStatus(ecu_id=NS, state='training', loss=0.25, metric=0.125, rounds=3)
        last = [0.0]

        def heartbeat() -> None:   # the learner's 1 Hz status, a little faster
            if time.monotonic() - last[0] >= 0.2:
                last[0] = time.monotonic()
                learner_pub.publish(status)

        driver = ecu_nodes(NS, extra={'driver': {'image_height': H, 'image_width': W}})[0]
        assert driver.name == 'driver'
        start_nodes(node_group, [driver, NodeSpec('foxglove', 'scarls.foxglove', '',
                                                  {'port': 0, 'namespace': NS})])
        url = _bridge_url(node_group)
        top, left = f'/{NS}/camera/top/image_raw', f'/{NS}/camera/left/image_raw'
        wanted = [f'/{NS}/joint_states', top, f'/{NS}/driver/state', f'/{NS}/actor/state',
                  f'/{NS}/learner/status', '/diagnostics']

        async def session() -> None:
            async with websockets.connect(url, subprotocols=[SUBPROTOCOL],
                                          max_size=None) as ws:
                assert ws.subprotocol == SUBPROTOCOL
                c = Client(ws)
                await _until(c, lambda: all(t in c.channels for t in wanted), 60,
                             f'advertisements of {wanted}',
                             tick=heartbeat)
                assert c.server_info is not None
                assert not any(t.startswith('/rosout') for t in c.channels)
                assert all(t.startswith(f'/{NS}/') or t in ECU_GLOBALS
                           for t in c.channels), sorted(c.channels)
                assert c.channels['/diagnostics']['schemaName'] == \
                    'diagnostic_msgs/msg/DiagnosticArray'
                for topic in wanted:
                    ch = c.channels[topic]
                    assert (ch['encoding'], ch['schemaEncoding']) == ('cdr', 'ros2msg')
                assert c.channels[top]['schemaName'] == 'sensor_msgs/msg/Image'
                assert c.channels[f'/{NS}/actor/state']['schemaName'] == \
                    'scarls_interfaces/msg/ActorState'
                # nobody looks at the cameras: the bridge does not subscribe to them
                assert probe.node.count_subscribers(top) == 0
                assert probe.node.count_subscribers(left) == 0
                for topic in wanted:
                    await c.subscribe(topic)
                await _until(c, lambda: all(c.messages.get(t) for t in wanted), 60,
                             lambda: 'a message on every subscribed topic (none on '
                             f'{[t for t in wanted if not c.messages.get(t)]})',
                             tick=heartbeat)
                await _until(c, lambda: probe.node.count_subscribers(top) == 1, 30,
                             'the bridge subscribed to the camera (in the ROS graph)')
                assert probe.node.count_subscribers(left) == 0

                _, js = c.messages[f'/{NS}/joint_states'][-1]
                assert list(js.name) == list(JOINT_NAMES) and len(js.position) == len(JOINT_NAMES)
                _, img = c.messages[top][-1]
                assert (img.height, img.width, img.encoding, img.step) == (H, W, 'rgb8', W * 3)
                assert len(img.data) == H * W * 3
                _, safety = c.messages[f'/{NS}/driver/state'][-1]
                assert safety.state in ('ok', 'clamped', 'holding', 'estopped', 'fault',
                                        'resetting')
                _, phase = c.messages[f'/{NS}/actor/state'][0]     # latched: delivered at once
                assert (phase.phase, phase.previous_phase, phase.model_version) == \
                    ('IDLE', 'INIT', 7)
                _, learner = c.messages[f'/{NS}/learner/status'][-1]
                assert (learner.ecu_id, learner.state, learner.loss, learner.metric,
                        learner.rounds) == (NS, 'training', 0.25, 0.125, 3)
                stamps = [t for t, _ in c.messages[top]]
                assert stamps == sorted(stamps) and stamps[0] > 0

                # the client looks away: the camera subscription goes
                await c.unsubscribe(top)
                await _until(c, lambda: probe.node.count_subscribers(top) == 0, 30,
                             'the bridge to drop the camera subscription')

        asyncio.run(session())
        codes = node_group.stop()
        assert codes['/foxglove'] == 0, log_text(node_group, 'foxglove')
        text = log_text(node_group, 'foxglove')
        assert f'subscribed to {top}' in text and f'unsubscribed from {top}' in text
        assert f'subscribed to {left}' not in text
    finally:
        probe.close()
