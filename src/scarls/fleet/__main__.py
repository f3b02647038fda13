"""`python -m scarls.fleet rendezvous --addr A --port P`: host a fleet's rendezvous store.

The only central piece of a fleet: a torch.distributed TCPStore that the learners reach at
MASTER_ADDR:MASTER_PORT. It holds a few small keys per round and no model; it runs until
SIGINT/SIGTERM. `scarls fleet` hosts it in its own process; on a real multi-host deployment run
this on one machine (see docs/FLEET.md).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog='python -m scarls.fleet', description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest='command', required=True)
    rdv = sub.add_parser('rendezvous', help='host the rendezvous store until stopped')
    rdv.add_argument('--addr', default='127.0.0.1',
                     help='address the ECUs use to reach it (it listens on every interface)')
    rdv.add_argument('--port', type=int, default=29500, help='TCP port (default 29500)')
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    from scarls.fleet import serve_rendezvous

    try:
        host = serve_rendezvous(args.addr, args.port)
    except (RuntimeError, OSError) as exc:
        logging.error('cannot host the rendezvous store on port %d: %s', args.port, exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    logging.info('fleet rendezvous store listening on port %d (MASTER_ADDR=%s MASTER_PORT=%d)',
                 host.port, host.addr, host.port)
    stop.wait()
    host.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
