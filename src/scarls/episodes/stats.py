"""Dataset summaries: ``scarls dataset info`` and ``scarls dataset stats``.

:func:`dataset_info` and :func:`dataset_stats` read the meta files only (never the frames):
episode and step counts, outcomes, intervention rates, codecs, image shapes, sizes on disk
(info), and the leftovers of killed writers or interrupted operations (see
:mod:`scarls.episodes.tools`).
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from scarls.episodes.errors import SchemaError
from scarls.episodes.layout import episode_dir_name, lost_episodes, meta_name
from scarls.episodes.schema import EpisodeMeta, camera_path
from scarls.episodes.tools import (
    TRASH_DIR,
    DatasetToolError,
    _gaps,
    _rel,
    _scan_task,
    _strip,
    _task_names,
    _tree_bytes,
)

__all__ = ['DatasetSummary', 'TaskSummary', 'dataset_info', 'dataset_stats']

@dataclass
class TaskSummary:
    """Counts of one task (or of a whole root in :attr:`DatasetSummary.totals`)."""

    task: str
    episodes: int = 0
    steps: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    intervention_steps: int = 0
    episodes_with_intervention: int = 0
    dropped_steps: int = 0
    #: steps whose action the robot did not execute (held, e-stopped, fault, resetting,
    #: clamped heavily: the meta's ``extra.safety``), and the episodes that record it
    not_executed_steps: int = 0
    episodes_with_safety: int = 0
    #: steps per driver safety state (``ok``, ``clamped``, ``clamped_heavily``, ``holding``,
    #: ``estopped``, ``fault``, ``resetting``, ``unknown``) over the episodes that record it
    safety: dict[str, int] = field(default_factory=dict)
    #: dropped steps by cause (meta ``extra.dropped_by_cause``: ``no_frames``, ``queue_full``,
    #: ``not_received``, ``not_stored``; episodes recorded before it: not split)
    dropped_by_cause: dict[str, int] = field(default_factory=dict)
    #: episodes/steps the recorder lost (storage errors), as the next saved episode reports
    lost_episodes: int = 0
    lost_steps: int = 0
    seconds: float = 0.0
    first_index: int | None = None
    last_index: int | None = None
    gaps: list[int] = field(default_factory=list)
    codecs: dict[str, int] = field(default_factory=dict)
    image_shapes: dict[str, list[str]] = field(default_factory=dict)
    state_dims: list[int] = field(default_factory=list)
    action_dims: list[int] = field(default_factory=list)
    fps: list[float] = field(default_factory=list)
    ecu_ids: dict[str, int] = field(default_factory=dict)
    model_versions: dict[str, int] = field(default_factory=dict)
    #: episodes lost with a killed writer (found and cleaned by the next writer) and the steps
    #: they had on disk (steps still in the dead writer's memory are not known)
    crash_lost_episodes: int = 0
    crash_lost_steps: int = 0
    #: robot description name -> episodes (from the meta's ``extra.robot``; 'unknown' before)
    robots: dict[str, int] = field(default_factory=dict)
    #: camera -> worst per-episode p50 and max |frame stamp - joint state stamp| (ms)
    camera_skew_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    bytes: int | None = None
    trash_bytes: int | None = None
    unreadable: list[str] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)
    active_writers: list[str] = field(default_factory=list)

    @property
    def intervention_rate(self) -> float:
        """Share of steps with a human in control."""
        return self.intervention_steps / self.steps if self.steps else 0.0

    @property
    def episode_intervention_rate(self) -> float:
        """Share of episodes with at least one takeover step."""
        return self.episodes_with_intervention / self.episodes if self.episodes else 0.0

    @property
    def success_rate(self) -> float:
        done = self.outcomes.get('success', 0) + self.outcomes.get('fail', 0)
        return self.outcomes.get('success', 0) / done if done else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out['intervention_rate'] = self.intervention_rate
        out['episode_intervention_rate'] = self.episode_intervention_rate
        out['success_rate'] = self.success_rate
        return out


@dataclass
class DatasetSummary:
    """Result of :func:`dataset_info` / :func:`dataset_stats`."""

    root: str
    tasks: list[TaskSummary]
    totals: TaskSummary

    def to_dict(self) -> dict[str, Any]:
        return {
            'root': self.root,
            'tasks': [t.to_dict() for t in self.tasks],
            'totals': self.totals.to_dict(),
        }


def _codec_label(codec: dict[str, Any]) -> str:
    name = str(codec.get('name', '?'))
    level = codec.get('level')
    return f'{name} (level {level})' if level is not None else name


def _merge_skew(into: dict[str, dict[str, float]], skew: Any) -> None:
    """Fold one episode's per-camera skew (meta ``extra.camera_skew_ms``) into the worst seen."""
    if not isinstance(skew, dict):
        return
    for cam, v in skew.items():
        if not isinstance(v, dict):
            continue
        cur = into.setdefault(str(cam), {'p50': 0.0, 'max': 0.0})
        for key in ('p50', 'max'):
            value = v.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                cur[key] = max(cur[key], float(value))


