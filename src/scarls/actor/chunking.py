"""Chunked, asynchronous policy inference that never blocks the 30 Hz control tick.

A policy maps one observation to a *chunk* of ``K`` future actions, shape ``(K, D)``.
Inference may take longer than a control period, so it runs on a worker thread while the
control loop keeps executing the previous chunk:

* :class:`ChunkExecutor` holds the current chunk and the tick at which its observation was
  taken. A chunk computed from the observation of tick ``t0`` and delivered at tick ``t1``
  starts at offset ``t1 - t0`` (latency compensation): its first actions are already in the
  past. When the chunk is exhausted :meth:`ChunkExecutor.next_action` returns ``None`` and the
  caller holds its last command.
* :class:`AsyncInference` runs ``policy_fn(obs) -> ndarray (K, D)`` on one worker thread;
  :meth:`~AsyncInference.submit` and :meth:`~AsyncInference.poll` never block. Exceptions from
  the policy are captured and re-raised by :meth:`~AsyncInference.poll` as
  :class:`PolicyInferenceError`; the worker keeps running.
* :class:`ChunkedController` combines both: call ``controller.tick(obs, tick)`` once per
  control period; it swaps in finished chunks, returns this tick's action (or ``None``) and
  requests a new chunk when fewer than ``refill_when_remaining`` actions remain.
* :class:`PolicyRunner` turns a :class:`~scarls.policies.Policy` into a policy function on a
  device (``'auto'``: CUDA when available, else the CPU; :mod:`scarls.common.device`), with mixed
  precision where it is safe. Give :class:`ChunkedController` the policy itself (not a
  function) and its ``device``/``precision`` settings apply.

Observations are handed to the worker by reference: do not mutate an observation after
submitting it. Nothing here imports ROS.
"""

from __future__ import annotations

import collections
import dataclasses
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from scarls.common.device import (
    autocast,
    parse_device,
    place_module,
    resolve_device,
    resolve_precision,
)

__all__ = [
    'AsyncInference',
    'ChunkExecutor',
    'ChunkedController',
    'InferenceClosed',
    'LatencyStats',
    'PolicyFn',
    'PolicyInferenceError',
    'PolicyRunner',
]

_log = logging.getLogger(__name__)

PolicyFn = Callable[[Any], np.ndarray]
"""``policy_fn(obs) -> ndarray`` of shape ``(K, D)``."""

_LATENCY_WINDOW = 1024


class PolicyInferenceError(RuntimeError):
    """The policy function raised or returned an invalid chunk (see ``__cause__``)."""

    def __init__(self, message: str, obs_tick: int) -> None:
        super().__init__(message)
        self.obs_tick = obs_tick


class InferenceClosed(RuntimeError):
    """The :class:`AsyncInference` was closed; create a new one."""


def _as_chunk(chunk: Any) -> np.ndarray:
    arr = np.array(chunk, dtype=np.float32, copy=True)
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise ValueError(
            f'an action chunk must have shape (K, D) with K, D >= 1, got {arr.shape}; '
            'make the policy return one row per future action'
        )
    if not np.isfinite(arr).all():
        raise ValueError('the action chunk contains NaN or inf; refusing to execute it')
    return arr


