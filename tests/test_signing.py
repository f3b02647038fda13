"""Signing, trust lists, deploy records and the bounds of checkpoint loading (no ROS)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
from safetensors.torch import save as st_save

from scarls.checkpoints import (
    HEADER_KEY,
    SIGNATURE_KEY,
    CheckpointLimits,
    CheckpointRejected,
    RevokedKey,
    SignatureRejected,
    UntrustedKey,
    dump_checkpoint,
    load_checkpoint,
    load_verified_checkpoint,
    sign_checkpoint_bytes,
    verify_checkpoint,
)
from scarls.checkpoints.deploy import (
    DeployFollower,
    DeployLog,
    DeployRecord,
    DeployRefused,
    check_announcement,
    open_deploy_token,
    sign_deploy_record,
)
from scarls.checkpoints.registry import (
    CheckpointRegistry,
    RegistryError,
    read_index,
    registry_file,
)
from scarls.checkpoints.signing import (
    REVOKED_FILE,
    TRUST_FILE,
    KeyStoreError,
    Signer,
    TrustList,
    ensure_key,
    parse_public_key,
    resolve_key_dir,
)
from scarls.policies import make_policy

torch.set_num_threads(1)
ROBOT = '0123456789abcdef'


@pytest.fixture
def keys(tmp_path):
    signer = ensure_key(tmp_path / 'keys', 'learner-ecu0')
    return signer, TrustList(tmp_path / 'keys' / TRUST_FILE)


# -- keys and trust lists ----------------------------------------------------------------------
def test_ensure_key_creates_once_trusts_and_keeps_the_private_key_private(tmp_path):
    a = ensure_key(tmp_path / 'k', 'learner-ecu0')
    b = ensure_key(tmp_path / 'k', 'learner-ecu0')
    assert a.key_id == b.key_id and len(a.key_id) == 16
    assert (tmp_path / 'k' / 'learner-ecu0.key').stat().st_mode & 0o077 == 0
    pub = parse_public_key((tmp_path / 'k' / 'learner-ecu0.pub').read_text())
    assert pub.key_id == a.key_id and pub.comment == 'learner-ecu0'
    trust = TrustList(tmp_path / 'k' / TRUST_FILE)
    assert list(trust.keys()) == [a.key_id]
    other = ensure_key(tmp_path / 'k', 'learner-ecu1')
    assert set(trust.keys()) == {a.key_id, other.key_id}   # re-read after the change
    with pytest.raises(KeyStoreError, match='key name'):
        ensure_key(tmp_path / 'k', '../evil')


def test_concurrent_ensure_key_gives_one_key_and_one_trust_line(tmp_path):
    ids: list[str] = []
    threads = [threading.Thread(target=lambda: ids.append(
        ensure_key(tmp_path / 'k', 'learner-ecu0').key_id)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(ids)) == 1
    lines = [ln for ln in (tmp_path / 'k' / TRUST_FILE).read_text().splitlines()
             if ln and not ln.startswith('#')]
    assert len(lines) == 1


def test_trust_list_ignores_garbage_and_verify_names_the_key(tmp_path, keys):
    signer, trust = keys
    with open(trust.path, 'a') as f:
        f.write('not a key\nscarls-ed25519 !!!notbase64\n')
    assert list(trust.keys()) == [signer.key_id]
    stranger = Signer.generate('stranger')
    with pytest.raises(UntrustedKey, match=stranger.key_id) as exc:
        trust.verify(stranger.key_id, b'm', stranger.sign(b'm'), what='thing')
    assert 'scarls keys trust' in str(exc.value)
    with pytest.raises(SignatureRejected, match='does not match'):
        trust.verify(signer.key_id, b'm', signer.sign(b'other'), what='thing')
    assert trust.verify(signer.key_id, b'm', signer.sign(b'm'), what='thing').key_id == \
        signer.key_id


def test_a_revoked_key_is_refused_whatever_the_trust_list_says(tmp_path, keys):
    signer, trust = keys
    other = ensure_key(tmp_path / 'keys', 'learner-ecu1')
    data, _ = dump_checkpoint(make_policy('mlp', seed=1), version=3, signer=signer, robot=ROBOT)
    _, verified = load_verified_checkpoint(data, trust=trust, robot=ROBOT)
    assert verified.key_id == signer.key_id
    elsewhere = TrustList(trust.path)   # another process's view of the same files
    assert signer.key_id in elsewhere
    assert trust.revoke(signer.key_id.upper(), 'laptop stolen') == (True, True)
    assert (tmp_path / 'keys' / REVOKED_FILE).is_file() and trust.is_revoked(signer.key_id)
    assert signer.public.line() not in trust.path.read_text()   # its line is gone
    assert signer.key_id not in elsewhere and other.key_id in elsewhere   # re-read, no restart
    with pytest.raises(RevokedKey, match=f'{signer.key_id}.*laptop stolen'):
        load_checkpoint(data, trust=elsewhere, robot=ROBOT)
    # its line added back by hand (an old copy of the trust list): still refused
    with open(trust.path, 'a') as f:
        f.write(signer.public.line() + '\n')
    assert signer.key_id not in elsewhere
    with pytest.raises(RevokedKey):
        elsewhere.verify(signer.key_id, b'm', signer.sign(b'm'), what='thing')
    # it cannot be trusted again, nor made the signer of a learner again
    with pytest.raises(KeyStoreError, match='cannot be trusted again'):
        trust.add(signer.public)
    with pytest.raises(KeyStoreError, match='revoked.*scarls keys rotate'):
        ensure_key(tmp_path / 'keys', 'learner-ecu0')
    assert trust.revoke(signer.key_id) == (False, True)   # the hand-added line removed too
    assert trust.revoke(signer.key_id) == (False, False)
    other_data, _ = dump_checkpoint(make_policy('mlp'), version=4, signer=other, robot=ROBOT)
    load_checkpoint(other_data, trust=elsewhere, robot=ROBOT)   # the others are unaffected
    with pytest.raises(KeyStoreError, match='not a key id'):
        trust.revoke('learner-ecu1')


def test_an_unreadable_revocation_list_refuses_every_signature(tmp_path, keys):
    signer, trust = keys
    data, _ = dump_checkpoint(make_policy('mlp'), version=1, signer=signer, robot=ROBOT)
    load_checkpoint(data, trust=trust, robot=ROBOT)
    trust.revoked_path.write_text('# revoked\n' + 'ab' * 8 + ' 2026-01-01 old\n'
                                  'ab12 a truncated id\n')
    for check in (lambda: load_checkpoint(data, trust=trust, robot=ROBOT), trust.keys,
                  lambda: signer.key_id in trust):
        with pytest.raises(KeyStoreError, match='line 3 does not start with a 16-hex-digit'):
            check()
    with pytest.raises(SignatureRejected):   # handled wherever a refused signature is
        load_checkpoint(data, trust=trust, robot=ROBOT)
    trust.revoked_path.write_text('ab' * 8 + '\t2026-01-01 old\n' + 'cd' * 8 + '\n')
    assert trust.revoked() == {'ab' * 8: '2026-01-01 old', 'cd' * 8: ''}
    load_checkpoint(data, trust=trust, robot=ROBOT)


def test_keys_manage_the_trust_file_a_node_is_given(tmp_path, capsys):
    """`--trust-file` (a node's `trust_file` parameter): trust, revoke and list act on that
    file and the revocation list next to it, not on the key directory's."""
    from scarls.cli import main
    key_dir, custom = tmp_path / 'keys', tmp_path / 'etc' / 'scarls' / 'trusted'
    assert main(['keys', 'init', '--key-dir', str(key_dir), '--trust-file', str(custom)]) == 0
    signer = Signer.load(key_dir / 'learner-ecu0.key')
    node_view = TrustList(custom)       # what a node with trust_file=<custom> reads
    assert list(node_view.keys()) == [signer.key_id]
    assert not (key_dir / TRUST_FILE).exists()
    assert main(['keys', 'revoke', '--trust-file', str(custom), signer.key_id]) == 0
    assert (custom.parent / REVOKED_FILE).is_file() and node_view.is_revoked(signer.key_id)
    assert list(node_view.keys()) == []
    assert main(['keys', 'list', '--key-dir', str(key_dir), '--trust-file', str(custom)]) == 0
    assert f'revoked {signer.key_id}' in capsys.readouterr().out
    # rotate: the new key is trusted in the same file, the old one stays revoked there
    assert main(['keys', 'rotate', '--key-dir', str(key_dir), '--trust-file', str(custom)]) == 0
    new = Signer.load(key_dir / 'learner-ecu0.key')
    assert list(node_view.keys()) == [new.key_id] and node_view.is_revoked(signer.key_id)


def test_a_node_warns_when_its_own_key_is_not_on_the_trust_list_it_reads(tmp_path):
    """A learner or scheduler given its own `trust_file` creates its key in the key directory
    (trusted there, not in that file): the warning it logs at start names the key and the
    command that trusts it, and that command silences it."""
    import shlex

    from scarls.cli import main
    key_dir, custom = tmp_path / 'keys', tmp_path / 'etc' / 'trusted'
    signer = ensure_key(key_dir, 'learner-ecu0')
    trust = TrustList(custom)
    warning = trust.own_key_warning(signer, key_dir / 'learner-ecu0.pub')
    assert warning is not None and signer.key_id in warning and str(custom) in warning
    command = shlex.split(warning.split('`')[1])
    assert command[:2] == ['scarls', 'keys'] and main(command[1:]) == 0
    assert trust.own_key_warning(signer) is None
    # a key given as a file without its .pub beside it: the line to add, not a command
    other = Signer.generate('ecu1-by-hand')
    warning = trust.own_key_warning(other, tmp_path / 'missing.pub')
    assert other.public.line() in warning and 'scarls keys trust' not in warning
    assert TrustList(key_dir / TRUST_FILE).own_key_warning(signer) is None


def test_keys_revoke_and_rotate_on_the_command_line(tmp_path, capsys, caplog):
    from scarls.cli import main
    key_dir = tmp_path / 'keys'
    args = ['--key-dir', str(key_dir)]
    assert main(['keys', 'init', *args, '--ecu-id', 'ecu0']) == 0
    old = Signer.load(key_dir / 'learner-ecu0.key')
    assert main(['keys', 'rotate', *args, '--ecu-id', 'ecu0', '--reason', 'yearly']) == 0
    out = capsys.readouterr().out
    new = Signer.load(key_dir / 'learner-ecu0.key')
    assert new.key_id != old.key_id and f'{old.key_id} -> {new.key_id}' in out
    assert (key_dir / f'learner-ecu0.key.revoked-{old.key_id}').is_file()
    assert parse_public_key((key_dir / 'learner-ecu0.pub').read_text()).key_id == new.key_id
    trust = TrustList(key_dir / TRUST_FILE)
    assert list(trust.keys()) == [new.key_id] and 'yearly' in trust.revoked()[old.key_id]
    assert main(['keys', 'list', *args]) == 0
    out = capsys.readouterr().out
    assert f'trusted {new.key_id}' in out and f'revoked {old.key_id}' in out
    # a robot computer: trusts the old key, then the new .pub, then revokes the old by id
    robot = ['--key-dir', str(tmp_path / 'robot')]
    old_pub = tmp_path / 'old.pub'
    old_pub.write_text(old.public.line() + '\n')
    assert main(['keys', 'trust', *robot, str(old_pub)]) == 0
    assert main(['keys', 'trust', *robot, str(key_dir / 'learner-ecu0.pub')]) == 0
    assert main(['keys', 'revoke', *robot, old.key_id]) == 0
    assert 'removed from' in capsys.readouterr().out
    robot_trust = TrustList(tmp_path / 'robot' / TRUST_FILE)
    assert list(robot_trust.keys()) == [new.key_id]
    assert main(['keys', 'trust', *robot, str(old_pub)]) == 1   # not again
    assert 'cannot be trusted again' in caplog.text
    assert main(['keys', 'revoke', *robot, 'nonsense']) == 1
    # rotated again, and with the private key gone but a stale .pub left: every key the
    # old files name is revoked, and the .pub is the new key's
    assert main(['keys', 'rotate', *args, '--ecu-id', 'ecu0']) == 0
    third = Signer.load(key_dir / 'learner-ecu0.key')
    (key_dir / 'learner-ecu0.key').unlink()
    assert main(['keys', 'rotate', *args, '--ecu-id', 'ecu0']) == 0
    fourth = Signer.load(key_dir / 'learner-ecu0.key')
    assert parse_public_key((key_dir / 'learner-ecu0.pub').read_text()).key_id == fourth.key_id
    assert set(trust.revoked()) == {old.key_id, new.key_id, third.key_id}
    assert list(trust.keys()) == [fourth.key_id]
    # a registry's checkpoint signed by hand: its index follows (the scheduler checks both)
    registry = CheckpointRegistry(tmp_path / 'reg', signer=old, robot=ROBOT)
    rec = registry.publish(make_policy('mlp'), metrics={'open_loop_error': 0.1}, approved=True)
    assert main(['keys', 'sign', *args, '--ecu-id', 'ecu0', '--robot', 'sim_dual6',
                 str(rec.path)]) == 0
    assert 'registry index updated' in capsys.readouterr().out
    from scarls.robot import load_robot
    signed = read_index(tmp_path / 'reg').records[rec.version]
    assert verify_checkpoint(rec.path, trust=trust, robot=load_robot('sim_dual6').hash,
                             expected_sha256=signed.sha256).key_id == fourth.key_id
    # signing by hand with a revoked key is refused
    (key_dir / 'learner-ecu1.key').write_bytes(
        (key_dir / f'learner-ecu0.key.revoked-{old.key_id}').read_bytes())
    ckpt = tmp_path / 'p.safetensors'
    ckpt.write_bytes(dump_checkpoint(make_policy('mlp'), version=1)[0])
    caplog.clear()
    assert main(['keys', 'sign', *args, '--ecu-id', 'ecu1', str(ckpt)]) == 1
    assert 'is revoked here' in caplog.text


def test_key_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.delenv('SCARLS_KEY_DIR', raising=False)
    assert resolve_key_dir('', tmp_path) == (tmp_path / 'keys').resolve()
    assert resolve_key_dir(str(tmp_path / 'x'), tmp_path) == (tmp_path / 'x').resolve()
    monkeypatch.setenv('SCARLS_KEY_DIR', str(tmp_path / 'env'))
    assert resolve_key_dir('', tmp_path) == (tmp_path / 'env').resolve()


# -- signed checkpoints -----------------------------------------------------------------------
def test_signed_checkpoint_loads_only_with_a_trusted_key_and_the_right_robot(keys):
    signer, trust = keys
    data, header = dump_checkpoint(make_policy('mlp', seed=1), version=3, signer=signer,
                                   robot=ROBOT)
    policy, h = load_checkpoint(data, trust=trust, robot=ROBOT, expected_version=3)
    assert h == header and policy.name == 'mlp'
    info = verify_checkpoint(data, trust=trust, robot=ROBOT)
    assert info.key_id == signer.key_id and info.size == len(data)
    with pytest.raises(CheckpointRejected, match='signed for robot'):
        load_checkpoint(data, trust=trust, robot='f' * 16)
    with pytest.raises(CheckpointRejected, match='announced as v4'):
        load_checkpoint(data, trust=trust, expected_version=4)
    unsigned, _ = dump_checkpoint(make_policy('mlp'), version=3)
    with pytest.raises(SignatureRejected, match='not signed'):
        load_checkpoint(unsigned, trust=trust)
    load_checkpoint(unsigned)   # no trust list: local files, tools


def test_forged_checkpoints_are_refused(keys):
    signer, trust = keys
    data, _ = dump_checkpoint(make_policy('mlp', seed=1), version=3, signer=signer, robot=ROBOT)
    # valid safetensors, self-consistent sha, signed by a stranger
    stranger = Signer.generate('stranger')
    forged, _ = dump_checkpoint(make_policy('mlp', seed=9), version=3, signer=stranger,
                                robot=ROBOT)
    with pytest.raises(UntrustedKey, match=stranger.key_id):
        load_checkpoint(forged, trust=trust, robot=ROBOT)
    # the trusted key's signature copied onto other weights / another version
    n = struct.unpack('<Q', data[:8])[0]
    sig = json.loads(data[8:8 + n])['__metadata__'][SIGNATURE_KEY]
    other, _ = dump_checkpoint(make_policy('mlp', seed=9), version=3)
    m = struct.unpack('<Q', other[:8])[0]
    raw = json.loads(other[8:8 + m])
    raw['__metadata__'][SIGNATURE_KEY] = sig
    block = json.dumps(raw).encode()
    copied = struct.pack('<Q', len(block)) + block + other[8 + m:]
    with pytest.raises(SignatureRejected, match='does not match'):
        load_checkpoint(copied, trust=trust, robot=ROBOT)
    # re-signing by hand (scarls keys sign) with a trusted key makes it loadable
    resigned = sign_checkpoint_bytes(other, signer, ROBOT)
    load_checkpoint(resigned, trust=trust, robot=ROBOT)


def test_registry_signs_what_it_publishes_and_resigns_old_files(tmp_path, keys):
    signer, trust = keys
    reg = CheckpointRegistry(tmp_path / 'reg')
    old = reg.publish(make_policy('mlp'), metrics={'open_loop_error': 0.1}, approved=True)
    with pytest.raises(SignatureRejected):
        verify_checkpoint(old.path, trust=trust)
    reg.signer, reg.robot = signer, ROBOT
    new = reg.publish(make_policy('mlp'), metrics={'open_loop_error': 0.1}, approved=True)
    assert verify_checkpoint(new.path, trust=trust, robot=ROBOT).key_id == signer.key_id
    fixed = reg.resign(old.version)
    assert fixed.sha256 != old.sha256 and not reg.verify()
    verify_checkpoint(fixed.path, trust=trust, robot=ROBOT, expected_sha256=fixed.sha256)
    reopened = CheckpointRegistry(tmp_path / 'reg')
    assert reopened.get(old.version).sha256 == fixed.sha256


# -- bounds: refused before anything is allocated ------------------------------------------------
def _crafted(policy: str, config: dict, tensors: dict | None = None) -> bytes:
    """A small file whose header declares ``config`` (self-consistent payload hash)."""
    from scarls.checkpoints.format import tensors_sha256
    tensors = tensors or {'w': torch.zeros(2)}
    header = {'format_version': 1, 'version': 1, 'parent': None, 'policy': policy,
              'policy_config': config, 'metrics': {}, 'extra': {}, 'created': 'now',
              'payload_sha256': tensors_sha256(tensors)}
    return st_save(tensors, metadata={HEADER_KEY: json.dumps(header)})


@pytest.mark.parametrize('policy, config, match', [
    ('mlp', {'hidden_sizes': [1 << 20, 1 << 20]}, 'max_width'),
    ('mlp', {'hidden_sizes': [16384] * 40}, 'parameters'),
    ('mlp', {'chunk_size': 10 ** 9}, 'max_chunk_size'),
    ('mlp', {'action_dim': 100_000}, 'max_joints'),
    ('cnn', {'image_size': 1 << 16}, 'max_image_side'),
    ('cnn', {'cameras': [f'c{i}' for i in range(100)]}, 'over the limit of 16'),
    ('act', {'enc_layers': 10 ** 6}, 'max_layers'),
    ('mlp', {'hidden_sizes': [[1, 2]]}, 'flat lists'),
    ('mlp', {'hidden_sizes': [64, 64]}, 'tensor names do not match'),
])
def test_crafted_configs_are_refused_before_allocation(policy, config, match):
    data = _crafted(policy, config)
    assert len(data) < 2048
    with pytest.raises(CheckpointRejected, match=match):
        load_checkpoint(data)


def test_declared_tensor_layout_must_fit_the_file():
    data, _ = dump_checkpoint(make_policy('mlp'), version=1)
    n = struct.unpack('<Q', data[:8])[0]
    raw = json.loads(data[8:8 + n])
    name = next(k for k in raw if k != '__metadata__')

    def patched(fn) -> bytes:
        r = json.loads(json.dumps(raw))
        fn(r[name])
        block = json.dumps(r).encode()
        return struct.pack('<Q', len(block)) + block + data[8 + n:]

    cases = [
        (lambda e: e.update(shape=[10 ** 12]), 'over 1000000000 elements'),
        (lambda e: e.update(shape=[e['shape'][0] + 1, *e['shape'][1:]]), 'needs'),
        (lambda e: e.update(dtype='F128'), 'unsupported dtype'),
        (lambda e: e.update(shape=[1] * 20), 'invalid shape'),
        (lambda e: e.update(data_offsets=[0, 10 ** 15]), 'outside'),
    ]
    for fn, match in cases:
        with pytest.raises(CheckpointRejected, match=match):
            load_checkpoint(patched(fn))
    with pytest.raises(CheckpointRejected, match='over the limit'):
        load_checkpoint(data, limits=CheckpointLimits(max_bytes=100))
    with pytest.raises(CheckpointRejected, match='header of'):
        load_checkpoint(data, limits=CheckpointLimits(max_header_bytes=16))


@pytest.mark.multiproc
def test_a_crafted_1kb_header_fails_fast_within_bounded_memory(tmp_path):
    """In a process whose address space may grow by only 256 MB, a ~1 KB checkpoint declaring
    a 4-billion-parameter MLP is refused with CheckpointRejected (building it would need 16 GB;
    before the bounds, the loader allocated the policy before any shape check)."""
    path = tmp_path / 'crafted.safetensors'
    path.write_bytes(_crafted('mlp', {'hidden_sizes': [16384, 16384] * 8}))
    assert path.stat().st_size < 2048
    script = textwrap.dedent(f'''
        import resource, torch
        from scarls.checkpoints import CheckpointRejected, load_checkpoint
        from scarls.policies import make_policy
        torch.set_num_threads(1)
        make_policy('mlp')   # warm up torch's allocator and lazy imports
        with open('/proc/self/status') as f:
            vm = next(int(l.split()[1]) * 1024 for l in f if l.startswith('VmSize'))
        resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), vm + (256 << 20)))
        try:
            load_checkpoint({str(path)!r})
        except CheckpointRejected as exc:
            print('REJECTED', exc)
        except MemoryError:
            print('MEMORY')
    ''')
    out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                         timeout=120, env={**os.environ, 'OMP_NUM_THREADS': '1'})
    assert out.stdout.startswith('REJECTED'), (out.stdout, out.stderr[-2000:])
    assert 'parameters' in out.stdout


