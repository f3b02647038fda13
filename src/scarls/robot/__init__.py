"""The robot description: one YAML file that tells every room what robot this ECU drives.

A robot is arms (each with its joint names, limits and home pose, and optionally a gripper),
cameras, a control rate and a backend with its own settings. Built-in descriptions live in
``config/robots/<name>.yaml`` (``sim_dual6``: the default simulated robot, two 6-DoF arms +
grippers and three cameras; ``sim_dual7``: the same with 7-DoF arms; ``arx5_pair``; ``agibot_g1``);
a user's own is any YAML file with the same keys (``scarls robot check --robot FILE``).

Every room uses the same joint vector: for each arm in order, its joints then its gripper. Arm
joints are in the robot's units (radians); grippers are normalised ``0 = closed .. 1 = open``
everywhere above the backend, which converts them with the gripper's ``closed``/``open`` values in
its ``unit`` (metres of width for ARX5, a joint angle in radians for a G1-class hand).

The module is pure (numpy + yaml): no rclpy, so tools and tests load descriptions directly.

Example::

    robot = load_robot('sim_dual7')
    robot.num_joints              # 16
    robot.arm_slice('right')      # slice(8, 15)
    robot.gripper_index('right')  # 15
    robot.hash                    # 16 hex digits: recorded in every episode's meta
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    'ARM_DOF',
    'CAMERAS',
    'CAMERA_SOURCES',
    'DEFAULT_ROBOT',
    'ENCODINGS',
    'GRIPPER_UNITS',
    'JOINT_NAMES',
    'LEFT_ARM',
    'LEFT_GRIPPER',
    'NUM_JOINTS',
    'RIGHT_ARM',
    'RIGHT_GRIPPER',
    'ArmSpec',
    'CameraSpec',
    'GripperSpec',
    'RobotDescription',
    'RobotDescriptionError',
    'builtin_robots',
    'load_robot',
    'robot_search_path',
]

#: The robot an ECU drives when none is named.
DEFAULT_ROBOT = 'sim_dual6'
#: Where a camera's frames come from: the sim backend, an external ROS 2 camera driver, a direct
#: OpenCV capture (``scarls camera``), an Intel RealSense through pyrealsense2.
CAMERA_SOURCES = ('sim', 'ros', 'opencv', 'realsense')
#: Image encodings a camera may deliver (sensor_msgs/Image) or 'jpeg'/'png' (CompressedImage).
ENCODINGS = ('rgb8', 'bgr8', 'rgba8', 'bgra8', 'mono8', 'yuv422', 'yuyv', 'uyvy', 'yuv422_yuy2',
             'jpeg', 'png', 'auto')
GRIPPER_UNITS = ('normalized', 'metres', 'radians')
_QOS = ('best_effort', 'reliable')
_FIT = ('resize', 'crop')
_NAME_RE = re.compile(r'^[A-Za-z][A-Za-z0-9_]*$')
_MAX_JOINTS = 64
_MAX_CAMERAS = 16


class RobotDescriptionError(ValueError):
    """A robot description is missing, unreadable or invalid (the message says what to fix)."""


def _err(where: str, what: str) -> RobotDescriptionError:
    return RobotDescriptionError(f'{where}: {what}')


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not _NAME_RE.match(value):
        raise _err(where, f'{value!r} is not a valid name (letters, digits, _; a letter first)')
    return value


def _num(value: Any, where: str, *, positive: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise _err(where, f'must be a finite number, got {value!r}')
    if positive and value <= 0:
        raise _err(where, f'must be > 0, got {value!r}')
    return float(value)


def _vec(value: Any, n: int, where: str, *, positive: bool = False) -> tuple[float, ...]:
    """A list of ``n`` numbers, or one number repeated ``n`` times."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = [value] * n
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise _err(where, f'must be a list of {n} numbers (one per joint), got {value!r}')
    return tuple(_num(v, f'{where}[{i}]', positive=positive) for i, v in enumerate(value))


