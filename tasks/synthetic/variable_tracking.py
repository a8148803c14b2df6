"""RULER-style variable tracking: follow a chain of assignments hidden in noise, with one worked example."""

from __future__ import annotations

import itertools
import random

from tasks.synthetic import words
from tasks.synthetic.draft import Draft, SyntheticParams, depths
from tasks.synthetic.haystack import NOISE, insert_at_depths, noise_text

HOPS = 4
EXAMPLE_FILLER_CHARS = 3 * len(NOISE) + 2  # three whole noise units
INSTRUCTION = "Memorize and track the chain(s) of variable assignment hidden in the following text."


def _chain(rng: random.Random, exclude: frozenset[str]) -> tuple[list[str], str, list[str]]:
    names = words.distinct(words.variable_name, rng, HOPS + 1, exclude)
    value = str(rng.randint(10000, 99999))
    statements = [f"VAR {names[0]} = {value}."] + [f"VAR {b} = VAR {a}." for a, b in itertools.pairwise(names)]
    return names, value, statements


def _question(value: str) -> tuple[str, str]:
    return (
        f"Question: Find all variables that are assigned the value {value} in the text above.",
        (
            f" Answer: According to the chain(s) of variable assignment in the text above, {HOPS + 1} variables are "
            f"assigned the value {value}, they are: "
        ),
    )


def _block(statements: list[str], at: list[float], filler: int, value: str) -> tuple[str, str]:
    text = insert_at_depths(noise_text(filler), list(zip(sorted(at), statements)))  # sorted: chain order kept
    question, answer_prefix = _question(value)
    return f"{INSTRUCTION}\n\n{text}\n{question}", answer_prefix


def draft_variable_tracking(rng: random.Random, params: SyntheticParams) -> Draft:
    example_names, example_value, example_statements = _chain(rng, frozenset())
    example_depths = [rng.random() for _ in example_statements]
    names, value, statements = _chain(rng, frozenset(example_names))
    at = depths(rng, params, len(statements))
    example_body, example_prefix = _block(example_statements, example_depths, EXAMPLE_FILLER_CHARS, example_value)
    example = f"{example_body}{example_prefix}{' '.join(example_names)}\n\n"

    def render(size: int) -> tuple[str, str]:
        body, answer_prefix = _block(statements, at, size, value)
        return example + body, answer_prefix

    return Draft(render=render, answers=tuple(names))
