from __future__ import annotations

import json
import threading

import pytest
import torch

from scarls.checkpoints import (
    APPROVED_KEY,
    CheckpointError,
    CheckpointRegistry,
    RegistryError,
    UnknownVersion,
    file_sha256,
    load_checkpoint,
    read_header,
)
from scarls.policies import make_policy

torch.set_num_threads(1)


@pytest.fixture(scope='module')
def policy():
    return make_policy('mlp', {'chunk_size': 2, 'hidden_sizes': [8]})


def pub(reg, policy, err=None, approved=True, **kw):
    metrics = {} if err is None else {'open_loop_error': err}
    return reg.publish(policy, metrics=metrics, approved=approved, **kw)


def files(root):
    return sorted(p.name for p in root.iterdir())


def test_publish_writes_verified_files_and_index(tmp_path, policy):
    reg = CheckpointRegistry(tmp_path)
    r1 = pub(reg, policy, 0.5, extra={'episodes': 3})
    r2 = pub(reg, policy, 0.4, parent=1)
    assert (r1.version, r2.version, r2.parent) == (1, 2, 1)
    assert r1.path == tmp_path / 'v000001.safetensors' and r1.approved and r1.has_weights
    assert r1.sha256 == file_sha256(r1.path) and r1.size == r1.path.stat().st_size
    header = read_header(r1.path)
    assert header.version == 1 and header.extra == {'episodes': 3, APPROVED_KEY: True}
    assert header.metrics == {'open_loop_error': 0.5} and header.created == r1.created
    loaded, _ = load_checkpoint(r2.path, expected_sha256=r2.sha256)
    assert loaded.name == 'mlp'
    assert files(tmp_path) == ['registry.json', 'v000001.safetensors', 'v000002.safetensors']
    index = json.loads((tmp_path / 'registry.json').read_text())
    assert index['max_version'] == 2 and [r['path'] for r in index['records']] == [
        'v000001.safetensors',
        'v000002.safetensors',
    ]
    assert reg.records() == [r1, r2] and reg.get(2) == r2 and 2 in reg and len(reg) == 2
    with pytest.raises(UnknownVersion, match='known versions: \\[1, 2\\]') as info:
        reg.get(7)
    assert isinstance(info.value, KeyError)


def test_state_survives_restart_and_versions_are_never_reused(tmp_path, policy):
    reg = CheckpointRegistry(tmp_path, keep_last=2)
    for i in range(6):
        pub(reg, policy, 1.0 - 0.01 * i)
    reg.mark_deployed(5)
    again = CheckpointRegistry(tmp_path, keep_last=2)
    assert again.records() == reg.records()
    assert again.deployed == reg.get(5) and again.next_version == 7
    # remove every file and record except the deployed one: numbering still continues
    assert pub(again, policy, 2.0).version == 7


def test_rejected_recorded_without_weights_unless_configured(tmp_path, policy):
    reg = CheckpointRegistry(tmp_path / 'a')
    pub(reg, policy, 0.3)
    rej = pub(reg, policy, 0.1, approved=False, parent=1)
    assert not rej.approved and rej.path is None and rej.sha256 is None and rej.size == 0
    assert rej.parent == 1 and rej.policy == 'mlp' and rej.created
    assert reg.latest().version == 1 and reg.latest(approved_only=False).version == 1
    assert reg.best().version == 1  # rejected never counts as best
    with pytest.raises(RegistryError, match='not approved'):
        reg.mark_deployed(2)
    keep = CheckpointRegistry(tmp_path / 'b', store_rejected_weights=True)
    pub(keep, policy, 0.3)
    rej = pub(keep, policy, 0.1, approved=False)
    assert rej.has_weights and read_header(rej.path).extra[APPROVED_KEY] is False
    assert keep.latest().version == 1 and keep.latest(approved_only=False).version == 2


