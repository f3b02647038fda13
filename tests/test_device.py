"""Device handling (scarls.common.device) on a CPU-only machine: every CUDA decision is checked
with the availability passed in or faked, the CPU path for real."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from scarls.common import device as dev
from scarls.common.device import (
    DeviceError,
    autocast,
    make_grad_scaler,
    module_device,
    needs_grad_scaler,
    parse_device,
    place_module,
    resolve_device,
    resolve_precision,
    should_pin,
    to_device,
)

CPU = torch.device('cpu')
CUDA0 = torch.device('cuda', 0)
MPS = torch.device('mps')


# -- parsing and resolution --------------------------------------------------------------------


@pytest.mark.parametrize(
    ('spec', 'canonical'),
    [
        ('auto', 'auto'),
        ('cpu', 'cpu'),
        ('cuda', 'cuda'),
        ('cuda:0', 'cuda:0'),
        (' CUDA:12 ', 'cuda:12'),
        ('mps', 'mps'),
        (torch.device('cuda', 1), 'cuda:1'),
        (torch.device('cpu'), 'cpu'),
    ],
)
def test_parse_device_accepts_the_documented_forms(spec, canonical):
    assert parse_device(spec) == canonical


@pytest.mark.parametrize(
    'spec',
    ['gpu', 'cuda:', 'cuda:x', 'cuda:-1', 'cpu:0', 'mps:1', 'auto:0', '', None, 3, 'cuda 0'],
)
def test_parse_device_rejects_anything_else(spec):
    with pytest.raises(DeviceError, match=r"'auto', 'cpu', 'cuda', 'cuda:N'"):
        parse_device(spec)


def test_auto_is_cuda_when_present_else_cpu():
    assert resolve_device('auto', cuda_count=0) == CPU
    assert resolve_device('auto', cuda_count=2) == CUDA0
    assert resolve_device('cuda', cuda_count=1) == CUDA0
    assert resolve_device('cuda:1', cuda_count=2) == torch.device('cuda', 1)
    assert resolve_device('cpu', cuda_count=4) == CPU
    assert resolve_device('mps', mps_available=True) == MPS
    # what this machine has
    real = resolve_device('auto')
    assert real.type == ('cuda' if torch.cuda.is_available() else 'cpu')
    assert resolve_device() == real


def test_unavailable_cuda_is_a_clear_error():
    with pytest.raises(DeviceError) as err:
        resolve_device('cuda', cuda_count=0)
    text = str(err.value)
    assert "device 'cuda' is not available" in text
    assert "set device to 'cpu' or 'auto'" in text
    with pytest.raises(
        DeviceError,
        match=r"'cuda:3' is not available: this machine has 2 CUDA "
        r'device\(s\), cuda:0 \.\. cuda:1',
    ):
        resolve_device('cuda:3', cuda_count=2)
    with pytest.raises(DeviceError, match="'cuda:0' is not available"):
        resolve_device('cuda:0', cuda_count=0)
    with pytest.raises(DeviceError, match="'mps' is not available.*'cpu' or 'auto'"):
        resolve_device('mps', mps_available=False)


def test_cuda_on_this_machine_resolves_or_says_why():
    if torch.cuda.is_available():  # a workstation with a GPU
        assert resolve_device('cuda').type == 'cuda'
        return
    with pytest.raises(DeviceError, match="device 'cuda' is not available: this torch") as err:
        resolve_device('cuda')
    assert 'CPU-only build' in str(err.value) or 'no usable GPU' in str(err.value)


# -- precision ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ('precision', 'device', 'bf16', 'dtype'),
    [
        ('auto', CPU, None, None),  # CPU: off by default
        ('auto', MPS, None, None),
        ('fp32', CUDA0, True, None),
        ('auto', CUDA0, True, torch.bfloat16),
        ('auto', CUDA0, False, torch.float16),
        ('bf16', CUDA0, True, torch.bfloat16),
        ('fp16', CUDA0, True, torch.float16),
        ('bf16', CPU, None, torch.bfloat16),  # only when asked for
        ('fp32', CPU, None, None),
    ],
)
def test_precision_table(precision, device, bf16, dtype):
    assert resolve_precision(precision, device, bf16_supported=bf16) == dtype


@pytest.mark.parametrize(
    ('precision', 'device', 'bf16', 'match'),
    [
        ('fp16', CPU, None, "'fp16' is not supported on cpu"),
        ('bf16', CUDA0, False, "'bf16' is not supported by cuda:0"),
        ('bf16', MPS, None, "not supported on mps: use 'fp32'"),
        ('half', CPU, None, 'precision must be one of'),
    ],
)
def test_precision_errors(precision, device, bf16, match):
    with pytest.raises(DeviceError, match=match):
        resolve_precision(precision, device, bf16_supported=bf16)


def test_grad_scaler_only_for_fp16_on_cuda():
    assert needs_grad_scaler(CUDA0, torch.float16)
    assert not needs_grad_scaler(CUDA0, torch.bfloat16)
    assert not needs_grad_scaler(CUDA0, None)
    assert not needs_grad_scaler(CPU, torch.float16)
    assert make_grad_scaler(CPU, None) is None
    assert make_grad_scaler(CPU, torch.bfloat16) is None


def test_autocast_is_off_on_the_cpu_by_default():
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    dtype = resolve_precision('auto', CPU)
    with autocast(CPU, dtype):
        assert not torch.is_autocast_enabled('cpu')
        out = a @ b
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, a @ b, rtol=0, atol=0)
    with autocast(CPU, torch.bfloat16):  # asked for: it does apply
        assert torch.is_autocast_enabled('cpu')
        assert (a @ b).dtype == torch.bfloat16


# -- batch transfer ----------------------------------------------------------------------------


def test_should_pin_table():
    assert should_pin(CPU, CUDA0, cuda_available=True)
    assert not should_pin(CPU, CUDA0, cuda_available=False)
    assert not should_pin(CUDA0, CPU, cuda_available=True)
    assert not should_pin(CUDA0, torch.device('cuda', 1), cuda_available=True)
    assert not should_pin(CPU, MPS, cuda_available=True)
    assert not should_pin(CPU, CPU, cuda_available=True)
    assert should_pin(CPU, CUDA0) == torch.cuda.is_available()


def _batch() -> dict:
    return {
        'state': torch.randn(2, 14),
        'image.top': torch.zeros(2, 4, 4, 3, dtype=torch.uint8),
        'note': 'not a tensor',
    }


def test_to_device_on_the_cpu_moves_nothing():
    batch = _batch()
    out = to_device(batch, 'cpu')
    assert out is not batch and out.keys() == batch.keys()
    assert all(out[k] is batch[k] for k in batch)  # no copy


def test_to_device_moves_plainly_without_cuda():
    batch = _batch()
    out = to_device(batch, torch.device('meta'))  # a second device every torch build has
    assert out['state'].device.type == 'meta' and out['image.top'].dtype == torch.uint8
    assert out['note'] == 'not a tensor' and batch['state'].device == CPU


class _Recorder:
    """Fakes CUDA's pinned transfer on a CPU-only torch, recording what was asked."""

    def __init__(self, monkeypatch, cuda_available: bool) -> None:
        self.calls: list[tuple] = []
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: cuda_available)
        real_to = torch.Tensor.to
        recorder = self

        def pin_memory(t, *a, **k):
            recorder.calls.append(('pin',))
            return t

        def to(t, *args, **kwargs):
            if args and isinstance(args[0], torch.device) and args[0].type == 'cuda':
                recorder.calls.append(('to', args[0], kwargs.get('non_blocking', False)))
                return t
            return real_to(t, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, 'pin_memory', pin_memory)
        monkeypatch.setattr(torch.Tensor, 'to', to)


