"""`evaluate.py eviction_maps=N`: the PNGs are written, one per policy and prompt, and the mask drawn is the
engine's cache at the prompt's end (hand-computed for StreamingLLM, the engine's own kept counts for the NAMM)."""

from __future__ import annotations

import json

import pytest
import torch
from evaluation_helpers import TINY, compose_evaluate, evicting_parameters

from namm.engine import EngineConfig, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.network.config import NAMMConfig
from namm.policies import PolicyConfig, build_policy
from namm.policies.namm_policy import NAMMPolicy
from tasks.evaluation import evaluate, eviction_maps
from tasks.evaluation.config import validate_evaluate_config
from tasks.evaluation.eviction_maps import prompt_end_map
from tasks.preparation import prepare_tasks
from tasks.task_config import TaskConfig

PROMPT = 400  # TINY: passkey at 400 byte-tokens, updates at 128, 256 and 384
SINKS, BUDGET = 4, 40


def streaming_mask() -> torch.Tensor:
    """StreamingLLM with a 40-token budget: after the update at 384 the 4 sinks and the 36 newest tokens before
    384 remain, then the 16 tokens after the last update are all still in."""
    mask = torch.zeros(PROMPT)
    mask[:SINKS] = 1
    mask[384 - (BUDGET - SINKS) :] = 1
    return mask


def test_maps_are_written_and_draw_the_kept_tokens(tmp_path, monkeypatch):
    drawn = {}
    original = eviction_maps.plot_eviction_map

    def recording(share, spans, title, path):
        drawn[path.name] = (share.clone(), spans)
        original(share, spans, title, path)

    monkeypatch.setattr(eviction_maps, "plot_eviction_map", recording)
    run_dir = tmp_path / "maps"
    document = evaluate(
        compose_evaluate(
            run_dir,
            *TINY,
            "compare=[full,streaming]",
            f"baselines.streaming.budget_tokens={BUDGET}",
            "baselines.streaming.budget_ratio=null",
            "eviction_maps=2",
        )
    )
    names = sorted(f"passkey/{index}-{policy}.png" for index in (0, 1) for policy in ("full", "streaming"))
    assert sorted(path.removeprefix("eviction_maps/") for path in document["files"]["eviction_maps"]) == names
    for name in names:
        assert (run_dir / "eviction_maps" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (
        json.loads((run_dir / "results.json").read_text())["files"]["eviction_maps"]
        == document["files"]["eviction_maps"]
    )
    for index in (0, 1):
        full, spans = drawn[f"{index}-full.png"]
        assert full.shape == (2, PROMPT) and torch.equal(full, torch.ones(2, PROMPT))
        streaming, _ = drawn[f"{index}-streaming.png"]
        assert torch.equal(streaming, streaming_mask().expand(2, -1))
        assert spans  # the passkey's tokens are marked


def test_namm_map_matches_the_engines_kept_counts():
    loaded = load_model(ModelConfig(name="tiny-llama"))
    task = prepare_tasks(TaskConfig(tasks=["passkey"], context_length=PROMPT, num_samples=1), loaded)[0]
    engine = MemoryEngine(
        loaded.model, NAMMPolicy(NAMMConfig(), evicting_parameters()), EngineConfig(update_interval=128)
    )
    share = prompt_end_map(engine, task, 0, loaded.tokenizer)
    settings = task.generation_settings(loaded.tokenizer)
    result = engine.generate(
        [list(task.samples[0].prompt_ids)], type(settings)(**{**vars(settings), "max_new_tokens": 1})
    )[0]
    assert result.tokens_seen == PROMPT
    kept_share_per_layer = share.sum(dim=1) / PROMPT
    torch.testing.assert_close(kept_share_per_layer, torch.tensor(result.retained_ratio_per_layer, dtype=torch.float32))
    assert 0.1 < float(share.mean()) < 0.9  # it does evict
    assert torch.equal(share[:, 384:], torch.ones(2, 16))  # nothing after the last update is evicted yet
    full = MemoryEngine(loaded.model, build_policy(PolicyConfig(name="full")), EngineConfig(update_interval=128))
    assert torch.equal(prompt_end_map(full, task, 0, loaded.tokenizer), torch.ones(2, PROMPT))


def test_negative_eviction_maps_is_refused(tmp_path):
    from namm.errors import ConfigError

    with pytest.raises(ConfigError, match="eviction_maps"):
        validate_evaluate_config(compose_evaluate(tmp_path, *TINY, "eviction_maps=-1"))
