"""evo.signal=answer_likelihood on a tiny model: the gold answer teacher-forced under each candidate's cache,
against the full cache's likelihood (plain transformers as the reference), references cached on disk, the
validation split still on the task metric, and a task without a gold answer refused before the model loads."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hydra.core.hydra_config import HydraConfig
from test_train_scorer import FIXTURES, tiny_config

from namm.errors import ConfigError
from namm.evolution.scorer_protocol import TRAIN_SPLIT, VALIDATION_SPLIT
from tasks.synthetic import SYNTHETIC_TASKS
from tasks.training import task_scorer
from tasks.training.answer_likelihood import likelihood_score
from tasks.training.gold_answers import gold_continuation, gold_text
from tasks.training.task_scorer import TaskScorer

LIKELIHOOD = "evo.signal=answer_likelihood"


def build(tmp_path, *extra):
    cfg = tiny_config(tmp_path, *extra)
    HydraConfig.instance().set_config(cfg)
    return TaskScorer(cfg)


@pytest.fixture()
def scorer(tmp_path, monkeypatch):
    monkeypatch.setenv("NAMM_REFERENCE_CACHE", str(tmp_path / "references"))
    return build(tmp_path, LIKELIHOOD)


def plain_mean_logprob(model, prompt: list[int], continuation: list[int]) -> float:
    with torch.no_grad():
        logprobs = model(torch.tensor([prompt + continuation])).logits[0].double().log_softmax(dim=-1)
    return sum(float(logprobs[len(prompt) - 1 + i, token]) for i, token in enumerate(continuation)) / len(continuation)


def test_the_gold_answer_is_written_as_the_model_would_continue():
    sample = SYNTHETIC_TASKS["niah_multivalue"].spec
    from tasks.task_spec import Sample

    answers = Sample(index=0, prompt_ids=(1,), answers=("12", "34", "56"))
    assert gold_text(answers, sample) == "12, 34, 56"
    assert gold_text(answers, SYNTHETIC_TASKS["passkey"].spec) == "12"  # any one answer is right: the first
    assert gold_text(answers, SYNTHETIC_TASKS["variable_tracking"].spec) == "12 34 56"  # its worked example
    with pytest.raises(ValueError, match="no gold answer"):
        gold_text(Sample(index=3, prompt_ids=(1,), answers=(" ",)), sample)


def test_likelihood_score_is_capped_at_the_full_cache():
    assert likelihood_score(-2.0, -1.0) == pytest.approx(100 * math.exp(-1.0))
    assert likelihood_score(-0.5, -1.0) == 100.0  # better than the full cache: capped
    assert likelihood_score(-1.0, -1.0) == 100.0


def test_training_scores_are_the_likelihood_ratio_and_references_match_plain_transformers(scorer, tmp_path):
    task = scorer.tasks[0]
    scorer._calibrate()
    population = 0.5 * torch.randn(3, scorer.param_count, generator=torch.Generator().manual_seed(0))
    population[0] = TaskScorer.initial_centre(tiny_config(tmp_path), "keep_all", 0.2)
    scores = scorer.score(population, TRAIN_SPLIT, 0)
    (record,) = scores.prompts
    sample = task.samples[record.index]
    continuation = gold_continuation(sample, task.spec, scorer.loaded.tokenizer)
    assert scorer.loaded.tokenizer.decode(continuation) == " " + sample.answers[0]
    full = plain_mean_logprob(scorer.loaded.model, list(sample.prompt_ids), continuation)
    stored = scorer.answer_likelihoods[task.spec.name].get(task.spec.name, record.index)
    assert 0 < stored <= 1 and math.log(stored) == pytest.approx(full, abs=1e-4)
    assert record.reference == record.pool_reference == 100.0
    assert record.scores[0] == pytest.approx(100.0, abs=1e-3) and record.retained_ratio[0] == 1.0  # keeps all
    for row in (1, 2):  # each candidate alone, by hand: 100 x min(1, exp(its mean log-prob - the full cache's))
        alone = scorer.engine.teacher_force([list(sample.prompt_ids)], continuation, population[row : row + 1])
        mean = sum(alone[0].token_logprobs) / len(continuation)
        # against the stored full-cache reference (checked against plain transformers above)
        assert record.scores[row] == pytest.approx(100.0 * math.exp(min(0.0, mean - math.log(stored))), abs=1e-6)
        assert record.retained_ratio[row] == alone[0].retained_ratio < 1.0
    assert record.tokens == 3 * (len(sample.prompt_ids) + len(continuation))
    assert len(set(record.scores)) == 3  # graded: no two candidates tie


def test_validation_keeps_the_task_metric(scorer, tmp_path):
    metric = build(tmp_path)
    centre = torch.zeros(1, scorer.param_count)
    with_likelihood, with_metric = (s.score(centre, VALIDATION_SPLIT, 0) for s in (scorer, metric))
    assert with_likelihood.task_scores == with_metric.task_scores
    assert with_likelihood.reference_scores == with_metric.reference_scores


def test_full_cache_likelihoods_are_cached_beside_the_references_and_reused(scorer, tmp_path, monkeypatch):
    prompts = scorer.prompts(TRAIN_SPLIT, 1) + scorer.prompts(VALIDATION_SPLIT, 0)
    computed = scorer.compute_references(scorer._missing_references(prompts))
    assert all(ref.score is not None and ref.answer_likelihood is not None for ref in computed.values())
    scorer.add_references(computed, save=True)
    assert scorer._missing_references(prompts) == []
    files = sorted(p for p in (tmp_path / "references").rglob("passkey-*.json") if "settings" not in p.name)
    generators = sorted(
        json.loads(p.with_suffix(".settings.json").read_text())["context"]["generator"]["name"] for p in files
    )
    assert generators == ["engine", "engine_teacher_forced"]
    again = build(tmp_path, LIKELIHOOD)
    assert again._missing_references(prompts) == []
    assert again.full_cache_accuracy(prompts) == {
        "passkey": (sum(c.score for c in computed.values()) / len(computed), len(computed))
    }
    monkeypatch.setattr(again.full_engine, "teacher_force", lambda *a, **k: pytest.fail("recomputed"))
    again.score(torch.zeros(2, again.param_count), TRAIN_SPLIT, 1)


def test_a_task_without_a_gold_answer_fails_before_the_model_loads(tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    lines = (FIXTURES / "qasper.jsonl").read_text().splitlines()
    records = [json.loads(line) for line in lines]
    records[1]["answers"] = [" "]
    (data / "qasper.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    monkeypatch.setattr(task_scorer, "load_model", lambda config: pytest.fail("the model was loaded first"))
    overrides = ["task=qasper", f"task.data_dir={data}", "evo.validation_prompts=1"]
    with pytest.raises(
        ConfigError, match=r"evo.signal=answer_likelihood .* 'qasper' .*lines \[1\].*evo.signal=task_metric"
    ):
        TaskScorer.check_config(tiny_config(tmp_path, *overrides, LIKELIHOOD))
    TaskScorer.check_config(tiny_config(tmp_path, *overrides))  # the task metric needs no gold answer
