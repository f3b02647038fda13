#!/usr/bin/env bash
# Build the scarls image with podman (or docker) and run a smoke check inside it.
#
#   docker/build.sh                 # build scarls:latest, then run the smoke check in it
#   docker/build.sh --no-smoke      # build only
#   docker/build.sh --smoke-only    # run the smoke check in an image built before
#
# Environment:
#   BASE=<image>        base image (default debian:bookworm-slim). BASE=debootstrap builds a
#                       Debian bookworm base locally (debootstrap --variant=minbase + podman import)
#                       for hosts that cannot pull from a registry; it is kept as
#                       localhost/scarls-base:bookworm and reused.
#   IMAGE=<name>        image name (default scarls:latest)
#   ENGINE=podman|docker (default: podman if installed)
#   PIP_CERT            a CA bundle pip inside the build trusts (podman: mounted read-only)
#   PIP_FIND_LINKS, PIP_EXTRA_INDEX_URL, PIP_INDEX_URL
#                       passed to pip inside the build; local directories among them (plain
#                       paths or file:// URLs) are mounted read-only at the same path, so a host's
#                       wheel cache or PyPI mirror can serve the build. Without them the CPU torch
#                       comes from download.pytorch.org/whl/cpu (the Dockerfile's default).
#   SMOKE_EPISODES=N    episodes of the smoke run (default 2; 0 skips the ECU run)
#
# With podman the build uses chroot isolation (it also works inside VMs and containers where
# crun cannot set rlimits or cgroups), and the smoke check runs with `buildah run --isolation
# chroot` when `podman run` is unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."
IMAGE=${IMAGE:-scarls:latest}
BASE=${BASE:-debian:bookworm-slim}
SMOKE_EPISODES=${SMOKE_EPISODES:-2}
ENGINE=${ENGINE:-$(command -v podman >/dev/null && echo podman || echo docker)}
build=1 smoke=1
case "${1:-}" in
    --no-smoke) smoke=0 ;;
    --smoke-only) build=0 ;;
    '') ;;
    *) echo "usage: docker/build.sh [--no-smoke|--smoke-only]" >&2; exit 2 ;;
esac
say() { echo "[docker/build.sh $(date -u +%T)] $*"; }

make_debootstrap_base() {
    local tag=localhost/scarls-base:bookworm
    if "$ENGINE" image exists "$tag" 2>/dev/null; then echo "$tag"; return; fi
    command -v debootstrap >/dev/null || {
        echo "debootstrap is missing: apt-get install debootstrap" >&2; exit 1; }
    local root
    root=$(mktemp -d /var/tmp/scarls-base.XXXXXX)
    trap 'rm -rf "$root"' RETURN
    say "debootstrap --variant=minbase bookworm into $root" >&2
    debootstrap --variant=minbase bookworm "$root" http://deb.debian.org/debian >&2
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
    tar -C "$root" -c . | "$ENGINE" import - "$tag" >&2
    echo "$tag"
}

if [ "$build" = 1 ]; then
    t0=$(date +%s)
    [ "$BASE" = debootstrap ] && BASE=$(make_debootstrap_base)
    args=(build -f docker/Dockerfile -t "$IMAGE" --build-arg "BASE=$BASE")
    if [ "$ENGINE" = podman ]; then
        args+=(--isolation chroot --ulimit nofile=1024:1024 --ulimit nproc=1000:1000
               --ignorefile docker/Dockerfile.dockerignore)
    fi
    for var in PIP_FIND_LINKS PIP_EXTRA_INDEX_URL PIP_INDEX_URL; do
        [ -n "${!var:-}" ] || continue
        args+=(--build-arg "$var=${!var}")
        for item in ${!var}; do
            dir=${item#file://}
            dir=${dir%/simple}    # a local PEP 503 index: mount its whole tree (files sit beside)
            if [ -d "$dir" ] && [ "$ENGINE" = podman ]; then
                args+=(--volume "$dir:$dir:ro")
            fi
        done
    done
    # a host whose TLS goes through an inspecting proxy names its CA bundle in PIP_CERT: the
    # build's pip uses the same bundle (mounted read-only beside the image's own certificates)
    if [ -n "${PIP_CERT:-}" ] && [ -f "$PIP_CERT" ] && [ "$ENGINE" = podman ]; then
        args+=(--volume "$PIP_CERT:/run/host-ca.crt:ro" --build-arg PIP_CERT=/run/host-ca.crt)
    fi
    say "$ENGINE ${args[*]} ."
    "$ENGINE" "${args[@]}" .
    say "built $IMAGE in $(( $(date +%s) - t0 )) s"
    "$ENGINE" image ls "$IMAGE"
fi

if [ "$smoke" = 1 ]; then
    t0=$(date +%s)
    # the commands the smoke check runs inside the image (the image's PATH has the venv first)
    script="set -e; cd /opt/scarls; export PATH=/opt/scarls/.venv/bin:\$PATH;"
    script+=" scarls --help >/dev/null; scarls robot list;"
    script+=" python -c 'import rclpy, scarls_interfaces.msg, scarls, torch; print(\"imports ok, torch\", torch.__version__)';"
    if [ "$SMOKE_EPISODES" -gt 0 ]; then
        script+=" scarls ecu --episodes $SMOKE_EPISODES --data-root /tmp/smoke --summary /tmp/smoke/summary.json;"
        script+=" python -c 'import json; s = json.load(open(\"/tmp/smoke/summary.json\")); print(\"summary:\", len(s[\"episodes\"]), \"episodes, success rate\", s[\"success_rate\"])';"
    fi
    if [ "$ENGINE" = podman ] && ! podman run --rm "$IMAGE" true >/dev/null 2>&1; then
        say "podman run is unavailable here; running the smoke check with buildah run --isolation chroot"
        ctr=$(buildah from --pull-never "$IMAGE")
        trap 'buildah rm "$ctr" >/dev/null' EXIT
        buildah run --isolation chroot "$ctr" -- bash -c "$script"
    else
        "$ENGINE" run --rm --network host --ipc host "$IMAGE" bash -c "$script"
    fi
    say "smoke check passed in $(( $(date +%s) - t0 )) s"
fi
