"""Memory policies inside transformers' `model.generate()`, against the engine (greedy) and plain generate()."""

from __future__ import annotations

import pytest
import torch
from engine_helpers import left_padded
from transformers import AutoModelForCausalLM, BloomConfig, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.generate import MemoryManagedCache, UnsupportedGenerationError
from namm.models import ModelConfig, UnsupportedModelError, load_model
from namm.network import NAMMConfig
from namm.policies import PolicyConfig, build_policy
from namm.policies.namm_policy import NAMMPolicy

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # 5.24 spells it cache
INTERVAL = 64
LENGTHS = (300, 170, 233)  # different left padding: every row has its own update boundaries


@pytest.fixture(scope="module", params=["tiny-llama", "tiny-qwen2", "tiny-mistral"])
def tiny(request):
    return load_model(ModelConfig(name=request.param))


@pytest.fixture(scope="module")
def llama():
    return load_model(ModelConfig(name="tiny-llama"))


def random_prompts(lengths=LENGTHS, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 256, (n,), generator=generator).tolist() for n in lengths]


def namm_policy(seed=2):
    generator = torch.Generator().manual_seed(seed)
    return NAMMPolicy(NAMMConfig(), 0.2 * torch.randn(4172, generator=generator))


POLICIES = {
    "h2o": lambda: build_policy(PolicyConfig(name="h2o", budget_ratio=0.5)),
    "streaming": lambda: build_policy(PolicyConfig(name="streaming", budget_ratio=0.4)),
    "namm": namm_policy,
}


def managed_generate(model, prompts, policy, config, **kwargs):
    ids, mask = left_padded(prompts)
    cache = MemoryManagedCache(model, policy, config, stop_token_ids=kwargs.pop("stop_token_ids", ()))
    kwargs = {"max_new_tokens": 24, "do_sample": False, "pad_token_id": 0, "eos_token_id": None} | kwargs
    out = model.generate(ids, attention_mask=mask, past_key_values=cache, **kwargs)
    return out[:, ids.shape[1] :], cache


@pytest.mark.parametrize("policy_name", sorted(POLICIES))
def test_greedy_generate_gives_the_engines_tokens_and_retained_ratios(tiny, policy_name):
    config = EngineConfig(update_interval=INTERVAL)
    prompts = random_prompts()
    engine = MemoryEngine(tiny.model, POLICIES[policy_name](), config)
    expected = engine.generate(prompts, GenerationSettings(max_new_tokens=24, stop_on_eos=False))
    tokens, cache = managed_generate(tiny.model, prompts, POLICIES[policy_name](), config)
    for row, (result, memory) in enumerate(zip(expected, cache.memory())):
        assert tokens[row].tolist() == result.token_ids
        assert memory.retained_ratio == result.retained_ratio < 1.0
        assert memory.retained_ratio_per_layer == result.retained_ratio_per_layer
        assert memory.update_positions == result.update_positions  # the schedule: every multiple of 64 per row
        assert memory.cache_sizes == result.cache_sizes
    assert tiny.model.config._attn_implementation == "sdpa"  # restored after every forward


def test_chunked_prefill_of_generate_still_updates_at_every_boundary(llama):
    """generate's own prefill_chunk_size (100) is cut again at each row's boundaries (multiples of 64)."""
    config = EngineConfig(update_interval=INTERVAL)
    prompts = random_prompts()
    expected = MemoryEngine(llama.model, namm_policy(), config).generate(
        prompts, GenerationSettings(max_new_tokens=24, stop_on_eos=False)
    )
    tokens, cache = managed_generate(llama.model, prompts, namm_policy(), config, prefill_chunk_size=100)
    for row, (result, memory) in enumerate(zip(expected, cache.memory())):
        assert memory.update_positions == result.update_positions
        assert tokens[row].tolist() == result.token_ids
        assert memory.retained_ratio == pytest.approx(result.retained_ratio, abs=1e-9)


