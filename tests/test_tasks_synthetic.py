"""Synthetic tasks: seeded, sized to the token target within 1%, needles where asked, scorable."""

import itertools
import re

import pytest
from task_fixtures import byte_tokenizer

from tasks.prompts import PromptBuilder
from tasks.synthetic import SYNTHETIC_TASKS, SyntheticParams, generate_samples
from tasks.synthetic.haystack import NOISE, insert_at_depths, noise_text
from tasks.task_scores import score_prediction

TOKENIZER = byte_tokenizer()
CHAT = PromptBuilder(TOKENIZER, use_chat_template=True, add_bos=False)
RAW = PromptBuilder(TOKENIZER, use_chat_template=False, add_bos=True)


def generate(name, builder=CHAT, num_samples=3, **params):
    return generate_samples(SYNTHETIC_TASKS[name], builder, SyntheticParams(**params), num_samples)


def text(sample):
    return TOKENIZER.decode(list(sample.prompt_ids))


@pytest.mark.parametrize("name", sorted(SYNTHETIC_TASKS))
@pytest.mark.parametrize("builder", [CHAT, RAW], ids=["chat", "raw"])
def test_length_within_one_percent_and_answers_hidden_in_the_prompt(name, builder):
    for sample in generate(name, builder, context_length=1500):
        assert abs(len(sample.prompt_ids) - 1500) <= 15
        assert all(answer in text(sample) for answer in sample.answers)


@pytest.mark.parametrize("name", sorted(SYNTHETIC_TASKS))
def test_deterministic_for_a_seed_and_independent_of_sample_count(name):
    first = generate(name, context_length=1200, seed=7)
    assert first == generate(name, context_length=1200, seed=7)
    assert generate(name, num_samples=5, context_length=1200, seed=7)[:3] == first
    assert [s.answers for s in generate(name, context_length=1200, seed=8)] != [s.answers for s in first]
    assert len({s.answers for s in first}) == 3  # samples differ from each other


def test_passkey_prompt_is_the_classic_one():
    [sample] = generate("passkey", RAW, num_samples=1, context_length=400, needle_depth=0.0)
    key = sample.answers[0]
    lines = text(sample).removeprefix("<s>").split("\n")
    assert lines[0].startswith("There is an important info hidden inside a lot of irrelevant text.")
    assert lines[1] == "" and lines[2] == f"The pass key is {key}. Remember it. {key} is the pass key."
    assert lines[3].startswith(NOISE) and lines[4] == "What is the pass key? The pass key is"


def test_needle_depth_moves_the_needle():
    def position(depth):
        [sample] = generate("niah_single", RAW, num_samples=1, context_length=1000, needle_depth=depth)
        return text(sample).index("One of the special magic")

    assert position(0.0) < position(0.5) < position(1.0)
    [start] = generate("niah_single", RAW, num_samples=1, context_length=1000, needle_depth=0.0)
    assert "afterwards.\nOne of the special magic number for" not in text(start)  # plural wording in the needle
    assert "afterwards.\nOne of the special magic numbers for" in text(start)


def test_haystacks():
    [noise] = generate("niah_single", num_samples=1, context_length=1000)
    [needles] = generate("niah_single", num_samples=1, context_length=1000, haystack="needle")
    assert text(noise).count("special magic numbers for") == 1 and NOISE in text(noise)
    assert text(needles).count("One of the special magic numbers for") > 5 and "grass" not in text(needles)
    assert noise.answers == needles.answers  # same draws, other haystack
    with pytest.raises(ValueError, match="niah_"):
        generate("passkey", context_length=1000, haystack="needle")


def test_multi_needle_questions_and_scoring():
    [multiquery] = generate("niah_multiquery", num_samples=1, context_length=1000)
    assert len(multiquery.answers) == 4 and text(multiquery).count("One of the special magic numbers for") == 4
    spec = SYNTHETIC_TASKS["niah_multiquery"].spec
    assert score_prediction(" are " + ", ".join(multiquery.answers), multiquery, spec) == 1.0
    assert score_prediction(" are " + multiquery.answers[0], multiquery, spec) == 0.25
    [multivalue] = generate("niah_multivalue", num_samples=1, context_length=1000)
    assert len(set(multivalue.answers)) == 4


def test_variable_tracking_chain_and_example():
    [sample] = generate("variable_tracking", num_samples=1, context_length=1500)
    names = sample.answers
    value = re.search(rf"VAR {names[0]} = (\d+)\.", text(sample)).group(1)
    chain = [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(names)]
    positions = [text(sample).index(statement) for statement in chain]
    assert positions == sorted(positions) and text(sample).count("they are: ") == 2  # example + question
    assert text(sample).endswith(f"5 variables are assigned the value {value}, they are: ")


