"""`scarls foxglove --port 8765`: a running ECU's topics, live in Foxglove.

A bridge between a ROS domain and Foxglove's WebSocket protocol (the Foxglove SDK's server):
cameras, joint states, the actor's FSM phase (``actor/state``), the learner's loss and metric
(``learner/status``), the driver's safety state (``driver/state``) and every other topic,
advertised with their full ros2msg definitions and sent as the raw CDR bytes the publishers
wrote. A topic is subscribed only while a client subscribes to it, so cameras cost nothing
until a panel shows them. The layout ``config/foxglove_layout.json`` arranges one ECU's view.
See docs/FOXGLOVE.md.

Run it on the ECUs' ROS domain: give `--domain-id` (and `--network` for ECUs on other hosts),
or start it from a launcher that already set up the environment. Also accepts the usual
`--ros-args` tail (`-p port:=8765` overrides `--port`), so a launcher can start it like a node.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = ("Serve a ROS domain's topics (one ECU's with --namespace) to Foxglove over a "
               'WebSocket: cameras, joint states, FSM phase, learner metrics, driver state.')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--port', type=int, default=8765,
                        help='WebSocket port (default 8765; 0 = any free port, logged at start)')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (default 127.0.0.1; 0.0.0.0 = every '
                        'interface: there is no login, expose it only on a trusted network)')
    parser.add_argument('--namespace', default='', metavar='ECU',
                        help="serve only this ECU's topics, e.g. ecu0 (default: every topic)")
    parser.add_argument('--topics', nargs='+', default=[], metavar='TOPIC',
                        help='serve exactly these topics (relative names resolve in '
                        '--namespace)')
    parser.add_argument('--exclude', nargs='+', default=[], metavar='REGEX',
                        help='do not serve topics matching these regular expressions')
    parser.add_argument('--max-image-rate', type=float, default=0.0, metavar='HZ',
                        help='send at most this many frames per second of each camera '
                        '(default 0 = every frame)')
    parser.add_argument('--domain-id', type=int, default=None,
                        help="ROS_DOMAIN_ID of the ECUs (default: the environment's)")
    parser.add_argument('--network', action='store_true',
                        help='also discover ECUs on other hosts (default with --domain-id: '
                        'this host only)')


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `foxglove` subcommand to the `scarls` command line."""
    parser = subparsers.add_parser('foxglove', help='live view of ROS topics in Foxglove',
                                   description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=serve)
    return parser


def _apply_environment(args) -> None:
    """With --domain-id or --network: the same DDS settings `scarls ecu` gives its nodes."""
    from scarls.bringup.launcher import apply_tool_env
    apply_tool_env(args.domain_id, args.network)


def serve(args, ros_args: list[str] | None = None) -> int:
    """Run the bridge until SIGINT/SIGTERM; returns the exit code."""
    from scarls.foxglove.topics import TopicFilter

    try:
        TopicFilter(args.namespace, args.topics, args.exclude)
    except ValueError as exc:
        sys.stderr.write(f'error: {exc}\n')
        return 2
    if args.max_image_rate < 0:
        sys.stderr.write('error: --max-image-rate must be >= 0\n')
        return 2
    _apply_environment(args)
    from scarls.foxglove.bridge import FoxgloveBridge
    from scarls.ros.node_utils import run_node

    return run_node(lambda: FoxgloveBridge(
        args.host, args.port, args.namespace, ' '.join(args.topics), ' '.join(args.exclude),
        args.max_image_rate), ['scarls.foxglove', *(ros_args or [])])


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Own flags, and the ``--ros-args ...`` tail (handed to rclpy) if any."""
    parser = argparse.ArgumentParser(prog='python -m scarls.foxglove', description=DESCRIPTION)
    add_arguments(parser)
    if '--ros-args' in argv:
        cut = argv.index('--ros-args')
        return parser.parse_args(argv[:cut]), argv[cut:]
    return parser.parse_args(argv), []


def main(argv: list[str] | None = None) -> int:
    args, ros_args = parse_args(sys.argv[1:] if argv is None else list(argv))
    return serve(args, ros_args)
