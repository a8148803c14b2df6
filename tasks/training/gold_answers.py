"""Each prompt's gold answer as a continuation the model can be teacher-forced on.

Two features feed the gold answer to the model after the prompt: the `answer_likelihood` training signal and the
distilled start's `oracle` target. They share this module so both write the answer the same way and refuse the
same data, before the model loads.
"""

from __future__ import annotations

from namm.errors import ConfigError
from tasks.longbench_data import load_longbench
from tasks.prompts import Tokenizer
from tasks.synthetic import SYNTHETIC_TASKS
from tasks.task_config import TaskConfig
from tasks.task_spec import Sample, TaskSpec


def check_gold_answers(config: TaskConfig, needed_by: str, fix: str) -> None:
    """Before the model loads: every sample a run may draw has a gold answer (synthetic tasks always do; LongBench
    records are read, as `check_task_data` already did). `needed_by` names the setting that teacher-forces the
    answer and `fix` the way out, both quoted in the error."""
    for name in config.tasks:
        if name in SYNTHETIC_TASKS:
            continue
        records, _ = load_longbench(name, config.data_dir, config.cache_dir)
        empty = [
            i for i, record in enumerate(records[: config.num_samples]) if not any(a.strip() for a in record.answers)
        ]
        if empty:
            raise ConfigError(
                f"{needed_by} teacher-forces each prompt's gold answer, but task {name!r} has records without one "
                f"(lines {empty[:5]}); {fix}, or drop it from task.tasks."
            )


def gold_text(sample: Sample, spec: TaskSpec) -> str:
    """What a correct answer looks like: every answer joined (tasks that need all of them), else the first."""
    answers = [answer for answer in sample.answers if answer.strip()]
    if not answers:
        raise ValueError(f"task {spec.name!r} sample {sample.index} has no gold answer to teacher-force")
    return spec.answer_joiner.join(answers) if spec.answers_all_required else answers[0]


def gold_continuation(sample: Sample, spec: TaskSpec, tokenizer: Tokenizer) -> list[int]:
    """The gold answer's token ids as the model would write them after the prompt (a space first, unless the
    prompt already ends in whitespace)."""
    last = tokenizer.decode(list(sample.prompt_ids[-1:]))
    text = gold_text(sample, spec)
    return tokenizer.encode(text if last[-1:].isspace() else " " + text, add_special_tokens=False)
