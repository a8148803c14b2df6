"""Synthetic long-context tasks generated locally from a seed, sized in tokens with the model's tokenizer."""

from __future__ import annotations

import random
from dataclasses import dataclass
from functools import partial

from tasks.answer_spans import answer_token_spans
from tasks.prompts import PromptBuilder
from tasks.synthetic.draft import Draft, Drafter, SyntheticParams
from tasks.synthetic.kv_retrieval import draft_kv_retrieval
from tasks.synthetic.niah import NiahLayout
from tasks.synthetic.passkey import draft_passkey
from tasks.synthetic.sizing import fit_to_length
from tasks.synthetic.variable_tracking import draft_variable_tracking
from tasks.task_spec import Sample, TaskSpec

__all__ = ["SYNTHETIC_SUITES", "SYNTHETIC_TASKS", "SyntheticParams", "SyntheticTask", "generate_samples"]


@dataclass(frozen=True)
class SyntheticTask:
    spec: TaskSpec
    draft: Drafter
    takes_haystack: bool = False  # whether the `haystack` parameter applies


def _task(
    name: str, draft: Drafter, metric: str, max_new_tokens: int, all_required: bool, joiner: str = ", "
) -> SyntheticTask:
    spec = TaskSpec(
        name=name,
        metric=metric,
        max_new_tokens=max_new_tokens,
        category="Synthetic",
        language="en",
        answers_all_required=all_required,
        answer_joiner=joiner,
    )
    return SyntheticTask(spec=spec, draft=draft, takes_haystack=isinstance(draft, NiahLayout))


SYNTHETIC_TASKS: dict[str, SyntheticTask] = {
    task.spec.name: task
    for task in (
        _task("passkey", draft_passkey, "first_integer_match", 10, all_required=False),
        _task("niah_single", NiahLayout(), "string_match_all", 128, all_required=True),
        _task("niah_multikey", NiahLayout(haystack="needle"), "string_match_all", 128, all_required=True),
        _task("niah_multivalue", NiahLayout(num_values=4), "string_match_all", 128, all_required=True),
        _task("niah_multiquery", NiahLayout(num_keys=4, num_queries=4), "string_match_all", 128, all_required=True),
        _task("niah_prose", NiahLayout(haystack="prose"), "string_match_all", 32, all_required=True),
        _task("variable_tracking", draft_variable_tracking, "string_match_all", 30, all_required=True, joiner=" "),
        _task("kv_retrieval", draft_kv_retrieval, "string_match_all", 50, all_required=True),
    )
}

#: named mixes of synthetic tasks (conf/task/<name>.yaml): `retrieval` is the CPU memory experiment's
SYNTHETIC_SUITES: dict[str, tuple[str, ...]] = {
    "retrieval": ("passkey", "niah_single"),
    "retrieval_prose": ("niah_single", "niah_prose"),  # the efficacy experiment's (conf/experiment/efficacy.yaml)
}


def _prompt_ids(draft: Draft, builder: PromptBuilder, chat_template_allowed: bool, size: int) -> list[int]:
    body, answer_prefix = draft.render(size)
    return builder.build(body, chat_template_allowed=chat_template_allowed, answer_prefix=answer_prefix)[0]


def generate_samples(
    task: SyntheticTask, builder: PromptBuilder, params: SyntheticParams, num_samples: int
) -> list[Sample]:
    """`num_samples` prompts of `params.context_length` tokens (within 1%); sample i depends only on (task, seed, i)."""
    if params.haystack is not None and not task.takes_haystack:
        raise ValueError(f"haystack applies to the niah_* tasks only, not {task.spec.name!r}; set it to null.")
    samples = []
    for index in range(num_samples):
        draft = task.draft(random.Random(f"{task.spec.name}/{params.seed}/{index}"), params)
        render = partial(_prompt_ids, draft, builder, task.spec.chat_template_allowed)
        _, ids = fit_to_length(render, params.context_length, what=f"{task.spec.name} sample {index}")
        spans = answer_token_spans(ids, draft.answers, builder.tokenizer)
        samples.append(
            Sample(
                index=index,
                prompt_ids=tuple(ids),
                answers=draft.answers,
                answer_spans=spans,
                answer_depths=draft.answer_depths,
            )
        )
    return samples
