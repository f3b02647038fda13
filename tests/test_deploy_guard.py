"""The live deploy guard (scarls.checkpoints.guard): probation, the one-sided test, rollback
targets, the rejected lineage, persistence."""

from __future__ import annotations

import json
import math

import pytest

from scarls.checkpoints.guard import (
    DeployGuard,
    GuardConfig,
    fisher_exact_less,
)


def test_fisher_exact_matches_reference_values():
    # R: fisher.test(matrix(c(3, 1, 1, 3), 2), alternative = 'greater') -> p = 0.2429
    assert fisher_exact_less(1, 3, 3, 1) == pytest.approx(0.242857, abs=1e-6)
    # R: fisher.test(matrix(c(1, 11, 9, 3), 2), alternative = 'less') -> p = 0.001380
    assert fisher_exact_less(1, 9, 11, 3) == pytest.approx(0.0013797, abs=1e-6)
    # mid-p: half the probability of the observed table counts (0.2429 - 16/70 / 2)
    assert fisher_exact_less(1, 3, 3, 1, mid_p=True) == pytest.approx(0.128571, abs=1e-6)
    # equal shares: no evidence at all
    assert fisher_exact_less(5, 5, 5, 5) > 0.5
    # a better first row is never "significantly worse"
    assert fisher_exact_less(9, 1, 2, 8) > 0.99
    # an empty row carries no evidence
    assert fisher_exact_less(0, 0, 3, 3) == 1.0
    with pytest.raises(ValueError):
        fisher_exact_less(-1, 2, 3, 4)


def run(guard: DeployGuard, version: int, alone: int, helped: int):
    verdicts = []
    for i in range(alone + helped):
        ok = i < alone
        verdicts.append(guard.record(version, 'success' if ok else 'fail', 100,
                                     0 if ok else 40))
    return verdicts


def test_a_clearly_worse_version_is_rolled_back_to_its_predecessor():
    guard = DeployGuard(GuardConfig(min_episodes=8))
    guard.on_deploy(1)
    run(guard, 1, 10, 2)            # v1: 10/12 alone (no predecessor: never judged)
    assert guard.judge().action == 'none'
    guard.on_deploy(2)
    assert guard.hold() is not None          # probation: v2 has no episodes yet
    verdicts = run(guard, 2, 1, 7)  # v2: 1/8 alone
    assert [v.action for v in verdicts[:7]] == ['none'] * 7   # too few episodes before
    last = verdicts[-1]
    assert last.action == 'rollback' and last.target == 1 and last.version == 2
    assert last.p_value < 0.05
    assert 'v2: 1/8 alone' in last.reason and 'v1: 10/12 alone' in last.reason


def test_a_version_as_good_as_its_predecessor_passes_probation_and_stays():
    guard = DeployGuard(GuardConfig(min_episodes=8))
    guard.on_deploy(1)
    run(guard, 1, 6, 4)
    guard.on_deploy(2)
    verdicts = run(guard, 2, 4, 4)
    assert [v.action for v in verdicts] == ['none'] * 7 + ['passed']
    assert guard.hold() is None              # a newer checkpoint may replace it now
    more = run(guard, 2, 5, 3)
    assert all(v.action == 'none' for v in more)


def test_no_verdict_before_both_have_enough_episodes():
    guard = DeployGuard(GuardConfig(min_episodes=8))
    guard.on_deploy(1)
    run(guard, 1, 5, 0)             # the predecessor ran only 5 episodes
    guard.on_deploy(2)
    verdicts = run(guard, 2, 0, 12)
    assert all(v.action == 'none' for v in verdicts)
    assert 'too few episodes' in verdicts[-1].reason


def test_the_predecessor_is_compared_on_its_newest_episodes():
    guard = DeployGuard(GuardConfig(min_episodes=8, reference_episodes=10))
    guard.on_deploy(1)
    run(guard, 1, 0, 30)            # v1 was bad for a long time...
    run(guard, 1, 10, 0)            # ...then good (its newest 10 episodes)
    guard.on_deploy(2)
    assert run(guard, 2, 2, 6)[-1].action == 'rollback'


def test_aborted_episodes_and_version_zero_are_not_counted():
    guard = DeployGuard(GuardConfig(min_episodes=2))
    guard.record(0, 'success', 50, 0)
    guard.on_deploy(1)
    guard.record(1, 'aborted', 50, 0)
    assert 0 not in guard.stats and guard.stats[1].episodes == 0
    guard.on_deploy(2)
    assert guard.predecessor == {2: 1}
    # the initial policy (v0) is never a predecessor: nothing approved to roll back to
    fresh = DeployGuard(GuardConfig(min_episodes=2))
    fresh.on_deploy(1)
    assert fresh.predecessor == {}
    # every version runs its probation, the first one too (it is the next one's reference)
    assert 'probation' in fresh.hold()
    run(fresh, 1, 1, 1)
    assert fresh.hold() is None


def test_rejected_versions_and_their_descendants_are_tainted():
    guard = DeployGuard(GuardConfig(min_episodes=4))
    guard.on_deploy(1)
    run(guard, 1, 4, 0)
    guard.on_deploy(2)
    verdict = run(guard, 2, 0, 4)[-1]
    assert verdict.action == 'rollback'
    guard.reject(2, verdict.reason)
    guard.on_deploy(1, rollback=True)
    assert guard.hold() is None              # back on a trusted version: no probation
    assert guard.tainted(3, 2) is not None   # trained from the rejected v2
    assert guard.tainted(4, 3) is not None   # and from its descendant
    assert guard.tainted(5, 1) is None       # trained from the predecessor again
    # a version deployed after a rejected one is compared with the last good one
    guard.on_deploy(5)
    assert guard.predecessor[5] == 1


def test_disabled_guard_tracks_but_never_acts():
    guard = DeployGuard(GuardConfig(enabled=False, min_episodes=2))
    guard.on_deploy(1)
    run(guard, 1, 5, 0)
    guard.on_deploy(2)
    assert guard.hold() is None
    assert all(v.action == 'none' for v in run(guard, 2, 0, 10))
    assert guard.stats[2].episodes == 10 and guard.stats[2].intervention_rate == 0.4


def test_state_survives_a_restart(tmp_path):
    path = tmp_path / 'guard.json'
    guard = DeployGuard(GuardConfig(min_episodes=3))
    guard.on_deploy(1)
    run(guard, 1, 4, 0)
    guard.on_deploy(2)
    run(guard, 2, 0, 2)
    guard.reject(7, 'worse')
    guard.tainted(8, 7)
    guard.save(path)
    again = DeployGuard.load(path, GuardConfig(min_episodes=3))
    assert again.to_json() == guard.to_json()
    # the restarted guard reaches the same verdict with the next episode
    assert again.record(2, 'fail', 100, 50).action == 'rollback'
    assert DeployGuard.load(tmp_path / 'missing.json').stats == {}
    path.write_text(json.dumps({'format': 1, 'deployed': -3}))
    with pytest.raises(ValueError, match='invalid'):
        DeployGuard.load(path)
    path.write_text('{')
    with pytest.raises(ValueError, match='unreadable'):
        DeployGuard.load(path)


@pytest.mark.parametrize('bad', [{'min_episodes': 0}, {'alpha': 1.5},
                                 {'min_episodes': 10, 'reference_episodes': 5}])
def test_config_is_checked(bad):
    with pytest.raises(ValueError):
        GuardConfig(**bad)


def test_intervention_rate_is_nan_without_steps():
    guard = DeployGuard()
    guard.on_deploy(1)
    assert math.isnan(guard.stats[1].intervention_rate)
