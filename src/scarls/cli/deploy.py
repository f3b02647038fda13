"""`scarls deploy`: make an approved checkpoint version the deployed one on an ECU.

``scarls deploy --ecu ecu0 --version N`` asks that ECU's scheduler (service
``/<ecu>/scheduler/deploy``) to make approved registry version N the deployed one - a rollback
when N is older; the actor loads it at its next episode boundary.
"""

from __future__ import annotations

import json
import logging
import os

log = logging.getLogger('scarls')


def register(sub) -> None:
    """Add `scarls deploy` to the top-level parser."""
    deploy = sub.add_parser(
        'deploy', help="deploy (or roll back to) an approved checkpoint version on an ECU",
        description="Ask an ECU's scheduler to make an approved version of its checkpoint "
        'registry the deployed one (an older one: a rollback). The actor loads it at its '
        'next episode boundary.')
    deploy.add_argument('--ecu', default='ecu0', help='ECU id / namespace (default ecu0)')
    deploy.add_argument('--version', type=int, required=True, help='registry version')
    deploy.add_argument('--domain-id', type=int, default=None,
                        help='ROS_DOMAIN_ID (default: the environment\'s)')
    deploy.add_argument('--network', action='store_true',
                        help='discover beyond this host (the ECU is on another machine)')
    deploy.add_argument('--timeout', type=float, default=15.0,
                        help='seconds to wait for the scheduler (default 15)')
    deploy.set_defaults(func=cmd_deploy)


def cmd_deploy(args) -> int:
    import rclpy
    from scarls_interfaces.srv import GetCheckpointChunk

    from scarls.bringup.launcher import apply_ros_env, ros_env

    domain = args.domain_id
    if domain is None:
        domain = int(os.environ.get('ROS_DOMAIN_ID', '0') or 0)
    apply_ros_env(ros_env(domain, localhost_only=not args.network))
    service = f'/{args.ecu.strip("/")}/scheduler/deploy'
    rclpy.init(args=[])
    node = rclpy.create_node('scarls_deploy')
    try:
        client = node.create_client(GetCheckpointChunk, service)
        if not client.wait_for_service(timeout_sec=args.timeout):
            log.error('error: %s is not available within %.0f s (is the ECU running, on '
                      'ROS_DOMAIN_ID %d%s?)', service, args.timeout, domain,
                      '' if args.network else ', this host; --network for another one')
            return 1
        future = client.call_async(GetCheckpointChunk.Request(version=args.version))
        rclpy.spin_until_future_complete(node, future, timeout_sec=args.timeout)
        if not future.done():
            client.remove_pending_request(future)
            log.error('error: no answer from %s within %.0f s', service, args.timeout)
            return 1
        reply = future.result()
        if not reply.ok:
            log.error('error: %s', reply.error)
            return 1
        entry = json.loads(bytes(reply.data).decode() or '{}')
        print(f'{args.ecu}: v{args.version} deployed ({entry.get("reason", "?")}, deploy '
              f'generation {entry.get("generation", "?")}, sha256 {reply.sha256[:12]}...); '
              'the actor loads it at its next episode boundary')
        return 0
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
