"""Prompt building as LongBench's pred.py does it: template, middle truncation in tokens, chat wrapping, BOS."""

import hashlib
import json

import pytest
from task_fixtures import FIXTURES, byte_tokenizer

from tasks.longbench import LONGBENCH_TASKS, PROMPT_TEMPLATES, SUITES
from tasks.preparation import ModelInfo, prepare_tasks
from tasks.prompts import PromptBuilder, tokenizer_adds_bos
from tasks.task_config import TaskConfig

TOKENIZER = byte_tokenizer()


def prepare(names, chat=True, max_context=100_000, **overrides):
    settings = {"num_samples": None, "data_dir": str(FIXTURES), **overrides}
    config = TaskConfig(name="test", tasks=list(names), **settings)
    return {t.spec.name: t for t in prepare_tasks(config, ModelInfo("byte", TOKENIZER, max_context, chat))}


def text_of(ids):
    return TOKENIZER.decode(list(ids))


def chat(text):
    return f"<s>User: {text}\nAssistant:"


def test_templates_are_the_reference_strings():
    # sha256 of the 21 templates as quoted in docs/longbench-reference.md (json, sorted keys, ensure_ascii=False)
    digest = hashlib.sha256(json.dumps(PROMPT_TEMPLATES, sort_keys=True, ensure_ascii=False).encode()).hexdigest()
    assert digest == "e7d865d712fe45e2455f5e864ac474001d7758d68d349e76ffbcdd382483358f"
    assert "asconcisely" in PROMPT_TEMPLATES["narrativeqa"] and "\n\n Answer the question" in PROMPT_TEMPLATES["qasper"]


def test_registry_covers_21_tasks_13_e_variants_and_the_suites():
    assert len(SUITES["longbench"]) == 21 and len(SUITES["longbench_en"]) == 16 and len(SUITES["longbench_e"]) == 13
    assert len(LONGBENCH_TASKS) == 34
    assert {n: LONGBENCH_TASKS[n].max_new_tokens for n in ("narrativeqa", "hotpotqa", "gov_report", "lcc")} == {
        "narrativeqa": 128, "hotpotqa": 32, "gov_report": 512, "lcc": 64
    }  # fmt: skip
    assert {n for n in SUITES["longbench"] if not LONGBENCH_TASKS[n].chat_template_allowed} == {
        "trec", "triviaqa", "samsum", "lsht", "lcc", "repobench-p"
    }  # fmt: skip
    assert SUITES["longbench_curriculum_3"] == ("passage_retrieval_en", "dureader", "narrativeqa")


def test_sandwich_qa_prompt_is_chat_wrapped_and_recorded():
    task = prepare(["qasper"])["qasper"]
    expected = PROMPT_TEMPLATES["qasper"].format(
        context="We train on the Penn Treebank. Results improve by 2 points.", input="What dataset do they use?"
    )
    assert text_of(task.samples[0].prompt_ids) == chat(expected)
    assert task.samples[0].answers == ("Penn Treebank", "PTB")
    s = task.settings
    assert (s.use_chat_template, s.add_bos, s.max_new_tokens, s.metric) == (True, False, 128, "qa_f1_score")
    assert s.max_prompt_tokens == 100_000 - 128 and s.data_source == str(FIXTURES.resolve())


def test_raw_prompt_gets_bos_by_tokenizer_default_or_setting():
    assert tokenizer_adds_bos(TOKENIZER)
    raw = prepare(["gov_report"], chat=False)["gov_report"]
    assert raw.samples[0].prompt_ids[0] == TOKENIZER.bos_token_id and raw.settings.add_bos
    assert text_of(raw.samples[0].prompt_ids).startswith("<s>You are given a report by a government agency.")
    no_bos = prepare(["gov_report"], chat=False, add_bos=False)["gov_report"]
    assert no_bos.samples[0].prompt_ids == raw.samples[0].prompt_ids[1:]


@pytest.mark.parametrize("name", ["trec", "samsum", "lcc", "repobench-p"])
def test_few_shot_and_code_prompts_stay_raw_even_with_chat_on(name):
    task = prepare([name])[name]
    assert not task.settings.use_chat_template
    assert text_of(task.samples[0].prompt_ids).startswith("<s>") and "User:" not in text_of(task.samples[0].prompt_ids)


