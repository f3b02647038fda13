"""The deploy guard in the scheduler's process, fed over DDS by the test (playing the learner's
announcements and the actor's episodes): probation holds a newer checkpoint, a version whose
episodes need help significantly more often than its predecessor's is rolled back (a signed
deploy record that says so), it and the candidates trained from it are never deployed again,
and a candidate trained from the predecessor is."""

from __future__ import annotations

import json

import numpy as np
import pytest
from rosutil import Probe, log_text, start_nodes
from scarls_interfaces.msg import ActorState, ActorStep, CheckpointInfo, EpisodeInfo
from scarls_interfaces.srv import GetCheckpointChunk
from sensor_msgs.msg import Image

from scarls.bringup import ecu_nodes
from scarls.checkpoints.deploy import open_deploy_token
from scarls.checkpoints.registry import CheckpointRegistry
from scarls.checkpoints.signing import TRUST_FILE, TrustList, ensure_key
from scarls.learner.node import GUARD_ROLLBACK
from scarls.policies import make_policy
from scarls.robot import load_robot
from scarls.ros import qos
from scarls.ros.conversions import image_to_msg, ns_to_stamp

pytestmark = pytest.mark.ros
NS = 'guardtest'
CAMS = ('top', 'left', 'right')
ROBOT = load_robot('sim_dual6').hash


class Episodes:
    """The actor's steps (with their camera frames) and end states, as the scheduler sees
    them."""

    def __init__(self, probe: Probe) -> None:
        n = probe.node
        self.probe = probe
        self.cams = {c: n.create_publisher(Image, f'camera/{c}/image_raw', qos.CAMERA)
                     for c in CAMS}
        self.steps = n.create_publisher(ActorStep, 'actor/step', qos.STEPS)
        self.state = n.create_publisher(ActorState, 'actor/state', qos.STATE)
        self.saved: list[EpisodeInfo] = []
        n.create_subscription(EpisodeInfo, 'scheduler/episode', self.saved.append, qos.EVENTS)
        self.t_ns = 1_000_000_000_000
        self.next_id = 1

    def connected(self) -> bool:
        return all(p.get_subscription_count() > 0 for p in (*self.cams.values(), self.steps,
                                                             self.state))

    def run(self, version: int, *, helped: bool) -> EpisodeInfo:
        """One 6-step episode with ``version``; ``helped``: the human took over two steps."""
        episode, before = self.next_id, len(self.saved)
        self.next_id += 1
        for i in range(6):
            self.t_ns += 33_333_333
            stamp = ns_to_stamp(self.t_ns)
            for c in CAMS:
                self.cams[c].publish(image_to_msg(np.full((12, 16, 3), i, np.uint8), stamp, c))
            self.probe.spin_for(0.005)
            step = ActorStep()
            step.header.stamp = ns_to_stamp(self.t_ns + 1_000_000)
            step.episode_id, step.step = episode, i
            step.joint_state_stamp = stamp
            step.image_names, step.image_stamps = list(CAMS), [stamp] * 3
            step.observation_state = [0.01 * i] * 14
            step.action = [0.01 * i + 0.005] * 14
            step.is_intervention = helped and i in (2, 3)
            step.model_version = version
            self.steps.publish(step)
            self.probe.spin_for(0.02)
        end = ActorState()
        end.header.stamp = ns_to_stamp(self.t_ns + 2_000_000)
        end.phase, end.previous_phase, end.event = 'SUCCESS', 'INFERENCE', 'SUCCESS'
        end.episode_id, end.steps = episode, 6
        self.state.publish(end)
        self.probe.wait_for(lambda: len(self.saved) > before, 60, f'episode {episode} saved')
        info = self.saved[-1]
        assert info.model_version == version
        return info


def test_guard_holds_rolls_back_and_rejects_the_lineage(ros, node_group, tmp_path):
    data = tmp_path / 'data'
    signer = ensure_key(data / 'keys', f'learner-{NS}')   # the ECU's learner key
    registry = CheckpointRegistry(data / 'checkpoints' / 'pick_cube', signer=signer,
                                  robot=ROBOT)
    trust = TrustList(data / 'keys' / TRUST_FILE)
    probe = Probe(NS)
    deployed: list[CheckpointInfo] = []
    probe.node.create_subscription(CheckpointInfo, 'scheduler/checkpoint', deployed.append,
                                   qos.LATCHED)
    learner = probe.node.create_publisher(CheckpointInfo, 'learner/checkpoint', qos.STATE)
    robot = Episodes(probe)

    def announce(parent: int | None) -> int:
        rec = registry.publish(make_policy('mlp', seed=len(registry)),
                               metrics={'open_loop_error': 0.01}, parent=parent, approved=True)
        learner.publish(CheckpointInfo(version=rec.version, parent=int(parent or 0),
                                       policy='mlp', sha256=rec.sha256, size_bytes=rec.size,
                                       metric=0.01, approved=True, uri=str(rec.path)))
        return rec.version

    def log() -> str:
        return log_text(node_group, 'scheduler')

    def running(version: int) -> None:
        probe.wait_for(lambda: deployed and deployed[-1].version == version, 30,
                       f'v{version} deployed')

    spec = ecu_nodes(NS, data_root=str(data), extra={'scheduler': {
        'guard': True, 'guard_min_episodes': 3, 'guard_alpha': 0.05,
        'match_timeout_s': 0.5}})[1]
    assert spec.name == 'scheduler'
    try:
        start_nodes(node_group, [spec])
        probe.wait_for(lambda: 'deploys from registry' in log() and robot.connected(), 30,
                       'the scheduler')
        v1 = announce(None)
        running(v1)
        for _ in range(4):
            assert robot.run(v1, helped=False).intervention_steps == 0
        v2 = announce(v1)
        running(v2)
        # probation: v2 has run no episode yet, so v3 waits (and stays held: v2 is rejected)
        v3 = announce(v2)
        probe.wait_for(lambda: f'checkpoint v{v3} held (deploy guard): v{v2} is on probation'
                       in log(), 30, f'v{v3} held')
        for _ in range(3):
            assert robot.run(v2, helped=True).intervention_steps == 2
        running(v1)
        record = open_deploy_token(deployed[-1].uri, trust, ecu=NS, robot=ROBOT)
        assert record.reason == f'guard rollback from v{v2}' and record.version == v1
        # the learner follows exactly this record (its parser names the rejected version)
        assert GUARD_ROLLBACK.match(record.reason).group(1) == str(v2)
        probe.wait_for(lambda: 'ROLLED BACK' in log(), 30, 'the rollback logged')
        text = log()
        assert f'ROLLED BACK from v{v2} to v{v1}' in text
        assert 'v2: 0/3 alone (0 %)' in text and 'v1: 4/4 alone (100 %)' in text
        assert f'the held v{v3} is dropped' in text
        state = json.loads((data / 'checkpoints' / 'pick_cube' / 'guard.json').read_text())
        assert list(state['rejected']) == [str(v2)]
        # a candidate trained from the rejected v2 is refused; one trained from v1 deploys
        v4 = announce(v2)
        probe.wait_for(lambda: f'checkpoint v{v4} NOT deployed (deploy guard): it was trained '
                       f'from the rejected v{v2}' in log(), 30, f'v{v4} refused')
        v5 = announce(v1)
        running(v5)
        assert [d.version for d in deployed].count(v4) == 0
        # an operator cannot redeploy the rejected version by mistake either
        reply = probe.call(GetCheckpointChunk, 'scheduler/deploy',
                           GetCheckpointChunk.Request(version=v2))
        assert not reply.ok and 'rejected' in reply.error
    finally:
        probe.close()
