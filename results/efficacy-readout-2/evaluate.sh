#!/usr/bin/env bash
# Issue 21's fourth efficacy evaluation: the centre of results/efficacy-readout-2/train.sh after its last generation
# (checkpoint.pt: that run's latest.pt; the search mean, as the third run's evaluation used) on the same 30
# held-out niah_prose prompts (task.seed=4243), in the grid's layout (per-KV-head storage, evict every 512 tokens,
# no extra update at the prompt's end), at the NAMM's own budget (half of each KV head), beside the full cache and
# the three strongest prefill-time baselines there matched to it (KeyDiff, TOVA, StreamingLLM; the others answer
# 0-9 of 30: results/baselines/table.md). Prints the scores by answer depth as well.
# `time bash results/efficacy-readout-2/evaluate.sh`; its output is evaluate.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
python evaluate.py task=niah_prose task.context_length=2048 task.seed=4243 task.num_samples="${SAMPLES:-30}" \
  engine.eviction_mode=per_head engine.update_at_prefill_end=false schedule=prefill match_budget=true \
  eviction_maps=2 batch_size=4 progress=false checkpoint=results/efficacy-readout-2/checkpoint.pt \
  checkpoint_params=center "compare=[full,namm,keydiff,tova,streaming]" name=efficacy-readout-2 \
  out_dir="$PWD/results/efficacy-readout-2/niah_prose-prefill"
