"""Cameras that exist in labs: frames from what real camera drivers publish, and a capture node.

* :mod:`scarls.camera.convert` (pure: numpy + OpenCV): raw ``sensor_msgs/Image`` encodings,
  JPEG/PNG ``CompressedImage``, fitting to the policy's size, ``msg_to_frame(msg, spec)``.
* :mod:`scarls.camera.sources` (pure): OpenCV ``VideoCapture`` and Intel RealSense frame
  sources, and the grabber thread with a read deadline and reconnects.
* :mod:`scarls.camera.capture`: the ``camera`` node (its own process) publishing
  ``camera/<name>/image_raw`` + ``camera_info`` from a source.

See docs/CAMERAS.md for configuring each kind of camera in a robot description.
"""

from scarls.camera.convert import (
    FITS,
    MAX_PIXELS,
    MAX_SIDE,
    RAW_ENCODINGS,
    CameraError,
    encode_jpeg,
    fit_frame,
    frame_from_compressed,
    frame_from_image,
    msg_to_frame,
)

__all__ = [
    'FITS',
    'MAX_PIXELS',
    'MAX_SIDE',
    'RAW_ENCODINGS',
    'CameraError',
    'encode_jpeg',
    'fit_frame',
    'frame_from_compressed',
    'frame_from_image',
    'msg_to_frame',
]
