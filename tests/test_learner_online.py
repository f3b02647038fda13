"""The online learner's pure core on real episodes on disk: rounds, gate, registry, new data."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from scarls.checkpoints.registry import CheckpointRegistry
from scarls.episodes import EpisodeReader
from scarls.learner.demos import generate_demos
from scarls.learner.online import METRIC, OnlineConfig, OnlineLearner
from scarls.learner.trainer import TrainerConfig
from scarls.policies import make_policy

SHAPE = (24, 32)


@pytest.fixture(scope='module')
def demos(tmp_path_factory):
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp('offline')
    generate_demos(root, 'pick_cube', 4, seed=10_000, image_shape=SHAPE)
    return root


def _learner(tmp_path, demos, **cfg):
    config = OnlineConfig(**{'steps_per_round': 15, 'pretrain_steps': 0, 'holdout_every': 2,
                             'trainer': TrainerConfig(batch_size=8), **cfg})
    learner = OnlineLearner(make_policy('mlp', seed=0), CheckpointRegistry(tmp_path / 'ckpt'),
                            config)
    learner.load_offline(demos, 'pick_cube', heldout=1)
    return learner


def test_rounds_gate_and_registry(tmp_path, demos):
    learner = _learner(tmp_path, demos, threshold=100.0)
    first = learner.train_round(40)
    assert first.version == 1 and first.approved and math.isfinite(first.metric)
    assert learner.registry.get(1).metrics[METRIC] == pytest.approx(first.metric)
    # a strict gate rejects the next candidate; the deployed one stays
    learner.gate.threshold = 1e-12
    second = learner.train_round()
    assert second.version == 2 and not second.approved and second.parent == 1
    assert learner.deployed_version == 1
    assert learner.registry.latest(approved_only=True).version == 1


def test_training_lowers_the_open_loop_error(tmp_path, demos):
    learner = _learner(tmp_path, demos, threshold=100.0)
    before = learner.evaluate()
    learner.train_round(150)
    assert learner.evaluate() < before


def test_new_online_episodes_are_picked_up_and_some_held_out(tmp_path, demos):
    learner = _learner(tmp_path, demos)
    online = tmp_path / 'online'
    generate_demos(online, 'pick_cube', 2, seed=500, image_shape=SHAPE)
    heldout_before = len(learner.heldout)
    assert learner.refresh_online(online, 'pick_cube') == 2
    assert learner.refresh_online(online, 'pick_cube') == 0
    assert len(learner.heldout) == heldout_before + 1      # every 2nd online episode
    assert learner.online_episodes == 1
    assert np.isfinite(learner.evaluate())


def test_stale_takeover_commands_are_not_labels_and_held_out_episodes_still_evaluate(
        tmp_path, demos):
    """Online episodes whose takeover steps repeat the previous command: those steps are not
    trained on, the episode (trained or held out) still loads, trains and evaluates."""
    import dataclasses

    from scarls.episodes import EpisodeWriter
    from scarls.learner.demos import DEMO_ECU_ID, record_expert_episode
    from scarls.sim import DualArmSim, ScriptedExpert, SimConfig

    sim = DualArmSim(SimConfig(height=SHAPE[0], width=SHAPE[1], task='pick_cube', seed=0))
    expert = ScriptedExpert(sim.config)
    online = tmp_path / 'online'
    for scene in (700, 701):
        records, outcome = record_expert_episode(sim, expert, scene,
                                                 cameras=('top', 'left', 'right'))
        # the policy ran the first 5 steps; afterwards every 3rd command is a stale repeat
        fixed = []
        for i, rec in enumerate(records):
            rec = dataclasses.replace(rec, intervention=i >= 5)
            if i >= 6 and i % 3 == 0:
                rec = dataclasses.replace(rec, action=fixed[-1].action)
            fixed.append(rec)
        writer = EpisodeWriter(online, 'pick_cube', DEMO_ECU_ID, cameras=('top', 'left', 'right'),
                               image_shape=SHAPE, state_dim=14, action_dim=14, fps=30.0,
                               fsync=False)
        for rec in fixed:
            writer.append(rec)
        writer.finalize(outcome, model_version=1)
    learner = _learner(tmp_path, demos, threshold=100.0)
    assert learner.refresh_online(online, 'pick_cube') == 2   # one trained on, one held out
    key = next(k for k in learner.episodes if k.startswith('online/'))
    labels = learner.labels[key]
    steps = len(labels)
    stale = [i for i in range(6, steps) if i % 3 == 0]
    assert learner.stale_labels >= len(stale)   # counted over both episodes
    assert labels[:5].sum() == 0 and all(labels[i] == 0 for i in stale)
    assert sum(labels[i] > 0 for i in range(5, steps)) == steps - 5 - len(stale)
    result = learner.train_round(20)
    assert math.isfinite(result.metric)


def test_fleet_round_of_one_goes_through_the_selector(tmp_path, demos):
    from scarls.fleet import FleetConfig, FleetReducer, Rendezvous
    from scarls.learner.selector import CheckpointSelector

    learner = _learner(tmp_path, demos, threshold=100.0)
    solo = Rendezvous('127.0.0.1', 1, rank=0, world_size=1)
    passing = FleetReducer(FleetConfig(threshold=100.0), 'ecu0', rendezvous=solo)
    result = learner.train_round(20, passing, CheckpointSelector(100.0))
    assert result.fleet.status == 'alone' and result.approved and 'selector' in result.reason
    assert result.record.metrics['fleet_round'] == 0.0
    assert result.record.metrics['local_open_loop_error'] == pytest.approx(result.local_metric)
    assert learner.deployed_version == result.version
    # an error above the fleet's bar: the round is skipped and nothing is deployed
    strict = FleetReducer(FleetConfig(threshold=1e-12), 'ecu0', rendezvous=solo)
    skipped = learner.train_round(20, strict, CheckpointSelector(100.0))
    assert skipped.fleet.status == 'skipped' and not skipped.approved
    assert 'skipped' in skipped.reason and learner.deployed_version == result.version


def test_a_stopping_learner_abandons_its_round_without_publishing(tmp_path, demos):
    from scarls.learner.online import LearnerStopped

    learner = _learner(tmp_path, demos, threshold=100.0)
    learner.stop_event.set()
    with pytest.raises(LearnerStopped):
        learner.train_round(1000)
    assert len(learner.registry) == 0 and learner.trainer.total_steps <= 1


def test_replay_gate_refuses_a_candidate_that_regresses_on_one_arm(tmp_path, demos):
    """The open-loop gate is made blind (any error passes); the replay check still refuses a
    candidate trained on right-arm labels that point the wrong way."""
    from scarls.robot import RIGHT_ARM
    learner = _learner(tmp_path, demos, threshold=100.0, replay_gate=True)
    first = learner.train_round(150)
    assert first.approved and first.version == 1   # nothing deployed yet: no replay check
    # the deployed model against itself: no regression
    assert learner.replay_veto(learner.trainer.deployable()) is None
    for ep in learner.episodes.values():
        ep.action[:, RIGHT_ARM] = 2 * ep.state[:, RIGHT_ARM] - ep.action[:, RIGHT_ARM]
    learner.gate.tolerance = 1e9
    second = learner.train_round(300)
    assert not second.approved and second.reason.startswith('replay check:'), second.reason
    assert 'right_arm' in second.reason
    assert learner.deployed_version == 1


def test_deleted_and_renumbered_online_episodes_keep_the_learner_consistent(tmp_path, demos):
    """`scarls dataset delete` renumbers a task while the learner runs: the renumbered
    episodes are not loaded twice and the deleted ones stop being trained on."""
    from scarls.episodes import list_episodes
    from scarls.episodes.tools import delete_episodes
    learner = _learner(tmp_path, demos, holdout_every=0)
    online = tmp_path / 'online'
    generate_demos(online, 'pick_cube', 4, seed=600, image_shape=SHAPE)
    assert learner.refresh_online(online, 'pick_cube') == 4
    assert learner.online_episodes == 4
    created = {e.index: EpisodeReader(e.path).meta.created_unix
               for e in list_episodes(online, 'pick_cube')}
    assert len(set(created.values())) == 4
    delete_episodes(online, 'pick_cube', [1])   # 2 -> 1, 3 -> 2
    assert learner.refresh_online(online, 'pick_cube') == 0   # nothing new, nothing twice
    assert learner.online_episodes == 3
    kept = {k for k in learner.episodes if k.startswith('online/')}
    assert not any(k.endswith(f'/{created[1]:.6f}') for k in kept), kept
    assert sum(1 for s in learner.sampler.buffers()) >= 1
    learner.train_round(5)   # the sampler draws only from what is still there
    assert all(s.episode in learner.episodes for s in learner._drawn)
    # a new recording after the delete gets index 3 and is loaded once
    generate_demos(online, 'pick_cube', 1, seed=700, image_shape=SHAPE)
    assert learner.refresh_online(online, 'pick_cube') == 1 and learner.online_episodes == 4


def _copy_with_safety(src: EpisodeReader, root, intervention, safety, offset=0.0):
    """An online episode with the demonstration's data, our takeover flags and safety codes."""
    from scarls.episodes import EpisodeWriter, StepRecord
    w = EpisodeWriter(root, 'pick_cube', 'ecu-safety', cameras=src.cameras,
                      image_shape=SHAPE, state_dim=src.state.shape[1],
                      action_dim=src.action.shape[1], fsync=False)
    for i in range(src.steps):
        s = src.step(i)
        w.append(StepRecord(s.images, s.state, s.action, bool(intervention[i]),
                            s.timestamp + offset))
    return w.finalize('success', 1, safety=None if safety is None else np.asarray(safety))


