"""Plumbing shared by the benchmark converters.

A converter parses its benchmark's official files into records (DESIGN §2: `video` plus any of
`caption`, `captions`, `qa`, `start`, `end`, `split`; we add `id`, the benchmark's own video or clip
id, unique within the file, which the shard writer keeps in `KEY.json`), grouped by output name
(`train`, `test_1k`, `frameqa_test`, ...). `finish` then resolves each record's video
against the `--videos` folder (records whose video is missing are skipped and counted), writes one JSONL
per output name, prints and saves a summary, and, with `--shards`, hands each JSONL to the project's
shard writer (`datapipes.write`).
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import sys
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from tqdm import tqdm

from datapipes.decode import VIDEO_EXTENSIONS

Record = dict[str, Any]
# Suffixes a benchmark video may carry: the containers the shard writer and decoders read
# (datapipes.decode.VIDEO_EXTENSIONS, camera formats included), then TGIF-QA's GIFs. Earlier suffixes are
# preferred when two files share a name (an mp4 over its source GIF).
VIDEO_SUFFIXES: tuple[str, ...] = tuple(f".{ext}" for ext in VIDEO_EXTENSIONS) + (".gif",)
MAX_EXAMPLES = 3  # examples kept per skip reason for the summary


class AnnotationError(ValueError):
    """An annotation file that cannot be read as the benchmark's format (names the file and line)."""


class ShardWriterUnavailable(RuntimeError):
    """`datapipes.write` is not installed or lacks the entry point the converters call."""


@dataclass
class Report:
    """Counts of records written per output and of records skipped per reason, with a few examples."""

    benchmark: str
    written: dict[str, int] = field(default_factory=dict)
    skipped: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, example: str = "") -> None:
        """Count one skipped record (or row) under a short, stable reason."""
        self.skipped[reason] += 1
        if example and len(self.examples[reason]) < MAX_EXAMPLES:
            self.examples[reason].append(example)

    def note(self, message: str) -> None:
        """A line for the summary that is not a skip (e.g. "videos not checked")."""
        self.notes.append(message)

    @property
    def read(self) -> int:
        """Records read: every record (or annotation row rejected before it became one) ends written or
        skipped under a reason, so ``read == sum(written) + sum(skipped)`` by construction; the tests
        compare ``read`` with the number of records the real annotation files hold."""
        return sum(self.written.values()) + sum(self.skipped.values())

    def to_dict(self) -> dict[str, Any]:
        """The summary as JSON-ready data."""
        return {
            "benchmark": self.benchmark,
            "read": self.read,
            "written": dict(self.written),
            "skipped": dict(self.skipped),
            "skip_examples": {k: list(v) for k, v in self.examples.items()},
            "notes": list(self.notes),
        }

    def format(self) -> str:
        """Human-readable summary, one line per output and per skip reason."""
        total = sum(self.skipped.values())
        lines = [f"{self.benchmark}: {self.read} records read = {sum(self.written.values())} written + {total} skipped"]
        lines += [f"  {name:<18} {n:>8}" for name, n in self.written.items()]
        lines.append(f"skipped: {total}" + (" (none)" if total == 0 else ""))
        for reason, n in self.skipped.most_common():
            shown = ", ".join(self.examples.get(reason, []))
            lines.append(f"  {reason:<28} {n:>8}" + (f"   e.g. {shown}" if shown else ""))
        lines += [f"note: {n}" for n in self.notes]
        return "\n".join(lines)


# ---------------------------------------------------------------- annotation files


def clean_text(text: str) -> str:
    """A caption, question, answer or choice as every converter writes it: each run of whitespace in the
    published text (doubled and leading spaces, tabs, line breaks) one space, the ends stripped."""
    return " ".join(text.split())


def find_annotation(sources: Sequence[Path], names: Sequence[str]) -> Path | None:
    """The file among `sources` named one of `names` (earlier names first).

    A source is a file, or a folder: its direct child wins, else its sub-folders are searched, where
    two files of the same name are ambiguous (an `AnnotationError` asking for the file itself).
    """
    for name in names:
        for src in sources:
            if src.is_file() and src.name == name:
                return src
            if not src.is_dir():
                continue
            if (src / name).is_file():
                return src / name
            found = sorted(src.rglob(name))
            if len(found) > 1:
                shown = ", ".join(str(p) for p in found[:3])
                raise AnnotationError(f"{len(found)} files named {name} under {src} ({shown}); pass the one to use")
            if found:
                return found[0]
    return None


def require_annotation(sources: Sequence[Path], names: Sequence[str]) -> Path:
    """Like `find_annotation`, but a missing file is an error naming what was looked for and where."""
    path = find_annotation(sources, names)
    if path is None:
        where = ", ".join(str(s) for s in sources)
        raise FileNotFoundError(f"none of {', '.join(names)} found in {where}")
    return path


