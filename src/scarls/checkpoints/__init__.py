"""Checkpoint files: safetensors weights + a JSON header, verified on load (never pickle)."""

from __future__ import annotations

from scarls.checkpoints.format import (
    FORMAT_VERSION,
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
