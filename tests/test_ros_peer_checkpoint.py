"""A new ECU starts from the checkpoint a peer deploys: fetched over the peer's
scheduler/get_checkpoint service (chunked, sha256-verified) by the new learner, in real
processes, instead of pre-training from scratch. Both ECUs share a key directory (as a fleet
does), so the new learner trusts the peer's signature."""

from __future__ import annotations

import pytest
import torch
from rosutil import Probe, start_nodes
from scarls_interfaces.msg import CheckpointInfo

from scarls.bringup import NodeSpec, ecu_nodes
from scarls.checkpoints import load_checkpoint
from scarls.checkpoints.registry import CheckpointRegistry
from scarls.learner.demos import generate_demos
from scarls.ros import qos

pytestmark = pytest.mark.ros
TRAIN = {'pretrain_steps': 40, 'steps_per_round': 20, 'batch_size': 8, 'threshold': 100.0,
         'heldout_demos': 1}


def test_new_learner_adopts_the_peers_deployed_checkpoint(ros, node_group, tmp_path):
    offline = tmp_path / 'offline'
    generate_demos(offline, 'pick_cube', 3, seed=10_000, image_shape=(32, 40))
    keys = str(tmp_path / 'keys')
    peer = [s for s in ecu_nodes('peer', data_root=str(tmp_path / 'peer'), learner=True,
                                 key_dir=keys, extra={
        'learner': {**TRAIN, 'offline_root': str(offline)}}) if s.name in ('scheduler', 'learner')]
    new = NodeSpec('learner', 'scarls.learner.node', 'newecu', {
        'ecu_id': 'newecu', 'task': 'pick_cube', 'data_root': str(tmp_path / 'new'),
        'offline_root': str(offline), 'bootstrap_from': 'peer', 'key_dir': keys, **TRAIN,
        'pretrain_steps': 100_000})   # would take many minutes: it must not pre-train
    probe = Probe('newecu')
    announced: list[CheckpointInfo] = []
    probe.node.create_subscription(CheckpointInfo, 'learner/checkpoint', announced.append,
                                   qos.STATE)
    try:
        start_nodes(node_group, [*peer, new])
        probe.wait_for(lambda: announced or node_group.dead(), 180, "the new learner's v1")
        assert not node_group.dead(), [d.tail() for d in node_group.dead()]
    finally:
        probe.close()
    first = announced[0]
    assert first.version == 1 and first.approved
    mine = CheckpointRegistry(tmp_path / 'new' / 'checkpoints' / 'pick_cube').get(1)
    assert mine.metrics['train_steps'] == 0.0
    theirs = CheckpointRegistry(tmp_path / 'peer' / 'checkpoints' / 'pick_cube').get(1)
    assert theirs.approved
    a, _ = load_checkpoint(mine.path, expected_sha256=mine.sha256)
    b, _ = load_checkpoint(theirs.path, expected_sha256=theirs.sha256)
    for (name, x), (_, y) in zip(a.state_dict().items(), b.state_dict().items(), strict=True):
        torch.testing.assert_close(x, y, msg=name)
    log = (node_group.log_dir / 'newecu_learner.log').read_text()
    assert 'started from peer v1' in log and 'fetched and verified' in log
