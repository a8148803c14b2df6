"""Prefill cost and memory of the memory-managed engine vs one plain forward, measured side by side in one run.

    python scripts/bench_engine.py                       # CPU: SmolLM2-135M at 2k and 4k tokens
    python scripts/bench_engine.py --preset llama3-8b    # GPU: random Llama-3-8B shapes at 8k and 32k

Timings are the best of `--repeats` interleaved rounds after one warm-up of each run, so every variant
sees the same machine load. Memory (namm.memory_meter), each as a ratio of the full cache's key/value bytes at
the same length: live KV bytes (kept tokens: what a policy gives back), storage (allocated for keys and
values) and engine overhead (query buffer, slot metadata, policy state, attention rows, masks), all peaks.
Besides every baseline at `--budget` (per_layer_max), the NAMM (seeded random parameters, so heads keep
unequal counts) and H2O run in both eviction modes, to compare per_head storage with per_layer_max.
Prints a table and, as its last line, one JSON object with every ratio.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from namm.engine import EngineConfig, GenerationResult, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.policies import MemoryPolicy, PolicyConfig, build_policy
from namm.policies.namm_policy import NAMMPolicy

T = TypeVar("T")

BASELINES = ["streaming", "h2o", "snapkv", "knorm", "random"]
MODES_COMPARED = ["h2o", "namm"]  # also run with eviction_mode=per_head


def llama3_8b_shaped(device: str) -> torch.nn.Module:
    """Random weights, real Llama-3-8B shapes: enough to measure speed without any download."""
    config = LlamaConfig(
        hidden_size=4096,
        intermediate_size=14336,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=8,
        vocab_size=128256,
        max_position_embeddings=131072,
        rope_theta=500000.0,
    )
    with torch.device(device):
        model = LlamaForCausalLM(config).to(torch.bfloat16)
    return model.eval()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass(frozen=True)
class Stopwatch:
    """Device-synchronised timing: wall clock, or this process's CPU time (steadier on a shared machine,
    meaningful with one thread: with more, OpenMP's spinning threads count too)."""

    device: torch.device
    cpu_time: bool = False

    def now(self) -> float:
        synchronize(self.device)
        return time.process_time() if self.cpu_time else time.perf_counter()

    def measure(self, run: Callable[[], T]) -> tuple[float, T]:
        start = self.now()
        result = run()
        return self.now() - start, result


def interleaved_best(runs: dict[str, Callable[[], object]], watch: Stopwatch, repeats: int) -> dict[str, dict]:
    """Warm up every run once, then time `repeats` rounds of all of them in turn; best and all times."""
    for run in runs.values():
        run()
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(watch.measure(run)[0])
    return {name: {"best": min(values), "all": values} for name, values in times.items()}


def kv_bytes_full(model: torch.nn.Module, tokens: int) -> int:
    config = model.config
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    element = next(model.parameters()).element_size()
    return 2 * config.num_hidden_layers * config.num_key_value_heads * head_dim * tokens * element


def random_namm(seed: int = 16) -> NAMMPolicy:
    """Seeded random NAMM parameters (read-out bias 1): a threshold policy whose heads keep unequal counts."""
    theta = 0.5 * torch.randn(NAMMPolicy().param_count, generator=torch.Generator().manual_seed(seed))
    theta[-1] = 1.0
    return NAMMPolicy(parameters=theta)


def bench_engines(model: torch.nn.Module, budget: float, interval: int) -> dict[str, MemoryEngine]:
    """`full`, every baseline and the NAMM in per_layer_max; `<name>/per_head` for MODES_COMPARED."""

    def policy(name: str) -> MemoryPolicy:
        return random_namm() if name == "namm" else build_policy(PolicyConfig(name=name, budget_ratio=budget))

    engines = {name: MemoryEngine(model, policy(name), EngineConfig(interval)) for name in ["full", *BASELINES, "namm"]}
    for name in MODES_COMPARED:
        engines[f"{name}/per_head"] = MemoryEngine(model, policy(name), EngineConfig(interval, "per_head"))
    return engines


