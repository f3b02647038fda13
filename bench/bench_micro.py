"""Benchmark: the per-call cost of the pure pieces on the control path (no ROS, no processes).

These timings were once assertions inside the unit tests (`< 2 ms`, `< 10 ms`); a test must
not depend on how busy the machine is, so the claims live here, measured with their command:

* ``sim step + render``: one tick of the simulated robot, three 96x128 camera images
  (test_sim), per call;
* ``expert action``: the scripted expert's action for one state (test_sim);
* ``robot markers``: the RViz MarkerArray of the robot for one state (test_viz);
* ``controller tick``: ChunkedController.tick at 30 Hz with a 100 ms policy in its worker
  thread (test_actor_chunking): the tick must never wait for the model.

Prints p50 / p99 / max in milliseconds and writes them as JSON.

    python bench/bench_micro.py                      # the defaults below
    python bench/bench_micro.py --repeat 2000 --json micro.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'src'))

from builtin_interfaces.msg import Time  # noqa: E402

from scarls.actor.chunking import ChunkedController  # noqa: E402
from scarls.ros.viz import robot_markers  # noqa: E402
from scarls.sim import DualArmSim, ScriptedExpert, SimConfig  # noqa: E402


def timed(fn, repeat: int, warmup: int = 20) -> np.ndarray:
    for _ in range(warmup):
        fn()
    out = np.empty(repeat)
    for i in range(repeat):
        t0 = time.perf_counter()
        fn()
        out[i] = time.perf_counter() - t0
    return out


def controller_ticks(ticks: int) -> np.ndarray:
    def slow_policy(obs):
        time.sleep(0.1)   # a user's 100 ms model
        return np.zeros((16, 14), np.float32)

    ctl = ChunkedController(slow_policy, refill_when_remaining=8)
    out = np.empty(ticks)
    start = time.monotonic()
    try:
        for tick in range(ticks):
            delay = start + tick / 30.0 - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            t0 = time.perf_counter()
            ctl.tick(tick, tick)
            out[tick] = time.perf_counter() - t0
    finally:
        ctl.close(2.0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--repeat', type=int, default=500)
    ap.add_argument('--ticks', type=int, default=300, help='controller ticks at 30 Hz')
    ap.add_argument('--json', type=Path)
    args = ap.parse_args()
    torch_threads = os.environ.get('OMP_NUM_THREADS')
    sim = DualArmSim(SimConfig(seed=2))
    q, task = sim.joint_positions(), sim.task_state()
    expert = ScriptedExpert(sim.config)
    stamp = Time(sec=1, nanosec=0)

    def step_render():
        sim.step(q)
        sim.render_all()

    results = {
        'sim step + render': timed(step_render, args.repeat),
        'expert action': timed(lambda: expert.action(q, task), args.repeat),
        'robot markers': timed(lambda: robot_markers(q, stamp, task=task), args.repeat),
        'controller tick': controller_ticks(args.ticks),
    }
    report = {
        'machine': {'cpus': os.cpu_count(), 'python': platform.python_version(),
                    'load_avg_at_start': os.getloadavg(), 'omp_threads': torch_threads},
        'ms': {name: {'p50': round(float(np.percentile(v, 50)) * 1e3, 3),
                      'p99': round(float(np.percentile(v, 99)) * 1e3, 3),
                      'max': round(float(v.max()) * 1e3, 3), 'n': len(v)}
               for name, v in results.items()},
    }
    for name, r in report['ms'].items():
        print(f"{name:18s} p50 {r['p50']:8.3f} ms  p99 {r['p99']:8.3f} ms  "
              f"max {r['max']:8.3f} ms  (n={r['n']})")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))


if __name__ == '__main__':
    main()
