"""The checkpoint file format: one safetensors file with a JSON header. Never pickle.

Layout: a standard safetensors file whose tensors are the policy's ``state_dict()`` and whose
metadata holds the entry ``'scarls.header'``, the JSON-encoded :class:`CheckpointHeader`:

* ``format_version`` (int, currently 1), ``version`` (int >= 0, the checkpoint's version),
  ``parent`` (int or null, the version it was trained from),
* ``policy`` (registry name) and ``policy_config`` (the config dict),
* ``metrics`` (str -> finite number), ``extra`` (any JSON object),
* ``created`` (ISO-8601 UTC time),
* ``payload_sha256``: sha256 over the tensors in name order; for each tensor the UTF-8 name,
  NUL, dtype name, NUL, shape as comma-separated ints, NUL, then the raw little-endian bytes.

and, when the checkpoint is signed, the entry ``'scarls.signature'``: JSON ``{"key_id",
"robot", "signature"}`` - an Ed25519 signature (base64) by key ``key_id`` over
:func:`signature_statement`: the sha256 of the exact ``scarls.header`` text (the *content
digest*: the header holds ``payload_sha256``, so it covers every tensor), the version and the
robot description hash. Keys and trust lists: :mod:`scarls.checkpoints.signing`.

:func:`save_checkpoint` writes atomically (temporary file in the same directory, fsync,
rename). The tensors are always stored as CPU tensors, whatever device the policy trained on,
so a checkpoint loads anywhere: :func:`load_checkpoint` verifies on the CPU and then moves the
policy to the ``device`` asked for (weights saved from CUDA load on the CPU and vice versa).

Loading is bounded (:class:`CheckpointLimits`): before anything is allocated, the safetensors
header is parsed and checked - the header size, the number of tensors, each tensor's dtype,
shape and byte range (which must tile the data section of the file exactly), the policy config
values (chunk size, joints, cameras, image sizes, layer counts, widths) - and the policy is
built on torch's ``meta`` device (no memory) to compare its tensor names, shapes and dtypes with
the declared ones and to count its parameters. Only then are tensors read (as many bytes as the
file holds) and the policy built for real. :func:`load_checkpoint` refuses anything that is not
a well-formed scarls checkpoint with :class:`CheckpointRejected` (signature problems with its
subclasses :class:`SignatureRejected` and :class:`UntrustedKey`), whose message says why.
Whole-file hashes (:func:`file_sha256`) let a receiver check a checkpoint sent over the
network.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import struct
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from scarls.common.device import place_module, resolve_device
from scarls.policies import Policy, PolicyConfigError, UnknownPolicy, make_policy

__all__ = [
    'DEFAULT_LIMITS',
    'FORMAT_VERSION',
    'HEADER_KEY',
    'SIGNATURE_KEY',
    'CheckpointError',
    'CheckpointHeader',
    'CheckpointLimits',
    'CheckpointRejected',
    'RevokedKey',
    'SignatureRejected',
    'UntrustedKey',
    'VerifiedCheckpoint',
    'check_policy_config',
    'dump_checkpoint',
    'file_sha256',
    'load_checkpoint',
    'load_verified_checkpoint',
    'read_header',
    'save_checkpoint',
    'sign_checkpoint_bytes',
    'signature_statement',
    'tensors_sha256',
    'verify_checkpoint',
]

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HEADER_KEY = 'scarls.header'
SIGNATURE_KEY = 'scarls.signature'
_STATEMENT_PREFIX = b'scarls checkpoint signature v1\n'
# safetensors dtype -> (torch dtype name as in payload_sha256, bytes per element)
_DTYPES = {
    'BOOL': ('bool', 1), 'U8': ('uint8', 1), 'I8': ('int8', 1),
    'F8_E4M3': ('float8_e4m3fn', 1), 'F8_E5M2': ('float8_e5m2', 1),
    'I16': ('int16', 2), 'U16': ('uint16', 2), 'F16': ('float16', 2), 'BF16': ('bfloat16', 2),
    'I32': ('int32', 4), 'U32': ('uint32', 4), 'F32': ('float32', 4),
    'I64': ('int64', 8), 'U64': ('uint64', 8), 'F64': ('float64', 8),
}
_HEADER_FIELDS = (
    'format_version',
    'version',
    'parent',
    'policy',
    'policy_config',
    'metrics',
    'extra',
    'created',
    'payload_sha256',
)


class CheckpointError(RuntimeError):
    """A checkpoint could not be written (bad arguments or non-finite weights)."""


class CheckpointRejected(ValueError):
    """A checkpoint failed verification; the message says which check failed."""


class SignatureRejected(CheckpointRejected):
    """A checkpoint (or deploy record) is unsigned, or its signature does not verify."""


class UntrustedKey(SignatureRejected):
    """Signed by a key that is not in the trust list (the message names the key id)."""


class RevokedKey(UntrustedKey):
    """Signed by a key on the revocation list (the message names the key id and the entry)."""


@dataclasses.dataclass(frozen=True)
class CheckpointLimits:
    """What a checkpoint may declare before anything is allocated (all checked on the header).

    The defaults fit every policy of this package at sizes far beyond what a robot runs, and
    keep a hostile header from making the loader allocate more than the file it sent.
    """

    max_bytes: int = 4 << 30
    """Largest checkpoint file (bytes)."""
    max_header_bytes: int = 16 << 20
    """Largest safetensors JSON header (bytes)."""
    max_tensors: int = 10_000
    """Most tensors in one file."""
    max_parameters: int = 1_000_000_000
    """Most elements over all tensors (declared, and of the policy the config builds)."""
    max_rank: int = 8
    """Most dimensions of one tensor."""
    max_chunk_size: int = 1000
    """Largest ``chunk_size`` (actions per inference)."""
    max_joints: int = 256
    """Largest ``state_dim`` / ``action_dim``."""
    max_cameras: int = 16
    """Most entries of ``cameras``."""
    max_image_side: int = 4096
    """Largest value of ``image_size`` (and any field named ``*image*``)."""
    max_layers: int = 64
    """Largest value of a field named ``*layers``."""
    max_width: int = 16384
    """Largest other integer in the config (hidden sizes, channels, keypoints, ...)."""
    max_list: int = 64
    """Longest list in the config."""
    max_string: int = 256
    """Longest string in the config."""


DEFAULT_LIMITS = CheckpointLimits()


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_sha(v: Any) -> bool:
    return isinstance(v, str) and len(v) == 64 and all(c in '0123456789abcdef' for c in v)


@dataclasses.dataclass(frozen=True)
class CheckpointHeader:
    """Metadata stored in a checkpoint (see the module docstring)."""

    format_version: int
    version: int
    parent: int | None
    policy: str
    policy_config: dict[str, Any]
    metrics: dict[str, float]
    extra: dict[str, Any]
    created: str
    payload_sha256: str

    def __post_init__(self) -> None:
        problems = []
        if not _is_int(self.format_version):
            problems.append(f'format_version must be an int, got {self.format_version!r}')
        if not _is_int(self.version) or self.version < 0:
            problems.append(f'version must be an int >= 0, got {self.version!r}')
        if self.parent is not None and (not _is_int(self.parent) or self.parent < 0):
            problems.append(f'parent must be null or an int >= 0, got {self.parent!r}')
        if not isinstance(self.policy, str) or not self.policy:
            problems.append(f'policy must be a non-empty string, got {self.policy!r}')
        if not isinstance(self.policy_config, dict):
            problems.append('policy_config must be a JSON object')
        if not isinstance(self.metrics, dict) or not all(
            isinstance(k, str)
            and isinstance(v, (int, float))
            and not isinstance(v, bool)
            and math.isfinite(v)
            for k, v in self.metrics.items()
        ):
            problems.append('metrics must map strings to finite numbers')
        if not isinstance(self.extra, dict):
            problems.append('extra must be a JSON object')
        if not isinstance(self.created, str):
            problems.append('created must be an ISO-8601 string')
        if not _is_sha(self.payload_sha256):
            problems.append('payload_sha256 must be 64 lowercase hex digits')
        if problems:
            raise ValueError('invalid checkpoint header: ' + '; '.join(problems))

    def to_json(self) -> str:
        """Compact, key-sorted JSON (NaN/inf refused)."""
        return json.dumps(
            dataclasses.asdict(self), sort_keys=True, separators=(',', ':'), allow_nan=False
        )

    @classmethod
    def from_json(cls, text: str) -> CheckpointHeader:
        """Parse and validate; raises ``ValueError`` describing the problem."""
        try:
            data = json.loads(text, parse_constant=_reject_constant)
        except json.JSONDecodeError as exc:
            raise ValueError(f'header is not valid JSON: {exc}') from exc
        if not isinstance(data, dict):
            raise ValueError('header must be a JSON object')
        missing = [f for f in _HEADER_FIELDS if f not in data]
        unknown = sorted(set(data) - set(_HEADER_FIELDS))
        if missing or unknown:
            raise ValueError(f'header fields missing: {missing}, unknown: {unknown}')
        return cls(**data)


def _reject_constant(name: str) -> Any:
    raise ValueError(f'header contains the non-finite number {name}')


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """The payload hash stored in ``payload_sha256`` (see the module docstring)."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name]
        shape = ','.join(str(s) for s in t.shape)
        h.update(f'{name}\0{str(t.dtype).removeprefix("torch.")}\0{shape}\0'.encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def file_sha256(path: str | os.PathLike[str]) -> str:
    """sha256 (hex) of a file's bytes."""
    h = hashlib.sha256()
    with open(path, 'rb') as f:
        for block in iter(lambda: f.read(1 << 20), b''):
            h.update(block)
    return h.hexdigest()


def _check_json(name: str, value: Any) -> None:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f'{name} must be JSON-serialisable without NaN/inf: {exc}') from exc


