"""Algorithms as label weights: bc keeps successes, hg_dagger drops policy-executed steps."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from scarls.learner import (
    Algorithm,
    DuplicateAlgorithm,
    UnknownAlgorithm,
    available_algorithms,
    make_algorithm,
    register_algorithm,
)

FLAGS = np.array([False, False, True, True, True, False, True])


def test_registry():
    assert {'bc', 'hg_dagger'} <= set(available_algorithms())
    with pytest.raises(UnknownAlgorithm, match='available'):
        make_algorithm('dagger++')
    name = f'test-{uuid.uuid4().hex}'

    @register_algorithm(name)
    class Everything(Algorithm):
        def _weights(self, intervention, outcome, source):
            return np.ones(intervention.shape)

    assert make_algorithm(name).step_weights(FLAGS, 'fail', 'online').sum() == len(FLAGS)
    with pytest.raises(DuplicateAlgorithm):
        register_algorithm('bc')(Everything)
    with pytest.raises(TypeError):
        register_algorithm(f'x-{uuid.uuid4().hex}')(int)  # type: ignore[type-var]


def test_hg_dagger_drops_policy_steps():
    alg = make_algorithm('hg_dagger')
    for outcome in ('success', 'fail', 'aborted'):
        w = alg.step_weights(FLAGS, outcome, 'online')
        np.testing.assert_array_equal(w, FLAGS.astype(np.float32))
    # demonstrations: every step is an expert label, whatever the flags say
    np.testing.assert_array_equal(alg.step_weights(FLAGS, 'fail', 'offline'), np.ones(7))
    scaled = make_algorithm('hg_dagger', online_weight=2.0).step_weights(FLAGS, 'fail', 'online')
    np.testing.assert_array_equal(scaled, 2.0 * FLAGS)
    with pytest.raises(ValueError):
        make_algorithm('hg_dagger', online_weight=0.0)


def test_bc_keeps_demos_and_successes():
    alg = make_algorithm('bc')
    np.testing.assert_array_equal(alg.step_weights(FLAGS, 'success', 'online'), np.ones(7))
    np.testing.assert_array_equal(alg.step_weights(FLAGS, 'fail', 'online'), np.zeros(7))
    np.testing.assert_array_equal(alg.step_weights(FLAGS, 'fail', 'offline'), np.ones(7))
    assert alg.step_weights(FLAGS, 'success', 'online').dtype == np.float32


def test_validation():
    alg = make_algorithm('bc')
    with pytest.raises(ValueError, match='outcome'):
        alg.step_weights(FLAGS, 'won', 'online')
    with pytest.raises(ValueError, match='source'):
        alg.step_weights(FLAGS, 'success', 'replay')
    with pytest.raises(ValueError, match='1-D'):
        alg.step_weights(FLAGS.reshape(7, 1), 'success', 'online')


def test_stale_human_steps_are_repeats_under_takeover():
    from scarls.learner.algorithms import stale_human_steps

    action = np.array([[0.0], [0.0], [1.0], [1.0], [2.0], [2.0], [2.0]])
    flags = np.array([False, False, True, True, True, True, False])
    # step 1 repeats but the policy was in control; 3 and 5 repeat under takeover; 6 is after it
    assert stale_human_steps(flags, action).tolist() == [False, False, False, True, False, True,
                                                          False]
    assert not stale_human_steps(np.array([True]), np.zeros((1, 2))).any()
    with pytest.raises(ValueError, match='must match'):
        stale_human_steps(flags, action[:3])
