"""scheduler: the ECU's data hub (lifecycle node): records the robot's topics into Zarr episodes.

For every actor/step it finds the exact camera frames the actor used (by header stamp) and appends
the step to the episode being written on a background writer (the subscription path never touches
the disk, so recording never drops frames because of I/O). When the actor reports the end of the
episode it finalises it - `<data_root>/<task>/episode_<N>.zarr` + `episode_<N>_meta.json`, written
under a temporary name, fsynced and renamed so an episode only ever appears complete - and
publishes an EpisodeInfo. Steps whose frames never arrive within `match_timeout_s` are dropped and
counted (never filled with other frames; meta `extra.dropped_by_cause` says why). Every step
records the driver's safety state in force when its command was executed (driver/state, aligned
by stamp: the episode's `safety` array, counts in meta `extra.safety`), so the learner never
trains on an action the robot did not execute. The writer's queue holds `writer_queue_s` seconds
of steps; a drop says whether the disk, a CPU-starved recorder or a burst of steps caused it. An
episode that cannot be stored (disk full...) is lost whole - nothing partial stays on disk - and
counted (EcuStatus lost_episodes/lost_steps/recording_problem, meta `extra.recorder_losses` of
the next saved episode); recording resumes with the next episode. The alignment and finalising
rules live in scarls.scheduler.alignment (no rclpy), which `scarls bag to-zarr` runs offline over
a bag.

It also triggers the learner (Algorithm 2: quality check + T_interval, service learner/train)
and deploys: an approved checkpoint the learner announces is deployed only if it is a record of
the ECU's checkpoint registry (never a version beyond the registry's newest, never a file outside
the registry folder, symlinks resolved) newer than anything deployed before, and its signature
verifies against the trust list (scarls.checkpoints.deploy, .signing). A deploy is a signed
deploy record with a generation number from the deploy log (<registry>/deploys.json): announced
on scheduler/checkpoint (the record is the `uri`) and served, with the checkpoint itself, in
verified chunks by ~/get_checkpoint (only deployed versions, only registry files), so the robot
computer needs no shared disk. ~/deploy makes an earlier approved version the deployed one
(rollback: a new generation, so the actor follows it at its next episode boundary).

The deploy guard (scarls.checkpoints.guard, docs/GATE.md; parameters guard*) keeps what the robot
has: it counts every saved episode for its model version; a newly deployed version runs
guard_min_episodes episodes before a newer checkpoint replaces it (newer approved checkpoints wait,
the newest is deployed once the probation is over), and if its episodes needed help
significantly more often than its predecessor's, the scheduler redeploys the predecessor (only an
approved, signed, intact registry version; reason `guard rollback from vN` in the signed deploy
record, which tells the learner), and rejects the bad version: neither it nor a candidate trained
from it is deployed automatically again. State in <registry>/guard.json.

Topics (relative to the ECU namespace):
  in  camera/{top,left,right}/image_raw (reliable, depth 5), actor/step, actor/state,
      driver/state (DriverState, transient local: the robot's safety state),
      learner/checkpoint (CheckpointInfo, every candidate)
  out scheduler/episode (scarls_interfaces/EpisodeInfo, reliable depth 100)
      scheduler/checkpoint (CheckpointInfo, transient local: the checkpoint to deploy; `uri`
      is the signed deploy record)
      /fleet/status (EcuStatus, 1 Hz heartbeat: phase, episodes, recent rates, versions)
Services: ~/get_checkpoint (GetCheckpointChunk: chunks of a deployed version; version 0 = the
current signed deploy record in `data`), ~/deploy (GetCheckpointChunk types: `version` in; `ok`,
`error`, the deployed file's `total_size` and `sha256`, the deploy entry as JSON in `data` out);
client learner/train (std_srvs/Trigger).
Parameters: data_root, task, ecu_id, image_codec, match_timeout_s, buffer_seconds,
writer_queue_s, cameras,
train_interval_s, min_train_steps, max_dropped_fraction, checkpoint_dir, key_dir, trust_file,
signing_key, guard, guard_min_episodes, guard_alpha, guard_reference_episodes, autostart.

Clocks: the train interval and every stamp run on ROS time (simulated time under use_sim_time;
a step's recorded timestamp is its actor stamp). Wall time guards our own processes: the
aligner's wait for messages still in flight (match_timeout_s), the learner/train call's timeout.
"""

from __future__ import annotations

import collections
import json
import os
import queue
import threading
import time
from pathlib import Path

