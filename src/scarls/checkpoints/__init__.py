"""Checkpoint files: safetensors weights + a JSON header, signed, bounded and verified on load
(never pickle); the registry, chunked transfer, signing keys and deploy records."""

from __future__ import annotations

from scarls.checkpoints.format import (
    DEFAULT_LIMITS,
    FORMAT_VERSION,
    HEADER_KEY,
    SIGNATURE_KEY,
    CheckpointError,
    CheckpointHeader,
    CheckpointLimits,
    CheckpointRejected,
    RevokedKey,
    SignatureRejected,
    UntrustedKey,
    VerifiedCheckpoint,
    dump_checkpoint,
    file_sha256,
    load_checkpoint,
    load_verified_checkpoint,
    read_header,
    save_checkpoint,
    sign_checkpoint_bytes,
    tensors_sha256,
    verify_checkpoint,
)

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
    'dump_checkpoint',
    'file_sha256',
    'load_checkpoint',
    'load_verified_checkpoint',
    'read_header',
    'save_checkpoint',
    'sign_checkpoint_bytes',
    'tensors_sha256',
    'verify_checkpoint',
]

from scarls.checkpoints.registry import (  # noqa: E402
    APPROVED_KEY,
    INDEX_NAME,
    CheckpointRecord,
    CheckpointRegistry,
    RegistryError,
    UnknownVersion,
)
from scarls.checkpoints.transfer import (  # noqa: E402
    DEFAULT_MAX_CHUNK,
    ChunkFetcher,
    ChunkReply,
    ChunkServer,
    TransferError,
)

__all__ += [
    'APPROVED_KEY',
    'DEFAULT_MAX_CHUNK',
    'INDEX_NAME',
    'CheckpointRecord',
    'CheckpointRegistry',
    'ChunkFetcher',
    'ChunkReply',
    'ChunkServer',
    'RegistryError',
    'TransferError',
    'UnknownVersion',
]
