"""The no-cliff options of the NAMM: bounded spectrogram z-scores and protected first tokens, each checked
against hand-computed values, and both off by default (the reference's behaviour)."""

from __future__ import annotations

import math

import pytest
import torch

from namm.network import NAMM, NAMMConfig
from namm.network.normalisation import bound_features
from namm.network.selection import keep_mask, ranking_scores
from namm.selection import PROTECTED_SCORE


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
