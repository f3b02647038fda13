"""How a node process ends (scarls.ros.node_utils.run_node): a callback that fails while ROS is
running is a failure (exit 1, logged FATAL); SIGINT is a clean stop (exit 0)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest

from scarls.bringup.launcher import parent_death_preexec, ros_env

pytestmark = [pytest.mark.ros, pytest.mark.multiproc, pytest.mark.timeout(120)]

NODE = """
import sys
import rclpy.node
from scarls.ros.node_utils import run_node

class Failing(rclpy.node.Node):
    def __init__(self):
        super().__init__('failing')
        self.ticks = 0
        self.create_timer(0.05, self.tick)

    def tick(self):
        self.ticks += 1
        if self.ticks == 1:
            print('ticking', flush=True)
        if sys.argv[1] == 'fail' and self.ticks == 5:
            raise RuntimeError('a callback failed')

sys.exit(run_node(Failing))
"""


def _start(mode: str, domain_id: int) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, '-c', NODE, mode], env=ros_env(domain_id),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=parent_death_preexec())


def test_a_failing_callback_ends_the_node_with_an_error(domain_id):
    proc = _start('fail', domain_id)
    try:
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 1, out
    assert "unhandled error: RuntimeError('a callback failed')" in out


def test_sigint_is_a_clean_stop(domain_id):
    proc = _start('run', domain_id)
    try:
        deadline = time.monotonic() + 60
        line = ''
        while time.monotonic() < deadline and 'ticking' not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        assert 'ticking' in line, 'the node never ran its timer'
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, out
    assert 'unhandled error' not in out