def signature_statement(header_json: str, version: int, robot: str) -> bytes:
    """The bytes a checkpoint signature covers: the content digest (sha256 of the exact
    ``scarls.header`` text, which holds ``payload_sha256`` over every tensor), the version and
    the robot description hash, as canonical JSON after a fixed prefix."""
    body = {
        'content_sha256': hashlib.sha256(header_json.encode()).hexdigest(),
        'robot': str(robot),
        'version': int(version),
    }
    return _STATEMENT_PREFIX + json.dumps(body, sort_keys=True, separators=(',', ':')).encode()


def _signature_entry(signer: Any, header_json: str, version: int, robot: str) -> str:
    sig = signer.sign(signature_statement(header_json, version, robot))
    return json.dumps(
        {'key_id': signer.key_id, 'robot': str(robot),
         'signature': base64.b64encode(sig).decode()},
        sort_keys=True, separators=(',', ':'))


def dump_checkpoint(
    policy: Policy,
    *,
    version: int,
    parent: int | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    signer: Any = None,
    robot: str = '',
) -> tuple[bytes, CheckpointHeader]:
    """Serialise ``policy`` to checkpoint bytes (what :func:`save_checkpoint` writes); the
    tensors are copied to the CPU first, wherever the policy lives. With ``signer`` (a
    :class:`scarls.checkpoints.signing.Signer`) the file is signed for robot hash ``robot``."""
    if not isinstance(policy, Policy) or not policy.name:
        raise CheckpointError(f'expected a registered Policy, got {type(policy).__name__}')
    tensors: dict[str, torch.Tensor] = {}
    for name, t in policy.state_dict().items():
        t = t.detach().cpu().contiguous().clone()
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointError(f'tensor {name!r} contains NaN or inf; refusing to save it')
        tensors[name] = t
    metrics_d = {str(k): v for k, v in (metrics or {}).items()}
    extra_d = dict(extra or {})
    _check_json('extra', extra_d)
    _check_json('metrics', metrics_d)
    try:
        header = CheckpointHeader(
            format_version=FORMAT_VERSION,
            version=version,
            parent=parent,
            policy=policy.name,
            policy_config=policy.config.to_dict(),
            metrics=metrics_d,
            extra=extra_d,
            created=datetime.datetime.now(datetime.UTC).isoformat(),
            payload_sha256=tensors_sha256(tensors),
        )
    except ValueError as exc:
        raise CheckpointError(str(exc)) from exc
    header_json = header.to_json()
    metadata = {HEADER_KEY: header_json}
    if signer is not None:
        metadata[SIGNATURE_KEY] = _signature_entry(signer, header_json, version, robot)
    data = st_save(tensors, metadata=metadata)
    return data, header


