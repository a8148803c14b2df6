"""The documented shape of the evaluation's output files, as JSON Schema (draft 2020-12) dicts.

`RESULTS_SCHEMA` describes results.json, `SAMPLE_RECORD_SCHEMA` each line of the per-sample
samples/<policy>/<task>-<key>.jsonl files. Tests validate real outputs against them; `validate` needs the
`jsonschema` package (installed with ray), imported only when called.
"""

from __future__ import annotations

from typing import Any

from namm.pretrained import PARAMS_KINDS

SCHEMA_VERSION = 5  # 2: live / storage / overhead memory figures; 3: several NAMMs (`namms`), fronts, intervals;
# 4: paired comparisons, Wilson intervals, aggregate intervals, end-of-prompt ratios, held-out record, score inputs;
# a policy's ratio budget is `budget_ratio` in `policies`, as in the settings; 5: scores by answer depth

_NUMBER = {"type": "number"}
_RATIO = {"type": "number", "minimum": 0, "maximum": 1}
_COUNT = {"type": "integer", "minimum": 0}
_OPTIONAL_NUMBER = {"type": ["number", "null"]}
_STRING = {"type": "string"}


def _object(properties: dict[str, Any], required: list[str] | None = None, extra: bool = False) -> dict[str, Any]:
    """An object with these properties, all required unless `required` says otherwise."""
    return {
        "type": "object",
        "properties": properties,
        "required": list(properties) if required is None else required,
        "additionalProperties": extra,
    }


SAMPLE_RECORD_SCHEMA: dict[str, Any] = _object(
    {
        "index": _COUNT,
        "prompt_sha": _STRING,  # first 16 hex digits of sha256(json(prompt token ids))
        "prediction": _STRING,  # decoded generation, special tokens skipped
        "answers": {"type": "array", "items": _STRING},
        "score": _RATIO,  # the task metric in [0, 1]
        "retained_ratio": _RATIO,  # kept / seen tokens at the end, averaged over layers and KV heads
        "retained_ratio_per_layer": {"type": "array", "items": _RATIO},
        "prompt_tokens": _COUNT,
        "prompt_retained_ratio": _RATIO,  # kept / prompt tokens once the prompt is in (before any new token)
        "prompt_last_update": _COUNT,  # tokens seen at the last eviction within the prompt (0: none)
        "generated_tokens": _COUNT,
        "tokens_seen": _COUNT,  # prompt + generated - 1 (tokens that went through the model)
        "last_update": _COUNT,  # tokens seen at the last eviction (0: none)
        # memory (namm.memory_meter): live = kept tokens x bytes per token, summed over layers and KV heads
        "peak_live_kv_bytes": _COUNT,  # this sample's largest live KV bytes
        "final_live_kv_bytes": _COUNT,  # at the end of its generation
        "batch_peak_storage_bytes": _COUNT,  # key/value storage allocated for the batch it ran in
        "batch_peak_overhead_bytes": _COUNT,  # query buffer, metadata, policy state, temporaries of that batch
        "batch_rows": {"type": "integer", "minimum": 1},
        "seconds": _NUMBER,  # this sample's share of its batch's generate time
        # a reconstructing policy's extra forwards (kvzip): this sample's tokens fed, and its share of the
        # batch's reconstruction seconds (inside `seconds`); 0 for every other policy
        "reconstruction_tokens": _COUNT,
        "reconstruction_seconds": _NUMBER,
    },
)

_BUDGET_ATTEMPT = _object({"budget": _RATIO, "retained_ratio": _RATIO, "relative_gap": _NUMBER})  # ratio: matched one
_INTERVAL = {"type": "array", "items": _NUMBER, "minItems": 2, "maxItems": 2}
_OPTIONAL_INTERVAL = {"oneOf": [{"type": "null"}, _INTERVAL]}

_COMPARISON = _object(
    {
        "policy": _STRING,
        "reference": _STRING,  # full, or a NAMM's label
        "task": _STRING,  # a task, or "mean": over every task (equal weights, stratified bootstrap)
        "num_prompts": {"type": "integer", "minimum": 1},
        "difference": _NUMBER,  # points: policy - reference on the same prompts
        "interval": _INTERVAL,  # paired bootstrap of the difference (statistics.level)
        "test": {"enum": ["mcnemar", "paired_bootstrap"]},  # what `significant` rests on
        "significant": {"type": "boolean"},  # McNemar p < 1 - level (0/1 task), else the interval excludes 0
        "policy_only": {"type": ["integer", "null"]},  # 0/1 task: prompts only the policy got right
        "reference_only": {"type": ["integer", "null"]},
        "mcnemar_p": _OPTIONAL_NUMBER,  # exact two-sided McNemar p (0/1 tasks)
    }
)

_HELD_OUT = _object(
    {
        # untrained (zero NAMM) | unrecorded (the checkpoint does not say: NOT checked) | checked | incomplete
        # (started from a run that recorded nothing)
        "status": {"enum": ["untrained", "unrecorded", "checked", "incomplete"]},
        "mode": {"enum": ["refuse", "skip", "allow"]},  # the trained_prompts setting
        "overlap": {"type": "array", "items": {"type": "object"}},  # trained-on prompts scored (allow)
        "skipped": {"type": "array", "items": {"type": "object"}},  # trained-on prompts dropped (skip)
    }
)

