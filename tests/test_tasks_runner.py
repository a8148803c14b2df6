"""The generator seam, batching, scoring of runs, transformers greedy baseline, and reference scores."""

import dataclasses
import json
import re
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from task_fixtures import FIXTURES, byte_tokenizer, tiny_llama

from namm.engine import GenerationSettings
from namm.plain_generation import padding_token_id
from tasks.generators import full_cache_generator, transformers_generator
from tasks.preparation import ModelInfo, prepare_tasks
from tasks.references import ReferenceCache, ReferenceContext, ReferenceScores, fill_references
from tasks.runner import run_task
from tasks.task_config import TaskConfig

TOKENIZER = byte_tokenizer()
MODEL = ModelInfo("byte-model", TOKENIZER, max_context=4096, chat_template=False)


def prepare(name, **overrides):
    settings = {"num_samples": None, "data_dir": str(FIXTURES), **overrides}
    [task] = prepare_tasks(TaskConfig(name=name, tasks=[name], **settings), MODEL)
    return task


@dataclass
class Reply:
    token_ids: list[int]


class ScriptedGenerator:
    """Answers each prompt with a fixed text and records how it was called."""

    def __init__(self, answer_for):
        self.answer_for, self.calls = answer_for, []

    def __call__(self, prompts, settings):
        self.calls.append((len(prompts), settings))
        return [Reply(TOKENIZER.encode(self.answer_for(p), add_special_tokens=False) + [1]) for p in prompts]


def test_run_task_decodes_cuts_and_scores_with_recorded_settings():
    task = prepare("trec")
    generate = ScriptedGenerator(lambda prompt: "Individual\nQuestion: Where?\nType: City")
    run = run_task(task, generate, TOKENIZER)
    assert run.predictions == ["Individual\nQuestion: Where?\nType: City"]  # EOS dropped by the decode
    assert run.sample_scores == [1.0] and run.score == 100.0  # scored on the first line only
    settings = generate.calls[0][1]
    newline = TOKENIZER.encode("\n", add_special_tokens=False)[-1]
    assert settings == GenerationSettings(
        max_new_tokens=64, eos_token_ids=(1,), newline_token_ids=(newline,), pad_token_id=2
    )
    assert run.to_dict()["settings"]["first_line_cut"] is True


def test_batches_keep_sample_order_and_lengths():
    task = prepare("qasper_e")
    answers = {"Q1?": "alpha", "Q2?": "wrong", "Q3?": "gamma", "Q4?": "delta"}
    generate = ScriptedGenerator(lambda p: next(v for k, v in answers.items() if k in TOKENIZER.decode(p)))
    run = run_task(task, generate, TOKENIZER, batch_size=3)
    assert [n for n, _ in generate.calls] == [3, 1] and run.indices == [0, 1, 2, 3]
    assert run.sample_scores == [1.0, 0.0, 1.0, 1.0]
    assert run.length_buckets() == {"0-4k": 100.0, "4-8k": 50.0, "8k+": 100.0}
    subset = run_task(task, generate, TOKENIZER, indices=[2, 0])
    assert subset.indices == [2, 0] and subset.sample_scores == [1.0, 1.0]


def test_bad_indices_and_bad_generators_are_errors():
    task = prepare("qasper")
    with pytest.raises(IndexError, match="samples 0..1"):
        run_task(task, ScriptedGenerator(lambda p: "x"), TOKENIZER, indices=[5])
    with pytest.raises(RuntimeError, match="1 results for 2 prompts"):
        run_task(task, lambda prompts, settings: [Reply([1])], TOKENIZER)


@pytest.mark.parametrize(("pad", "eos", "expected"), [(7, (2, 3), 7), (0, (2,), 0), (None, (2, 3), 2), (None, (), 0)])
def test_padding_is_the_tokenizers_pad_token_else_the_first_eos_else_zero(pad, eos, expected):
    assert padding_token_id(SimpleNamespace(pad_token_id=pad), eos) == expected
    assert prepare("trec").generation_settings(TOKENIZER).pad_token_id == TOKENIZER.pad_token_id is not None


def test_no_module_spells_the_padding_fallback_again():
    """Every padding choice goes through `padding_token_id`: `pad_token_id or 0` (0 where the rule says EOS) or
    an inline `pad_token_id if ... else` would drift from it."""
    root = Path(__file__).resolve().parents[1]
    inline = re.compile(r"pad_token_id (or|if) ")
    sources = [*root.glob("*.py"), *root.glob("namm/**/*.py"), *root.glob("tasks/**/*.py"), *root.glob("scripts/*.py")]
    assert len(sources) > 50
    assert [str(path.relative_to(root)) for path in sources if inline.search(path.read_text())] == []


def test_samsum_stops_on_newline_through_the_seam():
    task = prepare("samsum")
    generate = ScriptedGenerator(lambda p: "Ann and Bob will have lunch at noon.")
    run_task(task, generate, TOKENIZER)
    assert generate.calls[0][1].stop_on_newline and generate.calls[0][1].max_new_tokens == 128


