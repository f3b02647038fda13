"""The newest camera frame of every ECU camera, kept serialized; JPEG only when a page asks.

The dashboard's camera subscriptions are raw (rclpy hands over the CDR bytes, nothing is
deserialised per message): a callback only stores the bytes. `jpeg()` deserialises the newest
frame, scales it down to at most `max_width` pixels wide and JPEG-encodes it, once per frame
whatever the number of browsers. Which ECUs' cameras are wanted is tracked here too: the node
subscribes to an ECU's cameras only while a page has asked for them recently.
"""

from __future__ import annotations

import threading
import time

#: The default robot's cameras (sim_dual6), shown until an ECU's own camera topics are seen.
CAMERAS = ('top', 'left', 'right')
IDLE_S = 10.0
"""Unsubscribe an ECU's cameras when no page asked for a frame for this long."""


def image_to_array(msg):
    """sensor_msgs/Image (rgb8, bgr8, mono8) -> HxWx3 BGR uint8 array (or HxW for mono)."""
    import numpy as np

    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    channels = {'rgb8': 3, 'bgr8': 3, 'mono8': 1}.get(msg.encoding)
    if channels is None:
        raise ValueError(f'unsupported image encoding {msg.encoding!r}')
    data = np.frombuffer(bytes(msg.data), dtype=np.uint8)
    if data.size < height * step:
        raise ValueError('image data shorter than height x step')
    rows = data[:height * step].reshape(height, step)[:, :width * channels]
    if channels == 1:
        return rows.reshape(height, width)
    img = rows.reshape(height, width, 3)
    return img[..., ::-1] if msg.encoding == 'rgb8' else img


def encode_jpeg(img, max_width: int = 320, quality: int = 75) -> bytes:
    import cv2

    if img.shape[1] > max_width:
        height = max(1, round(img.shape[0] * max_width / img.shape[1]))
        img = cv2.resize(img, (max_width, height), interpolation=cv2.INTER_AREA)
    ok, buf = cv2.imencode('.jpg', img, [int(cv2.IMWRITE_JPEG_QUALITY), quality])
    if not ok:
        raise ValueError('JPEG encoding failed')
    return buf.tobytes()


def _deserialize_image(raw: bytes):
    from rclpy.serialization import deserialize_message
    from sensor_msgs.msg import Image

    return deserialize_message(raw, Image)


class FrameStore:
    """Newest serialized frame per (ECU, camera) and its JPEG, encoded lazily."""

    def __init__(self, max_width: int = 320, decode=_deserialize_image,
                 clock=time.monotonic) -> None:
        self.max_width = max_width
        self._decode = decode
        self._clock = clock
        self._lock = threading.Lock()
        self._raw: dict[tuple[str, str], tuple[int, bytes, float]] = {}
        self._jpeg: dict[tuple[str, str], tuple[int, bytes]] = {}
        self._seq = 0
        self._wanted: dict[str, float] = {}
        self._cameras: dict[str, tuple[str, ...]] = {}
        self.encoded = 0

    def set_cameras(self, ecu: str, cameras) -> None:
        """The cameras an ECU publishes (discovered by the node)."""
        with self._lock:
            self._cameras[ecu] = tuple(cameras)

    def known(self, ecu: str, camera: str) -> bool:
        """``camera`` is one of the ECU's (the default robot's until its topics are seen)."""
        with self._lock:
            return camera in self._cameras.get(ecu, CAMERAS)

    def put(self, ecu: str, camera: str, raw: bytes) -> None:
        """From the subscription callback: keep only the bytes (cheap)."""
        with self._lock:
            self._seq += 1
            self._raw[(ecu, camera)] = (self._seq, raw, self._clock())

    def want(self, ecu: str) -> None:
        """A page asked for this ECU's cameras."""
        with self._lock:
            self._wanted[ecu] = self._clock()

    def wanted(self) -> set[str]:
        now = self._clock()
        with self._lock:
            return {e for e, t in self._wanted.items() if now - t < IDLE_S}

    def drop(self, ecu: str) -> None:
        """Forget an ECU's frames (its cameras were unsubscribed)."""
        with self._lock:
            for key in [k for k in self._raw if k[0] == ecu]:
                self._raw.pop(key, None)
                self._jpeg.pop(key, None)

    def jpeg(self, ecu: str, camera: str) -> tuple[bytes, float] | None:
        """(JPEG bytes, frame age in s) of the newest frame, or None before the first one."""
        self.want(ecu)
        key = (ecu, camera)
        with self._lock:
            entry = self._raw.get(key)
            cached = self._jpeg.get(key)
        if entry is None:
            return None
        seq, raw, received = entry
        if cached is None or cached[0] != seq:
            data = encode_jpeg(image_to_array(self._decode(raw)), self.max_width)
            with self._lock:
                self._jpeg[key] = (seq, data)
                self.encoded += 1
            cached = (seq, data)
        return cached[1], self._clock() - received