from rclpy.lifecycle import LifecycleNode
from scarls_interfaces.msg import (
    ActorState,
    ActorStep,
    CheckpointInfo,
    DriverState,
    EcuStatus,
    EpisodeInfo,
)
from scarls_interfaces.srv import GetCheckpointChunk
from sensor_msgs.msg import CompressedImage, Image
from std_srvs.srv import Trigger

from scarls.checkpoints.deploy import (
    DEPLOY_LOG_NAME,
    DeployLog,
    DeployRecord,
    DeployRefused,
    check_announcement,
    sign_deploy_record,
)
from scarls.checkpoints.format import CheckpointRejected, verify_checkpoint
from scarls.checkpoints.guard import GUARD_STATE_NAME, DeployGuard, GuardConfig, GuardVerdict
from scarls.checkpoints.registry import RegistryError, read_index
from scarls.checkpoints.signing import (
    TRUST_FILE,
    KeyStoreError,
    TrustList,
    node_signer,
    resolve_key_dir,
)
from scarls.checkpoints.transfer import ChunkServer
from scarls.diagnostics import Status
from scarls.diagnostics.rules import recorder_status
from scarls.episodes.schema import executed_mask
from scarls.robot import DEFAULT_ROBOT, RobotDescriptionError, load_robot
from scarls.ros import qos
from scarls.ros.conversions import policy_frame
from scarls.ros.diagnostics import NodeDiagnostics
from scarls.ros.node_utils import FAILURE, SUCCESS, declare, run_node
from scarls.ros.simtime import now_s, wall_clock
from scarls.scheduler.alignment import (
    AlignerConfig,
    DiscardedEpisode,
    JointLimits,
    SavedEpisode,
    StepAligner,
)
from scarls.scheduler.trigger import TrainTrigger, TriggerConfig

TRAIN_CALL_TIMEOUT_S = 10.0     # a learner/train call unanswered this long is retried
READY_WARN_S = 15.0             # not ready to record this long after activation: say why
STATUS_TOPIC = '/fleet/status'   # global: every ECU of the domain, whatever its namespace
STATUS_WINDOW = 20               # episodes behind the recent rates of the heartbeat
SERVED_VERSIONS = 4              # deployed versions still served (an actor may be mid-fetch)


class _NodeLog:
    """The aligner's reports to the node's logger (throttled ones at most every 2 s)."""

    def __init__(self, logger) -> None:
        self._logger = logger

    def info(self, msg: str) -> None:
        self._logger.info(msg)

    def warning(self, msg: str, throttled: bool = False) -> None:
        if throttled:
            self._logger.warning(msg, throttle_duration_sec=2.0)
        else:
            self._logger.warning(msg)

    def error(self, msg: str, throttled: bool = False) -> None:
        if throttled:
            self._logger.error(msg, throttle_duration_sec=2.0)
        else:
            self._logger.error(msg)


class SchedulerNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__('scheduler')
        declare(self, 'ecu_id', 'ecu0', 'ECU id (written into every episode)', read_only=True)
        declare(self, 'task', 'pick_cube', 'Task: episodes go to <data_root>/<task>/')
        declare(self, 'data_root', 'data', 'Root folder of the Zarr episodes')
        declare(self, 'image_codec', 'lz4', 'Image codec of new episodes (lz4 lossless, jpeg...)')
        declare(self, 'match_timeout_s', 2.0, "Wait this long for a step's frames")
        declare(self, 'buffer_seconds', 5.0, 'Seconds of camera frames kept for matching')
        declare(self, 'writer_queue_s', 10.0, 'Seconds of steps the episode writer queues '
                '(bursts while the recorder catches up; at most 512 MB of frames)')
        declare(self, 'robot', DEFAULT_ROBOT,
                'Robot description: a built-in name (config/robots) or a YAML file',
                read_only=True)
        declare(self, 'fps', 0.0, "Control rate recorded in the metadata (0 = the robot's)")
        declare(self, 'cameras', [''], "Camera names ([''] = the robot's cameras)",
                string_array=True)
        declare(self, 'train_interval_s', 10.0, 'T_interval: minimum seconds between triggers')
        declare(self, 'min_train_steps', 10, 'Quality check: shortest episode worth training on')
        declare(self, 'max_dropped_fraction', 0.05, 'Quality check: most dropped steps allowed')
        declare(self, 'checkpoint_dir', '', 'Checkpoint registry of this ECU (default '
                '<data_root>/checkpoints/<task>): only its files are deployed and served',
                read_only=True)
        declare(self, 'key_dir', '', 'Key directory (default $SCARLS_KEY_DIR, else '
                '<data_root>/keys)', read_only=True)
        declare(self, 'trust_file', '', 'Trust list: checkpoints are deployed only when signed '
                'by one of its keys (default <key_dir>/trusted_keys)', read_only=True)
        declare(self, 'signing_key', '', 'Key that signs deploy records (default '
                '<key_dir>/learner-<ecu_id>.key, the ECU learner\'s; created and trusted if '
                'missing)', read_only=True)
        declare(self, 'guard', False, 'Deploy guard: probation of a new version and rollback '
                'when its episodes need help significantly more often than its predecessor\'s '
                '(config/ecu.yaml turns it on)')
        declare(self, 'guard_min_episodes', 8, 'Episodes a new version runs before a newer '
                'checkpoint may replace it, and before it is judged')
        declare(self, 'guard_alpha', 0.05, 'Significance level of the guard\'s one-sided test')
        declare(self, 'guard_reference_episodes', 40, "The predecessor's newest episodes the "
                'guard compares with')
        declare(self, 'autostart', True, 'Configure and activate at start')
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._entities: list = []
        self._diagnostics = NodeDiagnostics(self, 'recorder', self._diagnostic_status)

    # -- lifecycle -------------------------------------------------------------------------
    def _diagnostic_status(self) -> Status:
        writer, episode_dropped = self._aligner.open_episode_counters()
        losses = self._aligner.losses
        with self._status_lock:
            saved, problem = self._saved, self._recording_problem
        return recorder_status(
            phase=self._phase, saved=saved, open_episode=self._aligner.open_episode,
            pending_steps=self._aligner.pending_steps(),
            queue_depth=writer.queue_depth if writer else 0,
            queue_capacity=writer.queue_capacity if writer else 0,
            writer_dropped=writer.dropped if writer else 0, episode_dropped=episode_dropped,
            lost_episodes=losses.episodes, lost_steps=losses.steps, recording_problem=problem,
            deployed_version=int(self._deployed), waiting_for=self.recording_waits())

    def on_configure(self, state):
        p = self.get_parameter
        self._root = Path(str(p('data_root').value)).expanduser().resolve()
        self._task = str(p('task').value)
        self._ecu = str(p('ecu_id').value)
        self._codec = str(p('image_codec').value)
        try:
            self._robot = load_robot(p('robot').value)
        except RobotDescriptionError as exc:
            self.get_logger().error(f'robot description: {exc}')
            return FAILURE
        self._fps = float(p('fps').value) or self._robot.control_rate_hz
        self._timeout = float(p('match_timeout_s').value)
        self._cameras = tuple(c for c in p('cameras').value if c) or self._robot.camera_names
        self._specs = {c: self._robot.camera_spec(c) for c in self._cameras}
        try:
            (self._root / self._task).mkdir(parents=True, exist_ok=True)
            probe = self._root / self._task / f'.write-test-{os.getpid()}'
            probe.write_bytes(b'ok')
            probe.unlink()
        except OSError as exc:
            self.get_logger().error(
                f'data_root {self._root} is not writable ({exc.strerror}): choose another '
                'folder with data_root:=... or fix its permissions')
            return FAILURE
        self._aligner = StepAligner(
            AlignerConfig(root=self._root, task=self._task, ecu_id=self._ecu, codec=self._codec,
                          fps=self._fps, match_timeout_s=self._timeout,
                          buffer_seconds=float(p('buffer_seconds').value),
                          cameras=self._cameras,
                          writer_options={'queue_seconds': float(p('writer_queue_s').value)},
                          extra_meta={'robot': self._robot.identity},
                          joint_limits=JointLimits(self._robot.lower, self._robot.upper,
                                                   self._robot.max_velocity)),
            decode_image=self._decode, decode_per_camera=True,
            log=_NodeLog(self.get_logger()),
            on_saved=self._on_saved, on_discarded=self._on_discarded)
        self._recording_problem = ''
        self._pub_episode = self.create_publisher(EpisodeInfo, 'scheduler/episode', qos.EVENTS)
        self._pub_status = self.create_publisher(EcuStatus, STATUS_TOPIC, qos.EVENTS)
        self._recent: collections.deque[EpisodeInfo] = collections.deque(maxlen=STATUS_WINDOW)
        self._saved = self._saved_alone = 0
        self._phase = 'UNKNOWN'
        self._trigger = TrainTrigger(TriggerConfig(
            min_interval_s=float(p('train_interval_s').value),
            min_steps=int(p('min_train_steps').value),
            max_dropped_fraction=float(p('max_dropped_fraction').value)))
        self._trigger_lock = threading.Lock()
        self._status_lock = threading.Lock()
        self._train_client = self.create_client(Trigger, 'learner/train')
        self._train_future = None
        if not self._configure_deploy():
            return FAILURE
        self._step_sub = self.create_subscription(ActorStep, 'actor/step', self._on_step,
                                                  qos.STEPS)
        self._ready_logged = False
        self._activated_at: float | None = None
        self._ready_warned = False
        self._subs = [
            self.create_subscription(CheckpointInfo, 'learner/checkpoint',
                                     self._on_learner_checkpoint, qos.STATE),
            *[self._camera_subscription(c) for c in self._cameras],
            self._step_sub,
            self.create_subscription(ActorState, 'actor/state', self._on_state, qos.STATE),
            self.create_subscription(DriverState, 'driver/state',
                                     self._aligner.add_driver_state, qos.STATE),
        ]
        self.get_logger().info(f'configured: recording {self._task!r} into {self._root} '
                               f'(codec {self._codec})')
        return SUCCESS

    def _configure_deploy(self) -> bool:
        """Deployment: the registry folder, keys, the deploy log; the chunk server serves only
        deployed versions, and only files of the registry."""
        p = self.get_parameter
        self._registry_root = Path(str(p('checkpoint_dir').value)
                                   or self._root / 'checkpoints' / self._task).expanduser()
        key_dir = resolve_key_dir(str(p('key_dir').value), self._root)
        try:
            self._registry_root.mkdir(parents=True, exist_ok=True)
            self._registry_root = self._registry_root.resolve()
            self._trust = TrustList(Path(str(p('trust_file').value) or key_dir / TRUST_FILE))
            key = str(p('signing_key').value)
            self._signer, untrusted = node_signer(self._trust, key_dir, key, self._ecu)
            if untrusted:
                self.get_logger().warning(untrusted)
            trusted = len(self._trust.keys())
            self._deploy_log = DeployLog(self._registry_root / DEPLOY_LOG_NAME)
            self._guard_path = self._registry_root / GUARD_STATE_NAME
            self._guard = DeployGuard.load(self._guard_path, GuardConfig(
                enabled=bool(p('guard').value),
                min_episodes=int(p('guard_min_episodes').value),
                alpha=float(p('guard_alpha').value),
                reference_episodes=int(p('guard_reference_episodes').value)))
        except (OSError, KeyStoreError, RegistryError, ValueError) as exc:
            self.get_logger().error(f'deployment cannot start: {exc}')
            return False
        self._guard_lock = threading.RLock()
        self._held: CheckpointInfo | None = None
        self._deploy_lock = threading.Lock()
        self._served: dict[int, Path] = {}
        self._deployed = 0
        self._high_water = max((e.version for e in self._deploy_log.history), default=0)
        self._deploy_token = sign_deploy_record(
            DeployRecord(self._ecu, 0, 0, '', self._robot.hash, 'none'), self._signer)
        self._deploy_msg: CheckpointInfo | None = None
        current = self._deploy_log.current
        if current is not None and current.version > 0:
            self._restore_deploy(current)
        with self._guard_lock:
            self._guard.on_deploy(self._deployed, rollback=True)   # as it was before a restart
        self._chunks = ChunkServer(lambda version: self._served.get(version),
                                   allowed_root=self._registry_root)
        self._deploy_jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._pub_ckpt = self.create_publisher(CheckpointInfo, 'scheduler/checkpoint',
                                               qos.LATCHED)
        self._srv_ckpt = self.create_service(GetCheckpointChunk, '~/get_checkpoint',
                                             self._on_get_checkpoint)
        self._srv_deploy = self.create_service(GetCheckpointChunk, '~/deploy',
                                               self._on_deploy)
        self.get_logger().info(
            f'deploys from registry {self._registry_root} (deploy generation '
            f'{self._deploy_log.generation}, deployed v{self._deployed}); deploy records signed '
            f'by key {self._signer.key_id}; {trusted} trusted key(s) in '
            f'{self._trust.path}')
        return True

    def _camera_subscription(self, camera: str):
        """The camera's topic as the robot description says (raw or compressed, its QoS); a
        deep reader history so a busy moment never overwrites unread frames."""
        spec = self._robot.camera_spec(camera)
        reader = qos.CAMERA_RECORD if spec.qos == 'reliable' else \
            qos.camera_qos('best_effort', depth=qos.CAMERA_RECORD.depth)
        return self.create_subscription(
            CompressedImage if spec.compressed else Image, spec.topic_name,
            lambda m, c=camera: self._aligner.add_frame(c, m), reader)

    def _decode(self, msg, camera: str):
        """A recorded frame at the size the policy is trained on (the description's)."""
        return policy_frame(msg, self._specs.get(camera))

    def recording_waits(self) -> list[str]:
        """What a step taken now could not be recorded for ([] = ready): the actor's steps
        not matched yet, cameras no frame has arrived from. Said in the log when it changes."""
        waits = [f'camera {c} (no frame yet)' for c in self._aligner.cameras_without_frames()]
        if self._step_sub.get_publisher_count() < 1:
            waits.insert(0, "the actor's steps (no publisher matched)")
        now, activated = time.monotonic(), self._activated_at
        if activated is None:   # not recording yet
            return waits
        if not waits and not self._ready_logged:
            self._ready_logged = True
            self.get_logger().info(
                f'ready to record: the actor\'s steps and {len(self._cameras)} camera(s) '
                f'({", ".join(self._cameras)}) arrive, {now - activated:.1f} s after '
                'activation')
        elif waits and now - activated > READY_WARN_S and not self._ready_warned:
            self._ready_warned = True
            self.get_logger().warning(
                f'not ready to record {now - activated:.0f} s after activation: '
                f'waiting for {", ".join(waits)}; check that the driver and the actor run in '
                'this namespace and the robot description names the cameras they publish')
        return waits

    def on_activate(self, state):
        self._activated_at, self._ready_warned = time.monotonic(), False
        self._trigger_timer = self.create_timer(1.0, self._poll_trigger)
        # wall: a heartbeat for monitors (and the operator's wait for the recorder)
        self._status_timer = self.create_timer(1.0, self._publish_status, clock=wall_clock())
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name='recorder', daemon=True)
        self._thread.start()
        self._deploy_thread = threading.Thread(target=self._deploy_worker, name='deploy',
                                               daemon=True)
        self._deploy_thread.start()
        if self._deploy_msg is not None:   # the deploy in force before a restart
            self._pub_ckpt.publish(self._deploy_msg)
        return super().on_activate(state)

    def on_deactivate(self, state):
        self._activated_at = None
        self.destroy_timer(self._trigger_timer)
        self.destroy_timer(self._status_timer)
        self._stop_thread()
        return super().on_deactivate(state)

    def on_cleanup(self, state):
        self.safe_stop()
        return SUCCESS

    def safe_stop(self) -> None:
        """Stop recording; an unfinished episode is discarded (never left half-visible)."""
        self._stop_thread()
        aligner = getattr(self, '_aligner', None)
        discarded = aligner.abort() if aligner is not None else None
        if discarded is not None:
            self.get_logger().warning(
                f'unfinished episode (actor episode {discarded.actor_episode_id}, '
                f'{discarded.steps_seen} steps) discarded at shutdown')

    def _stop_thread(self) -> None:
        self._stop.set()
        jobs = getattr(self, '_deploy_jobs', None)
        if jobs is not None:
            jobs.put(None)
        worker = getattr(self, '_deploy_thread', None)
        if worker is not None:
            worker.join(timeout=10.0)
            self._deploy_thread = None
        if self._thread is not None:
            self._aligner.wake()
            self._thread.join(timeout=10.0)
            self._thread = None

    # -- callbacks (never touch the disk) ----------------------------------------------------
    def _on_step(self, msg: ActorStep) -> None:
        self._aligner.add_step(msg)

    def _on_state(self, msg: ActorState) -> None:
        self._phase = msg.phase
        self._aligner.add_state(msg)

    # -- recorder thread (alignment + writing: scarls.scheduler.alignment) -------------------
    def _run(self) -> None:
        while not self._stop.is_set():
            self._aligner.wait(timeout=0.05)
            try:
                self._aligner.poll()
            except Exception as exc:  # noqa: BLE001 - keep recording, say what happened
                self.get_logger().error(f'recorder error: {exc!r}')

    def _on_saved(self, saved: SavedEpisode) -> None:
        ref = saved.ref
        info = EpisodeInfo()
        info.header.stamp = self.get_clock().now().to_msg()
        info.ecu_id, info.task, info.index = self._ecu, self._task, int(ref.index)
        info.outcome, info.steps = saved.outcome, int(ref.steps)
        info.intervention_steps = int(ref.intervention_steps)
        info.model_version = int(saved.model_version)
        info.actor_episode_id = int(saved.actor_episode_id)
        info.path = str(ref.path)
        info.dropped_steps = int(saved.dropped_steps)
        info.finalize_seconds = float(saved.finalize_seconds)
        self._pub_episode.publish(info)
        outcome = saved.outcome
        with self._status_lock:
            self._recording_problem = ''   # recording works (again)
            self._recent.append(info)
            self._saved += 1
            self._saved_alone += int(outcome == 'success' and info.intervention_steps == 0)
        self._guard_episode(info)
        with self._trigger_lock:
            quality = self._trigger.on_episode(info.steps, info.dropped_steps, outcome)
        if not quality.ok:
            self.get_logger().warning(f'episode {ref.index} kept but not used to trigger '
                                      f'training: {quality.reason}')
        not_executed = ''
        if saved.safety is not None:
            counts = _not_executed(saved.safety)
            not_executed = f', {counts} not executed by the robot' if counts else ''
        self.get_logger().info(
            f'episode {ref.index} saved: {outcome}, {ref.steps} steps '
            f'({ref.intervention_steps} by human), {info.dropped_steps} dropped{not_executed}, '
            f'visible {saved.finalize_seconds:.2f} s after the end -> {ref.path}')

    def _on_discarded(self, lost: DiscardedEpisode) -> None:
        losses = self._aligner.losses
        with self._status_lock:
            self._recording_problem = lost.reason
        self.get_logger().error(
            f'actor episode {lost.actor_episode_id} LOST ({lost.steps_seen} steps): '
            f'{lost.reason}; lost so far: {losses.episodes} episodes, {losses.steps} steps')
        self._publish_status()

    # -- fleet status ----------------------------------------------------------------------------
    def _publish_status(self) -> None:
        msg = EcuStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.ecu_id, msg.task, msg.phase = self._ecu, self._task, self._phase
        with self._status_lock:
            recent = list(self._recent)
            msg.episodes, msg.successes_without_help = self._saved, self._saved_alone
        if recent:
            msg.recent_success_rate = sum(
                e.outcome == 'success' and e.intervention_steps == 0 for e in recent) / len(recent)
            msg.recent_intervention_rate = sum(e.intervention_steps for e in recent) / max(
                1, sum(e.steps for e in recent))
            msg.model_version = int(recent[-1].model_version)
        msg.deployed_version = int(self._deployed)
        losses = self._aligner.losses
        msg.lost_episodes, msg.lost_steps = int(losses.episodes), int(losses.steps)
        with self._status_lock:
            msg.recording_problem = self._recording_problem
        msg.recording_ready = not self.recording_waits()
        self._pub_status.publish(msg)

    # -- deployment ----------------------------------------------------------------------------
    def _on_learner_checkpoint(self, msg: CheckpointInfo) -> None:
        if not msg.approved:
            self.get_logger().info(f'checkpoint v{msg.version} not approved (metric '
                                   f'{msg.metric:.4f}): not deployed')
            return
        self._deploy_jobs.put(msg)   # verified and deployed on the deploy thread

    def _deploy_worker(self) -> None:
        while True:
            msg = self._deploy_jobs.get()
            if msg is None or self._stop.is_set():
                return
            try:
                if isinstance(msg, GuardVerdict):
                    self._guard_rollback(msg)
                else:
                    self._deploy_announced(msg)
            except Exception as exc:  # noqa: BLE001 - keep deploying, say what happened
                self.get_logger().error(f'deploy of v{msg.version} failed: {exc!r}')

    def _deploy_announced(self, msg: CheckpointInfo) -> None:
        version = int(msg.version)
        with self._deploy_lock:
            if version <= self._high_water:
                return   # deployed before (or rolled back from): never redeployed by itself
        try:
            rec, path, verified = self._deployable(version, msg.sha256, msg.uri)
        except (DeployRefused, CheckpointRejected, RegistryError, OSError) as exc:
            self.get_logger().error(f'checkpoint v{version} announced on learner/checkpoint '
                                    f'NOT deployed: {exc}')
            return
        with self._guard_lock:
            # the registry's parent, not the announcement's: the lineage the learner recorded
            tainted = self._guard.tainted(version, rec.parent)
            hold = self._guard.hold() if tainted is None else None
            if hold is not None:
                replaced, self._held = self._held, msg   # the newest approved candidate waits
        if tainted is not None:
            self.get_logger().warning(f'checkpoint v{version} NOT deployed (deploy guard): '
                                      f'{tainted}')
            return
        if hold is not None:
            self.get_logger().info(
                f'checkpoint v{version} held (deploy guard): {hold}'
                + (f'; it replaces the held v{replaced.version}' if replaced else ''))
            return
        self._deploy(rec, path, verified, 'approved')

    def _deployable(self, version: int, sha256: str = '', uri: str = ''):
        """The registry record, file and verification of ``version``, or an exception
        saying why it must not be deployed."""
        if self._trust.is_revoked(self._signer.key_id):
            raise DeployRefused(f'this scheduler signs deploy records with key '
                                f'{self._signer.key_id}, which was revoked since it started: '
                                'restart it (after `scarls keys rotate`)')
        rec, path = check_announcement(read_index(self._registry_root), version, sha256, uri)
        verified = verify_checkpoint(path, trust=self._trust, robot=self._robot.hash,
                                     expected_sha256=rec.sha256, expected_version=version)
        return rec, path, verified

    def _deploy(self, rec, path: Path, verified, reason: str) -> dict:
        with self._deploy_lock:
            rollback = rec.version < self._deployed
            entry = self._deploy_log.record(rec.version, verified.sha256, reason)
            with self._guard_lock:
                self._guard.on_deploy(rec.version, rollback=rollback)
                self._save_guard()
            self._served[rec.version] = path
            for old in sorted(self._served)[:-SERVED_VERSIONS]:
                if old != rec.version:
                    self._served.pop(old)
            self._deployed = rec.version
            self._high_water = max(self._high_water, rec.version)
            msg = self._announcement(rec, verified, entry.generation, reason)
            self._pub_ckpt.publish(msg)
        self.get_logger().info(
            f'deploying checkpoint v{rec.version} ({reason}, generation {entry.generation}, '
            f'metric {msg.metric:.4f}, {verified.size / 1e6:.1f} MB, signed by '
            f'{verified.key_id}): the actor loads it at the next episode boundary')
        return {'generation': entry.generation, 'version': rec.version, 'reason': reason,
                'sha256': verified.sha256}

    def _announcement(self, rec, verified, generation: int, reason: str) -> CheckpointInfo:
        record = DeployRecord(self._ecu, generation, rec.version, verified.sha256,
                              self._robot.hash, reason)
        token = sign_deploy_record(record, self._signer)
        msg = CheckpointInfo()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.version, msg.parent = int(rec.version), int(rec.parent or 0)
        msg.policy, msg.sha256 = rec.policy or verified.header.policy, verified.sha256
        msg.size_bytes = int(verified.size)
        msg.metric = float(rec.metrics.get('open_loop_error', 0.0))
        msg.approved, msg.uri = True, token
        self._deploy_token, self._deploy_msg = token, msg
        return msg

    def _restore_deploy(self, current) -> None:
        """At configure: the deploy in force before a restart, if its file still verifies."""
        try:
            rec, path, verified = self._deployable(current.version)
            if verified.sha256 != current.sha256:
                raise DeployRefused(f'the file of v{current.version} changed since it was '
                                    'deployed')
        except (DeployRefused, CheckpointRejected, RegistryError, OSError, KeyError) as exc:
            self.get_logger().error(f'the deployed checkpoint v{current.version} cannot be '
                                    f'served any more ({exc}): deploy another with '
                                    'scarls deploy')
            return
        self._served[rec.version] = path
        self._deployed = rec.version
        self._announcement(rec, verified, current.generation, current.reason)

    def _on_deploy(self, request, response):
        """~/deploy: make approved registry version ``request.version`` the deployed one."""
        version = int(request.version)
        response.ok = False
        if version < 1:
            response.error = 'give the version to deploy (>= 1)'
            return response
        try:
            with self._guard_lock:
                why = self._guard.rejected.get(version)
            if why is not None:
                raise DeployRefused(f'the deploy guard rejected it ({why}); remove it from '
                                    f'"rejected" in {self._guard_path} to deploy it anyway')
            rec, path, verified = self._deployable(version)
        except (DeployRefused, CheckpointRejected, RegistryError, OSError) as exc:
            response.error = f'v{version} cannot be deployed: {exc}'
            self.get_logger().error(f'~/deploy: {response.error}')
            return response
        if version == self._deployed:
            entry = {'generation': self._deploy_log.generation, 'version': version,
                     'reason': 'already deployed', 'sha256': verified.sha256}
        else:
            reason = 'rollback' if version < self._deployed else 'deploy'
            entry = self._deploy(rec, path, verified, reason)
        response.ok, response.error = True, ''
        response.total_size, response.sha256 = int(verified.size), verified.sha256
        response.data = json.dumps(entry).encode()
        return response

    def _on_get_checkpoint(self, request, response):
        if int(request.version) == 0:   # the current signed deploy record
            token = self._deploy_token.encode()
            response.ok, response.error = True, ''
            response.total_size, response.sha256 = len(token), ''
            response.data = token
            return response
        reply = self._chunks.handle(int(request.version), int(request.offset),
                                    int(request.length))
        response.ok, response.error = bool(reply.ok), reply.error
        response.total_size, response.sha256 = int(reply.total_size), reply.sha256
        response.data = reply.data
        return response

    # -- deploy guard (scarls.checkpoints.guard) ------------------------------------------------
    def _save_guard(self) -> None:
        try:
            self._guard.save(self._guard_path)
        except OSError as exc:
            self.get_logger().error(f'deploy guard state not saved ({exc}): a restart forgets '
                                    'the episodes counted since the last save',
                                    throttle_duration_sec=60.0)

    def _guard_episode(self, info: EpisodeInfo) -> None:
        """Recorder thread: count the episode; act on the guard's verdict on the deploy
        thread."""
        with self._guard_lock:
            verdict = self._guard.record(int(info.model_version), info.outcome, int(info.steps),
                                         int(info.intervention_steps))
            self._save_guard()
            held = None
            if verdict.action != 'rollback' and self._held is not None \
                    and self._guard.hold() is None:
                held, self._held = self._held, None   # probation over: the newest one deploys
        if verdict.action == 'rollback':
            self.get_logger().warning(f'deploy guard: v{verdict.version} {verdict.reason}: '
                                      f'rolling back to v{verdict.target}')
            self._deploy_jobs.put(verdict)
            return
        if verdict.action == 'passed':
            self.get_logger().info(f'deploy guard: v{verdict.version} {verdict.reason}')
        if held is not None:
            self.get_logger().info(f'deploy guard: v{self._deployed} ran its probation: '
                                   f'deploying the held v{held.version}')
            self._deploy_jobs.put(held)

    def _guard_rollback(self, verdict: GuardVerdict) -> None:
        """Deploy thread: redeploy the predecessor (approved, signed, intact) and reject the
        bad version, or say why the bad version stays."""
        bad, target = verdict.version, int(verdict.target)
        if self._deployed != bad:
            return   # something else was deployed meanwhile
        try:
            rec, path, verified = self._deployable(target)
        except (DeployRefused, CheckpointRejected, RegistryError, OSError) as exc:
            self.get_logger().error(f'deploy guard: v{bad} is worse than v{target} but v{target} '
                                    f'cannot be redeployed ({exc}): v{bad} stays deployed')
            return
        with self._guard_lock:
            self._guard.reject(bad, verdict.reason)
            dropped, self._held = self._held, None   # gated against the rejected model
            self._save_guard()
        self._deploy(rec, path, verified, f'guard rollback from v{bad}')
        self.get_logger().warning(
            f'deploy guard: ROLLED BACK from v{bad} to v{target} ({verdict.reason}); v{bad} '
            'is rejected: neither it nor a candidate trained from it is deployed again'
            + (f'; the held v{dropped.version} is dropped' if dropped is not None else ''))

    # -- training trigger (Algorithm 2) ------------------------------------------------------
    def _poll_trigger(self) -> None:
        future = self._train_future
        if future is not None:
            if not future.done():
                # wall: guards a service call to another process
                if time.monotonic() - self._train_called < TRAIN_CALL_TIMEOUT_S:
                    return
                # the learner died or hangs with our call in flight: forget it, try again
                self._train_client.remove_pending_request(future)
                self._train_future = None
                self.get_logger().warning(f'no answer from learner/train within '
                                          f'{TRAIN_CALL_TIMEOUT_S:.0f} s: retrying')
                with self._trigger_lock:
                    self._trigger.retry_later(1)
                return
            self._train_future = None
            result = future.result()
            if result is None or not result.success:
                why = result.message if result is not None else 'no response'
                self.get_logger().info(f'learner did not take the trigger ({why}): retrying')
                with self._trigger_lock:
                    self._trigger.retry_later(1)
            else:
                self.get_logger().info(f'training triggered: {result.message}')
        if not self._train_client.service_is_ready():
            return  # no learner on this ECU (yet): data stays pending
        with self._trigger_lock:
            fire = self._trigger.poll(now_s(self))   # ROS time: the robot's schedule
        if fire:
            self._train_called = time.monotonic()
            self._train_future = self._train_client.call_async(Trigger.Request())


def _not_executed(safety) -> int:
    """Steps whose action the robot did not execute (scarls.episodes.schema.NOT_EXECUTED)."""
    return int((~executed_mask(safety, len(safety))).sum())


def main(args=None) -> int:
    return run_node(SchedulerNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