def test_few_shot_and_code_prompt_texts():
    tasks = prepare(["trec", "samsum", "repobench-p"])
    trec = text_of(tasks["trec"].samples[0].prompt_ids)
    assert trec.endswith("Type: Individual\nQuestion: Who wrote Hamlet?\nType:")
    assert tasks["trec"].samples[0].all_classes == ("City", "Individual", "Other location", "Date")
    samsum = tasks["samsum"].settings
    assert (samsum.stop_on_newline, samsum.first_line_cut, samsum.newline_token_ids) == (
        True,
        True,
        (TOKENIZER.encode("\n", add_special_tokens=False)[-1],),
    )
    repobench = text_of(tasks["repobench-p"].samples[0].prompt_ids)
    assert repobench == (
        "<s>Please complete the code given below. \n# utils.py\ndef read_text(path):\n    return open(path).read()\n"
        "import os\nclass Loader:\n    def read(self, path):\nNext line of code:\n"
    )


def test_synthetic_longbench_and_chinese_prompts():
    tasks = prepare(["passage_retrieval_en", "passage_count", "multifieldqa_zh"])
    assert text_of(tasks["passage_retrieval_en"].samples[0].prompt_ids).endswith(
        'The answer format must be like "Paragraph 1", "Paragraph 2", etc.\n\nThe answer is: \nAssistant:'
    )
    assert "Paragraph 3: Cats sleep." in text_of(tasks["passage_count"].samples[0].prompt_ids)
    assert text_of(tasks["multifieldqa_zh"].samples[0].prompt_ids) == chat(
        "阅读以下文字并用中文简短回答：\n\n长城全长约两万一千公里，是世界上最长的建筑。\n\n"
        "现在请基于上面的文章回答下面的问题，只告诉我答案，不要输出任何其他字词。\n\n问题：长城有多长？\n回答："
    )


def official_truncation(tokenizer, prompt, max_length):
    """LongBench pred.py, step by step, as an independent reference."""
    ids = tokenizer(prompt, truncation=False).input_ids
    if len(ids) > max_length:
        half = int(max_length / 2)
        prompt = tokenizer.decode(ids[:half], skip_special_tokens=True) + tokenizer.decode(
            ids[-half:], skip_special_tokens=True
        )
    return tokenizer(prompt, truncation=False).input_ids


@pytest.mark.parametrize("budget", [40, 41, 500])
def test_middle_truncation_matches_the_official_steps_and_keeps_both_ends(budget):
    builder = PromptBuilder(TOKENIZER, use_chat_template=False, add_bos=True)
    text = "HEAD of the prompt. " + "filler words " * 30 + "the TAIL."
    ids, truncated = builder.build(text, budget=budget)
    assert ids == official_truncation(TOKENIZER, text, budget)
    assert truncated == (budget < len(text) + 1) and len(ids) <= budget
    assert text_of(ids).startswith("<s>HEAD of") and text_of(ids).endswith("the TAIL.")


def test_truncation_happens_before_chat_wrapping():
    builder = PromptBuilder(TOKENIZER, use_chat_template=True, add_bos=True)
    text = "HEAD " + "x" * 300 + " TAIL"
    ids, truncated = builder.build(text, budget=50)
    kept, _ = builder.truncate_middle(text, 50)
    # halves of 25 tokens; BOS counts toward the first and is dropped by the decode: 24 + 25 characters
    assert truncated and text_of(ids) == chat(kept) and len(kept) == 49


def test_budget_defaults_to_context_minus_new_tokens():
    task = prepare(["gov_report"], chat=False, max_context=600)["gov_report"]
    assert task.settings.max_prompt_tokens == 600 - 512 and task.samples[0].truncated
    assert len(task.samples[0].prompt_ids) <= 88
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        prepare(["gov_report"], max_context=None)


def test_chat_prompts_are_cut_further_to_fit_the_model():
    task = prepare(["qasper"], max_context=300)["qasper"]  # budget 172 raw tokens, plus the chat wrapper
    assert task.settings.max_prompt_tokens == 172 and task.samples[0].truncated
    assert 171 <= len(task.samples[0].prompt_ids) <= 172  # the wrapper's tokens came out of the middle (halves)
    text = text_of(task.samples[0].prompt_ids)
    assert text.startswith("<s>User: You are given a scientific article") and text.endswith("Answer:\nAssistant:")


def test_chat_template_required_when_enabled():
    tokenizer = byte_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        PromptBuilder(tokenizer, use_chat_template=True, add_bos=False)


def test_longbench_e_uses_its_own_file_and_the_base_template():
    task = prepare(["qasper_e"])["qasper_e"]
    assert [s.length for s in task.samples] == [1200, 5000, 9000, 4000]
    assert "Question: Q2?" in text_of(task.samples[1].prompt_ids) and task.spec.max_new_tokens == 128
    assert len(prepare(["qasper_e"], num_samples=2)["qasper_e"].samples) == 2
