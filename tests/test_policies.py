"""Each baseline keeps exactly the tokens its definition says, on hand-built layer views."""

from __future__ import annotations

import pytest
import torch

from namm.budget import Budget
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
    policy = build_policy(PolicyConfig(name="streaming", budget_ratio=0.25, options={"sink_tokens": 1}))
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
        build_policy(PolicyConfig(name="h2o", budget_ratio=0.5, options={"recent_share": 1.5}))


def window_votes(votes: dict[int, float], window: int) -> torch.Tensor:
    """Attention rows (1, 1, 4, SLOTS) whose last `window` queries cast the given votes in total."""
    attention = torch.zeros(1, 1, 4, SLOTS)
    for position, vote in votes.items():
        attention[0, 0, -window:, position] = vote / window
    return attention


def test_snapkv_pools_the_prefix_only_and_keeps_its_window():
    # window 2 (positions 10, 11) votes 1.0 for its own token 10, 0.6 for 5, 0.2 for 2; kernel 3:
    # pooled prefix: 4-6 -> 0.6, 1-3 -> 0.2, 9 -> 0 (10's vote is the window's and is not pooled onto 9).
    # Budget 6: newest 11, window 10, then 4, 5, 6 and one of the 0.2 ties, the oldest (1).
    attention = window_votes({10: 1.0, 5: 0.6, 2: 0.2}, window=2)
    policy = build_policy(PolicyConfig(name="snapkv", budget_tokens=6, options={"window": 2, "kernel_size": 3}))
    assert kept_positions(policy, hand_view(attention)) == [1, 4, 5, 6, 10, 11]


def test_snapkv_average_pooling_pads_the_prefix_with_zeros():
    # votes 0.6 at 5 and 7: max pooling gives 4-8 all 0.6 (oldest, 4, wins the tie); average pooling peaks
    # at 6 (1.2 / 3) over 4, 5, 7, 8 (0.6 / 3), and 9 only sees 8 and 9 (and the zero padding).
    attention = window_votes({5: 0.6, 7: 0.6, 10: 1.0}, window=2)
    options = {"window": 2, "kernel_size": 3}
    max_pooled = build_policy(PolicyConfig(name="snapkv", budget_tokens=3, options=options))
    assert kept_positions(max_pooled, hand_view(attention)) == [4, 10, 11]
    averaged = build_policy(PolicyConfig(name="snapkv", budget_tokens=3, options={**options, "pooling": "avg"}))
    assert kept_positions(averaged, hand_view(attention)) == [6, 10, 11]
    with pytest.raises(ValueError, match="pooling"):
        build_policy(PolicyConfig(name="snapkv", budget_ratio=0.5, options={"pooling": "median"}))


@pytest.mark.parametrize(
    "name, options, expected",
    [
        ("streaming", {"sink_tokens": 4}, [0, 1, 11]),  # newest, then the oldest sinks
        ("snapkv", {"window": 4}, [8, 9, 11]),  # newest, then the oldest of the window 8-11
        ("h2o", {"recent_share": 1.0}, [10, 11]),  # its recent window is a share of the budget: at most all of it
    ],
)
def test_the_newest_token_is_kept_when_a_ratio_budget_is_smaller_than_the_protected_set(name, options, expected):
    attention = window_votes({3: 1.0}, window=4)
    budget = 0.25 if name != "h2o" else 2 / 12  # ceil(0.25 * 12) = 3 kept; h2o: 2 (recent share 1)
    policy = build_policy(PolicyConfig(name=name, budget_ratio=budget, options=options))
    assert kept_positions(policy, hand_view(attention)) == expected


@pytest.mark.parametrize("name", ["streaming", "h2o", "snapkv", "knorm", "random"])
def test_a_budget_of_one_keeps_only_the_newest(name):
    policy = build_policy(
        PolicyConfig(name=name, budget_ratio=1 / 12, options={"window": 1} if name == "snapkv" else {})
    )
    assert kept_positions(policy, hand_view(window_votes({3: 1.0}, window=4))) == [11]


def test_token_budgets_smaller_than_what_a_policy_always_keeps_are_refused():
    with pytest.raises(ValueError, match=r"4 attention sinks and the newest token \(5 tokens\).*sink_tokens"):
        build_policy(PolicyConfig(name="streaming", budget_tokens=3))
    with pytest.raises(ValueError, match=r"observation window of 4 tokens.*policy.options.window"):
        build_policy(PolicyConfig(name="snapkv", budget_tokens=3, options={"window": 4}))
    build_policy(PolicyConfig(name="snapkv", budget_tokens=4, options={"window": 4}))  # exactly fits


@pytest.mark.parametrize("name", ["knorm", "h2o", "snapkv"])
def test_score_ties_go_to_the_older_token(name):
    # identical keys (knorm) and no attention at all (h2o, snapkv): every score ties
    options = {"recent_share": 0.0} if name == "h2o" else {"window": 1} if name == "snapkv" else {}
    policy = build_policy(PolicyConfig(name=name, budget_tokens=4, options=options))
    assert kept_positions(policy, hand_view(torch.zeros(1, 1, 4, SLOTS))) == [0, 1, 2, 11]


def test_knorm_norms_equal_up_to_float_rounding_tie():
    # equal norms as RoPE leaves them (a rotation), off by a few float32 ulps: ties, broken by position
    angles = torch.linspace(0.1, 3.0, SLOTS)
    keys = (7.3 * torch.stack([angles.cos(), angles.sin()], dim=-1))[None, None]
    norms = keys.norm(dim=-1).flatten()
    assert len(set(norms.tolist())) > 1  # the rounding really differs
    keys[0, 0, 6] *= 0.9  # one clearly lower norm
    policy = build_policy(PolicyConfig(name="knorm", budget_tokens=4))
    assert kept_positions(policy, hand_view(keys=keys)) == [0, 1, 6, 11]


