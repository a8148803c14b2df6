"""The model card (README.md) of an exported NAMM: what it is, how it was evolved, what it measured, how to use it.

Generated from the same record as config.json, so the card can never disagree with the files it describes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from namm.models.hub import HUB_ID

if TYPE_CHECKING:
    from namm.pretrained import PretrainedNAMM


def _tasks(task: Any) -> str:
    if isinstance(task, dict):
        names = task.get("tasks") or task.get("name")
        if isinstance(names, list):
            return ", ".join(str(name) for name in names)
        if names:
            return str(names)
    return "unrecorded"


def _front_matter(artefact: PretrainedNAMM) -> str:
    lines = ["---", "library_name: namm-evolve", "tags:", "- kv-cache", "- memory", "- namm", "- evolution-strategies"]
    trained_on = artefact.trained_on
    if trained_on and HUB_ID.match(trained_on):
        lines.append(f"base_model: {trained_on}")
    return "\n".join([*lines, "---", ""])


def _selection(artefact: PretrainedNAMM) -> str:
    config = artefact.config
    if config.budget_tokens is not None:
        return f"top {config.budget_tokens} tokens per KV head"
    if config.budget_ratio is not None:
        return f"top {config.budget_ratio:.0%} of the tokens seen, per KV head"
    return f"tokens scoring >= {config.threshold:g} (newest always kept)"


def _measured(artefact: PretrainedNAMM) -> list[str]:
    measured = artefact.measured
    if not measured:
        return ["No held-out validation was recorded for these parameters."]
    lines = [
        (
            f"Held-out validation at generation {measured['generation']}: fitness {measured['validation_fitness']:.4f} "
            f"(mean over tasks of score / full-cache score), retained ratio {measured['retained_ratio']:.3f}."
        ),
        "",
        "| task | score | full-cache reference |",
        "|---|---:|---:|",
    ]
    for task, score in measured["task_scores"].items():
        reference = measured["reference_scores"].get(task)
        lines.append(f"| {task} | {score:.2f} | {'-' if reference is None else f'{reference:.2f}'} |")
    return lines


def _objective(evo: dict) -> str:
    """The fitness the NAMM was evolved for, in words (checkpoints before objectives existed used `score`)."""
    objective = evo.get("objective", "score")
    text = (
        f"`{objective}`: mean over tasks of score / max(full-cache score, {evo.get('reference_floor_share', 0)} x "
        f"validation full-cache score, {evo.get('reference_floor', '-')})"
    )
    if objective == "memory_penalty":
        text += f" - {evo.get('memory_weight')} x retained ratio"
    if objective == "budget":
        text += ", under the hard budget below"
    return text


def model_card(artefact: PretrainedNAMM) -> str:
    """README.md for the exported folder."""
    config, engine, training = artefact.config, artefact.engine, artefact.training
    evo = training.get("evo") or {}
    searcher = evo.get("searcher", "unrecorded") if isinstance(evo, dict) else "unrecorded"
    lines = [
        _front_matter(artefact),
        f"# NAMM ({config.scorer}, {artefact.namm.param_count:,} parameters)",
        "",
        (
            "A Neural Attention Memory Model (Cetin et al., ICLR 2025) evolved with "
            "namm-evolve: it scores every cached token of a frozen transformer from the attention "
            "it receives and evicts the low scorers from the KV cache."
        ),
        "",
        "| setting | value |",
        "|---|---|",
        f"| evolved on | {artefact.trained_on or 'unrecorded'} |",
        f"| tasks | {_tasks(training.get('task'))} |",
        f"| search | {searcher}, generation {training.get('generation', 'unrecorded')} ({training.get('params', '-')} parameters) |",
        f"| objective | {_objective(evo if isinstance(evo, dict) else {})} |",
        f"| keeps | {_selection(artefact)} |",
        f"| schedule | every {engine.update_interval} tokens, eviction `{engine.eviction_mode}` |",
        (
            f"| features | STFT n_fft {config.n_fft}, hop {config.hop}, EMA {config.ema_coeff}, {config.recency_dims}-d recency code, "
            f"normalisation {'calibrated' if artefact.namm.normaliser.stats is not None else 'none'} |"
        ),
        "",
        "## Measured",
        "",
        *_measured(artefact),
        "",
        "## Use",
        "",
        "```python",
        "from namm.pretrained import PretrainedNAMM",
        "",
        'namm = PretrainedNAMM.from_pretrained("<this folder or repo id>")',
        "cache = namm.cache(model)  # model: any transformers decoder using the attention interface",
        "output = model.generate(**inputs, past_key_values=cache, max_new_tokens=64)",
        'print(f"kept {cache.retained_ratio:.0%} of the KV cache")',
        "```",
        "",
        (
            "Files: `model.safetensors` (one tensor per block of the parameter layout), `config.json` (NAMM config, "
            "layout, normalisation statistics, schedule, training record, measured figures)."
        ),
        "",
    ]
    return "\n".join(lines)
