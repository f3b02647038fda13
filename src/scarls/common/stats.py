"""Small summary statistics shared by the reports (run summaries, the dashboard, the robot
check): one percentile, numpy's, with the same rules everywhere."""

from __future__ import annotations

import math
from collections.abc import Iterable

import numpy as np


def percentile(values: Iterable[float | None], q: float,
               digits: int | None = None) -> float | None:
    """The ``q``-th percentile (0-100) of the finite ``values`` (None, NaN and inf are left out)
    with linear interpolation between order statistics (numpy's default), rounded to
    ``digits`` if given; None when no finite value is left. Raises ValueError for ``q``
    outside 0..100."""
    if not 0.0 <= q <= 100.0:
        raise ValueError(f'percentile {q} is not within 0..100')
    data = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not data:
        return None
    value = float(np.percentile(np.asarray(data, dtype=np.float64), q))
    return round(value, digits) if digits is not None else value