def test_best_by_metric(tmp_path, policy):
    reg = CheckpointRegistry(tmp_path, keep_last=10)
    assert reg.best() is None and reg.latest() is None and reg.deployed is None
    pub(reg, policy, 0.3, extra={})
    reg.publish(policy, metrics={'open_loop_error': 0.2, 'success': 0.9}, approved=True)
    reg.publish(policy, metrics={'success': 0.95}, approved=True)
    pub(reg, policy, 0.2)  # tie: the newer wins
    assert reg.best().version == 4
    assert reg.best('success', lower_is_better=False).version == 3
    assert reg.best('missing') is None
    high = CheckpointRegistry(tmp_path, best_metric='success', lower_is_better=False)
    assert high.best().version == 3


def test_retention_keeps_best_deployed_and_last_n(tmp_path, policy):
    reg = CheckpointRegistry(tmp_path, keep_last=2)
    pub(reg, policy, 0.1)  # v1: best forever
    pub(reg, policy, 0.5)  # v2
    pub(reg, policy, 0.6)  # v3
    reg.mark_deployed(3)
    for err in (0.7, 0.8, 0.9):  # v4..v6
        pub(reg, policy, err)
    assert [r.version for r in reg.records() if r.has_weights] == [1, 3, 5, 6]
    # the pruned versions stay as lineage records without weights
    assert [r.version for r in reg.records()] == [1, 2, 3, 4, 5, 6]
    assert reg.get(2).metrics == {'open_loop_error': 0.5} and reg.get(2).sha256 is None
    with pytest.raises(RegistryError):
        reg.rollback(2)
    assert files(tmp_path) == [
        'registry.json',
        'v000001.safetensors',
        'v000003.safetensors',
        'v000005.safetensors',
        'v000006.safetensors',
    ]
    pub(reg, policy, approved=False)  # v7: a rejected record counts as one of the last N
    assert [r.version for r in reg.records() if r.has_weights] == [1, 3, 6]
    assert reg.prune() == []
    # the lineage is capped: the oldest records without weights go first
    capped = CheckpointRegistry(tmp_path, keep_last=2, keep_records=4)
    assert capped.prune() == []
    assert [r.version for r in capped.records()] == [1, 3, 6, 7]
    with pytest.raises(ValueError, match='keep_records'):
        CheckpointRegistry(tmp_path, keep_last=3, keep_records=2)


def test_corrupted_and_missing_files_are_reported_and_skipped(tmp_path, policy):
    reg = CheckpointRegistry(tmp_path, keep_last=10)
    pub(reg, policy, 0.3)
    pub(reg, policy, 0.2)
    pub(reg, policy, 0.1)
    assert reg.verify() == {} and reg.latest().version == 3 and reg.best().version == 3
    p3 = reg.get(3).path
    data = bytearray(p3.read_bytes())
    data[-5] ^= 0xFF
    p3.write_bytes(bytes(data))
    reg.get(2).path.unlink()
    problems = reg.verify()
    assert set(problems) == {2, 3}
    assert 'corrupted' in problems[3] and 'missing' in problems[2]
    assert reg.latest().version == 1 and reg.best().version == 1
    with pytest.raises(RegistryError, match='corrupted'):
        reg.mark_deployed(3)
    # truncation is caught without hashing
    p1 = reg.get(1).path
    p1.write_bytes(p1.read_bytes()[:-1])
    assert reg.latest() is None and 'bytes, expected' in reg.verify()[1]


def test_rollback(tmp_path, policy):
    reg = CheckpointRegistry(tmp_path, keep_last=10)
    with pytest.raises(RegistryError, match='nothing is deployed'):
        reg.rollback()
    pub(reg, policy, 0.5)  # v1
    pub(reg, policy, 0.4)  # v2
    pub(reg, policy, 0.3, approved=False)  # v3
    pub(reg, policy, 0.2)  # v4
    reg.mark_deployed(4)
    reg.get(2).path.unlink()  # broken: skipped
    back = reg.rollback()
    assert back.version == 1 and reg.deployed.version == 1
    assert reg.get(4).revoked and reg.latest().version == 1 and reg.best().version == 1
    with pytest.raises(RegistryError, match='revoked'):
        reg.mark_deployed(4)
    with pytest.raises(RegistryError, match='no intact approved checkpoint older'):
        reg.rollback()
    pub(reg, policy, 0.25)  # v5
    assert reg.rollback(to_version=5, revoke=False).version == 5
    assert not reg.get(1).revoked
    with pytest.raises(RegistryError, match='already deployed'):
        reg.rollback(to_version=5)
    assert CheckpointRegistry(tmp_path).get(4).revoked  # persisted