def time_prefills(
    model: torch.nn.Module,
    engines: dict[str, MemoryEngine],
    prompt: torch.Tensor,
    settings: GenerationSettings,
    watch: Stopwatch,
    repeats: int,
) -> tuple[dict[str, float | None], dict[str, GenerationResult]]:
    """Best seconds of one plain forward and of each engine, interleaved (None with `repeats` 0: one untimed
    run each); each engine's last result."""
    results: dict[str, GenerationResult] = {}

    def plain() -> None:
        with torch.inference_mode():
            model(input_ids=prompt.to(watch.device), logits_to_keep=1)

    def managed(name: str) -> None:
        results[name] = engines[name].generate(prompt.tolist(), settings)[0]

    runs = {"plain": plain, **{name: partial(managed, name) for name in engines}}
    if repeats == 0:
        for name in engines:
            managed(name)
        return {name: None for name in runs}, results
    best = {name: timing["best"] for name, timing in interleaved_best(runs, watch, repeats).items()}
    return best, results


def _cell(value: float | None, digits: int = 2) -> str:
    return f"{'-':>13}" if value is None else f"{value:>13.{digits}f}"


def context_section(model: torch.nn.Module, watch: Stopwatch, length: int, args: argparse.Namespace) -> dict:
    """One plain forward vs the engine under the full policy, every baseline at `args.budget` and the NAMM
    (per_layer_max, and per_head for MODES_COMPARED): seconds, retained ratio, live/storage/overhead bytes."""
    prompt = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
    settings = GenerationSettings(max_new_tokens=1, stop_on_eos=False)
    engines = bench_engines(model, args.budget, args.update_interval)
    repeats = 0 if getattr(args, "memory_only", False) else args.repeats
    best, results = time_prefills(model, engines, prompt, settings, watch, repeats)
    entry: dict = {"plain_seconds": best["plain"]}
    full_bytes = kv_bytes_full(model, length + 1)
    for name, result in results.items():
        memory, seconds = result.memory, best[name]
        entry[name] = {
            "seconds": seconds,
            "over_plain": None if seconds is None else seconds / best["plain"],
            "retained_ratio": result.retained_ratio,
            "peak_live_kv_over_full": memory.live_kv_bytes.peak / full_bytes,
            "peak_storage_over_full": memory.batch_storage_bytes.peak / full_bytes,
            "peak_overhead_over_full": memory.batch_overhead_bytes.peak / full_bytes,
        }
    return entry


COLUMNS = ("seconds", "x plain", "retained", "live/full", "storage/full", "overhead/full")


def print_header() -> None:
    print(f"{'tokens':>7} {'policy':>14} " + " ".join(f"{column:>13}" for column in COLUMNS))


def print_context(length: int, entry: dict) -> None:
    print(f"{length:>7} {'plain':>14} {_cell(entry['plain_seconds'], 3)} {_cell(1.0)}")
    for name, figures in entry.items():
        if name != "plain_seconds":
            values = list(figures.values())
            print(f"{length:>7} {name:>14} {_cell(values[0], 3)} " + " ".join(_cell(value) for value in values[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["smollm2", "llama3-8b"], default="smollm2")
    parser.add_argument("--lengths", type=int, nargs="*", help="context lengths (default: preset's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--update-interval", type=int, default=512)
    parser.add_argument(
        "--memory-only", action="store_true", help="one untimed run per engine: memory is deterministic, time is not"
    )
    args = parser.parse_args()

    if args.preset == "llama3-8b":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = llama3_8b_shaped(str(device))
        lengths = args.lengths or [8192, 32768]
    else:
        model = load_model(ModelConfig(name="smollm2-135m")).model
        device = next(model.parameters()).device
        lengths = args.lengths or [2048, 4096]
    watch = Stopwatch(device)
    report: dict = {"preset": args.preset, "device": str(device), "budget": args.budget, "lengths": {}}
    print_header()
    for length in lengths:
        entry = context_section(model, watch, length, args)
        print_context(length, entry)
        report["lengths"][str(length)] = entry
    print(json.dumps(report))


if __name__ == "__main__":
    main()
