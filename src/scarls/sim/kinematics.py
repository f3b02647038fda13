"""Forward kinematics, Jacobian and damped-least-squares IK of one 6-DoF arm (pure numpy).

Chain (arm base frame: ``x`` towards the table centre, ``z`` up), angles in radians:

1. base yaw about ``z``, then up ``SHOULDER_HEIGHT``;
2. shoulder pitch about ``y`` (positive pitches the arm down), then ``UPPER_ARM`` along ``x``;
3. elbow pitch about ``y``, then ``FOREARM`` along ``x``;
4. wrist pitch about ``y``, then ``WRIST`` along ``x``;
5. wrist roll about ``x``;
6. wrist yaw about ``z``, then ``HAND`` along ``x`` to the grasp centre (between the fingertips).

The tool frame's ``x`` axis is the approach direction, its ``y`` axis the finger opening direction.

A 7-DoF arm (``dof=7``) adds an upper-arm roll about ``x`` right after the shoulder pitch (before
``UPPER_ARM``), as on G1- or Franka-like arms: at roll 0 it is the 6-DoF arm, otherwise the elbow's
plane turns about the upper arm (one redundant joint).
"""

from __future__ import annotations

import numpy as np

__all__ = [
    'FOREARM',
    'SUPPORTED_DOF',
    'HAND',
    'SHOULDER_HEIGHT',
    'UPPER_ARM',
    'WRIST',
    'ArmKinematics',
    'rot_z',
]

SHOULDER_HEIGHT = 0.12
UPPER_ARM = 0.30
FOREARM = 0.26
WRIST = 0.06
HAND = 0.08

_AXES = ('z', 'y', 'y', 'y', 'x', 'z')
_OFFSETS = (
    (0.0, 0.0, SHOULDER_HEIGHT),
    (UPPER_ARM, 0.0, 0.0),
    (FOREARM, 0.0, 0.0),
    (WRIST, 0.0, 0.0),
    (0.0, 0.0, 0.0),
    (HAND, 0.0, 0.0),
)


def _rot(axis: str, angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    if axis == 'x':
        return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])
    if axis == 'y':
        return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def rot_z(angle: float) -> np.ndarray:
    """3x3 rotation about ``z``."""
    return _rot('z', angle)


_AXIS_INDEX = {'x': 0, 'y': 1, 'z': 2}

_CHAINS: dict[int, tuple[tuple[str, ...], tuple[tuple[float, float, float], ...]]] = {
    6: (_AXES, _OFFSETS),
    7: (('z', 'y', 'x', 'y', 'y', 'x', 'z'),
        ((0.0, 0.0, SHOULDER_HEIGHT), (0.0, 0.0, 0.0), (UPPER_ARM, 0.0, 0.0),
         (FOREARM, 0.0, 0.0), (WRIST, 0.0, 0.0), (0.0, 0.0, 0.0), (HAND, 0.0, 0.0))),
}
#: Arm DoF the simulator models.
SUPPORTED_DOF: tuple[int, ...] = tuple(sorted(_CHAINS))


class ArmKinematics:
    """Kinematics of one arm whose base sits at ``base_position`` with yaw ``base_yaw``."""

    def __init__(self, base_position: np.ndarray, base_yaw: float, dof: int = 6) -> None:
        if dof not in _CHAINS:
            raise ValueError(f'the simulator models {list(SUPPORTED_DOF)}-DoF arms, not {dof}')
        self.dof = dof
        self.base_position = np.asarray(base_position, dtype=np.float64).reshape(3)
        self.base_rotation = rot_z(base_yaw)
        self._axes = _CHAINS[dof][0]
        self._offsets = [np.asarray(o, dtype=np.float64) for o in _CHAINS[dof][1]]

    def frames(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World joint positions and axes plus the tool rotation.

        Returns:
            points: (dof + 1, 3); ``points[i]`` is the world position of joint ``i`` (index 0 is
                the base) and ``points[-1]`` the grasp centre.
            axes: (dof, 3) world rotation axis of each joint.
            tool_rotation: (3, 3) world rotation of the tool frame.
        """
        n = self.dof
        r = self.base_rotation
        p = self.base_position.copy()
        points = np.empty((n + 1, 3))
        axes = np.empty((n, 3))
        points[0] = p
        for i in range(n):
            axis = self._axes[i]
            r = r @ _rot(axis, float(q[i]))
            axes[i] = r[:, _AXIS_INDEX[axis]]
            p = p + r @ self._offsets[i]
            points[i + 1] = p
        return points, axes, r

    def grasp_point(self, q: np.ndarray) -> np.ndarray:
        """World position (3,) of the grasp centre between the fingertips."""
        return self.frames(q)[0][-1]

    def jacobian(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Analytic geometric Jacobian of the grasp centre.

        Returns ``(jac, grasp_point, tool_rotation)`` where ``jac`` is (6, dof): rows 0-2 linear
        velocity, rows 3-5 angular velocity, columns the joints.
        """
        points, axes, tool = self.frames(q)
        tip = points[-1]
        # joint i rotates about axes[i] through the origin before its own offset (points[i]).
        origins = points[:-1]
        jac = np.empty((6, self.dof))
        jac[:3] = np.cross(axes, tip - origins).T
        jac[3:] = axes.T
        return jac, tip, tool


def dls_step(
    kin: ArmKinematics,
    q: np.ndarray,
    target: np.ndarray,
    approach: np.ndarray | None = None,
    damping: float = 0.02,
    orientation_weight: float = 0.3,
    max_step: float = 0.03,
    rest: np.ndarray | None = None,
    rest_gain: float = 0.05,
) -> np.ndarray:
    """One damped-least-squares IK step; returns the joint increment (dof,).

    Args:
        kin: the arm.
        q: current joints (dof,).
        target: desired grasp-centre position (3,) in the world frame.
        approach: desired world direction of the tool ``x`` axis, or None for position only.
        damping: DLS damping factor (lambda).
        orientation_weight: weight of the approach-direction error relative to position.
        max_step: Cartesian error is clipped to this norm (m) per step.
        rest: optional joint posture (dof,) pulled towards in the Jacobian's null space.
        rest_gain: gain of the null-space pull.
    """
    jac, tip, tool = kin.jacobian(q)
    err_p = target - tip
    norm = float(np.linalg.norm(err_p))
    if norm > max_step:
        err_p = err_p * (max_step / norm)
    if approach is None:
        j = jac[:3]
        err = err_p
    else:
        err_w = np.cross(tool[:, 0], approach) * orientation_weight
        j = np.vstack((jac[:3], jac[3:] * orientation_weight))
        err = np.concatenate((err_p, err_w))
    jjt = j @ j.T
    jjt[np.diag_indices_from(jjt)] += damping**2
    dq = j.T @ np.linalg.solve(jjt, err)
    if rest is not None:
        # null-space projector of the damped pseudo-inverse (approximate, cheap).
        pinv = j.T @ np.linalg.inv(jjt)
        null = np.eye(len(q)) - pinv @ j
        dq = dq + null @ ((rest - q) * rest_gain)
    return dq
