#!/usr/bin/env bash
# A separate Python environment with LeRobot 0.4.4, for the LeRobot comparison benches
# (bench/lerobot_dataset.py). Kept out of the project's .venv: LeRobot pins its own torch.
#
#   bash bench/lerobot_env.sh [VENV]        # default build/lerobot-venv (git-ignored); idempotent
#
# LeRobot 0.4.4 asks for torch<2.11, whose only Linux x86_64 wheels on PyPI are CUDA builds of
# several GB. Its dataset code runs on the CPU build of torch 2.13.0 that pip finds on this machine,
# so LeRobot is installed without its dependency pins (--no-deps) and the dependencies its dataset
# path imports are installed within LeRobot's own ranges, except:
#   * torch 2.13.0 (CPU) instead of <2.11;
#   * torchcodec 0.13.0 (the release built for torch 2.13; LeRobot's default video decoder),
#     which loads the system FFmpeg libraries (Debian's libav*, installed here if missing);
#   * torchvision 0.28.0 (for torch 2.13): PyPI's wheel is built against the CUDA torch and its
#     compiled detection ops (nms, roi_align, ...) cannot load beside the CPU torch. LeRobot's
#     dataset path uses only torchvision's Python transforms, so the registration of those ops'
#     meta kernels is skipped when the ops did not load (one guarded import in torchvision's
#     __init__.py); everything else in torchvision is as shipped.
# Not installed (not used by the dataset path): wandb, rerun-sdk, diffusers, gymnasium, opencv,
# pynput, pyserial, cmake. ~1.6 GB on disk, 3-4 minutes. pip reports the relaxed pins as conflicts.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
venv="${1:-$here/build/lerobot-venv}"
python="${PYTHON:-python3.11}"

if ! ldconfig -p | grep -q 'libavcodec\.so\.'; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            libavdevice59 libavfilter8 libavformat59 libavcodec59 libavutil57 libswscale6 libswresample4
    else
        echo "torchcodec needs the FFmpeg libraries: apt-get install libavcodec59 libavformat59" \
             "libavfilter8 libavdevice59 libavutil57 libswscale6 libswresample4" >&2
        exit 1
    fi
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
pip=("$venv/bin/python" -m pip install -q)
"${pip[@]}" torch==2.13.0
"${pip[@]}" --no-deps lerobot==0.4.4 torchvision==0.28.0 torchcodec==0.13.0
"${pip[@]}" \
    'datasets>=4.0.0,<5.0.0' 'huggingface-hub[cli,hf-transfer]>=0.34.2,<0.36.0' \
    'accelerate>=1.10.0,<2.0.0' 'av>=15.0.0,<16.0.0' 'jsonlines>=4.0.0,<5.0.0' \
    'packaging>=24.2,<26.0' 'draccus==0.10.0' 'deepdiff>=7.0.1,<9.0.0' 'termcolor>=2.4.0,<4.0.0' \
    'einops>=0.8.0,<0.9.0' 'imageio[ffmpeg]>=2.34.0,<3.0.0' pillow torch==2.13.0

"$venv/bin/python" - <<'EOF'
import importlib.util
import pathlib

init = pathlib.Path(importlib.util.find_spec('torchvision').origin)
src = init.read_text()
old = '    _autograd_registrations,\n    _meta_registrations,\n'
if old in src:
    src = src.replace(old, '    _autograd_registrations,\n')
    src = src.replace(
        ')  # usort:skip\n',
        ')  # usort:skip\n\nif extension._has_ops():\n'
        '    from torchvision import _meta_registrations  # noqa: F401\n', 1)
    init.write_text(src)
EOF

"$venv/bin/python" -c "
import lerobot, torch, torchcodec
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from torchcodec.decoders import VideoDecoder
print('lerobot', lerobot.__version__, 'torch', torch.__version__, 'torchcodec', torchcodec.__version__)
"
echo "LeRobot environment: $venv (run bench/lerobot_dataset.py with $venv/bin/python)"
