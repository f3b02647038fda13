"""What every test run gets: one ROS_DOMAIN_ID per run, discovery on this host only, Fast DDS
shared-memory files cleaned after the run; and the rules that keep a green run meaningful:

* no process of the run may outlive it (checked at the end: a leftover fails the run);
* under CI=true nothing skips: a skipped test fails (a CI machine must have what every test
  needs: root for network namespaces and tmpfs mounts, Chromium for the browser test);
* the fast tier (SCARLS_TEST_TIER=fast, `make test-fast`) starts no Python process and no
  multiprocessing child: a test that does is marked ``multiproc`` (or ``ros`` / ``faults``)
  and runs in the full suite only.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import time

import pytest

from scarls.bringup.launcher import clean_fastdds_shm, remove_unused_fastdds_ports, ros_env


def _proc_env(pid: str) -> list[bytes]:
    with open(f'/proc/{pid}/environ', 'rb') as fh:
        return fh.read().split(b'\0')


def _domains_in_use() -> set[int]:
    """ROS_DOMAIN_IDs of this host's running processes (that this user may read): a test run
    must not join an ECU or benchmark running here, nor take its processes for its own."""
    used = set()
    for entry in os.listdir('/proc'):
        if not entry.isdigit():
            continue
        try:
            env = _proc_env(entry)
        except OSError:
            continue
        for item in env:
            if item.startswith(b'ROS_DOMAIN_ID='):
                try:
                    used.add(int(item.split(b'=', 1)[1]))
                except ValueError:
                    pass
    return used


def _free_domain() -> int:
    used = _domains_in_use()
    rng = random.SystemRandom()
    free = [d for d in range(10, 230) if d not in used]
    return rng.choice(free) if free else 10 + rng.randint(0, 219)


# Chosen before anything in this process initialises rclpy; child processes inherit it.
_DOMAIN = int(os.environ.get('SCARLS_TEST_DOMAIN_ID') or _free_domain())
os.environ.update(ros_env(_DOMAIN, base={}))
# Fast DDS port files created from here on are this run's (removed at its end when unused).
_RUN_START = time.time() - 1.0
# Every process this run starts inherits this mark; the end-of-run check looks for it.
_RUN = f'{os.getpid()}.{random.SystemRandom().randint(0, 1 << 30)}'
os.environ['SCARLS_TEST_RUN'] = _RUN
_CI = os.environ.get('CI', '').lower() in ('true', '1', 'yes')
_FAST = os.environ.get('SCARLS_TEST_TIER') == 'fast'


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


def _is_python(args) -> bool:
    words = [args] if isinstance(args, (str, bytes)) else list(args)[:6]  # nice, ip netns exec
    return any(os.path.basename(os.fsdecode(w)).startswith('python') or
               os.fsdecode(w) == sys.executable for w in words)


@pytest.fixture(autouse=True)
def _fast_tier_starts_no_process(request, monkeypatch):
    """In the fast tier a test that starts a Python process or a multiprocessing child fails
    with a pointer to the ``multiproc`` marker (so the tier stays a single-process loop)."""
    if not _FAST:
        yield
        return
    import multiprocessing.process

    name = request.node.nodeid
    real_child = subprocess.Popen._execute_child

    def execute_child(self, args, executable, *rest, **kw):
        if _is_python(args) or (executable and _is_python([executable])):
            pytest.fail(f'{name} starts a Python process ({args!r:.120}) in the fast tier: '
                        'mark it multiproc', pytrace=False)
        return real_child(self, args, executable, *rest, **kw)

    def start(self):
        pytest.fail(f'{name} starts a multiprocessing child in the fast tier: mark it '
                    'multiproc', pytrace=False)

    monkeypatch.setattr(subprocess.Popen, '_execute_child', execute_child)
    monkeypatch.setattr(multiprocessing.process.BaseProcess, 'start', start)
    yield


#: Helpers of pytest's own process that live until it exits (started by multiprocessing the
#: first time a test uses it), not processes a test left behind.
_RUN_HELPERS = ('multiprocessing.resource_tracker', 'multiprocessing.forkserver')


def _started_after(pid: str, t: float) -> bool:
    """Whether process ``pid`` started after wall time ``t`` (from /proc: its start in clock
    ticks since boot)."""
    try:
        with open(f'/proc/{pid}/stat') as fh:
            ticks = int(fh.read().rsplit(')', 1)[1].split()[19])
        with open('/proc/stat') as fh:
            boot = next(int(line.split()[1]) for line in fh if line.startswith('btime '))
    except (OSError, ValueError, IndexError, StopIteration):
        return False
    return boot + ticks / os.sysconf('SC_CLK_TCK') >= t


def _our_processes() -> list[str]:
    """Processes of this test run still alive: anything started with this run's mark in its
    environment, or a scarls module / test helper with this run's ROS_DOMAIN_ID started
    during the run (found through /proc; an ECU or benchmark that was running before on the
    same domain is not ours, whatever it is)."""
    me = os.getpid()
    found = []
    for entry in os.listdir('/proc'):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f'/proc/{entry}/cmdline', 'rb') as fh:
                cmd = fh.read().replace(b'\0', b' ').decode(errors='replace').strip()
            env = _proc_env(entry)
        except OSError:
            continue   # gone meanwhile, or not ours to read
        if any(helper in cmd for helper in _RUN_HELPERS):
            continue
        if f'SCARLS_TEST_RUN={_RUN}'.encode() in env or (
                ('scarls' in cmd or 'fakes.' in cmd) and
                f'ROS_DOMAIN_ID={_DOMAIN}'.encode() in env and
                _started_after(entry, _RUN_START)):
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
    remove_unused_fastdds_ports(_RUN_START)