def _keys(data: Any, where: str, required: Sequence[str], optional: Sequence[str]) -> dict:
    if not isinstance(data, Mapping):
        raise _err(where, f'must be a mapping, got {type(data).__name__}')
    unknown = sorted(set(data) - set(required) - set(optional))
    if unknown:
        raise _err(where, f'unknown key(s) {unknown}; known: {sorted([*required, *optional])}')
    missing = [k for k in required if k not in data]
    if missing:
        raise _err(where, f'missing key(s) {missing}')
    return dict(data)


@dataclass(frozen=True)
class GripperSpec:
    """A parallel gripper or a hand joint, normalised ``0 = closed .. 1 = open`` in the stack.

    Attributes:
        name: joint name in the joint vector (e.g. ``left_gripper``).
        unit: the robot's unit: ``normalized``, ``metres`` (width, ARX5) or ``radians`` (G1).
        closed / open: the robot's value when fully closed / open, in ``unit``.
        max_velocity: normalised units per second (1.0 = a full stroke per second).
        home: normalised home value.
    """

    name: str
    unit: str = 'normalized'
    closed: float = 0.0
    open: float = 1.0
    max_velocity: float = 2.0
    home: float = 1.0

    def to_robot(self, value: float | np.ndarray) -> Any:
        """Normalised value(s) -> the robot's unit."""
        return self.closed + np.asarray(value, dtype=np.float64) * (self.open - self.closed)

    def from_robot(self, value: float | np.ndarray) -> Any:
        """The robot's unit -> normalised value(s)."""
        return (np.asarray(value, dtype=np.float64) - self.closed) / (self.open - self.closed)

    @classmethod
    def parse(cls, data: Any, where: str) -> GripperSpec:
        d = _keys(data, where, ('name',), ('unit', 'closed', 'open', 'max_velocity', 'home'))
        unit = d.get('unit', 'normalized')
        if unit not in GRIPPER_UNITS:
            raise _err(f'{where}.unit', f'{unit!r} is not one of {list(GRIPPER_UNITS)}')
        g = cls(_name(d['name'], f'{where}.name'), unit,
                _num(d.get('closed', 0.0), f'{where}.closed'),
                _num(d.get('open', 1.0), f'{where}.open'),
                _num(d.get('max_velocity', 2.0), f'{where}.max_velocity', positive=True),
                _num(d.get('home', 1.0), f'{where}.home'))
        if g.open == g.closed:
            raise _err(where, 'open and closed must differ (they define the gripper stroke)')
        if not 0.0 <= g.home <= 1.0:
            raise _err(f'{where}.home', f'is normalised (0 closed .. 1 open), got {g.home}')
        return g


@dataclass(frozen=True)
class ArmSpec:
    """One arm: joint names (its DoF), limits and home pose in radians, an optional gripper."""

    name: str
    joints: tuple[str, ...]
    lower: tuple[float, ...]
    upper: tuple[float, ...]
    max_velocity: tuple[float, ...]
    home: tuple[float, ...]
    gripper: GripperSpec | None = None

    @property
    def dof(self) -> int:
        return len(self.joints)

    @classmethod
    def parse(cls, data: Any, where: str) -> ArmSpec:
        d = _keys(data, where, ('name', 'joints', 'lower', 'upper', 'max_velocity'),
                  ('home', 'gripper', 'dof'))
        name = _name(d['name'], f'{where}.name')
        joints = d['joints']
        if not isinstance(joints, (list, tuple)) or not joints:
            raise _err(f'{where}.joints', 'must be a non-empty list of joint names')
        joints = tuple(_name(j, f'{where}.joints[{i}]') for i, j in enumerate(joints))
        n = len(joints)
        if 'dof' in d and d['dof'] != n:
            raise _err(f'{where}.dof', f'says {d["dof"]} but {n} joints are listed')
        lower = _vec(d['lower'], n, f'{where}.lower')
        upper = _vec(d['upper'], n, f'{where}.upper')
        bad = [joints[i] for i in range(n) if not lower[i] < upper[i]]
        if bad:
            raise _err(where, f'lower must be < upper for every joint; not for {bad}')
        mid = [(lo + hi) / 2 for lo, hi in zip(lower, upper, strict=True)]
        home = _vec(d.get('home', mid), n, f'{where}.home')
        outside = [joints[i] for i in range(n) if not lower[i] <= home[i] <= upper[i]]
        if outside:
            raise _err(f'{where}.home', f'outside the joint limits for {outside}')
        gripper = GripperSpec.parse(d['gripper'], f'{where}.gripper') if d.get('gripper') else None
        return cls(name, joints, lower, upper,
                   _vec(d['max_velocity'], n, f'{where}.max_velocity', positive=True), home,
                   gripper)


