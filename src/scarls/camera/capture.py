"""camera: publish one camera (OpenCV VideoCapture or Intel RealSense) as standard ROS 2 topics.

Runs in its own process, so a stuck or unplugged camera never stalls the control loop: frames are
grabbed in a thread with a read deadline, a failed or stuck connection is dropped and reopened
every ``reconnect_s`` with a warning that says what to check, and every frame is stamped when it
was captured (``grab()`` returned; RealSense: the camera's global time).

    python -m scarls.camera.capture --ros-args -r __ns:=/ecu0 -r __node:=camera_top \\
        -p name:=top -p device:=/dev/video0 -p width:=640 -p height:=480 -p fps:=30.0

Topics (relative to the node's namespace; QoS ``qos``: best effort depth 1 by default, reliable
depth 5 with ``qos:=reliable``):
  out camera/<name>/image_raw             sensor_msgs/Image ``rgb8`` (or ``bgr8``), published
                                          while something subscribes to it
      camera/<name>/camera_info           sensor_msgs/CameraInfo, every frame, same header
                                          (size; intrinsics from ``camera_info_file``)
      camera/<name>/image_raw/compressed  sensor_msgs/CompressedImage JPEG (``compressed``),
                                          format ``rgb8; jpeg compressed bgr8``, while subscribed

Parameters: see ``CameraCaptureNode.PARAMETERS`` (name, source, device, width, height, fps,
fourcc, loop, encoding, compressed, jpeg_quality, qos, frame_id, camera_info_file,
read_timeout_s, open_timeout_s, reconnect_s); all are read once at start.
"""

from __future__ import annotations

import sys
import threading

import numpy as np
import rclpy
from rcl_interfaces.msg import ParameterDescriptor, ParameterType
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from scarls.camera.convert import CameraError, encode_jpeg
from scarls.camera.sources import (
    CameraCalibration,
    CaptureConfig,
    Grabber,
    describe_device,
    load_calibration,
    make_source,
)
from scarls.diagnostics.rules import camera_status
from scarls.ros import qos
from scarls.ros.conversions import ns_to_stamp
from scarls.ros.diagnostics import NodeDiagnostics
from scarls.ros.node_utils import declare, run_node

__all__ = ['CameraCaptureNode', 'build_camera_info', 'main']

_DEFAULTS = CaptureConfig()
#: name -> (default, description); declared read-only: a camera is configured at start.
PARAMETERS: dict[str, tuple[object, str]] = {
    'name': (_DEFAULTS.name, 'Camera name: topics camera/<name>/image_raw, camera_info, '
             'image_raw/compressed in the node namespace'),
    'source': (_DEFAULTS.source, 'opencv (cv2.VideoCapture) | realsense (pyrealsense2)'),
    'device': (_DEFAULTS.device, 'opencv: V4L2 index (0) or path (/dev/video0), GStreamer '
               'pipeline, rtsp:// or http:// URL, or a video file; realsense: serial number '
               "('' = the first camera)"),
    'width': (_DEFAULTS.width, 'Frame width to request (0 = the device default); frames of '
              'another size are resized to width x height'),
    'height': (_DEFAULTS.height, 'Frame height to request (0 = the device default)'),
    'fps': (_DEFAULTS.fps, 'Frame rate to request (0 = the device\'s own; a video file plays '
            'at its own rate unless set)'),
    'fourcc': (_DEFAULTS.fourcc, 'V4L2 pixel format to request, e.g. MJPG or YUYV '
               "('' = the driver default)"),
    'loop': (_DEFAULTS.loop, 'Video files: start again at the end (else publishing stops)'),
    'encoding': (_DEFAULTS.encoding, 'image_raw encoding: rgb8 | bgr8'),
    'compressed': (_DEFAULTS.compressed, 'Also publish JPEG sensor_msgs/CompressedImage on '
                   'image_raw/compressed'),
    'jpeg_quality': (_DEFAULTS.jpeg_quality, 'JPEG quality 1..100 (compressed)'),
    'qos': (_DEFAULTS.qos, 'best_effort (a slow subscriber never holds the camera back; '
            'best-effort subscribers only) | reliable'),
    'frame_id': (_DEFAULTS.frame_id, "header.frame_id ('' = camera_<name>)"),
    'camera_info_file': (_DEFAULTS.camera_info_file, 'Calibration YAML (camera_calibration '
                         "format) for camera_info; '' = size only, zero intrinsics"),
    'read_timeout_s': (_DEFAULTS.read_timeout_s, 'A read taking longer drops the connection '
                       'and reconnects'),
    'open_timeout_s': (_DEFAULTS.open_timeout_s, 'Opening taking longer drops the attempt'),
    'reconnect_s': (_DEFAULTS.reconnect_s, 'Pause between reconnection attempts'),
}


