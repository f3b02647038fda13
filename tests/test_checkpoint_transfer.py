from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from scarls.checkpoints import (
    CheckpointRegistry,
    ChunkFetcher,
    ChunkReply,
    ChunkServer,
    TransferError,
    load_checkpoint,
    save_checkpoint,
)
from scarls.policies import make_policy

torch.set_num_threads(1)

MLP = {'chunk_size': 4, 'hidden_sizes': [32, 32]}


@pytest.fixture
def registry(tmp_path):
    reg = CheckpointRegistry(tmp_path / 'reg')
    reg.publish(make_policy('mlp', MLP, seed=1), metrics={'open_loop_error': 0.5}, approved=True)
    reg.publish(make_policy('mlp', MLP, seed=2), metrics={}, approved=False)
    return reg


def fetcher(request_fn, version=1, **kw):
    kw.setdefault('chunk_size', 1000)
    kw.setdefault('retry_delay_s', 0.0)
    return ChunkFetcher(request_fn, version, **kw)


def test_round_trip_through_server(registry):
    rec = registry.get(1)
    server = ChunkServer(registry)
    calls: list[tuple[int, int, int]] = []
    progress: list[tuple[int, int]] = []

    def request(version, offset, length):
        calls.append((version, offset, length))
        return server.handle(version, offset, length)

    f = fetcher(request, progress=lambda got, total: progress.append((got, total)))
    data = f.fetch()
    assert data == rec.path.read_bytes() and len(data) > 5000
    assert len(calls) == f.requests == -(-rec.size // 1000) and f.failed_attempts == 0
    assert all(length <= 1000 for _, _, length in calls)
    assert progress[-1] == (rec.size, rec.size)
    assert [p[0] for p in progress] == sorted(p[0] for p in progress)
    policy, header = load_checkpoint(data, expected_sha256=rec.sha256)
    assert header.version == 1
    original = make_policy('mlp', MLP, seed=1)
    state = {'state': torch.zeros(1, 14)}
    assert torch.equal(policy(state), original(state))
    # the announced sha is accepted; a server chunk limit below the client's works too
    small = ChunkServer(registry, max_chunk=300)
    assert fetcher(small.handle, chunk_size=4096, expected_sha256=rec.sha256).fetch() == data


def test_server_bounds_and_errors(registry):
    server = ChunkServer(registry, max_chunk=100)
    rec = registry.get(1)
    r = server.handle(1, 0, 10_000)
    assert r.ok and len(r.data) == 100 and r.total_size == rec.size and r.sha256 == rec.sha256
    tail = server.handle(1, rec.size - 7, 100)
    assert tail.ok and tail.data == rec.path.read_bytes()[-7:]
    end = server.handle(1, rec.size, 100)
    assert end.ok and end.data == b''
    for args, match in [
        ((9, 0, 10), 'unknown checkpoint version 9'),
        ((2, 0, 10), 'without weights'),
        ((1, rec.size + 1, 10), 'beyond the end'),
        ((1, -1, 10), 'offset must be'),
        ((1, 0, 0), 'length must be'),
        ((-3, 0, 10), 'version must be'),
    ]:
        reply = server.handle(*args)
        assert not reply.ok and match in reply.error and reply.data == b''
    rec.path.write_bytes(rec.path.read_bytes() + b'x')
    assert 'changed on the server' in server.handle(1, 0, 10).error
    rec.path.unlink()
    assert 'missing' in server.handle(1, 0, 10).error
    with pytest.raises(ValueError, match='max_chunk'):
        ChunkServer(registry, max_chunk=0)


def test_path_lookup_source_recomputes_sha_when_the_file_changes(tmp_path):
    path = tmp_path / 'c.safetensors'
    save_checkpoint(path, make_policy('mlp', MLP), version=4)
    for server in (ChunkServer({4: path}), ChunkServer(lambda v: path if v == 4 else None)):
        first = server.handle(4, 0, 10)
        assert first.ok and first.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
        assert 'unknown checkpoint version 5' in server.handle(5, 0, 10).error
    save_checkpoint(path, make_policy('mlp', MLP, seed=9), version=4)
    assert server.handle(4, 0, 10).sha256 == hashlib.sha256(path.read_bytes()).hexdigest()

    def broken(v):
        raise RuntimeError('db down')

    assert 'db down' in ChunkServer(broken).handle(1, 0, 1).error


def test_transient_corrupted_chunk_is_refetched(registry):
    server = ChunkServer(registry)
    corrupted = []

    def flaky(version, offset, length):
        reply = server.handle(version, offset, length)
        if offset == 2000 and not corrupted:
            corrupted.append(offset)
            data = bytearray(reply.data)
            data[5] ^= 0x01
            return ChunkReply(True, '', reply.total_size, reply.sha256, bytes(data))
        return reply

    assert fetcher(flaky).fetch() == registry.get(1).path.read_bytes()
    assert corrupted == [2000]


def test_persistently_corrupted_data_raises(registry):
    server = ChunkServer(registry)

    def corrupt(version, offset, length):
        reply = server.handle(version, offset, length)
        return ChunkReply(True, '', reply.total_size, reply.sha256, reply.data[:-1] + b'\0')

    with pytest.raises(TransferError, match='do not match the announced sha256 after 2'):
        fetcher(corrupt).fetch()
    # a file corrupted on the server's disk (same size): the recorded sha exposes it
    path = registry.get(1).path
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TransferError, match='verify'):
        fetcher(server.handle, full_retries=0).fetch()


