"""Two hosts, one ECU each: two network namespaces joined by a veth pair.

Host A (namespace ``scarls-a-<pid>``, ``10.231.<x>.1/24``) runs the fleet's rendezvous store
(``python -m scarls.fleet rendezvous``) and ECU ``ecu0``; host B (``scarls-b-<pid>``,
``10.231.<x>.2/24``) runs ECU ``ecu1``. Each ECU is a plain ``scarls ecu --learn --network``
started with ``ip netns exec``, with the learner's fleet parameters in its own params file
(rank 0 and 1 of 2, rendezvous at host A's address, the fleet key file made with
``python -m scarls.fleet keygen``), as on two machines (docs/FLEET.md). The namespaces hold
nothing but ``lo`` and their end of the veth pair: no default route, no bridge.

How DDS and the all-reduce get across:

- Discovery: Fast DDS's default discovery works over the veth pair as it is. Each participant
  announces itself to the SPDP multicast group (239.255.0.1, UDP port 7400 + 250 x domain id)
  out of every interface, by that interface's address, so neither a route for 224.0.0.0/4 nor
  ``ROS_STATIC_PEERS`` is needed; the rest of discovery and all user data are unicast UDP
  between the veth addresses. ``ROS_AUTOMATIC_DISCOVERY_RANGE`` must not be ``LOCALHOST``:
  ``scarls ecu --network`` only refrains from setting it, and a ``LOCALHOST`` inherited from
  the environment (this test suite's own default) keeps discovery on the host, so the ECUs here
  get ``SUBNET`` explicitly.
- Transport: the namespaces share ``/dev/shm``, and Fast DDS's shared-memory transport (part of
  the project's profile, config/fastdds_shm.xml) connects processes on one machine across
  network namespaces, past the veth. The ECUs here get a UDPv4-only Fast DDS profile (written
  to the test's tmp folder, selected with ``FASTDDS_DEFAULT_PROFILES_FILE``); the test checks
  that no process in the namespaces maps a ``/dev/shm/fastdds_*`` segment.
- All-reduce: Gloo binds to the local address that routes to ``MASTER_ADDR`` (host A's veth
  address), so the parameters travel over TCP on the veth pair.

The learners pre-train with different learning rates, so their local models differ before fleet
round 0 and equal parameters after it show that the all-reduce took place. The ECUs run for a
fixed time rather than a number of episodes (episodes run on the wall clock, while the learners'
start-up slows down with the machine's load), and they do not train online, which keeps the run
short and its end deterministic (one fleet round, round 0, after pre-training).

Checked: both ECUs exit 0; a probe node in namespace B receives ``/ecu0/actor/state`` from host
A; no Fast DDS shared memory is in use; both learners' registries hold fleet round 0 with two
participants, different local errors and published checkpoints with equal trainable parameters;
the veth pair carried at least the trainable parameters' bytes in each direction.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from scarls.bringup import default_params_file
from scarls.bringup.launcher import clean_fastdds_shm, parent_death_preexec
from scarls.checkpoints import load_checkpoint
from scarls.checkpoints.registry import CheckpointRecord, CheckpointRegistry
from scarls.fleet import trainable_parameters
from scarls.learner.demos import generate_demos

pytestmark = pytest.mark.ros

TASK = 'pick_cube'
H, W = 32, 40
PORT = 29500  # free in a fresh namespace
MINUTES = 1.5  # run time of each ECU
ECU_TIMEOUT_S = 240.0  # MINUTES plus start and stop, generously
LEARNER = {'pretrain_steps': 40, 'steps_per_round': 20, 'batch_size': 8, 'heldout_demos': 1,
           'threshold': 100.0, 'fleet_deadline_s': 60.0}
LEARNING_RATE = {'ecu0': 3e-3, 'ecu1': 1e-3}  # different local models before the round
NO_ONLINE_ROUNDS = 1_000_000  # scheduler min_train_steps: no episode triggers training

UDP_ONLY_PROFILE = """<?xml version="1.0" encoding="UTF-8" ?>
<!-- UDPv4 only: no shared memory, so data between the namespaces has to cross the veth -->
<dds xmlns="http://www.eprosima.com">
  <profiles>
    <transport_descriptors>
      <transport_descriptor>
        <transport_id>udp_only</transport_id>
        <type>UDPv4</type>
      </transport_descriptor>
    </transport_descriptors>
    <participant profile_name="udp_only_participant" is_default_profile="true">
      <rtps>
        <userTransports>
          <transport_id>udp_only</transport_id>
        </userTransports>
        <useBuiltinTransports>false</useBuiltinTransports>
      </rtps>
    </participant>
  </profiles>
