"""Frame sources for the capture node, and the grabber thread that keeps a stuck camera harmless.

Pure (numpy; OpenCV and pyrealsense2 are imported when a source opens, no rclpy), so the grabber
is tested with fake sources and the node stays thin.

* :class:`CaptureConfig` - what to open and how (validated; the node builds it from its
  parameters).
* :class:`OpenCVSource` - ``cv2.VideoCapture``: a V4L2 device (index ``0`` or path
  ``/dev/video0``), a GStreamer pipeline (needs an OpenCV built with GStreamer; the PyPI wheels
  are not), an RTSP/HTTP URL, or a video file (played at its own rate or ``fps``, optionally in
  a loop).
* :class:`RealSenseSource` - the colour stream of an Intel RealSense through ``pyrealsense2``
  (imported lazily: ``pip install pyrealsense2``, which needs the system's ``libusb-1.0``).
* :class:`Grabber` - runs a source in its own thread: opens it, hands every frame (BGR, stamped
  at capture time) to a callback, and when a read fails or takes longer than the read deadline,
  abandons that connection and reconnects every ``reconnect_s``, logging what to check.
* :func:`load_calibration` - a ``camera_calibration`` YAML file (what ``camera_info_url`` files
  hold) for the published ``camera_info``.

Sources return BGR frames (OpenCV's order); the node converts to the published encoding.
"""

from __future__ import annotations

import logging
import math
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

__all__ = [
    'CAPTURE_SOURCES',
    'PUBLISH_ENCODINGS',
    'CameraCalibration',
    'CaptureConfig',
    'CaptureError',
    'FrameSource',
    'Grabber',
    'OpenCVSource',
    'RealSenseSource',
    'describe_device',
    'load_calibration',
    'make_source',
    'parse_device',
]

#: Sources the capture node opens itself (``sim`` and ``ros`` cameras need no capture node).
CAPTURE_SOURCES = ('opencv', 'realsense')
#: Encodings the capture node publishes on ``image_raw``.
PUBLISH_ENCODINGS = ('rgb8', 'bgr8')
_QOS = ('best_effort', 'reliable')
_VIDEO_SUFFIXES = ('.mp4', '.avi', '.mkv', '.mov', '.webm', '.m4v', '.mpg', '.mpeg', '.mjpeg',
                   '.mjpg', '.ts', '.flv', '.wmv', '.gif')
_MAX_SIDE = 8192

ClockNs = Callable[[], int]


class CaptureError(RuntimeError):
    """A camera could not be opened or read; the message says what to check."""


class ConfigError(ValueError):
    """Capture settings that cannot work (the message names the parameter)."""