def build_camera_info(width: int, height: int, calibration: CameraCalibration | None
                      ) -> CameraInfo:
    """A CameraInfo for frames of ``width x height`` (no header): the calibration's intrinsics
    if it was made at this size, else an uncalibrated one (zero K, as ROS marks it)."""
    info = CameraInfo()
    info.width, info.height = int(width), int(height)
    if calibration is not None and (calibration.width, calibration.height) == (width, height):
        info.distortion_model = calibration.distortion_model
        info.d = list(calibration.d)
        info.k = list(calibration.k)
        info.r = list(calibration.r)
        info.p = list(calibration.p)
    return info


def _quiet_opencv() -> None:
    import cv2

    cv_log = getattr(getattr(cv2, 'utils', None), 'logging', None)
    if cv_log is not None:
        cv_log.setLogLevel(cv_log.LOG_LEVEL_ERROR)


class CameraCaptureNode(Node):
    """One camera: a :class:`~scarls.camera.sources.Grabber` over the configured source, its
    frames published from the grabber's thread (the executor only runs a 1 Hz rate timer)."""

    PARAMETERS = PARAMETERS

    def __init__(self) -> None:
        super().__init__('camera')
        for key, (default, description) in PARAMETERS.items():
            if key == 'device':   # `-p device:=0` or a numeric serial arrive as integers
                self.declare_parameter(key, default, ParameterDescriptor(
                    type=ParameterType.PARAMETER_STRING, description=description,
                    read_only=True, dynamic_typing=True))
            else:
                declare(self, key, default, description, read_only=True)
        values = {k: self.get_parameter(k).value for k in PARAMETERS}
        values['device'] = str(values['device'])
        values['fps'] = float(values['fps'])
        for key in ('read_timeout_s', 'open_timeout_s', 'reconnect_s'):
            values[key] = float(values[key])
        self.config = CaptureConfig(**values)   # ConfigError: the node does not start
        cfg = self.config
        self.calibration = load_calibration(cfg.camera_info_file) if cfg.camera_info_file \
            else None
        profile = qos.CAMERA if cfg.qos == 'reliable' else qos.CAMERA_LATEST
        prefix = cfg.topic_prefix
        self._pub_image = self.create_publisher(Image, f'{prefix}/image_raw', profile)
        self._pub_info = self.create_publisher(CameraInfo, f'{prefix}/camera_info', profile)
        self._pub_jpeg = (self.create_publisher(CompressedImage,
                                                f'{prefix}/image_raw/compressed', profile)
                          if cfg.compressed else None)
        self._info: CameraInfo | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._warned_size = False
        self.published = 0
        clock = self.get_clock()
        _quiet_opencv()   # its own warnings repeat on every retry; ours say what to check
        self.grabber = Grabber(
            lambda: make_source(cfg, lambda: clock.now().nanoseconds), self._on_frame,
            read_timeout_s=cfg.read_timeout_s, open_timeout_s=cfg.open_timeout_s,
            reconnect_s=cfg.reconnect_s, logger=self.get_logger())
        what = describe_device(cfg.device) if cfg.source == 'opencv' else \
            f'RealSense {cfg.device or "(the first found)"}'
        extra = ', + JPEG' if cfg.compressed else ''
        self.get_logger().info(
            f'camera {cfg.name!r}: {what} -> {self.resolve_topic_name(prefix + "/image_raw")} '
            f'({cfg.encoding}{extra}, {cfg.qos})')
        self.grabber.start()
        # the measured rate, once a second; the timer also keeps the executor's wait short, so
        # SIGINT is noticed even while a reader thread is blocked inside the camera driver
        self.rate_hz = 0.0
        self._rate_mark = (self.published, self.get_clock().now().nanoseconds)
        self._rate_timer = self.create_timer(1.0, self._measure_rate)
        self._diagnostics = NodeDiagnostics(self, 'camera', lambda: camera_status(
            camera=cfg.name, rate_hz=self.rate_hz, expected_hz=cfg.fps,
            published=self.published, source=cfg.source))

    # ------------------------------------------------------------------ grabber thread
    def _camera_info(self, width: int, height: int) -> CameraInfo:
        info = self._info
        if info is None or (info.width, info.height) != (width, height):
            calib = self.calibration
            if calib is not None and (calib.width, calib.height) != (width, height) \
                    and not self._warned_size:
                self._warned_size = True
                self.get_logger().warning(
                    f'{self.config.camera_info_file} was calibrated at {calib.width}x'
                    f'{calib.height} but frames are {width}x{height}: camera_info is published '
                    'uncalibrated; recalibrate at this size or request it with width/height')
            info = build_camera_info(width, height, calib)
            self._info = info
        return info

    def _on_frame(self, bgr: np.ndarray, stamp_ns: int) -> None:
        """Called by the grabber's reader thread: build and publish (never in the executor)."""
        cfg = self.config
        height, width = bgr.shape[:2]
        stamp = ns_to_stamp(stamp_ns)
        with self._lock:
            if self._closed:
                return
            try:
                if self._pub_image.get_subscription_count():
                    msg = Image()
                    msg.header.stamp = stamp
                    msg.header.frame_id = cfg.header_frame_id
                    msg.height, msg.width = height, width
                    msg.encoding = cfg.encoding
                    msg.step = width * 3
                    pixels = bgr[:, :, ::-1] if cfg.encoding == 'rgb8' else bgr
                    msg.data = np.ascontiguousarray(pixels).tobytes()
                    self._pub_image.publish(msg)
                if self._pub_jpeg is not None and self._pub_jpeg.get_subscription_count():
                    jpeg = CompressedImage()
                    jpeg.header.stamp = stamp
                    jpeg.header.frame_id = cfg.header_frame_id
                    jpeg.format = f'{cfg.encoding}; jpeg compressed bgr8'
                    jpeg.data = encode_jpeg(bgr, cfg.jpeg_quality, rgb=False)
                    self._pub_jpeg.publish(jpeg)
                info = self._camera_info(width, height)
                info.header.stamp = stamp
                info.header.frame_id = cfg.header_frame_id
                self._pub_info.publish(info)
                self.published += 1
            except CameraError as exc:
                self.get_logger().error(f'JPEG encoding failed: {exc}',
                                        throttle_duration_sec=10.0)
            except Exception:
                if not rclpy.ok():   # SIGINT shut the context down mid-publish: stopping
                    self._closed = True
                    return
                raise

    def _measure_rate(self) -> None:
        count, now = self.published, self.get_clock().now().nanoseconds
        last_count, last_ns = self._rate_mark
        if now > last_ns:
            self.rate_hz = (count - last_count) * 1e9 / (now - last_ns)
        self._rate_mark = (count, now)

    # ------------------------------------------------------------------ shutdown
    def safe_stop(self) -> None:
        """Stop grabbing and close the camera (run_node calls this before destroying)."""
        with self._lock:
            self._closed = True
        self.grabber.stop(timeout=5.0)   # logs what it had to leave behind


def main(args=None) -> int:
    return run_node(CameraCaptureNode, args)


if __name__ == '__main__':
    sys.exit(main())
