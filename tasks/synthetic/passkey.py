"""Passkey retrieval (Mohtashami & Jaggi 2023): a number hidden in "grass is green" filler."""

from __future__ import annotations

import random

from tasks.synthetic.draft import Draft, SyntheticParams, depths
from tasks.synthetic.haystack import noise_text

INSTRUCTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there."
)
QUESTION = "What is the pass key?"
ANSWER_PREFIX = " The pass key is"


def draft_passkey(rng: random.Random, params: SyntheticParams) -> Draft:
    key = str(rng.randint(1, 50000))
    depth = depths(rng, params, 1)[0]

    def render(chars: int) -> tuple[str, str]:
        before = round(depth * chars)  # filler is sized in characters, as in the original test
        info = f"The pass key is {key}. Remember it. {key} is the pass key."
        return "\n".join([INSTRUCTION, noise_text(before), info, noise_text(chars - before), QUESTION]), ANSWER_PREFIX

    return Draft(render=render, answers=(key,), answer_depths=(depth,))