# --------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class CaptureConfig:
    """What the capture node opens and publishes.

    Attributes:
        name: camera name; topics ``camera/<name>/image_raw``, ``camera/<name>/camera_info``.
        source: ``opencv`` | ``realsense``.
        device: ``opencv``: a V4L2 index (``0``) or path (``/dev/video0``,
            ``/dev/v4l/by-id/...``), a GStreamer pipeline (contains ``!``), an
            ``rtsp://``/``http(s)://`` URL, or a video file. ``realsense``: a serial number
            (``''`` = the first camera found).
        width / height: requested frame size (0 = the device's default); frames that still
            arrive at another size are resized to it, so ``camera_info`` tells the truth.
        fps: requested rate (0 = the device's own; a video file plays at its own rate).
        fourcc: V4L2 pixel format to ask for, e.g. ``MJPG`` (USB 2 cameras above 640x480 at
            30 Hz need it) or ``YUYV``; ``''`` = the driver's default.
        loop: video files: start again at the end (otherwise publishing stops there).
        encoding: ``image_raw`` encoding: ``rgb8`` | ``bgr8``.
        compressed: also publish JPEG ``sensor_msgs/CompressedImage`` on
            ``image_raw/compressed``.
        jpeg_quality: 1..100.
        qos: ``best_effort`` (default; a slow subscriber never holds the camera back) |
            ``reliable``.
        frame_id: ``header.frame_id`` (``''`` = ``camera_<name>``).
        camera_info_file: a calibration YAML (``camera_calibration`` format); ``''`` = an
            uncalibrated ``camera_info`` (size only, zero matrices).
        read_timeout_s: a read that takes longer abandons the connection and reconnects.
        open_timeout_s: the same for opening.
        reconnect_s: pause between reconnection attempts.
    """

    name: str = 'camera'
    source: str = 'opencv'
    device: str = '0'
    width: int = 0
    height: int = 0
    fps: float = 0.0
    fourcc: str = ''
    loop: bool = False
    encoding: str = 'rgb8'
    compressed: bool = False
    jpeg_quality: int = 90
    qos: str = 'best_effort'
    frame_id: str = ''
    camera_info_file: str = ''
    read_timeout_s: float = 2.0
    open_timeout_s: float = 10.0
    reconnect_s: float = 1.0

    def __post_init__(self) -> None:
        def bad(param: str, what: str) -> ConfigError:
            return ConfigError(f'parameter {param}: {what}')

        if not self.name or not (self.name[0].isalpha()
                                 and all(c.isalnum() or c == '_' for c in self.name)):
            raise bad('name', f'{self.name!r} is not a valid name (letters, digits, _)')
        if self.source not in CAPTURE_SOURCES:
            raise bad('source', f'{self.source!r} is not one of {list(CAPTURE_SOURCES)} (sim '
                      'and ros cameras need no capture node)')
        if self.source == 'opencv' and not self.device.strip():
            raise bad('device', 'is empty: give a V4L2 index or path, a GStreamer pipeline, '
                      'a URL or a video file')
        for key in ('width', 'height'):
            v = getattr(self, key)
            if not 0 <= v <= _MAX_SIDE:
                raise bad(key, f'must be 0 (device default) .. {_MAX_SIDE}, got {v}')
        if (self.width == 0) != (self.height == 0):
            raise bad('width/height', 'set both or neither')
        if not (math.isfinite(self.fps) and 0 <= self.fps <= 1000):
            raise bad('fps', f'must be 0 (the source\'s own) .. 1000, got {self.fps}')
        if self.fourcc and len(self.fourcc) != 4:
            raise bad('fourcc', f'must be 4 characters (e.g. MJPG, YUYV) or empty, got '
                      f'{self.fourcc!r}')
        if self.encoding not in PUBLISH_ENCODINGS:
            raise bad('encoding', f'{self.encoding!r} is not one of {list(PUBLISH_ENCODINGS)}')
        if not 1 <= self.jpeg_quality <= 100:
            raise bad('jpeg_quality', f'must be 1..100, got {self.jpeg_quality}')
        if self.qos not in _QOS:
            raise bad('qos', f'{self.qos!r} is not one of {list(_QOS)}')
        for key in ('read_timeout_s', 'open_timeout_s', 'reconnect_s'):
            v = getattr(self, key)
            if not (math.isfinite(v) and 0 < v <= 3600):
                raise bad(key, f'must be > 0 s (at most an hour), got {v}')
        if self.fps and self.read_timeout_s < 2.0 / self.fps:
            raise bad('read_timeout_s', f'{self.read_timeout_s:g} s is shorter than two frame '
                      f'periods at {self.fps:g} fps')

    @property
    def topic_prefix(self) -> str:
        return f'camera/{self.name}'

    @property
    def header_frame_id(self) -> str:
        return self.frame_id or f'camera_{self.name}'


# --------------------------------------------------------------------------------- devices
def parse_device(device: str) -> tuple[str, Any]:
    """``(kind, target)`` of an OpenCV device string.

    kind: ``index`` (target: int), ``v4l2`` (a ``/dev/...`` path), ``gstreamer`` (a pipeline),
    ``stream`` (a URL), ``file`` (a video file path).
    """
    text = device.strip()
    if text.lstrip('-').isdigit():
        return 'index', int(text)
    if '!' in text:
        return 'gstreamer', text
    if '://' in text:
        scheme = text.split('://', 1)[0].lower()
        return ('file', text.split('://', 1)[1]) if scheme == 'file' else ('stream', text)
    if text.startswith('/dev/'):
        return 'v4l2', text
    return 'file', text


