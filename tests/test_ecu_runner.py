from __future__ import annotations

import pytest

from scarls.bringup.runner import EpisodeRow, deploy_latencies, fleet_curve, learning_curve


def row(i: int, outcome: str, human: int, version: int, steps: int = 100) -> EpisodeRow:
    return EpisodeRow(i, 'pick', outcome, steps, human, version, f'ep{i}', 0, 0.0, i)


def test_learning_curve_blocks():
    rows = [row(0, 'success', 50, 0), row(1, 'fail', 0, 0), row(2, 'success', 0, 1),
            row(3, 'success', 0, 2, steps=300), row(4, 'success', 10, 3)]
    curve = learning_curve(rows, block=2)
    assert [b['episodes'] for b in curve] == [[0, 1], [2, 3], [4, 4]]
    assert [b['model_versions'] for b in curve] == [[0, 0], [1, 2], [3, 3]]
    # success only counts when nobody took over; a failure without takeover is no success
    assert [b['success_rate'] for b in curve] == [0.0, 1.0, 0.0]
    assert curve[0]['intervention_rate'] == pytest.approx(50 / 200)
    assert curve[1]['intervention_rate'] == 0.0
    assert learning_curve([]) == []


def test_fleet_curve_per_minute_over_all_ecus():
    a = [row(0, 'success', 0, 1), row(1, 'fail', 20, 1)]
    b = [row(0, 'success', 0, 2)]
    a[0].saved_s, a[1].saved_s, b[0].saved_s = 10.0, 70.0, 50.0
    curve = fleet_curve({'ecu0': a, 'ecu1': b})
    assert [(c['from_s'], c['episodes'], c['per_ecu']) for c in curve] == [
        (0.0, 2, {'ecu0': 1, 'ecu1': 1}), (60.0, 1, {'ecu0': 1})]
    assert curve[0]['success_rate'] == 1.0 and curve[0]['intervention_rate'] == 0.0
    assert curve[1]['success_rate'] == 0.0
    assert curve[1]['intervention_rate'] == pytest.approx(20 / 100)
    assert fleet_curve({}) == []


def test_deploy_latency_pairs_each_deploy_with_the_actor_acting_on_it():
    deploys = [{'version': 1, 'at_s': 10.0, 'at_wall_s': 20.0},
               {'version': 2, 'at_s': 30.0, 'at_wall_s': 60.0},   # overtaken before loading
               {'version': 3, 'at_s': 31.0, 'at_wall_s': 62.0},
               {'version': 1, 'at_s': 50.0, 'at_wall_s': 100.0}]  # a rollback to v1
    loads = [{'version': 1, 'at_s': 14.0, 'at_wall_s': 29.0},
             {'version': 3, 'at_s': 33.0, 'at_wall_s': 66.0},
             {'version': 1, 'at_s': 52.0, 'at_wall_s': 101.0}]
    lat = deploy_latencies(deploys, loads)
    assert (lat['n'], lat['not_loaded']) == (3, 1)
    assert lat['sim_p50'] == pytest.approx(2.0)     # 4, 2, 2 simulated seconds
    assert lat['wall_p50'] == pytest.approx(4.0)    # 9, 4, 1 wall seconds
    assert lat['sim_p99'] == pytest.approx(3.96) and lat['wall_p99'] == pytest.approx(8.9)
    # the first v1 load does not answer the rollback's deploy (it came before it)
    assert deploy_latencies(deploys[3:], loads[:1])['not_loaded'] == 1
    assert deploy_latencies([], [])['n'] == 0


def test_percentile_is_numpys_over_the_finite_values():
    import numpy as np

    from scarls.bringup.runner import latency_summary
    from scarls.common.stats import percentile
    rng = np.random.default_rng(3)
    for n in (1, 2, 5, 40):
        v = rng.random(n).tolist()
        for p in (0, 50, 99, 100):
            assert percentile(v, p) == pytest.approx(np.percentile(v, p), abs=1e-12)
            assert percentile(v, p, digits=3) == round(float(np.percentile(v, p)), 3)
    assert percentile([], 50) is None and percentile([None, float('inf')], 50) is None
    assert percentile([float('nan'), 1.0, 3.0], 50) == 2.0
    with pytest.raises(ValueError, match='within 0..100'):
        percentile([1.0, 2.0], 100.5)
    assert latency_summary([], []) == {'n': 0, 'sim_p50': None, 'sim_p99': None,
                                       'wall_p50': None, 'wall_p99': None}
