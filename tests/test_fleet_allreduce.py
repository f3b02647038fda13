"""The fleet's metric-weighted all-reduce over real torch.distributed (Gloo on 127.0.0.1).

Every ECU is a separate process (multiprocessing spawn); the test process hosts the rendezvous
store on a free port. Processes are always killed at the end of a test.
"""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import signal
import socket
import time
from multiprocessing.connection import wait as wait_readable
from typing import Any

import pytest
import torch
from torch import nn

from scarls.fleet import (
    FleetConfig,
    FleetConfigError,
    FleetError,
    FleetKey,
    FleetReducer,
    Rendezvous,
    cap_weights,
    flatten_trainable,
    reduction_weights,
    serve_rendezvous,
    state_bytes,
    trainable_parameters,
)
from scarls.fleet.allreduce import _eligible, _labels
from scarls.fleet.params import _write_back, choose_backend, reduction_device
from scarls.learner.evaluation import CheckpointGate
from scarls.learner.selector import fleet_decision

EPS = 1e-4
FAST = {
    'threshold': 0.05,
    'eps': EPS,
    'deadline_s': 1.5,
    'ready_timeout_s': 1.0,
    'reduce_timeout_s': 10.0,
    'store_timeout_s': 5.0,
    'poll_s': 0.005,
    # the test models differ by design (rank-scaled heads), far more than trained models do
    'max_param_change': 100.0,
}
KEY = FleetKey.generate()
pytestmark = pytest.mark.multiproc   # every ECU is a process (multiprocessing spawn)
# scheduling slack: wide, since these bounds only tell a deadline (0.3-1.5 s) from the
# 10-30 s waits it replaces; the lower bounds (it did wait the deadline) are exact
SLACK_S = 5.0


class _Net(nn.Module):
    """A trainable head with known values, a frozen backbone and a buffer."""

    def __init__(self, rank: int) -> None:
        super().__init__()
        self.backbone = nn.Linear(4, 4)
        self.head = nn.Linear(3, 2)
        self.scale = nn.Parameter(torch.tensor([rank + 1.0], dtype=torch.float64))
        self.register_buffer('stat', torch.full((5,), float(rank)))
        with torch.no_grad():
            self.backbone.weight.fill_(100.0 + rank)
            self.backbone.bias.fill_(-100.0 - rank)
            self.head.weight.copy_((rank + 1.0) * torch.arange(6.0).reshape(2, 3))
            self.head.bias.copy_(torch.tensor([rank + 1.0, -(rank + 1.0)]))
        self.backbone.requires_grad_(False)


HEAD_BYTES = (6 + 2) * 4 + 8  # float32 head + float64 scale
STATE_BYTES = (16 + 4 + 6 + 2 + 5) * 4 + 8


def _snapshot(model: _Net) -> dict[str, Any]:
    return {k: v.detach().double().flatten().tolist() for k, v in model.state_dict().items()}


