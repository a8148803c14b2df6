"""The no-cliff options of the NAMM: bounded spectrogram z-scores and protected first tokens, each checked
against hand-computed values, and both off by default (the reference's behaviour)."""

from __future__ import annotations

import math

import pytest
import torch

from namm.budget import PROTECTED_SCORE
from namm.network import NAMM, NAMMConfig
from namm.network.keep_rule import keep_mask, ranking_scores
from namm.network.normalisation import bound_features


def test_bound_features_hand_computed():
    z = torch.tensor([-40.0, -2.0, 0.0, 1.0, 40.0])
    assert torch.equal(bound_features(z, None, "tanh"), z)  # off: unchanged
    expected_tanh = [4 * math.tanh(v / 4) for v in z.tolist()]
    torch.testing.assert_close(bound_features(z, 4.0, "tanh"), torch.tensor(expected_tanh))
    expected_softsign = [4 * (v / 4) / (1 + abs(v / 4)) for v in z.tolist()]
    torch.testing.assert_close(bound_features(z, 4.0, "softsign"), torch.tensor(expected_softsign))
    assert bound_features(z, 4.0, "clip").tolist() == [-4.0, -2.0, 0.0, 1.0, 4.0]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"feature_bound": 0.0}, "feature_bound"),
        ({"feature_bound": float("inf")}, "feature_bound"),
        ({"feature_squash": "sigmoid"}, "feature_squash"),
        ({"protect_first": -1}, "protect_first"),
    ],
)
def test_bad_no_cliff_settings_name_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        NAMMConfig(**overrides)


def test_defaults_are_the_reference():
    config = NAMMConfig()
    assert config.feature_bound is None and config.protect_first == 0


def test_protect_first_ranks_above_scores_and_below_newest():
    positions = torch.arange(6).view(1, 1, 6)
    valid = torch.ones(1, 1, 6, dtype=torch.bool)
    scores = torch.tensor([[[-5.0, -4.0, 2.0, -1.0, 3.0, -3.0]]])
    config = NAMMConfig(protect_first=2)
    ranked = ranking_scores(scores, positions, valid, config)
    assert ranked[0, 0, :2].tolist() == [PROTECTED_SCORE, PROTECTED_SCORE] and ranked[0, 0, 5] == float("inf")
    # threshold 0: positions 0, 1 (protected), 2, 4 (scores >= 0) and 5 (newest)
    assert keep_mask(ranked, positions, valid, config).tolist() == [[[True, True, True, False, True, True]]]
    # a budget of 3 tokens: the newest, then the two protected ones, before the best-scoring token
    budget = NAMMConfig(protect_first=2, budget_tokens=3)
    assert keep_mask(ranked, positions, valid, budget).tolist() == [[[True, True, False, False, False, True]]]


def test_feature_bound_caps_the_namm_features_and_a_sink_stays_kept():
    """An attention sink at z ~ 40: with a bound its feature is at most B, and protect_first keeps it whatever
    the parameters say."""
    attention = torch.zeros(1, 1, 32, 32)
    attention[..., 0] = 1.0  # every query attends only to token 0 (a perfect sink)
    positions = torch.arange(32).view(1, 1, 32)
    stats = (torch.full((17,), 0.01), torch.full((17,), 0.01**2))  # sd 0.01: the sink sits at large z
    raw, bounded, protected = (
        NAMM(NAMMConfig(**options)) for options in ({}, {"feature_bound": 3.0}, {"protect_first": 1})
    )
    for namm in (raw, bounded, protected):
        namm.normaliser.set_stats(*stats)
    raw_features = raw(attention, positions).features[..., 8:]
    bounded_features = bounded(attention, positions).features[..., 8:]
    assert raw_features.abs().max() > 100
    assert bounded_features.abs().max() <= 3.0
    torch.testing.assert_close(bounded_features, 3.0 * torch.tanh(raw_features / 3.0))
    evict_all = torch.zeros(protected.param_count)
    evict_all[-1] = -1.0  # the read-out bias: every token scores -1 (below the threshold)
    keep = protected(attention, positions, parameters=evict_all).keep[0, 0]
    assert keep.tolist() == [True] + [False] * 30 + [True]  # the sink and the newest


def test_key_novelty_input_hand_computed():
    from namm.key_novelty import key_novelty
    from namm.network import KVCacheManager, param_count

    keys = torch.tensor([[[[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [9.0, 9.0]]]])
    valid = torch.tensor([[[True, True, True, False]]])
    # anchor: the mean of the valid unit keys, (2/3, 1/3); cos with (1, 0) is 2/sqrt(5), with (0, 1) 1/sqrt(5)
    expected = [1 - 2 / math.sqrt(5), 1 - 2 / math.sqrt(5), 1 - 1 / math.sqrt(5)]
    torch.testing.assert_close(key_novelty(keys, valid)[0, 0, :3], torch.tensor(expected))

    config = NAMMConfig(key_novelty=True)
    assert config.feature_dim == 26 and param_count(config) == 26 * 96 + 96 + 32 * 52 + 52 + 26 + 1
    attention = torch.softmax(torch.randn(1, 1, 32, 32), dim=-1).tril()
    cache = torch.randn(1, 1, 32, 4)
    update = KVCacheManager(config).update(cache, cache, attention, torch.arange(32).view(1, -1))
    torch.testing.assert_close(update.features[..., -1], key_novelty(cache, torch.ones(1, 1, 32, dtype=torch.bool)))
    with pytest.raises(ValueError, match="key_novelty needs the cached keys"):
        NAMM(config)(attention, torch.arange(32).view(1, 1, 32))


def test_the_engine_hands_the_keys_to_a_key_novelty_namm():
    from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
    from namm.models import ModelConfig, load_model
    from namm.policies.namm_policy import NAMMPolicy

    seen = []
    config = NAMMConfig(key_novelty=True)
    policy = NAMMPolicy(config, observer=lambda view, output: seen.append((view.keys, view.valid, output.features)))
    model = load_model(ModelConfig(name="tiny-llama")).model
    MemoryEngine(model, policy, EngineConfig(update_interval=32)).generate([list(range(3, 67))], GenerationSettings())
    from namm.key_novelty import key_novelty

    assert seen
    for keys, valid, features in seen:
        torch.testing.assert_close(features[..., -1], key_novelty(keys, valid) * valid)
