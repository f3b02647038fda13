"""`scarls status`: the fleet at a glance, from the ECUs' heartbeats over DDS.

Every ECU's scheduler publishes `EcuStatus` on `/fleet/status` once per second and every
fleet learner its rounds on `/fleet/rounds`; this listens on a ROS domain for a few seconds (or
keeps refreshing with --watch) and prints one line per ECU: phase, episodes, recent success
without help and human share, model versions, heartbeat age, and its last fleet round.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

log = logging.getLogger('scarls')

STALE_S = 3.0
"""An ECU whose last heartbeat is older than this is shown as silent."""


@dataclass
class EcuView:
    ecu_id: str
    task: str = ''
    phase: str = 'UNKNOWN'
    episodes: int = 0
    successes_without_help: int = 0
    recent_success_rate: float = 0.0
    recent_intervention_rate: float = 0.0
    model_version: int = 0
    deployed_version: int = 0
    recording_ready: bool = True
    seen_at: float = 0.0
    last_round: dict = field(default_factory=dict)

    def to_dict(self, now: float) -> dict:
        d = dict(vars(self))
        d['heartbeat_age_s'] = round(now - self.seen_at, 2) if self.seen_at else None
        del d['seen_at']
        return d


def format_table(views: list[EcuView], now: float) -> str:
    """One line per ECU (sorted by id)."""
    head = (f"{'ecu':10s} {'phase':18s} {'episodes':>8s} {'alone':>6s} {'recent':>7s} "
            f"{'human':>6s} {'model':>6s} {'deployed':>8s} {'heartbeat':>10s}  last fleet round")
    lines = [head]
    for v in sorted(views, key=lambda v: v.ecu_id):
        age = now - v.seen_at if v.seen_at else float('inf')
        beat = f'{age:.1f} s' if age < 1e6 else 'never'
        if age > STALE_S:
            beat += ' SILENT'
        elif not v.recording_ready:
            beat += ' NOT RECORDING'   # steps or a camera not arriving yet: see its log
        r = v.last_round
        rnd = (f"#{r['round']} {r['status']} ({len(r['participants'])} ECUs"
               f"{', v' + str(r['version']) if r.get('approved') else ''})") if r else '-'
        lines.append(
            f'{v.ecu_id:10s} {v.phase:18s} {v.episodes:8d} {v.successes_without_help:6d} '
            f'{100 * v.recent_success_rate:6.0f}% {100 * v.recent_intervention_rate:5.0f}% '
            f'{"v" + str(v.model_version):>6s} {"v" + str(v.deployed_version):>8s} '
            f'{beat:>10s}  {rnd}')
    if len(lines) == 1:
        lines.append('(no ECU heard: is the ROS_DOMAIN_ID the fleet uses set? see --domain-id)')
    return '\n'.join(lines)


def collect(seconds: float, watch: bool = False, as_json: bool = False) -> int:
    """Listen on the current ROS domain; print the table (every second with ``watch``)."""
    import rclpy
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from scarls_interfaces.msg import EcuStatus, FleetRound

    from scarls.ros import qos

    views: dict[str, EcuView] = {}

    def on_status(msg) -> None:
        v = views.setdefault(msg.ecu_id, EcuView(msg.ecu_id))
        v.task, v.phase, v.episodes = msg.task, msg.phase, int(msg.episodes)
        v.successes_without_help = int(msg.successes_without_help)
        v.recent_success_rate = float(msg.recent_success_rate)
        v.recent_intervention_rate = float(msg.recent_intervention_rate)
        v.model_version, v.deployed_version = int(msg.model_version), int(msg.deployed_version)
        v.recording_ready = bool(msg.recording_ready)
        v.seen_at = time.monotonic()

    def on_round(msg) -> None:
        v = views.setdefault(msg.ecu_id, EcuView(msg.ecu_id))
        v.last_round = {'round': int(msg.round), 'status': msg.status,
                        'participants': list(msg.participants), 'version': int(msg.version),
                        'approved': bool(msg.approved)}

    rclpy.init(args=[])
    node = rclpy.create_node('scarls_status')
    node.create_subscription(EcuStatus, '/fleet/status', on_status, qos.EVENTS)
    node.create_subscription(FleetRound, '/fleet/rounds', on_round, qos.ROUNDS)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    t_end = time.monotonic() + seconds
    next_print = time.monotonic() + 1.0
    try:
        while watch or time.monotonic() < t_end:
            executor.spin_once(timeout_sec=0.1)
            if watch and time.monotonic() >= next_print:
                next_print += 1.0
                print('\033[2J\033[H' + format_table(list(views.values()), time.monotonic()),
                      flush=True)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
    now = time.monotonic()
    if as_json:
        print(json.dumps([v.to_dict(now) for v in sorted(views.values(),
                                                          key=lambda v: v.ecu_id)], indent=2))
    elif not watch:
        print(format_table(list(views.values()), now))
    return 0 if views else 1