def test_kv_retrieval_asks_for_a_present_key():
    [sample] = generate("kv_retrieval", num_samples=1, context_length=1500)
    key = re.search(r'Key: "([0-9a-f-]{36})"', text(sample)).group(1)
    assert f'"{key}": "{sample.answers[0]}"' in text(sample)


def test_too_small_a_target_is_an_error():
    with pytest.raises(ValueError, match="without any filler"):
        generate("variable_tracking", context_length=100)


def test_insert_at_depths_uses_sentence_starts():
    filler = noise_text(len(NOISE))
    assert insert_at_depths(filler, [(0.0, "X.")]) == "X. " + NOISE
    assert insert_at_depths(filler, [(1.0, "X.")]) == NOISE + " X."
    assert insert_at_depths(filler, [(0.3, "X."), (0.3, "Y.")]) == NOISE.replace("The sky", "X. Y. The sky")
    with pytest.raises(ValueError):
        insert_at_depths(filler, [(1.5, "X.")])


@pytest.fixture(scope="module")
def smollm2_builder():
    from transformers import AutoTokenizer

    from namm.models.packaged_gguf import PACKAGED_MODELS, locate_packaged_gguf

    gguf, _ = locate_packaged_gguf(PACKAGED_MODELS["smollm2-135m"])
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    return PromptBuilder(tokenizer, use_chat_template=True, add_bos=False)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(SYNTHETIC_TASKS))
@pytest.mark.parametrize("length", [1024, 2048, 4096])
def test_smollm2_lengths_within_one_percent(smollm2_builder, name, length):
    samples = generate(name, smollm2_builder, num_samples=4, context_length=length)
    assert all(abs(len(s.prompt_ids) - length) <= 0.01 * length for s in samples)
    assert samples == generate(name, smollm2_builder, num_samples=4, context_length=length)


@pytest.mark.parametrize("name", sorted(SYNTHETIC_TASKS))
def test_answer_spans_cover_every_answer_in_the_prompt(name):
    for sample in generate(name, context_length=1500):
        assert sample.answer_spans
        covered = ["".join(TOKENIZER.decode(list(sample.prompt_ids[a:b])).split()) for a, b in sample.answer_spans]
        assert all(any(answer in piece for piece in covered) for answer in sample.answers)
        assert all(b - a <= max(len(answer) for answer in sample.answers) for a, b in sample.answer_spans)


def test_answer_token_spans_hand_checked():
    from tasks.answer_spans import answer_token_spans

    ids = TOKENIZER.encode("ab 12 c 12 x1 2", add_special_tokens=False)  # one token per character
    assert answer_token_spans(ids, ["12"], TOKENIZER) == ((3, 5), (8, 10), (12, 15))  # "1 2" spans a space
    assert answer_token_spans(ids, ["zz", ""], TOKENIZER) == ()
    assert answer_token_spans(ids, ["c 12", "12"], TOKENIZER) == ((3, 5), (6, 10), (12, 15))  # overlaps merged


def test_prose_haystack_never_repeats_a_sentence_and_hides_an_ordinary_sentence_needle():
    [sample] = generate("niah_prose", RAW, num_samples=1, context_length=3000)
    body = text(sample).removeprefix("<s>")
    story = body.split("\n")[1]
    sentences = [s for s in re.split(r"(?<=\.) ", story) if s.endswith(".")]
    assert len(sentences) > 30 and len(set(sentences)) == len(sentences)  # varied: no filler sentence repeats
    (value,) = sample.answers
    needle = [s for s in sentences if value in s]
    assert len(needle) == 1 and re.fullmatch(r"The code written on the [a-z]+ [a-z]+ was \d{7}\.", needle[0])
    key = needle[0].removeprefix("The code written on the ").split(" was ")[0]
    assert body.endswith(f"What was the code written on the {key}? The code written on the {key} was")
    assert "special magic" not in body and "grass" not in body
    assert sum(bool(re.search(r"\d", s)) for s in sentences) > 3  # the needle is not the only one with digits
    # the same draws in the niah_single layout with haystack=prose: the option and the task agree
    [option] = generate("niah_single", RAW, num_samples=1, context_length=3000, haystack="prose")
    assert "The code written on the " in text(option) and "special magic" not in text(option)
