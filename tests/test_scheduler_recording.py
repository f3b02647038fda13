"""The scheduler's recording rules without ROS (scarls.scheduler.alignment): the driver's safety
state per step, heavy clamps, drops before an episode's first recorded step, episodes that
cannot be stored (lost whole, counted, recording resumes) and honest drop messages."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from scarls.episodes import EpisodeReader, EpisodeWriter, StorageError, list_episodes
from scarls.episodes.schema import SAFETY_CODES
from scarls.scheduler.alignment import (
    FINALIZE_WAIT_S,
    AlignerConfig,
    JointLimits,
    SafetyTimeline,
    StepAligner,
    heavy_clamp,
)

CAMS = ('top', 'left', 'right')
H, W, D = 8, 8, 3
PERIOD = 33_333_333
T0 = 5_000_000_000_000
LIMITS = JointLimits(np.full(D, -1.0), np.full(D, 1.0), np.full(D, 3.0))   # 0.1 per tick


def _stamp(ns: int):
    return SimpleNamespace(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


class Log:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def info(self, msg: str) -> None:
        self.lines.append(msg)

    def warning(self, msg: str, throttled: bool = False) -> None:
        self.lines.append(msg)

    def error(self, msg: str, throttled: bool = False) -> None:
        self.lines.append(msg)


class Rig:
    """An aligner on a fake clock with a synchronous writer (never drops)."""

    def __init__(self, root: Path, writer_factory=EpisodeWriter, limits=LIMITS) -> None:
        self.now = [100.0]
        self.log = Log()
        self.saved: list = []
        self.lost: list = []
        self.aligner = StepAligner(
            AlignerConfig(root=root, task='pick', ecu_id='ecu-t', cameras=CAMS,
                          match_timeout_s=0.5, writer_options={'fsync': False},
                          joint_limits=limits),
            decode_image=lambda msg: msg.data, log=self.log, on_saved=self.saved.append,
            on_discarded=self.lost.append, clock=lambda: self.now[0],
            writer_factory=writer_factory)

    def tick(self, seconds: float = 0.0) -> None:
        self.now[0] += seconds
        self.aligner.poll()

    def step(self, episode: int, i: int, *, frames: bool = True, action=None, state=None):
        t = T0 + (episode * 1000 + i) * PERIOD
        if frames:
            for c in CAMS:
                self.aligner.add_frame(c, SimpleNamespace(
                    header=SimpleNamespace(stamp=_stamp(t)),
                    data=np.full((H, W, 3), i % 250, np.uint8)))
        self.aligner.add_step(SimpleNamespace(
            header=SimpleNamespace(stamp=_stamp(t + 1000)), episode_id=episode, step=i,
            joint_state_stamp=_stamp(t), image_names=list(CAMS), image_stamps=[_stamp(t)] * 3,
            observation_state=list(np.zeros(D) if state is None else state),
            action=list(np.zeros(D) if action is None else action),
            is_intervention=False, model_version=1))
        self.tick()
        return t + 1000

    def driver(self, stamp: int, state: str, reason: str = '') -> None:
        self.aligner.add_driver_state(SimpleNamespace(
            header=SimpleNamespace(stamp=_stamp(stamp)), state=state, reason=reason))

    def end(self, episode: int, steps: int) -> None:
        self.aligner.add_state(SimpleNamespace(
            phase='SUCCESS', previous_phase='INFERENCE', event='SUCCESS', episode_id=episode,
            steps=steps, header=SimpleNamespace(stamp=_stamp(T0 + (episode * 1000 + steps)
                                                              * PERIOD))))
        self.tick()


def test_heavy_clamp_threshold() -> None:
    z = np.zeros(D)
    assert not heavy_clamp(np.array([0.9, 0, 0]), LIMITS)     # inside (velocity clamps: light)
    assert not heavy_clamp(np.array([1.05, 0, 0]), LIMITS)    # 2.5 % of the range outside
    assert heavy_clamp(np.array([0, -1.15, 0]), LIMITS)       # 7.5 % of the range outside
    assert heavy_clamp(np.array([0, 0, 9.0]), LIMITS)
    assert not heavy_clamp(np.array([0, 0, 9.0]), None)       # without limits: light
    assert not heavy_clamp(np.zeros(2) + 9, LIMITS)           # another robot's size: light
    assert not heavy_clamp(z, LIMITS)


def test_safety_timeline_lookup_and_pruning() -> None:
    tl = SafetyTimeline(keep_s=10.0)
    assert tl.state_at(0, PERIOD) is None
    tl.add(1_000, 'holding', 'waiting for a first command')
    tl.add(5_000, 'ok')
    tl.add(5_000, 'ok')                                     # republished: no duplicate
    tl.add(3_000, 'clamped', 'velocity limit: j0')          # out of order: sorted in
    assert len(tl) == 3
    assert tl.state_at(500, 100) is None
    assert tl.state_at(1_500, 600) == ('holding', 'waiting for a first command')
    assert tl.state_at(2_500, 1_000) == ('clamped', 'velocity limit: j0')   # next tick's state
    assert tl.state_at(4_000, 500) == ('clamped', 'velocity limit: j0')     # in force
    assert tl.state_at(10**9, 1) == ('ok', '')
    # a command sent while holding that ends the hold one tick late was executed; other
    # states are not stretched over two ticks
    assert tl.state_at(1_100, 900) == ('holding', 'waiting for a first command')
    assert tl.state_at(1_100, 1_000) == ('clamped', 'velocity limit: j0')
    assert tl.state_at(3_100, 1_000) == ('clamped', 'velocity limit: j0')   # not 'ok' at 5000
    tl.add(20 * 10**9, 'estopped', 'button')
    assert len(tl) == 2                                     # the state in force is kept
    assert tl.state_at(15 * 10**9, 1) == ('ok', '')


def test_each_step_records_the_driver_state_of_its_execution(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    t = lambda i: T0 + (1000 + i) * PERIOD + 1000   # noqa: E731 - step i's stamp
    rig.driver(T0 - 10**9, 'holding', 'waiting for a first command')
    rig.driver(t(0) + 5_000_000, 'ok')               # the tick executing step 0
    rig.driver(t(2) + 5_000_000, 'clamped', 'velocity limit: j0')
    rig.driver(t(4) + 5_000_000, 'ok')
    rig.driver(t(5) + 5_000_000, 'estopped', 'service request')
    rig.driver(t(7) + 5_000_000, 'holding', 'e-stop released: waiting for a fresh command')
    rig.driver(t(8) + 5_000_000, 'ok')
    rig.driver(t(9) + 5_000_000, 'fault', 'robot fault')
    for i in range(11):
        far = i == 3
        rig.step(1, i, action=[1.5 if far else 0.01, 0, 0])
    rig.end(1, 11)
    assert len(rig.saved) == 1 and rig.saved[0].dropped_steps == 0
    r = EpisodeReader(rig.saved[0].ref.path)
    c = SAFETY_CODES
    expected = [c['ok'], c['ok'], c['clamped'], c['clamped_heavily'], c['ok'], c['estopped'],
                c['estopped'], c['holding'], c['ok'], c['fault'], c['fault']]
    assert np.asarray(r.safety[:]).tolist() == expected
    assert r.executed().tolist() == [True, True, True, False, True, False, False, False, True,
                                     False, False]
    counts = r.meta.extra['safety']
    assert (counts['clamped'], counts['clamped_heavily'], counts['estopped'], counts['holding'],
            counts['fault'], counts['not_executed']) == (1, 1, 2, 1, 2, 6)
    np.testing.assert_array_equal(rig.saved[0].safety, expected)


def test_no_driver_state_no_safety_array(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    for i in range(3):
        rig.step(1, i)
    rig.end(1, 3)
    r = EpisodeReader(rig.saved[0].ref.path)
    assert r.safety is None and r.executed().all() and 'safety' not in r.meta.extra


def test_drops_before_the_first_recorded_step_count_and_do_not_delay_the_end(
        tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    for i in range(3):                           # frames never arrive (start-up)
        rig.step(1, i, frames=False)
    rig.tick(1.0)                                # past match_timeout_s: dropped
    for i in range(3, 8):
        rig.step(1, i)
    rig.end(1, 8)                                # finalised at once: every step accounted for
    assert len(rig.saved) == 1
    saved = rig.saved[0]
    assert saved.dropped_steps == 3 and saved.ref.steps == 5
    assert saved.finalize_seconds == 0.0
    meta = EpisodeReader(saved.ref.path).meta
    assert meta.extra['dropped_by_cause'] == {'no_frames': 3}
    assert meta.extra['dropped_steps'] == 3


def test_an_episode_without_a_recordable_step_is_counted_lost(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    for i in range(4):
        rig.step(1, i, frames=False)
    rig.tick(1.0)
    rig.end(1, 4)
    assert rig.saved == [] and len(rig.lost) == 1
    assert rig.lost[0].reason == 'no step could be recorded' and rig.lost[0].steps_seen == 4
    assert (rig.aligner.losses.episodes, rig.aligner.losses.steps) == (1, 4)


def test_writer_that_cannot_be_created_loses_the_episode_and_recording_resumes(
        tmp_path: Path) -> None:
    full = {'on': True}

    def factory(*args, **kwargs):
        if full['on']:
            raise StorageError('creating episode arrays failed: No space left on device '
                               '(ENOSPC); the disk is full')
        return EpisodeWriter(*args, **kwargs)

    rig = Rig(tmp_path, writer_factory=factory)
    for i in range(6):
        rig.step(1, i)
    assert rig.aligner.open_episode is None
    full['on'] = False                           # space returns mid-episode: still lost whole
    for i in range(6, 9):
        rig.step(1, i)
    rig.end(1, 9)
    assert len(rig.lost) == 1 and 'could not be stored' in rig.lost[0].reason
    assert rig.lost[0].steps_seen == 9
    assert (rig.aligner.losses.episodes, rig.aligner.losses.steps) == (1, 9)
    assert list_episodes(tmp_path) == []
    for i in range(4):                           # the next episode records normally
        rig.step(2, i)
    rig.end(2, 4)
    assert len(rig.saved) == 1 and rig.saved[0].ref.index == 0
    losses = EpisodeReader(rig.saved[0].ref.path).meta.extra['recorder_losses']
    assert (losses['episodes'], losses['steps']) == (1, 9) and 'ENOSPC' in losses['last_error']
    for i in range(2):                           # reported once, not again
        rig.step(3, i)
    rig.end(3, 2)
    assert 'recorder_losses' not in EpisodeReader(rig.saved[1].ref.path).meta.extra


def test_episode_whose_finalize_fails_is_lost_whole_and_cleaned(tmp_path: Path,
                                                                 monkeypatch) -> None:
    rig = Rig(tmp_path)
    for i in range(5):
        rig.step(1, i)
    real_open = open

    def failing_open(path, *a, **k):
        if 'meta.json.tmp' in str(path):
            raise OSError(errno.ENOSPC, 'No space left on device')
        return real_open(path, *a, **k)

    monkeypatch.setattr('builtins.open', failing_open)
    rig.end(1, 5)
    monkeypatch.undo()
    assert rig.saved == [] and len(rig.lost) == 1 and 'disk is full' in rig.lost[0].reason
    assert sorted(os.listdir(tmp_path / 'pick')) == ['.scarls-task.lock']
    for i in range(3):
        rig.step(2, i)
    rig.end(2, 3)
    assert rig.saved[0].ref.index == 0


class _FullWriter:
    """A writer whose queue is always full."""

    def __init__(self, *args, **kwargs) -> None:
        self.aborted = False

    def append(self, step) -> bool:
        return False

    def explain_drop(self) -> str:
        return 'writer queue full (8/8 steps): steps arrived in a burst'

    def abort(self) -> None:
        self.aborted = True


def test_queue_full_drop_says_why(tmp_path: Path) -> None:
    rig = Rig(tmp_path, writer_factory=_FullWriter)
    for i in range(3):
        rig.step(1, i)
    rig.end(1, 3)
    assert any('arrived in a burst' in line for line in rig.log.lines)
    assert not any('disk too slow' in line for line in rig.log.lines)
    assert rig.lost and rig.lost[0].reason == 'no step could be recorded'


def test_end_waits_for_missing_steps_then_counts_them(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    for i in range(3):
        rig.step(1, i)
    rig.end(1, 5)                                # 2 steps never received
    assert rig.saved == []
    rig.tick(FINALIZE_WAIT_S + 0.1)
    assert rig.saved[0].dropped_steps == 2
    meta = EpisodeReader(rig.saved[0].ref.path).meta
    assert meta.extra['dropped_by_cause'] == {'not_received': 2}


@pytest.mark.parametrize('state', ['resetting', 'holding'])
def test_not_executed_states(tmp_path: Path, state: str) -> None:
    rig = Rig(tmp_path)
    rig.driver(T0, state, 'x')
    for i in range(2):
        rig.step(1, i)
    rig.end(1, 2)
    r = EpisodeReader(rig.saved[0].ref.path)
    assert not r.executed().any()


def test_episodes_without_an_end_are_counted_lost_when_the_next_one_begins(
        tmp_path: Path) -> None:
    """The actor never reported the end (it died): a lost or unrecordable episode is counted
    as soon as a newer episode begins, not never."""
    calls = {'n': 0}

    def factory(*args, **kwargs):
        calls['n'] += 1
        if calls['n'] == 1:
            raise StorageError('creating episode arrays failed (ENOSPC)')
        return EpisodeWriter(*args, **kwargs)

    rig = Rig(tmp_path, writer_factory=factory)
    for i in range(4):
        rig.step(1, i)                           # lost: no writer
    for i in range(2):
        rig.step(2, i, frames=False)             # nothing recordable
    rig.tick(1.0)
    assert rig.lost == []                        # no end yet: maybe still coming
    for i in range(3):
        rig.step(3, i)
    assert [(d.actor_episode_id, d.steps_seen) for d in rig.lost] == [(1, 4), (2, 2)]
    assert (rig.aligner.losses.episodes, rig.aligner.losses.steps) == (2, 6)
    rig.end(3, 3)
    assert rig.saved[0].ref.index == 0