</dds>
"""

# Runs in namespace B until it received the actor state of both ECUs (ecu0 is on host A).
PROBE = """
import json, sys, time
import rclpy
from scarls_interfaces.msg import ActorState
from scarls.ros import qos

rclpy.init(args=[])
node = rclpy.create_node('two_hosts_probe')
seen = {}
for ecu in ('ecu0', 'ecu1'):
    node.create_subscription(ActorState, f'/{ecu}/actor/state',
                             lambda msg, ecu=ecu: seen.setdefault(ecu, msg.phase), qos.STATE)
end = time.monotonic() + float(sys.argv[1])
while len(seen) < 2 and time.monotonic() < end:
    rclpy.spin_once(node, timeout_sec=0.1)
print(json.dumps(seen), flush=True)
node.destroy_node()
rclpy.try_shutdown()
sys.exit(0 if len(seen) == 2 else 1)
"""


@dataclass(frozen=True)
class Host:
    netns: str
    dev: str
    addr: str


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(['ip', *args], capture_output=True, text=True, timeout=30)
    if check and out.returncode != 0:
        raise RuntimeError(f'ip {" ".join(args)}: {out.stderr.strip()}')
    return out


def _free_subnet() -> str:
    """``10.231.<x>`` with no address or route on this host (x chosen from the pid)."""
    used = (_ip('-4', '-o', 'addr', 'show').stdout
            + _ip('-4', 'route', 'show', 'table', 'all').stdout)
    for i in range(250):
        prefix = f'10.231.{(os.getpid() + i) % 250 + 1}'
        if f'{prefix}.' not in used:
            return prefix
    raise RuntimeError('no free 10.231.x.0/24 subnet')


def _netns_pids(netns: str) -> list[int]:
    out = _ip('netns', 'pids', netns, check=False)
    return [int(p) for p in out.stdout.split()] if out.returncode == 0 else []


def _remove_netns(netns: str) -> None:
    """Stop what still runs in the namespace (processes of this test), then delete it."""
    for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 3.0)):
        pids = _netns_pids(netns)
        if not pids:
            break
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        end = time.monotonic() + wait
        while _netns_pids(netns) and time.monotonic() < end:
            time.sleep(0.1)
    _ip('netns', 'del', netns, check=False)


@pytest.fixture
def two_hosts():
    """Namespaces A and B joined by a veth pair; always deleted afterwards."""
    if os.geteuid() != 0:
        pytest.skip('needs root: creates network namespaces and a veth pair')
    if shutil.which('ip') is None:
        pytest.skip('iproute2 (ip) is not installed')
    if _ip('netns', 'list', check=False).returncode != 0:
        pytest.skip('ip netns is not available on this machine')
    pid = os.getpid()
    prefix = _free_subnet()
    a = Host(f'scarls-a-{pid}', f'sc{pid}a', f'{prefix}.1')
    b = Host(f'scarls-b-{pid}', f'sc{pid}b', f'{prefix}.2')
    try:
        for h in (a, b):
            _remove_netns(h.netns)  # left over from a crashed run with the same pid
            made = _ip('netns', 'add', h.netns, check=False)
            if made.returncode != 0:
                pytest.skip(f'cannot create a network namespace: {made.stderr.strip()}')
        _ip('link', 'add', a.dev, 'type', 'veth', 'peer', 'name', b.dev)
        for h in (a, b):
            _ip('link', 'set', h.dev, 'netns', h.netns)
            _ip('-n', h.netns, 'addr', 'add', f'{h.addr}/24', 'dev', h.dev)
            _ip('-n', h.netns, 'link', 'set', 'lo', 'up')
            _ip('-n', h.netns, 'link', 'set', h.dev, 'up', 'multicast', 'on')
        yield a, b
    finally:
        for h in (a, b):
            _remove_netns(h.netns)  # takes the veth pair with it
        clean_fastdds_shm()


def _veth_bytes(h: Host) -> tuple[int, int]:
    """(received, sent) bytes of the host's end of the veth pair."""
    stats = json.loads(_ip('-n', h.netns, '-j', '-s', 'link', 'show', 'dev', h.dev).stdout)
    return stats[0]['stats64']['rx']['bytes'], stats[0]['stats64']['tx']['bytes']


