"""Training a policy on chunks of recorded actions, with padding and non-labels masked out.

* :class:`EpisodeData` - one episode in memory (from an :class:`~scarls.episodes.EpisodeReader`
  or from :class:`~scarls.episodes.StepRecord` lists), optionally keeping images only for the
  frames that can be drawn.
* :func:`build_batch` - ``(episode, frame)`` samples -> a batch with the item keys an episode
  dataset yields: ``'state'`` (B, 14), ``'image.<cam>'`` (B, H, W, 3) uint8, ``'action'``
  (B, K, D) padded chunk of the recorded actions from the frame on, ``'action_mask'`` (B, K)
  (False for padding and, given label weights, for targets on steps that are not labels).
* :func:`masked_chunk_loss` - mean squared error over the unmasked chunk entries.
* :class:`Trainer` - AdamW + gradient clipping over ``batch_fn() -> batch``, on the device of
  its config (``TrainerConfig.device``: the policy moves there, each batch follows through
  pinned memory) with mixed precision where it is safe (``TrainerConfig.precision``).
* :func:`fit_normalization` - state / action-delta statistics into the policy's buffers.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence

import numpy as np
import torch

from scarls.common.device import (
    autocast,
    make_grad_scaler,
    module_device,
    place_module,
    resolve_device,
    resolve_precision,
    to_device,
)
from scarls.episodes import EpisodeReader, StepRecord
from scarls.episodes.errors import SchemaError
from scarls.learner.config import LearnerError, TrainerConfig
from scarls.policies import ACTION_KEY, STATE_KEY, Policy, image_key

__all__ = [
    'MASK_KEY',
    'EpisodeData',
    'StepResult',
    'TrainStats',
    'Trainer',
    'build_batch',
    'chunk_targets',
    'fit_normalization',
    'masked_chunk_loss',
]

_log = logging.getLogger(__name__)

#: Batch key of the (B, K) bool mask of valid chunk entries.
MASK_KEY = 'action_mask'


@dataclasses.dataclass
class EpisodeData:
    """One episode in memory.

    ``images[cam]`` holds only the frames listed in ``image_frames`` (sorted step indices;
    None = all frames), so episodes whose policy steps are never drawn stay small.
    """

    task: str
    """Task name."""
    outcome: str
    """``'success'``, ``'fail'`` or ``'aborted'``."""
    source: str
    """``'offline'`` (demonstration) or ``'online'`` (recorded with the policy in the loop)."""
    state: np.ndarray
    """(T, state_dim) float32 joint positions."""
    action: np.ndarray
    """(T, action_dim) float32 executed joint targets."""
    intervention: np.ndarray
    """(T,) bool: a human (the expert) was in control."""
    images: dict[str, np.ndarray]
    """camera -> (N, H, W, 3) uint8 frames (N = len(image_frames) or T)."""
    image_frames: np.ndarray | None = None
    """Sorted steps whose frames are kept in ``images`` (None: all)."""
    executed: np.ndarray | None = None
    """(T,) bool: the robot executed the step's action (the episode's ``safety`` array: not
    held, e-stopped, faulted, resetting or clamped heavily); None: every step was executed.
    A step that was not executed is never a training sample nor a target (sample weight 0)."""

    def __post_init__(self) -> None:
        t = len(self.state)
        if self.action.shape[0] != t or self.intervention.shape != (t,):
            raise LearnerError(
                f'episode arrays disagree on length: state {self.state.shape}, action '
                f'{self.action.shape}, intervention {self.intervention.shape}'
            )
        if self.executed is not None and np.shape(self.executed) != (t,):
            raise LearnerError(f'executed must be a (T,) = ({t},) bool mask, got '
                               f'{np.shape(self.executed)}')
        n = t if self.image_frames is None else len(self.image_frames)
        for cam, frames in self.images.items():
            if frames.shape[0] != n or frames.dtype != np.uint8 or frames.ndim != 4:
                raise LearnerError(
                    f'images[{cam!r}] must be ({n}, H, W, 3) uint8, got '
                    f'{frames.dtype} {frames.shape}'
                )

    @property
    def steps(self) -> int:
        """Number of steps T."""
        return len(self.state)

    def sample_weights(self, weights: np.ndarray) -> np.ndarray:
        """``weights`` (T,) with the steps the robot did not execute set to 0."""
        if self.executed is None:
            return weights
        return np.where(np.asarray(self.executed, dtype=bool), weights, 0.0).astype(
            np.asarray(weights).dtype)

    def frame(self, camera: str, step: int) -> np.ndarray:
        """The (H, W, 3) frame of ``camera`` at ``step`` (KeyError if not kept)."""
        if self.image_frames is None:
            return self.images[camera][step]
        i = int(np.searchsorted(self.image_frames, step))
        if i >= len(self.image_frames) or self.image_frames[i] != step:
            raise KeyError(f'frame {step} of camera {camera!r} was not kept in memory')
        return self.images[camera][i]

    @staticmethod
    def _keep(t: int, keep: np.ndarray | None) -> np.ndarray | None:
        if keep is None:
            return None
        keep = np.asarray(keep, dtype=bool)
        if keep.shape != (t,):
            raise LearnerError(f'keep must be a (T,) = ({t},) bool mask, got {keep.shape}')
        return np.flatnonzero(keep)

    @classmethod
    def from_records(
        cls,
        records: Sequence[StepRecord],
        *,
        task: str,
        outcome: str,
        source: str,
        cameras: Sequence[str] | None = None,
        keep: np.ndarray | None = None,
    ) -> EpisodeData:
        """From recorded ticks; ``keep`` (T,) bool selects the frames whose images are kept."""
        if not records:
            raise LearnerError('an episode needs at least one step')
        t = len(records)
        frames = cls._keep(t, keep)
        rows = range(t) if frames is None else frames
        cams = tuple(records[0].images) if cameras is None else tuple(cameras)
        images = {
            c: np.stack([records[int(i)].images[c] for i in rows])
            if len(rows)
            else np.zeros((0, *records[0].images[c].shape), np.uint8)
            for c in cams
        }
        return cls(
            task=task,
            outcome=outcome,
            source=source,
            state=np.stack([np.asarray(r.state, np.float32) for r in records]),
            action=np.stack([np.asarray(r.action, np.float32) for r in records]),
            intervention=np.array([bool(r.intervention) for r in records]),
            images=images,
            image_frames=frames,
        )

    @classmethod
    def from_reader(
        cls,
        reader: EpisodeReader,
        *,
        source: str,
        cameras: Sequence[str] | None = None,
        keep: np.ndarray | None = None,
    ) -> EpisodeData:
        """Load a stored episode (all low-dim arrays; images of ``keep``-ed frames only).

        Raises:
            SchemaError: a chunk cannot be decoded (the codec's own error, whatever its type -
                some decompressors raise SystemError on damaged input - named and wrapped).
        """
        try:
            return cls._load(reader, source=source, cameras=cameras, keep=keep)
        except SchemaError:
            raise
        except Exception as exc:  # noqa: BLE001 - codec errors have no common type
            raise SchemaError(f'{reader.path}: cannot decode the episode: '
                              f'{type(exc).__name__}: {exc}') from exc

    @classmethod
    def _load(cls, reader: EpisodeReader, *, source: str, cameras: Sequence[str] | None,
              keep: np.ndarray | None) -> EpisodeData:
        t = reader.steps
        frames = cls._keep(t, keep)
        cams = reader.cameras if cameras is None else list(cameras)
        images = {}
        for c in cams:
            arr = reader.images(c)
            if frames is None:
                images[c] = np.asarray(arr[:])
            else:
                images[c] = np.stack([np.asarray(arr[int(i)]) for i in frames]) if len(
                    frames
                ) else np.zeros((0, *arr.shape[1:]), np.uint8)
        return cls(
            task=reader.meta.task,
            outcome=reader.meta.outcome,
            source=source,
            state=np.asarray(reader.state[:], dtype=np.float32),
            action=np.asarray(reader.action[:], dtype=np.float32),
            intervention=np.asarray(reader.intervention[:], dtype=bool),
            images=images,
            image_frames=frames,
            executed=None if reader.safety is None else reader.executed(),
        )


def chunk_targets(
    action: np.ndarray, frame: int, chunk_size: int, labels: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(K, D)`` actions from ``frame`` on (padded with the last action) and their mask.

    ``labels`` (T,) weights: entries on steps with weight 0 are masked (not expert labels).
    """
    t = action.shape[0]
    idx = np.arange(frame, frame + chunk_size)
    valid = idx < t
    chunk = action[np.minimum(idx, t - 1)]
    if labels is not None:
        valid &= np.asarray(labels)[np.minimum(idx, t - 1)] > 0
    return chunk, valid


