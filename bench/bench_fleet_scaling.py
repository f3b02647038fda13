"""One ECU vs a fleet of N ECUs with the same wall-clock budget: the paper's Table IV (online
samples, training time, open-loop validation error, task success) reproduced in simulation,
plus the fleet's latencies and throughput, from real `scarls fleet` runs.

    .venv/bin/python bench/bench_fleet_scaling.py --ecus 1,2 --minutes 6 --json fleet.json

For each N of --ecus the script runs `scarls fleet --ecus N --minutes M` (N = 1 goes through
`scarls fleet` too, so the code path is the same; its learner's all-reduce rounds are 'alone')
with a params file that keeps every checkpoint's weights, every run starting from the same 20
demonstrations (written once by the script), then, after all runs (so evaluation never competes
with a run for the CPU), evaluates the checkpoints offline. A round a learner finishes after the
run's last control tick (while the fleet shuts down) is not counted anywhere: no actor could
run its checkpoint.

Budget: the same wall clock for every N, not the same learner steps. This machine has 2 cores.
A simulated ECU is 5 processes (driver rendering the cameras, actor, teleop, scheduler writing
Zarr, learner training); N ECUs on one machine share those 2 cores, so on an otherwise idle
machine every learner of N = 2 trains at up to half the speed, and the driver/actor loops
compete with training too. A same-steps budget would let the fleet run longer and hide exactly
that cost; the same wall clock charges it, as one shared host would. On a real fleet (one ECU
per machine, the deployment the paper measures) per-ECU training speed would not drop with N,
so this comparison is a lower bound of what N machines give; what it does show fairly is the
data side (N robots collect about N times the episodes in the same time) and the cost of the
rounds. On a machine shared with other work the kernel shares the CPU per runnable thread, so
a fleet's extra processes also take CPU from the other tenants and the slowdown per learner is
smaller than on an idle machine: the 1-minute load average (start, mean, end) is reported with
every run; compare runs made under similar load. N = 4 and 8 are supported
(`--ecus 1,2,4,8`) but on 2 cores they are CPU-starved (20-40 processes): in a 4-minute N = 4
run at 48x64 px, pre-training alone took 165 s per learner (one fleet round in the run) and
the recorder dropped 3.4 % of the steps. Run them short and read them as a stress test, not as
scaling.

Measured per N (all from the run's files: summary JSON, episode metas, each ECU's checkpoint
registry index, the node logs):

* Table IV  episodes (total, per ECU); online samples = recorded steps, of which takeover steps
            (the HG-DAgger labels); learner rounds; training steps and seconds (sum over the
            learners, pre-training shown apart); final open-loop error: (a) each learner's
            registry metric of its last approved checkpoint (each learner has its own held-out
            set: 2 demos + every 5th online episode with a takeover, so these are not
            comparable across ECUs or N) and (b) the final policies on ONE common held-out set
            (fresh scripted demos, scenes no run saw); task success of the final policies alone
            in closed loop on the same unseen scenes for every N (`evaluate_closed_loop`).
            Final policy of an ECU = the newest checkpoint it deployed (the synchronised
            parameters of a fleet round, unless its selector rejected them). Baseline: v1,
            pre-trained on the demonstrations only (the same data and seed for every N).
            Curve: the same evaluation for the models of fleet rounds spread over the run (as
            stored by an ECU that deployed it; rejected candidates' weights are not kept),
            against minutes since the run started and the fleet's episodes by then. With 40
            scenes a success rate has a standard error of up to 8 points: differences below
            ~15-20 points are noise.
* Distribution  learner publish (registry `published_unix`) -> first control tick on that
            version (episode `start_time` of the first episode acting with it), per ECU, and for
            a fleet round the time until EVERY actor ran it: max over ECUs of their first tick
            minus the earliest publish of that round. It includes waiting for the episode
            boundary (the actor swaps models only between episodes, by design). Versions
            superseded before any episode used them are counted, not timed.
* Ingestion episode end (last control tick) -> trainable (loaded into the learner's memory),
            exact: the learner logs every episode it loads with the seconds since the episode's
            end ('ingested: episode N after S s'). Episodes no round loaded before the end are
            counted, not timed. Every 5th online episode with a takeover goes to the held-out
            set and episodes without a takeover carry no labels: they are loaded like the
            others but not trained on. The wait for the next round and the learner's idle time
            (a round's publish to the next round's start) use an estimated round start: the
            registry's publish time minus the round's recorded load, train, evaluation and
            fleet wait/reduce times (the selector's evaluation and the verdict exchange are not
            recorded: an upper bound of the start); the report counts episodes whose estimated
            round start falls before they were visible (the estimate's error showing).
* Throughput  episodes per hour, learner samples consumed per hour (training steps x batch
            size, all learners, pre-training included) over the run's wall clock.

Everything that is not a run (demonstrations, analysis, evaluation) happens outside the runs'
clocks; `--keep DIR --analyse-only` re-analyses and re-evaluates kept runs without running.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))

from scarls.bringup import default_params_file  # noqa: E402
from scarls.episodes import EpisodeReader  # noqa: E402

TASK = 'pick_cube'
_STAMP = r'^\[INFO\] \[(\d+\.\d+)\] \[[^\]]*'
INGESTED_RE = re.compile(_STAMP + r'learner\]: ingested: (.*)$', re.M)
INGESTED_ITEM_RE = re.compile(r'episode (\d+) after ([0-9.]+) s')
ROUND_RE = re.compile(_STAMP + r'learner\]: (?:online round|pre-training on demos): v(\d+) '
                      r'.*?\+(\d+) new episodes', re.M)
FETCH_RE = re.compile(_STAMP + r'actor\]: checkpoint v(\d+) fetched and verified '
                      r'\(([\d.]+) MB in ([\d.]+) s\)', re.M)
CLOSED_LOOP_SEED = 900_000
HELDOUT_SEED = 70_000
#: Scenes of the offline demonstrations (as `scarls fleet` writes them).
DEMO_SEED = 10_000
#: Weights kept per registry: all of a run's checkpoints (the registry's record limit is 1000).
KEEP_CHECKPOINTS = 1000


def pct(values, q) -> float:
    return float(np.percentile(values, q)) if len(values) else float('nan')


def dist(values) -> dict:
    return {'n': len(values), 'p50': pct(values, 50), 'p99': pct(values, 99),
            'max': float(max(values)) if len(values) else float('nan')}


# -- running ------------------------------------------------------------------------------------
def write_params(path: Path) -> int:
    """The ECU's parameters, but every checkpoint keeps its weights (for the curve); returns
    the learner's batch size."""
    params = yaml.safe_load(default_params_file().read_text())
    learner = params['/**/learner']['ros__parameters']
    learner['keep_checkpoints'] = KEEP_CHECKPOINTS
    path.write_text(yaml.safe_dump(params))
    return int(learner['batch_size'])


