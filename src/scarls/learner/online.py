"""The online learner of one ECU (Algorithm 2, Model-Learner): pure logic, no ROS.

`OnlineLearner` keeps the training data in memory (offline demonstrations + the ECU's online
episodes, loaded from the Zarr episodes on disk as they appear), trains the current policy in
rounds, evaluates each candidate open-loop on held-out expert demonstrations, gates it
(threshold and not worse than the deployed one) and publishes it to the checkpoint registry
(approved or not, for lineage). The ROS node (`scarls.learner.node`) runs `train_round` on its
own thread when the scheduler triggers it, so rollouts never wait for training.

What it trains on is checked first: every episode is verified before use (its arrays and shapes
against the meta, every frame's chunk file present - a missing one would read as a black frame -
and the sha256 of the low-dimensional arrays; the frames' own digests are left to
``scarls dataset validate``), a load that fails is retried ``load_attempts`` times with doubling
back-off before the episode is given up (logged), and steps the robot did not execute (the
episode's ``safety`` array: held, e-stopped, faulted, resetting, clamped heavily) get sample
weight 0 - never drawn, never a target.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch

from scarls.checkpoints.format import CheckpointRejected
from scarls.checkpoints.registry import CheckpointRecord, CheckpointRegistry
from scarls.episodes import EpisodeReader, list_episodes, validate_episode
from scarls.episodes.schema import ACTION_PATH, STATE_PATH, EpisodeMeta
from scarls.learner.algorithms import make_algorithm, stale_human_steps
from scarls.learner.config import LearnerError, MixingConfig, TrainerConfig
from scarls.learner.evaluation import CheckpointGate, evaluate_open_loop, open_loop_batches
from scarls.learner.mixing import MixingSampler
from scarls.learner.rollout import policy_cameras
from scarls.learner.trainer import EpisodeData, Trainer, build_batch, fit_normalization
from scarls.policies import Policy

log = logging.getLogger(__name__)
METRIC = 'open_loop_error'
#: The open-loop error on the held-out demonstrations only: unlike METRIC, whose held-out set
#: grows with online episodes during a run (later versions are measured on harder frames), it is
#: comparable across versions - the registry ranks its "best" checkpoint by it (docs/GATE.md).
DEMOS_METRIC = 'open_loop_error_demos'
_T = TypeVar('_T')


@dataclass(frozen=True)
class OnlineConfig:
    """Settings of the online learner."""

    #: Training steps per round (one round per scheduler trigger).
    steps_per_round: int = 300
    #: Training steps on the offline demonstrations before the first checkpoint.
    pretrain_steps: int = 1500
    #: 'hg_dagger' (expert-labelled steps only) or 'bc'.
    algorithm: str = 'hg_dagger'
    #: Gate: a candidate's open-loop error must be at most this (rad^2 per joint)...
    threshold: float = 0.05
    #: ... and not worse than the deployed one by more than this relative tolerance.
    tolerance: float = 0.05
    #: Evaluate on every `eval_stride`-th labelled frame of the held-out episodes.
    eval_stride: int = 2
    #: Every `holdout_every`-th online episode joins the held-out set (its human-labelled steps
    #: are the states the policy really visits); 0 = demonstrations only.
    holdout_every: int = 5
    seed: int = 0
    #: Extra gate before a deploy: replay the held-out episodes through the candidate and the
    #: deployed model (:class:`scarls.learner.replay_gate.ReplayGate`) and refuse a candidate
    #: that regresses on some phase or joint group, even when its overall error passes.
    replay_gate: bool = False
    #: What the gate compares with the deployed model: 'open_loop' (the error on the held-out
    #: episodes) or, with a simulated robot, 'closed_loop' - the candidate runs alone in the
    #: simulator on ``gate_scenes`` held-out scenes and must reach at least the deployed
    #: model's mean task progress there, less ``closed_loop_tolerance``
    #: (:class:`scarls.learner.sim_gate.ClosedLoopGate`; the open-loop threshold still
    #: applies). bench/bench_gate.py measures which of them predicts success alone better.
    gate_metric: str = 'open_loop'
    gate_scenes: int = 10
    closed_loop_tolerance: float = 0.02
    #: Tries to load (verify + read) an episode before giving up on it (logged) ...
    load_attempts: int = 3
    #: ... waiting this long after the first failure, doubling after each next one.
    load_backoff_s: float = 0.25
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)

    def __post_init__(self) -> None:
        if self.steps_per_round < 1 or self.pretrain_steps < 0:
            raise LearnerError('steps_per_round must be >= 1 and pretrain_steps >= 0')
        if self.load_attempts < 1 or not self.load_backoff_s >= 0:
            raise LearnerError('load_attempts must be >= 1 and load_backoff_s >= 0')
        if not (self.threshold > 0):
            raise LearnerError(f'threshold must be > 0, got {self.threshold}')
        if self.gate_metric not in ('open_loop', 'closed_loop'):
            raise LearnerError(f"gate_metric must be 'open_loop' or 'closed_loop', got "
                               f'{self.gate_metric!r}')
        if self.gate_scenes < 1 or not self.closed_loop_tolerance >= 0:
            raise LearnerError('gate_scenes must be >= 1 and closed_loop_tolerance >= 0')


@dataclass(frozen=True)
class RoundResult:
    version: int
    parent: int | None
    metric: float
    approved: bool
    reason: str
    train_loss: float
    train_steps: int
    train_seconds: float
    eval_seconds: float
    online_episodes: int
    record: CheckpointRecord | None
    fleet: Any = None
    """The fleet round (:class:`scarls.fleet.RoundResult`) when the round was synchronised."""
    local_metric: float | None = None
    """This ECU's own open-loop error before the fleet round (None without a fleet)."""


