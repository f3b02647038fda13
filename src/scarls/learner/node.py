"""learner: online post-training of the ECU's policy (lifecycle node), Algorithm 2's Model-Learner.

On activation it loads the offline demonstrations, trains the first checkpoint from them
(unless the registry already holds an approved one, which it resumes from) and then waits for
the scheduler's triggers (~/train). Each triggered round runs on its own thread - rollouts never
wait for training: load the episodes that appeared on disk, train `steps_per_round` steps on the
online/offline mix, evaluate open-loop on held-out demonstrations, gate (threshold, not worse
than deployed) and publish the candidate to the checkpoint registry and on learner/checkpoint
(approved or not, for lineage). The scheduler deploys the approved ones.

Every checkpoint it writes is signed (Ed25519, scarls.checkpoints.signing) with the ECU's
learner key, `<key_dir>/learner-<ecu_id>.key` (created and trusted in the key directory's trust
list on first start), for the robot description's hash; a resumed registry file that is not
signed by a trusted key is signed in place, except one signed by a revoked key (the learner then
starts from the demonstrations; a revoked signing key stops it from starting). A peer's
checkpoint (bootstrap_from) is adopted only if it is signed by a trusted key. Key parameters:
key_dir, trust_file, signing_key.

The deploy guard (docs/GATE.md): the learner follows the scheduler's deploy records
(scheduler/checkpoint, verified against the trust list); a `guard rollback from vN` makes it
revoke vN and the candidates trained from it in its registry, take the version rolled back to as
the deployed model its gate compares with, and train on from that version's weights (applied
between rounds, on the training thread).

Topics: out learner/checkpoint (scarls_interfaces/CheckpointInfo, reliable, transient local);
learner/status and /fleet/learners (LearnerStatus: 1 Hz and on every change of state, also
while unconfigured, so a failed configuration is visible - state 'failed', detail = why);
fleet mode: learner/fleet_round and /fleet/rounds (FleetRound, one per round).
Services: ~/train (std_srvs/Trigger: queues one round; during a round, the next one).
Parameters: data_root, task, offline_root, checkpoint_dir, policy, policy_config (JSON),
algorithm, steps_per_round, pretrain_steps, batch_size, lr, ema_decay, threshold, heldout_demos,
replay_gate, gate_metric, gate_scenes, bootstrap_from, keep_checkpoints, fleet, fleet_deadline_s,
fleet_addr, fleet_port, fleet_rank, fleet_world_size, fleet_key_file, seed, autostart;
train_steps_per_s (compute-fair training budget under use_sim_time, 0 = off).

Clocks: stamps and the ingestion latency (episode end -> trainable) are ROS time (simulated time
under use_sim_time). With `train_steps_per_s` > 0 under use_sim_time a round trains exactly that
many steps per simulated second: the training thread waits when it is ahead, and it reports on
/sim/progress how far it got, so the lockstep clock waits while it is behind (scarls.ros.simtime
BudgetGate; only the training steps are budgeted: loading, evaluation and the all-reduce take
the wall time they take). Wall time guards our own processes: the status heartbeat, the wait for
a peer's checkpoint, round durations in the log.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from pathlib import Path

import torch
from rclpy.lifecycle import LifecycleNode
from scarls_interfaces.msg import CheckpointInfo, FleetRound, LearnerStatus
from scarls_interfaces.srv import GetCheckpointChunk
from std_srvs.srv import Trigger

from scarls.checkpoints import CheckpointRejected, load_checkpoint
from scarls.checkpoints.deploy import DeployRefused, open_deploy_token
from scarls.checkpoints.format import RevokedKey, SignatureRejected, verify_checkpoint
from scarls.checkpoints.registry import CheckpointRegistry, RegistryError
from scarls.checkpoints.signing import (
    TRUST_FILE,
    TrustList,
    node_signer,
    resolve_key_dir,
)
from scarls.checkpoints.transfer import ChunkFetcher, ChunkReply, TransferError
from scarls.diagnostics import Status
from scarls.diagnostics.rules import learner_status
from scarls.learner.config import LearnerError, MixingConfig, TrainerConfig
from scarls.learner.online import (
    DEMOS_METRIC,
    METRIC,
    LearnerStopped,
    OnlineConfig,
    OnlineLearner,
    RoundResult,
    policy_config_for,
)
from scarls.policies import make_policy
from scarls.robot import DEFAULT_ROBOT, load_robot
from scarls.ros import qos
from scarls.ros.diagnostics import NodeDiagnostics
from scarls.ros.node_utils import (
    FAILURE,
    SUCCESS,
    declare,
    request_checkpoint_chunk,
    run_node,
)
from scarls.ros.simtime import BudgetGate, ProgressReporter, now_s, uses_sim_time, wall_clock

PEER_WAIT_S = 60.0      # wait this long for the peer's deployed checkpoint to be announced
PEER_TIMEOUT_S = 10.0   # per chunk request to the peer
LEARNERS_TOPIC = '/fleet/learners'   # global: every ECU's learner status
STATUS_PERIOD_S = 1.0

GUARD_ROLLBACK = re.compile(r'^guard rollback from v(\d+)$')   # scheduler's deploy reason

DEFAULT_POLICY_CONFIG = json.dumps({'cameras': ['top'], 'channels': [8],
                                    'keypoints': 8, 'chunk_size': 10, 'hidden_dim': 256})


class LearnerNode(LifecycleNode):
    def __init__(self) -> None:
        super().__init__('learner')
        declare(self, 'ecu_id', 'ecu0', 'ECU id', read_only=True)
        declare(self, 'task', 'pick_cube', 'Task to learn', read_only=True)
        declare(self, 'data_root', 'data', 'Root of the online Zarr episodes', read_only=True)
        declare(self, 'offline_root', '', 'Root of the offline demonstrations '
                '(default <data_root>/offline)', read_only=True)
        declare(self, 'checkpoint_dir', '', 'Checkpoint registry (default '
                '<data_root>/checkpoints/<task>)', read_only=True)
        declare(self, 'robot', DEFAULT_ROBOT,
                'Robot description: a built-in name (config/robots) or a YAML file',
                read_only=True)
        declare(self, 'policy', 'spatial', 'Registered policy to train', read_only=True)
        declare(self, 'policy_config', DEFAULT_POLICY_CONFIG, 'Policy config as JSON')
        declare(self, 'algorithm', 'hg_dagger', 'hg_dagger | bc')
        declare(self, 'steps_per_round', 500, 'Training steps per triggered round')
        declare(self, 'pretrain_steps', 1000, 'Steps on the demonstrations before v1')
        declare(self, 'batch_size', 32, 'Training batch size')
        declare(self, 'lr', 3e-3, 'AdamW learning rate')
        declare(self, 'ema_decay', 0.99, 'Decay of the weight average that is evaluated and '
                'deployed (0 = deploy the trained weights)')
        declare(self, 'threshold', 0.05, 'Gate: highest open-loop error that may deploy')
        declare(self, 'heldout_demos', 2, 'Demonstrations kept for open-loop evaluation')
        declare(self, 'replay_gate', False, 'Extra gate before a deploy: refuse a candidate '
                'that regresses against the deployed model on a phase or joint group of the '
                'held-out episodes (replay regression check)')
        declare(self, 'gate_metric', 'open_loop', "What the gate compares with the deployed "
                "model: 'open_loop' (error on held-out episodes) or 'closed_loop' (simulated "
                'robots only: the candidate alone on gate_scenes held-out scenes, mean task '
                'progress; docs/GATE.md)')
        declare(self, 'gate_scenes', 10, 'Scenes of the closed-loop gate')
        declare(self, 'fleet', False, 'Take part in the fleet all-reduce (rendezvous from '
                'MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)', read_only=True)
        declare(self, 'fleet_deadline_s', 30.0, 'Longest wait for the other ECUs in a fleet '
                'round', read_only=True)
        declare(self, 'fleet_addr', '', 'Rendezvous host (default: MASTER_ADDR)', read_only=True)
        declare(self, 'fleet_port', 0, 'Rendezvous port (default: MASTER_PORT)', read_only=True)
        declare(self, 'fleet_rank', -1, 'This ECU in the fleet (default: RANK)', read_only=True)
        declare(self, 'fleet_world_size', 0, 'ECUs in the fleet (default: WORLD_SIZE)',
                read_only=True)
        declare(self, 'fleet_key_file', '', "File with the fleet's shared key (hex; default: "
                'SCARLS_FLEET_KEY_FILE, else SCARLS_FLEET_KEY): every record exchanged through '
                'the rendezvous store is authenticated with it; required for a fleet of more '
                'than one ECU', read_only=True)
        declare(self, 'bootstrap_from', '', 'Peer ECU id: with no checkpoint of its own, start '
                'from the checkpoint that peer deploys (fetched over its scheduler/'
                'get_checkpoint service, sha256-verified) instead of pre-training',
                read_only=True)
        declare(self, 'keep_checkpoints', 5, 'Newest checkpoints whose weights the registry '
                'keeps (plus the best and the deployed one)', read_only=True)
        declare(self, 'seed', 0, 'Seed of the policy initialisation and sampling')
        declare(self, 'device', 'auto', "Where to train: 'auto' (CUDA when available, else "
                "CPU), 'cpu', 'cuda', 'cuda:N' or 'mps'", read_only=True)
        declare(self, 'precision', 'auto', "Mixed precision of training: 'auto' (CUDA: bf16 "
                "when supported, else fp16 with loss scaling; CPU/MPS: fp32), 'fp32', 'bf16', "
                "'fp16'", read_only=True)
        declare(self, 'key_dir', '', 'Key directory (default $SCARLS_KEY_DIR, else '
                '<data_root>/keys)', read_only=True)
        declare(self, 'trust_file', '', "Trust list of a peer's checkpoints (bootstrap_from; "
                'default <key_dir>/trusted_keys)', read_only=True)
        declare(self, 'signing_key', '', 'Key that signs every checkpoint published (default '
                '<key_dir>/learner-<ecu_id>.key; created and trusted if missing)',
                read_only=True)
        declare(self, 'train_steps_per_s', 0.0, 'Compute-fair mode (use_sim_time only): '
                'training steps per simulated second of a round; the clock waits for them '
                '(0 = train as fast as the host allows)', read_only=True)
        declare(self, 'autostart', True, 'Configure and activate at start')
        self._thread: threading.Thread | None = None
        self._gate: BudgetGate | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._busy = threading.Lock()
        self._rollback: tuple[int, int, str] | None = None   # (to, rejected, to's sha256)
        self._learner: OnlineLearner | None = None
        self._stream = 0      # this learner's draws after pre-training (its fleet rank)
        self._last: RoundResult | None = None
        self._state, self._detail = 'starting', ''
        # plain publishers (not lifecycle ones): the status is visible in every lifecycle state
        self._pub_status = self.create_publisher(LearnerStatus, 'learner/status', qos.EVENTS)
        self._pub_learners = self.create_publisher(LearnerStatus, LEARNERS_TOPIC, qos.EVENTS)
        self._status_sent = (None, 0.0)
        self.create_timer(0.2, self._status_tick, clock=wall_clock())   # wall: a heartbeat
        self._diagnostics = NodeDiagnostics(self, 'learner', self._diagnostic_status,
                                            any_state=True)

    def on_configure(self, state):
        p = lambda name: self.get_parameter(name).value  # noqa: E731
        torch.set_num_threads(1)
        self._task = str(p('task'))
        self._data_root = Path(str(p('data_root'))).expanduser().resolve()
        self._offline = Path(str(p('offline_root')) or self._data_root / 'offline')
        ckpt_dir = Path(str(p('checkpoint_dir')) or self._data_root / 'checkpoints' / self._task)
        try:
            keep = int(p('keep_checkpoints'))
            # "best" by the error on the held-out demonstrations: comparable across versions
            registry = CheckpointRegistry(ckpt_dir, keep_last=keep, keep_records=max(1000, keep),
                                          best_metric=DEMOS_METRIC)
            resume = registry.latest(approved_only=True)
            robot = load_robot(p('robot'))
            self._robot = robot
            resume = self._sign_registry(registry, robot, resume)
            if resume is not None:
                policy, _ = load_checkpoint(resume.path, expected_sha256=resume.sha256)
            else:
                policy = make_policy(str(p('policy')), policy_config_for(
                    json.loads(str(p('policy_config'))), robot, self._offline, self._task),
                    seed=int(p('seed')))
            if policy.config.action_dim != robot.num_joints:
                raise LearnerError(
                    f'the policy acts on {policy.config.action_dim} joints but robot '
                    f'{robot.name!r} has {robot.num_joints}: use another checkpoint_dir for '
                    'this robot')
            config = OnlineConfig(
                steps_per_round=int(p('steps_per_round')),
                pretrain_steps=int(p('pretrain_steps')), algorithm=str(p('algorithm')),
                threshold=float(p('threshold')), seed=int(p('seed')),
                replay_gate=bool(p('replay_gate')),
                gate_metric=str(p('gate_metric')), gate_scenes=int(p('gate_scenes')),
                trainer=TrainerConfig(lr=float(p('lr')), batch_size=int(p('batch_size')),
                                      ema_decay=float(p('ema_decay')),
                                      device=str(p('device')), precision=str(p('precision'))),
                mixing=MixingConfig())
            if config.gate_metric == 'closed_loop' and robot.backend != 'sim':
                raise LearnerError(f"gate_metric 'closed_loop' runs the candidate in the "
                                   f'simulator: robot {robot.name!r} is not simulated '
                                   f'(backend {robot.backend!r})')
            self._learner = OnlineLearner(policy, registry, config, robot=robot)
            n = self._learner.load_offline(self._offline, self._task,
                                           heldout=int(p('heldout_demos')))
            self._reducer = self._selector = None
            fleet_key = None
            if bool(p('fleet')):
                from scarls.fleet import FleetConfig, FleetKey, FleetReducer, Rendezvous
                from scarls.learner.selector import CheckpointSelector
                rendezvous = Rendezvous.from_env(
                    addr=str(p('fleet_addr')) or None, port=int(p('fleet_port')) or None,
                    rank=int(p('fleet_rank')) if int(p('fleet_rank')) >= 0 else None,
                    world_size=int(p('fleet_world_size')) or None)
                fleet_key = FleetKey.from_env(path=str(p('fleet_key_file')) or None)
                self._reducer = FleetReducer(
                    FleetConfig(threshold=float(p('threshold')),
                                deadline_s=float(p('fleet_deadline_s')),
                                robot=f'{robot.name}:{robot.hash}'),
                    str(p('ecu_id')), rendezvous=rendezvous, key=fleet_key)
                self._selector = CheckpointSelector(float(p('threshold')),
                                                    tolerance=config.tolerance)
            # the fleet's learners start from the same weights (the seed) and pre-train alike
            # (stream 0: their first average is a pre-trained model, not the average of four
            # that drifted apart - measured: 7 % alone against 28 %); from the first online
            # round each draws its own batches and training noise (its rank's stream):
            # identical draws on the same demonstrations would make N learners one
            self._stream = rendezvous.rank if self._reducer is not None else 0
            torch.manual_seed(self._learner.set_stream(0))
        except Exception as exc:  # config, registry, demos: say what is wrong, stay unconfigured
            self.get_logger().error(f'learner cannot start: {exc}')
            self._state, self._detail = 'failed', f'cannot start: {exc}'
            self._learner = None
            self._publish_status()
            return FAILURE
        if resume is not None:
            self._learner.resume(resume.version, resume.metrics.get(METRIC))
        self._resume = resume
        self._learner.clock = lambda: now_s(self)
        budget = float(p('train_steps_per_s'))
        if budget > 0 and uses_sim_time(self):
            progress = ProgressReporter(self)
            progress.idle()   # joined, holding nothing until a round starts
            self._gate = BudgetGate(self, budget, progress, self._learner.stop_event)
            self._learner.step_hook = self._budget_step
        self._pub = self.create_publisher(CheckpointInfo, 'learner/checkpoint', qos.STATE)
        self._pub_fleet = self.create_publisher(FleetRound, 'learner/fleet_round', qos.ROUNDS)
        # the same reports on one global topic: a fleet view sees every ECU's rounds
        self._pub_rounds = self.create_publisher(FleetRound, '/fleet/rounds', qos.ROUNDS)
        self._srv = self.create_service(Trigger, '~/train', self._on_train)
        self.create_subscription(CheckpointInfo, 'scheduler/checkpoint', self._on_deploy_record,
                                 qos.LATCHED)
        self._peer = str(p('bootstrap_from')).strip('/')
        self._peer_info: CheckpointInfo | None = None
        if self._peer and resume is None:
            self.create_subscription(CheckpointInfo, f'/{self._peer}/scheduler/checkpoint',
                                     self._on_peer_checkpoint, qos.LATCHED)
            self._peer_client = self.create_client(GetCheckpointChunk,
                                                   f'/{self._peer}/scheduler/get_checkpoint')
        self.get_logger().info(
            f'configured: {policy.name} policy, {self._learner.config.algorithm}, {n} '
            f'demonstrations from {self._offline}, registry {ckpt_dir}'
            + (f', fleet rank {self._reducer.rank} of {self._reducer.world_size}'
               + (f' (fleet key {fleet_key.key_id})' if fleet_key is not None else '')
               if self._reducer is not None else '')
            + (f' (resuming from v{resume.version})' if resume is not None else ''))
        return SUCCESS

    def _sign_registry(self, registry: CheckpointRegistry, robot, resume):
        """Give the registry the ECU's learner key (every file it writes is signed) and sign
        the resumed checkpoint in place if no trusted key signed it (e.g. an older scarls)."""
        p = lambda name: str(self.get_parameter(name).value)  # noqa: E731
        key_dir = resolve_key_dir(p('key_dir'), self._data_root)
        key = p('signing_key')
        self._trust = TrustList(p('trust_file') or key_dir / TRUST_FILE)
        registry.signer, untrusted = node_signer(self._trust, key_dir, key, p('ecu_id'))
        if untrusted:
            self.get_logger().warning(untrusted)
        registry.robot = robot.hash
        self._signer_id = registry.signer.key_id
        if resume is None:
            return None
        try:
            verify_checkpoint(resume.path, trust=self._trust, robot=robot.hash,
                              expected_sha256=resume.sha256)
        except SignatureRejected as exc:
            if isinstance(exc, RevokedKey) or self._trust.revoked():
                # never re-sign what a revoked key may have signed (or had its signature
                # stripped from): it may be what the key was revoked for
                self.get_logger().error(
                    f'not resuming from v{resume.version}: {exc}' + (
                        '' if isinstance(exc, RevokedKey) else
                        f' (a key is revoked in {self._trust.revoked_path}: nothing is '
                        're-signed automatically)') + '. Starting from the demonstrations; to '
                    'keep a checkpoint you have checked, stop the learner, run `scarls keys '
                    f'sign {resume.path}` and start it again')
                return None
            self.get_logger().warning(f'resumed checkpoint v{resume.version}: {exc}; signing '
                                      f'it with key {registry.signer.key_id}')
            resume = registry.resign(resume.version)
        return resume

    def on_activate(self, state):
        self._state, self._detail = 'idle', ''
        if self._learner is not None:
            self._learner.progress.state = 'idle'
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name='training', daemon=True)
        self._thread.start()
        return super().on_activate(state)

    def on_deactivate(self, state):
        self.safe_stop()
        return super().on_deactivate(state)

    def safe_stop(self) -> None:
        if self._state != 'failed':
            self._state = 'stopped'
        self._stop.set()
        if self._learner is not None:
            self._learner.stop_event.set()   # a running round stops at its next step
        if getattr(self, '_reducer', None) is not None:
            self._reducer.cancel()   # do not wait out a fleet round's deadline
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30.0)
            self._thread = None

    def _on_train(self, request, response):
        # one pending round at most: a trigger during a round runs the next round right after
        # it (refusing made the scheduler wait a whole train interval: the learner idled ~7 s
        # between rounds at the median in the fleet benchmark)
        running = self._busy.locked()
        self._wake.set()
        response.success = True
        response.message = 'queued after the running round' if running else 'round queued'
        return response

    def _announce(self, result: RoundResult) -> None:
        rec = result.record
        msg = CheckpointInfo()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.version = int(result.version)
        msg.parent = int(result.parent or 0)
        msg.policy = self._learner.policy.name
        msg.metric = float(result.metric)
        msg.approved = bool(result.approved)
        if rec is not None and rec.path is not None:
            msg.sha256, msg.size_bytes, msg.uri = rec.sha256, int(rec.size), str(rec.path)
        self._pub.publish(msg)

    # -- status ---------------------------------------------------------------------------
    def _current_state(self) -> tuple[str, str]:
        if self._learner is not None and self._state not in ('failed', 'stopped', 'starting'):
            return self._learner.progress.state, self._detail
        return self._state, self._detail

    def _status_tick(self) -> None:
        state, _ = self._current_state()
        last_state, last_t = self._status_sent
        # wall: a heartbeat for people and monitors
        if state != last_state or time.monotonic() - last_t >= STATUS_PERIOD_S:
            self._publish_status()

    def _diagnostic_status(self) -> Status:
        state, detail = self._current_state()
        learner, last = self._learner, self._last
        reducer, fleet = getattr(self, '_reducer', None), None
        if reducer is not None:
            f = getattr(last, 'fleet', None)
            fleet = {'rank': reducer.rank, 'world_size': reducer.world_size,
                     'round': f.round if f else 0, 'status': f.status if f else '',
                     'reason': f.reason if f else '',
                     'participants': tuple(f.participants) if f else ()}
        return learner_status(
            state=state, detail=detail, rounds=len(learner.rounds) if learner else 0,
            loss=learner.progress.loss if learner else math.nan,
            metric=float(last.metric) if last is not None else math.nan,
            version=int(last.version) if last is not None else 0,
            approved=bool(last.approved) if last is not None else False,
            deployed_version=int(learner.deployed_version or 0) if learner else 0, fleet=fleet)

    def _publish_status(self) -> None:
        state, detail = self._current_state()
        msg = LearnerStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.ecu_id = str(self.get_parameter('ecu_id').value)
        msg.state, msg.detail = state, detail
        learner = self._learner
        if learner is not None:
            progress = learner.progress
            msg.rounds = len(learner.rounds)
            msg.round_step, msg.round_steps = int(progress.round_step), int(progress.round_steps)
            msg.loss = progress.loss
            msg.samples_trained = int(progress.samples_trained)
            msg.online_episodes = int(learner.online_episodes)
            msg.offline_episodes = len(learner.episodes) - msg.online_episodes
            msg.deployed_version = int(learner.deployed_version or 0)
            msg.deployed_metric = float(learner.deployed_metric
                                        if learner.deployed_metric is not None else math.nan)
            ingested = progress.take_ingested()
            msg.ingested_episodes = [i for i, _ in ingested]
            msg.ingest_latency_s = [float(s) for _, s in ingested]
        else:
            msg.loss = msg.deployed_metric = math.nan
        last = self._last
        msg.metric = float(last.metric) if last is not None else math.nan
        if last is not None:
            msg.version, msg.approved = int(last.version), bool(last.approved)
        self._pub_status.publish(msg)
        self._pub_learners.publish(msg)
        self._status_sent = (state, time.monotonic())

    # -- the deploy guard's rollbacks --------------------------------------------------------
    def _on_deploy_record(self, msg: CheckpointInfo) -> None:
        try:
            record = open_deploy_token(msg.uri, self._trust,
                                       ecu=str(self.get_parameter('ecu_id').value),
                                       robot=self._robot.hash)
        except (DeployRefused, SignatureRejected, ValueError) as exc:
            self.get_logger().warning(f'deploy record of v{msg.version} ignored: {exc}')
            return
        m = GUARD_ROLLBACK.match(record.reason)
        if m is not None:
            self._rollback = (int(record.version), int(m.group(1)), record.sha256)

    def _follow_rollback(self) -> None:
        """Training thread, between rounds: apply the guard's rollback, if one came."""
        pending, self._rollback = self._rollback, None
        if pending is None:
            return
        to, bad, sha256 = pending
        try:
            revoked = self._learner.follow_rollback(to, bad, trust=self._trust,
                                                    robot=self._robot.hash,
                                                    expected_sha256=sha256)
        except (LearnerError, RegistryError, CheckpointRejected, OSError, KeyError) as exc:
            self.get_logger().error(f'cannot follow the rollback from v{bad} to v{to}: {exc}')
            return
        if revoked is not None:
            self.get_logger().warning(
                f'deploy guard rolled back from v{bad} to v{to}: revoked {revoked} in the '
                f'registry; the gate compares with v{to} and training goes on from its weights')

    def _round(self, steps: int, what: str) -> None:
        if self._trust.is_revoked(self._signer_id):
            raise LearnerError(f'the signing key {self._signer_id} was revoked in '
                               f'{self._trust.revoked_path} while this learner ran: it trains '
                               'no more until restarted with a new key (`scarls keys rotate`)')
        with self._busy:
            self._follow_rollback()
            added = self._learner.refresh_online(self._data_root, self._task)
            if self._learner.last_ingested:
                # exact per-episode ingestion latency (episode end -> loaded for training)
                self.get_logger().info('ingested: ' + ', '.join(
                    f'episode {i} after {sec:.2f} s' for i, sec in self._learner.last_ingested))
            t0 = time.monotonic()   # wall: the round's duration, for the log
            if self._gate is not None:
                self._gate.start()
            try:
                result = self._learner.train_round(steps, self._reducer, self._selector)
            finally:
                if self._gate is not None:
                    self._gate.finish()
            self._last, self._detail = result, ''
            if result.fleet is not None:
                self._announce_fleet(result)
            self.get_logger().info(
                f'{what}: v{result.version} open-loop error {result.metric:.4f} -> '
                f'{"APPROVED" if result.approved else "rejected"} ({result.reason}); '
                f'{steps} steps, loss {result.train_loss:.4f}, {time.monotonic() - t0:.1f} s, '
                f'+{added} new episodes ({result.online_episodes} online in use)')
            self._announce(result)

    def _budget_step(self) -> None:
        """After each training step: wait for the budget (the round's last step ends it:
        evaluation, the gate and the all-reduce hold no budget)."""
        progress = self._learner.progress
        if progress.round_step >= progress.round_steps:
            self._gate.finish()
        else:
            self._gate.after_step()

    # -- start from a peer's checkpoint (training thread; the executor keeps spinning) ------
    def _on_peer_checkpoint(self, msg: CheckpointInfo) -> None:
        if msg.approved and (self._peer_info is None or msg.version > self._peer_info.version):
            self._peer_info = msg

    def _request_peer_chunk(self, version: int, offset: int, length: int) -> ChunkReply:
        return request_checkpoint_chunk(self._peer_client, version, offset, length,
                                        PEER_TIMEOUT_S)

    def _bootstrap_from_peer(self) -> bool:
        t0 = time.monotonic()
        while self._peer_info is None and time.monotonic() - t0 < PEER_WAIT_S:
            if self._stop.wait(0.2):
                return False
        info = self._peer_info
        if info is None:
            self.get_logger().warning(f'no checkpoint deployed by {self._peer} within '
                                      f'{PEER_WAIT_S:.0f} s: pre-training instead')
            return False
        try:
            data = ChunkFetcher(self._request_peer_chunk, int(info.version),
                                expected_sha256=info.sha256 or None).fetch()
            policy, _ = load_checkpoint(data, expected_sha256=info.sha256 or None,
                                        trust=self._trust, robot=self._robot.hash)
            with self._busy:
                result = self._learner.adopt(policy, f'{self._peer} v{info.version}')
                self._last = result
        except (TransferError, CheckpointRejected, LearnerError, ValueError) as exc:
            self.get_logger().error(f'cannot start from {self._peer} v{info.version}: {exc}; '
                                    'pre-training instead')
            return False
        self.get_logger().info(
            f'started from {self._peer} v{info.version} ({len(data) / 1e6:.1f} MB fetched and '
            f'verified in {time.monotonic() - t0:.1f} s): v{result.version} open-loop error '
            f'{result.metric:.4f} -> {"APPROVED" if result.approved else "rejected"}')
        self._announce(result)
        return result.approved

    def _run(self) -> None:
        try:
            if self._resume is None and self._peer and self._bootstrap_from_peer():
                pass
            elif self._resume is None and self._learner.config.pretrain_steps > 0:
                self._learner.progress.state = 'pretraining'
                self._round(self._learner.config.pretrain_steps, 'pre-training on demos')
            elif self._resume is not None:
                self._announce_resume()
            if self._stream:
                torch.manual_seed(self._learner.set_stream(self._stream))
            while not self._stop.is_set():
                self._wake.wait(timeout=1.0)
                if self._stop.is_set():
                    return
                if self._rollback is not None:
                    with self._busy:
                        self._follow_rollback()
                if not self._wake.is_set():
                    continue
                self._wake.clear()
                try:
                    self._round(self._learner.config.steps_per_round, 'online round')
                except LearnerStopped:
                    return
                except Exception as exc:  # one failed round must not end learning
                    self.get_logger().error(f'training round failed: {exc!r}')
                    self._learner.progress.state = 'idle'
                    self._detail = f'last round failed: {exc!r}'
        except LearnerStopped:
            return
        except Exception as exc:  # keep the node alive and say what went wrong
            self.get_logger().error(f'training stopped: {exc!r}')
            self._state, self._detail = 'failed', f'training stopped: {exc!r}'

    def _announce_fleet(self, result: RoundResult) -> None:
        f = result.fleet
        msg = FleetRound()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.ecu_id, msg.round, msg.status, msg.reason = f.ecu_id, int(f.round), f.status, f.reason
        msg.participants = list(f.participants)
        msg.member_ids = list(f.metrics)
        msg.member_metrics = [float(v) for v in f.metrics.values()]
        msg.member_weights = [float(f.weights.get(k, 0.0)) for k in f.metrics]
        msg.local_metric = float(result.local_metric if result.local_metric is not None
                                 else math.nan)
        msg.selector_passed = f.status in ('reduced', 'alone') and bool(result.approved)
        msg.version, msg.metric = int(result.version), float(result.metric)
        msg.approved = bool(result.approved)
        msg.payload_bytes, msg.state_bytes = int(f.payload_bytes), int(f.state_bytes)
        msg.wait_seconds, msg.reduce_seconds = float(f.wait_seconds), float(f.reduce_seconds)
        self._pub_fleet.publish(msg)
        self._pub_rounds.publish(msg)
        self.get_logger().info(
            f'fleet round {f.round}: {f.status} ({f.reason}); participants '
            f'{list(f.participants)}, weights { {k: round(v, 3) for k, v in f.weights.items()} }')

    def _announce_resume(self) -> None:
        rec = self._resume
        msg = CheckpointInfo(version=int(rec.version), policy=rec.policy or '',
                             sha256=rec.sha256 or '', size_bytes=int(rec.size or 0),
                             metric=float(rec.metrics.get(METRIC, 0.0)), approved=True,
                             uri=str(rec.path))
        msg.header.stamp = self.get_clock().now().to_msg()
        self._pub.publish(msg)


def main(args=None) -> int:
    return run_node(LearnerNode, args)


if __name__ == '__main__':
    raise SystemExit(main())
