"""A deterministic stand-in for the model-backed scorer, for evolution tests only.

Task scores are quadratics of the parameters plus noise seeded by (seed, split, generation), so every
run with the same seed sees the same numbers, and an evolution strategy can make progress. Options
under `cfg.scorer` inject failures; `trace_dir` records which processes built and used a scorer. The
environment variable FAKE_SCORER_INTERRUPT_AT=<generation> simulates a kill (outside the config, so
the resumed run has the same config as the killed one); FAKE_SCORER_PAUSE_AT=<generation>:<file> makes it
touch <file> and wait there forever, so a test can act while a run is alive (and then kill it).
"""

from __future__ import annotations

import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from namm.errors import ConfigError
from namm.evolution.scorer_protocol import CandidateScores, PromptRecord
from namm.network.parameters import ParameterLayout

TASKS = ("alpha", "beta")
NUM_LAYERS = 3
PROMPTS_PER_TASK = 2


class FakeScorer:
    """A `ScorerFactory` (the class) and a `CandidateScorer` (its instances), like tasks.training.task_scorer.TaskScorer."""

    former_targets: tuple[str, ...] = ()

    @classmethod
    def check_config(cls, cfg: DictConfig) -> None:
        pass  # no model or task settings to check

    @classmethod
    def solution_length(cls, cfg: DictConfig) -> int:
        return int(cfg.scorer.dimension)

    @classmethod
    def parameter_layout(cls, cfg: DictConfig) -> ParameterLayout:
        """Two named blocks, for `evo.evolve`: a body and a 2-long head at the end."""
        return ParameterLayout.from_shapes([("body", (cls.solution_length(cfg) - 2,)), ("head", (2,))])

    @classmethod
    def initial_centre(cls, cfg: DictConfig, init: str, margin: float) -> torch.Tensor:
        if init != "zeros":
            raise ConfigError(
                f"evo.init={init} needs a NAMM read-out bias; the fake scorer has none: use evo.init=zeros"
            )
        return torch.zeros(cls.solution_length(cfg))

    def __init__(self, cfg: DictConfig) -> None:
        options = cfg.scorer
        self.param_count = int(options.dimension)
        self.seed = int(cfg.seed)
        self.raise_above = options.get("raise_when_first_param_above")
        self.nan_candidate = options.get("nan_candidate")  # index within every batch call
        interrupt_at = os.environ.get("FAKE_SCORER_INTERRUPT_AT")
        self.interrupt_at = int(interrupt_at) if interrupt_at else None
        pause_at = os.environ.get("FAKE_SCORER_PAUSE_AT")
        self.pause_at = (int(pause_at.split(":", 1)[0]), Path(pause_at.split(":", 1)[1])) if pause_at else None
        self.targets = {task: torch.linspace(-0.5, 0.5, self.param_count) * (i + 1) for i, task in enumerate(TASKS)}
        self.calibration: torch.Tensor | None = None
        self._unpicklable = threading.Lock()  # like a loaded model: must never travel to another process
        trace_dir = options.get("trace_dir")
        if trace_dir:
            Path(trace_dir).mkdir(parents=True, exist_ok=True)
            (Path(trace_dir) / f"built-{os.getpid()}-{id(self)}").touch()
        self.trace_dir = trace_dir

    def _noise(self, split: str, generation: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1000 + generation * 2 + (split == "validation"))
        return torch.randn(len(TASKS), PROMPTS_PER_TASK, generator=generator, dtype=torch.float64)

    def prompts(self, split: str, generation: int) -> list[tuple[str, int]]:
        return [(task, index) for task in TASKS for index in range(PROMPTS_PER_TASK)]

    def score(
        self, parameters: torch.Tensor, split: str, generation: int, prompts: list[tuple[str, int]] | None = None
    ) -> CandidateScores:
        if self.interrupt_at is not None and generation == self.interrupt_at and split == "train":
            raise KeyboardInterrupt(f"fake kill at generation {generation}")
        if self.pause_at is not None and generation == self.pause_at[0] and split == "train":
            self.pause_at[1].touch()
            while True:  # until the test kills this process
                time.sleep(1)
        if self.raise_above is not None and bool((parameters[:, 0] > self.raise_above).any()):
            raise ValueError(f"fake failure: a first parameter above {self.raise_above}")
        if self.trace_dir:
            (Path(self.trace_dir) / f"scored-{os.getpid()}-{split}-{generation}-{len(parameters)}").touch()
        calibration = float(self._calibrate())
        noise = self._noise(split, generation)
        records = []
        for task, index in self.prompts(split, generation) if prompts is None else prompts:
            t = TASKS.index(task)
            scores, ratios, per_layer = [], [], []
            for row in parameters.double():  # one candidate at a time: no kernel sees the batch
                distance = float(((row - self.targets[task]) ** 2).sum())
                scores.append(50.0 - 10.0 * distance + float(noise[t, index]) + 0.01 * calibration)
                centre = float(row.mean())
                ratios.append(1.0 / (1.0 + math.exp(-centre)))
                per_layer.append([1.0 / (1.0 + math.exp(-(centre + 0.1 * layer))) for layer in range(NUM_LAYERS)])
            if self.nan_candidate is not None and len(parameters) > 1 and task == "beta":
                scores[self.nan_candidate] = float("nan")
            records.append(
                PromptRecord(
                    task, index, scores, 40.0 + float(noise[t, index]), 40.0, ratios, per_layer, 1000 * len(scores)
                )
            )
        return CandidateScores.from_prompts(records)

    def reference_batches(self, generations: list[int]) -> list[list[tuple[str, int]]]:
        return []  # the fake's references are part of its noise

    def compute_references(self, prompts: list[tuple[str, int]]) -> dict[tuple[str, int], float]:
        return {}

    def add_references(self, references: dict[tuple[str, int], float], save: bool) -> None:
        pass

    def _calibrate(self) -> torch.Tensor:
        """Stands in for the NAMM's statistics: computed once, before the first score, then frozen."""
        if self.calibration is None:
            self.calibration = self._noise("calibration", -1).sum().reshape(1)
            if self.trace_dir:
                (Path(self.trace_dir) / f"calibrated-{os.getpid()}").touch()
        return self.calibration

    def normalisation_state(self) -> dict[str, Any]:
        return {"calibration": self._calibrate().clone()}

    def load_normalisation_state(self, state: dict[str, Any]) -> None:
        self.calibration = state["calibration"].clone() if state else None


def fake_scorer_node(**options: Any) -> dict[str, Any]:
    """The `scorer` config node that selects this fake (importable by Ray actors when tests/ is on PYTHONPATH)."""
    return {
        "_target_": f"{__name__}.FakeScorer",
        "dimension": 6,
        **options,
    }


def fake_train_config(out_dir: Path, **overrides: Any) -> DictConfig:
    """A TrainConfig scored by the fake: small population, W&B disabled, run directory `out_dir`."""
    from omegaconf import OmegaConf

    from namm.evolution.config import TrainConfig

    base = {
        "name": "fake",
        "out_dir": str(out_dir),
        "logger": {"mode": "disabled"},
        "scorer": fake_scorer_node(),
        # the fake has no NAMM layout (init zeros) and its scores are what the tests check (objective score)
        "evo": {
            "popsize": 8,
            "sigma": 0.3,
            "generations": 4,
            "eval_interval": 2,
            "init": "zeros",
            "objective": "score",
        },
    }
    return OmegaConf.merge(OmegaConf.structured(TrainConfig), base, overrides)
