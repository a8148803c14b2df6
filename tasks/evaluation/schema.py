"""The documented shape of the evaluation's output files, as JSON Schema (draft 2020-12) dicts.

`RESULTS_SCHEMA` describes results.json, `SAMPLE_RECORD_SCHEMA` each line of the per-sample
samples/<policy>/<task>-<key>.jsonl files. Tests validate real outputs against them; `validate` needs the
`jsonschema` package (installed with ray), imported only when called.
"""

from __future__ import annotations

from typing import Any

# 2: live / storage / overhead memory figures; 3: several NAMMs (`namms`), fronts, intervals;
# 4: a policy's ratio budget is `budget_ratio` in `policies`, as in the settings
SCHEMA_VERSION = 4

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
        "generated_tokens": _COUNT,
        "tokens_seen": _COUNT,  # prompt + generated - 1 (tokens that went through the model)
        "last_update": _COUNT,  # tokens seen at the last eviction (0: none)
        # memory (namm.memory): live = kept tokens x bytes per token, summed over layers and KV heads
        "peak_live_kv_bytes": _COUNT,  # this sample's largest live KV bytes
        "final_live_kv_bytes": _COUNT,  # at the end of its generation
        "batch_peak_storage_bytes": _COUNT,  # key/value storage allocated for the batch it ran in
        "batch_peak_overhead_bytes": _COUNT,  # query buffer, metadata, policy state, temporaries of that batch
        "batch_rows": {"type": "integer", "minimum": 1},
        "seconds": _NUMBER,  # this sample's share of its batch's generate time
    }
)

_BUDGET_ATTEMPT = _object({"budget": _RATIO, "retained_ratio": _RATIO, "relative_gap": _NUMBER})

_TASK_RESULT = _object(
    {
        "policy": _STRING,  # the contender's label: `h2o`, `h2o@0.25` (a front point), `namm`, `namm:<run>`
        "family": _STRING,  # the policy it runs (full, namm, h2o, ...): a front's points share it
        "task": _STRING,
        "category": _STRING,
        "score": {"type": "number", "minimum": 0, "maximum": 100},  # 100 x mean sample score
        "score_interval": {  # 95% percentile bootstrap over the samples (tasks.evaluation.intervals)
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 100},
            "minItems": 2,
            "maxItems": 2,
        },
        "relative_to_full": _OPTIONAL_NUMBER,  # score / full-cache score on the same samples
        "num_samples": {"type": "integer", "minimum": 1},
        "retained_ratio": _RATIO,  # mean over samples
        "retained_ratio_min": _RATIO,
        "retained_ratio_max": _RATIO,
        "retained_ratio_per_layer": {"type": "array", "items": _RATIO},
        "tokens": _COUNT,
        "seconds": _NUMBER,
        "tokens_per_second": _OPTIONAL_NUMBER,
        "samples_per_second": _OPTIONAL_NUMBER,
        "mean_peak_live_kv_bytes": _NUMBER,  # mean over samples of each one's peak live KV bytes
        "peak_live_kv_bytes": _COUNT,  # largest sample's peak live KV bytes
        "peak_storage_bytes": _COUNT,  # largest batch's peak key/value storage
        "peak_overhead_bytes": _COUNT,  # largest batch's peak engine overhead
        "peak_batch_rows": {"type": "integer", "minimum": 1},  # rows of the largest batch
        "length_buckets": {"type": ["object", "null"], "additionalProperties": _OPTIONAL_NUMBER},  # LongBench-E
        "budget": {"type": ["number", "null"]},  # the budget ratio run (null: not budgeted)
        "budget_target": {"type": ["number", "null"]},  # the NAMM's retained ratio it was matched to
        "budget_attempts": {"type": ["array", "null"], "items": _BUDGET_ATTEMPT},
        "within_tolerance": {"type": ["boolean", "null"]},
        "samples_file": _STRING,  # relative to the run directory
    }
)

_AGGREGATE = _object(
    {
        "mean_score": _NUMBER,  # plain mean of the task scores
        "mean_relative_to_full": _OPTIONAL_NUMBER,
        "category_means": {"type": "object", "additionalProperties": _NUMBER},  # over the tasks present
        "longbench_en_mean": _OPTIONAL_NUMBER,  # the 16 English + code tasks, when all ran
        "longbench_leaderboard": {"type": ["object", "null"]},  # tasks.scoring.category_means, all 21 tasks
        "retained_ratio": _RATIO,  # sample-weighted mean
        "tokens_per_second": _OPTIONAL_NUMBER,
        "mean_peak_live_kv_bytes": _NUMBER,  # sample-weighted mean
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
        "options": {"type": "object"},
        "matched_budget": {"type": "boolean"},
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
                        "params": {"enum": ["best", "center", "exported", "zero"]},
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
                }
            ),
            "settings": _object(
                {
                    "batch_size": {"type": "integer", "minimum": 1},
                    "match_budget": {"type": "boolean"},
                    "budget_tolerance": _NUMBER,
                    "budget_attempts": {"type": "integer", "minimum": 1},
                    "front_budgets": {"type": ["array", "null"], "items": _RATIO},  # front=true: the sweep
                    "versions": {"type": "object", "additionalProperties": _STRING},  # python, torch, transformers, ...
                }
            ),
            # tasks.settings.TaskSettings of every task: truncation budget (max_prompt_tokens), chat template,
            # metric and code-sim backend, stop tokens, synthetic parameters
            "tasks": {"type": "object", "additionalProperties": {"type": "object"}},
            "policies": {"type": "array", "items": _POLICY},
            "results": {"type": "array", "items": _TASK_RESULT},
            "aggregates": {"type": "object", "additionalProperties": _AGGREGATE},
            "files": _object({"csv": _STRING, "plots": {"type": "array", "items": _STRING}}),
        }
    ),
}


def validate(document: Any, schema: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError when `document` does not match `schema`."""
    import jsonschema

    jsonschema.validate(document, schema, cls=jsonschema.Draft202012Validator)
