"""Metric-weighted all-reduce of the fleet's trainable parameters, one round at a time.

Every ECU's learner calls :meth:`FleetReducer.reduce` after local training and the open-loop
evaluation, with its model and its error (lower is better). The fleet then averages the
trainable parameters of the ECUs whose error passes ``threshold``, weighted by
:func:`scarls.fleet.weights.reduction_weights` (normalised inverse error). Nothing is
central except the rendezvous store; no ECU ever waits for another past the configured
deadlines, and an ECU that was slow, crashed or cut off joins a later round without a fleet
restart.

Rendezvous. A :class:`torch.distributed.TCPStore` at ``MASTER_ADDR:MASTER_PORT``; ``RANK`` and
``WORLD_SIZE`` number the ECUs (the torchrun variables, read by :meth:`Rendezvous.from_env`).
The store is hosted either by a small standalone process (:func:`serve_rendezvous`, e.g. run by
the fleet launcher: it holds no model and does no training) or, torchrun style, by the ECU
with ``FleetConfig.host_store`` (then that ECU must stay up: when it restarts, the others
resynchronise, see *Epoch*). Under torchrun with its agent store
(``TORCHELASTIC_USE_AGENT_STORE=True``), the ECUs just connect to it. All keys live under
``FleetConfig.namespace``. The store listens on its address only (:class:`RendezvousHost`).

Authentication. A TCPStore has no access control, so every value an ECU writes is sealed with
the fleet's shared key (HMAC-SHA256 bound to the store key and the store's epoch,
:mod:`scarls.fleet.auth`) and every reader verifies it: a record that does not verify is
ignored and logged, as if absent. Write-once records (the epoch, a round's membership, group
and verdicts) are agreed in *slots*: a slot holding a stranger's record is skipped, in the same
order by every ECU. An ECU waiting for the others writes its own record again when a stranger
overwrote it. The round's process group exchanges its members' addresses through the same
seal (:class:`scarls.fleet.auth.SignedStore`). A fleet of more than one ECU needs the key.

A round ``r`` (all waits poll the store every ``poll_s``; none blocks indefinitely):

1. *Post.* The ECU writes ``{rank, ecu id, error, passes, parameter signature, eps}`` under
   ``r/post/<rank>``. ECUs that fail the threshold post too, so that the round does not wait
   for them; they wait for the membership like the others (which keeps the fleet's rounds in
   step) and leave with status ``'skipped'`` (no reduction, no selection, no deploy).
2. *Membership.* The posters are fixed when all ``WORLD_SIZE`` ranks have posted or when
   ``deadline_s`` has passed since the ECU's own post, whichever comes first: the first ECU
   to get there writes the verified posts present with ``store.compare_set`` on
   ``r/members``; ``compare_set`` keeps only the first write, so every ECU reads the same
   members and the same posts. The round therefore closes at most ``deadline_s`` after its
   first live poster arrived. An ECU whose post is not in the list learns it ``'missed'``
   the round.
3. *Eligibility.* From the posts of the members, every ECU computes the same set: the ranks
   whose error passed their ``threshold`` and whose parameter signature (names, shapes, dtypes
   of the trainable parameters) is the most common one among them (ties: the lowest rank's).
   The weights are computed from the posts alone as well (with the lowest participant's
   ``eps`` and ``max_weight``: no ECU's share above it, whatever error it reports), so the
   members agree on them even if their configurations differ.
4. *Readiness.* Eligible ECUs mark ``r/ready/<rank>`` and agree the same way (all eligible
   ready, or ``ready_timeout_s``) on ``r/group``. This second, short agreement drops an ECU
   that died between posting and reducing, so a crash costs the others ``ready_timeout_s``
   instead of failing the round.
5. *Reduce.* The group builds a process group for this round only, over
   ``PrefixStore('r/<r>/pg', store)`` with its index in the group (:func:`choose_backend`:
   Gloo for CPU parameters, NCCL when they live on CUDA and torch has NCCL; the buffers are
   built on the backend's device, :func:`reduction_device` - the parameters' GPU for NCCL,
   the CPU for Gloo - and written back to wherever each parameter lives). The trainable
   parameters (``requires_grad``) are flattened into one contiguous buffer per reduction dtype
   (float64 stays float64, every other floating dtype is reduced in float32), scaled by the
   ECU's weight, summed with one all-reduce and written back. Frozen parameters and buffers
   never travel. Before the result is written back, each member checks it
   (:func:`check_reduced`): finite, and within ``max_param_change`` of its own parameters
   (relative norm). A member whose check fails keeps its parameters (``'failed'``) and posts
   a veto as its verdict, so no participant deploys the model.
   The all-reduce has a timeout (``reduce_timeout_s``, by default the deadline plus the
   payload's transfer time at ``reduce_min_mb_s``); when a member dies
   mid-reduce the others get an error at once (connection closed) or at the timeout, and the
   round ends ``'failed'`` with the parameters untouched. A group of one does not communicate
   (``'alone'``).

6. *Verdicts* (:meth:`FleetReducer.agree_verdicts`, after a ``'reduced'`` round). Each
   participant evaluates the synchronised model on its own held-out episodes and posts its
   verdict (error, labelled frames, its deployed model's error) under ``r/verdict/<rank>``;
   the verdicts present when all participants have posted or ``deadline_s`` after the ECU's
   own post are fixed on ``r/verdicts`` like the membership. Every participant reads the
   same verdicts and so takes the same deploy decision
   (:func:`scarls.learner.selector.fleet_decision`: every participant's verdict present and
   plausible, every participant's own error passing, the union's shares capped): the fleet
   deploys a synchronised model everywhere or nowhere.

Bound: an ECU that takes part is released at most ``deadline_s + ready_timeout_s`` after its
post plus the all-reduce itself (itself bounded by ``reduce_timeout_s``); store operations
time out after ``store_timeout_s``, and an unreachable store is a ``'failed'`` round (the
connection is re-made on the next call).

Rejoin. Rounds are numbered from 0. Each ECU remembers the round it expects next; the store
keeps ``next`` (one past the highest closed round). If the expected round closed without the
ECU (it was slow), :meth:`FleetReducer.reduce` returns ``'missed'`` immediately, without
waiting, and the next call joins the first round still open. A restarted ECU has no
expectation and joins the first open round directly, so a fleet never restarts for one ECU.

Epoch. The first client of a store writes a random epoch token (``compare_set``). If the
store is replaced (its host restarted), the token changes and every ECU forgets its expected
round and rejoins at the store's first open round.

Limitations: averaging parameters assumes the ECUs started from the same initial weights
(same seed or checkpoint). Buffers (e.g. normalisation statistics) are not averaged, so the
ECUs must fit them on the same data. Optimiser state stays local. With NCCL, set
``TORCH_NCCL_ASYNC_ERROR_HANDLING=2`` so that a timeout raises instead of ending the process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from scarls.common.validation import is_int, is_number
from scarls.fleet.auth import KEY_FILE_ENV, FleetKey, RejectLog, SignedStore
from scarls.fleet.weights import DEFAULT_EPS, cap_weights, passes_threshold, reduction_weights

__all__ = [
    'BACKENDS',
    'STATUSES',
    'FleetConfig',
    'FleetConfigError',
    'FleetError',
    'FleetReducer',
    'Rendezvous',
    'RendezvousHost',
    'RoundResult',
    'check_reduced',
    'choose_backend',
    'flatten_trainable',
    'listen_socket',
    'parameter_signature',
    'reduction_device',
    'serve_rendezvous',
    'state_bytes',
    'trainable_parameters',
]

_log = logging.getLogger(__name__)

#: Outcomes of a round, see :class:`RoundResult`.
STATUSES: tuple[str, ...] = ('reduced', 'alone', 'skipped', 'missed', 'failed')
#: Values of :attr:`FleetConfig.backend`.
BACKENDS: tuple[str, ...] = ('auto', 'gloo', 'nccl')


class FleetError(Exception):
    """Base class of the errors raised by :mod:`scarls.fleet`."""


class FleetConfigError(FleetError, ValueError):
    """A fleet setting or rendezvous variable is invalid (the message names it)."""


@dataclasses.dataclass(frozen=True)
class FleetConfig:
    """Settings of :class:`FleetReducer` (the same on every ECU of a fleet)."""

    threshold: float = 0.05
    """Quality bar: an ECU takes part only if its open-loop error (rad^2) is at most this."""
    eps: float = DEFAULT_EPS
    """Error floor of the inverse-error weights (rad^2), see :mod:`scarls.fleet.weights`."""
    deadline_s: float = 30.0
    """Longest wait for the other ECUs to post, counted from this ECU's own post."""
    ready_timeout_s: float = 5.0
    """Longest wait for the eligible ECUs to get ready and connect once membership is fixed."""
    reduce_timeout_s: float | None = None
    """Timeout of the all-reduce itself (must exceed its duration on the fleet's network).
    None: ``deadline_s`` plus the payload at ``reduce_min_mb_s`` - so a member that hangs
    inside the reduction (stopped, cut off: its sockets stay open) costs the others about the
    deadline, not minutes; a failed round leaves every model as it was."""
    reduce_min_mb_s: float = 50.0
    """Slowest transfer rate (MB/s) the default reduce timeout allows for."""
    store_timeout_s: float = 10.0
    """Timeout of connecting to the rendezvous store and of a single store operation."""
    poll_s: float = 0.05
    """Store polling period while waiting (the extra latency of a round's close; every waiting
    ECU sends the store 1 / poll_s requests per second)."""
    backend: str = 'auto'
    """``'auto'`` (NCCL for CUDA parameters when available, else Gloo), ``'gloo'``, ``'nccl'``."""
    host_store: bool = False
    """This ECU hosts the rendezvous store (torchrun style, usually rank 0); False: connect to
    a standalone host (:func:`serve_rendezvous`) or a torchrun agent's store."""
    namespace: str = 'scarls/fleet'
    """Prefix of every store key (several fleets may share one store)."""
    keep_rounds: int = 16
    """Store keys of a round are deleted this many rounds later."""
    robot: str = ''
    """The ECU's robot (its description's name and hash, see :mod:`scarls.robot`): only
    policies of one robot are averaged; an ECU of another robot than the fleet's majority is
    left out of every round with a message that says so."""
    max_weight: float = 0.75
    """Largest share one ECU may have in the average (raised to ``1/n`` for ``n``
    participants): an ECU that reports a tiny error cannot make the others' parameters vanish
    (:func:`scarls.fleet.weights.cap_weights`). The lowest participant's value applies."""
    max_param_change: float = 0.5
    """Sanity bound of a reduced model: ``||reduced - local|| <= max_param_change *
    ||local||`` over the trainable parameters, on every participant; a participant whose
    bound fails keeps its parameters and vetoes the round's model for the whole fleet."""

    def __post_init__(self) -> None:
        for name in (
            'threshold',
            'eps',
            'deadline_s',
            'ready_timeout_s',
            'reduce_min_mb_s',
            'store_timeout_s',
            'poll_s',
            'max_param_change',
        ):
            value = getattr(self, name)
            if not is_number(value) or value <= 0:
                self._fail(name, 'must be a finite number > 0')
        if self.reduce_timeout_s is not None and (
                not is_number(self.reduce_timeout_s) or self.reduce_timeout_s <= 0):
            self._fail('reduce_timeout_s', 'must be None or a finite number > 0')
        if self.backend not in BACKENDS:
            self._fail('backend', f'must be one of {BACKENDS}')
        if not isinstance(self.host_store, bool):
            self._fail('host_store', 'must be a bool')
        if not isinstance(self.namespace, str) or not self.namespace.strip('/'):
            self._fail('namespace', 'must be a non-empty string')
        if not is_int(self.keep_rounds) or self.keep_rounds < 2:
            self._fail('keep_rounds', 'must be an int >= 2')
        if not is_number(self.max_weight) or not 0 < self.max_weight <= 1:
            self._fail('max_weight', 'must be a number in (0, 1]')

    def _fail(self, name: str, what: str) -> None:
        raise FleetConfigError(f'FleetConfig.{name} {what}, got {getattr(self, name)!r}')

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> FleetConfig:
        """Build from a mapping; unknown keys raise :class:`FleetConfigError`."""
        if data is None:
            return cls()
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise FleetConfigError(
                f'FleetConfig: unknown field(s) {unknown}; known fields: {sorted(known)}'
            )
        return cls(**dict(data))


