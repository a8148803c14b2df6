"""`evo.evolve`: the search moves only the named weight blocks; every other parameter keeps the start's value, in
every candidate, checkpoint and resumed run."""

import json

import pytest
import torch
from evolution_fake_scorer import fake_train_config
from test_configs import compose_train
from test_train_loop import assert_same_state, records

from namm.errors import ConfigError
from namm.evolution.checkpoint import BEST, LATEST, load_checkpoint
from namm.evolution.subspace import SearchedSubspace, searched_subspace
from namm.evolution.trainer import train
from namm.network.parameters import param_count
from tasks.training.task_scorer import TaskScorer, TaskScorerConfig


def test_embed_writes_the_searched_coordinates_over_the_start_and_project_reads_them_back():
    subspace = SearchedSubspace(5, torch.tensor([1, 4])).with_base(torch.tensor([10.0, 11, 12, 13, 14]))
    rows = subspace.embed(torch.tensor([[0.5, 0.25], [-1.0, -2.0]]))
    assert rows.tolist() == [[10, 0.5, 12, 13, 0.25], [10, -1, 12, 13, -2]]
    assert subspace.project(rows[1]).tolist() == [-1, -2]
    everything = SearchedSubspace.everything(3)
    vector = torch.tensor([1.0, 2.0, 3.0])
    assert everything.embed(vector).tolist() == [1, 2, 3] and everything.embed(vector) is not vector


def test_the_read_out_of_the_task_scorers_namm_is_its_last_features_plus_one_coordinates():
    cfg, _ = compose_train(["namm.key_novelty=true"])  # the default run's composed config
    namm = TaskScorerConfig.from_run_config(cfg).namm
    features, length = namm.feature_dim, param_count(namm)
    subspace = searched_subspace(TaskScorer, cfg, ["readout_weight", "readout_bias"], length)
    # the BAM's layout ends with readout_weight (features x 1) and readout_bias (1)
    assert subspace.indices.tolist() == list(range(length - features - 1, length))
    with pytest.raises(ConfigError, match=r"unknown blocks \['readout'\].*readout_weight"):
        searched_subspace(TaskScorer, cfg, ["readout"], length)


def lines(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_only_the_named_blocks_move_and_the_others_keep_the_starts_values(tmp_path, caplog):
    first = tmp_path / "first"
    train(fake_train_config(first, evo={"generations": 1, "eval_interval": 1}))
    start = load_checkpoint(first / BEST).best_params
    assert start[:4].abs().min() > 0  # a start whose fixed part is not zero
    run_dir = tmp_path / "head"
    with caplog.at_level("INFO"):
        train(fake_train_config(run_dir, init_from=str(first), evo={"generations": 3, "evolve": ["head"]}))
    assert "best centre only (it searched every parameter, this run evo.evolve=['head'])" in caplog.text
    latest = load_checkpoint(run_dir / LATEST)
    assert torch.equal(latest.center[:4], start[:4]) and torch.equal(latest.best_params[:4], start[:4])
    assert not torch.equal(latest.center[4:], start[4:])
    assert latest.searcher_state["m"].shape == (2,) and latest.param_count == 6
    records = lines(run_dir)
    assert records[0]["search/dimensions"] == 2
    assert all(record["search/centre_step"] > 0 for record in records[1:])


def test_a_subspace_run_killed_and_resumed_is_bit_exact(tmp_path, monkeypatch):
    first = tmp_path / "first"
    train(fake_train_config(first, evo={"generations": 1, "eval_interval": 1}))
    evo = {"evolve": ["head"], "eval_interval": 1}
    straight = tmp_path / "straight"
    train(fake_train_config(straight, init_from=str(first), evo=evo))
    killed = tmp_path / "killed"
    monkeypatch.setenv("FAKE_SCORER_INTERRUPT_AT", "3")
    with pytest.raises(KeyboardInterrupt):
        train(fake_train_config(killed, init_from=str(first), evo=evo))
    monkeypatch.delenv("FAKE_SCORER_INTERRUPT_AT")
    train(fake_train_config(killed, init_from=str(first), evo=evo, resume="auto"))
    assert_same_state(load_checkpoint(straight / LATEST), load_checkpoint(killed / LATEST))
    assert records(straight) == records(killed)


def test_init_from_a_run_that_searched_other_blocks_of_the_same_size_takes_its_centre_not_its_distribution(
    tmp_path, caplog
):
    scorer = {"dimension": 4}  # body and head are both 2 long
    first = tmp_path / "body"
    train(fake_train_config(first, scorer=scorer, evo={"generations": 1, "evolve": ["body"]}))
    with caplog.at_level("INFO"):
        train(fake_train_config(tmp_path / "head", scorer=scorer, init_from=str(first), evo={"evolve": ["head"]}))
    assert "best centre only (it searched evo.evolve=['body'], this run evo.evolve=['head'])" in caplog.text
    with caplog.at_level("INFO"):
        train(fake_train_config(tmp_path / "again", scorer=scorer, init_from=str(first), evo={"evolve": ["body"]}))
    assert "starting from its search distribution" in caplog.text


@pytest.mark.parametrize(
    ("blocks", "message"),
    [
        (["neck"], r"evo.evolve=\['neck'\]: unknown blocks \['neck'\]; the scorer's blocks are \['body', 'head'\]"),
        (["head", "body", "head"], r"\['head'\] named more than once"),
    ],
)
def test_bad_blocks_fail_before_anything_is_written(tmp_path, blocks, message):
    with pytest.raises(ConfigError, match=message):
        train(fake_train_config(tmp_path / "run", evo={"evolve": blocks}))
    assert not (tmp_path / "run").exists()


def test_a_scorer_without_named_blocks_is_refused_and_a_resume_cannot_change_the_blocks(tmp_path):
    class Unnamed:
        """A scorer factory with no parameter_layout."""

    with pytest.raises(ConfigError, match="needs a scorer that names its weight blocks"):
        searched_subspace(Unnamed, fake_train_config(tmp_path), ["head"], 6)
    run_dir = tmp_path / "run"
    train(fake_train_config(run_dir, evo={"generations": 1, "evolve": ["head"]}))
    with pytest.raises(ConfigError, match=r"evo.evolve: \['head'\] -> \['body'\]"):
        train(fake_train_config(run_dir, evo={"generations": 2, "evolve": ["body"]}, resume="auto"))
