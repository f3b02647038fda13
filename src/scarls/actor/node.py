"""actor: the control FSM of the ScaRLS paper (Algorithm 1) as a managed lifecycle node, at 30 Hz.

INIT -> (reset pose) -> IDLE; START -> INFERENCE; INTERVENE -> HUMANINTERVENTION; RELEASE ->
INFERENCE; SUCCESS / FAIL / STOP -> SUCCESS / FAIL / ABORTED -> (log, reload a deployed checkpoint
fetched meanwhile - only between episodes, never mid-episode: here or at the next START - reset
pose) -> IDLE. Illegal signals are logged and
ignored. In INFERENCE the policy produces action chunks on a worker thread (the tick never waits
for it: it executes the current chunk and swaps in a new one when ready); in HUMANINTERVENTION the
latest teleop command is executed (held if it is stale).

Topics (relative to the ECU namespace):
  in  joint_states, each camera of the robot description (camera/<name>/image_raw by default,
      Image or CompressedImage, newest only), teleop/command,
      operator/signal (scarls_interfaces/OperatorSignal), scheduler/checkpoint (CheckpointInfo:
      the checkpoint to deploy, with the scheduler's signed deploy record as `uri`; fetched in
      the background in verified chunks from scheduler/get_checkpoint, swapped in at the next
      episode boundary), driver/state (an e-stop or a robot fault aborts the episode and
      refuses the next START)
  out joint_command (sensor_msgs/JointState position targets, reliable depth 1)
      actor/state (ActorState, transient local: every transition + 1 Hz)
      actor/step (ActorStep: one per tick of an episode - stamps of the observation used, the
      action sent, whether a human was in control, the model version)
Clients: driver/reset_pose (std_srvs/Trigger), scheduler/get_checkpoint (GetCheckpointChunk).
Parameters: robot (the robot description: joints, cameras - their topics, raw or compressed,
QoS and the size the policy sees -, control rate), rate_hz, policy, checkpoint, seed,
refill_when_remaining, cameras, max_observation_age_s (older joint states or frames: the tick is
skipped and counted in ActorState.stale_observations, the driver holds), key_dir, trust_file,
deploy_wait_s, autostart. A checkpoint made for another robot (joint count, cameras) is refused.

Deploy safety (scarls.checkpoints.deploy): every checkpoint the actor loads - the `checkpoint`
parameter included - must be signed by a key of its trust list for this robot description
(bounded, verified before anything is allocated). A deploy is followed only if its deploy record
is signed by a trusted key, is for this ECU and robot, and has a newer generation than the last
one applied: a rollback (lower version, newer generation) is followed, a replayed or forged
announcement is not. At activation the actor asks the scheduler which checkpoint is deployed
(get_checkpoint version 0, waiting up to deploy_wait_s for the service); while that checkpoint
is not loaded, START is refused with the reason, so a restarted actor never runs its initial
policy in place of a deployed one. No scheduler within deploy_wait_s, or nothing deployed: the
configured initial policy runs.

Clocks: the control tick, the stale-observation and stale-teleop checks, retries and every stamp
run on ROS time (simulated time under use_sim_time). Wall time (time.monotonic) guards our own
processes: the reset service call's deadline, the checkpoint transfer, rate-limited logs. Under
use_sim_time the actor reports each finished tick on /sim/progress (scarls.ros.simtime) for the
lockstep clock, once the policy inference in flight is done: an inference costs at most the tick
it was requested in, whatever the host's load.
"""

from __future__ import annotations

import collections
import threading
import time

import numpy as np
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.lifecycle import LifecycleNode
from scarls_interfaces.msg import (
    ActorState,
    ActorStep,
    CheckpointInfo,
    DriverState,
    OperatorSignal,
)
from scarls_interfaces.srv import GetCheckpointChunk
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import Trigger
from visualization_msgs.msg import Marker

from scarls.actor.chunking import ChunkedController, PolicyInferenceError
from scarls.actor.fsm import ActorFSM, Event, Phase, is_episode_active, is_terminal
from scarls.camera.convert import CameraError
from scarls.checkpoints import CheckpointRejected, load_verified_checkpoint
from scarls.checkpoints.deploy import (
    DeployFollower,
    DeployRecord,
    DeployRefused,
    open_deploy_token,
)
from scarls.checkpoints.signing import TRUST_FILE, KeyStoreError, TrustList, resolve_key_dir
from scarls.checkpoints.transfer import ChunkFetcher, ChunkReply, TransferError
from scarls.diagnostics import RateMeter, Status
from scarls.diagnostics.rules import actor_status
from scarls.policies import Observation, get_policy_class, make_policy
from scarls.robot import DEFAULT_ROBOT, RobotDescriptionError, load_robot
from scarls.ros import qos
from scarls.ros.conversions import (
    MessageError,
    joint_state_to_msg,
    msg_to_positions,
    policy_frame,
    stamp_to_ns,
)
from scarls.ros.diagnostics import NodeDiagnostics
from scarls.ros.node_utils import (
    FAILURE,
    SUCCESS,
    declare,
    request_checkpoint_chunk,
    run_node,
)
from scarls.ros.simtime import ProgressReporter, now_ns
from scarls.ros.viz import actor_state_marker

