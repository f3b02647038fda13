"""Per-frame image codecs for episode camera arrays.

Every camera array is stored with one frame per chunk, shape ``(1, H, W, 3)`` uint8.  The
codec is chosen per dataset (per :class:`~scarls.episodes.writer.EpisodeWriter`) by name:

``lz4`` (default)
    Lossless and fast: zarr's built-in ``BloscCodec`` (blosc + lz4, bit-shuffled).
    Readable by any zarr v3 implementation.
``raw``
    Lossless, uncompressed (zarr's ``BytesCodec`` alone): ~1.35x the bytes of ``lz4`` on
    noisy camera frames, but reading a frame is one ``pread`` into the batch, no decoding -
    the fastest for training from local disk.
``zstd``
    Lossless, smaller and slower: ``BloscCodec`` with zstd.
``jpeg``, ``webp``, ``jpegxl``, ``avif``
    Lossy per-frame image compression via ``imagecodecs``, stored through the zarr v3
    array-to-bytes codec :class:`ImageCodec` (registered under the name ``scarls.image``).
    Reading these arrays with zarr requires importing :mod:`scarls.episodes` first so that the
    codec is registered.  Only the codecs available in the installed ``imagecodecs`` build are
    offered (see :func:`available_codecs`).

``h264`` (compressed mode, for finished episodes)
    Short H.264 GOPs aligned with zarr chunks: the camera array is re-chunked to ``K`` frames
    per chunk (``K`` = the GOP, default 4) and each chunk is one independently decodable
    H.264 stream (an IDR frame, then P frames; libx264 ``ultrafast``, CRF 28, 4:2:0), stored
    through the zarr v3 array-to-bytes codec :class:`VideoCodec` (``scarls.video``).  About
    1/250 of ``lz4``'s bytes on noisy camera frames at ~35 dB PSNR; reading one frame decodes
    on average ``(K + 1) / 2`` small frames (see docs/BENCHMARKS.md).  Recording stays
    lossless and real time: :func:`scarls.episodes.compact.compact_episode` rewrites finished
    episodes into this form.  Needs PyAV (``av``) and OpenCV, imported on first use.

Checksums: for lossless codecs the sha256 in the episode meta is over the frame bytes as
given to the writer; for lossy codecs it is over the *decoded-as-stored* frames (the writer
decodes each encoded frame once and hashes the result), so a reader can verify the stored
data by decoding and hashing.  Verification of lossy arrays therefore assumes a decoder that
reproduces the same pixels (libjpeg-turbo, libwebp, libjxl and libavif decoders are
deterministic for a given library version).
"""

from __future__ import annotations

import struct
import threading
import zlib
from dataclasses import dataclass
from fractions import Fraction
from typing import TYPE_CHECKING, Any

import imagecodecs
import numcodecs
import numpy as np
from zarr.abc.codec import ArrayBytesCodec
from zarr.codecs import BloscCodec, BytesCodec
from zarr.core.common import parse_named_configuration
from zarr.registry import register_codec

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer

__all__ = [
    'CODEC_NAMES',
    'RAW_CODEC',
    'IMAGE_CODEC_NAME',
    'VIDEO_CODEC_NAME',
    'VIDEO_FORMATS',
    'FrameCodec',
    'ImageCodec',
    'VideoChunkError',
    'VideoCodec',
    'decode_video_chunk',
    'encode_video_chunk',
    'available_codecs',
    'get_frame_codec',
]

IMAGE_CODEC_NAME = 'scarls.image'

_BLOSC_CODECS: dict[str, int] = {'lz4': 5, 'zstd': 3}  # name -> default clevel
_IMAGE_FORMATS: dict[str, tuple[str, int]] = {
    # format -> (imagecodecs availability attribute, default quality level)
    'jpeg': ('JPEG8', 90),
    'webp': ('WEBP', 90),
    'jpegxl': ('JPEGXL', 90),
    'avif': ('AVIF', 80),
}
RAW_CODEC = 'raw'
CODEC_NAMES: tuple[str, ...] = (*_BLOSC_CODECS, RAW_CODEC, *_IMAGE_FORMATS)


