"""Start and stop an ECU's nodes as separate processes (the launcher for machines without
launch_ros), plus the ROS environment every scarls process gets. No rclpy here.

Each node runs as `python -m <module> --ros-args ...` built from `bringup.NodeSpec`, with its
output in `<log_dir>/<node>.log`. Stopping is graceful: SIGINT (nodes hold the robot and close
files), then SIGTERM, then SIGKILL; after a SIGKILL, Fast DDS shared-memory files left in /dev/shm
are cleaned so they do not pile up.

CPU priorities (:data:`NODE_NICENESS`): control > recording > training. The control nodes
(driver, actor, teleop, camera capture) run at the launcher's own priority, the scheduler
(recording) at nice +2 and the learner (training) at nice +10: on a busy machine the robot's
control loop and the recorder get the CPU first, and training - which can wait - takes what is
left (the learner also trains on one torch thread). Started through `nice -n`, so every thread
of the node inherits it. With launch_ros, the same: `prefix='nice -n 10'` on the learner's Node.

A node never outlives its launcher: on Linux every child asks the kernel for a SIGTERM when the
process that started it dies (:func:`parent_death_preexec`, PR_SET_PDEATHSIG), so a launcher that
is killed - or a test run that times out - takes its nodes with it (they stop as on Ctrl-C).
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scarls.bringup import NodeSpec, dds_profile_env

log = logging.getLogger(__name__)
#: Nice value added to a node's priority, by node name (others: 0, the launcher's own):
#: recording below control, training below recording.
NODE_NICENESS: dict[str, int] = {'scheduler': 2, 'learner': 10}


def node_niceness(name: str) -> int:
    """How much lower than the control nodes' the CPU priority of node ``name`` is."""
    return NODE_NICENESS.get(name, 0)


def nice_prefix(niceness: int) -> list[str]:
    """The command prefix that starts a process ``niceness`` steps nicer ([] for 0, or where
    there is no ``nice`` program: then :func:`renice` after the start)."""
    if niceness <= 0:
        return []
    program = shutil.which('nice')
    return [program, '-n', str(int(niceness))] if program else []


def renice(pid: int, niceness: int) -> None:
    """Make process ``pid`` ``niceness`` steps nicer than this one (best effort)."""
    try:
        os.setpriority(os.PRIO_PROCESS, pid, os.getpriority(os.PRIO_PROCESS, 0) + niceness)
    except OSError as exc:
        log.warning('could not lower the priority of pid %d: %s', pid, exc)


_PR_SET_PDEATHSIG = 1


def _libc_prctl():
    if not sys.platform.startswith('linux'):
        return None
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _libc_prctl()


def dump_stacks(nodes, settle_s: float = 1.0) -> None:
    """Ask nodes that ignored SIGINT and SIGTERM for their threads' stacks (SIGUSR1: every
    scarls node writes them to its log, see :func:`scarls.ros.node_utils.run_node`), then give
    them ``settle_s`` to write before they are killed."""
    for n in nodes:
        try:
            n.process.send_signal(signal.SIGUSR1)
        except ProcessLookupError:
            pass
    time.sleep(settle_s)


def parent_death_preexec(sig: int = signal.SIGTERM):
    """A ``preexec_fn`` for :class:`subprocess.Popen`: the child gets ``sig`` when the
    process starting it dies (Linux PR_SET_PDEATHSIG; kept across exec and ``nice``). None
    where the kernel has no such thing. Resolved before the fork: the child only calls prctl.
    Strictly, the signal comes when the *thread* that started the child ends: start children
    from a thread that lives as long as they should (the launchers use their main thread)."""
    if _PRCTL is None:
        return None
    parent = os.getpid()

    def preexec() -> None:
        _PRCTL(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:   # the parent died before the prctl: act as if after
            os.kill(os.getpid(), sig)
    return preexec


class LaunchError(RuntimeError):
    """A node could not be started or died."""


#: Participants (processes with a node) one host's localhost discovery reaches in one domain:
#: the initial-peer range of config/fastdds_shm.xml, every id a domain has ports for (unicast
#: port 7410 + 250 domain + 2 id: id 120 would take the next domain's ports, so the bound holds
#: with multicast discovery too).
DDS_PARTICIPANTS_PER_HOST = 120


def pick_domain_id() -> int:
    """A ROS_DOMAIN_ID for an isolated local run (0-232 are valid; avoid the common 0-9)."""
    return random.SystemRandom().randint(10, 232)


def ros_env(domain_id: int, *, localhost_only: bool = True, base: dict | None = None) -> dict:
    env = dict(os.environ if base is None else base)
    env['ROS_DOMAIN_ID'] = str(int(domain_id))
    env.setdefault('RMW_IMPLEMENTATION', 'rmw_fastrtps_cpp')
    if localhost_only:
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'LOCALHOST'
    elif env.get('ROS_AUTOMATIC_DISCOVERY_RANGE') in ('LOCALHOST', 'OFF'):
        env['ROS_AUTOMATIC_DISCOVERY_RANGE'] = 'SUBNET'   # asked for the network: get it
    env.update(dds_profile_env(env))
    env['PYTHONUNBUFFERED'] = '1'
    env.setdefault('OMP_NUM_THREADS', '1')
    return env


DDS_KEYS = ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE', 'FASTDDS_DEFAULT_PROFILES_FILE',
            'FASTRTPS_DEFAULT_PROFILES_FILE', 'RMW_IMPLEMENTATION')