def write_demos(folder: Path, args) -> None:
    """The offline demonstrations of every run, written once (the same scenes and number as
    `scarls fleet` would write), so that every N starts from the same data and no run's clock
    includes writing them."""
    from scarls.episodes import list_episodes
    from scarls.learner.demos import generate_demos

    if list_episodes(folder, TASK):
        return
    t0 = time.time()
    generate_demos(folder, TASK, args.demos, seed=DEMO_SEED,
                   image_shape=(args.height, args.width))
    print(f'{args.demos} demonstrations written in {time.time() - t0:.0f} s', flush=True)


def run_fleet(n: int, root: Path, args, offline: Path) -> dict:
    """One `scarls fleet --ecus n` run under `root`; its output goes to root/fleet.out."""
    root.mkdir(parents=True, exist_ok=True)
    # the fleet writes demonstrations only when <root>/offline has none
    shutil.copytree(offline, root / 'offline')
    summary_path = root / 'summary.json'
    cmd = [sys.executable, '-m', 'scarls.cli', 'fleet', '--ecus', str(n), '--minutes',
           str(args.minutes), '--data-root', str(root), '--summary', str(summary_path),
           '--height', str(args.height), '--width', str(args.width), '--params-file',
           str(root / 'bench_params.yaml'), *args.extra.split()]
    if args.train_interval is not None:
        cmd += ['--train-interval', str(args.train_interval)]
    load0 = os.getloadavg()
    print(f'N={n}: scarls fleet --ecus {n} --minutes {args.minutes} (output in '
          f'{root / "fleet.out"}) ...', flush=True)
    t0 = time.time()
    loads = []
    with open(root / 'fleet.out', 'w') as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
        while proc.poll() is None:   # the machine is shared: sample its load during the run
            try:
                proc.wait(timeout=10.0)
            except subprocess.TimeoutExpired:
                loads.append(os.getloadavg()[0])
        code = proc.returncode
    run = {'n': n, 'exit_code': code, 'start_unix': t0, 'wall_seconds': time.time() - t0,
           'loadavg_start': load0, 'loadavg_end': os.getloadavg(),
           'loadavg_mean': float(np.mean(loads)) if loads else float('nan')}
    (root / 'bench_run.json').write_text(json.dumps(run, indent=2) + '\n')
    if code != 0:
        tail = (root / 'fleet.out').read_text(errors='replace').splitlines()[-15:]
        print(f'N={n}: scarls fleet exited with {code}; last lines:\n' + '\n'.join(tail))
    return run


