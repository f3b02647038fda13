"""The camera capture node: its pure parts (settings, device strings, the grabber's deadline and
reconnects with fake sources, video files, a fake pyrealsense2, calibration files) and the real
node in its own process reading a video file, received by a real subscriber over DDS."""

from __future__ import annotations

import sys
import threading
import time
import types
from itertools import pairwise

import cv2
import numpy as np
import psutil
import pytest

from scarls.bringup import NodeSpec
from scarls.camera.sources import (
    CaptureConfig,
    CaptureError,
    ConfigError,
    Grabber,
    OpenCVSource,
    RealSenseSource,
    load_calibration,
    parse_device,
)

NS = 'camtest'
H, W = 48, 64
FRAMES = 30


def frame_color(i: int) -> tuple[int, int, int]:
    """The RGB colour of frame i of the test video."""
    return (8 * i, 255 - 8 * i, 128)


def write_video(path, frames: int = FRAMES, fps: float = 30.0) -> None:
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'MJPG'), fps, (W, H))
    assert writer.isOpened()
    for i in range(frames):
        writer.write(np.full((H, W, 3), frame_color(i)[::-1], np.uint8))   # BGR
    writer.release()


def nearest_frame(rgb: np.ndarray) -> tuple[int, float]:
    errors = [np.abs(rgb.astype(int) - np.array(frame_color(i))).mean() for i in range(FRAMES)]
    return int(np.argmin(errors)), float(min(errors))


