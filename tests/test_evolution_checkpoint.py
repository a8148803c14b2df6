"""Checkpoint files: one typed record, atomic writes, corruption detection, field checks on read, fallback to
the previous good checkpoint, and the files earlier versions wrote."""

import logging
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from namm.evolution.checkpoint import (
    LATEST,
    PREVIOUS,
    CheckpointError,
    TrainingCheckpoint,
    content_digest,
    load_checkpoint,
    load_latest,
    resolve_checkpoint_path,
    save_checkpoint,
    save_latest,
)

MARKER = 1.2345
COMMITTED = Path(__file__).parents[1] / "results" / "cpu-memory" / "latest.pt"


def record(generation: int) -> TrainingCheckpoint:
    return TrainingCheckpoint(
        generation=generation,
        center=torch.full((256,), MARKER),
        sigma=torch.tensor(0.1),
        best_params=torch.zeros(256),
        best_validation_fitness=None,
        config={"evo": {"popsize": 8}, "name": "x"},
        searcher_state={"searcher": "cmaes_separable", "m": torch.full((256,), MARKER)},
        rng_state={"python": (3, (1, 2, 3), None)},
        normalisation_state={},
        wandb_run_id=None,
        versions={},
    )


def write_raw(path: Path, payload: dict) -> Path:
    """A file as a hand edit (or another writer) leaves it, with a valid digest so only the field check can object."""
    torch.save({**payload, "sha256": content_digest(payload)}, path)
    return path


def test_round_trip_and_no_temporary_files_left(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(record(3), path)
    loaded = load_checkpoint(path)
    assert loaded.generation == 3 and torch.equal(loaded.center, record(3).center)
    assert loaded.config == {"evo": {"popsize": 8}, "name": "x"} and loaded.provenance == {}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    plain = torch.load(path, weights_only=True)  # a plain torch file for users
    assert plain["generation"] == 3 and plain["format_version"] == 2 and plain["sha256"] == loaded.sha256


def test_provenance_is_free_form_and_round_trips(tmp_path):
    path = tmp_path / "ckpt.pt"
    provenance = {"training_prompts": {"passkey": [3, 5]}, "validation_prompts": {"passkey": [0, 1]}, "note": "x"}
    save_checkpoint(replace(record(1), provenance=provenance), path)
    assert load_checkpoint(path).provenance == provenance


def test_the_committed_format_1_checkpoint_still_loads():
    loaded = load_checkpoint(COMMITTED)  # results/cpu-memory, written before the typed record
    assert (loaded.generation, loaded.best_generation, loaded.param_count) == (6, 3, 4172)
    assert loaded.center.shape == (4172,) and loaded.searcher_state["searcher"] == "cmaes_separable"
    assert loaded.provenance == {} and loaded.sha256 == torch.load(COMMITTED, weights_only=True)["sha256"]


def test_a_format_1_file_without_the_later_fields_reads_them_as_defaults(tmp_path):
    payload = record(2).to_payload()
    payload["format_version"] = 1
    for name in ("provenance", "best_generation", "best_validation_retained_ratio", "param_count"):
        del payload[name]
    loaded = load_checkpoint(write_raw(tmp_path / "old.pt", payload))
    assert loaded.best_generation is None and loaded.provenance == {} and loaded.generation == 2


def test_a_flipped_byte_inside_a_tensor_is_detected(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(record(1), path)
    data = bytearray(path.read_bytes())
    offset = data.find(struct.pack("<f", MARKER))
    assert offset > 0
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))
    assert torch.load(path, weights_only=True)["generation"] == 1  # torch alone does not notice
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_truncated_file_is_detected(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(record(1), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"center": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda p: p.pop("rng_state"), r"ckpt.pt lacks \['rng_state'\]"),
        (lambda p: p.update(generation="3"), r"ckpt.pt: field 'generation' holds a str, expected int"),
        (lambda p: p.update(config=None), r"field 'config' holds a NoneType"),
        (lambda p: p.update(center=torch.zeros(2, 3)), r"field 'center' .* shape \(2, 3\), expected a float vector"),
        (lambda p: p.update(best_params=torch.zeros(5)), r"'best_params' has 5 parameters but 'center' has 256"),
        (lambda p: p["center"].__setitem__(7, float("nan")), r"field 'center' holds a non-finite number"),
        (lambda p: p.update(sigma=float("inf")), r"field 'sigma' holds a non-finite number"),
        (lambda p: p["searcher_state"]["m"].__setitem__(0, float("nan")), r"field 'searcher_state\['m'\]'"),
        (
            lambda p: p.update(normalisation_state={"mean": torch.tensor([0.0, float("nan")])}),
            r"field 'normalisation_state\['mean'\]' holds a non-finite number",
        ),
        (lambda p: p.update(surprise=1), r"fields this version does not know: \['surprise'\]"),
        (lambda p: p.update(format_version=9), r"has format 9, this code reads \[1, 2\]"),
    ],
)
def test_each_bad_field_is_named_with_the_file_and_the_fix(tmp_path, edit, message):
    payload = record(1).to_payload()
    edit(payload)
    with pytest.raises(CheckpointError, match=message) as error:
        load_checkpoint(write_raw(tmp_path / "ckpt.pt", payload))
    if "format 9" not in message:
        assert "use another checkpoint of the run" in str(error.value) or "not a complete" in str(error.value)