def _write_atomic(path: Path, data: bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically and durably (a reader sees the old or the new
    file, never a part); ``mode``: the new file's permissions (default: the owner's only)."""
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
            if mode is not None:
                os.fchmod(f.fileno(), mode)
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def save_checkpoint(
    path: str | os.PathLike[str],
    policy: Policy,
    *,
    version: int,
    parent: int | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
    signer: Any = None,
    robot: str = '',
) -> CheckpointHeader:
    """Write ``policy`` to ``path`` atomically as one safetensors file (signed when ``signer``
    is given, see :func:`dump_checkpoint`); return its header."""
    data, header = dump_checkpoint(
        policy, version=version, parent=parent, metrics=metrics, extra=extra, signer=signer,
        robot=robot,
    )
    _write_atomic(Path(path), data)
    _log.info('saved checkpoint v%d (%s, %d bytes%s) to %s', version, header.policy, len(data),
              f', signed by {signer.key_id}' if signer is not None else '', path)
    return header


def _read_bytes(source: str | os.PathLike[str] | bytes | bytearray | memoryview,
                limit: int = DEFAULT_LIMITS.max_bytes) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    else:
        try:
            with open(source, 'rb') as f:
                size = os.fstat(f.fileno()).st_size
                if size > limit:
                    raise CheckpointRejected(
                        f'checkpoint {source} is {size} bytes, over the limit of {limit}')
                data = f.read()   # sized from fstat: never a buffer of `limit` bytes
        except OSError as exc:
            raise CheckpointRejected(f'cannot read checkpoint {source}: {exc}') from exc
    if len(data) > limit:
        raise CheckpointRejected(f'checkpoint is {len(data)} bytes, over the limit of {limit}')
    return data


@dataclasses.dataclass(frozen=True)
class _Tensor:
    dtype: str      # torch dtype name, as in payload_sha256
    shape: tuple[int, ...]
    begin: int
    end: int


@dataclasses.dataclass(frozen=True)
class _Parsed:
    header: CheckpointHeader
    header_json: str
    signature: dict[str, Any] | None
    tensors: dict[str, _Tensor]
    data_start: int


def _parse(data: bytes, limits: CheckpointLimits = DEFAULT_LIMITS) -> _Parsed:
    """Check the safetensors framing and every tensor entry (no tensor is read); return the
    validated scarls header, the signature entry and the declared tensors."""
    if len(data) < 8:
        raise CheckpointRejected(f'not a safetensors file: only {len(data)} bytes')
    (n,) = struct.unpack('<Q', data[:8])
    if n < 2 or 8 + n > len(data) or data[8:9] != b'{':
        if data[:4] == b'PK\x03\x04' or data[:1] == b'\x80':
            raise CheckpointRejected(
                'not a safetensors file: looks like a pickle/torch.save archive; '
                'pickled checkpoints are never loaded - re-export with save_checkpoint()'
            )
        raise CheckpointRejected(
            'not a safetensors file (bad or truncated header); the file may be incomplete'
        )
    if n > limits.max_header_bytes:
        raise CheckpointRejected(
            f'safetensors header of {n} bytes is over the limit of {limits.max_header_bytes}')
    try:
        raw = json.loads(data[8 : 8 + n], parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise CheckpointRejected(f'safetensors header is not valid JSON: {exc}') from exc
    if not isinstance(raw, dict):
        raise CheckpointRejected('safetensors header is not a JSON object')
    meta = raw.pop('__metadata__', None) or {}
    if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
        raise CheckpointRejected('safetensors __metadata__ must map strings to strings')
    if HEADER_KEY not in meta:
        raise CheckpointRejected(f'safetensors file has no {HEADER_KEY!r} metadata entry')
    header_json = meta[HEADER_KEY]
    try:
        header = CheckpointHeader.from_json(header_json)
    except (ValueError, TypeError, RecursionError) as exc:
        raise CheckpointRejected(str(exc)) from exc
    if header.format_version != FORMAT_VERSION:
        raise CheckpointRejected(
            f'unsupported format_version {header.format_version} (this reader supports '
            f'{FORMAT_VERSION}); upgrade scarls'
        )
    signature = None
    if SIGNATURE_KEY in meta:
        try:
            signature = json.loads(meta[SIGNATURE_KEY])
        except (ValueError, RecursionError) as exc:
            raise SignatureRejected(f'{SIGNATURE_KEY} entry is not JSON: {exc}') from exc
        if not isinstance(signature, dict) or not all(
                isinstance(signature.get(k), str) for k in ('key_id', 'robot', 'signature')):
            raise SignatureRejected(
                f'{SIGNATURE_KEY} entry must hold the strings key_id, robot and signature')
    tensors = _parse_tensors(raw, len(data) - 8 - n, limits)
    return _Parsed(header, header_json, signature, tensors, 8 + n)


def _parse_tensors(raw: dict[str, Any], data_len: int,
                   limits: CheckpointLimits) -> dict[str, _Tensor]:
    if len(raw) > limits.max_tensors:
        raise CheckpointRejected(
            f'checkpoint declares {len(raw)} tensors, over the limit of {limits.max_tensors}')
    tensors: dict[str, _Tensor] = {}
    elements = 0
    for name, entry in raw.items():
        if not isinstance(entry, dict) or set(entry) != {'dtype', 'shape', 'data_offsets'}:
            raise CheckpointRejected(f'tensor entry {name[:80]!r} is malformed')
        dtype, shape, offsets = entry['dtype'], entry['shape'], entry['data_offsets']
        if dtype not in _DTYPES:
            raise CheckpointRejected(f'tensor {name[:80]!r} has unsupported dtype {dtype!r}')
        if not isinstance(shape, list) or len(shape) > limits.max_rank or not all(
                _is_int(d) and d >= 0 for d in shape):
            raise CheckpointRejected(f'tensor {name[:80]!r} has an invalid shape {shape!r:.80}')
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(
                _is_int(o) for o in offsets) or not 0 <= offsets[0] <= offsets[1] <= data_len:
            raise CheckpointRejected(
                f'tensor {name[:80]!r} has data offsets {offsets!r:.80} outside the '
                f'{data_len} data bytes of the file')
        numel = math.prod(shape)
        elements += numel
        if elements > limits.max_parameters:
            raise CheckpointRejected(
                f'checkpoint declares over {limits.max_parameters} elements; refusing it')
        torch_name, itemsize = _DTYPES[dtype]
        if offsets[1] - offsets[0] != numel * itemsize:
            raise CheckpointRejected(
                f'tensor {name[:80]!r}: {dtype} {shape} needs {numel * itemsize} bytes, its '
                f'offsets span {offsets[1] - offsets[0]}')
        tensors[name] = _Tensor(torch_name, tuple(shape), offsets[0], offsets[1])
    end = 0
    for t in sorted(tensors.values(), key=lambda t: (t.begin, t.end)):
        if t.begin != end:
            raise CheckpointRejected('tensor data ranges overlap or leave gaps')
        end = t.end
    if end != data_len:
        raise CheckpointRejected(
            f'the tensors declare {end} data bytes but the file holds {data_len}; the file is '
            'truncated or padded')
    return tensors


def check_policy_config(config: Mapping[str, Any],
                        limits: CheckpointLimits = DEFAULT_LIMITS) -> None:
    """Refuse policy config values beyond ``limits`` (see :class:`CheckpointLimits`) with
    :class:`CheckpointRejected`; only flat values and lists of them are allowed."""

    def bound(key: str) -> tuple[int, str]:
        k = key.lower()
        if k == 'chunk_size':
            return limits.max_chunk_size, 'max_chunk_size'
        if k in ('state_dim', 'action_dim'):
            return limits.max_joints, 'max_joints'
        if 'image' in k:
            return limits.max_image_side, 'max_image_side'
        if k.endswith('layers'):
            return limits.max_layers, 'max_layers'
        return limits.max_width, 'max_width'

    def check(key: str, value: Any, top: bool = True) -> None:
        if isinstance(value, bool) or value is None:
            return
        if isinstance(value, int):
            limit, name = bound(key)
            if not -limit <= value <= limit:
                raise CheckpointRejected(
                    f'policy config {key} = {value} is beyond the limit {limit} ({name})')
        elif isinstance(value, float):
            if not math.isfinite(value) or abs(value) > 1e9:
                raise CheckpointRejected(f'policy config {key} = {value} is not a sane number')
        elif isinstance(value, str):
            if len(value) > limits.max_string:
                raise CheckpointRejected(f'policy config {key} is a string over '
                                         f'{limits.max_string} characters')
        elif isinstance(value, (list, tuple)) and top:
            limit = limits.max_cameras if key == 'cameras' else limits.max_list
            if len(value) > limit:
                raise CheckpointRejected(
                    f'policy config {key} has {len(value)} entries, over the limit of {limit}')
            for v in value:
                check(key, v, top=False)
        else:
            raise CheckpointRejected(
                f'policy config {key} holds a {type(value).__name__}: only numbers, strings, '
                'booleans and flat lists are allowed')

    if not isinstance(config, Mapping):
        raise CheckpointRejected('policy_config must be a JSON object')
    if len(config) > limits.max_list * 4:
        raise CheckpointRejected(f'policy config has {len(config)} fields')
    for key, value in config.items():
        check(str(key)[:80], value)


def _expected_tensors(header: CheckpointHeader,
                      limits: CheckpointLimits) -> dict[str, tuple[str, tuple[int, ...]]]:
    """The tensors the header's policy and config define, built on the meta device (nothing
    allocated): ``{name: (dtype name, shape)}``."""
    check_policy_config(header.policy_config, limits)
    try:
        with torch.device('meta'):
            shell = make_policy(header.policy, header.policy_config)
    except UnknownPolicy as exc:
        raise CheckpointRejected(f'checkpoint policy is not available: {exc}') from exc
    except PolicyConfigError as exc:
        raise CheckpointRejected(f'invalid policy config in checkpoint: {exc}') from exc
    except (ValueError, TypeError, RuntimeError) as exc:
        raise CheckpointRejected(
            f'the policy cannot be built from the checkpoint\'s config: {exc}') from exc
    expected = {name: (str(t.dtype).removeprefix('torch.'), tuple(t.shape))
                for name, t in shell.state_dict().items()}
    count = sum(math.prod(shape) for _, shape in expected.values())
    if count > limits.max_parameters:
        raise CheckpointRejected(
            f'the policy config builds {count} parameters, over the limit of '
            f'{limits.max_parameters}')
    return expected


def _raw_payload_sha256(data: bytes, parsed: _Parsed) -> str:
    """:func:`tensors_sha256` computed from the file's bytes (no tensor built)."""
    view = memoryview(data)
    h = hashlib.sha256()
    for name in sorted(parsed.tensors):
        t = parsed.tensors[name]
        h.update(f'{name}\0{t.dtype}\0{",".join(str(s) for s in t.shape)}\0'.encode())
        h.update(view[parsed.data_start + t.begin : parsed.data_start + t.end])
    return h.hexdigest()


