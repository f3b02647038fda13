#!/usr/bin/env bash
# Chromium + ChromeDriver (Debian packages) for the dashboard's headless-browser test.
# Installs them when missing and this user may (root, or passwordless sudo). Elsewhere it says
# how, and the test skips with that reason, except under CI=true where a missing browser fails.
set -euo pipefail
# images that never run the browser test (docker/Dockerfile) opt out
[ "${SCARLS_NO_BROWSER:-}" = 1 ] && exit 0
if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    exit 0
fi
if [ "$(id -u)" = 0 ]; then
    SUDO=()
elif command -v sudo >/dev/null && sudo -n true 2>/dev/null; then
    SUDO=(sudo -n)
else
    msg="chromium and chromedriver are missing: sudo apt-get install chromium chromium-driver (the dashboard browser test skips without them)"
    if [ "${CI:-}" = true ]; then echo "bootstrap: $msg" >&2; exit 1; fi
    echo "[bootstrap] note: $msg"
    exit 0
fi
if ! command -v apt-get >/dev/null; then
    echo "[bootstrap] note: no apt-get here; install Chromium and ChromeDriver for the dashboard browser test"
    [ "${CI:-}" = true ] && exit 1
    exit 0
fi
echo "[bootstrap] installing chromium + chromium-driver (Debian packages, about a minute)"
export DEBIAN_FRONTEND=noninteractive
"${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null || {
    "${SUDO[@]}" apt-get update -q >/dev/null
    "${SUDO[@]}" apt-get install -y -q --no-install-recommends chromium chromium-driver >/dev/null
}
command -v chromium >/dev/null && command -v chromedriver >/dev/null
