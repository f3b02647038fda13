"""`scarls bag`: rosbag2 bags (MCAP or SQLite 3) of an ECU's topics, compatible with `ros2 bag`
and Foxglove.

:func:`register` adds the ``bag`` command to the ``scarls`` parser (it sets ``func=run_bag``);
``python -m scarls.cli.bag record ...`` runs it alone. See ``DESCRIPTION`` and docs/BAGS.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ['build_parser', 'main', 'register', 'run_bag']

log = logging.getLogger('scarls.bag')

DESCRIPTION = """\
rosbag2 bags of an ECU's topics (readable by `ros2 bag` and Foxglove).

  scarls bag record [-o BAG] [--namespace ECU] [--topics T ...] [--storage mcap|sqlite3]
  scarls bag play BAG [--rate R] [--loop] [--topics T ...] [--remap OLD:=NEW ...]
                      [--start-offset S] [--start-paused]
  scarls bag info BAG
  scarls bag repair BAG [-o OUT]        a closed copy of a bag whose recorder was killed
  scarls bag to-zarr BAG --data-root D [--task T]   rebuild the ECU's Zarr episodes

exit codes: 0 success; 1 done with problems (topics skipped, episodes not rebuilt, a bag
that had to be cut short); 2 failed (bad arguments, unreadable bag).
"""

EXIT_OK, EXIT_PROBLEMS, EXIT_FAILED = 0, 1, 2


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f'must be > 0, got {text}')
    return value


def _add_commands(sub: Any) -> None:
    rec = sub.add_parser('record', help='record topics into a new bag',
                         description='Record topics of the ROS graph (all, those of one ECU '
                         'namespace, or a list) into a new bag until SIGINT/SIGTERM or '
                         '--duration. Serialized bytes go straight to disk; custom types are '
                         'stored with their definitions.')
    rec.add_argument('-o', '--output', default=None,
                     help='bag folder to create (default rosbag2_<date>-<time>)')
    rec.add_argument('-s', '--storage', default='mcap', choices=('mcap', 'sqlite3'),
                     help='storage format (default mcap)')
    rec.add_argument('-n', '--namespace', default='',
                     help='record the topics of this ECU namespace (e.g. ecu0)')
    rec.add_argument('--topics', nargs='+', default=[], metavar='TOPIC',
                     help='only these topics (relative names are resolved in --namespace)')
    rec.add_argument('--exclude', nargs='+', default=[], metavar='REGEX',
                     help='leave out topics matching these regexes')
    rec.add_argument('-d', '--duration', type=_positive, default=None,
                     help='stop after this many seconds')
    rec.add_argument('--depth', type=int, default=100,
                     help='history depth of each subscription (default 100)')
    rec.add_argument('--json', action='store_true', help='print the summary as JSON')

    play = sub.add_parser('play', help='publish a bag on live topics',
                          description='Publish the messages of a bag (MCAP or SQLite 3, from '
                          'scarls or `ros2 bag record`) with their recorded timing and QoS. '
                          'Pause/resume: SPACE on a terminal, or the services '
                          '~/pause (std_srvs/SetBool) and ~/toggle_paused (std_srvs/Trigger) '
                          'of the node scarls_bag_player.')
    play.add_argument('bag', help='bag folder')
    play.add_argument('-r', '--rate', type=_positive, default=1.0,
                      help='playback speed factor (default 1.0)')
    play.add_argument('-l', '--loop', action='store_true', help='play again and again')
    play.add_argument('--topics', nargs='+', default=[], metavar='TOPIC',
                      help='only these topics (full names as in the bag)')
    play.add_argument('--remap', nargs='+', default=[], metavar='OLD:=NEW',
                      help='publish a topic (or every topic under a namespace) under another '
                      'name, e.g. /ecu0:=/ecu1')
    play.add_argument('--start-offset', type=float, default=0.0, metavar='S',
                      help='start S seconds into the bag')
    play.add_argument('--delay', type=float, default=0.5, metavar='S',
                      help='wait S seconds before the first message, for subscribers to '
                      'connect (default 0.5)')
    play.add_argument('--wait-for-subscribers', type=int, default=0, metavar='N',
                      help='before playing, wait (at most 30 s) until every topic has N '
                      'matched subscribers')
    play.add_argument('--start-paused', action='store_true', help='start paused')
    play.add_argument('--no-keyboard', action='store_true', help='ignore the terminal')
    play.add_argument('--json', action='store_true', help='print the summary as JSON')

    info = sub.add_parser('info', help='topics, types, counts, duration of a bag')
    info.add_argument('bag', help='bag folder')
    info.add_argument('--json', action='store_true', help='print as JSON')

    rep = sub.add_parser('repair', help='write a closed copy of an unclosed or truncated bag',
                         description='A bag whose recorder was killed has no metadata.yaml '
                         '(and an MCAP file without summary and footer). This reads every '
                         'complete message of its storage file and writes a new, closed bag.')
    rep.add_argument('bag', help='bag folder (or its .mcap / .db3 file)')
    rep.add_argument('-o', '--output', default=None, help='new bag (default <bag>_repaired)')
    rep.add_argument('--json', action='store_true', help='print the report as JSON')

    tz = sub.add_parser('to-zarr', help='rebuild Zarr episodes from a bag of an ECU',
                        description='Rebuild the Zarr episodes of an ECU from a bag of its '
                        'topics (camera/*/image_raw, actor/step, actor/state), offline, with '
                        'the scheduler\'s own alignment: the same frames per step, drops and '
                        'outcomes as a live scheduler fed the same stream.')
    tz.add_argument('bag', help='bag folder')
    tz.add_argument('--data-root', required=True, help='data root to write episodes into')
    tz.add_argument('--task', default='pick_cube', help='task (default pick_cube)')
    tz.add_argument('--namespace', default=None, help='ECU namespace (default: found in bag)')
    tz.add_argument('--ecu-id', default=None, help='ECU id in the meta (default: namespace)')
    tz.add_argument('--cameras', default='',
                    help='comma-separated cameras (default: every camera the bag recorded)')
    tz.add_argument('--image-codec', default='lz4', help='image codec (default lz4)')
    tz.add_argument('--match-timeout', type=float, default=2.0,
                    help="the scheduler's match_timeout_s (default 2.0)")
    tz.add_argument('--no-fsync', action='store_true', help='skip fsync (faster)')
    tz.add_argument('--json', action='store_true', help='print the report as JSON')


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``bag`` command (with its subcommands) to an argparse subparsers object."""
    bag = subparsers.add_parser('bag', help='record, play, repair and convert rosbag2 bags',
                                description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = bag.add_subparsers(dest='bag_command', required=True, metavar='COMMAND')
    _add_commands(sub)
    bag.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    bag.set_defaults(func=run_bag)
    return bag


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser: ``python -m scarls.cli.bag record ...``."""
    parser = argparse.ArgumentParser(prog='scarls bag', description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('-v', '--verbose', action='store_true', help='debug logging')
    sub = parser.add_subparsers(dest='bag_command', required=True, metavar='COMMAND')
    _add_commands(sub)
    parser.set_defaults(func=run_bag)
    return parser


def _print(args: argparse.Namespace, data: dict, lines: list[str]) -> None:
    if getattr(args, 'json', False):
        print(json.dumps(data, indent=1, sort_keys=True, default=str))
    else:
        for line in lines:
            print(line)


def _cmd_record(args: argparse.Namespace) -> int:
    from scarls.bags.record import RecordOptions, record
    out = Path(args.output or time.strftime('rosbag2_%Y_%m_%d-%H_%M_%S'))
    opts = RecordOptions(output=out, storage=args.storage, namespace=args.namespace,
                         topics=list(args.topics), exclude=list(args.exclude),
                         duration=args.duration, depth=args.depth)
    log.info('recording into %s (%s); stop with Ctrl-C', out, args.storage)
    s = record(opts)
    lines = [f'{s["bag"]}: {s["messages"]} messages, {s["bytes"] / 1e6:.1f} MB']
    lines += [f'  {t}: {n}' for t, n in sorted(s['topics'].items())]
    lines += [f'  not recorded {t}: {why}' for t, why in sorted(s['skipped'].items())]
    return _finish(args, s, lines)


def _finish(args: argparse.Namespace, summary: dict, lines: list[str]) -> int:
    """Print a record/play summary; exit 2 on its error, 1 if topics were skipped."""
    if summary['error']:
        lines.append(f'error: {summary["error"]}')
    _print(args, summary, lines)
    if summary['error']:
        return EXIT_FAILED
    return EXIT_PROBLEMS if summary['skipped'] else EXIT_OK


def _cmd_play(args: argparse.Namespace) -> int:
    from scarls.bags.play import PlayOptions, parse_remaps, play
    opts = PlayOptions(bag=args.bag, rate=args.rate, loop=args.loop, topics=list(args.topics),
                       remap=parse_remaps(args.remap), start_offset=args.start_offset,
                       delay=args.delay, wait_for_subscribers=args.wait_for_subscribers,
                       start_paused=args.start_paused,
                       keyboard=not args.no_keyboard)
    s = play(opts)
    lines = [f'{s["bag"]}: {s["published"]} messages published on {len(s["topics"])} topics']
    lines += [f'  skipped {t}: {why}' for t, why in sorted(s['skipped'].items())]
    return _finish(args, s, lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from scarls.bags.io import BagReader
    with BagReader(args.bag) as r:
        seconds = max(0, r.end_time - r.start_time) * 1e-9 if r.message_count else 0.0
        data = {'bag': str(r.path), 'messages': r.message_count, 'duration_s': seconds,
                'start_ns': r.start_time if r.message_count else None,
                'custom_data': r.custom_data,
                'topics': [{'name': t.name, 'type': t.msgtype, 'count': t.count,
                            'type_hash': t.type_hash,
                            'qos': [{'reliability': q.reliability.name,
                                     'durability': q.durability.name, 'depth': q.depth}
                                    for q in t.offered_qos]}
                           for t in r.topics.values()]}
    lines = [f'{data["bag"]}: {data["messages"]} messages over {seconds:.2f} s']
    for t in data['topics']:
        q = ', '.join(sorted({f'{x["reliability"].lower()}/{x["durability"].lower()}'
                              for x in t['qos']})) or 'qos not stored'
        lines.append(f'  {t["name"]}  [{t["type"]}]  {t["count"]} messages  ({q})')
    _print(args, data, lines)
    return EXIT_OK


def _cmd_repair(args: argparse.Namespace) -> int:
    from scarls.bags.io import repair_bag
    src = Path(args.bag)
    bag_dir = src if src.is_dir() else src.parent
    out = Path(args.output) if args.output else bag_dir.with_name(bag_dir.name + '_repaired')
    rep = repair_bag(src, out)
    lines = [f'{rep["output"]}: {rep["messages"]} messages recovered from {rep["source"]}'
             + ('' if rep['complete'] else f' (the file is cut short: {rep["note"]})')]
    lines += [f'  {t}: {n}' for t, n in sorted(rep['topics'].items())]
    lines += [f'  dropped topic {x}' for x in rep['skipped_topics']]
    _print(args, rep, lines)
    return EXIT_OK if rep['complete'] and not rep['skipped_topics'] else EXIT_PROBLEMS


def _cmd_to_zarr(args: argparse.Namespace) -> int:
    from scarls.bags.convert import bag_to_episodes
    cameras = tuple(c.strip() for c in args.cameras.split(',') if c.strip()) or None
    rep = bag_to_episodes(args.bag, args.data_root, task=args.task, ecu_id=args.ecu_id,
                          namespace=args.namespace, codec=args.image_codec, cameras=cameras,
                          match_timeout_s=args.match_timeout, fsync=not args.no_fsync)
    lines = [f'{e["path"]}: {e["outcome"]}, {e["steps"]} steps, {e["dropped_steps"]} dropped '
             f'(actor episode {e["actor_episode_id"]})' for e in rep.saved]
    lines += [f'NOT REBUILT actor episode {e["actor_episode_id"]} ({e["steps_seen"]} steps '
              f'seen): {e["reason"]}' for e in rep.not_rebuilt]
    lines += [f'{n} undecodable messages on {t} skipped' for t, n in rep.bad_messages.items()]
    lines.append(f'{len(rep.saved)} episodes rebuilt, {len(rep.not_rebuilt)} not rebuilt, '
                 f'from {rep.messages} messages of {rep.bag}')
    _print(args, rep.to_dict(), lines)
    return EXIT_OK if rep.ok else EXIT_PROBLEMS


_COMMANDS = {'record': _cmd_record, 'play': _cmd_play, 'info': _cmd_info,
             'repair': _cmd_repair, 'to-zarr': _cmd_to_zarr}


def run_bag(args: argparse.Namespace) -> int:
    """Run a parsed ``bag`` command; return the process exit code."""
    from scarls.bags.errors import BagError
    logging.basicConfig(level=logging.DEBUG if getattr(args, 'verbose', False)
                        else logging.INFO, format='%(message)s')
    if not getattr(args, 'verbose', False):
        logging.getLogger('scarls.episodes').setLevel(logging.WARNING)
    try:
        return _COMMANDS[args.bag_command](args)
    except BagError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_FAILED
    except (OSError, ValueError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    return run_bag(build_parser().parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