def _start(h: Host, cmd: list[str], env: dict, log_path: Path) -> subprocess.Popen:
    out = open(log_path, 'wb')  # noqa: SIM115 - owned by the child; closed below
    try:
        return subprocess.Popen(['ip', 'netns', 'exec', h.netns, *cmd], env=env, stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                start_new_session=True, preexec_fn=parent_death_preexec())
    finally:
        out.close()


def _stop(proc: subprocess.Popen) -> None:
    """SIGINT (an ECU stops its nodes), then SIGKILL, to the process group of ``proc``."""
    for sig, wait in ((signal.SIGINT, 30.0), (signal.SIGKILL, 5.0)):
        if proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            pass


def _shm_segments(hosts: tuple[Host, ...]) -> dict[int, set[str]]:
    """Fast DDS shared-memory files mapped by the processes running in the namespaces."""
    found = {}
    for h in hosts:
        for pid in _netns_pids(h.netns):
            try:
                maps = Path(f'/proc/{pid}/maps').read_text()
            except OSError:  # exited meanwhile
                continue
            names = {line.split()[-1] for line in maps.splitlines()
                     if '/dev/shm/fastdds' in line}
            if names:
                found[pid] = names
    return found


def _params_file(path: Path, ecu: str, rank: int, offline: Path, rendezvous: Host,
                 key_file: Path) -> Path:
    params = yaml.safe_load(default_params_file().read_text())
    params['/**/learner']['ros__parameters'].update(
        **LEARNER, lr=LEARNING_RATE[ecu], offline_root=str(offline), fleet=True,
        fleet_addr=rendezvous.addr, fleet_port=PORT, fleet_rank=rank, fleet_world_size=2,
        fleet_key_file=str(key_file))
    params['/**/scheduler']['ros__parameters']['min_train_steps'] = NO_ONLINE_ROUNDS
    path.write_text(yaml.safe_dump(params))
    return path


def _fleet_records(root: Path) -> dict[int, CheckpointRecord]:
    """Approved records with weights of fleet rounds that had two participants, by round."""
    registry = CheckpointRegistry(root / 'checkpoints' / TASK, keep_last=100)
    return {int(r.metrics['fleet_round']): r for r in registry.records()
            if r.metrics.get('fleet_participants') == 2.0 and r.approved and r.has_weights}


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors='replace').splitlines()
    except OSError:
        return f'({path} missing)'
    return f'--- {path.name} ---\n' + '\n'.join(text[-lines:])


