"""MixingSampler: online boost while its loss is higher, task balance, weights, determinism."""

from __future__ import annotations

import numpy as np
import pytest

from scarls.learner import LearnerConfigError, LearnerError, MixingConfig, MixingSampler


def two_buffers(alpha: float = 3.0, online_weight: float = 0.5, window: int = 4):
    s = MixingSampler(MixingConfig(alpha=alpha, online_weight=online_weight, window=window,
                                   max_online_share=1.0))
    s.add(('pick', 'offline'), 'demo0', 10)
    s.add(('pick', 'online'), 'run0', 5, [0, 1, 1, 0, 0])
    return s


def test_base_probabilities_without_losses():
    s = two_buffers(online_weight=0.25)
    assert s.probabilities() == pytest.approx(
        {('pick', 'offline'): 0.75, ('pick', 'online'): 0.25})
    assert not s.boosted('pick')


def test_online_boosted_while_its_loss_is_higher():
    s = two_buffers(alpha=3.0, online_weight=0.5)
    s.report_loss(('pick', 'offline'), 0.1)
    s.report_loss(('pick', 'online'), 0.4)
    assert s.boosted('pick')
    p = s.probabilities()
    assert p[('pick', 'online')] == pytest.approx(1.5 / 2.0)  # 3 * 0.5 / (3 * 0.5 + 0.5)
    assert p[('pick', 'offline')] == pytest.approx(0.5 / 2.0)
    # online loss drops below offline: back to the base mixture
    for _ in range(4):
        s.report_loss(('pick', 'online'), 0.05)
    assert s.windowed_loss(('pick', 'online')) == pytest.approx(0.05)  # window of 4 slid
    assert not s.boosted('pick')
    assert s.probabilities()[('pick', 'online')] == pytest.approx(0.5)


def test_default_base_share_follows_the_labelled_steps():
    s = MixingSampler(MixingConfig(alpha=2.0))  # online_weight=None
    s.add(('pick', 'offline'), 'demo', 90)
    s.add(('pick', 'online'), 'run', 20, [1.0] * 10 + [0.0] * 10)
    assert s.probabilities()[('pick', 'online')] == pytest.approx(0.1)
    s.report_loss(('pick', 'offline'), 0.1)
    s.report_loss(('pick', 'online'), 0.3)
    # boosted: 2 * 0.1 / (2 * 0.1 + 0.9)
    assert s.probabilities()[('pick', 'online')] == pytest.approx(0.2 / 1.1)


def test_sliding_window_mean():
    s = two_buffers(window=3)
    for loss in (1.0, 2.0, 3.0, 4.0):
        s.report_loss(('pick', 'online'), loss)
    assert s.windowed_loss(('pick', 'online')) == pytest.approx(3.0)
    assert s.windowed_loss(('other', 'online')) is None


def test_tasks_are_balanced_regardless_of_size():
    s = MixingSampler(MixingConfig(online_weight=0.5))
    for i in range(50):
        s.add(('big', 'offline'), f'big{i}', 100)
    s.add(('small', 'offline'), 'small0', 3)
    s.add(('small', 'online'), 'small1', 4)
    p = s.probabilities()
    assert p[('big', 'offline')] == pytest.approx(0.5)
    assert p[('small', 'offline')] + p[('small', 'online')] == pytest.approx(0.5)
    rng = np.random.default_rng(0)
    drawn = s.draw(4000, rng)
    share = np.mean([d.buffer[0] == 'small' for d in drawn])
    assert 0.45 < share < 0.55
    # without balancing, tasks share by labelled steps
    s2 = MixingSampler(MixingConfig(balance_tasks=False))
    s2.add(('a', 'offline'), 'a', 30)
    s2.add(('b', 'offline'), 'b', 10)
    assert s2.probabilities() == pytest.approx({('a', 'offline'): 0.75, ('b', 'offline'): 0.25})


def test_samples_follow_step_weights_and_are_deterministic():
    s = two_buffers()
    a = s.sample(500, np.random.default_rng(42))
    b = s.sample(500, np.random.default_rng(42))
    c = s.sample(500, np.random.default_rng(43))
    assert a == b and a != c
    online = [f for e, f in a if e == 'run0']
    assert online and set(online) <= {1, 2}  # zero-weight steps are never drawn
    assert all(0 <= f < 10 for e, f in a if e == 'demo0')
    assert 0.4 < len(online) / len(a) < 0.6


def test_frames_drawn_in_proportion_to_weight():
    s = MixingSampler()
    s.add(('t', 'offline'), 'e', 3, [1.0, 0.0, 3.0])
    frames = np.array([f for _, f in s.sample(4000, np.random.default_rng(1))])
    assert set(np.unique(frames)) == {0, 2}
    assert 0.7 < np.mean(frames == 2) < 0.8


def test_only_online_data_and_empty():
    s = MixingSampler()
    with pytest.raises(LearnerError, match='nothing to sample'):
        s.sample(4, np.random.default_rng(0))
    s.add(('t', 'online'), 'e', 4, [0, 0, 0, 0])
    assert s.probabilities() == {}
    s.add(('t', 'online'), 'f', 2)
    assert s.probabilities() == {('t', 'online'): 1.0}
    assert s.buffer_of('f') == ('t', 'online')
    assert s.buffers()[('t', 'online')]['episodes'] == 2


def test_validation():
    s = MixingSampler()
    with pytest.raises(ValueError, match='buffer_key'):
        s.add(('t', 'replay'), 'e', 2)
    s.add(('t', 'offline'), 'e', 2)
    with pytest.raises(ValueError, match='already added'):
        s.add(('t', 'online'), 'e', 2)
    with pytest.raises(ValueError, match='entries'):
        s.add(('t', 'online'), 'g', 2, [1.0])
    with pytest.raises(ValueError, match='>= 0'):
        s.add(('t', 'online'), 'g', 2, [1.0, -1.0])
    with pytest.raises(ValueError, match='finite'):
        s.report_loss(('t', 'online'), float('nan'))
    with pytest.raises(ValueError, match='batch_size'):
        s.sample(0, np.random.default_rng(0))
    for bad in ({'alpha': 0.5}, {'online_weight': 1.0}, {'window': 0}):
        with pytest.raises(LearnerConfigError):
            MixingConfig(**bad)
    with pytest.raises(LearnerConfigError, match='unknown'):
        MixingConfig.from_dict({'beta': 1})
    assert MixingConfig.from_dict({'alpha': 4}).alpha == 4


def test_online_share_is_capped_after_the_boost():
    s = MixingSampler(MixingConfig(alpha=3.0, online_weight=0.5, max_online_share=0.3))
    s.add(('pick', 'offline'), 'demo', 10)
    s.add(('pick', 'online'), 'run', 10)
    assert s.probabilities()[('pick', 'online')] == pytest.approx(0.3)
    with pytest.raises(ValueError, match='max_online_share'):
        MixingConfig(max_online_share=0.0)