def _format_available(fmt: str) -> bool:
    attr = _IMAGE_FORMATS[fmt][0]
    return bool(getattr(getattr(imagecodecs, attr, None), 'available', False))


def available_codecs() -> tuple[str, ...]:
    """Return the codec names usable in this installation (lossless ones first)."""
    return (*_BLOSC_CODECS, RAW_CODEC, *(f for f in _IMAGE_FORMATS if _format_available(f)))


def encode_image(fmt: str, frame: np.ndarray, level: int) -> bytes:
    """Encode one ``(H, W, 3)`` uint8 frame with an image format."""
    if fmt == 'jpeg':
        return bytes(imagecodecs.jpeg8_encode(frame, level=level))
    if fmt == 'webp':
        return bytes(imagecodecs.webp_encode(frame, level=level, lossless=False, method=0))
    if fmt == 'jpegxl':
        return bytes(imagecodecs.jpegxl_encode(frame, level=level, effort=1))
    if fmt == 'avif':
        return bytes(imagecodecs.avif_encode(frame, level=level, speed=10))
    raise ValueError(f'unknown image format {fmt!r}; expected one of {sorted(_IMAGE_FORMATS)}')


def decode_image(fmt: str, data: Any, out: np.ndarray | None = None) -> np.ndarray:
    """Decode one encoded frame (any bytes-like) to a ``(H, W, 3)`` uint8 array.

    With ``out`` (C-contiguous uint8 of the frame's shape) the frame is decoded into it.
    """
    if fmt == 'jpeg':
        img = imagecodecs.jpeg8_decode(data, out=out)
    elif fmt == 'webp':
        img = imagecodecs.webp_decode(data, hasalpha=False, out=out)
    elif fmt == 'jpegxl':
        img = imagecodecs.jpegxl_decode(data, out=out)
    elif fmt == 'avif':
        img = imagecodecs.avif_decode(data, out=out)
    else:
        raise ValueError(f'unknown image format {fmt!r}; expected one of {sorted(_IMAGE_FORMATS)}')
    return np.asarray(img, dtype=np.uint8)