# -- deploy records ------------------------------------------------------------------------------
def test_deploy_records_verify_and_order_by_generation(keys):
    signer, trust = keys
    rec = DeployRecord('ecu0', 5, 3, 'a' * 64, ROBOT, 'rollback')
    token = sign_deploy_record(rec, signer)
    opened = open_deploy_token(token, trust, ecu='ecu0', robot=ROBOT)
    assert (opened.generation, opened.version, opened.key_id) == (5, 3, signer.key_id)
    with pytest.raises(DeployRefused, match='ECU'):
        open_deploy_token(token, trust, ecu='ecu1')
    with pytest.raises(DeployRefused, match='robot'):
        open_deploy_token(token, trust, robot='f' * 16)
    forged = sign_deploy_record(DeployRecord('ecu0', 2 ** 32 - 1, 2 ** 32 - 1, 'a' * 64,
                                             ROBOT, 'x'), Signer.generate())
    with pytest.raises(UntrustedKey):
        open_deploy_token(forged, trust)
    body, sig = token[len('scarls-deploy:'):].split('.')
    tampered = 'scarls-deploy:' + body[:-2] + ('A' if body[-2] != 'A' else 'B') + body[-1] + \
        '.' + sig
    with pytest.raises((SignatureRejected, DeployRefused)):
        open_deploy_token(tampered, trust)
    with pytest.raises(SignatureRejected, match='no signed deploy record'):
        open_deploy_token('/data/checkpoints/v1.safetensors', trust)

    follower = DeployFollower()
    r = lambda g, v: DeployRecord('ecu0', g, v, 'a' * 64, ROBOT, 'x')  # noqa: E731
    first = r(4, 5)
    assert follower.offer(first)
    follower.applied_now(first)
    assert not follower.offer(r(4, 5))      # the same decision again (latched replay)
    assert not follower.offer(r(2, 7))      # an older decision, even with a higher version
    rollback = r(5, 3)
    assert follower.offer(rollback)         # a newer decision to a lower version
    follower.failed(rollback)
    assert follower.generation == 4 and follower.offer(r(6, 3))