@dataclass
class LearnerProgress:
    """What the learner is doing, for status reports (read from other threads: plain fields,
    each written whole)."""

    state: str = 'starting'
    """starting | pretraining | training | evaluating | reducing | idle | failed | stopped"""
    detail: str = ''
    round_step: int = 0
    round_steps: int = 0
    samples_trained: int = 0
    recent_losses: deque = field(default_factory=lambda: deque(maxlen=20))
    ingested: deque = field(default_factory=lambda: deque(maxlen=1000))
    """(episode index, seconds from the episode's end to being loaded) not yet reported."""

    @property
    def loss(self) -> float:
        losses = list(self.recent_losses)
        return float(np.mean(losses)) if losses else math.nan

    def take_ingested(self) -> list[tuple[int, float]]:
        """The ingestions since the last call (each one is returned once)."""
        out = []
        while self.ingested:
            out.append(self.ingested.popleft())
        return out


class LearnerStopped(LearnerError):
    """A round was abandoned because :attr:`OnlineLearner.stop_event` was set."""


class OnlineLearner:
    def __init__(self, policy: Policy, registry: CheckpointRegistry,
                 config: OnlineConfig | None = None, *, robot: Any = None) -> None:
        """``robot``: the simulated robot the closed-loop gate runs (``gate_metric:
        closed_loop``; a description or its name, default ``sim_dual6``)."""
        self.config = config or OnlineConfig()
        self.robot = robot
        self._closed_gate: Any = None
        self._deployed_scores: list | None = None
        self._candidate_scores: list | None = None
        self.policy = policy
        self.registry = registry
        self.cameras = policy_cameras(policy)
        self.algorithm = make_algorithm(self.config.algorithm)
        self.sampler = MixingSampler(self.config.mixing)
        self.trainer = Trainer(policy, self.config.trainer)
        self.gate = CheckpointGate(self.config.threshold, must_not_be_worse=True,
                                   tolerance=self.config.tolerance)
        self.rng = np.random.default_rng(self.config.seed)
        self.stream = 0
        self.episodes: dict[str, EpisodeData] = {}
        self.labels: dict[str, np.ndarray] = {}
        self.heldout: list[EpisodeData] = []
        self.deployed_metric: float | None = None
        self.deployed_version: int | None = None
        self._deployed_weights: dict[str, torch.Tensor] | None = None
        self._online_seen = 0
        self.stop_event = threading.Event()
        """Set it to abandon a running round at its next training step (nothing is published)."""
        self.step_hook: Callable[[], None] | None = None
        """Called after each training step (the compute-fair budget waits there)."""
        self.clock: Callable[[], float] = time.time
        """The robot's clock in seconds, the one episode stamps use (the node: ROS time, which
        is simulated time under use_sim_time): ingestion latency = clock() - episode end."""
        self.stale_labels = 0
        """Takeover steps not used as labels because their command was a stale repeat."""
        self.not_executed_steps = 0
        """Steps not trained on because the robot did not execute their action."""
        self.given_up: list[str] = []
        """Episodes whose load failed ``load_attempts`` times (never used)."""
        self.rounds: list[RoundResult] = []
        self._seen: set[str] = set()
        self._online: dict[str, tuple[str, Any] | None] = {}
        """Online episodes by identity -> ('train', key) / ('heldout', data) / None."""
        self._fingerprints: dict[str, tuple[int, str]] = {}
        self._bad: set[str] = set()
        self.last_load_seconds = 0.0
        self._drawn: list = []
        self.progress = LearnerProgress()
        self.last_ingested: list[tuple[int, float]] = []
        """(episode index, seconds from its end to loaded) of the last refresh_online."""

    # -- data ------------------------------------------------------------------------------
    def _label_weights(self, intervention: np.ndarray, action: np.ndarray, outcome: str,
                       source: str, executed: np.ndarray | None = None
                       ) -> tuple[np.ndarray, int, int]:
        """(weights, stale takeover steps zeroed, not-executed steps zeroed)."""
        weights = self.algorithm.step_weights(intervention, outcome, source)
        stale_n = not_executed_n = 0
        if source == 'online':
            stale = stale_human_steps(intervention, action)
            if stale.any():
                weights = np.where(stale, 0.0, weights).astype(np.float32)
                stale_n = int(stale.sum())
        if executed is not None:
            dropped = ~np.asarray(executed, dtype=bool) & (weights > 0)
            if dropped.any():
                weights = np.where(dropped, 0.0, weights).astype(np.float32)
                not_executed_n = int(dropped.sum())
        return weights, stale_n, not_executed_n

    def _weights(self, intervention: np.ndarray, action: np.ndarray, outcome: str,
                 source: str, executed: np.ndarray | None = None) -> np.ndarray:
        weights, stale_n, not_executed_n = self._label_weights(intervention, action, outcome,
                                                               source, executed)
        self.stale_labels += stale_n
        self.not_executed_steps += not_executed_n
        return weights

    def _with_retries(self, what: str, load: Callable[[], _T]) -> _T | None:
        """``load()``, tried ``config.load_attempts`` times with doubling back-off; None (and
        logged) when every try failed. Raises :class:`LearnerStopped` when stopped meanwhile."""
        attempts, delay = self.config.load_attempts, self.config.load_backoff_s
        for attempt in range(1, attempts + 1):
            try:
                return load()
            except Exception as exc:  # noqa: BLE001 - corrupt or unreadable: retry, then skip
                if attempt == attempts:
                    log.warning('%s: giving up after %d failed load(s): %s', what, attempts,
                                exc)
                    self.given_up.append(what)
                    return None
                log.warning('%s: load failed (attempt %d of %d): %s; retrying in %.2f s',
                            what, attempt, attempts, exc, delay)
                if self.stop_event.wait(delay):
                    raise LearnerStopped('the learner is stopping') from exc
                delay *= 2
        return None

    @staticmethod
    def _verified_reader(path: Path) -> EpisodeReader:
        """The episode at ``path`` after the cheap check: arrays and shapes against its meta,
        every frame's chunk present, sha256 of the low-dimensional arrays."""
        validate_episode(path, check_checksums=False, lowdim_checksums=True)
        return EpisodeReader(path)

    def _add(self, key: str, ep: EpisodeData, weights: np.ndarray | None = None) -> None:
        if weights is None:
            weights = self._weights(ep.intervention, ep.action, ep.outcome, ep.source,
                                    ep.executed)
        if not float(np.sum(weights)) > 0:
            return   # nothing to learn from (e.g. no takeover in an online episode)
        self.episodes[key] = ep
        self.labels[key] = weights
        self.sampler.add((ep.task, ep.source), key, ep.steps, weights)

    def _misfit(self, ep: EpisodeData) -> str:
        """Why ``ep`` cannot train this policy (its joint count differs: another robot)."""
        cfg = self.policy.config
        state, action = ep.state.shape[-1], ep.action.shape[-1]
        if state != cfg.state_dim or action != cfg.action_dim:
            return (f'has {state}-wide states and {action}-wide actions but the policy expects '
                    f'{cfg.state_dim} and {cfg.action_dim} (another robot?)')
        return ''

    def set_stream(self, stream: int) -> int:
        """Draw batches from stream ``stream`` of the seed (a fleet learner: its rank, from
        its first online round on), so learners that share their initial weights (the seed)
        do not share their batches; and
        return a torch seed for the same stream (the training noise: dropout, the CVAE's z),
        for the process to set. Stream 0 keeps the single learner's draws."""
        if stream < 0:
            raise ValueError(f'stream must be >= 0, got {stream}')
        self.stream = int(stream)
        seq = np.random.SeedSequence([self.config.seed, self.stream])
        self.rng = (np.random.default_rng(self.config.seed) if self.stream == 0
                    else np.random.default_rng(seq))
        return int(seq.generate_state(1, dtype=np.uint32)[0])

    def load_offline(self, root: str | Path, task: str, *, heldout: int = 2) -> int:
        """Load demonstrations (verified; one that keeps failing to load is skipped, logged);
        the last `heldout` become the open-loop evaluation set. Returns how many loaded."""
        entries = list_episodes(root, task)
        if not entries:
            raise LearnerError(f'no demonstrations of {task!r} under {root}: generate them '
                               'first (scarls demos)')
        eval_entries = entries[-heldout:] if heldout and len(entries) > heldout else []
        for entry in entries:
            ep = self._with_retries(f'demonstration {entry.path}', lambda e=entry: (
                EpisodeData.from_reader(self._verified_reader(e.path), source='offline',
                                        cameras=self.cameras)))
            if ep is None:
                continue
            problem = self._misfit(ep)
            if problem:
                raise LearnerError(f'demonstration {entry.path} {problem}: write demonstrations '
                                   'for this robot (scarls demos --robot NAME) under another '
                                   'root, or train a policy for that robot')
            if entry in eval_entries:
                self.heldout.append(ep)
            else:
                self._add(f'offline/{entry.task}/{entry.index}', ep)
            self._seen.add(str(entry.path))
        if not self.episodes:
            raise LearnerError(f'no usable demonstrations of {task!r} under {root} (every one '
                               'failed to load, see the log): check them with scarls dataset '
                               'validate, or generate new ones (scarls demos)')
        fit_normalization(self.policy, list(self.episodes.values()))
        self.trainer.sync_ema()   # the weight average starts from the normalised policy
        return len(self._seen)

    def refresh_online(self, root: str | Path, task: str) -> int:
        """Load online episodes that appeared on disk since the last call; returns how many.

        Episodes are known by their identity (recording ECU, start and creation time), not
        by their index: after ``scarls dataset delete`` renumbers a task, the renumbered
        episodes are not loaded twice, and episodes deleted from disk are dropped from
        training (and from the held-out set) here too.
        """
        t0 = time.perf_counter()
        added = 0
        on_disk: set[str] = set()
        self.last_ingested = []
        for entry in list_episodes(root, task):
            path = str(entry.path)
            try:
                fp = self._fingerprint(entry.meta_path)
            except Exception as exc:  # a corrupt episode must not stop learning
                if path not in self._bad:
                    log.warning('online episode %s skipped: %s', entry.path, exc)
                    self._bad.add(path)
                continue
            on_disk.add(fp)
            if fp in self._online:
                continue
            self._online[fp] = None   # known (also when it cannot be loaded: given up)
            loaded = self._with_retries(f'online episode {entry.path}',
                                        lambda e=entry: self._load_online(e.path))
            if loaded is None:   # a corrupt episode must not stop learning
                continue
            ep, weights, reader, stale_n, not_executed_n = loaded
            self.stale_labels += stale_n
            self.not_executed_steps += not_executed_n
            problem = self._misfit(ep)
            if problem:
                log.warning('online episode %s skipped: %s', entry.path, problem)
                continue
            self._online_seen += 1
            # episode end (its last step's stamp) -> trainable, for the fleet's latency view
            ingested = (int(entry.index), max(0.0, self.clock() - float(reader.meta.end_time)))
            self.progress.ingested.append(ingested)
            self.last_ingested.append(ingested)
            every = self.config.holdout_every
            if every and self._online_seen % every == 0 and ep.intervention.any():
                self.heldout.append(ep)   # evaluation only, never trained on
                self._online[fp] = ('heldout', ep)
            else:
                key = f'online/{entry.task}/{fp}'
                self._add(key, ep, weights)
                if key in self.episodes:
                    self._online[fp] = ('train', key)
            added += 1
        self._forget_deleted(on_disk)
        self.last_load_seconds = time.perf_counter() - t0
        return added

    def _load_online(self, path: Path):
        """Verify and load one online episode: (data, label weights, reader, stale takeover
        steps, steps not executed)."""
        reader = self._verified_reader(path)
        intervention = np.asarray(reader.intervention[:], dtype=bool)
        executed = None if reader.safety is None else reader.executed()
        weights, stale_n, not_executed_n = self._label_weights(
            intervention, np.asarray(reader.action[:]), reader.meta.outcome, 'online', executed)
        # frames of every takeover step stay in memory: held-out episodes are evaluated on
        # all of them
        ep = EpisodeData.from_reader(reader, source='online', cameras=self.cameras,
                                     keep=(weights > 0) | intervention)
        return ep, weights, reader, stale_n, not_executed_n

    def _fingerprint(self, meta_path: Path) -> str:
        """The identity of an episode across renumbering: its recording ECU, start time and
        creation time (cached by meta file path and mtime; a rename keeps the mtime but not
        the path)."""
        st = os.stat(meta_path)
        cached = self._fingerprints.get(str(meta_path))
        if cached is not None and cached[0] == st.st_mtime_ns:
            return cached[1]
        meta = EpisodeMeta.load(meta_path)
        fp = f'{meta.ecu_id}@{meta.start_time:.6f}/{meta.created_unix:.6f}'
        self._fingerprints[str(meta_path)] = (st.st_mtime_ns, fp)
        return fp

    def _forget_deleted(self, on_disk: set[str]) -> None:
        for fp in [fp for fp in self._online if fp not in on_disk]:
            what = self._online.pop(fp)
            if what is None:
                continue
            kind, item = what
            if kind == 'train':
                self.sampler.remove(item)
                self.episodes.pop(item, None)
                self.labels.pop(item, None)
            else:
                self.heldout = [ep for ep in self.heldout if ep is not item]
            log.info('online episode %s was deleted from disk: no longer used', fp)

    @property
    def online_episodes(self) -> int:
        return sum(1 for k in self.episodes if k.startswith('online/'))

    def resume(self, version: int, metric: float | None) -> None:
        """The current policy is the deployed checkpoint `version` (restart of the learner)."""
        self.deployed_version, self.deployed_metric = version, metric
        self.trainer.sync_ema()
        self._deployed_weights = {k: v.detach().clone()
                                  for k, v in self.policy.state_dict().items()}

    def follow_rollback(self, to_version: int, rejected: int, *, trust: Any = None,
                        robot: str | None = None,
                        expected_sha256: str | None = None) -> list[int] | None:
        """The scheduler's deploy guard rolled back from ``rejected`` to ``to_version``
        (docs/GATE.md): revoke ``rejected`` and every candidate trained from it in the
        registry, make ``to_version`` the deployed model the gate compares with, and train on
        from its weights - the data, the rejected model's episodes included, is kept (their
        takeovers are corrections of the states a worse model visits). Returns the versions
        revoked, or None when the rollback was followed before (e.g. the learner restarted).

        The target is verified like any checkpoint the learner starts from: with ``trust``
        it must be signed by a trusted (not revoked) key for ``robot``; its bytes must hash
        to ``expected_sha256`` (the signed deploy record's) and to the registry's record.
        Nothing changes when it is refused (:class:`CheckpointRejected`): the candidates are
        revoked only after the target loaded, so a rejected rollback can be retried."""
        records = {r.version: r for r in self.registry.records()}
        lineage = {int(rejected)}
        for v in sorted(records):
            if v > rejected and records[v].parent in lineage:
                lineage.add(v)
        if self.deployed_version not in lineage and \
                all(records[v].revoked for v in lineage if v in records):
            return None
        from scarls.checkpoints import load_checkpoint
        rec = self.registry.get(int(to_version))
        if expected_sha256 and rec.sha256 != expected_sha256:
            raise CheckpointRejected(
                f'the deploy record names v{rec.version} with sha256 {expected_sha256[:12]}..., '
                f'the registry holds {rec.sha256[:12]}...: not rolling back to it')
        model, _ = load_checkpoint(rec.path, expected_sha256=rec.sha256, trust=trust,
                                   robot=robot, expected_version=rec.version)
        revoked = self.registry.revoke(sorted(lineage))
        weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self.policy.load_state_dict(weights)
        self.trainer.sync_ema()
        self._deployed_weights = weights
        self._deployed_scores = None   # measured again on first use
        self.deployed_version = rec.version
        self.deployed_metric = self.evaluate(weights) if self.heldout else None
        self.registry.mark_deployed(rec.version)
        log.warning('deploy guard rolled back from v%d to v%d: revoked %s; training goes on '
                    'from v%d', rejected, rec.version, revoked, rec.version)
        return revoked

    def adopt(self, policy: Policy, source: str) -> RoundResult:
        """Start from another ECU's model (e.g. the fleet's deployed checkpoint fetched from a
        peer): its weights replace the current ones, it is measured on the held-out set, gated
        like a candidate (threshold only: nothing is deployed yet) and published."""
        own, theirs = self.policy.state_dict(), policy.state_dict()
        if set(own) != set(theirs) or any(own[k].shape != theirs[k].shape for k in own):
            raise LearnerError(f'the model from {source} ({policy.name}) does not fit this '
                               f'learner\'s {self.policy.name} policy and its configuration')
        self.policy.load_state_dict(theirs)
        self.trainer.sync_ema()
        t0 = time.perf_counter()
        metric = self.evaluate()
        eval_s = time.perf_counter() - t0
        decision = self.gate.decide(metric, self.deployed_metric)
        model = self.trainer.deployable()
        reason = f'adopted from {source}: {decision.reason}'
        record = self.registry.publish(
            model, metrics={METRIC: metric if math.isfinite(metric) else 1e9,
                            'train_steps': 0.0, 'eval_seconds': round(eval_s, 3),
                            'published_unix': time.time()},
            parent=self.deployed_version, approved=decision.approved,
            extra={'reason': reason, 'source': source})
        if decision.approved:
            self.deployed_metric, self.deployed_version = metric, record.version
            self._deployed_weights = {k: v.detach().clone()
                                      for k, v in model.state_dict().items()}
            self.registry.mark_deployed(record.version)
        result = RoundResult(record.version, None, metric, decision.approved, reason, math.nan,
                             0, 0.0, eval_s, self.online_episodes, record)
        self.rounds.append(result)
        log.info('adopted v%d from %s: open-loop error %.4f %s', record.version, source, metric,
                 'APPROVED' if decision.approved else 'rejected')
        return result

    # -- training --------------------------------------------------------------------------
    def replay_veto(self, model: Policy) -> str | None:
        """With ``config.replay_gate``: why ``model`` must not replace the deployed model
        (it regresses on a phase or joint group of the held-out episodes), else None."""
        if not self.config.replay_gate or self._deployed_weights is None:
            return None
        import copy

        from scarls.learner.replay_episodes import ReplayEpisode
        from scarls.learner.replay_gate import ReplayGate
        baseline = copy.deepcopy(model)
        baseline.load_state_dict(self._deployed_weights)
        episodes = [ReplayEpisode(f'heldout/{i}', ep) for i, ep in enumerate(self.heldout)]
        decision = ReplayGate().check(model, episodes, baseline=baseline,
                                      labels=('candidate', f'v{self.deployed_version}'))
        return None if decision.approved else f'replay check: {decision.reason}'

    def _batch(self) -> dict[str, torch.Tensor]:
        drawn = self.sampler.draw(self.trainer.config.batch_size, self.rng)
        self._drawn = drawn
        return build_batch(self.episodes, [(s.episode, s.frame) for s in drawn],
                           self.policy.chunk_size, cameras=self.cameras, labels=self.labels)

    def _report(self, batch, result) -> None:
        if self.stop_event.is_set():
            raise LearnerStopped('the learner is stopping: round abandoned')
        progress = self.progress
        progress.round_step += 1
        progress.samples_trained += len(self._drawn)
        progress.recent_losses.append(float(result.loss))
        per: dict = {}
        for s, loss in zip(self._drawn, result.per_sample, strict=True):
            per.setdefault(s.buffer, []).append(float(loss))
        for key, losses in per.items():
            self.sampler.report_loss(key, float(np.mean(losses)))
        if self.step_hook is not None:
            self.step_hook()

    def evaluate(self, weights: dict[str, torch.Tensor] | None = None, *,
                 demos_only: bool = False) -> float:
        """Open-loop error of the deployable policy (the weight average when the trainer keeps
        one, else the trained policy), or of `weights`, on the held-out set (``demos_only``:
        on its demonstrations, a set that does not change during a run)."""
        heldout = [ep for ep in self.heldout if ep.source == 'offline'] if demos_only \
            else self.heldout
        if not heldout:
            raise LearnerError('no held-out demonstrations to evaluate on')
        model = self.trainer.deployable()
        current = None
        if weights is not None:
            current = {k: v.detach().clone() for k, v in model.state_dict().items()}
            model.load_state_dict(weights)
        # the expert's steps, except those the robot did not execute
        labels = {i: ep.sample_weights(ep.intervention.astype(np.float32))
                  for i, ep in enumerate(heldout)}
        try:
            result = evaluate_open_loop(model, open_loop_batches(
                heldout, model.chunk_size, cameras=self.cameras, labels=labels,
                stride=self.config.eval_stride))
        finally:
            if current is not None:
                model.load_state_dict(current)
        return float(result.mse)

    def _demos_metric(self) -> float:
        try:
            value = self.evaluate(demos_only=True)
        except LearnerError:
            return 1e9
        return value if math.isfinite(value) else 1e9

    def closed_loop_gate(self) -> Any:
        """The closed-loop gate (``gate_metric: closed_loop``), built on first use with the
        held-out frames' size; None with the open-loop gate."""
        if self.config.gate_metric != 'closed_loop':
            return None
        if self._closed_gate is None:
            from scarls.learner.config import RolloutConfig
            from scarls.learner.sim_gate import ClosedLoopGate
            shape = (96, 128)
            for ep in self.heldout:
                if self.cameras and self.cameras[0] in ep.images:
                    shape = tuple(int(x) for x in ep.images[self.cameras[0]].shape[1:3])
                    break
            self._closed_gate = ClosedLoopGate(
                self.config.gate_scenes, tolerance=self.config.closed_loop_tolerance,
                config=RolloutConfig(image_shape=shape), robot=self.robot)
        return self._closed_gate

    def _closed_loop_decision(self, model: Policy, metric: float, extra: dict
                              ) -> tuple[bool, str]:
        """The closed-loop gate's decision on ``model`` (the open-loop threshold still
        applies); its scores go into ``extra`` (the registry's metrics)."""
        import copy

        from scarls.learner.sim_gate import mean_progress, success_rate
        gate = self.closed_loop_gate()
        scores = gate.scores(model)
        extra.update(closed_loop_progress=mean_progress(scores),
                     closed_loop_success=success_rate(scores),
                     closed_loop_seconds=round(gate.last_seconds, 3))
        if self._deployed_scores is None and self._deployed_weights is not None:
            deployed = copy.deepcopy(model)
            deployed.load_state_dict(self._deployed_weights)
            self._deployed_scores = gate.scores(deployed)
        threshold = CheckpointGate(self.config.threshold, must_not_be_worse=False).decide(
            metric, None)
        if not threshold.approved:
            return False, threshold.reason
        decision = gate.decide(scores, self._deployed_scores)
        self._candidate_scores = scores
        return decision.approved, f'{threshold.reason}; {decision.reason}'

    def train_round(self, steps: int | None = None, reducer: Any = None,
                    selector: Any = None) -> RoundResult:
        """Train, evaluate open-loop, gate and publish one candidate.

        With a fleet (``reducer``: :class:`scarls.fleet.FleetReducer`, ``selector``:
        :class:`scarls.learner.selector.CheckpointSelector`) the candidate joins the fleet's
        round: ``'reduced'``/``'alone'`` - the synchronised parameters replace the local ones
        (training continues from them) and only the selector's second open-loop test decides
        the deploy, taken fleet-wide from every participant's verdict (the same decision on
        every ECU of the round); ``'skipped'`` (this ECU's error fails the threshold) -
        nothing is deployed;
        ``'missed'``/``'failed'`` - the fleet could not be reached in time: the local candidate
        goes through the local gate as without a fleet.
        """
        if not self.episodes:
            raise LearnerError('no training data yet')
        steps = int(steps or self.config.steps_per_round)
        progress = self.progress
        progress.round_step, progress.round_steps = 0, steps
        if progress.state != 'pretraining':
            progress.state = 'training'
        stats = self.trainer.train_steps(self._batch, steps, on_step=self._report)
        progress.state = 'evaluating'
        t0 = time.perf_counter()
        metric = self.evaluate()
        # the deployed model is re-measured on the same (growing) held-out set, so the
        # comparison is like for like
        if self._deployed_weights is not None:
            self.deployed_metric = self.evaluate(self._deployed_weights)
        eval_s = time.perf_counter() - t0
        decision = self.gate.decide(metric, self.deployed_metric)
        approved, reason = decision.approved, decision.reason
        parent = self.deployed_version
        model = self.trainer.deployable()
        fleet, local_metric, extra_metrics = None, None, {}
        fleet_decided = False   # the fleet's verdicts (replay vetoes included) decided
        if reducer is not None:
            if model is not self.policy:
                # the weight average is what was evaluated and what deploys, so it is what the
                # fleet averages; its parameters are frozen (no gradients), so mark the ones the
                # policy trains for the reduction
                trains = dict(self.policy.named_parameters())
                for name, p in model.named_parameters():
                    p.requires_grad_(trains[name].requires_grad)
            progress.state = 'reducing'
            try:
                fleet = reducer.reduce(model, metric)
            finally:
                if model is not self.policy:
                    model.requires_grad_(False)
            local_metric = metric
            extra_metrics = {'fleet_round': float(fleet.round),
                             'fleet_participants': float(len(fleet.participants)),
                             'local_open_loop_error': metric if math.isfinite(metric) else 1e9}
            if fleet.status in ('reduced', 'alone'):
                if model is not self.policy:   # training goes on from the fleet's weights
                    self.policy.load_state_dict(model.state_dict())
                progress.state = 'evaluating'
                # fleet-level selection: every participant decides alike from the verdicts
                # of all (a model is deployed on every ECU of the round or on none)
                selection = selector.select_fleet(model, self.heldout, reducer, fleet,
                                                  reference_metric=self.deployed_metric,
                                                  veto=self.replay_veto(model))
                metric = float(selection.metric)
                fleet_decided = True
                if selection.fleet is not None and math.isfinite(selection.fleet.metric):
                    extra_metrics['fleet_open_loop_error'] = float(selection.fleet.metric)
                approved = bool(selection.approved)
                reason = (f'fleet round {fleet.round} {fleet.status} '
                          f'({len(fleet.participants)} ECUs); selector: {selection.reason}')
            elif fleet.status == 'skipped':
                approved = False
                reason = f'fleet round {fleet.round} skipped: {fleet.reason}'
            else:
                reason = f'fleet round {fleet.round} {fleet.status} ({fleet.reason}); ' + reason
        if reducer is None and self.config.gate_metric == 'closed_loop':
            progress.state = 'evaluating'
            approved, reason = self._closed_loop_decision(model, metric, extra_metrics)
        if approved and not fleet_decided:
            veto = self.replay_veto(model)
            if veto is not None:
                approved, reason = False, veto
        # timings ride along with the metrics so the registry index keeps them (lineage)
        record = self.registry.publish(
            model, metrics={METRIC: metric if math.isfinite(metric) else 1e9,
                                  'train_loss': float(stats.loss_mean),
                                  'train_steps': float(steps),
                                  'train_seconds': round(float(stats.seconds), 3),
                                  'eval_seconds': round(eval_s, 3),
                                  DEMOS_METRIC: self._demos_metric(),
                                  'load_seconds': round(self.last_load_seconds, 3),
                                  'online_episodes': float(self.online_episodes),
                                  'published_unix': time.time(), **extra_metrics},
            parent=parent, approved=approved, extra={'reason': reason})
        if approved:
            self.deployed_metric, self.deployed_version = metric, record.version
            self._deployed_weights = {k: v.detach().clone()
                                      for k, v in model.state_dict().items()}
            self._deployed_scores = getattr(self, '_candidate_scores', None)
            self.registry.mark_deployed(record.version)
        self._candidate_scores = None
        result = RoundResult(record.version, parent, metric, approved, reason,
                             float(stats.loss_mean), steps, float(stats.seconds), eval_s,
                             self.online_episodes, record, fleet, local_metric)
        self.rounds.append(result)
        progress.state = 'idle'
        log.info('round %d: v%d open-loop error %.4f %s (%s); %d steps in %.1f s',
                 len(self.rounds), record.version, metric,
                 'APPROVED' if approved else 'rejected', reason, steps, stats.seconds)
        return result


