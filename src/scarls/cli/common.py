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


def add_param_arg(parser) -> None:
    parser.add_argument('--param', action='append', default=[], metavar='NODE.NAME=VALUE',
                        help='a ROS parameter of one node (of every ECU in a fleet), over '
                        'everything else (repeatable; VALUE is YAML, e.g. --param '
                        'learner.steps_per_round=200; {ecu} in VALUE becomes the ECU id, '
                        'e.g. --param learner.checkpoint_dir=/runs/{ecu}/checkpoints)')


ECU_FIELD = '{ecu}'     # in a --param VALUE: the ECU id of the node it is applied to
_ECU_TOKEN = 'SCARLS_ECU_FIELD_1f6e'


def _put_ecu(data, ecu: str):
    if isinstance(data, str):
        return data.replace(_ECU_TOKEN, ecu)
    if isinstance(data, list):
        return [_put_ecu(v, ecu) for v in data]
    if isinstance(data, dict):
        return {k: _put_ecu(v, ecu) for k, v in data.items()}
    return data


def with_params(specs: list, params: list[str]) -> list:
    """``NODE.NAME=VALUE`` overrides (VALUE as YAML) applied to the node specs (in a fleet: to
    that node of every ECU; ``{ecu}`` in VALUE becomes that ECU's id, its namespace)."""
    import yaml

    from scarls.bringup import NodeSpec
    extra: dict[str, dict] = {}
    for item in params:
        key, sep, value = item.partition('=')
        node, dot, name = key.partition('.')
        if not sep or not dot or not node or not name:
            raise ValueError(f'--param {item!r}: expected NODE.NAME=VALUE')
        if node not in {s.name for s in specs}:
            raise ValueError(f'--param {item!r}: no node {node!r} in this run')
        if ECU_FIELD in value and not all(s.namespace for s in specs if s.name == node):
            raise ValueError(f'--param {item!r}: {ECU_FIELD} needs an ECU id (namespace)')
        extra.setdefault(node, {})[name] = value

    def parsed(value: str, ecu: str):
        # parsed first, then the id put into its strings: an id such as `on` or `null` stays
        # text, and `{ecu}` alone is not read as a YAML mapping
        if not value:
            return ''
        return _put_ecu(yaml.safe_load(value.replace(ECU_FIELD, _ECU_TOKEN)), ecu)

    return [NodeSpec(s.name, s.module, s.namespace,
                     {**s.parameters, **{k: parsed(v, s.namespace)
                                         for k, v in extra.get(s.name, {}).items()}},
                     s.exe) for s in specs]


def add_sim_time_args(parser) -> None:
    """--rtf and --compute-fair (docs/SIM_TIME.md)."""
    from scarls.sim.clock import DEFAULT_TRAIN_STEPS_PER_S
    parser.add_argument('--rtf', type=float, default=None, metavar='X',
                        help='run the simulated robot(s) on simulated time at real-time factor '
                        'X (0.5: half speed, 2: twice; 0: as fast as the nodes keep up); '
                        '--minutes and --train-interval are then simulated (default: wall '
                        'time)')
    parser.add_argument('--compute-fair', type=float, nargs='?', default=None,
                        const=DEFAULT_TRAIN_STEPS_PER_S, metavar='STEPS_PER_S',
                        help='compute-fair lockstep (implies simulated time; --rtf defaults to '
                        '0): every learner trains STEPS_PER_S steps per simulated second of a '
                        'round and the clock waits for it (default '
                        f'{DEFAULT_TRAIN_STEPS_PER_S:g}: one learner alone on one core of the '
                        'reference host)')


def apply_sim_time(args, specs: list, robot) -> tuple[list, bool]:
    """The node specs on simulated time when --rtf or --compute-fair asks for it."""
    from scarls.bringup import sim_time_if_asked
    specs, on = sim_time_if_asked(specs, args.rtf, args.compute_fair, robot.control_rate_hz)
    if not on:
        return specs, False
    rtf = args.rtf or 0.0
    log.info('simulated time at real-time factor %s%s', f'{rtf:g}' if rtf > 0 else
             'max (as fast as the nodes keep up)',
             f', compute-fair: {args.compute_fair:g} training steps per simulated second'
             if args.compute_fair else '')
    return specs, True


def write_summary(summary: dict, path_arg: str | None) -> None:
    if not path_arg:
        return
    path = Path(path_arg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_text(json.dumps(summary, indent=2) + '\n')
    tmp.replace(path)
    log.info('summary written to %s', path)
