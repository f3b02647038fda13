"""Camera frames from what real cameras publish: raw encodings, JPEG/PNG, any size -> the policy's.

Pure (numpy; OpenCV imported on first use, no rclpy): the actor, the recorder, tools and tests
call these directly.

* :func:`frame_from_image` - a ``sensor_msgs/Image`` payload (``rgb8``, ``bgr8``, ``rgba8``,
  ``bgra8``, ``mono8``, ``yuv422`` = UYVY, ``uyvy``, ``yuyv`` = ``yuv422_yuy2``; rows may be
  padded: ``step > width * bytes_per_pixel``) -> an ``(H, W, 3) uint8`` RGB array.
* :func:`frame_from_compressed` - a ``sensor_msgs/CompressedImage`` payload (JPEG or PNG; the
  ``format`` strings drivers use: ``jpeg``, ``jpg``, ``png``, ``rgb8; jpeg compressed bgr8``,
  ...) -> RGB.
* :func:`fit_frame` - bring a frame to the size the policy was trained on: ``resize`` (scale,
  aspect not kept) or ``crop`` (centre-crop to the target aspect, then scale). Shrinking uses
  area interpolation (no aliasing), enlarging bilinear.
* :func:`msg_to_frame` - one received message (either type, duck-typed) + its camera's
  :class:`~scarls.robot.CameraSpec` -> ``(frame, stamp_ns)`` at the spec's size.

Malformed input (wrong data length, unknown encoding, undecodable bytes, absurd sizes) raises
:class:`CameraError` with what was wrong; nothing else escapes. Sizes are bounded before
anything is allocated (:data:`MAX_SIDE`, :data:`MAX_PIXELS`), for compressed images by reading the
JPEG/PNG header before decoding.

Example::

    frame, stamp_ns = msg_to_frame(msg, robot.camera('top'))   # (96, 128, 3) uint8 RGB
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np

__all__ = [
    'COMPRESSED_FORMATS',
    'FITS',
    'MAX_PIXELS',
    'MAX_SIDE',
    'RAW_ENCODINGS',
    'CameraError',
    'bytes_per_pixel',
    'compressed_size',
    'encode_jpeg',
    'fit_frame',
    'frame_from_compressed',
    'frame_from_image',
    'msg_to_frame',
    'normalize_encoding',
]

#: Largest width or height accepted (pixels).
MAX_SIDE = 16384
#: Largest width * height accepted (8192 x 8192): bounds the memory one frame can take.
MAX_PIXELS = 8192 * 8192
#: Raw encodings -> bytes per pixel. ``yuv422`` is UYVY (the ROS name); ``yuv422_yuy2`` is YUYV.
RAW_ENCODINGS: dict[str, int] = {
    'rgb8': 3, 'bgr8': 3, 'rgba8': 4, 'bgra8': 4, 'mono8': 1,
    'yuv422': 2, 'uyvy': 2, 'yuyv': 2, 'yuv422_yuy2': 2,
}
COMPRESSED_FORMATS = ('jpeg', 'png')
FITS = ('resize', 'crop')
_ALIASES = {'yuy2': 'yuyv', 'yuv422_uyvy': 'uyvy', 'jpg': 'jpeg', '8uc3': 'bgr8',
            '8uc1': 'mono8', '8uc4': 'bgra8'}
_JPEG_MAGIC = b'\xff\xd8'
_PNG_MAGIC = b'\x89PNG\r\n\x1a\n'
# JPEG start-of-frame markers (baseline, progressive, lossless, arithmetic): they carry the size
_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


class CameraError(ValueError):
    """A camera frame could not be used (the message says what was wrong with it)."""


def _cv2():
    import cv2

    return cv2


def normalize_encoding(encoding: Any) -> str:
    """The canonical name of an encoding (lower case, aliases resolved: ``yuy2`` -> ``yuyv``,
    ``uyvy`` stays ``uyvy``, ``jpg`` -> ``jpeg``). Raises CameraError for a non-string."""
    if not isinstance(encoding, str):
        raise CameraError(f'image encoding must be a string, got {type(encoding).__name__}')
    name = encoding.strip().lower()
    return _ALIASES.get(name, name)


def bytes_per_pixel(encoding: str) -> int:
    """Bytes per pixel of a raw encoding. Raises CameraError if it is not one we decode."""
    name = normalize_encoding(encoding)
    if name not in RAW_ENCODINGS:
        raise CameraError(f'image encoding {encoding!r} is not supported; supported: '
                          f'{sorted(RAW_ENCODINGS)} (or a CompressedImage with jpeg/png)')
    return RAW_ENCODINGS[name]


def _int(value: Any, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise CameraError(f'{what} must be an integer, got {value!r}')
    return int(value)


def _check_size(height: int, width: int) -> None:
    if height <= 0 or width <= 0:
        raise CameraError(f'image size {height}x{width} is empty (height and width must be > 0)')
    if height > MAX_SIDE or width > MAX_SIDE or height * width > MAX_PIXELS:
        raise CameraError(f'image size {height}x{width} is too large (at most {MAX_SIDE} per '
                          f'side and {MAX_PIXELS} pixels); is the header corrupt?')


def _buffer(data: Any, max_len: int | None = None) -> np.ndarray:
    """The payload as a flat uint8 array (a view where the type allows it)."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise CameraError(f'image data must be uint8, got {data.dtype}')
        return data.reshape(-1)
    try:
        view = memoryview(data)
    except TypeError:
        view = None
    if view is not None:
        if view.itemsize != 1:
            raise CameraError(f'image data must be bytes, got items of {view.itemsize} bytes')
        try:
            return np.frombuffer(view.cast('B') if view.ndim != 1 or view.format != 'B'
                                 else view, dtype=np.uint8)
        except TypeError:   # a non-contiguous view
            return np.frombuffer(view.tobytes(), dtype=np.uint8)
    if isinstance(data, (list, tuple)):   # a message built by hand: a list of ints
        if max_len is not None and len(data) > max_len:
            raise CameraError(f'image data has {len(data)} bytes, expected at most {max_len}')
        try:
            return np.asarray(data, dtype=np.uint8).reshape(-1)
        except (OverflowError, TypeError, ValueError) as exc:
            raise CameraError(f'image data is not a list of bytes 0..255: {exc}') from None
    raise CameraError(f'image data must be bytes, got {type(data).__name__}')