def policy_config_for(config: dict[str, Any], robot: Any, offline_root: str | Path,
                      task: str) -> dict[str, Any]:
    """A policy config whose state/action sizes come from the data, checked against the robot.

    The sizes are read from the first demonstration's meta under ``offline_root/task`` (the
    robot description's joint count when there is none yet); a ``state_dim``/``action_dim``
    given in ``config`` wins. Cameras the policy asks for must be the robot's.

    Raises:
        LearnerError: the demonstrations are of another width than the robot's joints, or the
            policy asks for a camera the robot does not have.
    """
    out = dict(config)
    state_dim = action_dim = robot.num_joints
    entries = list_episodes(offline_root, task)
    if entries:
        meta = EpisodeMeta.load(entries[0].meta_path)
        state_dim = int(meta.shapes[STATE_PATH][-1])
        action_dim = int(meta.shapes[ACTION_PATH][-1])
        if action_dim != robot.num_joints:
            raise LearnerError(
                f'demonstrations under {Path(offline_root) / task} act on {action_dim} joints '
                f'but robot {robot.name!r} has {robot.num_joints}: write demonstrations for '
                'this robot under another root (scarls demos --robot NAME --root DIR)')
    out.setdefault('state_dim', state_dim)
    out.setdefault('action_dim', action_dim)
    missing = [c for c in out.get('cameras', ()) if c not in robot.camera_names]
    if missing:
        raise LearnerError(f'policy_config asks for cameras {missing}; robot {robot.name!r} '
                           f'has {list(robot.camera_names)}')
    return out
