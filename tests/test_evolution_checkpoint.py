"""Checkpoint files: atomic writes, corruption detection, fallback to the previous good checkpoint."""

import logging
import struct

import pytest
import torch

from namm.evolution.checkpoint import (
    LATEST,
    PREVIOUS,
    REQUIRED_KEYS,
    CheckpointError,
    load_checkpoint,
    load_latest,
    resolve_checkpoint_path,
    save_checkpoint,
    save_latest,
)

MARKER = 1.2345


def state(generation: int) -> dict:
    values = {key: None for key in REQUIRED_KEYS}
    values.update(
        format_version=1,
        generation=generation,
        center=torch.full((256,), MARKER),
        sigma=torch.tensor(0.1),
        config={"evo": {"popsize": 8}, "name": "x"},
        rng_state={"python": (3, (1, 2, 3), None)},
    )
    return values


def test_round_trip_and_no_temporary_files_left(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(state(3), path)
    loaded = load_checkpoint(path)
    assert loaded["generation"] == 3 and torch.equal(loaded["center"], state(3)["center"])
    assert loaded["config"] == {"evo": {"popsize": 8}, "name": "x"}
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.pt"]
    assert torch.load(path, weights_only=True)["generation"] == 3  # a plain torch file for users


def test_a_flipped_byte_inside_a_tensor_is_detected(tmp_path):
    path = tmp_path / "ckpt.pt"
    save_checkpoint(state(1), path)
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
    save_checkpoint(state(1), path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(path)


def test_foreign_file_is_rejected(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"center": torch.zeros(3)}, path)
    with pytest.raises(CheckpointError, match="lacks"):
        load_checkpoint(path)


def test_save_refuses_incomplete_state(tmp_path):
    incomplete = state(1)
    del incomplete["rng_state"]
    with pytest.raises(ValueError, match="rng_state"):
        save_checkpoint(incomplete, tmp_path / "x.pt")


def test_corrupted_latest_falls_back_to_previous_and_says_so(tmp_path, caplog):
    save_latest(state(1), tmp_path)
    save_latest(state(2), tmp_path)
    assert load_checkpoint(tmp_path / PREVIOUS)["generation"] == 1
    assert load_latest(tmp_path)[0]["generation"] == 2
    latest = tmp_path / LATEST
    latest.write_bytes(latest.read_bytes()[: len(latest.read_bytes()) // 2])
    with caplog.at_level(logging.WARNING):
        loaded, path = load_latest(tmp_path)
    assert loaded["generation"] == 1 and path.name == PREVIOUS
    assert any("falling back to the previous good checkpoint" in r.getMessage() for r in caplog.records)


def test_no_usable_checkpoint_is_an_error(tmp_path):
    assert load_latest(tmp_path) is None
    save_latest(state(1), tmp_path)
    (tmp_path / LATEST).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="no latest.prev.pt"):
        load_latest(tmp_path)
    save_latest(state(2), tmp_path)  # rotates the garbage into latest.prev.pt
    (tmp_path / LATEST).write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="both"):
        load_latest(tmp_path)


def test_run_directory_resolves_to_best_then_latest(tmp_path):
    with pytest.raises(CheckpointError, match="neither"):
        resolve_checkpoint_path(tmp_path)
    save_latest(state(1), tmp_path)
    assert resolve_checkpoint_path(tmp_path).name == LATEST
    save_checkpoint(state(1), tmp_path / "best.pt")
    assert resolve_checkpoint_path(tmp_path).name == "best.pt"
