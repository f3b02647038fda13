"""`scarls dataset`: inspect, check and edit the episodes of a data root.

The argparse part of the dataset tools (the work is done by :mod:`scarls.episodes.tools`,
:mod:`scarls.episodes.stats`, :mod:`scarls.episodes.merge` and
:mod:`scarls.episodes.lerobot_import`).
:func:`add_dataset_parser` plugs the ``dataset`` command into the ``scarls`` parser (it sets
``func=run_dataset``); ``python -m scarls.cli.dataset dataset ...`` runs it alone.  See
``DESCRIPTION`` for the commands and exit codes.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, TextIO

__all__ = ['add_dataset_parser', 'build_parser', 'main', 'parse_indices', 'run_dataset']

log = logging.getLogger('scarls.dataset')

DESCRIPTION = """\
Inspect, check and edit the episodes of a data root (<root>/<task>/episode_N.zarr).

  scarls dataset info ROOT        tasks, episodes, steps, codecs, image shapes, sizes, leftovers
  scarls dataset stats ROOT       outcomes, intervention rates, per-task totals
  scarls dataset validate ROOT    every episode against the schema and its sha256 checksums
  scarls dataset delete ROOT --task T N [N ...]   delete episodes, renumber the later ones
  scarls dataset merge DST SRC [SRC ...]          append verified copies of other roots
  scarls dataset repair ROOT      finish an interrupted delete, close gaps, clear leftovers
  scarls dataset import-lerobot FOLDER ROOT --task T   a LeRobot v3.0 folder as episodes
  scarls dataset export --format mcap --data-root ROOT --task T --out BAG
                                  episodes as a rosbag2 bag of the ECU's topics

