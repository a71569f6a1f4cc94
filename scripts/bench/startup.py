"""Start-up time of the `vl` command: how long each command takes to answer, median of N runs.

Each command runs in a fresh interpreter (`python -m vl.cli ...`, as the `vl` script does), one after
another, N times in rounds (so a burst of load on a shared machine spreads over all commands instead of
hitting one). For `vl fit -c CONFIG` the figure is the time to its first line on stderr, after which the
run is stopped. A misspelled model key and `vl fit --help` are answered from what an earlier command
recorded (vl.known_options): they are timed both with the records an earlier run leaves (``recorded``,
the bench primes its own cache once) and with an empty cache (``*_unrecorded``, a new one per run: a
user's very first command). Baselines measured in the same invocation put the figures in proportion: the
bare interpreter, `import torch` and `import lightning.pytorch` (what any training command must load).

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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DEMO = "configs/pretrain/demo.yaml"

# name -> (arguments after `python`, what is timed: "exit" (the whole command) or "first_line" (its first
# line on stderr), the option cache it runs with: "recorded" (primed once) or "empty" (a new one per run)).
# Baselines first.
TYPO_MODEL_KEY = ["-m", "vl.cli", "fit", "-c", DEMO, "--model.init_args.optim.lrr", "0.1"]
COMMANDS: dict[str, tuple[list[str], str, str]] = {
    "python": (["-c", "pass"], "exit", "recorded"),
    "import_torch": (["-c", "import torch"], "exit", "recorded"),
    "import_lightning": (["-c", "import lightning.pytorch"], "exit", "recorded"),
    "help": (["-m", "vl.cli", "--help"], "exit", "recorded"),
    "typo_command": (["-m", "vl.cli", "fitt"], "exit", "recorded"),
    "typo_trainer_key": (["-m", "vl.cli", "fit", "-c", DEMO, "--trainer.max_stpes", "3"], "exit", "recorded"),
    "missing_config": (["-m", "vl.cli", "fit", "-c", "configs/pretrain/dmeo.yaml"], "exit", "recorded"),
    "typo_model_key": (TYPO_MODEL_KEY, "exit", "recorded"),
    "typo_model_key_unrecorded": (TYPO_MODEL_KEY, "exit", "empty"),
    "fit_first_line": (["-m", "vl.cli", "fit", "-c", DEMO, "--trainer.max_steps", "1"], "first_line", "recorded"),
    "fit_help": (["-m", "vl.cli", "fit", "--help"], "exit", "recorded"),
    "fit_help_unrecorded": (["-m", "vl.cli", "fit", "--help"], "exit", "empty"),
    "data_help": (["-m", "vl.cli", "data", "--help"], "exit", "recorded"),
    "index_help": (["-m", "vl.cli", "index", "--help"], "exit", "recorded"),
}
BASELINES = ("python", "import_torch", "import_lightning")


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def time_once(python: str, args: list[str], mode: str, root: Path, timeout: float, cache: str
              ) -> tuple[float, float, int | None, str]:
    """(wall seconds, CPU seconds, exit status or None when stopped after its first line, first stderr line) of
    one run with the option cache folder ``cache``. CPU seconds (user + system of the command) hardly move with
    the load of a shared machine, where wall seconds do."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(root),
           "VL_CACHE_DIR": cache}
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
    with tempfile.TemporaryDirectory(prefix="vl-bench-cache-") as scratch:
        recorded = str(Path(scratch) / "recorded")
        if any(COMMANDS[n][2] == "recorded" and "vl.cli" in COMMANDS[n][0] for n in names):
            print("  priming the option cache (one `vl fit --help` and one model-key typo) ...", file=sys.stderr)
            for prime in (COMMANDS["fit_help"][0], TYPO_MODEL_KEY):
                time_once(python, prime, "exit", root, timeout, recorded)
        for r in range(repeat):
            for name in names:
                args, mode, cache = COMMANDS[name]
                folder = recorded if cache == "recorded" else tempfile.mkdtemp(dir=scratch, prefix="empty-")
                seconds, cpu_seconds, code, line = time_once(python, args, mode, root, timeout, folder)
                times[name].append(seconds)
                cpu[name].append(cpu_seconds)
                seen[name] = (code, line)
                print(f"  round {r + 1}/{repeat}  {name:<26} {seconds:6.2f} s", file=sys.stderr, flush=True)
    torch_median = statistics.median(times["import_torch"]) if "import_torch" in times else None
    rows = []
    for name in names:
        args, mode, cache = COMMANDS[name]
        median = statistics.median(times[name])
        rows.append({"name": name, "command": "python " + " ".join(args), "timed": mode, "option_cache": cache,
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

    print(f"\n{'command':<26} {'median s':>9} {'min':>7} {'max':>7} {'CPU s':>7} {'x torch':>8}  first stderr line")
    for r in rows:
        ratio = f"{r['x_import_torch']:.2f}" if r["x_import_torch"] is not None else "-"
        print(f"{r['name']:<26} {r['median_s']:9.2f} {r['min_s']:7.2f} {r['max_s']:7.2f} {r['cpu_median_s']:7.2f} "
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
