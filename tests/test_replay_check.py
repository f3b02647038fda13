"""Replay regression check: real checkpoints and Zarr episodes, closed-form phase numbers, CLI."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Mapping

import numpy as np
import pytest
import torch

from scarls.checkpoints import CheckpointRegistry, load_checkpoint, save_checkpoint
from scarls.cli.replay_check import main
from scarls.episodes import EpisodeReader, EpisodeWriter, list_episodes
from scarls.learner.config import TrainerConfig
from scarls.learner.demos import generate_demos, record_expert_episode
from scarls.learner.evaluation import evaluate_open_loop, open_loop_batches
from scarls.learner.replay_check import JOINT_GROUPS, ReplayConfig, ReplayGateConfig, run_replay
from scarls.learner.replay_episodes import ReplayEpisode, iter_disk_episodes
from scarls.learner.replay_gate import ReplayGate
from scarls.learner.trainer import EpisodeData, Trainer, build_batch, fit_normalization
from scarls.policies import Policy, PolicyConfig, make_policy
from scarls.sim import DualArmSim, ScriptedExpert, SimConfig

SHAPE = (24, 32)
CAMS = ('top',)
TASK = 'pick_cube'
CHUNK = 5
SHIFT = 8          # the "wrong" checkpoint learns the right arm's actions SHIFT steps early
MLP = {'chunk_size': CHUNK, 'hidden_sizes': [64, 64]}


def _train(episodes: list[EpisodeData], steps: int, seed: int) -> Policy:
    policy = make_policy('mlp', MLP, seed=seed)
    fit_normalization(policy, episodes)
    trainer = Trainer(policy, TrainerConfig(batch_size=32, lr=3e-3, num_threads=1))
    rng = np.random.default_rng(seed)
    eps = dict(enumerate(episodes))

    def batch():
        keys = rng.integers(0, len(eps), 32)
        samples = [(int(k), int(rng.integers(0, eps[int(k)].steps))) for k in keys]
        return build_batch(eps, samples, CHUNK)

    trainer.train_steps(batch, steps)
    return policy.eval()


def _shifted(ep: EpisodeData) -> EpisodeData:
    """Labels with the right arm's actions taken SHIFT steps ahead (a time-shift bug)."""
    action = ep.action.copy()
    idx = np.minimum(np.arange(ep.steps) + SHIFT, ep.steps - 1)
    right = list(JOINT_GROUPS['right_arm'])
    action[:, right] = ep.action[idx][:, right]
    return dataclasses.replace(ep, action=action)


@pytest.fixture(scope='module')
def world(tmp_path_factory):
    """Training demos, replay episodes (two demos + one online episode with a takeover and
    recorded stages), and good / wrong checkpoints trained on them."""
    torch.set_num_threads(1)
    base = tmp_path_factory.mktemp('replay')
    train_root, root = base / 'train', base / 'data'
    # scenes 10000-10007 (both arms work in some); the replayed ones are recorded again
    generate_demos(train_root, TASK, 8, seed=10_000, image_shape=SHAPE, cameras=CAMS)
    generate_demos(root, TASK, 2, seed=10_006, image_shape=SHAPE, cameras=CAMS)
    # an online episode: the policy drove the first 30 steps, then the expert took over
    sim = DualArmSim(SimConfig(height=SHAPE[0], width=SHAPE[1], task=TASK, seed=0))
    records, outcome = record_expert_episode(sim, ScriptedExpert(sim.config), 10_004,
                                             cameras=CAMS)
    records = [dataclasses.replace(r, intervention=i >= 30) for i, r in enumerate(records)]
    writer = EpisodeWriter(root, TASK, 'ecu0', cameras=CAMS, image_shape=SHAPE, state_dim=14,
                           action_dim=14, fps=30.0, fsync=False)
    for r in records:
        writer.append(r)
    writer.finalize(outcome, model_version=1,
                    extra={'source': 'online', 'stages': [[0, 'reach'], [45, 'grasp']]})
    train = [EpisodeData.from_reader(EpisodeReader(e.path), source='offline', cameras=())
             for e in list_episodes(train_root, TASK)]
    good = _train(train, 300, seed=0)
    wrong = _train([_shifted(e) for e in train], 300, seed=0)
    ck = base / 'ckpt'
    save_checkpoint(ck / 'good.safetensors', good, version=1)
    save_checkpoint(ck / 'wrong.safetensors', wrong, version=2)
    return {'root': root, 'ck': ck, 'good': load_checkpoint(ck / 'good.safetensors')[0],
            'wrong': load_checkpoint(ck / 'wrong.safetensors')[0]}