# -- analysis of one run ------------------------------------------------------------------------
def ecu_views(summary: dict) -> dict[str, dict]:
    """Per-ECU part of a fleet summary (a 1-ECU fleet writes the single-ECU layout)."""
    if 'ecus' in summary:
        return summary['ecus']
    return {'ecu0': summary}


def read_registry(path: Path) -> list[dict]:
    if not path.exists():
        return []
    data = json.loads(path.read_text())
    records = data['records'] if isinstance(data, dict) else data
    return sorted(records, key=lambda r: r['version'])


def read_log(log_dir: Path, ecu: str, node: str) -> str:
    path = log_dir / f'{ecu}_{node}.log'
    return path.read_text(errors='replace') if path.exists() else ''


def read_episodes(view: dict) -> list[dict]:
    episodes = []
    for e in view.get('episodes', []):
        meta = EpisodeReader(e['path']).meta
        episodes.append({**e, 'start': float(meta.start_time), 'end': float(meta.end_time),
                         'visible': float(meta.end_time) + float(e['finalize_seconds'])})
    return episodes


def analyse_ecu(ecu: str, episodes: list[dict], root: Path, log_dir: Path,
                run_end: float, fleet_s: dict[int, float]) -> dict:
    """Training rounds, deploy and ingestion latencies of one ECU. Checkpoints published after
    `run_end` (the run's last control tick: the learner finished a round while the fleet was
    shutting down) are left out: no actor could run them."""
    everything = read_registry(root / ecu / 'checkpoints' / TASK / 'registry.json')
    records = [r for r in everything
               if r.get('metrics', {}).get('published_unix', 0.0) <= run_end]
    trained = [r for r in records if r.get('metrics', {}).get('train_steps')]
    pretrain, online = (trained[0], trained[1:]) if trained else (None, [])
    first_tick: dict[int, float] = {}
    for e in sorted(episodes, key=lambda e: e['start']):
        first_tick.setdefault(int(e['model_version']), e['start'])
    deploys, superseded = [], 0
    for r in records:
        pub = r.get('metrics', {}).get('published_unix')
        if not r.get('approved') or not pub:
            continue
        if r['version'] in first_tick:
            deploys.append({'version': r['version'],
                            'fleet_round': r['metrics'].get('fleet_round'),
                            'published': pub, 'first_tick': first_tick[r['version']],
                            'seconds': first_tick[r['version']] - pub})
        else:
            superseded += 1
    fetches = [float(s) for _, _, _, s in FETCH_RE.findall(read_log(log_dir, ecu, 'actor'))]
    # rounds that finished during the shutdown still loaded episodes: all records here
    ingestion = ingestion_latency(episodes, everything, read_log(log_dir, ecu, 'learner'),
                                  fleet_s)
    last_approved = next((r for r in reversed(records) if r.get('approved')), None)
    return {
        'episodes': episodes, 'records': records, 'after_end': len(everything) - len(records),
        'pretrain': pretrain, 'online_rounds': online,
        'deploys': deploys, 'superseded': superseded, 'fetch_s': fetches,
        'ingestion': ingestion, 'last_approved': last_approved,
    }


def round_starts(records: list[dict], fleet_s: dict[int, float]) -> dict[int, float]:
    """Registry version -> estimated wall-clock start of the round that trained it (when the
    learner lists and loads the episodes on disk): publish - (load + train + evaluation +
    fleet wait/reduce); the selector's evaluation and the verdict exchange are not recorded, so
    this is an upper bound of the start. (Triggers no longer map one to one onto rounds: a
    trigger during a round queues the next one.)"""
    out: dict[int, float] = {}
    for r in records:
        m = r.get('metrics', {})
        if not m.get('train_steps'):
            continue
        out[r['version']] = (m['published_unix'] - m.get('load_seconds', 0.0)
                             - m['train_seconds'] - m.get('eval_seconds', 0.0)
                             - fleet_s.get(int(m.get('fleet_round', -1)), 0.0))
    return out


