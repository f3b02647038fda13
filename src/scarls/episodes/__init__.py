"""Zarr v3 episode format: streaming writers, lazy reader, validator and listing.

Layout (one episode)::

    <root>/<task>/episode_<N>.zarr/      zarr v3 group (see :mod:`scarls.episodes.schema`)
    <root>/<task>/episode_<N>_meta.json  meta (:class:`EpisodeMeta`), written last

Importing this package registers the ``scarls.image`` zarr codec used by lossy image codecs.
"""

from __future__ import annotations

from scarls.episodes.codecs import CODEC_NAMES, ImageCodec, available_codecs
from scarls.episodes.errors import EpisodeError, EpisodeFormatError, SchemaError, StorageError
from scarls.episodes.layout import EpisodeEntry, list_episodes
from scarls.episodes.offline import write_episode
from scarls.episodes.reader import EpisodeReader, validate_episode
from scarls.episodes.schema import OUTCOMES, SCHEMA_VERSION, EpisodeMeta
from scarls.episodes.writer import (
    BackgroundEpisodeWriter,
    EpisodeRef,
    EpisodeWriter,
    StepRecord,
    WriterStats,
)

__all__ = [
    'CODEC_NAMES',
    'OUTCOMES',
    'SCHEMA_VERSION',
    'BackgroundEpisodeWriter',
    'EpisodeEntry',
    'EpisodeError',
    'EpisodeFormatError',
    'EpisodeMeta',
    'EpisodeReader',
    'EpisodeRef',
    'EpisodeWriter',
    'ImageCodec',
    'SchemaError',
    'StepRecord',
    'StorageError',
    'WriterStats',
    'available_codecs',
    'list_episodes',
    'validate_episode',
    'write_episode',
]
