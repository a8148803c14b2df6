"""Size a prompt to a token count with the model's own tokenizer (binary search over a filler knob)."""

from __future__ import annotations

from collections.abc import Callable


def fit_to_length(
    render: Callable[[int], list[int]], target: int, tolerance: float = 0.01, what: str = "prompt"
) -> tuple[int, list[int]]:
    """The largest filler size whose prompt has at most `target` tokens, and that prompt's ids.

    `render(size)` must grow (roughly monotonically) with `size`. Raises when the result falls more
    than `tolerance * target` tokens short, or when even an empty filler is too long.
    """
    seen: dict[int, list[int]] = {}

    def length(size: int) -> int:
        if size not in seen:
            seen[size] = render(size)
        return len(seen[size])

    if length(0) > target:
        raise ValueError(f"{what}: {length(0)} tokens without any filler, more than the target {target}.")
    low, high = 0, 64
    while length(high) <= target:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if length(middle) <= target else (low, middle)
    if target - length(low) > tolerance * target:
        raise ValueError(
            f"{what}: could not get within {tolerance:.0%} of {target} tokens (best {length(low)}); "
            "the filler grows in steps too coarse for this tokenizer."
        )
    return low, seen[low]
