"""`make bench`: run the CPU benchmarks and rewrite the generated section of BENCHMARKS.md.

Each benchmark is its own script, writes JSON under bench_results/ and reports ratios against a
baseline measured in the same invocation. This driver runs them one after another, then replaces the
part of BENCHMARKS.md between the `<!-- bench:start -->` and `<!-- bench:end -->` markers with the
machine, the exact commands and one table per JSON file. The prose sections around it are kept.

    python scripts/bench/run_all.py                 # every benchmark
    python scripts/bench/run_all.py --only data     # one of: data, model_mask, model_peers, model_memory, search
    python scripts/bench/run_all.py --report-only   # re-render the tables from the last JSON files
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "bench_results"
BENCH_MD = ROOT / "BENCHMARKS.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"

# name -> (command, JSON it writes, the list in that JSON to tabulate)
BENCHES: dict[str, tuple[list[str], str, str]] = {
    "data": (["scripts/bench/data.py"], "data.json", "results"),
    "model_mask": (["scripts/bench/model.py", "--section", "mask_ratio"], "model_mask.json", "rows"),
    "model_peers": (["scripts/bench/model.py", "--section", "peers"], "model_peers.json", "rows"),
    "model_memory": (["scripts/bench/model.py", "--section", "memory"], "model_memory.json", "rows"),
    "search": (["scripts/bench/search.py"], "search.json", "faiss"),
}


def machine() -> str:
    """One line describing where the figures were taken."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}, {os.cpu_count()} CPUs, {gpu}, Python {platform.python_version()}, torch {torch.__version__}"


def run(name: str) -> float:
    """Run one benchmark script; returns its wall time in seconds. Raises on failure."""
    cmd, _, _ = BENCHES[name]
    print(f"\n=== {name}: python {' '.join(cmd)}", flush=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, *cmd], cwd=ROOT, check=True)
    return time.perf_counter() - t0


def _cell(v: object) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def flatten(row: dict) -> dict:
    """One level of nested dicts becomes `outer.inner` columns; lists (raw repeats) are left out."""
    out: dict = {}
    for k, v in row.items():
        if isinstance(v, dict):
            out.update({f"{k}.{ik}": iv for ik, iv in v.items() if not isinstance(iv, (list, dict))})
        elif not isinstance(v, list):
            out[k] = v
    return out


def table(rows: list[dict]) -> str:
    """A markdown table over the union of the rows' keys, in first-seen order."""
    rows = [flatten(r) for r in rows]
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(_cell(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def render(walls: dict[str, float]) -> str:
    """The generated section: machine, commands and one table per benchmark JSON present."""
    parts = [START, "## Latest `make bench` run", "", f"Machine: {machine()}.", ""]
    for name, (cmd, json_name, key) in BENCHES.items():
        path = RESULTS / json_name
        if not path.exists():
            continue
        data = json.loads(path.read_text())
        rows = data.get(key) if isinstance(data, dict) else None
        wall = f" ({walls[name]:.0f} s)" if name in walls else ""
        parts += [f"### {name}{wall}", "", f"`python {' '.join(cmd)}` -> `bench_results/{json_name}`", ""]
        if isinstance(rows, list) and rows and isinstance(rows[0], dict):
            parts += [table(rows), ""]
    parts.append(END)
    return "\n".join(parts)


def rewrite(section: str) -> None:
    text = BENCH_MD.read_text() if BENCH_MD.exists() else "# Benchmarks\n"
    if START in text and END in text:
        head, rest = text.split(START, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        lines = text.split("\n", 1)
        text = lines[0] + "\n\n" + section + "\n" + (lines[1] if len(lines) > 1 else "")
    BENCH_MD.write_text(text)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", nargs="+", choices=sorted(BENCHES), help="run these benchmarks only")
    p.add_argument("--report-only", action="store_true", help="do not run; re-render from bench_results/")
    args = p.parse_args(argv)
    walls: dict[str, float] = {}
    failed: list[str] = []
    if not args.report_only:
        for name in args.only or list(BENCHES):
            try:
                walls[name] = run(name)
            except subprocess.CalledProcessError as err:
                print(f"benchmark {name} failed with exit status {err.returncode}", file=sys.stderr)
                failed.append(name)
    rewrite(render(walls))
    print(f"\nrewrote the generated section of {BENCH_MD.relative_to(ROOT)}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
