"""The NAMM network on raw tensors: layout, hand-checked features, scorer against a naive reference,
batched candidates, normalisation statistics, selection and the standalone cache manager."""

from __future__ import annotations

import math

import pytest
import torch

from namm.network import NAMM, KVCacheManager, NAMMConfig, NormalisationStats, param_count, parameter_layout
from namm.network.recency import RecencyCode
from namm.network.scorer import bam_scores
from namm.network.spectrogram import SpectrogramState, update_spectrogram
from namm.pretrained import PretrainedNAMM


def causal_attention(rows: int, heads: int, queries: int, slots: int, seed: int = 0) -> torch.Tensor:
    """Random softmax rows where query q (the q-th newest token) sees every slot up to its own."""
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, heads, queries, slots, generator=generator) * 2
    visible = torch.arange(slots)[None, :] <= (slots - queries + torch.arange(queries))[:, None]
    return torch.softmax(logits.masked_fill(~visible, float("-inf")), dim=-1)


# -- config and parameter layout ------------------------------------------------------------------
def test_default_param_count_and_reference_layout():
    config = NAMMConfig()
    assert param_count(config) == 4172
    theta = torch.arange(4172, dtype=torch.float32)
    weights = parameter_layout(config).unflatten(theta)
    assert weights["qkv_weight"].shape == (1, 25, 96)
    assert weights["qkv_weight"][0, 3, 40] == 3 * 96 + 40  # input-major, q | k | v columns
    assert weights["qkv_bias"][0, 5] == 2400 + 5
    assert weights["out_weight"][0, 7, 30] == 2496 + 7 * 50 + 30
    assert weights["out_bias"][0, 49] == 4145
    assert weights["readout_weight"][0, 24, 0] == 4170
    assert weights["readout_bias"][0, 0] == 4171
    assert torch.equal(parameter_layout(config).flatten(weights)[0], theta)


def test_other_scorer_sizes():
    assert param_count(NAMMConfig(scorer="mlp")) == 25 * 32 + 32 + 32 + 1
    assert param_count(NAMMConfig(bias=False)) == 2400 + 1600 + 26
    assert param_count(NAMMConfig(recency_dims=0)) == 17 * 96 + 96 + 32 * 34 + 34 + 18


