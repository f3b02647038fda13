"""Import a LeRobot v3.0 dataset folder as episodes (``scarls dataset import-lerobot``).

Reads the open formats only - ``meta/info.json``, parquet through ``pyarrow`` and mp4 through
PyAV, both imported lazily (``pip install scarls[lerobot]``) - not the ``lerobot`` package.
See :func:`import_lerobot_v3`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scarls.episodes.errors import EpisodeFormatError
from scarls.episodes.layout import check_task_name, meta_name
from scarls.episodes.tools import DatasetToolError, ProgressFn, _scan_task, _tree_bytes

__all__ = ['DEFAULT_IMPORT_CODEC', 'ImportResult', 'import_lerobot_v3']

#: image codec of imported episodes unless asked otherwise: compressed (LeRobot's videos are a
#: few kB per frame; a lossless per-frame codec writes 100x their size or more)
DEFAULT_IMPORT_CODEC = 'jpeg'

log = logging.getLogger(__name__)

_INTERVENTION_KEYS = ('intervention', 'is_intervention', 'complementary_info.is_intervention')


@dataclass
class ImportResult:
    """Result of :func:`import_lerobot_v3`."""

    root: str
    task: str
    imported: list[dict[str, Any]] = field(default_factory=list)
    already_present: list[int] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    #: bytes on disk of the imported episodes, and of the source's share of them (its files'
    #: size in proportion to the steps imported)
    bytes_written: int = 0
    source_bytes: int = 0

    @property
    def ok(self) -> bool:
        return not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {'root': self.root, 'task': self.task, 'ok': self.ok, 'imported': self.imported,
                'already_present': self.already_present, 'failed': self.failed,
                'bytes_written': self.bytes_written, 'source_bytes': self.source_bytes}


def _lerobot_modules() -> tuple[Any, Any]:
    try:
        import av
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise DatasetToolError(
            f'importing LeRobot datasets needs pyarrow and av (PyAV): {exc}'
        ) from exc
    return pq, av


def _column_2d(table: Any, key: str) -> np.ndarray:
    """A numeric (list) column of a pyarrow table as a ``(rows, dim)`` float array."""
    col = table.column(key).combine_chunks()
    n = len(col)
    if hasattr(col, 'flatten'):
        values = np.asarray(col.flatten().to_numpy(zero_copy_only=False), dtype=np.float64)
        if n and values.size % n:
            raise DatasetToolError(f'column {key!r} has rows of different lengths')
        return values.reshape(n, -1) if n else values.reshape(0, 0)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64).reshape(n, 1)


def _video_frames(av: Any, path: Path, from_ts: float, times: np.ndarray,
                  fps: float) -> Generator[np.ndarray, None, None]:
    """Frames of a video at ``from_ts + times`` (nearest within half a frame), streamed."""
    tol = 0.5 / fps
    try:
        container = av.open(str(path))
    except Exception as exc:  # noqa: BLE001 - av raises its own error family
        raise DatasetToolError(f'{path}: cannot open video: {exc}') from exc
    with container:
        stream = container.streams.video[0]
        start = from_ts + float(times[0]) - tol
        if start > 0:
            container.seek(int(start / stream.time_base), stream=stream)
        frames = container.decode(stream)
        for t in times:
            target = from_ts + float(t)
            for frame in frames:
                ft = frame.time
                if ft is None or ft < target - tol:
                    continue
                if ft > target + tol:
                    raise DatasetToolError(
                        f'{path}: no frame at {target:.3f} s (next frame at {ft:.3f} s)'
                    )
                yield frame.to_ndarray(format='rgb24')
                break
            else:
                raise DatasetToolError(f'{path}: the video ends before {target:.3f} s')


def _image_frames(table: Any, key: str) -> Generator[np.ndarray, None, None]:
    import imagecodecs
    for value in table.column(key).to_pylist():
        data = value.get('bytes') if isinstance(value, dict) else value
        if not data:
            raise DatasetToolError(f'image column {key!r} holds no embedded image bytes')
        img = np.asarray(imagecodecs.imread(data))
        if img.ndim == 2:
            img = np.repeat(img[..., None], 3, axis=2)
        yield np.ascontiguousarray(img[..., :3].astype(np.uint8))


def _fit(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    if img.shape[:2] == shape:
        return img
    import cv2
    return cv2.resize(img, (shape[1], shape[0]), interpolation=cv2.INTER_AREA)


def _imported_keys(task_dir: Path) -> set[tuple[str, int]]:
    out: set[tuple[str, int]] = set()
    for index in _scan_task(task_dir, task_dir.name).visible:
        # (an episode not imported from LeRobot has no extra['lerobot']: KeyError)
        with contextlib.suppress(OSError, ValueError, AttributeError, TypeError, KeyError):
            data = json.loads((task_dir / meta_name(index)).read_text(encoding='utf-8'))
            src = data['extra']['lerobot']
            out.add((str(src['dataset']), int(src['episode_index'])))
    return out


class _LeRobotV3:
    """Reader of one LeRobot v3.0 dataset folder (open formats only)."""

    def __init__(self, folder: Path, cameras: Sequence[str] | None,
                 image_shape: tuple[int, int] | None) -> None:
        self.pq, self.av = _lerobot_modules()
        self.src = folder
        info_path = folder / 'meta' / 'info.json'
        try:
            info = json.loads(info_path.read_text(encoding='utf-8'))
        except (OSError, ValueError) as exc:
            raise DatasetToolError(f'{info_path}: cannot read: {exc}') from exc
        version = str(info.get('codebase_version', ''))
        if not version.startswith('v3'):
            raise DatasetToolError(
                f'{folder}: codebase_version {version!r} is not a LeRobot v3 dataset (convert '
                'it with the LeRobot v2.1 -> v3.0 conversion first)'
            )
        self.info = info
        self.features: dict[str, Any] = info.get('features', {})
        for key in ('observation.state', 'action'):
            if key not in self.features:
                raise DatasetToolError(f'{info_path}: feature {key!r} is missing')
        self.visual = {k.rsplit('.', 1)[-1]: k for k, f in self.features.items()
                       if f.get('dtype') in ('video', 'image')}
        self.cameras = list(cameras) if cameras else list(self.visual)
        if not self.cameras:
            raise DatasetToolError(f'{folder}: the dataset has no camera (video/image) feature')
        for cam in self.cameras:
            if cam not in self.visual:
                raise DatasetToolError(
                    f'{folder}: no camera {cam!r}; cameras: {sorted(self.visual)}')
            check_task_name(cam)
        self.fps = float(info.get('fps', 0) or 0)
        if not self.fps > 0:
            raise DatasetToolError(f'{info_path}: no positive fps')
        self.image_shape = image_shape or self._feature_hw(self.visual[self.cameras[0]])
        self.state_dim = int(np.prod(self.features['observation.state'].get('shape', [1])))
        self.action_dim = int(np.prod(self.features['action'].get('shape', [1])))
        self.data_tpl = str(info.get('data_path')
                            or 'data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet')
        self.video_tpl = str(info.get('video_path') or '')
        self.name = folder.resolve().name
        self.robot = str(info.get('robot_type') or 'robot')
        self._data: tuple[Path, Any] | None = None  # one data file kept in memory

    def _feature_hw(self, key: str) -> tuple[int, int]:
        feat = self.features[key]
        shape = [int(x) for x in feat.get('shape', [])]
        names = [str(x) for x in (feat.get('names') or [])]
        if len(shape) != 3:
            raise DatasetToolError(f'{self.src}: camera feature {key!r} has no 3-D shape')
        if names[:1] in (['c'], ['channels']) or (shape[0] in (1, 3) and shape[2] not in (1, 3)):
            return shape[1], shape[2]
        return shape[0], shape[1]

    def episodes(self) -> list[dict[str, Any]]:
        files = sorted((self.src / 'meta' / 'episodes').glob('chunk-*/file-*.parquet'))
        if not files:
            raise DatasetToolError(f'{self.src}: no meta/episodes/chunk-*/file-*.parquet')
        rows: list[dict[str, Any]] = []
        for f in files:
            try:
                rows += self.pq.read_table(f).to_pylist()
            except Exception as exc:  # noqa: BLE001 - pyarrow error family
                raise DatasetToolError(f'{f}: cannot read parquet: {exc}') from exc
        return sorted(rows, key=lambda r: int(r['episode_index']))

    def _table(self, row: dict[str, Any]) -> tuple[Path, Any]:
        path = self.src / self.data_tpl.format(chunk_index=int(row['data/chunk_index']),
                                               file_index=int(row['data/file_index']))
        if self._data is None or self._data[0] != path:
            try:
                self._data = (path, self.pq.read_table(path))
            except Exception as exc:  # noqa: BLE001 - pyarrow error family
                raise DatasetToolError(f'{path}: cannot read parquet: {exc}') from exc
        return self._data

    def write_episode(self, row: dict[str, Any], root: Path, task: str, outcome: str,
                      codec: str, fsync: bool, index: int | None = None) -> Any:
        """Write one LeRobot episode with the episode writer; return its EpisodeRef."""
        import pyarrow.compute as pc

        from scarls.episodes.writer import EpisodeWriter, StepRecord

        ep = int(row['episode_index'])
        path, table = self._table(row)
        table = table.filter(pc.equal(table.column('episode_index'), ep))
        if 'frame_index' in table.column_names:
            order = np.argsort(table.column('frame_index').to_numpy(), kind='stable')
            table = table.take(order)
        steps = table.num_rows
        if steps == 0:
            raise DatasetToolError(f'{path}: no rows of episode {ep}')
        if row.get('length') is not None and int(row['length']) != steps:
            raise DatasetToolError(
                f'{path}: episode {ep} has {steps} rows, meta/episodes says {row["length"]}')
        state = _column_2d(table, 'observation.state')
        action = _column_2d(table, 'action')
        if state.shape[1] != self.state_dim or action.shape[1] != self.action_dim:
            raise DatasetToolError(
                f'{path}: episode {ep} has state/action dims {state.shape[1]}/{action.shape[1]}, '
                f'meta/info.json says {self.state_dim}/{self.action_dim}')
        names = table.column_names
        times = (np.asarray(table.column('timestamp').to_numpy(), dtype=np.float64)
                 if 'timestamp' in names else np.arange(steps) / self.fps)
        interv = np.zeros(steps, bool)
        for key in _INTERVENTION_KEYS:
            if key in names:
                interv = _column_2d(table, key)[:, 0] > 0.5
                break
        if 'next.success' in names:
            outcome = 'success' if (_column_2d(table, 'next.success') > 0.5).any() else 'fail'
        elif 'next.reward' in names:
            outcome = 'success' if _column_2d(table, 'next.reward')[-1, 0] > 0 else 'fail'
        streams = []
        for cam in self.cameras:
            key = self.visual[cam]
            if self.features[key].get('dtype') == 'video':
                vpath = self.src / self.video_tpl.format(
                    video_key=key, chunk_index=int(row[f'videos/{key}/chunk_index']),
                    file_index=int(row[f'videos/{key}/file_index']))
                start = float(row[f'videos/{key}/from_timestamp'])
                streams.append(_video_frames(self.av, vpath, start, times, self.fps))
            else:
                streams.append(_image_frames(table, key))
        writer = EpisodeWriter(root, task, f'lerobot-{self.robot}', cameras=self.cameras,
                               image_shape=self.image_shape, state_dim=self.state_dim,
                               action_dim=self.action_dim, fps=self.fps, codec=codec,
                               fsync=fsync, index=index)
        try:
            for i in range(steps):
                images = {}
                for cam, stream in zip(self.cameras, streams, strict=True):
                    frame = next(stream, None)
                    if frame is None:
                        raise DatasetToolError(f'camera {cam!r}: fewer frames than steps')
                    images[cam] = _fit(frame, self.image_shape)
                writer.append(StepRecord(images, state[i], action[i], bool(interv[i]),
                                         float(times[i])))
            tasks = [str(t) for t in (row.get('tasks') or [])]
            return writer.finalize(outcome, None, {
                'source': 'offline',
                'lerobot': {'dataset': self.name, 'episode_index': ep, 'tasks': tasks},
            })
        finally:
            writer.abort()  # no-op after finalize
            for stream in streams:
                stream.close()


def _length(row: dict[str, Any]) -> int:
    return int(row.get('length') or 0)


def _compact(path: Path, fsync: bool, item: dict[str, Any]) -> None:
    """Compact one imported episode; a failure leaves it as written (and says so)."""
    from scarls.episodes.compact import compact_episode
    try:
        compact_episode(path, fsync=fsync)
        item['compacted'] = True
    except Exception as exc:  # noqa: BLE001 - the episode stays valid as written
        item['compacted'] = False
        log.warning('LeRobot import: %s stays uncompacted: %s', path, exc)


def import_lerobot_v3(
    folder: str | os.PathLike[str],
    root: str | os.PathLike[str],
    task: str,
    *,
    cameras: Sequence[str] | None = None,
    image_shape: tuple[int, int] | None = None,
    episodes: Iterable[int] | None = None,
    outcome: str = 'success',
    codec: str = DEFAULT_IMPORT_CODEC,
    compact: bool = False,
    keep_episode_index: bool = False,
    fsync: bool = True,
    progress: ProgressFn | None = None,
    on_estimate: Callable[[int, int], None] | None = None,
) -> ImportResult:
    """Import a LeRobot v3.0 dataset folder as episodes of ``task`` under ``root``.

    Reads the open formats only (``meta/info.json``, parquet through ``pyarrow``, mp4 through
    PyAV), not the ``lerobot`` package.  Mapping: ``observation.state`` -> state, ``action`` ->
    action, each ``video``/``image`` feature ``observation.images.<cam>`` -> camera ``<cam>``
    (``cameras`` selects and orders them; frames are resized to ``image_shape``, default: the
    first camera's size), ``timestamp`` -> timestamp (video frames are matched to it within half
    a frame); intervention from a boolean ``intervention`` / ``is_intervention`` /
    ``complementary_info.is_intervention`` column if present; the outcome from ``next.success``
    (any True) or the last ``next.reward`` (> 0) if present, else ``outcome``.  Each episode is
    written with the ordinary writer (crash-safe, appended after the last episode) and its
    meta's ``extra['lerobot']`` records the source, so importing again skips what is already
    there.  An episode that cannot be read is reported in ``failed`` with the file and the
    problem; the others are imported.

    Size: LeRobot stores frames as AV1/H.264 video, a few kB per frame; a per-frame codec is
    far larger (on 480x640 frames ``jpeg`` ~9x the video's bytes, lossless ``lz4`` ~100x).
    The default is ``jpeg``; ``compact=True`` then rewrites each imported episode's frames as
    short H.264 GOPs (:func:`~scarls.episodes.compact.compact_episode`), close to the source's
    size.  ``on_estimate(estimated_bytes, source_bytes)`` is called once, after the first
    imported episode, with the bytes the whole import will write at that episode's rate and
    the source's bytes for the same steps.  ``keep_episode_index`` writes LeRobot episode
    ``i`` as episode ``i`` (refused if the task has it already) instead of appending.
    """
    check_task_name(task)
    source = _LeRobotV3(Path(folder), cameras, image_shape)
    rows = all_rows = source.episodes()
    if episodes is not None:
        wanted = {int(i) for i in episodes}
        rows = [r for r in rows if int(r['episode_index']) in wanted]
    root_path = Path(root)
    result = ImportResult(str(root_path), task)
    done = _imported_keys(root_path / task)
    todo_steps = sum(_length(r) for r in rows
                     if (source.name, int(r['episode_index'])) not in done)
    all_steps = sum(_length(r) for r in all_rows) or 1
    bytes_per_step = _tree_bytes(source.src) / all_steps  # the source's, over its whole length
    for n, row in enumerate(rows, 1):
        ep = int(row['episode_index'])
        if (source.name, ep) in done:
            result.already_present.append(ep)
        else:
            try:
                ref = source.write_episode(row, root_path, task, outcome, codec, fsync,
                                           ep if keep_episode_index else None)
            except (EpisodeFormatError, OSError, ValueError, KeyError) as exc:
                result.failed.append({'episode_index': ep, 'reason': str(exc)})
                log.info('LeRobot import: episode %d of %s failed: %s', ep, folder, exc)
            else:
                item = {'episode_index': ep, 'index': ref.index, 'steps': ref.steps}
                if compact:
                    _compact(ref.path, fsync, item)
                written = _tree_bytes(ref.path) + _tree_bytes(ref.meta_path)
                item['bytes'] = written
                result.imported.append(item)
                result.bytes_written += written
                result.source_bytes += round(bytes_per_step * ref.steps)
                if on_estimate is not None and len(result.imported) == 1:
                    on_estimate(round(written / ref.steps * todo_steps),
                                round(bytes_per_step * todo_steps))
        if progress is not None:
            progress(n, len(rows), f'episode {ep}')
    return result