def apply_ros_env(env: dict) -> None:
    """Give this process the DDS settings of ``env`` (a :func:`ros_env` result), for the
    rclpy context it creates itself (a monitor, the status view, the dashboard)."""
    for key in DDS_KEYS:
        if key in env:
            os.environ[key] = env[key]
        else:
            os.environ.pop(key, None)


def apply_tool_env(domain_id: int | None, network: bool) -> None:
    """A standalone tool's DDS settings from its ``--domain-id`` / ``--network`` flags: the ones
    `scarls ecu` gives its nodes. With neither, the tool was started by a launcher and keeps
    the environment it was given."""
    if domain_id is None and not network:
        return
    domain = domain_id if domain_id is not None else int(os.environ.get('ROS_DOMAIN_ID', '0') or 0)
    apply_ros_env(ros_env(domain, localhost_only=not network))


@dataclass
class RunningNode:
    spec: NodeSpec
    process: subprocess.Popen
    log_path: Path

    def tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors='replace').splitlines()
        except OSError:
            return ''
        return '\n'.join(text[-lines:])


class ProcessGroup:
    """The processes of one or more ECUs; always stop it (use as a context manager)."""

    def __init__(self, env: dict, log_dir: Path) -> None:
        self.env = env
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.nodes: list[RunningNode] = []
        self.killed = False
        self.created_at = time.time()   # shared memory files since then may be ours

    def start(self, spec: NodeSpec, params_file: str | None) -> RunningNode:
        niceness = node_niceness(spec.name)
        prefix = nice_prefix(niceness)
        cmd = [*prefix, sys.executable, '-m', spec.module, *spec.ros_args(params_file)]
        tag = f'{spec.namespace}_{spec.name}' if spec.namespace else spec.name
        log_path = self.log_dir / f'{tag}.log'
        out = open(log_path, 'ab')  # noqa: SIM115 - owned by the child; closed below
        try:
            proc = subprocess.Popen(cmd, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True,
                                    preexec_fn=parent_death_preexec())
        except OSError as exc:
            raise LaunchError(f'could not start {spec.fqn}: {exc}') from exc
        finally:
            out.close()
        if niceness > 0 and not prefix:
            renice(proc.pid, niceness)
        node = RunningNode(spec, proc, log_path)
        self.nodes.append(node)
        log.debug('started %s (pid %d): %s', spec.fqn, proc.pid, ' '.join(cmd))
        return node

    def dead(self) -> list[RunningNode]:
        return [n for n in self.nodes if n.process.poll() is not None]

    def restart(self, node: RunningNode, params_file: str | None) -> RunningNode:
        """Start a dead node's spec again (its log continues); Fast DDS shared memory of the
        dead process is cleaned first."""
        if node.process.poll() is None:
            raise LaunchError(f'{node.spec.fqn} is still running')
        self.nodes.remove(node)
        clean_fastdds_shm()
        return self.start(node.spec, params_file)

    def stop(self, timeout: float = 35.0) -> dict[str, int | None]:
        """Stop all nodes (last started first); returns exit codes by fully qualified name.

        `timeout` is how long SIGINT may take before SIGTERM: longer than the learner's own
        wait for its training thread (30 s: an evaluation under way is not interruptible), so a
        busy host does not turn a clean stop into a SIGTERM. Nodes that stop sooner end the wait.
        """
        for sig, wait in ((signal.SIGINT, timeout), (signal.SIGTERM, 3.0),
                          (signal.SIGKILL, 3.0)):
            alive = [n for n in reversed(self.nodes) if n.process.poll() is None]
            if not alive:
                break
            if sig is signal.SIGKILL:
                self.killed = True
                log.warning('killing %s (the stacks of its threads are at the end of its log)',
                            ', '.join(n.spec.fqn for n in alive))
                dump_stacks(alive)
            for n in alive:
                try:
                    n.process.send_signal(sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + wait
            for n in alive:
                try:
                    n.process.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    pass
        # what our nodes left in shared memory: a killed node's segments, or those of one that
        # exited without waiting for DDS (run_node's destroy_within); every exited
        # participant's port files
        if self.killed or orphaned_fastdds_segments(self.created_at):
            clean_fastdds_shm()
        remove_unused_fastdds_ports(self.created_at)
        return {n.spec.fqn: n.process.poll() for n in self.nodes}

    def __enter__(self) -> ProcessGroup:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _mapped_shm_files() -> set[str] | None:
    """Every /dev/shm file some process on this host has mapped (None: /proc unreadable)."""
    mapped: set[str] = set()
    try:
        pids = [p for p in os.listdir('/proc') if p.isdigit()]
    except OSError:
        return None
    for pid in pids:
        try:
            with open(f'/proc/{pid}/maps', encoding='utf-8', errors='replace') as maps:
                for line in maps:
                    at = line.find('/dev/shm/')
                    if at >= 0:
                        mapped.add(line[at:].strip().removesuffix(' (deleted)'))
        except OSError:   # gone, or not ours to read
            continue
    return mapped


def _unused_fastdds_files(since: float, shm_dir: str) -> list[str]:
    """Fast DDS files in ``shm_dir`` (``fastdds_*``: port files and data segments) created at
    or after ``since`` (a ``time.time()``) that no process maps any more."""
    mapped = _mapped_shm_files()
    if mapped is None:
        return []
    try:
        names = os.listdir(shm_dir)
    except OSError:
        return []
    unused = []
    for name in names:
        if not name.startswith('fastdds_'):
            continue
        path = os.path.join(shm_dir, name)
        try:
            if os.stat(path).st_mtime >= since and path not in mapped:
                unused.append(name)
        except OSError:
            continue
    return unused


def orphaned_fastdds_segments(since: float, shm_dir: str = '/dev/shm') -> list[str]:
    """Fast DDS data segments (``fastdds_<id>``, not port files) created at or after ``since``
    that no process maps any more: their participant exited without destroying them."""
    return [n for n in _unused_fastdds_files(since, shm_dir)
            if not n.startswith('fastdds_port')]


def remove_unused_fastdds_ports(since: float, shm_dir: str = '/dev/shm') -> list[str]:
    """Remove Fast DDS port files (``fastdds_port<N>`` and their ``sem.fastdds_port<N>_mutex``)
    created at or after ``since`` (a ``time.time()``) that no process maps any more.

    Fast DDS's own cleanup (:func:`clean_fastdds_shm`) removes segments whose owner is gone,
    but the port files of participants that all exited stay behind; a test run calls this at
    its end for the ports it created. Ports older than ``since`` or still mapped (a DDS
    participant of another program) are left alone. Returns the removed names."""
    removed = []
    for name in _unused_fastdds_files(since, shm_dir):
        if not (name.startswith('fastdds_port') and name[len('fastdds_port'):].isdigit()):
            continue
        try:
            os.unlink(os.path.join(shm_dir, name))
        except OSError:
            continue
        removed.append(name)
        try:
            os.unlink(os.path.join(shm_dir, f'sem.{name}_mutex'))
        except OSError:
            pass
    return removed


def clean_fastdds_shm() -> None:
    """Remove Fast DDS shared-memory files whose owners are gone (after a SIGKILL).

    Runs Fast DDS's own tool with this interpreter: its `fastdds` wrapper runs whatever
    `python3` is first on PATH, which may lack the tool's dependency (psutil) and then cleans
    nothing."""
    tool = Path(sys.prefix) / 'tools' / 'fastdds' / 'fastdds.py'
    fastdds = Path(sys.executable).with_name('fastdds')
    if tool.is_file():
        cmd = [sys.executable, str(tool), 'shm', 'clean']
    elif fastdds.exists():
        cmd = [str(fastdds), 'shm', 'clean']
    else:
        return
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=False)
    if result.returncode != 0 or 'shm.clean' not in result.stdout:
        log.warning('cleaning Fast DDS shared memory failed: %s',
                    (result.stderr or result.stdout).strip()[-300:])