def _episodes(root, **kw):
    return list(iter_disk_episodes(root, TASK, **kw))


# -- the gate on real checkpoints -------------------------------------------------------------


def test_wrong_checkpoint_is_flagged_and_good_one_passes(world):
    eps = _episodes(world['root'])
    assert len(eps) == 3
    gate = ReplayGate()
    bad = gate.check(world['wrong'], eps, baseline=world['good'])
    assert not bad.approved and 'worse than the baseline' in bad.reason
    assert any(r.episode == '*' and r.group == 'right_arm' for r in bad.regressions)
    assert not any(r.episode == '*' and r.group == 'left_arm' for r in bad.regressions)
    ok = gate.check(world['good'], eps, baseline=world['wrong'])
    assert ok.approved, ok.reason
    same = gate.check(world['good'], eps, baseline=world['good'])
    assert same.approved and not same.regressions
    # the timing check finds the shift on the right-arm scenes (episodes 1 and 2)
    for e in bad.report.episodes[1:]:
        assert SHIFT - 2 <= e.lag['right_arm']['steps'] <= SHIFT, e.lag
        assert abs(e.lag['right_arm']['baseline_steps']) <= 1
    # the errors themselves: the time shift shows on the right arm, on expert steps
    cw = bad.report.total_cell('human').candidate
    cg = ok.report.total_cell('human').candidate
    assert cw['right_arm'].mse > 3 * cg['right_arm'].mse
    # without a baseline, an absolute limit between the two separates them too
    limit = math.sqrt(cw['all'].mse * cg['all'].mse)
    strict = ReplayGate(ReplayGateConfig(max_mse=limit))
    assert strict.check(world['good'], eps).approved
    assert 'above the limit' in strict.check(world['wrong'], eps).reason


def test_phases_modes_stages_and_the_learner_metric(world):
    eps = _episodes(world['root'], stride=2)
    report = run_replay(world['good'], eps, config=ReplayConfig(stride=2))
    online = next(e for e in report.episodes if e.source == 'online')
    assert online.model_version == 1 and online.intervention_steps == online.steps - 30
    assert online.cell('policy').frames == 15        # steps 0, 2, .., 28
    assert online.cell('human').frames == len(range(30, online.steps, 2))
    keys = {c.key for c in online.cells}
    assert {'human/stage:reach', 'human/stage:grasp', 'policy/early', 'all/late'} <= keys
    # ('human', 'all') over the whole action is the learner's open-loop metric
    ref = evaluate_open_loop(world['good'], open_loop_batches([e.data for e in eps], CHUNK,
                                                               stride=2))
    total = report.total_cell('human')
    assert total.frames == ref.frames
    assert total.candidate['all'].mse == pytest.approx(ref.mse, rel=1e-5)
    assert total.hold['all'].mse == pytest.approx(ref.baseline_mse, rel=1e-5)


def test_in_memory_episodes_give_the_same_numbers(world):
    disk = _episodes(world['root'])
    ep = disk[0]
    reader = EpisodeReader(ep.path)
    mem = ReplayEpisode.from_records('bag/0', [reader.step(i) for i in range(reader.steps)],
                                     task=TASK, fps=30.0, cameras=CAMS)
    a = run_replay(world['good'], [ep]).episodes[0].cell('human')
    b = run_replay(world['good'], [mem]).episodes[0].cell('human')
    assert a.candidate['all'].mse == pytest.approx(b.candidate['all'].mse, rel=1e-6)
    assert a.candidate['right_arm'].max == pytest.approx(b.candidate['right_arm'].max)


# -- closed-form numbers on a hand-made case ---------------------------------------------------