class ChunkExecutor:
    """Holds the current action chunk and indexes it by control tick."""

    def __init__(self) -> None:
        self._chunk: np.ndarray | None = None
        self._obs_tick = 0

    @property
    def chunk(self) -> np.ndarray | None:
        """The current chunk ``(K, D)`` or None."""
        return self._chunk

    @property
    def obs_tick(self) -> int | None:
        """Tick at which the current chunk's observation was taken, or None."""
        return None if self._chunk is None else self._obs_tick

    def replace(self, chunk: np.ndarray, obs_tick: int) -> None:
        """Swap in ``chunk`` computed from the observation of tick ``obs_tick``.

        Raises ``ValueError`` for a chunk that is not a finite ``(K, D)`` array.
        """
        arr = _as_chunk(chunk)
        arr.setflags(write=False)
        self._chunk = arr
        self._obs_tick = int(obs_tick)

    def clear(self) -> None:
        """Forget the current chunk."""
        self._chunk = None

    def offset(self, tick: int) -> int | None:
        """Row of the chunk that belongs to ``tick`` (may be out of range), or None."""
        if self._chunk is None:
            return None
        return int(tick) - self._obs_tick

    def remaining(self, tick: int) -> int:
        """Number of actions left *after* the one for ``tick`` (0 when none)."""
        off = self.offset(tick)
        if off is None or self._chunk is None:
            return 0
        return max(0, self._chunk.shape[0] - max(off, 0) - 1)

    def next_action(self, tick: int) -> np.ndarray | None:
        """The action for ``tick``, or None when there is no chunk or it is exhausted.

        A tick earlier than the chunk's observation tick maps to the first row.
        """
        off = self.offset(tick)
        if off is None or self._chunk is None or off >= self._chunk.shape[0]:
            return None
        return self._chunk[max(off, 0)]


@dataclasses.dataclass(frozen=True)
class LatencyStats:
    """Inference latency in seconds (percentiles over the last 1024 calls)."""

    count: int
    mean: float
    p50: float
    p99: float
    max: float


@dataclasses.dataclass
class _Job:
    obs: Any
    tick: int
    generation: int