_TASK_RESULT = _object(
    {
        "policy": _STRING,  # the contender's label: `h2o`, `h2o@0.25` (a front point), `namm`, `namm:<run>`
        "family": _STRING,  # the policy it runs (full, namm, h2o, ...): a front's points share it
        "task": _STRING,
        "category": _STRING,
        "score": {"type": "number", "minimum": 0, "maximum": 100},  # 100 x mean sample score
        "score_interval": {  # Wilson (0/1 metric) or percentile bootstrap over the samples
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 100},
            "minItems": 2,
            "maxItems": 2,
        },
        "interval_method": {"enum": ["wilson", "bootstrap"]},
        "binary_metric": {"type": "boolean"},  # the task's metric scores each sample 0 or 1
        "relative_to_full": _OPTIONAL_NUMBER,  # mean score / full-cache mean score on the same samples
        "num_samples": {"type": "integer", "minimum": 1},
        "prompt_retained_ratio": _RATIO,  # mean over samples, at the end of the prompt
        "retained_ratio": _RATIO,  # mean over samples, at the end of generation
        "retained_ratio_min": _RATIO,
        "retained_ratio_max": _RATIO,
        "retained_ratio_per_layer": {"type": "array", "items": _RATIO},
        "reused_samples": _COUNT,  # read back from an earlier run's sample store: not timed here
        "tokens": _COUNT,  # of the samples run now
        "seconds": _NUMBER,  # of the samples run now
        "reconstruction_seconds": _NUMBER,  # the part of `seconds` spent in reconstruction forwards (kvzip)
        "reconstruction_tokens": _COUNT,  # tokens those forwards fed, over the samples run now
        "tokens_per_second": _OPTIONAL_NUMBER,  # null: every sample was reused
        "samples_per_second": _OPTIONAL_NUMBER,
        "mean_peak_live_kv_bytes": _NUMBER,  # mean over samples of each one's peak live KV bytes
        "peak_live_kv_bytes": _COUNT,  # largest sample's peak live KV bytes
        "peak_storage_bytes": _COUNT,  # largest batch's peak key/value storage
        "peak_overhead_bytes": _COUNT,  # largest batch's peak engine overhead
        "peak_batch_rows": {"type": "integer", "minimum": 1},  # rows of the largest batch
        "length_buckets": {"type": ["object", "null"], "additionalProperties": _OPTIONAL_NUMBER},  # LongBench-E
        "budget": {"type": ["number", "null"]},  # the budget ratio run (null: not budgeted)
        "budget_target": {"type": ["number", "null"]},  # the NAMM's ratio it was matched to (settings.match_on)
        "budget_attempts": {"type": ["array", "null"], "items": _BUDGET_ATTEMPT},
        "within_tolerance": {"type": ["boolean", "null"]},
        "samples_file": _STRING,  # relative to the run directory
    }
)

_AGGREGATE = _object(
    {
        # every aggregate weighs tasks equally (settings.weighting)
        "mean_score": _NUMBER,  # mean of the task scores
        "mean_score_interval": _INTERVAL,  # stratified bootstrap (prompts resampled within each task)
        "mean_relative_to_full": _OPTIONAL_NUMBER,  # mean score / the full cache's mean score (ratio of means)
        "relative_to_full_interval": _OPTIONAL_INTERVAL,  # paired stratified bootstrap
        "category_means": {"type": "object", "additionalProperties": _NUMBER},  # over the tasks present
        "longbench_en_mean": _OPTIONAL_NUMBER,  # the 16 English + code tasks, when all ran
        "longbench_leaderboard": {"type": ["object", "null"]},  # tasks.task_scores.category_means, all 21 tasks
        "prompt_retained_ratio": _RATIO,  # end of the prompt
        "retained_ratio": _RATIO,  # end of generation
        "tokens_per_second": _OPTIONAL_NUMBER,  # samples run now only
        "reused_samples": _COUNT,
        "mean_peak_live_kv_bytes": _NUMBER,
        "peak_live_kv_bytes": _COUNT,
        "peak_storage_bytes": _COUNT,
        "peak_overhead_bytes": _COUNT,
        "num_tasks": {"type": "integer", "minimum": 1},
        "num_samples": {"type": "integer", "minimum": 1},
    }
)

_POLICY = _object(
    {
        "label": _STRING,
        "name": _STRING,
        "budget_ratio": {"type": ["number", "null"]},
        "budget_tokens": {"type": ["integer", "null"]},
        "allocation": _STRING,  # none | adakv | pyramid (namm/allocation.py)
        "options": {"type": "object"},
        "matched_budget": {"type": "boolean"},
    }
)

