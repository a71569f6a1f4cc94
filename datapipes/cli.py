"""``vl data``: make shards from a folder, inspect shards, write synthetic shards.

    vl data shards FOLDER ANNOTATIONS --out DIR [--maxcount N] [--maxsize 1G] [--prefix NAME]
    vl data shards --videos FOLDER --annotations FILE --out DIR [...]   (the same, with flags)
    vl data inspect SHARDS [--limit N] [--decode] [--json]
    vl data synth --out DIR --train N --val N --test N [--frames 16 --size 64 --fps 8 --task all]

Commands that need a ``vl`` model (``vl data vq-targets``) are not imported here: ``datapipes`` never imports
``vl``. The ``vl`` CLI passes them in as ``extra_commands`` (``vl.tools.data``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Mapping
from typing import Callable, NamedTuple, Optional


class ExtraCommand(NamedTuple):
    """A subcommand a caller adds to ``vl data``: it receives every argument after its name."""

    help: str  # one line for ``vl data --help``
    run: Callable[[list[str]], int]  # its main: arguments -> exit status (it parses them, --help included)


def _parser(extra_commands: Mapping[str, ExtraCommand]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vl data", description="Make, inspect and synthesise video-text shards.")
    names = ["shards", "inspect", "synth", *extra_commands]
    sub = parser.add_subparsers(dest="command", required=True, metavar="{" + ",".join(names) + "}")

    p = sub.add_parser("shards", help="folder of videos + JSONL/CSV annotations -> WebDataset shards",
                       description="Write WebDataset shards (KEY.mp4, KEY.txt, KEY.json) from a folder of videos "
                       "or images and an annotation file: JSONL rows with `video` and any of caption/captions/"
                       "qa/start/end, or CSV with video,caption.")
    # Each input is given either positionally or by its flag (README's form): FOLDER ANNOTATIONS, or
    # --videos FOLDER --annotations FILE.
    p.add_argument("folder", nargs="?", help="folder the `video` paths of the annotations are relative to")
    p.add_argument("annotations", nargs="?", help="annotation file (.jsonl or .csv)")
    p.add_argument("--videos", metavar="FOLDER", help="the video folder (instead of the first positional argument)")
    p.add_argument("--annotations", dest="annotations_file", metavar="FILE",
                   help="the annotation file (instead of the second positional argument)")
    p.add_argument("--out", required=True, help="output folder for the shards")
    p.add_argument("--prefix", default="shard", help="shard file name prefix (default: shard)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard at most (default: 1000)")
    p.add_argument("--maxsize", default="1G", help="bytes per shard at most, e.g. 500M, 1G (default: 1G)")
    p.add_argument("--no-probe", action="store_true", help="do not read video headers (faster; no size/duration)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(shards_parser=p)  # reports usage errors of the inputs (see _shards_inputs)

    p = sub.add_parser("inspect", help="sample count, duration/resolution statistics, captions, failures",
                       description="Read shards and report what they hold and which samples would be skipped.")
    p.add_argument("shards", nargs="+", help="shard paths, brace patterns (a/{000000..000009}.tar), globs or URLs")
    p.add_argument("--limit", type=int, default=None, help="stop after this many samples")
    p.add_argument("--decode", action="store_true", help="also decode a few frames of every video")
    p.add_argument("--examples", type=int, default=5, help="example captions to show (default: 5)")
    p.add_argument("--json", action="store_true", help="print the report as JSON")

    p = sub.add_parser("synth", help="synthetic video-caption shards (motion direction, size change, event order)",
                       description="Write synthetic mp4 clips of moving, growing/shrinking or successive shapes "
                       "with captions that need temporal understanding, as train/val/test shards.")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--train", type=int, default=2000, help="training clips (default: 2000)")
    p.add_argument("--val", type=int, default=200, help="validation clips (default: 200)")
    p.add_argument("--test", type=int, default=200, help="test clips (default: 200)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (default: 16)")
    p.add_argument("--size", type=int, default=64, help="frame size in pixels, even (default: 64)")
    p.add_argument("--fps", type=int, default=8, help="frame rate (default: 8)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--holdout", action="store_true",
                   help="val/test clips only of (object, event family) compositions that training never shows")
    p.add_argument("--workers", type=int, default=max(1, min(8, os.cpu_count() or 1)),
                   help="processes drawing and encoding clips (default: CPU count, at most 8)")
    p.add_argument("--task", choices=["all", "direction", "motion", "size", "order"], default="all",
                   help="events shown: all; direction (captions name colour, shape and direction); motion (captions name only the direction); size; order")
    p.add_argument("--maxcount", type=int, default=1000, help="clips per shard (default: 1000)")
    p.add_argument("--skip-existing", action="store_true",
                   help="do nothing when OUT/splits.json already records these counts and settings")
    p.add_argument("--quiet", action="store_true", help="no progress bar")

    # An extra command parses its own arguments (`vl data NAME --help`); with prefix_chars "+", argparse takes
    # "--x" here as a plain value.
    for name, command in extra_commands.items():
        p = sub.add_parser(name, add_help=False, prefix_chars="+", help=command.help)
        p.add_argument("args", nargs=argparse.REMAINDER)
    return parser


def _shards_inputs(args: argparse.Namespace) -> None:
    """Resolve FOLDER and ANNOTATIONS from positional arguments or ``--videos``/``--annotations``.

    A positional FILE after ``--videos`` alone is the annotation file; each input given twice, or
    missing, is a usage error."""
    parser: argparse.ArgumentParser = args.shards_parser
    positional = [a for a in (args.folder, args.annotations) if a is not None]
    slots: dict[str, Optional[str]] = {"--videos": args.videos, "--annotations": args.annotations_file}
    for value in positional:  # positionals fill, in order, the inputs no flag gave
        free = [flag for flag, v in slots.items() if v is None]
        if not free:
            parser.error(f"{value!r} given as well as --videos and --annotations")
        slots[free[0]] = value
    missing = [flag for flag, v in slots.items() if v is None]
    if missing:
        names = {"--videos": "the video FOLDER (or --videos)",
                 "--annotations": "the ANNOTATIONS file (or --annotations)"}
        parser.error("missing " + " and ".join(names[m] for m in missing))
    args.folder, args.annotations = slots["--videos"], slots["--annotations"]


def _cmd_shards(args: argparse.Namespace) -> int:
    from datapipes.write import parse_size, write_shards

    report = write_shards(args.folder, args.annotations, args.out, prefix=args.prefix, maxcount=args.maxcount,
                          maxsize=parse_size(args.maxsize), probe=not args.no_probe, progress=not args.quiet)
    print(f"wrote {report.written} samples in {len(report.shards)} shards: {report.pattern or '-'}")
    skipped = sum(len(v) for v in report.skipped.values())
    print(f"skipped {skipped} inputs" + (":" if skipped else ""))
    for reason, items in sorted(report.skipped.items(), key=lambda kv: -len(kv[1])):
        print(f"  {reason:<20}{len(items)}   e.g. {items[0]}")
    print(f"summary: {os.path.join(args.out, args.prefix + '-summary.json')}")
    return 0 if report.written else 1


def _cmd_inspect(args: argparse.Namespace) -> int:
    from datapipes.inspect import format_report, inspect_shards

    report = inspect_shards(args.shards, limit=args.limit, decode=args.decode, examples=args.examples)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from datapipes.synth import SynthConfig, existing_synth, write_synth

    cfg = SynthConfig(frames=args.frames, size=args.size, fps=args.fps, task=args.task, seed=args.seed,
                      holdout=args.holdout)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    if args.skip_existing and existing_synth(args.out, counts, cfg):
        print(f"{os.path.join(args.out, 'splits.json')} already holds these clips: nothing to do")
        return 0
    start = time.perf_counter()
    info = write_synth(args.out, counts, cfg, maxcount=args.maxcount, workers=args.workers, progress=not args.quiet)
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    print(f"wrote {total} clips in {elapsed:.1f}s ({60 * total / max(elapsed, 1e-9):.0f} clips/min)")
    for split, s in info["splits"].items():
        print(f"  {split:<6}{s['num_samples']:>8} clips   {s['path']}")
    print(f"splits: {os.path.join(args.out, 'splits.json')}")
    return 0


def _run_extra(command: ExtraCommand, argv: list[str]) -> int:
    try:
        return command.run(argv)
    except SystemExit as e:  # --help, or a usage error printed by the command's own parser
        return int(e.code or 0)


def main(argv: Optional[list[str]] = None, extra_commands: Optional[Mapping[str, ExtraCommand]] = None) -> int:
    """Run ``vl data`` with ``argv`` (default: ``sys.argv[1:]``); returns the exit status.

    ``extra_commands``: subcommands beyond datapipes' own, by name (``vl.tools.data`` adds ``vq-targets``).
    """
    extra = dict(extra_commands or {})
    try:
        args = _parser(extra).parse_args(argv)
        if args.command == "shards":
            _shards_inputs(args)
    except SystemExit as e:  # --help, or a usage error already printed by argparse
        return int(e.code or 0)
    handlers = {"shards": _cmd_shards, "inspect": _cmd_inspect, "synth": _cmd_synth}
    try:
        if args.command in extra:
            return _run_extra(extra[args.command], args.args)
        return handlers[args.command](args)
    except (FileNotFoundError, ValueError) as e:
        print(f"vl data {args.command}: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
