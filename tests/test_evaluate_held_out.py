"""Held-out by construction: a NAMM's recorded training and validation prompts are refused (or skipped, or
run with a loud record) by identity before the model loads and by prompt hash before scoring."""

from __future__ import annotations

import dataclasses
import json
import logging

import pytest
from evaluation_helpers import TINY, compose_evaluate, evicting_parameters, write_checkpoint
from task_fixtures import FIXTURES, byte_tokenizer

from namm.errors import ConfigError
from namm.evolution.checkpoint import load_checkpoint, read_provenance, save_checkpoint, with_provenance
from namm.network.config import NAMMConfig
from namm.network.namm import NAMM
from namm.pretrained import PretrainedNAMM
from tasks.evaluation import pipeline
from tasks.evaluation.held_out import check_before_loading, hold_out
from tasks.evaluation.namm_source import NAMMSource
from tasks.fingerprints import prompt_digest
from tasks.preparation import ModelInfo, prepare_tasks
from tasks.provenance import TrainedPrompts, training_provenance
from tasks.task_config import TaskConfig

MODEL = ModelInfo("byte-model", byte_tokenizer(), max_context=4096, chat_template=False)


def passkey(seed: int, num_samples: int = 4):
    [task] = prepare_tasks(TaskConfig(tasks=["passkey"], num_samples=num_samples, seed=seed, context_length=300), MODEL)
    return task


def trained(record) -> NAMMSource:
    """A NAMM whose checkpoint carries `record` (None: a checkpoint from before the record existed)."""
    training = {} if record is None else {"provenance": record}
    return NAMMSource(PretrainedNAMM(NAMM(NAMMConfig()), training=training), kind="checkpoint")


@pytest.fixture(scope="module")
def training_record():
    """Trained on passkey seed 42: prompts 0-2 in the pool, 3 validated on."""
    return training_provenance([passkey(42)], {"train": {"passkey": [0, 1, 2]}, "validation": {"passkey": [3]}})


def test_the_record_names_each_prompt_by_identity_and_hash(training_record):
    task = passkey(42)
    [train, validation] = training_record["prompts"]
    assert (train["split"], train["seed"], train["indices"]) == ("train", 42, [0, 1, 2])
    assert validation["indices"] == [3] and validation["prompt_sha"] == [prompt_digest(task.samples[3].prompt_ids)]


def test_the_training_seed_is_refused_before_the_model_loads(training_record):
    with pytest.raises(ConfigError, match=r"trained or validated on.*passkey: 4 prompt\(s\).*trained_prompts=allow"):
        check_before_loading(
            TaskConfig(tasks=["passkey"], num_samples=4, seed=42), [("namm", trained(training_record))], "refuse"
        )
    # the evaluation default (conf/eval_task: seed 4242) is disjoint
    assert (
        check_before_loading(
            TaskConfig(tasks=["passkey"], num_samples=4, seed=4242), [("namm", trained(training_record))], "refuse"
        )
        == {}
    )
    tasks, records = hold_out([passkey(4242)], [("namm", trained(training_record))], "refuse")
    assert records["namm"].status == "checked" and not records["namm"].overlap and len(tasks[0].samples) == 4


def with_a_trained_prompt(task, trained_task, index=1):
    """`task` whose sample 2 is `trained_task`'s sample `index` (the same prompt reached another way)."""
    samples = list(task.samples)
    samples[2] = dataclasses.replace(samples[2], prompt_ids=trained_task.samples[index].prompt_ids)
    return dataclasses.replace(task, samples=tuple(samples))


def test_a_trained_prompt_is_found_by_its_hash(training_record, caplog):
    task = with_a_trained_prompt(passkey(4242), passkey(42))
    source = [("namm", trained(training_record))]
    with pytest.raises(ConfigError, match=r"passkey: 1 prompt\(s\), e.g. index \[2\]"):
        hold_out([task], source, "refuse")
    [kept], records = hold_out([task], source, "skip")
    assert [sample.index for sample in kept.samples] == [0, 1, 3] and records["namm"].skipped[0]["index"] == 2
    with caplog.at_level(logging.WARNING):
        [kept], records = hold_out([task], source, "allow")
    assert len(kept.samples) == 4 and records["namm"].overlap == [
        {"task": "passkey", "index": 2, "split": "train", "prompt_sha": prompt_digest(task.samples[2].prompt_ids)}
    ]
    assert "IS SCORED ON 1 PROMPT(S) IT WAS TRAINED OR VALIDATED ON" in caplog.text