# 100 x a depth bin's mean sample score and its 95% interval (Wilson for 0/1 metrics, else bootstrap)
_DEPTH_CELL = _object({"score": _NUMBER, "interval": {"type": "array", "items": _NUMBER}})
# bin b: answers at haystack depths [b / bins, (b + 1) / bins), the last bin including 1
_DEPTH_TABLE = _object(
    {
        "bins": {"type": "integer", "minimum": 1},
        "samples": {"type": "array", "items": _COUNT},  # per bin
        "without_depth": _COUNT,  # samples with several answers or no known depth
        "scores": {  # policy -> per bin (null: an empty bin)
            "type": "object",
            "additionalProperties": {"type": "array", "items": {"oneOf": [{"type": "null"}, _DEPTH_CELL]}},
        },
    }
)

RESULTS_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "NAMM evaluation results (results.json)",
    **_object(
        {
            "schema_version": {"const": SCHEMA_VERSION},
            "created": _STRING,  # ISO 8601, UTC
            "command": {"type": "array", "items": _STRING},
            "run_dir": _STRING,
            "model": _object(
                {
                    "name": _STRING,
                    "dtype": _STRING,
                    "device": _STRING,
                    "weights": _STRING,  # namm.models.LoadedModel.weights_id
                    "max_context": _COUNT,
                    "chat_template": {"type": "boolean"},
                    "seed": {"type": "integer"},
                }
            ),
            "namms": {  # label -> the NAMM it ran; empty when no NAMM is among the policies
                "type": "object",
                "additionalProperties": _object(
                    {
                        "kind": {"enum": ["checkpoint", "exported", "zero"]},
                        "path": {"type": ["string", "null"]},
                        "generation": {"type": ["integer", "null"]},
                        "params": {"enum": [*PARAMS_KINDS, "exported", "zero"]},
                        "param_count": {"type": "integer", "minimum": 1},
                        "sha256": {"type": ["string", "null"]},
                        "fingerprint": _STRING,
                        "trained_on_model": {"type": ["string", "null"]},
                        "normalization": {"type": "boolean"},
                        "namm": {"type": "object"},  # the NAMMConfig used
                    }
                ),
            },
            "transfer": {  # the checkpoint was evolved on another model (zero-shot transfer)
                "oneOf": [{"type": "null"}, _object({"from_model": _STRING, "to_model": _STRING})]
            },
            "engine": _object(
                {
                    "update_interval": {"type": "integer"},
                    "eviction_mode": _STRING,
                    "prefill_chunk": {"type": ["integer", "null"]},
                    "update_at_prefill_end": {"type": "boolean"},
                    "schedule": {"enum": ["prefill", "post_prefill"]},  # which schedule ran
                }
            ),
            "settings": _object(
                {
                    "batch_size": {"type": "integer", "minimum": 1},
                    "match_budget": {"type": "boolean"},
                    "budget_tolerance": _NUMBER,
                    "budget_attempts": {"type": "integer", "minimum": 1},
                    "front_budgets": {"type": ["array", "null"], "items": _RATIO},  # front=true: the sweep
                    "match_on": {"enum": ["prompt_end", "generation_end"]},  # the ratio matched budgets target
                    "matched_quantity": _STRING,  # its name in the table and plots
                    "trained_prompts": {"enum": ["refuse", "skip", "allow"]},
                    "weighting": _STRING,  # how aggregates weigh tasks and samples
                    "statistics": _object(
                        {"seed": {"type": "integer"}, "resamples": _COUNT, "level": _NUMBER, "weak_full_score": _NUMBER}
                    ),
                    "versions": {"type": "object", "additionalProperties": _STRING},  # python, torch, transformers, ...
                    # part of every sample store's key: weights, resolved dtype and device, batch size, versions,
                    # source digest (tasks.evaluation.run_identity)
                    "score_inputs": {"type": "object"},
                }
            ),
            "held_out": {"type": "object", "additionalProperties": _HELD_OUT},  # NAMM label -> its prompts check
            "weak_full_tasks": {"type": "array", "items": _STRING},  # full cache below statistics.weak_full_score
            # tasks.task_settings.TaskSettings of every task: truncation budget (max_prompt_tokens), chat template,
            # metric and code-sim backend, stop tokens, synthetic parameters; and the truncation applied:
            # num_samples, truncated_samples (prompts cut) and longest_prompt_tokens (the longest that ran)
            "tasks": {"type": "object", "additionalProperties": {"type": "object"}},
            "policies": {"type": "array", "items": _POLICY},
            "results": {"type": "array", "items": _TASK_RESULT},
            "aggregates": {"type": "object", "additionalProperties": _AGGREGATE},
            "comparisons": {"type": "array", "items": _COMPARISON},  # vs the full cache and vs each NAMM
            # synthetic task -> scores by where its answer sits (tasks.evaluation.answer_depth); {} with
            # answer_depth_bins=0 or no synthetic task
            "answer_depth": {"type": "object", "additionalProperties": _DEPTH_TABLE},
            "files": _object(
                {
                    "csv": _STRING,
                    "comparisons_csv": _STRING,
                    "plots": {"type": "array", "items": _STRING},
                    "eviction_maps": {"type": "array", "items": _STRING},  # with eviction_maps=N only
                },
                required=["csv", "comparisons_csv", "plots"],
            ),
        }
    ),
}


def validate(document: Any, schema: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when `document` does not match `schema`."""
    import jsonschema

    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