def test_transformers_generator_left_pads_like_single_prompts_and_cuts_at_stops():
    model = tiny_llama()
    generate = transformers_generator(model)
    prompts = [[0, 50, 60, 70, 80, 90], [0, 40, 41]]
    settings = GenerationSettings(max_new_tokens=6, stop_on_eos=False, pad_token_id=2)
    batched = generate(prompts, settings)
    alone = [generate([prompt], settings)[0].token_ids for prompt in prompts]
    assert [r.token_ids for r in batched] == alone and all(len(ids) == 6 for ids in alone)
    with torch.no_grad():  # greedy by hand for the first prompt
        ids = list(prompts[0])
        for _ in range(6):
            ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
    assert alone[0] == ids[len(prompts[0]) :]
    stop = alone[0][2]
    cut = generate(prompts[:1], GenerationSettings(max_new_tokens=6, eos_token_ids=(stop,), pad_token_id=2))
    assert cut[0].token_ids == alone[0][: alone[0].index(stop) + 1]
    model.generation_config.eos_token_id = stop  # the model's own EOS must not stop a run with stop_on_eos=False
    assert generate(prompts[:1], settings)[0].token_ids == alone[0]


def test_engine_and_transformers_agree_through_the_seam():
    model = tiny_llama()
    prompts = [[0] + [10 + i % 240 for i in range(700)], [0, 40, 41, 42]]  # 700 tokens: one engine update
    settings = GenerationSettings(max_new_tokens=8, stop_on_eos=False, pad_token_id=2)
    engine = full_cache_generator(model, "engine")(prompts, settings)
    plain = full_cache_generator(model, "transformers")(prompts, settings)
    assert [r.token_ids for r in engine] == [r.token_ids for r in plain]
    assert all(r.retained_ratio == 1.0 for r in engine)


def test_run_task_with_a_tiny_random_model():
    task = prepare("passage_count")
    run = run_task(task, transformers_generator(tiny_llama()), TOKENIZER)
    assert len(run.generations[0].token_ids) == 32 and 0.0 <= run.sample_scores[0] <= 1.0


def test_reference_scores_round_trip_in_the_published_shape(tmp_path):
    scores = ReferenceScores()
    scores.put("qasper", 0, 1.0)
    scores.put("qasper", 1, 0.5)
    scores.save(tmp_path / "ref.json")
    assert json.loads((tmp_path / "ref.json").read_text()) == {"lb/qasper": {"0": 1.0, "1": 0.5}}
    loaded = ReferenceScores.load(tmp_path / "ref.json")
    assert loaded.task_score("qasper", [0, 1]) == 75.0 and loaded.missing("qasper", [0, 1, 2]) == [2]
    with pytest.raises(KeyError, match="fill_reference_scores"):
        loaded.task_score("qasper", [2])
    (tmp_path / "aggregate.json").write_text(
        json.dumps([{"lb/qasper": 75.0, "performance_per_request": {"lb/qasper": {"0": 1.0}}}])
    )
    assert ReferenceScores.load(tmp_path / "aggregate.json").scores == {"lb/qasper": {"0": 1.0}}


CONTEXT = ReferenceContext("tiny-random-seed0", "float32", "cpu", {"name": "engine", "update_interval": 512})


def test_reference_cache_is_keyed_by_settings_and_fills_only_missing(tmp_path):
    cache = ReferenceCache(tmp_path, CONTEXT)
    task = prepare("qasper")
    generate = ScriptedGenerator(lambda p: "PTB" if "dataset" in TOKENIZER.decode(p) else "yes")
    scores = fill_references(task, generate, TOKENIZER, cache, indices=[0], progress=False)
    assert scores.scores == {"lb/qasper": {"0": 1.0}}
    fill_references(task, generate, TOKENIZER, cache, progress=False)
    assert [n for n, _ in generate.calls] == [1, 1]  # the second call only ran sample 1
    assert cache.load(task.settings).scores == {"lb/qasper": {"0": 1.0, "1": 0.0}}
    path = cache.path(task.settings)
    record = json.loads(path.with_suffix(".settings.json").read_text())
    assert path.parent.name == "byte-model" and record["task_settings"]["task"] == "qasper"
    assert record["context"] == CONTEXT.to_dict()
    other = prepare("qasper", code_sim_backend="lcs", max_prompt_tokens=1000)
    assert cache.path(other.settings) != path and cache.load(other.settings).scores == {}


@pytest.mark.parametrize(
    "change",
    [
        {"weights": "tiny-random-seed1"},  # other weights under the same name
        {"dtype": "bfloat16"},
        {"device_type": "cuda"},
        {"generator": {"name": "engine", "update_interval": 256}},
        {"generator": {"name": "transformers"}},
    ],
)
def test_references_of_another_context_are_not_reused(tmp_path, change):
    task = prepare("qasper")
    cache = ReferenceCache(tmp_path, CONTEXT)
    cache.save(task.settings, ReferenceScores({"lb/qasper": {"0": 1.0}}))
    assert ReferenceCache(tmp_path, CONTEXT).load(task.settings).scores == {"lb/qasper": {"0": 1.0}}
    other = ReferenceCache(tmp_path, dataclasses.replace(CONTEXT, **change))
    assert other.path(task.settings) != cache.path(task.settings) and other.load(task.settings).scores == {}


def test_saving_references_merges_with_what_another_run_wrote(tmp_path):
    task = prepare("qasper")
    first, second = ReferenceCache(tmp_path, CONTEXT), ReferenceCache(tmp_path, CONTEXT)
    first.save(task.settings, ReferenceScores({"lb/qasper": {"0": 1.0}}))
    second.save(task.settings, ReferenceScores({"lb/qasper": {"1": 0.5}}))
    assert first.load(task.settings).scores == {"lb/qasper": {"0": 1.0, "1": 0.5}}
    assert not list(tmp_path.rglob("*.tmp"))  # atomic writes leave no temporary files
