"""`scarls keys init | trust | list | sign`: checkpoint signing keys and the trust list.

Keys live in a key directory (see :mod:`scarls.checkpoints.signing`): ``--key-dir DIR``, else
``$SCARLS_KEY_DIR``, else ``<--data-root>/keys`` (default ``data/keys``, where ``scarls ecu``
keeps them). ``init`` creates this host's learner key for an ECU and trusts it; ``trust FILE``
adds the public keys of a ``.pub`` file (another workstation's learner) to the trust list;
``list`` shows the key ids; ``sign FILE`` signs a checkpoint file by hand (e.g. one trained
elsewhere, given to the actor's ``checkpoint`` parameter).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

log = logging.getLogger('scarls')


def register(sub) -> None:
    """Add `scarls keys ...` to the top-level parser."""
    keys = sub.add_parser(
        'keys', help='checkpoint signing keys and the trust list',
        description='Ed25519 keys that sign checkpoints and deploy records, and the trust list '
        'of the keys an ECU accepts (docs/SECURITY.md).')
    ksub = keys.add_subparsers(dest='keys_command', required=True)

    def key_dir_args(p) -> None:
        p.add_argument('--key-dir', default='',
                       help='key directory (default $SCARLS_KEY_DIR, else <data-root>/keys)')
        p.add_argument('--data-root', default='data', help='data root (default ./data)')

    init = ksub.add_parser('init', help="create this host's learner key and trust it")
    key_dir_args(init)
    init.add_argument('--ecu-id', default='ecu0',
                      help='the ECU whose learner signs with it (default ecu0)')
    init.set_defaults(func=cmd_init)
    trust = ksub.add_parser('trust', help='trust the public key(s) of a .pub file')
    key_dir_args(trust)
    trust.add_argument('pubkey_file', help='a .pub file (one "scarls-ed25519 ..." line each)')
    trust.set_defaults(func=cmd_trust)
    ls = ksub.add_parser('list', help='this directory\'s keys and the trusted key ids')
    key_dir_args(ls)
    ls.set_defaults(func=cmd_list)
    sign = ksub.add_parser('sign', help='sign a checkpoint file in place with a learner key')
    key_dir_args(sign)
    sign.add_argument('checkpoint', help='the safetensors checkpoint to sign')
    sign.add_argument('--ecu-id', default='ecu0', help='whose learner key (default ecu0)')
    sign.add_argument('--robot', default='sim_dual6',
                      help='robot description it is for (name or YAML file; default sim_dual6)')
    sign.set_defaults(func=cmd_sign)


def _dir(args) -> Path:
    from scarls.checkpoints.signing import resolve_key_dir
    return resolve_key_dir(args.key_dir, args.data_root)


def cmd_init(args) -> int:
    from scarls.checkpoints.signing import KeyStoreError, ensure_key, learner_key_name
    directory = _dir(args)
    try:
        signer = ensure_key(directory, learner_key_name(args.ecu_id))
    except KeyStoreError as exc:
        log.error('error: %s', exc)
        return 1
    print(f'learner key of {args.ecu_id}: {signer.key_id}')
    print(f'  private: {directory / (signer.name + ".key")} (keep it on this host)')
    print(f'  public:  {directory / (signer.name + ".pub")} (copy it to the robot computer '
          'and run `scarls keys trust FILE` there)')
    return 0


def cmd_trust(args) -> int:
    from scarls.checkpoints.signing import (
        TRUST_FILE,
        KeyStoreError,
        TrustList,
        parse_public_key,
    )
    trust = TrustList(_dir(args) / TRUST_FILE)
    try:
        lines = [ln for ln in Path(args.pubkey_file).read_text().splitlines()
                 if ln.strip() and not ln.lstrip().startswith('#')]
        keys = [parse_public_key(ln) for ln in lines]
    except (OSError, KeyStoreError) as exc:
        log.error('error: %s', exc)
        return 1
    if not keys:
        log.error('error: %s holds no public key', args.pubkey_file)
        return 1
    for key in keys:
        added = trust.add(key)
        print(f'{key.key_id} {key.comment or ""}: '
              f'{"trusted" if added else "already trusted"} in {trust.path}')
    return 0


def cmd_list(args) -> int:
    from scarls.checkpoints.signing import TRUST_FILE, KeyStoreError, Signer, TrustList
    directory = _dir(args)
    print(f'key directory {directory}')
    own = sorted(directory.glob('*.key')) if directory.is_dir() else []
    for path in own:
        try:
            signer = Signer.load(path)
            print(f'  key     {signer.key_id}  {path.name}')
        except KeyStoreError as exc:
            print(f'  key     ?                 {path.name}: {exc}')
    try:
        trusted = TrustList(directory / TRUST_FILE).keys()
    except KeyStoreError as exc:
        log.error('error: %s', exc)
        return 1
    for kid, key in sorted(trusted.items()):
        print(f'  trusted {kid}  {key.comment}')
    if not own and not trusted:
        print('  (no keys: `scarls keys init` creates one)')
    return 0


def cmd_sign(args) -> int:
    from scarls.checkpoints.format import (
        CheckpointRejected,
        _write_atomic,
        sign_checkpoint_bytes,
    )
    from scarls.checkpoints.signing import KeyStoreError, Signer, learner_key_name
    from scarls.robot import RobotDescriptionError, load_robot
    path = Path(args.checkpoint)
    try:
        signer = Signer.load(_dir(args) / f'{learner_key_name(args.ecu_id)}.key')
        robot = load_robot(args.robot)
        data = sign_checkpoint_bytes(path.read_bytes(), signer, robot.hash)
    except (OSError, KeyStoreError, CheckpointRejected, RobotDescriptionError) as exc:
        log.error('error: %s', exc)
        return 1
    _write_atomic(path, data)
    print(f'{path}: signed by {signer.key_id} for robot {robot.name} ({robot.hash})')
    return 0


if __name__ == '__main__':
    from scarls.cli import main
    sys.exit(main(['keys', *sys.argv[1:]]))
