"""Matched budgets: the ratio model against hand-computed values and against the engine itself."""

from __future__ import annotations

import pytest
import torch

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.policies import PolicyConfig, build_policy
from tasks.evaluation.budget_matching import UpdateSchedule, predicted_ratio, relative_gap, sample_ratio, solve_budget


def test_sample_ratio_counts_the_unevicted_tail():
    # 609 tokens, last eviction at 512: ceil(0.5 * 512) = 256 kept then, plus the 97 that came after
    assert sample_ratio(0.5, UpdateSchedule(609, 512)) == pytest.approx(353 / 609)
    assert sample_ratio(0.3, UpdateSchedule(609, 512)) == pytest.approx((154 + 97) / 609)  # ceil(153.6) = 154
    assert sample_ratio(1e-6, UpdateSchedule(609, 512)) == pytest.approx(98 / 609)  # at least one token kept
    assert sample_ratio(0.2, UpdateSchedule(100, 0)) == 1.0  # never evicted


def test_solve_budget_inverts_the_mean_ratio():
    schedules = [UpdateSchedule(609, 512), UpdateSchedule(530, 512), UpdateSchedule(1100, 1024)]
    for target in (0.25, 0.5, 0.77):
        budget = solve_budget(target, schedules)
        # a step function: within one step (1/512 of budget, < 1/512 of ratio) of the target
        assert abs(predicted_ratio(budget, schedules) - target) < 1 / 512
    assert solve_budget(1.0, schedules) == 1.0
    # below what the tail alone keeps: the smallest budget
    assert solve_budget(0.01, schedules) == 1e-6
    assert relative_gap(0.49, 0.5) == pytest.approx(0.02)


@pytest.mark.parametrize("mode", ["per_layer_max", "per_head"])
def test_ratio_model_matches_the_engine_for_every_budgeted_baseline(mode):
    loaded = load_model(ModelConfig(name="tiny-qwen2"))
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 250, (n,), generator=generator).tolist() for n in (300, 265, 390)]
    for name in ("h2o", "streaming", "knorm", "snapkv", "random"):
        for budget in (0.1, 0.37):
            policy = build_policy(PolicyConfig(name=name, budget_ratio=budget))
            engine = MemoryEngine(loaded.model, policy, EngineConfig(update_interval=64, eviction_mode=mode))
            for result in engine.generate(prompts, GenerationSettings(max_new_tokens=6, stop_on_eos=False)):
                schedule = UpdateSchedule(result.tokens_seen, result.update_positions[-1])
                assert sample_ratio(budget, schedule) == pytest.approx(result.retained_ratio, abs=1e-12), (name, budget)