def ingestion_latency(episodes: list[dict], records: list[dict], learner_log: str,
                      fleet_s: dict[int, float]) -> dict:
    """Episode end -> trainable, exact: the learner logs, for every episode it loads, the
    seconds from the episode's end (its meta end_time) to being loaded ('ingested: episode N
    after S s'). The round bookkeeping ('+K new episodes' per round, in round order) gives the
    wait for the next round (estimated start - visible) and the learner's idle time between
    rounds."""
    latencies = [float(sec) for line in INGESTED_RE.findall(learner_log)
                 for _, sec in INGESTED_ITEM_RE.findall(line[1])]
    ingested = {int(i) for line in INGESTED_RE.findall(learner_log)
                for i, _ in INGESTED_ITEM_RE.findall(line[1])}
    starts = round_starts(records, fleet_s)
    eps = sorted(episodes, key=lambda e: e['index'])
    waits, late, pos = [], 0, 0
    for _, v, k in ROUND_RE.findall(learner_log):
        loaded, pos = eps[pos:pos + int(k)], pos + int(k)
        if int(v) not in starts:
            continue
        for e in loaded:
            waits.append(starts[int(v)] - e['visible'])
            late += starts[int(v)] < e['visible'] - 0.05   # the estimate is too early
    trained = sorted((r for r in records if r.get('metrics', {}).get('train_steps')),
                     key=lambda r: r['version'])
    idle = [starts[b['version']] - a['metrics']['published_unix']
            for a, b in zip(trained, trained[1:], strict=False)]
    busy = sum(r['metrics']['published_unix'] - starts[r['version']] for r in trained[1:])
    return {'seconds': latencies, 'wait_for_round_s': waits,
            'not_ingested': sum(1 for e in eps if e['index'] not in ingested),
            'estimate_before_visible': late, 'idle_s': idle, 'busy_s': busy}


def idle_fraction(ecus: dict[str, dict]) -> float:
    """Share of the learners' time after pre-training spent waiting for the next trigger."""
    idle = sum(sum(a['ingestion']['idle_s']) for a in ecus.values())
    busy = sum(a['ingestion']['busy_s'] for a in ecus.values())
    return idle / (idle + busy) if idle + busy > 0 else float('nan')


