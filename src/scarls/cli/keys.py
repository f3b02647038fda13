"""`scarls keys init | trust | list | sign | revoke | rotate`: signing keys, trust and revocation.

Keys live in a key directory (see :mod:`scarls.checkpoints.signing`): ``--key-dir DIR``, else
``$SCARLS_KEY_DIR``, else ``<--data-root>/keys`` (default ``data/keys``, where ``scarls ecu``
keeps them). ``init`` creates this host's learner key for an ECU and trusts it; ``trust FILE``
adds the public keys of a ``.pub`` file (another workstation's learner) to the trust list;
``list`` shows the key ids; ``sign FILE`` signs a checkpoint file by hand (e.g. one trained
elsewhere, given to the actor's ``checkpoint`` parameter); ``revoke KEY`` puts a key on the
revocation list (nothing it signed is accepted here any more, and it cannot be trusted again);
``rotate`` replaces this host's learner key with a new one and revokes the old one.
"""

from __future__ import annotations

import logging
import re
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
        p.add_argument('--trust-file', default='',
                       help='the trust list to read and write (default <key-dir>/trusted_keys; '
                       'the revocation list is the revoked_keys file next to it) - the file a '
                       "node's trust_file parameter names")

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
    revoke = ksub.add_parser(
        'revoke', help='revoke a key: nothing it signed is accepted here any more',
        description='Add a key to the revocation list of this key directory and remove it '
        'from the trust list. Running nodes refuse it from their next check (no restart); an '
        'actor running a checkpoint signed by it refuses the next START until a checkpoint '
        'signed by a trusted key is deployed. Run it on every host that trusts the key.')
    key_dir_args(revoke)
    revoke.add_argument('key', help='key id (16 hex digits, see `scarls keys list`) or a .pub '
                        'file')
    revoke.add_argument('--reason', default='', help='why (kept in the revocation list)')
    revoke.set_defaults(func=cmd_revoke)
    rotate = ksub.add_parser(
        'rotate', help="replace this host's learner key with a new one, revoking the old",
        description='Move the learner key aside, create a new one (trusted here) and revoke '
        'the old one here. Then restart this workstation\'s learner and scheduler, and on every '
        'robot computer that trusted the old key: `scarls keys trust NEW.pub` and `scarls keys '
        'revoke OLD_ID`.')
    key_dir_args(rotate)
    rotate.add_argument('--ecu-id', default='ecu0', help='whose learner key (default ecu0)')
    rotate.add_argument('--reason', default='rotated', help='why (kept in the revocation list)')
    rotate.set_defaults(func=cmd_rotate)


def _dir(args) -> Path:
    from scarls.checkpoints.signing import resolve_key_dir
    return resolve_key_dir(args.key_dir, args.data_root)


def _trust_file(args) -> Path:
    from scarls.checkpoints.signing import TRUST_FILE
    return Path(args.trust_file) if args.trust_file else _dir(args) / TRUST_FILE


def _trust(args):
    from scarls.checkpoints.signing import TrustList
    return TrustList(_trust_file(args))


def cmd_init(args) -> int:
    from scarls.checkpoints.signing import KeyStoreError, ensure_key, learner_key_name
    directory = _dir(args)
    try:
        signer = ensure_key(directory, learner_key_name(args.ecu_id),
                            trust_file=_trust_file(args))
    except KeyStoreError as exc:
        log.error('error: %s', exc)
        return 1
    print(f'learner key of {args.ecu_id}: {signer.key_id}')
    print(f'  private: {directory / (signer.name + ".key")} (keep it on this host)')
    print(f'  public:  {directory / (signer.name + ".pub")} (copy it to the robot computer '
          'and run `scarls keys trust FILE` there)')
    return 0


def cmd_trust(args) -> int:
    from scarls.checkpoints.signing import KeyStoreError, read_public_keys
    trust = _trust(args)
    try:
        keys = read_public_keys(args.pubkey_file)
    except KeyStoreError as exc:
        log.error('error: %s', exc)
        return 1
    if not keys:
        log.error('error: %s holds no public key', args.pubkey_file)
        return 1
    for key in keys:
        try:
            added = trust.add(key)
        except (OSError, KeyStoreError) as exc:
            log.error('error: %s', exc)
            return 1
        print(f'{key.key_id} {key.comment or ""}: '
              f'{"trusted" if added else "already trusted"} in {trust.path}')
    return 0


def cmd_list(args) -> int:
    from scarls.checkpoints.signing import KeyStoreError, Signer
    directory = _dir(args)
    print(f'key directory {directory}')
    trust = _trust(args)
    try:
        trusted, revoked = trust.keys(), trust.revoked()
    except KeyStoreError as exc:
        log.error('error: %s', exc)
        return 1
    own = sorted(directory.glob('*.key')) if directory.is_dir() else []
    for path in own:
        try:
            signer = Signer.load(path)
            mark = '  (REVOKED: `scarls keys rotate`)' if signer.key_id in revoked else ''
            print(f'  key     {signer.key_id}  {path.name}{mark}')
        except KeyStoreError as exc:
            print(f'  key     ?                 {path.name}: {exc}')
    for kid, key in sorted(trusted.items()):
        print(f'  trusted {kid}  {key.comment}')
    for kid, entry in sorted(revoked.items()):
        print(f'  revoked {kid}  {entry}')
    if not own and not trusted:
        print('  (no keys: `scarls keys init` creates one)')
    return 0