def describe_device(device: str) -> str:
    kind, target = parse_device(device)
    return {'index': f'V4L2 camera {target}', 'v4l2': f'V4L2 camera {target}',
            'gstreamer': 'GStreamer pipeline', 'stream': f'stream {target}',
            'file': f'video file {target}'}[kind]


_HINTS = {
    'index': 'check that the camera is plugged in (v4l2-ctl --list-devices), that no other '
             'program holds it, and that this user may open it (group video)',
    'gstreamer': 'check the pipeline with gst-launch-1.0, and that OpenCV was built with '
                 'GStreamer (the PyPI opencv wheels are not)',
    'stream': 'check that the camera/streamer is reachable (network, address, credentials) '
              'and answers, e.g. with ffplay',
    'file': 'check the path and that the file is a video OpenCV/FFmpeg can read',
}
_HINTS['v4l2'] = _HINTS['index']


class FrameSource(Protocol):
    """What the grabber reads from. ``open`` and ``read`` raise CaptureError (its message ends
    with what to check); ``read`` returns ``(bgr_frame, stamp_ns)``, or None at the end of a
    finite stream (a video file without loop)."""

    description: str
    hint: str   # what to check when it fails, e.g. 'check that the camera is plugged in ...'

    def open(self) -> None: ...

    def read(self) -> tuple[np.ndarray, int] | None: ...

    def close(self) -> None: ...


def _to_bgr(frame: np.ndarray) -> np.ndarray:
    import cv2

    if frame.ndim == 2:
        return cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
    if frame.ndim == 3 and frame.shape[2] == 4:
        return cv2.cvtColor(frame, cv2.COLOR_BGRA2BGR)
    if frame.ndim == 3 and frame.shape[2] == 3:
        return frame
    raise CaptureError(f'the source delivered a frame of shape {frame.shape}, not an image')


