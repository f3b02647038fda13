"""`python -m scarls.dashboard --port 8080`: a live web page of the fleet, from ROS 2 topics only.

Every ECU's FSM phase, episodes, success and human-share rates over time, the newest camera
frames, the learner's training loss and open-loop metric, checkpoint lineage (approved,
rejected, deployed, running), the fleet's all-reduce rounds with their weights, and the p50/p99
latencies of episode ingestion and checkpoint distribution. One process: a ROS 2 node
(`node.DashboardNode`, subscriptions only) and a stdlib HTTP server on background threads; the
page is static HTML/JS (plots: vendored uPlot) polling `/api/state`. See docs/DASHBOARD.md.

Run it on the ECUs' ROS domain: started by `scarls ecu/fleet` it inherits their environment;
alone, give `--domain-id` (and `--network` for ECUs on other hosts). Also accepts the usual
`--ros-args` tail (`-p port:=8080` overrides `--port`), so a launcher can start it like a node.
"""

from __future__ import annotations

import argparse
import sys

DESCRIPTION = ('Serve a live web dashboard of the ECUs of a ROS domain (phases, rates, cameras, '
               'learner loss and metric, checkpoint lineage, fleet rounds, latencies).')


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--port', type=int, default=8080,
                        help='HTTP port (default 8080; 0 = any free port, printed at start)')
    parser.add_argument('--host', default='127.0.0.1',
                        help='address to listen on (default 127.0.0.1; 0.0.0.0 = every '
                        'interface: the page has no login, expose it only on a trusted network)')
    parser.add_argument('--domain-id', type=int, default=None,
                        help="ROS_DOMAIN_ID of the ECUs (default: the environment's)")
    parser.add_argument('--network', action='store_true',
                        help='also discover ECUs on other hosts (default with --domain-id: '
                        'this host only)')


def register(subparsers) -> argparse.ArgumentParser:
    """Add the `dashboard` subcommand to the `scarls` command line."""
    parser = subparsers.add_parser('dashboard', help='live web dashboard of the fleet',
                                   description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=serve)
    return parser


def _apply_environment(args) -> None:
    """With --domain-id or --network: the same DDS settings `scarls ecu` gives its nodes."""
    from scarls.bringup.launcher import apply_tool_env
    apply_tool_env(args.domain_id, args.network)


def serve(args, ros_args: list[str] | None = None) -> int:
    """Run the dashboard until SIGINT/SIGTERM; returns the exit code."""
    _apply_environment(args)
    from scarls.dashboard.node import DashboardNode
    from scarls.ros.node_utils import run_node

    return run_node(lambda: DashboardNode(args.host, args.port),
                    ['scarls.dashboard', *(ros_args or [])])


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Own flags, and the ``--ros-args ...`` tail (handed to rclpy) if any."""
    parser = argparse.ArgumentParser(prog='python -m scarls.dashboard', description=DESCRIPTION)
    add_arguments(parser)
    if '--ros-args' in argv:
        cut = argv.index('--ros-args')
        return parser.parse_args(argv[:cut]), argv[cut:]
    return parser.parse_args(argv), []


def main(argv: list[str] | None = None) -> int:
    args, ros_args = parse_args(sys.argv[1:] if argv is None else list(argv))
    return serve(args, ros_args)
