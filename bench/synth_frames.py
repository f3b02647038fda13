"""Deterministic synthetic episodes shared by the scarls benches and the LeRobot writer.

Pure numpy (no OpenCV, no scarls import), so the same frames come out of our venv and of the
separate LeRobot environment (``bench/lerobot_env.sh``), bit for bit:

* scenes are drawn with integer pixel tests (gradient, table, a moving disc, a sliding box and an
  arm segment);
* the sensor noise comes from ``PCG64(SeedSequence([seed, camera, episode, step])).random_raw()``,
  whose bit stream numpy keeps stable across releases (``Generator`` methods are not promised to);
* state and action are ``math.sin`` trajectories (libm, not numpy's SIMD loops) rounded to 1e-4
  and stored as float32.

``frames_digest`` hashes what a writer was given, so the two sides can check they wrote the same
data. Layout of one episode: ``frames[cam]`` ``(T, H, W, 3)`` uint8, ``state`` and ``action``
``(T, 14)`` float32, ``action[t] == state[t + 1]`` (the next commanded pose).
"""

from __future__ import annotations

import hashlib
import math

import numpy as np

CAMERAS = ('top', 'left', 'right')
DIM = 14
FPS = 30


def _base(cam: int, h: int, w: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    tint = 10 * cam
    base = np.stack(
        [60 + tint + (80 * yy) // h, 70 + (60 * xx) // w, 90 - tint + (40 * (yy + xx)) // (h + w)],
        -1,
    ).astype(np.int16)
    base[h // 2:] = (120, 100, 80 + tint)  # table
    return base


_BASES: dict[tuple[int, int, int], np.ndarray] = {}


def frame(seed: int, cam: int, episode: int, step: int, h: int = 480, w: int = 640) -> np.ndarray:
    """One camera image ``(h, w, 3)`` uint8 of ``episode`` at ``step``."""
    key = (cam, h, w)
    if key not in _BASES:
        _BASES[key] = _base(cam, h, w)
    img = _BASES[key].copy()
    k = step + 7 * episode
    cx = int(w * (0.4 + 0.3 * math.sin(k / 9 + cam)))
    cy = int(h * 0.65)
    r = h // 12
    y0, y1, x0, x1 = max(cy - r, 0), min(cy + r + 1, h), max(cx - r, 0), min(cx + r + 1, w)
    yy, xx = np.ogrid[y0:y1, x0:x1]
    img[y0:y1, x0:x1][(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = (200, 30, 30)  # disc
    bx = w // 2 + k % 40
    img[h // 2 + 20:h // 2 + 80, bx:bx + 60] = (40, 180, 40)  # box
    # arm: the segment (0, 0) -> (cx, cy - h/10), max(4, w/40) pixels thick
    ex, ey, half = cx, cy - h // 10, max(4, w // 40) // 2
    ys, xs = np.ogrid[0:ey + half + 1, 0:max(ex, 1) + half + 1]
    seg = ex * ex + ey * ey
    along = np.clip((xs * ex + ys * ey) / seg, 0.0, 1.0)
    d2 = (xs - along * ex) ** 2 + (ys - along * ey) ** 2
    img[:ys.shape[0], :xs.shape[1]][d2 <= half * half] = (200, 200, 200)
    bits = np.random.PCG64(np.random.SeedSequence([seed, cam, episode, step]))
    raw = bits.random_raw((h * w * 3 + 7) // 8).view(np.uint8)[:h * w * 3].reshape(h, w, 3)
    img += (raw % 7).astype(np.int16) - 3  # sensor noise, -3..3
    return np.clip(img, 0, 255).astype(np.uint8)


def trajectory(episode: int, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """``(state, action)`` of one episode, each ``(steps, 14)`` float32."""
    q = np.array([
        [round(0.8 * math.sin(0.05 * (t + 7 * episode) * (1 + j / DIM) + j), 4)
         for j in range(DIM)]
        for t in range(steps + 1)
    ], dtype=np.float32)
    return q[:-1].copy(), q[1:].copy()


def episode(seed: int, episode_index: int, steps: int, h: int = 480, w: int = 640,
            cameras: tuple[str, ...] = CAMERAS) -> dict:
    """One whole episode: ``{'frames': {cam: (T, H, W, 3)}, 'state': ..., 'action': ...}``."""
    frames = {
        name: np.stack([frame(seed, c, episode_index, t, h, w) for t in range(steps)])
        for c, name in enumerate(cameras)
    }
    state, action = trajectory(episode_index, steps)
    return {'frames': frames, 'state': state, 'action': action}


def frames_digest(ep: dict, h: hashlib._Hash | None = None) -> hashlib._Hash:
    """sha256 over an episode's frames (cameras in order), state and action, in that order."""
    h = h or hashlib.sha256()
    for name in sorted(ep['frames']):
        h.update(name.encode())
        h.update(np.ascontiguousarray(ep['frames'][name]).tobytes())
    h.update(np.ascontiguousarray(ep['state'], dtype=np.float32).tobytes())
    h.update(np.ascontiguousarray(ep['action'], dtype=np.float32).tobytes())
    return h
