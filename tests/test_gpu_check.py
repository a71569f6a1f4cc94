"""The GPU check (scripts/gpu_check.py) cannot rot between GPU loans: its dry run, in this process, parses
every `vl fit` command the GPU run would launch with vl's own parser, collects the CUDA-only tests, builds
every model it would measure on the meta device (counting its FLOPs) and reads BENCHMARKS.md's memory
table. A config that no longer parses, a model that no longer builds or a renamed CUDA test fails here."""

import json

from scripts import gpu_check


def test_dry_run_parses_collects_and_builds_everything(tmp_path):
    out = tmp_path / "gpu_check.json"
    rc = gpu_check.main(["--dry-run", "--out", str(out)])
    report = json.loads(out.read_text())
    failed = [f"{c['stage']}: {c['name']}: {c['detail']}" for c in report["checks"] if not c["ok"]]
    assert rc == 0 and report["ok"], "\n".join(failed)
    names = {(c["stage"], c["name"]) for c in report["checks"]}
    for config in gpu_check.BASE_CONFIGS:
        for strategy in gpu_check.STRATEGIES:
            assert ("fit", f"{config} x {strategy}") in names
    for model in gpu_check.BASE_MODELS:
        assert ("memory", f"{model}: meta build") in names
    assert sum(stage == "throughput" for stage, _ in names) == 4  # vit_st joint/divided, clip_st, swin3d
    tests = next(c for c in report["checks"] if c["stage"] == "cuda_tests")["data"]["tests"]
    assert any("test_sharded_strategy_trains_the_demo_model[fsdp]" in t for t in tests), tests


def test_a_command_vl_fit_would_refuse_fails_the_check(monkeypatch):
    argv = gpu_check.fit_argv

    monkeypatch.setattr(gpu_check, "fit_argv", lambda *a: argv(*a) + ["--trainer.max_stpes", "3"])
    ok, detail, _ = gpu_check.parse_fit("clip_base", "fsdp")
    assert not ok and "max_stpes" in detail


def test_peak_flops_by_device_name():
    assert gpu_check.peak_bf16_flops("NVIDIA H100 80GB HBM3") == 989.4e12
    assert gpu_check.peak_bf16_flops("NVIDIA H100 PCIe") == 756.5e12
    assert gpu_check.peak_bf16_flops("NVIDIA GH200 480GB") == 989.4e12
    assert gpu_check.peak_bf16_flops("NVIDIA A100-SXM4-80GB") == 312e12
    assert gpu_check.peak_bf16_flops("Some Future GPU") is None
