"""Config + model -> prepared tasks: records loaded or generated, prompts built, settings recorded."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from namm.errors import ConfigError
from tasks.longbench import LONGBENCH_TASKS, PROMPT_TEMPLATES, base_task
from tasks.longbench_data import load_longbench
from tasks.prompts import PromptBuilder, Tokenizer, tokenizer_adds_bos
from tasks.runner import PreparedTask
from tasks.synthetic import SYNTHETIC_TASKS, SyntheticParams, generate_samples
from tasks.task_config import TaskConfig
from tasks.task_settings import TaskSettings
from tasks.task_spec import Sample, TaskSpec


class ModelLike(Protocol):
    """What preparation needs of a loaded model (namm.models.LoadedModel has it)."""

    name: str
    tokenizer: Tokenizer
    max_context: int | None
    chat_template: bool  # whether the model uses its chat template by default


@dataclass(frozen=True)
class ModelInfo:
    """A plain ModelLike, for callers without a LoadedModel."""

    name: str
    tokenizer: Tokenizer
    max_context: int | None = None
    chat_template: bool = False


def newline_token_ids(tokenizer: Tokenizer) -> tuple[int, ...]:
    """The official samsum stop id: the last token of "\\n" encoded alone."""
    return (tokenizer.encode("\n", add_special_tokens=False)[-1],)


def check_prompt_lengths(config: TaskConfig, model_name: str, max_context: int | None) -> None:
    """Every task's prompts plus its new tokens must fit `max_context` (None: unknown, nothing to check): a
    synthetic `context_length` that does not fit, or a LongBench `max_prompt_tokens` that would be cut further
    to fit, is a ConfigError. Needs no model, so the entry points call it before the model loads."""
    if max_context is None:
        return
    for name in config.tasks:
        spec = SYNTHETIC_TASKS[name].spec if name in SYNTHETIC_TASKS else LONGBENCH_TASKS[name]
        room = max_context - spec.max_new_tokens  # prompt tokens that fit with the task's new tokens
        if name in SYNTHETIC_TASKS and config.context_length > room:
            raise ConfigError(
                f"{name}: task.context_length={config.context_length} + {spec.max_new_tokens} new tokens exceeds "
                f"{model_name}'s max_context {max_context}; lower task.context_length to at most {room} (or raise "
                "model.max_context if the model takes more)."
            )
        if name in LONGBENCH_TASKS and room < 2:
            raise ConfigError(
                f"{name}: {model_name}'s max_context {max_context} leaves no room for a prompt before the task's "
                f"{spec.max_new_tokens} new tokens; raise model.max_context."
            )
        if name in LONGBENCH_TASKS and config.max_prompt_tokens is not None and config.max_prompt_tokens > room:
            raise ConfigError(
                f"{name}: task.max_prompt_tokens={config.max_prompt_tokens} + {spec.max_new_tokens} new tokens "
                f"exceeds {model_name}'s max_context {max_context}, so prompts would be cut to {room} tokens, not "
                f"{config.max_prompt_tokens}; set task.max_prompt_tokens to at most {room} (or null: the longest "
                "that fits)."
            )


def prepare_tasks(
    config: TaskConfig,
    model: ModelLike,
    eos_token_ids: Sequence[int] | None = None,
    skip_lines: Mapping[str, Collection[int]] | None = None,
) -> list[PreparedTask]:
    """Every task of `config`, tokenized for `model`; eos ids default to the tokenizer's EOS. `skip_lines`:
    LongBench lines (by task) to pass over, e.g. those a NAMM trained on: the first `num_samples` others are
    taken instead, keeping their line numbers as sample indices."""
    check_prompt_lengths(config, model.name, model.max_context)
    tokenizer = model.tokenizer
    if eos_token_ids is None:
        eos_token_ids = () if tokenizer.eos_token_id is None else (tokenizer.eos_token_id,)
    use_chat = model.chat_template if config.use_chat_template is None else config.use_chat_template
    add_bos = tokenizer_adds_bos(tokenizer) if config.add_bos is None else config.add_bos
    builder = PromptBuilder(tokenizer, use_chat_template=use_chat, add_bos=add_bos)
    shared = {
        "model": model.name,
        "code_sim_backend": config.code_sim_backend,
        "eos_token_ids": tuple(eos_token_ids),
        "newline_token_ids": newline_token_ids(tokenizer),
    }

    def settings(spec: TaskSpec, **specific) -> TaskSettings:
        chat = builder.chat_applies(spec.chat_template_allowed)
        return TaskSettings(
            task=spec.name,
            use_chat_template=chat,
            add_bos=add_bos and not chat,
            max_new_tokens=spec.max_new_tokens,
            stop_on_newline=spec.stop_on_newline,
            first_line_cut=spec.first_line_cut,
            metric=spec.metric,
            **shared,
            **specific,
        )

    prepared = []
    for name in config.tasks:
        if name in SYNTHETIC_TASKS:
            prepared.append(_prepare_synthetic(name, config, model, builder, settings))
        else:
            skipped = frozenset((skip_lines or {}).get(name, ()))
            prepared.append(_prepare_longbench(name, config, model, builder, settings, skipped))
    return prepared


SettingsFor = Callable[..., TaskSettings]


def _prepare_longbench(
    name: str,
    config: TaskConfig,
    model: ModelLike,
    builder: PromptBuilder,
    settings: SettingsFor,
    skipped: frozenset[int] = frozenset(),
) -> PreparedTask:
    spec = LONGBENCH_TASKS[name]
    budget = config.max_prompt_tokens
    if budget is None:
        if model.max_context is None:
            raise ValueError(f"{name}: set task.max_prompt_tokens; model {model.name!r} has no known max_context.")
        budget = model.max_context - spec.max_new_tokens
    limit = None if model.max_context is None else model.max_context - spec.max_new_tokens
    records, source = load_longbench(name, config.data_dir, config.cache_dir)
    template = PROMPT_TEMPLATES[base_task(name)]
    samples = []
    kept = [(index, record) for index, record in enumerate(records) if index not in skipped]
    for index, record in kept[: config.num_samples]:
        text = template.format(context=record.context, input=record.input)
        ids, truncated = _build_within(builder, text, spec.chat_template_allowed, budget, limit)
        samples.append(
            Sample(index, tuple(ids), record.answers, record.all_classes, length=record.length, truncated=truncated)
        )
    return PreparedTask(spec, settings(spec, data_source=source, max_prompt_tokens=budget), tuple(samples))


def _build_within(
    builder: PromptBuilder, text: str, chat_template_allowed: bool, budget: int, limit: int | None
) -> tuple[list[int], bool]:
    """Build with `budget`; if the chat wrapper or re-tokenizing the joined halves pushes the prompt past
    what the model can take with its new tokens (`limit`), truncate further by the excess."""
    ids, truncated = builder.build(text, chat_template_allowed=chat_template_allowed, budget=budget)
    while limit is not None and len(ids) > limit:
        budget -= len(ids) - limit
        ids, truncated = builder.build(text, chat_template_allowed=chat_template_allowed, budget=budget)
    return ids, truncated


def _prepare_synthetic(
    name: str, config: TaskConfig, model: ModelLike, builder: PromptBuilder, settings: SettingsFor
) -> PreparedTask:
    task = SYNTHETIC_TASKS[name]
    params = SyntheticParams(config.context_length, config.needle_depth, config.seed, config.haystack)
    samples = generate_samples(task, builder, params, config.num_samples)
    record = settings(
        task.spec,
        data_source="synthetic",
        max_prompt_tokens=None,
        context_length=params.context_length,
        needle_depth=params.needle_depth,
        seed=params.seed,
        haystack=params.haystack or getattr(task.draft, "haystack", None),  # effective niah haystack
    )
    return PreparedTask(task.spec, record, tuple(samples))
