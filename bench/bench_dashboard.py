"""Benchmark: what does the live web dashboard cost an ECU's 30 Hz control loop?

For each setup

* ``none``      - ``scarls ecu`` alone (the baseline),
* ``dashboard`` - ``scarls ecu --dashboard PORT``, no page open (the dashboard then receives no
  camera frame: it only follows the ~1 Hz state topics),
* ``page``      - the same plus headless Chromium showing the page with cameras on (it polls the
  state once a second and fetches ~2 camera frames per second and camera),

and each camera resolution, one ``scarls ecu --episodes 0 --minutes M`` runs in its own ROS
domain (driver, actor, teleop, scheduler as separate processes, scripted expert). The first
``--warmup`` seconds (process start, DDS discovery, the browser's start) are skipped; over the
steady window that follows (up to 2 s before the run ends) it measures:

* the actor's control-tick intervals: differences of consecutive ``<ecu>/actor/step`` header
  stamps (tick time) of the same episode, received by a small probe process in the run's
  domain; p50 / p99 / max and the number of intervals > 50 ms (nominal 33.3 ms);
* the steps the scheduler dropped (``dropped_steps`` of the episodes in the run's summary JSON:
  those saved in the window, and over the whole run);
* CPU in % of one core over the window (psutil, sampled every ``--interval`` s): the dashboard
  process, Chromium (all its processes), the actor and the driver, and the whole machine;
* the 1-minute load average when the run starts, when the window starts and when it ends.

The dashboard's cost is small against the machine's noise, so every number is reported with the
load it was taken under; on a shared machine compare setups of the same invocation only, and
repeat (``--repeat``) before reading a difference in the tail.

    python bench/bench_dashboard.py                       # 96x128, 3 setups, 1.5 min each
    python bench/bench_dashboard.py --resolution 96x128,480x640 --json dash.json
    python bench/bench_dashboard.py --setups none,page --minutes 3 --repeat 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

from scarls.bringup.launcher import clean_fastdds_shm, pick_domain_id, ros_env  # noqa: E402
from scarls.dashboard.browser import CHROMEDRIVER, CHROMIUM, headless_chromium  # noqa: E402

SETUPS = ('none', 'dashboard', 'page')
SETUP_LABELS = {'none': 'no dashboard', 'dashboard': 'dashboard, no page',
                'page': 'dashboard + page'}
LATE_MS = 50.0
WINDOW_TAIL_S = 2.0
"""The window ends this long before the run's deadline (the ECU stops right after it)."""


# -- the probe (a child process in the run's ROS domain) -------------------------------------
def probe_main(out: Path, ecu: str, until: float) -> int:
    """Record every ActorStep stamp and EpisodeInfo of ``ecu`` until wall time ``until`` (or
    SIGTERM/SIGINT), then write them as JSON to ``out``."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from scarls_interfaces.msg import ActorStep, EpisodeInfo

    from scarls.ros import qos

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    rclpy.init(args=[], signal_handler_options=SignalHandlerOptions.NO)
    node = rclpy.create_node('bench_dashboard_probe', namespace=ecu)
    steps: list[list] = []
    episodes: list[dict] = []

    def on_step(msg) -> None:
        stamp = msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9
        steps.append([stamp, int(msg.episode_id), int(msg.step), time.time()])

    def on_episode(msg) -> None:
        episodes.append({'index': int(msg.index), 'steps': int(msg.steps),
                         'dropped_steps': int(msg.dropped_steps), 'received': time.time()})

    node.create_subscription(ActorStep, 'actor/step', on_step, qos.STEPS)
    node.create_subscription(EpisodeInfo, 'scheduler/episode', on_episode, qos.EVENTS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and time.time() < until:
            executor.spin_once(timeout_sec=0.1)
    finally:
        tmp = out.with_suffix('.tmp')
        tmp.write_text(json.dumps({'steps': steps, 'episodes': episodes}))
        tmp.replace(out)
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


# -- helpers -----------------------------------------------------------------------------------
def scarls_command() -> list[str]:
    exe = Path(sys.executable).with_name('scarls')
    if exe.exists():
        return [str(exe)]
    return [sys.executable, '-m', 'scarls.cli']


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def domains_in_use() -> set[int]:
    """ROS_DOMAIN_IDs of the processes of this user that we can read (other runs on the host)."""
    used = set()
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error, OSError):
            value = proc.environ().get('ROS_DOMAIN_ID', '')
            if value.isdigit():
                used.add(int(value))
    return used


def pick_free_domain(taken: set[int]) -> int:
    used = domains_in_use() | taken
    for _ in range(500):
        domain = pick_domain_id()
        if domain not in used:
            return domain
    raise RuntimeError('no free ROS_DOMAIN_ID found')


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def machine_info() -> dict:
    model = ''
    with contextlib.suppress(OSError):
        for line in Path('/proc/cpuinfo').read_text().splitlines():
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    return {'nproc': os.cpu_count(), 'cpu_model': model or platform.processor(),
            'mem_gib': round(psutil.virtual_memory().total / 2**30, 1),
            'python': platform.python_version(), 'kernel': platform.release(),
            'loadavg_start': [round(x, 2) for x in os.getloadavg()]}


def browser_missing() -> str | None:
    """Why the page setup cannot run here, or None."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not shutil.which(p)]
    if missing:
        return (f'{" and ".join(missing)} not found (Debian packages: chromium, '
                'chromium-driver)')
    try:
        import selenium  # noqa: F401
    except ImportError:
        return 'selenium is not installed in this Python environment'
    return None