def test_to_device_pins_and_does_not_block_when_cuda_is_there(monkeypatch):
    rec = _Recorder(monkeypatch, cuda_available=True)
    to_device(_batch(), CUDA0)
    assert rec.calls == [('pin',), ('to', CUDA0, True)] * 2  # two tensors, each pinned


def test_to_device_without_pinning_when_asked(monkeypatch):
    rec = _Recorder(monkeypatch, cuda_available=True)
    to_device(_batch(), CUDA0, pin=False)
    assert rec.calls == [('to', CUDA0, False)] * 2


def test_to_device_does_not_pin_when_cuda_is_missing(monkeypatch):
    rec = _Recorder(monkeypatch, cuda_available=False)
    to_device(_batch(), CUDA0)
    assert rec.calls == [('to', CUDA0, False)] * 2


# -- policies on a device ----------------------------------------------------------------------


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 2)

    def forward(self, batch):
        return self.lin(batch['state'])


def test_place_module_on_the_cpu_installs_nothing():
    net = _Net()
    before = net({'state': torch.ones(1, 3)})
    assert place_module(net, 'cpu') is net
    assert not net._forward_pre_hooks and not net._forward_hooks
    assert module_device(net) == CPU
    torch.testing.assert_close(net({'state': torch.ones(1, 3)}), before, rtol=0, atol=0)
    assert module_device(nn.Module()) == CPU


def test_place_module_elsewhere_moves_batches_in_and_outputs_back():
    net = place_module(_Net(), torch.device('meta'))
    place_module(net, torch.device('meta'))  # idempotent: the hooks are installed once
    assert module_device(net).type == 'meta'
    assert list(net._forward_pre_hooks.values()) == [dev._move_batch]
    assert list(net._forward_hooks.values()) == [dev._return_output]
    assert list(copy.deepcopy(net)._forward_pre_hooks.values()) == [dev._move_batch]
    # a CPU batch is moved to the module's device, other arguments pass through
    args = dev._move_batch(net, ({'state': torch.ones(1, 3), 'n': 1}, 'extra'))
    moved, extra = args
    assert moved['state'].device.type == 'meta' and moved['n'] == 1 and extra == 'extra'
    assert moved.source == CPU
    # a batch already there is left alone (a training step moves its batch first)
    assert dev._move_batch(net, ({'state': torch.ones(1, 3, device='meta')},)) is None
    assert dev._move_batch(net, ('not a batch',)) is None
    # the output goes back to where the batch came from
    moved.source = torch.device('meta')  # (meta stands in for the CPU: it holds no data)
    out = dev._return_output(net, (moved,), torch.ones(1, 2))
    assert out.device.type == 'meta'
    assert dev._return_output(net, ({'state': 0},), torch.ones(1, 2)) is None
