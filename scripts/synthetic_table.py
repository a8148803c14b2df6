"""Full-cache scores of a model on every synthetic task at several lengths, as a markdown table.

    python scripts/synthetic_table.py                       # SmolLM2-135M, 1k/2k/4k tokens, 20 samples each
    python scripts/synthetic_table.py --device cuda --num-samples 50 --json synthetic.json
    python scripts/synthetic_table.py --generator transformers   # plain transformers greedy instead of the engine

Generation goes through the tasks/runner.py seam: by default the NAMM engine with the full-cache policy
(the pipeline training scores with); `--generator transformers` uses `model.generate` as an independent check.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from namm.models import ModelConfig, load_model
from tasks import TaskConfig, prepare_tasks, run_task
from tasks.generators import full_cache_generator
from tasks.synthetic import SYNTHETIC_TASKS


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m", help="a namm.models name, hub id or local path")
    parser.add_argument("--tasks", nargs="+", default=list(SYNTHETIC_TASKS), choices=list(SYNTHETIC_TASKS))
    parser.add_argument("--lengths", nargs="+", type=int, default=[1024, 2048, 4096], help="prompt tokens")
    parser.add_argument("--num-samples", type=int, default=20)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--generator", choices=["engine", "transformers"], default="engine")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:<index> or auto")
    parser.add_argument("--dtype", default="float32", help="float32, bfloat16, float16 or auto")
    parser.add_argument("--chat-template", choices=["auto", "on", "off"], default="auto")
    parser.add_argument("--json", help="also write every run (settings, predictions, scores) to this file")
    return parser.parse_args()


def markdown_table(table: dict[str, dict[int, float]], lengths: list[int]) -> str:
    header = " | ".join(f"{n // 1024}k" if n % 1024 == 0 else str(n) for n in lengths)
    rows = [f"| {name} | " + " | ".join(f"{scores[n]:.1f}" for n in lengths) + " |" for name, scores in table.items()]
    return "\n".join([f"| task | {header} |", "|---|" + "---|" * len(lengths), *rows])


def main() -> None:
    args = parse_args()
    loaded = load_model(ModelConfig(name=args.model, device=args.device, dtype=args.dtype))
    generate = full_cache_generator(loaded.model, args.generator)
    table: dict[str, dict[int, float]] = {name: {} for name in args.tasks}
    runs = []
    for length in args.lengths:
        config = TaskConfig(
            name="synthetic_table",
            tasks=args.tasks,
            num_samples=args.num_samples,
            context_length=length,
            seed=args.seed,
            use_chat_template={"auto": None, "on": True, "off": False}[args.chat_template],
        )
        for task in prepare_tasks(config, loaded):
            start = time.perf_counter()
            run = run_task(task, generate, loaded.tokenizer, batch_size=args.batch_size, progress=True)
            table[task.spec.name][length] = run.score
            runs.append({**run.to_dict(), "generator": args.generator, "seconds": time.perf_counter() - start})
    chat = runs[0]["settings"]["use_chat_template"]
    print(f"\nFull-cache {loaded.name}, greedy ({args.generator}), chat template {'on' if chat else 'off'}, "
          f"{args.num_samples} samples per cell, seed {args.seed}; score 0-100\n")  # fmt: skip
    print(markdown_table(table, args.lengths))
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