def test_save_refuses_what_could_not_be_read_back(tmp_path):
    bad = replace(record(1), best_params=torch.full((256,), float("nan")))
    with pytest.raises(CheckpointError, match="best_params"):
        save_checkpoint(bad, tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_corrupted_latest_falls_back_to_previous_and_says_so(tmp_path, caplog):
    save_latest(record(1), tmp_path)
    save_latest(record(2), tmp_path)
    assert load_checkpoint(tmp_path / PREVIOUS).generation == 1
    assert load_latest(tmp_path)[0].generation == 2
    latest = tmp_path / LATEST
    latest.write_bytes(latest.read_bytes()[: len(latest.read_bytes()) // 2])
    with caplog.at_level(logging.WARNING):
        loaded, path = load_latest(tmp_path)
    assert loaded.generation == 1 and path.name == PREVIOUS
    assert any("falling back to the previous good checkpoint" in r.getMessage() for r in caplog.records)


def test_a_latest_with_a_bad_field_also_falls_back(tmp_path, caplog):
    save_latest(record(1), tmp_path)
    save_latest(record(2), tmp_path)
    payload = record(2).to_payload()
    payload["center"][0] = float("nan")
    write_raw(tmp_path / LATEST, payload)
    with caplog.at_level(logging.WARNING):
        loaded, path = load_latest(tmp_path)
    assert loaded.generation == 1 and path.name == PREVIOUS
    assert any("field 'center' holds a non-finite number" in r.getMessage() for r in caplog.records)


def test_no_usable_checkpoint_is_an_error(tmp_path):
    assert load_latest(tmp_path) is None
    save_latest(record(1), tmp_path)
    (tmp_path / LATEST).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no latest.prev.pt"):
        load_latest(tmp_path)
    save_latest(record(2), tmp_path)  # rotates the garbage into latest.prev.pt
    (tmp_path / LATEST).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="both"):
        load_latest(tmp_path)


def test_run_directory_resolves_to_best_then_latest(tmp_path):
    with pytest.raises(CheckpointError, match="neither"):
        resolve_checkpoint_path(tmp_path)
    save_latest(record(1), tmp_path)
    assert resolve_checkpoint_path(tmp_path).name == LATEST
    save_checkpoint(record(1), tmp_path / "best.pt")
    assert resolve_checkpoint_path(tmp_path).name == "best.pt"


def test_a_run_saved_with_the_former_scorer_node_resumes_under_todays():
    """Before the scorer was one `_target_` class, conf/train.yaml spelled it as three function paths."""
    from namm.evolution.resume import config_differences
    from tasks.training.task_scorer import TaskScorer

    saved = load_checkpoint(COMMITTED).config
    assert set(saved["scorer"]) == {"_target_", "param_count_target", "check_target"}
    today = {**saved, "scorer": {"_target_": "tasks.training.task_scorer.TaskScorer"}}
    assert config_differences(saved, today, TaskScorer.former_targets) == []
    other = {**saved, "scorer": {"_target_": "my.OtherScorer"}}
    assert config_differences(saved, other, ()) == [
        "scorer._target_: 'tasks.evolution_scorer.build_scorer' -> 'my.OtherScorer'"
    ]


def test_a_run_saved_before_the_training_scorer_moved_to_tasks_training_resumes():
    """conf/train.yaml named `tasks.evolution_scorer.TaskScorer` until the scorer moved; such runs resume."""
    import yaml

    from namm.evolution.resume import config_differences
    from namm.evolution.scorer_protocol import scorer_factory

    target = yaml.safe_load((COMMITTED.parents[2] / "conf" / "train.yaml").read_text())["scorer"]["_target_"]
    assert target == "tasks.training.task_scorer.TaskScorer"
    today = {**load_checkpoint(COMMITTED).config, "scorer": {"_target_": target}}
    saved = {**today, "scorer": {"_target_": "tasks.evolution_scorer.TaskScorer"}}
    assert config_differences(saved, today, scorer_factory(today).former_targets) == []
    assert config_differences(saved, today, ()) != []


def test_the_check_scripts_read_checkpoints_through_load_checkpoint(tmp_path):
    """scripts/cliff_check.py refuses a committed checkpoint whose statistics lost a bit (a plain torch.load
    would read it, and the table would rest on the wrong statistics)."""
    committed = Path(__file__).resolve().parents[1] / "results" / "cpu-memory" / "latest.pt"
    mean = torch.load(committed, map_location="cpu", weights_only=True)["normalisation_state"]["mean"]
    data = bytearray(committed.read_bytes())
    offset = data.find(struct.pack("<d", float(mean[0])))
    assert offset > 0
    data[offset] ^= 0x01
    damaged = tmp_path / "latest.pt"
    damaged.write_bytes(bytes(data))
    script = Path(__file__).resolve().parents[1] / "scripts" / "cliff_check.py"
    command = [sys.executable, str(script), "--checkpoint", str(damaged), "--draws", "2", "--tokens", "64"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode != 0 and "CheckpointError" in run.stderr and "checksum" in run.stderr
    command[3] = str(committed)
    run = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert run.returncode == 0 and "| protect_first=4 |" in run.stdout
