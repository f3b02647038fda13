"""Where the learner and the actor compute: device, mixed precision, batch transfer.

* :func:`parse_device` / :func:`resolve_device` - a device setting (``'auto'``, ``'cpu'``,
  ``'cuda'``, ``'cuda:N'``, ``'mps'``) -> :class:`torch.device`. ``'auto'`` is CUDA when
  available, else the CPU (Apple's ``mps`` is never chosen automatically). Asking for a device
  this machine does not have raises :class:`DeviceError` saying what is missing and what to
  set instead.
* :func:`resolve_precision` / :func:`autocast` / :func:`make_grad_scaler` - mixed precision
  where it is safe: on CUDA ``'auto'`` is bf16 when the GPU supports it, else fp16 (training
  then scales the loss with a :class:`torch.amp.GradScaler`); on the CPU and on MPS it is off
  (fp32) unless asked for (``'bf16'`` on the CPU).
* :func:`to_device` - a batch dict onto the device; CPU tensors bound for CUDA go through
  pinned memory with ``non_blocking=True``, everything else is moved plainly (or not at all
  when it is already there).
* :func:`place_module` - move a policy to its device and let it take batches from anywhere:
  callers that build CPU batches (open-loop evaluation, the replay check, the actor's
  ``predict_chunk``) keep working unchanged, and get the output back on the CPU.

Nothing here looks at the device at import time. Only code behind ``torch.cuda.is_available()``
touches CUDA, so every function runs (and is tested) on a CPU-only machine; the availability
of CUDA, its device count and its bf16 support can be passed in to test the CUDA decisions.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import nn

__all__ = [
    'DEVICES',
    'PRECISIONS',
    'DeviceError',
    'autocast',
    'make_grad_scaler',
    'module_device',
    'needs_grad_scaler',
    'parse_device',
    'place_module',
    'resolve_device',
    'resolve_precision',
    'should_pin',
    'to_device',
]

#: The forms a device setting takes (``'cuda:N'``: the N-th CUDA device).
DEVICES: tuple[str, ...] = ('auto', 'cpu', 'cuda', 'cuda:N', 'mps')
#: Values of a precision setting.
PRECISIONS: tuple[str, ...] = ('auto', 'fp32', 'bf16', 'fp16')

_DEVICE_RE = re.compile(r'^(auto|cpu|mps|cuda)(?::(\d+))?$')


class DeviceError(ValueError):
    """A device or precision setting is malformed or names something this machine lacks."""


def parse_device(spec: str | torch.device) -> str:
    """The canonical form of a device setting (``' CUDA:0 '`` -> ``'cuda:0'``), no availability
    check; raises :class:`DeviceError` for anything but the forms of :data:`DEVICES`."""
    if isinstance(spec, torch.device):
        spec = str(spec)
    text = spec.strip().lower() if isinstance(spec, str) else None
    m = _DEVICE_RE.match(text) if text else None
    if m is None or (m.group(2) is not None and m.group(1) != 'cuda'):
        raise DeviceError(
            f"device must be 'auto', 'cpu', 'cuda', 'cuda:N' (N = 0, 1, ...) or 'mps', "
            f'got {spec!r}'
        )
    return text


def _cuda_count() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _mps_available() -> bool:
    mps = getattr(torch.backends, 'mps', None)
    return bool(mps is not None and mps.is_available())


def _no_cuda_reason() -> str:
    built = torch.version.cuda
    if not built:
        return f'this torch ({torch.__version__}) is a CPU-only build'
    return (
        f'this torch ({torch.__version__}, CUDA {built}) finds no usable GPU (driver '
        'missing or too old, or CUDA_VISIBLE_DEVICES hides the GPUs)'
    )


def resolve_device(
    spec: str | torch.device = 'auto',
    *,
    cuda_count: int | None = None,
    mps_available: bool | None = None,
) -> torch.device:
    """The :class:`torch.device` a setting names on this machine.

    ``'auto'``: the current CUDA device when CUDA is available, else the CPU. ``'cuda'`` is the
    current CUDA device, ``'cuda:N'`` the N-th. ``cuda_count`` (CUDA devices present) and
    ``mps_available`` default to what torch reports; pass them to test the decisions without
    the hardware. Raises :class:`DeviceError` when the device is not there.
    """
    name = parse_device(spec)
    count = _cuda_count() if cuda_count is None else int(cuda_count)
    if name == 'auto':
        name = 'cuda' if count > 0 else 'cpu'
    if name == 'cpu':
        return torch.device('cpu')
    if name == 'mps':
        ok = _mps_available() if mps_available is None else bool(mps_available)
        if not ok:
            raise DeviceError(
                "device 'mps' is not available (torch.backends.mps.is_available() is False: "
                'it needs Apple silicon, macOS 12.3+ and an MPS build of torch); set device '
                "to 'cpu' or 'auto'"
            )
        return torch.device('mps')
    # cuda or cuda:N
    if count <= 0:
        raise DeviceError(
            f'device {name!r} is not available: {_no_cuda_reason()}; set device to '
            "'cpu' or 'auto' (CUDA when available, else CPU), or install a CUDA build of "
            'torch on a machine with an NVIDIA GPU'
        )
    if name == 'cuda':
        index = torch.cuda.current_device() if cuda_count is None else 0
    else:
        index = int(name.split(':')[1])
        if index >= count:
            raise DeviceError(
                f'device {name!r} is not available: this machine has {count} CUDA '
                f'device(s), cuda:0 .. cuda:{count - 1}'
            )
    return torch.device('cuda', index)


def resolve_precision(
    precision: str,
    device: torch.device,
    *,
    bf16_supported: bool | None = None,
) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; None = full precision (fp32).

    ``'auto'``: on CUDA bf16 when the GPU supports it (``bf16_supported``, default: what torch
    reports), else fp16; off elsewhere. ``'fp32'``: off. ``'bf16'``: CUDA with bf16 support,
    or the CPU. ``'fp16'``: CUDA only. Other combinations raise :class:`DeviceError`.
    """
    if precision not in PRECISIONS:
        raise DeviceError(f'precision must be one of {PRECISIONS}, got {precision!r}')
    kind = device.type
    if precision == 'fp32' or (precision == 'auto' and kind != 'cuda'):
        return None
    if kind == 'cuda':
        bf16 = torch.cuda.is_bf16_supported() if bf16_supported is None else bool(bf16_supported)
        if precision == 'auto':
            return torch.bfloat16 if bf16 else torch.float16
        if precision == 'bf16' and not bf16:
            raise DeviceError(
                f"precision 'bf16' is not supported by {device} (pre-Ampere GPU): "
                "use 'fp16' or 'auto'"
            )
        return torch.bfloat16 if precision == 'bf16' else torch.float16
    if kind == 'cpu' and precision == 'bf16':
        return torch.bfloat16
    raise DeviceError(
        f'precision {precision!r} is not supported on {kind}: use '
        + ("'fp32' or 'bf16'" if kind == 'cpu' else "'fp32'")
    )


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Mixed precision for the enclosed forward pass: ``torch.autocast`` for ``dtype`` on
    ``device``, or a context that changes nothing when ``dtype`` is None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def needs_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> bool:
    """fp16 training on CUDA scales the loss (its gradients would underflow); bf16 need not."""
    return device.type == 'cuda' and dtype == torch.float16


