"""The fleet's rendezvous store: a :class:`torch.distributed.TCPStore` hosted on one address
(:class:`RendezvousHost`, :func:`serve_rendezvous`; ``python -m scarls.fleet rendezvous``
runs one alone) and the helpers that open its socket. The store holds no model. See
:mod:`scarls.fleet.allreduce` for what the ECUs write into it.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import socket

import torch.distributed as dist

from scarls.fleet.config import FleetError

__all__ = [
    'RendezvousHost',
    'listen_socket',
    'serve_rendezvous',
]


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