def cmd_sign(args) -> int:
    from scarls.checkpoints.format import (
        CheckpointRejected,
        _write_atomic,
        sign_checkpoint_bytes,
    )
    from scarls.checkpoints.registry import INDEX_NAME, CheckpointRegistry, RegistryError
    from scarls.checkpoints.signing import (
        KeyStoreError,
        Signer,
        learner_key_name,
    )
    from scarls.robot import RobotDescriptionError, load_robot
    path = Path(args.checkpoint)
    version = re.fullmatch(r'v(\d+)\.safetensors', path.name)
    in_registry = version is not None and (path.parent / INDEX_NAME).is_file()
    try:
        signer = _trust(args).refuse_revoked(
            Signer.load(_dir(args) / f'{learner_key_name(args.ecu_id)}.key'))
        robot = load_robot(args.robot)
        if in_registry:
            # through the registry, so its index records the new file's sha256 (stop the
            # learner that writes this registry first: one process writes a registry)
            registry = CheckpointRegistry(path.parent, keep_last=1 << 30, keep_records=1 << 30,
                                          signer=signer, robot=robot.hash)
            registry.resign(int(version.group(1)))
        else:
            data = sign_checkpoint_bytes(path.read_bytes(), signer, robot.hash)
    except (OSError, KeyStoreError, CheckpointRejected, RobotDescriptionError,
            RegistryError) as exc:
        log.error('error: %s', exc)
        return 1
    if not in_registry:
        _write_atomic(path, data)
    print(f'{path}: signed by {signer.key_id} for robot {robot.name} ({robot.hash})'
          + (' and its registry index updated' if in_registry else ''))
    return 0


def cmd_revoke(args) -> int:
    from scarls.checkpoints.signing import KeyStoreError, read_public_keys
    trust = _trust(args)
    try:
        if Path(args.key).is_file():
            kids = [pk.key_id for pk in read_public_keys(args.key)]
            if not kids:
                raise KeyStoreError(f'{args.key} holds no public key')
        else:
            kids = [args.key]
        for kid in kids:
            newly, removed = trust.revoke(kid, args.reason)
            print(f'{kid.lower()}: {"revoked" if newly else "already revoked"} in '
                  f'{trust.revoked_path}'
                  + (f'; removed from {trust.path}' if removed else ''))
    except (OSError, KeyStoreError) as exc:
        log.error('error: %s', exc)
        return 1
    print('nodes using this key directory refuse it from their next check; revoke it on '
          'every other host that trusts it too')
    return 0


def cmd_rotate(args) -> int:
    from scarls.checkpoints.signing import (
        KeyStoreError,
        Signer,
        ensure_key,
        learner_key_name,
        read_public_keys,
    )
    directory = _dir(args)
    name = learner_key_name(args.ecu_id)
    old_key, old_pub = directory / f'{name}.key', directory / f'{name}.pub'
    trust = _trust(args)
    try:
        # every key the old files name (the private key, and a .pub that may not match it)
        old_ids = []
        if old_key.exists():
            old_ids.append(Signer.load(old_key).key_id)
        if old_pub.exists():
            old_ids += [pk.key_id for pk in read_public_keys(old_pub)]
        old_ids = list(dict.fromkeys(old_ids))
        # revoked first: if anything below fails, the old key is refused already
        for kid in old_ids:
            trust.revoke(kid, args.reason)
        for path in (old_key, old_pub):   # kept for the record, out of the key's name
            if path.exists():
                path.rename(path.with_name(f'{path.name}.revoked-{old_ids[0]}'))
        new = ensure_key(directory, name, trust_file=_trust_file(args))
    except (OSError, KeyStoreError) as exc:
        log.error('error: %s', exc)
        return 1
    if not old_ids:
        print(f'no learner key of {args.ecu_id} in {directory}: created {new.key_id}')
        return 0
    old = ', '.join(old_ids)
    print(f'learner key of {args.ecu_id}: {old} -> {new.key_id} (revoked here, the old files '
          f'renamed *.revoked-{old_ids[0]})')
    print(f'  1. restart this workstation\'s learner and scheduler of {args.ecu_id}')
    print(f'  2. on every robot computer that trusted {old}: copy {old_pub} and run '
          f'`scarls keys trust {old_pub.name}` and `scarls keys revoke {old_ids[0]}`')
    print('  checkpoints signed by the old key are refused from now on, and the learner does '
          'not resume from one: to keep one you have checked, `scarls keys sign FILE`')
    return 0


if __name__ == '__main__':
    from scarls.cli import main
    sys.exit(main(['keys', *sys.argv[1:]]))