SIGNAL_EVENTS = {
    OperatorSignal.START: Event.START,
    OperatorSignal.INTERVENE: Event.INTERVENE,
    OperatorSignal.RELEASE: Event.RELEASE,
    OperatorSignal.SUCCESS: Event.SUCCESS,
    OperatorSignal.FAIL: Event.FAIL,
    OperatorSignal.STOP: Event.STOP,
}
RESET_TIMEOUT_S = 10.0
UNSAFE_DRIVER = ('estopped', 'fault')   # driver states that end an episode / refuse a START
CHUNK_CALL_TIMEOUT_S = 10.0
MAX_CHECKPOINT_BYTES = 4 << 30
TELEOP_STALE_S = 0.5
RECENT_OBSERVATIONS = 30   # joint states / frames per camera kept by stamp (1 s at 30 Hz)


class ActorNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__('actor')
        declare(self, 'ecu_id', 'ecu0', 'ECU id', read_only=True)
        declare(self, 'task', 'pick_cube', 'Task name', read_only=True)
        declare(self, 'robot', DEFAULT_ROBOT,
                'Robot description: a built-in name (config/robots) or a YAML file',
                read_only=True)
        declare(self, 'rate_hz', 0.0, "Control rate (Hz; 0 = the robot's control rate)",
                read_only=True)
        declare(self, 'policy', 'mlp', 'Registered policy to start from (random init)')
        declare(self, 'checkpoint', '', 'Checkpoint (safetensors) to start from instead')
        declare(self, 'seed', 0, 'Seed of a randomly initialised policy')
        declare(self, 'refill_when_remaining', 4, 'Request a new chunk below this many actions')
        declare(self, 'device', 'auto', "Where the policy runs: 'auto' (CUDA when available, "
                "else CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'", read_only=True)
        declare(self, 'precision', 'auto', "Mixed precision of inference: 'auto' (CUDA: bf16 "
                "when supported, else fp16; CPU/MPS: fp32), 'fp32', 'bf16', 'fp16'",
                read_only=True)
        declare(self, 'max_observation_age_s', 0.25,
                'Skip the tick (the driver holds) when the joint state or a camera frame is '
                'older than this (s, on the ROS clock); 0 = no check')
        declare(self, 'cameras', [''], "Camera names ([''] = the robot's cameras)",
                string_array=True)
        declare(self, 'key_dir', '', 'Key directory (default $SCARLS_KEY_DIR, else data/keys)',
                read_only=True)
        declare(self, 'trust_file', '', 'Trust list: only checkpoints and deploy records signed '
                'by one of its keys are loaded (default <key_dir>/trusted_keys)',
                read_only=True)
        declare(self, 'deploy_wait_s', 10.0, 'At start, wait this long for the scheduler to '
                'say which checkpoint is deployed (START is refused until it is loaded)',
                read_only=True)
        declare(self, 'autostart', True, 'Configure and activate at start')
        self.fsm = ActorFSM()
        self._lock = threading.RLock()
        self._timer = None
        self._state_timer = None
        self._warned_at: dict[str, float] = {}
        self._controller: ChunkedController | None = None
        self._tick_meter, self._stale_reported = RateMeter(), 0   # wall time: the host's ticks
        self._diagnostics = NodeDiagnostics(self, 'control', self._diagnostic_status)

    # -- lifecycle -------------------------------------------------------------------------
    def on_configure(self, state):
        try:
            self._robot = load_robot(self.get_parameter('robot').value)
        except RobotDescriptionError as exc:
            self.get_logger().error(f'robot description: {exc}')
            return FAILURE
        self._joints = self._robot.joint_names
        self._cameras = tuple(c for c in self.get_parameter('cameras').value if c) \
            or self._robot.camera_names
        self._specs = {c: self._robot.camera_spec(c) for c in self._cameras}
        rate = float(self.get_parameter('rate_hz').value) or self._robot.control_rate_hz
        self._dt = 1.0 / rate
        key_dir = resolve_key_dir(str(self.get_parameter('key_dir').value), None)
        self._trust = TrustList(str(self.get_parameter('trust_file').value)
                                or key_dir / TRUST_FILE)
        self._ecu = str(self.get_parameter('ecu_id').value)
        self._deploy_wait = float(self.get_parameter('deploy_wait_s').value)
        self._follower = DeployFollower()
        self._model_sha = ''
        try:
            self._load_initial_policy()
        except (CheckpointRejected, ValueError, KeyError, OSError, KeyStoreError) as exc:
            self.get_logger().error(f'policy could not be loaded: {exc}')
            return FAILURE
        try:
            self._controller = ChunkedController(
                self._policy, refill_when_remaining=int(
                    self.get_parameter('refill_when_remaining').value),
                device=str(self.get_parameter('device').value),
                precision=str(self.get_parameter('precision').value))
        except ValueError as exc:   # DeviceError: a device this machine does not have
            self.get_logger().error(f'policy cannot run: {exc}')
            return FAILURE
        self._latest_js: JointState | None = None
        self._latest_img: dict[str, Image] = {}
        # recent joint states and frames by stamp: a takeover step is recorded with the
        # observation the operator's command answered (its header stamp), not a newer one
        self._recent_js: collections.OrderedDict[int, JointState] = collections.OrderedDict()
        self._recent_img: dict[str, collections.OrderedDict[int, Image]] = {}
        self._latest_teleop: tuple[float, np.ndarray] | None = None
        self._max_age_ns = int(float(self.get_parameter('max_observation_age_s').value) * 1e9)
        self._stale_observations = 0
        self._driver_state: DriverState | None = None
        # the deploy in force at start: 'pending' until known and loaded, 'done', 'failed'
        self._sync, self._sync_reason = 'pending', ''
        self._sync_record: DeployRecord | None = None
        self._sync_thread: threading.Thread | None = None
        self._tick_count = 0
        self._last_action: np.ndarray | None = None
        sensors = ReentrantCallbackGroup()
        self._control = MutuallyExclusiveCallbackGroup()
        self._subs = [
            self.create_subscription(JointState, 'joint_states', self._on_js, qos.JOINT_STATE,
                                     callback_group=sensors),
            *[self._camera_subscription(c, sensors) for c in self._cameras],
            self.create_subscription(JointState, 'teleop/command', self._on_teleop, qos.COMMAND,
                                     callback_group=sensors),
            self.create_subscription(OperatorSignal, 'operator/signal', self._on_signal,
                                     qos.EVENTS, callback_group=self._control),
            self.create_subscription(CheckpointInfo, 'scheduler/checkpoint', self._on_checkpoint,
                                     qos.LATCHED, callback_group=sensors),
            self.create_subscription(DriverState, 'driver/state', self._on_driver_state,
                                     qos.STATE, callback_group=self._control),
        ]
        self._pub_cmd = self.create_publisher(JointState, 'joint_command', qos.COMMAND)
        self._pub_state = self.create_publisher(ActorState, 'actor/state', qos.STATE)
        self._pub_viz = self.create_publisher(Marker, 'viz/actor_state', qos.STATE)
        self._pub_step = self.create_publisher(ActorStep, 'actor/step', qos.STEPS)
        self._reset_client = self.create_client(Trigger, 'driver/reset_pose',
                                                callback_group=ReentrantCallbackGroup())
        self._chunk_client = self.create_client(GetCheckpointChunk, 'scheduler/get_checkpoint')
        self._fetch_thread: threading.Thread | None = None
        # (policy, deploy record) fetched + verified, swapped in at the next boundary
        self._ready: tuple[object, DeployRecord, str] | None = None
        self._progress = ProgressReporter(self)   # lockstep clock (inert on wall time)
        self._progress_due: int | None = None     # a tick's report waiting for the inference
        if self._progress.enabled:
            self._controller.inference.on_idle = self._inference_idle
        try:
            trusted = f'{len(self._trust.keys())} trusted key(s) in {self._trust.path}'
        except KeyStoreError as exc:   # every deploy is refused until it is fixed
            trusted = f'the key files cannot be used: {exc}'
        self.get_logger().info(
            f'configured: policy={self._policy_name} v{self._model_version} '
            f'chunk={self._policy.chunk_size} cameras={list(self._cameras)}; {trusted}')
        return SUCCESS

    def _load_initial_policy(self) -> None:
        path = str(self.get_parameter('checkpoint').value)
        if path:
            policy, verified = load_verified_checkpoint(path, trust=self._trust,
                                                        robot=self._robot.hash)
            self._check_fits(policy, f'checkpoint {path}')
            self._set_policy(policy, int(verified.header.version), verified.key_id or '')
        else:
            name = str(self.get_parameter('policy').value)
            n = self._robot.num_joints
            config = {'state_dim': n, 'action_dim': n}
            if 'cameras' in get_policy_class(name).config_cls.__dataclass_fields__:
                config['cameras'] = list(self._cameras)
            self._set_policy(make_policy(name, config,
                                         seed=int(self.get_parameter('seed').value)), 0)

    def _check_fits(self, policy, what: str) -> None:
        """Refuse a policy made for another robot (joint count, cameras)."""
        cfg = policy.config
        n = self._robot.num_joints
        if cfg.action_dim != n or cfg.state_dim != n:
            raise CheckpointRejected(
                f'{what} is for a {cfg.state_dim}-joint state / {cfg.action_dim}-joint action; '
                f'robot {self._robot.name!r} has {n} joints')
        missing = [c for c in getattr(cfg, 'cameras', ()) if c not in self._cameras]
        if missing:
            raise CheckpointRejected(f'{what} needs cameras {missing}; robot '
                                     f'{self._robot.name!r} has {list(self._cameras)}')

    def _set_policy(self, policy, version: int, key_id: str = '') -> None:
        policy.eval()
        self._policy = policy
        self._policy_name = policy.name
        self._model_version = version
        self._model_key = key_id   # who signed it ('' for the configured untrained policy)
        if self._controller is not None:
            self._controller.set_policy_fn(policy)

    def on_activate(self, state):
        self._timer = self.create_timer(self._dt, self._tick, callback_group=self._control)
        self._progress.done_now()   # joined: the clock waits for this node's ticks from now on
        # a lambda: rclpy hands a TimerInfo to a timer callback that takes an argument
        self._state_timer = self.create_timer(1.0, lambda: self._publish_state(),
                                              callback_group=self._control)
        self._publish_state()
        self._start_reset(after=Event.RESET_DONE)
        self._start_sync()
        return super().on_activate(state)

    def on_deactivate(self, state):
        self._stop_timers()
        return super().on_deactivate(state)

    def on_cleanup(self, state):
        self.safe_stop()
        return SUCCESS

    def safe_stop(self) -> None:
        self._stop_timers()
        if self._controller is not None:
            self._controller.close(timeout=1.0)
            self._controller = None

    def _stop_timers(self) -> None:
        for timer in (self._timer, self._state_timer):
            if timer is not None:
                self.destroy_timer(timer)
        self._timer = self._state_timer = None

    # -- inputs ----------------------------------------------------------------------------
    def _warn(self, key: str, text: str, period: float = 2.0) -> None:
        now = time.monotonic()   # wall: a log rate limit
        if now - self._warned_at.get(key, -1e9) >= period:
            self._warned_at[key] = now
            self.get_logger().warning(text)

    def _on_js(self, msg: JointState) -> None:
        try:
            msg_to_positions(msg, self._joints)
        except MessageError as exc:
            self._warn('bad_js', f'joint_states dropped: {exc}')
            return
        self._latest_js = msg
        self._remember(self._recent_js, msg)

    def _camera_subscription(self, camera: str, group):
        """The camera's topic as the robot description says: raw ``sensor_msgs/Image`` in any
        of the supported encodings or ``CompressedImage`` (jpeg/png), newest frame only."""
        spec = self._robot.camera_spec(camera)
        return self.create_subscription(
            CompressedImage if spec.compressed else Image, spec.topic_name,
            lambda m, c=camera: self._on_image(c, m), qos.camera_qos(spec.qos, depth=1),
            callback_group=group)

    def _frame(self, camera: str, msg) -> np.ndarray:
        """The frame the policy sees: decoded and brought to the description's size (the
        simulator's frames are already at the size the run was configured for)."""
        return policy_frame(msg, self._specs[camera])

    def _on_image(self, camera: str, msg) -> None:
        try:
            self._frame(camera, msg)
        except (MessageError, CameraError) as exc:
            self._warn(f'bad_img:{camera}', f'camera {camera} frame dropped: {exc}')
            return
        self._latest_img[camera] = msg
        self._remember(self._recent_img.setdefault(camera, collections.OrderedDict()), msg)

    @staticmethod
    def _remember(recent: collections.OrderedDict, msg, keep: int = RECENT_OBSERVATIONS) -> None:
        recent[stamp_to_ns(msg.header.stamp)] = msg
        while len(recent) > keep:
            recent.popitem(last=False)

    def _on_teleop(self, msg: JointState) -> None:
        try:
            self._latest_teleop = (now_ns(self), msg_to_positions(msg, self._joints),
                                   stamp_to_ns(msg.header.stamp))
        except MessageError as exc:
            self._warn('bad_teleop', f'teleop/command dropped: {exc}')

    def _on_checkpoint(self, msg: CheckpointInfo) -> None:
        if not msg.approved:
            return
        try:
            record = open_deploy_token(msg.uri, self._trust, ecu=self._ecu,
                                       robot=self._robot.hash)
            if (record.version, record.sha256) != (int(msg.version), msg.sha256):
                raise DeployRefused(f'the signed record says v{record.version}, the '
                                    f'announcement v{msg.version}')
        except (CheckpointRejected, DeployRefused, KeyStoreError) as exc:
            self._warn(f'deploy_refused:{msg.version}', f'deploy announcement of '
                       f'v{msg.version} refused, keeping v{self._model_version}: {exc}', 10.0)
            return
        if record.version > 0:
            self._offer(record)

    def _offer(self, record: DeployRecord) -> None:
        """Fetch the checkpoint of a verified deploy record if it is newer than what runs."""
        with self._lock:
            applied = self._follower.applied
            if record.sha256 and record.sha256 == self._model_sha and (
                    applied is None or record.generation >= applied.generation):
                self._follower.applied_now(record)   # that checkpoint is already running
                self._sync_check()
                return
            accepted = self._follower.offer(record)
            self._sync_check()
            if not accepted:
                return   # stale: an older or repeated deploy decision
        self.get_logger().info(
            f'checkpoint v{record.version} deployed ({record.reason}, generation '
            f'{record.generation}): fetching it; it loads at the next episode boundary')
        if self._fetch_thread is None or not self._fetch_thread.is_alive():
            self._fetch_thread = threading.Thread(target=self._fetch_loop, name='fetch',
                                                  daemon=True)
            self._fetch_thread.start()

    # -- the deploy in force at start (worker thread; the executor keeps spinning) ----------
    def _start_sync(self) -> None:
        with self._lock:
            if self._sync_thread is not None and self._sync_thread.is_alive():
                return
            self._sync, self._sync_reason, self._sync_record = 'pending', '', None
            self._sync_thread = threading.Thread(target=self._sync_deploy, name='deploy-sync',
                                                 daemon=True)
            self._sync_thread.start()

    def _sync_check(self) -> None:
        """The start-up sync is done once a deploy at least as new as the one the scheduler
        named runs (called with the lock held)."""
        applied, record = self._follower.applied, self._sync_record
        if self._sync == 'pending' and record is not None and applied is not None \
                and applied.generation >= record.generation:
            self._sync = 'done'

    def _sync_failed(self, reason: str) -> None:
        with self._lock:
            self._sync, self._sync_reason = 'failed', reason
        self.get_logger().error(f'the deployed checkpoint cannot be run: {reason}; START is '
                                'refused until it can')

    def _sync_deploy(self) -> None:
        client = self._chunk_client
        if not client.wait_for_service(timeout_sec=self._deploy_wait):
            with self._lock:
                self._sync = 'done'
            self.get_logger().warning(
                f'no {client.srv_name} within {self._deploy_wait:g} s: nothing is known to be '
                f'deployed, running the configured policy v{self._model_version}')
            return
        try:
            reply = request_checkpoint_chunk(client, 0, 0, 1, CHUNK_CALL_TIMEOUT_S)
            if not reply.ok:
                raise DeployRefused(f'the scheduler did not say what is deployed: {reply.error}')
            record = open_deploy_token(reply.data.decode(errors='replace'), self._trust,
                                       ecu=self._ecu, robot=self._robot.hash)
        except (TransferError, CheckpointRejected, DeployRefused, KeyStoreError) as exc:
            self._sync_failed(str(exc))
            return
        if record.version == 0:
            with self._lock:
                self._sync = 'done'
            self.get_logger().info(f'nothing deployed yet: running the configured policy '
                                   f'v{self._model_version}')
            return
        with self._lock:
            self._sync_record = record
        self._offer(record)

    def _start_refused(self) -> str:
        """Why START must wait ('' = it may start): the deploy in force is not loaded yet, or
        the running checkpoint's key was revoked since it was loaded."""
        key = self._model_key
        if key:
            try:
                revoked = self._trust.is_revoked(key)
            except KeyStoreError as exc:
                return f'the revocation list cannot be read: {exc}'
            if revoked:
                return (f'the running checkpoint v{self._model_version} is signed by key {key}, '
                        'which has been revoked: deploy a checkpoint signed by a trusted key '
                        '(scarls deploy, or the learner\'s next one) and START again')
        with self._lock:
            sync, record, reason = self._sync, self._sync_record, self._sync_reason
        if sync == 'done':
            return ''
        if sync == 'failed':
            self._start_sync()   # try again: the next START may find it fixed
            return (f'the deployed checkpoint could not be loaded ({reason}); the robot runs '
                    'no other policy in its place - fix the deploy (scarls deploy, the trust '
                    'list) and START again')
        if record is None:
            return (f'waiting (up to {self._deploy_wait:g} s) for the scheduler to say which '
                    'checkpoint is deployed')
        return (f'the deployed checkpoint v{record.version} (generation {record.generation}) '
                'is still being fetched and verified')

    # -- checkpoint fetch (worker thread; the executor keeps spinning) ----------------------
    def _request_chunk(self, version: int, offset: int, length: int) -> ChunkReply:
        return request_checkpoint_chunk(self._chunk_client, version, offset, length,
                                        CHUNK_CALL_TIMEOUT_S)

    def _fetch_loop(self) -> None:
        while True:
            with self._lock:
                record = self._follower.pending
                ready = self._ready
            if record is None or (ready is not None and ready[1].generation >= record.generation):
                return
            t0 = time.monotonic()   # wall: the transfer's duration, for the log
            try:
                data = ChunkFetcher(self._request_chunk, record.version,
                                    expected_sha256=record.sha256 or None,
                                    max_bytes=MAX_CHECKPOINT_BYTES).fetch()
                policy, verified = load_verified_checkpoint(
                    data, expected_sha256=record.sha256 or None, trust=self._trust,
                    robot=self._robot.hash, expected_version=record.version)
                self._check_fits(policy, f'checkpoint v{record.version}')
            except (TransferError, CheckpointRejected, ValueError, KeyStoreError) as exc:
                self.get_logger().error(f'checkpoint v{record.version} refused, keeping '
                                        f'v{self._model_version}: {exc}')
                with self._lock:
                    self._follower.failed(record)
                    failed_sync = self._sync_record is not None and \
                        self._sync_record.generation == record.generation
                if failed_sync:
                    self._sync_failed(f'checkpoint v{record.version}: {exc}')
                continue
            policy.eval()
            with self._lock:
                self._ready = (policy, record, verified.key_id or '')
            self.get_logger().info(
                f'checkpoint v{record.version} fetched, signature and content verified '
                f'({len(data) / 1e6:.1f} MB in {time.monotonic() - t0:.2f} s)')

    def _on_signal(self, msg: OperatorSignal) -> None:
        event = SIGNAL_EVENTS.get(msg.signal)
        if event is None:
            self._warn('bad_signal', f'unknown operator signal {msg.signal} from {msg.source!r}')
            return
        reason = f'{msg.source}: {msg.reason}' if msg.reason else msg.source
        driver = self._driver_state
        if event is Event.START and driver is not None and driver.state in UNSAFE_DRIVER:
            self._warn('start_refused', f'START ignored: the driver is {driver.state} '
                       f'({driver.reason}); release the e-stop / clear the fault first')
            return
        if event is Event.START and self.fsm.phase is Phase.IDLE:
            with self._lock:
                self._maybe_reload()   # fetched while idle: it runs from this episode on
            refused = self._start_refused()
            if refused:
                self._warn('start_deploy', f'START refused: {refused}')
                return
        self._handle(event, reason)

    def _on_driver_state(self, msg: DriverState) -> None:
        """The driver's safety state: an e-stop or a robot fault ends a running episode
        (ABORTED: its steps were not executed) and keeps the next one from starting."""
        self._driver_state = msg
        if msg.state in UNSAFE_DRIVER and is_episode_active(self.fsm.phase):
            self._handle(Event.STOP, f'driver {msg.state}: {msg.reason}')

    # -- FSM -------------------------------------------------------------------------------
    def _handle(self, event: Event, reason: str) -> None:
        with self._lock:
            transition = self.fsm.try_handle(event, reason)
            if transition is None:
                self.get_logger().warning(
                    f'illegal event {event.name} in {self.fsm.phase.name} ignored ({reason})')
                return
            self.get_logger().info(
                f'{transition.prev.name} -> {transition.next.name} ({event.name}: {reason})')
            if event is Event.START:
                self._controller.reset()
            self._publish_state(transition)
            if is_terminal(transition.next):
                self._close_episode()

    def _close_episode(self) -> None:
        stats = self.fsm.episode
        self.get_logger().info(
            f'episode {stats.episode_id} ended {self.fsm.phase.name}: {stats.steps} steps, '
            f'{stats.intervention_steps} under human control, model v{self._model_version}')
        self._publish_hold()
        self._maybe_reload()
        self._start_reset(after=Event.EPISODE_CLOSED)

    def _maybe_reload(self) -> None:
        """Swap in a fetched, verified checkpoint: only between episodes (called with the
        lock held)."""
        ready, self._ready = self._ready, None
        if ready is None:
            pending = self._follower.pending
            if pending is not None and is_terminal(self.fsm.phase):
                self.get_logger().info(f'checkpoint v{pending.version} is still being fetched: '
                                       'it loads at a later boundary')
            return
        policy, record, key = ready
        applied = self._follower.applied
        if applied is not None and record.generation <= applied.generation:
            return
        previous = self._model_version
        self._set_policy(policy, record.version, key)
        self._model_sha = record.sha256
        self._follower.applied_now(record)
        self._sync_check()
        self.get_logger().info(
            f'reloaded checkpoint v{record.version} between episodes ({record.reason}, deploy '
            f'generation {record.generation}; was v{previous})')

    def _start_reset(self, after: Event, attempt: int = 1) -> None:
        """Ask the driver to reset the pose; `after` fires when it is done (never blocks)."""
        if not self._reset_client.service_is_ready():
            self._warn('reset_wait', 'waiting for driver/reset_pose ...')
            self._retry_later(lambda: self._start_reset(after, attempt), 0.2)
            return
        future = self._reset_client.call_async(Trigger.Request())
        deadline = time.monotonic() + RESET_TIMEOUT_S   # wall: guards a service call

        def check() -> None:
            if future.done():
                result = future.result()
                if result is not None and result.success:
                    self._handle(after, 'pose reset')
                    return
                why = result.message if result is not None else 'no response'
                self.get_logger().error(f'reset pose failed ({why}), attempt {attempt}')
            elif time.monotonic() < deadline:
                self._retry_later(check, 0.05)
                return
            else:
                self.get_logger().error(f'reset pose timed out after {RESET_TIMEOUT_S:.0f} s')
            self._retry_later(lambda: self._start_reset(after, attempt + 1), 1.0)

        self._retry_later(check, 0.05)

    def _retry_later(self, fn, delay: float) -> None:
        holder = {}

        def once() -> None:
            self.destroy_timer(holder['t'])
            fn()

        holder['t'] = self.create_timer(delay, once, callback_group=self._control)

    # -- control tick ----------------------------------------------------------------------
    def _stale(self, js, images) -> str:
        """Why the observation is too old to act on ('' when it is fresh enough)."""
        if self._max_age_ns <= 0:
            return ''
        now = self.get_clock().now().nanoseconds
        ages = {'joint_states': now - stamp_to_ns(js.header.stamp)}
        ages.update({f'camera {c}': now - stamp_to_ns(images[c].header.stamp)
                     for c in self._cameras})
        old = {k: v for k, v in ages.items() if v > self._max_age_ns}
        return ', '.join(f'{k} {v * 1e-9:.3f} s old' for k, v in old.items())

    def _observation(self):
        js = self._latest_js
        images = dict(self._latest_img)
        if js is None or any(c not in images for c in self._cameras):
            return None
        stale = self._stale(js, images)
        if stale:
            return stale
        q = msg_to_positions(js, self._joints)
        try:
            frames = {c: self._frame(c, images[c]) for c in self._cameras}
        except (MessageError, CameraError) as exc:
            return f'frame not decodable: {exc}'
        obs = Observation(images=frames, state=q.astype(np.float32))
        return js, images, q, obs

    def _answered_observation(self, stamp_ns: int):
        """The joint state and frames stamped ``stamp_ns`` if they are still remembered (the
        scripted operator stamps its command with the state it answered; other operators stamp
        with the current time, which matches nothing: the latest observation is recorded)."""
        js = self._recent_js.get(stamp_ns)
        if js is None:
            return None
        images = {}
        for c in self._cameras:
            recent = self._recent_img.get(c, {})
            img = recent.get(stamp_ns)
            if img is None and recent:   # a camera stamped on its own: the nearest frame
                near = min(recent, key=lambda t: abs(t - stamp_ns))
                if abs(near - stamp_ns) <= max(self._max_age_ns, 0):
                    img = recent[near]
            if img is None:
                return None
            images[c] = img
        return js, images, msg_to_positions(js, self._joints)

    def _tick(self) -> None:
        self._tick_meter.tick(time.monotonic())
        try:
            self._control_tick()
        finally:
            self._report_tick()

    def _report_tick(self) -> None:
        """Lockstep: this tick is done once no policy inference is in flight (else the
        inference's end reports it, :meth:`_inference_idle`)."""
        if not self._progress.enabled:
            return
        now = now_ns(self)
        controller = self._controller
        with self._lock:
            if controller is not None and controller.inference.pending:
                self._progress_due = now
                return
            self._progress_due = None
        self._progress.done(now)

    def _inference_idle(self) -> None:
        with self._lock:
            controller = self._controller
            if controller is not None and controller.inference.pending:
                return   # another request went in meanwhile: its end reports
            due, self._progress_due = self._progress_due, None
        if due is not None:
            self._progress.done(due)

    def _control_tick(self) -> None:
        with self._lock:
            phase = self.fsm.phase
            if not is_episode_active(phase):
                return
            got = self._observation()
            if got is None:
                self._warn('no_obs', 'no complete observation yet (joint_states + cameras)')
                return
            if isinstance(got, str):   # too old to act on: no command, the driver holds
                self._stale_observations += 1
                self._warn('stale_obs', f'observation too old, holding (tick skipped, '
                           f'{self._stale_observations} so far): {got}')
                return
            js, images, q, obs = got
            self._tick_count += 1
            human = phase is Phase.HUMANINTERVENTION
            if human:
                teleop = self._latest_teleop
                if teleop is None or (now_ns(self) - teleop[0]) * 1e-9 > TELEOP_STALE_S:
                    self._warn('stale_teleop', 'no fresh teleop command: holding')
                    action = q
                else:
                    action = teleop[1]
                    answered = self._answered_observation(teleop[2])
                    if answered is not None:
                        js, images, q = answered
            else:
                try:
                    action = self._controller.tick(obs, self._tick_count)
                except PolicyInferenceError as exc:
                    self._warn('policy_error', f'policy failed, holding: {exc}')
                    action = None
                if action is None:
                    action = self._last_action if self._last_action is not None else q
            action = np.asarray(action, dtype=np.float64)
            self._last_action = action
            stats = self.fsm.record_step()
            stamp = self.get_clock().now().to_msg()
            self._pub_cmd.publish(joint_state_to_msg(self._joints, action, stamp))
            step = ActorStep()
            step.header.stamp = stamp
            step.episode_id = stats.episode_id
            step.step = stats.steps - 1
            step.joint_state_stamp = js.header.stamp
            step.image_names = list(self._cameras)
            step.image_stamps = [images[c].header.stamp for c in self._cameras]
            step.observation_state = q.astype(np.float32).tolist()
            step.action = action.astype(np.float32).tolist()
            step.is_intervention = human
            step.model_version = self._model_version
            self._pub_step.publish(step)

    def _diagnostic_status(self) -> Status:
        stats, now, driver = self.fsm.episode, time.monotonic(), self._driver_state
        stale = self._stale_observations
        stale_new, self._stale_reported = stale - self._stale_reported, stale
        return actor_status(
            phase=self.fsm.phase.name, episode_id=stats.episode_id, steps=stats.steps,
            intervention_steps=stats.intervention_steps, model_version=self._model_version,
            policy=self._policy_name, in_episode=is_episode_active(self.fsm.phase),
            tick_rate_hz=self._tick_meter.rate(now),
            max_tick_gap_s=self._tick_meter.max_interval(now), expected_hz=1.0 / self._dt,
            ticks=self._tick_count, stale_observations=stale, stale_in_window=stale_new,
            sync=self._sync, sync_reason=self._sync_reason,
            driver_state=driver.state if driver is not None else '')

    def _publish_hold(self) -> None:
        js = self._latest_js
        if js is not None:
            self._pub_cmd.publish(joint_state_to_msg(
                self._joints, msg_to_positions(js, self._joints), self.get_clock().now().to_msg()))
        self._last_action = None

    def _publish_state(self, transition=None) -> None:
        stats = self.fsm.episode
        msg = ActorState()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.phase = self.fsm.phase.name
        if transition is not None:
            msg.previous_phase = transition.prev.name
            msg.event = transition.event.name
            msg.reason = transition.reason
        msg.episode_id = stats.episode_id
        msg.steps = stats.steps
        msg.intervention_steps = stats.intervention_steps
        msg.model_version = self._model_version
        msg.intervening = self.fsm.phase is Phase.HUMANINTERVENTION
        msg.stale_observations = getattr(self, '_stale_observations', 0)
        self._pub_state.publish(msg)
        self._pub_viz.publish(actor_state_marker(msg))


def main(args=None) -> int:
    return run_node(ActorNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
