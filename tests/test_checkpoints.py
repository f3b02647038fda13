from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import pytest
import torch
from safetensors.torch import save as st_save

from scarls.checkpoints import (
    HEADER_KEY,
    CheckpointError,
    CheckpointHeader,
    CheckpointRejected,
    dump_checkpoint,
    file_sha256,
    load_checkpoint,
    read_header,
    save_checkpoint,
    tensors_sha256,
)
from scarls.common.device import DeviceError
from scarls.policies import CAMERAS, Observation, make_policy

torch.set_num_threads(1)

SMALL_CNN = {
    'chunk_size': 4,
    'image_size': 32,
    'channels': [8, 16],
    'feature_dim': 16,
    'hidden_dim': 32,
}


def obs() -> Observation:
    rng = np.random.default_rng(0)
    return Observation(
        images={c: rng.integers(0, 256, (30, 40, 3), dtype=np.uint8) for c in CAMERAS},
        state=rng.standard_normal(14).astype(np.float32),
    )


def rewrite(data: bytes, tensors_fn=None, header_fn=None, rehash: bool = False) -> bytes:
    """Re-serialise a checkpoint after editing its tensors and/or header dict (``rehash``:
    with a payload hash that matches the edited tensors)."""
    n = struct.unpack('<Q', data[:8])[0]
    header = json.loads(json.loads(data[8 : 8 + n])['__metadata__'][HEADER_KEY])
    from safetensors.torch import load as st_load

    tensors = st_load(data)
    if tensors_fn:
        tensors_fn(tensors)
    if header_fn:
        header_fn(header)
    if rehash:
        header['payload_sha256'] = tensors_sha256(tensors)
    return st_save(tensors, metadata={HEADER_KEY: json.dumps(header)})


@pytest.mark.parametrize(('name', 'cfg'), [('mlp', {'chunk_size': 4}), ('cnn', SMALL_CNN)])
def test_round_trip_same_outputs(tmp_path, name, cfg):
    policy = make_policy(name, cfg, seed=3)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.01)  # not the default init
    path = tmp_path / 'sub' / 'v3.safetensors'
    header = save_checkpoint(
        path,
        policy,
        version=3,
        parent=2,
        metrics={'success_rate': 0.5},
        extra={'episodes': [1, 2]},
    )
    assert path.exists() and not list(path.parent.glob('.*tmp'))
    loaded, h2 = load_checkpoint(path, expected_sha256=file_sha256(path))
    assert h2 == header
    assert (h2.version, h2.parent, h2.policy, h2.metrics) == (3, 2, name, {'success_rate': 0.5})
    assert h2.policy_config == policy.config.to_dict() and h2.extra == {'episodes': [1, 2]}
    assert not loaded.training
    np.testing.assert_array_equal(loaded.predict_chunk(obs()), policy.predict_chunk(obs()))
    # bytes in, same result; the header can be read alone
    loaded_b, _ = load_checkpoint(path.read_bytes())
    np.testing.assert_array_equal(loaded_b.predict_chunk(obs()), policy.predict_chunk(obs()))
    assert read_header(path) == header


def test_file_sha256_matches_hashlib(tmp_path):
    path = tmp_path / 'c.safetensors'
    save_checkpoint(path, make_policy('mlp'), version=0)
    assert file_sha256(path) == hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha_mismatch_refused(tmp_path):
    path = tmp_path / 'c.safetensors'
    save_checkpoint(path, make_policy('mlp'), version=1)
    with pytest.raises(CheckpointRejected, match='sha256 mismatch'):
        load_checkpoint(path, expected_sha256='0' * 64)


def test_pickle_refused(tmp_path):
    policy = make_policy('mlp')
    path = tmp_path / 'evil.pt'
    torch.save(policy.state_dict(), path)
    with pytest.raises(CheckpointRejected, match='pickle'):
        load_checkpoint(path)
    raw_pickle = b'\x80\x04\x95\x03\x00\x00\x00\x00\x00\x00\x00K\x01.'  # pickle of 1
    with pytest.raises(CheckpointRejected, match='pickle'):
        load_checkpoint(raw_pickle)


def test_nan_refused_on_load_and_on_save():
    data, _ = dump_checkpoint(make_policy('mlp'), version=1)
    key = 'net.0.weight'

    def poison(t):
        t[key][0, 0] = float('nan')

    with pytest.raises(CheckpointRejected, match='payload_sha256'):
        load_checkpoint(rewrite(data, tensors_fn=poison))   # a changed tensor: modified
    with pytest.raises(CheckpointRejected, match='NaN'):
        load_checkpoint(rewrite(data, tensors_fn=poison, rehash=True))
    policy = make_policy('mlp')
    with torch.no_grad():
        policy.net[0].weight[0, 0] = float('inf')
    with pytest.raises(CheckpointError, match='NaN or inf'):
        dump_checkpoint(policy, version=1)


