from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from scarls.actor.chunking import (
    AsyncInference,
    ChunkedController,
    ChunkExecutor,
    InferenceClosed,
    PolicyInferenceError,
    PolicyRunner,
)
from scarls.common.device import DeviceError
from scarls.policies import Observation, make_policy

D = 14


def tick_chunk(tick: int, k: int) -> np.ndarray:
    """Row i holds the value tick + i, so an action reveals which tick it was meant for."""
    return np.repeat(np.arange(tick, tick + k, dtype=np.float32)[:, None], D, axis=1)


def wait_until(cond, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError('condition not reached')
        time.sleep(0.002)


def poll_until(inf: AsyncInference, timeout: float = 30.0):
    deadline = time.monotonic() + timeout
    while True:
        res = inf.poll()
        if res is not None:
            return res
        if time.monotonic() > deadline:
            raise TimeoutError('no inference result')
        time.sleep(0.002)


# -- ChunkExecutor -------------------------------------------------------------------------
def test_executor_latency_compensation_and_exhaustion():
    ex = ChunkExecutor()
    assert ex.next_action(0) is None and ex.remaining(0) == 0 and ex.obs_tick is None
    ex.replace(tick_chunk(10, 5), obs_tick=10)
    assert ex.next_action(10)[0] == 10  # delivered immediately: offset 0
    assert ex.next_action(13)[0] == 13  # delivered 3 ticks late: offset 3
    assert ex.remaining(13) == 1
    assert ex.next_action(14)[0] == 14 and ex.remaining(14) == 0
    assert ex.next_action(15) is None  # exhausted: the caller holds
    assert ex.next_action(9)[0] == 10  # before the observation tick: first row
    ex.clear()
    assert ex.next_action(10) is None


def test_executor_copies_and_validates():
    ex = ChunkExecutor()
    chunk = np.zeros((3, D), dtype=np.float32)
    ex.replace(chunk, 0)
    chunk[:] = 7.0
    assert ex.next_action(0)[0] == 0.0
    assert chunk.flags.writeable
    for bad in (np.zeros(D), np.zeros((0, D)), np.full((2, D), np.nan)):
        with pytest.raises(ValueError):
            ex.replace(bad, 0)


# -- AsyncInference ------------------------------------------------------------------------
def test_async_submit_poll_busy_and_stats():
    gate = threading.Event()

    def fn(obs):
        gate.wait(5.0)
        return tick_chunk(obs, 4)

    inf = AsyncInference(fn, max_pending=1)
    try:
        assert inf.poll() is None
        assert inf.submit(5, tick=5) is True
        assert inf.busy and inf.submit(6, tick=6) is False
        gate.set()
        chunk, obs_tick = poll_until(inf)
        assert obs_tick == 5 and chunk.shape == (4, D) and chunk[0, 0] == 5
        assert not inf.busy
        stats = inf.latency_stats()
        assert stats.count == 1 and 0 < stats.p50 <= stats.p99 <= stats.max
    finally:
        assert inf.close(2.0)
    with pytest.raises(InferenceClosed):
        inf.submit(1, 1)


def test_async_errors_surface_and_worker_survives():
    def fn(obs):
        if obs == 'boom':
            raise RuntimeError('model exploded')
        if obs == 'nan':
            return np.full((2, D), np.nan)
        if obs == 'shape':
            return np.zeros(D)
        return np.ones((2, D))

    inf = AsyncInference(fn)
    try:
        for obs, cause in (('boom', RuntimeError), ('nan', ValueError), ('shape', ValueError)):
            assert inf.submit(obs, 3)
            wait_until(lambda: inf.pending == 0)
            with pytest.raises(PolicyInferenceError) as info:
                inf.poll()
            assert isinstance(info.value.__cause__, cause)
            assert 'tick 3' in str(info.value)
            assert info.value.obs_tick == 3
        assert inf.submit('ok', 4)
        chunk, tick = poll_until(inf)
        assert tick == 4 and chunk.shape == (2, D)
    finally:
        inf.close(2.0)


def test_async_error_message_names_the_cause():
    inf = AsyncInference(lambda obs: 1 / 0)
    try:
        inf.submit(None, 0)
        wait_until(lambda: inf.pending == 0)
        with pytest.raises(PolicyInferenceError, match='ZeroDivisionError'):
            inf.poll()
        assert inf.poll() is None  # reported once
    finally:
        inf.close(2.0)


def test_set_policy_fn_drops_stale_results():
    gate = threading.Event()

    def old(obs):
        gate.wait(5.0)
        return np.zeros((2, D))

    inf = AsyncInference(old)
    try:
        inf.submit(None, 0)
        inf.set_policy_fn(lambda obs: np.ones((2, D)))
        gate.set()
        wait_until(lambda: inf.pending == 0)
        assert inf.poll() is None  # result of the replaced policy was dropped
        inf.submit(None, 1)
        chunk, tick = poll_until(inf)
        assert tick == 1 and chunk[0, 0] == 1.0
    finally:
        inf.close(2.0)


def test_invalid_arguments():
    with pytest.raises(TypeError):
        AsyncInference(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        AsyncInference(lambda o: o, max_pending=0)
    with pytest.raises(ValueError):
        ChunkedController(lambda o: o, refill_when_remaining=-1)


# -- ChunkedController ---------------------------------------------------------------------
def test_controller_latency_offset_deterministic():
    release = threading.Event()

    def fn(obs):
        release.wait(5.0)
        return tick_chunk(obs, 6)

    ctl = ChunkedController(fn, refill_when_remaining=2)
    try:
        assert ctl.tick(0, 0) is None  # no chunk yet; request submitted for tick 0
        assert ctl.tick(1, 1) is None and ctl.tick(2, 2) is None
        release.set()
        wait_until(lambda: ctl.inference.pending == 0)
        a = ctl.tick(3, 3)  # chunk from tick 0 delivered at tick 3 -> row 3
        assert a is not None and a[0] == 3.0
        assert ctl.tick(4, 4)[0] == 4.0  # remaining 1 < 2 -> refill submitted at tick 4
        wait_until(lambda: ctl.inference.pending == 0)
        assert ctl.tick(7, 7)[0] == 7.0  # new chunk (obs tick 4) at offset 3
        assert ctl.tick(10, 10) is None  # exhausted; a refill is submitted
        ctl.reset()
        wait_until(lambda: ctl.inference.pending == 0)
        assert ctl.executor.chunk is None and ctl.inference.poll() is None
    finally:
        assert ctl.close(2.0)


def test_controller_surfaces_policy_errors():
    ctl = ChunkedController(lambda obs: (_ for _ in ()).throw(OSError('camera gone')))
    try:
        ctl.tick(0, 0)
        wait_until(lambda: ctl.inference.pending == 0)
        with pytest.raises(PolicyInferenceError, match='camera gone'):
            ctl.tick(1, 1)
    finally:
        ctl.close(2.0)


def test_controller_never_blocks_the_30hz_tick_with_a_slow_policy():
    k = 16

    def slow_policy(obs):
        time.sleep(0.1)  # a user's 100 ms model
        return tick_chunk(obs, k)

    ctl = ChunkedController(slow_policy, refill_when_remaining=8)
    period = 1.0 / 30.0
    actions: list[tuple[int, np.ndarray | None]] = []
    try:
        start = time.monotonic()
        for tick in range(45):
            deadline = start + tick * period
            delay = deadline - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            a = ctl.tick(tick, tick)
            actions.append((tick, a))
    finally:
        ctl.close(2.0)
    # (that a tick returns while the policy runs is test_controller_latency_offset_deterministic's
    # blocked policy; how long a tick takes is bench/bench_micro.py, docs/BENCHMARKS.md)
    got = [(t, a) for t, a in actions if a is not None]
    first = got[0][0]
    assert first <= 10  # the first chunk arrives after ~3 ticks
    # Every action after the first chunk is the one meant for its tick (latency compensated)
    # and the refill threshold keeps the robot fed.
    assert [t for t, _ in got] == list(range(first, 45))
    assert all(a[0] == t for t, a in got)
    stats = ctl.inference.latency_stats()
    assert stats.count >= 2 and stats.p50 >= 0.09


# -- a policy on a device ------------------------------------------------------------------


def _policy_and_obs():
    torch.set_num_threads(1)
    policy = make_policy('mlp', {'chunk_size': 5}, seed=2)
    ob = Observation(images={}, state=np.linspace(-1, 1, D).astype(np.float32))
    return policy, ob


def test_policy_runner_on_the_cpu_is_predict_chunk():
    policy, ob = _policy_and_obs()
    expected = policy.predict_chunk(ob)
    runner = PolicyRunner(policy, device='cpu')
    assert runner.device == torch.device('cpu') and runner.dtype is None
    assert not policy.training and not policy._forward_pre_hooks
    np.testing.assert_array_equal(runner(ob), expected)
    auto = PolicyRunner(policy)   # 'auto': CUDA when present, else the CPU
    assert auto.device.type == ('cuda' if torch.cuda.is_available() else 'cpu')
    out = auto(ob)
    assert out.shape == (5, D) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=0.02 if torch.cuda.is_available() else 0)
    with pytest.raises(TypeError, match='needs a Policy'):
        PolicyRunner(lambda o: o)  # type: ignore[arg-type]


def test_controller_runs_a_policy_on_its_device():
    policy, ob = _policy_and_obs()
    expected = policy.predict_chunk(ob)
    ctl = ChunkedController(policy, refill_when_remaining=0, device='cpu', precision='auto')
    try:
        assert ctl.device == torch.device('cpu')
        assert ctl.tick(ob, 0) is None
        wait_until(lambda: ctl.inference.pending == 0)
        np.testing.assert_array_equal(ctl.tick(ob, 1), expected[1])
        # a reloaded checkpoint (a policy again) goes the same way
        other = make_policy('mlp', {'chunk_size': 5}, seed=3)
        ctl.set_policy_fn(other)
        assert ctl.executor.chunk is None and not other.training
        ctl.tick(ob, 2)
        wait_until(lambda: ctl.inference.pending == 0)
        np.testing.assert_array_equal(ctl.tick(ob, 2), other.predict_chunk(ob)[0])
    finally:
        assert ctl.close(2.0)


def test_controller_device_errors():
    policy, _ = _policy_and_obs()
    # a policy function runs where it is: only 'auto' / 'cpu' make sense with one
    with pytest.raises(ValueError, match='pass the Policy itself'):
        ChunkedController(lambda o: o, device='cuda:0')
    with pytest.raises(DeviceError, match="device must be 'auto'"):
        ChunkedController(policy, device='gpu')
    with pytest.raises(DeviceError, match="'fp16' is not supported on cpu"):
        ChunkedController(policy, device='cpu', precision='fp16')
    if not torch.cuda.is_available():
        with pytest.raises(DeviceError, match="device 'cuda' is not available"):
            ChunkedController(policy, device='cuda')
    ChunkedController(lambda o: o, device='cpu').close(2.0)