def frame_from_image(height: int, width: int, encoding: str, step: int, data: Any) -> np.ndarray:
    """A raw ``sensor_msgs/Image`` payload -> ``(height, width, 3) uint8`` RGB.

    ``step`` is the row length in bytes (``>= width * bytes_per_pixel``; the padding at the end
    of each row is skipped). ``data`` holds ``height * step`` bytes (the last row's padding may
    be missing). For ``rgb8`` without padding the result is a read-only view of ``data``;
    otherwise a new array.

    Raises:
        CameraError: unknown encoding, bad or absurd size, step or data length.
    """
    height, width, step = _int(height, 'height'), _int(width, 'width'), _int(step, 'step')
    name = normalize_encoding(encoding)
    bpp = bytes_per_pixel(name)
    _check_size(height, width)
    row = width * bpp
    if step < row:
        raise CameraError(f'image step {step} is less than width x bytes per pixel = '
                          f'{width} x {bpp} = {row} ({encoding})')
    if bpp == 2 and width % 2:
        raise CameraError(f'{encoding} packs two pixels in 4 bytes: width must be even, got '
                          f'{width}')
    full, least = height * step, (height - 1) * step + row
    buf = _buffer(data, full)
    if not least <= buf.size <= full:
        want = f'{full}' if least == full else f'{least}..{full}'
        raise CameraError(f'image data has {buf.size} bytes, expected {want} for '
                          f'{height}x{width} {encoding} with step {step}')
    if buf.size < full:   # the last row's padding was left out
        buf = np.concatenate([buf, np.zeros(full - buf.size, np.uint8)])
    rows = buf.reshape(height, step)[:, :row]
    if name == 'rgb8':
        return np.ascontiguousarray(rows).reshape(height, width, 3)
    if name == 'bgr8':
        return np.ascontiguousarray(rows.reshape(height, width, 3)[:, :, ::-1])
    if name in ('rgba8', 'bgra8'):
        px = rows.reshape(height, width, 4)
        return np.ascontiguousarray(px[:, :, :3] if name == 'rgba8' else px[:, :, 2::-1])
    if name == 'mono8':
        return np.repeat(rows.reshape(height, width, 1), 3, axis=2)
    cv2 = _cv2()
    code = cv2.COLOR_YUV2RGB_YUY2 if name in ('yuyv', 'yuv422_yuy2') else cv2.COLOR_YUV2RGB_UYVY
    return cv2.cvtColor(np.ascontiguousarray(rows).reshape(height, width, 2), code)


