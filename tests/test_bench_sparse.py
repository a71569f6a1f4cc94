"""The time-to-quality summary of ``scripts/bench/sparse.py --mode quality``: arms parsed from the command
line, validation points read from a run's Lightning ``metrics.csv``, and the CPU time at which a run first
reaches the target (both figures at once)."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts" / "bench"))

from sparse import parse_arm, time_to, val_curve  # noqa: E402

HEADER = "epoch,step,time/train_cpu_s,train/loss,val/reversal_acc,val/t2v_R@1\n"


def test_arms():
    assert parse_arm("dense") == ("dense", 1.0)
    assert parse_arm("motion:0.25") == ("motion", 0.25)
    for bad in ("motion", "blocks:0.5", "tube:"):
        with pytest.raises(argparse.ArgumentTypeError, match="METHOD:KEEP"):
            parse_arm(bad)


def test_validation_curve_and_time_to_target(tmp_path):
    """Training rows (no validation figures) are skipped; steps count from 1; CPU time in minutes. A run
    reaches the target at the first point where R@1 *and* reversal are both at least the target's."""
    logs = tmp_path / "run" / "logs" / "version_0"
    logs.mkdir(parents=True)
    (logs / "metrics.csv").write_text(HEADER + "0,9,,4.8,,\n0,59,60.0,,70.0,85.0\n1,119,126.0,,96.0,79.0\n"
                                      "1,179,180.0,,95.0,80.0\n2,239,240.0,,100.0,90.0\n")
    points = val_curve(tmp_path / "run")
    assert [p["step"] for p in points] == [60, 120, 180, 240]
    assert points[0] == {"step": 60, "cpu_min": 1.0, "R@1": 85.0, "reversal": 70.0}
    assert time_to(points, 80.0, 95.0) == 3.0  # step 60 lacks reversal, step 120 lacks R@1
    assert time_to(points, 95.0, 95.0) is None
    with pytest.raises(SystemExit, match="no metrics.csv"):
        val_curve(tmp_path / "missing")


def test_validation_curve_skips_the_log_of_a_test_run(tmp_path):
    """`vl test` of a finished run logs a newer version without validation rows: the curve is the fit's."""
    fit, test = tmp_path / "run" / "logs" / "version_0", tmp_path / "run" / "logs" / "version_1"
    fit.mkdir(parents=True)
    test.mkdir()
    (fit / "metrics.csv").write_text(HEADER + "0,59,60.0,,70.0,85.0\n")
    (test / "metrics.csv").write_text("epoch,step,test/t2v_R@1\n0,0,90.0\n")
    assert val_curve(tmp_path / "run") == [{"step": 60, "cpu_min": 1.0, "R@1": 85.0, "reversal": 70.0}]
    test.joinpath("metrics.csv").unlink()
    fit.joinpath("metrics.csv").write_text("epoch,step,test/t2v_R@1\n0,0,90.0\n")
    assert val_curve(tmp_path / "run") == []
