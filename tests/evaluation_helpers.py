"""Shared pieces of the evaluate tests: composing conf/evaluate.yaml, tiny-model settings, checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig

from namm.evolution.checkpoint import TrainingCheckpoint, save_checkpoint
from namm.network.config import NAMMConfig
from namm.network.parameters import param_count
from tasks.evaluation import register_configs

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"

# passkey at 400 byte-tokens, updates every 128 tokens: three evictions per prompt on the tiny models
TINY = [
    "model=tiny-llama",
    "task.context_length=400",
    "task.num_samples=3",
    "engine.update_interval=128",
    "batch_size=2",
    "plots=false",
    "progress=false",
]


def compose_evaluate(out_dir: Path, *overrides: str, train_dir: Path | None = None) -> DictConfig:
    """conf/evaluate.yaml as `python evaluate.py <overrides>` composes it, with the Hydra-only paths set."""
    register_configs()
    paths = ["name=test", f"out_dir={out_dir}", f"train_dir={train_dir or out_dir / 'no-training-runs'}"]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base=None):
        return compose(config_name="evaluate", overrides=[*paths, *overrides])


def evicting_parameters(config: NAMMConfig | None = None, seed: int = 2, scale: float = 0.2) -> torch.Tensor:
    """A NAMM vector that keeps about half of the cache on the tiny models (found by probing seeds)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(param_count(config or NAMMConfig()), generator=generator) * scale


def write_checkpoint(
    path: Path,
    parameters: torch.Tensor,
    model: str = "tiny-llama",
    namm: dict[str, Any] | None = None,
    generation: int = 3,
) -> Path:
    """A checkpoint as the trainer writes it (same writer, required keys), holding `parameters`."""
    record = TrainingCheckpoint(
        generation=generation,
        center=parameters.clone() * 0.5,  # differs from best_params, so tests see which one is used
        sigma=0.065,
        best_params=parameters.clone(),
        best_validation_fitness=0.5,
        config={"model": {"name": model}, "namm": namm or NAMMConfig().to_dict(), "engine": None},
        searcher_state={},
        rng_state={},
        normalisation_state={},
        wandb_run_id=None,
        versions={},
    )
    save_checkpoint(record, path)
    return path


def sample_lines(run_dir: Path) -> dict[str, list[dict[str, Any]]]:
    """Every per-sample jsonl file of a run, relative path -> records."""
    return {
        str(path.relative_to(run_dir)): [json.loads(line) for line in path.read_text().splitlines()]
        for path in sorted((run_dir / "samples").rglob("*.jsonl"))
    }


def results_by(document: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(row["policy"], row["task"]): row for row in document["results"]}


MEAN = [0.5 + 0.25 * bin for bin in range(17)]
VAR = [2.0 + bin for bin in range(17)]


def training_run(run_dir: Path, parameters: torch.Tensor) -> Path:
    """A run directory as the trainer leaves it: best.pt with calibrated statistics, and metrics.jsonl."""
    record = TrainingCheckpoint(
        generation=6,
        best_generation=4,
        center=parameters * 0.5,
        sigma=0.065,
        best_params=parameters,
        best_validation_fitness=0.75,
        config={
            "model": {"name": "tiny-llama"},
            "task": {"tasks": ["passkey"], "context_length": 400},
            "namm": NAMMConfig().to_dict(),
            "engine": {"update_interval": 128, "eviction_mode": "per_layer_max", "prefill_chunk": None},
            "evo": {"searcher": "cmaes_separable", "popsize": 4, "reference_floor": 1.0},
            "seed": 3,
        },
        searcher_state={},
        rng_state={},
        normalisation_state={
            "count": torch.tensor(500.0, dtype=torch.float64),
            "mean": torch.tensor(MEAN, dtype=torch.float64),
            "var": torch.tensor(VAR, dtype=torch.float64),
        },
        wandb_run_id=None,
        versions={},
    )
    run_dir.mkdir(parents=True)
    save_checkpoint(record, run_dir / "best.pt")
    records = [
        {"generation": 4, "validation/fitness": 0.75, "validation/retained_ratio": 0.61, "validation/passkey/score": 50.0,
         "validation/passkey/reference": 66.7},
        {"generation": 5, "fitness/mean": 0.1},
    ]  # fmt: skip
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    return run_dir
