"""`scarls status`: the ECUs of a ROS domain at a glance (phase, episodes, rates, versions,
fleet rounds) from their heartbeats (see :mod:`scarls.bringup.status`)."""

from __future__ import annotations

import os


def register(sub) -> None:
    """Add `scarls status` to the top-level parser."""
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


def cmd_status(args) -> int:
    from scarls.bringup.launcher import apply_ros_env, ros_env
    from scarls.bringup.status import collect

    domain = args.domain_id
    if domain is None:
        domain = int(os.environ.get('ROS_DOMAIN_ID', '0') or 0)
    apply_ros_env(ros_env(domain, localhost_only=not args.network))
    return collect(args.seconds, watch=args.watch, as_json=args.json)
