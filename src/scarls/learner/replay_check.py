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

Within each mode the steps are split by progress (``'early'``/``'middle'``/``'late'`` thirds of
the episode) and, when the recording names them, by task stage (``'stage:<name>'``; see
:func:`~scarls.learner.replay_episodes.stage_labels`). Every cell is measured for the whole
action and per joint group (:data:`JOINT_GROUPS`: left arm, right arm, grippers): mean squared
error (rad^2; grippers in their normalised 0..1 unit), mean absolute error, maximum absolute
error, and the first step where the error exceeds a tolerance (``first_divergence``). The
per-frame error is averaged over the valid chunk entries first, then over frames, as in
:func:`scarls.learner.evaluation.evaluate_open_loop`, so the ``('human', 'all')`` MSE over the
whole action equals the learner's open-loop metric on the same episodes and stride.

With a baseline policy (e.g. the deployed checkpoint) the same batches also go through the
baseline, and a cell *regresses* when the candidate's MSE exceeds the baseline's by more than
a relative and an absolute margin (:class:`ReplayGateConfig`).
:class:`scarls.learner.replay_gate.ReplayGate` turns a :class:`ReplayReport` into a
:class:`~scarls.learner.replay_gate.ReplayDecision` (approved, reason, the regressions), usable
before a deploy.

Episodes are :class:`~scarls.learner.replay_episodes.ReplayEpisode` objects (an
:class:`~scarls.learner.trainer.EpisodeData` plus a name and optional stage labels), see
:mod:`scarls.learner.replay_episodes`.
Pure logic: no ROS.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from scarls.learner.replay_episodes import (
    ReplayEpisode,
    ReplayInputError,
    SkippedEpisode,
    check_fit,
)
from scarls.learner.rollout import policy_cameras
from scarls.learner.trainer import MASK_KEY, build_batch
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
    'CellResult',
    'EpisodeResult',
    'ErrorStats',
    'Regression',
    'ReplayConfig',
    'ReplayGateConfig',
    'ReplayReport',
    'run_replay',
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


# -- the regression margins (the gate itself: scarls.learner.replay_gate) -----------------


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