@dataclass(frozen=True)
class CameraSpec:
    """One camera and the image the policy sees from it.

    Attributes:
        name: camera name (episode arrays ``observation/images/<name>``).
        source: ``sim`` | ``ros`` (an external driver's topic) | ``opencv`` | ``realsense``.
        topic: the image topic; relative names resolve in the ECU's namespace
            (default ``camera/<name>/image_raw``, or ``.../compressed`` when ``compressed``).
        compressed: the topic carries ``sensor_msgs/CompressedImage`` (jpeg/png).
        encoding: what the source delivers (``auto``: read it from each message).
        height / width: what the policy was trained on; frames are brought to this size.
        fit: ``resize`` (scale to the size) or ``crop`` (centre-crop to the aspect, then scale).
        qos: ``best_effort`` (camera drivers' usual) or ``reliable``.
        device: ``opencv``: a V4L2 index or path, a GStreamer pipeline, an RTSP URL or a video
            file; ``realsense``: a serial number ('' = the first one).
        fps: the source's frame rate (capture sources and rate checks).
    """

    name: str
    source: str = 'sim'
    topic: str = ''
    compressed: bool = False
    encoding: str = 'auto'
    height: int = 96
    width: int = 128
    fit: str = 'resize'
    qos: str = 'best_effort'
    device: str = ''
    fps: float = 30.0

    @property
    def topic_name(self) -> str:
        if self.topic:
            return self.topic
        suffix = 'image_raw/compressed' if self.compressed else 'image_raw'
        return f'camera/{self.name}/{suffix}'

    @classmethod
    def parse(cls, data: Any, where: str) -> CameraSpec:
        d = _keys(data, where, ('name',), ('source', 'topic', 'compressed', 'encoding', 'height',
                                           'width', 'fit', 'qos', 'device', 'fps'))
        source = d.get('source', 'sim')
        if source not in CAMERA_SOURCES:
            raise _err(f'{where}.source', f'{source!r} is not one of {list(CAMERA_SOURCES)}')
        encoding = d.get('encoding', 'auto')
        if encoding not in ENCODINGS:
            raise _err(f'{where}.encoding', f'{encoding!r} is not one of {list(ENCODINGS)}')
        for key, options in (('fit', _FIT), ('qos', _QOS)):
            if key in d and d[key] not in options:
                raise _err(f'{where}.{key}', f'{d[key]!r} is not one of {list(options)}')
        size = {}
        for key in ('height', 'width'):
            v = d.get(key, 96 if key == 'height' else 128)
            if isinstance(v, bool) or not isinstance(v, int) or not 16 <= v <= 4096:
                raise _err(f'{where}.{key}', f'must be an int in 16..4096 pixels, got {v!r}')
            size[key] = v
        topic = d.get('topic', '')
        if not isinstance(topic, str) or any(c.isspace() for c in topic):
            raise _err(f'{where}.topic', f'must be a topic name, got {topic!r}')
        compressed = d.get('compressed', False)
        if not isinstance(compressed, bool):
            raise _err(f'{where}.compressed', f'must be true or false, got {compressed!r}')
        device = d.get('device', '')
        return cls(_name(d['name'], f'{where}.name'), source, topic, compressed, encoding,
                   size['height'], size['width'], d.get('fit', 'resize'),
                   d.get('qos', 'best_effort'), str(device),
                   _num(d.get('fps', 30.0), f'{where}.fps', positive=True))


