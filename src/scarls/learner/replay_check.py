"""Replay regression check: recorded episodes through a candidate policy, open loop.

Every sampled step ``t`` of a recorded episode is fed to the policy the way training feeds it
(:func:`scarls.learner.trainer.build_batch`: the recorded joint state and camera frames of step
``t``, the policy's cameras, the ``K``-step action chunk from ``t`` on with padding masked);
the predicted chunk is compared with the actions that were logged at ``t .. t+K-1``. Nothing
is executed, so the comparison says how differently the candidate would have acted in the
very situations the robot was in, not how the task would have gone.

Control modes (the ``intervention`` array): ``'human'`` steps (a takeover or a
demonstration: the logged action is an expert label) and ``'policy'`` steps (the logged action
is what the model that ran chose). A chunk is compared only up to the next change of control
mode (the same masking as HG-DAgger training), so a ``'human'`` number is purely a distance to
expert actions and a ``'policy'`` number purely a distance to the recorded policy's behaviour.
``'all'`` is both together. The gate judges ``'human'`` steps only by default: a better
candidate *should* differ from what an older policy did.

Within each mode the steps are split by progress (``'early'``/``'middle'``/``'late'`` thirds
of the episode) and, when the recording names them, by task stage (``'stage:<name>'``; see
:func:`stage_labels`). Every cell is measured for the whole action and per joint group
(:data:`JOINT_GROUPS`: left arm, right arm, grippers): mean squared error (rad^2; grippers in
their normalised 0..1 unit), mean absolute error, maximum absolute error, and the first step
where the error exceeds a tolerance (``first_divergence``). The per-frame error is averaged over
the valid chunk entries first, then over frames, as in
:func:`scarls.learner.evaluation.evaluate_open_loop`, so the ``('human', 'all')`` MSE over the
whole action equals the learner's open-loop metric on the same episodes and stride.

With a baseline policy (e.g. the deployed checkpoint) the same batches also go through the
baseline, and a cell *regresses* when the candidate's MSE exceeds the baseline's by more than
a relative and an absolute margin. :class:`ReplayGate` turns a :class:`ReplayReport` into a
:class:`ReplayDecision` (approved, reason, the regressions), usable before a deploy.

Episodes are :class:`ReplayEpisode` objects (an :class:`~scarls.learner.trainer.EpisodeData`
plus a name and optional stage labels): :meth:`ReplayEpisode.load` reads a Zarr episode,
:meth:`ReplayEpisode.from_records` wraps steps from any other source (e.g. a converted bag).
Pure logic: no ROS.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scarls.episodes import EpisodeReader, StepRecord, list_episodes
from scarls.episodes.schema import ACTION_PATH, INTERVENTION_PATH, STATE_PATH
from scarls.learner.config import LearnerError
from scarls.learner.rollout import policy_cameras
from scarls.learner.trainer import MASK_KEY, EpisodeData, build_batch
from scarls.policies import ACTION_KEY, STATE_KEY, Policy
from scarls.robot import (
    LEFT_ARM,
    LEFT_GRIPPER,
    NUM_JOINTS,
    RIGHT_ARM,
    RIGHT_GRIPPER,
)

__all__ = [
    'JOINT_GROUPS',
    'MODES',
    'PROGRESS_SEGMENTS',
    'STAGES_KEY',
    'CellResult',
    'EpisodeResult',
    'ErrorStats',
    'Regression',
    'ReplayConfig',
    'ReplayDecision',
    'ReplayEpisode',
    'ReplayGate',
    'ReplayGateConfig',
    'ReplayInputError',
    'ReplayReport',
    'SkippedEpisode',
    'check_fit',
    'iter_disk_episodes',
    'run_replay',
    'stage_labels',
]

_log = logging.getLogger(__name__)

#: Joint groups of the dual-arm robot (indices into the 14-dim action, see scarls.robot).
JOINT_GROUPS: dict[str, tuple[int, ...]] = {
    'all': tuple(range(NUM_JOINTS)),
    'left_arm': tuple(range(LEFT_ARM.start, LEFT_ARM.stop)),
    'right_arm': tuple(range(RIGHT_ARM.start, RIGHT_ARM.stop)),
    'grippers': (LEFT_GRIPPER, RIGHT_GRIPPER),
}
#: Control modes a cell can cover.
MODES = ('all', 'human', 'policy')
#: Progress segments (thirds of the episode by step index).
PROGRESS_SEGMENTS = ('early', 'middle', 'late')
#: Key in an episode meta's ``extra`` holding its task stages: ``[[start_step, name], ...]``.
STAGES_KEY = 'stages'


class ReplayInputError(LearnerError):
    """An episode or a policy cannot be replayed (the message names the file and the problem)."""


# -- episodes ----------------------------------------------------------------------------------


def stage_labels(stages: Any, steps: int, source: str = '<episode>') -> np.ndarray:
    """``(T,)`` stage names from ``[[start_step, name], ...]`` (sorted starts, the first 0).

    Each stage lasts until the next one starts. Raises :class:`ReplayInputError` naming
    ``source`` for a malformed list.
    """
    if not isinstance(stages, (list, tuple)) or not stages:
        raise ReplayInputError(f'{source}: {STAGES_KEY!r} must be a non-empty list of '
                               f'[start_step, name] pairs, got {stages!r}')
    starts, names = [], []
    for item in stages:
        if (not isinstance(item, (list, tuple)) or len(item) != 2
                or isinstance(item[0], bool) or not isinstance(item[0], int)
                or not isinstance(item[1], str) or not item[1]):
            raise ReplayInputError(f'{source}: stage entry {item!r} must be [start_step, name]')
        starts.append(int(item[0]))
        names.append(item[1])
    if starts[0] != 0 or any(b <= a for a, b in zip(starts, starts[1:], strict=False)) \
            or starts[-1] >= max(steps, 1):
        raise ReplayInputError(f'{source}: stage starts {starts} must begin at 0, increase and '
                               f'stay below the {steps} steps')
    out = np.empty(steps, dtype=object)
    bounds = [*starts, steps]
    for i, name in enumerate(names):
        out[bounds[i]:bounds[i + 1]] = name
    return out


@dataclasses.dataclass
class ReplayEpisode:
    """One recorded episode to replay, from any source.

    ``data`` holds the arrays (its ``images`` may keep only some frames: steps whose frames are
    missing are not compared). ``stages`` (optional, ``(T,)`` str) names the task stage of every
    step. ``fps`` turns step indices into seconds in reports.
    """

    name: str
    """How reports name the episode, e.g. ``'pick_cube/episode_3'``."""
    data: EpisodeData
    fps: float | None = None
    stages: np.ndarray | None = None
    path: Path | None = None
    """Where it was read from (None for in-memory sources)."""
    model_version: int | None = None
    """The model that drove its policy steps, when known."""

    def __post_init__(self) -> None:
        if self.stages is not None:
            self.stages = np.asarray(self.stages, dtype=object)
            if self.stages.shape != (self.data.steps,):
                raise ReplayInputError(f'{self.name}: stages must be ({self.data.steps},), got '
                                       f'{self.stages.shape}')

    @property
    def steps(self) -> int:
        return self.data.steps

    @classmethod
    def from_records(
        cls,
        name: str,
        records: Sequence[StepRecord],
        *,
        task: str,
        outcome: str = 'success',
        source: str = 'online',
        fps: float | None = None,
        stages: Sequence[str] | None = None,
        cameras: Sequence[str] | None = None,
        model_version: int | None = None,
    ) -> ReplayEpisode:
        """From in-memory steps (e.g. a bag converted to :class:`StepRecord` ticks)."""
        data = EpisodeData.from_records(records, task=task, outcome=outcome, source=source,
                                        cameras=cameras)
        return cls(name, data, fps=fps,
                   stages=None if stages is None else np.asarray(stages, dtype=object),
                   model_version=model_version)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        *,
        cameras: Sequence[str] | None = None,
        stride: int = 1,
        name: str | None = None,
    ) -> ReplayEpisode:
        """Read a Zarr episode (``.../episode_<N>.zarr``).

        Only the frames of the steps a replay with ``stride`` compares are read. The sha256 of
        the state, action and intervention arrays is checked against the meta. Any problem
        raises :class:`ReplayInputError` naming the file.
        """
        p = Path(path)
        try:
            reader = EpisodeReader(p)
            arrays = {}
            for key, arr in ((STATE_PATH, reader.state), (ACTION_PATH, reader.action),
                             (INTERVENTION_PATH, reader.intervention)):
                try:
                    arrays[key] = np.asarray(arr[:])
                except Exception as exc:  # noqa: BLE001 - codec errors of any type
                    raise ReplayInputError(f'{p}: array {key!r} is unreadable (corrupt '
                                           f'data): {exc}') from exc
            keep = _sampled_mask(arrays[INTERVENTION_PATH].astype(bool), stride)
            # cameras the episode lacks are left out here; check_fit names them
            cams = tuple(c for c in (cameras or ()) if c in reader.cameras)
            try:
                data = EpisodeData.from_reader(reader, source=str(reader.meta.extra.get(
                    'source', 'online')), cameras=cams, keep=keep)
            except Exception as exc:  # noqa: BLE001
                raise ReplayInputError(f'{p}: camera frames of {list(cams)} are unreadable '
                                       f'(corrupt data): {exc}') from exc
            for key, arr in ((STATE_PATH, data.state), (ACTION_PATH, data.action),
                             (INTERVENTION_PATH, data.intervention)):
                digest = hashlib.sha256(np.ascontiguousarray(arr).data).hexdigest()
                if digest != reader.meta.sha256.get(key):
                    raise ReplayInputError(
                        f'{p}: checksum mismatch for {key!r} (stored data differs from what '
                        'was recorded; the episode is corrupt)')
            meta = reader.meta
            stages = (stage_labels(meta.extra[STAGES_KEY], data.steps, str(reader.meta_path))
                      if STAGES_KEY in meta.extra else None)
        except ReplayInputError:
            raise
        except Exception as exc:  # noqa: BLE001 - schema, codec and zarr errors alike
            text = str(exc)
            raise ReplayInputError(text if str(p) in text else f'{p}: {text}') from exc
        return cls(name or f'{meta.task}/episode_{meta.episode_index}', data, fps=meta.fps,
                   stages=stages, path=p, model_version=meta.model_version)


def _sampled_mask(intervention: np.ndarray, stride: int) -> np.ndarray:
    """(T,) bool: the steps a replay with ``stride`` compares (every stride-th of each mode)."""
    keep = np.zeros(intervention.shape, dtype=bool)
    for flags in (intervention, ~intervention):
        keep[np.flatnonzero(flags)[:: max(1, int(stride))]] = True
    return keep


@dataclasses.dataclass(frozen=True)
class SkippedEpisode:
    """An episode that was not checked, and why."""

    name: str
    reason: str
    path: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def iter_disk_episodes(
    root: str | os.PathLike[str],
    task: str,
    *,
    indices: Iterable[int] | None = None,
    cameras: Sequence[str] | None = None,
    stride: int = 1,
    skipped: list[SkippedEpisode] | None = None,
) -> Iterator[ReplayEpisode]:
    """Yield the episodes of ``<root>/<task>/`` (only ``indices`` if given), one at a time.

    An episode that cannot be read is logged, appended to ``skipped`` and left out; the others
    are still yielded. An index that does not exist is reported the same way.
    """
    entries = list_episodes(root, task)
    if indices is not None:
        wanted = sorted(set(int(i) for i in indices))
        have = {e.index: e for e in entries}
        for i in wanted:
            if i not in have:
                _skip(skipped, SkippedEpisode(
                    f'{task}/episode_{i}', f'no episode {i} of {task!r} under {root}', None))
        entries = [have[i] for i in wanted if i in have]
    for entry in entries:
        try:
            yield ReplayEpisode.load(entry.path, cameras=cameras, stride=stride,
                                     name=f'{entry.task}/episode_{entry.index}')
        except ReplayInputError as exc:
            _skip(skipped, SkippedEpisode(f'{entry.task}/episode_{entry.index}', str(exc),
                                          str(entry.path)))


def _skip(skipped: list[SkippedEpisode] | None, item: SkippedEpisode) -> None:
    _log.warning('episode %s skipped: %s', item.name, item.reason)
    if skipped is not None:
        skipped.append(item)


def check_fit(policy: Policy, episode: ReplayEpisode, label: str = 'policy') -> None:
    """Raise :class:`ReplayInputError` when ``policy`` cannot read ``episode`` (cameras,
    state or action dimension)."""
    where = str(episode.path) if episode.path is not None else episode.name
    cfg = policy.config
    d = episode.data
    cams = [c for c in policy_cameras(policy) if c not in d.images]
    if cams:
        raise ReplayInputError(
            f'{label} ({policy.name} policy) reads camera(s) {cams} but episode {where} has '
            f'{sorted(d.images)}')
    if d.state.ndim != 2 or d.state.shape[1] != cfg.state_dim:
        raise ReplayInputError(
            f'{label} ({policy.name} policy) expects state_dim {cfg.state_dim} but episode '
            f'{where} has states of shape {tuple(d.state.shape)}')
    if d.action.ndim != 2 or d.action.shape[1] != cfg.action_dim:
        raise ReplayInputError(
            f'{label} ({policy.name} policy) predicts action_dim {cfg.action_dim} but episode '
            f'{where} has actions of shape {tuple(d.action.shape)}')


# -- per-frame errors --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReplayConfig:
    """How episodes are replayed and how divergence is detected."""

    stride: int = 1
    """Compare every ``stride``-th step of each control mode."""
    batch_size: int = 64
    """Frames per forward pass."""
    horizon: int | None = None
    """Compare only the first ``horizon`` entries of each predicted chunk (None: all K)."""
    tolerance: float = 0.1
    """Divergence: a frame whose largest absolute error (rad; gripper units for grippers)
    over the compared chunk entries and the group's joints exceeds this..."""
    persist: int = 3
    """... on this many consecutive compared frames of the cell; ``first_divergence`` is the
    step of the first of them."""
    max_lag: int = 15
    """Timing check: per episode and joint group, the shift ``s`` in ``[-max_lag, max_lag]``
    steps for which the predicted next actions best match the logged actions ``s`` steps later
    (``s > 0``: the policy acts early, ``s < 0``: late; 0 disables the check)."""

    def __post_init__(self) -> None:
        if isinstance(self.max_lag, bool) or not isinstance(self.max_lag, int) \
                or self.max_lag < 0:
            raise ValueError(f'max_lag must be an int >= 0, got {self.max_lag!r}')
        for name in ('stride', 'batch_size', 'persist'):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f'{name} must be an int >= 1, got {v!r}')
        h = self.horizon
        if h is not None and (isinstance(h, bool) or not isinstance(h, int) or h < 1):
            raise ValueError(f'horizon must be None or an int >= 1, got {h!r}')
        if not (isinstance(self.tolerance, (int, float)) and math.isfinite(self.tolerance)
                and self.tolerance > 0):
            raise ValueError(f'tolerance must be a finite number > 0, got {self.tolerance!r}')