@pytest.mark.timeout(480)
def test_one_ecu_per_host_reduce_across_a_veth_pair(two_hosts, tmp_path, domain_id):
    a, b = two_hosts
    t0 = time.monotonic()
    # the same demonstrations for both learners (on real hosts: a copy or a shared mount);
    # each data root's offline/ points at them so `scarls ecu --learn` does not write its own
    offline = tmp_path / 'offline'
    generate_demos(offline, TASK, 4, seed=10_000, image_shape=(H, W))
    profile = tmp_path / 'fastdds_udp_only.xml'
    profile.write_text(UDP_ONLY_PROFILE)
    env = dict(os.environ)
    env.pop('FASTRTPS_DEFAULT_PROFILES_FILE', None)
    env.pop('ROS_STATIC_PEERS', None)
    env.update(FASTDDS_DEFAULT_PROFILES_FILE=str(profile), ROS_AUTOMATIC_DISCOVERY_RANGE='SUBNET',
               ROS_DOMAIN_ID=str(domain_id), PYTHONUNBUFFERED='1')
    hosts = {'ecu0': (a, 0), 'ecu1': (b, 1)}
    roots = {'ecu0': tmp_path / 'host_a', 'ecu1': tmp_path / 'host_b'}
    before = _veth_bytes(a)

    procs: list[subprocess.Popen] = []
    ecus: dict[str, subprocess.Popen] = {}
    rdv_log = tmp_path / 'rendezvous.log'
    key_file = tmp_path / 'fleet.key'   # on real hosts: copied to each learner host
    subprocess.run([sys.executable, '-m', 'scarls.fleet', 'keygen', str(key_file)], check=True,
                   timeout=60, capture_output=True)
    assert key_file.stat().st_mode & 0o777 == 0o600
    try:
        rdv = _start(a, [sys.executable, '-m', 'scarls.fleet', 'rendezvous', '--addr', a.addr,
                         '--port', str(PORT)], env, rdv_log)
        procs.append(rdv)
        end = time.monotonic() + 60
        while 'listening' not in rdv_log.read_text(errors='replace'):
            assert rdv.poll() is None and time.monotonic() < end, _tail(rdv_log)
            time.sleep(0.2)
        for ecu, (h, rank) in hosts.items():
            root = roots[ecu]
            root.mkdir()
            (root / 'offline').symlink_to(offline, target_is_directory=True)
            params = _params_file(tmp_path / f'{ecu}_params.yaml', ecu, rank, offline, a,
                                  key_file)
            ecus[ecu] = _start(h, [
                sys.executable, '-m', 'scarls.cli', 'ecu', '--learn', '--network',
                '--ecu-id', ecu, '--domain-id', str(domain_id), '--data-root', str(root),
                '--log-dir', str(root / 'logs'), '--params-file', str(params),
                '--summary', str(root / 'summary.json'), '--seed', str(1000 * rank),
                '--episodes', '0', '--minutes', str(MINUTES), '--height', str(H),
                '--width', str(W), '--max-steps', '120', '--train-interval', '0'],
                env, tmp_path / f'{ecu}.out')
            procs.append(ecus[ecu])
        # discovery across the hosts: a node on host B receives ecu0's state from host A
        probe = subprocess.run(['ip', 'netns', 'exec', b.netns, sys.executable, '-c', PROBE,
                                '120'], env=env, capture_output=True, text=True, timeout=180,
                               preexec_fn=parent_death_preexec())
        assert probe.returncode == 0, probe.stdout + probe.stderr[-3000:]
        # all ECU processes are up now: none of them may use DDS shared memory
        shm = _shm_segments((a, b))
        assert not shm, f'Fast DDS shared memory in use across the namespaces: {shm}'
        end = time.monotonic() + ECU_TIMEOUT_S
        for proc in ecus.values():
            proc.wait(timeout=max(1.0, end - time.monotonic()))
    finally:
        for proc in reversed(procs):
            _stop(proc)
    logs = '\n'.join(_tail(tmp_path / f'{ecu}.out') for ecu in ecus)
    for ecu, proc in ecus.items():
        assert proc.returncode == 0, f'{ecu} exited {proc.returncode}\n{logs}'
        summary = json.loads((roots[ecu] / 'summary.json').read_text())
        assert summary['ok'] and summary['episodes'], (ecu, summary['error'])
        learner_log = (roots[ecu] / 'logs' / f'{ecu}_learner.log').read_text(errors='replace')
        assert f'fleet rank {hosts[ecu][1]} of 2 (fleet key ' in learner_log, learner_log[-3000:]

    # a round both learners reduced together and published: equal trainable parameters,
    # although their local models differed
    records = {ecu: _fleet_records(roots[ecu]) for ecu in hosts}
    both = sorted(set(records['ecu0']) & set(records['ecu1']))
    assert both, (f'no approved two-participant fleet round on both hosts: '
                  f'{ {e: sorted(r) for e, r in records.items()} }\n{logs}')
    pair = {ecu: records[ecu][both[0]] for ecu in hosts}
    local = {ecu: r.metrics['local_open_loop_error'] for ecu, r in pair.items()}
    assert local['ecu0'] != local['ecu1'], local
    weights = {}
    for ecu, record in pair.items():
        policy, _ = load_checkpoint(record.path, expected_sha256=record.sha256)
        weights[ecu] = dict(trainable_parameters(policy))
    assert weights['ecu0'].keys() == weights['ecu1'].keys()
    for name, value in weights['ecu0'].items():
        torch.testing.assert_close(value, weights['ecu1'][name], msg=name)

    # and it went over the veth pair: the all-reduce alone moves the trainable parameters
    # (float32) each way
    payload = sum(v.numel() * 4 for v in weights['ecu0'].values())
    after = _veth_bytes(a)
    received, sent = after[0] - before[0], after[1] - before[1]
    assert received >= payload and sent >= payload, (received, sent, payload)
    print(f'two hosts: fleet round {both[0]} reduced across the veth (local errors {local}); '
          f'veth A received {received} and sent {sent} bytes (trainable parameters {payload} '
          f'bytes, checkpoint {pair["ecu0"].size} bytes); {time.monotonic() - t0:.0f} s')