class AsyncInference:
    """Run a policy function on a worker thread; submit and poll never block.

    ``max_pending`` bounds the number of requests in flight (queued or running).
    When several results are ready, :meth:`poll` returns the newest and drops the rest.
    Results computed by a policy function that was replaced with :meth:`set_policy_fn`
    (or discarded with :meth:`discard_pending`) are dropped.
    """

    def __init__(self, policy_fn: PolicyFn, max_pending: int = 1, name: str = 'inference') -> None:
        if not callable(policy_fn):
            raise TypeError(f'policy_fn must be callable, got {policy_fn!r}')
        if int(max_pending) < 1:
            raise ValueError(f'max_pending must be >= 1, got {max_pending}')
        self._policy_fn = policy_fn
        self._max_pending = int(max_pending)
        self._lock = threading.Lock()
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._pending = 0
        self._generation = 0
        self._results: collections.deque[tuple[np.ndarray, int]] = collections.deque()
        self._errors: collections.deque[PolicyInferenceError] = collections.deque()
        self._latencies: collections.deque[float] = collections.deque(maxlen=_LATENCY_WINDOW)
        self._lat_count = 0
        self._lat_sum = 0.0
        self._lat_max = 0.0
        self._closed = False
        #: called on the worker thread whenever the last request in flight finished (the
        #: actor's lockstep progress report waits for it under simulated time)
        self.on_idle: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- control-loop side -------------------------------------------------------------
    @property
    def busy(self) -> bool:
        """True when ``max_pending`` requests are in flight."""
        with self._lock:
            return self._pending >= self._max_pending

    @property
    def pending(self) -> int:
        """Number of requests in flight."""
        with self._lock:
            return self._pending

    def submit(self, obs: Any, tick: int) -> bool:
        """Queue ``obs`` (taken at ``tick``) for inference; False if too many are in flight."""
        with self._lock:
            if self._closed:
                raise InferenceClosed('submit() after close(); create a new AsyncInference')
            if self._pending >= self._max_pending:
                return False
            self._pending += 1
            job = _Job(obs=obs, tick=int(tick), generation=self._generation)
        self._jobs.put(job)
        return True

    def poll(self) -> tuple[np.ndarray, int] | None:
        """Return ``(chunk, obs_tick)`` of the newest finished request, or None.

        Raises :class:`PolicyInferenceError` (oldest first) when a request failed.
        """
        with self._lock:
            if self._errors:
                raise self._errors.popleft()
            if not self._results:
                return None
            newest = self._results.pop()
            dropped = len(self._results)
            self._results.clear()
        if dropped:
            _log.debug('dropped %d stale inference results', dropped)
        return newest

    def set_policy_fn(self, policy_fn: PolicyFn) -> None:
        """Use ``policy_fn`` from now on; results of the old one still in flight are dropped."""
        if not callable(policy_fn):
            raise TypeError(f'policy_fn must be callable, got {policy_fn!r}')
        with self._lock:
            self._policy_fn = policy_fn
            self._bump_generation()

    def discard_pending(self) -> None:
        """Drop finished results, captured errors and the results of requests in flight."""
        with self._lock:
            self._bump_generation()

    def latency_stats(self) -> LatencyStats:
        """Latency statistics of completed calls (zeros when none)."""
        with self._lock:
            window = np.fromiter(self._latencies, dtype=np.float64)
            count, total, mx = self._lat_count, self._lat_sum, self._lat_max
        if count == 0:
            return LatencyStats(count=0, mean=0.0, p50=0.0, p99=0.0, max=0.0)
        p50, p99 = np.percentile(window, [50.0, 99.0])
        return LatencyStats(
            count=count, mean=total / count, p50=float(p50), p99=float(p99), max=mx
        )

    def close(self, timeout: float = 1.0) -> bool:
        """Stop the worker; return True if it finished within ``timeout`` seconds.

        A policy call that is still running is not interrupted (the thread is a daemon).
        """
        with self._lock:
            if not self._closed:
                self._closed = True
                self._bump_generation()
                self._jobs.put(None)
        self._thread.join(timeout=max(0.0, float(timeout)))
        return not self._thread.is_alive()

    def __enter__(self) -> AsyncInference:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- worker side -------------------------------------------------------------------
    def _bump_generation(self) -> None:
        self._generation += 1
        self._results.clear()
        self._errors.clear()

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            with self._lock:
                fn = self._policy_fn
                stale = job.generation != self._generation
            if stale:
                self._finish(job, None, None, None)
                self._notify_idle()
                continue
            start = time.perf_counter()
            try:
                chunk = _as_chunk(fn(job.obs))
            except Exception as exc:  # noqa: BLE001 - surfaced through poll()
                err = PolicyInferenceError(
                    f'policy inference for the observation of tick {job.tick} failed: '
                    f'{type(exc).__name__}: {exc}',
                    obs_tick=job.tick,
                )
                err.__cause__ = exc
                self._finish(job, None, err, time.perf_counter() - start)
            else:
                self._finish(job, chunk, None, time.perf_counter() - start)
            self._notify_idle()

    def _notify_idle(self) -> None:
        callback = self.on_idle
        if callback is not None and self.pending == 0:
            callback()

    def _finish(
        self,
        job: _Job,
        chunk: np.ndarray | None,
        err: PolicyInferenceError | None,
        latency: float | None,
    ) -> None:
        with self._lock:
            self._pending -= 1
            if latency is not None:
                self._latencies.append(latency)
                self._lat_count += 1
                self._lat_sum += latency
                self._lat_max = max(self._lat_max, latency)
            if job.generation != self._generation:
                return
            if err is not None:
                self._errors.append(err)
            elif chunk is not None:
                self._results.append((chunk, job.tick))


class PolicyRunner:
    """A policy as a policy function on a device: ``runner(obs) -> (K, D)`` float32 array.

    The policy moves to ``device`` once (:func:`scarls.common.device.place_module`; the observation
    batch follows it through pinned memory on CUDA and the chunk comes back to the CPU) and set
    to eval mode; each call runs :meth:`~scarls.policies.Policy.predict_chunk` under autocast
    when ``precision`` resolves to bf16/fp16 (``'auto'``: on CUDA only; fp32 on the CPU and
    MPS). On the CPU in fp32 a call is exactly ``policy.predict_chunk(obs)``. Raises
    :class:`scarls.common.device.DeviceError` for a device or precision this machine lacks.
    """

    def __init__(
        self,
        policy: nn.Module,
        device: str | torch.device = 'auto',
        precision: str = 'auto',
    ) -> None:
        if not callable(getattr(policy, 'predict_chunk', None)):
            raise TypeError(f'PolicyRunner needs a Policy (with predict_chunk), got {policy!r}')
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        """Where the policy runs."""
        self.dtype = resolve_precision(precision, self.device)
        """Autocast dtype (None: fp32)."""
        self.policy = place_module(policy, self.device)
        self.policy.eval()

    def __call__(self, obs: Any) -> np.ndarray:
        with autocast(self.device, self.dtype):
            chunk = self.policy.predict_chunk(obs)
        return np.asarray(chunk, dtype=np.float32)


