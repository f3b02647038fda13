"""`scarls robot check`: bring-up checks of a robot description, without moving the robot.

A lab engineer points it at the one file that describes the robot (`--robot NAME|FILE`); it

1. validates the description and prints its joints, limits, grippers and cameras;
2. (unless `--offline`) starts the ECU's driver and the description's capture sources as
   separate processes (or listens to a robot and cameras that are already running with
   `--attach`), listens for `--seconds` and reports per stream: rate, stamp age, joints outside
   their limits, camera resolution/encoding, decode errors, and the skew between each camera's
   frames and the joint states; nothing is commanded, so nothing moves (the driver holds
   whatever the robot does), unless `--move-home` asks the driver to go to the home pose.

This module is the pure part: the statistics and the verdict from recorded samples (no rclpy).
The ROS side is `scarls.robot.probe`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from scarls.common.stats import percentile

__all__ = [
    'CameraSamples',
    'CheckReport',
    'JointSamples',
    'describe_limits',
    'evaluate',
]


@dataclass
class JointSamples:
    """Joint states received: receive times and stamps (s), positions (n,) each."""

    recv: list[float] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    positions: list[np.ndarray] = field(default_factory=list)
    bad: int = 0
    last_error: str = ''


@dataclass
class CameraSamples:
    """Frames received from one camera: receive times and stamps (s), what was decoded."""

    recv: list[float] = field(default_factory=list)
    stamps: list[float] = field(default_factory=list)
    shapes: set[tuple[int, int]] = field(default_factory=set)
    encodings: set[str] = field(default_factory=set)
    bad: int = 0
    last_error: str = ''


def _rate(times: Sequence[float]) -> float:
    if len(times) < 2 or times[-1] <= times[0]:
        return 0.0
    return (len(times) - 1) / (times[-1] - times[0])


def _pct(values: Sequence[float], q: float) -> float:
    value = percentile(values, q)
    return math.nan if value is None else value


@dataclass
class CheckReport:
    """What `scarls robot check` found; ``problems`` empty means the robot is ready."""

    lines: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.problems


def describe_limits(robot) -> list[str]:
    """One line per joint: name, limits, max velocity, home (the robot's units)."""
    lines = [f"{'joint':24s} {'lower':>8s} {'upper':>8s} {'max vel':>8s} {'home':>8s}  unit"]
    for arm in robot.arms:
        for i, name in enumerate(arm.joints):
            lines.append(f'{name:24s} {arm.lower[i]:8.3f} {arm.upper[i]:8.3f} '
                         f'{arm.max_velocity[i]:8.3f} {arm.home[i]:8.3f}  rad')
        g = arm.gripper
        if g is not None:
            lines.append(f'{g.name:24s} {0.0:8.3f} {1.0:8.3f} {g.max_velocity:8.3f} '
                         f'{g.home:8.3f}  normalised (robot: {g.closed:g} .. {g.open:g} '
                         f'{g.unit})')
    return lines


def evaluate(robot, joints: JointSamples, cameras: dict[str, CameraSamples], seconds: float,
             *, min_rate_fraction: float = 0.8, max_age_s: float = 0.5,
             max_skew_s: float = 0.1) -> CheckReport:
    """The verdict from what was heard in ``seconds``.

    Problems: no or too slow joint states (below ``min_rate_fraction`` of the control rate),
    joint states whose stamps are older than ``max_age_s`` when received, positions outside the
    limits, malformed messages, cameras silent or slow (below that fraction of their fps), of
    another size than declared (they will be resized: reported as a note, not a problem), or
    whose frames are more than ``max_skew_s`` away from the nearest joint state.
    """
    rep = CheckReport()
    rate = robot.control_rate_hz
    js_rate = _rate(joints.recv)
    ages = [r - s for r, s in zip(joints.recv, joints.stamps, strict=True)]
    rep.data['joint_states'] = {'messages': len(joints.recv), 'rate_hz': round(js_rate, 2),
                                'age_p50_s': _pct(ages, 50), 'age_p99_s': _pct(ages, 99),
                                'malformed': joints.bad}
    if not joints.recv:
        rep.problems.append(f'no joint states in {seconds:g} s'
                            + (f' (last error: {joints.last_error})' if joints.last_error
                               else ': is the robot on and the driver configured? see its log'))
    else:
        rep.lines.append(f'joint_states: {len(joints.recv)} messages, {js_rate:.1f} Hz, stamp '
                         f'age p50 {1e3 * _pct(ages, 50):.1f} ms p99 {1e3 * _pct(ages, 99):.1f}'
                         ' ms')
        if js_rate < min_rate_fraction * rate:
            rep.problems.append(f'joint states at {js_rate:.1f} Hz, below '
                                f'{min_rate_fraction:.0%} of the control rate {rate:g} Hz')
        if _pct(ages, 50) > max_age_s:
            rep.problems.append(f'joint state stamps are {_pct(ages, 50):.2f} s old when they '
                                'arrive: clocks out of sync (chrony/NTP) or a stale bridge')
        q = np.asarray(joints.positions)
        lower, upper = robot.lower, robot.upper
        outside = sorted({robot.joint_names[j] for j in
                          np.flatnonzero(((q < lower - 1e-6) | (q > upper + 1e-6)).any(axis=0))})
        rep.data['joint_states']['outside_limits'] = outside
        if outside:
            rep.problems.append(f'joints outside their limits: {outside} (check the zero '
                                'offsets and limits in the description)')
        last = q[-1]
        rep.lines.append('positions now: ' + ', '.join(
            f'{n}={v:.3f}' for n, v in zip(robot.joint_names, last, strict=True)))
    if joints.bad:
        rep.problems.append(f'{joints.bad} malformed joint states ({joints.last_error})')
    js_stamps = np.asarray(joints.stamps, dtype=np.float64)
    for cam in robot.cameras:
        s = cameras.get(cam.name, CameraSamples())
        cam_rate = _rate(s.recv)
        ages = [r - t for r, t in zip(s.recv, s.stamps, strict=True)]
        skew = []
        if js_stamps.size and s.stamps:
            js_sorted = np.sort(js_stamps)
            for t in s.stamps:
                i = int(np.searchsorted(js_sorted, t))
                near = [abs(js_sorted[k] - t) for k in (i - 1, i) if 0 <= k < js_sorted.size]
                skew.append(min(near))
        rep.data.setdefault('cameras', {})[cam.name] = {
            'topic': cam.topic_name, 'messages': len(s.recv), 'rate_hz': round(cam_rate, 2),
            'shapes': sorted(s.shapes), 'encodings': sorted(s.encodings), 'malformed': s.bad,
            'age_p50_s': _pct(ages, 50), 'skew_p50_s': _pct(skew, 50),
            'skew_p99_s': _pct(skew, 99)}
        if not s.recv:
            rep.problems.append(f'camera {cam.name}: no frames on {cam.topic_name} in '
                                f'{seconds:g} s' + (f' ({s.last_error})' if s.last_error else ''))
            continue
        shapes = ', '.join(f'{h}x{w}' for h, w in sorted(s.shapes))
        rep.lines.append(
            f'camera {cam.name}: {len(s.recv)} frames, {cam_rate:.1f} Hz, {shapes} '
            f'{"/".join(sorted(s.encodings))}, stamp age p50 {1e3 * _pct(ages, 50):.1f} ms, '
            f'skew to joint states p50 {1e3 * _pct(skew, 50):.1f} ms p99 '
            f'{1e3 * _pct(skew, 99):.1f} ms')
        if cam_rate < min_rate_fraction * cam.fps:
            rep.problems.append(f'camera {cam.name} at {cam_rate:.1f} Hz, below '
                                f'{min_rate_fraction:.0%} of its {cam.fps:g} fps')
        if s.bad:
            rep.problems.append(f'camera {cam.name}: {s.bad} frames could not be decoded '
                                f'({s.last_error})')
        if skew and _pct(skew, 50) > max_skew_s:
            rep.problems.append(f'camera {cam.name}: frames are {_pct(skew, 50):.3f} s from '
                                'the nearest joint state (unsynchronised clocks or stamps)')
        if s.shapes and s.shapes != {(cam.height, cam.width)}:
            rep.lines.append(f'  note: {cam.name} delivers {shapes}; frames are brought to '
                             f'{cam.height}x{cam.width} ({cam.fit})')
    return rep
