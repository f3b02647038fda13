"""`scarls replay-check`: recorded episodes through a candidate checkpoint, open loop.

The argparse part of :mod:`scarls.learner.replay_check`. :func:`register` adds the
``replay-check`` command to the ``scarls`` parser (it sets ``func=run``);
``python -m scarls.cli.replay_check ...`` runs it alone (a leading ``replay-check`` is optional).
See ``DESCRIPTION`` for the arguments and exit codes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, TextIO

from scarls.cli.dataset import parse_indices

__all__ = ['DESCRIPTION', 'build_parser', 'main', 'register', 'resolve_checkpoint', 'run']

log = logging.getLogger('scarls.replay_check')

EXIT_OK = 0
EXIT_FLAGGED = 1
EXIT_BAD_INPUT = 2

DESCRIPTION = """\
Replay recorded episodes (<data-root>/<task>/episode_N.zarr) through a candidate checkpoint
open loop and report how its predicted action chunks differ from the logged actions: per
episode, per control mode (human = takeover/demonstration steps, policy = steps the recorded
model drove), per progress third (early/middle/late) and task stage when recorded, and per
joint group (left arm, right arm, grippers). Errors: mse (rad^2; grippers in their 0..1 unit),
mae, max, and the first step where the error stayed above --tolerance ("diverges@").

With --baseline (e.g. `deployed`) the same frames go through the baseline too, and a cell
regresses when the candidate's mse exceeds the baseline's by more than --margin (relative)
plus --abs-margin. The verdict judges the --gate-modes cells (human steps by default).

CHECKPOINT and BASELINE: a checkpoint file, or a version of the registry (--registry, default
<data-root>/checkpoints/<task>): N, vN, `deployed`, `latest` or `best`.

