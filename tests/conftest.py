"""What every test run gets: one ROS_DOMAIN_ID per run, discovery on this host only, Fast DDS
shared-memory files cleaned after the run; and the rules that keep a green run meaningful:

* no process of the run may outlive it (checked at the end: a leftover fails the run);
* under CI=true nothing skips: a skipped test fails (a CI machine must have what every test
  needs: root for network namespaces and tmpfs mounts, Chromium for the browser test);
"""

from __future__ import annotations

import os
import random

import pytest

from scarls.bringup.launcher import clean_fastdds_shm, ros_env

# Chosen before anything in this process initialises rclpy; child processes inherit it.
_DOMAIN = int(os.environ.get('SCARLS_TEST_DOMAIN_ID') or (
    10 + (os.getpid() * 7 + random.SystemRandom().randint(0, 10_000)) % 220))
os.environ.update(ros_env(_DOMAIN, base={}))
# Every process this run starts inherits this mark; the end-of-run check looks for it.
_RUN = f'{os.getpid()}.{random.SystemRandom().randint(0, 1 << 30)}'
os.environ['SCARLS_TEST_RUN'] = _RUN
_CI = os.environ.get('CI', '').lower() in ('true', '1', 'yes')


@pytest.fixture(scope='session')
def domain_id() -> int:
    return _DOMAIN


@pytest.fixture(scope='module')
def ros():
    """rclpy initialised in the test process for one test module."""
    import rclpy
    rclpy.init(args=[])
    try:
        yield rclpy
    finally:
        rclpy.try_shutdown()


@pytest.fixture
def node_group(tmp_path, domain_id):
    """A ProcessGroup for node processes; always stopped (SIGINT, then harder) after the test."""
    from rosutil import new_group
    group = new_group(domain_id, tmp_path / 'logs')
    try:
        yield group
    finally:
        group.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a skip is a failure: a CI run must have everything the tests need."""
    outcome = yield
    report = outcome.get_result()
    if _CI and report.skipped and not hasattr(report, 'wasxfail'):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else report.longrepr
        report.outcome = 'failed'
        report.longrepr = f'skipped under CI=true, where nothing may skip: {reason}'


def _our_processes() -> list[str]:
    """Processes of this test run still alive: anything started with this run's mark in its
    environment, or a scarls module / test helper with this run's ROS_DOMAIN_ID (found
    through /proc)."""
    me = os.getpid()
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f'/proc/{entry}/cmdline', 'rb') as fh:
                cmd = fh.read().replace(b'\0', b' ').decode(errors='replace').strip()
            with open(f'/proc/{entry}/environ', 'rb') as fh:
                env = fh.read().split(b'\0')
        except OSError:
            continue   # gone meanwhile, or not ours to read
        if f'SCARLS_TEST_RUN={_RUN}'.encode() in env or (
                ('scarls' in cmd or 'fakes.' in cmd) and
                f'ROS_DOMAIN_ID={_DOMAIN}'.encode() in env):
            found.append(f'{entry}: {cmd[:160]}')
    return found


def pytest_sessionfinish(session, exitstatus):
    """No test may leave a process behind: anything of this run still alive fails the run
    (after a grace period for processes that are stopping), then Fast DDS shared memory is
    cleaned."""
    import time
    left = _our_processes()
    end = time.monotonic() + 15
    while left and time.monotonic() < end:
        time.sleep(0.5)
        left = _our_processes()
    if left:
        import signal
        print('\nprocesses left behind by the tests (killed now):\n  ' + '\n  '.join(left))
        for item in left:
            try:
                os.kill(int(item.split(':', 1)[0]), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass
        session.exitstatus = 1
    clean_fastdds_shm()