@dataclasses.dataclass(frozen=True)
class Rendezvous:
    """Where the fleet meets and who this ECU is (the torchrun environment variables)."""

    addr: str
    """Host of the rendezvous store (``MASTER_ADDR``)."""
    port: int
    """Port of the rendezvous store (``MASTER_PORT``)."""
    rank: int
    """This ECU's number in ``[0, world_size)`` (``RANK``)."""
    world_size: int
    """Number of ECUs in the fleet (``WORLD_SIZE``)."""

    def __post_init__(self) -> None:
        if not isinstance(self.addr, str) or not self.addr:
            raise FleetConfigError(f'Rendezvous.addr must be a host name, got {self.addr!r}')
        if not is_int(self.port) or not 0 < self.port < 65536:
            raise FleetConfigError(f'Rendezvous.port must be in [1, 65535], got {self.port!r}')
        if not is_int(self.world_size) or self.world_size < 1:
            raise FleetConfigError(
                f'Rendezvous.world_size must be an int >= 1, got {self.world_size!r}'
            )
        if not is_int(self.rank) or not 0 <= self.rank < self.world_size:
            raise FleetConfigError(
                f'Rendezvous.rank must be in [0, {self.world_size}), got {self.rank!r}'
            )

    @classmethod
    def from_env(
        cls,
        environ: Mapping[str, str] | None = None,
        *,
        addr: str | None = None,
        port: int | None = None,
        rank: int | None = None,
        world_size: int | None = None,
    ) -> Rendezvous:
        """From ``MASTER_ADDR``, ``MASTER_PORT``, ``RANK``, ``WORLD_SIZE`` (arguments win)."""
        env = os.environ if environ is None else environ

        def need(name: str) -> str:
            value = env.get(name)
            if not value:
                raise FleetConfigError(f'environment variable {name} is not set')
            return value

        def as_int(name: str, value: str) -> int:
            try:
                return int(value)
            except ValueError:
                raise FleetConfigError(f'{name} must be an integer, got {value!r}') from None

        return cls(
            addr=addr if addr is not None else need('MASTER_ADDR'),
            port=port if port is not None else as_int('MASTER_PORT', need('MASTER_PORT')),
            rank=rank if rank is not None else as_int('RANK', need('RANK')),
            world_size=(
                world_size if world_size is not None else as_int('WORLD_SIZE', need('WORLD_SIZE'))
            ),
        )


