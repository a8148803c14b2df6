"""What a task is (decoding and scoring rules) and what a prepared sample holds."""

from __future__ import annotations

from dataclasses import dataclass

from tasks.metrics import METRICS


@dataclass(frozen=True)
class TaskSpec:
    """The fixed, per-task rules of generation and scoring."""

    name: str
    metric: str  # a key of tasks.metrics.METRICS
    max_new_tokens: int
    category: str
    language: str  # "en", "zh" or "code"
    chat_template_allowed: bool = True  # False: prompt stays raw even when the model uses a chat template
    stop_on_newline: bool = False  # stop decoding at the newline token (samsum)
    first_line_cut: bool = False  # score only the first line of the prediction (few-shot tasks)
    answers_all_required: bool = False  # True: metric(prediction, all answers); False: max over answers
    answer_joiner: str = ", "  # how a correct answer lists all required answers (evo.signal=answer_likelihood)

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise ValueError(f"Task {self.name!r}: unknown metric {self.metric!r}; choose from {sorted(METRICS)}.")


@dataclass(frozen=True)
class Sample:
    """One prompt, tokenized and ready to generate from, with what scoring needs."""

    index: int  # position in the task's data (jsonl line order / synthetic sample number): reference key
    prompt_ids: tuple[int, ...]
    answers: tuple[str, ...]
    all_classes: tuple[str, ...] | None = None
    length: int | None = None  # LongBench's `length` field (words, or chars for zh): LongBench-E buckets
    truncated: bool = False  # the prompt was middle-truncated to the token budget
    answer_spans: tuple[tuple[int, int], ...] | None = None  # [first, end) tokens of the gold answer in the
    # prompt, where the task knows them (synthetic tasks); None: unknown
    answer_depths: tuple[float, ...] | None = None  # each answer's needle depth in the haystack (0 = start,
    # 1 = end), where the generator placed it (synthetic tasks); None: unknown
