"""The engine's schedule: the optional update at the end of prefill, one host sync per decoding step, and
batched runs equal to the rows run one by one for every policy (mixed lengths, an early EOS)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
import torch
from engine_helpers import random_prompts

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.policies import PolicyConfig, build_policy
from namm.policies.namm_policy import NAMMPolicy

# every way a tensor's value reaches the host (each waits for the device on an accelerator)
HOST_READS = ("tolist", "item", "__bool__", "__int__", "__float__", "__index__", "cpu", "numpy", "nonzero")


@pytest.fixture(scope="module")
def llama():
    return load_model(ModelConfig(name="tiny-llama", attn_implementation="sdpa")).model


@contextlib.contextmanager
def counting_host_reads() -> Iterator[list[str]]:
    """Wrap every host read of torch.Tensor; yields the list of reads made inside the block."""
    reads: list[str] = []
    saved = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counted(name, method):
        def wrapper(self, *args, **kwargs):
            reads.append(name)
            return method(self, *args, **kwargs)

        return wrapper

    for name, method in saved.items():
        setattr(torch.Tensor, name, counted(name, method))
    try:
        yield reads
    finally:
        for name, method in saved.items():
            setattr(torch.Tensor, name, method)


@pytest.mark.parametrize("policy", ["full", "h2o"])
def test_decoding_makes_one_host_sync_per_step(llama, policy):
    """Prompts 70 and 50, interval 32: prefill updates at 32 and 64 only; decoding 4 more steps costs 4 reads."""
    engine = MemoryEngine(llama, build_policy(PolicyConfig(name=policy, budget_ratio=0.5)), EngineConfig(32))
    prompts = random_prompts([70, 50], llama.config.vocab_size, seed=7)
    counts = {}
    for steps in (5, 9):
        with counting_host_reads() as reads:
            results = engine.generate(prompts, GenerationSettings(max_new_tokens=steps, stop_on_eos=False))
        assert all(position < 64 + 32 for result in results for position in result.update_positions)
        counts[steps] = len(reads)
    assert counts[9] - counts[5] == 4


def test_update_at_prefill_end_compresses_short_prompts_and_the_tail(llama):
    # interval 32, 10 tokens kept: prompt 20 is updated once it is in (20 -> 10), prompt 40 at 32 and at 40;
    # then 4 fed-back tokens each. Without the option the short prompt is never compressed.
    policy = build_policy(PolicyConfig(name="streaming", budget_tokens=10))
    prompts = random_prompts([20, 40], llama.config.vocab_size, seed=8)
    settings = GenerationSettings(max_new_tokens=5, stop_on_eos=False)
    on = MemoryEngine(llama, policy, EngineConfig(32, update_at_prefill_end=True)).generate(prompts, settings)
    off = MemoryEngine(llama, policy, EngineConfig(32)).generate(prompts, settings)
    assert [r.update_positions for r in on] == [[20], [32, 40]]
    assert [[entry["cache_sizes"] for entry in r.cache_sizes] for r in on] == [[[10.0] * 2], [[10.0] * 2] * 2]
    assert [r.retained_ratio for r in on] == [pytest.approx(14 / 24), pytest.approx(14 / 44)]
    assert [r.update_positions for r in off] == [[], [32]]
    assert off[0].retained_ratio == 1.0
    assert EngineConfig().update_at_prefill_end is False  # the documented default


def test_update_at_prefill_end_rejects_a_namm_tail_of_partial_frames_before_running(llama):
    engine = MemoryEngine(llama, NAMMPolicy(), EngineConfig(32, update_at_prefill_end=True))
    with pytest.raises(ValueError, match="multiple of 16"):
        engine.generate([[5] * 40], GenerationSettings(max_new_tokens=2))
    engine.generate([[5] * 48], GenerationSettings(max_new_tokens=2))  # 16 past the boundary: whole frames


def namm_policy() -> NAMMPolicy:
    theta = torch.randn(4172, generator=torch.Generator().manual_seed(16)) * 0.5
    theta[-1] = 1.0  # read-out bias: keep a good share, evict the rest
    return NAMMPolicy(parameters=theta)


# `random` is left out until it draws per (row, layer, update): today one generator spans the batch
POLICIES = {name: (lambda name=name: build_policy(PolicyConfig(name=name, budget_ratio=0.5))) for name in
            ("full", "streaming", "h2o", "snapkv", "knorm")} | {"namm": namm_policy}  # fmt: skip


@pytest.mark.parametrize("prefill_end", [False, True])
@pytest.mark.parametrize("mode", ["per_head", "per_layer_max"])
def test_every_policy_batched_equals_one_by_one_with_mixed_lengths_and_an_early_eos(llama, mode, prefill_end):
    prompts = random_prompts([80, 48, 112], llama.config.vocab_size, seed=9)  # tails of 16: whole NAMM frames
    free = GenerationSettings(max_new_tokens=12, stop_on_eos=False)
    for name, make_policy in POLICIES.items():
        engine = MemoryEngine(llama, make_policy(), EngineConfig(32, mode, update_at_prefill_end=prefill_end))
        stop = engine.generate(prompts[:1], free)[0].token_ids[2]  # row 0 stops early, the others run on
        settings = GenerationSettings(max_new_tokens=12, eos_token_ids=(stop,))
        batched = engine.generate(prompts, settings)
        assert len(batched[0].token_ids) <= 3, name
        for prompt, result in zip(prompts, batched):
            alone = engine.generate([prompt], settings)[0]
            assert result.token_ids == alone.token_ids, name
            assert result.update_positions == alone.update_positions, name
            assert result.retained_ratio == alone.retained_ratio, name
            assert result.memory.live_kv_bytes == alone.memory.live_kv_bytes, name
        if name != "full":
            assert min(result.retained_ratio for result in batched) < 1.0, name
