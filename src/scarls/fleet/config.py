"""The fleet's settings and outcomes: :class:`FleetConfig` (the same on every ECU),
:class:`Rendezvous` (where the fleet meets, who this ECU is: the torchrun variables),
:class:`RoundResult` (one round as one ECU saw it) and the fleet's errors. See
:mod:`scarls.fleet.allreduce` for the round they describe.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

from scarls.common.validation import is_int, is_number
from scarls.fleet.weights import DEFAULT_EPS

__all__ = [
    'BACKENDS',
    'STATUSES',
    'FleetConfig',
    'FleetConfigError',
    'FleetError',
    'Rendezvous',
    'RoundResult',
]

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