exit codes: 0 checked (and, with --fail-on-regression, approved); 1 the verdict rejects the
candidate and --fail-on-regression was given (or --strict and an episode was skipped);
2 bad input (missing or corrupt checkpoint, no episodes, nothing could be checked, a policy
that does not fit the episodes). --json prints one JSON document on stdout; progress goes to
stderr.
"""


class BadInput(Exception):
    """Input the command cannot work with (exit 2)."""


def _indices(text: str) -> list[int]:
    """Episode indices like ``0,3-5`` (the same syntax as `scarls dataset`)."""
    return parse_indices([text])


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected an integer, got {text!r}') from None
    if v < 1:
        raise argparse.ArgumentTypeError(f'must be >= 1, got {v}')
    return v


def _non_negative(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f'expected a number, got {text!r}') from None
    if not (math.isfinite(v) and v >= 0):
        raise argparse.ArgumentTypeError(f'must be a finite number >= 0, got {text!r}')
    return v


def _modes(text: str) -> tuple[str, ...]:
    modes = tuple(m.strip() for m in text.split(',') if m.strip())
    if not modes or any(m not in ('all', 'human', 'policy') for m in modes):
        raise argparse.ArgumentTypeError(f'gate modes must be human, policy or all, got {text!r}')
    return modes


def _add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument('--checkpoint', required=True, metavar='PATH_OR_VERSION',
                   help='candidate: a checkpoint file or a registry version')
    p.add_argument('--baseline', default=None, metavar='PATH_OR_VERSION',
                   help='compare with this checkpoint (e.g. deployed); default: none')
    p.add_argument('--data-root', default=None,
                   help='data root (holds <task>/episode_N.zarr); needed unless --bag is given')
    p.add_argument('--bag', default=None, metavar='BAG',
                   help="replay the episodes recorded in this rosbag2 bag of an ECU's topics "
                   '(rebuilt in a temporary folder exactly as the scheduler would) instead '
                   'of the Zarr episodes of --data-root')
    p.add_argument('--task', required=True, help='task whose episodes are replayed')
    p.add_argument('--episodes', type=_indices, default=None, metavar='LIST',
                   help='episode indices, e.g. 0,3-5 (default: all)')
    p.add_argument('--registry', default=None,
                   help='checkpoint registry for versions '
                   '(default <data-root>/checkpoints/<task>)')
    p.add_argument('--stride', type=_positive_int, default=1,
                   help='compare every N-th step of each control mode (default 1)')
    p.add_argument('--horizon', type=_positive_int, default=None,
                   help='compare only the first N entries of each chunk (default: all)')
    p.add_argument('--tolerance', type=_non_negative, default=0.1,
                   help='divergence: largest joint error above this (rad, default 0.1) ...')
    p.add_argument('--persist', type=_positive_int, default=3,
                   help='... on this many consecutive compared steps (default 3)')
    p.add_argument('--margin', type=_non_negative, default=0.20,
                   help='relative mse margin over the baseline before a cell regresses '
                   '(default 0.20 = 20%%)')
    p.add_argument('--abs-margin', type=_non_negative, default=5e-4,
                   help='absolute mse margin in rad^2 (default 5e-4)')
    p.add_argument('--max-mse', type=_non_negative, default=None,
                   help='reject when the candidate mse on the gated steps is above this')
    p.add_argument('--max-regressed-share', type=_non_negative, default=0.25,
                   help='reject when more than this share of episodes regress (default 0.25)')
    p.add_argument('--gate-modes', type=_modes, default=('human',), metavar='MODES',
                   help='control modes the verdict judges: human, policy, all (default human)')
    p.add_argument('--segments', action='store_true',
                   help='table: also show the progress thirds and stages of every episode')
    p.add_argument('--json', action='store_true', help='print one JSON document on stdout')
    p.add_argument('--fail-on-regression', action='store_true',
                   help='exit 1 when the verdict rejects the candidate')
    p.add_argument('--strict', action='store_true',
                   help='an episode that cannot be checked rejects the candidate')
    p.add_argument('--no-progress', action='store_true', help='no progress on stderr')
    p.add_argument('-v', '--verbose', action='store_true', help='debug logging')


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``replay-check`` command to an argparse subparsers object."""
    p = subparsers.add_parser(
        'replay-check', help='replay recorded episodes through a checkpoint; flag regressions',
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    """A stand-alone parser (prog ``scarls replay-check``)."""
    p = argparse.ArgumentParser(prog='scarls replay-check', description=DESCRIPTION,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(p)
    return p


# -- checkpoints -------------------------------------------------------------------------------

_VERSION_RE = re.compile(r'^v?(\d+)$')
_KEYWORDS = ('deployed', 'latest', 'best')


def _registry_entry(root: Path, spec: str) -> tuple[Path, str | None, str]:
    """(file, sha256, label) of a registry version, from the index alone (read only)."""
    from scarls.checkpoints.registry import INDEX_NAME
    index = root / INDEX_NAME
    try:
        data = json.loads(index.read_text())
        records = {int(r['version']): r for r in data['records']}
        deployed = data.get('deployed')
    except FileNotFoundError:
        raise BadInput(f'{spec!r} is neither a checkpoint file nor a version: there is no '
                       f'registry index {index}') from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadInput(f'{index}: unreadable registry index ({exc})') from exc
    usable = {v: r for v, r in records.items()
              if r.get('path') and r.get('approved') and not r.get('revoked')}
    if spec == 'deployed':
        if deployed is None:
            raise BadInput(f'{index}: no checkpoint is marked deployed')
        version = int(deployed)
    elif spec == 'latest':
        if not usable:
            raise BadInput(f'{index}: no approved checkpoint with weights')
        version = max(usable)
    elif spec == 'best':
        ranked = [(r['metrics']['open_loop_error'], -v) for v, r in usable.items()
                  if 'open_loop_error' in r.get('metrics', {})]
        if not ranked:
            raise BadInput(f'{index}: no approved checkpoint with an open-loop error')
        version = -min(ranked)[1]
    else:
        m = _VERSION_RE.match(spec)
        assert m is not None
        version = int(m.group(1))
    if version not in records:
        raise BadInput(f'{index}: no checkpoint version {version}; known versions: '
                       f'{sorted(records)}')
    rec = records[version]
    if not rec.get('path'):
        raise BadInput(f'{index}: checkpoint v{version} was stored without weights (rejected '
                       'candidate or pruned)')
    return root / rec['path'], rec.get('sha256'), f'v{version} ({root / rec["path"]})'


def resolve_checkpoint(spec: str, registry: Path) -> tuple[Any, str]:
    """Load ``spec`` (a file, or a version / keyword of ``registry``) with the verified loader;
    return ``(policy, label)``. Raises :class:`BadInput` naming the file and the problem."""
    from scarls.checkpoints.format import CheckpointRejected, load_checkpoint
    path = Path(spec).expanduser()
    sha = None
    if path.is_file():
        label = str(path)
    elif spec in _KEYWORDS or _VERSION_RE.match(spec):
        path, sha, label = _registry_entry(registry, spec)
    elif path.exists():
        raise BadInput(f'{path}: not a checkpoint file')
    else:
        raise BadInput(f'{path}: checkpoint file not found (and not a registry version: N, '
                       f'vN, {", ".join(_KEYWORDS)})')
    try:
        policy, header = load_checkpoint(path, expected_sha256=sha)
    except CheckpointRejected as exc:
        raise BadInput(f'{path}: checkpoint rejected: {exc}') from exc
    if sha is None:
        label = f'v{header.version} ({path})'
    return policy, label


# -- output ------------------------------------------------------------------------------------


class _Progress:
    """Episodes done on stderr: an updating line on a terminal, else a line every 2 s."""

    def __init__(self, total: int, enabled: bool, stream: TextIO | None = None) -> None:
        self.total = total
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and self.stream.isatty()
        self.t0 = self.last = time.monotonic()
        self.shown = False

    def __call__(self, done: int, name: str) -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        text = f'replaying {done}/{self.total} {name} ({now - self.t0:.0f} s)'
        if self.tty:
            self.stream.write('\r' + text[:100].ljust(100))
            self.stream.flush()
            self.shown = True
        elif now - self.last >= 2.0 and done < self.total:
            self.stream.write(text + '\n')
            self.stream.flush()
            self.last = now

    def close(self) -> None:
        if self.tty and self.shown:
            self.stream.write('\r' + ' ' * 100 + '\r')
            self.stream.flush()


def _f(v: float | None, width: int = 9) -> str:
    if v is None or not math.isfinite(v):
        return '-'.rjust(width)
    return f'{v:.3g}'.rjust(width)


def _table(report: Any, decision: Any, segments: bool, out: TextIO) -> None:
    has_base = report.baseline is not None
    gated = report.gate_config.gate_modes if report.gate_config is not None else ()
    head = (f'{"episode":<24} {"phase":<22} {"frames":>6} {"mse":>9} {"mae":>9} {"max":>9} '
            f'{"L-arm":>9} {"R-arm":>9} {"grip":>9} {"diverges@":>10} {"worst joint":<14}')
    if has_base:
        head += f' {"base mse":>9} {"change":>8}'
    print(f'candidate: {report.candidate}', file=out)
    if has_base:
        print(f'baseline:  {report.baseline}', file=out)
    print(head, file=out)
    print('-' * len(head), file=out)

    def row(name: str, cell: Any, diverge: str) -> None:
        c = cell.candidate
        line = (f'{name[:24]:<24} {cell.key[:22]:<22} {cell.frames:>6} {_f(c["all"].mse)} '
                f'{_f(c["all"].mae)} {_f(c["all"].max)} '
                f'{_f(c["left_arm"].mse if "left_arm" in c else None)} '
                f'{_f(c["right_arm"].mse if "right_arm" in c else None)} '
                f'{_f(c["grippers"].mse if "grippers" in c else None)} '
                f'{diverge:>10} {(cell.worst_joint or "-"):<14}')
        if has_base and cell.baseline is not None:
            b = cell.baseline['all'].mse
            m = c['all'].mse
            change = '-'
            if math.isfinite(b) and b > 0 and math.isfinite(m):
                change = f'{100 * (m / b - 1):+.0f}%'
            flag = ''
            if cell.regressed:   # only the gated modes decide; the others are information
                word = 'REGRESSED' if cell.mode in gated else 'worse'
                flag = f'  {word} ' + ','.join(cell.regressed)
            line += f' {_f(b)} {change:>8}{flag}'
        print(line, file=out)

    def shown(cells: list) -> list:
        # with one control mode only, the 'all' rows repeat it
        single = len({c.mode for c in cells}) == 2
        return [c for c in cells if not (single and c.mode == 'all')]

    for e in report.episodes:
        for cell in shown(e.cells):
            if cell.segment != 'all' and not segments:
                continue
            step = cell.candidate['all'].first_divergence
            div = '-' if step is None else str(step)
            row(e.name, cell, div)
    print('-' * len(head), file=out)
    for cell in shown(report.total):
        n = cell.candidate['all'].diverged_episodes
        row(f'ALL ({len(report.episodes)} episodes)', cell,
            f'{n} eps' if n else '-')
    margin = report.gate_config.abs_margin if report.gate_config is not None else 5e-4
    for e in report.episodes:
        for group, lag in e.lag.items():
            steps, mse, at0 = lag.get('steps'), lag.get('mse'), lag.get('mse_at_0')
            if steps is None or abs(steps) < 2 or mse is None or at0 is None \
                    or not math.isfinite(at0) or at0 < 2 * mse or at0 - mse < margin:
                continue
            when = 'early' if steps > 0 else 'late'
            secs = f', {abs(steps) / e.fps:.2f} s' if e.fps else ''
            base = lag.get('baseline_steps')
            print(f'timing: {e.name} {group}: acts {abs(steps)} steps {when}{secs} (mse '
                  f'{mse:.3g} when shifted vs {at0:.3g})'
                  + ('' if base is None else f'; baseline shift {base} steps'), file=out)
    for s in report.skipped:
        print(f'SKIPPED {s.name}: {s.reason}', file=out)
    verdict = 'APPROVED' if decision.approved else 'REJECTED'
    print(f'\nverdict: {verdict}: {decision.reason}', file=out)
    eps = decision.regressed_episodes
    if eps:
        print(f'episodes with regressed cells: {", ".join(eps[:20])}'
              + (' ...' if len(eps) > 20 else ''), file=out)


# -- the command -------------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    """Run a parsed ``replay-check`` command; return the process exit code."""
    try:
        return _run(args)
    except BadInput as exc:
        print(f'error: {exc}', file=sys.stderr)
        return EXIT_BAD_INPUT


def _run(args: argparse.Namespace) -> int:
    import torch

    if not getattr(args, 'verbose', False):
        logging.getLogger('scarls').setLevel(logging.ERROR)   # skips are printed, not logged
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    if args.bag:
        with tempfile.TemporaryDirectory(prefix='scarls-replay-') as tmp:
            return _run_on(args, _episodes_from_bag(args.bag, Path(tmp), args.task))
    if not args.data_root:
        raise BadInput('give --data-root (Zarr episodes) or --bag (a recorded bag)')
    return _run_on(args, Path(args.data_root).expanduser())


def _episodes_from_bag(bag: str, root: Path, task: str) -> Path:
    from scarls.bags.convert import CAMERAS, bag_cameras, bag_to_episodes, find_namespace
    from scarls.bags.errors import BagError
    from scarls.bags.io import BagReader
    try:
        with BagReader(bag) as reader:   # rebuild with the cameras the bag has
            ns = find_namespace(list(reader.topics))
            cameras = bag_cameras(reader.topics, ns)
        report = bag_to_episodes(bag, root, task=task, fsync=False,
                                 cameras=cameras or CAMERAS)
    except (BagError, OSError, ValueError) as exc:
        raise BadInput(str(exc)) from exc
    for item in report.not_rebuilt:
        print(f'{bag}: episode not rebuilt: {item}', file=sys.stderr)
    if not report.saved:
        raise BadInput(f'{bag}: no complete episode of task {task!r} in the bag')
    print(f'{bag}: {len(report.saved)} episodes rebuilt', file=sys.stderr)
    return root


def _run_on(args: argparse.Namespace, root: Path) -> int:
    """The check on the Zarr episodes under ``root`` (the data root, or a bag's rebuild)."""
    from scarls.episodes import list_episodes
    from scarls.learner.replay_check import ReplayConfig, ReplayGateConfig
    from scarls.learner.replay_episodes import SkippedEpisode, iter_disk_episodes
    from scarls.learner.replay_gate import ReplayGate
    from scarls.learner.rollout import policy_cameras

    data_root = Path(args.data_root).expanduser() if args.data_root else None
    if args.registry:
        registry = Path(args.registry).expanduser()
    elif data_root is not None:
        registry = data_root / 'checkpoints' / args.task
    else:
        registry = root / 'checkpoints' / args.task   # none there: versions need --registry
    try:
        replay = ReplayConfig(stride=args.stride, horizon=args.horizon,
                              tolerance=args.tolerance if args.tolerance > 0 else 1e-9,
                              persist=args.persist)
        gate_cfg = ReplayGateConfig(
            rel_margin=args.margin, abs_margin=args.abs_margin,
            max_mse=args.max_mse if args.max_mse else None, gate_modes=args.gate_modes,
            max_regressed_share=min(1.0, args.max_regressed_share),
            allow_skipped=not args.strict)
    except ValueError as exc:
        raise BadInput(str(exc)) from exc
    candidate, cand_label = resolve_checkpoint(args.checkpoint, registry)
    baseline, base_label = (None, None)
    if args.baseline:
        baseline, base_label = resolve_checkpoint(args.baseline, registry)
    if not root.is_dir():
        raise BadInput(f'{root}: data root not found')
    try:
        entries = list_episodes(root, args.task)
    except (ValueError, OSError) as exc:
        raise BadInput(str(exc)) from exc
    if not entries:
        raise BadInput(f'{root / args.task}: no episodes of task {args.task!r}')
    total = len(entries) if args.episodes is None else len(args.episodes)
    cameras = tuple(dict.fromkeys(policy_cameras(candidate) + (
        policy_cameras(baseline) if baseline is not None else ())))
    skipped: list[SkippedEpisode] = []
    episodes = iter_disk_episodes(root, args.task, indices=args.episodes, cameras=cameras,
                                  stride=args.stride, skipped=skipped)
    progress = _Progress(total, not args.no_progress)
    gate = ReplayGate(gate_cfg, replay)
    try:
        decision = gate.check(candidate, episodes, baseline=baseline,
                              labels=(cand_label, base_label or 'baseline'),
                              skipped=skipped, progress=progress)
    finally:
        progress.close()
    report = decision.report
    for s in report.skipped:
        print(f'skipped {s.name}: {s.reason}', file=sys.stderr)
    if not report.episodes:
        raise BadInput('nothing could be checked: ' + '; '.join(
            s.reason for s in report.skipped[:3]))
    if args.json:
        doc = report.to_dict()
        doc['decision'] = decision.to_dict()
        print(json.dumps(doc, indent=1, allow_nan=False, default=_json_default))
    else:
        _table(report, decision, args.segments, sys.stdout)
    if args.fail_on_regression and not decision.approved:
        return EXIT_FLAGGED
    if args.strict and report.skipped:
        return EXIT_FLAGGED
    return EXIT_OK


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == 'replay-check':
        argv = argv[1:]
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format='%(message)s')
    return run(args)


if __name__ == '__main__':
    sys.exit(main())