def _check_signature(parsed: _Parsed, trust: Any, robot: str | None) -> str:
    """Verify the signature entry against ``trust``; return the signer's key id."""
    version = parsed.header.version
    sig = parsed.signature
    if sig is None:
        raise SignatureRejected(
            f'checkpoint v{version} is not signed; only checkpoints signed by a trusted '
            'learner key are loaded (a learner signs what it publishes; sign a file by hand '
            'with `scarls keys sign FILE`)')
    try:
        signature = base64.b64decode(sig['signature'], validate=True)
    except (binascii.Error, ValueError) as exc:
        raise SignatureRejected(f'checkpoint v{version}: signature is not base64') from exc
    statement = signature_statement(parsed.header_json, version, sig['robot'])
    trust.verify(sig['key_id'], statement, signature, what=f'checkpoint v{version}')
    if robot is not None and sig['robot'] != robot:
        raise CheckpointRejected(
            f'checkpoint v{version} was signed for robot description {sig["robot"] or "?"}, '
            f'this robot is {robot}; train or sign a checkpoint for this robot')
    return sig['key_id']


@dataclasses.dataclass(frozen=True)
class VerifiedCheckpoint:
    """What :func:`verify_checkpoint` established about a checkpoint file."""

    header: CheckpointHeader
    key_id: str | None   # the signer (None when no trust list was given)
    size: int
    sha256: str