def descendants(pid: int) -> list[psutil.Process]:
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.Error:
        return []


def terminate(procs: list[psutil.Process], first: int = signal.SIGINT,
              grace: float = 15.0) -> None:
    """Signal ``procs`` (``first``, then SIGKILL after ``grace`` s) and reap them."""
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.Error):
            if p.is_running():
                p.send_signal(first)
                alive.append(p)
    _, alive = psutil.wait_procs(alive, timeout=grace)
    for p in alive:
        with contextlib.suppress(psutil.Error):
            p.kill()
    psutil.wait_procs(alive, timeout=5)


def stop_popen(proc: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGINT a child we started (it stops its own children), then kill it and whatever of its
    descendants is still alive (node processes run in their own sessions)."""
    family = descendants(proc.pid)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    terminate([p for p in family if p.pid != proc.pid], signal.SIGTERM, grace=5.0)


# -- CPU over the window -----------------------------------------------------------------------
def _cmd(proc: psutil.Process) -> list[str]:
    try:
        return proc.cmdline()
    except psutil.Error:
        return []


class CpuWindow:
    """CPU seconds per group of processes between ``start()`` and ``stop()``, sampled every
    ``interval`` s in a thread (processes appearing in between are counted from their birth)."""

    def __init__(self, ecu_pid: int, interval: float) -> None:
        self.ecu_pid = ecu_pid
        self.browser_pid: int | None = None
        self.interval = interval
        self.first: dict[int, float] = {}
        self.last: dict[int, float] = {}
        self.group: dict[int, str] = {}
        self.t0 = self.t1 = 0.0
        self.sys0 = self.sys1 = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _classify(self, proc: psutil.Process, in_browser: bool) -> str | None:
        if in_browser:
            return 'chromedriver' if proc.pid == self.browser_pid else 'chromium'
        cmd = _cmd(proc)
        if 'scarls.dashboard' in cmd:
            return 'dashboard'
        for name in ('actor', 'driver', 'teleop', 'scheduler'):
            if f'scarls.{name}.node' in cmd:
                return name
        return None

    def _sample(self) -> None:
        procs = [(p, False) for p in descendants(self.ecu_pid)]
        if self.browser_pid is not None:
            procs += [(p, True) for p in descendants(self.browser_pid)]
        for proc, in_browser in procs:
            try:
                t = proc.cpu_times()
                cpu = t.user + t.system
                if proc.pid not in self.group:
                    name = self._classify(proc, in_browser)
                    if name is None:
                        continue
                    self.group[proc.pid] = name
                    born_inside = proc.create_time() >= self.t0
                    self.first[proc.pid] = 0.0 if born_inside else cpu
                self.last[proc.pid] = cpu
            except psutil.Error:
                continue

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self.t0 = time.time()
        self.sys0 = psutil.cpu_times()
        self._sample()
        self._thread.start()

    def stop(self) -> dict:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.t1 = time.time()
        self.sys1 = psutil.cpu_times()
        dt = max(1e-9, self.t1 - self.t0)
        per: dict[str, float] = {}
        for pid, name in self.group.items():
            per[name] = per.get(name, 0.0) + self.last.get(pid, 0.0) - self.first.get(pid, 0.0)
        busy = _busy(self.sys1) - _busy(self.sys0)
        total = sum(self.sys1) - sum(self.sys0)
        out = {name: round(100.0 * sec / dt, 2) for name, sec in sorted(per.items())}
        out['machine'] = round(100.0 * psutil.cpu_count() * busy / total, 1) if total else None
        return out


def _busy(t) -> float:
    return sum(t) - t.idle - getattr(t, 'iowait', 0.0)


# -- the browser ---------------------------------------------------------------------------------
def page_status(driver, ecu: str) -> dict:
    js = driver.execute_script
    return {
        'updates': js('return (window.scarlsDashboard || {}).updates;'),
        'errors': js('return (window.scarlsDashboard || {}).errors;'),
        'visibility': js('return document.visibilityState;'),
        'cameras_on': js("return (document.getElementById('cameras-on') || {}).checked;"),
        'frames_shown': js(
            f"return Array.from(document.querySelectorAll('[data-ecu=\"{ecu}\"] img[data-cam]'))"
            '.filter(i => i.naturalWidth > 0).length;'),
    }


def wait_http(url: str, deadline: float, alive) -> bool:
    while time.time() < deadline and alive():
        with contextlib.suppress(OSError, urllib.error.URLError):
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return True
        time.sleep(0.5)
    return False


# -- one run -------------------------------------------------------------------------------------
def tick_stats(steps: list[list], t0: float, t1: float) -> dict:
    """Intervals of consecutive ticks (same episode, step + 1) whose both stamps lie in
    [t0, t1]."""
    inside = sorted((s for s in steps if t0 <= s[0] <= t1), key=lambda s: (s[1], s[2]))
    intervals = []
    gaps = 0
    for a, b in zip(inside, inside[1:], strict=False):
        if a[1] != b[1]:
            continue                       # next episode: the reset is no control tick
        if b[2] != a[2] + 1:
            gaps += 1                      # a step the probe did not receive
            continue
        intervals.append(1000.0 * (b[0] - a[0]))
    if not intervals:
        return {'ticks': len(inside), 'intervals': 0, 'probe_gaps': gaps}
    ms = np.asarray(intervals)
    return {'ticks': len(inside), 'intervals': len(ms), 'probe_gaps': gaps,
            'p50_ms': round(float(np.percentile(ms, 50)), 2),
            'p99_ms': round(float(np.percentile(ms, 99)), 2),
            'max_ms': round(float(ms.max()), 2),
            'mean_ms': round(float(ms.mean()), 2),
            'over_50ms': int((ms > LATE_MS).sum())}


def run_setup(args, setup: str, height: int, width: int, work: Path, domain: int) -> dict:
    root = work / f'{setup}_{height}x{width}_d{domain}'
    root.mkdir(parents=True)
    env = ros_env(domain)
    summary_path = root / 'summary.json'
    probe_out = root / 'probe.json'
    port = free_port() if setup != 'none' else None
    duration = args.minutes * 60.0
    res: dict = {'setup': setup, 'label': SETUP_LABELS[setup], 'height': height,
                 'width': width, 'domain_id': domain, 'minutes': args.minutes,
                 'dashboard_port': port, 'notes': []}
    cmd = [*scarls_command(), 'ecu', '--episodes', '0', '--minutes', str(args.minutes),
           '--height', str(height), '--width', str(width), '--data-root', str(root / 'data'),
           '--summary', str(summary_path), '--domain-id', str(domain), '--ecu-id', args.ecu_id,
           '--seed', str(args.seed)]
    if port is not None:
        cmd += ['--dashboard', str(port)]
    res['command'] = ' '.join(cmd)
    t_start = time.time()
    win0 = t_start + args.warmup
    win1 = t_start + duration - WINDOW_TAIL_S
    res['load1_run_start'] = load1()
    procs: list[subprocess.Popen] = []
    driver = None
    browser_family: list[psutil.Process] = []
    family: dict[int, psutil.Process] = {}   # every process of the run we have seen

    def remember(pid: int) -> None:
        for p in descendants(pid):
            family.setdefault(p.pid, p)

    ecu_log = open(root / 'scarls_ecu.out', 'wb')  # noqa: SIM115 - closed in finally
    probe_log = open(root / 'probe.err', 'wb')  # noqa: SIM115 - closed in finally
    try:
        probe = subprocess.Popen(
            [sys.executable, __file__, '--probe', str(probe_out), '--ecu-id', args.ecu_id,
             '--until', str(win1 + 1.0)], env=env, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=probe_log)
        procs.append(probe)
        ecu = subprocess.Popen(cmd, env=env, stdout=ecu_log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
        procs.append(ecu)
        cpu = CpuWindow(ecu.pid, args.interval)
        if setup == 'page':
            url = f'http://127.0.0.1:{port}/'
            if not wait_http(url, win0, lambda: ecu.poll() is None):
                raise RuntimeError(f'the dashboard did not answer on {url} within the warm-up '
                                   f'({args.warmup:.0f} s); see {root / "scarls_ecu.out"}')
            driver = headless_chromium(root / 'chromium-profile')
            with contextlib.suppress(psutil.Error, AttributeError):
                cpu.browser_pid = driver.service.process.pid
                browser_family = descendants(cpu.browser_pid)
            driver.get(url)
            res['page_opened_s'] = round(time.time() - t_start, 1)
            if time.time() > win0 - 3.0:
                res['notes'].append('the page opened less than 3 s before the window: '
                                    'raise --warmup')
        while time.time() < win0:
            remember(ecu.pid)
            if ecu.poll() is not None:
                raise RuntimeError(f'scarls ecu exited early (code {ecu.returncode}); see '
                                   f'{root / "scarls_ecu.out"}')
            time.sleep(0.2)
        res['load1_window_start'] = load1()
        cpu.start()
        if driver is not None:
            browser_family = descendants(cpu.browser_pid) if cpu.browser_pid else []
            res['page_at_window_start'] = page_status(driver, args.ecu_id)
        while time.time() < win1 and ecu.poll() is None:
            remember(ecu.pid)
            time.sleep(1.0)
        res['cpu_percent_of_one_core'] = cpu.stop()
        res['load1_window_end'] = load1()
        res['window_s'] = round(cpu.t1 - cpu.t0, 1)
        if ecu.poll() is not None:
            res['notes'].append(f'scarls ecu exited inside the window (code {ecu.returncode})')
        if driver is not None:
            res['page_at_window_end'] = page_status(driver, args.ecu_id)
            browser_family = descendants(cpu.browser_pid) if cpu.browser_pid else []
            driver.quit()
            driver = None
        try:
            ecu.wait(timeout=duration - (time.time() - t_start) + 60.0)
        except subprocess.TimeoutExpired:
            res['notes'].append('scarls ecu did not stop on its own: interrupted')
        try:
            probe.wait(timeout=15.0)
        except subprocess.TimeoutExpired:
            res['notes'].append('the probe did not stop on its own: interrupted')
    finally:
        if driver is not None:
            with contextlib.suppress(Exception):
                driver.quit()
        terminate(browser_family, signal.SIGTERM, grace=5.0)
        for proc in reversed(procs):
            stop_popen(proc)
        # node processes run in their own sessions: none may outlive the run
        terminate(list(family.values()), signal.SIGTERM, grace=5.0)
        ecu_log.close()
        probe_log.close()
    res['load1_run_end'] = load1()
    res['ecu_exit_code'] = procs[1].returncode if len(procs) > 1 else None

    # ticks from the probe, drops from the summary
    if probe_out.exists():
        recorded = json.loads(probe_out.read_text())
        res['ticks'] = tick_stats(recorded['steps'], cpu.t0, cpu.t1)
        res['ticks']['received_in_run'] = len(recorded['steps'])
    else:
        res['ticks'] = {}
        res['notes'].append('the probe wrote nothing: no tick intervals')
    if res['ticks'].get('intervals', 0) == 0:
        res['notes'].append('no actor/step in the window')
    if summary_path.exists():
        summary = json.loads(summary_path.read_text())
        eps = summary.get('episodes', [])
        # saved_s counts from the runner's start, a moment after ours: window in its terms
        w0, w1 = cpu.t0 - t_start, cpu.t1 - t_start
        in_win = [e for e in eps if w0 <= e.get('saved_s', -1) <= w1]
        res['summary_ok'] = summary.get('ok')
        res['summary_error'] = summary.get('error')
        res['episodes_total'] = len(eps)
        res['dropped_steps_total'] = sum(int(e.get('dropped_steps', 0)) for e in eps)
        res['episodes_in_window'] = len(in_win)
        res['dropped_steps_in_window'] = sum(int(e.get('dropped_steps', 0)) for e in in_win)
    else:
        res['notes'].append('no summary JSON written (see scarls_ecu.out)')
    if args.keep:
        res['artefacts'] = str(root)
    else:
        shutil.rmtree(root, ignore_errors=True)
    return res


# -- output --------------------------------------------------------------------------------------
def _f(value, fmt: str = '{:.1f}') -> str:
    return '-' if value is None else fmt.format(value)


def print_table(results: list[dict]) -> None:
    head = ('frames', 'setup', 'load1 start>end', 'intervals', 'p50 ms', 'p99 ms', 'max ms',
            '>50ms', 'dropped win/all', 'CPU dash %', 'CPU chromium %', 'CPU actor/driver %',
            'CPU machine %')
    rows = []
    for r in results:
        if r.get('skipped'):
            rows.append((f"{r['height']}x{r['width']}", r['label'], '-', '-', '-', '-', '-',
                         '-', '-', '-', '-', '-', f"skipped: {r['skipped']}"))
            continue
        t = r.get('ticks', {})
        c = r.get('cpu_percent_of_one_core', {})
        dash = c.get('dashboard') if r['setup'] != 'none' else None
        chrome = c.get('chromium') if r['setup'] == 'page' else None
        rows.append((
            f"{r['height']}x{r['width']}", r['label'],
            f"{_f(r.get('load1_window_start'), '{:.2f}')}>"
            f"{_f(r.get('load1_window_end'), '{:.2f}')}",
            str(t.get('intervals', 0)), _f(t.get('p50_ms')), _f(t.get('p99_ms')),
            _f(t.get('max_ms')), _f(t.get('over_50ms'), '{}'),
            f"{_f(r.get('dropped_steps_in_window'), '{}')}/"
            f"{_f(r.get('dropped_steps_total'), '{}')}",
            _f(dash), _f(chrome),
            f"{_f(c.get('actor'), '{:.0f}')}/{_f(c.get('driver'), '{:.0f}')}",
            _f(c.get('machine'), '{:.0f}')))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(head)]
    print('  '.join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    for row in rows:
        print('  '.join(v.ljust(w) for v, w in zip(row, widths, strict=True)))
    for r in results:
        for note in r.get('notes', []):
            print(f"note ({r['height']}x{r['width']}, {r['label']}): {note}")


def parse_resolutions(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(','):
        h, _, w = item.strip().lower().partition('x')
        if not (h.isdigit() and w.isdigit()) or int(h) < 16 or int(w) < 16:
            raise argparse.ArgumentTypeError(f'bad resolution {item!r} (HEIGHTxWIDTH, >= 16)')
        out.append((int(h), int(w)))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--minutes', type=float, default=1.5,
                    help='length of each ECU run in minutes, warm-up included (default 1.5)')
    ap.add_argument('--warmup', type=float, default=20.0,
                    help='seconds skipped at the start of each run (default 20)')
    ap.add_argument('--resolution', type=parse_resolutions, default=[(96, 128)],
                    metavar='HxW[,HxW]', help='camera resolution(s) (default 96x128; '
                    'e.g. 96x128,480x640)')
    ap.add_argument('--setups', default=','.join(SETUPS),
                    help=f'comma-separated subset of {",".join(SETUPS)} (default all)')
    ap.add_argument('--repeat', type=int, default=1, help='rounds over all setups (default 1)')
    ap.add_argument('--skip-page-if-missing', action='store_true',
                    help='skip the page setup (with a note) instead of failing when Chromium, '
                    'chromedriver or selenium is missing')
    ap.add_argument('--interval', type=float, default=1.0,
                    help='CPU sampling period in s (default 1)')
    ap.add_argument('--ecu-id', default='ecu0', help='ECU id / namespace (default ecu0)')
    ap.add_argument('--seed', type=int, default=0, help='scene/policy seed (default 0)')
    ap.add_argument('--pause', type=float, default=5.0,
                    help='seconds between runs, for the machine to settle (default 5)')
    ap.add_argument('--json', default=None, metavar='OUT', help='write the results as JSON')
    ap.add_argument('--keep', default=None, metavar='DIR',
                    help='keep logs, episodes and summaries in DIR (default: a temporary '
                    'directory, removed afterwards)')
    ap.add_argument('--probe', default=None, help=argparse.SUPPRESS)
    ap.add_argument('--until', type=float, default=0.0, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.probe:
        return args
    args.setups = [s.strip() for s in args.setups.split(',') if s.strip()]
    bad = [s for s in args.setups if s not in SETUPS]
    if bad or not args.setups:
        ap.error(f'unknown setup(s) {bad}: choose from {", ".join(SETUPS)}')
    if args.repeat < 1 or args.interval <= 0 or args.warmup < 0:
        ap.error('--repeat must be >= 1, --interval > 0, --warmup >= 0')
    if args.minutes * 60.0 - args.warmup - WINDOW_TAIL_S < 5.0:
        ap.error(f'--minutes {args.minutes} leaves less than 5 s after the {args.warmup:.0f} s '
                 'warm-up')
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.probe:
        return probe_main(Path(args.probe), args.ecu_id, args.until)
    skip_page = None
    if 'page' in args.setups:
        why = browser_missing()
        if why and not args.skip_page_if_missing:
            print(f'error: the page setup needs a headless browser: {why}. Install it, or pass '
                  '--skip-page-if-missing (or --setups none,dashboard).', file=sys.stderr)
            return 2
        skip_page = why
    results: dict = {'machine': machine_info(), 'minutes': args.minutes, 'warmup_s': args.warmup,
                     'late_threshold_ms': LATE_MS, 'runs': []}
    taken: set[int] = set()
    keep = Path(args.keep).resolve() if args.keep else None
    if keep:
        keep.mkdir(parents=True, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='bench_dashboard_', dir=keep)
    interrupted = False
    try:
        first = True
        for rnd in range(args.repeat):
            for height, width in args.resolution:
                for setup in args.setups:
                    if setup == 'page' and skip_page:
                        results['runs'].append({'setup': setup, 'label': SETUP_LABELS[setup],
                                                'height': height, 'width': width,
                                                'skipped': skip_page, 'notes': []})
                        print(f'skipping the page setup: {skip_page}', flush=True)
                        continue
                    if not first:
                        time.sleep(args.pause)
                    first = False
                    domain = pick_free_domain(taken)
                    taken.add(domain)
                    print(f'[{time.strftime("%H:%M:%S")}] {height}x{width} '
                          f'{SETUP_LABELS[setup]} (round {rnd + 1}/{args.repeat}, '
                          f'ROS_DOMAIN_ID={domain}, {args.minutes} min) ...', flush=True)
                    try:
                        res = run_setup(args, setup, height, width, Path(tmp), domain)
                    except Exception as exc:  # noqa: BLE001 - one failed run, go on
                        res = {'setup': setup, 'label': SETUP_LABELS[setup], 'height': height,
                               'width': width, 'domain_id': domain, 'error': str(exc),
                               'notes': [f'failed: {exc}']}
                        print(f'  failed: {exc}', flush=True)
                    res['round'] = rnd
                    results['runs'].append(res)
                    t = res.get('ticks', {})
                    print(f"  {t.get('intervals', 0)} intervals, p99 {t.get('p99_ms')} ms, "
                          f"load {res.get('load1_window_start')}>{res.get('load1_window_end')}",
                          flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print('interrupted: partial results', file=sys.stderr)
    finally:
        if not keep:
            shutil.rmtree(tmp, ignore_errors=True)
        clean_fastdds_shm()
    results['machine']['loadavg_end'] = [round(x, 2) for x in os.getloadavg()]
    results['interrupted'] = interrupted
    print()
    print(f"machine: {results['machine']['nproc']} CPUs ({results['machine']['cpu_model']}), "
          f"load average at start {results['machine']['loadavg_start']}, at end "
          f"{results['machine']['loadavg_end']}; window "
          f'{args.minutes * 60 - args.warmup - WINDOW_TAIL_S:.0f} s per run after '
          f'{args.warmup:.0f} s warm-up; CPU in % of one core')
    print_table(results['runs'])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + '\n')
        print(f'results written to {args.json}')
    return 1 if interrupted or any(r.get('error') for r in results['runs']) else 0


if __name__ == '__main__':
    raise SystemExit(main())
