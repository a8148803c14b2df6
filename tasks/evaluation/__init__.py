"""Evaluation of saved NAMMs against the full cache and hand-designed policies (`python evaluate.py`).

Reads checkpoints written by namm.evolution, runs every policy through namm.engine on tasks from this
package, and writes results.json / results.csv / plots into the run directory. Nothing in `namm` imports it.
"""

from tasks.evaluation.config import EvaluateConfig, register_configs, validate_evaluate_config
from tasks.evaluation.pipeline import evaluate
from tasks.evaluation.schema import RESULTS_SCHEMA, SAMPLE_RECORD_SCHEMA

__all__ = [
    "RESULTS_SCHEMA",
    "SAMPLE_RECORD_SCHEMA",
    "EvaluateConfig",
    "evaluate",
    "register_configs",
    "validate_evaluate_config",
]