def test_deploy_log_generations_survive_restarts(tmp_path):
    log = DeployLog(tmp_path / 'deploys.json')
    assert log.generation == 0 and log.current is None
    log.record(2, 'a' * 64, 'approved')
    log.record(1, 'b' * 64, 'rollback')
    again = DeployLog(tmp_path / 'deploys.json')
    assert again.generation == 2 and again.current.version == 1
    assert [e.reason for e in again.history] == ['approved', 'rollback']
    assert again.record(3, 'c' * 64, 'approved').generation == 3
    (tmp_path / 'bad.json').write_text('{')
    with pytest.raises(RegistryError, match='unreadable'):
        DeployLog(tmp_path / 'bad.json')


def test_announcements_must_name_a_registry_record_and_file(tmp_path, keys):
    signer, _ = keys
    reg = CheckpointRegistry(tmp_path / 'reg', signer=signer, robot=ROBOT)
    good = reg.publish(make_policy('mlp'), metrics={'open_loop_error': 0.1}, approved=True)
    bad = reg.publish(make_policy('mlp'), metrics={'open_loop_error': 9.0}, approved=False)
    index = read_index(tmp_path / 'reg')
    rec, path = check_announcement(index, good.version, good.sha256, str(good.path))
    assert rec.version == good.version and path == good.path.resolve()
    secret = tmp_path / 'secret.txt'
    secret.write_text('do not serve')
    link = tmp_path / 'reg' / 'v000099.safetensors'
    cases = [
        (2 ** 32 - 1, good.sha256, str(good.path), 'beyond the registry'),
        (bad.version, '', '', 'not approved'),
        (good.version, 'f' * 64, str(good.path), 'sha256'),
        (good.version, good.sha256, str(secret), 'outside the registry'),
        (good.version, good.sha256, '/etc/passwd', 'outside the registry'),
    ]
    for version, sha, uri, match in cases:
        with pytest.raises(DeployRefused, match=match):
            check_announcement(index, version, sha, uri)
    os.symlink(secret, link)
    with pytest.raises(RegistryError, match='outside the registry'):
        registry_file(tmp_path / 'reg', link)
    assert registry_file(tmp_path / 'reg', good.path, good.version) == good.path.resolve()
    with pytest.raises(RegistryError, match='not the file of'):
        registry_file(tmp_path / 'reg', good.path, good.version + 5)


def test_retention_keeps_the_version_the_scheduler_rolled_back_to(tmp_path, keys):
    signer, _ = keys
    reg = CheckpointRegistry(tmp_path / 'reg', keep_last=1, signer=signer, robot=ROBOT)
    first = reg.publish(make_policy('mlp'), metrics={'open_loop_error': 0.5}, approved=True)
    DeployLog(tmp_path / 'reg' / 'deploys.json').record(first.version, first.sha256, 'rollback')
    for seed in range(3):
        reg.publish(make_policy('mlp', seed=seed), metrics={'open_loop_error': 0.1},
                    approved=True)
    assert reg.get(first.version).has_weights and first.path.exists()
