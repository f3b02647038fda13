"""Deploy safety with real processes: what a stranger on the DDS domain can no longer do.

* the scheduler deploys and serves only signed, approved files of its own registry: a rogue
  announcement naming a file outside the registry (directly or through a symlink), an unsigned
  or forged checkpoint and a version of 2**32-1 are refused with a logged reason, the file is
  never served, and a later real deploy still works; ~/deploy rolls back to an older version;
  once its own signing key is revoked it deploys nothing more;
* the actor refuses forged deploy records, forged-but-valid checkpoints and a crafted 1 KB header
  and keeps its model; replays of old announcements are ignored; a rollback is followed; once
  the running checkpoint's key is revoked START is refused until a checkpoint signed by a
  trusted key is deployed, and what the revoked key signs is refused;
* a restarted actor loads the deployed checkpoint before its first episode; `scarls deploy`
  rolls back and the actor follows at the next episode boundary;
* the learner does not resume from what a revoked key signed, and follows a deploy guard's
  rollback only to a checkpoint signed by a trusted key with the hash the record names.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from rosutil import Probe, log_text, start_nodes
from safetensors.torch import save as st_save
from scarls_interfaces.msg import ActorState, ActorStep, CheckpointInfo, OperatorSignal
from scarls_interfaces.srv import GetCheckpointChunk

from scarls.bringup import default_params_file, ecu_nodes
from scarls.checkpoints import (
    HEADER_KEY,
    RevokedKey,
    SignatureRejected,
    dump_checkpoint,
    file_sha256,
    sign_checkpoint_bytes,
    verify_checkpoint,
)
from scarls.checkpoints.deploy import DeployRecord, open_deploy_token, sign_deploy_record
from scarls.checkpoints.format import tensors_sha256
from scarls.checkpoints.registry import CheckpointRegistry
from scarls.checkpoints.signing import TRUST_FILE, Signer, TrustList, ensure_key
from scarls.checkpoints.transfer import ChunkServer
from scarls.policies import make_policy
from scarls.robot import load_robot
from scarls.ros import qos

pytestmark = pytest.mark.ros
ROBOT = load_robot('sim_dual6').hash
IMAGE = {'image_height': 24, 'image_width': 32}
# these tests deploy versions back to back, with no episode in between: no deploy guard
# (its probation and rollback: tests/test_ros_guard.py)
NO_GUARD = {'guard': False}
UINT32_MAX = 2 ** 32 - 1


def _publish(registry: CheckpointRegistry, seed: int):
    return registry.publish(make_policy('mlp', seed=seed), metrics={'open_loop_error': 0.01},
                            approved=True)


def _info(rec, **kw) -> CheckpointInfo:
    msg = CheckpointInfo(version=rec.version, policy='mlp', sha256=rec.sha256 or '',
                         size_bytes=rec.size, metric=0.01, approved=True, uri=str(rec.path))
    for k, v in kw.items():
        setattr(msg, k, v)
    return msg


def _crafted_header() -> bytes:
    """~1 KB: a valid file whose policy config declares a 4-billion-parameter MLP."""
    t = {'w': torch.zeros(2)}
    header = {'format_version': 1, 'version': 3, 'parent': None, 'policy': 'mlp',
              'policy_config': {'hidden_sizes': [16384, 16384] * 8}, 'metrics': {},
              'extra': {}, 'created': 'now', 'payload_sha256': tensors_sha256(t)}
    return st_save(t, metadata={HEADER_KEY: json.dumps(header)})


class Operator:
    """Operator signals and the actor's steps and states, with START sent again while the
    actor refuses it (as the teleop node does)."""

    def __init__(self, probe: Probe) -> None:
        self.probe = probe
        self.states: list[ActorState] = []
        self.steps: list[ActorStep] = []
        n = probe.node
        n.create_subscription(ActorState, 'actor/state', self.states.append, qos.STATE)
        n.create_subscription(ActorStep, 'actor/step', self.steps.append, qos.STEPS)
        self.pub = n.create_publisher(OperatorSignal, 'operator/signal', qos.EVENTS)

    @property
    def phase(self) -> str:
        return self.states[-1].phase if self.states else 'UNKNOWN'

    def send(self, value: int) -> None:
        self.pub.publish(OperatorSignal(signal=value, source='test', reason='test'))

    def episode(self, seconds: float = 0.6) -> set[int]:
        """One episode (START until it runs, a few ticks, STOP); the model versions its steps
        were acted with."""
        self.probe.wait_for(lambda: self.phase == 'IDLE', 30, 'IDLE')
        sent = [0.0]

        def started() -> bool:
            if self.phase == 'INFERENCE':
                return True
            if time.monotonic() - sent[0] > 1.0:
                sent[0] = time.monotonic()
                self.send(OperatorSignal.START)
            return False
        self.probe.wait_for(started, 60, 'START to be accepted')
        episode = self.states[-1].episode_id
        self.probe.spin_for(seconds)
        self.send(OperatorSignal.STOP)
        self.probe.wait_for(lambda: self.phase == 'IDLE', 30, 'IDLE after the episode')
        self.probe.spin_for(0.2)
        versions = {s.model_version for s in self.steps if s.episode_id == episode}
        assert versions, 'the episode recorded steps'
        return versions


def test_scheduler_deploys_only_signed_registry_checkpoints(ros, node_group, tmp_path):
    ns = 'dsafe'
    data = tmp_path / 'data'
    signer = ensure_key(data / 'keys', f'learner-{ns}')   # the ECU's learner key
    registry = CheckpointRegistry(data / 'checkpoints' / 'pick_cube', signer=signer, robot=ROBOT)
    secret = tmp_path / 'secret.bin'
    secret.write_bytes(b'the scheduler must never serve this\n' * 100)
    probe = Probe(ns)
    deployed: list[CheckpointInfo] = []
    probe.node.create_subscription(CheckpointInfo, 'scheduler/checkpoint', deployed.append,
                                   qos.LATCHED)
    learner = probe.node.create_publisher(CheckpointInfo, 'learner/checkpoint', qos.STATE)
    trust = TrustList(data / 'keys' / TRUST_FILE)

    def log() -> str:
        return log_text(node_group, 'scheduler')

    def refused(version: int, why: str) -> None:
        probe.wait_for(lambda: f'checkpoint v{version} announced on learner/checkpoint NOT '
                       'deployed' in log() and why in log(), 30, f'v{version} refused: {why}')

    def chunk(version: int):
        return probe.call(GetCheckpointChunk, 'scheduler/get_checkpoint',
                          GetCheckpointChunk.Request(version=version, offset=0, length=1 << 20))

    try:
        start_nodes(node_group, [s for s in ecu_nodes(ns, data_root=str(data),
                                                      extra={'scheduler': NO_GUARD})
                                 if s.name == 'scheduler'])
        probe.wait_for(lambda: 'deploys from registry' in log(), 30, 'the scheduler')
        # a rogue announces a file outside the registry: refused, never served
        learner.publish(CheckpointInfo(version=1, approved=True, uri=str(secret),
                                       sha256=file_sha256(secret), size_bytes=3700))
        refused(1, "beyond the registry's newest version")
        reply = chunk(1)
        assert not reply.ok and not reply.data
        # the registry's own v1 swapped for a symlink to that file: refused after resolving it
        v1 = _publish(registry, 1)
        real_bytes = v1.path.read_bytes()
        v1.path.unlink()
        os.symlink(secret, v1.path)
        learner.publish(_info(v1))
        probe.wait_for(lambda: log().count('v1 announced on learner/checkpoint NOT') >= 2, 30,
                       'the symlinked v1 refused')
        assert 'outside the registry directory' in log()
        assert not chunk(1).ok
        v1.path.unlink()
        v1.path.write_bytes(real_bytes)
        learner.publish(_info(v1))
        probe.wait_for(lambda: deployed and deployed[-1].version == 1, 30, 'v1 deployed')
        # 2**32-1, an unsigned file and a forged one (valid safetensors, self-consistent sha,
        # signed by a stranger) are refused
        learner.publish(CheckpointInfo(version=UINT32_MAX, approved=True, uri=str(v1.path)))
        refused(UINT32_MAX, "beyond the registry's newest version")
        registry.signer = None
        v2 = _publish(registry, 2)
        learner.publish(_info(v2))
        refused(2, 'is not signed')
        stranger = Signer.generate('stranger')
        registry.signer = stranger
        v3 = _publish(registry, 3)
        learner.publish(_info(v3))
        refused(3, f'signed by key {stranger.key_id}, which is not in the trust list')
        assert not chunk(2).ok and not chunk(3).ok
        # a later real deploy still works, and is served
        registry.signer = signer
        v4 = _publish(registry, 4)
        learner.publish(_info(v4))
        probe.wait_for(lambda: deployed and deployed[-1].version == 4, 30, 'v4 deployed')
        record = open_deploy_token(deployed[-1].uri, trust, ecu=ns, robot=ROBOT)
        assert (record.version, record.generation, record.sha256) == (4, 2, v4.sha256)
        reply = chunk(4)
        assert reply.ok and bytes(reply.data) == v4.path.read_bytes()
        # ~/deploy: a rollback to v1 is a new generation; unknown or forged versions are not
        deploy = lambda v: probe.call(  # noqa: E731
            GetCheckpointChunk, 'scheduler/deploy', GetCheckpointChunk.Request(version=v))
        back = deploy(1)
        assert back.ok, back.error
        assert json.loads(bytes(back.data)) == {'generation': 3, 'version': 1,
                                                'reason': 'rollback', 'sha256': v1.sha256}
        probe.wait_for(lambda: deployed[-1].version == 1, 30, 'the rollback announced')
        assert open_deploy_token(deployed[-1].uri, trust).generation == 3
        for bad, why in ((3, 'not in the trust list'), (UINT32_MAX, 'beyond'),
                         (2, 'not signed')):
            reply = deploy(bad)
            assert not reply.ok and why in reply.error, reply.error
        # the version-0 request answers with the current signed deploy record
        now = open_deploy_token(bytes(chunk(0).data).decode(), trust)
        assert (now.version, now.generation) == (1, 3)
        # its signing key revoked while it runs: it deploys nothing more until restarted
        v5 = _publish(registry, 5)
        trust.revoke(signer.key_id, 'rotated')
        learner.publish(_info(v5))
        refused(5, 'which was revoked since it started')
        assert not deploy(4).ok
        assert not node_group.dead()
    finally:
        probe.close()
    saved = json.loads((registry.root / 'deploys.json').read_text())
    assert saved['generation'] == 3 and saved['current']['version'] == 1


class FakeScheduler:
    """The test plays the ECU's scheduler (and a rogue on the same topic)."""

    def __init__(self, probe: Probe, ns: str, signer: Signer) -> None:
        self.ns, self.signer = ns, signer
        self.generation = 0
        self.token = sign_deploy_record(DeployRecord(ns, 0, 0, '', ROBOT, 'none'), signer)
        self.files: dict[int, bytes] = {}
        self.requests = 0
        self.pub = probe.node.create_publisher(CheckpointInfo, 'scheduler/checkpoint',
                                               qos.LATCHED)
        server = ChunkServer(lambda v: None)

        def serve(request, response):
            if request.version == 0:
                response.ok, response.data = True, self.token.encode()
                return response
            self.requests += 1
            data = self.files.get(request.version)
            if data is None:
                response.error = server.handle(request.version, 0, 1).error
                return response
            chunk = data[request.offset:request.offset + request.length]
            response.ok, response.data = True, chunk
            response.total_size = len(data)
            response.sha256 = hashlib.sha256(data).hexdigest()
            return response
        probe.node.create_service(GetCheckpointChunk, 'scheduler/get_checkpoint', serve)

    def deploy(self, version: int, data: bytes, signer: Signer | None = None,
               generation: int | None = None) -> CheckpointInfo:
        self.files[version] = data
        sha = hashlib.sha256(data).hexdigest()
        if generation is None:
            self.generation += 1
            generation = self.generation
        token = sign_deploy_record(DeployRecord(self.ns, generation, version, sha, ROBOT,
                                                'approved'), signer or self.signer)
        if signer is None:
            self.token = token
        msg = CheckpointInfo(version=version, policy='mlp', sha256=sha, approved=True,
                             uri=token)
        self.pub.publish(msg)
        return msg


