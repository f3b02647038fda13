"""Message <-> numpy conversions shared by the nodes (thin, validated, no copies where avoidable).

Image and JointState checks raise `MessageError` with what was wrong; callers log it and drop the
message (a malformed message never crashes a node and never reaches the disk).
"""

from __future__ import annotations

import math

import numpy as np
from builtin_interfaces.msg import Time
from sensor_msgs.msg import Image, JointState


class MessageError(ValueError):
    """A received message is malformed (wrong size, encoding, NaN, ...)."""


def stamp_to_ns(stamp: Time) -> int:
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> Time:
    return Time(sec=int(ns // 1_000_000_000), nanosec=int(ns % 1_000_000_000))


def stamp_to_sec(stamp: Time) -> float:
    return stamp_to_ns(stamp) * 1e-9


def image_to_msg(frame: np.ndarray, stamp: Time, frame_id: str) -> Image:
    """An (H, W, 3) uint8 RGB frame -> sensor_msgs/Image rgb8 (bytes assignment: fast path)."""
    msg = Image()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.height, msg.width = int(frame.shape[0]), int(frame.shape[1])
    msg.encoding = 'rgb8'
    msg.is_bigendian = 0
    msg.step = int(frame.shape[1]) * 3
    msg.data = np.ascontiguousarray(frame, dtype=np.uint8).tobytes()
    return msg


def msg_to_image(msg: Image, expected_shape: tuple[int, int] | None = None) -> np.ndarray:
    """sensor_msgs/Image rgb8 -> (H, W, 3) uint8 view; bgr8 is converted. Raises MessageError."""
    if msg.encoding not in ('rgb8', 'bgr8'):
        raise MessageError(f'image encoding {msg.encoding!r} not supported (want rgb8 or bgr8)')
    h, w = int(msg.height), int(msg.width)
    if expected_shape is not None and (h, w) != tuple(expected_shape):
        raise MessageError(f'image is {h}x{w}, expected {expected_shape[0]}x{expected_shape[1]}')
    row = w * 3
    if msg.step < row:
        raise MessageError(f'image step {msg.step} < width*3 = {row}')
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != h * msg.step:
        raise MessageError(f'image data has {buf.size} bytes, expected {h * msg.step}')
    img = buf.reshape(h, msg.step)[:, :row].reshape(h, w, 3)
    if msg.encoding == 'bgr8':
        img = img[:, :, ::-1]
    return img


def policy_frame(msg, spec) -> np.ndarray:
    """A received camera frame as the policy sees it and the recorder stores it: at the
    robot description's size for camera ``spec`` (a real camera's frame is decoded and
    fitted); the simulator's raw frames (``spec.source == 'sim'``, or no spec) are at the
    size the run was configured for already. Raises MessageError or CameraError."""
    from scarls.camera.convert import msg_to_frame
    if (spec is None or spec.source == 'sim') and isinstance(msg, Image):
        return msg_to_image(msg)
    if spec is None:
        raise MessageError(f'a {type(msg).__name__} from a camera the robot description does '
                           'not name: only raw sensor_msgs/Image frames are accepted there')
    return msg_to_frame(msg, spec)[0]


def joint_state_to_msg(names, positions, stamp: Time, velocities=None) -> JointState:
    msg = JointState()
    msg.header.stamp = stamp
    msg.name = list(names)
    msg.position = [float(x) for x in positions]
    if velocities is not None:
        msg.velocity = [float(x) for x in velocities]
    return msg


def msg_to_positions(msg: JointState, names: tuple[str, ...] | list[str]) -> np.ndarray:
    """Positions in the order of `names`; reorders by name when the message names its joints.

    Raises MessageError on a wrong joint count, unknown/missing names or non-finite values.
    """
    n = len(names)
    pos = msg.position
    if msg.name:
        if len(msg.name) != len(pos):
            raise MessageError(f'joint state has {len(msg.name)} names but {len(pos)} positions')
        if list(msg.name) != list(names):
            index = {name: i for i, name in enumerate(msg.name)}
            missing = [name for name in names if name not in index]
            if missing:
                raise MessageError(f'joint state lacks joints {missing}')
            pos = [pos[index[name]] for name in names]
    if len(pos) != n:
        raise MessageError(f'joint state has {len(pos)} positions, expected {n}')
    out = np.asarray(pos, dtype=np.float64)
    if not all(math.isfinite(x) for x in out.tolist()):
        raise MessageError('joint state contains NaN or inf')
    return out