def _jpeg_size(buf: bytes) -> tuple[int, int]:
    """(height, width) from a JPEG's start-of-frame segment, without decoding."""
    i, n = 2, len(buf)
    while i + 4 <= n:
        if buf[i] != 0xFF:
            raise CameraError(f'JPEG data is corrupt: no marker at byte {i}')
        marker = buf[i + 1]
        if marker == 0xFF:   # fill byte
            i += 1
            continue
        if marker in (0x01, *range(0xD0, 0xD8)):   # markers without a length
            i += 2
            continue
        if marker in (0xD9, 0xDA):   # end of image / start of scan before any frame header
            break
        (length,) = struct.unpack('>H', buf[i + 2:i + 4])
        if length < 2:
            raise CameraError(f'JPEG data is corrupt: segment length {length} at byte {i}')
        if marker in _JPEG_SOF:
            if i + 9 > n or length < 7:
                break
            height, width = struct.unpack('>HH', buf[i + 5:i + 9])
            return height, width
        i += 2 + length
    raise CameraError('JPEG data has no frame header (truncated or not a JPEG image)')


def compressed_size(data: Any) -> tuple[str, int, int]:
    """``(kind, height, width)`` of a JPEG or PNG image from its header, without decoding.

    Raises:
        CameraError: neither a JPEG nor a PNG, or a truncated header.
    """
    buf = _buffer(data).tobytes()
    if buf.startswith(_JPEG_MAGIC):
        return ('jpeg', *_jpeg_size(buf))
    if buf.startswith(_PNG_MAGIC):
        if len(buf) < 24 or buf[12:16] != b'IHDR':
            raise CameraError('PNG data is truncated or has no IHDR header')
        width, height = struct.unpack('>II', buf[16:24])
        return 'png', height, width
    head = buf[:8].hex(' ') if buf else 'nothing'
    raise CameraError(f'compressed image data is neither JPEG nor PNG (starts with {head})')


def _compressed_kind(fmt: Any) -> str | None:
    """'jpeg' | 'png' | None (not said: sniff the data) from a CompressedImage ``format``."""
    if not isinstance(fmt, str):
        raise CameraError(f'compressed image format must be a string, got {fmt!r}')
    text = fmt.strip().lower()
    if not text:
        return None
    if 'compresseddepth' in text:
        raise CameraError(f'compressed depth images are not supported (format {fmt!r})')
    # 'rgb8; jpeg compressed bgr8': the part after ';' names the codec
    codec = text.split(';', 1)[1] if ';' in text else text
    if 'jpeg' in codec or 'jpg' in codec:
        return 'jpeg'
    if 'png' in codec:
        return 'png'
    raise CameraError(f'compressed image format {fmt!r} is not supported (jpeg or png)')


def frame_from_compressed(format: str, data: Any) -> np.ndarray:  # noqa: A002 - the msg field
    """A ``sensor_msgs/CompressedImage`` payload (JPEG or PNG) -> ``(H, W, 3) uint8`` RGB.

    ``format`` is the message's: ``jpeg``, ``jpg``, ``png``, ``rgb8; jpeg compressed bgr8``,
    ``mono8; png compressed mono8``, ... (empty: told by the data). Grey and 16-bit PNGs come out
    as 8-bit RGB.

    Raises:
        CameraError: an unsupported format, data that is not the format said, a size over the
            bounds, or bytes that do not decode.
    """
    said = _compressed_kind(format)
    buf = _buffer(data)
    kind, height, width = compressed_size(buf)
    if said is not None and said != kind:
        raise CameraError(f'compressed image format says {said} but the data is {kind}')
    _check_size(height, width)
    cv2 = _cv2()
    rgb_flag = getattr(cv2, 'IMREAD_COLOR_RGB', None)
    try:
        img = cv2.imdecode(buf, cv2.IMREAD_COLOR if rgb_flag is None else rgb_flag)
    except cv2.error as exc:
        raise CameraError(f'{kind} data does not decode: {str(exc).strip()}') from None
    if img is None or img.ndim != 3 or img.shape[2] != 3 or img.dtype != np.uint8:
        raise CameraError(f'{kind} data ({len(buf)} bytes, header {height}x{width}) does not '
                          'decode to an image (truncated or corrupt)')
    return img if rgb_flag is not None else np.ascontiguousarray(img[:, :, ::-1])


def encode_jpeg(frame: np.ndarray, quality: int = 90, *, rgb: bool = True) -> bytes:
    """An ``(H, W, 3) uint8`` frame (RGB, or BGR with ``rgb=False``) -> JPEG bytes."""
    cv2 = _cv2()
    bgr = frame[:, :, ::-1] if rgb else frame
    ok, buf = cv2.imencode('.jpg', np.ascontiguousarray(bgr),
                           [int(cv2.IMWRITE_JPEG_QUALITY), int(quality)])
    if not ok:
        raise CameraError(f'JPEG encoding of a {frame.shape} frame failed')
    return buf.tobytes()