@dataclass(frozen=True, eq=False)
class RobotDescription:
    """A validated robot description (build with :func:`load_robot` or :meth:`from_dict`)."""

    name: str
    arms: tuple[ArmSpec, ...]
    cameras: tuple[CameraSpec, ...]
    backend: str
    backend_params: Mapping[str, Any] = field(default_factory=dict)
    control_rate_hz: float = 30.0
    description: str = ''
    source: str = ''

    # ---------------------------------------------------------------- the joint vector
    @property
    def joint_names(self) -> tuple[str, ...]:
        names: list[str] = []
        for arm in self.arms:
            names += arm.joints
            if arm.gripper is not None:
                names.append(arm.gripper.name)
        return tuple(names)

    @property
    def num_joints(self) -> int:
        return len(self.joint_names)

    @property
    def arm_names(self) -> tuple[str, ...]:
        return tuple(a.name for a in self.arms)

    @property
    def camera_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.cameras)

    @property
    def image_shape(self) -> tuple[int, int]:
        """(H, W) every camera's frames are brought to (one size per robot, see validation)."""
        return (self.cameras[0].height, self.cameras[0].width) if self.cameras else (0, 0)

    def arm(self, name: str) -> ArmSpec:
        for a in self.arms:
            if a.name == name:
                return a
        raise RobotDescriptionError(f'robot {self.name!r} has no arm {name!r}; arms: '
                                    f'{list(self.arm_names)}')

    def _base(self, name: str) -> int:
        base = 0
        for a in self.arms:
            if a.name == name:
                return base
            base += a.dof + (a.gripper is not None)
        raise RobotDescriptionError(f'robot {self.name!r} has no arm {name!r}; arms: '
                                    f'{list(self.arm_names)}')

    def arm_slice(self, name: str) -> slice:
        """The arm's joints (not its gripper) in the joint vector."""
        base = self._base(name)
        return slice(base, base + self.arm(name).dof)

    def gripper_index(self, name: str) -> int | None:
        """Index of the arm's gripper in the joint vector (None: the arm has no gripper)."""
        arm = self.arm(name)
        return None if arm.gripper is None else self._base(name) + arm.dof

    @property
    def gripper_indices(self) -> tuple[int, ...]:
        return tuple(i for a in self.arms if (i := self.gripper_index(a.name)) is not None)

    def joint_groups(self) -> dict[str, tuple[int, ...]]:
        """Named index groups: ``all``, ``<arm>_arm`` per arm, ``grippers`` (if any)."""
        groups = {'all': tuple(range(self.num_joints))}
        for a in self.arms:
            sl = self.arm_slice(a.name)
            groups[f'{a.name}_arm'] = tuple(range(sl.start, sl.stop))
        if self.gripper_indices:
            groups['grippers'] = self.gripper_indices
        return groups

    def _stack(self, arm_attr: str, gripper_value) -> np.ndarray:
        out: list[float] = []
        for a in self.arms:
            out += getattr(a, arm_attr)
            if a.gripper is not None:
                out.append(gripper_value(a.gripper))
        arr = np.array(out, dtype=np.float64)
        arr.setflags(write=False)
        return arr

    @property
    def lower(self) -> np.ndarray:
        """Lower position limits of the joint vector (grippers: 0)."""
        return self._stack('lower', lambda g: 0.0)

    @property
    def upper(self) -> np.ndarray:
        """Upper position limits of the joint vector (grippers: 1)."""
        return self._stack('upper', lambda g: 1.0)

    @property
    def max_velocity(self) -> np.ndarray:
        return self._stack('max_velocity', lambda g: g.max_velocity)

    @property
    def home(self) -> np.ndarray:
        return self._stack('home', lambda g: g.home)

    def camera_spec(self, name: str) -> CameraSpec:
        """The camera's spec, or the simulator's defaults for a camera the description does
        not list (named by a node parameter only)."""
        try:
            return self.camera(name)
        except RobotDescriptionError:
            return CameraSpec(name)

    def camera(self, name: str) -> CameraSpec:
        for c in self.cameras:
            if c.name == name:
                return c
        raise RobotDescriptionError(f'robot {self.name!r} has no camera {name!r}; cameras: '
                                    f'{list(self.camera_names)}')

    # ---------------------------------------------------------------- identity
    def to_dict(self) -> dict[str, Any]:
        """The description as plain data (what :attr:`hash` is computed over)."""
        def arm(a: ArmSpec) -> dict:
            d = {'name': a.name, 'joints': list(a.joints), 'lower': list(a.lower),
                 'upper': list(a.upper), 'max_velocity': list(a.max_velocity),
                 'home': list(a.home)}
            if a.gripper is not None:
                d['gripper'] = dict(vars(a.gripper))
            return d
        return {'name': self.name, 'description': self.description,
                'control_rate_hz': self.control_rate_hz, 'arms': [arm(a) for a in self.arms],
                'cameras': [dict(vars(c)) for c in self.cameras],
                'backend': {'type': self.backend, **{k: self.backend_params[k]
                                                     for k in sorted(self.backend_params)}}}

    @property
    def hash(self) -> str:
        """16 hex digits identifying the description's content (not its file or comments)."""
        blob = json.dumps(self.to_dict(), sort_keys=True, separators=(',', ':'))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]

    @property
    def identity(self) -> dict[str, Any]:
        """What episodes and checkpoints record: name, hash, joint names, cameras."""
        return {'name': self.name, 'hash': self.hash, 'joint_names': list(self.joint_names),
                'cameras': list(self.camera_names),
                'image_shape': list(self.image_shape)}

    def summary(self) -> str:
        arms = ', '.join(f'{a.name} {a.dof}-DoF' + (' + gripper' if a.gripper else '')
                         for a in self.arms)
        cams = ', '.join(f'{c.name} ({c.source} {c.height}x{c.width})' for c in self.cameras)
        return (f'{self.name}: {arms}; {self.num_joints} joints; cameras: {cams or "none"}; '
                f'backend {self.backend}; {self.control_rate_hz:g} Hz; hash {self.hash}')

    # ---------------------------------------------------------------- parsing
    @classmethod
    def from_dict(cls, data: Any, source: str = '<dict>') -> RobotDescription:
        """Validate plain data (a parsed YAML file) into a description.

        Raises:
            RobotDescriptionError: what is wrong and where (``source: arms[1].lower: ...``).
        """
        d = _keys(data, source, ('name', 'arms', 'backend'),
                  ('description', 'control_rate_hz', 'cameras'))
        name = _name(d['name'], f'{source}: name')
        arms_data = d['arms']
        if not isinstance(arms_data, (list, tuple)) or not arms_data:
            raise _err(f'{source}: arms', 'must be a non-empty list of arms')
        arms = tuple(ArmSpec.parse(a, f'{source}: arms[{i}]') for i, a in enumerate(arms_data))
        cams_data = d.get('cameras') or []
        if not isinstance(cams_data, (list, tuple)) or len(cams_data) > _MAX_CAMERAS:
            raise _err(f'{source}: cameras', f'must be a list of at most {_MAX_CAMERAS} cameras')
        cameras = tuple(CameraSpec.parse(c, f'{source}: cameras[{i}]')
                        for i, c in enumerate(cams_data))
        backend = d['backend']
        if isinstance(backend, str):
            backend = {'type': backend}
        if not isinstance(backend, Mapping) or not isinstance(backend.get('type'), str):
            raise _err(f'{source}: backend', 'must be a mapping with a "type" (sim | arx5 | '
                       'ros2_bridge) and that backend\'s settings')
        params = {k: v for k, v in backend.items() if k != 'type'}
        robot = cls(name, arms, cameras, backend['type'], params,
                    _num(d.get('control_rate_hz', 30.0), f'{source}: control_rate_hz',
                         positive=True),
                    str(d.get('description', '')), source)
        robot._validate()
        return robot

    def _validate(self) -> None:
        where = self.source
        names = self.joint_names
        if len(names) > _MAX_JOINTS:
            raise _err(where, f'{len(names)} joints; at most {_MAX_JOINTS} are supported')
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise _err(where, f'joint names must be unique; repeated: {dup}')
        arms = self.arm_names
        if len(set(arms)) != len(arms):
            raise _err(where, f'arm names must be unique, got {list(arms)}')
        cams = self.camera_names
        if len(set(cams)) != len(cams):
            raise _err(where, f'camera names must be unique, got {list(cams)}')
        shapes = {(c.height, c.width) for c in self.cameras}
        if len(shapes) > 1:
            raise _err(where, f'cameras must share one policy resolution (height x width), got '
                       f'{sorted(shapes)}; set every camera to the same size (frames are '
                       'resized or cropped to it)')
        if not 1.0 <= self.control_rate_hz <= 1000.0:
            raise _err(where, f'control_rate_hz {self.control_rate_hz} is out of 1..1000 Hz')

    def with_image_shape(self, height: int, width: int) -> RobotDescription:
        """The same robot with every camera brought to ``height x width`` (e.g. ``--height``)."""
        data = self.to_dict()
        for cam in data['cameras']:
            cam['height'], cam['width'] = int(height), int(width)
        return RobotDescription.from_dict(data, self.source)


