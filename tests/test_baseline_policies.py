"""TOVA, Expected Attention, KeyDiff, KVzip and the AdaKV / PyramidKV allocations on hand-built layer views,
against hand-worked values or an independent few-line implementation."""

from __future__ import annotations

import math

import pytest
import torch

from namm.allocation import adakv_keep, pyramid_budgets
from namm.policies import LayerView, PolicyConfig, build_policy

SLOTS = 8


def view(
    heads: int = 1,
    attention: torch.Tensor | None = None,
    keys: torch.Tensor | None = None,
    values: torch.Tensor | None = None,
    queries: torch.Tensor | None = None,
    inv_freq: torch.Tensor | None = None,
    new: int = 4,
    layer_idx: int = 0,
    num_layers: int = 1,
) -> LayerView:
    """One row, `heads` KV heads, 8 live tokens at positions 0..7 (tokens_seen 8), `new` queries since the last update."""
    keys = torch.ones(1, heads, SLOTS, 2) if keys is None else keys
    return LayerView(
        layer_idx=layer_idx,
        rows=torch.tensor([0]),
        keys=keys,
        values=torch.ones_like(keys) if values is None else values,
        valid=torch.ones(1, heads, SLOTS, dtype=torch.bool),
        positions=torch.arange(SLOTS).expand(1, heads, SLOTS),
        tokens_seen=torch.tensor([SLOTS]),
        num_new_tokens=new,
        attention_fn=None if attention is None else (lambda count: attention[:, :, -count:]),
        num_layers=num_layers,
        queries_fn=None if queries is None else (lambda count: queries[:, :, -count:]),
        rotary_inv_freq=inv_freq,
    )


def kept(policy, layer_view: LayerView) -> list[list[int]]:
    """Kept positions of each head of row 0."""
    policy.reset(1, layer_view.num_layers, layer_view.keys.shape[1], torch.device("cpu"))
    keep = policy.select(layer_view).keep[0]
    return [layer_view.positions[0, head][keep[head]].tolist() for head in range(keep.shape[0])]


# -- TOVA -------------------------------------------------------------------------------------------


def test_tova_keeps_what_the_newest_query_attends_to_averaged_over_the_layers_heads():
    attention = torch.zeros(1, 2, 4, SLOTS)
    attention[0, 0, :3, 1] = 1.0  # older queries only: TOVA ignores them
    attention[0, 0, -1] = torch.tensor([0.0, 0.0, 0.5, 0.0, 0.1, 0.0, 0.0, 0.4])
    attention[0, 1, -1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.6, 0.3, 0.0, 0.1])
    # layer means of the newest query: 2 -> 0.25, 4 -> 0.35, 5 -> 0.15, 7 -> 0.25; budget 3 = newest (7) + 4 + 2
    layer = build_policy(PolicyConfig(name="tova", budget_tokens=3))
    assert kept(layer, view(2, attention)) == [[2, 4, 7], [2, 4, 7]]
    # per head: each head its own two best besides the newest
    head = build_policy(PolicyConfig(name="tova", budget_tokens=3, options={"scope": "head"}))
    assert kept(head, view(2, attention)) == [[2, 4, 7], [4, 5, 7]]
    with pytest.raises(ValueError, match="scope"):
        build_policy(PolicyConfig(name="tova", budget_ratio=0.5, options={"scope": "model"}))


def test_tova_layer_mean_matches_tokens_across_heads_holding_them_in_other_slots():
    attention = torch.zeros(1, 2, 1, SLOTS)
    attention[0, 0, 0, 3] = 0.8  # head 0: position 3 in slot 3
    attention[0, 1, 0, 0] = 0.8  # head 1: position 3 in slot 0 (its slots are ordered 3, 0, 1, 2, 4, ...)
    layer_view = view(2, attention, new=1)
    layer_view.positions = torch.stack([torch.arange(SLOTS), torch.tensor([3, 0, 1, 2, 4, 5, 6, 7])])[None]
    policy = build_policy(PolicyConfig(name="tova", budget_tokens=2))
    assert kept(policy, layer_view) == [[3, 7], [3, 7]]


# -- KeyDiff ----------------------------------------------------------------------------------------


