"""`scarls`: the command line of the project, one module of this package per command
(``scarls.cli.<command>``, whose ``register(sub)`` adds its parser; ``common`` holds what they
share), as ros2cli has one per verb.

  scarls ecu     run one simulated ECU (driver, actor, teleop, scheduler - and with --learn
                 the online learner - as separate ROS 2 processes talking over DDS) for some
                 episodes or minutes, print what happened, write a JSON summary.
  scarls demos   write scripted-expert demonstrations (the offline buffer the learner starts
                 from) as ordinary Zarr episodes.
  scarls fleet   run N simulated ECUs that learn one policy (weighted all-reduce of their
                 parameters after each local round, a selector before every deploy).
  scarls status  the ECUs of a ROS domain at a glance (phase, episodes, rates, versions,
                 fleet rounds) from their heartbeats.
  scarls dataset info | stats | validate | delete | merge | repair | import-lerobot over a
                 data root (see `scarls dataset -h`).
  scarls bag record | play | info | repair | to-zarr   rosbag2 bags (MCAP or sqlite3) of an
                 ECU's topics, compatible with `ros2 bag` (see `scarls bag -h`).
  scarls dashboard  a live web page of every ECU of a ROS domain (phases, rates, cameras,
                 learner loss and metric, checkpoint lineage, fleet rounds, latencies).
  scarls robot list | show | check   robot descriptions (config/robots or your own YAML file);
                 `check` validates one, connects and reports joint-state and camera rates,
                 stamp ages, skew and limits without moving the robot.
  scarls replay-check  replay recorded episodes through a candidate checkpoint open-loop and
                 report how its actions differ from the logged ones (and from a baseline
                 checkpoint's), per episode, phase and joint group; exit 1 on a regression
                 with --fail-on-regression.
  scarls keys init | trust | list | sign | revoke | rotate   checkpoint signing keys, the
                 trust list and the revocation list;
  scarls deploy  make an approved checkpoint version the deployed one (rollback).
"""

from __future__ import annotations

import argparse
import logging

from scarls import __version__
from scarls.bringup import BringupError

log = logging.getLogger('scarls')


def build_parser() -> argparse.ArgumentParser:
    """The `scarls` parser: one sub-command per module of this package (their ``register``),
    plus `dashboard` and `foxglove`, whose rooms also run them as nodes and keep their parsers."""
    parser = argparse.ArgumentParser(prog='scarls', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version', version=f'scarls {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)
    from scarls.cli import demos, deploy, ecu, fleet, keys, robot, status
    for command in (ecu, demos, fleet, status):
        command.register(sub)
    from scarls.cli.dataset import add_dataset_parser
    add_dataset_parser(sub)
    from scarls.cli.replay_check import register as add_replay_check_parser
    add_replay_check_parser(sub)
    from scarls.cli.bag import register as add_bag_parser
    add_bag_parser(sub)
    from scarls.dashboard import register as add_dashboard_parser
    add_dashboard_parser(sub)
    from scarls.foxglove import register as add_foxglove_parser
    add_foxglove_parser(sub)
    robot.register(sub)
    keys.register(sub)
    deploy.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if getattr(args, 'verbose', False) else logging.INFO,
                        format='%(message)s')
    try:
        return args.func(args)
    except BringupError as exc:
        log.error('error: %s', exc)
        return 2