def test_steps_the_robot_did_not_execute_are_never_trained_on(tmp_path, demos):
    from scarls.episodes import list_episodes
    from scarls.episodes.schema import SAFETY_CODES
    learner = _learner(tmp_path, demos, holdout_every=0)
    src = EpisodeReader(list_episodes(demos, 'pick_cube')[0].path)
    t = src.steps
    intervention = np.zeros(t, dtype=bool)
    intervention[5:25] = True                  # a takeover ...
    safety = np.full(t, SAFETY_CODES['ok'], dtype=np.uint8)
    safety[8:12] = SAFETY_CODES['estopped']    # ... partly e-stopped,
    safety[14] = SAFETY_CODES['clamped_heavily']
    safety[15] = SAFETY_CODES['clamped']       # lightly clamped: executed
    safety[16:18] = SAFETY_CODES['holding']
    online = tmp_path / 'online'
    _copy_with_safety(src, online, intervention, safety)
    assert learner.refresh_online(online, 'pick_cube') == 1
    key = next(k for k in learner.episodes if k.startswith('online/'))
    weights = learner.labels[key]
    not_executed = [8, 9, 10, 11, 14, 16, 17]
    assert (weights[not_executed] == 0).all()
    assert (weights[[5, 6, 7, 12, 13, 15, 18]] > 0).all()
    assert learner.not_executed_steps == len(not_executed)
    np.testing.assert_array_equal(learner.episodes[key].executed,
                                  ~np.isin(np.arange(t), not_executed))
    # never drawn as a sample, never a target inside a drawn chunk
    drawn_online = 0
    for _ in range(30):
        learner._batch()
        for s in learner._drawn:
            if s.episode == key:
                drawn_online += 1
                assert s.frame not in not_executed
    assert drawn_online > 0, 'the online episode was never drawn: the check above saw nothing'
    batch = learner._batch()
    assert batch['action_mask'].dtype == torch.bool


