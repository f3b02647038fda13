"""What travels in a fleet round: the trainable parameters of a model, flattened into one
buffer per reduction dtype on the backend's device (:func:`flatten_trainable`,
:func:`choose_backend`, :func:`reduction_device`), their signature, and the check of a
reduced result before it replaces the local parameters (:func:`check_reduced`). Frozen
parameters and buffers never travel. See :mod:`scarls.fleet.allreduce`.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence

import torch
import torch.distributed as dist
from torch import nn

from scarls.fleet.config import BACKENDS, FleetConfigError, FleetError

__all__ = [
    'check_reduced',
    'choose_backend',
    'flatten_trainable',
    'parameter_signature',
    'reduction_device',
    'state_bytes',
    'trainable_parameters',
]


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """``(name, parameter)`` of the parameters with ``requires_grad`` (shared ones once)."""
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def parameter_signature(params: Sequence[tuple[str, torch.Tensor]]) -> str:
    """Short digest of the names, shapes and dtypes of ``params`` (equal models agree)."""
    h = hashlib.sha256()
    for name, p in params:
        h.update(f'{name}:{tuple(p.shape)}:{p.dtype}\n'.encode())
    return h.hexdigest()[:16]


def state_bytes(model: nn.Module) -> int:
    """Bytes of the model's state dict (parameters and buffers, shared tensors once)."""
    seen: set[int] = set()
    total = 0
    for t in model.state_dict(keep_vars=True).values():
        if id(t) in seen:
            continue
        seen.add(id(t))
        total += t.numel() * t.element_size()
    return total


def _reduce_dtype(dtype: torch.dtype) -> torch.dtype:
    if dtype.is_complex or not dtype.is_floating_point:
        raise FleetError(f'cannot average parameters of dtype {dtype}')
    return torch.float64 if dtype == torch.float64 else torch.float32


def flatten_trainable(
    params: Sequence[tuple[str, torch.Tensor]], device: torch.device | str = 'cpu'
) -> list[tuple[torch.Tensor, list[torch.Tensor]]]:
    """One contiguous buffer per reduction dtype (float64, else float32) on ``device``.

    Returns ``[(buffer, [parameters in buffer order]), ...]``; :func:`_write_back` copies a
    buffer into its parameters (casting back to their dtype and device).
    """
    groups: dict[torch.dtype, list[torch.Tensor]] = {}
    for _, p in params:
        groups.setdefault(_reduce_dtype(p.dtype), []).append(p)
    out = []
    with torch.no_grad():
        for dtype, ps in groups.items():
            buf = torch.cat([p.detach().reshape(-1).to(device=device, dtype=dtype) for p in ps])
            out.append((buf, ps))
    return out


def choose_backend(
    want: str,
    devices: Iterable[torch.device | str],
    *,
    nccl_available: bool | None = None,
) -> str:
    """The process-group backend for parameters on ``devices``: ``'nccl'`` or ``'gloo'``.

    ``want`` is :attr:`FleetConfig.backend`. ``'auto'``: NCCL when a parameter lives on CUDA
    and torch has NCCL (``nccl_available``, default: :func:`torch.distributed.
    is_nccl_available`), else Gloo (CPU parameters; CUDA ones then travel through CPU buffers).
    ``'gloo'``: always Gloo. ``'nccl'``: NCCL, or :class:`FleetError` when no parameter is on
    CUDA or NCCL is missing. Pure: nothing is allocated or connected.
    """
    if want not in BACKENDS:
        raise FleetConfigError(f'backend must be one of {BACKENDS}, got {want!r}')
    cuda = any(torch.device(d).type == 'cuda' for d in devices)
    if nccl_available is None:
        nccl_available = dist.is_nccl_available()
    nccl = cuda and bool(nccl_available)
    if want == 'nccl' and not nccl:
        raise FleetError('backend nccl needs CUDA parameters and a torch built with NCCL'
                         + ('' if cuda else ' (the parameters are not on CUDA)'))
    return 'nccl' if want == 'nccl' or (want == 'auto' and nccl) else 'gloo'


def reduction_device(backend: str, devices: Iterable[torch.device | str]) -> torch.device:
    """Where the all-reduce buffers live: the first CUDA device among ``devices`` for NCCL,
    the CPU for Gloo."""
    if backend == 'nccl':
        for d in devices:
            if torch.device(d).type == 'cuda':
                return torch.device(d)
        raise FleetError('backend nccl needs parameters on a CUDA device')
    return torch.device('cpu')


def _write_back(buf: torch.Tensor, params: Iterable[torch.Tensor]) -> None:
    offset = 0
    with torch.no_grad():
        for p in params:
            n = p.numel()
            p.copy_(buf[offset : offset + n].view(p.shape))
            offset += n


def check_reduced(buffers: Sequence[tuple[torch.Tensor, Sequence[torch.Tensor]]],
                  max_change: float) -> str | None:
    """Why a reduced model must not be used, or None: ``buffers`` are the reduced buffers with
    the (still local) parameters they will be written to (:func:`flatten_trainable`). The
    reduced values must be finite and ``||reduced - local|| <= max_change * ||local||`` (over
    all trainable parameters); a tiny local norm is floored at 1e-12."""
    diff_sq = local_sq = 0.0
    with torch.no_grad():
        for buf, ps in buffers:
            if not bool(torch.isfinite(buf).all()):
                return 'the reduced parameters are not finite'
            offset = 0
            for p in ps:
                k = p.numel()
                local = p.detach().reshape(-1).to(device=buf.device, dtype=buf.dtype)
                diff_sq += float(torch.sum((buf[offset:offset + k] - local) ** 2))
                local_sq += float(torch.sum(local**2))
                offset += k
    change = math.sqrt(diff_sq) / max(math.sqrt(local_sq), 1e-12)
    if not math.isfinite(change) or change > max_change:
        return (f'the parameters moved by {change:.3g} x their norm (bound '
                f'{max_change:g}): a participant sent parameters far from this model')
    return None
