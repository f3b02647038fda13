"""From the ECUs' open-loop errors to the weights of the fleet's parameter average.

Every ECU evaluates its locally trained policy open loop on held-out data; the metric is an
error (mean squared joint error in rad^2, lower is better, see
:mod:`scarls.learner.evaluation`). An ECU takes part in a round only if its error passes the
quality bar, ``error <= threshold``; a non-finite error (nothing to evaluate, a diverged model)
never passes. Among the participants ``P`` the weights are the *normalised inverse error*::

    w_i = (1 / (e_i + eps)) / sum_{j in P} (1 / (e_j + eps))

Why this mapping:

* **Sums to 1.** The reduced parameters ``sum_i w_i * theta_i`` are a convex combination of
  the participants' parameters (a weighted FedAvg step), so their scale does not drift with
  the number of ECUs and one participant alone keeps its own parameters (``w = 1``).
* **Better models count more, continuously.** Inverse error is the weighting of an
  inverse-variance estimator: treating ``e_i`` as the noise level of ECU ``i``'s estimate of
  the ideal parameters, ``1 / e_i`` is its precision. Halving the error doubles the weight; an
  ECU at twice the error of another still contributes a third, so data from a struggling ECU
  is attenuated rather than thrown away (the threshold is what throws away).
* **Scale free.** Multiplying every error by the same factor (other units, another held-out
  set of similar difficulty) leaves the weights unchanged, as long as ``eps`` is small next to
  the errors.
* **``eps`` bounds the trust in a tiny error.** An error of 0 (a model that memorised a small
  held-out set) would otherwise take all the weight. ``eps`` is the error below which two models
  are considered equally good, i.e. the noise floor of the metric: the default ``1e-4`` rad^2
  is an RMS joint error of 0.01 rad, well below the deployment threshold (0.05 rad^2 by
  default), so ordinary errors are weighted by their ratio.

* **No ECU takes everything.** An error is what an ECU *says* about itself; one that reports
  an error near 0 (a model that memorised its held-out set, or a compromised ECU) would take
  almost all of the weight. :func:`cap_weights` limits any one ECU's share to ``max_share``
  (``FleetConfig.max_weight``, default 0.75; at least ``1/n`` for ``n`` participants) and
  gives the excess to the others in proportion to their weights.

Alternatives considered: ``softmax(-e / T)`` needs a temperature tied to the metric's units;
``max(0, threshold - e)`` (margin to the bar) gives an ECU exactly at the threshold weight 0 and
swings with the threshold; uniform weights ignore the metric altogether.

The functions here are pure (no torch); the all-reduce is :mod:`scarls.fleet.allreduce`.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from typing import TypeVar

__all__ = ['DEFAULT_EPS', 'cap_weights', 'passes_threshold', 'reduction_weights']

#: Default ``eps`` of :func:`reduction_weights` (rad^2; the metric's noise floor).
DEFAULT_EPS = 1e-4

_K = TypeVar('_K', bound=Hashable)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def passes_threshold(metric: float | None, threshold: float | None) -> bool:
    """True when ``metric`` is a finite error at most ``threshold`` (None: no bar).

    Errors are non-negative; a negative metric is rejected as invalid.
    """
    if metric is None or not _is_real(metric):
        return False
    m = float(metric)
    if not math.isfinite(m) or m < 0:
        return False
    return threshold is None or m <= float(threshold)


def reduction_weights(
    metrics: Mapping[_K, float | None],
    threshold: float | None = None,
    eps: float = DEFAULT_EPS,
) -> dict[_K, float]:
    """Normalised inverse-error weights of the ECUs whose error passes ``threshold``.

    ``metrics`` maps an ECU (any hashable id) to its open-loop error (lower is better); None,
    NaN, infinite or negative errors and errors above ``threshold`` get no weight (they are
    left out of the result). The returned weights follow the order of ``metrics``, are > 0 and
    sum to 1 (up to rounding); the result is empty when nobody passes. See the module
    docstring for the mapping and its reasoning.
    """
    if not _is_real(eps) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f'eps must be a finite number > 0, got {eps!r}')
    if threshold is not None and (not _is_real(threshold) or math.isnan(threshold)):
        raise ValueError(f'threshold must be a number or None, got {threshold!r}')
    inverse = {
        k: 1.0 / (float(e) + eps)  # type: ignore[arg-type]
        for k, e in metrics.items()
        if passes_threshold(e, threshold)
    }
    total = math.fsum(inverse.values())
    return {k: v / total for k, v in inverse.items()}


def cap_weights(weights: Mapping[_K, float], max_share: float) -> dict[_K, float]:
    """``weights`` (> 0, summing to 1) with no share above ``max(max_share, 1/n)``.

    Water filling: every weight above the cap is set to the cap and the remaining mass is
    shared among the others in proportion to their weights, repeated until none is above.
    Deterministic and order-preserving; the result still sums to 1.
    """
    if not _is_real(max_share) or not 0 < max_share <= 1:
        raise ValueError(f'max_share must be a number in (0, 1], got {max_share!r}')
    out = {k: float(v) for k, v in weights.items()}
    if not out:
        return out
    cap = max(float(max_share), 1.0 / len(out))
    capped: set[_K] = set()
    while True:
        over = [k for k, v in out.items() if k not in capped and v > cap * (1 + 1e-12)]
        if not over:
            return out
        capped.update(over)
        rest = [k for k in out if k not in capped]
        mass = math.fsum(float(weights[k]) for k in rest)
        left = max(0.0, 1.0 - cap * len(capped))
        for k in out:
            if k in capped:
                out[k] = cap
            elif mass > 0:
                out[k] = float(weights[k]) / mass * left
