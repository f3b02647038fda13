"""Metric-weighted all-reduce of the fleet's trainable parameters, one round at a time.

Every ECU's learner calls :meth:`FleetReducer.reduce` after local training and the open-loop
evaluation, with its model and its error (lower is better). The fleet then averages the
trainable parameters of the ECUs whose error passes ``threshold``, weighted by
:func:`scarls.fleet.weights.reduction_weights` (normalised inverse error). Nothing is
central except the rendezvous store; no ECU ever waits for another past the configured
deadlines, and an ECU that was slow, crashed or cut off joins a later round without a fleet
restart.

Rendezvous. A :class:`torch.distributed.TCPStore` at ``MASTER_ADDR:MASTER_PORT``; ``RANK`` and
``WORLD_SIZE`` number the ECUs (the torchrun variables, read by
:meth:`~scarls.fleet.config.Rendezvous.from_env`). The store is hosted either by a small
standalone process (:func:`~scarls.fleet.rendezvous.serve_rendezvous`, e.g. run by the fleet
launcher: it holds no model and does no training) or, torchrun style, by the ECU with
``FleetConfig.host_store`` (then that ECU must stay up: when it restarts, the others
resynchronise, see *Epoch*). Under torchrun with its agent store
(``TORCHELASTIC_USE_AGENT_STORE=True``), the ECUs just connect to it. All keys live under
``FleetConfig.namespace``. The store listens on its address only
(:class:`~scarls.fleet.rendezvous.RendezvousHost`).

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
   ``PrefixStore('r/<r>/pg', store)`` with its index in the group
   (:func:`~scarls.fleet.params.choose_backend`: Gloo for CPU parameters, NCCL when they live
   on CUDA and torch has NCCL; the buffers are built on the backend's device,
   :func:`~scarls.fleet.params.reduction_device` - the parameters' GPU for NCCL, the CPU for
   Gloo - and written back to wherever each parameter lives). The trainable parameters
   (``requires_grad``) are flattened into one contiguous buffer per reduction dtype (float64
   stays float64, every other floating dtype is reduced in float32), scaled by the ECU's
   weight, summed with one all-reduce and written back. Frozen parameters and buffers never
   travel. Before the result is written back, each member checks it
   (:func:`~scarls.fleet.params.check_reduced`): finite, and within ``max_param_change`` of its
   own parameters (relative norm). A member whose check fails keeps its parameters
   (``'failed'``) and posts a veto as its verdict, so no participant deploys the model.
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

import dataclasses
import json
import logging
import math
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from scarls.common.validation import is_number
from scarls.fleet.auth import KEY_FILE_ENV, FleetKey, RejectLog, SignedStore
from scarls.fleet.config import FleetConfig, FleetConfigError, Rendezvous, RoundResult
from scarls.fleet.params import (
    _reduce_dtype,
    _write_back,
    check_reduced,
    choose_backend,
    flatten_trainable,
    parameter_signature,
    reduction_device,
    state_bytes,
    trainable_parameters,
)
from scarls.fleet.rendezvous import RendezvousHost, _local_address_towards, _td
from scarls.fleet.weights import cap_weights, passes_threshold, reduction_weights

__all__ = ['FleetReducer']


_log = logging.getLogger(__name__)


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