@dataclass(frozen=True)
class ImageCodec(ArrayBytesCodec):
    """Zarr v3 array-to-bytes codec storing each ``(1, H, W, 3)`` uint8 chunk as one image.

    Serialised in ``zarr.json`` as ``{"name": "scarls.image", "configuration":
    {"format": "jpeg", "level": 90}}``.
    """

    is_fixed_size = False

    format: str
    level: int

    def __init__(self, *, format: str = 'jpeg', level: int | None = None) -> None:  # noqa: A002
        if format not in _IMAGE_FORMATS:
            raise ValueError(
                f'unknown image format {format!r}; expected one of {sorted(_IMAGE_FORMATS)}'
            )
        lvl = _IMAGE_FORMATS[format][1] if level is None else int(level)
        object.__setattr__(self, 'format', format)
        object.__setattr__(self, 'level', lvl)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        _, config = parse_named_configuration(data, IMAGE_CODEC_NAME)
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return {
            'name': IMAGE_CODEC_NAME,
            'configuration': {'format': self.format, 'level': self.level},
        }

    def validate(self, *, shape: Any, dtype: Any, chunk_grid: Any) -> None:
        native = dtype.to_native_dtype()
        if native != np.dtype(np.uint8):
            raise ValueError(f'{IMAGE_CODEC_NAME} codec needs uint8 data, got {native}')
        if len(shape) < 3 or shape[-1] != 3:
            raise ValueError(f'{IMAGE_CODEC_NAME} codec needs (..., H, W, 3) arrays, got {shape}')

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        frame = decode_image(self.format, chunk_bytes.to_bytes())
        arr = frame.reshape(chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(arr)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        arr = np.ascontiguousarray(chunk_array.as_numpy_array())
        frame = arr.reshape(arr.shape[-3:])
        return chunk_spec.prototype.buffer.from_bytes(encode_image(self.format, frame, self.level))

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError(f'{IMAGE_CODEC_NAME} output size is data dependent')


register_codec(IMAGE_CODEC_NAME, ImageCodec)


@dataclass(frozen=True)
class FrameCodec:
    """A named per-frame codec: how to build the zarr array and how to encode one chunk.

    ``encode`` produces exactly the bytes zarr stores for a ``(1, H, W, 3)`` chunk, so the
    writer can put each frame into its own chunk file without going through zarr per frame.
    """

    name: str
    lossless: bool
    level: int

    def zarr_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``zarr.create_array`` (serializer + compressors)."""
        if self.name == RAW_CODEC:
            return {'serializer': BytesCodec(), 'compressors': ()}
        if self.lossless:
            return {
                'serializer': BytesCodec(),
                'compressors': (
                    BloscCodec(cname=self.name, clevel=self.level, shuffle='bitshuffle'),
                ),
            }
        return {'serializer': ImageCodec(format=self.name, level=self.level), 'compressors': ()}

    def encode(self, frame: np.ndarray) -> bytes:
        """Encode one contiguous ``(H, W, 3)`` uint8 frame into its stored chunk bytes."""
        if self.name == RAW_CODEC:
            return np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
        if self.lossless:
            return bytes(_blosc(self.name, self.level).encode(frame))
        return encode_image(self.name, frame, self.level)

    def decode(self, data: bytes, shape: tuple[int, int, int]) -> np.ndarray:
        """Decode stored chunk bytes to a ``(H, W, 3)`` uint8 frame."""
        if self.name == RAW_CODEC:
            return np.frombuffer(data, dtype=np.uint8).reshape(shape)
        if self.lossless:
            raw = _blosc(self.name, self.level).decode(data)
            return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
        return decode_image(self.name, data).reshape(shape)

    def describe(self) -> dict[str, Any]:
        """JSON description stored in the episode meta (``image_codec``)."""
        return {'name': self.name, 'lossless': self.lossless, 'level': self.level}


# -- video chunks -----------------------------------------------------------------------------

VIDEO_CODEC_NAME = 'scarls.video'
#: format -> (PyAV encoder, PyAV decoder, default CRF, default encoder preset)
VIDEO_FORMATS: dict[str, tuple[str, str, int, str]] = {
    'h264': ('libx264', 'h264', 28, 'ultrafast'),
}
DEFAULT_VIDEO_GOP = 4
_VIDEO_MAGIC = b'SCV1'
_VIDEO_HEAD = struct.Struct('<4sIII')  # magic, frames, packets, crc32 of the packet bytes


class VideoChunkError(ValueError):
    """A video chunk is damaged or does not hold the frames its array declares."""


def _av() -> Any:
    try:
        import av
        import cv2  # noqa: F401 - colour conversion
    except ImportError as exc:  # pragma: no cover - both ship with the project
        raise ImportError(f'the h264 episode codec needs PyAV and OpenCV: {exc}') from exc
    return av


def encode_video_chunk(frames: np.ndarray, fmt: str = 'h264', crf: int | None = None,
                       preset: str | None = None) -> bytes:
    """Encode ``(K, H, W, 3)`` uint8 RGB frames (H, W even) as one closed GOP.

    The stored bytes: a 16-byte header (magic ``SCV1``, K, packet count, crc32 of the packet
    bytes), the packet sizes (uint32 each), then the packets.  No B frames, so frame ``j``
    needs packets ``0..j`` only.
    """
    import cv2

    av = _av()
    encoder, _decoder, default_crf, default_preset = VIDEO_FORMATS[fmt]
    k, h, w = int(frames.shape[0]), int(frames.shape[1]), int(frames.shape[2])
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[3] != 3:
        raise ValueError(f'expected (K, H, W, 3) uint8 frames, got {frames.dtype} {frames.shape}')
    if h % 2 or w % 2:
        raise ValueError(f'{fmt} frames need an even height and width, got {h}x{w}')
    ctx = av.CodecContext.create(encoder, 'w')
    ctx.width, ctx.height, ctx.pix_fmt = w, h, 'yuv420p'
    ctx.time_base = Fraction(1, 30)
    ctx.framerate = Fraction(30)
    ctx.gop_size = k
    ctx.max_b_frames = 0
    ctx.thread_count = 1
    ctx.options = {
        'preset': default_preset if preset is None else str(preset),
        'crf': str(default_crf if crf is None else int(crf)),
        'tune': 'zerolatency',
    }
    packets: list[bytes] = []
    for i in range(k):
        yuv = cv2.cvtColor(np.ascontiguousarray(frames[i]), cv2.COLOR_RGB2YUV_I420)
        packets.extend(bytes(p) for p in ctx.encode(av.VideoFrame.from_ndarray(yuv, 'yuv420p')))
    packets.extend(bytes(p) for p in ctx.encode(None))
    body = b''.join(packets)
    sizes = struct.pack(f'<{len(packets)}I', *(len(p) for p in packets))
    return _VIDEO_HEAD.pack(_VIDEO_MAGIC, k, len(packets), zlib.crc32(body)) + sizes + body


_DECODERS = threading.local()  # per thread: format -> an open PyAV decoder


def _split_video_chunk(data: Any, frames: int) -> list[memoryview]:
    view = memoryview(data).cast('B')
    if len(view) < _VIDEO_HEAD.size:
        raise VideoChunkError(f'{len(view)} bytes, shorter than the video chunk header')
    magic, k, n, crc = _VIDEO_HEAD.unpack_from(view)
    if magic != _VIDEO_MAGIC:
        raise VideoChunkError(f'not a video chunk (magic {bytes(magic)!r})')
    if k != frames:
        raise VideoChunkError(f'the chunk holds {k} frames, the array says {frames}')
    start = _VIDEO_HEAD.size + 4 * n
    if n < 1 or start > len(view):
        raise VideoChunkError(f'{n} packets announced in {len(view)} bytes')
    sizes = struct.unpack_from(f'<{n}I', view, _VIDEO_HEAD.size)
    if start + sum(sizes) != len(view):
        raise VideoChunkError(f'packets of {sum(sizes)} bytes announced, {len(view) - start} '
                              'stored (truncated or padded)')
    body = view[start:]
    if zlib.crc32(body) != crc:
        raise VideoChunkError('crc32 mismatch: the chunk is damaged')
    out, at = [], 0
    for size in sizes:
        out.append(body[at:at + size])
        at += size
    return out


def decode_video_chunk(data: Any, frames: int, out: np.ndarray, *, fmt: str = 'h264',
                       first: int = 0) -> np.ndarray:
    """Decode frames ``first .. first + len(out) - 1`` of a chunk of ``frames`` into ``out``.

    ``out``: ``(n, H, W, 3)`` uint8.  Decoding starts at the chunk's IDR frame and stops after
    the last requested frame.  Raises :class:`VideoChunkError` for a damaged chunk.
    """
    import cv2

    av = _av()
    n, h, w = out.shape[0], out.shape[1], out.shape[2]
    last = first + n - 1
    if not 0 <= first <= last < frames:
        raise ValueError(f'frames {first}..{last} out of range for a chunk of {frames}')
    packets = _split_video_chunk(data, frames)
    cache = _DECODERS.__dict__
    ctx = cache.pop(fmt, None)  # taken out while in use; dropped if decoding fails
    if ctx is None:
        ctx = av.CodecContext.create(VIDEO_FORMATS[fmt][1], 'r')
        ctx.thread_count = 1
    seen = 0

    def take(decoded: Any) -> None:
        nonlocal seen
        for fr in decoded:
            if first <= seen <= last:
                if fr.width != w or fr.height != h:
                    raise VideoChunkError(f'decoded a {fr.width}x{fr.height} frame, the array '
                                          f'has {w}x{h}')
                cv2.cvtColor(fr.to_ndarray(), cv2.COLOR_YUV2RGB_I420, dst=out[seen - first])
            seen += 1

    try:
        for p in packets:
            take(ctx.decode(av.Packet(p)))
            if seen > last:
                break
        if seen <= last:
            take(ctx.decode(None))  # drain
        ctx.flush_buffers()
    except VideoChunkError:
        raise
    except Exception as exc:  # noqa: BLE001 - PyAV/FFmpeg errors
        raise VideoChunkError(f'{fmt} decoding failed: {exc}') from exc
    if seen <= last:
        raise VideoChunkError(f'the chunk decoded to {seen} frames, frame {last} was requested')
    cache[fmt] = ctx
    return out


@dataclass(frozen=True)
class VideoCodec(ArrayBytesCodec):
    """Zarr v3 array-to-bytes codec storing a ``(K, H, W, 3)`` uint8 chunk as one H.264 GOP.

    Serialised in ``zarr.json`` as ``{"name": "scarls.video", "configuration": {"format":
    "h264", "crf": 28, "preset": "ultrafast"}}``; ``K`` is the array's chunk length.
    """

    is_fixed_size = False

    format: str
    crf: int
    preset: str

    def __init__(self, *, format: str = 'h264', crf: int | None = None,  # noqa: A002
                 preset: str | None = None) -> None:
        if format not in VIDEO_FORMATS:
            raise ValueError(f'unknown video format {format!r}; expected one of '
                             f'{sorted(VIDEO_FORMATS)}')
        _enc, _dec, default_crf, default_preset = VIDEO_FORMATS[format]
        object.__setattr__(self, 'format', format)
        object.__setattr__(self, 'crf', default_crf if crf is None else int(crf))
        object.__setattr__(self, 'preset', default_preset if preset is None else str(preset))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Self:
        _, config = parse_named_configuration(data, VIDEO_CODEC_NAME)
        return cls(**config)

    def to_dict(self) -> dict[str, Any]:
        return {
            'name': VIDEO_CODEC_NAME,
            'configuration': {'format': self.format, 'crf': self.crf, 'preset': self.preset},
        }

    def validate(self, *, shape: Any, dtype: Any, chunk_grid: Any) -> None:
        native = dtype.to_native_dtype()
        if native != np.dtype(np.uint8):
            raise ValueError(f'{VIDEO_CODEC_NAME} codec needs uint8 data, got {native}')
        if len(shape) != 4 or shape[-1] != 3:
            raise ValueError(f'{VIDEO_CODEC_NAME} codec needs (T, H, W, 3) arrays, got {shape}')
        if shape[1] % 2 or shape[2] % 2:
            raise ValueError(f'{VIDEO_CODEC_NAME} needs an even height and width, got {shape}')

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        shape = tuple(chunk_spec.shape)
        arr = np.empty(shape, np.uint8)
        decode_video_chunk(chunk_bytes.as_numpy_array(), shape[0], arr, fmt=self.format)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(arr)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer:
        arr = np.ascontiguousarray(chunk_array.as_numpy_array())
        data = encode_video_chunk(arr, self.format, self.crf, self.preset)
        return chunk_spec.prototype.buffer.from_bytes(data)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        raise NotImplementedError(f'{VIDEO_CODEC_NAME} output size is data dependent')


register_codec(VIDEO_CODEC_NAME, VideoCodec)


def _blosc(cname: str, level: int) -> numcodecs.Blosc:
    return numcodecs.Blosc(cname=cname, clevel=level, shuffle=numcodecs.Blosc.BITSHUFFLE)


def get_frame_codec(name: str, level: int | None = None) -> FrameCodec:
    """Return the :class:`FrameCodec` for ``name``; ``ValueError`` if unknown or unavailable."""
    if name in _BLOSC_CODECS:
        return FrameCodec(name, True, _BLOSC_CODECS[name] if level is None else int(level))
    if name == RAW_CODEC:
        return FrameCodec(name, True, 0)
    if name in _IMAGE_FORMATS:
        if not _format_available(name):
            raise ValueError(
                f'image codec {name!r} is not available in this imagecodecs build; '
                f'available: {available_codecs()}'
            )
        return FrameCodec(name, False, _IMAGE_FORMATS[name][1] if level is None else int(level))
    raise ValueError(f'unknown image codec {name!r}; expected one of {available_codecs()}')