@pytest.mark.parametrize("shape", [(4171,), (2, 4173), (2, 3, 4172)])
def test_bad_parameter_vector_is_a_clear_error(shape):
    with pytest.raises(ValueError, match=r"expected \(4172,\) or \(rows, 4172\)"):
        NAMM(NAMMConfig(), torch.zeros(shape))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"hop": 0}, "hop"),
        ({"ema_coeff": 1.0}, "ema_coeff"),
        ({"scorer": "lstm"}, "scorer"),
        ({"hidden": 30, "heads": 4}, "multiple of heads"),
        ({"recency_dims": 7}, "recency_dims"),
        ({"budget_ratio": 0.5, "budget_tokens": 10}, r"namm.budget_ratio=0.5 and namm.budget_tokens=10 are both set"),
        ({"budget_ratio": 1.5}, r"namm.budget_ratio=1.5 is not a ratio in \(0, 1\]"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        NAMMConfig(**overrides)


def test_config_from_dict_rejects_unknown_fields():
    assert NAMMConfig.from_dict({"scorer": "mlp", "hidden": 16}).hidden == 16
    with pytest.raises(ValueError, match="unknown field"):
        NAMMConfig.from_dict({"hiden": 16})


# -- features --------------------------------------------------------------------------------------
def test_stft_and_ema_hand_checked():
    """n = 32 queries -> T = 2 frames; a = 0.99^16 per frame.

    token 0 (old): carry and attention all ones, previous EMA 1 -> each frame is the Hann window itself,
        |DFT| = [16, 8, 0, ...]; EMA = a^2 * 1 + (1 - a^2) * |DFT|.
    token 1 (new, j = 8): one query at 8 -> signal index 24: window[24] = 0.5 in frame 0 and window[8] =
        0.5 in frame 1; a delta's |DFT| is flat -> 0.5 (1 - a^2) in every bin.
    token 2 (new, j = 20): query 20 -> signal index 36, frame 1 only, window[20] = 0.5 + 0.5 cos(pi/4);
        a stray carry value (frame 0) is ignored because frame 0 precedes the token -> (1 - a) window[20].
    """
    config = NAMMConfig()
    a = 0.99**16
    attention = torch.zeros(1, 1, 32, 3)
    attention[0, 0, :, 0] = 1.0
    attention[0, 0, 8, 1] = 1.0
    attention[0, 0, 20, 2] = 1.0
    state = SpectrogramState(torch.zeros(1, 1, 3, 17), torch.zeros(1, 1, 3, 16))
    state.ema[0, 0, 0] = 1.0
    state.carry[0, 0, 0] = 1.0
    state.carry[0, 0, 2, 5] = 3.0
    new_index = torch.tensor([[[-1, 8, 20]]])
    out = update_spectrogram(attention, state, new_index, config)

    expected = torch.zeros(3, 17, dtype=torch.float64)
    expected[0] = a**2
    expected[0, 0] += (1 - a**2) * 16
    expected[0, 1] += (1 - a**2) * 8
    expected[1] = 0.5 * (1 - a**2)
    expected[2] = (1 - a) * (0.5 + 0.5 * math.cos(math.pi / 4))
    torch.testing.assert_close(out.ema[0, 0].double(), expected, atol=2e-6, rtol=1e-6)
    assert torch.equal(out.carry[0, 0], attention[0, 0, 16:].T)  # the last 16 query columns


def test_ema_decays_old_state_by_a_to_the_frames():
    config = NAMMConfig()
    state = SpectrogramState(torch.full((1, 1, 1, 17), 2.0), torch.zeros(1, 1, 1, 16))
    out = update_spectrogram(torch.zeros(1, 1, 512, 1), state, torch.tensor([[[-1]]]), config)
    torch.testing.assert_close(out.ema, torch.full((1, 1, 1, 17), 2.0 * 0.99**512))


def test_spectrogram_is_independent_of_token_blocking(monkeypatch):
    from namm.network import spectrogram

    config = NAMMConfig()
    attention = causal_attention(2, 2, 64, 100)
    generator = torch.Generator().manual_seed(1)
    state = SpectrogramState(
        torch.rand(2, 2, 100, 17, generator=generator), torch.rand(2, 2, 100, 16, generator=generator)
    )
    new_index = (torch.arange(100) - 36).clamp(min=-1).expand(2, 2, -1)
    whole = update_spectrogram(attention, state, new_index, config)
    monkeypatch.setattr(spectrogram, "ELEMENTS_PER_BLOCK", 2 * 2 * 4 * 32 * 7)  # blocks of 7 tokens
    blocked = update_spectrogram(attention, state, new_index, config)
    torch.testing.assert_close(blocked.ema, whole.ema, atol=1e-6, rtol=1e-6)  # matmul rounding only
    assert torch.equal(blocked.carry, whole.carry)


def test_update_needs_a_multiple_of_the_hop():
    with pytest.raises(ValueError, match="multiple of hop=16"):
        NAMM()(torch.zeros(1, 1, 20, 20), torch.arange(20).view(1, 1, -1))


def test_recency_code_hand_checked():
    code = RecencyCode(NAMMConfig())
    values = code(torch.tensor([0, 1, 1000, -1]))
    frequencies = [50000 ** (-i / 4) for i in range(4)]
    for row, age in enumerate([0, 1, 1000]):
        expected = [math.sin(age * f) for f in frequencies] + [math.cos(age * f) for f in frequencies]
        torch.testing.assert_close(values[row], torch.tensor(expected, dtype=torch.float32))
    assert torch.equal(values[3], torch.zeros(8))  # invalid slot
    assert code(torch.tensor([70000])).shape == (1, 8)  # the table grows past the reference's 32K rows


# -- scorer ----------------------------------------------------------------------------------------
def naive_bam(
    features: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, theta: torch.Tensor
) -> torch.Tensor:
    """Independent reference from the golden README: explicit slices, explicit j >= i mask, float64."""
    t = theta.double()
    w_qkv, b_qkv = t[:2400].view(25, 96), t[2400:2496]
    w_o, b_o = t[2496:4096].view(32, 50), t[4096:4146]
    w, b = t[4146:4171], t[4171]
    scores = torch.full(positions.shape, float("-inf"), dtype=torch.float64)
    for row in range(features.shape[0]):
        for head in range(features.shape[1]):
            slots = valid[row, head].nonzero().flatten()
            x = features[row, head, slots].double()
            pos = positions[row, head, slots]
            qkv = x @ w_qkv + b_qkv
            q, k, v = qkv[:, :32], qkv[:, 32:64], qkv[:, 64:]
            logits = (q @ k.T) / math.sqrt(32)
            logits = logits.masked_fill(pos[None, :] < pos[:, None], float("-inf"))  # i sees j >= i
            y = torch.softmax(logits, dim=-1) @ v @ w_o + b_o
            out = x * (1 + y[:, 25:]) + y[:, :25]
            scores[row, head, slots] = out @ w + b
    return scores


def test_bam_matches_naive_backward_attention_with_gaps_and_shuffled_slots():
    config = NAMMConfig()
    generator = torch.Generator().manual_seed(3)
    rows, heads, slots = 2, 3, 40
    features = torch.randn(rows, heads, slots, 25, generator=generator)
    positions = torch.stack([torch.randperm(slots, generator=generator) * 3 for _ in range(rows * heads)]).view(
        rows, heads, slots
    )
    valid = torch.rand(rows, heads, slots, generator=generator) > 0.2
    positions = positions.masked_fill(~valid, -1)
    theta = torch.randn(2, 4172, generator=generator) * 0.3
    weights = parameter_layout(config).unflatten(theta)
    mine = bam_scores(features, positions, valid, weights, config)
    for row in range(rows):
        expected = naive_bam(features[row : row + 1], positions[row : row + 1], valid[row : row + 1], theta[row])
        torch.testing.assert_close(mine[row][valid[row]].double(), expected[0][valid[row]], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("scorer", ["bam", "mlp"])
def test_batched_rows_equal_rows_one_by_one(scorer):
    config = NAMMConfig(scorer=scorer)
    attention = causal_attention(3, 2, 64, 80, seed=4)
    positions = torch.arange(80).expand(3, 2, -1)
    theta = torch.randn(3, param_count(config), generator=torch.Generator().manual_seed(5)) * 0.5
    batched = NAMM(config, theta)(attention, positions)
    for row in range(3):
        alone = NAMM(config, theta[row])(attention[row : row + 1], positions[row : row + 1])
        torch.testing.assert_close(batched.scores[row], alone.scores[0], atol=1e-5, rtol=1e-5)
        assert torch.equal(batched.keep[row], alone.keep[0])
    assert not batched.keep.all()  # the random candidates do evict


@pytest.mark.parametrize("scorer", ["bam", "mlp"])
def test_zero_parameters_keep_everything(scorer):
    config = NAMMConfig(scorer=scorer)
    namm = NAMM(config)
    namm.normaliser.set_stats(torch.full((17,), 0.01), torch.full((17,), 1e-4))
    manager = KVCacheManager(namm)
    cache = torch.randn(1, 2, 64, 4)
    update = manager.update(cache, cache, causal_attention(1, 2, 64, 64), torch.arange(64).view(1, -1))
    assert torch.equal(update.scores, torch.zeros(1, 2, 64))
    assert update.keep.all() and update.retention_rate == 1.0 and update.mean_score == 0.0
    assert torch.equal(update.keys, cache)


# -- selection -------------------------------------------------------------------------------------
def test_selection_threshold_newest_and_budget():
    positions = torch.arange(6).view(1, 1, 6)
    valid = torch.tensor([[[True, True, True, True, False, True]]])
    positions = positions.masked_fill(~valid, -1)
    scores = torch.tensor([[[0.0, -0.5, 2.0, -1.0, 9.0, -3.0]]])

    from namm.network.keep_rule import keep_mask, ranking_scores

    config = NAMMConfig()
    ranked = ranking_scores(scores, positions, valid, config)
    assert ranked[0, 0, 5] == float("inf") and ranked[0, 0, 4] == float("-inf")
    assert keep_mask(ranked, positions, valid, config).tolist() == [[[True, False, True, False, False, True]]]
    budget = NAMMConfig(budget_tokens=2)
    assert keep_mask(ranked, positions, valid, budget).tolist() == [[[False, False, True, False, False, True]]]
    ratio = NAMMConfig(budget_ratio=0.6)  # 6 tokens seen -> ceil(3.6) = 4 kept, threshold ignored
    assert keep_mask(ranked, positions, valid, ratio).tolist() == [[[True, True, True, False, False, True]]]


# -- normalisation ---------------------------------------------------------------------------------
def test_parallel_variance_merge_equals_pooled_statistics():
    generator = torch.Generator().manual_seed(6)
    parts = [torch.randn(n, 17, generator=generator) * 3 + 1 for n in (5, 40, 1, 13)]
    merged = NormalisationStats.of(parts[0])
    for part in parts[1:]:
        merged = merged.merge(NormalisationStats.of(part))
    pooled = torch.cat(parts).double()
    torch.testing.assert_close(merged.mean, pooled.mean(dim=0))
    torch.testing.assert_close(merged.var, pooled.var(dim=0, unbiased=False))
    assert float(merged.count) == pooled.shape[0]


def test_calibration_collects_all_keep_statistics_then_freezes(tmp_path):
    theta = torch.randn(4172, generator=torch.Generator().manual_seed(7))
    namm = NAMM(NAMMConfig(), theta)
    manager = KVCacheManager(namm)
    spectrograms = []
    keys = torch.zeros(1, 2, 0, 4)
    positions = torch.zeros(1, 2, 0, dtype=torch.long)
    with namm.calibration():
        for call in range(3):
            keys = torch.cat([keys, torch.zeros(1, 2, 64, 4)], dim=2)
            positions = torch.cat([positions, torch.arange(64 * call, 64 * (call + 1)).expand(1, 2, -1)], dim=2)
            attention = causal_attention(1, 2, 64, keys.shape[2], seed=call)
            update = manager.update(keys, keys, attention, positions)
            assert update.keep.all()  # zero parameters inside the calibration
            spectrograms.append(update.spectrogram.reshape(-1, 17))
            keys, positions = update.keys, update.positions
    assert torch.equal(namm.parameters, theta)
    assert namm.normaliser.active
    pooled = torch.cat(spectrograms).double()
    torch.testing.assert_close(namm.normaliser.stats.mean, pooled.mean(dim=0))
    torch.testing.assert_close(namm.normaliser.stats.var, pooled.var(dim=0, unbiased=False))
    restored = PretrainedNAMM.from_pretrained(PretrainedNAMM(namm).save_pretrained(tmp_path)).namm
    assert torch.equal(restored.normaliser.stats.var, namm.normaliser.stats.var)  # JSON floats round-trip exactly
    assert torch.equal(restored.parameters, theta)


# -- standalone cache manager ----------------------------------------------------------------------
def test_cache_manager_compacts_and_carries_state():
    config = NAMMConfig()
    theta = torch.randn(4172, generator=torch.Generator().manual_seed(8)) * 0.5
    manager = KVCacheManager(config, theta)
    keys = torch.randn(1, 2, 64, 4)
    values = torch.randn(1, 2, 64, 4)
    first = manager.update(keys, values, causal_attention(1, 2, 64, 64), torch.arange(64).view(1, -1))
    kept = first.keep.sum(dim=-1)
    assert (kept == kept.max()).all()  # every head keeps the layer's largest count
    assert first.keys.shape == (1, 2, int(kept.max()), 4)
    for head in range(2):
        slots = first.retained_index[0, head]
        assert torch.equal(first.keys[0, head], keys[0, head, slots])
        assert (slots.diff() > 0).all()  # positional order preserved
    assert first.retention_rate == pytest.approx(float(kept.max()) / 64)
    assert manager.state.ema.shape[2] == first.keys.shape[2]
    assert torch.equal(
        manager.state.ema, first.spectrogram.gather(2, first.retained_index[..., None].expand(-1, -1, -1, 17))
    )


def test_new_tokens_ignore_any_state_given_for_their_slots():
    """A new token's spectrogram starts from zero even when the state passed in covers its slot."""
    namm = NAMM(NAMMConfig())
    attention = causal_attention(1, 2, 32, 48, seed=9)
    positions = torch.arange(48).view(1, 1, -1).expand(1, 2, -1)
    stale = SpectrogramState(torch.rand(1, 2, 48, 17), torch.rand(1, 2, 48, 16))
    fresh = SpectrogramState(stale.ema.clone(), stale.carry.clone())
    fresh.ema[:, :, 16:] = 0
    fresh.carry[:, :, 16:] = 0
    with_stale = namm(attention, positions, state=stale)
    with_zeros = namm(attention, positions, state=fresh)
    assert torch.equal(with_stale.state.ema, with_zeros.state.ema)


@pytest.mark.parametrize("name, count", [("bam", 4172), ("mlp", 865)])
def test_namm_config_group_composes(name, count):
    from dataclasses import fields
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    conf_dir = Path(__file__).resolve().parents[1] / "conf" / "namm"
    with initialize_config_dir(config_dir=str(conf_dir), version_base=None):
        values = OmegaConf.to_container(compose(config_name=name), resolve=True)
    assert set(values) == {field.name for field in fields(NAMMConfig)}  # every hyper-parameter is in the group
    config = NAMMConfig.from_dict(values)
    assert config.scorer == name and param_count(config) == count
