"""scarls.camera.convert: every raw encoding and both compressed formats against a reference RGB
image, row padding, fitting (resize / centre crop), and malformed input (only CameraError)."""

from __future__ import annotations

from types import SimpleNamespace

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scarls.camera.convert import (
    MAX_PIXELS,
    RAW_ENCODINGS,
    CameraError,
    compressed_size,
    encode_jpeg,
    fit_frame,
    frame_from_compressed,
    frame_from_image,
    msg_to_frame,
)
from scarls.robot import CameraSpec

H, W = 48, 64


def reference(height: int = H, width: int = W) -> np.ndarray:
    """A smooth RGB test image whose horizontal pixel pairs are equal (so 4:2:2 chroma
    subsampling loses nothing and YUV round trips are exact up to rounding)."""
    y, x = np.mgrid[0:height, 0:width // 2]
    img = np.stack([(x * 255 // max(1, width // 2 - 1)),
                    (y * 255 // max(1, height - 1)),
                    ((x + y) * 7) % 256], axis=-1).astype(np.uint8)
    return np.repeat(img, 2, axis=1)


def _yuv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """BT.601 limited range (what ROS camera drivers and V4L2 devices deliver)."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return (np.clip(np.rint(c), 0, 255).astype(np.uint8) for c in (y, u, v))


def encode_raw(rgb: np.ndarray, encoding: str) -> bytes:
    """The bytes a camera driver would publish for ``rgb`` in ``encoding`` (no padding)."""
    h, w = rgb.shape[:2]
    if encoding == 'rgb8':
        out = rgb
    elif encoding == 'bgr8':
        out = rgb[:, :, ::-1]
    elif encoding in ('rgba8', 'bgra8'):
        color = rgb if encoding == 'rgba8' else rgb[:, :, ::-1]
        out = np.concatenate([color, np.full((h, w, 1), 200, np.uint8)], axis=2)
    elif encoding == 'mono8':
        out = rgb[:, :, 0]
    else:
        y, u, v = _yuv(rgb)
        u2, v2 = u[:, 0::2], v[:, 0::2]
        out = np.empty((h, w // 2, 4), np.uint8)
        if encoding in ('yuv422', 'uyvy'):            # U0 Y0 V0 Y1
            out[..., 0], out[..., 1], out[..., 2], out[..., 3] = u2, y[:, 0::2], v2, y[:, 1::2]
        else:                                         # yuyv, yuv422_yuy2: Y0 U0 Y1 V0
            out[..., 0], out[..., 1], out[..., 2], out[..., 3] = y[:, 0::2], u2, y[:, 1::2], v2
    return np.ascontiguousarray(out).tobytes()


def expected(rgb: np.ndarray, encoding: str) -> np.ndarray:
    return np.repeat(rgb[:, :, :1], 3, axis=2) if encoding == 'mono8' else rgb


def pad_rows(data: bytes, height: int, row: int, pad: int) -> bytes:
    rows = np.frombuffer(data, np.uint8).reshape(height, row)
    return np.concatenate([rows, np.full((height, pad), 0xAB, np.uint8)], axis=1).tobytes()


# ------------------------------------------------------------------------------- raw images
@pytest.mark.parametrize('encoding', sorted(RAW_ENCODINGS))
@pytest.mark.parametrize('pad', [0, 3, 64])
def test_every_encoding_round_trips(encoding, pad):
    rgb = reference()
    bpp = RAW_ENCODINGS[encoding]
    data = pad_rows(encode_raw(rgb, encoding), H, W * bpp, pad)
    frame = frame_from_image(H, W, encoding, W * bpp + pad, data)
    assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
    tol = 3 if bpp == 2 else 0   # YUV: rounding of the limited-range conversion
    np.testing.assert_allclose(frame.astype(int), expected(rgb, encoding).astype(int), atol=tol)


@pytest.mark.parametrize('encoding', ['RGB8', ' bgr8 ', 'YUY2', '8UC3'])
def test_encoding_names_are_normalised(encoding):
    rgb = reference()
    canonical = {'RGB8': 'rgb8', ' bgr8 ': 'bgr8', 'YUY2': 'yuyv', '8UC3': 'bgr8'}[encoding]
    bpp = RAW_ENCODINGS[canonical]
    frame = frame_from_image(H, W, encoding, W * bpp, encode_raw(rgb, canonical))
    np.testing.assert_allclose(frame.astype(int), rgb.astype(int), atol=3)


def test_last_row_padding_may_be_missing_and_data_types_are_accepted():
    rgb = reference()
    padded = pad_rows(encode_raw(rgb, 'bgr8'), H, W * 3, 8)
    trimmed = padded[:-8]
    for data in (trimmed, bytearray(trimmed), memoryview(trimmed),
                 np.frombuffer(trimmed, np.uint8)):
        np.testing.assert_array_equal(frame_from_image(H, W, 'bgr8', W * 3 + 8, data), rgb)
    import array
    small = reference(2, 4)
    raw = encode_raw(small, 'rgb8')
    np.testing.assert_array_equal(frame_from_image(2, 4, 'rgb8', 12, array.array('B', raw)),
                                  small)
    np.testing.assert_array_equal(frame_from_image(2, 4, 'rgb8', 12, list(raw)), small)


def test_rgb8_without_padding_is_a_view_and_others_are_copies():
    rgb = reference()
    data = bytearray(encode_raw(rgb, 'rgb8'))
    view = frame_from_image(H, W, 'rgb8', W * 3, data)
    data[0] = 255 - data[0]
    assert view[0, 0, 0] == data[0]           # no copy on the hot path
    bgr = frame_from_image(H, W, 'bgr8', W * 3, bytes(encode_raw(rgb, 'bgr8')))
    assert bgr.flags.c_contiguous and bgr.flags.writeable


@pytest.mark.parametrize('height, width, encoding, step, size, match', [
    (H, W, 'rgb8', W * 3, H * W * 3 - 1, 'bytes, expected'),
    (H, W, 'rgb8', W * 3, H * W * 3 + 1, 'bytes, expected'),
    (H, W, 'rgb8', W * 3 - 1, H * W * 3, 'step'),
    (H, W, 'rgb16', W * 6, H * W * 6, 'not supported'),
    (H, W, '16UC1', W * 2, H * W * 2, 'not supported'),
    (H, W, 'jpeg', W * 3, H * W * 3, 'not supported'),
    (0, W, 'rgb8', W * 3, 0, 'empty'),
    (H, -1, 'rgb8', 0, 0, 'empty'),
    (H, 63, 'yuyv', 126, H * 126, 'even'),
    (9000, 9000, 'mono8', 9000, 10, 'too large'),
    (1, 20000, 'mono8', 20000, 10, 'too large'),
])
def test_malformed_raw_images_raise_camera_error(height, width, encoding, step, size, match):
    with pytest.raises(CameraError, match=match):
        frame_from_image(height, width, encoding, step, bytes(size))


def test_absurd_sizes_are_refused_before_anything_is_allocated():
    # a header claiming 100k x 100k pixels with 10 bytes of data: refused on the size alone
    with pytest.raises(CameraError, match='too large'):
        frame_from_image(100_000, 100_000, 'rgb8', 300_000, b'\0' * 10)
    assert MAX_PIXELS == 8192 * 8192


@pytest.mark.parametrize('bad', [
    dict(height=1.5), dict(width='64'), dict(step=None), dict(height=True),
    dict(encoding=None), dict(data=object()), dict(data=[300] * (H * W * 3)),
    dict(data=np.zeros(H * W * 3, np.float32)),
])
def test_wrong_field_types_raise_camera_error(bad):
    args = dict(height=H, width=W, encoding='rgb8', step=W * 3, data=bytes(H * W * 3))
    args.update(bad)
    with pytest.raises(CameraError):
        frame_from_image(**args)


# ------------------------------------------------------------------------------- compressed
def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode('.png', np.ascontiguousarray(rgb[:, :, ::-1]))
    assert ok
    return buf.tobytes()


@pytest.mark.parametrize('fmt', ['jpeg', 'jpg', 'rgb8; jpeg compressed bgr8', 'JPEG', ''])
def test_jpeg_decodes_to_rgb(fmt):
    rgb = reference()
    data = encode_jpeg(rgb, 95)
    frame = frame_from_compressed(fmt, data)
    assert frame.shape == (H, W, 3) and frame.dtype == np.uint8
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)[:, :, ::-1]
    np.testing.assert_array_equal(frame, decoded)
    assert np.abs(frame.astype(int) - rgb.astype(int)).mean() < 6   # lossy, but RGB order
    assert np.abs(frame.astype(int) - rgb[:, :, ::-1].astype(int)).mean() > 40


@pytest.mark.parametrize('fmt', ['png', 'bgr8; png compressed bgr8', ''])
def test_png_decodes_exactly(fmt):
    rgb = reference()
    np.testing.assert_array_equal(frame_from_compressed(fmt, _png(rgb)), rgb)


def test_grey_and_alpha_pngs_come_out_rgb():
    rgb = reference()
    ok, grey = cv2.imencode('.png', rgb[:, :, 0])
    frame = frame_from_compressed('mono8; png compressed mono8', grey.tobytes())
    np.testing.assert_array_equal(frame, expected(rgb, 'mono8'))
    bgra = np.concatenate([rgb[:, :, ::-1], np.full((H, W, 1), 7, np.uint8)], axis=2)
    ok, rgba = cv2.imencode('.png', bgra)
    np.testing.assert_array_equal(frame_from_compressed('png', rgba.tobytes()), rgb)


def test_compressed_size_reads_headers():
    rgb = reference(30, 50)
    assert compressed_size(encode_jpeg(rgb)) == ('jpeg', 30, 50)
    assert compressed_size(_png(rgb)) == ('png', 30, 50)


def _png_claiming(height: int, width: int) -> bytes:
    real = bytearray(_png(reference(4, 4)))
    real[16:24] = width.to_bytes(4, 'big') + height.to_bytes(4, 'big')
    return bytes(real)


def _jpeg_claiming(height: int, width: int) -> bytes:
    real = bytearray(encode_jpeg(reference(16, 16)))
    i = 2
    while real[i + 1] not in (0xC0, 0xC2):
        i += 2 + int.from_bytes(real[i + 2:i + 4], 'big')
    real[i + 5:i + 9] = height.to_bytes(2, 'big') + width.to_bytes(2, 'big')
    return bytes(real)


@pytest.mark.parametrize('fmt, data, match', [
    ('jpeg', b'', 'neither JPEG nor PNG'),
    ('jpeg', b'hello world', 'neither JPEG nor PNG'),
    ('jpeg', b'\xff\xd8\xff', 'no frame header'),
    ('png', b'\x89PNG\r\n\x1a\n\0\0', 'truncated'),
    ('jpeg', 'PNG', 'says jpeg but the data is png'),
    ('png', 'JPEG', 'says png but the data is jpeg'),
    ('tiff', 'JPEG', 'not supported'),
    ('16UC1; compressedDepth png', 'PNG', 'depth'),
    (None, 'JPEG', 'format must be a string'),
    ('png', 'PNG_HUGE', 'too large'),
    ('jpeg', 'JPEG_HUGE', 'too large'),
    ('jpeg', 'JPEG_TRUNCATED', 'does not decode'),
    ('png', 'PNG_TRUNCATED', 'does not decode'),
])
def test_malformed_compressed_images_raise_camera_error(fmt, data, match):
    rgb = reference()
    data = {'PNG': _png(rgb), 'JPEG': encode_jpeg(rgb),
            'PNG_HUGE': _png_claiming(60_000, 60_000),
            'JPEG_HUGE': _jpeg_claiming(65_000, 65_000),
            'JPEG_TRUNCATED': encode_jpeg(rgb)[:200],
            'PNG_TRUNCATED': _png(rgb)[:60]}.get(data, data)
    with pytest.raises(CameraError, match=match):
        frame_from_compressed(fmt, data)


# ------------------------------------------------------------------------------- fitting
def test_fit_resize_and_identity():
    rgb = reference(480, 640)
    out = fit_frame(rgb, 96, 128, 'resize')
    assert out.shape == (96, 128, 3)
    assert fit_frame(rgb, 480, 640, 'crop') is rgb
    up = fit_frame(reference(24, 32), 96, 128)
    assert up.shape == (96, 128, 3)


def test_fit_resize_shrinks_with_area_interpolation():
    # a 1-pixel checkerboard shrunk by 4: area averaging gives flat grey, nearest would alias
    board = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    frame = np.repeat(board[:, :, None], 3, axis=2)
    out = fit_frame(frame, 16, 16, 'resize')
    assert np.all(np.abs(out.astype(int) - 128) <= 1)


def test_fit_crop_takes_the_centre():
    # 60 x 120 frame: left quarter red, centre half green, right quarter blue -> 50 x 50 crop
    frame = np.zeros((60, 120, 3), np.uint8)
    frame[:, :30, 0] = 255
    frame[:, 30:90, 1] = 255
    frame[:, 90:, 2] = 255
    out = fit_frame(frame, 50, 50, 'crop')
    assert out.shape == (50, 50, 3)
    assert np.all(out[:, :, 1] == 255) and not out[:, :, [0, 2]].any()
    # too tall: rows are cut top and bottom
    tall = np.zeros((120, 60, 3), np.uint8)
    tall[30:90] = 200
    np.testing.assert_array_equal(fit_frame(tall, 40, 40, 'crop'), np.full((40, 40, 3), 200))
    # resize keeps everything instead (all three colours are still there)
    squeezed = fit_frame(frame, 50, 50, 'resize')
    assert squeezed[:, :5, 0].min() > 200 and squeezed[:, -5:, 2].min() > 200


def test_fit_crop_to_wider_aspect():
    out = fit_frame(reference(480, 640), 96, 256, 'crop')   # 4:3 -> 8:3: cut rows
    assert out.shape == (96, 256, 3)


@pytest.mark.parametrize('args, match', [
    ((reference(), 96, 128, 'stretch'), 'fit'),
    ((reference(), 0, 128, 'resize'), 'empty'),
    ((reference(), 9000, 9000, 'resize'), 'too large'),
    ((reference()[:, :, 0], 96, 128, 'resize'), r'\(H, W, 3\)'),
    ((np.zeros((0, 5, 3), np.uint8), 96, 128, 'resize'), 'empty'),
])
def test_fit_rejects_bad_arguments(args, match):
    with pytest.raises(CameraError, match=match):
        fit_frame(*args)


# ------------------------------------------------------------------------------- messages
def _header(sec: int = 12, nanosec: int = 345):
    return SimpleNamespace(stamp=SimpleNamespace(sec=sec, nanosec=nanosec), frame_id='cam')


def raw_msg(rgb, encoding='rgb8', pad=0, **header):
    bpp = RAW_ENCODINGS[encoding]
    h, w = rgb.shape[:2]
    data = pad_rows(encode_raw(rgb, encoding), h, w * bpp, pad)
    return SimpleNamespace(header=_header(**header), height=h, width=w, encoding=encoding,
                           is_bigendian=0, step=w * bpp + pad, data=data)


def test_msg_to_frame_raw_and_compressed_at_the_spec_size():
    spec = CameraSpec('top', source='ros', height=24, width=32)
    rgb = reference(48, 64)
    frame, stamp = msg_to_frame(raw_msg(rgb, 'yuyv', pad=4), spec)
    assert frame.shape == (24, 32, 3) and stamp == 12_000_000_345
    np.testing.assert_allclose(frame.astype(int), fit_frame(rgb, 24, 32).astype(int), atol=4)
    comp = SimpleNamespace(header=_header(3, 0), format='png', data=_png(rgb))
    frame, stamp = msg_to_frame(comp, CameraSpec('top', compressed=True, height=24, width=32,
                                                 fit='crop'))
    assert stamp == 3_000_000_000
    np.testing.assert_array_equal(frame, fit_frame(rgb, 24, 32, 'crop'))


def test_msg_to_frame_spec_encoding_overrides_a_wrong_label():
    # a driver labels YUYV bytes 'yuv422' (which means UYVY in ROS): the spec corrects it
    rgb = reference()
    msg = raw_msg(rgb, 'yuyv')
    msg.encoding = 'yuv422'
    frame, _ = msg_to_frame(msg, CameraSpec('left', encoding='yuyv', height=H, width=W))
    np.testing.assert_allclose(frame.astype(int), rgb.astype(int), atol=3)
    wrong, _ = msg_to_frame(msg, CameraSpec('left', encoding='auto', height=H, width=W))
    assert np.abs(wrong.astype(int) - rgb.astype(int)).max() > 20


def test_msg_to_frame_works_with_real_ros_messages():
    from sensor_msgs.msg import CompressedImage, Image

    from scarls.ros.conversions import image_to_msg, ns_to_stamp

    rgb = reference()
    msg = image_to_msg(rgb, ns_to_stamp(5_000_000_007), 'camera_top')
    frame, stamp = msg_to_frame(msg, CameraSpec('top', height=H, width=W))
    np.testing.assert_array_equal(frame, rgb)
    assert stamp == 5_000_000_007
    bgr = Image(height=H, width=W, encoding='bgr8', step=W * 3,
                data=encode_raw(rgb, 'bgr8'))
    np.testing.assert_array_equal(msg_to_frame(bgr, CameraSpec('top', height=H, width=W))[0],
                                  rgb)
    comp = CompressedImage(format='rgb8; jpeg compressed bgr8', data=encode_jpeg(rgb, 95))
    frame, _ = msg_to_frame(comp, CameraSpec('top', compressed=True, height=H, width=W))
    assert np.abs(frame.astype(int) - rgb.astype(int)).mean() < 6


def test_policy_frame_decodes_real_cameras_and_passes_the_simulators_frames():
    """What the actor and the recorder make of a received frame (one function for both)."""
    from sensor_msgs.msg import CompressedImage

    from scarls.ros.conversions import MessageError, image_to_msg, ns_to_stamp, policy_frame

    rgb = reference()
    raw = image_to_msg(rgb, ns_to_stamp(1), 'camera_top')
    # the simulator renders at the run's size: kept as it is, even if the description differs
    sim = CameraSpec('top', height=H // 2, width=W // 2)
    np.testing.assert_array_equal(policy_frame(raw, sim), rgb)
    np.testing.assert_array_equal(policy_frame(raw, None), rgb)
    # a real camera's frame is fitted to the description's size
    real = CameraSpec('top', source='ros', height=H // 2, width=W // 2)
    assert policy_frame(raw, real).shape == (H // 2, W // 2, 3)
    comp = CompressedImage(format='rgb8; jpeg compressed bgr8', data=encode_jpeg(rgb, 95))
    comp.header.stamp = ns_to_stamp(1)
    assert policy_frame(comp, CameraSpec('top', source='ros', compressed=True, height=H,
                                         width=W)).shape == (H, W, 3)
    with pytest.raises(MessageError, match='does not name'):
        policy_frame(comp, None)


@pytest.mark.parametrize('mutate, match', [
    (lambda m: setattr(m, 'data', m.data[:-1]), "camera 'top' .*bytes, expected"),
    (lambda m: setattr(m, 'encoding', 'bayer_rggb8'), 'not supported'),
    (lambda m: setattr(m, 'header', None), 'header.stamp'),
    (lambda m: setattr(m.header.stamp, 'nanosec', 2_000_000_000), 'nanosec'),
    (lambda m: delattr(m, 'height'), 'not an image message'),
    (lambda m: setattr(m, 'encoding', 'jpeg'), 'compressed: true'),
])
def test_msg_to_frame_errors_name_the_camera(mutate, match):
    msg = raw_msg(reference())
    mutate(msg)
    with pytest.raises(CameraError, match=match) as info:
        msg_to_frame(msg, CameraSpec('top', height=H, width=W))
    assert "camera 'top' (camera/top/image_raw)" in str(info.value)


# ------------------------------------------------------------------------------- properties
_PROPS = settings(max_examples=300, deadline=None,
                  suppress_health_check=[HealthCheck.too_slow])


@_PROPS
@given(height=st.integers(-3, 70), width=st.integers(-3, 70),
       encoding=st.sampled_from([*RAW_ENCODINGS, 'jpeg', 'bayer_rggb8', '', 'RGB8']),
       step=st.integers(-5, 300), data=st.binary(max_size=4096))
def test_random_raw_input_never_crashes(height, width, encoding, step, data):
    try:
        frame = frame_from_image(height, width, encoding, step, data)
    except CameraError:
        return
    assert frame.shape == (height, width, 3) and frame.dtype == np.uint8


@_PROPS
@given(fmt=st.sampled_from(['jpeg', 'png', '', 'rgb8; jpeg compressed bgr8', 'x']),
       data=st.binary(max_size=2048))
def test_random_compressed_bytes_never_crash(fmt, data):
    try:
        frame = frame_from_compressed(fmt, data)
    except CameraError:
        return
    assert frame.ndim == 3 and frame.shape[2] == 3


_JPEG = encode_jpeg(reference(16, 24), 80)
_PNGB = _png(reference(16, 24))


@_PROPS
@given(which=st.sampled_from(['jpeg', 'png']), cut=st.integers(0, 2000),
       flips=st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=8))
def test_corrupted_real_images_never_crash(which, cut, flips):
    data = bytearray(_JPEG if which == 'jpeg' else _PNGB)
    for pos, value in flips:
        data[pos % len(data)] = value
    data = bytes(data[:max(0, len(data) - cut)])
    try:
        frame = frame_from_compressed(which, data)
    except CameraError:
        return
    assert frame.ndim == 3 and frame.shape[2] == 3 and frame.dtype == np.uint8


@_PROPS
@given(h=st.integers(1, 300), w=st.integers(1, 300), th=st.integers(1, 200),
       tw=st.integers(1, 200), fit=st.sampled_from(['resize', 'crop']))
def test_fit_always_gives_the_target_size(h, w, th, tw, fit):
    out = fit_frame(np.zeros((h, w, 3), np.uint8), th, tw, fit)
    assert out.shape == (th, tw, 3) and out.dtype == np.uint8
