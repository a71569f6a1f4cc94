"""Start-up time of the `vl` command: how long each command takes to answer, median of N runs.

Each command runs in a fresh interpreter (`python -m vl.cli ...`, as the `vl` script does), one after
another, N times in rounds (so a burst of load on a shared machine spreads over all commands instead of
hitting one). For `vl fit -c CONFIG` the figure is the time to its first line on stderr, after which the
run is stopped. Baselines measured in the same invocation put the figures in proportion: the bare
interpreter, `import torch` and `import lightning.pytorch` (what any training command must load).

    python scripts/bench/startup.py                      # every command, 5 runs each
    python scripts/bench/startup.py --repeat 3 --only help typo_command
    python scripts/bench/startup.py --root /tmp/old-checkout   # the same commands on another checkout

Prints a table and writes bench_results/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = "configs/pretrain/demo.yaml"

# name -> (arguments after `python`, what is timed: "exit" (the whole command) or "first_line" (its first
# line on stderr)). Baselines first.
COMMANDS: dict[str, tuple[list[str], str]] = {
    "python": (["-c", "pass"], "exit"),
    "import_torch": (["-c", "import torch"], "exit"),
    "import_lightning": (["-c", "import lightning.pytorch"], "exit"),
    "help": (["-m", "vl.cli", "--help"], "exit"),
    "typo_command": (["-m", "vl.cli", "fitt"], "exit"),
    "typo_trainer_key": (["-m", "vl.cli", "fit", "-c", DEMO, "--trainer.max_stpes", "3"], "exit"),
    "missing_config": (["-m", "vl.cli", "fit", "-c", "configs/pretrain/dmeo.yaml"], "exit"),
    "typo_model_key": (["-m", "vl.cli", "fit", "-c", DEMO, "--model.init_args.optim.lrr", "0.1"], "exit"),
    "fit_first_line": (["-m", "vl.cli", "fit", "-c", DEMO, "--trainer.max_steps", "1"], "first_line"),
    "fit_help": (["-m", "vl.cli", "fit", "--help"], "exit"),
    "data_help": (["-m", "vl.cli", "data", "--help"], "exit"),
    "index_help": (["-m", "vl.cli", "index", "--help"], "exit"),
}
BASELINES = ("python", "import_torch", "import_lightning")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(python: str, args: list[str], mode: str, root: Path, timeout: float
              ) -> tuple[float, float, int | None, str]:
    """(wall seconds, CPU seconds, exit status or None when stopped after its first line, first stderr line) of
    one run. CPU seconds (user + system of the command) hardly move with the load of a shared machine, where
    wall seconds do."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(root)}
    cpu0 = _children_cpu()
    start = time.perf_counter()
    proc = subprocess.Popen([python, *args], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        if mode == "first_line":
            line = proc.stderr.readline()
            elapsed = time.perf_counter() - start
            proc.kill()
            proc.wait(timeout)
            return elapsed, _children_cpu() - cpu0, None, line.strip()
        try:
            _, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return time.perf_counter() - start, _children_cpu() - cpu0, None, f"timed out after {timeout:.0f} s"
        elapsed = time.perf_counter() - start
        return elapsed, _children_cpu() - cpu0, proc.returncode, (err.strip().splitlines() or [""])[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def run(names: list[str], repeat: int, python: str, root: Path, timeout: float) -> list[dict]:
    """Median, min and max seconds of each command over ``repeat`` rounds."""
    times: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    seen: dict[str, tuple[int | None, str]] = {}
    for r in range(repeat):
        for name in names:
            args, mode = COMMANDS[name]
            seconds, cpu_seconds, code, line = time_once(python, args, mode, root, timeout)
            times[name].append(seconds)
            cpu[name].append(cpu_seconds)
            seen[name] = (code, line)
            print(f"  round {r + 1}/{repeat}  {name:<18} {seconds:6.2f} s", file=sys.stderr, flush=True)
    torch_median = statistics.median(times["import_torch"]) if "import_torch" in times else None
    rows = []
    for name in names:
        args, mode = COMMANDS[name]
        median = statistics.median(times[name])
        rows.append({"name": name, "command": "python " + " ".join(args), "timed": mode,
                     "median_s": round(median, 3), "min_s": round(min(times[name]), 3),
                     "max_s": round(max(times[name]), 3), "cpu_median_s": round(statistics.median(cpu[name]), 3),
                     "runs": repeat,
                     "x_import_torch": round(median / torch_median, 2) if torch_median else None,
                     "exit_status": seen[name][0], "first_stderr_line": seen[name][1][:160]})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5, help="runs of each command (default: 5)")
    parser.add_argument("--only", nargs="+", choices=sorted(COMMANDS), help="these commands only (baselines kept)")
    parser.add_argument("--no-baselines", action="store_true", help="leave out the python/torch/lightning baselines")
    parser.add_argument("--root", default=str(ROOT), help="checkout whose vl is timed (default: this one)")
    parser.add_argument("--python", default=sys.executable, help="interpreter (default: this one)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds before a run counts as hung")
    parser.add_argument("--json", default="bench_results/startup.json", help="results file")
    args = parser.parse_args(argv)
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    names = list(args.only or [n for n in COMMANDS if n not in BASELINES])
    if not args.no_baselines:
        names = [n for n in BASELINES if n not in names] + names
    rows = run(names, args.repeat, args.python, Path(args.root).resolve(), args.timeout)

    print(f"\n{'command':<18} {'median s':>9} {'min':>7} {'max':>7} {'CPU s':>7} {'x torch':>8}  first stderr line")
    for r in rows:
        ratio = f"{r['x_import_torch']:.2f}" if r["x_import_torch"] is not None else "-"
        print(f"{r['name']:<18} {r['median_s']:9.2f} {r['min_s']:7.2f} {r['max_s']:7.2f} {r['cpu_median_s']:7.2f} "
              f"{ratio:>8}  {r['first_stderr_line'][:70]}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python "
                               f"{platform.python_version()}", "root": str(Path(args.root).resolve()),
                               "load_average": os.getloadavg(), "rows": rows}, indent=1))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
