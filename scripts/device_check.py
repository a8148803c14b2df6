"""One command that checks a CUDA machine end to end and prints one JSON object as its last line.

    python scripts/device_check.py            # CUDA GPU: under 8 minutes
    python scripts/device_check.py --smoke    # any CPU (or --device cuda): the same code paths at tiny sizes, seconds

Sections, each reporting its figures or its error (one that fails does not stop the others):
- `parity`: the engine's full policy against transformers' own greedy `model.generate()` on a tiny random
  Llama (bfloat16 on CUDA, float32 on CPU), prompts crossing several update boundaries: greedy ids
  identical, largest logit gap.
- `population_scoring`: candidates through the training scorer (`tasks/training/task_scorer.py`, synthetic
  passkey on the tiny Llama), one batch per prompt vs one candidate at a time: seconds, per-sample
  speed-up, whether the scores are identical.
- `engine_bench` and `namm_bench`: `bench_engine.py` and `bench_namm.py` at Llama-3-8B shapes (random
  bfloat16 weights) at 8k and 32k tokens, with the NAMM population section (16 candidates, 8k tokens).

It imports only torch, transformers and this project's engine, NAMM and task modules, so it runs where
evotorch, Hydra, omegaconf, W&B, Ray, datasets, gguf and the LongBench metric packages are not installed.
No weights are downloaded. Exit status 1 when a section raised, else 0 (read the figures for the verdicts).
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout, installed or not

import bench_engine
import bench_namm
from bench_engine import Stopwatch

from namm.atomic_io import atomic_write_json
from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.evolution.scorer_protocol import TRAIN_SPLIT, CandidateScores, Signal
from namm.models import ModelConfig, load_model
from namm.plain_generation import greedy_generate, padding_token_id
from namm.policies import PolicyConfig, build_policy
from tasks.task_config import TaskConfig
from tasks.training.task_scorer import TaskScorer, TaskScorerConfig

#: the tiny random model of the parity and scoring sections (namm/models/tiny.py; nothing is downloaded)
TINY_MODEL = "tiny-llama"


@dataclass(frozen=True)
class CheckPlan:
    """The sizes of one run: the full GPU check, or the smoke run (the same functions, tiny)."""

    bench_model: str  # "llama3-8b" (bench_engine.llama3_8b_shaped) or a tiny model name
    bench_lengths: tuple[int, ...]
    bench_repeats: int  # timed rounds after the warm-up (best is reported)
    bench_update_interval: int
    population_length: int  # bench_namm's population section
    population_new_tokens: int
    candidates: int  # population size, in bench_namm and in the training scorer
    parity_lengths: tuple[int, ...]
    parity_new_tokens: int
    parity_update_interval: int
    scorer_context_length: int  # passkey prompt tokens
    scorer_prompts: int  # training prompts scored per candidate
    scorer_update_interval: int


GPU_PLAN = CheckPlan(
    bench_model="llama3-8b",
    bench_lengths=(8192, 32768),
    bench_repeats=2,
    bench_update_interval=512,
    population_length=8192,
    population_new_tokens=64,
    candidates=16,
    parity_lengths=(100, 700, 1500),
    parity_new_tokens=32,
    parity_update_interval=256,
    scorer_context_length=2048,
    scorer_prompts=2,
    scorer_update_interval=256,
)
SMOKE_PLAN = CheckPlan(
    bench_model=TINY_MODEL,
    bench_lengths=(384,),
    bench_repeats=1,
    bench_update_interval=128,
    population_length=384,
    population_new_tokens=4,
    candidates=4,
    parity_lengths=(60, 300),
    parity_new_tokens=8,
    parity_update_interval=128,
    scorer_context_length=400,
    scorer_prompts=1,
    scorer_update_interval=128,
)


# -- environment ---------------------------------------------------------------------------------------
def environment(device: torch.device) -> dict:
    """What the figures were measured on."""
    if device.type == "cuda":
        properties = torch.cuda.get_device_properties(device)
        hardware = {"name": properties.name, "memory_gib": round(properties.total_memory / 2**30, 1)}
    else:
        hardware = {"name": cpu_name(), "threads": torch.get_num_threads()}
    return {
        "device": str(device),
        **hardware,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def cpu_name() -> str:
    """The processor's model name where Linux tells it (AVX2 vs AVX-512 machines differ in the last bits)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        lines = []
    names = [line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")]
    return names[0] if names else platform.processor() or platform.machine()


def model_dtype(device: torch.device) -> str:
    return "bfloat16" if device.type == "cuda" else "float32"


def release_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -- parity --------------------------------------------------------------------------------------------
def transformers_greedy(
    model: torch.nn.Module, prompt: list[int], new_tokens: int, pad_token_id: int
) -> tuple[list[int], torch.Tensor]:
    """transformers' own greedy generation, never stopping early: the independent reference."""
    output = greedy_generate(model, [prompt], new_tokens, pad_token_id, return_logits=True)
    return output.tokens[0].tolist(), output.logits[0].float().cpu()


def parity_section(plan: CheckPlan, device: torch.device) -> dict:
    """The engine's full policy vs `model.generate()`: ids, and logits up to the first divergence."""
    loaded = load_model(ModelConfig(name=TINY_MODEL, dtype=model_dtype(device), device=str(device)))
    model = loaded.model
    engine = MemoryEngine(
        model, build_policy(PolicyConfig(name="full")), EngineConfig(update_interval=plan.parity_update_interval)
    )
    settings = GenerationSettings(max_new_tokens=plan.parity_new_tokens, stop_on_eos=False, return_logits=True)
    prompts = []
    for length in plan.parity_lengths:
        prompt = torch.randint(3, 256, (length,), generator=torch.Generator().manual_seed(length)).tolist()
        mine = engine.generate([prompt], settings)[0]
        ids, logits = transformers_greedy(model, prompt, plan.parity_new_tokens, padding_token_id(loaded.tokenizer))
        divergence = next((step for step, (a, b) in enumerate(zip(mine.token_ids, ids)) if a != b), None)
        compared = len(ids) if divergence is None else divergence + 1  # the diverging step saw the same prefix
        prompts.append(
            {
                "prompt_tokens": length,
                "ids_identical": mine.token_ids == ids,
                "first_divergence": divergence,
                "max_logit_gap": (mine.logits[:compared] - logits[:compared]).abs().max().item(),
                "max_abs_logit": logits.abs().max().item(),
            }
        )
    return {
        "model": TINY_MODEL,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "update_interval": plan.parity_update_interval,
        "new_tokens": plan.parity_new_tokens,
        "ids_identical": all(entry["ids_identical"] for entry in prompts),
        "max_logit_gap": max(entry["max_logit_gap"] for entry in prompts),
        "prompts": prompts,
    }


# -- population scoring through the training scorer ------------------------------------------------------
@contextmanager
def private_reference_cache() -> Iterator[None]:
    """Full-cache references of the random tiny model go to a temporary folder, not the user's cache."""
    previous = os.environ.get("NAMM_REFERENCE_CACHE")
    with tempfile.TemporaryDirectory(prefix="namm-device-check-") as folder:
        os.environ["NAMM_REFERENCE_CACHE"] = folder
        try:
            yield
        finally:
            if previous is None:
                os.environ.pop("NAMM_REFERENCE_CACHE")
            else:
                os.environ["NAMM_REFERENCE_CACHE"] = previous


def scores_difference(a: CandidateScores, b: CandidateScores) -> float:
    """Largest absolute difference over every per-candidate figure of two results."""
    pairs = [(a.task_scores[task], b.task_scores[task]) for task in a.task_scores]
    pairs += [(a.retained_ratio, b.retained_ratio), (a.retained_ratio_per_layer, b.retained_ratio_per_layer)]
    return max((x.double() - y.double()).abs().max().item() for x, y in pairs)


def scorer_section(plan: CheckPlan, device: torch.device) -> dict:
    """`plan.candidates` random NAMMs scored by TaskScorer: one batch per prompt vs one candidate at a time."""
    config = TaskScorerConfig(
        model=ModelConfig(name=TINY_MODEL, dtype=model_dtype(device), device=str(device)),
        task=TaskConfig(
            name="passkey",
            tasks=["passkey"],
            num_samples=plan.scorer_prompts + 2,
            context_length=plan.scorer_context_length,
        ),
        engine=EngineConfig(update_interval=plan.scorer_update_interval),
        prompts_per_task=plan.scorer_prompts,
        validation_prompts=1,
        seed=0,
        max_batch_rows=None,
        signal=Signal.task_metric,
    )
    with private_reference_cache():
        scorer = TaskScorer(config)
        candidates = 0.5 * torch.randn(plan.candidates, scorer.param_count, generator=torch.Generator().manual_seed(0))
        candidates[0] = 0.0  # the all-keep NAMM: its score must equal the full-cache reference
        watch = Stopwatch(device)
        warm_up, _ = watch.measure(lambda: scorer.score(candidates[:1], TRAIN_SPLIT, 1))  # calibration, references
        batched_seconds, batched = watch.measure(lambda: scorer.score(candidates, TRAIN_SPLIT, 1))
        single_seconds, singles = watch.measure(
            lambda: [scorer.score(candidates[i : i + 1], TRAIN_SPLIT, 1) for i in range(plan.candidates)]
        )
    alone = CandidateScores.concat(singles)
    difference = scores_difference(batched, alone)
    return {
        "model": TINY_MODEL,
        "dtype": config.model.dtype,
        "task": "passkey",
        "prompt_tokens": plan.scorer_context_length,
        "prompts": plan.scorer_prompts,
        "candidates": plan.candidates,
        "warm_up_seconds": warm_up,
        "batched_seconds": batched_seconds,
        "one_by_one_seconds": single_seconds,
        "per_sample_speedup": single_seconds / batched_seconds,
        "batched_equals_one_by_one": difference == 0.0,
        "max_difference": difference,
        "retained_ratio": batched.retained_ratio.tolist(),
        "task_scores": {task: values.tolist() for task, values in batched.task_scores.items()},
        "reference_scores": batched.reference_scores,
    }


# -- the benchmarks ------------------------------------------------------------------------------------
@functools.cache
def bench_model(plan: CheckPlan, device: torch.device) -> torch.nn.Module:
    """Built once for both benchmark sections."""
    if plan.bench_model == "llama3-8b":
        return bench_engine.llama3_8b_shaped(str(device))
    return load_model(ModelConfig(name=plan.bench_model, dtype=model_dtype(device), device=str(device))).model


def bench_arguments(plan: CheckPlan) -> argparse.Namespace:
    """The options bench_engine.py and bench_namm.py read, at the plan's sizes."""
    return argparse.Namespace(
        budget=0.5,
        repeats=plan.bench_repeats,
        update_interval=plan.bench_update_interval,
        population_size=plan.candidates,
        population_length=plan.population_length,
        population_new_tokens=plan.population_new_tokens,
        population_repeats=1,
    )


def per_length(script, model, watch: Stopwatch, args: argparse.Namespace, lengths: list[int]) -> dict:
    """A benchmark script's `context_section` at every length, each printed as the script prints it."""
    entries = {}
    for length in lengths:
        entries[str(length)] = entry = script.context_section(model, watch, length, args)
        script.print_context(length, entry)
    return entries


def engine_bench_section(plan: CheckPlan, device: torch.device) -> dict:
    """bench_engine.py: plain forward vs the engine under the full policy and every baseline at 50%."""
    model, args, watch = bench_model(plan, device), bench_arguments(plan), Stopwatch(device)
    lengths = per_length(bench_engine, model, watch, args, plan.bench_lengths)
    return {
        "model": plan.bench_model,
        "budget": args.budget,
        "update_interval": args.update_interval,
        "lengths": lengths,
    }


def namm_bench_section(plan: CheckPlan, device: torch.device) -> dict:
    """bench_namm.py: NAMM-managed vs full-policy prefill with its cost split, then population throughput."""
    model, args, watch = bench_model(plan, device), bench_arguments(plan), Stopwatch(device)
    lengths = per_length(bench_namm, model, watch, args, plan.bench_lengths)
    population = bench_namm.population_section(model, watch, args)
    bench_namm.print_population(population)
    return {
        "model": plan.bench_model,
        "update_interval": args.update_interval,
        "namm_over_full": {key: entry["namm_over_full"] for key, entry in lengths.items()},
        "namm_over_plain": {key: entry["namm_over_plain"] for key, entry in lengths.items()},
        "lengths": lengths,
        "population": population,
    }


# -- running -------------------------------------------------------------------------------------------
SECTION_FUNCTIONS: dict[str, Callable[[CheckPlan, torch.device], dict]] = {
    "parity": parity_section,
    "population_scoring": scorer_section,
    "engine_bench": engine_bench_section,
    "namm_bench": namm_bench_section,
}
SECTIONS = tuple(SECTION_FUNCTIONS)  # cheap ones first: their figures are in before the long benchmarks start


def run_section(name: str, plan: CheckPlan, device: torch.device) -> dict:
    """The section's figures, or its error; either way with its seconds."""
    print(f"[device_check] {name} ...", file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
        result = SECTION_FUNCTIONS[name](plan, device)
    except Exception as error:  # noqa: BLE001 - one failing section must not lose the others
        result = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    finally:
        release_memory(device)
    result["seconds"] = time.perf_counter() - start
    print(
        f"[device_check] {name}: {'failed' if 'error' in result else 'done'} in {result['seconds']:.1f} s",
        file=sys.stderr,
        flush=True,
    )
    return result


@dataclass(frozen=True)
class Target:
    """A speed or memory target of docs/benchmarks.md: a figure at most, or at least, `bound`."""

    bound: float
    at_least: bool = False

    def verdict(self, value: float) -> dict:
        met = value >= self.bound if self.at_least else value <= self.bound
        return {"value": value, "target": f"{'>=' if self.at_least else '<='} {self.bound}", "met": met}


#: docs/benchmarks.md's GPU targets, read at the plan's longest context (32k on the GPU; meaningless in --smoke)
TARGETS = {
    "engine_full_over_plain": Target(1.15),
    "engine_baselines_over_plain": Target(1.3),
    "peak_storage_over_full_at_half_budget": Target(0.6),
    "namm_over_plain": Target(1.5),
    "population_per_sample_speedup": Target(4.0, at_least=True),
}


def target_figures(sections: dict[str, dict], length: int) -> dict[str, float]:
    """The figures TARGETS bound, from the benchmark sections that ran."""
    figures = {}
    engine = sections.get("engine_bench", {}).get("lengths", {}).get(str(length))
    if engine:
        baselines = [engine[name] for name in bench_engine.BASELINES]
        figures["engine_full_over_plain"] = engine["full"]["over_plain"]
        figures["engine_baselines_over_plain"] = max(entry["over_plain"] for entry in baselines)
        figures["peak_storage_over_full_at_half_budget"] = max(entry["peak_storage_over_full"] for entry in baselines)
    namm = sections.get("namm_bench", {})
    if str(length) in namm.get("namm_over_plain", {}):
        figures["namm_over_plain"] = namm["namm_over_plain"][str(length)]
    if "population" in namm:
        figures["population_per_sample_speedup"] = namm["population"]["per_sample_speedup"]
    return figures


def summary(sections: dict[str, dict], plan: CheckPlan) -> dict:
    """The verdicts of the sections that ran, side by side."""
    verdicts: dict = {"failed_sections": [name for name, result in sections.items() if "error" in result]}
    picks = {
        "parity_ids_identical": ("parity", "ids_identical"),
        "parity_max_logit_gap": ("parity", "max_logit_gap"),
        "scorer_batched_equals_one_by_one": ("population_scoring", "batched_equals_one_by_one"),
        "scorer_per_sample_speedup": ("population_scoring", "per_sample_speedup"),
    }
    for key, (section, field) in picks.items():
        if field in sections.get(section, {}):
            verdicts[key] = sections[section][field]
    population = sections.get("namm_bench", {}).get("population", {})
    if "batched_equals_one_by_one" in population:
        verdicts["bench_population_batched_equals_one_by_one"] = population["batched_equals_one_by_one"]
    length = max(plan.bench_lengths)
    figures = target_figures(sections, length)
    verdicts[f"targets_at_{length}"] = {name: TARGETS[name].verdict(value) for name, value in figures.items()}
    return verdicts


PARSER = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
PARSER.add_argument("--smoke", action="store_true", help="tiny sizes (seconds on a CPU); what the tests run")
PARSER.add_argument("--device", help="cpu | cuda | cuda:<index> (default: cuda, or cpu with --smoke)")
PARSER.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
PARSER.add_argument("--output", type=Path, help="also write the JSON here, rewritten after every section")


def check_device(args: argparse.Namespace) -> torch.device:
    """The device to check, refused before any work when it cannot run the requested sizes."""
    spec = args.device or ("cpu" if args.smoke else "cuda")
    try:
        device = torch.device(spec)
    except RuntimeError:
        PARSER.error(f"--device {spec!r} is not a device; use cpu, cuda or cuda:<index>.")
    if device.type not in ("cpu", "cuda"):
        PARSER.error(f"--device {spec!r}: the check runs on cpu or cuda only.")
    if device.type == "cuda" and not torch.cuda.is_available():
        PARSER.error(f"--device {spec!r} but no CUDA GPU is visible; on a CPU run `--smoke` (tiny sizes, seconds).")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        PARSER.error(f"--device {spec!r} but only {torch.cuda.device_count()} GPU(s) are visible.")
    if device.type == "cpu" and not args.smoke:
        PARSER.error("the full check runs Llama-3-8B shapes and needs a CUDA GPU; on a CPU add --smoke.")
    return device


def main(argv: list[str] | None = None) -> int:
    args = PARSER.parse_args(argv)
    device = check_device(args)
    plan = SMOKE_PLAN if args.smoke else GPU_PLAN
    bench_namm.check_windows(list(plan.bench_lengths), bench_arguments(plan))  # before any model is built
    report: dict = {
        "check": "smoke" if args.smoke else "full",
        "environment": environment(device),
        "plan": asdict(plan),
        "sections": {},
    }
    start = time.perf_counter()
    for name in args.sections:
        report["sections"][name] = run_section(name, plan, device)
        report["summary"] = summary(report["sections"], plan)
        report["seconds"] = time.perf_counter() - start
        if args.output is not None:
            atomic_write_json(args.output, report)
    print(json.dumps(report))
    return 1 if report["summary"]["failed_sections"] else 0


if __name__ == "__main__":
    sys.exit(main())
