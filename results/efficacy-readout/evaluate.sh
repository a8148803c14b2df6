#!/usr/bin/env bash
# Issue 21's third efficacy evaluation: the centre of results/efficacy-readout/train.sh after its last generation
# (checkpoint.pt: the run's latest.pt) on the 30 held-out niah_prose prompts of the earlier runs (task.seed=4243),
# in the grid's layout (per-KV-head storage, evict every 512 tokens, no update at the prompt's end), at the NAMM's
# own budget (half of each KV head), beside the full cache and KeyDiff matched to it (the strongest prefill-time
# baseline there; TOVA and StreamingLLM left out for time: results/efficacy-keydiff has them at this ratio).
# `time bash results/efficacy-readout/evaluate.sh`; its output is evaluate.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
python evaluate.py task=niah_prose task.context_length=2048 task.seed=4243 task.num_samples="${SAMPLES:-30}" \
  engine.eviction_mode=per_head engine.update_at_prefill_end=false schedule=prefill match_budget=true \
  eviction_maps=2 batch_size=4 progress=false checkpoint=results/efficacy-readout/checkpoint.pt \
  checkpoint_params=center "compare=[full,namm,keydiff]" name=efficacy-readout \
  out_dir="$PWD/results/efficacy-readout/niah_prose-prefill"
