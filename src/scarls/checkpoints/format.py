"""The checkpoint file format: one safetensors file with a JSON header. Never pickle.

Layout: a standard safetensors file whose tensors are the policy's ``state_dict()`` and whose
metadata holds one entry, ``'scarls.header'``, the JSON-encoded :class:`CheckpointHeader`:

* ``format_version`` (int, currently 1), ``version`` (int >= 0, the checkpoint's version),
  ``parent`` (int or null, the version it was trained from),
* ``policy`` (registry name) and ``policy_config`` (the config dict),
* ``metrics`` (str -> finite number), ``extra`` (any JSON object),
* ``created`` (ISO-8601 UTC time),
* ``payload_sha256``: sha256 over the tensors in name order; for each tensor the UTF-8 name,
  NUL, dtype name, NUL, shape as comma-separated ints, NUL, then the raw little-endian bytes.

:func:`save_checkpoint` writes atomically (temporary file in the same directory, fsync,
rename). The tensors are always stored as CPU tensors, whatever device the policy trained on,
so a checkpoint loads anywhere: :func:`load_checkpoint` verifies on the CPU and then moves the
policy to the ``device`` asked for (weights saved from CUDA load on the CPU and vice versa).
:func:`load_checkpoint` refuses anything that is not a well-formed scarls checkpoint with
:class:`CheckpointRejected`, whose message says why. Whole-file hashes
(:func:`file_sha256`) let a receiver check a checkpoint sent over the network.
"""

from __future__ import annotations

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

from scarls.device import place_module, resolve_device
from scarls.policies import Policy, PolicyConfigError, UnknownPolicy, make_policy

__all__ = [
    'FORMAT_VERSION',
    'HEADER_KEY',
    'CheckpointError',
    'CheckpointHeader',
    'CheckpointRejected',
    'dump_checkpoint',
    'file_sha256',
    'load_checkpoint',
    'read_header',
    'save_checkpoint',
    'tensors_sha256',
]

_log = logging.getLogger(__name__)

FORMAT_VERSION = 1
HEADER_KEY = 'scarls.header'
_MAX_HEADER_BYTES = 64 * 1024 * 1024
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


def dump_checkpoint(
    policy: Policy,
    *,
    version: int,
    parent: int | None = None,
    metrics: Mapping[str, float] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> tuple[bytes, CheckpointHeader]:
    """Serialise ``policy`` to checkpoint bytes (what :func:`save_checkpoint` writes); the
    tensors are copied to the CPU first, wherever the policy lives."""
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
    data = st_save(tensors, metadata={HEADER_KEY: header.to_json()})
    return data, header


def _write_atomic(path: Path, data: bytes) -> None:
    directory = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f'.{path.name}.', suffix='.tmp', dir=directory)
    try:
        with os.fdopen(fd, 'wb') as f:
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
) -> CheckpointHeader:
    """Write ``policy`` to ``path`` atomically as one safetensors file; return its header."""
    data, header = dump_checkpoint(
        policy, version=version, parent=parent, metrics=metrics, extra=extra
    )
    _write_atomic(Path(path), data)
    _log.info('saved checkpoint v%d (%s, %d bytes) to %s', version, header.policy, len(data), path)
    return header


def _read_bytes(source: str | os.PathLike[str] | bytes | bytearray | memoryview) -> bytes:
    if isinstance(source, (bytes, bytearray, memoryview)):
        return bytes(source)
    try:
        return Path(source).read_bytes()
    except OSError as exc:
        raise CheckpointRejected(f'cannot read checkpoint {source}: {exc}') from exc