def _verify(data: bytes, *, trust: Any, robot: str | None, expected_sha256: str | None,
            expected_version: int | None, limits: CheckpointLimits,
            ) -> tuple[_Parsed, VerifiedCheckpoint]:
    actual = hashlib.sha256(data).hexdigest()
    if expected_sha256 is not None and actual != expected_sha256.strip().lower():
        raise CheckpointRejected(
            f'sha256 mismatch: expected {expected_sha256}, file has {actual}; '
            'the file is corrupt or not the announced checkpoint'
        )
    parsed = _parse(data, limits)
    key = _check_signature(parsed, trust, robot) if trust is not None else None
    if expected_version is not None and parsed.header.version != expected_version:
        raise CheckpointRejected(
            f'checkpoint was announced as v{expected_version} but is v{parsed.header.version}')
    expected = _expected_tensors(parsed.header, limits)
    declared = {name: (t.dtype, t.shape) for name, t in parsed.tensors.items()}
    missing = sorted(set(expected) - set(declared))
    unexpected = sorted(set(declared) - set(expected))
    if missing or unexpected:
        raise CheckpointRejected(
            f'tensor names do not match policy {parsed.header.policy!r}: missing '
            f'{missing[:5]}, unexpected {[u[:80] for u in unexpected[:5]]}'
        )
    for name, (dtype, shape) in expected.items():
        if declared[name] != (dtype, shape):
            raise CheckpointRejected(
                f'tensor {name!r} has {declared[name][0]} {declared[name][1]}, policy expects '
                f'{dtype} {shape}'
            )
    if _raw_payload_sha256(data, parsed) != parsed.header.payload_sha256:
        raise CheckpointRejected('payload_sha256 mismatch: the tensor data was modified')
    return parsed, VerifiedCheckpoint(parsed.header, key, len(data), actual)