def test_rows_that_stop_early_are_counted_as_the_engine_counts_them(llama):
    config = EngineConfig(update_interval=16)  # updates during decoding too
    prompts = random_prompts()
    free = MemoryEngine(llama.model, namm_policy(), config).generate(
        prompts, GenerationSettings(max_new_tokens=40, stop_on_eos=False)
    )
    stop = free[1].token_ids[5]  # row 1 stops after 6 tokens; the others run longer (or stop too)
    expected = MemoryEngine(llama.model, namm_policy(), config).generate(
        prompts, GenerationSettings(max_new_tokens=40, eos_token_ids=(stop,))
    )
    tokens, cache = managed_generate(
        llama.model, prompts, namm_policy(), config, max_new_tokens=40, eos_token_id=stop, stop_token_ids=[stop]
    )
    assert len(expected[1].token_ids) == 6 < max(len(result.token_ids) for result in expected)
    for row, (result, memory) in enumerate(zip(expected, cache.memory())):
        generated = tokens[row].tolist()
        assert generated[: len(result.token_ids)] == result.token_ids
        assert set(generated[len(result.token_ids) :]) <= {0}  # generate's padding after the stop token
        assert (memory.tokens_seen, memory.retained_ratio) == (result.tokens_seen, result.retained_ratio)
        assert memory.update_positions == result.update_positions


class Collect(BaseStreamer):
    def __init__(self):
        self.chunks = []

    def put(self, value):
        self.chunks.append(value.flatten().tolist())

    def end(self):
        self.chunks.append("end")


class StopAfter(StoppingCriteria):
    def __init__(self, total_length):
        self.total_length = total_length

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), input_ids.shape[1] >= self.total_length, dtype=torch.bool)


def test_sampling_with_a_streamer_and_stopping_criteria(llama):
    """The full policy through the managed cache samples exactly what plain generate() samples (same seed);
    the streamer sees every token and a stopping criterion ends the run."""
    [prompt] = random_prompts(lengths=(150,))
    ids = torch.tensor([prompt])
    settings = {"do_sample": True, "temperature": 1.3, "top_k": 50, "max_new_tokens": 30, "pad_token_id": 0}
    torch.manual_seed(7)
    plain = llama.model.generate(ids, eos_token_id=None, **settings)
    streamer = Collect()
    torch.manual_seed(7)
    cache = MemoryManagedCache(llama.model, build_policy(PolicyConfig(name="full")), EngineConfig(update_interval=64))
    managed = llama.model.generate(
        ids,
        past_key_values=cache,
        streamer=streamer,
        stopping_criteria=StoppingCriteriaList([StopAfter(150 + 12)]),
        eos_token_id=None,
        **settings,
    )
    assert managed.shape[1] == 150 + 12
    assert managed[0].tolist() == plain[0, : 150 + 12].tolist()
    assert streamer.chunks[0] == prompt and streamer.chunks[-1] == "end"
    assert [token for chunk in streamer.chunks[1:-1] for token in chunk] == managed[0, 150:].tolist()
    assert cache.retained_ratio == 1.0


def test_sampling_with_an_evicting_namm_reports_its_ratio(llama):
    ids, mask = left_padded(random_prompts())
    cache = MemoryManagedCache(llama.model, namm_policy(), EngineConfig(update_interval=INTERVAL))
    torch.manual_seed(0)
    out = llama.model.generate(
        ids, attention_mask=mask, past_key_values=cache, do_sample=True, max_new_tokens=8, pad_token_id=0
    )
    assert out.shape[0] == 3 and 0.0 < cache.retained_ratio < 1.0
    assert [row.update_positions[:2] for row in cache.memory()] == [[64, 128]] * 3


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"num_beams": 2}, "beam search is not supported"),
        ({"output_hidden_states": True, "return_dict_in_generate": True}, "output_hidden_states"),
    ],
)
def test_unsupported_parts_of_generate_name_themselves(llama, kwargs, message):
    ids = torch.tensor(random_prompts(lengths=(40,)))
    cache = MemoryManagedCache(llama.model, namm_policy(), EngineConfig(update_interval=16))
    with pytest.raises(UnsupportedGenerationError, match=message):
        llama.model.generate(ids, past_key_values=cache, max_new_tokens=4, pad_token_id=0, **kwargs)
    assert llama.model.config._attn_implementation == "sdpa"


