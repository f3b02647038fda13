"""colcon finds both ROS packages; the ament_python package installs what launch needs."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLCON = str(Path(sys.executable).with_name('colcon'))


def test_colcon_detects_both_packages():
    out = subprocess.run([COLCON, 'list', '--base-paths', '.', 'interfaces'], cwd=ROOT,
                         capture_output=True, text=True, timeout=120, check=True).stdout
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines() if line.strip()}
    assert rows.get('scarls') == '(ros.ament_python)', out
    assert rows.get('scarls_interfaces') == '(ros.ament_cmake)', out


@pytest.mark.timeout(420)   # the build may take its 300 s
def test_ament_python_install_layout(tmp_path):
    env = dict(os.environ, AMENT_PREFIX_PATH=str(Path(sys.prefix)))
    subprocess.run(
        [COLCON, '--log-base', str(tmp_path / 'log'), 'build', '--base-paths', str(ROOT),
         '--packages-select', 'scarls', '--build-base', str(tmp_path / 'build'),
         '--install-base', str(tmp_path / 'install')],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=True)
    prefix = tmp_path / 'install' / 'scarls'
    for exe in ('driver', 'actor', 'teleop', 'scheduler'):
        assert (prefix / 'lib' / 'scarls' / exe).is_file(), exe
    share = prefix / 'share' / 'scarls'
    assert (share / 'launch' / 'ecu.launch.py').is_file()
    assert (share / 'config' / 'ecu.yaml').is_file()
    assert (share / 'package.xml').is_file()
    assert (prefix / 'share' / 'ament_index' / 'resource_index' / 'packages' / 'scarls').is_file()
