"""`scarls ecu`: run one simulated ECU (driver, actor, teleop, scheduler - and with --learn the
online learner - as separate ROS 2 processes talking over DDS) for some episodes or minutes, print
what happened, write a JSON summary."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from scarls.bringup import default_params_file, ecu_nodes
from scarls.cli.common import (
    ROBOT_HELP,
    add_param_arg,
    add_sim_time_args,
    apply_sim_time,
    dashboard_specs,
    image_overrides,
    positive_int,
    robot_from_args,
    with_params,
    write_summary,
)
from scarls.cli.demos import check_demos_robot, write_demos

log = logging.getLogger('scarls')


def register(sub) -> None:
    """Add `scarls ecu` to the top-level parser."""
    ecu = sub.add_parser('ecu', help='run one simulated ECU in closed loop',
                         description='Run one ECU (driver, actor, teleop, scheduler) as separate '
                         'ROS 2 processes; the scripted expert plays the human.')
    ecu.add_argument('--episodes', type=positive_int, default=3,
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
    ecu.add_argument('--seed', type=int, default=0,
                     help='scene seed of the simulated robot (default 0; the learner keeps its '
                          'own: --param learner.seed=N)')
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
    add_sim_time_args(ecu)
    add_param_arg(ecu)
    ecu.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    ecu.set_defaults(func=cmd_ecu)


def cmd_ecu(args) -> int:
    from scarls.bringup.runner import EcuRun, RunOptions
    if (args.height is not None and args.height < 16) or \
            (args.width is not None and args.width < 16):
        log.error('error: camera resolution must be at least 16x16')
        return 2
    robot = robot_from_args(args)
    if args.episodes == 0 and not args.minutes:
        log.error('error: --episodes 0 runs forever; give --minutes too')
        return 2
    data_root = Path(args.data_root).expanduser().resolve()
    stamp = datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')
    log_dir = Path(args.log_dir) if args.log_dir else data_root / 'logs' / stamp
    domain = args.domain_id
    if domain is None and os.environ.get('ROS_DOMAIN_ID', '').isdigit():
        domain = int(os.environ['ROS_DOMAIN_ID'])
    image = image_overrides(args)
    if args.learn:
        from scarls.episodes import list_episodes
        offline = data_root / 'offline'
        check_demos_robot(offline, args.task, robot)
        if not list_episodes(offline, args.task):
            log.info('no demonstrations under %s: writing %d with the scripted expert ...',
                     offline, args.demos)
            write_demos(offline, args.task, args.demos, robot.image_shape, 10_000, robot)
    extra = {'scheduler': {'image_codec': args.image_codec,
                           'train_interval_s': args.train_interval}}
    # --seed is the robot's scenes: the learner keeps its own seed (ecu.yaml), so that ECUs
    # started on separate hosts with separate scene seeds begin a fleet from the same weights
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
    try:
        specs = with_params(specs, args.param)
    except ValueError as exc:
        log.error('error: %s', exc)
        return 2
    restart = ('learner', *(s.name for s in specs if s.module == 'scarls.camera.capture'))
    specs, sim_time = apply_sim_time(args, specs, robot)
    from scarls.bringup import load_params_file
    load_params_file(args.params_file or default_params_file())   # a bad file: say why now
    options = RunOptions(
        specs=specs, params_file=str(args.params_file or default_params_file()),
        episodes=args.episodes, minutes=args.minutes, domain_id=domain,
        localhost_only=not args.network, log_dir=log_dir, extras=dashboard_specs(args),
        restart=restart, max_restarts=10, sim_time=sim_time)
    run = EcuRun(options)
    summary = run.run()
    summary.update({'task': args.task, 'ecu_id': args.ecu_id, 'data_root': str(data_root),
                    'image_shape': list(robot.image_shape), 'seed': args.seed,
                    'robot': robot.identity, 'started': stamp})
    write_summary(summary, args.summary)
    return 0 if summary['ok'] else 1
