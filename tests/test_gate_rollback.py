"""The learner's side of a deploy-guard rollback, the registry's revocation and retention of the
rollback target, and the closed-loop gate (scarls.learner.sim_gate)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from scarls.checkpoints import CheckpointRejected, load_checkpoint
from scarls.checkpoints.format import UntrustedKey
from scarls.checkpoints.registry import CheckpointRegistry
from scarls.checkpoints.signing import TRUST_FILE, Signer, TrustList, ensure_key
from scarls.learner.config import RolloutConfig
from scarls.learner.demos import generate_demos
from scarls.learner.online import DEMOS_METRIC, OnlineConfig, OnlineLearner
from scarls.learner.sim_gate import ClosedLoopGate, SceneScore, closed_loop_scores
from scarls.learner.trainer import TrainerConfig
from scarls.policies import make_policy

SHAPE = (24, 32)


@pytest.fixture(scope='module')
def demos(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('offline')
    generate_demos(root, 'pick_cube', 3, seed=10_000, image_shape=SHAPE)
    return root


def test_the_learner_follows_a_guard_rollback(tmp_path, demos):
    config = OnlineConfig(steps_per_round=10, pretrain_steps=0, threshold=100.0,
                          tolerance=100.0, trainer=TrainerConfig(batch_size=8))
    learner = OnlineLearner(make_policy('mlp', seed=0),
                            CheckpointRegistry(tmp_path / 'ckpt', keep_last=10), config)
    learner.load_offline(demos, 'pick_cube', heldout=1)
    for _ in range(3):
        assert learner.train_round().approved
    assert learner.deployed_version == 3
    registry = learner.registry
    assert [registry.get(v).parent for v in (1, 2, 3)] == [None, 1, 2]
    # the error on the held-out demonstrations alone is recorded too (comparable across versions)
    assert all(math.isfinite(registry.get(v).metrics[DEMOS_METRIC]) for v in (1, 2, 3))
    # the scheduler rolled back from v2 to v1: v2 and v3 (trained from v2) are revoked
    assert learner.follow_rollback(1, 2) == [2, 3]
    assert learner.deployed_version == 1 and registry.deployed.version == 1
    assert registry.get(2).revoked and registry.get(3).revoked and not registry.get(1).revoked
    assert registry.latest().version == 1     # a restarted learner resumes from v1
    v1, _ = load_checkpoint(registry.get(1).path)
    for name, value in v1.state_dict().items():
        assert torch.equal(learner.policy.state_dict()[name], value), name
    assert learner.deployed_metric == pytest.approx(learner.evaluate(v1.state_dict()))
    # the same record again (a latched announcement after a restart): nothing to do
    assert learner.follow_rollback(1, 2) is None
    # the next candidate is trained from v1 and compared with it
    assert learner.train_round().parent == 1


def test_a_rollback_target_is_verified_before_anything_changes(tmp_path, demos):
    """The rollback target re-enters training (and every later candidate is signed by this
    learner): it must be signed by a trusted key for this robot and be the bytes the signed
    deploy record names. A refused rollback revokes nothing and can be retried."""
    robot = '0123456789abcdef'
    signer = ensure_key(tmp_path / 'keys', 'learner-ecu0')
    trust = TrustList(tmp_path / 'keys' / TRUST_FILE)
    registry = CheckpointRegistry(tmp_path / 'ckpt', keep_last=10, signer=signer, robot=robot)
    config = OnlineConfig(steps_per_round=5, pretrain_steps=0, threshold=100.0,
                          tolerance=100.0, trainer=TrainerConfig(batch_size=8))
    learner = OnlineLearner(make_policy('mlp', seed=0), registry, config)
    learner.load_offline(demos, 'pick_cube', heldout=1)
    for _ in range(3):
        assert learner.train_round().approved
    # v1 re-signed by a key nobody trusts (the index follows, so only the signature is wrong)
    registry.signer = Signer.generate('stranger')
    registry.resign(1)
    with pytest.raises(UntrustedKey):
        learner.follow_rollback(1, 2, trust=trust, robot=robot)
    assert learner.deployed_version == 3 and not registry.get(2).revoked
    registry.signer = signer
    registry.resign(1)
    # signed for another robot
    with pytest.raises(CheckpointRejected, match='robot'):
        learner.follow_rollback(1, 2, trust=trust, robot='fedcba9876543210')
    # not the bytes the deploy record names
    with pytest.raises(CheckpointRejected, match='deploy record'):
        learner.follow_rollback(1, 2, trust=trust, robot=robot, expected_sha256='0' * 64)
    assert learner.deployed_version == 3 and not registry.get(2).revoked
    # the right record: followed
    assert learner.follow_rollback(1, 2, trust=trust, robot=robot,
                                   expected_sha256=registry.get(1).sha256) == [2, 3]
    assert learner.deployed_version == 1


def test_retention_keeps_the_deploy_logs_recent_versions(tmp_path):
    registry = CheckpointRegistry(tmp_path, keep_last=1)
    policy = make_policy('mlp', seed=0)
    entries = []
    for v in (1, 2):   # each deployed by the scheduler right after its publish
        registry.publish(policy, metrics={'open_loop_error': 1.0}, approved=True)
        entries.append({'generation': v, 'version': v, 'sha256': '', 'reason': 'approved',
                        'at': ''})
        (tmp_path / 'deploys.json').write_text(json.dumps(
            {'generation': v, 'current': entries[-1], 'history': entries}))
    for _ in range(4):
        registry.publish(policy, metrics={'open_loop_error': 1.0}, approved=True)
    kept = [r.version for r in registry.records() if r.has_weights]
    # v1 (the guard's rollback target) and v2 (deployed) with the newest (v6, also the best)
    assert kept == [1, 2, 6]
    assert registry.revoke([2, 99]) == [2] and registry.revoke([2]) == []
    assert registry.get(2).revoked


def test_closed_loop_gate_compares_on_the_same_scenes():
    gate = ClosedLoopGate(4, seed=5, tolerance=0.05, floor=0.2)
    assert gate.seeds == (5, 6, 7, 8)

    def scores(*progress):
        return [SceneScore(5 + i, p == 1.0, p, 10) for i, p in enumerate(progress)]

    deployed = scores(1.0, 0.6, 0.6, 0.6)
    assert gate.decide(scores(1.0, 1.0, 0.6, 0.6), deployed).approved
    assert gate.decide(scores(1.0, 0.6, 0.6, 0.5), deployed).approved   # within tolerance
    assert not gate.decide(scores(1.0, 0.6, 0.4, 0.4), deployed).approved
    # scenes solved first: one solved more outweighs progress elsewhere, one fewer fails
    assert gate.decide(scores(1.0, 1.0, 0.2, 0.2), deployed).approved
    worse = gate.decide(scores(0.9, 0.9, 0.9, 0.9), deployed)
    assert not worse.approved and 'worse than the deployed' in worse.reason
    assert not gate.decide(scores(0.1, 0.1, 0.1, 0.1), None).approved   # below the floor
    assert gate.decide(scores(0.3, 0.3, 0.3, 0.3), None).approved
    with pytest.raises(ValueError):
        gate.decide(scores(1, 1, 1, 1), [SceneScore(99, True, 1.0, 1)] * 4)


def test_closed_loop_scores_are_deterministic_per_scene():
    torch.set_num_threads(1)
    policy = make_policy('mlp', seed=0)
    cfg = RolloutConfig(max_steps=40, image_shape=SHAPE)
    a = closed_loop_scores(policy, [3, 4], config=cfg)
    b = closed_loop_scores(policy, [3, 4], config=cfg)
    assert a == b and [s.seed for s in a] == [3, 4]
    assert all(0.0 <= s.progress <= 1.0 and not s.success and s.steps == 40 for s in a)


def test_the_learner_can_gate_on_closed_loop_progress(tmp_path, demos):
    config = OnlineConfig(steps_per_round=10, pretrain_steps=0, threshold=100.0,
                          gate_metric='closed_loop', gate_scenes=2,
                          trainer=TrainerConfig(batch_size=8))
    learner = OnlineLearner(make_policy('mlp', seed=0), CheckpointRegistry(tmp_path / 'ckpt'),
                            config)
    learner.load_offline(demos, 'pick_cube', heldout=1)
    first = learner.train_round()
    assert first.approved and 'closed-loop progress' in first.reason
    metrics = learner.registry.get(first.version).metrics
    assert 0.0 <= metrics['closed_loop_progress'] <= 1.0
    assert metrics['closed_loop_success'] in (0.0, 0.5, 1.0)
    gate = learner.closed_loop_gate()
    assert gate.seeds == (800_000, 800_001)
    # the next candidate is compared with v1's scores on the same scenes
    gate.floor = 1.0
    second = learner.train_round()
    assert not second.approved and 'below the floor' in second.reason
    with pytest.raises(Exception, match='gate_metric'):
        OnlineConfig(gate_metric='vibes')