class ChunkedController:
    """Executor + asynchronous inference behind one non-blocking ``tick`` call.

    Each :meth:`tick` (1) swaps in a chunk that finished since the last tick (unless it is
    older than the current one), (2) picks the action for this tick, and (3) submits the
    observation for a new chunk when fewer than ``refill_when_remaining`` actions remain after
    this one and no request is in flight. Policy errors propagate from :meth:`tick` as
    :class:`PolicyInferenceError`.

    ``policy_fn`` is a policy function, an :class:`AsyncInference`, or a policy
    (:class:`torch.nn.Module` with ``predict_chunk``): a policy runs on ``device`` with
    ``precision`` through a :class:`PolicyRunner`, here and in :meth:`set_policy_fn`. A policy
    *function* runs where it is: with one, ``device`` must be ``'auto'`` or ``'cpu'``
    (``ValueError`` otherwise, as it could not be honoured). The device is resolved here, so an
    unavailable one fails at construction (:class:`scarls.common.device.DeviceError`).
    """

    def __init__(
        self,
        policy_fn: PolicyFn | AsyncInference | nn.Module,
        refill_when_remaining: int = 4,
        max_pending: int = 1,
        device: str | torch.device = 'auto',
        precision: str = 'auto',
    ) -> None:
        if int(refill_when_remaining) < 0:
            raise ValueError(f'refill_when_remaining must be >= 0, got {refill_when_remaining}')
        self.refill_when_remaining = int(refill_when_remaining)
        self._device_setting = parse_device(device)
        if not isinstance(policy_fn, nn.Module):
            self._check_function_device()
        self.device = resolve_device(device)
        """Where a policy given as a module runs (a policy function runs where it is)."""
        self.precision = precision
        resolve_precision(precision, self.device)   # fail now, not on the worker thread
        fn = self._as_fn(policy_fn)
        if isinstance(fn, AsyncInference):
            self.inference = fn
        else:
            self.inference = AsyncInference(fn, max_pending=max_pending)
        self.executor = ChunkExecutor()

    def _check_function_device(self) -> None:
        if self._device_setting not in ('auto', 'cpu'):
            raise ValueError(
                f'device {self._device_setting!r} applies to a policy, not to a policy '
                'function (which runs where it is): pass the Policy itself'
            )

    def _as_fn(self, policy_fn: Any) -> Any:
        if isinstance(policy_fn, nn.Module):
            return PolicyRunner(policy_fn, self.device, self.precision)
        self._check_function_device()
        return policy_fn

    def tick(self, obs: Any, tick: int) -> np.ndarray | None:
        """Return the action for ``tick`` (None: hold the last command). Never blocks."""
        result = self.inference.poll()
        if result is not None:
            chunk, obs_tick = result
            current = self.executor.obs_tick
            if current is None or obs_tick >= current:
                self.executor.replace(chunk, obs_tick)
        action = self.executor.next_action(tick)
        if action is None or self.executor.remaining(tick) < self.refill_when_remaining:
            self.inference.submit(obs, tick)
        return action

    def set_policy_fn(self, policy_fn: PolicyFn | nn.Module) -> None:
        """Swap the policy (e.g. after a checkpoint reload) and forget the current chunk; a
        policy module is moved to this controller's device (see the class docstring)."""
        self.inference.set_policy_fn(self._as_fn(policy_fn))
        self.executor.clear()

    def reset(self) -> None:
        """Forget the current chunk and any in-flight result (call between episodes)."""
        self.inference.discard_pending()
        self.executor.clear()

    def close(self, timeout: float = 1.0) -> bool:
        """Stop the inference worker."""
        return self.inference.close(timeout)