def round_status(reports: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in reports:
        out[x['status']] = out.get(x['status'], 0) + 1
    return out


def fleet_rounds(ecus: dict[str, dict]) -> dict[int, dict]:
    """Fleet round -> {ecu: its record of the round} from the registries (every N alike)."""
    out: dict[int, dict] = {}
    for ecu, a in ecus.items():
        for r in a['records']:
            fr = r.get('metrics', {}).get('fleet_round')
            if fr is not None:
                out.setdefault(int(fr), {})[ecu] = r
    return out


def analyse_run(n: int, root: Path, batch_size: int) -> dict:
    summary = json.loads((root / 'summary.json').read_text())
    run = json.loads((root / 'bench_run.json').read_text())
    log_dir = Path(summary['log_dir'])
    episodes = {ecu: read_episodes(view) for ecu, view in sorted(ecu_views(summary).items())}
    run_end = max((e['end'] for eps in episodes.values() for e in eps), default=math.inf)
    fleet_s: dict[str, dict[int, float]] = {}
    for x in summary.get('round_reports', []):
        fleet_s.setdefault(x['ecu_id'], {})[int(x['round'])] = float(x['seconds'])
    ecus = {ecu: analyse_ecu(ecu, eps, root, log_dir, run_end, fleet_s.get(ecu, {}))
            for ecu, eps in episodes.items()}
    problems = []
    for ecu, a in ecus.items():
        if not a['records'] and not a['after_end']:
            errors = [ln for ln in read_log(log_dir, ecu, 'learner').splitlines()
                      if ln.startswith('[ERROR]')][:3]
            problems.append(f'{ecu}: the learner published no checkpoint'
                            + (': ' + ' | '.join(errors) if errors else ''))
    for p in problems:
        print(f'N={n}: WARNING {p}', flush=True)
    rounds = fleet_rounds(ecus)
    # distribution to every actor: for the rounds every ECU approved and every actor ran
    everyone, not_everyone = [], 0
    for _, by_ecu in sorted(rounds.items()):
        approved = {e: r for e, r in by_ecu.items() if r.get('approved')}
        if len(approved) < len(ecus):
            continue
        ticks = []
        for ecu, r in approved.items():
            d = next((d for d in ecus[ecu]['deploys'] if d['version'] == r['version']), None)
            ticks.append(d['first_tick'] if d else None)
        if None in ticks:
            not_everyone += 1
            continue
        everyone.append(max(ticks) - min(r['metrics']['published_unix']
                                         for r in approved.values()))
    eps = [e for a in ecus.values() for e in a['episodes']]
    steps_all = [r['metrics']['train_steps'] for a in ecus.values()
                 for r in ([a['pretrain']] if a['pretrain'] else []) + a['online_rounds']]
    online_steps = sum(r['metrics']['train_steps'] for a in ecus.values()
                       for r in a['online_rounds'])
    online_s = sum(r['metrics']['train_seconds'] for a in ecus.values()
                   for r in a['online_rounds'])
    pre = [a['pretrain']['metrics'] for a in ecus.values() if a['pretrain']]
    hours = summary.get('duration_s', run['wall_seconds']) / 3600.0
    ingestion = [s for a in ecus.values() for s in a['ingestion']['seconds']]
    reduced = sum(1 for by_ecu in rounds.values()
                  if len(by_ecu) == n and all(r['metrics'].get('fleet_participants') == n
                                              for r in by_ecu.values()))
    return {
        'n': n, 'root': str(root), 'ok': summary.get('ok'), 'error': summary.get('error'),
        'problems': problems, 'node_exit_codes': summary.get('node_exit_codes'),
        'exit_code': run['exit_code'], 'duration_s': summary.get('duration_s'),
        'start_unix': run['start_unix'],
        'loadavg_start': run['loadavg_start'], 'loadavg_end': run['loadavg_end'],
        'loadavg_mean': run.get('loadavg_mean', float('nan')),
        'episodes': len(eps), 'episodes_per_ecu': {e: len(a['episodes']) for e, a in ecus.items()},
        'online_steps': sum(e['steps'] for e in eps),
        'takeover_steps': sum(e['intervention_steps'] for e in eps),
        'dropped_steps': sum(e['dropped_steps'] for e in eps),
        'run_success_without_help': (sum(e['outcome'] == 'success' and
                                         e['intervention_steps'] == 0 for e in eps)
                                     / len(eps)) if eps else float('nan'),
        'pretrain_steps': sum(m['train_steps'] for m in pre),
        'pretrain_seconds': sum(m['train_seconds'] for m in pre),
        'online_rounds': sum(len(a['online_rounds']) for a in ecus.values()),
        'online_rounds_per_ecu': {e: len(a['online_rounds']) for e, a in ecus.items()},
        'fleet_rounds': len(rounds), 'fleet_rounds_all_reduced': reduced,
        'checkpoints_after_end': sum(a['after_end'] for a in ecus.values()),
        'round_wait_s': dist([x['seconds'] for x in summary.get('round_reports', [])
                              if x['status'] in ('reduced', 'alone')]),
        'round_status': round_status(summary.get('round_reports', [])),
        'train_steps': online_steps, 'train_seconds': online_s,
        'ms_per_step': 1000 * online_s / online_steps if online_steps else float('nan'),
        'own_heldout_error': {e: (a['last_approved'] or {}).get('metrics', {}).get(
            'open_loop_error') for e, a in ecus.items()},
        'last_approved': {e: (a['last_approved'] or {}).get('version') for e, a in ecus.items()},
        'distribution_every_actor_s': dist(everyone),
        'distribution_rounds_not_run_by_all': not_everyone,
        'distribution_per_ecu_s': dist([d['seconds'] for a in ecus.values()
                                        for d in a['deploys']]),
        'superseded_before_use': sum(a['superseded'] for a in ecus.values()),
        'fetch_s': dist([s for a in ecus.values() for s in a['fetch_s']]),
        'ingestion_s': dist(ingestion),
        'ingestion_wait_for_round_s': dist([s for a in ecus.values()
                                            for s in a['ingestion']['wait_for_round_s']]),
        'ingestion_not_ingested': sum(a['ingestion']['not_ingested'] for a in ecus.values()),
        'ingestion_estimate_before_visible': sum(a['ingestion']['estimate_before_visible']
                                                 for a in ecus.values()),
        'learner_idle_between_rounds_s': dist([s for a in ecus.values()
                                               for s in a['ingestion']['idle_s']]),
        'learner_idle_fraction': idle_fraction(ecus),
        'episodes_per_hour': len(eps) / hours if hours else float('nan'),
        'samples_per_hour': sum(steps_all) * batch_size / hours if hours else float('nan'),
        'batch_size': batch_size,
        '_ecus': ecus, '_rounds': rounds,
    }


# -- offline evaluation -------------------------------------------------------------------------
def final_checkpoints(r: dict) -> list[tuple[str, dict]]:
    """What every ECU's actor runs at the end: its newest approved checkpoint. After a round
    that all ECUs deployed these are the same synchronised parameters; when a selector
    rejected the round's model, that ECU keeps an older one."""
    return [(ecu, a['last_approved']) for ecu, a in sorted(r['_ecus'].items())
            if a['last_approved'] is not None]


def curve_checkpoints(r: dict, k: int) -> list[tuple[str, dict]]:
    """About k (ecu, checkpoint) of different fleet rounds, spread over the run, first and last
    included. Registries store weights of deployed checkpoints only, and a fleet round's
    synchronised parameters are the same on every ECU that took part, so a round is taken from
    the lowest ECU that deployed it."""
    stored = []
    for _, by_ecu in sorted(r['_rounds'].items()):
        pick = next(((ecu, rec) for ecu, rec in sorted(by_ecu.items())
                     if rec.get('path') and rec.get('metrics', {}).get('train_steps')), None)
        if pick is not None:
            stored.append(pick)
    k = min(k, len(stored))
    if k <= 0:
        return []
    idx = sorted({round(i * (len(stored) - 1) / max(1, k - 1)) for i in range(k)})
    return [stored[i] for i in idx]


class Evaluator:
    """Open loop on one common held-out set and closed loop on the same unseen scenes, for
    checkpoints of any run."""

    def __init__(self, args, workdir: Path) -> None:
        import torch

        from scarls.learner.demos import generate_demos

        torch.set_num_threads(1)
        self.args = args
        folder = workdir / 'common_heldout'
        if not folder.exists():
            t0 = time.time()
            generate_demos(folder, TASK, args.heldout_demos, seed=HELDOUT_SEED,
                           image_shape=(args.height, args.width))
            print(f'common held-out set: {args.heldout_demos} fresh demos (scenes '
                  f'{HELDOUT_SEED}..) in {time.time() - t0:.0f} s', flush=True)
        self.folder = folder
        self._episodes: dict[tuple, list] = {}
        self._cache: dict[tuple, dict] = {}

    def heldout(self, cameras: tuple[str, ...]) -> list:
        from scarls.episodes import list_episodes
        from scarls.learner.trainer import EpisodeData

        if cameras not in self._episodes:
            self._episodes[cameras] = [
                EpisodeData.from_reader(EpisodeReader(e.path), source='offline', cameras=cameras)
                for e in list_episodes(self.folder, TASK)]
        return self._episodes[cameras]

    def evaluate(self, root: Path, ecu: str, rec: dict, episodes: int) -> dict:
        from scarls.checkpoints import load_checkpoint
        from scarls.learner.evaluation import evaluate_open_loop, open_loop_batches
        from scarls.learner.rollout import evaluate_closed_loop, policy_cameras

        key = (str(root), ecu, rec['version'], episodes)
        if key in self._cache:
            return self._cache[key]
        path = root / ecu / 'checkpoints' / TASK / rec['path']
        policy, _ = load_checkpoint(path, expected_sha256=rec['sha256'])
        cams = policy_cameras(policy)
        ol = evaluate_open_loop(policy, open_loop_batches(
            self.heldout(cams), policy.chunk_size, cameras=cams, stride=2))
        cl = evaluate_closed_loop(policy, episodes, seed=CLOSED_LOOP_SEED,
                                  image_shape=(self.args.height, self.args.width))
        out = {'ecu': ecu, 'version': rec['version'],
               'fleet_round': rec['metrics'].get('fleet_round'),
               'open_loop_error_common': float(ol.mse), 'open_loop_score_common': float(ol.score),
               'success_rate': float(cl.success_rate), 'scenes': int(cl.n_episodes)}
        self._cache[key] = out
        return out


def evaluate_run(r: dict, ev: Evaluator, args) -> None:
    root = Path(r['root'])
    r['final'] = []
    for ecu, rec in final_checkpoints(r):
        r['final'].append(ev.evaluate(root, ecu, rec, args.eval_episodes))
        print(f"N={r['n']}: final {ecu} v{rec['version']}: open loop "
              f"{r['final'][-1]['open_loop_error_common']:.5f}, closed loop "
              f"{100 * r['final'][-1]['success_rate']:.0f} % of {args.eval_episodes}",
              flush=True)
    v1 = next((rec for rec in r['_ecus']['ecu0']['records'] if rec['version'] == 1), None)
    if v1 is not None:
        r['baseline'] = ev.evaluate(root, 'ecu0', v1, args.eval_episodes)
    eps = sorted((e for a in r['_ecus'].values() for e in a['episodes']), key=lambda e: e['end'])
    curve = []
    for ecu, rec in curve_checkpoints(r, args.eval_checkpoints):
        pub = rec['metrics'].get('published_unix', 0.0)
        point = ev.evaluate(root, ecu, rec, args.eval_episodes)
        deployed_by = [e for e, x in r['_rounds'][int(rec['metrics']['fleet_round'])].items()
                       if x.get('approved')]
        curve.append({**point, 'deployed_by': deployed_by,
                      'minutes': (pub - r['start_unix']) / 60.0,
                      'fleet_episodes_before': sum(e['end'] < pub for e in eps),
                      'online_episodes_trained': rec['metrics'].get('online_episodes', 0.0)})
        print(f"N={r['n']}: curve v{rec['version']} at {curve[-1]['minutes']:.1f} min: "
              f"{100 * point['success_rate']:.0f} %", flush=True)
    r['curve'] = curve


# -- report -------------------------------------------------------------------------------------
def fmt(x, spec='.0f', unit='') -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return '-'
    return f'{x:{spec}}{unit}'


def lat(d: dict) -> str:
    if not d['n']:
        return '-'
    return f"{d['p50']:.1f} / {d['p99']:.1f} s (n={d['n']})"


def print_report(results: list[dict], args) -> None:
    head = '| | ' + ' | '.join(f"{r['n']} ECU{'s' if r['n'] > 1 else ''}" for r in results)
    sep = '|---|' + '---|' * len(results)

    def row(name, cells):
        print(f'| {name} | ' + ' | '.join(cells) + ' |')

    print(f'\n### Table IV (same wall clock: {args.minutes:g} min per run, {os.cpu_count()} '
          'cores shared by all ECUs)\n')
    print(head + ' |\n' + sep)
    row('episodes collected (per ECU)', [
        f"{r['episodes']} ({', '.join(str(v) for v in r['episodes_per_ecu'].values())})"
        for r in results])
    row('online samples (steps)', [str(r['online_steps']) for r in results])
    row('of which takeover steps (labels)', [str(r['takeover_steps']) for r in results])
    row('steps the recorder dropped (CPU starved)', [str(r['dropped_steps']) for r in results])
    row('learner rounds, all ECUs (per ECU)', [
        f"{r['online_rounds']} ({', '.join(str(v) for v in r['online_rounds_per_ecu'].values())})"
        for r in results])
    row('fleet rounds (all N ECUs in the average)', [
        f"{r['fleet_rounds']} ({r['fleet_rounds_all_reduced']})" for r in results])
    row('training steps, sum over learners', [str(int(r['train_steps'])) for r in results])
    row('training time, sum over learners', [
        f"{r['train_seconds']:.0f} s ({r['ms_per_step']:.0f} ms/step)" for r in results])
    row('pre-training (sum over learners)', [
        f"{int(r['pretrain_steps'])} steps, {r['pretrain_seconds']:.0f} s" for r in results])
    row('rounds finished after the run ended (not counted)', [
        str(r['checkpoints_after_end']) for r in results])
    row('final open-loop error, own held-out set', [
        ', '.join(fmt(v, '.5f') for v in r['own_heldout_error'].values()) for r in results])
    row('final policy of each ECU (fleet round)', [
        ', '.join(f"{f['ecu']} v{f['version']} ({fmt(f['fleet_round'])})"
                  for f in r.get('final', [])) or '-' for r in results])
    row('final open-loop error, common held-out set', [
        ', '.join(fmt(f['open_loop_error_common'], '.5f') for f in r.get('final', [])) or '-'
        for r in results])
    row(f'task success alone, final policy ({args.eval_episodes} unseen scenes)', [
        ', '.join(fmt(100 * f['success_rate'], '.0f', ' %') for f in r.get('final', []))
        or '-' for r in results])
    row('same, v1: pre-trained on the demos only (baseline)', [
        fmt(100 * r['baseline']['success_rate'], '.0f', ' %') if r.get('baseline') else '-'
        for r in results])
    row('success without help during the run', [
        fmt(100 * r['run_success_without_help'], '.0f', ' %') for r in results])
    print('\n### Latency and throughput\n')
    print(head + ' |\n' + sep)
    row('distribution p50 / p99: publish -> every actor on it', [
        lat(r['distribution_every_actor_s']) for r in results])
    row('distribution p50 / p99: publish -> that ECU\'s actor', [
        lat(r['distribution_per_ecu_s']) for r in results])
    row('approved versions never run (superseded)', [
        str(r['superseded_before_use']) for r in results])
    row('fleet round: wait for the others + all-reduce, p50 / max', [
        f"{r['round_wait_s']['p50']:.1f} / {r['round_wait_s']['max']:.1f} s"
        if r['round_wait_s']['n'] else '-' for r in results])
    row('round statuses (ECU x round)', [
        ', '.join(f'{k} {v}' for k, v in sorted(r['round_status'].items())) or '-'
        for r in results])
    row('checkpoint fetch + verify p50', [fmt(r['fetch_s']['p50'], '.2f', ' s')
                                          for r in results])
    row('ingestion p50 / p99: episode end -> trainable', [lat(r['ingestion_s'])
                                                          for r in results])
    row('of which waiting for the next round, p50', [
        fmt(r['ingestion_wait_for_round_s']['p50'], '.1f', ' s') for r in results])
    row('episodes not ingested before the end', [str(r['ingestion_not_ingested'])
                                                 for r in results])
    row('episodes whose estimated round start precedes their end (estimate error)', [
        str(r['ingestion_estimate_before_visible']) for r in results])
    row('learner idle between rounds (publish -> next start) p50 / max', [
        f"{r['learner_idle_between_rounds_s']['p50']:.1f} / "
        f"{r['learner_idle_between_rounds_s']['max']:.1f} s ("
        f"{fmt(100 * r['learner_idle_fraction'], '.0f', ' %')} of the online phase)"
        if r['learner_idle_between_rounds_s']['n'] else '-' for r in results])
    row('episodes / hour', [fmt(r['episodes_per_hour']) for r in results])
    row(f"learner samples consumed / hour (steps x {results[0]['batch_size']})", [
        fmt(r['samples_per_hour'], ',.0f') for r in results])
    row('1-min load average: start / mean / end (2 cores)', [
        f"{r['loadavg_start'][0]:.1f} / {fmt(r['loadavg_mean'], '.1f')} / "
        f"{r['loadavg_end'][0]:.1f}" for r in results])
    for r in results:
        if not r.get('curve'):
            continue
        print(f"\n### Curve, {r['n']} ECU{'s' if r['n'] > 1 else ''} (the model of a fleet "
              f'round; success alone on the same {args.eval_episodes} unseen scenes)\n')
        print('| fleet round | checkpoint | deployed by | minutes into the run | fleet episodes '
              'by then | open-loop error (common) | success alone |\n'
              '|---|---|---|---|---|---|---|')
        for c in r['curve']:
            print(f"| {fmt(c['fleet_round'])} | {c['ecu']} v{c['version']} | "
                  f"{', '.join(c['deployed_by'])} | {c['minutes']:.1f} | "
                  f"{c['fleet_episodes_before']} | {c['open_loop_error_common']:.5f} | "
                  f"{100 * c['success_rate']:.0f} % |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--ecus', default='1,2', help='fleet sizes to compare (default 1,2)')
    ap.add_argument('--minutes', type=float, default=10.0,
                    help='wall-clock budget of every run (default 10)')
    ap.add_argument('--height', type=int, default=96)
    ap.add_argument('--width', type=int, default=128)
    ap.add_argument('--train-interval', type=float, default=None,
                    help='`scarls fleet --train-interval` (default: its default)')
    ap.add_argument('--extra', default='', help='more `scarls fleet` arguments')
    ap.add_argument('--eval-episodes', type=int, default=40,
                    help='unseen scenes per closed-loop evaluation (default 40)')
    ap.add_argument('--eval-checkpoints', type=int, default=6,
                    help='checkpoints of ecu0 on the curve per N (default 6, 0 = none)')
    ap.add_argument('--demos', type=int, default=20,
                    help='offline demonstrations every run starts from (default 20)')
    ap.add_argument('--heldout-demos', type=int, default=4,
                    help='fresh demos of the common open-loop held-out set (default 4)')
    ap.add_argument('--keep', default=None,
                    help='folder for the runs (default: a temp dir): <keep>/n<N>/')
    ap.add_argument('--analyse-only', action='store_true',
                    help='do not run: analyse the runs already under --keep')
    ap.add_argument('--json', default=None, help='write the results to this file')
    args = ap.parse_args(argv)
    ns = [int(x) for x in args.ecus.split(',') if x.strip()]
    if not ns or min(ns) < 1:
        ap.error('--ecus needs fleet sizes >= 1')
    if args.analyse_only and not args.keep:
        ap.error('--analyse-only needs --keep')
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix='scarls_fleet_'))
    base.mkdir(parents=True, exist_ok=True)
    batch = write_params(base / 'params.yaml')
    results = []
    for n in ns:
        root = base / f'n{n}'
        if not args.analyse_only:
            if root.exists():
                shutil.rmtree(root)
            root.mkdir(parents=True)
            shutil.copy(base / 'params.yaml', root / 'bench_params.yaml')
            write_demos(base / 'offline', args)
            run_fleet(n, root, args, base / 'offline')
        if not (root / 'summary.json').exists():
            print(f'N={n}: no summary, skipped')
            continue
        results.append(analyse_run(n, root, batch))
    if not results:
        return 1
    if args.eval_episodes > 0:
        ev = Evaluator(args, base)
        for r in results:
            evaluate_run(r, ev, args)
    print_report(results, args)
    if args.json:
        out = {'machine': {'nproc': os.cpu_count()}, 'minutes': args.minutes,
               'image_shape': [args.height, args.width], 'eval_episodes': args.eval_episodes,
               'closed_loop_seed': CLOSED_LOOP_SEED, 'heldout_seed': HELDOUT_SEED,
               'runs': [{k: v for k, v in r.items() if not k.startswith('_')}
                        for r in results]}
        Path(args.json).write_text(json.dumps(out, indent=2) + '\n')
    return 0


if __name__ == '__main__':
    raise SystemExit(main())
