"""Benchmark: how fast the driver's safety reacts, measured on a real driver process.

1. Watchdog: a probe streams joint commands at the control rate, then stops; the time from the
   last command to the driver's hold (its ``driver/state`` turning ``holding`` with the watchdog
   reason; the state is published at the tick where the hold starts). Goal: within the
   watchdog timeout plus one control tick.
2. E-stop during a reset: an ARX5 pair on the SDK's test double (tests/fakes/arx5_interface.py)
   whose reset moves for seconds; mid-motion the probe calls ``driver/estop``; the time from the
   request to the service's answer, to the ``estopped`` state, and to the last joint-state change
   of the arms (when they stopped moving).

Each trial repeats on the same driver. Times are on this host's clock (probe and driver on one
machine). Writes a JSON with every trial and prints p50/p99/max.

    python bench/bench_driver_safety.py                      # 50 watchdog + 20 e-stop trials
    python bench/bench_driver_safety.py --watchdog 200 --estop 50 --json safety.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / 'src'))
sys.path.insert(0, str(ROOT / 'tests'))


def _stats(values) -> dict:
    a = np.asarray(values, dtype=np.float64) * 1e3
    return {'n': int(a.size), 'p50_ms': round(float(np.percentile(a, 50)), 2),
            'p99_ms': round(float(np.percentile(a, 99)), 2), 'max_ms': round(float(a.max()), 2)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    ap.add_argument('--watchdog', type=int, default=50, help='watchdog trials (50)')
    ap.add_argument('--estop', type=int, default=20, help='e-stop-during-reset trials (20)')
    ap.add_argument('--json', default=None, help='write the results here')
    args = ap.parse_args(argv)

    from scarls.bringup.launcher import ProcessGroup, pick_domain_id, ros_env
    env = ros_env(pick_domain_id())
    os.environ.update({k: env[k] for k in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                                           'FASTDDS_DEFAULT_PROFILES_FILE')
                       if k in env})
    import rclpy
    import yaml
    from rosutil import Probe
    from scarls_interfaces.msg import DriverState
    from sensor_msgs.msg import JointState
    from std_srvs.srv import SetBool, Trigger

    from scarls.bringup import NodeSpec, default_params_file
    from scarls.robot import load_robot
    from scarls.ros import qos
    from scarls.ros.conversions import joint_state_to_msg, msg_to_positions

    results: dict = {'machine': {'nproc': os.cpu_count(), 'python': platform.python_version(),
                                 'load_avg_1min': os.getloadavg()[0]}}
    tmp = Path(tempfile.mkdtemp(prefix='bench-safety-'))
    rclpy.init()
    try:
        # ------------------------------------------------------------ 1. watchdog (sim)
        sim = load_robot('sim_dual6')
        group = ProcessGroup(env, tmp / 'logs_sim')
        try:
            group.start(NodeSpec('driver', 'scarls.driver.node', 'wd',
                                 {'robot': 'sim_dual6', 'image_height': 24,
                                  'image_width': 32}), str(default_params_file()))
            probe = Probe('wd', 'bench_wd')
            states: list[tuple[float, DriverState]] = []
            q = {'now': None}
            probe.node.create_subscription(
                DriverState, 'driver/state', lambda m: states.append((time.monotonic(), m)),
                qos.STATE)
            probe.node.create_subscription(
                JointState, 'joint_states',
                lambda m: q.update(now=msg_to_positions(m, sim.joint_names)), qos.JOINT_STATE)
            pub = probe.node.create_publisher(JointState, 'joint_command', qos.COMMAND)
            probe.wait_for(lambda: q['now'] is not None, 60, 'the sim driver')
            timeout = 0.25
            lat = []
            for _ in range(args.watchdog):
                target = q['now'].copy()
                last = 0.0
                t_end = time.monotonic() + 0.5
                while time.monotonic() < t_end:   # stream at 30 Hz for 0.5 s
                    pub.publish(joint_state_to_msg(sim.joint_names, target,
                                                   probe.node.get_clock().now().to_msg()))
                    last = time.monotonic()
                    probe.spin_for(1 / 30)
                n0 = len(states)

                def held(n0=n0) -> bool:
                    return any(m.state == 'holding' and 'watchdog' in m.reason
                               for _, m in states[n0:])
                probe.wait_for(held, 10, 'the watchdog hold')
                t_hold = next(t for t, m in states[n0:]
                              if m.state == 'holding' and 'watchdog' in m.reason)
                lat.append(t_hold - last)
            results['watchdog'] = {'timeout_s': timeout, 'tick_s': 1 / 30,
                                   **_stats(lat), 'goal_ms': round((timeout + 1 / 30) * 1e3, 1)}
            probe.close()
        finally:
            group.stop()
        # ------------------------------------------------------- 2. e-stop during a reset
        data = load_robot('arx5_pair').to_dict()
        data.update(name='arx5_pair_bench', cameras=[])
        data['backend'].update({'reset_max_velocity': 0.25, 'connect_timeout_s': 60.0})
        homes = ([0.0, 1.2, 1.2, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        path = tmp / 'arx5_pair_bench.yaml'
        path.write_text(yaml.safe_dump(data))
        arx_env = dict(env, PYTHONPATH=os.pathsep.join(
            [str(ROOT / 'tests' / 'fakes'), env.get('PYTHONPATH', '')]))
        group = ProcessGroup(arx_env, tmp / 'logs_arx')
        lat_answer, lat_state, lat_stop = [], [], []
        try:
            for trial in range(args.estop):
                # alternate between two home poses so every reset moves
                for arm in data['arms']:
                    arm['home'] = homes[trial % 2]
                path.write_text(yaml.safe_dump(data))
                robot = load_robot(str(path))
                group.start(NodeSpec('driver', 'scarls.driver.node', f'es{trial}',
                                     {'robot': str(path)}), str(default_params_file()))
                probe = Probe(f'es{trial}', 'bench_es')
                states = []
                joints: list[tuple[float, np.ndarray]] = []
                probe.node.create_subscription(
                    DriverState, 'driver/state', lambda m, s=states: s.append(
                        (time.monotonic(), m)), qos.STATE)
                probe.node.create_subscription(
                    JointState, 'joint_states', lambda m, j=joints, r=robot: j.append(
                        (time.monotonic(), msg_to_positions(m, r.joint_names))),
                    qos.JOINT_STATE)
                probe.wait_for(lambda j=joints: bool(j), 90, 'the ARX5 driver')
                reset_client = probe.node.create_client(Trigger, 'driver/reset_pose')
                probe.wait_for(reset_client.service_is_ready, 30, 'reset service')
                reset_client.call_async(Trigger.Request())
                start = joints[-1][1].copy()
                probe.wait_for(lambda j=joints, s=start: np.abs(j[-1][1] - s).max() > 0.1, 30,
                               'the reset to move')
                estop = probe.node.create_client(SetBool, 'driver/estop')
                probe.wait_for(estop.service_is_ready, 30, 'estop service')
                t0 = time.monotonic()
                fut = estop.call_async(SetBool.Request(data=True))
                probe.wait_for(fut.done, 30, 'the e-stop answer')
                lat_answer.append(time.monotonic() - t0)
                probe.wait_for(lambda s=states: any(m.state == 'estopped' for _, m in s), 30,
                               'estopped')
                lat_state.append(next(t for t, m in states if m.state == 'estopped') - t0)
                probe.spin_for(1.0)
                # the last joint-state change after the request: when the arms stopped
                moving = [t for (t, a), (_, b) in zip(joints, joints[1:], strict=False)
                          if t >= t0 and np.abs(b - a).max() > 1e-4]
                lat_stop.append((max(moving) - t0) if moving else 0.0)
                probe.close()
                group.stop()
                group = ProcessGroup(arx_env, tmp / 'logs_arx')
        finally:
            group.stop()
        results['estop_during_reset'] = {
            'answer': _stats(lat_answer), 'estopped_state': _stats(lat_state),
            'arms_stopped': _stats(lat_stop), 'control_tick_ms': round(1e3 / 30, 1)}
    finally:
        rclpy.try_shutdown()
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == '__main__':
    sys.exit(main())