def make_grad_scaler(device: torch.device, dtype: torch.dtype | None) -> Any:
    """A :class:`torch.amp.GradScaler` when :func:`needs_grad_scaler`, else None."""
    if not needs_grad_scaler(device, dtype):
        return None
    return torch.amp.GradScaler(device.type)


def should_pin(
    src: torch.device, dst: torch.device, *, cuda_available: bool | None = None
) -> bool:
    """Whether a tensor on ``src`` bound for ``dst`` goes through pinned memory: from the CPU
    to CUDA when CUDA is available (``cuda_available``, default: what torch reports)."""
    if src.type != 'cpu' or dst.type != 'cuda':
        return False
    return torch.cuda.is_available() if cuda_available is None else bool(cuda_available)


def _same_device(t: torch.Tensor, device: torch.device) -> bool:
    if t.device.type != device.type:
        return False
    return device.index is None or t.device.index is None or t.device.index == device.index


def to_device(
    batch: Mapping[str, Any], device: torch.device | str, *, pin: bool | None = None
) -> dict[str, Any]:
    """A new dict with ``batch``'s tensors on ``device`` (other values as they are).

    CPU tensors bound for CUDA are copied through pinned memory and sent with
    ``non_blocking=True`` (``pin``: None = :func:`should_pin`, False = plain copies); tensors
    already on ``device`` are kept (no copy).
    """
    dst = resolve_device(device) if isinstance(device, str) else device
    out: dict[str, Any] = {}
    for key, value in batch.items():
        if not isinstance(value, torch.Tensor) or _same_device(value, dst):
            out[key] = value
            continue
        pinned = (
            should_pin(value.device, dst)
            if pin is None
            else (bool(pin) and should_pin(value.device, dst, cuda_available=True))
        )
        if pinned:
            out[key] = value.pin_memory().to(dst, non_blocking=True)
        else:
            out[key] = value.to(dst)
    return out


def module_device(module: nn.Module) -> torch.device:
    """The device of a module's first parameter or buffer (the CPU for an empty module)."""
    for t in _tensors(module):
        return t.device
    return torch.device('cpu')


def _tensors(module: nn.Module) -> Iterator[torch.Tensor]:
    yield from module.parameters()
    yield from module.buffers()


class _MovedBatch(dict):
    """A batch moved to a module's device by :func:`_move_batch`; remembers where it came from
    so that :func:`_return_output` hands the output back there."""

    source: torch.device


def _move_batch(module: nn.Module, args: tuple) -> tuple | None:
    """Forward pre-hook: the batch (first argument) onto the module's device."""
    if not args or not isinstance(args[0], Mapping):
        return None
    batch = args[0]
    device = module_device(module)
    tensors = [v for v in batch.values() if isinstance(v, torch.Tensor)]
    if not tensors or all(_same_device(t, device) for t in tensors):
        return None
    source = next(t.device for t in tensors if not _same_device(t, device))
    moved = _MovedBatch(to_device(batch, device))
    moved.source = source
    return (moved, *args[1:])


def _return_output(module: nn.Module, args: tuple, output: Any) -> Any:
    """Forward hook: the output back on the device the batch came from."""
    if args and isinstance(args[0], _MovedBatch) and isinstance(output, torch.Tensor):
        return output.to(args[0].source)
    return None


def place_module(module: nn.Module, device: torch.device | str) -> nn.Module:
    """Move ``module`` (in place) to ``device`` and return it.

    Off the CPU, the module's ``forward(batch)`` then also takes a batch dict on another device:
    it is moved to the module's device (:func:`to_device`, pinned when bound for CUDA) and the
    output goes back to the batch's device, so code that builds CPU batches runs a GPU policy
    unchanged. Batches already on the module's device go through untouched (a training step
    moves its batch first). The hooks travel with ``copy.deepcopy`` and are installed once.
    On the CPU nothing is installed: a CPU policy behaves exactly as before.
    """
    dst = resolve_device(device) if isinstance(device, str) else device
    module.to(dst)
    if dst.type != 'cpu' and _move_batch not in module._forward_pre_hooks.values():
        module.register_forward_pre_hook(_move_batch)
        module.register_forward_hook(_return_output)
    return module
