#!/usr/bin/env python
"""Check this NAMM implementation against a golden folder in the format of `namm-reference-a`.

    python scripts/check_golden.py ../shared/golden/namm-reference-a [--part module|e2e|all]

`module/`: the NAMM alone, driven with the stored attention for consecutive updates (state carried
between calls). `e2e/`: the stored tiny Llama run through the engine with the NAMM policy
(`per_layer_max` eviction, as the reference). Prints one line per check with its largest error and
exits 0 only if every check passes and something was compared (a part with no variants fails). Tolerances are the ones the golden README recommends.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from namm.network import NAMM, KVCacheManager, NAMMConfig, NAMMOutput

ABSENT_EXPONENT = -128  # marks attention entries that are exactly zero in the module encoding


@dataclass(frozen=True)
class Tolerance:
    rtol: float
    atol: float


SPECTROGRAM = Tolerance(1e-5, 5e-6)
NORMALISED_FEATURES = Tolerance(1e-5, 1e-4)
SCORES = Tolerance(1e-4, 1e-3)
E2E_NORMALISED_SCORES = Tolerance(1e-3, 1e-2)
LOGITS = Tolerance(0.0, 1e-4)


@dataclass
class Check:
    name: str
    passed: bool
    detail: str

    def line(self) -> str:
        return f"{'PASS' if self.passed else 'FAIL'}  {self.name}: {self.detail}"


def nothing_compared(name: str) -> Check:
    """A check over zero pairs proves nothing, so it fails."""
    return Check(name, False, "nothing compared (0 pairs): the golden set or this run is missing data")


def close_check(name: str, pairs: list[tuple[np.ndarray, np.ndarray]], tol: Tolerance) -> Check:
    """numpy.allclose on every (mine, golden) pair; reports the largest error and the allowance used."""
    if not pairs:
        return nothing_compared(name)
    worst_abs, worst_used, shapes_ok = 0.0, 0.0, True
    for mine, golden in pairs:
        mine, golden = np.asarray(mine, dtype=np.float64), np.asarray(golden, dtype=np.float64)
        if mine.shape != golden.shape:
            shapes_ok = False
            continue
        error = np.abs(mine - golden)
        worst_abs = max(worst_abs, float(error.max(initial=0.0)))
        worst_used = max(worst_used, float((error / (tol.atol + tol.rtol * np.abs(golden))).max(initial=0.0)))
    passed = shapes_ok and worst_used <= 1.0
    detail = f"max abs err {worst_abs:.3g}, {worst_used:.3f} of the allowance (rtol {tol.rtol:g}, atol {tol.atol:g})"
    return Check(name, passed, detail if shapes_ok else "shape mismatch; " + detail)


def exact_check(name: str, pairs: list[tuple[object, object]]) -> Check:
    """Every (mine, golden) pair must be identical; reports how many differ."""

    def plain(value: object) -> object:
        return value.tolist() if isinstance(value, (np.ndarray, torch.Tensor)) else value

    if not pairs:
        return nothing_compared(name)
    wrong = sum(plain(mine) != plain(golden) for mine, golden in pairs)
    return Check(name, wrong == 0, f"{wrong} of {len(pairs)} differ" if wrong else f"all {len(pairs)} identical")


def namm_config(golden_dir: Path) -> NAMMConfig:
    """The NAMM settings recorded in manifest.json (defaults where a key is absent)."""
    manifest = json.loads((golden_dir / "manifest.json").read_text())["config"]
    bam = manifest.get("bam", {})
    defaults = NAMMConfig()
    return NAMMConfig(
        n_fft=manifest.get("n_fft", defaults.n_fft),
        hop=manifest.get("hop_length", defaults.hop),
        ema_coeff=manifest.get("ema_coeff_per_token", defaults.ema_coeff),
        recency_dims=manifest.get("recency_embed_dim", defaults.recency_dims),
        max_freq=float(manifest.get("recency_max_freq", defaults.max_freq)),
        start_recency_from=manifest.get("start_recency_from", defaults.start_recency_from),
        hidden=bam.get("hidden_dim", defaults.hidden),
        heads=bam.get("num_heads", defaults.heads),
        bias=bam.get("bias", defaults.bias),
    )


def decode_attention(exponents: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    """float32(2**E / S), zero where E marks an absent entry (bit-exact, as the README specifies)."""
    powers = np.ldexp(1.0, exponents.astype(np.int64))
    attention = np.where(exponents != ABSENT_EXPONENT, powers / denominators[..., None], 0.0)
    return np.ascontiguousarray(attention.astype(np.float32))


def build_namm(config: NAMMConfig, parameters: np.ndarray, mean: np.ndarray | None, var: np.ndarray | None) -> NAMM:
    namm = NAMM(config, torch.from_numpy(parameters))
    if mean is not None:
        namm.normaliser.set_stats(torch.from_numpy(mean), torch.from_numpy(var))
    return namm


# -- module level ---------------------------------------------------------------------------------
def module_variant_checks(golden_dir: Path, variant: str, meta: dict) -> list[Check]:
    data = np.load(golden_dir / meta["file"])
    normalised = "norm_mean" in data
    calls = meta["calls"]
    namm = build_namm(namm_config(golden_dir), data["params"], data.get("norm_mean"), data.get("norm_var"))
    manager = KVCacheManager(namm)
    prefix = f"module/{variant}"
    sha, chained, spec, features, scores, idxs, positions, above = [], [], [], [], [], [], [], []
    previous_positions = None
    for call in range(len(calls)):
        attention = decode_attention(data[f"call{call}_attn_E"], data[f"call{call}_attn_S"])
        sha.append((hashlib.sha256(attention.tobytes()).hexdigest(), calls[call]["attn_float32_sha256"]))
        cache_positions = torch.from_numpy(data[f"call{call}_positions"])
        if previous_positions is not None:
            chained.append((previous_positions, data[f"call{call}_positions"][..., : previous_positions.shape[-1]]))
        # keys/values do not influence the NAMM; carry positions so the compaction itself is checked too
        kv = cache_positions[..., None].float()
        update = manager.update(kv, kv, torch.from_numpy(attention), cache_positions)
        golden_features = data[f"call{call}_features"]
        golden_spec = (
            data[f"call{call}_spec_pre_norm"] if normalised else golden_features[..., namm.config.recency_dims :]
        )
        spec.append((update.spectrogram.numpy(), golden_spec))
        features.append((update.features.numpy(), golden_features))
        scores.append((update.scores.numpy(), data[f"call{call}_scores"]))
        idxs.append((update.retained_index.numpy(), data[f"call{call}_retained_idxs"]))
        positions.append((update.positions.numpy(), data[f"call{call}_retained_positions"]))
        positions.append((update.keys[..., 0].long().numpy(), data[f"call{call}_retained_positions"]))
        above.append((update.selected.sum(dim=-1).numpy(), data[f"call{call}_n_above_threshold"]))
        previous_positions = update.positions.numpy()
    return [
        exact_check(f"{prefix} attention sha256", sha),
        exact_check(f"{prefix} cache positions carried between calls", chained),
        close_check(f"{prefix} spectrogram (pre-normalisation EMA)", spec, SPECTROGRAM),
        close_check(f"{prefix} features", features, NORMALISED_FEATURES if normalised else SPECTROGRAM),
        close_check(f"{prefix} scores", scores, SCORES),
        exact_check(f"{prefix} retained indices", idxs),
        exact_check(f"{prefix} retained positions (and compacted cache)", positions),
        exact_check(f"{prefix} tokens with score >= 0 per head", above),
    ]


def module_checks(golden_dir: Path) -> list[Check]:
    meta = json.loads((golden_dir / "module" / "module_meta.json").read_text())
    checks = []
    for variant, variant_meta in meta["variants"].items():
        checks += module_variant_checks(golden_dir, variant, variant_meta)
    return checks or [nothing_compared("module (module_meta.json lists no variants)")]


# -- end to end -----------------------------------------------------------------------------------
@dataclass
class LayerCall:
    """What the policy saw and decided at one layer update."""

    tokens_seen: int
    layer: int
    cache_len_before: int
    positions: torch.Tensor  # (H, S)
    scores: torch.Tensor  # (H, S)
    n_selected: list[int]
    retained_positions: list[list[int]] | None = None


def recording_policy(namm: NAMM):
    """A NAMMPolicy that records every update (scores, positions, kept positions after compaction)."""
    from namm.policies.namm_policy import NAMMPolicy

    class RecordingPolicy(NAMMPolicy):
        def __init__(self) -> None:
            super().__init__(namm, observer=self.observe)
            self.calls: list[LayerCall] = []

        def observe(self, view, output: NAMMOutput) -> None:
            self.calls.append(
                LayerCall(
                    tokens_seen=int(view.tokens_seen[0]),
                    layer=view.layer_idx,
                    cache_len_before=int(view.valid[0].sum(dim=-1).max()),
                    positions=view.positions[0].clone(),
                    scores=output.scores[0].clone(),
                    n_selected=output.keep[0].sum(dim=-1).tolist(),
                )
            )

        def reindex(self, layer_idx, rows, index, valid) -> None:
            super().reindex(layer_idx, rows, index, valid)
            call = self.calls[-1]
            kept = call.positions.gather(1, index[0])
            call.retained_positions = [kept[h][valid[0, h]].tolist() for h in range(kept.shape[0])]

    return RecordingPolicy()


def run_e2e_variant(golden_dir: Path, model, namm: NAMM, golden: dict):
    from namm.engine import EngineConfig, GenerationSettings, MemoryEngine

    manifest = json.loads((golden_dir / "manifest.json").read_text())["config"]
    policy = recording_policy(namm)
    engine = MemoryEngine(
        model, policy, EngineConfig(update_interval=manifest.get("namm_interval", 512), eviction_mode="per_layer_max")
    )
    settings = GenerationSettings(max_new_tokens=golden["new_tokens"], stop_on_eos=False, return_logits=True)
    result = engine.generate([golden["prompt_ids"]], settings)[0]
    return result, policy.calls


def e2e_variant_checks(golden_dir: Path, model, name: str, golden: dict, arrays) -> list[Check]:
    variant = golden["variants"][name]
    config = namm_config(golden_dir)
    if "params_key" in variant:
        parameters = arrays[variant["params_key"]]
    else:
        parameters = np.zeros(NAMM(config).param_count, dtype=np.float32)
    normalised = "norm_mean" in variant
    namm = build_namm(
        config, parameters, arrays["norm_mean"] if normalised else None, arrays["norm_var"] if normalised else None
    )
    result, calls = run_e2e_variant(golden_dir, model, namm, golden)
    prefix = f"e2e/{name}"
    checks = [exact_check(f"{prefix} generated ids", [(result.token_ids, variant["generated_ids"])])]

    golden_calls = variant["namm_calls"]
    abs_lens = sorted({call.tokens_seen for call in calls})
    prompt_len = golden["prompt_len"]
    schedule_mine = [(n, n <= prompt_len) for n in abs_lens]
    schedule_golden = [(c["abs_len"], c["phase"] == "prefill") for c in golden_calls]
    checks.append(exact_check(f"{prefix} NAMM call positions and phases", [(schedule_mine, schedule_golden)]))
    if schedule_mine != schedule_golden:
        return checks
    by_call = [[call for call in calls if call.tokens_seen == n] for n in abs_lens]

    if "params_key" not in variant:  # full cache: every call keeps everything
        lengths = [
            ([layer.cache_len_before for layer in mine], c["cache_len"])
            for mine, c in zip(by_call, golden_calls, strict=True)
        ]
        kept_all = [
            ([len(h) for h in layer.retained_positions], [layer.cache_len_before] * len(layer.retained_positions))
            for mine in by_call
            for layer in mine
        ]
        logits = [(result.logits.numpy(), arrays["full_cache_logits"])]
        return checks + [
            exact_check(f"{prefix} cache lengths at each call", lengths),
            exact_check(f"{prefix} nothing evicted", kept_all),
            close_check(f"{prefix} logits", logits, LOGITS),
        ]

    shape = [
        ((len(mine), [len(layer.retained_positions) for layer in mine]),
         (len(call["layers"]), [len(layer["retained_positions"]) for layer in call["layers"]]))
        for mine, call in zip(by_call, golden_calls, strict=True)
    ]  # fmt: skip
    checks.append(exact_check(f"{prefix} layers per call and KV heads per layer", shape))
    if not checks[-1].passed:
        return checks
    lengths, selected, retained, scores = [], [], [], []
    for index, (mine, golden_call) in enumerate(zip(by_call, golden_calls, strict=True)):
        for layer, golden_layer in zip(mine, golden_call["layers"], strict=True):
            kept = [len(h) for h in layer.retained_positions]
            lengths.append(
                (
                    (layer.cache_len_before, max(kept)),
                    (golden_layer["cache_len_before"], golden_layer["cache_len_after"]),
                )
            )
            selected.append((layer.n_selected, golden_layer["n_score_ge_0_per_head"]))
            retained += list(zip(layer.retained_positions, golden_layer["retained_positions"], strict=True))
            scores.append((layer.scores.numpy(), arrays[f"{name}_call{index}_layer{layer.layer}_scores"][0]))
    final_lengths = [round(ratio * result.tokens_seen) for ratio in result.retained_ratio_per_layer]
    top2 = torch.topk(result.logits, 2, dim=-1).values.numpy()
    return checks + [
        exact_check(f"{prefix} cache length per layer before/after each call", lengths),
        exact_check(f"{prefix} tokens with score >= 0 per head", selected),
        exact_check(f"{prefix} retained positions per call, layer and head", retained),
        close_check(f"{prefix} scores", scores, E2E_NORMALISED_SCORES if normalised else SCORES),
        exact_check(
            f"{prefix} tokens processed and final cache length per layer",
            [((result.tokens_seen, final_lengths), (variant["tokens_processed"], variant["final_kv_cache_len"]))],
        ),
        close_check(f"{prefix} best two logits per step", [(top2, arrays[f"{name}_logits_top2"])], LOGITS),
    ]


#: the end-to-end variants run on the NAMM schedule (each checked call by call), and the plain one
NAMM_SCHEDULE_VARIANTS = ("full_cache", "namm_raw", "namm_norm")
PLAIN_VARIANT = "plain_hf"


def plain_generation_check(model, golden: dict) -> Check:
    """The golden plain-transformers greedy ids, regenerated by transformers itself (no engine): checks the
    model folder and the prompt, which every other e2e check builds on.

    Deliberately not `namm.plain_generation.greedy_generate`: the golden `plain_hf` variant is "the unwrapped
    model with transformers' own generate", so this makes that plain call (one unpadded row, generate's own
    defaults) and a mismatch can only come from the model folder or transformers, never from our wrapper."""
    prompt = torch.tensor([golden["prompt_ids"]])
    with torch.no_grad():
        output = model.generate(
            prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=golden["new_tokens"], do_sample=False
        )
    ids = output[0, prompt.shape[1] :].tolist()
    return exact_check(
        f"e2e/{PLAIN_VARIANT} generated ids", [(ids, golden["variants"][PLAIN_VARIANT]["generated_ids"])]
    )


def e2e_checks(golden_dir: Path) -> list[Check]:
    from transformers import AutoModelForCausalLM

    e2e_dir = golden_dir / "e2e"
    golden = json.loads((e2e_dir / "e2e_golden.json").read_text())
    arrays = np.load(e2e_dir / "e2e_arrays.npz")
    model = AutoModelForCausalLM.from_pretrained(e2e_dir, dtype=torch.float32).eval()
    variants = golden["variants"]
    expected = (*NAMM_SCHEDULE_VARIANTS, PLAIN_VARIANT)
    checks = [
        Check(f"e2e/{name}", False, "variant missing from e2e_golden.json") for name in expected if name not in variants
    ]
    checks += [
        Check(f"e2e/{name}", False, "unknown variant: add it to NAMM_SCHEDULE_VARIANTS or check it here")
        for name in variants
        if name not in expected
    ]
    for name in NAMM_SCHEDULE_VARIANTS:
        if name in variants:
            checks += e2e_variant_checks(golden_dir, model, name, golden, arrays)
    if PLAIN_VARIANT in variants:
        checks.append(plain_generation_check(model, golden))
    return checks


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("golden_dir", type=Path)
    parser.add_argument("--part", choices=["module", "e2e", "all"], default="all")
    args = parser.parse_args(argv)
    if not (args.golden_dir / "manifest.json").is_file():
        parser.error(f"{args.golden_dir} is not a golden folder (no manifest.json)")
    torch.set_grad_enabled(False)
    checks = []
    if args.part in ("module", "all"):
        checks += module_checks(args.golden_dir)
    if args.part in ("e2e", "all"):
        checks += e2e_checks(args.golden_dir)
    for check in checks:
        print(check.line())
    failed = sum(not check.passed for check in checks)
    print(f"{len(checks) - failed} of {len(checks)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
