"""`scarls robot list | show | check`: robot descriptions (config/robots or your own YAML file).

`check` validates one, starts its driver and capture sources as separate processes (or, with
`--attach`, listens to ones already running), and reports joint-state and camera rates, stamp
ages, skew and limits without moving the robot (:mod:`scarls.robot.check` decides,
:mod:`scarls.robot.probe` listens).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from scarls.robot.check import describe_limits

log = logging.getLogger('scarls')


def register(sub) -> None:
    """Add `scarls robot list | show | check` to the top-level parser."""
    robot = sub.add_parser('robot', help='robot descriptions: list, show, check a robot',
                           description='Robot descriptions (config/robots/*.yaml or your own '
                           'YAML file): list the built-ins, show one, or check a robot '
                           'without moving it.')
    rsub = robot.add_subparsers(dest='robot_command', required=True)
    ls = rsub.add_parser('list', help='the built-in robot descriptions')
    ls.set_defaults(func=cmd_list)
    show = rsub.add_parser('show', help='one description: joints, limits, cameras, backend')
    show.add_argument('--robot', default='sim_dual6', help='built-in name or YAML file')
    show.add_argument('--json', action='store_true', help='print the parsed description as JSON')
    show.set_defaults(func=cmd_show)
    check = rsub.add_parser(
        'check', help='validate a description, then connect and read state and cameras',
        description='Validate the robot description; then start its driver (and capture '
        'sources) and report joint-state and camera rates, stamp ages, skew and limits. '
        'Nothing is commanded unless --move-home.')
    check.add_argument('--robot', default='sim_dual6', help='built-in name or YAML file')
    check.add_argument('--seconds', type=float, default=5.0, help='listen this long (5)')
    check.add_argument('--offline', action='store_true',
                       help='only validate the file (no ROS, no connection)')
    check.add_argument('--attach', action='store_true',
                       help='do not start a driver: listen to one (and cameras) already '
                       'running in --namespace')
    check.add_argument('--namespace', default='ecu0', help='ECU namespace (ecu0)')
    check.add_argument('--domain-id', type=int, default=None,
                       help='ROS_DOMAIN_ID (default: $ROS_DOMAIN_ID, else a private one)')
    check.add_argument('--network', action='store_true',
                       help='discover beyond this host (a robot on the lab network)')
    check.add_argument('--move-home', action='store_true',
                       help='after listening, move the robot to its home pose (it moves!)')
    check.add_argument('--json', default=None, help='also write the report as JSON here')
    check.set_defaults(func=cmd_check)


def _load(name: str):
    from scarls.bringup import BringupError
    from scarls.robot import RobotDescriptionError, load_robot
    try:
        return load_robot(name)
    except RobotDescriptionError as exc:
        raise BringupError(str(exc)) from exc


def cmd_list(args) -> int:
    from scarls.robot import builtin_robots, load_robot
    for name in builtin_robots():
        try:
            print(load_robot(name).summary())
        except ValueError as exc:
            print(f'{name}: INVALID: {exc}')
    return 0


def cmd_show(args) -> int:
    robot = _load(args.robot)
    if args.json:
        print(json.dumps({**robot.to_dict(), 'hash': robot.hash}, indent=1))
        return 0
    print(robot.summary())
    print(f'source: {robot.source}')
    print('\n'.join(describe_limits(robot)))
    for cam in robot.cameras:
        print(f'camera {cam.name}: {cam.source} {cam.topic_name} '
              f'{"compressed" if cam.compressed else cam.encoding} -> {cam.height}x{cam.width} '
              f'({cam.fit}), {cam.qos}, {cam.fps:g} fps' + (f', device {cam.device}'
                                                           if cam.device else ''))
    print(f'backend {robot.backend}: ' + ', '.join(f'{k}={v}' for k, v in
                                                   sorted(robot.backend_params.items())))
    return 0


def cmd_check(args) -> int:
    robot = _load(args.robot)
    print(robot.summary())
    print('\n'.join(describe_limits(robot)))
    if args.offline:
        print('description OK (offline: nothing connected)')
        return 0
    from scarls.bringup import NodeSpec, capture_nodes, default_params_file
    from scarls.bringup.launcher import ProcessGroup, apply_ros_env, pick_domain_id, ros_env
    from scarls.robot.probe import listen

    domain = args.domain_id
    if domain is None:
        env_domain = os.environ.get('ROS_DOMAIN_ID', '')
        domain = int(env_domain) if env_domain.isdigit() else pick_domain_id()
    env = ros_env(domain, localhost_only=not args.network)
    apply_ros_env(env)
    log_dir = Path(tempfile.mkdtemp(prefix='scarls-robot-check-'))
    group = ProcessGroup(env, log_dir)
    try:
        if not args.attach:
            driver = NodeSpec('driver', 'scarls.driver.node', args.namespace,
                              {'robot': args.robot, 'ecu_id': args.namespace})
            for spec in [driver, *capture_nodes(args.robot, args.namespace)]:
                group.start(spec, str(default_params_file()))
            print(f'started the driver{" and capture sources" if len(group.nodes) > 1 else ""}'
                  f' on ROS_DOMAIN_ID={domain}; logs in {log_dir}')
        report = listen(robot, args.namespace, args.seconds, move_home=args.move_home)
        dead = group.dead()
        for node in dead:
            report.problems.append(f'{node.spec.fqn} exited ({node.process.returncode}): '
                                   + (node.tail(5) or 'no output'))
    finally:
        group.stop()
    for line in report.lines:
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps({'robot': robot.identity, 'ok': report.ok,
                                               'problems': report.problems, **report.data},
                                              indent=1, default=str))
    if report.ok:
        print(f'robot {robot.name}: OK')
        return 0
    print(f'robot {robot.name}: {len(report.problems)} problem(s):')
    for p in report.problems:
        print(f'  - {p}')
    return 1
