"""`scarls demos`: write scripted-expert demonstrations (the offline buffer the learner starts
from) as ordinary Zarr episodes; `scarls ecu --learn` and `scarls fleet` write them the same way
when there are none."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from scarls.bringup import BringupError
from scarls.cli.common import ROBOT_HELP, positive_int, robot_from_args

log = logging.getLogger('scarls')


def register(sub) -> None:
    """Add `scarls demos` to the top-level parser."""
    demos = sub.add_parser('demos', help='write scripted-expert demonstrations',
                           description='Write N scripted-expert demonstrations of a task as Zarr '
                           'episodes (the offline buffer of the learner).')
    demos.add_argument('-n', '--episodes', type=positive_int, default=20)
    demos.add_argument('--task', default='pick_cube')
    demos.add_argument('--root', default='data/offline', help='default data/offline')
    demos.add_argument('--robot', default='sim_dual6', help=ROBOT_HELP + '; a simulated one')
    demos.add_argument('--height', type=int, default=None)
    demos.add_argument('--width', type=int, default=None)
    demos.add_argument('--seed', type=int, default=10_000)
    demos.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    demos.set_defaults(func=cmd_demos)


def check_demos_robot(root: Path, task: str, robot) -> None:
    """Refuse demonstrations recorded for another robot (different joints)."""
    from scarls.episodes import list_episodes
    from scarls.episodes.schema import EpisodeMeta
    entries = list_episodes(root, task)
    if not entries:
        return
    meta = EpisodeMeta.load(entries[0].meta_path)
    theirs = meta.extra.get('robot', {}).get('joint_names')
    width = meta.shapes.get('action', [0, 0])[-1]
    if (theirs and list(theirs) != list(robot.joint_names)) or width != robot.num_joints:
        name = meta.extra.get('robot', {}).get('name', f'a {width}-joint robot')
        raise BringupError(
            f'the demonstrations under {root / task} are of {name}, not {robot.name!r}; use '
            'another --data-root for this robot (demonstrations are written there)')


def write_demos(root: Path, task: str, n: int, shape: tuple[int, int], seed: int,
                 robot=None) -> None:
    from scarls.learner.demos import generate_demos
    t0 = time.monotonic()
    refs = generate_demos(root, task, n, seed=seed, image_shape=shape, robot=robot)
    ok = sum(1 for r in refs if r.meta_path is not None)
    log.info('%d demonstrations written to %s in %.1f s', ok, root / task, time.monotonic() - t0)


def cmd_demos(args) -> int:
    robot = robot_from_args(args)
    root = Path(args.root).expanduser().resolve()
    check_demos_robot(root, args.task, robot)
    write_demos(root, args.task, args.episodes, robot.image_shape, args.seed, robot)
    return 0
