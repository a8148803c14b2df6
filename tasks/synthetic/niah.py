"""RULER-style needle-in-a-haystack: "special magic" key-value needles in noise or distractor needles, or
ordinary-sentence needles in varied prose (haystack="prose", tasks/synthetic/prose.py)."""

from __future__ import annotations

import random
from dataclasses import dataclass

from tasks.synthetic import words
from tasks.synthetic.draft import Draft, SyntheticParams, depths
from tasks.synthetic.haystack import insert_at_depths, noise_text, sentence_stream_text
from tasks.synthetic.prose import prose_needle, prose_sentence

HAYSTACKS = ("noise", "needle", "prose")
PROSE_INSTRUCTION = "Read the following story. I will ask you about one detail of it afterwards."
_VALUE_NOUN = {"numbers": ("number", "numbers"), "uuids": ("uuid", "uuids")}


@dataclass(frozen=True)
class NiahLayout:
    """How many needles, values and queries; which key/value kinds; the default haystack."""

    haystack: str = "noise"
    key_kind: str = "words"
    value_kind: str = "numbers"
    num_keys: int = 1  # needles with different keys (the first num_queries of them are asked for)
    num_values: int = 1  # needles per key, each with its own value
    num_queries: int = 1

    def __call__(self, rng: random.Random, params: SyntheticParams) -> Draft:
        return draft_niah(rng, params, self)


def _needle(key: str, value: str, value_kind: str) -> str:
    return f"One of the special magic {_VALUE_NOUN[value_kind][1]} for {key} is: {value}."


def _question(queries: list[str], value_kind: str, single_answer: bool) -> tuple[str, str]:
    query = queries[0] if len(queries) == 1 else ", ".join(queries[:-1]) + ", and " + queries[-1]
    noun, nouns = _VALUE_NOUN[value_kind]
    if single_answer:
        return (
            f"What is the special magic {noun} for {query} mentioned in the provided text?",
            f" The special magic {noun} for {query} mentioned in the provided text is",
        )
    return (
        f"What are all the special magic {nouns} for {query} mentioned in the provided text?",
        f" The special magic {nouns} for {query} mentioned in the provided text are",
    )


def _prose_question(queries: list[str], single_answer: bool) -> tuple[str, str]:
    things = " and the ".join(query.replace("-", " ") for query in queries)
    if single_answer:
        return f"What was the code written on the {things}?", f" The code written on the {things} was"
    return f"What were all the codes written on the {things}?", f" The codes written on the {things} were"


def draft_niah(rng: random.Random, params: SyntheticParams, layout: NiahLayout) -> Draft:
    haystack = params.haystack or layout.haystack
    if haystack not in HAYSTACKS:
        raise ValueError(f"haystack must be one of {HAYSTACKS} (or null for the task default), got {haystack!r}.")
    draw_key, draw_value = words.DRAWS[layout.key_kind], words.DRAWS[layout.value_kind]
    keys = words.distinct(draw_key, rng, layout.num_keys)
    values = {key: words.distinct(draw_value, rng, layout.num_values) for key in keys}
    prose = haystack == "prose"
    write = prose_needle if prose else (lambda key, value: _needle(key, value, layout.value_kind))
    needles = [write(key, value) for key in keys for value in values[key]]
    inserts = list(zip(depths(rng, params, len(needles)), needles))
    queries = keys[: layout.num_queries]
    answers = tuple(value for key in queries for value in values[key])
    single = len(answers) == 1
    question, answer_prefix = (
        _prose_question(queries, single) if prose else _question(queries, layout.value_kind, single)
    )
    _, nouns = _VALUE_NOUN[layout.value_kind]
    stream_seed = rng.getrandbits(64)
    taken = frozenset(keys)

    def distractor(number: int) -> str:
        local = random.Random(f"{stream_seed}/{number}")
        key = words.distinct(draw_key, local, 1, exclude=taken)[0]
        return _needle(key, draw_value(local), layout.value_kind)

    def prose_filler(number: int) -> str:
        return prose_sentence(random.Random(f"{stream_seed}/{number}"))

    def render(size: int) -> tuple[str, str]:
        if haystack == "noise":
            filler = noise_text(size)
        else:
            filler = sentence_stream_text(prose_filler if prose else distractor, size)
        intro = (
            PROSE_INSTRUCTION
            if prose
            else f"Some special magic {nouns} are hidden within the following text. Make sure to memorize it. "
            f"I will quiz you about the {nouns} afterwards."
        )
        return f"{intro}\n{insert_at_depths(filler, inserts)}\n{question}", answer_prefix

    # the queried keys come first among the needles, so the answers' needles are the first inserts, in order
    return Draft(render=render, answers=answers, answer_depths=tuple(depth for depth, _ in inserts[: len(answers)]))
