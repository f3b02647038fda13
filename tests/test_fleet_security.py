"""The fleet closed to strangers: where the store listens, the fleet key, rogue writers.

* The rendezvous store listens on the address it is given only: bound to 127.0.0.1 it is not
  reachable on another address of the machine (the host's end of a veth pair, from a network
  namespace); bound to that address it is.
* Every record the learners exchange is sealed with the fleet key (HMAC-SHA256, bound to its
  store key and the store's epoch); readers ignore what does not verify.
* A rogue process - on loopback, or in another network namespace over a veth pair - that
  writes forged posts, membership records, verdicts, a round hint and process-group addresses
  (unsigned, or sealed with a wrong key; ahead of the fleet and over its records) is refused,
  and the fleet's rounds are unaffected: the same members, weights, parameters and decisions
  as without it.
* A participant that holds the key but sends parameters far from everybody else's (a
  compromised ECU) gets its model vetoed on every participant by the sanity check.

Honest ECUs run as threads of the test (real Gloo over TCP); rogues are separate processes,
always ended by the test. Network namespaces are created by the test and always deleted.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from scarls.bringup.launcher import parent_death_preexec
from scarls.fleet import (
    KEY_ENV,
    KEY_FILE_ENV,
    FleetConfig,
    FleetConfigError,
    FleetKey,
    FleetKeyError,
    FleetReducer,
    Rendezvous,
    SignedStore,
    cap_weights,
    check_reduced,
    flatten_trainable,
    reduction_weights,
    serve_rendezvous,
    trainable_parameters,
    write_key_file,
)
from scarls.learner.evaluation import CheckpointGate
from scarls.learner.selector import fleet_decision

KEY = FleetKey.generate()
CFG = dict(threshold=0.05, deadline_s=30.0, ready_timeout_s=10.0, reduce_timeout_s=30.0,
           store_timeout_s=10.0, poll_s=0.01)
GATE = CheckpointGate(0.05, tolerance=0.05)
ROUNDS = 4
METRICS = {0: 0.01, 1: 0.02}


# -- the key ----------------------------------------------------------------------------------


def test_seal_and_open():
    sealed = KEY.seal('ns/r/0/post/1', '{"metric": 0.01}', 'epoch-a')
    assert KEY.open('ns/r/0/post/1', sealed, 'epoch-a') == b'{"metric": 0.01}'
    # another key, another store key, another epoch, an altered payload: refused
    assert FleetKey.generate().open('ns/r/0/post/1', sealed, 'epoch-a') is None
    assert KEY.open('ns/r/0/post/0', sealed, 'epoch-a') is None
    assert KEY.open('ns/r/1/post/1', sealed, 'epoch-a') is None
    assert KEY.open('ns/r/0/post/1', sealed, 'epoch-b') is None
    assert KEY.open('ns/r/0/post/1', sealed.replace(b'0.01', b'0.00'), 'epoch-a') is None
    for junk in (None, b'', b'{"metric": 0}', b'scarls-fleet1.', sealed[:-1], sealed + b' '):
        assert KEY.open('ns/r/0/post/1', junk, 'epoch-a') is None
    assert KEY.hex() not in repr(KEY) and KEY.key_id in repr(KEY)


@pytest.mark.multiproc
def test_key_files_and_environment(tmp_path, monkeypatch):
    path = tmp_path / 'keys' / 'fleet.key'
    key = write_key_file(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert FleetKey.from_file(path).key_id == key.key_id
    assert FleetKey.from_env({KEY_FILE_ENV: str(path)}).key_id == key.key_id
    assert FleetKey.from_env({KEY_ENV: key.hex()}).key_id == key.key_id
    other = write_key_file(tmp_path / 'other.key')
    # the parameter wins over the environment, the file over the hex
    assert FleetKey.from_env({KEY_FILE_ENV: str(path)}, path=tmp_path / 'other.key').key_id \
        == other.key_id
    assert FleetKey.from_env({KEY_FILE_ENV: str(path), KEY_ENV: other.hex()}).key_id \
        == key.key_id
    assert FleetKey.from_env({}) is None
    with pytest.raises(FleetKeyError, match='cannot read'):
        FleetKey.from_file(tmp_path / 'missing.key')
    (tmp_path / 'bad.key').write_text('not hex\n')
    with pytest.raises(FleetKeyError, match='not hex'):
        FleetKey.from_file(tmp_path / 'bad.key')
    with pytest.raises(FleetKeyError, match='at least'):
        FleetKey.from_hex('abcd')
    # a fleet of several ECUs cannot run without a key
    with pytest.raises(FleetConfigError, match='needs the fleet key'):
        FleetReducer(FleetConfig(), rendezvous=Rendezvous('127.0.0.1', 1, 0, 2))
    FleetReducer(FleetConfig(), rendezvous=Rendezvous('127.0.0.1', 1, 0, 1))   # alone: none
    # keygen on the command line
    out = subprocess.run([sys.executable, '-m', 'scarls.fleet', 'keygen',
                          str(tmp_path / 'cli.key')], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    key_id = FleetKey.from_file(tmp_path / 'cli.key').key_id
    assert key_id in out.stderr and (tmp_path / 'cli.key').stat().st_mode & 0o777 == 0o600


def test_signed_store_refuses_forged_values_and_waits_for_the_sealed_one():
    inner = dist.HashStore()
    store = SignedStore(inner, KEY, 'ctx', timeout_s=5.0, poll_s=0.01)
    inner.set('0/1', b'10.0.0.66:1234')     # a stranger's address, written first
    threading.Timer(0.3, store.set, args=('0/1', b'10.0.0.2:5678')).start()
    assert store.get('0/1') == b'10.0.0.2:5678'
    inner.set('0/2', KEY.seal('0/2', b'10.0.0.3:1', 'another round'))   # replayed
    quick = SignedStore(inner, KEY, 'ctx', timeout_s=0.2, poll_s=0.01)
    with pytest.raises(RuntimeError, match='no verified value'):
        quick.get('0/2')


def test_check_reduced():
    net = nn.Linear(3, 2)
    with torch.no_grad():
        net.weight.fill_(1.0)
        net.bias.fill_(1.0)
    params = trainable_parameters(net)
    buffers = flatten_trainable(params)
    assert check_reduced([(b * 1.2, ps) for b, ps in buffers], 0.5) is None
    assert 'moved by 2' in check_reduced([(b * 3.0, ps) for b, ps in buffers], 0.5)
    nan = [(b.clone().fill_(math.nan), ps) for b, ps in buffers]
    assert 'not finite' in check_reduced(nan, 0.5)
    with pytest.raises(FleetConfigError, match='max_param_change'):
        FleetConfig(max_param_change=0)
    with pytest.raises(FleetConfigError, match='max_weight'):
        FleetConfig(max_weight=1.5)


# -- where the store listens ------------------------------------------------------------------


def _connects(addr: str, port: int, netns: str | None = None) -> bool:
    """Whether a TCP connection to addr:port succeeds (from ``netns`` when given)."""
    code = ('import socket, sys\n'
            'try:\n'
            f'    socket.create_connection(({addr!r}, {port}), timeout=5).close()\n'
            'except OSError:\n'
            '    sys.exit(1)\n')
    cmd = [sys.executable, '-c', code]
    if netns:
        cmd = ['ip', 'netns', 'exec', netns, *cmd]
    return subprocess.run(cmd, capture_output=True, timeout=60).returncode == 0


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(['ip', *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f'ip {" ".join(args)}: {out.stderr.strip()}')
    return out


class _Veth:
    """A network namespace joined to this one by a veth pair (``host`` here, ``peer`` there)."""

    def __init__(self) -> None:
        pid = os.getpid()
        used = (_ip('-4', '-o', 'addr', 'show').stdout
                + _ip('-4', 'route', 'show', 'table', 'all').stdout)
        prefix = next(p for p in (f'10.232.{(pid + i) % 250 + 1}' for i in range(250))
                      if f'{p}.' not in used)
        self.netns, self.dev, self.peer_dev = f'scarls-sec-{pid}', f'scs{pid}h', f'scs{pid}p'
        self.host, self.peer = f'{prefix}.1', f'{prefix}.2'
        self.remove()
        _ip('netns', 'add', self.netns)
        _ip('link', 'add', self.dev, 'type', 'veth', 'peer', 'name', self.peer_dev)
        _ip('link', 'set', self.peer_dev, 'netns', self.netns)
        _ip('addr', 'add', f'{self.host}/24', 'dev', self.dev)
        _ip('link', 'set', self.dev, 'up')
        _ip('-n', self.netns, 'addr', 'add', f'{self.peer}/24', 'dev', self.peer_dev)
        _ip('-n', self.netns, 'link', 'set', 'lo', 'up')
        _ip('-n', self.netns, 'link', 'set', self.peer_dev, 'up')
        end = time.monotonic() + 30   # the link needs a moment (DAD, carrier)
        while not _connects_ping(self):
            if time.monotonic() > end:
                raise RuntimeError('the veth pair did not come up')
            time.sleep(0.2)

    def remove(self) -> None:
        out = _ip('netns', 'pids', self.netns, check=False)
        for pid in (out.stdout.split() if out.returncode == 0 else []):
            try:
                os.kill(int(pid), signal.SIGKILL)   # only ever this test's own processes
            except ProcessLookupError:
                pass
        _ip('link', 'del', self.dev, check=False)
        _ip('netns', 'del', self.netns, check=False)


def _connects_ping(v: _Veth) -> bool:
    return subprocess.run(['ip', 'netns', 'exec', v.netns, 'ping', '-c', '1', '-W', '1',
                           v.host], capture_output=True, timeout=30).returncode == 0 \
        if shutil.which('ping') else True


@pytest.fixture
def veth():
    if os.geteuid() != 0:
        pytest.skip('needs root: creates a network namespace and a veth pair')
    if shutil.which('ip') is None or _ip('netns', 'list', check=False).returncode != 0:
        pytest.skip('iproute2 (ip netns) is not available on this machine')
    v = None
    try:
        v = _Veth()
        yield v
    finally:
        if v is not None:
            v.remove()


@pytest.mark.multiproc
def test_the_store_listens_only_on_the_address_it_is_given(veth):
    loop = serve_rendezvous('127.0.0.1', 0)
    try:
        assert _connects('127.0.0.1', loop.port)
        # another address of this machine, from this namespace and from the other one
        assert not _connects(veth.host, loop.port)
        assert not _connects(veth.host, loop.port, veth.netns)
    finally:
        loop.close()
    wide = serve_rendezvous(veth.host, 0)   # the control: bound there, it is reachable
    try:
        assert _connects(veth.host, wide.port, veth.netns)
        assert not _connects('127.0.0.1', wide.port)
    finally:
        wide.close()
    # the rendezvous command says where it listens and refuses an address it cannot have
    out = subprocess.run([sys.executable, '-m', 'scarls.fleet', 'rendezvous', '--addr',
                          '192.0.2.77', '--port', '0'], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 2 and 'cannot host the rendezvous store' in out.stderr


# -- a rogue next to a running fleet ---------------------------------------------------------

ROGUE = r'''
import datetime, json, sys, time
import torch.distributed as dist
from scarls.fleet.auth import FleetKey
from scarls.bringup.launcher import parent_death_preexec

addr, port, mode, seconds = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
key = FleetKey.generate() if mode == 'wrong-key' else None
ns = 'scarls/fleet'
store = dist.TCPStore(addr, port, None, False, datetime.timedelta(seconds=10),
                      wait_for_workers=False)
wrote = 0

def forge(name, payload):
    data = payload if isinstance(payload, str) else json.dumps(payload)
    return key.seal(name, data) if key is not None else data

def first(name, payload):          # pre-empt a record the fleet has not written yet
    global wrote
    store.compare_set(name, '', forge(name, payload))
    wrote += 1

def over(name, payload):           # write over whatever is there
    global wrote
    store.set(name, forge(name, payload))
    wrote += 1

# a perfect model (error 0, the largest weight), approved by a verdict over a million frames
post = {'rank': 1, 'ecu_id': 'ecu1', 'metric': 0.0, 'passes': True, 'signature': 'x',
        'robot': '', 'eps': 1e-4, 'max_weight': 1.0}
approve = {'metric': 0.0, 'frames': 10**6, 'episodes': 10**6, 'reference': 1.0, 'veto': None}
first(f'{ns}/epoch', 'rogue-epoch')
over(f'{ns}/next', '1000000')
for r in range(12):
    base = f'{ns}/r/{r}'
    first(f'{base}/members', {'0': post, '1': post, '9': post})
    first(f'{base}/group', {'1': '1', '9': '1'})
    first(f'{base}/verdicts', {'0': approve, '1': approve})
    for k in (0, 1, 9):
        first(f'{base}/post/{k}', dict(post, rank=k))
        first(f'{base}/ready/{k}', '1')
        first(f'{base}/verdict/{k}', approve)
        first(f'{base}/pg/0/{k}', '127.0.0.1:1')   # the process group's member addresses
print('rogue ready', flush=True)

# then over the fleet's own records as they appear (once each), and replays of its sealed
# records into other keys (another rank, the next round)
done = set()
end = time.monotonic() + seconds
while time.monotonic() < end:
    for name in store.list_keys():
        kind = name.split('/')[-2] if name.count('/') >= 4 else ''
        if name in done or kind not in ('post', 'verdict', 'ready'):
            continue
        done.add(name)
        raw = store.get(name)
        body = raw.split(b'.', 2)[-1].decode(errors='replace')
        try:
            payload = json.loads(body)
            if isinstance(payload, dict) and 'metric' in payload:
                payload['metric'] = 0.0
        except ValueError:
            payload = body
        over(name, payload)
        parts = name.split('/')
        replay = '/'.join(parts[:-3] + [str(int(parts[-3]) + 1), parts[-2], parts[-1]])
        store.compare_set(replay, '', raw)
        store.compare_set('/'.join(parts[:-1] + ['9']), '', raw)
        wrote += 2
    time.sleep(0.02)
print(f'rogue wrote {wrote} records', flush=True)
'''


def _model(rank: int, scale: float = 1.0) -> nn.Module:
    net = nn.Linear(4, 3)
    with torch.no_grad():
        net.weight.copy_(torch.arange(12.0).reshape(3, 4) / 10 + 0.01 * rank)
        net.bias.fill_(1.0 + 0.01 * rank)
        net.weight.mul_(scale)
        net.bias.mul_(scale)
    return net


def _verdict(rank: int) -> dict:
    return {'metric': 0.02 + 0.001 * rank, 'frames': 100 + rank, 'episodes': 2,
            'reference': None, 'veto': None}


def _honest(addr: str, port: int, rank: int, out: dict, pause: float) -> None:
    red = FleetReducer(FleetConfig(**CFG), f'ecu{rank}', rendezvous=Rendezvous(addr, port, rank,
                                                                                   2), key=KEY)
    model = _model(rank)
    rounds = []
    try:
        for _ in range(ROUNDS):
            res = red.reduce(model, METRICS[rank])
            verdicts = red.agree_verdicts(res, _verdict(rank))
            decision = fleet_decision(verdicts, GATE, res.participants)
            rounds.append((res, verdicts, decision,
                           {n: p.detach().clone() for n, p in model.named_parameters()}))
            time.sleep(pause)
    finally:
        out[rank] = (rounds, red.refused_records)
        red.close()


def _run_fleet(addr: str, port: int, pause: float = 0.3) -> dict:
    out: dict = {}
    threads = [threading.Thread(target=_honest, args=(addr, port, k, out, pause), daemon=True)
               for k in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert not any(t.is_alive() for t in threads), 'the fleet did not finish its rounds'
    return out


def _check_unaffected(out: dict) -> None:
    weights = cap_weights(reduction_weights(METRICS), 0.75)
    want = {n: sum(weights[k] * dict(_model(k).named_parameters())[n].detach() for k in (0, 1))
            for n in ('weight', 'bias')}
    honest = {f'ecu{k}': _verdict(k) for k in (0, 1)}
    for k in (0, 1):
        rounds, _ = out[k]
        assert len(rounds) == ROUNDS
        for i, (res, verdicts, decision, params) in enumerate(rounds):
            assert (res.round, res.status, res.participants) == (i, 'reduced', ('ecu0', 'ecu1')), \
                res
            assert dict(res.weights) == pytest.approx({f'ecu{j}': w for j, w in weights.items()})
            assert dict(res.metrics) == pytest.approx({f'ecu{j}': m for j, m in METRICS.items()})
            assert verdicts == honest
            assert decision.approved, decision.reason
            for n, v in want.items():   # the average of the two, then a fixed point
                torch.testing.assert_close(params[n], v)


def _start_rogue(addr: str, port: int, mode: str, log: Path, netns: str | None = None):
    cmd = [sys.executable, '-c', ROGUE, addr, str(port), mode, '60']
    if netns:
        cmd = ['ip', 'netns', 'exec', netns, *cmd]
    f = open(log, 'w')  # noqa: SIM115 - handed to the child, closed below
    try:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=parent_death_preexec())
    finally:
        f.close()
    end = time.monotonic() + 90
    while 'rogue ready' not in log.read_text():
        if proc.poll() is not None or time.monotonic() > end:
            _stop(proc)
            raise AssertionError(f'the rogue did not start: {log.read_text()}')
        time.sleep(0.1)
    return proc


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


@pytest.mark.multiproc
@pytest.mark.parametrize('mode', ['no-key', 'wrong-key'])
def test_a_rogue_on_loopback_is_refused_and_the_rounds_are_unaffected(mode, tmp_path):
    host = serve_rendezvous('127.0.0.1', 0)
    rogue = None
    try:
        rogue = _start_rogue('127.0.0.1', host.port, mode, tmp_path / 'rogue.log')
        out = _run_fleet('127.0.0.1', host.port)
        assert rogue.poll() is None, (tmp_path / 'rogue.log').read_text()   # still at it
    finally:
        if rogue is not None:
            _stop(rogue)
        host.close()
    _check_unaffected(out)
    # both ECUs met the rogue's records and refused them
    assert all(out[k][1] > 0 for k in (0, 1)), {k: out[k][1] for k in (0, 1)}


@pytest.mark.multiproc
def test_a_rogue_in_another_network_namespace_is_refused(veth, tmp_path):
    """The store on the veth address (the fleet's network); the rogue on the other end with a
    wrong key; and a store bound to 127.0.0.1 it cannot even reach."""
    host = serve_rendezvous(veth.host, 0)
    rogue = None
    try:
        rogue = _start_rogue(veth.host, host.port, 'wrong-key', tmp_path / 'rogue.log',
                             veth.netns)
        out = _run_fleet(veth.host, host.port)
        assert rogue.poll() is None, (tmp_path / 'rogue.log').read_text()
    finally:
        if rogue is not None:
            _stop(rogue)
        host.close()
    _check_unaffected(out)
    assert all(out[k][1] > 0 for k in (0, 1))
    local = serve_rendezvous('127.0.0.1', 0)
    try:
        log = tmp_path / 'rogue_local.log'
        with open(log, 'w') as f:
            proc = subprocess.run(['ip', 'netns', 'exec', veth.netns, sys.executable, '-c',
                                   ROGUE, veth.host, str(local.port), 'no-key', '1'],
                                  stdout=f, stderr=subprocess.STDOUT, timeout=120)
        assert proc.returncode != 0 and 'rogue ready' not in log.read_text()
    finally:
        local.close()


# -- a compromised participant ----------------------------------------------------------------


def test_parameters_far_from_the_fleets_are_vetoed_on_every_participant():
    """ecu2 holds the key but is compromised: it reports error 0 (the capped 0.75 share) and
    sends parameters 1000 x everybody else's. The honest ECUs' sanity check fails (their
    parameters are kept); their vetoes reach ecu2's verdicts, so nobody deploys the model."""
    host = serve_rendezvous('127.0.0.1', 0)
    out: dict = {}

    def run(rank: int, scale: float, metric: float) -> None:
        red = FleetReducer(FleetConfig(**CFG), f'ecu{rank}',
                           rendezvous=Rendezvous('127.0.0.1', host.port, rank, 3), key=KEY)
        model = _model(rank, scale)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        try:
            res = red.reduce(model, metric)
            decision = None
            if res.status == 'reduced':
                verdicts = red.agree_verdicts(res, _verdict(rank))
                decision = fleet_decision(verdicts, GATE, res.participants)
            after = dict(model.named_parameters())
            out[rank] = (res, decision, all(torch.equal(before[n], after[n]) for n in before))
        finally:
            red.close()

    plan = {0: (1.0, 0.01), 1: (1.0, 0.02), 2: (1000.0, 0.0)}
    threads = [threading.Thread(target=run, args=(k, *plan[k]), daemon=True) for k in plan]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(180)
    finally:
        host.close()
    assert not any(t.is_alive() for t in threads)
    for k in (0, 1):
        res, decision, unchanged = out[k]
        assert res.status == 'failed' and 'sanity check of the reduced model' in res.reason
        assert 'moved by' in res.reason and unchanged, res.reason
        assert res.weights['ecu2'] == pytest.approx(0.75)
    res, decision, unchanged = out[2]
    assert res.status == 'reduced' and not unchanged
    assert not decision.approved and 'vetoed by ecu0' in decision.reason, decision.reason
    assert 'ecu1: sanity check' in decision.reason

