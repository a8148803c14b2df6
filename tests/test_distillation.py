"""evo.init=distill: hand-computed targets and ranks, an oracle checked against a plain transformers forward, a fit
that lowers the ranking loss, a bias that keeps the requested share, bad input refused before the model loads,
and the trainer's generation-0 record on a tiny model."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import pytest
import torch
from evolution_fake_scorer import FakeScorer, fake_train_config
from hydra import compose, initialize_config_dir

from namm.errors import ConfigError
from namm.evolution.config import register_configs
from namm.evolution.distillation import (
    DistillConfig,
    DistillTarget,
    PairSample,
    RankingExample,
    bias_for_retained,
    example_scores,
    fit_ranking,
    normalised_ranks,
    pair_loss,
    readout_bias_index,
    retained_share,
)
from namm.evolution.scorer_protocol import DistilsCentre, RecordsPromptProvenance, ReportsFullCacheAccuracy
from namm.evolution.trainer import train
from namm.models import ModelConfig, load_model
from namm.network.config import NAMMConfig
from namm.network.namm import NAMMOutput
from namm.policies.base import LayerView
from tasks.task_config import TaskConfig
from tasks.training.distillation_examples import FeatureCollector, check_distill_target, suffix_attention
from tasks.training.task_scorer import TaskScorer

CONF = str(Path(__file__).resolve().parents[1] / "conf")


# -- targets and ranks on small tensors ----------------------------------------------------------
def view_and_output(layer: int, received: list[float], features: float) -> tuple[LayerView, NAMMOutput]:
    slots = len(received)
    positions = torch.arange(slots).view(1, 1, slots)
    valid = torch.ones(1, 1, slots, dtype=torch.bool)
    sums = torch.tensor(received).view(1, 1, slots)
    view = LayerView(
        layer_idx=layer,
        rows=torch.tensor([0]),
        keys=torch.zeros(1, 1, slots, 2),
        values=torch.zeros(1, 1, slots, 2),
        valid=valid,
        positions=positions,
        tokens_seen=torch.tensor([slots]),
        num_new_tokens=2,
        attention_sums_fn=lambda count: sums,
    )
    output = NAMMOutput(
        scores=torch.zeros(1, 1, slots),
        ranked=torch.zeros(1, 1, slots),
        keep=valid,
        features=torch.full((1, 1, slots, 3), features),
        state=None,  # type: ignore[arg-type]
    )
    return view, output


def test_h2o_and_recency_targets_hand_computed():
    collector = FeatureCollector()
    for layer, received in ((0, [1.0, 2.0, 3.0, 4.0]), (1, [0.5, 0.5, 0.5, 0.5])):
        collector(*view_and_output(layer, received, float(layer)))
    for layer, received in ((0, [1.0] * 6), (1, [0.0, 0.0, 0.0, 0.0, 2.0, 1.0])):
        collector(*view_and_output(layer, received, float(layer)))
    first, second = collector.examples(DistillTarget.h2o, None)
    assert first.target.tolist() == [[[1.0, 2.0, 3.0, 4.0]], [[0.5, 0.5, 0.5, 0.5]]]
    # accumulated over both updates, per layer and position
    assert second.target.tolist() == [[[2.0, 3.0, 4.0, 5.0, 1.0, 1.0]], [[0.5, 0.5, 0.5, 0.5, 2.0, 1.0]]]
    assert second.features.shape == (2, 1, 6, 3) and second.features[1].unique().tolist() == [1.0]
    assert not second.features.is_inference()
    (recency, _) = collector.examples(DistillTarget.recency, None)[:1] * 2
    assert recency.target.tolist() == [[[0.0, 1.0, 2.0, 3.0]], [[0.0, 1.0, 2.0, 3.0]]]
    oracle = torch.arange(2 * 1 * 6, dtype=torch.float32).view(2, 1, 6)
    assert collector.examples(DistillTarget.oracle, oracle)[0].target.tolist() == [[[0, 1, 2, 3]], [[6, 7, 8, 9]]]


def test_keydiff_target_is_one_minus_the_cosine_to_the_heads_mean_key_hand_computed():
    """Keys (1, 0), (1, 0), (0, 2) and an invalid slot: the mean unit key is (2, 1) / 3, whose direction is
    (2, 1) / sqrt(5); the two (1, 0) keys have cosine 2 / sqrt(5) to it, the (0, 2) key 1 / sqrt(5)."""
    view, output = view_and_output(0, [0.0] * 4, 0.0)
    view.keys = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]).view(1, 1, 4, 2)
    view.valid = torch.tensor([True, True, True, False]).view(1, 1, 4)
    view.positions = torch.tensor([0, 1, 2, -1]).view(1, 1, 4)
    collector = FeatureCollector()
    collector(view, output)
    (example,) = collector.examples(DistillTarget.keydiff, None)
    root5 = math.sqrt(5.0)
    expected = [1 - 2 / root5, 1 - 2 / root5, 1 - 1 / root5, 0.0]
    assert example.target[0, 0].tolist() == pytest.approx(expected, abs=1e-6)


def test_normalised_ranks_and_pair_loss_hand_computed():
    target = torch.tensor([[[3.0, 1.0, 2.0, 9.0]]])
    ranked = torch.tensor([[[True, True, True, False]]])
    assert normalised_ranks(target, ranked).tolist() == [[[1.0, 0.0, 0.5, 0.0]]]
    scores = torch.tensor([[[2.0, 0.0, 1.0, 0.0]]])
    pairs = PairSample(
        first=torch.tensor([[[0, 1]]]),
        second=torch.tensor([[[1, 2]]]),
        sign=torch.tensor([[[1.0, -1.0]]]),
        weight=torch.tensor([[[1.0, 0.5]]]),
    )
    expected = (math.log1p(math.exp(-2.0)) * 1.0 + math.log1p(math.exp(-1.0)) * 0.5) / 1.5
    assert float(pair_loss(scores, pairs)) == pytest.approx(expected)


def test_oracle_attention_equals_a_full_eager_forward():
    """The suffix's attention, computed after a cached prefix, against one eager forward of the whole sequence."""
    loaded = load_model(ModelConfig(name="tiny-llama"))
    model = loaded.model
    prompt = [int(t) for t in torch.randint(3, 250, (90,), generator=torch.Generator().manual_seed(0))]
    continuation = [40, 41, 42]
    oracle = suffix_attention(model, prompt, continuation, queries=20)
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            output = model(input_ids=torch.tensor([prompt + continuation]), output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    for layer, attention in enumerate(output.attentions):  # (1, 4 query heads, 93, 93); 2 KV heads
        rows = attention[0, :, 70:, :90].sum(dim=1)  # the last 20 prompt tokens and the 3 answer tokens
        expected = rows.view(2, 2, 90).mean(dim=1)
        torch.testing.assert_close(oracle[layer], expected, atol=1e-5, rtol=1e-4)


# -- the fit ------------------------------------------------------------------------------------
def synthetic_examples(count: int = 3) -> list[RankingExample]:
    """Random features whose target is a fixed mix of two spectrogram bins (learnable by the scorer)."""
    generator = torch.Generator().manual_seed(3)
    examples = []
    for _ in range(count):
        features = torch.randn(2, 2, 40, 25, generator=generator)
        positions = torch.arange(40).expand(2, 2, 40).clone()
        valid = torch.ones(2, 2, 40, dtype=torch.bool)
        target = features[..., 8] - 0.5 * features[..., 12]
        examples.append(RankingExample(features, positions, valid, target))
    return examples


def test_the_fit_lowers_the_ranking_loss_and_the_bias_keeps_the_requested_share():
    examples = synthetic_examples()
    config = NAMMConfig()
    fit = fit_ranking(examples, config, DistillConfig(retained=0.75, steps=60, learning_rate=0.03))
    assert fit.loss_before == pytest.approx(math.log(2), abs=1e-6)  # the zero vector ties every pair
    assert fit.loss_after < 0.6 * fit.loss_before
    assert abs(fit.retained_ratio - 0.75) < 0.02  # the newest token of each head is kept on top
    for retained in (0.5, 0.25):
        biased = bias_for_retained(fit.parameters, examples, config, retained)
        assert torch.equal(biased[:-1], fit.parameters[:-1])  # only the read-out bias moves
        assert abs(retained_share(biased, examples, config) - retained) < 0.02


def test_the_fit_is_seeded():
    examples = synthetic_examples(count=1)
    settings = DistillConfig(steps=5)
    assert torch.equal(
        fit_ranking(examples, NAMMConfig(), settings).parameters,
        fit_ranking(examples, NAMMConfig(), settings).parameters,
    )


@pytest.mark.parametrize("scorer", ["bam", "mlp"])
def test_the_exact_keydiff_start_scores_each_token_by_its_novelty_over_its_spread(scorer):
    """evo.distill.target=keydiff_exact: score = novelty / sd(novelty over the ranked tokens) + bias, with the bias at the cut that
    keeps the requested share; every other input (random here) weighs nothing."""
    config = NAMMConfig(key_novelty=True, scorer=scorer)
    generator = torch.Generator().manual_seed(5)
    examples = []
    for _ in range(2):
        features = torch.randn(2, 2, 40, config.feature_dim, generator=generator)
        features[..., -1] = 2 * torch.rand(2, 2, 40, generator=generator)  # novelty is in [0, 2]
        positions = torch.arange(40).expand(2, 2, 40).clone()
        valid = torch.ones(2, 2, 40, dtype=torch.bool)
        examples.append(RankingExample(features, positions, valid, features[..., -1].clone()))
    settings = DistillConfig(target=DistillTarget.keydiff_exact, retained=0.5)
    fit = fit_ranking(examples, config, settings)
    ranked_novelty = torch.cat([e.features[..., -1][:, :, :39].flatten() for e in examples])  # newest is not ranked
    scale = 1.0 / ranked_novelty.std()
    cut = ranked_novelty.sort().values[math.floor(0.5 * len(ranked_novelty))]
    assert float(fit.parameters[readout_bias_index(config)]) == pytest.approx(config.threshold - float(cut * scale))
    for example in examples:
        expected = example.features[..., -1] * scale + config.threshold - cut * scale
        torch.testing.assert_close(example_scores(fit.parameters, example, config), expected, atol=1e-5, rtol=1e-5)
    assert fit.loss_after < fit.loss_before == pytest.approx(math.log(2), abs=1e-6)
    assert abs(fit.retained_ratio - 0.5) < 0.03


def test_keydiff_exact_needs_the_key_novelty_input_and_says_so_before_the_model_loads(tmp_path):
    with pytest.raises(ConfigError, match="target=keydiff_exact .* set namm.key_novelty=true"):
        check_distill_target(DistillTarget.keydiff_exact, TaskConfig(), NAMMConfig())
    check_distill_target(DistillTarget.keydiff_exact, TaskConfig(), NAMMConfig(key_novelty=True))
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):  # the demo's start without its input
        cfg = compose("train", overrides=["model=tiny-llama", "namm.key_novelty=false", f"out_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="target=keydiff_exact .* set namm.key_novelty=true"):
        TaskScorer.check_config(cfg)
    assert not any(tmp_path.iterdir())


# -- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize("retained", [0.0, 1.5, float("nan")])
def test_a_retained_share_outside_zero_one_fails_before_the_scorer_is_built(tmp_path, retained):
    config = fake_train_config(
        tmp_path / "run",
        scorer={"trace_dir": str(tmp_path / "trace")},
        evo={"init": "distill", "distill": {"retained": retained}},
    )
    with pytest.raises(ConfigError, match=r"evo.distill.retained .* must be in \(0, 1\]"):
        train(config)
    assert not (tmp_path / "trace").exists()


def test_oracle_on_a_task_without_gold_answers_is_refused(tmp_path):
    record = {"input": "q", "context": "c", "answers": [""], "length": 1, "dataset": "qasper", "language": "en"}
    (tmp_path / "qasper.jsonl").write_text(json.dumps({**record, "all_classes": None, "_id": "x"}) + "\n")
    tasks = TaskConfig(name="qasper", tasks=["qasper"], data_dir=str(tmp_path))
    with pytest.raises(ConfigError, match="evo.distill.target=oracle .* use evo.distill.target=h2o"):
        check_distill_target(DistillTarget.oracle, tasks, NAMMConfig())
    check_distill_target(DistillTarget.h2o, tasks, NAMMConfig())  # h2o needs no answer
    check_distill_target(DistillTarget.keydiff, tasks, NAMMConfig(key_novelty=True))  # nor does keydiff
    check_distill_target(DistillTarget.oracle, TaskConfig(), NAMMConfig())  # synthetic tasks always have one


def test_keydiff_without_the_key_novelty_input_is_said(caplog):
    with caplog.at_level("WARNING"):
        check_distill_target(DistillTarget.keydiff, TaskConfig(), NAMMConfig(key_novelty=True))
        assert not caplog.records
        check_distill_target(DistillTarget.keydiff, TaskConfig(), NAMMConfig())
    assert "namm.key_novelty=true" in caplog.text


def test_the_optional_scorer_methods_are_declared_protocols():
    """The task scorer offers all three optional methods, the fake scorer none: read through the protocols
    beside `CandidateScorer`, never by a method name in a string."""
    optional = (RecordsPromptProvenance, ReportsFullCacheAccuracy, DistilsCentre)
    assert all(issubclass(TaskScorer, protocol) for protocol in optional)
    assert not any(issubclass(FakeScorer, protocol) for protocol in optional)


def test_a_scorer_that_cannot_distil_is_named(tmp_path):
    with pytest.raises(ConfigError, match="evo.init=distill needs a scorer with distilled_centre"):
        train(fake_train_config(tmp_path / "run", evo={"init": "distill"}))


# -- end to end on a tiny model -------------------------------------------------------------------
@pytest.mark.parametrize(
    "start",
    [
        ["evo.distill.target=h2o", "evo.distill.steps=30"],
        ["evo.distill.target=keydiff_exact", "namm.key_novelty=true"],  # closed form, no fit
    ],
    ids=["h2o-fitted", "keydiff-exact"],
)
def test_a_distilled_start_is_validated_at_generation_0(tmp_path, monkeypatch, start):
    monkeypatch.setenv("NAMM_REFERENCE_CACHE", str(tmp_path / "references"))
    overrides = [
        "~experiment", "model=tiny-llama", "task.context_length=300", "task.num_samples=4", "evo.popsize=2", "evo.generations=1",
        "evo.prompts_per_task=1", "evo.validation_prompts=1", "engine.update_interval=64", "logger.mode=disabled",
        "name=tiny", f"out_dir={tmp_path / 'run'}", "evo.init=distill", "evo.distill.prompts_per_task=1",
        "evo.distill.retained=0.5", *start,
    ]  # fmt: skip
    register_configs()
    with initialize_config_dir(config_dir=CONF, version_base=None):
        train(compose("train", overrides=overrides))
    start = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert start["generation"] == 0
    assert start["distill/loss_after"] < start["distill/loss_before"]
    assert abs(start["distill/retained_on_fitting"] - 0.5) < 0.02
    assert 0 < start["validation/retained_ratio"] < 0.9  # the start evicts, and validation reports it
    assert "validation/fitness" in start
    assert os.path.exists(tmp_path / "run" / "latest.pt")
