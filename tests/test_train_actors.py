"""Ray actors (evo.num_actors=2) on CPU: each builds its scorer once, the population is split, validation
prompts are spread, calibration runs once, and the search is bit-identical to scoring in the main process."""

import json
import os
from pathlib import Path

import pytest
import ray
from evolution_fake_scorer import fake_train_config

from namm.evolution.checkpoint import LATEST, load_checkpoint
from namm.evolution.metrics import TIMING_KEYS
from namm.evolution.trainer import train


def records(run_dir: Path) -> list[dict]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS} for line in lines]


@pytest.mark.slow
def test_two_actors_match_local_scoring(tmp_path, monkeypatch):
    tests_dir = str(Path(__file__).parent)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")])))
    local = tmp_path / "local"
    train(fake_train_config(local, evo={"generations": 2}))

    distributed, trace = tmp_path / "actors", tmp_path / "trace"
    try:
        train(fake_train_config(distributed, evo={"generations": 2, "num_actors": 2}, scorer={"trace_dir": str(trace)}))
    finally:
        ray.shutdown()

    builders = [path.name.split("-")[1] for path in trace.glob("built-*")]
    assert len(builders) == 2 and len(set(builders)) == 2  # one scorer (model) per actor, built once
    assert str(os.getpid()) not in builders  # the main process never loaded it
    train_chunks = sorted(path.name for path in trace.glob("scored-*-train-*"))
    assert len(train_chunks) == 4 and all(name.endswith("-4") for name in train_chunks)  # 8 split in 2 x 4
    for generation in (0, 2):  # the start and the last generation: the validation prompts spread over both actors
        assert len({path.name.split("-")[1] for path in trace.glob(f"scored-*-validation-{generation}-1")}) == 2
    assert len(list(trace.glob("calibrated-*"))) == 1  # calibrated once, its statistics sent to the other actor
    a, b = load_checkpoint(local / LATEST), load_checkpoint(distributed / LATEST)
    assert a.center.equal(b.center) and a.sigma.equal(b.sigma)
    assert records(local) == records(distributed)
