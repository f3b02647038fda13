#!/usr/bin/env bash
# The data library installs and works alone: `pip install scarls[data]` into a new, empty venv
# (no ROS, no --system-site-packages), then write an episode, read it with the training dataset
# and run `scarls dataset info/validate` - without rclpy installed, and importing no ROS module.
#
#   bash tools/check_data_install.sh          # ~2.5 min here (most of it installing torch)
#
# Run by .ci/run after the test suite (too slow for the suite itself). torch is installed first
# at the project's pin (its CPU build), as a user would before `pip install scarls[data]`.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3.11}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/scarls-data-install.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
torch_pin="$(grep -E '^torch==' "$here/requirements.txt")"

# a copy of the sources setup.py reads (pip would otherwise build inside the work tree)
mkdir "$tmp/src"
(cd "$here" && cp -r setup.py setup.cfg package.xml resource launch config src "$tmp/src/")
find "$tmp/src" \( -name __pycache__ -o -name '*.egg-info' \) -prune -exec rm -rf {} +

t0=$(date +%s)
"$python" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check "$torch_pin"
"$tmp/venv/bin/python" -m pip install -q --disable-pip-version-check "$tmp/src[data]"
echo "installed in $(( $(date +%s) - t0 )) s: $("$tmp/venv/bin/python" -m pip list 2>/dev/null \
    | grep -Ei '^(scarls|torch|zarr|numpy|numcodecs|imagecodecs|opencv-python-headless) ' | tr -s ' ' | paste -sd, -)"

cd "$tmp"  # not the work tree: the installed package, not ./src, must be imported
"$tmp/venv/bin/python" - "$tmp/data" <<'EOF'
import importlib.util
import sys

import numpy as np

assert importlib.util.find_spec('rclpy') is None, 'rclpy is installed: not a clean venv'
import scarls.episodes as episodes
from scarls.episodes import list_episodes, write_episode
from scarls.episodes.dataset import EpisodeDataset, make_loader
from scarls.episodes.stats import dataset_info
from scarls.episodes.tools import validate_dataset

assert '/site-packages/' in episodes.__file__, episodes.__file__
ros = sorted(m for m in sys.modules if m.split('.')[0] in ('rclpy', 'rosidl_runtime_py',
                                                          'scarls_interfaces', 'rosbags'))
assert not ros, f'the data library imported ROS modules: {ros}'

root = sys.argv[1]
rng = np.random.default_rng(0)
frames = {c: rng.integers(0, 256, (20, 48, 64, 3), dtype=np.uint8) for c in ('top', 'wrist')}
state = rng.normal(size=(20, 7)).astype(np.float32)
action = rng.normal(size=(20, 7)).astype(np.float32)
ref = write_episode(root, 'pick', frames, state, action, fps=10)
ref = write_episode(root, 'pick', frames, state, action, fps=10, episode_index=1)
assert ref.index == 1 and [e.index for e in list_episodes(root)] == [0, 1]

ds = EpisodeDataset(root, chunk_size=5, cameras=('top', 'wrist'), images='stacked',
                    action_is_pad=True)
item = ds[18]
assert item['images'].shape == (2, 3, 48, 64)
assert np.array_equal(item['images'][1], frames['wrist'][18].transpose(2, 0, 1))
assert np.array_equal(item['action'][:2], action[18:20])
assert item['action_is_pad'].tolist() == [False, False, True, True, True]
batch = next(iter(make_loader(ds, 4, shuffle=False)))
assert tuple(batch['images'].shape) == (4, 2, 3, 48, 64)
assert dataset_info(root).tasks[0].episodes == 2
assert validate_dataset(root).ok
print('data library OK:', len(ds), 'samples read, no ROS module imported')
EOF
"$tmp/venv/bin/scarls" dataset info "$tmp/data"
"$tmp/venv/bin/scarls" dataset validate "$tmp/data"
echo "check_data_install: OK"
