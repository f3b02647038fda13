"""Run one ECU on this machine: start its nodes as processes, watch it over DDS, stop it cleanly.

`EcuRun.run()` starts the nodes of `bringup.ecu_nodes()` with `launcher.ProcessGroup`, follows the
ECU through a small monitor node (scheduler/episode, actor/state), prints one line per saved
episode, and stops when enough episodes are saved, time runs out, a node dies or on Ctrl-C.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

from scarls.bringup import NodeSpec
from scarls.bringup.launcher import ProcessGroup, apply_ros_env, pick_domain_id, ros_env
from scarls.common.stats import percentile

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
    restart: tuple[str, ...] = ()
    """Node names restarted when they die (a fleet restarts learners: the ECU keeps acting
    with its deployed model and the learner rejoins a later round); others end the run."""
    max_restarts: int = 3
    fleet: bool = False
    """Report as a fleet (per-ECU sections, rounds) even with one ECU."""
    extras: list[NodeSpec] = field(default_factory=list)
    """Helper processes that are no part of an ECU (e.g. the dashboard): started with the
    nodes, stopped with them; one that dies is reported, and the robots go on."""
    sim_time: bool = False
    """The nodes run on simulated time (``bringup.sim_time_nodes``): ``minutes`` and every
    time in the summary (``saved_s``, ``at_s``, ...) are simulated; the wall time is reported
    beside it (``duration_s``). The stall timeout stays wall time (it guards the run)."""


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
    saved_s: float = 0.0
    """Seconds since the run started when the monitor saw the episode saved."""

    @classmethod
    def from_msg(cls, msg, saved_s: float = 0.0) -> EpisodeRow:
        return cls(int(msg.index), msg.task, msg.outcome, int(msg.steps),
                   int(msg.intervention_steps), int(msg.model_version), msg.path,
                   int(msg.dropped_steps), round(float(msg.finalize_seconds), 4),
                   int(msg.actor_episode_id), round(saved_s, 3))


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


def fleet_curve(episodes: dict[str, list[EpisodeRow]], bucket_s: float = 60.0) -> list[dict]:
    """The whole fleet's rates over time: per ``bucket_s`` of the run, the episodes every ECU
    saved, the share that succeeded without any takeover and the share of steps the humans
    controlled (a fleet that learns shows the first rising and the second falling)."""
    rows = sorted(((r.saved_s, ecu, r) for ecu, rs in episodes.items() for r in rs),
                  key=lambda x: x[0])
    out: list[dict] = []
    for saved_s, ecu, r in rows:
        b = int(saved_s // bucket_s)
        if not out or out[-1]['_b'] != b:
            out.append({'_b': b, 'from_s': b * bucket_s, 'to_s': (b + 1) * bucket_s,
                        'episodes': 0, 'per_ecu': {}, '_ok': 0, '_steps': 0, '_human': 0})
        cur = out[-1]
        cur['episodes'] += 1
        cur['per_ecu'][ecu] = cur['per_ecu'].get(ecu, 0) + 1
        cur['_ok'] += r.outcome == 'success' and r.intervention_steps == 0
        cur['_steps'] += r.steps
        cur['_human'] += r.intervention_steps
    for cur in out:
        cur['success_rate'] = cur.pop('_ok') / cur['episodes']
        steps, human = cur.pop('_steps'), cur.pop('_human')
        cur['intervention_rate'] = human / steps if steps else 0.0
        del cur['_b']
    return out


@dataclass
class _Seen:
    episodes: list[EpisodeRow] = field(default_factory=list)
    checkpoints: dict[int, dict] = field(default_factory=dict)
    phase: str = 'UNKNOWN'
    phase_changed: float = field(default_factory=time.monotonic)
    last_progress: float = field(default_factory=time.monotonic)
    learner: dict | None = None
    """The learner's latest LearnerStatus (state, rounds, loss, ...), None without one."""
    deploys: list[dict] = field(default_factory=list)
    """The scheduler's deploy announcements: version, ``at_s`` (run time), ``at_wall_s``."""
    loads: list[dict] = field(default_factory=list)
    """Model version changes in the actor's state (the robot acting on it), same keys."""

    @property
    def model_version(self) -> int:
        """The version the actor acts on now (0: none loaded yet)."""
        return self.loads[-1]['version'] if self.loads else 0