def two_row_view(layer_idx: int, tokens_seen: list[int]) -> LayerView:
    """Two rows: row 0 holds positions 0..11; row 1 holds 0..7 after 4 padding slots (a shorter prompt)."""
    positions = torch.stack([torch.arange(SLOTS), torch.cat([torch.full((4,), -1), torch.arange(8)])])[:, None]
    keys = torch.ones(2, 1, SLOTS, 2)
    return LayerView(
        layer_idx=layer_idx,
        rows=torch.tensor([0, 1]),
        keys=keys,
        values=keys,
        valid=positions >= 0,
        positions=positions,
        tokens_seen=torch.tensor(tokens_seen),
        num_new_tokens=4,
    )


def test_random_draws_depend_on_the_token_not_on_the_batch():
    policy = build_policy(PolicyConfig(name="random", budget_tokens=4, options={"seed": 3}))
    batched = policy.select(two_row_view(0, [12, 8])).keep
    alone = kept_positions(policy, hand_view())
    assert torch.arange(SLOTS)[batched[0, 0]].tolist() == alone
    # the short row, alone in another layout (its 8 tokens in slots 0..7), keeps the same positions
    short = LayerView(
        0,
        torch.tensor([0]),
        torch.ones(1, 1, 8, 2),
        torch.ones(1, 1, 8, 2),
        torch.ones(1, 1, 8, dtype=torch.bool),
        torch.arange(8)[None, None],
        torch.tensor([8]),
        4,
    )
    short_kept = short.positions[0, 0][policy.select(short).keep[0, 0]].tolist()
    batched_short = two_row_view(0, [12, 8]).positions[1, 0][batched[1, 0]].tolist()
    assert batched_short == short_kept
    # every layer and every update draws afresh
    assert (
        policy.select(two_row_view(1, [12, 8])).scores[0, 0, :11].tolist()
        != policy.select(two_row_view(0, [12, 8])).scores[0, 0, :11].tolist()
    )
    assert (
        policy.select(two_row_view(0, [12, 9])).scores[1].tolist()
        != policy.select(two_row_view(0, [12, 8])).scores[1].tolist()
    )


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


def test_a_zero_token_budget_is_an_error_not_the_default_ratio():
    with pytest.raises(
        ValueError, match=r"policy.budget_tokens=0 is not a positive token count; e.g. policy.budget_tokens=64"
    ):
        build_policy(PolicyConfig(name="h2o", budget_tokens=0))


@pytest.mark.parametrize(
    ("ratio", "tokens", "message"),
    [
        (
            2,
            None,
            (
                "h.budget_ratio=2 is not a ratio in (0, 1]; give the share of the tokens seen each KV head keeps "
                "(e.g. h.budget_ratio=0.5), or a token count (h.budget_ratio=null h.budget_tokens=64)."
            ),
        ),
        (
            "half",
            None,
            "h.budget_ratio='half' is not a number; give a ratio of the tokens seen, e.g. h.budget_ratio=0.5.",
        ),
        (True, None, "h.budget_ratio=True is not a number; give a ratio of the tokens seen, e.g. h.budget_ratio=0.5."),
        (None, "abc", "h.budget_tokens='abc' is not a whole number of tokens; e.g. h.budget_tokens=64."),
        (None, 64.5, "h.budget_tokens=64.5 is not a whole number of tokens; e.g. h.budget_tokens=64."),
        (None, True, "h.budget_tokens=True is not a whole number of tokens; e.g. h.budget_tokens=64."),
        (None, 0, "h.budget_tokens=0 is not a positive token count; e.g. h.budget_tokens=64."),
    ],
)
def test_a_budget_of_the_wrong_type_or_range_names_the_full_key(ratio, tokens, message):
    """Whatever a config layer let through, the budget rule refuses it with the key as the config spells it."""
    with pytest.raises(ValueError) as error:
        Budget.from_keys(ratio, tokens, "h")
    assert str(error.value) == message
    assert Budget.from_keys(1, None, "h") == Budget(ratio=1) and Budget.from_keys(None, 3, "h") == Budget(tokens=3)


def test_an_option_a_policy_does_not_take_is_an_error():
    with pytest.raises(ValueError, match="policy 'full' does not take the options \\['window'\\]"):
        build_policy(PolicyConfig(name="full", options={"window": 3}))
    with pytest.raises(ValueError, match="policy 'h2o' does not take the options \\['windw'\\]"):
        build_policy(PolicyConfig(name="h2o", options={"windw": 3}))


def test_a_ratio_and_a_token_count_together_are_an_error_naming_both_keys():
    with pytest.raises(ValueError, match=r"policy.budget_ratio=0.5 and policy.budget_tokens=4 are both set"):
        build_policy(PolicyConfig(name="h2o", budget_ratio=0.5, budget_tokens=4))
    with pytest.raises(ValueError, match=r"policy.budget_ratio=0.5 and policy.budget_tokens=4 are both set"):
        build_policy(PolicyConfig(name="full", budget_ratio=0.5, budget_tokens=4))  # the rule, budgeted or not


def test_a_budgeted_policy_without_a_budget_names_both_keys():
    with pytest.raises(
        ValueError, match=r"'snapkv' keeps a budget per KV head: set policy.budget_ratio .* or policy.budget_tokens"
    ):
        build_policy(PolicyConfig(name="snapkv"))
