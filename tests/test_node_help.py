"""Every node executable answers -h / --help with what it is and how to set its parameters,
and starts nothing (no DDS participant, no hardware, exit 0)."""

import subprocess
import sys

import pytest

pytestmark = pytest.mark.multiproc      # each case starts a Python process

NODES = {
    'scarls.driver.node': "driver: the robot's hardware driver node",
    'scarls.actor.node': 'actor: the control FSM',
    'scarls.teleop.node': 'teleop: the human in the loop',
    'scarls.scheduler.node': "scheduler: the ECU's data hub",
    'scarls.learner.node': "learner: online post-training",
    'scarls.camera.capture': 'camera: publish one camera',
    'scarls.sim.clock_node': "clock: the simulation's `/clock`",
}


@pytest.mark.parametrize('module,flag', [(m, '--help') for m in sorted(NODES)]
                         + [('scarls.driver.node', '-h')])
def test_node_help_describes_the_node_and_starts_nothing(module, flag):
    out = subprocess.run([sys.executable, '-m', module, flag], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    exe = NODES[module].split(':')[0]         # the executable in lib/scarls
    assert out.stdout.startswith(f'usage: {exe} [--ros-args'), out.stdout[:200]
    assert f'ros2 run scarls {exe} --ros-args' in out.stdout
    assert NODES[module] in out.stdout
    assert '-p NAME:=VALUE' in out.stdout
    # nothing started: no node logged, no participant
    assert '[INFO]' not in out.stderr and '[INFO]' not in out.stdout
