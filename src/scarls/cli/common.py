"""What the commands of `scarls` share: the --robot help and its robot, image-size overrides, the
dashboard process of --dashboard, the JSON summary."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from scarls.bringup import BringupError, NodeSpec

log = logging.getLogger('scarls')
ROBOT_HELP = ('robot description: a built-in name (sim_dual6, sim_dual7, arx5_pair, agibot_g1) '
              'or a YAML file (default sim_dual6)')


def positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError('must be >= 0')
    return value


def robot_from_args(args):
    """The robot of --robot with --height/--width applied; BringupError when invalid."""
    from scarls.robot import RobotDescriptionError, load_robot
    try:
        robot = load_robot(args.robot)
        if args.height is not None or args.width is not None:
            h, w = robot.image_shape
            robot = robot.with_image_shape(args.height or h, args.width or w)
    except RobotDescriptionError as exc:
        raise BringupError(str(exc)) from exc
    return robot


def image_overrides(args) -> dict:
    if args.height is None and args.width is None:
        return {}
    robot = robot_from_args(args)
    return {'image_height': robot.image_shape[0], 'image_width': robot.image_shape[1]}


def dashboard_specs(args) -> list:
    """The dashboard process of --dashboard PORT (one for the whole run, root namespace)."""
    if args.dashboard is None:
        return []
    log.info('dashboard on http://127.0.0.1:%d (when the port is free; see its log)',
             args.dashboard)
    return [NodeSpec('dashboard', 'scarls.dashboard', '', {'port': int(args.dashboard)})]


def write_summary(summary: dict, path_arg: str | None) -> None:
    if not path_arg:
        return
    path = Path(path_arg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_text(json.dumps(summary, indent=2) + '\n')
    tmp.replace(path)
    log.info('summary written to %s', path)