def read_header(source: str | os.PathLike[str] | bytes) -> CheckpointHeader:
    """Read and validate only the header (no tensors loaded, no policy built)."""
    return _parse(_read_bytes(source)).header


def verify_checkpoint(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    trust: Any = None,
    robot: str | None = None,
    expected_sha256: str | None = None,
    expected_version: int | None = None,
    limits: CheckpointLimits = DEFAULT_LIMITS,
) -> VerifiedCheckpoint:
    """Every check of :func:`load_checkpoint` that needs no tensor allocation: framing, bounds,
    the signature (when ``trust``, a :class:`scarls.checkpoints.signing.TrustList`, is given;
    ``robot`` then must match the signed robot hash), the policy's tensor layout and the payload
    hash. Raises :class:`CheckpointRejected` (or a subclass)."""
    data = _read_bytes(source, limits.max_bytes)
    return _verify(data, trust=trust, robot=robot, expected_sha256=expected_sha256,
                   expected_version=expected_version, limits=limits)[1]


def sign_checkpoint_bytes(data: bytes, signer: Any, robot: str) -> bytes:
    """``data`` (a checkpoint) with its signature entry replaced by ``signer``'s for robot hash
    ``robot``; the tensors are untouched (only the safetensors JSON header is rewritten)."""
    parsed = _parse(data)
    (n,) = struct.unpack('<Q', data[:8])
    raw = json.loads(data[8 : 8 + n])
    raw.setdefault('__metadata__', {})[SIGNATURE_KEY] = _signature_entry(
        signer, parsed.header_json, parsed.header.version, robot)
    block = json.dumps(raw, separators=(',', ':')).encode()
    block += b' ' * (-len(block) % 8)
    return struct.pack('<Q', len(block)) + block + data[8 + n :]