class _Hooked(FleetReducer):
    """Blocks (for the test to kill it) at one point of one round."""

    def __init__(self, *args: Any, hook: tuple[str, int] | None, out: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._hook = hook
        self._out = out

    def _maybe_block(self, where: str, r: int) -> None:
        if self._hook == (where, r):
            self._out.send(('blocked', self.rank, r))
            time.sleep(3600)

    def _read_posts(self, store, r, members):  # after posting, before getting ready
        self._maybe_block('after_post', r)
        return super()._read_posts(store, r, members)

    def _process_group(self, store, idx, n, backend):  # group connected, before all-reduce
        pg = super()._process_group(store, idx, n, backend)
        self._maybe_block('in_reduce', self._next_round - 1)
        return pg


def _ecu(port, rank, world, plan, cfg, out, go, life=0, hook=None, host_store=False,
         own_cfg=None, key=None):
    # a pipe per process (no lock shared with a process the test kills); sends are synchronous
    torch.set_num_threads(1)
    model = _Net(rank)
    config = FleetConfig(**{**cfg, **(own_cfg or {})}, host_store=host_store)
    reducer = _Hooked(
        config,
        f'ecu{rank}',
        rendezvous=Rendezvous('127.0.0.1', port, rank, world),
        key=FleetKey.from_hex(key),
        hook=hook,
        out=out,
    )
    out.send(('ready', rank, life))
    go.wait(120)
    t_go = time.monotonic()
    res = None
    for step in plan:
        if step[0] == 'sleep':
            time.sleep(step[1])
        elif step[0] == 'block':
            out.send(('blocked', rank, -1))
            time.sleep(3600)
        elif step[0] == 'round':
            res = reducer.reduce(model, step[1])
            out.send(
                ('result', rank, life, res.to_dict(), _snapshot(model), time.monotonic() - t_go)
            )
        elif step[0] == 'verdict':  # fleet-level selection of the last round's model
            _, metric, frames, reference, pause = step
            time.sleep(pause)
            verdicts = reducer.agree_verdicts(
                res, {'metric': metric, 'frames': frames, 'episodes': 2, 'reference': reference})
            decision = fleet_decision(verdicts, CheckpointGate(cfg['threshold'], tolerance=0.05),
                                      res.participants)
            out.send(('verdicts', rank, life, verdicts, decision.approved, decision.metric,
                      decision.reason))
        elif step[0] == 'loop':  # rounds until one has `want` participants or time is up
            _, metric, want, pause, max_s = step
            while time.monotonic() - t_go < max_s:
                res = reducer.reduce(model, metric)
                snap = _snapshot(model)
                out.send(('result', rank, life, res.to_dict(), snap, time.monotonic() - t_go))
                if len(res.participants) >= want:
                    break
                time.sleep(pause)
    out.send(('done', rank, life))
    reducer.close()


class _Fleet:
    """ECU processes around one rendezvous host; :meth:`stop` always kills them."""

    def __init__(self, world: int, cfg: dict[str, Any] | None = None, host: bool = True):
        self.ctx = mp.get_context('spawn')
        self.world = world
        self.cfg = dict(FAST, **(cfg or {}))
        self.host = serve_rendezvous('127.0.0.1', 0) if host else None
        self.port = self.host.port if self.host else _free_port()
        self.readers: list[Any] = []
        self.go = self.ctx.Event()
        self.procs: dict[tuple[int, int], Any] = {}
        self.messages: list[tuple] = []
        self._seen = 0

    def start(self, rank: int, plan: list, life: int = 0, **kw: Any) -> None:
        reader, writer = self.ctx.Pipe(duplex=False)
        p = self.ctx.Process(
            target=_ecu,
            args=(self.port, rank, self.world, plan, self.cfg, writer, self.go, life),
            kwargs={'key': KEY.hex(), **kw},   # spawned: the child would make another KEY
            daemon=True,
        )
        p.start()
        writer.close()
        self.readers.append(reader)
        self.procs[(rank, life)] = p

    def _pull(self, timeout: float) -> None:
        for reader in wait_readable(self.readers, timeout):
            try:
                self.messages.append(reader.recv())
            except EOFError:  # the process ended
                self.readers.remove(reader)
                reader.close()

    def expect(self, pred, timeout: float = 45.0) -> tuple:
        """The first message (old or new) matching ``pred``."""
        end = time.monotonic() + timeout
        i = 0
        while True:
            while i < len(self.messages):
                if pred(self.messages[i]):
                    return self.messages[i]
                i += 1
            if time.monotonic() > end:
                dead = {k: p.exitcode for k, p in self.procs.items() if not p.is_alive()}
                raise AssertionError(f'timed out; messages {self.messages}; exited {dead}')
            self._pull(0.2)

    def ready(self, ranks: list[int], life: int = 0) -> None:
        for r in ranks:
            self.expect(lambda m, r=r: m[:3] == ('ready', r, life), timeout=90)

    def results(self, rank: int, life: int = 0) -> list[tuple[dict, dict, float]]:
        return [
            (m[3], m[4], m[5])
            for m in self.messages
            if m[0] == 'result' and m[1] == rank and m[2] == life
        ]

    def wait_results(self, rank: int, count: int, life: int = 0, timeout: float = 45.0):
        end = time.monotonic() + timeout
        while len(self.results(rank, life)) < count:
            if time.monotonic() > end:
                dead = {k: p.exitcode for k, p in self.procs.items() if not p.is_alive()}
                raise AssertionError(
                    f'rank {rank}: {len(self.results(rank, life))} results of '
                    f'{count}; messages {self.messages}; exited {dead}'
                )
            self._pull(0.2)
        return self.results(rank, life)

    def kill(self, rank: int, life: int = 0) -> None:
        p = self.procs[(rank, life)]
        os.kill(p.pid, signal.SIGKILL)
        p.join(10)

    def stop(self) -> None:
        for p in self.procs.values():
            if p.is_alive():
                p.kill()
        for p in self.procs.values():
            p.join(10)
        for reader in self.readers:
            reader.close()
        if self.host is not None:
            self.host.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture
def fleet_factory():
    fleets: list[_Fleet] = []

    def make(world: int, **kw: Any) -> _Fleet:
        f = _Fleet(world, **kw)
        fleets.append(f)
        return f

    try:
        yield make
    finally:
        for f in fleets:
            f.stop()


def _expected_head(metrics: dict[int, float]) -> dict[str, list[float]]:
    """The closed form: sum_i w_i * theta_i over the trainable parameters."""
    w = cap_weights(reduction_weights(metrics, FAST['threshold'], EPS), 0.75)
    nets = {k: _snapshot(_Net(k)) for k in w}
    out = {}
    for name in ('head.weight', 'head.bias', 'scale'):
        n = len(nets[next(iter(w))][name])
        out[name] = [sum(w[k] * nets[k][name][i] for k in w) for i in range(n)]
    return out


def _check_reduced(res: dict, snap: dict, rank: int, metrics: dict[int, float]) -> None:
    assert res['status'] == 'reduced', res
    want_w = cap_weights(reduction_weights(metrics, FAST['threshold'], EPS), 0.75)
    assert res['weights'] == pytest.approx({f'ecu{k}': v for k, v in want_w.items()}, rel=1e-12)
    assert res['participants'] == [f'ecu{k}' for k in sorted(want_w)]
    for name, values in _expected_head(metrics).items():
        tol = 1e-12 if name == 'scale' else 1e-5
        assert snap[name] == pytest.approx(values, abs=tol), name
    own = _snapshot(_Net(rank))
    for name in ('backbone.weight', 'backbone.bias', 'stat'):  # frozen / buffers untouched
        assert snap[name] == own[name], name
    assert res['payload_bytes'] == HEAD_BYTES
    assert res['state_bytes'] == STATE_BYTES


# -- in-process units ---------------------------------------------------------------------------


def test_flatten_only_trainable_and_write_back():
    net = _Net(1)
    params = trainable_parameters(net)
    assert [n for n, _ in params] == ['scale', 'head.weight', 'head.bias']
    bufs = flatten_trainable(params)
    assert sorted(str(b.dtype) for b, _ in bufs) == ['torch.float32', 'torch.float64']
    assert sum(b.numel() * b.element_size() for b, _ in bufs) == HEAD_BYTES
    assert state_bytes(net) == STATE_BYTES
    for b, ps in bufs:
        _write_back(b * 0.5, ps)
    assert torch.equal(net.head.weight, 1.0 * torch.arange(6.0).reshape(2, 3))
    assert net.scale.dtype == torch.float64 and float(net.scale.detach()) == 1.0
    assert float(net.backbone.weight[0, 0]) == 101.0


def test_config_and_rendezvous_validation():
    with pytest.raises(FleetConfigError, match='deadline_s'):
        FleetConfig(deadline_s=0)
    with pytest.raises(FleetConfigError, match='backend'):
        FleetConfig(backend='mpi')
    with pytest.raises(FleetConfigError, match='unknown'):
        FleetConfig.from_dict({'deadline': 3})
    assert FleetConfig.from_dict(FleetConfig(deadline_s=3).to_dict()).deadline_s == 3
    env = {'MASTER_ADDR': 'h', 'MASTER_PORT': '29500', 'RANK': '2', 'WORLD_SIZE': '3'}
    assert Rendezvous.from_env(env) == Rendezvous('h', 29500, 2, 3)
    assert Rendezvous.from_env(env, rank=0).rank == 0
    with pytest.raises(FleetConfigError, match='RANK'):
        Rendezvous.from_env({k: v for k, v in env.items() if k != 'RANK'})
    with pytest.raises(FleetConfigError, match='rank'):
        Rendezvous.from_env(dict(env, RANK='3'))
    with pytest.raises(FleetConfigError, match='MASTER_PORT'):
        Rendezvous.from_env(dict(env, MASTER_PORT='x'))


CUDA0, CUDA1, CPU = torch.device('cuda', 0), torch.device('cuda', 1), torch.device('cpu')


@pytest.mark.parametrize(
    ('want', 'devices', 'nccl', 'backend'),
    [
        ('auto', [CUDA0], True, 'nccl'),            # parameters on the GPU: NCCL
        ('auto', [CUDA0, CUDA0], True, 'nccl'),
        ('auto', ['cuda:1'], True, 'nccl'),
        ('auto', [CPU, CUDA1], True, 'nccl'),       # any CUDA parameter
        ('auto', [CPU], True, 'gloo'),              # on the CPU: Gloo
        ('auto', [CPU, CPU], False, 'gloo'),
        ('auto', [], True, 'gloo'),
        ('auto', [CUDA0], False, 'gloo'),           # no NCCL in this torch: Gloo via the CPU
        ('gloo', [CUDA0], True, 'gloo'),
        ('gloo', [CPU], True, 'gloo'),
        ('nccl', [CUDA0], True, 'nccl'),
    ],
)
def test_backend_choice(want, devices, nccl, backend):
    assert choose_backend(want, devices, nccl_available=nccl) == backend


def test_backend_choice_errors_and_this_machine():
    with pytest.raises(FleetError, match='not on CUDA'):
        choose_backend('nccl', [CPU], nccl_available=True)
    with pytest.raises(FleetError, match='built with NCCL'):
        choose_backend('nccl', [CUDA0], nccl_available=False)
    with pytest.raises(FleetConfigError, match='backend'):
        choose_backend('mpi', [CPU])
    # CPU parameters always reduce over Gloo, whatever torch was built with
    assert choose_backend('auto', (p.device for _, p in trainable_parameters(_Net(0)))) == 'gloo'
    red = FleetReducer(FleetConfig(), rendezvous=Rendezvous('127.0.0.1', 1, 0, 2), key=KEY)
    assert red._backend(trainable_parameters(_Net(0))) == 'gloo'


def test_reduction_buffers_live_on_the_backends_device():
    assert reduction_device('nccl', [CUDA1]) == CUDA1
    assert reduction_device('nccl', [CPU, 'cuda:0']) == CUDA0
    assert reduction_device('gloo', [CUDA0]) == CPU
    assert reduction_device('gloo', [CPU]) == CPU
    with pytest.raises(FleetError, match='CUDA device'):
        reduction_device('nccl', [CPU])


def test_eligibility_and_labels():
    posts = {
        0: {'metric': 0.01, 'passes': True, 'signature': 'a', 'ecu_id': 'x'},
        1: {'metric': 0.02, 'passes': True, 'signature': 'b', 'ecu_id': 'x'},
        2: {'metric': 0.03, 'passes': True, 'signature': 'b', 'ecu_id': 'z'},
        3: {'metric': None, 'passes': True, 'signature': 'a', 'ecu_id': 'w'},
        4: {'metric': 0.9, 'passes': False, 'signature': 'a', 'ecu_id': 'v'},
        5: {'metric': 0.01, 'passes': False, 'signature': 'a', 'ecu_id': 'u'},
    }
    assert _eligible(posts) == [1, 2]  # majority signature among passing ECUs
    assert _eligible({k: posts[k] for k in (0, 1)}) == [0]  # tie: lowest rank's
    assert _eligible({k: posts[k] for k in (3, 4, 5)}) == []  # the poster's verdict counts
    assert _labels(posts) == {0: 'x@0', 1: 'x@1', 2: 'z', 3: 'w', 4: 'v', 5: 'u'}


def test_fleet_of_one_needs_no_store():
    red = FleetReducer(FleetConfig(), 'solo', rendezvous=Rendezvous('127.0.0.1', 1, 0, 1))
    net = _Net(0)
    before = _snapshot(net)
    a, b = red.reduce(net, 0.01), red.reduce(net, 0.5)
    assert (a.round, a.status, dict(a.weights)) == (0, 'alone', {'solo': 1.0})
    assert (b.round, b.status) == (1, 'skipped')
    assert _snapshot(net) == before


def test_unusable_model_raises():
    class Ints(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.p = nn.Parameter(torch.zeros(2, dtype=torch.complex64))

    red = FleetReducer(FleetConfig(), rendezvous=Rendezvous('127.0.0.1', 1, 0, 2), key=KEY)
    with pytest.raises(FleetError, match='dtype'):
        red.reduce(Ints(), 0.01)


def test_store_restart_changes_the_epoch_and_the_ecu_rejoins():
    host = serve_rendezvous('127.0.0.1', 0)
    port = host.port
    cfg = FleetConfig(deadline_s=0.3, store_timeout_s=2.0, poll_s=0.005)
    red = FleetReducer(cfg, 'a', rendezvous=Rendezvous('127.0.0.1', port, 0, 2), key=KEY)
    net = _Net(0)
    try:
        r0 = red.reduce(net, 0.01)
        r1 = red.reduce(net, 0.01)
        assert [(r.round, r.status) for r in (r0, r1)] == [(0, 'alone'), (1, 'alone')]
        assert 0.25 < r0.wait_seconds < 0.3 + SLACK_S  # waited the deadline for rank 1
        host.close()
        host = serve_rendezvous('127.0.0.1', port)
        results = [red.reduce(net, 0.01) for _ in range(2)]
        statuses = [(r.round, r.status) for r in results]
        # the old connection breaks once ('failed'); then the new epoch restarts at round 0
        assert statuses in ([(2, 'failed'), (0, 'alone')], [(0, 'alone'), (1, 'alone')])
    finally:
        red.close()
        host.close()


def test_cancel_releases_a_waiting_ecu_at_once():
    import threading
    import time

    host = serve_rendezvous('127.0.0.1', 0)
    cfg = FleetConfig(deadline_s=30.0, store_timeout_s=2.0, poll_s=0.005)
    red = FleetReducer(cfg, 'a', rendezvous=Rendezvous('127.0.0.1', host.port, 0, 2),
                       key=KEY)
    try:
        threading.Timer(0.5, red.cancel).start()
        t0 = time.monotonic()
        result = red.reduce(_Net(0), 0.01)   # rank 1 never comes: would wait 30 s
        assert result.status == 'failed' and 'cancelled' in result.reason
        assert time.monotonic() - t0 < 0.5 + SLACK_S
    finally:
        red.close()
        host.close()


# -- real processes -----------------------------------------------------------------------------


@pytest.mark.parametrize('world', [2, 3])
def test_weighted_average_exact(fleet_factory, world):
    metrics = {0: 0.01, 1: 0.02, 2: 0.04}
    metrics = {k: metrics[k] for k in range(world)}
    # with two ECUs, rank 0 hosts the store itself (torchrun style)
    f = fleet_factory(world, host=world != 2)
    for k in range(world):
        plan = [('round', metrics[k])] + ([('sleep', 2.0)] if world == 2 and k == 0 else [])
        f.start(k, plan, host_store=world == 2 and k == 0)
    f.ready(list(range(world)))
    f.go.set()
    for k in range(world):
        res, snap, _ = f.wait_results(k, 1)[0]
        _check_reduced(res, snap, k, metrics)
        assert res['round'] == 0
        assert res['metrics'] == pytest.approx({f'ecu{j}': m for j, m in metrics.items()})
        # everybody posted: the round closed without waiting for the deadline
        assert res['wait_seconds'] < FAST['deadline_s']


def test_failing_ecu_skips_and_the_others_renormalise(fleet_factory):
    metrics = {0: 0.02, 1: 0.5, 2: 0.01}
    f = fleet_factory(3, cfg={'deadline_s': 20.0})
    for k in range(3):
        f.start(k, [('round', metrics[k])])
    f.ready([0, 1, 2])
    f.go.set()
    skipped, snap, _ = f.wait_results(1, 1)[0]
    assert skipped['status'] == 'skipped' and 'above the threshold' in skipped['reason']
    assert snap == _snapshot(_Net(1)) and skipped['weights'] == {}
    for k in (0, 2):
        res, snap, _ = f.wait_results(k, 1)[0]
        _check_reduced(res, snap, k, {0: 0.02, 2: 0.01})
        assert set(res['weights']) == {'ecu0', 'ecu2'}
        assert sum(res['weights'].values()) == pytest.approx(1.0)
        assert res['seconds'] < 10.0  # nobody waited for the 20 s deadline


def test_policies_of_different_robots_are_never_averaged(fleet_factory):
    # the same parameters (so the old signature check would average them), another robot
    metrics = {0: 0.02, 1: 0.01, 2: 0.01}
    robots = {0: 'sim_dual6:aaaa', 1: 'sim_dual6:aaaa', 2: 'arx5_pair:bbbb'}
    f = fleet_factory(3, cfg={'deadline_s': 20.0})
    for k in range(3):
        f.start(k, [('round', metrics[k])], own_cfg={'robot': robots[k]})
    f.ready([0, 1, 2])
    f.go.set()
    odd, snap, _ = f.wait_results(2, 1)[0]
    assert odd['status'] == 'failed'
    assert 'this ECU runs robot arx5_pair:bbbb, the fleet sim_dual6:aaaa' in odd['reason']
    assert snap == _snapshot(_Net(2))          # its own weights, untouched
    for k in (0, 1):
        res, snap, _ = f.wait_results(k, 1)[0]
        _check_reduced(res, snap, k, {0: 0.02, 1: 0.01})
        assert set(res['weights']) == {'ecu0', 'ecu1'}


def test_deadline_late_ecu_misses_then_rejoins(fleet_factory):
    d = FAST['deadline_s']
    f = fleet_factory(3)
    for k in (0, 1):
        f.start(k, [('round', 0.01)] * 3)
    f.start(2, [('round', 0.02), ('sleep', d + 0.5), ('round', 0.02), ('round', 0.02)])
    f.ready([0, 1, 2])
    f.go.set()
    for k in (0, 1):
        (a, _, _), (b, _, _), (c, _, _) = f.wait_results(k, 3)
        assert (a['round'], a['status'], len(a['participants'])) == (0, 'reduced', 3)
        # round 1: ECU 2 is late; the others close at the deadline and reduce among themselves
        assert (b['round'], b['status'], b['participants']) == (1, 'reduced', ['ecu0', 'ecu1'])
        assert d - 0.05 <= b['wait_seconds'] <= d + SLACK_S
        assert b['seconds'] <= d + 2 * SLACK_S
        # round 2: ECU 2 is back
        assert (c['round'], c['status'], len(c['participants'])) == (2, 'reduced', 3)
    (a, _, _), (late, snap, _), (back, _, _) = f.wait_results(2, 3)
    assert a['status'] == 'reduced'
    assert (late['round'], late['status'], late['next_round']) == (1, 'missed', 2)
    assert late['seconds'] < 0.5  # told at once, no waiting
    assert (back['round'], back['status']) == (2, 'reduced')
    assert back['participants'] == ['ecu0', 'ecu1', 'ecu2']


def test_killed_between_rounds_others_continue_and_a_restart_rejoins(fleet_factory):
    d = FAST['deadline_s']
    f = fleet_factory(3)
    for k in (0, 1):
        f.start(k, [('round', 0.01), ('loop', 0.01, 3, 0.2, 40.0)])
    f.start(2, [('round', 0.02), ('block',)])
    f.ready([0, 1, 2])
    f.go.set()
    f.expect(lambda m: m[:2] == ('blocked', 2))
    f.kill(2)
    # the survivors keep going without ECU 2 (never past the deadline)
    f.expect(lambda m: m[0] == 'result' and m[1] == 0 and m[3]['round'] >= 1)
    # a new process with the same rank rejoins the running fleet
    f.start(2, [('round', 0.02)], life=1)
    f.expect(lambda m: m[:3] == ('done', 2, 1), timeout=60)
    ((back, snap, _),) = f.results(2, life=1)
    assert back['status'] == 'reduced' and back['round'] >= 2
    assert back['participants'] == ['ecu0', 'ecu1', 'ecu2']
    for k in (0, 1):
        f.expect(lambda m, k=k: m[:2] == ('done', k))
        res = f.results(k)
        assert res[0][0]['status'] == 'reduced' and len(res[0][0]['participants']) == 3
        between = [r for r, _, _ in res[1:-1]]
        assert between and all(
            r['status'] == 'reduced' and r['participants'] == ['ecu0', 'ecu1'] for r in between
        )
        assert all(r['seconds'] <= d + 2 * SLACK_S for r in between)
        last = res[-1][0]
        assert last['round'] == back['round'] and len(last['participants']) == 3


def test_killed_after_posting_is_dropped_before_the_reduction(fleet_factory):
    f = fleet_factory(3)
    for k in (0, 1):
        f.start(k, [('round', 0.01)] * 3)
    f.start(2, [('round', 0.02), ('round', 0.02)], hook=('after_post', 1))
    f.ready([0, 1, 2])
    f.go.set()
    f.expect(lambda m: m[:3] == ('blocked', 2, 1))
    f.kill(2)
    for k in (0, 1):
        (a, _, _), (b, _, _), (c, _, _) = f.wait_results(k, 3)
        assert a['status'] == 'reduced' and len(a['participants']) == 3
        # ECU 2 posted in round 1 (a member) but never got ready: dropped after ready_timeout
        assert set(b['metrics']) == {'ecu0', 'ecu1', 'ecu2'}
        assert (b['round'], b['status'], b['participants']) == (1, 'reduced', ['ecu0', 'ecu1'])
        assert b['wait_seconds'] <= FAST['ready_timeout_s'] + SLACK_S
        assert (c['round'], c['status'], c['participants']) == (2, 'reduced', ['ecu0', 'ecu1'])


def test_killed_mid_reduce_fails_the_round_cleanly(fleet_factory):
    f = fleet_factory(3)
    for k in (0, 1):
        f.start(k, [('round', 0.01)] * 3)
    f.start(2, [('round', 0.02), ('round', 0.02)], hook=('in_reduce', 1))
    f.ready([0, 1, 2])
    f.go.set()
    f.expect(lambda m: m[:3] == ('blocked', 2, 1))
    time.sleep(0.3)  # the others are inside the all-reduce, waiting for ECU 2
    f.kill(2)
    for k in (0, 1):
        (a, snap_a, _), (b, snap_b, _), (c, _, _) = f.wait_results(k, 3)
        assert a['status'] == 'reduced'
        assert (b['round'], b['status']) == (1, 'failed') and 'all-reduce' in b['reason']
        assert snap_b == snap_a  # parameters untouched by the failed round
        assert b['seconds'] < FAST['reduce_timeout_s']
        assert (c['round'], c['status'], c['participants']) == (2, 'reduced', ['ecu0', 'ecu1'])


def test_round_results_are_finite(fleet_factory):
    """A NaN metric skips; the weights of the others stay finite."""
    f = fleet_factory(2)
    f.start(0, [('round', math.nan)])
    f.start(1, [('round', 0.01)])
    f.ready([0, 1])
    f.go.set()
    nan, _, _ = f.wait_results(0, 1)[0]
    ok, _, _ = f.wait_results(1, 1)[0]
    assert nan['status'] == 'skipped' and 'not finite' in nan['reason']
    assert ok['status'] == 'alone' and ok['weights'] == {'ecu1': 1.0}
    assert ok['metrics'] == {'ecu0': None, 'ecu1': 0.01}


def _verdicts(f: _Fleet, rank: int, timeout: float = 45.0, nth: int = 0) -> tuple:
    """The ``nth`` (from 0) 'verdicts' message of ``rank``."""
    end = time.monotonic() + timeout
    while True:
        got = [m for m in f.messages if m[0] == 'verdicts' and m[1] == rank]
        if len(got) > nth:
            return got[nth]
        if time.monotonic() > end:
            raise AssertionError(f'rank {rank}: {len(got)} verdicts; messages {f.messages}')
        f._pull(0.2)


def test_fleet_level_selection_every_participant_decides_alike(fleet_factory):
    """Each ECU judges the averaged model on its own held-out episodes and all three take one
    decision from the agreed verdicts. Round 0: every own error passes; the union weighs the
    ECUs by their frames with no share above 1/2: (0.03*0.4 + 0.045*0.4 + 0.02*0.2). Round 1:
    ecu1's own error (0.08) fails - the others' passing reports cannot deploy the model on
    ecu1, so nobody deploys it (the fleet decides alike)."""
    local = {0: [(0.03, 100, 0.04), (0.03, 100, 0.04)],
             1: [(0.045, 100, 0.05), (0.08, 100, 0.09)],
             2: [(0.02, 50, None), (0.001, 50, None)]}
    f = fleet_factory(3, cfg={'deadline_s': 20.0})
    for k in range(3):
        f.start(k, [('round', 0.01 * (k + 1)), ('verdict', *local[k][0], 0.2 * k),
                    ('round', 0.01 * (k + 1)), ('verdict', *local[k][1], 0.2 * k)])
    f.ready([0, 1, 2])
    f.go.set()
    for rnd in range(2):
        got = [_verdicts(f, k, nth=rnd) for k in range(3)]
        assert all(g[3] == got[0][3] for g in got), got   # the same verdicts everywhere
        assert set(got[0][3]) == {'ecu0', 'ecu1', 'ecu2'}
        if rnd == 0:
            assert all(g[4] is True for g in got), got
            assert got[0][5] == pytest.approx(0.03 * 0.4 + 0.045 * 0.4 + 0.02 * 0.2)
            assert 'fleet verdict over 3 ECUs' in got[0][6]
        else:
            assert all(g[4] is False for g in got), got
            assert 'own held-out episodes of ecu1' in got[0][6]


def test_fleet_level_selection_rejects_everywhere_and_does_not_wait_for_a_late_ecu(
        fleet_factory):
    """ecu2 evaluates too slowly: after the deadline the others fix the two verdicts they
    have; a participant without a verdict has not judged the model, so they reject it; the
    late ECU reads the same agreed verdicts and rejects too, its own verdict left out."""
    d = FAST['deadline_s']
    local = {0: (0.03, 100, 0.04, 0.0), 1: (0.04, 100, 0.05, 0.0), 2: (0.001, 100, 0.03, d + 2)}
    f = fleet_factory(3)
    for k in range(3):
        f.start(k, [('round', 0.01), ('verdict', *local[k])])
    f.ready([0, 1, 2])
    f.go.set()
    got = [_verdicts(f, k) for k in range(3)]
    assert all(set(g[3]) == {'ecu0', 'ecu1'} for g in got), got
    assert all(g[4] is False and 'no verdict from ecu2' in g[6] for g in got), got