def read_json(path: Path) -> Any:
    """Parse a JSON file; a syntax error names the file, line and column."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as err:
        raise AnnotationError(f"{path}: not valid JSON at line {err.lineno} column {err.colno}: {err.msg}") from err


def read_rows(path: Path, delimiter: str = "\t") -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) for each non-empty line of a headerless delimited file (quotes are literal)."""
    with open(path, encoding="utf-8", newline="") as f:
        for line_no, row in enumerate(csv.reader(f, delimiter=delimiter, quoting=csv.QUOTE_NONE), start=1):
            if row and any(cell.strip() for cell in row):
                yield line_no, row


def read_table(path: Path, required: Sequence[str], delimiter: str = "\t") -> Iterator[tuple[int, dict[str, str]]]:
    """(line number, row by column name) for a delimited file whose first line is a header.

    Fields follow CSV quoting (a field in double quotes, a doubled quote inside it is one quote), as
    the TGIF-QA files, written by pandas, use it. A header that lacks a `required` column raises `AnnotationError`; rows are
    yielded as read, so a short row shows up as missing (None) values for the caller to count.
    """
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = [h.strip() for h in (reader.fieldnames or [])]
        reader.fieldnames = header
        missing = [c for c in required if c not in header]
        if missing:
            raise AnnotationError(f"{path}: header {header} lacks column(s) {missing}")
        for line_no, row in enumerate(reader, start=2):
            yield line_no, row


def progress(items: Iterable, desc: str, total: int | None = None) -> Iterable:
    """tqdm over a long loop; silent when stderr is not a terminal (tests, logs)."""
    return tqdm(items, desc=desc, total=total, disable=None, leave=False)


# ---------------------------------------------------------------- videos


def strip_video_suffix(name: str) -> str:
    """`a/b.mp4` -> `b`; a name without a known video suffix keeps its whole basename (ids may hold dots)."""
    base = Path(name).name
    for suffix in VIDEO_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def _suffix_rank(path: str) -> int:
    """Position of a path's suffix in VIDEO_SUFFIXES (the preferred formats come first)."""
    return VIDEO_SUFFIXES.index(Path(path).suffix.lower())


class VideoIndex:
    """The video files under a folder, found by relative path or by file name without suffix."""

    def __init__(self, root: Path) -> None:
        if not root.is_dir():
            raise FileNotFoundError(f"video folder {root} does not exist")
        self.root = root
        self.by_path: set[str] = set()
        self.by_stem: dict[str, str] = {}
        self.duplicates = 0
        for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file()):
            rel = path.relative_to(root).as_posix()
            self.by_path.add(rel)
            stem = strip_video_suffix(rel)
            if stem in self.by_stem:  # keep the format earlier in VIDEO_SUFFIXES (an mp4 over its source GIF)
                self.duplicates += 1
                if _suffix_rank(rel) < _suffix_rank(self.by_stem[stem]):
                    self.by_stem[stem] = rel
            else:
                self.by_stem[stem] = rel

    def __len__(self) -> int:
        return len(self.by_path)

    def find(self, names: Iterable[str]) -> str | None:
        """Relative path of the first of `names` present.

        A name is matched as a path; then as the stem of a file that appends a suffix to the whole
        name (DiDeMo's download script saves `x.m4v` as `x.m4v.mp4` and `x.` as `x..mp4`); then by
        its name without its own suffix (`x.mov` converted to `x.mp4`).
        """
        names = list(names)
        for name in names:
            if name in self.by_path:
                return name
        for name in names:
            hit = self.by_stem.get(Path(name).name) or self.by_stem.get(strip_video_suffix(name))
            if hit is not None:
                return hit
        return None


def resolve_videos(
    records: list[Record], index: VideoIndex | None, report: Report, aliases: Callable[[Record], list[str]] | None
) -> list[Record]:
    """Records whose video exists, `video` rewritten to its path relative to the folder; others counted.

    Without an index (no `--videos`), records pass through with their default video names.
    """
    if index is None:
        return records
    kept = []
    for record in records:
        names = [record["video"], *(aliases(record) if aliases else [])]
        found = index.find(names)
        if found is None:
            report.skip("missing video", record["video"])
            continue
        kept.append({**record, "video": found})
    return kept


# ---------------------------------------------------------------- output


def write_jsonl(records: Iterable[Record], path: Path) -> int:
    """One JSON object per line (UTF-8, non-ASCII kept); returns the number of lines written."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(path, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
            n += 1
    return n


def read_jsonl(path: Path) -> list[Record]:
    """The records of a JSONL file (what `write_jsonl` wrote)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_shard_writer() -> Callable[..., Any]:
    """`datapipes.write.write_shards`, imported only when shards are asked for."""
    try:
        module = importlib.import_module("datapipes.write")
    except ImportError as err:
        raise ShardWriterUnavailable(
            f"cannot import the shard writer datapipes.write ({err}); the annotation JSONL files are "
            "written, shard them later with `vl data shards`"
        ) from err
    writer = getattr(module, "write_shards", None)
    if not callable(writer):
        raise ShardWriterUnavailable("datapipes.write has no write_shards(); shard the JSONL with `vl data shards`")
    return writer