def _resize_to(frame: np.ndarray, width: int, height: int) -> np.ndarray:
    if not width or frame.shape[:2] == (height, width):
        return frame
    import cv2

    shrink = frame.shape[0] >= height and frame.shape[1] >= width
    return cv2.resize(frame, (width, height),
                      interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


class OpenCVSource:
    """A ``cv2.VideoCapture`` source. A frame is stamped when ``grab()`` returns (before it is
    decoded). Video files are paced to their frame rate (or ``fps``)."""

    def __init__(self, config: CaptureConfig, clock_ns: ClockNs = time.time_ns) -> None:
        self.config = config
        self.clock_ns = clock_ns
        self.kind, self.target = parse_device(config.device)
        self.description = describe_device(config.device)
        self.hint = _HINTS[self.kind]
        self._cap = None
        self._period = 0.0
        self._next = 0.0

    def _open_capture(self):
        import cv2

        cfg = self.config
        if self.kind == 'file' and not Path(self.target).exists():
            raise CaptureError(f'{self.description}: no such file; {self.hint}')
        if self.kind == 'gstreamer' and not re.search(r'GStreamer:\s*YES',
                                                      cv2.getBuildInformation()):
            raise CaptureError(f'{self.description}: this OpenCV build has no GStreamer '
                               'support (the PyPI opencv wheels have none); use a V4L2 device, '
                               'a URL, or a ROS 2 camera driver (source: ros)')
        api = {'index': cv2.CAP_V4L2, 'v4l2': cv2.CAP_V4L2, 'gstreamer': cv2.CAP_GSTREAMER,
               'stream': cv2.CAP_FFMPEG, 'file': cv2.CAP_ANY}[self.kind]
        params: list[int] = []
        if self.kind == 'stream':
            params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, int(cfg.open_timeout_s * 1000),
                      cv2.CAP_PROP_READ_TIMEOUT_MSEC, int(cfg.read_timeout_s * 1000)]
        try:
            cap = cv2.VideoCapture(self.target, api, params)
        except cv2.error as exc:
            raise CaptureError(f'{self.description}: OpenCV could not open it: '
                               f'{str(exc).strip()}; {self.hint}') from None
        if not cap.isOpened():
            cap.release()
            raise CaptureError(f'{self.description} did not open; {self.hint}')
        return cap

    def open(self) -> None:
        import cv2

        cfg = self.config
        cap = self._open_capture()
        if self.kind in ('index', 'v4l2'):
            if cfg.fourcc:
                cap.set(cv2.CAP_PROP_FOURCC, cv2.VideoWriter_fourcc(*cfg.fourcc))
            if cfg.width:
                cap.set(cv2.CAP_PROP_FRAME_WIDTH, cfg.width)
                cap.set(cv2.CAP_PROP_FRAME_HEIGHT, cfg.height)
            if cfg.fps:
                cap.set(cv2.CAP_PROP_FPS, cfg.fps)
            cap.set(cv2.CAP_PROP_BUFFERSIZE, 1)   # the newest frame, not a queue of old ones
        self._period = 0.0
        if self.kind == 'file':
            rate = cfg.fps or cap.get(cv2.CAP_PROP_FPS) or 30.0
            self._period = 1.0 / rate if math.isfinite(rate) and rate > 0 else 1.0 / 30.0
        self._next = time.monotonic()
        self._cap = cap

    def _rewind(self) -> bool:
        """Video file, loop on: open it again at its start; False if it has no frames."""
        self._cap.release()
        self._cap = self._open_capture()
        return bool(self._cap.grab())

    def read(self) -> tuple[np.ndarray, int] | None:
        if self._cap is None:
            raise CaptureError(f'{self.description} is not open')
        if self._period:
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next = max(self._next + self._period, time.monotonic() - self._period)
        ok = self._cap.grab()
        if not ok and self.kind == 'file':
            if not self.config.loop:
                return None
            ok = self._rewind()
            if not ok:
                raise CaptureError(f'{self.description} has no readable frames; {self.hint}')
        stamp_ns = self.clock_ns()
        if not ok:
            raise CaptureError(f'{self.description}: reading a frame failed; {self.hint}')
        ok, frame = self._cap.retrieve()
        if not ok or frame is None:
            raise CaptureError(f'{self.description}: a grabbed frame did not decode')
        frame = _to_bgr(frame)
        return _resize_to(frame, self.config.width, self.config.height), stamp_ns

    def close(self) -> None:
        cap, self._cap = self._cap, None
        if cap is not None:
            cap.release()


