"""The actor (with the sim driver) in separate processes, driven over DDS by the test playing the
operator (and the scheduler's checkpoint service): FSM transitions, illegal/unknown signals,
teleop execution, and checkpoint fetch over the chunked service with reload only at an episode
boundary (a pickle and a sha256 mismatch are refused). The test signs its checkpoints and deploy
records with a key the actor trusts (its key_dir), as the ECU's scheduler does."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from rosutil import Probe, log_text, start_nodes
from scarls_interfaces.msg import ActorState, ActorStep, CheckpointInfo, OperatorSignal
from scarls_interfaces.srv import GetCheckpointChunk
from sensor_msgs.msg import JointState

from scarls.bringup import ecu_nodes
from scarls.checkpoints import file_sha256, save_checkpoint
from scarls.checkpoints.deploy import DeployRecord, sign_deploy_record
from scarls.checkpoints.signing import ensure_key
from scarls.checkpoints.transfer import ChunkServer
from scarls.policies import make_policy
from scarls.robot import JOINT_NAMES, load_robot
from scarls.ros import qos
from scarls.ros.conversions import joint_state_to_msg, msg_to_positions
from scarls.sim.world import HOME

pytestmark = pytest.mark.ros
NS = 'acttest'
ROBOT = load_robot('sim_dual6').hash


class Operator:
    """The operator and the scheduler: signals, teleop, signed deploys and the chunk service."""

    def __init__(self, probe: Probe, key_dir) -> None:
        n = probe.node
        self.probe = probe
        self.signer = ensure_key(key_dir, f'learner-{NS}')
        self.generation = 0
        self.token = sign_deploy_record(DeployRecord(NS, 0, 0, '', ROBOT, 'none'), self.signer)
        self.states: list[ActorState] = []
        self.steps: list[ActorStep] = []
        self.q: np.ndarray | None = None
        n.create_subscription(ActorState, 'actor/state', self.states.append, qos.STATE)
        n.create_subscription(ActorStep, 'actor/step', self.steps.append, qos.STEPS)
        n.create_subscription(JointState, 'joint_states',
                              lambda m: setattr(self, 'q', msg_to_positions(m, JOINT_NAMES)),
                              qos.JOINT_STATE)
        self.signal_pub = n.create_publisher(OperatorSignal, 'operator/signal', qos.EVENTS)
        self.teleop_pub = n.create_publisher(JointState, 'teleop/command', qos.COMMAND)
        self.ckpt_pub = n.create_publisher(CheckpointInfo, 'scheduler/checkpoint', qos.LATCHED)
        self.served: dict[int, str] = {}
        self.requests = 0
        server = ChunkServer(lambda v: self.served.get(v), max_chunk=4096)

        def serve(request, response):
            if request.version == 0:   # which checkpoint is deployed
                response.ok, response.data = True, self.token.encode()
                return response
            self.requests += 1
            reply = server.handle(request.version, request.offset, request.length)
            response.ok, response.error = reply.ok, reply.error
            response.total_size, response.sha256 = reply.total_size, reply.sha256
            response.data = reply.data
            return response
        n.create_service(GetCheckpointChunk, 'scheduler/get_checkpoint', serve)

    def deploy(self, version: int, sha256: str, path=None) -> CheckpointInfo:
        """Announce ``version`` like the scheduler: a signed deploy record of a new
        generation as the uri."""
        if path is not None:
            self.served[version] = str(path)
        self.generation += 1
        self.token = sign_deploy_record(
            DeployRecord(NS, self.generation, version, sha256, ROBOT, 'approved'), self.signer)
        msg = CheckpointInfo(version=version, policy='mlp', sha256=sha256, approved=True,
                             uri=self.token)
        self.ckpt_pub.publish(msg)
        return msg

    @property
    def phase(self) -> str:
        return self.states[-1].phase if self.states else 'UNKNOWN'

    def signal(self, value: int, wait_for: str | None = None) -> None:
        msg = OperatorSignal(signal=value, source='test', reason='test')
        self.signal_pub.publish(msg)
        if wait_for and value == OperatorSignal.START:
            # START waits while the actor loads the deployed checkpoint: send it again, like
            # the teleop node does when the actor has not reacted
            self.probe.wait_for(lambda: self.phase == wait_for or self._again(msg), 20,
                                f'phase {wait_for}')
        elif wait_for:
            self.probe.wait_for(lambda: self.phase == wait_for, 10, f'phase {wait_for}')

    def _again(self, msg: OperatorSignal, period: float = 1.0) -> bool:
        now = time.monotonic()
        if now - getattr(self, '_sent_at', 0.0) >= period:
            self._sent_at = now
            self.signal_pub.publish(msg)
        return False

    def episode_steps(self) -> list:
        """The recorded steps of the current episode."""
        return [s for s in self.steps if s.episode_id == self.states[-1].episode_id]

    def wait_steps(self, n: int) -> None:
        self.probe.wait_for(lambda: len(self.episode_steps()) >= n, 30,
                            f'{n} steps of the current episode')

    def wait_log(self, node_group, text: str) -> None:
        self.probe.wait_for(lambda: text in log_text(node_group, 'actor'), 30, repr(text))

    def teleop(self, q, seconds: float) -> None:
        for _ in range(int(seconds * 30)):
            self.teleop_pub.publish(joint_state_to_msg(
                JOINT_NAMES, q, self.probe.node.get_clock().now().to_msg()))
            self.probe.spin_for(1 / 30)


@pytest.fixture
def operator(ros, node_group, tmp_path):
    specs = ecu_nodes(NS, key_dir=str(tmp_path / 'keys'),
                      extra={'driver': {'image_height': 24, 'image_width': 32}})
    probe = Probe(NS)
    op = Operator(probe, tmp_path / 'keys')
    start_nodes(node_group, [s for s in specs if s.name in ('driver', 'actor')])
    probe.wait_for(lambda: op.phase == 'IDLE', 30, 'the actor to reach IDLE')
    yield op
    probe.close()


def test_fsm_over_dds_with_illegal_and_unknown_signals(operator, node_group):
    op = operator
    op.signal(OperatorSignal.RELEASE)
    op.signal(42)
    op.wait_log(node_group, 'unknown operator signal 42')
    assert op.phase == 'IDLE'
    op.signal(OperatorSignal.START, wait_for='INFERENCE')
    op.signal(OperatorSignal.START)   # illegal while running
    op.wait_steps(10)
    op.wait_log(node_group, 'illegal event START in INFERENCE')
    assert op.phase == 'INFERENCE'
    policy_steps = op.episode_steps()
    assert len(policy_steps) >= 10 and not any(s.is_intervention for s in policy_steps)

    target = np.array(op.q, dtype=np.float64)
    target[0] += 0.2
    op.signal(OperatorSignal.INTERVENE, wait_for='HUMANINTERVENTION')
    n0 = len(op.steps)
    op.teleop(target, 1.0)
    human = op.steps[n0 + 3:]
    assert human and all(s.is_intervention for s in human)
    np.testing.assert_allclose(np.array(human[-1].action), target, atol=1e-5)
    op.signal(OperatorSignal.RELEASE, wait_for='INFERENCE')
    op.signal(OperatorSignal.SUCCESS, wait_for='IDLE')
    phases = [s.phase for s in op.states]
    changes = [p for i, p in enumerate(phases) if i == 0 or p != phases[i - 1]]
    assert changes[-4:] == ['HUMANINTERVENTION', 'INFERENCE', 'SUCCESS', 'IDLE'], changes
    ended = [s for s in op.states if s.phase == 'SUCCESS'][-1]
    assert ended.steps == len([s for s in op.steps if s.episode_id == ended.episode_id])
    op.probe.wait_for(lambda: np.allclose(op.q, HOME, atol=1e-6), 30,
                      'the pose reset after the episode')
    text = log_text(node_group, 'actor')
    assert 'illegal event RELEASE in IDLE' in text
    assert 'unknown operator signal 42' in text
    assert 'illegal event START in INFERENCE' in text
    assert not node_group.dead()


def test_checkpoint_swaps_only_at_episode_boundary(operator, node_group, tmp_path):
    torch.set_num_threads(1)
    op = operator
    good = tmp_path / 'v1.safetensors'
    save_checkpoint(good, make_policy('mlp', seed=7), version=1, signer=op.signer, robot=ROBOT)
    op.served[1] = str(good)
    op.signal(OperatorSignal.START, wait_for='INFERENCE')
    op.probe.spin_for(0.3)
    op.deploy(1, file_sha256(good))
    # serves the chunks (4 KiB each): the fetch completes during the episode
    op.probe.wait_for(lambda: op.requests > good.stat().st_size // 4096, 60,
                      'the checkpoint fetched in many small chunks')
    op.wait_steps(1)
    episode1 = op.states[-1].episode_id
    assert {s.model_version for s in op.steps if s.episode_id == episode1} == {0}
    op.signal(OperatorSignal.FAIL, wait_for='IDLE')
    op.signal(OperatorSignal.START, wait_for='INFERENCE')
    op.wait_steps(5)
    episode2 = op.states[-1].episode_id
    assert {s.model_version for s in op.steps if s.episode_id == episode2} == {1}
    assert {s.model_version for s in op.steps if s.episode_id == episode1} == {0}

    # a corrupt checkpoint (pickle) and a sha256 mismatch are refused; v1 stays
    bad = tmp_path / 'v2.safetensors'
    torch.save({'w': torch.zeros(3)}, bad)
    op.deploy(2, file_sha256(bad), bad)
    op.wait_log(node_group, 'checkpoint v2 refused')
    op.signal(OperatorSignal.STOP, wait_for='IDLE')
    op.deploy(3, '0' * 64, good)
    op.wait_log(node_group, 'checkpoint v3 refused')
    op.signal(OperatorSignal.START, wait_for='INFERENCE')
    op.signal(OperatorSignal.STOP, wait_for='IDLE')
    op.signal(OperatorSignal.START, wait_for='INFERENCE')
    op.wait_steps(5)
    last = op.states[-1].episode_id
    assert {s.model_version for s in op.steps if s.episode_id == last} == {1}
    text = log_text(node_group, 'actor')
    assert 'checkpoint v2 refused' in text and 'checkpoint v3 refused' in text
    assert not node_group.dead()


def test_bad_initial_checkpoint_fails_configure(ros, node_group, tmp_path):
    bad = tmp_path / 'bad.safetensors'
    bad.write_bytes(b'\x80\x04not a safetensors file')
    spec = [s for s in ecu_nodes(NS, key_dir=str(tmp_path / 'keys'),
                                 extra={'actor': {'checkpoint': str(bad), 'autostart': False}})
            if s.name == 'actor'][0]
    start_nodes(node_group, [spec])
    probe = Probe(NS, 'probe_ckpt')
    try:
        from lifecycle_msgs.msg import Transition
        assert probe.lifecycle('actor', Transition.TRANSITION_CONFIGURE) is False
        assert 'policy could not be loaded' in log_text(node_group, 'actor')
        assert not node_group.dead()
    finally:
        probe.close()


def test_an_estop_aborts_the_episode_and_blocks_the_next_start(operator, node_group):
    """The actor follows the driver's safety state: an e-stop during an episode ends it
    (ABORTED: its steps were not executed); START is refused until the e-stop is released."""
    from std_srvs.srv import SetBool
    op = operator
    op.signal(OperatorSignal.START, wait_for='INFERENCE')
    stop = op.probe.call(SetBool, 'driver/estop', SetBool.Request(data=True))
    assert stop.success
    op.probe.wait_for(lambda: any(s.phase == 'ABORTED' for s in op.states), 15,
                      'the episode to be aborted')
    aborted = [s for s in op.states if s.phase == 'ABORTED'][-1]
    assert 'driver estopped' in aborted.reason
    # the driver refuses to reset while e-stopped: the actor waits in ABORTED, starts nothing
    op.signal(OperatorSignal.START)
    op.wait_log(node_group, 'START ignored: the driver is estopped')
    assert op.phase == 'ABORTED', op.phase
    op.probe.call(SetBool, 'driver/estop', SetBool.Request(data=False))
    op.probe.wait_for(lambda: op.phase == 'IDLE', 30, 'IDLE once the reset could run')
    op.probe.wait_for(lambda: (op.signal(OperatorSignal.START) or op.phase == 'INFERENCE'),
                      15, 'START accepted after the release')
