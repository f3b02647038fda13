"""`scarls`: the command line of the project.

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
  scarls keys init | trust | list | sign   checkpoint signing keys and the trust list;
  scarls deploy  make an approved checkpoint version the deployed one (rollback).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from scarls import __version__
from scarls.bringup import BringupError, default_params_file, ecu_nodes, fleet_nodes

log = logging.getLogger('scarls')
ROBOT_HELP = ('robot description: a built-in name (sim_dual6, sim_dual7, arx5_pair, agibot_g1) '
              'or a YAML file (default sim_dual6)')


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError('must be >= 0')
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='scarls', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--version', action='version', version=f'scarls {__version__}')
    sub = parser.add_subparsers(dest='command', required=True)
    ecu = sub.add_parser('ecu', help='run one simulated ECU in closed loop',
                         description='Run one ECU (driver, actor, teleop, scheduler) as separate '
                         'ROS 2 processes; the scripted expert plays the human.')
    ecu.add_argument('--episodes', type=_positive_int, default=3,
                     help='episodes to record (0 = until --minutes runs out; default 3)')
    ecu.add_argument('--minutes', type=float, default=None,
                     help='stop after this many minutes even if episodes remain')
    ecu.add_argument('--task', default='pick_cube', help='task (default pick_cube)')
    ecu.add_argument('--data-root', default='data', help='episode folder (default ./data)')
    ecu.add_argument('--summary', default=None, help='write a JSON summary to this file')
    ecu.add_argument('--ecu-id', default='ecu0', help='ECU id and ROS namespace (default ecu0)')
    ecu.add_argument('--robot', default='sim_dual6', help=ROBOT_HELP)
    ecu.add_argument('--height', type=int, default=None,
                     help="camera height px (default: the robot's, 96)")
    ecu.add_argument('--width', type=int, default=None,
                     help="camera width px (default: the robot's, 128)")
    ecu.add_argument('--seed', type=int, default=0, help='scene/policy seed (default 0)')
    ecu.add_argument('--policy', default='mlp', help='policy to start from (default mlp)')
    ecu.add_argument('--checkpoint', default='', help='start from this checkpoint file')
    ecu.add_argument('--max-steps', type=int, default=300, help='episode budget in steps')
    ecu.add_argument('--image-codec', default='lz4', help='image codec (lz4, jpeg, ...)')
    ecu.add_argument('--params-file', default=None, help='ROS parameters YAML')
    ecu.add_argument('--domain-id', type=int, default=None,
                     help='ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID, else a random free-ish id)')
    ecu.add_argument('--network', action='store_true',
                     help='discover beyond localhost (default: this host only)')
    ecu.add_argument('--log-dir', default=None, help='node logs (default <data-root>/logs/<time>)')
    ecu.add_argument('--dashboard', type=int, default=None, metavar='PORT',
                     help='also serve the live web dashboard on http://127.0.0.1:PORT')
    ecu.add_argument('--learn', action='store_true',
                     help='run the online learner too (demonstrations are generated under '
                     '<data-root>/offline first if there are none)')
    ecu.add_argument('--demos', type=int, default=20,
                     help='demonstrations to generate for --learn when none exist (default 20)')
    ecu.add_argument('--train-interval', type=float, default=10.0,
                     help='T_interval: minimum seconds between training rounds (default 10)')
    ecu.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    ecu.set_defaults(func=cmd_ecu)
    demos = sub.add_parser('demos', help='write scripted-expert demonstrations',
                           description='Write N scripted-expert demonstrations of a task as Zarr '
                           'episodes (the offline buffer of the learner).')
    demos.add_argument('-n', '--episodes', type=_positive_int, default=20)
    demos.add_argument('--task', default='pick_cube')
    demos.add_argument('--root', default='data/offline', help='default data/offline')
    demos.add_argument('--robot', default='sim_dual6', help=ROBOT_HELP + '; a simulated one')
    demos.add_argument('--height', type=int, default=None)
    demos.add_argument('--width', type=int, default=None)
    demos.add_argument('--seed', type=int, default=10_000)
    demos.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    demos.set_defaults(func=cmd_demos)
    fleet = sub.add_parser(
        'fleet', help='run N simulated ECUs that learn one policy together',
        description='Run N complete simulated ECUs (driver, scheduler, actor, teleop, learner '
        'each, one ROS namespace and data folder per ECU, each on its own scenes) on this '
        'machine. After every local training round the learners average their parameters '
        'weighted by their open-loop errors (torch.distributed all-reduce; this process hosts '
        'the rendezvous store and nothing else) and deploy the result only if it passes the '
        'checkpoint selector.')
    fleet.add_argument('--ecus', type=_positive_int, default=2, help='number of ECUs (default 2)')
    fleet.add_argument('--minutes', type=float, default=10.0, help='run time (default 10)')
    fleet.add_argument('--episodes', type=int, default=0,
                       help='stop once every ECU saved this many episodes (0 = run --minutes)')
    fleet.add_argument('--data-root', default='data/fleet',
                       help='root of the fleet (default ./data/fleet): <root>/ecu<i>/, '
                       '<root>/offline/')
    fleet.add_argument('--summary', default=None, help='write a JSON summary to this file')
    fleet.add_argument('--task', default='pick_cube')
    fleet.add_argument('--robot', default='sim_dual6', help=ROBOT_HELP)
    fleet.add_argument('--height', type=int, default=None)
    fleet.add_argument('--width', type=int, default=None)
    fleet.add_argument('--max-steps', type=int, default=300, help='episode budget in steps')
    fleet.add_argument('--seed', type=int, default=0,
                       help='ECU i uses scene seed SEED + 1000 i (default 0)')
    fleet.add_argument('--demos', type=int, default=20,
                       help='demonstrations to generate when <root>/offline has none')
    fleet.add_argument('--train-interval', type=float, default=10.0,
                       help='least seconds between training rounds of one ECU (default 10)')
    fleet.add_argument('--deadline', type=float, default=30.0,
                       help='longest wait of a learner for the others in a round (default 30 s)')
    fleet.add_argument('--rendezvous', default='127.0.0.1:0', metavar='ADDR:PORT',
                       help='where to host the rendezvous store: it listens on ADDR only '
                       '(default 127.0.0.1, free port)')
    fleet.add_argument('--key-file', default=None, metavar='FILE',
                       help="the fleet's key (hex, see `python -m scarls.fleet keygen`) that "
                       'authenticates every record of the rendezvous store; default: a new key '
                       'for this run, in a private temporary folder removed at the end')
    fleet.add_argument('--params-file', default=None, help='ROS parameters YAML')
    fleet.add_argument('--domain-id', type=int, default=None)
    fleet.add_argument('--network', action='store_true',
                       help='allow DDS discovery beyond this host')
    fleet.add_argument('--log-dir', default=None)
    fleet.add_argument('--dashboard', type=int, default=None, metavar='PORT',
                       help='also serve the live web dashboard of the fleet on '
                       'http://127.0.0.1:PORT')
    fleet.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    fleet.set_defaults(func=cmd_fleet)
    status = sub.add_parser('status', help='the ECUs of a ROS domain at a glance',
                            description='Listen to the ECUs\' heartbeats (/fleet/status) and '
                            'fleet rounds (/fleet/rounds) and print one line per ECU.')
    status.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID of the fleet (default: the environment\'s)')
    status.add_argument('--network', action='store_true',
                        help='also discover ECUs on other hosts')
    status.add_argument('--seconds', type=float, default=3.0, help='listen this long (3)')
    status.add_argument('--watch', action='store_true', help='refresh every second until Ctrl-C')
    status.add_argument('--json', action='store_true', help='print JSON')
    status.set_defaults(func=cmd_status)
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
    from scarls.robot_check.probe import register as add_robot_parser
    add_robot_parser(sub)
    from scarls.checkpoints.cli import register as add_checkpoint_parsers  # keys, deploy
    add_checkpoint_parsers(sub)
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


def _robot(args):
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


def _image_overrides(args) -> dict:
    if args.height is None and args.width is None:
        return {}
    robot = _robot(args)
    return {'image_height': robot.image_shape[0], 'image_width': robot.image_shape[1]}


def _check_demos_robot(root: Path, task: str, robot) -> None:
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


def _write_demos(root: Path, task: str, n: int, shape: tuple[int, int], seed: int,
                 robot=None) -> None:
    from scarls.learner.demos import generate_demos
    t0 = time.monotonic()
    refs = generate_demos(root, task, n, seed=seed, image_shape=shape, robot=robot)
    ok = sum(1 for r in refs if r.meta_path is not None)
    log.info('%d demonstrations written to %s in %.1f s', ok, root / task, time.monotonic() - t0)


def cmd_demos(args) -> int:
    robot = _robot(args)
    root = Path(args.root).expanduser().resolve()
    _check_demos_robot(root, args.task, robot)
    _write_demos(root, args.task, args.episodes, robot.image_shape, args.seed, robot)
    return 0


def cmd_ecu(args) -> int:
    from scarls.bringup.runner import EcuRun, RunOptions
    if (args.height is not None and args.height < 16) or \
            (args.width is not None and args.width < 16):
        log.error('error: camera resolution must be at least 16x16')
        return 2
    robot = _robot(args)
    if args.episodes == 0 and not args.minutes:
        log.error('error: --episodes 0 runs forever; give --minutes too')
        return 2
    data_root = Path(args.data_root).expanduser().resolve()
    stamp = datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')
    log_dir = Path(args.log_dir) if args.log_dir else data_root / 'logs' / stamp
    domain = args.domain_id
    if domain is None and os.environ.get('ROS_DOMAIN_ID', '').isdigit():
        domain = int(os.environ['ROS_DOMAIN_ID'])
    image = _image_overrides(args)
    if args.learn:
        from scarls.episodes import list_episodes
        offline = data_root / 'offline'
        _check_demos_robot(offline, args.task, robot)
        if not list_episodes(offline, args.task):
            log.info('no demonstrations under %s: writing %d with the scripted expert ...',
                     offline, args.demos)
            _write_demos(offline, args.task, args.demos, robot.image_shape, 10_000, robot)
    extra = {'scheduler': {'image_codec': args.image_codec,
                           'train_interval_s': args.train_interval}}
    log.info('robot %s', robot.summary())
    specs = ecu_nodes(args.ecu_id, task=args.task, data_root=str(data_root),
                      learner=args.learn, robot=args.robot, extra={
                          'driver': {**image, 'seed': args.seed},
                          'actor': {'policy': args.policy, 'checkpoint': args.checkpoint,
                                    'seed': args.seed},
                          'teleop': {**image, 'episodes': args.episodes,
                                     'max_steps': args.max_steps},
                          **extra,
                      })
    # a learner (or a capture process) that dies is restarted: the robot keeps acting and
    # recording with its deployed model meanwhile, and the learner resumes from its registry
    restart = ('learner', *(s.name for s in specs if s.module == 'scarls.camera.capture'))
    from scarls.bringup import load_params_file
    load_params_file(args.params_file or default_params_file())   # a bad file: say why now
    options = RunOptions(
        specs=specs, params_file=str(args.params_file or default_params_file()),
        episodes=args.episodes, minutes=args.minutes, domain_id=domain,
        localhost_only=not args.network, log_dir=log_dir, extras=_dashboard(args),
        restart=restart, max_restarts=10)
    run = EcuRun(options)
    summary = run.run()
    summary.update({'task': args.task, 'ecu_id': args.ecu_id, 'data_root': str(data_root),
                    'image_shape': list(robot.image_shape), 'seed': args.seed,
                    'robot': robot.identity, 'started': stamp})
    _write_summary(summary, args.summary)
    return 0 if summary['ok'] else 1


def _dashboard(args) -> list:
    """The dashboard process of --dashboard PORT (one for the whole run, root namespace)."""
    if args.dashboard is None:
        return []
    from scarls.bringup import NodeSpec
    log.info('dashboard on http://127.0.0.1:%d (when the port is free; see its log)',
             args.dashboard)
    return [NodeSpec('dashboard', 'scarls.dashboard', '', {'port': int(args.dashboard)})]


def _write_summary(summary: dict, path_arg: str | None) -> None:
    if not path_arg:
        return
    path = Path(path_arg)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + '.tmp')
    tmp.write_text(json.dumps(summary, indent=2) + '\n')
    tmp.replace(path)
    log.info('summary written to %s', path)


def cmd_status(args) -> int:
    from scarls.bringup.launcher import apply_ros_env, ros_env
    from scarls.bringup.status import collect

    domain = args.domain_id
    if domain is None:
        domain = int(os.environ.get('ROS_DOMAIN_ID', '0') or 0)
    apply_ros_env(ros_env(domain, localhost_only=not args.network))
    return collect(args.seconds, watch=args.watch, as_json=args.json)


def cmd_fleet(args) -> int:
    import shutil
    import tempfile

    from scarls.bringup.runner import EcuRun, RunOptions
    from scarls.episodes import list_episodes
    from scarls.fleet import FleetKey, FleetKeyError, serve_rendezvous, write_key_file

    if args.episodes < 0 or (args.episodes == 0 and not args.minutes):
        log.error('error: give --minutes or --episodes > 0')
        return 2
    addr, _, port = args.rendezvous.rpartition(':')
    if not addr or not port.isdigit():
        log.error('error: --rendezvous must be ADDR:PORT (port 0 = any free port)')
        return 2
    data_root = Path(args.data_root).expanduser().resolve()
    stamp = datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')
    log_dir = Path(args.log_dir) if args.log_dir else data_root / 'logs' / stamp
    offline = data_root / 'offline'
    robot = _robot(args)
    _check_demos_robot(offline, args.task, robot)
    if not list_episodes(offline, args.task):
        log.info('no demonstrations under %s: writing %d with the scripted expert ...', offline,
                 args.demos)
        _write_demos(offline, args.task, args.demos, robot.image_shape, 10_000, robot)
    domain = args.domain_id
    if domain is None and os.environ.get('ROS_DOMAIN_ID', '').isdigit():
        domain = int(os.environ['ROS_DOMAIN_ID'])
    key_dir = None
    try:
        if args.key_file:
            key_file = str(Path(args.key_file).expanduser().resolve())
            key = FleetKey.from_file(key_file)
        else:   # one key per run, readable by this user only, gone when the run ends
            key_dir = tempfile.mkdtemp(prefix='scarls-fleet-')
            key_file = str(Path(key_dir) / 'fleet.key')
            key = write_key_file(key_file)
    except (FleetKeyError, OSError) as exc:
        log.error('error: fleet key: %s', exc)
        if key_dir:
            shutil.rmtree(key_dir, ignore_errors=True)
        return 2
    try:
        host = serve_rendezvous(addr, int(port))
    except (RuntimeError, OSError) as exc:
        log.error('error: cannot host the rendezvous store on %s:%s: %s', addr, port, exc)
        if key_dir:
            shutil.rmtree(key_dir, ignore_errors=True)
        return 2
    log.info('rendezvous store on %s:%d (MASTER_ADDR/MASTER_PORT of the learners), fleet key %s',
             host.addr, host.port, key.key_id)
    image = _image_overrides(args)
    try:
        specs = fleet_nodes(args.ecus, data_root=str(data_root), task=args.task,
                            rendezvous_addr=host.addr, rendezvous_port=host.port,
                            seed=args.seed, robot=args.robot, extra={
                                'driver': dict(image),
                                'teleop': {**image, 'episodes': args.episodes,
                                           'max_steps': args.max_steps},
                                'scheduler': {'train_interval_s': args.train_interval},
                                'learner': {'fleet_deadline_s': args.deadline,
                                            'fleet_key_file': key_file},
                            })
        from scarls.bringup import load_params_file
        load_params_file(args.params_file or default_params_file())
        run = EcuRun(RunOptions(
            specs=specs, params_file=str(args.params_file or default_params_file()),
            episodes=args.episodes, minutes=args.minutes, domain_id=domain,
            localhost_only=not args.network, log_dir=log_dir, restart=('learner',),
            fleet=True, extras=_dashboard(args)))
        summary = run.run()
    finally:
        host.close()
        if key_dir:
            shutil.rmtree(key_dir, ignore_errors=True)
    summary.update({'task': args.task, 'ecus_started': args.ecus, 'data_root': str(data_root),
                    'image_shape': list(robot.image_shape), 'seed': args.seed,
                    'robot': robot.identity, 'started': stamp})
    for r in summary.get('rounds', []):
        log.info('round %d: participants %s, weights %s, selector %s, versions %s',
                 r['round'], r['participants'],
                 {k: round(v, 3) for k, v in r['weights'].items()},
                 {None: '-', True: 'passed', False: 'rejected'}[r['selector_passed']],
                 r['version'])
    _write_summary(summary, args.summary)
    return 0 if summary['ok'] else 1