def test_actor_refuses_forged_and_crafted_deploys_and_follows_a_rollback(ros, node_group,
                                                                        tmp_path):
    ns = 'dactor'
    keys = tmp_path / 'keys'
    signer = ensure_key(keys, f'learner-{ns}')
    stranger = Signer.generate('stranger')
    probe = Probe(ns)
    op = Operator(probe)
    sched = FakeScheduler(probe, ns, signer)
    good = {v: dump_checkpoint(make_policy('mlp', seed=v), version=v, signer=signer,
                               robot=ROBOT)[0] for v in (1, 4)}
    sched.deploy(1, good[1])   # deployed before the actor starts
    try:
        start_nodes(node_group, [s for s in ecu_nodes(ns, key_dir=str(keys),
                                                      extra={'driver': IMAGE})
                                 if s.name in ('driver', 'actor')])
        assert op.episode() == {1}, 'the deployed checkpoint runs from the first episode'
        text = lambda: log_text(node_group, 'actor')  # noqa: E731
        # a rogue's record (version and generation 2**32-1) signed by a stranger: refused
        sched.deploy(UINT32_MAX, good[1], signer=stranger, generation=UINT32_MAX)
        probe.wait_for(lambda: f'deploy announcement of v{UINT32_MAX} refused' in text(), 30,
                       'the forged record refused')
        assert stranger.key_id in text()
        # a forged but valid checkpoint behind a trusted record: refused at load
        forged = dump_checkpoint(make_policy('mlp', seed=66), version=2, signer=stranger,
                                 robot=ROBOT)[0]
        sched.deploy(2, forged)
        probe.wait_for(lambda: 'checkpoint v2 refused, keeping v1' in text(), 30,
                       'the forged checkpoint refused')
        # a crafted ~1 KB header, even signed by a trusted key (a leaked key, a buggy
        # learner): refused before anything is allocated
        sched.deploy(3, sign_checkpoint_bytes(_crafted_header(), signer, ROBOT))
        probe.wait_for(lambda: 'checkpoint v3 refused, keeping v1' in text(), 30,
                       'the crafted header refused')
        assert 'parameters, over the limit' in text()
        assert op.episode() == {1}, 'the robot keeps its model'
        # a later real deploy still works
        sched.deploy(4, good[4])
        probe.wait_for(lambda: 'checkpoint v4 fetched' in text(), 30, 'v4 fetched')
        assert op.episode() == {4}
        # a replay of the old v1 announcement (generation 1) is ignored; a rollback (a new
        # generation, lower version) is followed at the next boundary
        requests = sched.requests
        sha1 = hashlib.sha256(good[1]).hexdigest()
        sched.pub.publish(CheckpointInfo(version=1, sha256=sha1, approved=True,
                                         uri=sign_deploy_record(DeployRecord(
                                             ns, 1, 1, sha1, ROBOT, 'approved'), signer)))
        probe.spin_for(1.5)
        assert sched.requests == requests, 'a replayed announcement is not fetched'
        assert op.episode() == {4}
        sched.deploy(1, good[1])
        probe.wait_for(lambda: text().count('checkpoint v1 fetched') >= 2, 30,
                       'the rollback fetched')
        assert op.episode() == {1}
        # the learner key is revoked (a stolen workstation) and replaced: the running v1 was
        # signed by it, so START is refused - no restart, the actor re-reads its key files
        new = ensure_key(keys, 'learner-rotated')
        TrustList(keys / TRUST_FILE).revoke(signer.key_id, 'workstation stolen')
        steps, sent = len(op.steps), [0.0]

        def start_refused() -> bool:
            if time.monotonic() - sent[0] > 1.0:   # START again each second, as teleop does
                sent[0] = time.monotonic()
                op.send(OperatorSignal.START)
            return 'which has been revoked' in text()
        probe.wait_for(start_refused, 30, 'START refused')
        assert op.phase == 'IDLE' and len(op.steps) == steps, 'the robot did not move'
        # what the revoked key signs is refused; a deploy under the new key runs
        good[5] = dump_checkpoint(make_policy('mlp', seed=5), version=5, signer=signer,
                                  robot=ROBOT)[0]
        sched.deploy(5, good[5])
        probe.wait_for(lambda: 'deploy announcement of v5 refused' in text(), 30,
                       'the revoked record refused')
        assert 'workstation stolen' in text()
        sched.signer = new   # a trusted record for a checkpoint the revoked key signed
        sched.deploy(6, good[5])
        probe.wait_for(lambda: 'checkpoint v6 refused' in text(), 30, 'v6 refused at fetch')
        assert 'which is revoked' in text()
        good[7] = dump_checkpoint(make_policy('mlp', seed=7), version=7, signer=new,
                                  robot=ROBOT)[0]
        sched.deploy(7, good[7])
        probe.wait_for(lambda: 'checkpoint v7 fetched' in text(), 30, 'v7 fetched')
        assert op.episode() == {7}
        assert not node_group.dead()
    finally:
        probe.close()