class RealSenseSource:
    """The colour stream of an Intel RealSense (``pyrealsense2``, imported when opened).

    Frames are stamped with the camera's global time (the host clock the SDK synchronises the
    device clock to) when the frame carries it, else with the arrival time.
    """

    hint = ('check that the camera is on a USB 3 port (lsusb, rs-enumerate-devices), that the '
            'udev rules are installed (99-realsense-libusb.rules), the serial number, and that '
            'the size and fps are a profile the camera offers')

    def __init__(self, config: CaptureConfig, clock_ns: ClockNs = time.time_ns) -> None:
        self.config = config
        self.clock_ns = clock_ns
        serial = config.device.strip()
        self.serial = '' if serial in ('', '0') else serial
        self.description = f'RealSense {self.serial or "(first found)"}'
        self._rs = None
        self._pipe = None

    def open(self) -> None:
        try:
            import pyrealsense2 as rs
        except ImportError as exc:
            raise CaptureError(
                f'{self.description}: pyrealsense2 does not import ({exc}); install it with '
                '"pip install pyrealsense2" (it needs the system library libusb-1.0: apt '
                'install libusb-1.0-0), or run the realsense2_camera ROS 2 driver and use '
                'source: ros') from None
        cfg = self.config
        rs_config = rs.config()
        if self.serial:
            rs_config.enable_device(self.serial)
        rs_config.enable_stream(rs.stream.color, cfg.width or 640, cfg.height or 480,
                                rs.format.bgr8, int(round(cfg.fps or 30)))
        pipe = rs.pipeline()
        try:
            pipe.start(rs_config)
        except RuntimeError as exc:
            raise CaptureError(f'{self.description} did not start: {exc}; {self.hint}') \
                from None
        self._rs, self._pipe = rs, pipe

    def read(self) -> tuple[np.ndarray, int] | None:
        if self._pipe is None:
            raise CaptureError(f'{self.description} is not open')
        rs = self._rs
        try:
            frames = self._pipe.wait_for_frames(int(self.config.read_timeout_s * 1000))
        except RuntimeError as exc:
            raise CaptureError(f'{self.description}: no frame: {exc}; {self.hint}') from None
        arrival_ns = self.clock_ns()
        color = frames.get_color_frame()
        if not color:
            raise CaptureError(f'{self.description}: a frame set without a colour frame')
        stamp_ns = arrival_ns
        if color.get_frame_timestamp_domain() == rs.timestamp_domain.global_time:
            stamp_ns = round(color.get_timestamp() * 1000) * 1000   # ms -> µs -> ns
        frame = np.asanyarray(color.get_data()).copy()   # the SDK reuses its buffer
        return _resize_to(_to_bgr(frame), self.config.width, self.config.height), stamp_ns

    def close(self) -> None:
        pipe, self._pipe = self._pipe, None
        if pipe is not None:
            try:
                pipe.stop()
            except RuntimeError:
                pass


def make_source(config: CaptureConfig, clock_ns: ClockNs = time.time_ns) -> FrameSource:
    """A new, unopened source for ``config``."""
    if config.source == 'realsense':
        return RealSenseSource(config, clock_ns)
    return OpenCVSource(config, clock_ns)


# --------------------------------------------------------------------------------- grabber
class _Reader(threading.Thread):
    """One connection: open the source, read until told to stop, abandoned, ended or failed."""

    def __init__(self, source: FrameSource, deliver: Callable[[np.ndarray, int], None],
                 stop: threading.Event) -> None:
        super().__init__(name=f'camera-reader {source.description}', daemon=True)
        self.source = source
        self.deliver = deliver
        self.stop_event = stop
        self.abandoned = threading.Event()
        self.done = threading.Event()
        self.opened = False
        self.ended = False
        self.error: str | None = None
        self.frames = 0
        self.progress = time.monotonic()   # last open or frame: what the deadline watches

    def run(self) -> None:
        try:
            self.source.open()
            self.opened = True
            self.progress = time.monotonic()
            while not (self.stop_event.is_set() or self.abandoned.is_set()):
                item = self.source.read()
                if self.stop_event.is_set() or self.abandoned.is_set():
                    break
                if item is None:
                    self.ended = True
                    break
                self.progress = time.monotonic()
                self.frames += 1
                self.deliver(*item)
        except CaptureError as exc:
            self.error = str(exc)
        except Exception as exc:  # a driver's own exception type: still reconnect
            self.error = f'{self.source.description}: {type(exc).__name__}: {exc}'
        finally:
            try:
                self.source.close()
            except Exception as exc:  # closing a broken device may fail too; nothing to do
                if self.error is None:
                    self.error = f'{self.source.description}: closing failed: {exc!r}'
            self.done.set()


