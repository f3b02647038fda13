"""`python -m scarls.fleet rendezvous|keygen`: host a fleet's rendezvous store, make its key.

rendezvous --addr A --port P
    The only central piece of a fleet: a torch.distributed TCPStore that the learners reach at
    MASTER_ADDR:MASTER_PORT. It listens on address A only (default 127.0.0.1; 0.0.0.0 for
    every interface) and holds a few small records per round, no model; it runs until
    SIGINT/SIGTERM. It needs no key: the learners seal every record they write with the
    fleet's key and ignore records that do not verify. `scarls fleet` hosts it in its own
    process; on a real multi-host deployment run this on one machine (see docs/FLEET.md).

keygen FILE
    Write a new random fleet key to FILE (hex, mode 600). Copy it to every learner host and
    point the learners at it (learner parameter fleet_key_file, or SCARLS_FLEET_KEY_FILE).
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
                     help='address to listen on, the one the ECUs use to reach it '
                     '(default 127.0.0.1: this host only; 0.0.0.0: every interface)')
    rdv.add_argument('--port', type=int, default=29500, help='TCP port (default 29500)')
    gen = sub.add_parser('keygen', help='write a new fleet key file (mode 600)')
    gen.add_argument('file', help='where to write the key (replaced if it exists)')
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format='%(message)s')
    if args.command == 'keygen':
        from scarls.fleet.auth import write_key_file

        try:
            key = write_key_file(args.file)
        except OSError as exc:
            logging.error('cannot write the fleet key to %s: %s', args.file, exc)
            return 2
        logging.info('fleet key %s written to %s (keep it secret; give it to every learner)',
                     key.key_id, args.file)
        return 0
    from scarls.fleet import serve_rendezvous

    try:
        host = serve_rendezvous(args.addr, args.port)
    except (RuntimeError, OSError) as exc:
        logging.error('cannot host the rendezvous store on %s:%d: %s', args.addr, args.port,
                      exc)
        return 2
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    logging.info('fleet rendezvous store listening on %s:%d (MASTER_ADDR=%s MASTER_PORT=%d)',
                 host.addr, host.port, host.addr, host.port)
    stop.wait()
    host.close()
    return 0


if __name__ == '__main__':
    sys.exit(main())