def latency_summary(sim: list[float], wall: list[float]) -> dict:
    """Count, p50 and p99 of one latency measured in run time (``sim``: simulated seconds under
    simulated time) and in wall seconds."""
    return {'n': len(sim), 'sim_p50': percentile(sim, 50, 3), 'sim_p99': percentile(sim, 99, 3),
            'wall_p50': percentile(wall, 50, 3), 'wall_p99': percentile(wall, 99, 3)}


def deploy_latencies(deploys: list[dict], loads: list[dict], *, raw: bool = False) -> dict:
    """Deploy announcement -> the actor acting on that version, per deploy (run time: simulated
    seconds under simulated time; and wall seconds): the distribution latency the robot sees,
    the fetch and the wait for the episode boundary included. A deploy overtaken by the next
    one before the actor loaded it counts as not loaded. ``raw``: also the per-deploy lists
    (``sim``, ``wall``), to pool ECUs."""
    sim, wall, missed = [], [], 0
    for i, d in enumerate(deploys):
        until = deploys[i + 1]['at_wall_s'] if i + 1 < len(deploys) else math.inf
        load = next((ld for ld in loads if ld['version'] == d['version']
                     and d['at_wall_s'] <= ld['at_wall_s'] <= until), None)
        if load is None:
            missed += 1
            continue
        sim.append(load['at_s'] - d['at_s'])
        wall.append(load['at_wall_s'] - d['at_wall_s'])

    out = {'not_loaded': missed, **latency_summary(sim, wall)}
    if raw:
        out.update(sim=sim, wall=wall)
    return out


def ecu_report(seen: _Seen, prefix: str = '') -> dict:
    """The per-ECU part of a run summary (episodes, learning curve, checkpoints); logs it."""
    episodes = seen.episodes
    n = len(episodes)
    for ckpt in seen.checkpoints.values():
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
        log.info('%smodel v%d: %d episodes, %.0f %% succeeded without help, %.0f %% of steps '
                 'by the human', prefix, row['model_version'], row['episodes'],
                 100 * row['success_rate'], 100 * row['intervention_rate'])
    curve = learning_curve(episodes)
    if len(curve) > 1:
        log.info('%slearning curve (blocks of %d episodes): %s', prefix, CURVE_BLOCK, '  '.join(
            f"{100 * b['success_rate']:.0f}%/{100 * b['intervention_rate']:.0f}%"
            for b in curve) + '  (succeeded without help / steps by the human)')
    steps = sum(e.steps for e in episodes)
    human = sum(e.intervention_steps for e in episodes)
    successes = sum(e.outcome == 'success' for e in episodes)
    log.info('%sdone: %d episodes, %d successes, %d steps (%.0f %% by human)', prefix, n,
             successes, steps, 100.0 * human / steps if steps else 0.0)
    return {
        'episodes': [vars(e) for e in episodes],
        'success_rate': successes / n if n else None,
        'per_model_version': per_version,
        'curve': curve,
        'checkpoints': sorted(seen.checkpoints.values(), key=lambda c: c['version']),
        'deploys': seen.deploys,
        'loads': seen.loads,
        'deploy_latency': deploy_latencies(seen.deploys, seen.loads),
        'intervention_rate': human / steps if steps else None,
        'learner': seen.learner,
    }


def merge_rounds(rounds: list[dict]) -> list[dict]:
    """FleetRound reports of all ECUs -> one entry per fleet round (see ``scarls fleet``)."""
    by_round: dict[int, dict] = {}
    for r in sorted(rounds, key=lambda r: (r['round'], r['ecu_id'])):
        entry = by_round.setdefault(r['round'], {
            'round': r['round'], 'participants': [], 'metrics': {}, 'weights': {},
            'selector_passed': None, 'version': {}, 'status': {}, 'seconds': {}})
        if r['participants'] and not entry['participants']:
            entry['participants'] = list(r['participants'])
        for ecu, metric in r['metrics'].items():
            entry['metrics'].setdefault(ecu, metric)
        for ecu, weight in r['weights'].items():
            if weight > 0:
                entry['weights'].setdefault(ecu, weight)
        entry['status'][r['ecu_id']] = r['status']
        entry['seconds'][r['ecu_id']] = r['seconds']
        if r['status'] in ('reduced', 'alone'):
            passed = bool(r['selector_passed'])
            entry['selector_passed'] = passed if entry['selector_passed'] is None \
                else entry['selector_passed'] and passed
            if r['approved']:
                entry['version'][r['ecu_id']] = r['version']
    return [by_round[k] for k in sorted(by_round)]


