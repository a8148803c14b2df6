"""scripts/device_check.py: its smoke run on CPU, where the GPU image's missing packages cannot be imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import transformers

from namm.models.tiny import TINY_MAX_CONTEXT
from namm.network import NAMMConfig

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
#: not on the GPU machines' image: the training stack, the hub data loader, the GGUF reader, and the packages
#: of the LongBench metrics and of the word-based synthetic tasks
ABSENT = (
    "evotorch",
    "hydra",
    "omegaconf",
    "wandb",
    "ray",
    "datasets",
    "gguf",
    "jieba",
    "rouge",
    "rapidfuzz",
    "wonderwords",
)


@pytest.fixture(scope="module")
def bare_environment(tmp_path_factory) -> dict[str, str]:
    """Environment variables under which Python cannot import ABSENT (a sitecustomize marks them missing)."""
    folder = tmp_path_factory.mktemp("absent-packages")
    lines = ["import sys", f"for name in {ABSENT!r}:", "    sys.modules[name] = None  # import raises ImportError"]
    (folder / "sitecustomize.py").write_text("\n".join(lines) + "\n")
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(folder), str(ROOT)])}


@pytest.fixture(scope="module")
def smoke(bare_environment) -> dict:
    command = [sys.executable, str(SCRIPTS / "device_check.py"), "--smoke"]
    done = subprocess.run(
        command, check=False, cwd=ROOT, env=bare_environment, capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


@pytest.fixture()
def device_check(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPTS))
    import device_check

    return device_check


def test_the_missing_packages_really_cannot_be_imported(bare_environment):
    code = f"import importlib\nfor name in {ABSENT!r}:\n    try:\n        importlib.import_module(name)\n"
    code += "    except ImportError:\n        continue\n    print(name)\n"
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, env=bare_environment, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""


def test_smoke_reports_every_section_and_what_it_ran_on(smoke):
    assert smoke["check"] == "smoke"
    environment = smoke["environment"]
    assert environment["device"] == "cpu"
    assert environment["torch"] == torch.__version__
    assert environment["transformers"] == transformers.__version__
    assert list(smoke["sections"]) == ["parity", "population_scoring", "engine_bench", "namm_bench"]
    assert smoke["summary"]["failed_sections"] == []
    for section in smoke["sections"].values():
        assert "error" not in section
        assert section["seconds"] > 0


def test_smoke_parity_holds(smoke):
    parity = smoke["sections"]["parity"]
    assert parity["dtype"] == "float32"
    assert [entry["prompt_tokens"] for entry in parity["prompts"]] == [60, 300]  # 300 crosses two updates
    assert parity["ids_identical"] and smoke["summary"]["parity_ids_identical"]
    assert all(entry["first_divergence"] is None for entry in parity["prompts"])
    assert 0 <= parity["max_logit_gap"] < 1e-4  # float32: tests/test_engine.py's tolerance


def test_smoke_population_scoring_through_the_training_scorer(smoke):
    scoring = smoke["sections"]["population_scoring"]
    assert scoring["candidates"] == 4
    assert scoring["batched_equals_one_by_one"] and scoring["max_difference"] == 0.0
    retained = scoring["retained_ratio"]
    assert len(retained) == 4
    assert retained[0] == 1.0 and min(retained[1:]) < 1.0  # candidate 0 is the all-keep NAMM
    assert scoring["task_scores"]["passkey"][0] == scoring["reference_scores"]["passkey"]
    assert scoring["batched_seconds"] > 0 and scoring["per_sample_speedup"] > 0


def test_smoke_benchmarks_come_from_the_bench_scripts(smoke):
    engine = smoke["sections"]["engine_bench"]["lengths"]["384"]
    policies = {"full", "streaming", "h2o", "snapkv", "knorm", "random", "namm", "h2o/per_head", "namm/per_head"}
    assert set(engine) == {"plain_seconds", *policies}
    assert all(engine[name]["over_plain"] > 0 for name in engine if name != "plain_seconds")
    namm = smoke["sections"]["namm_bench"]
    assert 0.45 < namm["lengths"]["384"]["retained_ratio"] < 0.55  # bench_namm's NAMM keeps the newest half
    assert namm["namm_over_full"]["384"] > 0
    assert namm["population"]["candidates"] == 4 and namm["population"]["batched_equals_one_by_one"]
    targets = smoke["summary"]["targets_at_384"]
    assert set(targets) == {
        "engine_full_over_plain",
        "engine_baselines_over_plain",
        "peak_storage_over_full_at_half_budget",
        "namm_over_plain",
        "population_per_sample_speedup",
    }
    assert targets["engine_full_over_plain"]["value"] == engine["full"]["over_plain"]
    assert targets["population_per_sample_speedup"]["value"] == namm["population"]["per_sample_speedup"]


def test_targets_read_as_the_readme_states_them(device_check):
    assert device_check.Target(1.15).verdict(1.15) == {"value": 1.15, "target": "<= 1.15", "met": True}
    assert not device_check.Target(1.15).verdict(1.2)["met"]
    assert device_check.Target(4.0, at_least=True).verdict(4.5)["met"]
    assert not device_check.Target(4.0, at_least=True).verdict(3.9)["met"]


def test_a_failing_section_reports_its_error_and_the_others_still_run(device_check, monkeypatch, capsys):
    def broken(plan, device):
        raise RuntimeError("out of memory, say")

    monkeypatch.setitem(device_check.SECTION_FUNCTIONS, "engine_bench", broken)
    status = device_check.main(["--smoke", "--sections", "engine_bench", "parity"])
    report = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert status == 1
    assert report["sections"]["engine_bench"]["error"] == "RuntimeError: out of memory, say"
    assert "broken" in report["sections"]["engine_bench"]["traceback"]
    assert report["sections"]["parity"]["ids_identical"]
    assert report["summary"]["failed_sections"] == ["engine_bench"]


def test_the_full_check_refuses_a_cpu_before_any_work(device_check, capsys):
    with pytest.raises(SystemExit) as stopped:
        device_check.main(["--device", "cpu"])
    assert stopped.value.code == 2
    assert "needs a CUDA GPU; on a CPU add --smoke" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible")
def test_no_visible_gpu_names_the_smoke_run(device_check, capsys):
    with pytest.raises(SystemExit):
        device_check.main([])
    assert "no CUDA GPU is visible; on a CPU run `--smoke`" in capsys.readouterr().err


def test_the_gpu_plan_passes_the_checks_made_before_work(device_check):
    """The full plan cannot run here; what would stop it on the GPU before any figure is checked now."""
    plan = device_check.GPU_PLAN
    device_check.bench_namm.check_windows(list(plan.bench_lengths), device_check.bench_arguments(plan))
    with pytest.raises(ValueError, match="too long"):
        device_check.bench_namm.check_windows([65536], device_check.bench_arguments(plan))
    assert max(plan.parity_lengths) + plan.parity_new_tokens <= TINY_MAX_CONTEXT
    assert plan.scorer_context_length + 64 <= TINY_MAX_CONTEXT  # passkey answers in far fewer tokens
    intervals = (plan.bench_update_interval, plan.parity_update_interval, plan.scorer_update_interval)
    assert all(interval % NAMMConfig().hop == 0 for interval in intervals)
    assert plan.candidates == 16 and plan.bench_lengths == (8192, 32768)  # the sizes
