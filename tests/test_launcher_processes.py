"""Processes of an ECU: CPU priorities (control > recording > training), nodes that stop with
their launcher however it ends, and the cleanup of
Fast DDS shared memory after a kill."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from scarls.bringup import NodeSpec, ecu_nodes, launcher


def test_priority_order_control_recording_training() -> None:
    names = [s.name for s in ecu_nodes('ecu0', learner=True)]
    assert {'driver', 'actor', 'teleop', 'scheduler', 'learner'} <= set(names)
    nice = {n: launcher.node_niceness(n) for n in names}
    assert nice['driver'] == nice['actor'] == nice['teleop'] == 0
    assert 0 < nice['scheduler'] < nice['learner']


@pytest.mark.multiproc
def test_nice_prefix_really_lowers_every_thread_of_the_child() -> None:
    code = ('import os, threading\n'
            'out = []\n'
            't = threading.Thread(target=lambda: out.append(os.getpriority(os.PRIO_PROCESS, '
            'threading.get_native_id())))\n'
            't.start(); t.join()\n'
            'print(os.getpriority(os.PRIO_PROCESS, 0), out[0])\n')
    base = os.getpriority(os.PRIO_PROCESS, 0)
    out = subprocess.run([*launcher.nice_prefix(10), sys.executable, '-c', code],
                         capture_output=True, text=True, timeout=60, check=True).stdout.split()
    assert [int(x) for x in out] == [min(19, base + 10)] * 2
    assert launcher.nice_prefix(0) == []


def test_process_group_starts_the_learner_niced(tmp_path, monkeypatch) -> None:
    started = []

    class FakePopen:
        def __init__(self, cmd, **kwargs) -> None:
            started.append(cmd)
            self.pid = 1

        def poll(self):
            return 0

    monkeypatch.setattr(launcher.subprocess, 'Popen', FakePopen)
    group = launcher.ProcessGroup({}, tmp_path)
    for name in ('driver', 'scheduler', 'learner'):
        group.start(NodeSpec(name, f'scarls.{name}.node', 'ecu0'), None)
    driver, scheduler, learner = started
    assert driver[0] == sys.executable
    assert scheduler[1:3] == ['-n', '2'] and scheduler[3] == sys.executable
    assert learner[1:3] == ['-n', '10'] and learner[3] == sys.executable


@pytest.mark.multiproc
def test_clean_fastdds_shm_removes_segments_of_dead_owners() -> None:
    """The cleanup really runs (Fast DDS's `fastdds` wrapper may pick a python without the
    tool's dependencies and clean nothing): an unlocked (zombie) segment goes, nothing else."""
    import secrets
    from pathlib import Path
    shm = Path('/dev/shm')
    name = 'fastdds_' + secrets.token_hex(8)
    segment, lock = shm / name, shm / f'{name}_el'
    try:
        segment.write_bytes(b'\0' * 64)
        lock.write_bytes(b'')
        launcher.clean_fastdds_shm()
        assert not segment.exists() and not lock.exists()
    finally:
        segment.unlink(missing_ok=True)
        lock.unlink(missing_ok=True)


def test_unused_fastdds_port_files_of_a_run_are_removed(tmp_path) -> None:
    """Port files a run's participants left (no process maps them) go at its end; a mapped
    one (a live participant of another program) and an older one stay."""
    import mmap
    import secrets
    import time
    shm = Path('/dev/shm')
    base = 90000 + secrets.randbelow(9000)
    files = {k: shm / f'fastdds_port{base + i}' for i, k in enumerate(('left', 'mapped', 'old'))}
    sems = {k: shm / f'sem.{p.name}_mutex' for k, p in files.items()}
    since = time.time() - 1
    try:
        for k in files:
            files[k].write_bytes(b'\0' * 4096)
            sems[k].write_bytes(b'\0' * 32)
        os.utime(files['old'], (since - 60, since - 60))
        with open(files['mapped'], 'r+b') as f, mmap.mmap(f.fileno(), 4096):
            removed = launcher.remove_unused_fastdds_ports(since)
            assert files['left'].name in removed and not files['left'].exists()
            assert not sems['left'].exists()
            assert files['mapped'].exists() and sems['mapped'].exists()
            assert files['old'].exists()
    finally:
        for p in (*files.values(), *sems.values()):
            p.unlink(missing_ok=True)


PARENT = '''
import sys, time
from scarls.bringup import NodeSpec, default_params_file
from scarls.bringup.launcher import ProcessGroup, ros_env
group = ProcessGroup(ros_env(int(sys.argv[1])), sys.argv[2])
node = group.start(NodeSpec('driver', 'scarls.driver.node', 'pdeath',
                            {'image_height': 24, 'image_width': 32}),
                   str(default_params_file()))
print(node.process.pid, flush=True)
time.sleep(600)
'''


@pytest.mark.ros
def test_a_node_does_not_outlive_its_killed_launcher(tmp_path, domain_id) -> None:
    """SIGKILL the launcher (no chance to stop its group): the node, in a session of its own,
    still gets SIGTERM from the kernel (PR_SET_PDEATHSIG) and stops."""
    import signal
    import time

    import psutil
    parent = subprocess.Popen([sys.executable, '-c', PARENT, str(domain_id), str(tmp_path)],
                              stdout=subprocess.PIPE, text=True,
                              preexec_fn=launcher.parent_death_preexec())
    child = None
    try:
        child = psutil.Process(int(parent.stdout.readline()))
        assert child.is_running() and os.getsid(child.pid) != os.getsid(parent.pid)
        parent.send_signal(signal.SIGKILL)
        parent.wait(30)
        end = time.monotonic() + 60
        while child.is_running() and child.status() != psutil.STATUS_ZOMBIE \
                and time.monotonic() < end:
            time.sleep(0.2)
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE, \
            'the node outlived its launcher'
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child is not None and child.is_running():
            child.kill()


STUBBORN = '''
import signal

from rclpy.node import Node

from scarls.ros.node_utils import run_node


class Stubborn(Node):
    """A node that ignores SIGINT and SIGTERM, as a hung one would."""

    def __init__(self):
        super().__init__('stubborn')
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print('ignoring SIGINT and SIGTERM', flush=True)


if __name__ == '__main__':
    raise SystemExit(run_node(Stubborn))
'''


def _run_script_node(tmp_path, domain_id, name: str, source: str, ready: str,
                     stop_timeout: float = 35.0):
    """Start the node module ``source`` through a ProcessGroup, wait for ``ready`` in its log,
    stop the group: (the group, its exit codes, the node's log)."""
    import time

    (tmp_path / f'{name}_node.py').write_text(source)
    env = launcher.ros_env(domain_id)
    env['PYTHONPATH'] = os.pathsep.join(p for p in (str(tmp_path), env.get('PYTHONPATH')) if p)
    group = launcher.ProcessGroup(env, tmp_path / 'logs')
    node = group.start(NodeSpec(name, f'{name}_node', ''), None)
    log = tmp_path / 'logs' / f'{name}.log'
    try:
        end = time.monotonic() + 60
        while ready not in log.read_text() and time.monotonic() < end:
            assert node.process.poll() is None, log.read_text()
            time.sleep(0.2)
        codes = group.stop(timeout=stop_timeout)
    finally:
        if node.process.poll() is None:
            node.process.kill()
            node.process.wait()
    return group, codes, log.read_text()


@pytest.mark.ros
def test_a_node_that_will_not_stop_leaves_its_stacks_in_its_log(tmp_path, domain_id) -> None:
    """A node that ignores SIGINT and SIGTERM is killed in the end, and its log then holds
    every thread's stack (SIGUSR1 before SIGKILL), so a hang at shutdown can be read."""
    group, codes, text = _run_script_node(tmp_path, domain_id, 'stubborn', STUBBORN,
                                          'ignoring SIGINT', stop_timeout=1.0)
    assert group.killed and codes == {'/stubborn': -9}, codes
    assert 'most recent call first' in text and 'spin' in text, text

HANGS_IN_DESTROY = '''
import threading

from rclpy.node import Node
from std_msgs.msg import String

from scarls.ros import node_utils


class HangsInDestroy(Node):
    """A node whose destroy_node never returns, as one blocked in the DDS layer did."""

    def __init__(self):
        super().__init__('hangs_in_destroy')
        self.pub = self.create_publisher(String, 'chatter', 10)
        print('up', flush=True)

    def safe_stop(self):
        print('safe_stop done', flush=True)

    def destroy_node(self):
        threading.Event().wait()   # forever


if __name__ == '__main__':
    node_utils.DESTROY_TIMEOUT_S = 2.0
    raise SystemExit(node_utils.run_node(HangsInDestroy))
'''


@pytest.mark.ros
def test_a_node_whose_dds_will_not_let_go_exits_after_its_own_stop(tmp_path, domain_id) -> None:
    """SIGINT, the node's own stop runs, destroy_node blocks: the node exits by itself with
    its code (0) after DESTROY_TIMEOUT_S instead of waiting to be killed, says why in its log,
    and the launcher removes the shared memory it left."""
    # SIGINT may take 35 s before SIGTERM: the node must not need them all
    group, codes, text = _run_script_node(tmp_path, domain_id, 'hangs', HANGS_IN_DESTROY, 'up')
    assert not group.killed and codes == {'/hangs': 0}, (codes, text)
    assert 'safe_stop done' in text and 'did not release' in text, text
    assert 'destroy_node' in text   # its stack, where it hung
    assert not launcher.orphaned_fastdds_segments(group.created_at)
