"""Benchmark: does a whole simulated ECU keep its 30 Hz control loop and record every step?

Runs ``scarls ecu`` (driver, actor, teleop and scheduler as separate ROS 2 processes over DDS,
scripted expert) as a subprocess and measures, from the episodes it stored and its JSON summary:

* the actor's control-tick period (diff of the recorded per-step ``timestamp``): p50, p99, max
  and the fraction of periods longer than 40 ms (nominal 33.3 ms);
* recorded steps per second of episode time, ``(steps - 1) / (t_last - t_first)``;
* dropped steps (summary and episode meta; must be 0);
* episode end -> visible on disk (``finalize_seconds`` of the summary): p50 and max;
* CPU per node process (driver, actor, teleop, scheduler; sampled with psutil every
  ``--interval`` s, mean % of one core while episodes were being recorded), the total machine
  CPU and the part of it not used by the ECU, and the load average.

The machine (nproc, CPU model, load average at start) is recorded too; WARN/ERROR lines of the
node logs are summarised so that drops or jitter can be traced to a node.

    python bench/bench_ecu_loop.py --episodes 5 --height 96 --width 128
    python bench/bench_ecu_loop.py --episodes 3 --height 480 --width 640 --codec jpeg --json o.json
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

from scarls.episodes import EpisodeReader, list_episodes

NODES = ('driver', 'actor', 'teleop', 'scheduler')
NOMINAL_PERIOD_MS = 1000.0 / 30.0
LATE_PERIOD_MS = 40.0
_LOG_LINE_RE = re.compile(r'^\[(WARN|ERROR|FATAL)\]\s*(?:\[[\d.]+\]\s*)?\[([^\]]+)\]:\s*(.*)$')
_NUMBER_RE = re.compile(r'\d+(?:\.\d+)?')


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--episodes', type=int, default=5, help='episodes per run (default 5)')
    parser.add_argument('--height', type=int, default=96, help='camera height px (default 96)')
    parser.add_argument('--width', type=int, default=128, help='camera width px (default 128)')
    parser.add_argument('--codec', default='lz4', help='image codec: lz4, jpeg (default lz4)')
    parser.add_argument('--repeat', type=int, default=1, help='runs of the ECU (default 1)')
    parser.add_argument('--max-steps', type=int, default=None,
                        help='episode budget in steps (default: that of scarls ecu)')
    parser.add_argument('--seed', type=int, default=0,
                        help='scene/policy seed of the first run; run k uses seed + k')
    parser.add_argument('--interval', type=float, default=0.5,
                        help='CPU sampling period in s (default 0.5)')
    parser.add_argument('--timeout', type=float, default=None,
                        help='stop a run after this many s (default 120 + 60 per episode)')
    parser.add_argument('--json', default=None, metavar='OUT', help='write results as JSON')
    parser.add_argument('--keep', default=None, metavar='DIR',
                        help='keep episodes and logs in DIR (default: a temporary directory, '
                        'removed afterwards)')
    args = parser.parse_args(argv)
    if args.episodes < 1 or args.repeat < 1:
        parser.error('--episodes and --repeat must be >= 1')
    if args.interval <= 0:
        parser.error('--interval must be > 0')
    return args


# -- machine ---------------------------------------------------------------------------------
def machine_info() -> dict:
    model = ''
    try:
        out = subprocess.run(['lscpu'], capture_output=True, text=True, timeout=10,
                             check=False).stdout
        for line in out.splitlines():
            if line.startswith('Model name:'):
                model = line.split(':', 1)[1].strip()
                break
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        nproc = len(os.sched_getaffinity(0))
    except AttributeError:
        nproc = os.cpu_count() or 0
    busy = psutil.cpu_percent(interval=1.0)
    return {
        'nproc': nproc,
        'cpu_model': model or platform.processor(),
        'mem_gib': round(psutil.virtual_memory().total / 2**30, 1),
        'loadavg_start': [round(x, 2) for x in os.getloadavg()],
        'cpu_busy_percent_before': busy,
        'python': platform.python_version(),
        'kernel': platform.release(),
    }


# -- one run ---------------------------------------------------------------------------------
def scarls_command() -> list[str]:
    exe = Path(sys.executable).with_name('scarls')
    if exe.exists():
        return [str(exe)]
    return [sys.executable, '-m', 'scarls.cli']


def node_of(proc: psutil.Process) -> str | None:
    try:
        cmd = proc.cmdline()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    for name in NODES:
        if f'scarls.{name}.node' in cmd or f'__node:={name}' in cmd:
            return name
    return None


class CpuSampler:
    """Per-interval CPU time of the ECU's processes (by node), the machine and the load."""

    def __init__(self, root_pid: int) -> None:
        self.root = psutil.Process(root_pid)
        self.known: dict[int, tuple[str, psutil.Process]] = {root_pid: ('runner', self.root)}
        self.last: dict[int, float] = {}
        self.last_wall = time.time()
        self.last_sys = psutil.cpu_times()
        self.samples: list[dict] = []

    @staticmethod
    def _cpu(proc: psutil.Process) -> float | None:
        try:
            t = proc.cpu_times()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            return None
        return t.user + t.system

    def sample(self) -> None:
        try:
            for child in self.root.children(recursive=True):
                if child.pid not in self.known:
                    name = node_of(child)
                    if name is not None:
                        self.known[child.pid] = (name, child)
        except psutil.NoSuchProcess:
            pass
        now = time.time()
        dt = now - self.last_wall
        per_node: dict[str, float] = collections.defaultdict(float)
        for pid, (name, proc) in list(self.known.items()):
            cpu = self._cpu(proc)
            if cpu is None:
                continue
            prev = self.last.get(pid)
            self.last[pid] = cpu
            if prev is not None and dt > 0:
                per_node[name] += 100.0 * (cpu - prev) / dt
        sys_now = psutil.cpu_times()
        busy = _busy(sys_now) - _busy(self.last_sys)
        total = sum(sys_now) - sum(self.last_sys)
        self.last_sys = sys_now
        self.samples.append({
            't': now, 'dt': dt, 'nodes': dict(per_node),
            # machine CPU in % of one core (2 busy cores = 200 %)
            'machine': 100.0 * psutil.cpu_count() * busy / total if total > 0 else 0.0,
            'load1': os.getloadavg()[0],
        })
        self.last_wall = now