def test_a_checkpoint_without_a_record_cannot_be_checked_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        check_before_loading(TaskConfig(tasks=["passkey"], num_samples=4, seed=42), [("namm", trained(None))], "refuse")
    assert "CANNOT CHECK" in caplog.text
    _, records = hold_out([passkey(42)], [("namm", trained(None))], "refuse")
    assert records["namm"].status == "unrecorded"


def test_a_run_started_from_another_carries_its_ancestors_prompts(training_record):
    child = training_provenance([passkey(7)], {"train": {"passkey": [0]}, "validation": {"passkey": [1]}})
    prompts = TrainedPrompts.from_record({**child, "init_from": training_record})
    assert prompts.indices_of("passkey", 42) == {0, 1, 2, 3} and prompts.indices_of("passkey", 7) == {0, 1}
    assert prompts.complete
    assert not TrainedPrompts.from_record({**child, "init_from": None}).complete


def test_longbench_skips_the_lines_trained_on():
    config = TaskConfig(tasks=["qasper_e"], num_samples=2, data_dir=str(FIXTURES))
    [task] = prepare_tasks(config, MODEL)
    record = training_provenance([task], {"train": {"qasper_e": [0]}, "validation": {"qasper_e": [1]}})
    with pytest.raises(ConfigError, match="qasper_e: 2 prompt"):
        check_before_loading(config, [("namm", trained(record))], "refuse")
    skip = check_before_loading(config, [("namm", trained(record))], "skip")
    assert skip == {"qasper_e": {0, 1}}
    [fresh] = prepare_tasks(config, MODEL, skip_lines=skip)
    assert [sample.index for sample in fresh.samples] == [2, 3]  # the next lines, keeping their line numbers
    [kept], records = hold_out([fresh], [("namm", trained(record))], "skip")
    assert len(kept.samples) == 2 and records["namm"].status == "checked"


def test_checkpoints_round_trip_the_record_and_old_ones_read_as_none(tmp_path, training_record):
    path = write_checkpoint(tmp_path / "old.pt", evicting_parameters())
    old = load_checkpoint(path)
    assert read_provenance(old) is None
    save_checkpoint(with_provenance(old, training_record), tmp_path / "new.pt")
    assert read_provenance(load_checkpoint(tmp_path / "new.pt")) == training_record
    assert PretrainedNAMM.from_checkpoint(tmp_path / "new.pt").training["provenance"] == training_record


def _checkpoint_trained_on_the_eval_prompts(tmp_path):
    """A checkpoint whose record says it validated on passkey seed 4242 prompt 0 (the evaluation's default)."""
    path = write_checkpoint(tmp_path / "trained.pt", evicting_parameters())
    record = {
        "format": 1,
        "complete": True,
        "prompts": [
            {
                "task": "passkey",
                "split": "validation",
                "seed": 4242,
                "data_source": "synthetic",
                "indices": [0],
                "prompt_sha": ["0" * 16],
            }
        ],
    }
    save_checkpoint(with_provenance(load_checkpoint(path), record), path)
    return path


def test_evaluate_refuses_before_the_model_loads_and_allow_records_the_overlap(tmp_path, monkeypatch):
    checkpoint = _checkpoint_trained_on_the_eval_prompts(tmp_path)
    settings = [*TINY, "compare=[full,namm]", f"checkpoint={checkpoint}"]

    def no_loading(*args, **kwargs):
        raise AssertionError("the model was loaded")

    with monkeypatch.context() as patched:
        patched.setattr(pipeline, "load_model", no_loading)
        with pytest.raises(ConfigError, match="namm was trained or validated on"):
            pipeline.evaluate(compose_evaluate(tmp_path / "refused", *settings))
    out = tmp_path / "allowed"
    document = pipeline.evaluate(compose_evaluate(out, *settings, "trained_prompts=allow"))
    saved = json.loads((out / "results.json").read_text())["held_out"]["namm"]
    assert saved["mode"] == "allow" and [(e["task"], e["index"], e["split"]) for e in saved["overlap"]] == [
        ("passkey", 0, "validation")
    ]
    assert document["settings"]["trained_prompts"] == "allow"