@dataclasses.dataclass(frozen=True)
class RoundResult:
    """Outcome of one :meth:`FleetReducer.reduce` call, as seen by one ECU."""

    round: int
    """Round number."""
    status: str
    """``'reduced'``: the parameters now hold the weighted average of the group.
    ``'alone'``: the only eligible ECU; parameters unchanged, weight 1.
    ``'skipped'``: this ECU's error failed the threshold; parameters unchanged, no deploy.
    ``'missed'``: the round closed without this ECU; parameters unchanged.
    ``'failed'``: store, signature or communication error; parameters unchanged."""
    reason: str
    """Human-readable explanation."""
    ecu_id: str
    """This ECU."""
    rank: int
    """This ECU's rank."""
    participants: tuple[str, ...] = ()
    """ECUs whose parameters were averaged (rank order); empty unless reduced or alone."""
    metrics: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Posted open-loop errors of the round's members (NaN: none / not finite)."""
    weights: Mapping[str, float] = dataclasses.field(default_factory=dict)
    """Weight of each participant (sums to 1)."""
    payload_bytes: int = 0
    """Bytes of the trainable-parameter buffer handed to the all-reduce (0 if none)."""
    state_bytes: int = 0
    """Bytes of the model's full state dict (parameters + buffers)."""
    wait_seconds: float = 0.0
    """Time spent agreeing on membership and readiness."""
    reduce_seconds: float = 0.0
    """Time spent connecting the round's group and in the all-reduce."""
    seconds: float = 0.0
    """Wall time of the whole call."""
    next_round: int = 0
    """The round this ECU will join on its next call."""

    @property
    def changed(self) -> bool:
        """True when the model's parameters were replaced by the fleet average."""
        return self.status == 'reduced'

    @property
    def saved_bytes(self) -> int:
        """State-dict bytes that did not travel because they are frozen or buffers."""
        return max(0, self.state_bytes - self.payload_bytes) if self.payload_bytes else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (NaN metrics as None)."""
        out = dataclasses.asdict(self)
        out['participants'] = list(self.participants)
        out['metrics'] = {k: (v if math.isfinite(v) else None) for k, v in self.metrics.items()}
        out['weights'] = dict(self.weights)
        return out


# -- parameters -------------------------------------------------------------------------------


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


# -- rendezvous host --------------------------------------------------------------------------


def _td(seconds: float) -> datetime.timedelta:
    return datetime.timedelta(seconds=float(seconds))


def listen_socket(addr: str, port: int, backlog: int = 128) -> socket.socket:
    """A TCP socket bound to ``addr:port`` (port 0: a free one) and listening.

    ``addr`` is an IP address or a host name (its first address); ``0.0.0.0`` / ``::`` mean
    every interface. Raises :class:`OSError` (e.g. an address this host does not have).
    """
    infos = socket.getaddrinfo(addr, int(port), type=socket.SOCK_STREAM,
                               flags=socket.AI_PASSIVE)
    family, kind, proto, _, sockaddr = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6 and sockaddr[0] not in ('::', '::0'):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(sockaddr)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise
    return sock


class RendezvousHost:
    """The rendezvous store of a fleet: a :class:`torch.distributed.TCPStore` server.

    It listens on ``addr`` only (the address the ECUs are told to use; ``0.0.0.0`` for every
    interface) at ``port`` (0: a free port, see :attr:`port`). A TCPStore server given a host
    name still binds the wildcard address (every interface, IPv4 and IPv6, checked with torch
    2.13, both backends), so the listening socket is made here, bound to ``addr``, and handed
    to the store (``master_listen_fd``), which then owns it. It holds a few small keys per
    round, no model and no key: every record in it is sealed by the learners
    (:mod:`scarls.fleet.auth`). Close it (or use it as a context manager) to stop serving.
    """

    def __init__(self, addr: str = '127.0.0.1', port: int = 0, timeout_s: float = 10.0) -> None:
        self.addr = addr
        sock = listen_socket(addr, int(port))
        bound_port = int(sock.getsockname()[1])
        fd = sock.detach()   # the store closes it
        try:
            self._store: dist.TCPStore | None = dist.TCPStore(
                addr, bound_port, None, True, _td(timeout_s), wait_for_workers=False,
                master_listen_fd=fd,
            )
        except Exception:
            with contextlib.suppress(OSError):
                os.close(fd)
            raise
        self.port = int(self._store.port)

    @property
    def store(self) -> dist.TCPStore:
        """The server-side store handle (raises once closed)."""
        if self._store is None:
            raise FleetError('the rendezvous host is closed')
        return self._store

    def environ(self, rank: int, world_size: int) -> dict[str, str]:
        """The torchrun-style variables an ECU of this fleet needs."""
        return {
            'MASTER_ADDR': self.addr,
            'MASTER_PORT': str(self.port),
            'RANK': str(rank),
            'WORLD_SIZE': str(world_size),
        }

    def close(self) -> None:
        """Stop serving (ECUs then get store errors and fail rounds until a new host runs)."""
        self._store = None

    def __enter__(self) -> RendezvousHost:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def serve_rendezvous(
    addr: str = '127.0.0.1', port: int = 0, timeout_s: float = 10.0
) -> RendezvousHost:
    """Host a fleet's rendezvous store in this process (see :class:`RendezvousHost`)."""
    return RendezvousHost(addr, port, timeout_s)