def _add_recording(summary: TaskSummary, extra: dict[str, Any]) -> None:
    """Count the per-step safety states and the recorder's losses an episode's meta reports."""
    counts = extra.get('safety')
    if isinstance(counts, dict):
        summary.episodes_with_safety += 1
        for name, n in counts.items():
            if isinstance(n, int) and not isinstance(n, bool) and name != 'not_executed':
                summary.safety[name] = summary.safety.get(name, 0) + n
        n = counts.get('not_executed')
        if isinstance(n, int) and not isinstance(n, bool):
            summary.not_executed_steps += n
    causes = extra.get('dropped_by_cause')
    if isinstance(causes, dict):
        for name, n in causes.items():
            if isinstance(n, int) and not isinstance(n, bool):
                summary.dropped_by_cause[name] = summary.dropped_by_cause.get(name, 0) + n
    lost = extra.get('recorder_losses')
    if isinstance(lost, dict):
        for key in ('episodes', 'steps'):
            n = lost.get(key)
            if isinstance(n, int) and not isinstance(n, bool):
                setattr(summary, f'lost_{key}', getattr(summary, f'lost_{key}') + n)


def _summarize_task(root: Path, task: str, sizes: bool) -> TaskSummary:
    task_dir = root / task
    scan = _scan_task(task_dir, task)
    summary = TaskSummary(task)
    outcomes: Counter[str] = Counter()
    codecs: Counter[str] = Counter()
    ecus: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    robots: Counter[str] = Counter()
    skew: dict[str, dict[str, float]] = {}
    shapes: dict[str, set[str]] = {}
    state_dims: set[int] = set()
    action_dims: set[int] = set()
    fps: set[float] = set()
    indices = scan.visible
    for index in indices:
        meta_path = task_dir / meta_name(index)
        try:
            meta = EpisodeMeta.load(meta_path)
        except SchemaError as exc:
            summary.unreadable.append(f'{_rel(root, meta_path)}: {_strip(str(exc), meta_path)}')
            continue
        summary.episodes += 1
        summary.steps += meta.steps
        outcomes[meta.outcome] += 1
        summary.intervention_steps += meta.intervention_steps
        summary.episodes_with_intervention += int(meta.intervention_steps > 0)
        # the recorder's count (extra) includes steps dropped before the writer saw them
        recorder_dropped = meta.extra.get('dropped_steps')
        summary.dropped_steps += max(meta.dropped_steps, recorder_dropped if isinstance(
            recorder_dropped, int) and not isinstance(recorder_dropped, bool) else 0)
        _add_recording(summary, meta.extra)
        summary.seconds += meta.steps / meta.fps
        codecs[_codec_label(meta.image_codec)] += 1
        ecus[meta.ecu_id] += 1
        versions['none' if meta.model_version is None else str(meta.model_version)] += 1
        fps.add(float(meta.fps))
        robot = meta.extra.get('robot')
        robots[robot.get('name', 'unknown') if isinstance(robot, dict) else 'unknown'] += 1
        _merge_skew(skew, meta.extra.get('camera_skew_ms'))
        for cam in meta.cameras:
            shape = meta.shapes.get(camera_path(cam), [])
            if len(shape) == 4:
                shapes.setdefault(cam, set()).add(f'{shape[1]}x{shape[2]}')
        st = meta.shapes.get('observation/obs_state', [])
        ac = meta.shapes.get('action', [])
        if len(st) == 2:
            state_dims.add(st[1])
        if len(ac) == 2:
            action_dims.add(ac[1])
    if indices:
        summary.first_index, summary.last_index = indices[0], indices[-1]
    summary.gaps = _gaps(set(indices) | (scan.zarr | scan.meta) | set(scan.live_locks))
    summary.outcomes = {k: outcomes.get(k, 0) for k in ('success', 'fail', 'aborted')}
    summary.codecs = dict(sorted(codecs.items()))
    summary.ecu_ids = dict(sorted(ecus.items()))
    summary.model_versions = dict(sorted(versions.items()))
    summary.robots = dict(sorted(robots.items()))
    summary.camera_skew_ms = skew
    summary.image_shapes = {cam: sorted(v) for cam, v in shapes.items()}   # recorded order
    summary.state_dims = sorted(state_dims)
    summary.action_dims = sorted(action_dims)
    summary.fps = sorted(fps)
    summary.leftovers = scan.leftovers()
    crashed = lost_episodes(task_dir)
    summary.crash_lost_episodes = len(crashed)
    summary.crash_lost_steps = sum(int(c['steps_on_disk']) for c in crashed)
    summary.active_writers = scan.active()
    if sizes:
        summary.bytes = sum(
            _tree_bytes(task_dir / episode_dir_name(i)) + _tree_bytes(task_dir / meta_name(i))
            for i in indices
        )
        summary.trash_bytes = _tree_bytes(task_dir / TRASH_DIR) if scan.trash else 0
    return summary


