"""Varied, natural-looking filler prose: sentences drawn from templates with many word slots (wonderwords'
lists), seeded per sentence, so no filler sentence repeats and a needle written as an ordinary sentence does
not stand out by its wording (unlike the repeated noise filler, where any new sentence is novel)."""

from __future__ import annotations

import random

from tasks.synthetic import words

NAMES = (
    "Ada", "Bruno", "Clara", "Dmitri", "Elena", "Farid", "Greta", "Hugo", "Ines", "Jonas", "Kira", "Leo",
    "Marta", "Nils", "Olga", "Pavel", "Rosa", "Samir", "Tove", "Umar", "Vera", "Wim", "Yara", "Zeno",
)  # fmt: skip
PLACES = ("harbour", "market", "library", "orchard", "station", "workshop", "garden", "bakery", "bridge", "farm")
TIMES = ("that morning", "after lunch", "in the evening", "on Sunday", "before the storm", "at dawn", "last spring")

TEMPLATES = (
    "{name} wanted to {verb} the {adj} {noun} before anyone reached the {place}.",
    "Nobody at the {place} expected the {noun} to look so {adj} {time}.",
    "{name} and {name2} talked about a {adj} {noun} for most of the walk to the {place}.",
    "The {noun} near the {place} seemed {adj}, so {name} decided to {verb} it {time}.",
    "{time_cap}, {name} found a {adj} {noun} lying beside the {noun2}.",
    "It took {small} minutes to {verb} the {noun}, and {name} said it was worth it.",
    "{name} kept a {adj} {noun} on the shelf next to an old {noun2}.",
    "People at the {place} still remember the {adj} {noun} that {name2} brought {time}.",
    "The {adj} {noun2} was the reason {name} stayed at the {place} for {small} days.",
    "{name} tried to {verb} the {noun} twice, but the {noun2} got in the way.",
    "According to {name2}, the {noun} behind the {place} had always been {adj}.",
    "There were {small} {adj} things in the {place}, and a {noun} was the strangest of them.",
)


def prose_sentence(rng: random.Random) -> str:
    """One filler sentence with every slot drawn from `rng`."""
    nouns, adjectives, verbs = words.word_list("noun"), words.word_list("adjective"), words.word_list("verb")
    name, name2 = rng.sample(NAMES, 2)
    time = rng.choice(TIMES)
    return rng.choice(TEMPLATES).format(
        name=name,
        name2=name2,
        noun=rng.choice(nouns),
        noun2=rng.choice(nouns),
        adj=rng.choice(adjectives),
        verb=rng.choice(verbs),
        place=rng.choice(PLACES),
        time=time,
        time_cap=time[0].upper() + time[1:],
        small=rng.randint(2, 60),
    )


def prose_needle(key: str, value: str) -> str:
    """A needle as an ordinary sentence: "The code that Ada gave the shiny kettle was 4820193."."""
    return f"The code written on the {key.replace('-', ' ')} was {value}."
