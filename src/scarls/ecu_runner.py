"""Run one ECU on this machine: start its nodes as processes, watch it over DDS, stop it cleanly.

`EcuRun.run()` starts the nodes of `bringup.ecu_nodes()` with `launcher.ProcessGroup`, follows the
ECU through a small monitor node (scheduler/episode, actor/state), prints one line per saved
episode, and stops when enough episodes are saved, time runs out, a node dies or on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from scarls.bringup import NodeSpec
from scarls.launcher import ProcessGroup, pick_domain_id, ros_env

log = logging.getLogger('scarls')
STARTUP_TIMEOUT_S = 60.0


CURVE_BLOCK = 10
"""Episodes per point of the learning curve in the summary."""


@dataclass
class RunOptions:
    specs: list[NodeSpec]
    params_file: str | None
    episodes: int
    minutes: float | None
    domain_id: int | None
    localhost_only: bool
    log_dir: Path
    stall_timeout_s: float = 120.0


@dataclass
class EpisodeRow:
    index: int
    task: str
    outcome: str
    steps: int
    intervention_steps: int
    model_version: int
    path: str
    dropped_steps: int
    finalize_seconds: float
    actor_episode_id: int

    @classmethod
    def from_msg(cls, msg) -> EpisodeRow:
        return cls(int(msg.index), msg.task, msg.outcome, int(msg.steps),
                   int(msg.intervention_steps), int(msg.model_version), msg.path,
                   int(msg.dropped_steps), round(float(msg.finalize_seconds), 4),
                   int(msg.actor_episode_id))


def learning_curve(episodes: list[EpisodeRow], block: int = CURVE_BLOCK) -> list[dict]:
    """Consecutive blocks of ``block`` episodes (the last one may be shorter): the share that
    succeeded without any takeover, the share of steps the human controlled, and the model
    versions that acted - the learning curve of a run, less noisy than per version."""
    out = []
    for start in range(0, len(episodes), block):
        rows = episodes[start:start + block]
        versions = sorted({r.model_version for r in rows})
        out.append({
            'episodes': [rows[0].index, rows[-1].index],
            'model_versions': [versions[0], versions[-1]],
            'success_rate': sum(r.outcome == 'success' and r.intervention_steps == 0
                                for r in rows) / len(rows),
            'intervention_rate': sum(r.intervention_steps for r in rows)
            / max(1, sum(r.steps for r in rows)),
        })
    return out


@dataclass
class _Seen:
    episodes: list[EpisodeRow] = field(default_factory=list)
    phase: str = 'UNKNOWN'
    phase_changed: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)


class EcuRun:
    def __init__(self, options: RunOptions) -> None:
        self.options = options

    def run(self) -> dict:
        opts = self.options
        domain = opts.domain_id if opts.domain_id is not None else pick_domain_id()
        env = ros_env(domain, localhost_only=opts.localhost_only)
        namespace = opts.specs[0].namespace
        log.info('scarls ecu: %s nodes in namespace /%s, ROS_DOMAIN_ID=%d%s; logs in %s',
                 ', '.join(s.name for s in opts.specs), namespace, domain,
                 ' (localhost only)' if opts.localhost_only else '', opts.log_dir)
        # the monitor lives in this process: give it the same DDS environment
        for key in ('ROS_DOMAIN_ID', 'ROS_AUTOMATIC_DISCOVERY_RANGE',
                    'FASTDDS_DEFAULT_PROFILES_FILE', 'FASTRTPS_DEFAULT_PROFILES_FILE',
                    'RMW_IMPLEMENTATION'):
            if key in env:
                os.environ[key] = env[key]
            else:
                os.environ.pop(key, None)
        import rclpy
        from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
        from scarls_interfaces.msg import ActorState, CheckpointInfo, EpisodeInfo

        from scarls.ros import qos

        seen = _Seen()
        t0 = time.monotonic()
        error = None
        interrupted = False
        rclpy.init(args=[])
        group = ProcessGroup(env, opts.log_dir)
        node = rclpy.create_node('ecu_monitor', namespace=namespace)

        def on_episode(msg) -> None:
            row = EpisodeRow.from_msg(msg)
            seen.episodes.append(row)
            seen.last_progress = time.monotonic()
            total = f'/{opts.episodes}' if opts.episodes else ''
            log.info('episode %d%s  %-7s  %3d steps (%3d by human)  model v%d  %s  '
                     '(visible %.2f s after the end%s)', len(seen.episodes), total, row.outcome,
                     row.steps, row.intervention_steps, row.model_version, row.path,
                     row.finalize_seconds,
                     f', {row.dropped_steps} steps dropped' if row.dropped_steps else '')

        def on_state(msg) -> None:
            if msg.phase != seen.phase:
                seen.phase = msg.phase
                seen.phase_changed = seen.last_progress = time.monotonic()

        node.create_subscription(EpisodeInfo, 'scheduler/episode', on_episode, qos.EVENTS)
        node.create_subscription(ActorState, 'actor/state', on_state, qos.STATE)
        checkpoints: dict[int, dict] = {}

        def on_checkpoint(msg) -> None:
            if msg.version in checkpoints:
                return
            checkpoints[msg.version] = {'version': int(msg.version),
                                        'metric': round(float(msg.metric), 6),
                                        'approved': bool(msg.approved),
                                        'parent': int(msg.parent),
                                        'announced_s': round(time.monotonic() - t0, 2)}
            seen.last_progress = time.monotonic()
            log.info('checkpoint v%d: open-loop error %.4f, %s', msg.version, msg.metric,
                     'approved -> deploying' if msg.approved else 'rejected (not deployed)')

        node.create_subscription(CheckpointInfo, 'learner/checkpoint', on_checkpoint, qos.STATE)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        exit_codes: dict = {}
        try:
            for spec in opts.specs:
                group.start(spec, opts.params_file)
            deadline = t0 + opts.minutes * 60.0 if opts.minutes else None
            ready = False
            while True:
                executor.spin_once(timeout_sec=0.1)
                now = time.monotonic()
                if not ready and seen.phase not in ('UNKNOWN', 'INIT'):
                    ready = True
                    log.info('ECU up in %.1f s (actor %s)', now - t0, seen.phase)
                if not ready and now - t0 > STARTUP_TIMEOUT_S:
                    error = f'the ECU did not come up within {STARTUP_TIMEOUT_S:.0f} s'
                    break
                if opts.episodes and len(seen.episodes) >= opts.episodes:
                    break
                if deadline is not None and now >= deadline:
                    log.info('time is up (%.1f min)', opts.minutes)
                    break
                dead = group.dead()
                if dead:
                    names = ', '.join(f'{d.spec.fqn} (exit {d.process.returncode})'
                                      for d in dead)
                    error = f'node died: {names}'
                    for d in dead:
                        log.error('--- last lines of %s ---\n%s', d.log_path, d.tail())
                    break
                if now - seen.last_progress > opts.stall_timeout_s:
                    error = (f'no progress for {opts.stall_timeout_s:.0f} s '
                             f'(actor phase {seen.phase}); see the node logs in {opts.log_dir}')
                    break
        except (KeyboardInterrupt, ExternalShutdownException):
            interrupted = True
            log.info('interrupted: stopping the ECU')
        finally:
            exit_codes = group.stop()
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
        if error:
            log.error('error: %s', error)
        bad_exits = {k: v for k, v in exit_codes.items() if v not in (0, None)}
        if bad_exits:
            log.warning('nodes exited with errors: %s', bad_exits)
        episodes = seen.episodes
        n = len(episodes)
        for ckpt in checkpoints.values():
            ckpt['deployed_at_episode'] = next(
                (e.index for e in episodes if e.model_version == ckpt['version']), None)
        by_version: dict[int, list[EpisodeRow]] = {}
        for e in episodes:
            by_version.setdefault(e.model_version, []).append(e)
        per_version = [{
            'model_version': v, 'episodes': len(rows),
            'success_rate': sum(r.outcome == 'success' and r.intervention_steps == 0
                                for r in rows) / len(rows),
            'outcome_success_rate': sum(r.outcome == 'success' for r in rows) / len(rows),
            'intervention_rate': sum(r.intervention_steps for r in rows)
            / max(1, sum(r.steps for r in rows)),
        } for v, rows in sorted(by_version.items())]
        for row in per_version:
            log.info('model v%d: %d episodes, %.0f %% succeeded without help, %.0f %% of steps '
                     'by the human', row['model_version'], row['episodes'],
                     100 * row['success_rate'], 100 * row['intervention_rate'])
        curve = learning_curve(episodes)
        if len(curve) > 1:
            log.info('learning curve (blocks of %d episodes): %s', CURVE_BLOCK, '  '.join(
                f"{100 * b['success_rate']:.0f}%/{100 * b['intervention_rate']:.0f}%"
                for b in curve) + '  (succeeded without help / steps by the human)')
        steps = sum(e.steps for e in episodes)
        human = sum(e.intervention_steps for e in episodes)
        successes = sum(e.outcome == 'success' for e in episodes)
        log.info('done: %d episodes, %d successes, %d steps (%.0f %% by human) in %.1f s',
                 n, successes, steps, 100.0 * human / steps if steps else 0.0,
                 time.monotonic() - t0)
        return {
            'ok': error is None and not interrupted and not bad_exits and (
                not opts.episodes or n >= opts.episodes or opts.minutes is not None),
            'error': error,
            'episodes': [vars(e) for e in episodes],
            'success_rate': successes / n if n else None,
            'per_model_version': per_version,
            'curve': curve,
            'checkpoints': sorted(checkpoints.values(), key=lambda c: c['version']),
            'intervention_rate': human / steps if steps else None,
            'duration_s': round(time.monotonic() - t0, 3),
            'domain_id': domain,
            'node_exit_codes': exit_codes,
            'log_dir': str(opts.log_dir),
        }
