"""Key-value retrieval (InfiniteBench style): find one UUID's value in a JSON object of UUID pairs."""

from __future__ import annotations

import json
import random

from tasks.synthetic import words
from tasks.synthetic.draft import Draft, SyntheticParams, depths

_UUID_CHARS = 36
INSTRUCTION = "Extract the value corresponding to the specified key in the JSON object below."
ANSWER_PREFIX = "The value associated with the specified key is:"


def draft_kv_retrieval(rng: random.Random, params: SyntheticParams) -> Draft:
    key, value = words.uuid_value(rng), words.uuid_value(rng)
    depth = depths(rng, params, 1)[0]
    stream_seed = rng.getrandbits(64)

    def distractor(number: int) -> tuple[str, str]:
        local = random.Random(f"{stream_seed}/{number}")
        return words.distinct(words.uuid_value, local, 1, exclude=frozenset({key}))[0], words.uuid_value(local)

    def render(size: int) -> tuple[str, str]:
        # `size` counts distractor characters (key + value): whole pairs, then one pair cut short (key first),
        # so the prompt grows by about one token per step.
        full, partial = divmod(size, 2 * _UUID_CHARS)
        pairs = [distractor(n) for n in range(full + (partial > 0))]
        if partial:
            cut_key, cut_value = pairs[-1]
            pairs[-1] = (cut_key[:partial], cut_value[: max(0, partial - _UUID_CHARS)])
        pairs.insert(round(depth * len(pairs)), (key, value))
        body = f'{INSTRUCTION}\n\nJSON data:\n{json.dumps(dict(pairs), indent=1)}\n\nKey: "{key}"\n'
        return body, ANSWER_PREFIX

    return Draft(render=render, answers=(value,), answer_depths=(depth,))
