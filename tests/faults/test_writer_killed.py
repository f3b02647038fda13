"""Fault: the episode writer SIGKILLed at random points (mid-append, array growth, mid-finalize,
between the renames), 30 times here; `python tests/faults/writer_kill_campaign.py --trials 300`
is the long version whose figures are in docs/RELIABILITY.md."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.faults
CAMPAIGN = Path(__file__).resolve().parent / 'writer_kill_campaign.py'


@pytest.mark.timeout(360)
def test_thirty_random_kills_leave_no_half_episode_no_gap_and_no_leftover(tmp_path):
    out_json = tmp_path / 'kills.json'
    out = subprocess.run([sys.executable, str(CAMPAIGN), '--trials', '30', '--seed', '7',
                          '--json', str(out_json)], capture_output=True, text=True, timeout=280)
    summary = json.loads(out_json.read_text())
    assert summary['trials_with_problems'] == [], summary['trials_with_problems'][:3]
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert summary['trials'] == 30 and summary['episodes_written'] > 30
    # the kills really landed inside episodes (not only between them)
    assert summary['kills_with_a_lost_episode'] >= 15
    # every one of them journaled by the next writer, with at most the steps it had appended
    assert summary['journaled_episodes'] >= summary['kills_with_a_lost_episode']
    assert 0 < summary['journaled_steps'] <= summary['lost_steps'] + summary['journaled_episodes']
    modes = {r['mode'] for r in summary['results']}
    assert modes == {'append', 'background'}
