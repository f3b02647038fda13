"""Fast OpenCV line-drawing renderer of the dual-arm scene (pinhole cameras, RGB uint8)."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from scarls.sim.config import SimError

__all__ = ['CAMERA_NAMES', 'Camera', 'SceneRenderer', 'UnknownCameraError']

#: Camera names, in the order the rest of the project lists them.
CAMERA_NAMES: tuple[str, ...] = ('top', 'left', 'right')

_BACKGROUND = (38, 40, 48)
_TABLE = (150, 122, 92)
_TABLE_EDGE = (110, 88, 66)
_SHADOW = (95, 78, 60)
_CUBE_SIDE = (170, 20, 25)
_CUBE_TOP = (235, 60, 50)
_ARM = {'left': (70, 120, 230), 'right': (60, 190, 110)}
_FINGER = (235, 235, 235)


class UnknownCameraError(SimError, KeyError):
    """A camera name that the simulator does not have was requested."""


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: world->camera rotation (rows: right, down, forward), eye, intrinsics."""

    name: str
    rotation: np.ndarray
    eye: np.ndarray
    fx: float
    cx: float
    cy: float


def _look_at(
    name: str,
    eye: tuple[float, float, float],
    target: tuple[float, float, float],
    up: tuple[float, float, float],
    fov_x_deg: float,
    width: int,
    height: int,
) -> Camera:
    eye_a = np.asarray(eye, dtype=np.float64)
    fwd = np.asarray(target, dtype=np.float64) - eye_a
    fwd /= np.linalg.norm(fwd)
    right = np.cross(fwd, np.asarray(up, dtype=np.float64))
    right /= np.linalg.norm(right)
    down = np.cross(fwd, right)
    rotation = np.stack((right, down, fwd))
    fx = (width / 2.0) / np.tan(np.radians(fov_x_deg) / 2.0)
    return Camera(name, rotation, eye_a, float(fx), width / 2.0 - 0.5, height / 2.0 - 0.5)


class SceneRenderer:
    """Draws table, cube (with a shadow when lifted), both arms and their fingers."""

    def __init__(
        self,
        height: int,
        width: int,
        table_half: tuple[float, float],
        cube_size: float,
    ) -> None:
        self.height = height
        self.width = width
        hx, hy = table_half
        self._table = np.array([[-hx, -hy, 0.0], [hx, -hy, 0.0], [hx, hy, 0.0], [-hx, hy, 0.0]])
        h = cube_size / 2.0
        self._cube_offsets = np.array(
            [[sx * h, sy * h, sz * h] for sz in (-1, 1) for sx in (-1, 1) for sy in (-1, 1)]
        )
        self._half = h
        self._cameras = {
            'top': _look_at(
                'top', (0.0, -0.05, 1.6), (0.0, 0.0, 0.0), (0.0, 1.0, 0.0), 48.0, width, height
            ),
            'left': _look_at(
                'left',
                (-0.55, -0.7, 0.6),
                (-0.05, 0.0, 0.05),
                (0.0, 0.0, 1.0),
                62.0,
                width,
                height,
            ),
            'right': _look_at(
                'right', (0.55, -0.7, 0.6), (0.05, 0.0, 0.05), (0.0, 0.0, 1.0), 62.0, width, height
            ),
        }
        scale = width / 128.0
        self._link_px = max(1, round(3.0 * scale))
        self._finger_px = max(1, round(1.5 * scale))
        self._buffers = {name: np.empty((height, width, 3), np.uint8) for name in CAMERA_NAMES}

    def camera(self, name: str) -> Camera:
        """The :class:`Camera` called ``name``."""
        try:
            return self._cameras[name]
        except KeyError:
            raise UnknownCameraError(
                f'unknown camera {name!r}; the simulator has cameras {list(CAMERA_NAMES)}'
            ) from None

    def project(self, name: str, points: np.ndarray) -> np.ndarray:
        """Project world points (N, 3) to integer pixel coordinates (N, 2) of camera ``name``."""
        cam = self.camera(name)
        pc = (points - cam.eye) @ cam.rotation.T
        z = np.maximum(pc[:, 2], 1e-3)
        uv = np.empty((points.shape[0], 2))
        uv[:, 0] = cam.fx * pc[:, 0] / z + cam.cx
        uv[:, 1] = cam.fx * pc[:, 1] / z + cam.cy
        return np.clip(np.rint(uv), -30000, 30000).astype(np.int32)

    def render(
        self,
        name: str,
        cube: np.ndarray,
        cube_on_table: bool,
        arms: dict[str, tuple[np.ndarray, np.ndarray, float]],
    ) -> np.ndarray:
        """Render one camera.

        Args:
            name: camera name.
            cube: cube centre (3,).
            cube_on_table: draw the cube's shadow (the cube is over the table).
            arms: arm name -> (joint points (dof + 1, 3), tool rotation (3, 3), gripper 0..1).
        """
        self.camera(name)  # validate first
        chains = []
        hands = []
        for points, tool, grip in arms.values():
            ax, ay = tool[:, 0], tool[:, 1]
            spread = 0.006 + 0.034 * float(np.clip(grip, 0.0, 1.0))
            knuckle = points[-2] + ax * 0.035
            tip = points[-1] + ax * 0.012
            chains.append(np.vstack((points[:-1], knuckle[None, :])))
            # finger U shape: tip+, knuckle+, knuckle-, tip-
            hands.append(
                np.stack(
                    (
                        tip + ay * spread,
                        knuckle + ay * spread,
                        knuckle - ay * spread,
                        tip - ay * spread,
                    )
                )
            )
        shadow = cube[None, :] + self._cube_offsets[:4]
        shadow[:, 2] = 0.0
        world = np.concatenate(
            [self._table, shadow, cube[None, :] + self._cube_offsets, *chains, *hands]
        )
        px = self.project(name, world)
        img = self._buffers[name]
        img[:] = _BACKGROUND
        cv2.fillConvexPoly(img, px[0:4], _TABLE)
        cv2.polylines(img, [px[0:4]], True, _TABLE_EDGE, 1)
        corners = px[8:16]
        if cube_on_table and cube[2] > self._half + 1e-3:
            cv2.fillConvexPoly(img, cv2.convexHull(px[4:8]), _SHADOW)
        cv2.fillConvexPoly(img, cv2.convexHull(corners), _CUBE_SIDE)
        cv2.fillConvexPoly(img, cv2.convexHull(corners[4:8]), _CUBE_TOP)
        at = 16
        for arm_name, chain in zip(arms, chains, strict=True):
            n = len(chain)
            cv2.polylines(img, [px[at : at + n]], False, _ARM[arm_name], self._link_px)
            at += n
        for _ in arms:
            cv2.polylines(img, [px[at : at + 4]], False, _FINGER, self._finger_px)
            at += 4
        return img.copy()