def test_keydiff_keeps_the_keys_least_similar_to_the_mean_key():
    angles = torch.tensor([0.0, 0.1, -0.1, 0.05, 1.5, 3.0, -0.05, 0.02])  # radians from the x axis
    norms = torch.tensor([1.0, 5.0, 2.0, 1.0, 0.5, 3.0, 1.0, 1.0])  # cosine ignores the norm
    keys = (norms[:, None] * torch.stack([angles.cos(), angles.sin()], dim=-1))[None, None]
    # mean unit key ~ along x (angle ~0.19): least similar are 5 (3.0 rad) and 4 (1.5 rad); newest 7 kept
    policy = build_policy(PolicyConfig(name="keydiff", budget_tokens=3))
    assert kept(policy, view(keys=keys)) == [[4, 5, 7]]
    # independent check of the anchor: a direct cosine ranking against the mean of normalised keys
    unit = keys[0, 0] / keys[0, 0].norm(dim=-1, keepdim=True)
    cosine = torch.nn.functional.cosine_similarity(keys[0, 0], unit.mean(dim=0, keepdim=True), dim=-1)
    assert cosine[:7].argsort()[:2].sort().values.tolist() == [4, 5]


# -- Expected Attention -----------------------------------------------------------------------------


def rotation_matrix(position: float, inv_freq: torch.Tensor) -> torch.Tensor:
    """(D, D) the rotary embedding at `position` as an explicit matrix (dims i and i + D/2 rotate together)."""
    half = inv_freq.numel()
    matrix = torch.zeros(2 * half, 2 * half, dtype=torch.float64)
    for i, frequency in enumerate(inv_freq.double().tolist()):
        c, s = math.cos(position * frequency), math.sin(position * frequency)
        matrix[i, i], matrix[i, i + half], matrix[i + half, i], matrix[i + half, i + half] = c, -s, s, c
    return matrix


