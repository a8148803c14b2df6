"""Eviction maps (`evaluate.py eviction_maps=N`): which prompt tokens each policy still holds when the prompt ends.

One PNG per (prompt, policy): layers down, token positions across, each cell the share of the layer's KV heads
that keep that position once the whole prompt is in (what decoding starts from), with the gold answer's tokens
marked where the task knows them (synthetic tasks). The prompt is run again alone (one row, one new token) with
the policy exactly as evaluated, matched budget included.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from namm.cache import MemoryCache
from namm.engine import MemoryEngine
from tasks.evaluation.contenders import Contender, build_contender_policy
from tasks.evaluation.plots import pyplot, save_figure
from tasks.evaluation.policy_runs import EvaluationContext, PolicyTaskRun
from tasks.prompts import Tokenizer
from tasks.runner import PreparedTask

EVICTION_MAPS_DIR = "eviction_maps"


def kept_share(cache: MemoryCache, row: int, length: int) -> torch.Tensor:
    """(layers, length) float32: per layer, the share of KV heads whose cache holds each of positions 0..length-1."""
    shares = []
    with cache.meter.scope():
        for layer in cache.layers:
            slots = layer.slots(torch.tensor([row]), every_row=True)
            positions, valid = slots.positions[row].cpu(), slots.valid[row].cpu()
            kept = positions[valid & (positions < length)]
            counts = torch.zeros(length).index_add_(0, kept, torch.ones(kept.numel()))
            shares.append(counts / positions.shape[0])
    return torch.stack(shares)


def prompt_end_map(engine: MemoryEngine, task: PreparedTask, index: int, tokenizer: Tokenizer) -> torch.Tensor:
    """The kept share (layers, prompt tokens) of sample `index` run alone under `engine`'s policy."""
    sample = task.samples[index]
    captured: list[torch.Tensor] = []
    settings = task.generation_settings(tokenizer)
    settings = type(settings)(**{**vars(settings), "max_new_tokens": 1})  # the prompt is all that matters
    engine.generate(
        [list(sample.prompt_ids)],
        settings,
        on_prompt_end=lambda cache: captured.append(kept_share(cache, 0, len(sample.prompt_ids))),
    )
    return captured[0]


def plot_eviction_map(
    share: torch.Tensor, answer_spans: tuple[tuple[int, int], ...] | None, title: str, path: Path
) -> None:
    """The map as a heatmap (dark: every head evicted the token; light: every head kept it), answer spans marked."""
    plt = pyplot()
    layers, length = share.shape
    figure, axis = plt.subplots(figsize=(12, 1.8 + 0.16 * layers))
    image = axis.imshow(
        share.numpy(),
        aspect="auto",
        interpolation="nearest",
        cmap="magma",
        vmin=0.0,
        vmax=1.0,
        extent=(-0.5, length - 0.5, layers - 0.5, -0.5),
    )
    for number, (first, end) in enumerate(answer_spans or ()):
        axis.axvspan(
            first - 0.5,
            end - 0.5,
            facecolor="none",
            edgecolor="cyan",
            linewidth=1.2,
            label="gold answer" if number == 0 else None,
        )
    if answer_spans:
        axis.legend(loc="upper right", fontsize=8, framealpha=0.8)
    axis.set_xlabel("token position in the prompt")
    axis.set_ylabel("layer")
    axis.yaxis.get_major_locator().set_params(integer=True)
    axis.set_title(title, fontsize=10)
    figure.colorbar(image, ax=axis, label="heads keeping", pad=0.01)
    figure.tight_layout()
    save_figure(figure, path)
    plt.close(figure)


def write_eviction_maps(
    context: EvaluationContext, task: PreparedTask, runs: list[tuple[Contender, PolicyTaskRun]], count: int
) -> list[str]:
    """One PNG per policy for each of the first `count` samples of `task`; returns their paths (relative to the
    run directory)."""
    written = []
    for contender, run in runs:
        engine = MemoryEngine(
            context.loaded.model, build_contender_policy(contender, run.policy), context.engine_config
        )
        records = {record["index"]: record for record in run.records}
        for index in range(min(count, len(task.samples))):
            share = prompt_end_map(engine, task, index, context.loaded.tokenizer)
            record: dict[str, Any] = records.get(index, {})
            title = (
                f"{contender.label} on {task.spec.name}[{index}]: kept at the prompt's end "
                f"(mean {float(share.mean()):.2f} of the prompt; score {record.get('score', float('nan')):.2f})"
            )
            relative = Path(EVICTION_MAPS_DIR) / task.spec.name / f"{index}-{contender.label}.png"
            plot_eviction_map(share, task.samples[index].answer_spans, title, context.run_dir / relative)
            written.append(str(relative))
    return written
