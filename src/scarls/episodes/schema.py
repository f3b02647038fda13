"""Episode schema: array names, dtypes and the meta json document.

Arrays inside ``episode_<N>.zarr`` (a zarr v3 group), T = number of steps::

    observation/<camera>   uint8   (T, H, W, 3)   one frame per chunk
    observation/obs_state  float32 (T, D_state)
    action                 float32 (T, D_action)
    intervention           bool    (T,)           human in control at that step
    timestamp              float64 (T,)           seconds (ROS time of the control tick)
    safety                 uint8   (T,)           optional: the driver's safety state in force
                                                  when the step's command was executed
                                                  (:data:`SAFETY_CODES`)

Episodes without ``safety`` (older ones, demonstrations, imports) count as executed throughout.
``episode_<N>_meta.json`` is described by :class:`EpisodeMeta`.  ``sha256`` maps every array
path to the sha256 of its raw C-order bytes; for lossy image codecs the hash is over the frames
as decoded from storage (see :mod:`scarls.episodes.codecs`).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scarls.episodes.errors import SchemaError

__all__ = [
    'NOT_EXECUTED',
    'OUTCOMES',
    'SAFETY_CODES',
    'SAFETY_PATH',
    'SCHEMA_VERSION',
    'EpisodeMeta',
    'array_paths',
    'camera_path',
    'executed_mask',
    'meta_array_paths',
    'safety_counts',
]

SCHEMA_VERSION = 1
OUTCOMES = ('success', 'fail', 'aborted')
STATE_PATH = 'observation/obs_state'
ACTION_PATH = 'action'
INTERVENTION_PATH = 'intervention'
TIMESTAMP_PATH = 'timestamp'
LOWDIM_DTYPES: dict[str, np.dtype] = {
    STATE_PATH: np.dtype(np.float32),
    ACTION_PATH: np.dtype(np.float32),
    INTERVENTION_PATH: np.dtype(np.bool_),
    TIMESTAMP_PATH: np.dtype(np.float64),
}
IMAGE_DTYPE = np.dtype(np.uint8)

SAFETY_PATH = 'safety'
#: Optional arrays: checked (dtype, shape, sha256) only when the meta lists them.
OPTIONAL_DTYPES: dict[str, np.dtype] = {SAFETY_PATH: np.dtype(np.uint8)}
#: Per-step codes of the ``safety`` array: the driver's state (scarls_interfaces/DriverState)
#: in force when the step's command was executed. ``clamped_heavily``: clamped by the driver
#: and the command lay far outside what the robot could do (see
#: :func:`scarls.scheduler.alignment.heavy_clamp`); ``unknown``: no driver state known yet.
SAFETY_CODES: dict[str, int] = {
    'ok': 0,
    'clamped': 1,
    'clamped_heavily': 2,
    'holding': 3,
    'estopped': 4,
    'fault': 5,
    'resetting': 6,
    'unknown': 255,
}
SAFETY_NAMES: dict[int, str] = {v: k for k, v in SAFETY_CODES.items()}
#: States in which the step's action was not executed (never trained on).
NOT_EXECUTED: tuple[str, ...] = ('clamped_heavily', 'holding', 'estopped', 'fault', 'resetting')


def camera_path(camera: str) -> str:
    return f'observation/{camera}'


def array_paths(cameras: list[str] | tuple[str, ...]) -> list[str]:
    """The arrays every episode with these cameras has, images first."""
    return [camera_path(c) for c in cameras] + list(LOWDIM_DTYPES)


def meta_array_paths(meta: EpisodeMeta) -> list[str]:
    """The arrays of the episode ``meta`` describes: :func:`array_paths` + the optional ones
    its meta lists."""
    return array_paths(meta.cameras) + [k for k in OPTIONAL_DTYPES if k in meta.shapes]


def executed_mask(safety: np.ndarray | None, steps: int) -> np.ndarray:
    """(T,) bool: the step's action was executed (True throughout without a ``safety`` array;
    an ``unknown`` state counts as executed)."""
    if safety is None:
        return np.ones(steps, dtype=bool)
    codes = np.asarray(safety)
    if codes.shape != (steps,):
        raise SchemaError(f'safety has shape {codes.shape}, expected ({steps},)')
    bad = np.array([SAFETY_CODES[n] for n in NOT_EXECUTED], dtype=codes.dtype)
    return ~np.isin(codes, bad)


def safety_counts(safety: np.ndarray) -> dict[str, int]:
    """Steps per safety state (every state named, zeros included) and ``not_executed``."""
    codes = np.asarray(safety).astype(np.int64)
    counts = {name: int(np.count_nonzero(codes == code)) for name, code in SAFETY_CODES.items()}
    counts['not_executed'] = int(sum(counts[n] for n in NOT_EXECUTED))
    return counts


@dataclass
class EpisodeMeta:
    """Contents of ``episode_<N>_meta.json``."""

    task: str
    episode_index: int
    ecu_id: str
    outcome: str
    steps: int
    fps: float
    intervention_steps: int
    model_version: int | None
    start_time: float
    end_time: float
    image_codec: dict[str, Any]
    cameras: list[str]
    shapes: dict[str, list[int]]
    dtypes: dict[str, str]
    sha256: dict[str, str]
    dropped_steps: int = 0
    created_unix: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1, sort_keys=True, allow_nan=False)

    @classmethod
    def from_dict(cls, data: Any, source: str = '<meta>') -> EpisodeMeta:
        """Parse and type-check a meta dict; raise :class:`SchemaError` naming ``source``."""
        if not isinstance(data, dict):
            raise SchemaError(f'{source}: meta must be a JSON object, got {type(data).__name__}')
        checks: dict[str, tuple[type, ...]] = {
            'schema_version': (int,),
            'task': (str,),
            'episode_index': (int,),
            'ecu_id': (str,),
            'outcome': (str,),
            'steps': (int,),
            'fps': (int, float),
            'intervention_steps': (int,),
            'model_version': (int, type(None)),
            'start_time': (int, float),
            'end_time': (int, float),
            'image_codec': (dict,),
            'cameras': (list,),
            'shapes': (dict,),
            'dtypes': (dict,),
            'sha256': (dict,),
            'dropped_steps': (int,),
            'created_unix': (int, float),
            'extra': (dict,),
        }
        for key, types in checks.items():
            if key not in data:
                raise SchemaError(f'{source}: meta is missing the key {key!r}')
            value = data[key]
            if isinstance(value, bool) or not isinstance(value, types):
                raise SchemaError(
                    f'{source}: meta key {key!r} has type {type(value).__name__}, expected '
                    + ' or '.join(t.__name__ for t in types)
                )
        if data['schema_version'] != SCHEMA_VERSION:
            raise SchemaError(
                f'{source}: unsupported schema_version {data["schema_version"]} '
                f'(this reader supports {SCHEMA_VERSION})'
            )
        if data['outcome'] not in OUTCOMES:
            raise SchemaError(f'{source}: outcome {data["outcome"]!r} not in {OUTCOMES}')
        if data['steps'] < 0 or not 0 <= data['intervention_steps'] <= data['steps']:
            raise SchemaError(
                f'{source}: bad counts steps={data["steps"]} '
                f'intervention_steps={data["intervention_steps"]}'
            )
        if not math.isfinite(data['fps']) or data['fps'] <= 0:
            raise SchemaError(f'{source}: fps must be a positive number, got {data["fps"]}')
        cams = data['cameras']
        if not cams or not all(isinstance(c, str) for c in cams) or len(set(cams)) != len(cams):
            raise SchemaError(f'{source}: cameras must be a non-empty list of unique names')
        for key in array_paths(cams):
            for table in ('shapes', 'dtypes', 'sha256'):
                if key not in data[table]:
                    raise SchemaError(f'{source}: meta {table!r} has no entry for {key!r}')
            shape = data['shapes'][key]
            if not isinstance(shape, list) or not all(
                isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape
            ):
                raise SchemaError(f'{source}: shapes[{key!r}] must be a list of ints, got {shape}')
        for key in OPTIONAL_DTYPES:
            if key in data['shapes'] and not all(key in data[t] for t in ('dtypes', 'sha256')):
                raise SchemaError(f'{source}: optional array {key!r} is listed in shapes but '
                                  'not in dtypes and sha256')
        return cls(**{k: data[k] for k in checks})

    @classmethod
    def load(cls, path: str | Path) -> EpisodeMeta:
        """Read and validate a meta json file; raise :class:`SchemaError` on any problem."""
        p = Path(path)
        try:
            text = p.read_text(encoding='utf-8')
        except FileNotFoundError:
            raise SchemaError(f'{p}: meta file is missing') from None
        except (OSError, UnicodeDecodeError) as exc:
            raise SchemaError(f'{p}: cannot read meta file: {exc}') from exc
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise SchemaError(f'{p}: meta is not valid JSON: {exc}') from exc
        return cls.from_dict(data, source=str(p))