def _busy(t) -> float:
    return sum(t) - t.idle - getattr(t, 'iowait', 0.0)


def run_ecu(args: argparse.Namespace, root: Path, seed: int) -> dict:
    root.mkdir(parents=True, exist_ok=True)
    summary_path = root / 'summary.json'
    cmd = [*scarls_command(), 'ecu', '--episodes', str(args.episodes), '--data-root', str(root),
           '--summary', str(summary_path), '--height', str(args.height), '--width',
           str(args.width), '--image-codec', args.codec, '--seed', str(seed)]
    if args.max_steps is not None:
        cmd += ['--max-steps', str(args.max_steps)]
    timeout = args.timeout if args.timeout is not None else 120.0 + 60.0 * args.episodes
    out_path = root / 'scarls_ecu.out'
    t0 = time.time()
    load_start = os.getloadavg()
    with open(out_path, 'wb') as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
        sampler = CpuSampler(proc.pid)
        timed_out = False
        while proc.poll() is None:
            if time.time() - t0 > timeout:
                timed_out = True
                proc.send_signal(signal.SIGINT)  # scarls ecu stops its nodes cleanly
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                break
            sampler.sample()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=args.interval)
    wall = time.time() - t0
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    return {
        'command': cmd, 'exit_code': proc.returncode, 'timed_out': timed_out,
        'wall_s': round(wall, 2), 'loadavg_start': [round(x, 2) for x in load_start],
        'loadavg_end': [round(x, 2) for x in os.getloadavg()],
        'summary': summary, 'samples': sampler.samples, 'output': out_path,
    }


