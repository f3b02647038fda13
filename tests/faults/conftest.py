"""The fault-injection campaign (docs/RELIABILITY.md): its tests import the helpers of tests/."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
