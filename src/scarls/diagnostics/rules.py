"""The status of each scarls node from its state (pure functions; the nodes pass plain values).

- driver: ERROR on a robot fault or an engaged e-stop; WARN while holding after the command
  watchdog fired, or with a camera below half its rate.
- camera: ERROR with no frame in the window; WARN below half the configured rate.
- scheduler (recorder): ERROR when the last episode could not be stored; WARN with the writer
  queue at 80 % or more, steps dropped in the open episode, or episodes lost since start.
- learner: ERROR when it failed (cannot start, training stopped); WARN when the last round
  failed, or the last fleet round failed or was missed.
- actor: WARN when the deployed checkpoint could not be loaded, when control ticks run below
  80 % of the rate (or one came 3 periods late) during an episode, or ticks were skipped on
  stale observations.
- teleop: WARN with no joint state yet, or a signal unanswered for 5 s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from scarls.diagnostics import Level, Status, worst

#: a camera (or the control tick) below this share of its expected rate is reported
CAMERA_RATE_WARN = 0.5
TICK_RATE_WARN = 0.8
TICK_GAP_PERIODS = 3.0
WRITER_QUEUE_WARN = 0.8
SIGNAL_UNANSWERED_S = 5.0


def driver_status(*, state: str, reason: str, ticks: dict[str, int], estopped: bool,
                  fault: str | None, backend: str, robot: str, rate_hz: float,
                  camera_rates: dict[str, float], expected_camera_hz: float) -> Status:
    """The driver's safety state (``scarls.driver.safety.SAFETY_STATES``) and camera rates."""
    problems: list[tuple[Level, str]] = []
    if fault:
        problems.append((Level.ERROR, f'robot fault: {fault}'))
    if estopped:
        problems.append((Level.ERROR, f'e-stop engaged{": " + reason if reason else ""}'))
    if state == 'holding' and reason.startswith('watchdog'):
        problems.append((Level.WARN, f'holding: {reason}'))
    for name, hz in sorted(camera_rates.items()):
        if expected_camera_hz > 0 and hz < CAMERA_RATE_WARN * expected_camera_hz:
            problems.append((Level.WARN, f'camera {name} at {hz:.1f} Hz (expected '
                                         f'{expected_camera_hz:.0f})'))
    level, message = worst(problems, f'{state}{": " + reason if reason else ""}')
    values = {'safety_state': 'estopped' if estopped else state, 'reason': reason,
              'backend': backend, 'robot': robot, 'rate_hz': rate_hz,
              'fault': fault or ''}
    values.update({f'{k}_ticks': int(v) for k, v in sorted(ticks.items())})
    values.update({f'camera_{k}_hz': v for k, v in sorted(camera_rates.items())})
    return Status.of(level, message, **values)


def camera_status(*, camera: str, rate_hz: float, expected_hz: float, published: int,
                  source: str) -> Status:
    """One camera capture node: its measured publish rate against the configured one."""
    if rate_hz <= 0:
        level, message = Level.ERROR, f'camera {camera}: no frames'
    elif expected_hz > 0 and rate_hz < CAMERA_RATE_WARN * expected_hz:
        level, message = Level.WARN, (f'camera {camera} at {rate_hz:.1f} Hz (expected '
                                      f'{expected_hz:.0f})')
    else:
        level, message = Level.OK, f'camera {camera} at {rate_hz:.1f} Hz'
    return Status.of(level, message, camera=camera, rate_hz=rate_hz, expected_hz=expected_hz,
                     frames_published=published, source=source)


def recorder_status(*, phase: str, saved: int, open_episode: int | None, pending_steps: int,
                    queue_depth: int, queue_capacity: int, writer_dropped: int,
                    episode_dropped: int, lost_episodes: int, lost_steps: int,
                    recording_problem: str, deployed_version: int,
                    waiting_for: Sequence[str] = ()) -> Status:
    """The scheduler's recorder: the step queue, the episode writer's queue and drops;
    ``waiting_for``: what it still waits for before a step could be recorded."""
    problems: list[tuple[Level, str]] = []
    if waiting_for:
        problems.append((Level.WARN, f'not ready to record: waiting for {", ".join(waiting_for)}'))
    if recording_problem:
        problems.append((Level.ERROR, f'recording failed: {recording_problem}'))
    if queue_capacity > 0 and queue_depth >= WRITER_QUEUE_WARN * queue_capacity:
        problems.append((Level.WARN, f'episode writer queue {queue_depth}/{queue_capacity}'))
    if episode_dropped:
        problems.append((Level.WARN, f'{episode_dropped} steps dropped in the open episode'))
    if lost_episodes and not recording_problem:
        problems.append((Level.WARN, f'{lost_episodes} episodes lost since start'))
    ok = f'recording episode (actor id {open_episode})' if open_episode is not None \
        else f'waiting for an episode ({saved} saved)'
    level, message = worst(problems, ok)
    return Status.of(level, message, actor_phase=phase, episodes_saved=saved,
                     open_episode='' if open_episode is None else open_episode,
                     pending_steps=pending_steps, writer_queue=queue_depth,
                     writer_queue_capacity=queue_capacity, writer_dropped=writer_dropped,
                     episode_dropped_steps=episode_dropped, lost_episodes=lost_episodes,
                     lost_steps=lost_steps, recording_problem=recording_problem,
                     deployed_version=deployed_version, waiting_for=', '.join(waiting_for))