class Log:
    """Collects what the grabber logs (the rclpy logger has the same methods)."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, str]] = []

    def info(self, text: str) -> None:
        self.lines.append(('info', text))

    def warning(self, text: str) -> None:
        self.lines.append(('warning', text))

    def error(self, text: str) -> None:
        self.lines.append(('error', text))

    def text(self, level: str | None = None) -> str:
        return '\n'.join(t for lv, t in self.lines if level in (None, lv))


# ------------------------------------------------------------------------------ settings
@pytest.mark.parametrize('changes, match', [
    (dict(name='1top'), 'name'),
    (dict(source='sim'), 'source'),
    (dict(device=' '), 'device'),
    (dict(width=640), 'set both'),
    (dict(width=-1, height=10), 'width'),
    (dict(fps=-1.0), 'fps'),
    (dict(fourcc='MJPEG'), 'fourcc'),
    (dict(encoding='yuyv'), 'encoding'),
    (dict(jpeg_quality=0), 'jpeg_quality'),
    (dict(qos='fast'), 'qos'),
    (dict(read_timeout_s=0.0), 'read_timeout_s'),
    (dict(fps=2.0, read_timeout_s=0.5), 'two frame periods'),
    (dict(reconnect_s=float('nan')), 'reconnect_s'),
])
def test_capture_config_rejects_what_cannot_work(changes, match):
    with pytest.raises(ConfigError, match=match):
        CaptureConfig(**changes)


def test_capture_config_defaults():
    cfg = CaptureConfig(name='top')
    assert (cfg.topic_prefix, cfg.header_frame_id, cfg.qos, cfg.encoding) == \
        ('camera/top', 'camera_top', 'best_effort', 'rgb8')


@pytest.mark.parametrize('device, kind, target', [
    ('0', 'index', 0), (' 2 ', 'index', 2), ('/dev/video0', 'v4l2', '/dev/video0'),
    ('/dev/v4l/by-id/usb-cam-video-index0', 'v4l2', '/dev/v4l/by-id/usb-cam-video-index0'),
    ('v4l2src ! videoconvert ! appsink', 'gstreamer', 'v4l2src ! videoconvert ! appsink'),
    ('rtsp://10.0.0.2:554/stream', 'stream', 'rtsp://10.0.0.2:554/stream'),
    ('http://cam.local/mjpg', 'stream', 'http://cam.local/mjpg'),
    ('file:///tmp/a.mp4', 'file', '/tmp/a.mp4'), ('clips/a.mp4', 'file', 'clips/a.mp4'),
])
def test_parse_device(device, kind, target):
    assert parse_device(device) == (kind, target)


# ------------------------------------------------------------------------------ grabber
class FakeSource:
    """Delivers numbered frames; ``plan`` says what each connection does."""

    def __init__(self, behaviour: str, frames: int = 1000, period: float = 0.005) -> None:
        self.description = f'fake camera ({behaviour})'
        self.hint = 'check the fake cable'
        self.behaviour = behaviour
        self.frames = frames
        self.period = period
        self.count = 0
        self.closed = False
        self.release = threading.Event()

    def open(self) -> None:
        if self.behaviour == 'no_open':
            raise CaptureError(f'{self.description} did not open; {self.hint}')
        if self.behaviour == 'hang_open':
            self.release.wait(30)

    def read(self):
        self.count += 1
        if self.behaviour == 'hang' and self.count > 3:
            self.release.wait(30)   # a stuck driver call
        if self.behaviour == 'fail' and self.count > 3:
            raise CaptureError(f'{self.description}: reading a frame failed; {self.hint}')
        if self.count > self.frames:
            return None
        time.sleep(self.period)
        return np.full((4, 4, 3), self.count % 256, np.uint8), time.time_ns()

    def close(self) -> None:
        self.closed = True


def _grabber(sources: list[FakeSource], log: Log, frames: list, **kw) -> Grabber:
    queue = list(sources)

    def make():
        return queue.pop(0) if len(queue) > 1 else queue[0]

    return Grabber(make, lambda f, s: frames.append((int(f[0, 0, 0]), s)), logger=log,
                   poll_s=0.01, **{'read_timeout_s': 0.3, 'open_timeout_s': 0.5,
                                   'reconnect_s': 0.05, **kw})


def test_grabber_abandons_a_stuck_read_and_reconnects():
    stuck, good = FakeSource('hang'), FakeSource('ok')
    log, frames = Log(), []
    grabber = _grabber([stuck, good], log, frames)
    grabber.start()
    try:
        assert grabber.wait(lambda: len(frames) > 20, 20), log.text()
        assert grabber.state == 'streaming'
        warning = log.text('warning')
        assert 'fake camera (hang): no frame after' in warning
        assert 'check the fake cable' in warning and 'reconnecting' in warning
        assert 'streaming again' in log.text('info')
        stamps = [s for _, s in frames]
        assert stamps == sorted(stamps)
        # stopping does not wait for a call stuck in the driver: it is left behind, disarmed
        start = time.monotonic()
        assert not grabber.stop(60)
        assert time.monotonic() - start < 30   # not the 60 s timeout
        assert 'still blocked in the driver; leaving them behind' in log.text('warning')
        n = len(frames)
        stuck.release.set()
        assert grabber.wait(lambda: stuck.closed, 10), 'the stuck reader closes its source'
        assert len(frames) == n, 'an abandoned reader delivers nothing'
    finally:
        stuck.release.set()
        grabber.stop(10)
    assert good.closed and grabber.state == 'stopped'


def test_grabber_abandons_a_hanging_open():
    hanging, good = FakeSource('hang_open'), FakeSource('ok')
    log, frames = Log(), []
    grabber = _grabber([hanging, good], log, frames)
    grabber.start()
    try:
        assert grabber.wait(lambda: len(frames) > 5, 20), log.text()
        assert 'still opening after' in log.text('warning')
    finally:
        hanging.release.set()
        grabber.wait(lambda: hanging.closed, 10)
        assert grabber.stop(10)


def test_grabber_retries_failures_with_throttled_logs():
    log, frames = Log(), []
    sources = [FakeSource('no_open') for _ in range(25)] + [FakeSource('ok')]
    grabber = _grabber(sources, log, frames, reconnect_s=0.01)
    grabber.start()
    try:
        assert grabber.wait(lambda: len(frames) > 5, 30), log.text()
    finally:
        assert grabber.stop(10)
    warnings = [t for lv, t in log.lines if lv == 'warning']
    assert 'did not open; check the fake cable; reconnecting in 0.01 s' in warnings[0]
    assert 3 <= len(warnings) <= 6, warnings   # 25 failures: the first 3, then every 10th
    assert 'after 25 failed attempt(s)' in log.text('info')


def test_grabber_reconnects_after_a_read_failure():
    log, frames = Log(), []
    grabber = _grabber([FakeSource('fail'), FakeSource('ok')], log, frames)
    grabber.start()
    try:
        assert grabber.wait(lambda: len(frames) > 10, 20), log.text()
        assert 'reading a frame failed' in log.text('warning')
    finally:
        assert grabber.stop(10)


def test_grabber_ends_with_a_finite_stream_and_survives_callback_errors():
    log, calls = Log(), []

    def on_frame(frame, stamp):
        calls.append(stamp)
        if len(calls) == 2:
            raise RuntimeError('publisher gone')

    grabber = Grabber(lambda: FakeSource('ok', frames=5), on_frame, logger=log, poll_s=0.01)
    grabber.start()
    try:
        assert grabber.wait(lambda: grabber.state == 'ended', 20), log.text()
    finally:
        assert grabber.stop(5)
    assert len(calls) == 5
    assert 'publisher gone' in log.text('error')
    assert 'end of the stream after 5 frames' in log.text('info')


# ------------------------------------------------------------------------------ sources
def test_opencv_source_plays_a_video_file_once_or_in_a_loop(tmp_path):
    video = tmp_path / 'clip.avi'
    write_video(video, frames=10)
    once = OpenCVSource(CaptureConfig(device=str(video), fps=200.0))
    once.open()
    got = []
    while (item := once.read()) is not None:
        got.append(item)
    once.close()
    assert len(got) == 10
    assert [nearest_frame(f[:, :, ::-1])[0] for f, _ in got] == list(range(10))
    assert all(a[1] < b[1] for a, b in pairwise(got))

    looped = OpenCVSource(CaptureConfig(device=str(video), fps=200.0, loop=True,
                                        width=32, height=24))
    looped.open()
    frames = [looped.read() for _ in range(25)]
    looped.close()
    assert all(f is not None and f[0].shape == (24, 32, 3) for f in frames)
    assert nearest_frame(frames[12][0][:, :, ::-1])[0] == 2   # 12 = 10 + 2: played again


def test_opencv_source_explains_what_to_check(tmp_path):
    with pytest.raises(CaptureError, match='no such file'):
        OpenCVSource(CaptureConfig(device=str(tmp_path / 'none.mp4'))).open()
    junk = tmp_path / 'junk.mp4'
    junk.write_bytes(b'not a video' * 100)
    with pytest.raises(CaptureError, match='check the path'):
        OpenCVSource(CaptureConfig(device=str(junk))).open()
    with pytest.raises(CaptureError, match='GStreamer'):
        OpenCVSource(CaptureConfig(device='videotestsrc ! appsink')).open()


def _fake_pyrealsense2(calls: list, domain: str = 'global_time'):
    rs = types.ModuleType('pyrealsense2')
    rs.stream = types.SimpleNamespace(color='color')
    rs.format = types.SimpleNamespace(bgr8='bgr8')
    rs.timestamp_domain = types.SimpleNamespace(global_time='global_time',
                                                system_time='system_time')

    class Frame:
        def __init__(self, n):
            self.n = n

        def __bool__(self):
            return True

        def get_data(self):
            return np.full((480, 640, 3), self.n, np.uint8)

        def get_timestamp(self):
            return 1_700_000_000_000.0 + self.n * 33.0   # ms

        def get_frame_timestamp_domain(self):
            return domain

    class Frames:
        def __init__(self, n):
            self.n = n

        def get_color_frame(self):
            return Frame(self.n)

    class Config:
        def enable_device(self, serial):
            calls.append(('enable_device', serial))

        def enable_stream(self, *args):
            calls.append(('enable_stream', *args))

    class Pipeline:
        n = 0

        def start(self, config):
            calls.append(('start',))

        def wait_for_frames(self, timeout_ms):
            calls.append(('wait_for_frames', timeout_ms))
            Pipeline.n += 1
            return Frames(Pipeline.n)

        def stop(self):
            calls.append(('stop',))

    rs.config, rs.pipeline = Config, Pipeline
    return rs


def test_realsense_source_with_a_fake_sdk(monkeypatch):
    calls: list = []
    monkeypatch.setitem(sys.modules, 'pyrealsense2', _fake_pyrealsense2(calls))
    src = RealSenseSource(CaptureConfig(source='realsense', device='123456789', fps=15.0,
                                        width=640, height=480, read_timeout_s=1.5))
    src.open()
    frame, stamp = src.read()
    src.close()
    assert frame.shape == (480, 640, 3) and frame[0, 0, 0] == 1
    assert stamp == 1_700_000_000_033_000_000   # the camera's global time, in ns
    assert calls == [('enable_device', '123456789'),
                     ('enable_stream', 'color', 640, 480, 'bgr8', 15),
                     ('start',), ('wait_for_frames', 1500), ('stop',)]

    calls.clear()
    monkeypatch.setitem(sys.modules, 'pyrealsense2', _fake_pyrealsense2(calls, 'system_time'))
    src = RealSenseSource(CaptureConfig(source='realsense', device='', width=32, height=24),
                          clock_ns=lambda: 42)
    src.open()
    frame, stamp = src.read()
    assert frame.shape == (24, 32, 3) and stamp == 42   # other domains: the arrival time
    assert ('enable_device', '') not in calls


def test_realsense_source_without_the_sdk_says_what_to_do(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pyrealsense2', None)
    with pytest.raises(CaptureError, match='pip install pyrealsense2.*source: ros'):
        RealSenseSource(CaptureConfig(source='realsense', device='')).open()


CALIBRATION = """\
image_width: 64
image_height: 48
camera_name: top
camera_matrix: {rows: 3, cols: 3, data: [50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0]}
distortion_model: plumb_bob
distortion_coefficients: {rows: 1, cols: 5, data: [0.1, -0.05, 0.0, 0.0, 0.0]}
rectification_matrix: {rows: 3, cols: 3, data: [1, 0, 0, 0, 1, 0, 0, 0, 1]}
projection_matrix: {rows: 3, cols: 4, data: [50, 0, 32, 0, 0, 50, 24, 0, 0, 0, 1, 0]}
"""


def test_calibration_file_and_camera_info(tmp_path):
    from scarls.camera.capture import build_camera_info

    path = tmp_path / 'top.yaml'
    path.write_text(CALIBRATION)
    calib = load_calibration(path)
    info = build_camera_info(64, 48, calib)
    assert (info.width, info.height, info.distortion_model) == (64, 48, 'plumb_bob')
    assert list(info.k) == [50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, 1.0]
    assert list(info.d) == [0.1, -0.05, 0.0, 0.0, 0.0]
    other = build_camera_info(640, 480, calib)   # another size: uncalibrated
    assert (other.width, other.height) == (640, 480) and not any(other.k)
    path.write_text(CALIBRATION.replace('data: [50.0, 0.0, 32.0, 0.0, 50.0, 24.0, 0.0, 0.0, '
                                        '1.0]', 'data: [1, 2]'))
    with pytest.raises(ConfigError, match='camera_matrix must hold 9'):
        load_calibration(path)
    with pytest.raises(ConfigError, match='cannot read'):
        load_calibration(tmp_path / 'missing.yaml')


# ------------------------------------------------------------------------------ the node
def _camera_spec(**params) -> NodeSpec:
    return NodeSpec('camera_top', 'scarls.camera.capture', NS, {'name': 'top', **params})


class Viewer:
    """A real subscriber in the test process (best effort, as camera drivers publish)."""

    def __init__(self, probe, compressed: bool = False) -> None:
        from sensor_msgs.msg import CameraInfo, CompressedImage, Image

        from scarls.ros import qos

        self.images, self.infos, self.jpegs = [], [], []
        node = probe.node
        node.create_subscription(Image, 'camera/top/image_raw', self.images.append,
                                 qos.CAMERA_LATEST)
        node.create_subscription(CameraInfo, 'camera/top/camera_info', self.infos.append,
                                 qos.CAMERA_LATEST)
        if compressed:
            node.create_subscription(CompressedImage, 'camera/top/image_raw/compressed',
                                     self.jpegs.append, qos.CAMERA_LATEST)


def _stamp(msg) -> int:
    return msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec


def _stop_and_check(node_group, name: str = 'camera_top') -> str:
    from rosutil import log_text

    running = next(n for n in node_group.nodes if n.spec.name == name)
    pid = running.process.pid
    children = psutil.Process(pid).children(recursive=True)
    codes = node_group.stop()
    assert codes[f'/{NS}/{name}'] == 0, log_text(node_group, name)   # SIGINT: a clean exit
    assert not node_group.killed
    assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    assert not [c for c in children if c.is_running()]
    text = log_text(node_group, name)
    assert 'Traceback' not in text, text
    return text


@pytest.mark.ros
def test_capture_node_publishes_a_video_file(ros, node_group, tmp_path):
    from rosutil import Probe

    from scarls.camera.convert import msg_to_frame
    from scarls.robot import CameraSpec

    video = tmp_path / 'top.avi'
    write_video(video)
    probe = Probe(NS)
    try:
        viewer = Viewer(probe, compressed=True)
        node_group.start(_camera_spec(device=str(video), loop=True, compressed=True), None)
        probe.wait_for(lambda: len(viewer.images) >= 40 and len(viewer.infos) >= 40
                       and len(viewer.jpegs) >= 10, 60, 'images, camera_info and JPEGs')
    finally:
        probe.close()
    text = _stop_and_check(node_group)
    assert 'streaming' in text

    images = viewer.images
    assert {(m.height, m.width, m.encoding, m.step) for m in images} == {(H, W, 'rgb8', W * 3)}
    assert {m.header.frame_id for m in images} == {'camera_top'}
    stamps = [_stamp(m) for m in images]
    assert all(a < b for a, b in pairwise(stamps)), 'stamps must increase'
    assert {(m.width, m.height) for m in viewer.infos} == {(W, H)}
    assert set(map(_stamp, viewer.infos)) & set(stamps), 'camera_info shares the image header'
    # the pixels are the file's frames, played in order and around the loop
    seen = []
    for m in images:
        rgb = np.frombuffer(bytes(m.data), np.uint8).reshape(H, W, 3)
        index, error = nearest_frame(rgb)
        assert error < 6, f'received frame matches no frame of the file (error {error:.1f})'
        seen.append(index)
    steps = {(b - a) % FRAMES for a, b in pairwise(seen)}
    assert 1 in steps and any(b < a for a, b in pairwise(seen)), f'no loop in {seen}'
    # compressed: a JPEG the stack's own converter reads, at the policy's size
    spec = CameraSpec('top', compressed=True, height=24, width=32)
    frame, stamp = msg_to_frame(viewer.jpegs[-1], spec)
    assert frame.shape == (24, 32, 3) and stamp > 0
    assert viewer.jpegs[-1].format == 'rgb8; jpeg compressed bgr8'


@pytest.mark.ros
def test_capture_node_waits_for_a_missing_camera_and_picks_it_up(ros, node_group, tmp_path):
    from rosutil import Probe, log_text

    video = tmp_path / 'late.avi'
    probe = Probe(NS)
    try:
        viewer = Viewer(probe)
        node_group.start(_camera_spec(device=str(video), loop=True, reconnect_s=0.2), None)
        probe.wait_for(lambda: 'no such file' in log_text(node_group, 'camera_top'), 30,
                       'the capture node to report the missing camera')
        text = log_text(node_group, 'camera_top')
        assert 'check the path' in text and 'reconnecting in 0.2 s' in text
        assert not node_group.dead(), 'a missing camera must not end the node'
        write_video(tmp_path / 'tmp.avi')
        (tmp_path / 'tmp.avi').rename(video)   # the camera appears
        probe.wait_for(lambda: len(viewer.images) >= 5, 60, 'images after the camera appeared')
    finally:
        probe.close()
    text = _stop_and_check(node_group)
    assert 'streaming again after' in text


@pytest.mark.ros
def test_capture_node_with_a_stuck_camera_still_stops_cleanly(node_group, tmp_path):
    # opening a FIFO nobody writes to blocks inside FFmpeg, like a wedged camera driver
    import os

    from rosutil import log_text

    fifo = tmp_path / 'wedged.mjpg'
    os.mkfifo(fifo)
    node = node_group.start(_camera_spec(device=str(fifo), open_timeout_s=1.0,
                                         reconnect_s=0.2), None)
    end = time.monotonic() + 30
    while time.monotonic() < end and 'failure 2' not in log_text(node_group, 'camera_top'):
        assert node.process.poll() is None, log_text(node_group, 'camera_top')
        time.sleep(0.1)
    text = log_text(node_group, 'camera_top')
    assert 'still opening after' in text and 'abandoning this connection' in text, text
    text = _stop_and_check(node_group)   # SIGINT is enough: exit code 0, nothing killed
    assert 'leaving them behind' in text


@pytest.mark.ros
def test_capture_node_refuses_bad_parameters(node_group, tmp_path):
    from rosutil import log_text

    node = node_group.start(_camera_spec(device='0', encoding='yuyv'), None)
    assert node.process.wait(timeout=60) == 1
    assert "parameter encoding: 'yuyv' is not one of ['rgb8', 'bgr8']" in \
        log_text(node_group, 'camera_top')