class _Const(Policy):
    """Test double: every chunk entry is the constant vector ``value``."""

    def __init__(self, config: PolicyConfig, value: float) -> None:
        super().__init__(config)
        self.value = torch.full((config.action_dim,), float(value))

    def preprocess(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {'state': self._state(batch)}

    def _predict(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        b, cfg = inputs['state'].shape[0], self.config
        return self.value.expand(b, cfg.chunk_size, cfg.action_dim).clone()


def _hand_made() -> ReplayEpisode:
    """30 steps: 0-9 policy-driven (action 0.1 everywhere), 10-19 human with the left arm at
    0.2, 20-29 human with both grippers at 0.4; state 0; stages reach 0-14, grasp 15-29."""
    t = 30
    action = np.zeros((t, 14), np.float32)
    action[:10] = 0.1
    action[10:20, 0:6] = 0.2
    action[20:, [6, 13]] = 0.4
    data = EpisodeData(task='hand', outcome='success', source='online',
                       state=np.zeros((t, 14), np.float32), action=action,
                       intervention=np.arange(t) >= 10, images={})
    stages = np.array(['reach'] * 15 + ['grasp'] * 15, dtype=object)
    return ReplayEpisode('hand/0', data, fps=10.0, stages=stages)


def test_closed_form_per_phase_and_group_numbers():
    ep = _hand_made()
    zero = _Const(PolicyConfig(chunk_size=3), 0.0)
    cfg = ReplayConfig(tolerance=0.3, persist=3)
    res = run_replay(zero, [ep], config=cfg).episodes[0]
    left, grip = 0.04 * 6 / 14, 0.16 * 2 / 14
    pol = res.cell('policy')      # chunks stop at the takeover: every entry is 0.1 off
    assert pol.frames == 10 and pol.candidate['all'].mse == pytest.approx(0.01)
    assert pol.candidate['all'].mae == pytest.approx(0.1)
    assert pol.candidate['all'].max == pytest.approx(0.1)
    assert pol.candidate['all'].first_divergence is None
    assert res.cell('policy', 'early').frames == 10 and res.cell('policy', 'late') is None
    # a chunk from step 18 reaches steps 20 and 21: with the full chunk the middle third mixes
    mid = res.cell('human', 'middle').candidate
    assert mid['all'].mse == pytest.approx((8 * left + (2 * left + grip) / 3
                                            + (left + 2 * grip) / 3) / 10)
    # compare only the first chunk entry: every cell is exact
    one = run_replay(zero, [ep], config=dataclasses.replace(cfg, horizon=1)).episodes[0]
    mid, late = one.cell('human', 'middle').candidate, one.cell('human', 'late').candidate
    assert mid['all'].mse == pytest.approx(left) and late['all'].mse == pytest.approx(grip)
    assert mid['left_arm'].mse == pytest.approx(0.04) and mid['left_arm'].mae == \
        pytest.approx(0.2)
    assert mid['right_arm'].mse == 0 and mid['grippers'].mse == 0
    assert late['grippers'].mse == pytest.approx(0.16) and late['grippers'].max == \
        pytest.approx(0.4)
    human = one.cell('human')
    assert human.frames == 20 and human.candidate['all'].mse == pytest.approx((left + grip) / 2)
    assert human.candidate['all'].first_divergence == 20         # the grippers, 0.4 > 0.3
    assert human.candidate['left_arm'].first_divergence is None  # 0.2 < 0.3
    assert human.worst_joint in ('left_gripper', 'right_gripper')
    grasp = one.cell('human', 'stage:grasp')
    assert grasp.frames == 15
    assert grasp.candidate['all'].mse == pytest.approx((5 * left + 10 * grip) / 15)
    assert one.cell('all').frames == 30
    assert one.cell('all').candidate['all'].mse == pytest.approx(
        (10 * 0.01 + 10 * left + 10 * grip) / 30)
    tight = run_replay(zero, [ep], config=ReplayConfig(tolerance=0.15, horizon=1))
    assert tight.episodes[0].cell('human').candidate['left_arm'].first_divergence == 10
    assert tight.episodes[0].seconds_at(10) == pytest.approx(1.0)


def test_closed_form_regressions_against_a_baseline():
    ep = _hand_made()
    cand = _Const(PolicyConfig(chunk_size=1), 0.0)
    base = _Const(PolicyConfig(chunk_size=1), 0.1)
    decision = ReplayGate(ReplayGateConfig(rel_margin=0.1, abs_margin=0.0)).check(
        cand, [ep], baseline=base)
    human = decision.report.total_cell('human')
    # left arm: candidate (0.04 * 10 + 0) / 20 = 0.02 vs baseline 0.01 everywhere
    assert human.candidate['left_arm'].mse == pytest.approx(0.02)
    assert human.baseline['left_arm'].mse == pytest.approx(0.01)
    assert human.candidate['right_arm'].mse == 0
    # grippers 0.08 vs 0.05, whole action 0.02 vs (0.01 + 0.3 / 14) / 2
    assert human.candidate['grippers'].mse == pytest.approx(0.08)
    assert human.baseline['all'].mse == pytest.approx((0.01 + 0.3 / 14) / 2)
    assert set(human.regressed) == {'all', 'left_arm', 'grippers'}
    assert not decision.approved and 'worse than the baseline' in decision.reason
    # the policy-driven steps are not judged by default: there the candidate is worse too
    # (0.01 vs 0), yet only gate_modes=('policy',) says so
    assert not any(r.mode == 'policy' for r in decision.regressions)
    policy_gate = ReplayGate(ReplayGateConfig(gate_modes=('policy',), abs_margin=0.0))
    assert any(r.mode == 'policy' for r in policy_gate.decide(decision.report).regressions)


# -- the command line --------------------------------------------------------------------------


def _cli(world, capsys, *args, checkpoint='wrong', baseline='good', root=None):
    argv = ['replay-check', '--checkpoint', str(world['ck'] / f'{checkpoint}.safetensors'),
            '--data-root', str(root or world['root']), '--task', TASK, '--no-progress', *args]
    if baseline:
        argv += ['--baseline', str(world['ck'] / f'{baseline}.safetensors')]
    code = main(argv)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_exit_codes_json_and_table(world, capsys):
    code, out, _ = _cli(world, capsys, '--json', '--fail-on-regression')
    assert code == 1
    doc = json.loads(out)
    assert doc['decision']['approved'] is False
    assert any(r['group'] == 'right_arm' and r['episode'] == '*'
               for r in doc['decision']['regressions'])
    assert len(doc['episodes']) == 3 and doc['skipped'] == []
    cell = next(c for c in doc['total'] if c['mode'] == 'human' and c['segment'] == 'all')
    assert cell['candidate']['right_arm']['mse'] > cell['baseline']['right_arm']['mse']
    # without --fail-on-regression the verdict is reported, the exit code stays 0
    code, out, _ = _cli(world, capsys)
    assert code == 0 and 'verdict: REJECTED' in out and 'REGRESSED' in out
    assert 'timing: pick_cube/episode_1 right_arm: acts' in out and 'steps early' in out
    code, out, _ = _cli(world, capsys, '--fail-on-regression', '--episodes', '0,2',
                        '--segments', checkpoint='good', baseline='wrong')
    assert code == 0 and 'verdict: APPROVED' in out
    assert 'episode_1' not in out and 'human/late' in out and 'policy/all' in out


def test_cli_registry_versions(world, capsys, tmp_path):
    reg = CheckpointRegistry(tmp_path / 'reg')
    reg.publish(world['good'], metrics={'open_loop_error': 0.1}, approved=True)
    reg.mark_deployed(1)
    reg.publish(world['wrong'], metrics={'open_loop_error': 0.2}, approved=True)
    code = main(['--checkpoint', 'latest', '--baseline', 'deployed', '--registry',
                 str(tmp_path / 'reg'), '--data-root', str(world['root']), '--task', TASK,
                 '--no-progress', '--fail-on-regression', '--json'])
    doc = json.loads(capsys.readouterr().out)
    assert code == 1 and doc['candidate'].startswith('v2 ') and doc['baseline'].startswith('v1 ')
    code = main(['--checkpoint', '7', '--registry', str(tmp_path / 'reg'),
                 '--data-root', str(world['root']), '--task', TASK])
    assert code == 2 and 'no checkpoint version 7' in capsys.readouterr().err


def test_cli_corrupt_episodes_are_skipped_and_named(world, capsys, tmp_path):
    root = tmp_path / 'data'
    shutil.copytree(world['root'], root)
    task = root / TASK
    (task / 'episode_0_meta.json').write_text('{not json')
    chunk = next((task / 'episode_2.zarr' / 'action').rglob('c*'))
    chunk = chunk if chunk.is_file() else next(p for p in chunk.rglob('*') if p.is_file())
    chunk.write_bytes(b'\x00garbage' * 8)
    code, out, err = _cli(world, capsys, checkpoint='good', baseline=None, root=root)
    assert code == 0
    assert 'episode_0_meta.json' in err and 'not valid JSON' in err
    assert str(task / 'episode_2.zarr') in err
    assert 'pick_cube/episode_1' in out and 'verdict: APPROVED' in out
    code, out, _ = _cli(world, capsys, '--json', '--strict', checkpoint='good', baseline=None,
                        root=root)
    doc = json.loads(out)
    assert code == 1 and [s['name'] for s in doc['skipped']] == [
        'pick_cube/episode_0', 'pick_cube/episode_2']
    assert len(doc['episodes']) == 1 and doc['decision']['approved'] is False


def test_cli_bad_checkpoints_and_policies_that_do_not_fit(world, capsys, tmp_path):
    trunc = tmp_path / 'trunc.safetensors'
    trunc.write_bytes((world['ck'] / 'good.safetensors').read_bytes()[:200])
    pickled = tmp_path / 'model.pt'
    torch.save({'w': torch.zeros(2)}, pickled)
    for path, words in ((trunc, 'truncated'), (pickled, 'pickle'),
                        (tmp_path / 'missing.safetensors', 'not found')):
        code = main(['--checkpoint', str(path), '--data-root', str(world['root']),
                     '--task', TASK, '--no-progress'])
        err = capsys.readouterr().err
        assert code == 2 and str(path) in err and words in err, err
    # a camera policy for cameras the episodes do not have, and a 7-joint policy
    cnn = make_policy('cnn', {'cameras': ['top', 'left'], 'image_size': 16, 'channels': [4],
                              'feature_dim': 8, 'hidden_dim': 16, 'chunk_size': CHUNK})
    small = make_policy('mlp', {'state_dim': 7, 'action_dim': 7, 'hidden_sizes': [8]})
    for name, policy, words in (('cnn', cnn, "camera(s) ['left']"),
                                ('small', small, 'expects state_dim 7')):
        path = tmp_path / f'{name}.safetensors'
        save_checkpoint(path, policy, version=3)
        code = main(['--checkpoint', str(path), '--data-root', str(world['root']),
                     '--task', TASK, '--no-progress'])
        err = capsys.readouterr().err
        assert code == 2 and str(path) in err and words in err and 'episode_0.zarr' in err, err
    with pytest.raises(SystemExit) as exc:
        main(['--checkpoint', 'x', '--data-root', '.', '--task', TASK, '--episodes', '3-1'])
    assert exc.value.code == 2
    capsys.readouterr()


def test_cli_registers_as_a_subcommand(world, capsys):
    import argparse

    from scarls.cli.replay_check import register

    parser = argparse.ArgumentParser(prog='scarls')
    register(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(['replay-check', '--checkpoint',
                              str(world['ck'] / 'good.safetensors'), '--data-root',
                              str(world['root']), '--task', TASK, '--episodes', '1',
                              '--no-progress', '--json'])
    assert args.func(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [e['name'] for e in doc['episodes']] == ['pick_cube/episode_1']
    assert doc['baseline'] is None and doc['decision']['approved'] is True


def test_cli_replays_a_recorded_bag_like_the_zarr_episodes(world, capsys, tmp_path):
    """`--bag`: the episode recorded in a bag (here exported from the Zarr episode with the
    takeover) gives the same verdict and numbers as the Zarr episode itself."""
    from scarls.bags.convert import episodes_to_bag
    episodes_to_bag(world['root'], TASK, tmp_path / 'bag', episodes=[2])
    code, out, _ = _cli(world, capsys, '--json', '--episodes', '2')
    from_zarr = json.loads(out)
    argv = ['replay-check', '--checkpoint', str(world['ck'] / 'wrong.safetensors'),
            '--baseline', str(world['ck'] / 'good.safetensors'), '--bag', str(tmp_path / 'bag'),
            '--task', TASK, '--no-progress', '--json', '--fail-on-regression']
    code = main(argv)
    out = capsys.readouterr()
    assert code == 1, out.err
    from_bag = json.loads(out.out)
    assert 'episodes rebuilt' in out.err
    assert len(from_bag['episodes']) == len(from_zarr['episodes']) == 1

    def human_total(doc):
        cell = next(c for c in doc['total'] if c['mode'] == 'human' and c['segment'] == 'all')
        return cell['candidate']['right_arm']['mse'], cell['baseline']['right_arm']['mse']
    assert human_total(from_bag) == pytest.approx(human_total(from_zarr), rel=1e-5)
    assert from_bag['decision']['approved'] is False
    # neither --data-root nor --bag: a clear error
    assert main(['replay-check', '--checkpoint', 'x', '--task', TASK]) == 2
    assert '--data-root' in capsys.readouterr().err