def learner_status(*, state: str, detail: str, rounds: int, loss: float, metric: float,
                   version: int, approved: bool, deployed_version: int,
                   fleet: dict | None) -> Status:
    """The learner's state and, in a fleet, its membership and last round.

    ``fleet``: None outside a fleet, else ``{'rank', 'world_size', 'round', 'status',
    'reason', 'participants'}`` (round 0 / status '' before the first round)."""
    problems: list[tuple[Level, str]] = []
    if state == 'failed':
        problems.append((Level.ERROR, f'learner failed: {detail}'))
    elif detail.startswith('last round failed'):
        problems.append((Level.WARN, detail))
    values = {'state': state, 'detail': detail, 'rounds': rounds, 'loss': loss,
              'metric': metric, 'version': version, 'approved': approved,
              'deployed_version': deployed_version, 'fleet': fleet is not None}
    if fleet is not None:
        if fleet.get('status') in ('failed', 'missed'):
            problems.append((Level.WARN, f"fleet round {fleet.get('round')} "
                                         f"{fleet['status']}: {fleet.get('reason', '')}"))
        values.update({'fleet_rank': fleet.get('rank', -1),
                       'fleet_world_size': fleet.get('world_size', 0),
                       'fleet_round': fleet.get('round', 0),
                       'fleet_round_status': fleet.get('status', ''),
                       'fleet_participants': ','.join(fleet.get('participants', ()))})
    level, message = worst(problems, state + (f': {detail}' if detail else ''))
    return Status.of(level, message, **values)


def actor_status(*, phase: str, episode_id: int, steps: int, intervention_steps: int,
                 model_version: int, policy: str, in_episode: bool, tick_rate_hz: float,
                 max_tick_gap_s: float, expected_hz: float, ticks: int,
                 stale_observations: int, stale_in_window: int, sync: str,
                 sync_reason: str, driver_state: str) -> Status:
    """The actor's FSM phase and control-tick statistics."""
    problems: list[tuple[Level, str]] = []
    if sync == 'failed':
        problems.append((Level.WARN, f'deployed checkpoint not loaded: {sync_reason}'))
    if in_episode and expected_hz > 0:
        if tick_rate_hz < TICK_RATE_WARN * expected_hz:
            problems.append((Level.WARN, f'control ticks at {tick_rate_hz:.1f} Hz (expected '
                                         f'{expected_hz:.0f})'))
        elif math.isfinite(max_tick_gap_s) and max_tick_gap_s > TICK_GAP_PERIODS / expected_hz:
            problems.append((Level.WARN, f'a control tick came {max_tick_gap_s * 1e3:.0f} ms '
                                         'after the previous one'))
    if stale_in_window:
        problems.append((Level.WARN, f'{stale_in_window} ticks skipped on stale observations'))
    level, message = worst(problems, f'{phase} (episode {episode_id}, model v{model_version})')
    return Status.of(level, message, phase=phase, episode_id=episode_id, steps=steps,
                     intervention_steps=intervention_steps, model_version=model_version,
                     policy=policy, tick_rate_hz=tick_rate_hz,
                     max_tick_gap_ms=max_tick_gap_s * 1e3 if math.isfinite(max_tick_gap_s)
                     else -1.0, expected_hz=expected_hz, ticks=ticks,
                     stale_observations=stale_observations, deploy_sync=sync,
                     driver_state=driver_state)


def teleop_status(*, source: str, phase: str, episode_id: int, have_joint_state: bool,
                  awaiting: str, awaiting_s: float) -> Status:
    """The human-in-the-loop node: its source, the actor phase it sees, unanswered signals."""
    problems: list[tuple[Level, str]] = []
    if not have_joint_state:
        problems.append((Level.WARN, 'no joint state received yet'))
    if awaiting and awaiting_s > SIGNAL_UNANSWERED_S:
        problems.append((Level.WARN, f'signal {awaiting} unanswered for {awaiting_s:.0f} s'))
    level, message = worst(problems, f'{source}: actor {phase}')
    return Status.of(level, message, source=source, actor_phase=phase, episode_id=episode_id,
                     awaiting_signal=awaiting, awaiting_s=awaiting_s)