def test_episodes_without_safety_count_as_executed(tmp_path, demos):
    from scarls.episodes import list_episodes
    learner = _learner(tmp_path, demos, holdout_every=0)
    src = EpisodeReader(list_episodes(demos, 'pick_cube')[0].path)
    intervention = np.zeros(src.steps, dtype=bool)
    intervention[3:9] = True
    _copy_with_safety(src, tmp_path / 'online', intervention, None)
    assert learner.refresh_online(tmp_path / 'online', 'pick_cube') == 1
    key = next(k for k in learner.episodes if k.startswith('online/'))
    assert learner.episodes[key].executed is None
    assert (learner.labels[key][3:9] > 0).all() and learner.not_executed_steps == 0


def test_corrupt_online_episodes_are_verified_retried_and_given_up(tmp_path, demos, caplog):
    """A missing frame (it would read as a black image) or low-dimensional data that differs
    from its sha256 is caught before training; a load is retried with back-off, then given
    up (logged); a transient failure is retried and then loads."""
    import logging

    from scarls.episodes import list_episodes
    from scarls.learner import online as online_mod
    learner = _learner(tmp_path, demos, holdout_every=0, load_backoff_s=0.01)
    online = tmp_path / 'online'
    generate_demos(online, 'pick_cube', 3, seed=800, image_shape=SHAPE)
    entries = list_episodes(online, 'pick_cube')
    frame = next((entries[0].path / 'observation' / 'top').glob('c.3.*'))
    frame.unlink()                                         # a missing frame
    import zarr
    action = zarr.open_array(str(entries[1].path / 'action'), mode='r+')
    action[2] = action[2] + 1.0                            # data changed after the commit
    real = online_mod.validate_episode
    calls = {'n': 0}

    def flaky(path, *a, **k):                              # the third: fails once
        if path == entries[2].path and calls['n'] == 0:
            calls['n'] += 1
            raise OSError('transient read error')
        return real(path, *a, **k)

    online_mod.validate_episode = flaky
    try:
        with caplog.at_level(logging.WARNING, logger='scarls.learner.online'):
            assert learner.refresh_online(online, 'pick_cube') == 1
    finally:
        online_mod.validate_episode = real
    text = caplog.text
    assert 'frame 3 of' in text and 'is missing' in text
    assert "checksum mismatch for 'action'" in text
    assert 'attempt 1 of 3' in text and 'transient read error' in text
    assert text.count('giving up after 3 failed load(s)') == 2
    assert sorted(learner.given_up) == sorted(f'online episode {e.path}' for e in entries[:2])
    assert learner.online_episodes == 1
    # given up once: not tried again at the next round
    caplog.clear()
    assert learner.refresh_online(online, 'pick_cube') == 0
    assert 'giving up' not in caplog.text