# -- analysis --------------------------------------------------------------------------------
def read_episodes(root: Path) -> list[dict]:
    rows = []
    for entry in list_episodes(root):
        reader = EpisodeReader(entry.path)
        t = np.asarray(reader.timestamp[:], dtype=np.float64)
        periods = np.diff(t) * 1000.0
        late = np.nonzero(periods > LATE_PERIOD_MS)[0]
        inter = np.asarray(reader.intervention[:], dtype=bool)
        span = round((t[-1] - t[0]) * 1000.0 / NOMINAL_PERIOD_MS) if len(t) > 1 else 0
        rows.append({
            'path': str(entry.path), 'steps': int(reader.steps),
            'outcome': reader.meta.outcome,
            'intervention_steps': int(reader.meta.intervention_steps),
            'dropped_steps': int(reader.meta.extra.get('dropped_steps',
                                                       reader.meta.dropped_steps)),
            'start_time': float(t[0]) if len(t) else None,
            'end_time': float(t[-1]) if len(t) else None,
            # the actor's timer keeps its phase: a late tick is followed by a short period, a
            # skipped tick leaves a slot of the 30 Hz grid without a step
            'missed_ticks': max(0, int(span) - (len(t) - 1)),
            'late_periods': [{'step': int(i + 1), 'period_ms': round(float(periods[i]), 1),
                              'intervention': bool(inter[i + 1])} for i in late],
            'periods_ms': periods.tolist(),
        })
    return rows


def _pct(values, q: float) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


def loop_metrics(episodes: list[dict], summary: dict) -> dict:
    periods = np.asarray([p for e in episodes for p in e['periods_ms']], dtype=np.float64)
    duration = sum(e['end_time'] - e['start_time'] for e in episodes if e['steps'] > 1)
    intervals = sum(e['steps'] - 1 for e in episodes if e['steps'] > 1)
    finals = [float(e['finalize_seconds']) for e in summary.get('episodes', [])]
    summary_dropped = sum(int(e['dropped_steps']) for e in summary.get('episodes', []))
    return {
        'episodes': len(episodes),
        'episodes_in_summary': len(summary.get('episodes', [])),
        'steps': sum(e['steps'] for e in episodes),
        'steps_per_episode': [e['steps'] for e in episodes],
        'outcomes': dict(collections.Counter(e['outcome'] for e in episodes)),
        'period_ms_p50': _pct(periods, 50),
        'period_ms_p99': _pct(periods, 99),
        'period_ms_max': float(periods.max()) if periods.size else None,
        'period_ms_min': float(periods.min()) if periods.size else None,
        'late_fraction': float((periods > LATE_PERIOD_MS).mean()) if periods.size else None,
        'late_periods': int((periods > LATE_PERIOD_MS).sum()),
        'missed_ticks': sum(e['missed_ticks'] for e in episodes),
        'steps_per_s': intervals / duration if duration > 0 else None,
        'dropped_meta': sum(e['dropped_steps'] for e in episodes),
        'dropped_summary': summary_dropped,
        'finalize_s_p50': _pct(finals, 50),
        'finalize_s_max': max(finals) if finals else None,
        'finalize_s': finals,
    }


def cpu_metrics(samples: list[dict], window: tuple[float, float] | None) -> dict:
    """Mean CPU (% of one core) per node, machine and load over the samples in `window`."""
    if window is not None:
        chosen = [s for s in samples if window[0] <= s['t'] - s['dt'] / 2 <= window[1]]
    else:
        chosen = samples
    chosen = chosen or samples
    span = sum(s['dt'] for s in chosen)
    out: dict = {'window_s': round(span, 2), 'samples': len(chosen)}
    if not chosen or span <= 0:
        return out
    names = ('runner', *NODES)
    for name in names:
        out[name] = sum(s['nodes'].get(name, 0.0) * s['dt'] for s in chosen) / span
        out[f'{name}_max'] = max(s['nodes'].get(name, 0.0) for s in chosen)
    out['ecu_total'] = sum(out[n] for n in names)
    out['machine'] = sum(s['machine'] * s['dt'] for s in chosen) / span
    out['other'] = max(0.0, out['machine'] - out['ecu_total'])
    out['load1_mean'] = float(np.mean([s['load1'] for s in chosen]))
    out['load1_max'] = float(max(s['load1'] for s in chosen))
    return out