class Grabber:
    """Reads a camera in its own thread and survives it getting stuck or disappearing.

    ``make_source()`` builds a new, unopened :class:`FrameSource` for every connection attempt;
    ``on_frame(bgr, stamp_ns)`` is called from the reader thread for every frame (keep it
    short: convert and publish). A connection is dropped when opening takes longer than
    ``open_timeout_s``, a read longer than ``read_timeout_s`` (the stuck reader is abandoned:
    it can neither deliver nor block anything), or a read fails; a new one is tried every
    ``reconnect_s`` with a warning that says what to check (repeated failures are logged at
    growing intervals). The end of a finite stream (a video file without loop) ends the grabber.

    ``state`` is one of ``connecting``, ``streaming``, ``reconnecting``, ``ended``, ``stopped``
    (``failed`` only on a bug in the grabber itself, logged as an error).
    """

    def __init__(self, make_source: Callable[[], FrameSource],
                 on_frame: Callable[[np.ndarray, int], None], *, read_timeout_s: float = 2.0,
                 open_timeout_s: float = 10.0, reconnect_s: float = 1.0,
                 logger: Any = None, poll_s: float = 0.05) -> None:
        self._make_source = make_source
        self._on_frame = on_frame
        self.read_timeout_s = read_timeout_s
        self.open_timeout_s = open_timeout_s
        self.reconnect_s = reconnect_s
        self.log = logger if logger is not None else logging.getLogger(__name__)
        self._poll_s = poll_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._readers: list[_Reader] = []
        self._lock = threading.Lock()
        self.state = 'connecting'
        self.frames = 0
        self.connections = 0
        self.failures = 0
        self.last_error: str | None = None

    # -------------------------------------------------------------- control
    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError('the grabber was started already')
        self._thread = threading.Thread(target=self._supervise, name='camera-grabber',
                                        daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop reading and close the source; True if every thread ended within ``timeout``.
        Readers abandoned earlier (stuck inside a driver call) are not waited for: they are
        daemon threads that can no longer deliver anything, left behind with a warning."""
        self._stop.set()
        end = time.monotonic() + timeout
        if self._thread is not None:
            self._thread.join(max(0.0, end - time.monotonic()))
        with self._lock:
            readers = list(self._readers)
        for r in readers:
            if not r.abandoned.is_set():
                r.join(max(0.0, end - time.monotonic()))
        stuck = [r for r in readers if r.is_alive()]
        if stuck:
            self.log.warning(f'{len(stuck)} camera call(s) still blocked in the driver; '
                             'leaving them behind')
        self.state = 'stopped'
        return not stuck and (self._thread is None or not self._thread.is_alive())

    @property
    def stopped(self) -> bool:
        return self._stop.is_set()

    def wait(self, predicate: Callable[[], bool], timeout: float) -> bool:
        """Poll ``predicate`` until true or ``timeout`` (tests, tools)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate():
                return True
            time.sleep(0.01)
        return predicate()

    # -------------------------------------------------------------- the supervisor thread
    def _deliver(self, frame: np.ndarray, stamp_ns: int) -> None:
        if self._stop.is_set():
            return
        self.frames += 1
        try:
            self._on_frame(frame, stamp_ns)
        except Exception as exc:  # a publishing error must not kill the camera thread
            self.log.error(f'handling a camera frame failed: {exc!r}')

    def _log_failure(self, text: str) -> None:
        self.failures += 1
        self.last_error = text
        n = self.failures
        # the first failures, then every 10th, then every 100th: a missing camera logs ~rarely
        if n <= 3 or (n <= 100 and n % 10 == 0) or n % 100 == 0:
            again = f' (failure {n})' if n > 1 else ''
            self.log.warning(f'{text}; reconnecting in {self.reconnect_s:g} s{again}')

    def _supervise(self) -> None:
        try:
            self._supervise_loop()
        except Exception as exc:  # a bug here must be visible, not a silent dead camera
            self.state = 'failed'
            self.log.error(f'the camera grabber stopped on an unexpected error: {exc!r}')

    def _supervise_loop(self) -> None:
        while not self._stop.is_set():
            try:
                source = self._make_source()
            except Exception as exc:  # building a source is configuration: log and retry
                self._log_failure(f'camera source could not be created: {exc!r}')
                self._stop.wait(self.reconnect_s)
                continue
            reader = _Reader(source, self._deliver, self._stop)
            with self._lock:
                self._readers = [r for r in self._readers if r.is_alive()] + [reader]
            self.state = 'connecting' if self.connections == 0 else 'reconnecting'
            reader.start()
            announced = False
            while not reader.done.wait(self._poll_s):
                if self._stop.is_set():
                    return
                if reader.opened and not announced and reader.frames:
                    announced = True
                    self.connections += 1
                    self.state = 'streaming'
                    if self.failures:
                        self.log.info(f'{source.description}: streaming again after '
                                      f'{self.failures} failed attempt(s)')
                    else:
                        self.log.info(f'{source.description}: streaming')
                    self.failures = 0
                limit = self.read_timeout_s if reader.opened else self.open_timeout_s
                silent = time.monotonic() - reader.progress
                if silent > limit:
                    reader.abandoned.set()
                    what = 'no frame' if reader.opened else 'still opening'
                    self._log_failure(f'{source.description}: {what} after {silent:.1f} s '
                                      f'(deadline {limit:g} s); abandoning this connection; '
                                      f'{getattr(source, "hint", "check the camera")}')
                    break
            if self._stop.is_set():
                return
            if reader.ended:
                self.state = 'ended'
                self.log.info(f'{source.description}: end of the stream after {reader.frames} '
                              'frames (a video file plays once; set loop to true to repeat it)')
                return
            if reader.error is not None:
                self._log_failure(reader.error)
            elif not reader.abandoned.is_set():
                self._log_failure(f'{source.description}: the reader stopped')
            self.state = 'reconnecting'
            self._stop.wait(self.reconnect_s)


# --------------------------------------------------------------------------------- calibration
@dataclass(frozen=True)
class CameraCalibration:
    """Intrinsics for ``sensor_msgs/CameraInfo`` (the ``camera_calibration`` YAML layout)."""

    width: int
    height: int
    distortion_model: str
    d: tuple[float, ...]
    k: tuple[float, ...]
    r: tuple[float, ...]
    p: tuple[float, ...]


def load_calibration(path: str | Path) -> CameraCalibration:
    """A calibration file written by ``camera_calibration`` / ``camera_calibration_parsers``
    (keys ``image_width``, ``image_height``, ``camera_matrix``, ``distortion_model``,
    ``distortion_coefficients``, ``rectification_matrix``, ``projection_matrix``).

    Raises:
        ConfigError: unreadable file or missing/misshaped entries.
    """
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f'camera_info_file {str(path)!r}: cannot read it: {exc}') from None
    if not isinstance(data, dict):
        raise ConfigError(f'camera_info_file {str(path)!r}: not a calibration mapping')

    def matrix(key: str, n: int | None) -> tuple[float, ...]:
        entry = data.get(key)
        values = entry.get('data') if isinstance(entry, dict) else entry
        if not isinstance(values, list) or (n is not None and len(values) != n):
            raise ConfigError(f'camera_info_file {str(path)!r}: {key} must hold '
                              f'{n if n else "a list of"} numbers')
        try:
            out = tuple(float(v) for v in values)
        except (TypeError, ValueError):
            raise ConfigError(f'camera_info_file {str(path)!r}: {key} has a non-number') \
                from None
        if not all(math.isfinite(v) for v in out):
            raise ConfigError(f'camera_info_file {str(path)!r}: {key} has NaN or inf')
        return out

    try:
        width, height = int(data['image_width']), int(data['image_height'])
    except (KeyError, TypeError, ValueError):
        raise ConfigError(f'camera_info_file {str(path)!r}: needs image_width and '
                          'image_height') from None
    if not (0 < width <= _MAX_SIDE and 0 < height <= _MAX_SIDE):
        raise ConfigError(f'camera_info_file {str(path)!r}: size {width}x{height} is invalid')
    return CameraCalibration(
        width, height, str(data.get('distortion_model', 'plumb_bob')),
        matrix('distortion_coefficients', None), matrix('camera_matrix', 9),
        matrix('rectification_matrix', 9) if 'rectification_matrix' in data
        else (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        matrix('projection_matrix', 12))