def test_a_corrupt_demonstration_is_skipped(tmp_path, demos):
    import shutil
    root = tmp_path / 'offline'
    shutil.copytree(demos, root)
    from scarls.episodes import list_episodes
    first = list_episodes(root, 'pick_cube')[0].path
    next((first / 'observation' / 'left').glob('c.0.*')).unlink()
    config = OnlineConfig(steps_per_round=5, pretrain_steps=0, load_backoff_s=0.0,
                          trainer=TrainerConfig(batch_size=8))
    learner = OnlineLearner(make_policy('mlp', seed=0), CheckpointRegistry(tmp_path / 'ckpt'),
                            config)
    assert learner.load_offline(root, 'pick_cube', heldout=1) == 3
    assert learner.given_up == [f'demonstration {first}']
    assert len(learner.episodes) == 2 and len(learner.heldout) == 1


def test_fleet_learners_share_their_start_but_not_their_batches(tmp_path, demos):
    """Learners of one seed start from the same weights; their streams (fleet ranks) draw other
    batches, so N learners on the same demonstrations are not N copies of one. Stream 0 draws
    as a single learner does."""
    def draws(learner, n=5):
        return [tuple(learner.sampler.draw(8, learner.rng)) for _ in range(n)]

    single, rank0, rank1, again1 = (_learner(tmp_path / str(i), demos) for i in range(4))
    torch_seeds = [rank0.set_stream(0), rank1.set_stream(1), again1.set_stream(1)]
    assert draws(single) == draws(rank0)
    mine, yours = draws(rank1), draws(again1)
    assert mine == yours                                  # a stream is reproducible
    assert mine != draws(_learner(tmp_path / 'x', demos))  # and not another stream's
    assert torch_seeds[1] == torch_seeds[2] != torch_seeds[0]
    start = [p.detach().clone() for p in rank1.policy.parameters()]
    assert all(torch.equal(a, b) for a, b in zip(start, single.policy.parameters(), strict=True))
    with pytest.raises(ValueError):
        rank1.set_stream(-1)