def log_digest(log_dir: str | None, limit: int = 8) -> dict:
    """WARN/ERROR lines of each node log, grouped by message with numbers blanked out."""
    result: dict = {}
    if not log_dir or not Path(log_dir).is_dir():
        return result
    for path in sorted(Path(log_dir).glob('*.log')):
        counts: collections.Counter = collections.Counter()
        example: dict[str, str] = {}
        for line in path.read_text(errors='replace').splitlines():
            m = _LOG_LINE_RE.match(line.strip())
            if not m:
                continue
            level, who, text = m.groups()
            if 'FASTRTPS_DEFAULT_PROFILES_FILE' in text:
                continue
            key = f'{level} {who}: {_NUMBER_RE.sub("#", text)}'
            counts[key] += 1
            example.setdefault(key, text)
        if counts:
            result[path.stem] = [{'count': n, 'message': k, 'example': example[k]}
                                 for k, n in counts.most_common(limit)]
    return result


# -- report ----------------------------------------------------------------------------------
def _f(value, fmt: str) -> str:
    return '-' if value is None else format(value, fmt)


def print_tables(config: dict, machine: dict, runs: list[dict], total: dict | None) -> None:
    print(f"machine: nproc={machine['nproc']} cpu='{machine['cpu_model']}' "
          f"load avg at start={machine['loadavg_start']} "
          f"busy before start={machine['cpu_busy_percent_before']:.0f} % of all cores")
    print(f"config: {config['height']}x{config['width']} codec={config['codec']} "
          f"episodes={config['episodes']} repeat={config['repeat']}")
    rows = [(str(i + 1), r['loop'], r['cpu']) for i, r in enumerate(runs)]
    if total is not None:
        rows.append(('all', total['loop'], total['cpu']))
    print()
    print('| run | episodes | steps | period p50 | p99 | max | > 40 ms | missed ticks | steps/s '
          '| dropped | end -> visible p50 | max |')
    print('|---|---|---|---|---|---|---|---|---|---|---|---|')
    for name, lp, _ in rows:
        print(f"| {name} | {lp['episodes']} | {lp['steps']} "
              f"| {_f(lp['period_ms_p50'], '.1f')} ms | {_f(lp['period_ms_p99'], '.1f')} ms "
              f"| {_f(lp['period_ms_max'], '.1f')} ms "
              f"| {_f(None if lp['late_fraction'] is None else 100 * lp['late_fraction'], '.1f')}"
              f" % | {lp['missed_ticks']} | {_f(lp['steps_per_s'], '.2f')} "
              f"| {lp['dropped_summary']} "
              f"| {_f(lp['finalize_s_p50'], '.3f')} s | {_f(lp['finalize_s_max'], '.3f')} s |")
    print()
    print('CPU, mean % of one core while recording (max of a 0.5 s sample in brackets):')
    print()
    print('| run | driver | actor | teleop | scheduler | runner | ECU total | machine | other '
          '| load1 mean / max |')
    print('|---|---|---|---|---|---|---|---|---|---|')
    for name, _, cpu in rows:
        if 'machine' not in cpu:
            print(f'| {name} | (no samples) |')
            continue
        cells = ' | '.join(f"{cpu[n]:.0f} ({cpu[n + '_max']:.0f})"
                           for n in (*NODES, 'runner'))
        print(f"| {name} | {cells} | {cpu['ecu_total']:.0f} | {cpu['machine']:.0f} "
              f"| {cpu['other']:.0f} | {cpu['load1_mean']:.2f} / {cpu['load1_max']:.2f} |")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    machine = machine_info()
    config = {k: getattr(args, k) for k in ('episodes', 'height', 'width', 'codec', 'repeat',
                                            'max_steps', 'seed', 'interval')}
    keep = Path(args.keep).expanduser().resolve() if args.keep else None
    tmp = None if keep else tempfile.mkdtemp(prefix='bench_ecu_')
    base = keep if keep else Path(tmp)
    runs: list[dict] = []
    ok = True
    try:
        for k in range(args.repeat):
            root = base / f'run_{k}' if args.repeat > 1 else base
            if root.is_dir() and list_episodes(root):
                print(f'error: {root} already holds episodes; give --keep an empty directory',
                      file=sys.stderr)
                return 2
            print(f'run {k + 1}/{args.repeat}: scarls ecu {args.height}x{args.width} '
                  f'{args.codec}, {args.episodes} episodes -> {root}', flush=True)
            raw = run_ecu(args, root, args.seed + k)
            summary = raw['summary']
            episodes = read_episodes(root)
            window = None
            if episodes:
                window = (min(e['start_time'] for e in episodes),
                          max(e['end_time'] for e in episodes))
            loop = loop_metrics(episodes, summary)
            run = {
                'exit_code': raw['exit_code'], 'timed_out': raw['timed_out'],
                'ok': bool(summary.get('ok')), 'error': summary.get('error'),
                'wall_s': raw['wall_s'], 'loadavg_start': raw['loadavg_start'],
                'loadavg_end': raw['loadavg_end'], 'loop': loop,
                'cpu': cpu_metrics(raw['samples'], window),
                'cpu_whole_run': cpu_metrics(raw['samples'], None),
                'log_dir': summary.get('log_dir'), 'log_warnings': log_digest(
                    summary.get('log_dir')),
                'episodes': [{k2: v for k2, v in e.items() if k2 != 'periods_ms'}
                             for e in episodes],
                'command': ' '.join(raw['command']),
                'samples': [{'t': round(x['t'], 3), 'machine': round(x['machine'], 1),
                             'load1': x['load1'],
                             'nodes': {n: round(v, 1) for n, v in x['nodes'].items()}}
                            for x in raw['samples']],
                '_samples': raw['samples'], '_window': window, '_summary': summary,
                '_episodes': episodes,
            }
            if raw['exit_code'] != 0 or not run['ok'] or loop['episodes'] < args.episodes:
                ok = False
                why = ' (timed out)' if raw['timed_out'] else ''
                print(f"  run failed{why} (exit {raw['exit_code']}, error {run['error']!r}); "
                      f"last output lines:", file=sys.stderr)
                lines = Path(raw['output']).read_text(errors='replace').splitlines()
                print('\n'.join('    ' + s for s in lines[-15:]), file=sys.stderr)
            runs.append(run)
        total = None
        if len(runs) > 1:
            episodes = [e for r in runs for e in r['_episodes']]
            summary = {'episodes': [e for r in runs for e in r['_summary'].get('episodes', [])]}
            samples = [s for r in runs if r['_window'] for s in r['_samples']
                       if r['_window'][0] <= s['t'] - s['dt'] / 2 <= r['_window'][1]]
            total = {'loop': loop_metrics(episodes, summary), 'cpu': cpu_metrics(samples, None)}
        print()
        print_tables(config, machine, runs, total)
        for i, run in enumerate(runs):
            late = [f"ep {e['path'].rsplit('episode_', 1)[-1].split('.')[0]} step {x['step']}: "
                    f"{x['period_ms']} ms{' (human)' if x['intervention'] else ''}"
                    for e in run['episodes'] for x in e['late_periods']]
            if late:
                print(f'\nperiods > {LATE_PERIOD_MS:.0f} ms, run {i + 1}: ' + '; '.join(late))
            if run['log_warnings']:
                print(f'\nnode log warnings, run {i + 1} ({run["log_dir"]}):')
                for node, items in run['log_warnings'].items():
                    for item in items:
                        print(f"  {node}: {item['count']}x {item['example']}")
        dropped = sum(r['loop']['dropped_summary'] + r['loop']['dropped_meta'] for r in runs)
        if dropped:
            print(f'\nWARNING: {dropped} dropped steps (target 0)')
            ok = False
        if args.json:
            result = {
                'config': config, 'machine': machine, 'ok': ok,
                'runs': [{k2: v for k2, v in r.items() if not k2.startswith('_')}
                         for r in runs],
                'total': total,
            }
            path = Path(args.json)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(result, indent=2) + '\n')
            print(f'\nJSON written to {path}')
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == '__main__':
    sys.exit(main())