def test_file_changed_mid_transfer(tmp_path):
    path = tmp_path / 'c.safetensors'
    save_checkpoint(path, make_policy('mlp', MLP, seed=1), version=1)
    server = ChunkServer({1: path})
    seen = []

    def request(version, offset, length):
        seen.append(offset)
        if len(seen) == 2:  # replaced after the first chunk
            save_checkpoint(path, make_policy('mlp', MLP, seed=2), version=1)
        return server.handle(version, offset, length)

    with pytest.raises(TransferError, match='changed on the server during the transfer'):
        fetcher(request).fetch()
    assert len(seen) == 2


def test_oversized_checkpoint_rejected_before_buffering(registry):
    server = ChunkServer(registry)
    calls = []

    def request(*args):
        calls.append(args)
        return server.handle(*args)

    with pytest.raises(TransferError, match='over the limit max_bytes=1000'):
        fetcher(request, max_bytes=1000).fetch()
    assert len(calls) == 1


def test_server_error_fails_fast_with_its_message(registry):
    server = ChunkServer(registry)
    calls = []

    def request(*args):
        calls.append(args)
        return server.handle(*args)

    with pytest.raises(TransferError, match='unknown checkpoint version 42'):
        fetcher(request, version=42).fetch()
    with pytest.raises(TransferError, match='without weights'):
        fetcher(request, version=2).fetch()
    assert len(calls) == 2
    with pytest.raises(TransferError, match='announcement and the server disagree'):
        fetcher(server.handle, expected_sha256='0' * 64).fetch()


def test_failed_chunks_are_retried_and_resumed(registry):
    server = ChunkServer(registry)
    offsets = []
    failures = {3000: 2, 5000: 1}
    sleeps: list[float] = []

    def unreliable(version, offset, length):
        offsets.append(offset)
        if failures.get(offset, 0) > 0:
            failures[offset] -= 1
            raise TimeoutError('service call timed out')
        if offset == 4000 and offsets.count(4000) == 1:
            r = server.handle(version, offset, length)
            return ChunkReply(True, '', r.total_size, r.sha256, b'')  # empty before the end
        return server.handle(version, offset, length)

    f = fetcher(unreliable, retries=2, retry_delay_s=0.1, sleep=sleeps.append)
    assert f.fetch() == registry.get(1).path.read_bytes()
    assert offsets.count(0) == 1 and offsets.count(3000) == 3 and offsets.count(5000) == 2
    assert f.failed_attempts == 4 and sleeps == [0.1, 0.2, 0.1, 0.1]

    def dead(version, offset, length):
        raise ConnectionError('no server')

    with pytest.raises(TransferError, match='failed 3 times; last error.*no server'):
        fetcher(dead, retries=2).fetch()


def test_timeout_bounds_the_whole_transfer(registry):
    server = ChunkServer(registry)
    now = [0.0]

    def slow(version, offset, length):
        now[0] += 1.0
        return server.handle(version, offset, length)

    with pytest.raises(TransferError, match='timed out after 3 s at offset 4000'):
        fetcher(slow, timeout_s=3.0, clock=lambda: now[0]).fetch()


def test_fetched_bytes_load_like_the_original(registry):
    policy = make_policy(
        'cnn',
        {
            'chunk_size': 2,
            'image_size': 32,
            'channels': [4, 8],
            'feature_dim': 8,
            'hidden_dim': 16,
        },
    )
    rec = registry.publish(policy, metrics={'open_loop_error': 0.1}, approved=True)
    data = fetcher(
        ChunkServer(registry, max_chunk=4096).handle, version=rec.version, chunk_size=4096
    ).fetch()
    loaded, _ = load_checkpoint(data, expected_sha256=rec.sha256)
    rng = np.random.default_rng(0)
    batch = {'state': torch.zeros(1, 14)}
    for cam in ('top', 'left', 'right'):
        batch[f'image.{cam}'] = torch.from_numpy(
            rng.integers(0, 256, (1, 24, 32, 3), dtype=np.uint8)
        )
    with torch.no_grad():
        assert torch.equal(loaded(batch), policy.eval()(batch))


def test_fetcher_argument_checks():
    with pytest.raises(ValueError, match='chunk_size'):
        ChunkFetcher(lambda *a: None, 1, chunk_size=0)  # type: ignore[arg-type,return-value]
    with pytest.raises(ValueError, match='expected_sha256'):
        ChunkFetcher(lambda *a: None, 1, expected_sha256='xyz')  # type: ignore[arg-type,return-value]
    with pytest.raises(TypeError, match='request_fn'):
        ChunkFetcher(None, 1)  # type: ignore[arg-type]