def test_inputs_embeds_are_refused(llama):
    ids = torch.tensor(random_prompts(lengths=(40,)))
    cache = MemoryManagedCache(llama.model, namm_policy(), EngineConfig(update_interval=16))
    embeds = llama.model.get_input_embeddings()(ids)
    with pytest.raises(UnsupportedGenerationError, match="inputs_embeds are not supported"):
        llama.model.generate(inputs_embeds=embeds, past_key_values=cache, max_new_tokens=2, pad_token_id=0)


def test_assisted_decoding_is_refused(llama):
    """transformers itself refuses a cache that cannot be cropped (5.24) or our crop() does (older versions)."""
    ids = torch.tensor(random_prompts(lengths=(40,)))
    cache = MemoryManagedCache(llama.model, namm_policy(), EngineConfig(update_interval=16))
    with pytest.raises(ValueError, match="[Aa]ssisted"):
        llama.model.generate(ids, past_key_values=cache, max_new_tokens=6, pad_token_id=0, prompt_lookup_num_tokens=3)


def test_a_cache_serves_one_generate_call(llama):
    ids = torch.tensor(random_prompts(lengths=(40,)))
    cache = MemoryManagedCache(llama.model, namm_policy(), EngineConfig(update_interval=16))
    first = llama.model.generate(ids, past_key_values=cache, max_new_tokens=4, pad_token_id=0)
    with pytest.raises(UnsupportedGenerationError, match="one MemoryManagedCache per generate"):
        llama.model.generate(first, past_key_values=cache, max_new_tokens=4, pad_token_id=0)


def test_right_padding_is_refused(llama):
    ids, mask = left_padded(random_prompts(lengths=(40, 30)))
    cache = MemoryManagedCache(llama.model, namm_policy(), EngineConfig(update_interval=16))
    with pytest.raises(UnsupportedGenerationError, match="padding_side = 'left'"):
        llama.model.generate(ids, attention_mask=mask.flip(1), past_key_values=cache, max_new_tokens=2, pad_token_id=0)


def test_a_model_without_the_attention_interface_fails_when_the_cache_is_made():
    bloom = AutoModelForCausalLM.from_config(BloomConfig(vocab_size=64, hidden_size=32, n_layer=1, n_head=2))
    with pytest.raises(UnsupportedModelError, match="BloomForCausalLM"):
        MemoryManagedCache(bloom, namm_policy())


def test_statistics_before_generate_say_how_to_use_the_cache(llama):
    with pytest.raises(RuntimeError, match="pass it as past_key_values=cache"):
        MemoryManagedCache(llama.model, namm_policy()).retained_ratio  # noqa: B018


@pytest.mark.slow
def test_smollm2_generate_matches_the_engine_with_a_namm():
    lm = load_model(ModelConfig(name="smollm2-135m"))
    text = "The grass is green. The sky is blue. " * 60 + "What colour is the grass?"
    prompt = lm.tokenizer(text).input_ids
    config = EngineConfig(update_interval=256)
    parameters = torch.zeros(4172)
    parameters[-1] = -1.0  # read-out bias: every score negative, so each update keeps only the newest token
    parameters[4146:4154] = 0.5  # plus a recency term: the newest tokens score above zero
    expected = MemoryEngine(lm.model, NAMMPolicy(NAMMConfig(), parameters), config).generate(
        [prompt], GenerationSettings(max_new_tokens=12, stop_on_eos=False)
    )[0]
    cache = MemoryManagedCache(lm.model, NAMMPolicy(NAMMConfig(), parameters), config)
    out = lm.model.generate(
        torch.tensor([prompt]), past_key_values=cache, max_new_tokens=12, do_sample=False, eos_token_id=None
    )
    assert out[0, len(prompt) :].tolist() == expected.token_ids
    assert cache.retained_ratio == expected.retained_ratio < 1.0
    assert len(expected.update_positions) >= 2
