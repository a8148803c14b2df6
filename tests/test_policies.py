"""Each baseline keeps exactly the tokens its definition says, on hand-built layer views."""

from __future__ import annotations

import pytest
import torch

from namm.policies import LayerView, PolicyConfig, available_policies, build_policy

SLOTS = 12


def hand_view(attention: torch.Tensor | None = None, keys: torch.Tensor | None = None) -> LayerView:
    """One row, one KV head, 12 live tokens at positions 0..11, tokens_seen 12, 4 new queries."""
    positions = torch.arange(SLOTS)[None, None]
    if keys is None:
        keys = torch.ones(1, 1, SLOTS, 2)
    return LayerView(
        layer_idx=0,
        rows=torch.tensor([0]),
        keys=keys,
        values=torch.zeros_like(keys),
        valid=torch.ones(1, 1, SLOTS, dtype=torch.bool),
        positions=positions,
        tokens_seen=torch.tensor([SLOTS]),
        num_new_tokens=4,
        attention_fn=(lambda count: attention[:, :, -count:]) if attention is not None else None,
    )


def kept_positions(policy, view) -> list[int]:
    policy.reset(1, 1, 1, torch.device("cpu"))
    selection = policy.select(view)
    return view.positions[0, 0][selection.keep[0, 0]].tolist()


def test_registry_lists_every_baseline():
    assert {"full", "streaming", "h2o", "snapkv", "knorm", "random"} <= set(available_policies())


def test_full_keeps_everything():
    assert kept_positions(build_policy(PolicyConfig(name="full")), hand_view()) == list(range(SLOTS))


def test_streaming_keeps_sinks_and_recent_window():
    policy = build_policy(PolicyConfig(name="streaming", budget_tokens=5, options={"sink_tokens": 2}))
    assert kept_positions(policy, hand_view()) == [0, 1, 9, 10, 11]


def test_budget_ratio_is_of_tokens_seen():
    policy = build_policy(PolicyConfig(name="streaming", budget=0.25, options={"sink_tokens": 1}))
    assert kept_positions(policy, hand_view()) == [0, 10, 11]  # ceil(0.25 * 12) = 3


def test_knorm_keeps_lowest_key_norms_and_newest():
    norms = torch.tensor([5.0, 1.0, 7.0, 0.5, 9.0, 2.0, 8.0, 6.0, 3.0, 9.5, 4.0, 10.0])
    keys = torch.stack([norms, torch.zeros(SLOTS)], dim=-1)[None, None]
    policy = build_policy(PolicyConfig(name="knorm", budget_tokens=4))
    assert kept_positions(policy, hand_view(keys=keys)) == [1, 3, 5, 11]  # newest (11) always kept


def test_h2o_keeps_most_attended_and_accumulates_across_updates():
    attention = torch.zeros(1, 1, 4, SLOTS)
    attention[0, 0, :, 2] = 0.5
    attention[0, 0, :2, 7] = 0.4
    attention[0, 0, 0, 5] = 0.3
    policy = build_policy(PolicyConfig(name="h2o", budget_tokens=3))
    assert kept_positions(policy, hand_view(attention)) == [2, 7, 11]
    # the second update adds to what was received before
    view = hand_view(attention)
    policy.select(view)
    assert policy.received[0][0, 0, 2].item() == pytest.approx(4.0)


def test_h2o_splits_its_budget_between_heavy_hitters_and_the_newest_tokens():
    attention = torch.zeros(1, 1, 4, SLOTS)
    attention[0, 0, :, 2] = 0.5
    attention[0, 0, :2, 7] = 0.4
    attention[0, 0, 0, 5] = 0.3
    # budget 4, half recent: the two newest (10, 11) and the two heaviest (2, 7)
    split = build_policy(PolicyConfig(name="h2o", budget_tokens=4))
    assert kept_positions(split, hand_view(attention)) == [2, 7, 10, 11]
    heavy_only = build_policy(PolicyConfig(name="h2o", budget_tokens=4, options={"recent_share": 0.0}))
    assert kept_positions(heavy_only, hand_view(attention)) == [2, 5, 7, 11]
    with pytest.raises(ValueError, match="recent_share"):
        build_policy(PolicyConfig(name="h2o", budget=0.5, options={"recent_share": 1.5}))


def test_snapkv_pools_votes_of_the_last_window():
    attention = torch.zeros(1, 1, 4, SLOTS)
    attention[0, 0, 0, 1] = 0.9  # only the first query looks here: outside the window of 2
    attention[0, 0, 2:, 5] = 0.6
    policy = build_policy(PolicyConfig(name="snapkv", budget_tokens=5, options={"window": 2, "kernel_size": 3}))
    # window keeps positions 10, 11; pooled votes cover 4, 5, 6 around the voted token
    assert kept_positions(policy, hand_view(attention)) == [4, 5, 6, 10, 11]


def test_random_keeps_a_seeded_subset_of_the_budget():
    first = kept_positions(build_policy(PolicyConfig(name="random", budget_tokens=6, options={"seed": 3})), hand_view())
    again = kept_positions(build_policy(PolicyConfig(name="random", budget_tokens=6, options={"seed": 3})), hand_view())
    other = kept_positions(build_policy(PolicyConfig(name="random", budget_tokens=6, options={"seed": 4})), hand_view())
    assert len(first) == 6 and 11 in first
    assert first == again and first != other
