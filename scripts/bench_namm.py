"""Cost of a NAMM managing the KV cache: prefill vs the full-cache engine and one plain forward, where the
time of an update goes, and how much batching a population of candidates saves.

    python scripts/bench_namm.py                       # CPU: SmolLM2-135M at 2k and 4k tokens
    python scripts/bench_namm.py --preset llama3-8b    # GPU: random Llama-3-8B shapes (bf16) at 8k and 32k

The NAMM under test keeps about half of the tokens: its parameter vector is zero except the read-out,
which scores a token by its recency code alone so that every token younger than half the prompt is
kept (see `half_keep_parameters`); the retained ratio it achieves is printed next to its timing.
Timings are the best of `--repeats` interleaved runs after one warm-up of each, so every variant sees
the same machine load. Prints tables and, as its last line, one JSON object (`namm_over_full` per
context length, plus everything else).
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import partial, wraps

import torch
from bench_engine import Stopwatch, interleaved_best, llama3_8b_shaped

import namm.attention
import namm.engine
import namm.network.namm
from namm.cache import MemoryCacheLayer
from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.network import NAMM, NAMMConfig
from namm.policies import PolicyConfig, build_policy
from namm.policies.namm_policy import NAMMPolicy

#: the functions whose time makes up an update, grouped as the cost split reports them; the attention rows
#: are recomputed chunk by chunk inside the spectrogram's update, whose share excludes them (NESTED)
COST_PARTS: dict[str, list[tuple[object, str]]] = {
    "attention_rows": [(namm.attention, "write_group_means")],
    "stft_ema": [(namm.network.namm, "update_spectrogram")],
    "scorer": [(namm.network.namm, "token_scores")],
    "eviction": [(namm.engine, "per_layer_max_keep_per_row"), (MemoryCacheLayer, "compact"), (NAMMPolicy, "reindex")],
    "update_total": [(namm.engine.EngineRun, "update")],
}
NESTED = {"stft_ema": "attention_rows"}


# -- the NAMM under test ----------------------------------------------------------------------------
def half_keep_parameters(config: NAMMConfig, window: int, update_interval: int) -> torch.Tensor:
    """A parameter vector that keeps exactly the tokens at most `window` positions old.

    With every weight zero but the read-out, the BAM passes its input through (x (1 + 0) + 0), so the
    score is a linear function of the features. On the lowest-frequency pair of the recency code
    (sin t, cos t with t = age * f), weights (sin c, cos c) and bias -cos h give cos(t - c) - cos h,
    which is >= 0 exactly for |t - c| <= h. With c = window * f / 2 and h = (window + 1) * f / 2 the
    kept ages are -1/2 ... window + 1/2: both boundaries fall between integer ages, so rounding (for
    example a batched matmul's) never flips a decision. The angle must not wrap around (2 pi) for any
    age the cache can hold (window + one update interval).
    """
    if config.recency_dims < 2:
        raise ValueError("half_keep_parameters needs a NAMM config with recency_dims >= 2.")
    half = config.recency_dims // 2
    frequency = config.max_freq ** (-2 * (half - 1) / config.recency_dims)
    if (window + update_interval + 1) * frequency >= 2 * math.pi:
        raise ValueError(
            f"a recency window of {window} tokens is too long for max_freq={config.max_freq}: the slowest "
            f"recency code repeats every {2 * math.pi / frequency:.0f} tokens; use shorter contexts."
        )
    centre, half_width = window * frequency / 2, (window + 1) * frequency / 2
    layout = NAMM(config).layout
    blocks = {block.name: block for block in layout.blocks}
    theta = torch.zeros(layout.size)
    readout = blocks["readout_weight"].offset  # (features, 1): feature i at offset + i
    theta[readout + half - 1] = math.sin(centre)  # sin(age * f) feature
    theta[readout + 2 * half - 1] = math.cos(centre)  # cos(age * f) feature
    theta[blocks["readout_bias"].offset] = -math.cos(half_width)
    return theta


def check_windows(lengths: list[int], args: argparse.Namespace) -> None:
    """Raise now if a context or population length is too long for the recency-window NAMMs used below."""
    for window in [length // 2 for length in lengths] + [args.population_length * 5 // 8]:
        half_keep_parameters(NAMMConfig(), window, args.update_interval)


@contextmanager
def cost_hooks(watch: Stopwatch) -> Iterator[dict[str, list[float]]]:
    """Wrap the COST_PARTS functions with timers for the duration of the block.

    Nothing is wrapped outside the block, so the timed runs carry no overhead.
    """
    seconds: dict[str, list[float]] = defaultdict(list)
    saved = []

    def timer(part: str, function: Callable) -> Callable:
        @wraps(function)
        def timed(*args, **kwargs):
            elapsed, result = watch.measure(lambda: function(*args, **kwargs))
            seconds[part].append(elapsed)
            return result

        return timed

    for part, targets in COST_PARTS.items():
        for owner, name in targets:
            original = owner.__dict__[name]
            saved.append((owner, name, original))
            setattr(owner, name, timer(part, original))
    try:
        yield seconds
    finally:
        for owner, name, original in reversed(saved):
            setattr(owner, name, original)


def cost_split(engine: MemoryEngine, prompt: list[int], settings: GenerationSettings, watch: Stopwatch) -> dict:
    """One extra NAMM run with the hooks on: seconds per part, per layer update and as a share of the run."""
    with cost_hooks(watch) as seconds:
        total, _ = watch.measure(lambda: engine.generate([prompt], settings))
    layer_updates = max(1, len(seconds["scorer"]))
    update_total = sum(seconds.pop("update_total", []))
    parts = {part: sum(values) for part, values in seconds.items()}
    for outer, inner in NESTED.items():
        parts[outer] -= parts.get(inner, 0.0)
    parts["other_policy"] = update_total - sum(parts.values())
    parts["model_forward"] = total - update_total
    return {
        "run_seconds": total,
        "layer_updates": layer_updates,
        "seconds": parts,
        "ms_per_layer_update": {part: 1e3 * value / layer_updates for part, value in parts.items()},
        "share_of_run": {part: value / total for part, value in parts.items()},
    }


# -- sections ----------------------------------------------------------------------------------------
def context_section(model, watch: Stopwatch, length: int, args: argparse.Namespace) -> dict:
    """Plain forward vs the engine with the full policy vs the engine with the half-keep NAMM."""
    prompt = torch.randint(0, model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(length))
    ids = prompt.tolist()
    settings = GenerationSettings(max_new_tokens=1, stop_on_eos=False)
    engine_config = EngineConfig(update_interval=args.update_interval)
    config = NAMMConfig()
    window = length // 2
    full = MemoryEngine(model, build_policy(PolicyConfig(name="full")), engine_config)
    managed = MemoryEngine(
        model, NAMMPolicy(config, half_keep_parameters(config, window, args.update_interval)), engine_config
    )
    retained = {}

    def plain() -> None:
        with torch.inference_mode():
            model(input_ids=prompt.to(watch.device), logits_to_keep=1)

    def namm_run() -> None:
        retained["ratio"] = managed.generate(ids, settings)[0].retained_ratio

    timing = interleaved_best(
        {"plain": plain, "full": lambda: full.generate(ids, settings), "namm": namm_run}, watch, args.repeats
    )
    best = {name: value["best"] for name, value in timing.items()}
    return {
        "plain_seconds": best["plain"],
        "full_seconds": best["full"],
        "namm_seconds": best["namm"],
        "namm_over_full": best["namm"] / best["full"],
        "namm_over_plain": best["namm"] / best["plain"],
        "full_over_plain": best["full"] / best["plain"],
        "retained_ratio": retained["ratio"],
        "window": window,
        "all_seconds": {name: value["all"] for name, value in timing.items()},
        "cost_split": cost_split(managed, ids[0], settings, watch),
    }


def population_section(model, watch: Stopwatch, args: argparse.Namespace) -> dict:
    """Score `population_size` candidates on one prompt: one batch of rows (each its own vector) vs one by one.

    Candidate i keeps a recency window between 3/8 and 5/8 of the prompt, so rows keep different amounts
    (as in a real population) and about half on average.
    """
    length, size = args.population_length, args.population_size
    config = NAMMConfig()
    windows = torch.linspace(0.375 * length, 0.625 * length, size).round().long().tolist()
    candidates = torch.stack([half_keep_parameters(config, window, args.update_interval) for window in windows])
    engine = MemoryEngine(model, NAMMPolicy(config), EngineConfig(update_interval=args.update_interval))
    prompt = torch.randint(0, model.config.vocab_size, (length,), generator=torch.Generator().manual_seed(7)).tolist()
    settings = GenerationSettings(max_new_tokens=args.population_new_tokens, stop_on_eos=False)
    outputs: dict[str, list] = {}

    def batched(tokens: list[int], run_settings: GenerationSettings) -> list:
        return engine.generate([tokens] * size, run_settings, row_parameters=candidates)

    def one_by_one(tokens: list[int], run_settings: GenerationSettings) -> list:
        return [engine.generate([tokens], run_settings, row_parameters=candidates[i : i + 1])[0] for i in range(size)]

    warm_settings = GenerationSettings(max_new_tokens=2, stop_on_eos=False)
    warm_prompt = prompt[: args.update_interval]
    batched(warm_prompt, warm_settings), one_by_one(warm_prompt, warm_settings)
    times: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    for _ in range(args.population_repeats):
        for name, run in (("batched", batched), ("one_by_one", one_by_one)):
            elapsed, outputs[name] = watch.measure(partial(run, prompt, settings))
            times[name].append(elapsed)
    batched_s, single_s = min(times["batched"]), min(times["one_by_one"])
    same = all(
        a.token_ids == b.token_ids and a.cache_sizes == b.cache_sizes
        for a, b in zip(outputs["batched"], outputs["one_by_one"])
    )
    return {
        "candidates": size,
        "prompt_tokens": length,
        "new_tokens": args.population_new_tokens,
        "batched_seconds": batched_s,
        "one_by_one_seconds": single_s,
        "per_sample_batched_seconds": batched_s / size,
        "per_sample_one_by_one_seconds": single_s / size,
        "per_sample_speedup": single_s / batched_s,
        "mean_retained_ratio": sum(r.retained_ratio for r in outputs["batched"]) / size,
        "batched_equals_one_by_one": same,
        "all_seconds": times,
    }


# -- output ----------------------------------------------------------------------------------------
def print_context(length: int, entry: dict) -> None:
    print(f"\n{length} tokens (NAMM keeps ages <= {entry['window']}: retained ratio {entry['retained_ratio']:.3f})")
    print(f"  {'run':<8} {'seconds':>9} {'x plain':>8} {'x full':>7}")
    for name in ("plain", "full", "namm"):
        seconds = entry[f"{name}_seconds"]
        print(
            f"  {name:<8} {seconds:>9.3f} {seconds / entry['plain_seconds']:>8.2f} {seconds / entry['full_seconds']:>7.2f}"
        )
    split = entry["cost_split"]
    print(
        f"  cost split of one NAMM run ({split['layer_updates']} layer updates, {split['run_seconds']:.2f} s with hooks):"
    )
    print(f"  {'part':<15} {'seconds':>9} {'ms/layer-update':>16} {'share':>7}")
    for part, seconds in split["seconds"].items():
        print(
            f"  {part:<15} {seconds:>9.3f} {split['ms_per_layer_update'][part]:>16.2f} {split['share_of_run'][part]:>7.1%}"
        )


def print_population(entry: dict) -> None:
    print(
        f"\npopulation: {entry['candidates']} candidates, {entry['prompt_tokens']}-token prompt, "
        f"{entry['new_tokens']} new tokens (mean retained ratio {entry['mean_retained_ratio']:.3f}, "
        f"batched == one by one: {entry['batched_equals_one_by_one']})"
    )
    print(f"  batched    {entry['batched_seconds']:>9.2f} s  ({entry['per_sample_batched_seconds']:.3f} s per sample)")
    print(
        f"  one by one {entry['one_by_one_seconds']:>9.2f} s  ({entry['per_sample_one_by_one_seconds']:.3f} s per sample)"
    )
    print(f"  per-sample speedup {entry['per_sample_speedup']:.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=["smollm2", "llama3-8b"], default="smollm2")
    parser.add_argument("--lengths", type=int, nargs="*", help="context lengths (default: the preset's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (best is reported)")
    parser.add_argument("--update-interval", type=int, default=512)
    parser.add_argument("--population-size", type=int, default=16)
    parser.add_argument("--population-length", type=int, help="prompt tokens (default: 8192 GPU, 1024 CPU)")
    parser.add_argument("--population-new-tokens", type=int, help="generated tokens (default: 64 GPU, 16 CPU)")
    parser.add_argument("--population-repeats", type=int, default=1)
    parser.add_argument("--skip-population", action="store_true")
    parser.add_argument(
        "--threads", type=int, help="CPU threads (default: torch's); 1 is steadiest on a shared machine"
    )
    parser.add_argument("--cpu-time", action="store_true", help="time with process CPU time (use with --threads 1)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    gpu = args.preset == "llama3-8b"
    lengths = args.lengths or ([8192, 32768] if gpu else [2048, 4096])
    args.population_length = args.population_length or (8192 if gpu else 1024)
    args.population_new_tokens = args.population_new_tokens or (64 if gpu else 16)
    check_windows(lengths, args)  # fail before model work
    if gpu:
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        model = llama3_8b_shaped(str(device))
    else:
        model = load_model(ModelConfig(name="smollm2-135m")).model
        device = next(model.parameters()).device
    if args.cpu_time and device.type != "cpu":
        raise ValueError("--cpu-time measures this process's CPU time: it cannot time work on a GPU.")
    watch = Stopwatch(device, cpu_time=args.cpu_time)

    threads = f"{torch.get_num_threads()} threads"
    report: dict = {
        "preset": args.preset,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({threads})",
        "clock": "process CPU time" if args.cpu_time else "wall",
        "update_interval": args.update_interval,
        "repeats": args.repeats,
        "lengths": {},
    }
    for length in lengths:
        entry = context_section(model, watch, length, args)
        print_context(length, entry)
        report["lengths"][str(length)] = entry
    report["namm_over_full"] = {key: entry["namm_over_full"] for key, entry in report["lengths"].items()}
    report["namm_over_plain"] = {key: entry["namm_over_plain"] for key, entry in report["lengths"].items()}
    if not args.skip_population:
        report["population"] = population_section(model, watch, args)
        print_population(report["population"])
    print(json.dumps(report))


if __name__ == "__main__":
    main()