def test_recovery_on_open(tmp_path, policy):
    reg = CheckpointRegistry(tmp_path, keep_last=10)
    pub(reg, policy, 0.5)
    index_v1 = (tmp_path / 'registry.json').read_text()
    pub(reg, policy, 0.4, parent=1)
    # crash between writing v2's file and the index: v2 is adopted from its header
    (tmp_path / 'registry.json').write_text(index_v1)
    (tmp_path / '.v000003.safetensors.abc.tmp').write_bytes(b'partial')
    reg = CheckpointRegistry(tmp_path, keep_last=10)
    r2 = reg.get(2)
    assert r2.approved and r2.parent == 1 and r2.metrics == {'open_loop_error': 0.4}
    assert r2.sha256 == file_sha256(r2.path)
    assert files(tmp_path) == ['registry.json', 'v000001.safetensors', 'v000002.safetensors']
    # crash in a prune after the index was written: the leftover file is removed
    index = json.loads((tmp_path / 'registry.json').read_text())
    index['records'] = index['records'][1:]
    (tmp_path / 'registry.json').write_text(json.dumps(index))
    reg = CheckpointRegistry(tmp_path)
    assert [r.version for r in reg.records()] == [2] and reg.next_version == 3
    assert not (tmp_path / 'v000001.safetensors').exists()
    # the same when the index kept v2's record without weights (a prune that kept lineage)
    index = json.loads((tmp_path / 'registry.json').read_text())
    index['records'][0].update(path=None, sha256=None, size=0)
    (tmp_path / 'registry.json').write_text(json.dumps(index))
    reg = CheckpointRegistry(tmp_path)
    assert not reg.get(2).has_weights and not (tmp_path / 'v000002.safetensors').exists()
    pub(reg, policy, 0.4)  # v3
    # no index at all: rebuilt from the files
    (tmp_path / 'registry.json').unlink()
    assert [r.version for r in CheckpointRegistry(tmp_path).records()] == [3]
    # unreadable index: refuse with a hint
    (tmp_path / 'registry.json').write_text('{not json')
    with pytest.raises(RegistryError, match='move it away'):
        CheckpointRegistry(tmp_path)


def test_bad_arguments(tmp_path, policy):
    reg = CheckpointRegistry(tmp_path)
    with pytest.raises(CheckpointError, match='finite'):
        reg.publish(policy, metrics={'open_loop_error': float('nan')}, approved=True)
    with pytest.raises(CheckpointError, match='reserved'):
        reg.publish(policy, metrics={}, approved=True, extra={APPROVED_KEY: True})
    with pytest.raises(CheckpointError, match='approved must be a bool'):
        reg.publish(policy, metrics={}, approved=1)  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match='registered Policy'):
        reg.publish(torch.nn.Linear(1, 1), metrics={}, approved=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match='keep_last'):
        CheckpointRegistry(tmp_path, keep_last=0)
    assert reg.records() == [] and reg.next_version == 1


def test_concurrent_publishers_get_distinct_versions(tmp_path, policy):
    reg = CheckpointRegistry(tmp_path, keep_last=20)
    out: list[int] = []

    def work():
        for _ in range(4):
            out.append(pub(reg, policy, 0.1).version)

    threads = [threading.Thread(target=work) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(out) == list(range(1, 9))
    assert CheckpointRegistry(tmp_path).records() == reg.records()