def _totals(tasks: list[TaskSummary], sizes: bool) -> TaskSummary:
    total = TaskSummary('*')
    outcomes: Counter[str] = Counter()
    codecs: Counter[str] = Counter()
    ecus: Counter[str] = Counter()
    versions: Counter[str] = Counter()
    shapes: dict[str, set[str]] = {}
    for t in tasks:
        total.episodes += t.episodes
        total.steps += t.steps
        total.intervention_steps += t.intervention_steps
        total.episodes_with_intervention += t.episodes_with_intervention
        total.dropped_steps += t.dropped_steps
        total.not_executed_steps += t.not_executed_steps
        total.episodes_with_safety += t.episodes_with_safety
        total.lost_episodes += t.lost_episodes
        total.lost_steps += t.lost_steps
        for name, n in t.safety.items():
            total.safety[name] = total.safety.get(name, 0) + n
        for name, n in t.dropped_by_cause.items():
            total.dropped_by_cause[name] = total.dropped_by_cause.get(name, 0) + n
        total.seconds += t.seconds
        outcomes.update(t.outcomes)
        codecs.update(t.codecs)
        ecus.update(t.ecu_ids)
        versions.update(t.model_versions)
        total.robots = dict(sorted((Counter(total.robots) + Counter(t.robots)).items()))
        for cam, v in t.camera_skew_ms.items():
            _merge_skew(total.camera_skew_ms, {cam: v})
        for cam, v in t.image_shapes.items():
            shapes.setdefault(cam, set()).update(v)
        total.state_dims = sorted(set(total.state_dims) | set(t.state_dims))
        total.action_dims = sorted(set(total.action_dims) | set(t.action_dims))
        total.fps = sorted(set(total.fps) | set(t.fps))
        total.unreadable += [f'{t.task}: {u}' for u in t.unreadable]
        total.leftovers += [f'{t.task}/{x}' for x in t.leftovers]
        total.crash_lost_episodes += t.crash_lost_episodes
        total.crash_lost_steps += t.crash_lost_steps
        total.active_writers += [f'{t.task}: {x}' for x in t.active_writers]
    total.outcomes = {k: outcomes.get(k, 0) for k in ('success', 'fail', 'aborted')}
    total.codecs = dict(sorted(codecs.items()))
    total.ecu_ids = dict(sorted(ecus.items()))
    total.model_versions = dict(sorted(versions.items()))
    total.image_shapes = {cam: sorted(v) for cam, v in shapes.items()}
    if sizes:
        total.bytes = sum(t.bytes or 0 for t in tasks)
        total.trash_bytes = sum(t.trash_bytes or 0 for t in tasks)
    return total


def _summarize(root: str | os.PathLike[str], task: str | None, sizes: bool) -> DatasetSummary:
    root_path = Path(root)
    names = _task_names(root_path, task)
    if task is not None and not (root_path / task).is_dir():
        raise DatasetToolError(f'{root_path / task}: task directory does not exist')
    tasks = [_summarize_task(root_path, t, sizes) for t in names]
    return DatasetSummary(str(root_path), tasks, _totals(tasks, sizes))


def dataset_info(root: str | os.PathLike[str], task: str | None = None) -> DatasetSummary:
    """Tasks, episode/step counts, codecs, image shapes, sizes on disk and leftovers.

    Reads the meta files only (never the arrays) and walks the episode directories for sizes.
    Raises :class:`DatasetToolError` if ``root`` does not exist.
    """
    return _summarize(root, task, sizes=True)


def dataset_stats(root: str | os.PathLike[str], task: str | None = None) -> DatasetSummary:
    """Counts, outcomes, intervention rates and per-task totals (meta files only, no sizes)."""
    return _summarize(root, task, sizes=False)