def fit_frame(frame: np.ndarray, height: int, width: int, fit: str = 'resize') -> np.ndarray:
    """``frame`` (H, W, 3) brought to ``height x width``.

    ``resize`` scales it (the aspect ratio changes if it differs); ``crop`` first cuts the
    largest centred region with the target's aspect ratio, then scales. Area interpolation when
    shrinking, bilinear when enlarging. A frame already at the size is returned as is.

    Raises:
        CameraError: unknown ``fit``, a size out of bounds or a frame that is not (H, W, 3).
    """
    if fit not in FITS:
        raise CameraError(f'fit {fit!r} is not one of {list(FITS)}')
    height, width = _int(height, 'height'), _int(width, 'width')
    _check_size(height, width)
    if not isinstance(frame, np.ndarray) or frame.ndim != 3 or frame.shape[2] != 3:
        raise CameraError(f'frame must be an (H, W, 3) array, got '
                          f'{getattr(frame, "shape", type(frame).__name__)}')
    h, w = frame.shape[:2]
    if (h, w) == (height, width):
        return frame
    if h == 0 or w == 0:
        raise CameraError(f'frame is empty ({h}x{w})')
    if fit == 'crop':
        # the largest centred window with the target's aspect ratio (integer arithmetic)
        if w * height > h * width:      # too wide
            cw = max(1, round(h * width / height))
            x0 = (w - cw) // 2
            frame = frame[:, x0:x0 + cw]
        elif w * height < h * width:    # too tall
            ch = max(1, round(w * height / width))
            y0 = (h - ch) // 2
            frame = frame[y0:y0 + ch]
        h, w = frame.shape[:2]
        if (h, w) == (height, width):
            return np.ascontiguousarray(frame)
    cv2 = _cv2()
    interp = cv2.INTER_AREA if h >= height and w >= width else cv2.INTER_LINEAR
    return cv2.resize(np.ascontiguousarray(frame), (width, height), interpolation=interp)


def _stamp_ns(msg: Any) -> int:
    try:
        stamp = msg.header.stamp
        sec, nanosec = int(stamp.sec), int(stamp.nanosec)
    except (AttributeError, TypeError, ValueError):
        raise CameraError('message has no header.stamp (sec, nanosec)') from None
    if not 0 <= nanosec < 1_000_000_000:
        raise CameraError(f'header.stamp.nanosec {nanosec} is out of 0..999999999')
    return sec * 1_000_000_000 + nanosec


def msg_to_frame(msg: Any, spec: Any, *, fit: bool = True) -> tuple[np.ndarray, int]:
    """A received ``sensor_msgs/Image`` or ``sensor_msgs/CompressedImage`` -> ``(frame,
    stamp_ns)`` at the camera's ``spec.height x spec.width`` (RGB uint8), fitted by
    ``spec.fit`` (``fit=False``: at the size the camera delivered it); ``stamp_ns`` is the
    header stamp in nanoseconds.

    Duck-typed (no rclpy needed): a message with ``format`` and no ``encoding`` is compressed.
    A raw image is read with ``spec.encoding`` when it is not ``auto`` (for drivers that
    label their bytes wrongly, e.g. YUYV as ``yuv422``), else with the message's own encoding.

    Raises:
        CameraError: anything malformed; the message names the camera and its topic.
    """
    try:
        stamp_ns = _stamp_ns(msg)
        if hasattr(msg, 'format') and not hasattr(msg, 'encoding'):
            frame = frame_from_compressed(msg.format, msg.data)
        else:
            encoding = msg.encoding if spec.encoding == 'auto' else spec.encoding
            if normalize_encoding(encoding) in COMPRESSED_FORMATS:
                raise CameraError(f'encoding {encoding!r} is a compressed format but the '
                                  'message is a raw sensor_msgs/Image; set compressed: true '
                                  'and the .../compressed topic, or the raw encoding')
            frame = frame_from_image(msg.height, msg.width, encoding, msg.step, msg.data)
        if fit:
            frame = fit_frame(frame, spec.height, spec.width, spec.fit)
        return frame, stamp_ns
    except CameraError as exc:
        raise CameraError(f'camera {spec.name!r} ({spec.topic_name}): {exc}') from None
    except AttributeError as exc:
        raise CameraError(f'camera {spec.name!r} ({spec.topic_name}): not an image message: '
                          f'{exc}') from None