def _local_address_towards(addr: str, port: int) -> str:
    """The local IP address this host uses to reach ``addr`` (no packet is sent)."""
    try:
        family = socket.getaddrinfo(addr, port, proto=socket.IPPROTO_UDP)[0][0]
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.connect((addr, port))
            return str(s.getsockname()[0])
    except OSError:
        return '127.0.0.1'


# -- the reducer ------------------------------------------------------------------------------

_COMM_ERRORS = (RuntimeError, OSError, ValueError, TimeoutError)


class FleetReducer:
    """One ECU's side of the fleet's metric-weighted all-reduce (see the module docstring).

    Call :meth:`reduce` once per local training round, from one thread. ``rendezvous``
    defaults to :meth:`Rendezvous.from_env`; ``ecu_id`` defaults to ``'rank<k>'``. ``key``:
    the fleet's shared secret (:class:`scarls.fleet.auth.FleetKey`), required for a fleet of
    more than one ECU: every record this ECU writes to the store is sealed with it and every
    record it reads must verify (others are ignored and logged).
    """

    def __init__(
        self,
        config: FleetConfig | None = None,
        ecu_id: str | None = None,
        *,
        rendezvous: Rendezvous | None = None,
        key: FleetKey | None = None,
    ) -> None:
        self.config = config or FleetConfig()
        self.rendezvous = rendezvous or Rendezvous.from_env()
        self.ecu_id = str(ecu_id) if ecu_id is not None else f'rank{self.rendezvous.rank}'
        if key is None and self.rendezvous.world_size > 1:
            raise FleetConfigError(
                f'a fleet of {self.rendezvous.world_size} ECUs needs the fleet key (a file: '
                f'the learner parameter fleet_key_file or {KEY_FILE_ENV}; make one with '
                '`python -m scarls.fleet keygen FILE`)')
        if key is not None and not isinstance(key, FleetKey):
            raise FleetConfigError(f'key must be a FleetKey, got {type(key).__name__}')
        self._fleet_key = key
        self._rejects = RejectLog()
        self._ns = self.config.namespace.strip('/')
        self._store: dist.TCPStore | None = None
        self._host: RendezvousHost | None = None
        self._epoch: str | None = None
        self._next_round: int | None = None
        self._local_round = 0
        self._gloo_host: str | None = None
        self._cancel = threading.Event()
        self._groups: dict[int, tuple[list[int], dict[int, str]]] = {}
        """round -> (ranks that reduced, their labels), for :meth:`agree_verdicts`."""

    # -- public --------------------------------------------------------------------------
    @property
    def rank(self) -> int:
        """This ECU's rank."""
        return self.rendezvous.rank

    @property
    def world_size(self) -> int:
        """Number of ECUs in the fleet."""
        return self.rendezvous.world_size

    @property
    def next_round(self) -> int | None:
        """The round the next :meth:`reduce` expects (None: not joined yet)."""
        return self._next_round

    @property
    def refused_records(self) -> int:
        """Store records read by this ECU that did not verify with the fleet key (ignored)."""
        return self._rejects.count

    def reduce(self, model: nn.Module, metric: float | None) -> RoundResult:
        """Take part in the fleet's next round with ``model`` and its open-loop ``metric``.

        On ``'reduced'`` the trainable parameters of ``model`` hold the fleet's weighted
        average (re-evaluate them before deploying, see :mod:`scarls.learner.selector`); on any
        other status they are unchanged. Never raises for fleet trouble (an unreachable store,
        a dead peer): that is a ``'failed'`` result. Raises :class:`FleetError` for a model
        whose trainable parameters cannot be averaged.
        """
        t0 = time.monotonic()
        params = trainable_parameters(model)
        for _, p in params:
            _reduce_dtype(p.dtype)
        backend = self._backend(params)
        value = float(metric) if is_number(metric) else math.nan
        passes = passes_threshold(value, self.config.threshold)
        info = _LocalInfo(
            params=params,
            backend=backend,
            metric=value,
            passes=passes,
            signature=parameter_signature(params),
            payload_bytes=sum(
                p.numel() * (8 if p.dtype == torch.float64 else 4) for _, p in params
            ),
            state_bytes=state_bytes(model),
        )
        if self.world_size == 1:
            result = self._solo_round(info, t0)
        else:
            result = self._round(info, t0)
        _log.info(
            'fleet round %d: %s (%s) participants=%s weights=%s %.3f s',
            result.round,
            result.status,
            result.reason,
            list(result.participants),
            {k: round(v, 4) for k, v in result.weights.items()},
            result.seconds,
        )
        return result

    def agree_verdicts(self, result: RoundResult, verdict: Mapping[str, Any]
                       ) -> dict[str, dict[str, Any]]:
        """Post this ECU's verdict on the synchronised model of ``result``'s round and return
        the fleet's agreed verdicts ``{ecu id: verdict}`` (step 6 of the module docstring).

        ``verdict`` is a JSON-serialisable mapping (see
        :func:`scarls.learner.selector.fleet_decision`). For a round this ECU did not reduce
        with others (``'alone'``, a fleet of one) the answer is its own verdict. Never raises
        for fleet trouble: an unreachable store answers with the own verdict only, marked
        ``'store'`` error in the log.
        """
        own = {self.ecu_id: dict(verdict)}
        group = self._groups.get(result.round)
        if result.status != 'reduced' or group is None or self.world_size == 1:
            return own
        ranks, labels = group
        try:
            store = self._connect()
            r = result.round
            mine = self._key(r, 'verdict', self.rank)
            payload = json.dumps(dict(verdict), sort_keys=True)
            self._put(store, mine, payload)
            agreed = self._agree(store, self._key(r, 'verdicts'), ranks,
                                 lambda k: self._key(r, 'verdict', k),
                                 time.monotonic() + self.config.deadline_s, own=(mine, payload))
            return {labels[k]: v for k, v in sorted(agreed.items()) if k in labels}
        except _CancelledError:
            return own
        except _COMM_ERRORS as e:
            _log.warning('fleet round %d: verdicts not exchanged (%s): deciding alone',
                         result.round, _short(e))
            self._store = None
            return own

    def cancel(self) -> None:
        """Make a :meth:`reduce` that waits for the fleet return ``'failed'`` at once, and
        every later call too (the ECU is stopping)."""
        self._cancel.set()

    def close(self) -> None:
        """Drop the store connection (and stop hosting the store if this ECU hosts it)."""
        self._store = None
        if self._host is not None:
            self._host.close()
            self._host = None

    def __enter__(self) -> FleetReducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- round ---------------------------------------------------------------------------
    def _result(self, r: int, status: str, reason: str, t0: float, **kw: Any) -> RoundResult:
        return RoundResult(
            round=r,
            status=status,
            reason=reason,
            ecu_id=self.ecu_id,
            rank=self.rank,
            seconds=time.monotonic() - t0,
            next_round=self._next_round if self._next_round is not None else r + 1,
            **kw,
        )

    def _solo_round(self, info: _LocalInfo, t0: float) -> RoundResult:
        r = self._local_round
        self._local_round += 1
        self._next_round = self._local_round
        metrics = {self.ecu_id: info.metric}
        if not info.passes:
            return self._result(
                r,
                'skipped',
                self._fail_reason(info.metric),
                t0,
                metrics=metrics,
                state_bytes=info.state_bytes,
            )
        return self._result(
            r,
            'alone',
            'fleet of one',
            t0,
            participants=(self.ecu_id,),
            metrics=metrics,
            weights={self.ecu_id: 1.0},
            state_bytes=info.state_bytes,
        )

    def _fail_reason(self, metric: float) -> str:
        if not math.isfinite(metric):
            return f'open-loop error {metric} is not finite'
        return f'open-loop error {metric:.6g} is above the threshold {self.config.threshold:.6g}'

    def _round(self, info: _LocalInfo, t0: float) -> RoundResult:
        cfg = self.config
        r = self._next_round if self._next_round is not None else 0
        common: dict[str, Any] = {'state_bytes': info.state_bytes}
        t_post = t0

        def done(status: str, reason: str, **kw: Any) -> RoundResult:
            if 'wait_seconds' not in kw and status != 'missed':
                kw['wait_seconds'] = time.monotonic() - t_post
            return self._result(r, status, reason, t0, **common, **kw)

        try:
            store = self._connect()
            r, missed = self._target_round(store)
            if missed is not None:
                self._next_round, fleet_round, r = r, r, missed
                return done(
                    'missed',
                    f'round {r} closed without this ECU; the fleet is at round {fleet_round}',
                )
            # 1. post (failing ECUs too, so that nobody waits for them)
            post = {
                'rank': self.rank,
                'ecu_id': self.ecu_id,
                'metric': info.metric if math.isfinite(info.metric) else None,
                'passes': info.passes,
                # the robot is part of what must match: policies of different robots (even of
                # the same joint count) are never averaged
                'signature': f'{info.signature}|robot={cfg.robot}' if cfg.robot
                else info.signature,
                'robot': cfg.robot,
                'eps': cfg.eps,
                'max_weight': cfg.max_weight,
            }
            mine = self._key(r, 'post', self.rank)
            payload = json.dumps(post, sort_keys=True)
            self._put(store, mine, payload)
            self._next_round = r + 1
            t_post = time.monotonic()
            # 2. membership: all posted, or the deadline; the agreed record holds the posts
            agreed = self._agree(
                store,
                self._key(r, 'members'),
                range(self.world_size),
                lambda k: self._key(r, 'post', k),
                t_post + cfg.deadline_s,
                own=(mine, payload),
            )
            members = sorted(agreed)
            self._raise_hint(store, r + 1)
            if members and members[0] == self.rank:
                self._cleanup(store, r - cfg.keep_rounds)
            if self.rank not in members:
                return done(
                    'missed',
                    f'round {r} closed before this ECU posted',
                    wait_seconds=time.monotonic() - t_post,
                )
            posts = self._read_posts(store, r, agreed)
            labels = _labels(posts)
            common['metrics'] = {labels[k]: _metric(posts[k]) for k in members}
            if not info.passes:
                return done('skipped', self._fail_reason(info.metric))
            # 3. eligibility, computed alike by every member from the same posts
            eligible = _eligible(posts)
            if self.rank not in eligible:
                robots = sorted({str(posts[k].get('robot') or '?') for k in eligible})
                if eligible and cfg.robot and robots != [cfg.robot]:
                    return done('failed', f'this ECU runs robot {cfg.robot}, the fleet '
                                f'{", ".join(robots)}: policies of different robots are never '
                                'averaged')
                return done(
                    'failed',
                    "the trainable parameters (names, shapes, dtypes) differ from the fleet's",
                )
            # 4. readiness: drop members that died since posting
            group = eligible
            if len(eligible) > 1:
                ready = self._key(r, 'ready', self.rank)
                self._put(store, ready, '1')
                group = sorted(self._agree(
                    store,
                    self._key(r, 'group'),
                    eligible,
                    lambda k: self._key(r, 'ready', k),
                    time.monotonic() + cfg.ready_timeout_s,
                    own=(ready, '1'),
                ))
            if self.rank not in group:
                return done('failed', "not ready before the round's group was fixed")
            # from the posts only (each ECU's own verdict, the lowest rank's eps and cap), so
            # that every member computes the same weights even if the ECUs' configs differ
            weights = cap_weights(
                reduction_weights({k: _metric(posts[k]) for k in group}, None,
                                  _eps(posts[group[0]], cfg.eps)),
                _max_weight(posts[group[0]], cfg.max_weight),
            )
            common['participants'] = tuple(labels[k] for k in group)
            self._groups[r] = (list(group), {k: labels[k] for k in group})
            for old in [k for k in self._groups if k < r - cfg.keep_rounds]:
                del self._groups[old]
            common['weights'] = {labels[k]: w for k, w in weights.items()}
            common['wait_seconds'] = time.monotonic() - t_post
            if len(group) == 1:
                return self._result(
                    r, 'alone', 'no other eligible ECU in this round', t0, **common
                )
            # 5. reduce
            t_red = time.monotonic()
            try:
                self._allreduce(
                    store, r, group.index(self.rank), len(group), info, weights[self.rank]
                )
            except _InsaneError as e:
                # the model is vetoed for the whole fleet: a verdict no participant can pass
                veto = f'sanity check of the reduced model on {self.ecu_id}: {e}'
                self._veto(store, r, veto)
                return self._result(
                    r, 'failed', veto, t0, reduce_seconds=time.monotonic() - t_red, **common
                )
            except _COMM_ERRORS as e:
                return self._result(
                    r,
                    'failed',
                    f'all-reduce failed: {_short(e)}',
                    t0,
                    reduce_seconds=time.monotonic() - t_red,
                    **common,
                )
            return self._result(
                r,
                'reduced',
                f'weighted average of {len(group)} ECUs',
                t0,
                payload_bytes=info.payload_bytes,
                reduce_seconds=time.monotonic() - t_red,
                **common,
            )
        except _CancelledError:
            return done('failed', 'cancelled: this ECU is stopping')
        except _COMM_ERRORS as e:
            self._store = None  # reconnect (and re-read the epoch) on the next call
            return self._result(
                r, 'failed', f'rendezvous store: {_short(e)}', t0, state_bytes=info.state_bytes
            )

    def _veto(self, store: dist.TCPStore, r: int, reason: str) -> None:
        """Post this ECU's verdict on round ``r``'s model as a veto (before anybody fixes the
        verdicts: the participants are still evaluating), so every participant rejects it."""
        verdict = {'metric': None, 'frames': 0, 'episodes': 0, 'reference': None,
                   'veto': reason}
        try:
            self._put(store, self._key(r, 'verdict', self.rank), json.dumps(verdict))
        except _COMM_ERRORS as e:
            _log.warning('fleet round %d: could not post the veto (%s)', r, _short(e))

    # -- store protocol ------------------------------------------------------------------
    def _key(self, r: int, *parts: object) -> str:
        return '/'.join([self._ns, 'r', str(r), *map(str, parts)])

    @property
    def _context(self) -> str:
        return self._epoch or ''

    def _put(self, store: dist.Store, key: str, payload: str) -> None:
        """Write a sealed record."""
        store.set(key, self._fleet_key.seal(key, payload, self._context))

    def _get(self, store: dist.Store, key: str, what: str = 'a record',
             context: str | None = None) -> str | None:
        """The verified payload at ``key``; None when absent or not verified (logged)."""
        if not store.check([key]):
            return None
        raw = store.get(key)
        data = self._fleet_key.open(key, raw, self._context if context is None else context)
        if data is None:
            self._rejects.refused(key, what)
            return None
        return data.decode()

    def _slots(self, key: str) -> list[str]:
        return [key] + [f'{key}#{i}' for i in range(1, _SLOTS)]

    def _agreed(self, store: dist.Store, key: str, context: str | None = None) -> str | None:
        """The agreed value of the write-once record ``key``: its first slot that verifies
        (a slot holding a stranger's record is skipped), None when not fixed yet."""
        for slot in self._slots(key):
            if not store.check([slot]):
                return None
            value = self._get(store, slot, 'an agreed record', context)
            if value is not None:
                return value
        return None

    def _fix(self, store: dist.Store, key: str, payload: str,
             context: str | None = None) -> str:
        """Agree on ``key``: the first verified write wins (``compare_set``), so every ECU
        reads one value; slots holding a stranger's record are skipped in a fixed order."""
        ctx = self._context if context is None else context
        for slot in self._slots(key):
            raw = store.compare_set(slot, '', self._fleet_key.seal(slot, payload, ctx))
            data = self._fleet_key.open(slot, raw, ctx)
            if data is not None:
                return data.decode()
            self._rejects.refused(slot, 'an agreed record')
        raise _ForgedError(f'{_SLOTS} slots of {key} hold records that do not verify')

    def _connect(self) -> dist.TCPStore:
        cfg, rdzv = self.config, self.rendezvous
        if self._store is None:
            if cfg.host_store and self._host is None:
                self._host = RendezvousHost(rdzv.addr, rdzv.port, cfg.store_timeout_s)
            self._store = dist.TCPStore(
                rdzv.addr,
                rdzv.port,
                None,
                False,
                _td(cfg.store_timeout_s),
                wait_for_workers=False,
            )
        store = self._store
        epoch = self._fix(store, f'{self._ns}/epoch', uuid.uuid4().hex, context='')
        if epoch != self._epoch:
            if self._epoch is not None:
                _log.warning('fleet store epoch changed (store restarted): rejoining')
            self._epoch = epoch
            self._next_round = None
        return store

    def _hint(self, store: dist.Store) -> tuple[int, bytes | None]:
        """(the store's ``next`` round, its raw value or None)."""
        key = f'{self._ns}/next'
        if not store.check([key]):
            return 0, None
        raw = store.get(key)
        data = self._fleet_key.open(key, raw, self._context)
        if data is None or not data.isdigit():
            self._rejects.refused(key, 'a round hint')
            return 0, raw
        return int(data), raw

    def _target_round(self, store: dist.TCPStore) -> tuple[int, int | None]:
        """(round to post in, round missed or None)."""
        hint, _ = self._hint(store)
        own = self._next_round
        missed = None
        if own is not None and (
            own < hint or self._agreed(store, self._key(own, 'members')) is not None
        ):
            missed = own
        r = hint if own is None or missed is not None else max(own, hint)
        while self._agreed(store, self._key(r, 'members')) is not None:
            r += 1
        return r, missed

    def _raise_hint(self, store: dist.TCPStore, value: int) -> None:
        key = f'{self._ns}/next'
        want = self._fleet_key.seal(key, str(value), self._context)
        for _ in range(_SLOTS):
            current, raw = self._hint(store)
            if raw is not None and current >= value:
                return
            if raw is None:
                raw = store.compare_set(key, '', want)
                if raw == want:
                    return
                continue
            if store.compare_set(key, raw, want) == want:
                return

    def _agree(
        self,
        store: dist.TCPStore,
        key: str,
        ranks: Iterable[int],
        flag: Any,
        until: float,
        own: tuple[str, str] | None = None,
    ) -> dict[int, Any]:
        """The record agreed under ``key``, or fix it: ``{rank: its record}`` of the ranks
        whose verified ``flag`` record exists when all do or at ``until``. ``own`` (key,
        payload): this ECU's record, written again whenever it does not verify (a stranger
        overwrote it)."""
        ranks = list(ranks)
        flags = {k: flag(k) for k in ranks}
        while True:
            if self._cancel.is_set():
                raise _CancelledError
            agreed = self._agreed(store, key)
            if agreed is not None:
                return _decode_agreed(agreed)
            if own is not None and self._get(store, own[0]) != own[1]:
                self._put(store, *own)
            present = {}
            for k, f in flags.items():
                value = self._get(store, f)
                if value is not None:
                    present[k] = value
            if len(present) == len(ranks) or time.monotonic() >= until:
                record = json.dumps({str(k): json.loads(v) for k, v in sorted(present.items())},
                                    sort_keys=True)
                return _decode_agreed(self._fix(store, key, record))
            self._cancel.wait(self.config.poll_s)

    def _read_posts(
        self, store: dist.TCPStore, r: int, agreed: Mapping[int, Any]
    ) -> dict[int, dict[str, Any]]:
        """The posts of round ``r``'s members, as fixed in its membership record."""
        return {k: dict(v) for k, v in agreed.items() if isinstance(v, dict)}

    def _cleanup(self, store: dist.TCPStore, r: int) -> None:
        if r < 0:
            return
        prefix = self._key(r) + '/'
        try:
            keys = [k for k in store.list_keys() if k.startswith(prefix)]
        except (AttributeError, RuntimeError):
            keys = [s for name in ('members', 'group', 'verdicts')
                    for s in self._slots(self._key(r, name))] + [
                self._key(r, kind, k)
                for kind in ('post', 'ready', 'verdict')
                for k in range(self.world_size)
            ]
        for k in keys:
            store.delete_key(k)

    # -- communication -------------------------------------------------------------------
    def reduce_timeout(self, payload_bytes: int) -> float:
        """The all-reduce's timeout for ``payload_bytes`` (see ``reduce_timeout_s``)."""
        if self.config.reduce_timeout_s is not None:
            return float(self.config.reduce_timeout_s)
        return self.config.deadline_s + payload_bytes / (self.config.reduce_min_mb_s * 1e6)

    def _backend(self, params: Sequence[tuple[str, torch.Tensor]]) -> str:
        return choose_backend(self.config.backend, (p.device for _, p in params))

    def _process_group(self, store: dist.Store, idx: int, n: int, backend: str) -> Any:
        connect = _td(self.config.ready_timeout_s)
        if backend == 'nccl':
            pg_cls = dist.ProcessGroupNCCL  # type: ignore[attr-defined]
            opts = pg_cls.Options()
            opts.is_high_priority_stream = False
            opts._timeout = _td(self._reduce_timeout)
            return pg_cls(store, idx, n, opts)
        gloo = dist.ProcessGroupGloo
        if not os.environ.get('GLOO_SOCKET_IFNAME'):
            try:
                if self._gloo_host is None:
                    self._gloo_host = _local_address_towards(
                        self.rendezvous.addr, self.rendezvous.port
                    )
                opts = gloo._Options()
                opts._timeout = connect
                opts._devices = [gloo.create_device(hostname=self._gloo_host)]
                return gloo(store, idx, n, opts)
            except AttributeError:  # private options API missing: default device
                pass
        return gloo(store, idx, n, connect)

    def _allreduce(
        self,
        store: dist.TCPStore,
        r: int,
        idx: int,
        n: int,
        info: _LocalInfo,
        weight: float,
    ) -> None:
        backend, params = info.backend, info.params
        device = reduction_device(backend, (p.device for _, p in params))
        buffers = flatten_trainable(params, device)
        self._reduce_timeout = self.reduce_timeout(
            sum(buf.numel() * buf.element_size() for buf, _ in buffers))
        for buf, _ in buffers:
            buf.mul_(weight)
        prefix = self._key(r, 'pg')
        # the group's members exchange their addresses through the store: sealed, so that it
        # only ever connects to addresses written by holders of the fleet key
        signed = SignedStore(dist.PrefixStore(prefix, store), self._fleet_key,
                             f'{self._context}|{prefix}',
                             timeout_s=self.config.ready_timeout_s, poll_s=self.config.poll_s,
                             rejects=self._rejects)
        pg = self._process_group(signed, idx, n, backend)
        try:
            opts = dist.AllreduceOptions()
            opts.reduceOp = dist.ReduceOp.SUM
            opts.timeout = _td(self._reduce_timeout)
            for buf, _ in buffers:
                pg.allreduce([buf], opts).wait()
        finally:
            del pg
        problem = check_reduced(buffers, self.config.max_param_change)
        if problem is not None:
            raise _InsaneError(problem)
        for buf, ps in buffers:
            _write_back(buf, ps)