def build_batch(
    episodes: Mapping[Hashable, EpisodeData],
    samples: Iterable[tuple[Hashable, int]],
    chunk_size: int,
    *,
    cameras: Sequence[str] = (),
    labels: Mapping[Hashable, np.ndarray] | None = None,
) -> dict[str, torch.Tensor]:
    """Stack ``(episode_key, frame)`` samples into a training batch (see the module docstring).

    ``labels`` maps episode keys to per-step label weights: chunk entries on steps with weight
    0 are masked (HG-DAgger: actions the policy executed are not targets).
    """
    states, actions, masks = [], [], []
    frames: dict[str, list[np.ndarray]] = {c: [] for c in cameras}
    for key, frame in samples:
        ep = episodes[key]
        chunk, valid = chunk_targets(
            ep.action, frame, chunk_size, None if labels is None else labels.get(key)
        )
        states.append(ep.state[frame])
        actions.append(chunk)
        masks.append(valid)
        for c in cameras:
            frames[c].append(ep.frame(c, frame))
    if not states:
        raise LearnerError('cannot build an empty batch')
    batch = {
        STATE_KEY: torch.from_numpy(np.stack(states).astype(np.float32)),
        ACTION_KEY: torch.from_numpy(np.stack(actions).astype(np.float32)),
        MASK_KEY: torch.from_numpy(np.stack(masks)),
    }
    for c in cameras:
        batch[image_key(c)] = torch.from_numpy(np.stack(frames[c]))
    return batch


