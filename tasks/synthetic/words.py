"""Random keys and values for needles: wonderwords' word lists (pinned: the lists define the samples)."""

from __future__ import annotations

import random
import string
import uuid
from functools import cache


@cache
def word_list(category: str) -> tuple[str, ...]:
    """wonderwords' sorted list for "noun", "adjective" or "verb" (lowercase entries only)."""
    from wonderwords import RandomWord  # here: passkey, the default task, draws no words

    words = RandomWord().filter(include_categories=[category])
    return tuple(word for word in words if word.isalpha() and word.islower())


def word_key(rng: random.Random) -> str:
    """An adjective-noun key such as "shiny-kettle"."""
    return f"{rng.choice(word_list('adjective'))}-{rng.choice(word_list('noun'))}"


def number_value(rng: random.Random) -> str:
    return str(rng.randint(10**6, 10**7 - 1))


def uuid_value(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def variable_name(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_uppercase) for _ in range(5))


DRAWS = {"words": word_key, "numbers": number_value, "uuids": uuid_value}


def distinct(draw, rng: random.Random, count: int, exclude: frozenset[str] = frozenset()) -> list[str]:
    """`count` different draws, none of them in `exclude`."""
    out: list[str] = []
    while len(out) < count:
        item = draw(rng)
        if item not in exclude and item not in out:
            out.append(item)
    return out
