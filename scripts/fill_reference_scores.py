"""Fill the on-disk cache of full-cache reference scores for a model and a list of tasks.

    python scripts/fill_reference_scores.py --tasks longbench_curriculum_3 --data-dir ~/longbench/data
    python scripts/fill_reference_scores.py --model meta-llama/Llama-3.1-8B-Instruct --tasks longbench_en \
        --device cuda --dtype bfloat16

Only samples missing from the cache are generated, and the file is saved after every batch, so an interrupted
run resumes. Scores are keyed by each task's settings record (tasks/task_settings.py) and by the weights, dtype,
device type and generator (engine settings included); training (tasks/training/task_scorer.py) reads the same
cache when those match (same model, dtype, device type and engine.update_interval). Generation is the NAMM engine with the full-cache
policy, or plain transformers greedy decoding with `--generator transformers`.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from namm.engine import EngineConfig
from namm.models import ModelConfig, load_model
from tasks import ReferenceCache, TaskConfig, default_reference_dir, fill_references, prepare_tasks
from tasks.generators import full_cache_generator
from tasks.longbench import SUITES
from tasks.references import ReferenceContext, engine_generator_record


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a namm.models name, hub id or local path")
    parser.add_argument("--tasks", nargs="+", required=True, help="task or suite names (e.g. qasper longbench_en)")
    parser.add_argument("--data-dir", help="folder of unzipped LongBench jsonl (default: download from the hub)")
    parser.add_argument("--cache-dir", type=Path, help="reference cache (default: ~/.cache/namm/references)")
    parser.add_argument("--num-samples", type=int, help="LongBench: first N (default all); synthetic: required")
    parser.add_argument("--max-prompt-tokens", type=int, help="truncation budget (default: max context - new tokens)")
    parser.add_argument("--chat-template", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--code-sim-backend", choices=["difflib", "lcs"], default="difflib")
    parser.add_argument("--context-length", type=int, default=2048, help="synthetic tasks: prompt tokens")
    parser.add_argument("--seed", type=int, default=42, help="synthetic tasks: generation seed")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument(
        "--update-interval", type=int, default=512, help="engine.update_interval of the training runs to serve"
    )
    parser.add_argument("--generator", choices=["engine", "transformers"], default="engine")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:<index> or auto")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    config = TaskConfig(  # validated before the model loads
        name="references",
        tasks=[name for entry in args.tasks for name in SUITES.get(entry, (entry,))],
        num_samples=args.num_samples,
        data_dir=args.data_dir,
        max_prompt_tokens=args.max_prompt_tokens,
        use_chat_template={"auto": None, "on": True, "off": False}[args.chat_template],
        code_sim_backend=args.code_sim_backend,
        context_length=args.context_length,
        seed=args.seed,
    )
    loaded = load_model(ModelConfig(name=args.model, device=args.device, dtype=args.dtype))
    engine = EngineConfig(update_interval=args.update_interval)
    generate = full_cache_generator(loaded.model, args.generator, engine)
    generator = engine_generator_record(engine) if args.generator == "engine" else {"name": "transformers"}
    cache = ReferenceCache(args.cache_dir or default_reference_dir(), ReferenceContext.of(loaded, generator))
    for task in prepare_tasks(config, loaded):
        scores = fill_references(task, generate, loaded.tokenizer, cache, batch_size=args.batch_size)
        mean = scores.task_score(task.spec.name, range(len(task.samples)))
        print(
            f"{task.spec.name}: full-cache score {mean:.2f} ({len(task.samples)} samples), {cache.path(task.settings)}"
        )


if __name__ == "__main__":
    main()