exit codes: 0 success; 1 problems found (validate), episodes skipped (merge, import) or
something left unrepaired (repair); 2 refused or failed (bad arguments, missing root, a writer
is recording, an interrupted operation is pending).  --json prints one JSON document on
stdout; progress of long work goes to stderr.
"""

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_REFUSED = 2


def parse_indices(items: list[str]) -> list[int]:
    """Parse episode indices like ``['3', '5-7', '9,11']`` into a sorted list."""
    out: set[int] = set()
    for item in items:
        for part in item.split(','):
            part = part.strip()
            if not part:
                continue
            lo, sep, hi = part.partition('-')
            try:
                a = int(lo)
                b = int(hi) if sep else a
            except ValueError:
                raise argparse.ArgumentTypeError(
                    f'bad episode index {part!r}: use N, N-M or N,M'
                ) from None
            if a < 0 or b < a:
                raise argparse.ArgumentTypeError(f'bad episode range {part!r}')
            out.update(range(a, b + 1))
    return sorted(out)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument('--json', action='store_true', help='print one JSON document on stdout')
    p.add_argument('-v', '--verbose', action='store_true', help='debug logging')


def add_dataset_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``dataset`` command (with its subcommands) to an argparse subparsers object."""
    ds = subparsers.add_parser(
        'dataset', help='inspect, validate, delete, merge and repair episodes of a data root',
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ds.add_subparsers(dest='dataset_command', required=True, metavar='COMMAND')

    info = sub.add_parser('info', help='tasks, episodes, codecs, image shapes, sizes, leftovers',
                          description='Summarise a data root from the episode meta files: '
                          'tasks, episodes, steps, codecs, image shapes, sizes on disk, and '
                          'leftovers of killed writers or interrupted operations.')
    info.add_argument('root', help='data root (holds <task>/episode_N.zarr)')
    info.add_argument('--task', default=None, help='only this task')
    _common(info)

    stats = sub.add_parser('stats', help='outcomes, intervention rates, per-task totals',
                           description='Episode and step counts, outcomes, intervention '
                           '(takeover) rates by steps and by episodes, per task and in total.')
    stats.add_argument('root', help='data root')
    stats.add_argument('--task', default=None, help='only this task')
    _common(stats)

    val = sub.add_parser('validate', help='check every episode (schema + sha256 checksums)',
                         description='Check every episode against the schema and its sha256 '
                         'checksums (decoding every frame), plus numbering gaps, half episodes '
                         'and interrupted operations.  Exit 1 when an error is found.')
    val.add_argument('root', help='data root')
    val.add_argument('--task', default=None, help='only this task')
    val.add_argument('--quick', action='store_true',
                     help='skip the checksums (schema, shapes and chunk files only; fast)')
    val.add_argument('--strict', action='store_true', help='exit 1 on warnings too')
    val.add_argument('--no-progress', action='store_true', help='no progress on stderr')
    _common(val)

    rm = sub.add_parser('delete', help='delete episodes and renumber the later ones',
                        description='Delete episodes of one task and renumber the later ones so '
                        'the numbering stays 0..N-1.  Deleted episodes go to '
                        '<root>/<task>/.trash/ unless --purge.  Crash-safe (journal; finish an '
                        'interrupted run with `repair`).  Refused while a writer records into '
                        'the task.  Paths of renumbered episodes change: restart learners and '
                        'loaders reading this task afterwards.')
    rm.add_argument('root', help='data root')
    rm.add_argument('--task', required=True, help='task to delete from')
    rm.add_argument('episodes', nargs='+', metavar='N', type=lambda text: parse_indices([text]),
                    help='episode indices: N, N-M (inclusive) or N,M')
    rm.add_argument('--purge', action='store_true',
                    help='remove the deleted episodes for good instead of keeping them in .trash')
    rm.add_argument('--dry-run', action='store_true', help='print the plan, change nothing')
    rm.add_argument('--no-fsync', action='store_true',
                    help='skip fsync (faster; renames stay atomic, not durable on power loss)')
    _common(rm)

    mg = sub.add_parser('merge', help='append verified copies of other roots\' episodes',
                        description='Copy the episodes of SRC roots into DST, after the last '
                        'episode of each task.  Each source episode is verified first (sha256); '
                        'a bad one is skipped with a message and the rest are copied.  Episodes '
                        'already in DST (same checksums) are skipped, so re-running is safe.  '
                        'Exit 1 when an episode was skipped as bad.')
    mg.add_argument('dst', help='destination data root (created if missing)')
    mg.add_argument('src', nargs='+', help='source data roots')
    mg.add_argument('--task', default=None, help='only this task')
    mg.add_argument('--no-verify', action='store_true',
                    help='check the schema only, not the checksums, before copying')
    mg.add_argument('--allow-duplicates', action='store_true',
                    help='copy episodes even when DST already holds the same data')
    mg.add_argument('--no-progress', action='store_true', help='no progress on stderr')
    mg.add_argument('--no-fsync', action='store_true', help='skip fsync (faster, not durable)')
    _common(mg)

    rp = sub.add_parser('repair', help='finish interrupted deletes, close gaps, clear leftovers',
                        description='Complete an interrupted delete from its journal, remove '
                        'leftovers of killed writers and merges, move half episodes (data '
                        'without meta or the reverse) to .trash, fix meta indices and close '
                        'numbering gaps.  Corrupt episodes are left alone (see validate, delete).')
    rp.add_argument('root', help='data root')
    rp.add_argument('--task', default=None, help='only this task')
    rp.add_argument('--no-fsync', action='store_true', help='skip fsync (faster, not durable)')
    _common(rp)

    im = sub.add_parser('import-lerobot', help='import a LeRobot v3.0 dataset folder',
                        description='Import a LeRobot v3.0 dataset folder (meta/info.json, '
                        'parquet data, mp4 videos or embedded images) as episodes of TASK under '
                        'ROOT, e.g. as the offline buffer of the learner.  Needs the pyarrow '
                        'and av packages, not lerobot.  Episodes already imported are skipped; '
                        'an unreadable episode is reported and the others are imported (exit 1).')
    im.add_argument('folder', help='LeRobot v3.0 dataset folder (holds meta/info.json)')
    im.add_argument('root', help='data root to write into')
    im.add_argument('--task', required=True, help='task name for the episodes')
    im.add_argument('--cameras', default=None,
                    help='comma-separated camera names (default: every video/image feature; '
                    'observation.images.<name> -> <name>)')
    im.add_argument('--image-size', default=None, metavar='HxW',
                    help='resize frames to this size (default: the first camera\'s size)')
    im.add_argument('--episodes', nargs='+', default=None, metavar='N',
                    type=lambda text: parse_indices([text]),
                    help='only these LeRobot episode indices (N, N-M, N,M)')
    im.add_argument('--outcome', default='success', choices=('success', 'fail', 'aborted'),
                    help='outcome when the dataset has no next.success/next.reward '
                    '(default success)')
    im.add_argument('--codec', default='jpeg',
                    help='image codec of the episodes (default jpeg: ~9x the source video\'s '
                    'bytes; lossless lz4: ~100x)')
    im.add_argument('--compact', action='store_true',
                    help='then rewrite each imported episode\'s frames as H.264 GOPs (close to '
                    'the source\'s size; see scarls dataset compact)')
    im.add_argument('--keep-index', action='store_true',
                    help='write LeRobot episode i as episode i (default: append)')
    im.add_argument('--no-progress', action='store_true', help='no progress on stderr')
    im.add_argument('--no-fsync', action='store_true', help='skip fsync (faster, not durable)')
    _common(im)

    ex = sub.add_parser('export', help='episodes as a rosbag2 bag (MCAP or SQLite 3)',
                        description='Write episodes of a task as a rosbag2 bag of the topics '
                        'an ECU publishes (<ns>/camera/<cam>/image_raw, <ns>/actor/step, and '
                        'the end of each episode on <ns>/actor/state), readable by `ros2 bag` '
                        'and Foxglove, replayable into a scheduler with `scarls bag play`, and '
                        'convertible back with `scarls bag to-zarr`.')
    ex.add_argument('--format', default='mcap', choices=('mcap', 'sqlite3'),
                    help='bag storage format (default mcap)')
    ex.add_argument('--data-root', required=True, help='data root')
    ex.add_argument('--task', required=True, help='task to export')
    ex.add_argument('--episodes', nargs='+', default=None, metavar='N',
                    type=lambda text: parse_indices([text]),
                    help='only these episode indices (N, N-M, N,M; default all)')
    ex.add_argument('--out', required=True, help='bag folder to create (must not exist)')
    ex.add_argument('--namespace', default=None,
                    help='ROS namespace of the topics (default: the episodes\' ECU id)')
    ex.add_argument('--no-progress', action='store_true', help='no progress on stderr')
    _common(ex)

    cp = sub.add_parser('compact', help='rewrite finished episodes\' frames as H.264 GOPs',
                        description='Compressed mode: rewrite the camera arrays of finished '
                        'episodes in place as short H.264 GOPs aligned with the zarr chunks '
                        '(~1/250 of lz4\'s bytes, lossy, ~35-39 dB PSNR; see docs/BENCHMARKS.md). '
                        'Frames are checked against the episode\'s checksums first; episodes '
                        'already compacted are skipped.  Recording stays lossless: run this in '
                        'the background on finished episodes.  Readers (EpisodeDataset, '
                        'validate) read both forms.')
    cp.add_argument('root', help='data root')
    cp.add_argument('--task', default=None, help='only this task')
    cp.add_argument('--gop', type=int, default=4, help='frames per chunk / GOP (default 4)')
    cp.add_argument('--crf', type=int, default=None, help='x264 CRF (default 28; lower: better)')
    cp.add_argument('--no-fsync', action='store_true', help='skip fsync (faster, not durable)')
    _common(cp)

    ds.set_defaults(func=run_dataset)
    return ds


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser with the ``dataset`` command (prog ``scarls``)."""
    parser = argparse.ArgumentParser(prog='scarls')
    sub = parser.add_subparsers(dest='command', required=True)
    add_dataset_parser(sub)
    return parser


# -- output helpers ----------------------------------------------------------------------------


class _Progress:
    """Progress of long work on stderr: an updating line on a terminal, else a line every 2 s."""

    def __init__(self, what: str, enabled: bool, stream: TextIO | None = None) -> None:
        self.what = what
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.t0 = time.monotonic()
        self.last = self.t0
        self.shown = False

    def __call__(self, done: int, total: int, label: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if self.tty:
            if now - self.last >= 0.1 or done == total:
                self.stream.write(f'\r{self.what} {done}/{total} {label}'[:120].ljust(120))
                self.stream.flush()
                self.last, self.shown = now, True
        elif now - self.last >= 2.0 and done < total:
            self.stream.write(f'{self.what} {done}/{total} ({now - self.t0:.0f} s) {label}\n')
            self.stream.flush()
            self.last = now

    def close(self) -> None:
        if self.tty and self.shown:
            self.stream.write('\r' + ' ' * 120 + '\r')
            self.stream.flush()


def _mb(n: int | None) -> str:
    from scarls.episodes.tools import format_bytes
    return format_bytes(n)


def _pct(x: float) -> str:
    return f'{100 * x:.1f}%'


def _ranges(values: list[int]) -> str:
    from scarls.episodes.tools import format_ranges
    return format_ranges(values)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, sort_keys=False, default=str))


# -- subcommands -------------------------------------------------------------------------------


def _cmd_info(args: argparse.Namespace) -> int:
    from scarls.episodes.stats import dataset_info
    summary = dataset_info(args.root, args.task)
    if args.json:
        _print_json(summary.to_dict())
        return EXIT_OK
    tot = summary.totals
    print(f'data root {summary.root}: {len(summary.tasks)} task(s), {tot.episodes} episodes, '
          f'{tot.steps} steps, {_mb(tot.bytes)}')
    for t in summary.tasks:
        span = '' if t.first_index is None else f' ({t.first_index}-{t.last_index})'
        print(f'\ntask {t.task}: {t.episodes} episodes{span}, {t.steps} steps '
              f'({t.seconds:.0f} s), {_mb(t.bytes)}')
        cams = ', '.join(f'{c} {"/".join(s)}' for c, s in t.image_shapes.items()) or '-'
        print(f'  cameras: {cams}')
        codecs = ', '.join(f'{c} x{n}' for c, n in t.codecs.items()) or '-'
        print(f'  codecs: {codecs}')
        dims = (f'state {"/".join(map(str, t.state_dims)) or "-"}, '
                f'action {"/".join(map(str, t.action_dims)) or "-"}, '
                f'fps {"/".join(f"{f:g}" for f in t.fps) or "-"}')
        print(f'  dims: {dims}')
        if t.gaps:
            print(f'  numbering gaps: {_ranges(t.gaps)} (run repair)')
        if t.trash_bytes:
            print(f'  trash: {_mb(t.trash_bytes)} in {t.task}/.trash (delete it to free space)')
        for item in t.unreadable:
            print(f'  unreadable meta: {item}')
        for item in t.active_writers:
            print(f'  writer active: {item}')
        for item in t.leftovers:
            print(f'  leftover: {item}')
    return EXIT_OK


def _cmd_stats(args: argparse.Namespace) -> int:
    from scarls.episodes.stats import dataset_stats
    summary = dataset_stats(args.root, args.task)
    if args.json:
        _print_json(summary.to_dict())
        return EXIT_OK
    header = (f'{"task":<20} {"episodes":>8} {"steps":>8} {"success":>7} {"fail":>5} '
              f'{"aborted":>7} {"succ.rate":>9} {"interv.steps":>12} {"interv.eps":>10}')
    print(header)
    rows = [*summary.tasks, summary.totals] if len(summary.tasks) != 1 else summary.tasks
    for t in rows:
        name = 'total' if t.task == '*' else t.task
        o = t.outcomes
        print(f'{name:<20} {t.episodes:>8} {t.steps:>8} {o["success"]:>7} {o["fail"]:>5} '
              f'{o["aborted"]:>7} {_pct(t.success_rate):>9} '
              f'{t.intervention_steps:>5} {_pct(t.intervention_rate):>6} '
              f'{t.episodes_with_intervention:>3} {_pct(t.episode_intervention_rate):>6}')
    tot = summary.totals
    if tot.model_versions:
        print('model versions: ' + ', '.join(f'{k} x{v}' for k, v in tot.model_versions.items()))
    if tot.ecu_ids:
        print('ECUs: ' + ', '.join(f'{k} x{v}' for k, v in tot.ecu_ids.items()))
    if tot.robots:
        print('robots: ' + ', '.join(f'{k} x{v}' for k, v in tot.robots.items()))
    if tot.camera_skew_ms:
        print('camera skew to the joint state (worst episode p50 / max): ' + ', '.join(
            f'{c} {v["p50"]:.1f}/{v["max"]:.1f} ms' for c, v in tot.camera_skew_ms.items()))
    for line in _recording_lines(tot):
        print(line)
    if tot.crash_lost_episodes:
        print(f'lost with a killed writer: {tot.crash_lost_episodes} episodes, '
              f'{tot.crash_lost_steps} steps on disk (more may have been in its memory)')
    for item in tot.unreadable:
        print(f'unreadable meta: {item}')
    return EXIT_OK


_DROP_CAUSES = {'no_frames': 'frames never arrived', 'queue_full': 'writer queue full',
                'not_received': 'step never received', 'not_stored': 'not stored'}
_SAFETY_LABELS = (('clamped_heavily', 'clamped heavily'), ('holding', 'held'),
                  ('estopped', 'e-stopped'), ('fault', 'robot fault'),
                  ('resetting', 'resetting'))


def _recording_lines(t) -> list[str]:
    """What the recorder could not keep, and the steps the robot did not execute."""
    lines = []
    if t.dropped_steps:
        split = ', '.join(f'{_DROP_CAUSES.get(k, k)} {v}'
                          for k, v in sorted(t.dropped_by_cause.items()) if v)
        lines.append(f'dropped steps: {t.dropped_steps}' + (f' ({split})' if split else ''))
    if t.episodes_with_safety:
        parts = ', '.join(f'{label} {t.safety.get(key, 0)}' for key, label in _SAFETY_LABELS)
        lines.append(f'steps not executed by the robot: {t.not_executed_steps} ({parts}; '
                     f'{t.episodes_with_safety} of {t.episodes} episodes record the driver '
                     f'state); clamped lightly (executed): {t.safety.get("clamped", 0)}')
    if t.lost_episodes:
        lines.append(f'lost by the recorder: {t.lost_episodes} episodes, {t.lost_steps} steps '
                     '(could not be stored, or no recordable step)')
    return lines


def _cmd_validate(args: argparse.Namespace) -> int:
    from scarls.episodes.tools import validate_dataset
    progress = _Progress('validating', not args.no_progress)
    try:
        report = validate_dataset(args.root, args.task, deep=not args.quick, progress=progress)
    finally:
        progress.close()
    failed = not report.ok or (args.strict and report.warnings)
    if args.json:
        _print_json(report.to_dict())
    else:
        for p in report.problems:
            print(p)
        kind = 'quick' if args.quick else 'deep'
        print(f'{kind} check of {report.episodes} episodes in {len(report.tasks)} task(s): '
              f'{report.valid_episodes} valid, {len(report.errors)} error(s), '
              f'{len(report.warnings)} warning(s)')
        if any(p.repairable for p in report.problems if p.severity != 'info'):
            print('layout problems can be fixed with: scarls dataset repair '
                  f'{args.root}' + (f' --task {args.task}' if args.task else ''))
    return EXIT_PROBLEMS if failed else EXIT_OK


def _cmd_delete(args: argparse.Namespace) -> int:
    from scarls.episodes.tools import delete_episodes
    indices = sorted({i for part in args.episodes for i in part})
    res = delete_episodes(args.root, args.task, indices, purge=args.purge, dry_run=args.dry_run,
                          fsync=not args.no_fsync)
    if args.json:
        _print_json(res.to_dict())
        return EXIT_OK
    verb = 'would delete' if res.dry_run else 'deleted'
    where = ''
    if res.purged:
        where = ' (removed for good)'
    elif res.trash:
        where = f' (moved to {Path(args.root) / args.task / res.trash})'
    print(f'{verb} episodes {_ranges(res.deleted) or "none"} of {args.task}{where}')
    if res.renamed:
        moves = ', '.join(f'{a}->{b}' for a, b in res.renamed[:10])
        more = f' and {len(res.renamed) - 10} more' if len(res.renamed) > 10 else ''
        print(f'{"would renumber" if res.dry_run else "renumbered"} {len(res.renamed)} '
              f'episode(s): {moves}{more}')
    have = 'would have' if res.dry_run else 'has'
    n = res.episodes_after
    print(f'{args.task} {have} {n} episode(s)' + (f' (0-{n - 1})' if n else ''))
    return EXIT_OK


def _cmd_merge(args: argparse.Namespace) -> int:
    from scarls.episodes.merge import merge_datasets
    progress = _Progress('merging', not args.no_progress)
    try:
        res = merge_datasets(args.dst, args.src, args.task, verify=not args.no_verify,
                             skip_duplicates=not args.allow_duplicates,
                             fsync=not args.no_fsync, progress=progress)
    finally:
        progress.close()
    if args.json:
        _print_json(res.to_dict())
    else:
        for c in res.copied:
            print(f'copied {c["source"]}/{c["task"]}/episode_{c["index"]} -> '
                  f'{c["dst_task"]}/episode_{c["dst_index"]}')
        for d in res.duplicates:
            print(f'already present: {d["source"]}/{d["task"]}/episode_{d["index"]} '
                  f'(= {d["task"]}/episode_{d["existing_index"]})')
        for s in res.skipped:
            print(f'SKIPPED {s["source"]}/{s["task"]}/episode_{s["index"]}: {s["reason"]}')
        print(f'merged into {res.root}: {len(res.copied)} copied, {len(res.duplicates)} already '
              f'present, {len(res.skipped)} skipped')
    return EXIT_OK if res.ok else EXIT_PROBLEMS


def _cmd_repair(args: argparse.Namespace) -> int:
    from scarls.episodes.tools import repair
    res = repair(args.root, args.task, fsync=not args.no_fsync)
    if args.json:
        _print_json(res.to_dict())
    else:
        for a in res.actions:
            print(a)
        for r in res.remaining:
            print(f'NOT REPAIRED {r}')
        if not res.actions and not res.remaining:
            print('nothing to repair')
    return EXIT_OK if res.ok else EXIT_PROBLEMS


def _image_size(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    h, sep, w = text.lower().partition('x')
    try:
        size = (int(h), int(w))
    except ValueError:
        size = (0, 0)
    if not sep or min(size) <= 0:
        raise argparse.ArgumentTypeError(f'bad --image-size {text!r}: use HxW, e.g. 96x128')
    return size


def _cmd_import(args: argparse.Namespace) -> int:
    from scarls.episodes.lerobot_import import import_lerobot_v3
    cameras = [c.strip() for c in args.cameras.split(',') if c.strip()] if args.cameras else None
    episodes = sorted({i for part in args.episodes for i in part}) if args.episodes else None
    progress = _Progress('importing', not args.no_progress)

    def estimate(total: int, source: int) -> None:
        ratio = total / source if source else float('inf')
        what = f'{args.codec}{" + H.264 compaction" if args.compact else ""}'
        print(f'writing about {_mb(total)} ({what}; the LeRobot source: {_mb(source)}, '
              f'{ratio:.1f}x)', file=sys.stderr)
        if ratio > 4:
            print(f'warning: the import will take {ratio:.0f}x the disk space of the LeRobot '
                  'dataset; --compact stores H.264 GOPs close to its size', file=sys.stderr)

    try:
        res = import_lerobot_v3(args.folder, args.root, args.task, cameras=cameras,
                                image_shape=_image_size(args.image_size), episodes=episodes,
                                outcome=args.outcome, codec=args.codec, compact=args.compact,
                                keep_episode_index=args.keep_index,
                                fsync=not args.no_fsync, progress=progress,
                                on_estimate=None if args.json else estimate)
    finally:
        progress.close()
    if args.json:
        _print_json(res.to_dict())
    else:
        for item in res.imported:
            print(f'imported LeRobot episode {item["episode_index"]} -> {args.task}/episode_'
                  f'{item["index"]} ({item["steps"]} steps)')
        for item in res.failed:
            print(f'FAILED LeRobot episode {item["episode_index"]}: {item["reason"]}')
        print(f'{len(res.imported)} imported, {len(res.already_present)} already present, '
              f'{len(res.failed)} failed')
        if res.imported:
            print(f'{_mb(res.bytes_written)} written (the LeRobot source: '
                  f'{_mb(res.source_bytes)} for these episodes)')
    return EXIT_OK if res.ok else EXIT_PROBLEMS


def _cmd_export(args: argparse.Namespace) -> int:
    from scarls.bags.convert import episodes_to_bag
    from scarls.bags.errors import BagError
    episodes = sorted({i for part in args.episodes for i in part}) if args.episodes else None
    progress = _Progress('exporting', not args.no_progress)
    try:
        res = episodes_to_bag(args.data_root, args.task, args.out, episodes=episodes,
                              storage=args.format, namespace=args.namespace,
                              progress=progress)
    except BagError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_REFUSED
    finally:
        progress.close()
    if args.json:
        _print_json(res)
    else:
        for item in res['episodes']:
            print(f'episode {item["index"]}: {item["outcome"]}, {item["steps"]} steps')
        print(f'{len(res["episodes"])} episodes -> {res["bag"]} ({res["storage"]}, topics '
              f'under {res["namespace"]})')
    return EXIT_OK


def _cmd_compact(args: argparse.Namespace) -> int:
    from scarls.episodes.compact import compact_episode
    from scarls.episodes.errors import SchemaError
    from scarls.episodes.layout import list_episodes
    results, failed = [], []
    for entry in list_episodes(args.root, args.task):
        try:
            res = compact_episode(entry.path, gop=args.gop, crf=args.crf,
                                  fsync=not args.no_fsync)
        except SchemaError as exc:
            failed.append({'episode': f'{entry.task}/episode_{entry.index}', 'reason': str(exc)})
            if not args.json:
                print(f'FAILED {entry.task}/episode_{entry.index}: {exc}')
            continue
        results.append(res)
        if not args.json:
            what = 'already compact' if res.skipped else (
                f'{_mb(res.bytes_before)} -> {_mb(res.bytes_after)} of frames, '
                f'{res.encode_frames_per_s:.0f} frames/s')
            print(f'{entry.task}/episode_{entry.index}: {what}')
    if args.json:
        _print_json({'compacted': [r.to_dict() for r in results], 'failed': failed})
    else:
        done = [r for r in results if not r.skipped]
        print(f'{len(done)} compacted ({_mb(sum(r.bytes_before for r in done))} -> '
              f'{_mb(sum(r.bytes_after for r in done))}), {len(results) - len(done)} already '
              f'compact, {len(failed)} failed')
    return EXIT_PROBLEMS if failed else EXIT_OK


_COMMANDS = {
    'info': _cmd_info,
    'stats': _cmd_stats,
    'validate': _cmd_validate,
    'delete': _cmd_delete,
    'merge': _cmd_merge,
    'repair': _cmd_repair,
    'import-lerobot': _cmd_import,
    'export': _cmd_export,
    'compact': _cmd_compact,
}


def run_dataset(args: argparse.Namespace) -> int:
    """Run a parsed ``dataset`` command; return the process exit code."""
    from scarls.episodes.errors import EpisodeFormatError
    if not getattr(args, 'verbose', False):
        # the results are printed; the library's own progress logs would repeat them
        logging.getLogger('scarls.episodes').setLevel(logging.WARNING)
    try:
        return _COMMANDS[args.dataset_command](args)
    except argparse.ArgumentTypeError as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_REFUSED
    except (EpisodeFormatError, ValueError, OSError) as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_REFUSED


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format='%(message)s')
    return run_dataset(args)


if __name__ == '__main__':
    sys.exit(main())