_SLOTS = 8
"""Slots of a write-once record: a stranger who fills them all stalls the round (logged)."""


def _decode_agreed(text: str) -> dict[int, Any]:
    data = json.loads(text)
    if not isinstance(data, dict):
        raise _ForgedError('an agreed record is not a mapping')
    return {int(k): v for k, v in data.items()}


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


class _CancelledError(Exception):
    """FleetReducer.cancel() was called while waiting."""


class _InsaneError(Exception):
    """The reduced model fails the sanity check (this ECU vetoes it, see :func:`check_reduced`)."""


class _ForgedError(RuntimeError):
    """Every slot of an agreed record holds a record that does not verify (a failed round)."""


@dataclasses.dataclass(frozen=True)
class _LocalInfo:
    params: list[tuple[str, nn.Parameter]]
    backend: str
    metric: float
    passes: bool
    signature: str
    payload_bytes: int
    state_bytes: int


def _metric(post: Mapping[str, Any]) -> float:
    m = post.get('metric')
    return float(m) if is_number(m) else math.nan


def _labels(posts: Mapping[int, Mapping[str, Any]]) -> dict[int, str]:
    """ECU ids by rank; a duplicated id gets ``@<rank>`` so labels stay unique."""
    ids = Counter(str(p.get('ecu_id')) for p in posts.values())
    return {
        k: (str(p.get('ecu_id')) if ids[str(p.get('ecu_id'))] == 1 else f'{p.get("ecu_id")}@{k}')
        for k, p in posts.items()
    }


def _eps(post: Mapping[str, Any], default: float) -> float:
    e = post.get('eps')
    return float(e) if is_number(e) and e > 0 else default


def _max_weight(post: Mapping[str, Any], default: float) -> float:
    m = post.get('max_weight')
    return float(m) if is_number(m) and 0 < m <= 1 else default


def _eligible(posts: Mapping[int, Mapping[str, Any]]) -> list[int]:
    """Ranks that passed their threshold (their own verdict, with a finite error) and have the
    majority parameter signature among them (ties: the lowest rank's)."""
    passing = sorted(
        k
        for k, p in posts.items()
        if p.get('passes') is True and passes_threshold(_metric(p), None)
    )
    if not passing:
        return []
    counts = Counter(posts[k]['signature'] for k in passing)
    best = max(counts.values())
    sig = next(posts[k]['signature'] for k in passing if counts[posts[k]['signature']] == best)
    return [k for k in passing if posts[k]['signature'] == sig]


def _short(e: BaseException) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else ''
    return f'{type(e).__name__}: {text[:200]}'