def _parse_header(data: bytes) -> CheckpointHeader:
    """Check the safetensors framing and return the validated scarls header."""
    if len(data) < 8:
        raise CheckpointRejected(f'not a safetensors file: only {len(data)} bytes')
    (n,) = struct.unpack('<Q', data[:8])
    if n < 2 or n > _MAX_HEADER_BYTES or 8 + n > len(data) or data[8:9] != b'{':
        if data[:4] == b'PK\x03\x04' or data[:1] == b'\x80':
            raise CheckpointRejected(
                'not a safetensors file: looks like a pickle/torch.save archive; '
                'pickled checkpoints are never loaded - re-export with save_checkpoint()'
            )
        raise CheckpointRejected(
            'not a safetensors file (bad or truncated header); the file may be incomplete'
        )
    try:
        meta = json.loads(data[8 : 8 + n]).get('__metadata__') or {}
    except (ValueError, AttributeError) as exc:
        raise CheckpointRejected(f'safetensors header is not a JSON object: {exc}') from exc
    if HEADER_KEY not in meta:
        raise CheckpointRejected(f'safetensors file has no {HEADER_KEY!r} metadata entry')
    try:
        header = CheckpointHeader.from_json(meta[HEADER_KEY])
    except (ValueError, TypeError) as exc:
        raise CheckpointRejected(str(exc)) from exc
    if header.format_version != FORMAT_VERSION:
        raise CheckpointRejected(
            f'unsupported format_version {header.format_version} (this reader supports '
            f'{FORMAT_VERSION}); upgrade scarls'
        )
    return header


def read_header(source: str | os.PathLike[str] | bytes) -> CheckpointHeader:
    """Read and validate only the header (no tensors loaded, no policy built)."""
    return _parse_header(_read_bytes(source))


def load_checkpoint(
    source: str | os.PathLike[str] | bytes | bytearray | memoryview,
    *,
    expected_sha256: str | None = None,
    device: str | torch.device = 'cpu',
) -> tuple[Policy, CheckpointHeader]:
    """Load and verify a checkpoint; return the policy (eval mode) and its header.

    The checks run on the CPU; the policy is then moved to ``device`` (``'auto'``, ``'cpu'``,
    ``'cuda'``, ``'cuda:N'``, ``'mps'`` or a :class:`torch.device`, see
    :func:`scarls.device.resolve_device` - an unavailable device raises
    :class:`scarls.device.DeviceError` before anything is read) with
    :func:`scarls.device.place_module`, so it also takes CPU batches.

    Raises :class:`CheckpointRejected` when: the whole-file sha256 differs from
    ``expected_sha256``; the bytes are not safetensors (pickle included) or are truncated;
    the header is malformed; the policy name is not registered or its config is invalid;
    tensor names, shapes or dtypes differ from the policy built from the config; a tensor
    holds NaN/inf; or the payload hash does not match.
    """
    target = resolve_device(device)
    data = _read_bytes(source)
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.strip().lower():
            raise CheckpointRejected(
                f'sha256 mismatch: expected {expected_sha256}, file has {actual}; '
                'the file is corrupt or not the announced checkpoint'
            )
    header = _parse_header(data)
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises several error types
        raise CheckpointRejected(f'corrupt safetensors payload: {exc}') from exc
    try:
        policy = make_policy(header.policy, header.policy_config)
    except UnknownPolicy as exc:
        raise CheckpointRejected(f'checkpoint policy is not available: {exc}') from exc
    except PolicyConfigError as exc:
        raise CheckpointRejected(f'invalid policy config in checkpoint: {exc}') from exc
    expected = policy.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointRejected(
            f'tensor names do not match policy {header.policy!r}: missing {missing[:5]}, '
            f'unexpected {unexpected[:5]}'
        )
    for name, ref in expected.items():
        t = tensors[name]
        if t.shape != ref.shape or t.dtype != ref.dtype:
            raise CheckpointRejected(
                f'tensor {name!r} has {t.dtype} {tuple(t.shape)}, policy expects '
                f'{ref.dtype} {tuple(ref.shape)}'
            )
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise CheckpointRejected(f'tensor {name!r} contains NaN or inf')
    if tensors_sha256(tensors) != header.payload_sha256:
        raise CheckpointRejected('payload_sha256 mismatch: the tensor data was modified')
    policy.load_state_dict(tensors, strict=True)
    place_module(policy, target)
    policy.eval()
    return policy, header