def test_wrong_shape_and_names_refused():
    data, _ = dump_checkpoint(make_policy('mlp'), version=1)

    def reshape(t):
        t['net.0.weight'] = torch.zeros(3, 3)

    with pytest.raises(CheckpointRejected, match=r'net\.0\.weight'):
        load_checkpoint(rewrite(data, tensors_fn=reshape))

    def extra(t):
        t['bogus'] = torch.zeros(1)

    with pytest.raises(CheckpointRejected, match='bogus'):
        load_checkpoint(rewrite(data, tensors_fn=extra))

    def other_config(h):
        h['policy_config']['hidden_sizes'] = [8, 8]

    with pytest.raises(CheckpointRejected, match='expects'):
        load_checkpoint(rewrite(data, header_fn=other_config))


def test_modified_payload_refused():
    data, _ = dump_checkpoint(make_policy('mlp'), version=1)

    def tweak(t):
        t['net.0.bias'][0] += 1.0

    with pytest.raises(CheckpointRejected, match='payload_sha256'):
        load_checkpoint(rewrite(data, tensors_fn=tweak))


@pytest.mark.parametrize('cut', [0.5, 0.99, 20 / 1e9])
def test_truncated_file_refused(tmp_path, cut):
    data, _ = dump_checkpoint(make_policy('mlp'), version=1)
    path = tmp_path / 't.safetensors'
    path.write_bytes(data[: max(1, int(len(data) * cut))])
    with pytest.raises(CheckpointRejected):
        load_checkpoint(path)


def test_header_problems_refused():
    data, _ = dump_checkpoint(make_policy('mlp'), version=1)
    cases = [
        (lambda h: h.update(policy='nope'), 'not available'),
        (lambda h: h.update(format_version=99), 'format_version'),
        (lambda h: h.update(version=-1), 'version'),
        (lambda h: h.pop('created'), 'missing'),
        (lambda h: h.update(surprise=1), 'unknown'),
        (lambda h: h['policy_config'].update(chunk_size=0), 'config'),
    ]
    for fn, match in cases:
        with pytest.raises(CheckpointRejected, match=match):
            load_checkpoint(rewrite(data, header_fn=fn))
    no_header = st_save({'x': torch.zeros(1)})
    with pytest.raises(CheckpointRejected, match='metadata'):
        load_checkpoint(no_header)
    with pytest.raises(CheckpointRejected):
        load_checkpoint(b'hello world, definitely not a checkpoint')
    with pytest.raises(CheckpointRejected, match='cannot read'):
        load_checkpoint('/nonexistent-dir/none.safetensors')


def test_save_argument_validation(tmp_path):
    policy = make_policy('mlp')
    with pytest.raises(CheckpointError, match='version'):
        save_checkpoint(tmp_path / 'a', policy, version=-1)
    with pytest.raises(CheckpointError, match='metrics'):
        save_checkpoint(tmp_path / 'a', policy, version=1, metrics={'x': float('nan')})
    with pytest.raises(CheckpointError, match='extra'):
        save_checkpoint(tmp_path / 'a', policy, version=1, extra={'x': object()})
    with pytest.raises(CheckpointError):
        save_checkpoint(tmp_path / 'a', torch.nn.Linear(2, 2), version=1)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_overwrite_is_atomic_replace(tmp_path):
    path = tmp_path / 'latest.safetensors'
    save_checkpoint(path, make_policy('mlp', seed=1), version=1)
    save_checkpoint(path, make_policy('mlp', seed=2), version=2, parent=1)
    _, header = load_checkpoint(path)
    assert header.version == 2 and header.parent == 1
    assert [p.name for p in tmp_path.iterdir()] == ['latest.safetensors']
    assert isinstance(header, CheckpointHeader)


def test_saved_tensors_are_cpu_and_load_onto_the_device_asked_for(tmp_path):
    """Always CPU tensors in the file; loading maps them to the target device ('cpu' here,
    'auto' = CUDA when present), and an unavailable device is refused before any reading."""
    policy = make_policy('mlp', {'chunk_size': 4}, seed=1)
    path = tmp_path / 'v1.safetensors'
    save_checkpoint(path, policy, version=1)
    for device in ('cpu', torch.device('cpu'), 'auto'):
        loaded, _ = load_checkpoint(path, device=device)
        want = 'cuda' if device == 'auto' and torch.cuda.is_available() else 'cpu'
        assert {t.device.type for t in loaded.state_dict().values()} == {want}
        assert not loaded.training
        # takes a CPU observation wherever it lives, and answers like the saved policy
        np.testing.assert_allclose(loaded.predict_chunk(obs()), policy.predict_chunk(obs()),
                                   rtol=1e-5, atol=1e-6)
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="device 'cuda:0' is not available"):
            load_checkpoint(tmp_path / 'missing.safetensors', device='cuda:0')
    # what a checkpoint holds does not depend on where it was loaded: dump after loading
    loaded, header = load_checkpoint(path, device='auto')
    _, again = dump_checkpoint(loaded, version=1)
    assert again.payload_sha256 == header.payload_sha256
