"""dashboard: a ROS 2 node that listens to the fleet and serves the web page over HTTP.

It discovers ECUs from the global topics and subscribes to each one's namespace as soon as it
hears of it; it never publishes and never calls a service. The HTTP server runs on its own
threads and only reads `FleetState` snapshots and the newest camera frames.

Topics:
  in  /fleet/status (EcuStatus, heartbeats: discovery), /fleet/rounds (FleetRound),
      /fleet/learners (LearnerStatus), and per ECU <ecu>/actor/state (ActorState),
      <ecu>/scheduler/episode (EpisodeInfo), <ecu>/scheduler/checkpoint (CheckpointInfo:
      deployed), <ecu>/learner/checkpoint (CheckpointInfo: every candidate, lineage),
      <ecu>/camera/{top,left,right}/image_raw (raw bytes, best effort depth 1, content-filtered
      to ~2 frames/s: only while a page shows that ECU's cameras)
Not subscribed: actor/step (30 Hz; the page needs nothing from it).
Parameters: host, port (the command-line flags are their defaults).
"""

from __future__ import annotations

import re

from rclpy.node import Node
from rclpy.subscription_content_filter_options import ContentFilterOptions
from sensor_msgs.msg import Image

from scarls.dashboard.frames import FrameStore
from scarls.dashboard.server import DashboardServer
from scarls.dashboard.state import ECU_ID_RE, FleetState
from scarls.ros import qos
from scarls.ros.node_utils import declare

CAMERA_FILTER = ContentFilterOptions(
    'header.stamp.nanosec < %0 OR (header.stamp.nanosec >= %1 AND header.stamp.nanosec < %2)',
    ['34000000', '500000000', '534000000'])
"""Frames stamped in the first 34 ms of each half second: ~2 per second and camera at 30 Hz
(one 33 ms tick per window). DDS drops the others before Python sees them (Fast DDS filters on
the writer's side where it can), so a page costs ~2 frames/s per camera, not 30."""


_CAMERA_TOPIC_RE = re.compile(
    r'^/([A-Za-z][A-Za-z0-9_]*)/camera/([A-Za-z][A-Za-z0-9_]*)/image_raw$')


def stamp_s(header) -> float:
    return header.stamp.sec + header.stamp.nanosec * 1e-9


