"""`scarls fleet`: run N simulated ECUs on this machine that learn one policy (weighted
all-reduce of their parameters after each local round, a selector before every deploy)."""

from __future__ import annotations

import logging
import os
from datetime import UTC, datetime
from pathlib import Path

from scarls.bringup import default_params_file, fleet_nodes
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
    """Add `scarls fleet` to the top-level parser."""
    fleet = sub.add_parser(
        'fleet', help='run N simulated ECUs that learn one policy together',
        description='Run N complete simulated ECUs (driver, scheduler, actor, teleop, learner '
        'each, one ROS namespace and data folder per ECU, each on its own scenes) on this '
        'machine. After every local training round the learners average their parameters '
        'weighted by their open-loop errors (torch.distributed all-reduce; this process hosts '
        'the rendezvous store and nothing else) and deploy the result only if it passes the '
        'checkpoint selector.')
    fleet.add_argument('--ecus', type=positive_int, default=2, help='number of ECUs (default 2)')
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
    add_sim_time_args(fleet)
    add_param_arg(fleet)
    fleet.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    fleet.set_defaults(func=cmd_fleet)


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
    robot = robot_from_args(args)
    from scarls.bringup.launcher import DDS_PARTICIPANTS_PER_HOST
    # every node is a DDS participant (the robot's camera capture nodes too); the clock and
    # this runner are two more
    per_ecu = len(fleet_nodes(1, robot=args.robot))
    participants = args.ecus * per_ecu + 2
    if participants > DDS_PARTICIPANTS_PER_HOST:
        log.error('error: %d ECUs are %d DDS participants, more than one host discovers in '
                  'one domain (%d): run at most %d ECUs per host, the others on more hosts '
                  '(docs/FLEET.md)', args.ecus, participants, DDS_PARTICIPANTS_PER_HOST,
                  (DDS_PARTICIPANTS_PER_HOST - 2) // per_ecu)
        return 2
    check_demos_robot(offline, args.task, robot)
    if not list_episodes(offline, args.task):
        log.info('no demonstrations under %s: writing %d with the scripted expert ...', offline,
                 args.demos)
        write_demos(offline, args.task, args.demos, robot.image_shape, 10_000, robot)
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
    image = image_overrides(args)
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
        try:
            specs = with_params(specs, args.param)
        except ValueError as exc:
            log.error('error: %s', exc)
            return 2
        specs, sim_time = apply_sim_time(args, specs, robot)
        run = EcuRun(RunOptions(
            specs=specs, params_file=str(args.params_file or default_params_file()),
            episodes=args.episodes, minutes=args.minutes, domain_id=domain,
            localhost_only=not args.network, log_dir=log_dir, restart=('learner',),
            fleet=True, extras=dashboard_specs(args), sim_time=sim_time))
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
    write_summary(summary, args.summary)
    return 0 if summary['ok'] else 1