@dataclasses.dataclass(frozen=True)
class _Frames:
    """Per compared frame: step, mode, progress third, stage and per-joint errors."""

    steps: np.ndarray       # (F,) int
    human: np.ndarray       # (F,) bool
    third: np.ndarray       # (F,) int 0..2
    stage: np.ndarray       # (F,) object
    sq: np.ndarray          # (F, D) mean squared error over valid chunk entries
    ab: np.ndarray          # (F, D) mean absolute error over valid chunk entries
    mx: np.ndarray          # (F, D) max absolute error over valid chunk entries
    first: np.ndarray       # (F, D) the predicted action for the frame's own step

    def take(self, mask: np.ndarray) -> _Frames:
        return _Frames(*(getattr(self, f.name)[mask] for f in dataclasses.fields(self)))

    @staticmethod
    def concat(parts: Sequence[_Frames], d: int) -> _Frames:
        if not parts:
            e = np.zeros(0)
            z = np.zeros((0, d))
            return _Frames(e.astype(int), e.astype(bool), e.astype(int), e.astype(object),
                           z, z, z, z)
        return _Frames(*(np.concatenate([getattr(p, f.name) for p in parts])
                         for f in dataclasses.fields(_Frames)))


def _entry_errors(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(B, D) squared / absolute error means and absolute error max over valid entries."""
    err = (pred.to(torch.float32) - target).abs()          # (B, K, D)
    m = mask.to(torch.float32)[:, :, None]                 # (B, K, 1)
    count = m.sum(dim=1).clamp_min(1.0)                    # (B, 1)
    sq = (err.pow(2) * m).sum(dim=1) / count
    ab = (err * m).sum(dim=1) / count
    mx = (err * m).amax(dim=1)
    return sq.numpy(), ab.numpy(), mx.numpy()


def _replay_frames(
    predictors: Mapping[str, Callable[[Mapping[str, torch.Tensor]], torch.Tensor]],
    episode: ReplayEpisode,
    chunk_size: int,
    cameras: Sequence[str],
    config: ReplayConfig,
) -> dict[str, _Frames]:
    """Per-frame errors of every predictor on ``episode`` (both control modes)."""
    ep = episode.data
    t = ep.steps
    available = None if ep.image_frames is None or not cameras else set(ep.image_frames.tolist())
    out: dict[str, list[_Frames]] = {k: [] for k in predictors}
    for human in (True, False):
        labels = (ep.intervention == human).astype(np.float32)
        frames = np.flatnonzero(labels > 0)[:: config.stride]
        if available is not None:
            frames = np.array([f for f in frames if int(f) in available], dtype=int)
        for i in range(0, len(frames), config.batch_size):
            chunk = frames[i:i + config.batch_size]
            batch = build_batch({0: ep}, [(0, int(f)) for f in chunk], chunk_size,
                                cameras=cameras, labels={0: labels})
            mask = batch[MASK_KEY]
            if config.horizon is not None:
                mask = mask.clone()
                mask[:, config.horizon:] = False
            target = batch[ACTION_KEY].to(torch.float32)
            third = np.minimum((chunk * 3) // max(t, 1), 2)
            stage = (episode.stages[chunk] if episode.stages is not None
                     else np.full(len(chunk), '', dtype=object))
            for key, fn in predictors.items():
                pred = fn(batch)
                if tuple(pred.shape) != tuple(target.shape):
                    raise ReplayInputError(
                        f'{key} predicted chunks of shape {tuple(pred.shape)} for episode '
                        f'{episode.name}, expected {tuple(target.shape)}')
                sq, ab, mx = _entry_errors(pred, target, mask)
                out[key].append(_Frames(chunk.astype(int), np.full(len(chunk), human),
                                        third.astype(int), stage, sq, ab, mx,
                                        pred[:, 0].to(torch.float32).numpy()))
    d = ep.action.shape[1]
    res = {}
    for key, parts in out.items():
        fr = _Frames.concat(parts, d)
        res[key] = fr.take(np.argsort(fr.steps, kind='stable'))
    return res


def _policy_fn(policy: Policy) -> Callable[[Mapping[str, torch.Tensor]], torch.Tensor]:
    def fn(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            return policy(batch)
    return fn


def _hold_fn(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The hold predictor of evaluation.py: every chunk entry = the current joints."""
    b, k, d = batch[ACTION_KEY].shape
    return batch[STATE_KEY].to(torch.float32)[:, None, :d].expand(b, k, d)


# -- statistics --------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ErrorStats:
    """Errors of one predictor on one cell and joint group."""

    frames: int
    mse: float
    """Mean over frames of the squared error averaged over valid chunk entries and joints."""
    mae: float
    """The same with absolute errors."""
    max: float
    """Largest absolute error of any compared entry and joint."""
    first_divergence: int | None = None
    """Step where the error first stayed above the tolerance (None: never; per episode)."""
    diverged_episodes: int | None = None
    """Episodes of the cell that diverged (totals only)."""

    def to_dict(self) -> dict[str, Any]:
        d = {k: _num(v) for k, v in dataclasses.asdict(self).items()}
        if self.diverged_episodes is None:
            d.pop('diverged_episodes')
        return d


def _num(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def _first_run(flags: np.ndarray, persist: int) -> int | None:
    """Index of the first run of ``persist`` True values (all of them if fewer frames)."""
    n = len(flags)
    if n == 0:
        return None
    need = min(persist, n)
    run = 0
    for i, f in enumerate(flags):
        run = run + 1 if f else 0
        if run >= need:
            return i - need + 1
    return None


def _stats(fr: _Frames, cols: Sequence[int], config: ReplayConfig,
           divergence: bool = True) -> ErrorStats:
    n = len(fr.steps)
    if n == 0:
        return ErrorStats(0, math.nan, math.nan, math.nan)
    idx = list(cols)
    per_frame_max = fr.mx[:, idx].max(axis=1)
    first = None
    if divergence:
        i = _first_run(per_frame_max > config.tolerance, config.persist)
        first = None if i is None else int(fr.steps[i])
    return ErrorStats(n, float(fr.sq[:, idx].mean(axis=1).mean()),
                      float(fr.ab[:, idx].mean(axis=1).mean()), float(per_frame_max.max()),
                      first)


@dataclasses.dataclass(frozen=True)
class Regression:
    """A cell where the candidate is worse than the baseline by more than the margins."""

    episode: str
    """Episode name, or ``'*'`` for all episodes together."""
    mode: str
    segment: str
    group: str
    candidate_mse: float
    baseline_mse: float

    @property
    def ratio(self) -> float:
        b = self.baseline_mse
        return self.candidate_mse / b if b > 0 else math.inf

    def describe(self) -> str:
        where = 'all episodes' if self.episode == '*' else self.episode
        r = self.ratio
        times = f'{r:.2f}x' if math.isfinite(r) else 'inf x'
        return (f'{where} {self.mode}/{self.segment} {self.group}: mse '
                f'{self.candidate_mse:.3g} vs baseline {self.baseline_mse:.3g} ({times})')

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d['ratio'] = _num(self.ratio)
        return d


@dataclasses.dataclass(frozen=True)
class CellResult:
    """One (control mode, segment) cell of an episode or of all episodes together."""

    mode: str
    """``'all'``, ``'human'`` or ``'policy'``."""
    segment: str
    """``'all'``, ``'early'``, ``'middle'``, ``'late'`` or ``'stage:<name>'``."""
    frames: int
    candidate: dict[str, ErrorStats]
    """Per joint group (:data:`JOINT_GROUPS` keys)."""
    hold: dict[str, ErrorStats]
    """The hold predictor (repeat the current joints): how far standing still would be."""
    baseline: dict[str, ErrorStats] | None = None
    per_joint_mse: tuple[float, ...] = ()
    """The candidate's MSE per joint."""
    regressed: tuple[str, ...] = ()
    """Joint groups where the candidate regressed against the baseline."""

    @property
    def key(self) -> str:
        return f'{self.mode}/{self.segment}'

    @property
    def worst_joint(self) -> str | None:
        if not self.per_joint_mse or not all(math.isfinite(v) for v in self.per_joint_mse):
            return None
        i = int(np.argmax(self.per_joint_mse))
        robot = _robot_of_width(len(self.per_joint_mse))
        names = robot.joint_names if robot is not None else None
        return names[i] if names else f'joint{i}'

    @property
    def score(self) -> float:
        """``clip(1 - mse / hold_mse, 0, 1)`` over the whole action (as evaluation.py)."""
        m, h = self.candidate['all'].mse, self.hold['all'].mse
        if not (math.isfinite(m) and math.isfinite(h)):
            return math.nan
        return float(np.clip(1.0 - m / h, 0.0, 1.0)) if h > 0 else float(m == 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            'mode': self.mode, 'segment': self.segment, 'frames': self.frames,
            'candidate': {g: s.to_dict() for g, s in self.candidate.items()},
            'baseline': None if self.baseline is None
            else {g: s.to_dict() for g, s in self.baseline.items()},
            'hold_mse': _num(self.hold['all'].mse),
            'score': _num(self.score),
            'per_joint_mse': [_num(v) for v in self.per_joint_mse],
            'worst_joint': self.worst_joint,
            'regressed': list(self.regressed),
        }


@dataclasses.dataclass
class EpisodeResult:
    """The cells of one replayed episode."""

    name: str
    path: str | None
    steps: int
    outcome: str
    source: str
    model_version: int | None
    fps: float | None
    intervention_steps: int
    cells: list[CellResult]
    seconds: float = 0.0
    lag: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    """Timing check per joint group (see :attr:`ReplayConfig.max_lag`): ``{'steps': s,
    'mse': at s, 'mse_at_0': unshifted}`` for the candidate (and ``'baseline_steps'``)."""
    _frames: dict[str, _Frames] = dataclasses.field(default_factory=dict, repr=False)

    def cell(self, mode: str, segment: str = 'all') -> CellResult | None:
        for c in self.cells:
            if c.mode == mode and c.segment == segment:
                return c
        return None

    def seconds_at(self, step: int | None) -> float | None:
        if step is None or not self.fps:
            return None
        return step / self.fps

    def to_dict(self) -> dict[str, Any]:
        return {
            'name': self.name, 'path': self.path, 'steps': self.steps, 'outcome': self.outcome,
            'source': self.source, 'model_version': self.model_version, 'fps': self.fps,
            'intervention_steps': self.intervention_steps,
            'seconds': round(self.seconds, 3),
            'lag': {g: {k: _num(v) for k, v in d.items()} for g, d in self.lag.items()},
            'cells': [c.to_dict() for c in self.cells],
        }


def _segments(fr: _Frames) -> list[tuple[str, np.ndarray]]:
    segs = [('all', np.ones(len(fr.steps), dtype=bool))]
    segs += [(name, fr.third == i) for i, name in enumerate(PROGRESS_SEGMENTS)]
    names = [s for s in dict.fromkeys(fr.stage.tolist()) if s]
    segs += [(f'stage:{s}', fr.stage == s) for s in names]
    return segs


def _cells(frames: Mapping[str, _Frames], config: ReplayConfig, gate: ReplayGateConfig | None,
           groups: Mapping[str, tuple[int, ...]], divergence: bool,
           episodes_of: Callable[[str, str], list[_Frames]] | None = None) -> list[CellResult]:
    """All non-empty (mode, segment) cells from per-frame errors."""
    cand = frames['candidate']
    out = []
    for mode in MODES:
        mmask = (np.ones(len(cand.steps), dtype=bool) if mode == 'all'
                 else cand.human == (mode == 'human'))
        if not mmask.any():
            continue
        for segment, smask in _segments(cand.take(mmask)):
            if not smask.any():
                continue
            sel = np.flatnonzero(mmask)[smask]
            part = {k: fr.take(sel) for k, fr in frames.items()}
            c = {g: _stats(part['candidate'], cols, config, divergence)
                 for g, cols in groups.items()}
            if episodes_of is not None:   # totals: count the episodes that diverged
                for g, cols in groups.items():
                    n = sum(1 for fr in episodes_of(mode, segment)
                            if _stats(fr, cols, config).first_divergence is not None)
                    c[g] = dataclasses.replace(c[g], diverged_episodes=n)
            hold = {g: _stats(part['hold'], cols, config, False) for g, cols in groups.items()}
            base = None
            regressed: tuple[str, ...] = ()
            if 'baseline' in part:
                base = {g: _stats(part['baseline'], cols, config, divergence)
                        for g, cols in groups.items()}
                if gate is not None:
                    regressed = tuple(g for g in groups
                                      if gate.regresses(c[g].mse, base[g].mse))
            per_joint = tuple(float(v) for v in part['candidate'].sq.mean(axis=0))
            out.append(CellResult(mode, segment, int(len(sel)), c, hold, base, per_joint,
                                  regressed))
    return out


def _robot_of_width(d: int):
    """The robot layout used to name joints and groups of a ``d``-wide action: the default
    robot for 14, the 7-DoF sim for 16 (both dual-arm layouts: per arm its joints then its
    gripper), else None."""
    from scarls.robot import RobotDescriptionError, load_robot

    for name in ('sim_dual6', 'sim_dual7'):
        try:
            robot = load_robot(name)
        except RobotDescriptionError:
            continue
        if robot.num_joints == d:
            return robot
    return None


def _groups(d: int) -> dict[str, tuple[int, ...]]:
    if d == NUM_JOINTS:
        return dict(JOINT_GROUPS)
    robot = _robot_of_width(d)
    return robot.joint_groups() if robot is not None else {'all': tuple(range(d))}


# -- the report --------------------------------------------------------------------------------


@dataclasses.dataclass
class ReplayReport:
    """Everything a replay measured (see the module docstring)."""

    candidate: str
    baseline: str | None
    config: ReplayConfig
    episodes: list[EpisodeResult]
    total: list[CellResult]
    skipped: list[SkippedEpisode]
    seconds: float
    gate_config: ReplayGateConfig | None = None

    def total_cell(self, mode: str, segment: str = 'all') -> CellResult | None:
        for c in self.total:
            if c.mode == mode and c.segment == segment:
                return c
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            'candidate': self.candidate,
            'baseline': self.baseline,
            'config': dataclasses.asdict(self.config),
            'gate': None if self.gate_config is None else dataclasses.asdict(self.gate_config),
            'episodes': [e.to_dict() for e in self.episodes],
            'total': [c.to_dict() for c in self.total],
            'skipped': [s.to_dict() for s in self.skipped],
            'seconds': round(self.seconds, 3),
        }


def run_replay(
    candidate: Policy,
    episodes: Iterable[ReplayEpisode],
    *,
    baseline: Policy | None = None,
    config: ReplayConfig | None = None,
    gate: ReplayGateConfig | None = None,
    labels: tuple[str, str] = ('candidate', 'baseline'),
    skipped: Sequence[SkippedEpisode] = (),
    progress: Callable[[int, str], None] | None = None,
) -> ReplayReport:
    """Replay ``episodes`` through ``candidate`` (and ``baseline``) open loop.

    ``episodes`` may be a lazy iterable (e.g. :func:`iter_disk_episodes`); each is replayed and
    released. An episode the policies cannot read (:func:`check_fit`, missing frames, a failing
    forward pass) is skipped and listed in the report's ``skipped``, together with the items of
    ``skipped`` (e.g. the loader's list, read after the episodes were consumed). ``gate``
    supplies the regression margins that mark regressed cells (None: no cell is marked).
    ``labels`` name the two policies in messages (e.g. their checkpoint files).
    ``progress(done, name)`` is called after each episode. The policies are put in eval mode
    for the run and restored afterwards.
    """
    config = config or ReplayConfig()
    if baseline is not None and (baseline.chunk_size != candidate.chunk_size
                                 or baseline.action_dim != candidate.action_dim):
        _log.info('baseline chunk %d x %d differs from the candidate\'s %d x %d: each is '
                  'compared with the logged actions over the candidate\'s chunk',
                  baseline.chunk_size, baseline.action_dim, candidate.chunk_size,
                  candidate.action_dim)
    t0 = time.perf_counter()
    skip: list[SkippedEpisode] = []
    results: list[EpisodeResult] = []
    cameras = tuple(dict.fromkeys(policy_cameras(candidate) + (
        policy_cameras(baseline) if baseline is not None else ())))
    policies = {'candidate': candidate, **({'baseline': baseline} if baseline else {})}
    modes = {k: p.training for k, p in policies.items()}
    k = candidate.chunk_size
    predictors: dict[str, Callable] = {'candidate': _policy_fn(candidate), 'hold': _hold_fn}
    if baseline is not None:
        predictors['baseline'] = _baseline_fn(baseline, k)
    try:
        for p in policies.values():
            p.eval()
        for n, ep in enumerate(episodes, 1):
            e0 = time.perf_counter()
            try:
                check_fit(candidate, ep, labels[0])
                if baseline is not None:
                    check_fit(baseline, ep, labels[1])
                frames = _replay_frames(predictors, ep, k, cameras, config)
            except (ReplayInputError, KeyError, RuntimeError, ValueError) as exc:
                msg = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
                skip.append(SkippedEpisode(ep.name, msg,
                                           None if ep.path is None else str(ep.path)))
                _log.warning('episode %s skipped: %s', ep.name, msg)
                if progress is not None:
                    progress(n, ep.name)
                continue
            d = ep.data.action.shape[1]
            cells = _cells(frames, config, gate, _groups(d), True)
            lag = {}
            for g, cols in _groups(d).items():
                lag[g] = _lag(frames['candidate'], ep.data.action, cols, config.max_lag)
                if lag[g] and 'baseline' in frames:
                    b = _lag(frames['baseline'], ep.data.action, cols, config.max_lag)
                    lag[g]['baseline_steps'] = b.get('steps')
            results.append(EpisodeResult(
                ep.name, None if ep.path is None else str(ep.path), ep.steps, ep.data.outcome,
                ep.data.source, ep.model_version, ep.fps, int(ep.data.intervention.sum()),
                cells, time.perf_counter() - e0, {g: v for g, v in lag.items() if v},
                frames))
            if progress is not None:
                progress(n, ep.name)
    finally:
        for key, p in policies.items():
            p.train(modes[key])
    total = _totals(results, config, gate)
    skip = sorted([*skipped, *skip], key=lambda item: _natural(item.name))
    return ReplayReport(labels[0], labels[1] if baseline is not None else None, config,
                        results, total, skip, time.perf_counter() - t0, gate)


def _natural(name: str) -> list[Any]:
    return [int(p) if p.isdigit() else p for p in re.split(r'(\d+)', name)]


def _lag(fr: _Frames, action: np.ndarray, cols: Sequence[int], max_lag: int
         ) -> dict[str, Any]:
    """Shift of the logged actions that best explains the predicted next actions."""
    if max_lag == 0 or len(fr.steps) < 2:
        return {}
    idx = list(cols)
    t = action.shape[0]
    best: tuple[float, int] | None = None
    at0 = math.nan
    for s in sorted(range(-max_lag, max_lag + 1), key=abs):   # ties go to the smaller shift
        ok = (fr.steps + s >= 0) & (fr.steps + s < t)
        if ok.sum() < max(2, len(fr.steps) // 2):
            continue   # too few frames overlap at this shift for a fair comparison
        err = fr.first[ok][:, idx] - action[fr.steps[ok] + s][:, idx]
        mse = float(np.mean(err ** 2))
        if s == 0:
            at0 = mse
        if best is None or mse < best[0] - 1e-12:
            best = (mse, s)
    if best is None:
        return {}
    return {'steps': best[1], 'mse': best[0], 'mse_at_0': at0}


def _baseline_fn(baseline: Policy, k: int) -> Callable[[Mapping[str, torch.Tensor]],
                                                       torch.Tensor]:
    """The baseline's chunk cut or padded (last entry repeated) to the candidate's length."""
    fn = _policy_fn(baseline)

    def run(batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = fn(batch)
        if out.shape[1] >= k:
            return out[:, :k]
        pad = out[:, -1:].expand(out.shape[0], k - out.shape[1], out.shape[2])
        return torch.cat([out, pad], dim=1)
    return run


def _totals(results: Sequence[EpisodeResult], config: ReplayConfig,
            gate: ReplayGateConfig | None) -> list[CellResult]:
    if not results:
        return []
    d = results[0]._frames['candidate'].sq.shape[1]
    same = [r for r in results if r._frames['candidate'].sq.shape[1] == d]
    keys = same[0]._frames.keys()
    frames = {k: _Frames.concat([r._frames[k] for r in same], d) for k in keys}

    def episodes_of(mode: str, segment: str) -> list[_Frames]:
        out = []
        for r in same:
            fr = r._frames['candidate']
            m = (np.ones(len(fr.steps), dtype=bool) if mode == 'all'
                 else fr.human == (mode == 'human'))
            sub = fr.take(m)
            for name, smask in _segments(sub):
                if name == segment and smask.any():
                    out.append(sub.take(smask))
        return out

    return _cells(frames, config, gate, _groups(d), False, episodes_of)


# -- the gate ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ReplayGateConfig:
    """When a candidate fails the replay check."""

    rel_margin: float = 0.20
    """A cell regresses when candidate MSE > baseline MSE * (1 + rel_margin) + abs_margin."""
    abs_margin: float = 5e-4
    """(rad^2; RMSE about 0.02 rad) keeps small cells and near-zero baselines from flagging
    the differences two equally good models show."""
    max_mse: float | None = None
    """Absolute limit on the candidate's MSE over all episodes in the gated modes (None: no
    limit)."""
    gate_modes: tuple[str, ...] = ('human',)
    """Control modes whose cells are judged (``'policy'`` compares with what an older model
    did, which a better candidate need not repeat)."""
    max_regressed_share: float = 0.25
    """Reject when more than this share of the episodes regress on their gated mode (whole
    episode, whole action)."""
    min_frames: int = 1
    """Reject a verdict drawn from fewer compared frames in the gated modes."""
    allow_skipped: bool = True
    """False: any episode that could not be checked rejects the candidate."""

    def __post_init__(self) -> None:
        for name in ('rel_margin', 'abs_margin'):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (
                    math.isfinite(v) and v >= 0):
                raise ValueError(f'{name} must be a finite number >= 0, got {v!r}')
        m = self.max_mse
        if m is not None and (isinstance(m, bool) or not isinstance(m, (int, float))
                              or not m > 0):
            raise ValueError(f'max_mse must be None or a number > 0, got {m!r}')
        modes = tuple(self.gate_modes)
        if not modes or any(mode not in MODES for mode in modes):
            raise ValueError(f'gate_modes must be a non-empty subset of {MODES}, got {modes!r}')
        object.__setattr__(self, 'gate_modes', modes)
        s = self.max_regressed_share
        if isinstance(s, bool) or not isinstance(s, (int, float)) or not 0 <= s <= 1:
            raise ValueError(f'max_regressed_share must be in [0, 1], got {s!r}')
        if isinstance(self.min_frames, bool) or not isinstance(self.min_frames, int) \
                or self.min_frames < 1:
            raise ValueError(f'min_frames must be an int >= 1, got {self.min_frames!r}')

    def regresses(self, candidate_mse: float, baseline_mse: float) -> bool:
        """Whether ``candidate_mse`` is worse than ``baseline_mse`` beyond the margins."""
        if not math.isfinite(candidate_mse):
            return True
        if not math.isfinite(baseline_mse):
            return False
        return candidate_mse > baseline_mse * (1.0 + self.rel_margin) + self.abs_margin


@dataclasses.dataclass(frozen=True)
class ReplayDecision:
    """The replay check's verdict on a candidate."""

    approved: bool
    reason: str
    regressions: tuple[Regression, ...]
    """Every regressed cell in the gated modes: all episodes together (``episode='*'``)
    first, then per episode."""
    report: ReplayReport

    @property
    def regressed_episodes(self) -> list[str]:
        return sorted({r.episode for r in self.regressions if r.episode != '*'})

    def to_dict(self) -> dict[str, Any]:
        return {'approved': self.approved, 'reason': self.reason,
                'regressions': [r.to_dict() for r in self.regressions],
                'regressed_episodes': self.regressed_episodes}


class ReplayGate:
    """Replay episodes through a candidate (and a baseline) and decide whether it may deploy.

    ``check(candidate, episodes, baseline=...)`` runs :func:`run_replay` and :meth:`decide`.
    The rules, in order: reject when no episode could be checked, when an episode was skipped
    and ``allow_skipped`` is False, when the gated modes hold fewer than ``min_frames`` compared
    frames, when the candidate's error is not finite or above ``max_mse``, and - with a
    baseline - when any cell of all episodes together (gated mode x segment x joint group)
    regresses, or more than ``max_regressed_share`` of the episodes regress. Otherwise approve.
    """

    def __init__(self, config: ReplayGateConfig | None = None,
                 replay: ReplayConfig | None = None) -> None:
        self.config = config or ReplayGateConfig()
        self.replay = replay or ReplayConfig()

    def check(
        self,
        candidate: Policy,
        episodes: Iterable[ReplayEpisode],
        *,
        baseline: Policy | None = None,
        labels: tuple[str, str] = ('candidate', 'baseline'),
        skipped: Sequence[SkippedEpisode] = (),
        progress: Callable[[int, str], None] | None = None,
    ) -> ReplayDecision:
        """Replay and decide (see the class docstring)."""
        report = run_replay(candidate, episodes, baseline=baseline, config=self.replay,
                            gate=self.config, labels=labels, skipped=skipped,
                            progress=progress)
        return self.decide(report)

    def decide(self, report: ReplayReport) -> ReplayDecision:
        """The verdict on an existing report (its regressed cells are recomputed with this
        gate's margins)."""
        cfg = self.config
        regs: list[Regression] = []
        gated_total = [c for c in report.total if c.mode in cfg.gate_modes]
        if report.baseline is not None:
            for c in gated_total:
                for g, s in c.candidate.items():
                    b = c.baseline[g] if c.baseline else None
                    if b is not None and cfg.regresses(s.mse, b.mse):
                        regs.append(Regression('*', c.mode, c.segment, g, s.mse, b.mse))
            for e in report.episodes:
                for c in e.cells:
                    if c.mode not in cfg.gate_modes or c.baseline is None:
                        continue
                    for g, s in c.candidate.items():
                        if cfg.regresses(s.mse, c.baseline[g].mse):
                            regs.append(Regression(e.name, c.mode, c.segment, g, s.mse,
                                                   c.baseline[g].mse))

        def done(ok: bool, reason: str) -> ReplayDecision:
            return ReplayDecision(ok, reason, tuple(regs), report)

        if not report.episodes:
            why = '; '.join(f'{s.name}: {s.reason}' for s in report.skipped[:3])
            return done(False, 'no episode could be checked' + (f' ({why})' if why else ''))
        if report.skipped and not cfg.allow_skipped:
            return done(False, f'{len(report.skipped)} episode(s) could not be checked: '
                        + '; '.join(s.name for s in report.skipped[:5]))
        frames = sum(c.frames for c in gated_total if c.segment == 'all')
        modes = '+'.join(cfg.gate_modes)
        if frames < cfg.min_frames:
            return done(False, f'only {frames} compared frames in mode {modes} (need '
                        f'{cfg.min_frames})')
        main = [c for c in gated_total if c.segment == 'all']
        for c in main:
            m = c.candidate['all'].mse
            if not math.isfinite(m):
                return done(False, f'candidate error on {c.mode} steps is not finite')
            if cfg.max_mse is not None and m > cfg.max_mse:
                return done(False, f'candidate mse {m:.4g} on {c.mode} steps is above the '
                            f'limit {cfg.max_mse:.4g}')
        n_eps = len(report.episodes)
        if report.baseline is not None:
            total_regs = [r for r in regs if r.episode == '*']
            if total_regs:
                worst = sorted(total_regs, key=lambda r: -r.ratio)[:3]
                return done(False, 'candidate is worse than the baseline: '
                            + '; '.join(r.describe() for r in worst)
                            + (f' (+{len(total_regs) - 3} more cells)'
                               if len(total_regs) > 3 else ''))
            bad = sorted({r.episode for r in regs if r.episode != '*'
                          and r.segment == 'all' and r.group == 'all'})
            if len(bad) > cfg.max_regressed_share * n_eps:
                return done(False, f'candidate is worse than the baseline on {len(bad)} of '
                            f'{n_eps} episodes (more than {cfg.max_regressed_share:.0%}): '
                            + ', '.join(bad[:5]) + (' ...' if len(bad) > 5 else ''))
        summary = ', '.join(f'{c.mode} mse {c.candidate["all"].mse:.4g}'
                            + (f' (baseline {c.baseline["all"].mse:.4g})' if c.baseline else '')
                            for c in main)
        what = ('not worse than the baseline beyond the margins' if report.baseline is not None
                else 'no baseline to compare with')
        skipped = f'; {len(report.skipped)} episode(s) skipped' if report.skipped else ''
        return done(True, f'{n_eps} episode(s), {frames} frames: {summary}; {what}{skipped}')