def write_shards(annotations: Path, videos: Path, out: Path) -> dict[str, Any]:
    """Shard one annotation JSONL (videos relative to `videos`) into `out`; the writer's report as a dict.

    The writer probes every video and skips (and reports) rows it cannot use, e.g. formats the decoder
    does not read, such as TGIF's GIFs: convert those to mp4 first.
    """
    writer = load_shard_writer()
    report = writer(str(videos), str(annotations), str(out), progress=sys.stderr.isatty())
    return report.as_dict() if hasattr(report, "as_dict") else dict(report or {})


def shard_outputs(paths: dict[str, Path], report: Report, videos: Path, shards: Path) -> dict[str, dict[str, Any]]:
    """Shard every non-empty JSONL into `shards/<name>`; prints and returns the writer's reports."""
    results = {}
    for name, path in paths.items():
        if not report.written.get(name):
            continue
        results[name] = write_shards(path, videos, shards / name)
        skipped = results[name].get("skipped") or {}
        print(
            f"shards {name}: {results[name].get('written', '?')} samples -> {shards / name}"
            + (f", skipped {skipped}" if skipped else ""),
            file=sys.stderr,
        )
    return results


# ---------------------------------------------------------------- CLI


def build_parser(benchmark: str, description: str) -> argparse.ArgumentParser:
    """The arguments every converter shares; converters may add their own."""
    parser = argparse.ArgumentParser(
        prog=f"python -m scripts.prepare.{benchmark}",
        description=description,
        formatter_class=argparse.RawDescriptionHelpFormatter,  # keep the docstring's list of files
    )
    parser.add_argument(
        "--annotations",
        type=Path,
        nargs="+",
        required=True,
        help="folder(s) holding the official annotation files, or the files themselves",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder for the annotation JSONL files")
    parser.add_argument(
        "--videos",
        type=Path,
        default=None,
        help="folder of the benchmark's videos; records whose video is missing are skipped",
    )
    parser.add_argument(
        "--shards",
        type=Path,
        default=None,
        help="also write WebDataset shards here, one sub-folder per JSONL (needs --videos)",
    )
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse and check the shared arguments."""
    args = parser.parse_args(argv)
    if args.shards is not None and args.videos is None:
        parser.error("--shards needs --videos (the shard writer reads the video files)")
    for src in args.annotations:
        if not src.exists():
            parser.error(f"--annotations: {src} does not exist")
    return args


def finish(
    outputs: dict[str, list[Record]],
    args: argparse.Namespace,
    report: Report,
    aliases: Callable[[Record], list[str]] | None = None,
) -> dict[str, Path]:
    """Resolve videos, write `<out>/<name>.jsonl` per output, save and print the summary, then shard."""
    index = VideoIndex(args.videos) if args.videos is not None else None
    if index is None:
        report.note("no --videos given: video files were not checked")
    elif index.duplicates:
        report.note(f"{index.duplicates} video files share a name with another; mp4 is preferred, then path order")
    paths: dict[str, Path] = {}
    for name, records in outputs.items():
        kept = resolve_videos(records, index, report, aliases)
        paths[name] = args.out / f"{name}.jsonl"
        report.written[name] = write_jsonl(kept, paths[name])
    args.out.mkdir(parents=True, exist_ok=True)
    summary = args.out / "summary.json"
    summary.write_text(json.dumps(report.to_dict(), indent=2) + "\n", encoding="utf-8")
    print(report.format(), file=sys.stderr)
    if args.shards is not None:
        sharded = shard_outputs(paths, report, args.videos, args.shards)
        summary.write_text(json.dumps({**report.to_dict(), "shards": sharded}, indent=2) + "\n", encoding="utf-8")
    return paths


def convert_and_finish(
    benchmark: str,
    description: str,
    convert: Callable[[list[Path], Report], dict[str, list[Record]]],
    argv: Sequence[str] | None,
    aliases: Callable[[Record], list[str]] | None = None,
) -> dict[str, Path]:
    """The whole command line of a converter that reads only its annotation files: the shared arguments,
    ``convert(annotation sources, report)``, then ``finish``; returns the JSONL paths written."""
    args = parse_args(build_parser(benchmark, description), argv)
    report = Report(benchmark)
    return finish(convert(args.annotations, report), args, report, aliases)


def run(main: Callable[[Sequence[str] | None], Any], argv: Sequence[str] | None = None) -> int:
    """Run a converter's main, turning expected failures into a one-line message and exit code 1."""
    try:
        main(argv)
    except (AnnotationError, FileNotFoundError, ShardWriterUnavailable) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0
