"""Prefill cost of the memory-managed engine vs one plain forward, measured side by side in one run.

    python scripts/bench_engine.py                       # CPU: SmolLM2-135M at 2k and 4k tokens
    python scripts/bench_engine.py --preset llama3-8b    # GPU: random Llama-3-8B shapes at 8k and 32k

Timings are the best of `--repeats` interleaved rounds after one warm-up of each run, so every variant
sees the same machine load. Prints a table and, as its last line, one JSON object with every ratio and
peak KV memory.
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

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.policies import PolicyConfig, build_policy

T = TypeVar("T")

BASELINES = ["streaming", "h2o", "snapkv", "knorm", "random"]


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


def time_prefills(
    model: torch.nn.Module,
    engines: dict[str, MemoryEngine],
    prompt: torch.Tensor,
    settings: GenerationSettings,
    watch: Stopwatch,
    repeats: int,
) -> tuple[dict[str, float], dict[str, int]]:
    """Best seconds of one plain forward and of each engine, interleaved; each engine's peak KV bytes."""
    peak: dict[str, int] = {}

    def plain() -> None:
        with torch.inference_mode():
            model(input_ids=prompt.to(watch.device), logits_to_keep=1)

    def managed(name: str) -> None:
        peak[name] = engines[name].generate(prompt.tolist(), settings)[0].peak_kv_bytes

    runs = {"plain": plain, **{name: partial(managed, name) for name in engines}}
    best = {name: timing["best"] for name, timing in interleaved_best(runs, watch, repeats).items()}
    return best, peak


def context_section(model: torch.nn.Module, watch: Stopwatch, length: int, args: argparse.Namespace) -> dict:
    """One plain forward vs the engine under the full policy and under every baseline at `args.budget`."""
    prompt = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
    settings = GenerationSettings(max_new_tokens=1, stop_on_eos=False)
    engine_config = EngineConfig(update_interval=args.update_interval)
    engines = {
        name: MemoryEngine(model, build_policy(PolicyConfig(name=name, budget=args.budget)), engine_config)
        for name in ["full", *BASELINES]
    }
    best, peak = time_prefills(model, engines, prompt, settings, watch, args.repeats)
    entry: dict = {"plain_seconds": best["plain"]}
    for name in engines:
        seconds, memory = best[name], peak[name] / kv_bytes_full(model, length + 1)
        entry[name] = {"seconds": seconds, "over_plain": seconds / best["plain"], "peak_kv_over_full": memory}
    return entry


def print_context(length: int, entry: dict) -> None:
    print(f"{length:>7} {'plain':>10} {entry['plain_seconds']:>9.3f} {1.0:>8.2f} {'-':>15}")
    for name, timing in entry.items():
        if name != "plain_seconds":
            print(
                f"{length:>7} {name:>10} {timing['seconds']:>9.3f} {timing['over_plain']:>8.2f} "
                f"{timing['peak_kv_over_full']:>15.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["smollm2", "llama3-8b"], default="smollm2")
    parser.add_argument("--lengths", type=int, nargs="*", help="context lengths (default: preset's)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--budget", type=float, default=0.5)
    parser.add_argument("--update-interval", type=int, default=512)
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
    print(f"{'tokens':>7} {'policy':>10} {'seconds':>9} {'x plain':>8} {'peak KV / full':>15}")
    for length in lengths:
        entry = context_section(model, watch, length, args)
        print_context(length, entry)
        report["lengths"][str(length)] = entry
    print(json.dumps(report))


if __name__ == "__main__":
    main()