def reference_expected_attention(plain_queries, keys, values, seen, future, inv_freq, group):
    """Independent: explicit rotation matrices, numpy-style statistics, one query head at a time."""
    heads, slots, dim = keys.shape
    rbar = sum(rotation_matrix(seen + t, inv_freq) for t in range(future)) / future
    scores = torch.zeros(heads, slots, dtype=torch.float64)
    for q_head in range(plain_queries.shape[0]):
        samples = plain_queries[q_head].double()  # (n, D) pre-RoPE
        mean = samples.mean(dim=0)
        covariance = (samples - mean).T @ (samples - mean) / samples.shape[0]
        m, c = rbar @ mean, rbar @ covariance @ rbar.T
        k = keys[q_head // group].double()
        logits = k @ m / dim**0.5 + torch.einsum("sd,de,se->s", k, c, k) / (2 * dim)
        scores[q_head // group] += torch.softmax(logits, dim=0) / group
    return scores * values.double().norm(dim=-1)


def test_expected_attention_matches_an_explicit_matrix_reference():
    generator = torch.Generator().manual_seed(0)
    dim, q_heads, heads, count = 4, 4, 2, 4
    inv_freq = torch.tensor([0.3, 0.01])
    plain = torch.randn(q_heads, count, dim, generator=generator)  # pre-RoPE queries at positions 4..7
    post = torch.stack(
        [
            torch.stack([rotation_matrix(4 + i, inv_freq).float() @ plain[h, i] for i in range(count)])
            for h in range(q_heads)
        ]
    )
    keys = torch.randn(1, heads, SLOTS, dim, generator=generator)
    values = torch.randn(1, heads, SLOTS, dim, generator=generator)
    policy = build_policy(
        PolicyConfig(name="expected_attention", budget_tokens=4, options={"future_positions": 16, "sink_tokens": 0})
    )
    layer_view = view(heads, keys=keys, values=values, queries=post[None], inv_freq=inv_freq, new=count)
    expected = reference_expected_attention(plain, keys[0], values[0], SLOTS, 16, inv_freq, q_heads // heads)
    torch.testing.assert_close(policy.score(layer_view).double()[0], expected, rtol=1e-4, atol=1e-6)


def test_expected_attention_of_one_repeated_query_and_one_future_position_is_its_real_attention():
    # zero covariance, one future position: the expected attention is the softmax of that query's real logits
    inv_freq = torch.tensor([0.5, 0.05])
    plain = torch.tensor([1.0, -2.0, 0.5, 3.0])
    post = torch.stack([rotation_matrix(4 + i, inv_freq).float() @ plain for i in range(4)])[None, None]
    keys = torch.randn(1, 1, SLOTS, 4, generator=torch.Generator().manual_seed(1))
    future_query = rotation_matrix(SLOTS, inv_freq).float() @ plain
    real = torch.softmax(keys[0, 0] @ future_query / 2.0, dim=0)
    options = {"future_positions": 1, "sink_tokens": 0, "use_value_norm": False}
    policy = build_policy(PolicyConfig(name="expected_attention", budget_tokens=3, options=options))
    layer_view = view(keys=keys, queries=post, inv_freq=inv_freq)
    torch.testing.assert_close(policy.score(layer_view)[0, 0], real, rtol=1e-4, atol=1e-6)
    assert kept(policy, layer_view) == [sorted([*real[:7].argsort(descending=True)[:2].tolist(), 7])]


def test_expected_attention_keeps_its_sinks_and_needs_a_rotary_model():
    policy = build_policy(PolicyConfig(name="expected_attention", budget_tokens=3, options={"sink_tokens": 2}))
    queries = torch.randn(1, 1, 4, 2, generator=torch.Generator().manual_seed(2))
    assert kept(policy, view(queries=queries, inv_freq=torch.tensor([0.1]))) == [[0, 1, 7]]
    with pytest.raises(ValueError, match="rotary"):
        policy.score(view(queries=queries, inv_freq=None))
    with pytest.raises(ValueError, match="sink_tokens"):
        build_policy(PolicyConfig(name="expected_attention", budget_tokens=3, options={"sink_tokens": 4}))


# -- KVzip ------------------------------------------------------------------------------------------


def test_kvzip_scores_the_largest_attention_of_the_reconstruction_and_keeps_generated_tokens():
    policy = build_policy(PolicyConfig(name="kvzip", budget_tokens=3, options={"chunk_tokens": 3}))
    policy.use_tokenizer(lambda text: [90, 91])
    assert policy.reconstruction_inputs([1, 2, 3, 4, 5]) == [[90, 91, 1, 2, 3], [90, 91, 4, 5]]
    policy.reset(1, 1, 1, torch.device("cpu"))
    # a prompt of 5 tokens (0..4) and a reconstruction forward of 3 (5..7): its queries attend
    attention = torch.zeros(1, 1, 3, SLOTS)
    attention[0, 0, 0, 1] = 0.6
    attention[0, 0, 1, 1] = 0.1  # the max, not the sum, counts: 1 -> 0.6
    attention[0, 0, 1, 3] = 0.5
    attention[0, 0, 2, 2] = 0.55
    attention[0, 0, 2, 6] = 0.9  # a reconstruction token: never scored
    policy.observe_reconstruction(view(attention=attention, new=3))
    torch.testing.assert_close(policy.scores[0][0, 0, :5], torch.tensor([0.0, 0.6, 0.55, 0.5, 0.0]))
    # a second forward raises a score only where its max is larger
    attention = torch.zeros(1, 1, 3, SLOTS)
    attention[0, 0, 0, 3] = 0.7
    attention[0, 0, 0, 1] = 0.2
    policy.observe_reconstruction(view(attention=attention, new=3))
    torch.testing.assert_close(policy.scores[0][0, 0, :5], torch.tensor([0.0, 0.6, 0.55, 0.7, 0.0]))
    # the prompt-end update (5 tokens seen, newest 4 kept): 4, then the best two scores (3, 1)
    update = view(new=5)
    update.valid[..., 5:] = False
    update.tokens_seen = torch.tensor([5])
    assert policy.select(update).keep[0, 0].nonzero().flatten().tolist() == [1, 3, 4]
    # later, generated tokens (5..7) are kept before any scored prompt token
    assert policy.select(view(new=3)).keep[0, 0].nonzero().flatten().tolist() == [5, 6, 7]


def test_kvzip_needs_its_repeat_prompt_tokenized():
    policy = build_policy(PolicyConfig(name="kvzip", budget_ratio=0.5))
    with pytest.raises(RuntimeError, match="use_tokenizer"):
        policy.reconstruction_inputs([1, 2])


# -- allocations ------------------------------------------------------------------------------------


def test_pyramid_budgets_decrease_linearly_and_sum_to_the_total():
    # 4 layers, 10 per head on average: beta 20 would go from 19.5 down to 0.5, but the last layer keeps at
    # least one token, so the line runs from 19 down to 1 (10 +- 9, 3 at each step)
    budgets = pyramid_budgets(torch.tensor([10]), torch.tensor([1000]), 4)
    assert budgets.tolist() == [[19, 13, 7, 1]]
    # 40 per head: 2*40 - 2 = 78 down to 40/20 = 2, shares 78, 52.67, 27.33, 2 (the remainder to the larger)
    assert pyramid_budgets(torch.tensor([40]), torch.tensor([1000]), 4).tolist() == [[78, 53, 27, 2]]
    assert budgets.sum().item() == 40
    # a first layer that would keep more than the tokens seen flattens the slope; a tiny budget keeps 1 per layer
    flat = pyramid_budgets(torch.tensor([10, 2, 7]), torch.tensor([12, 100, 7]), 5)
    assert flat.sum(dim=1).tolist() == [50, 10, 35]
    assert flat.max(dim=1).values.tolist() == [12, 3, 7] and flat.min().item() >= 1
    assert (flat[:, :-1] >= flat[:, 1:]).all()


def test_pyramid_allocation_keeps_each_layers_budget():
    policy = build_policy(
        PolicyConfig(name="streaming", budget_tokens=4, allocation="pyramid", options={"sink_tokens": 0})
    )
    counts = [len(kept(policy, view(layer_idx=layer, num_layers=3))[0]) for layer in range(3)]
    assert counts == pyramid_budgets(torch.tensor([4]), torch.tensor([SLOTS]), 3)[0].tolist() == [7, 4, 1]


def test_adakv_shares_a_layers_budget_across_heads_by_pooled_scores_with_a_floor_per_head():
    scores = torch.tensor(
        [[[9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]]]
    )  # head 0 scores everything above head 1
    valid = torch.ones(1, 2, SLOTS, dtype=torch.bool)
    keep = adakv_keep(scores, valid, torch.tensor([5]))  # 10 over 2 heads; floor(0.2 * 5) = 1 per head at least
    assert keep.sum().item() == 10
    assert keep[0, 0].nonzero().flatten().tolist() == list(range(8))  # head 0: all 8 (top 1, then 7 pooled)
    assert keep[0, 1].nonzero().flatten().tolist() == [6, 7]  # head 1: its best (7), then the pooled 10th (6)
    # independent: guaranteed best per head, then the top of everything else
    rest = scores.clone()
    rest[0, 0, 0] = rest[0, 1, 7] = -1
    pooled = rest.flatten().argsort(descending=True)[:8]
    reference = torch.zeros(16, dtype=torch.bool)
    reference[pooled] = True
    reference[0] = reference[15] = True
    assert torch.equal(keep.flatten(), reference)


def test_adakv_through_a_policy_keeps_the_newest_of_every_head_and_the_total():
    attention = torch.zeros(1, 2, 4, SLOTS)
    attention[0, 0, -1] = torch.tensor([0.3, 0.3, 0.2, 0.1, 0.05, 0.03, 0.01, 0.01])
    attention[0, 1, -1] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.1, 0.9])
    policy = build_policy(PolicyConfig(name="tova", budget_tokens=3, allocation="adakv", options={"scope": "head"}))
    heads = kept(policy, view(2, attention))
    assert sum(len(head) for head in heads) == 6
    assert heads == [[0, 1, 2, 3, 7], [7]]  # head 1's floor is 0 (floor(0.2 * 3)); its newest is always kept
    with pytest.raises(ValueError, match=r"allocation='uniform'.*none, adakv, pyramid"):
        build_policy(PolicyConfig(name="h2o", allocation="uniform"))
    with pytest.raises(ValueError, match="no budget"):
        build_policy(PolicyConfig(name="full", allocation="adakv"))