def masked_chunk_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    scale: torch.Tensor | None = None,
    kind: str = 'mse',
    huber_delta: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(loss, per_sample)``: per-entry loss averaged over joints and unmasked chunk entries.

    ``pred``/``target`` (B, K, D); ``mask`` (B, K) bool (None = all valid); ``scale`` (K, D)
    divides the error per entry (normalised loss); ``kind`` is ``'mse'`` (squared error),
    ``'l1'`` (absolute error) or ``'huber'`` (quadratic below ``huber_delta``, linear above).
    Samples without a valid entry get loss 0 and do not count in the batch mean.
    """
    if pred.shape != target.shape or pred.ndim != 3:
        raise ValueError(f'pred {tuple(pred.shape)} and target {tuple(target.shape)} must be '
                         'equal (B, K, D) shapes')
    err = pred - target.to(pred.dtype)
    if scale is not None:
        err = err / scale.to(err.dtype)
    if kind == 'mse':
        elem = err.pow(2)
    elif kind == 'l1':
        elem = err.abs()
    elif kind == 'huber':
        elem = torch.nn.functional.huber_loss(
            err, torch.zeros_like(err), reduction='none', delta=huber_delta
        )
    else:
        raise ValueError(f"loss kind must be 'mse', 'l1' or 'huber', got {kind!r}")
    per_entry = elem.mean(dim=2)  # (B, K)
    if mask is None:
        m = torch.ones_like(per_entry)
    else:
        if tuple(mask.shape) != tuple(per_entry.shape):
            raise ValueError(f'mask must be (B, K) = {tuple(per_entry.shape)}, got '
                             f'{tuple(mask.shape)}')
        m = mask.to(per_entry.dtype)
    counts = m.sum(dim=1)
    per_sample = (per_entry * m).sum(dim=1) / counts.clamp_min(1.0)
    has = counts > 0
    loss = per_sample[has].mean() if bool(has.any()) else per_sample.sum() * 0.0
    return loss, per_sample.detach()


@dataclasses.dataclass(frozen=True)
class StepResult:
    """One gradient step."""

    loss: float
    """Batch loss."""
    per_sample: np.ndarray
    """(B,) per-sample losses (e.g. for per-buffer loss windows)."""
    grad_norm: float
    """Global gradient norm before clipping."""


@dataclasses.dataclass(frozen=True)
class TrainStats:
    """Summary of :meth:`Trainer.train_steps`."""

    steps: int
    """Gradient steps taken."""
    loss_mean: float
    """Mean batch loss over the steps."""
    loss_last: float
    """Loss of the last step."""
    seconds: float
    """Wall-clock time (batch building included)."""

    @property
    def steps_per_second(self) -> float:
        """Throughput."""
        return self.steps / self.seconds if self.seconds > 0 else 0.0


class Trainer:
    """AdamW on ``masked_chunk_loss(policy(batch), batch['action'], batch['action_mask'])``.

    The policy is moved to ``config.device`` (:func:`scarls.common.device.place_module`: it keeps
    accepting CPU batches elsewhere, e.g. in the open-loop evaluation) and every training batch
    is sent there (:func:`scarls.common.device.to_device`). The forward pass uses autocast when
    ``config.precision`` resolves to bf16/fp16 (CUDA by default; never on the CPU unless asked
    for); fp16 scales the loss with a :class:`torch.amp.GradScaler`. The loss itself is always
    computed in fp32. On the CPU in fp32 every step is exactly what it was without a device.
    Raises :class:`scarls.common.device.DeviceError` for a device or precision this machine lacks.
    """

    def __init__(self, policy: Policy, config: TrainerConfig | None = None) -> None:
        self.config = config if config is not None else TrainerConfig()
        cfg = self.config
        self.device = resolve_device(cfg.device)
        """Where the policy trains."""
        self.amp_dtype = resolve_precision(cfg.precision, self.device)
        """Autocast dtype of the forward pass (None: fp32)."""
        self.scaler = make_grad_scaler(self.device, self.amp_dtype)
        """Loss scaler of fp16 training (None otherwise)."""
        self.policy = place_module(policy, self.device)
        if cfg.num_threads:
            torch.set_num_threads(cfg.num_threads)
        self.optimizer = torch.optim.AdamW(
            [p for p in policy.parameters() if p.requires_grad],
            lr=cfg.lr,
            betas=cfg.betas,
            weight_decay=cfg.weight_decay,
        )
        self.total_steps = 0
        self.ema_policy: Policy | None = None
        if cfg.ema_decay > 0:
            self.ema_policy = copy.deepcopy(policy)
            self.ema_policy.requires_grad_(False)
            self.ema_policy.eval()

    def deployable(self) -> Policy:
        """The policy to evaluate and deploy: the weight average if enabled, else the policy."""
        return self.ema_policy if self.ema_policy is not None else self.policy

    def sync_ema(self) -> None:
        """Reset the weight average to the current weights (e.g. after loading a checkpoint or
        changing the normalisation buffers)."""
        if self.ema_policy is not None:
            self.ema_policy.load_state_dict(self.policy.state_dict())

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema_policy is None:
            return
        # warm-up: average over the steps taken so far while fewer than 1 / (1 - decay)
        decay = min(self.config.ema_decay, self.total_steps / (self.total_steps + 10.0))
        for avg, cur in zip(self.ema_policy.parameters(), self.policy.parameters(), strict=True):
            avg.lerp_(cur, 1.0 - decay)
        for avg, cur in zip(self.ema_policy.buffers(), self.policy.buffers(), strict=True):
            avg.copy_(cur)

    def _scale(self) -> torch.Tensor | None:
        if not self.config.normalize_loss:
            return None
        std = getattr(self.policy, 'action_std', None)
        return std if isinstance(std, torch.Tensor) else None

    def set_lr(self, lr: float) -> None:
        """Change the learning rate of every parameter group."""
        for group in self.optimizer.param_groups:
            group['lr'] = float(lr)

    def train_step(self, batch: Mapping[str, torch.Tensor]) -> StepResult:
        """One AdamW step on ``batch`` (moved to the trainer's device); raises
        :class:`LearnerError` on a non-finite loss."""
        self.policy.train()
        batch = to_device(batch, self.device)
        with autocast(self.device, self.amp_dtype):
            pred = self.policy(batch)
        loss, per_sample = masked_chunk_loss(
            pred.float(),
            batch[ACTION_KEY],
            batch.get(MASK_KEY),
            self._scale(),
            self.config.loss,
            self.config.huber_delta,
        )
        if not torch.isfinite(loss):
            raise LearnerError(f'non-finite training loss {float(loss.detach())} at step '
                               f'{self.total_steps}; lower the learning rate')
        self.optimizer.zero_grad(set_to_none=True)
        clip = self.config.grad_clip if self.config.grad_clip > 0 else float('inf')
        if self.scaler is None:
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), clip)
            self.optimizer.step()
        else:  # fp16: scaled loss; a step with inf/NaN gradients is skipped by the scaler
            self.scaler.scale(loss).backward()
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(self.policy.parameters(), clip)
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.total_steps += 1
        self._update_ema()
        return StepResult(float(loss.detach()), per_sample.cpu().numpy(), float(norm))

    def train_steps(
        self,
        batch_fn: Callable[[], Mapping[str, torch.Tensor]],
        n: int,
        *,
        on_step: Callable[[Mapping[str, torch.Tensor], StepResult], None] | None = None,
    ) -> TrainStats:
        """``n`` steps on batches from ``batch_fn()``; ``on_step(batch, result)`` after each."""
        if n < 0:
            raise ValueError(f'n must be >= 0, got {n}')
        t0 = time.perf_counter()
        losses: list[float] = []
        for _ in range(n):
            batch = batch_fn()
            result = self.train_step(batch)
            losses.append(result.loss)
            if on_step is not None:
                on_step(batch, result)
        seconds = time.perf_counter() - t0
        stats = TrainStats(
            steps=n,
            loss_mean=float(np.mean(losses)) if losses else float('nan'),
            loss_last=losses[-1] if losses else float('nan'),
            seconds=seconds,
        )
        _log.debug('trained %d steps in %.1f s, loss %.4g', n, seconds, stats.loss_mean)
        return stats


def fit_normalization(
    policy: Policy,
    episodes: Iterable[EpisodeData],
    *,
    labels: Mapping[int, np.ndarray] | None = None,
    min_state_std: float = 0.05,
    min_action_std: float = 0.005,
) -> dict[str, np.ndarray]:
    """Set the policy's normalisation from episode statistics; return what was set.

    Calls ``policy.set_normalization(mean, std)`` (state, over all steps) and, if the policy
    has it, ``policy.set_action_normalization(mean, std)`` with the (K, D) statistics of the
    chunk deltas ``action[t + k] - ref[t]`` over valid entries, where ``ref`` is
    ``policy.delta_reference(state)`` if the policy defines it, else the state. ``labels`` maps the
    position of an episode in ``episodes`` to its label weights (only labelled steps count
    for the deltas). Standard deviations are floored at ``min_state_std`` /
    ``min_action_std`` (rad): a joint the demonstrations never move must not turn a small
    deviation into a huge normalised input or loss.
    """
    eps = list(episodes)
    if not eps:
        raise LearnerError('fit_normalization needs at least one episode')
    states = np.concatenate([e.state for e in eps]).astype(np.float64)
    out: dict[str, np.ndarray] = {
        'state_mean': states.mean(0),
        'state_std': np.maximum(states.std(0), min_state_std),
    }
    if hasattr(policy, 'state_mean'):
        policy.set_normalization(
            torch.as_tensor(out['state_mean'], dtype=torch.float32),
            torch.as_tensor(out['state_std'], dtype=torch.float32),
        )
    if hasattr(policy, 'set_action_normalization'):
        k, d = policy.chunk_size, policy.action_dim
        total = np.zeros((k, d))
        total_sq = np.zeros((k, d))
        count = np.zeros((k, 1))
        for i, e in enumerate(eps):
            lab = None if labels is None else labels.get(i)
            t = e.steps
            ref = e.state[:, :d].astype(np.float64)
            if hasattr(policy, 'delta_reference'):
                with torch.no_grad():
                    state = torch.from_numpy(e.state).to(module_device(policy))
                    ref = policy.delta_reference(state).double().cpu().numpy()
            for j in range(k):
                n = t - j
                if n <= 0:
                    continue
                delta = e.action[j:, :d].astype(np.float64) - ref[:n]
                ok = np.ones(n, dtype=bool)
                if lab is not None:
                    ok = (lab[:n] > 0) & (lab[j:] > 0)
                delta = delta[ok]
                total[j] += delta.sum(0)
                total_sq[j] += (delta**2).sum(0)
                count[j] += len(delta)
        count = np.maximum(count, 1.0)
        mean = total / count
        std = np.sqrt(np.maximum(total_sq / count - mean**2, 0.0))
        out['action_mean'] = mean
        out['action_std'] = np.maximum(std, min_action_std)
        policy.set_action_normalization(
            torch.as_tensor(out['action_mean'], dtype=torch.float32),
            torch.as_tensor(out['action_std'], dtype=torch.float32),
        )
    return out