class DashboardNode(Node):
    def __init__(self, host: str = '127.0.0.1', port: int = 8080) -> None:
        super().__init__('dashboard')
        declare(self, 'host', host, 'address the HTTP server listens on', read_only=True)
        declare(self, 'port', int(port), 'HTTP port (0 = any free port)', read_only=True)
        from diagnostic_msgs.msg import DiagnosticArray
        from scarls_interfaces.msg import EcuStatus, FleetRound, LearnerStatus

        self.state = FleetState()
        self.frames = FrameStore()
        self._ecu_subs: dict[str, list] = {}
        self._camera_subs: dict[str, list] = {}
        self._warned_unfiltered = False
        self._global_subs = [
            self.create_subscription(EcuStatus, '/fleet/status', self._on_status, qos.EVENTS),
            self.create_subscription(FleetRound, '/fleet/rounds', self._on_round, qos.ROUNDS),
            self.create_subscription(LearnerStatus, '/fleet/learners', self._on_learner,
                                     qos.EVENTS),
            self.create_subscription(DiagnosticArray, '/diagnostics', self._on_diagnostics,
                                     qos.DIAGNOSTICS),
        ]
        self._timer = self.create_timer(1.0, self._update_cameras)
        self.server = DashboardServer(self.state, self.frames,
                                      str(self.get_parameter('host').value),
                                      int(self.get_parameter('port').value))
        self.server.start()
        self.get_logger().info(f'dashboard on {self.server.url}')

    # -- discovery ---------------------------------------------------------------------------
    def _ensure_ecu(self, ecu_id: str) -> None:
        if ecu_id in self._ecu_subs or not ECU_ID_RE.match(ecu_id):
            return
        from scarls_interfaces.msg import ActorState, CheckpointInfo, DriverState, EpisodeInfo

        self.state.discover(ecu_id)
        ns = f'/{ecu_id}'
        self._ecu_subs[ecu_id] = [
            self.create_subscription(ActorState, f'{ns}/actor/state',
                                     lambda m: self._on_actor(ecu_id, m), qos.STATE),
            self.create_subscription(EpisodeInfo, f'{ns}/scheduler/episode',
                                     lambda m: self._on_episode(ecu_id, m), qos.EVENTS),
            self.create_subscription(CheckpointInfo, f'{ns}/scheduler/checkpoint',
                                     lambda m: self._on_deployed(ecu_id, m), qos.LATCHED),
            self.create_subscription(CheckpointInfo, f'{ns}/learner/checkpoint',
                                     lambda m: self._on_candidate(ecu_id, m), qos.STATE),
            self.create_subscription(DriverState, f'{ns}/driver/state',
                                     lambda m: self.state.driver_state(
                                         ecu_id, m.state, m.reason), qos.STATE),
        ]
        self.get_logger().info(f'ECU {ecu_id} discovered')

    def _discover_cameras(self) -> dict[str, list[str]]:
        """ECU id -> the cameras it publishes (``/<ecu>/camera/<name>/image_raw`` topics of
        type sensor_msgs/Image: whatever the ECU's robot description has)."""
        found: dict[str, list[str]] = {}
        for topic, types in self.get_topic_names_and_types():
            m = _CAMERA_TOPIC_RE.match(topic)
            if m and 'sensor_msgs/msg/Image' in types:
                found.setdefault(m.group(1), []).append(m.group(2))
        return found

    def _update_cameras(self) -> None:
        """Subscribe to the cameras of the ECUs a page shows; drop the others'."""
        cameras = self._discover_cameras()
        for ecu_id in self._ecu_subs:
            if ecu_id in cameras:
                self.state.set_cameras(ecu_id, cameras[ecu_id])
                self.frames.set_cameras(ecu_id, cameras[ecu_id])
        wanted = {e for e in self.frames.wanted() if e in self._ecu_subs}
        for ecu_id in wanted - set(self._camera_subs):
            names = cameras.get(ecu_id)
            if not names:
                continue   # none published yet: try again at the next update
            self._camera_subs[ecu_id] = [self._camera_subscription(ecu_id, cam)
                                         for cam in names]
        for ecu_id in set(self._camera_subs) - wanted:
            for sub in self._camera_subs.pop(ecu_id):
                self.destroy_subscription(sub)
            self.frames.drop(ecu_id)

    def _camera_subscription(self, ecu_id: str, camera: str):
        topic = f'/{ecu_id}/camera/{camera}/image_raw'

        def on_frame(raw: bytes) -> None:
            self.frames.put(ecu_id, camera, raw)

        try:
            sub = self.create_subscription(Image, topic, on_frame, qos.CAMERA_LATEST, raw=True,
                                           content_filter_options=CAMERA_FILTER)
            if sub.is_cft_enabled:
                return sub
            self.destroy_subscription(sub)
        except (RuntimeError, TypeError) as exc:   # the RMW cannot filter: take every frame
            self.get_logger().debug(f'no content filter on {topic}: {exc}')
        if not self._warned_unfiltered:
            self._warned_unfiltered = True
            self.get_logger().warn('this RMW does not filter topics by content: the dashboard '
                                   'receives every camera frame while a page shows cameras')
        return self.create_subscription(Image, topic, on_frame, qos.CAMERA_LATEST, raw=True)

    # -- callbacks ---------------------------------------------------------------------------
    def _on_diagnostics(self, msg) -> None:
        for status in msg.status:
            level = status.level[0] if isinstance(status.level, (bytes, bytearray)) \
                else int(status.level)
            ecu_id = self.state.diagnostic(status.name, level, status.message,
                                           status.hardware_id)
            if ecu_id:
                self._ensure_ecu(ecu_id)

    def _on_status(self, msg) -> None:
        self._ensure_ecu(msg.ecu_id)
        self.state.heartbeat(
            msg.ecu_id, stamp_s(msg.header), task=msg.task, phase=msg.phase,
            episodes=msg.episodes, successes_without_help=msg.successes_without_help,
            recent_success_rate=msg.recent_success_rate,
            recent_intervention_rate=msg.recent_intervention_rate,
            model_version=msg.model_version, deployed_version=msg.deployed_version)

    def _on_round(self, msg) -> None:
        self._ensure_ecu(msg.ecu_id)
        self.state.fleet_round(
            msg.ecu_id, stamp_s(msg.header), round=msg.round, status=msg.status,
            participants=list(msg.participants), member_ids=list(msg.member_ids),
            member_metrics=list(msg.member_metrics), member_weights=list(msg.member_weights),
            selector_passed=msg.selector_passed, version=msg.version, approved=msg.approved)

    def _on_learner(self, msg) -> None:
        self._ensure_ecu(msg.ecu_id)
        self.state.learner_status(
            msg.ecu_id, stamp_s(msg.header), state=msg.state, detail=msg.detail,
            rounds=msg.rounds, round_step=msg.round_step, round_steps=msg.round_steps,
            loss=msg.loss, metric=msg.metric, version=msg.version, approved=msg.approved,
            deployed_version=msg.deployed_version, deployed_metric=msg.deployed_metric,
            online_episodes=msg.online_episodes, offline_episodes=msg.offline_episodes,
            samples_trained=msg.samples_trained,
            ingested_episodes=list(msg.ingested_episodes),
            ingest_latency_s=list(msg.ingest_latency_s))

    def _on_actor(self, ecu_id: str, msg) -> None:
        self.state.actor_state(
            ecu_id, stamp_s(msg.header), phase=msg.phase, episode_id=msg.episode_id,
            steps=msg.steps, intervention_steps=msg.intervention_steps,
            model_version=msg.model_version, intervening=msg.intervening)

    def _on_episode(self, ecu_id: str, msg) -> None:
        self.state.episode(
            ecu_id, stamp_s(msg.header), index=msg.index, outcome=msg.outcome, steps=msg.steps,
            intervention_steps=msg.intervention_steps, model_version=msg.model_version,
            dropped_steps=msg.dropped_steps, finalize_seconds=msg.finalize_seconds)

    def _on_deployed(self, ecu_id: str, msg) -> None:
        self.state.deployed_checkpoint(ecu_id, stamp_s(msg.header), version=msg.version)

    def _on_candidate(self, ecu_id: str, msg) -> None:
        self.state.learner_checkpoint(ecu_id, stamp_s(msg.header), version=msg.version,
                                      parent=msg.parent, metric=msg.metric,
                                      approved=msg.approved)

    def safe_stop(self) -> None:
        """Called by run_node on SIGINT/SIGTERM: close the HTTP server."""
        self.server.stop()