def _stop_node(group, name: str):
    node = next(n for n in group.nodes if n.spec.name == name)
    node.process.send_signal(signal.SIGINT)
    node.process.wait(timeout=30)
    return node


def test_restarted_actor_runs_the_deployed_version_and_scarls_deploy_rolls_back(
        ros, node_group, tmp_path, domain_id):
    ns = 'drestart'
    data = tmp_path / 'data'
    signer = ensure_key(data / 'keys', f'learner-{ns}')
    registry = CheckpointRegistry(data / 'checkpoints' / 'pick_cube', signer=signer, robot=ROBOT)
    probe = Probe(ns)
    deployed: list[CheckpointInfo] = []
    probe.node.create_subscription(CheckpointInfo, 'scheduler/checkpoint', deployed.append,
                                   qos.LATCHED)
    learner = probe.node.create_publisher(CheckpointInfo, 'learner/checkpoint', qos.STATE)
    op = Operator(probe)
    specs = {s.name: s for s in ecu_nodes(ns, data_root=str(data),
                                          extra={'driver': IMAGE, 'scheduler': NO_GUARD})}
    try:
        start_nodes(node_group, [specs['scheduler']])
        v1 = _publish(registry, 1)
        learner.publish(_info(v1))
        probe.wait_for(lambda: deployed and deployed[-1].version == 1, 60, 'v1 deployed')
        start_nodes(node_group, [specs['driver'], specs['actor']])
        assert op.episode() == {1}
        v2 = _publish(registry, 2)
        learner.publish(_info(v2))
        probe.wait_for(lambda: deployed[-1].version == 2, 30, 'v2 deployed')
        text = lambda: log_text(node_group, 'actor')  # noqa: E731
        probe.wait_for(lambda: 'checkpoint v2 fetched' in text(), 30, 'v2 fetched')
        assert op.episode() == {2}
        # roll back with the command line; the actor follows at the next episode boundary
        out = subprocess.run(
            [sys.executable, '-m', 'scarls.cli', 'deploy', '--ecu', ns, '--version', '1',
             '--domain-id', str(domain_id)], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert 'v1 deployed (rollback, deploy generation 3' in out.stdout
        probe.wait_for(lambda: text().count('checkpoint v1 fetched') >= 2, 30,
                       'the rollback fetched')
        assert op.episode() == {1}
        # the actor restarts while v1 (generation 3) is deployed: its first episode runs v1
        node = _stop_node(node_group, 'actor')
        op.states.clear()
        op.steps.clear()
        node_group.restart(node, str(default_params_file()))
        probe.wait_for(lambda: op.states and op.states[-1].phase == 'IDLE', 60,
                       'the restarted actor IDLE')
        assert op.episode() == {1}
        assert text().count('reloaded checkpoint v1') >= 3
        assert not node_group.dead()
    finally:
        probe.close()


def _start_learner(node_group, ns: str, data, keys, offline) -> None:
    """The ECU's learner alone (small rounds, every candidate approved), on ``offline``'s
    demonstrations, with the keys of ``keys``."""
    start_nodes(node_group, [s for s in ecu_nodes(ns, data_root=str(data), learner=True,
                                                  key_dir=str(keys), extra={
        'learner': {'pretrain_steps': 20, 'steps_per_round': 10, 'batch_size': 8,
                    'threshold': 100.0, 'heldout_demos': 1,
                    'offline_root': str(offline)}}) if s.name == 'learner'])


@pytest.mark.parametrize('latest', ['revoked', 'stripped'])
def test_learner_does_not_resume_from_what_a_revoked_key_signed(ros, node_group, tmp_path,
                                                                latest):
    """After `scarls keys rotate` (a stolen workstation), the learner's registry still holds
    the approved checkpoint the old key signed (or one whose signature was stripped, which an
    older scarls's unsigned file would be re-signed for): the learner neither resumes from it
    nor re-signs it with its new key; it starts over from the demonstrations and signs with
    the new key."""
    from scarls.learner.demos import generate_demos
    ns, keys, data = 'lrevoke', tmp_path / 'keys', tmp_path / 'ecu'
    offline = tmp_path / 'offline'
    generate_demos(offline, 'pick_cube', 3, seed=10_000, image_shape=(24, 32))
    old = ensure_key(keys, f'learner-{ns}')
    registry = CheckpointRegistry(data / 'checkpoints' / 'pick_cube', signer=old, robot=ROBOT)
    _publish(registry, seed=1)
    if latest == 'stripped':
        registry.signer = None
        _publish(registry, seed=2)
    first = 2 if latest == 'revoked' else 3
    subprocess.run([sys.executable, '-m', 'scarls.cli', 'keys', 'rotate', '--key-dir',
                    str(keys), '--ecu-id', ns], check=True, capture_output=True, timeout=120)
    new = Signer.load(keys / f'learner-{ns}.key')
    probe = Probe(ns)
    announced: list[CheckpointInfo] = []
    probe.node.create_subscription(CheckpointInfo, 'learner/checkpoint', announced.append,
                                   qos.STATE)
    try:
        _start_learner(node_group, ns, data, keys, offline)
        probe.wait_for(lambda: announced or node_group.dead(), 180, "the learner's first")
        assert not node_group.dead(), [d.tail() for d in node_group.dead()]
        if latest == 'revoked':   # its new key revoked too, while it runs: it trains no more
            TrustList(keys / TRUST_FILE).revoke(new.key_id, 'again')
            from std_srvs.srv import Trigger
            assert probe.call(Trigger, 'learner/train', Trigger.Request(), timeout=60).success
            probe.wait_for(lambda: 'while this learner ran' in log_text(node_group, 'learner'),
                           60, 'the round refused')
            assert [m.version for m in announced] == [first]
    finally:
        probe.close()
    assert announced[0].version == first
    log = log_text(node_group, 'learner')
    assert f'not resuming from v{first - 1}' in log and 'revoked' in log
    assert f'resuming from v{first - 1}' not in log.replace('not resuming from', '')
    trust = TrustList(keys / TRUST_FILE, revoked_path=tmp_path / 'none')
    mine = CheckpointRegistry(data / 'checkpoints' / 'pick_cube').get(first)
    trust.add(new.public)
    assert verify_checkpoint(mine.path, trust=trust, robot=ROBOT).key_id == new.key_id
    trust = TrustList(keys / TRUST_FILE)
    assert mine.metrics['train_steps'] > 0
    # the old ones were left as they were: signed by the revoked key, or not signed
    with pytest.raises(RevokedKey if latest == 'revoked' else SignatureRejected,
                       match='revoked' if latest == 'revoked' else 'not signed'):
        verify_checkpoint(registry.get(first - 1).path, trust=trust, robot=ROBOT)


def test_learner_follows_a_guard_rollback_only_to_a_verified_checkpoint(ros, node_group,
                                                                        tmp_path):
    """The scheduler's deploy guard rolled back (a signed deploy record `guard rollback from
    vN`): the learner trains on from the version rolled back to only if that file is signed by
    a trusted key and is the bytes the record names; otherwise it logs why and changes
    nothing (no version revoked, the gate still compares with what it had)."""
    from scarls.checkpoints.registry import read_index
    from scarls.learner.demos import generate_demos
    ns, keys, data = 'lrollback', tmp_path / 'keys', tmp_path / 'ecu'
    offline = tmp_path / 'offline'
    generate_demos(offline, 'pick_cube', 3, seed=10_000, image_shape=(24, 32))
    signer = ensure_key(keys, f'learner-{ns}')
    root = data / 'checkpoints' / 'pick_cube'
    registry = CheckpointRegistry(root, signer=signer, robot=ROBOT)
    for seed, parent in ((1, None), (2, 1), (3, 2)):
        registry.publish(make_policy('mlp', seed=seed), metrics={'open_loop_error': 0.01},
                         parent=parent, approved=True)
    registry.signer = Signer.generate('stranger')   # v1 signed again by a key nobody trusts
    registry.resign(1)
    probe = Probe(ns)
    pub = probe.node.create_publisher(CheckpointInfo, 'scheduler/checkpoint', qos.LATCHED)

    def rollback(generation: int, to: int, sha: str) -> None:
        token = sign_deploy_record(DeployRecord(ns, generation, to, sha, ROBOT,
                                                'guard rollback from v3'), signer)
        pub.publish(CheckpointInfo(version=to, policy='mlp', sha256=sha, approved=True,
                                   uri=token))

    def log() -> str:
        return log_text(node_group, 'learner')

    try:
        _start_learner(node_group, ns, data, keys, offline)
        probe.wait_for(lambda: 'resuming from v3' in log() or node_group.dead(), 180,
                       'the learner resuming from v3')
        assert not node_group.dead(), [d.tail() for d in node_group.dead()]
        rollback(1, 1, registry.get(1).sha256)          # v1: signed by an untrusted key
        probe.wait_for(lambda: 'cannot follow the rollback from v3 to v1' in log(), 60,
                       'the rollback to the stranger-signed v1 refused')
        rollback(2, 2, '0' * 64)                        # v2, but not the bytes it names
        probe.wait_for(lambda: 'cannot follow the rollback from v3 to v2' in log(), 60,
                       'the rollback to v2 with the wrong hash refused')
        assert not any(r.revoked for r in read_index(root).records.values())
        rollback(3, 2, registry.get(2).sha256)          # the real record
        probe.wait_for(lambda: 'deploy guard rolled back from v3 to v2' in log(), 60,
                       'the rollback to v2 followed')
    finally:
        probe.close()
    text = log()
    assert 'v1 is signed by key' in text and 'not in the trust list' in text, text[-2000:]
    assert 'deploy record names v2' in text
    index = read_index(root).records
    assert index[3].revoked and not index[2].revoked and not index[1].revoked