# ------------------------------------------------------------------------- finding files
def robot_search_path() -> list[Path]:
    """Folders searched for ``<name>.yaml``: ``$SCARLS_ROBOT_PATH`` (``:``-separated), the
    source tree's ``config/robots``, the installed package's ``share/scarls/config/robots``."""
    paths = [Path(p) for p in os.environ.get('SCARLS_ROBOT_PATH', '').split(os.pathsep) if p]
    paths.append(Path(__file__).resolve().parents[3] / 'config' / 'robots')
    try:
        from ament_index_python.packages import get_package_share_directory
        paths.append(Path(get_package_share_directory('scarls')) / 'config' / 'robots')
    except (ImportError, LookupError, OSError, ValueError):
        pass
    import sys
    paths.append(Path(sys.prefix) / 'share' / 'scarls' / 'config' / 'robots')
    return paths


def builtin_robots() -> tuple[str, ...]:
    """Names of the descriptions found on :func:`robot_search_path`, sorted."""
    names = {p.stem for d in robot_search_path() if d.is_dir() for p in d.glob('*.yaml')}
    return tuple(sorted(names))


_CACHE: dict[tuple[str, float], RobotDescription] = {}


def load_robot(spec: str | os.PathLike[str] | RobotDescription | None = None) -> RobotDescription:
    """The description named ``spec`` (a built-in name or a YAML file path; None/'' = default).

    Raises:
        RobotDescriptionError: not found (the message lists the built-ins), unreadable YAML, or
            an invalid description.
    """
    if isinstance(spec, RobotDescription):
        return spec
    spec = str(spec) if spec not in (None, '') else DEFAULT_ROBOT
    path = Path(spec).expanduser()
    looks_like_file = spec.endswith(('.yaml', '.yml')) or os.sep in spec
    if not looks_like_file:
        for folder in robot_search_path():
            if (folder / f'{spec}.yaml').is_file():
                path = folder / f'{spec}.yaml'
                break
        else:
            raise RobotDescriptionError(
                f'no robot named {spec!r}; built-in robots: {list(builtin_robots())} '
                '(or pass the path of your own YAML file)')
    if not path.is_file():
        raise RobotDescriptionError(f'robot description file {str(path)!r} does not exist')
    key = (str(path.resolve()), path.stat().st_mtime)
    if key in _CACHE:
        return _CACHE[key]
    if path.stat().st_size > 1_000_000:
        raise RobotDescriptionError(f'{path}: larger than 1 MB; is this a robot description?')
    import yaml

    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise RobotDescriptionError(f'{path}: cannot read it as YAML: {exc}') from exc
    robot = RobotDescription.from_dict(data, str(path))
    _CACHE[key] = robot
    return robot


# --------------------------------------------------------------------- the default robot
# The layout of the default simulated robot (``sim_dual6``), for code that only ever describes
# it (tests, the simulator's own defaults); a test checks them against config/robots/sim_dual6.yaml
ARM_DOF = 6
JOINT_NAMES: tuple[str, ...] = (
    *(f'left_joint{i}' for i in range(1, ARM_DOF + 1)), 'left_gripper',
    *(f'right_joint{i}' for i in range(1, ARM_DOF + 1)), 'right_gripper',
)
NUM_JOINTS = len(JOINT_NAMES)
CAMERAS: tuple[str, ...] = ('top', 'left', 'right')
LEFT_ARM = slice(0, ARM_DOF)
LEFT_GRIPPER = ARM_DOF
RIGHT_ARM = slice(ARM_DOF + 1, 2 * ARM_DOF + 1)
RIGHT_GRIPPER = 2 * ARM_DOF + 1