class EcuRun:
    """Run the nodes of one ECU, or of several (a fleet: one namespace per ECU)."""

    def __init__(self, options: RunOptions) -> None:
        self.options = options

    def run(self) -> dict:
        opts = self.options
        domain = opts.domain_id if opts.domain_id is not None else pick_domain_id()
        env = ros_env(domain, localhost_only=opts.localhost_only)
        # every ECU node has its namespace; the root one holds run-wide processes (the clock)
        namespaces = list(dict.fromkeys(s.namespace for s in opts.specs if s.namespace))
        fleet = opts.fleet or len(namespaces) > 1
        log.info('scarls %s: %s nodes in namespace%s %s, ROS_DOMAIN_ID=%d%s; logs in %s',
                 'fleet' if fleet else 'ecu',
                 ', '.join(dict.fromkeys(s.name for s in opts.specs)),
                 's' if len(namespaces) > 1 else '',
                 ', '.join(f'/{ns}' for ns in namespaces), domain,
                 ' (localhost only)' if opts.localhost_only else '', opts.log_dir)
        # the monitor lives in this process: give it the same DDS environment
        apply_ros_env(env)
        import rclpy
        from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
        from scarls_interfaces.msg import (
            ActorState,
            CheckpointInfo,
            EpisodeInfo,
            FleetRound,
            LearnerStatus,
        )

        from scarls.ros import qos

        seen = {ns: _Seen() for ns in namespaces}
        rounds: list[dict] = []
        t0 = time.monotonic()
        error = None
        interrupted = False
        rclpy.init(args=[])
        group = ProcessGroup(env, opts.log_dir)
        from rclpy.parameter import Parameter
        node = rclpy.create_node('ecu_monitor', namespace='' if fleet else namespaces[0],
                                 parameter_overrides=[Parameter(
                                     'use_sim_time', Parameter.Type.BOOL, opts.sim_time)])

        def elapsed() -> float:
            """Run time: simulated seconds (the clock starts at 0) or wall seconds."""
            if opts.sim_time:
                return node.get_clock().now().nanoseconds * 1e-9
            return time.monotonic() - t0

        def progress_now() -> float:
            """The clock of the stall check: simulated time (a slow host stretches it, it is
            no stall) or wall time."""
            return elapsed() if opts.sim_time else time.monotonic()

        def subscribe(ns: str) -> None:
            me = seen[ns]
            pre = f'[{ns}] ' if fleet else ''
            topic = (lambda name: f'/{ns}/{name}') if fleet else (lambda name: name)

            def on_episode(msg) -> None:
                row = EpisodeRow.from_msg(msg, elapsed())
                me.episodes.append(row)
                me.last_progress = progress_now()
                total = f'/{opts.episodes}' if opts.episodes else ''
                log.info('%sepisode %d%s  %-7s  %3d steps (%3d by human)  model v%d  %s  '
                         '(visible %.2f s after the end%s)', pre, len(me.episodes), total,
                         row.outcome, row.steps, row.intervention_steps, row.model_version,
                         row.path, row.finalize_seconds,
                         f', {row.dropped_steps} steps dropped' if row.dropped_steps else '')

            def wall_now() -> float:
                return round(time.monotonic() - t0, 3)

            def on_state(msg) -> None:
                if msg.model_version != me.model_version:
                    me.loads.append({'version': int(msg.model_version),
                                     'at_s': round(elapsed(), 3), 'at_wall_s': wall_now()})
                if msg.phase != me.phase:
                    me.phase = msg.phase
                    me.phase_changed = me.last_progress = progress_now()

            def on_checkpoint(msg) -> None:
                if msg.version in me.checkpoints:
                    return
                me.checkpoints[msg.version] = {
                    'version': int(msg.version), 'metric': round(float(msg.metric), 6),
                    'approved': bool(msg.approved), 'parent': int(msg.parent),
                    'announced_s': round(elapsed(), 2), 'announced_wall_s': wall_now()}
                me.last_progress = progress_now()
                log.info('%scheckpoint v%d: open-loop error %.4f, %s', pre, msg.version,
                         msg.metric,
                         'approved (deployed once the deployed version ran its probation)'
                         if msg.approved else 'rejected (not deployed)')

            def on_deploy(msg) -> None:
                if me.deploys and me.deploys[-1]['version'] == msg.version:
                    return   # the latched announcement again (a late join)
                me.deploys.append({'version': int(msg.version), 'at_s': round(elapsed(), 3),
                                   'at_wall_s': wall_now()})

            def on_round(msg) -> None:
                metrics = {k: (float(v) if v == v else None)
                           for k, v in zip(msg.member_ids, msg.member_metrics, strict=False)}
                rounds.append({
                    'ecu_id': msg.ecu_id or ns, 'round': int(msg.round), 'status': msg.status,
                    'reason': msg.reason, 'participants': list(msg.participants),
                    'metrics': metrics,
                    'weights': dict(zip(msg.member_ids, map(float, msg.member_weights),
                                        strict=False)),
                    'selector_passed': bool(msg.selector_passed), 'version': int(msg.version),
                    'approved': bool(msg.approved), 'payload_bytes': int(msg.payload_bytes),
                    'seconds': round(float(msg.wait_seconds + msg.reduce_seconds), 3),
                    'at_s': round(elapsed(), 2)})
                log.info('%sfleet round %d: %s, participants %s, weights %s%s', pre, msg.round,
                         msg.status, list(msg.participants),
                         {k: round(float(w), 3) for k, w in zip(msg.member_ids,
                                                                msg.member_weights,
                                                                strict=False) if w > 0},
                         f' -> v{msg.version} ' + ('approved' if msg.approved else 'rejected')
                         if msg.status in ('reduced', 'alone') else f' ({msg.reason})')

            def on_learner(msg) -> None:
                nan = lambda v: None if v != v else round(float(v), 6)  # noqa: E731
                me.learner = {'state': msg.state, 'detail': msg.detail, 'rounds': int(msg.rounds),
                              'loss': nan(msg.loss), 'metric': nan(msg.metric),
                              'deployed_version': int(msg.deployed_version),
                              'samples_trained': int(msg.samples_trained),
                              'online_episodes': int(msg.online_episodes)}

            node.create_subscription(EpisodeInfo, topic('scheduler/episode'), on_episode,
                                     qos.EVENTS)
            node.create_subscription(LearnerStatus, topic('learner/status'), on_learner,
                                     qos.EVENTS)
            node.create_subscription(ActorState, topic('actor/state'), on_state, qos.STATE)
            node.create_subscription(CheckpointInfo, topic('learner/checkpoint'), on_checkpoint,
                                     qos.STATE)
            node.create_subscription(CheckpointInfo, topic('scheduler/checkpoint'), on_deploy,
                                     qos.LATCHED)
            node.create_subscription(FleetRound, topic('learner/fleet_round'), on_round,
                                     qos.ROUNDS)

        for ns in namespaces:
            subscribe(ns)
            if opts.sim_time:
                seen[ns].phase_changed = seen[ns].last_progress = 0.0
        sim_moved = (0.0, time.monotonic())   # simulated time, and when it last moved (wall)
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        exit_codes: dict = {}
        restart_log: list[dict] = []
        try:
            for spec in opts.specs:
                group.start(spec, opts.params_file)
            for spec in opts.extras:
                group.start(spec, opts.params_file)
            extra_names = {s.fqn for s in opts.extras}
            deadline = opts.minutes * 60.0 if opts.minutes else None
            ready: set[str] = set()
            restarts: dict[str, int] = {}
            while True:
                executor.spin_once(timeout_sec=0.1)
                now = time.monotonic()
                for ns, me in seen.items():
                    if ns not in ready and me.phase not in ('UNKNOWN', 'INIT'):
                        ready.add(ns)
                        log.info('%s up in %.1f s (actor %s)', f'ECU {ns}' if fleet else 'ECU',
                                 now - t0, me.phase)
                if len(ready) < len(seen) and now - t0 > STARTUP_TIMEOUT_S * len(seen):
                    late = sorted(set(seen) - ready)
                    error = f'ECU(s) {late} did not come up within ' \
                        f'{STARTUP_TIMEOUT_S * len(seen):.0f} s'
                    break
                if opts.episodes and all(len(me.episodes) >= opts.episodes
                                         for me in seen.values()):
                    break
                if deadline is not None and elapsed() >= deadline:
                    log.info('time is up (%.1f %smin)', opts.minutes,
                             'simulated ' if opts.sim_time else '')
                    break
                failed = [(ns, me.learner['detail']) for ns, me in seen.items()
                          if me.learner is not None and me.learner['state'] == 'failed']
                if failed:
                    # a learner that cannot start (bad config, no demonstrations) stays alive
                    # unconfigured: end the run now rather than act without learning for hours
                    error = '; '.join(f'{ns} learner {detail}' for ns, detail in failed) + \
                        f' (see {opts.log_dir})'
                    break
                dead = group.dead()
                for d in [d for d in dead if d.spec.fqn in extra_names]:
                    log.warning('%s stopped (exit %s); the ECUs go on without it. Last lines '
                                'of %s:\n%s', d.spec.fqn, d.process.returncode, d.log_path,
                                d.tail())
                    extra_names.discard(d.spec.fqn)
                dead = [d for d in dead if d.spec not in opts.extras]
                for d in list(dead):
                    if d.spec.name in opts.restart and restarts.get(d.spec.fqn, 0) < \
                            opts.max_restarts:
                        restarts[d.spec.fqn] = restarts.get(d.spec.fqn, 0) + 1
                        log.warning('%s died (exit %s): restarting it (%d of %d)', d.spec.fqn,
                                    d.process.returncode, restarts[d.spec.fqn],
                                    opts.max_restarts)
                        restart_log.append({'node': d.spec.fqn, 'exit': d.process.returncode,
                                            'at_s': round(now - t0, 2)})
                        group.restart(d, opts.params_file)
                        dead.remove(d)
                if dead:
                    names = ', '.join(f'{d.spec.fqn} (exit {d.process.returncode})'
                                      for d in dead)
                    error = f'node died: {names}'
                    for d in dead:
                        log.error('--- last lines of %s ---\n%s', d.log_path, d.tail())
                    break
                stalled = [ns for ns, me in seen.items()
                           if progress_now() - me.last_progress > opts.stall_timeout_s]
                if stalled:
                    me = seen[stalled[0]]
                    error = (f'no progress for {opts.stall_timeout_s:.0f} '
                             f'{"simulated " if opts.sim_time else ""}s '
                             f'({stalled[0]}: actor phase {me.phase}); see the node logs in '
                             f'{opts.log_dir}')
                    break
                if opts.sim_time and ready:
                    if elapsed() != sim_moved[0]:
                        sim_moved = (elapsed(), now)
                    elif now - sim_moved[1] > opts.stall_timeout_s:
                        error = (f'simulated time stopped at {sim_moved[0]:.3f} s for '
                                 f'{now - sim_moved[1]:.0f} s (see the clock log in '
                                 f'{opts.log_dir})')
                        break
        except (KeyboardInterrupt, ExternalShutdownException):
            interrupted = True
            log.info('interrupted: stopping the %s', 'fleet' if fleet else 'ECU')
        finally:
            end_s = elapsed()
            exit_codes = group.stop()
            executor.shutdown()
            node.destroy_node()
            rclpy.try_shutdown()
        if error:
            log.error('error: %s', error)
        bad_exits = {k: v for k, v in exit_codes.items()
                     if v not in (0, None) and k not in {x.fqn for x in opts.extras}}
        if bad_exits:
            log.warning('nodes exited with errors: %s', bad_exits)
        reports = {ns: ecu_report(me, f'[{ns}] ' if fleet else '') for ns, me in seen.items()}
        enough = all(not opts.episodes or len(me.episodes) >= opts.episodes
                     or opts.minutes is not None for me in seen.values())
        out = {
            'ok': error is None and not interrupted and not bad_exits and enough,
            'error': error,
        }
        if fleet:
            out['ecus'] = reports
            out['rounds'] = merge_rounds(rounds)
            out['round_reports'] = rounds
            out['fleet_curve'] = fleet_curve({ns: me.episodes for ns, me in seen.items()})
            if out['fleet_curve']:
                log.info('fleet, per minute: %s  (succeeded without help / steps by humans)',
                         '  '.join(f"{100 * b['success_rate']:.0f}%/"
                                   f"{100 * b['intervention_rate']:.0f}%"
                                   for b in out['fleet_curve']))
        else:
            out.update(reports[namespaces[0]])
        log.info('finished in %.1f s', time.monotonic() - t0)
        if opts.sim_time:
            out['simulated_s'] = round(end_s, 3)
            out['achieved_rtf'] = round(out['simulated_s'] / max(1e-9, time.monotonic() - t0),
                                        3)
            log.info('simulated %.1f s in %.1f s of wall time (real-time factor %.2f)',
                     out['simulated_s'], time.monotonic() - t0, out['achieved_rtf'])
        out.update({
            'duration_s': round(time.monotonic() - t0, 3),
            'domain_id': domain,
            'node_exit_codes': exit_codes,
            'restarts': restart_log,
            'log_dir': str(opts.log_dir),
        })
        return out