def load_verified_checkpoint(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    expected_sha256: str | None = None,
    device: str | torch.device = 'cpu',
    trust: Any = None,
    robot: str | None = None,
    expected_version: int | None = None,
    limits: CheckpointLimits = DEFAULT_LIMITS,
) -> tuple[Policy, VerifiedCheckpoint]:
    """Load and verify a checkpoint; return the policy (eval mode) and what was verified
    (header, signer's key id, size, sha256): :func:`load_checkpoint` for the header alone.

    The checks run on the CPU; the policy is then moved to ``device`` (``'auto'``, ``'cpu'``,
    ``'cuda'``, ``'cuda:N'``, ``'mps'`` or a :class:`torch.device`, see
    :func:`scarls.common.device.resolve_device` - an unavailable device raises
    :class:`scarls.common.device.DeviceError` before anything is read) with
    :func:`scarls.common.device.place_module`, so it also takes CPU batches.

    Raises :class:`CheckpointRejected` when: the whole-file sha256 differs from
    ``expected_sha256``; the bytes are not safetensors (pickle included) or are truncated;
    the header is malformed or declares more than ``limits`` allow; with ``trust``: the file
    is unsigned or not signed by a trusted key (:class:`SignatureRejected`,
    :class:`UntrustedKey`, :class:`RevokedKey`) or signed for another robot than ``robot``;
    the version is not ``expected_version``; the policy name is not registered or its config
    is invalid or out of bounds; tensor names, shapes or dtypes differ from the policy built
    from the config; the payload hash does not match; or a tensor holds NaN/inf. All but the
    last are checked before any tensor is allocated.
    """
    target = resolve_device(device)
    data = _read_bytes(source, limits.max_bytes)
    parsed, verified = _verify(data, trust=trust, robot=robot, expected_sha256=expected_sha256,
                               expected_version=expected_version, limits=limits)
    header = parsed.header
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises several error types
        raise CheckpointRejected(f'corrupt safetensors payload: {exc}') from exc
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointRejected(f'tensor {name!r} contains NaN or inf')
    try:
        policy = make_policy(header.policy, header.policy_config)
        policy.load_state_dict(tensors, strict=True)
    except (PolicyConfigError, UnknownPolicy, RuntimeError) as exc:
        raise CheckpointRejected(f'checkpoint does not load into its policy: {exc}') from exc
    place_module(policy, target)
    policy.eval()
    return policy, verified


def load_checkpoint(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    expected_sha256: str | None = None,
    device: str | torch.device = 'cpu',
    trust: Any = None,
    robot: str | None = None,
    expected_version: int | None = None,
    limits: CheckpointLimits = DEFAULT_LIMITS,
) -> tuple[Policy, CheckpointHeader]:
    """:func:`load_verified_checkpoint`, returning the policy (eval mode) and its header."""
    policy, verified = load_verified_checkpoint(
        source, expected_sha256=expected_sha256, device=device, trust=trust, robot=robot,
        expected_version=expected_version, limits=limits)
    return policy, verified.header
