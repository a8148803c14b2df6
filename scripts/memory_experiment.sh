#!/usr/bin/env bash
# The CPU memory experiment of README "Does an evolved NAMM save memory?": train a NAMM with
# experiment=cpu_memory (SmolLM2-135M, passkey + niah_single at ~2k tokens, objective memory_penalty), then
# evaluate it on held-out prompts (task.seed=4243: prompts training never saw) against the full cache and
# H2O, SnapKV and StreamingLLM, with 95% bootstrap intervals:
#   train    python train.py experiment=cpu_memory (continues the run if it exists)
#   matched  the trained tasks, each baseline at the NAMM's retained ratio
#   front    the trained tasks, each baseline at budgets 0.1/0.25/0.5/0.75 (the score-memory front)
#   heldout  a synthetic task it was not trained on (niah_multivalue), baselines matched to its ratio
#   4k       the trained tasks at 4k tokens, twice the training length, baselines matched
# Usage: bash scripts/memory_experiment.sh [stage ...]   (default: all; every stage resumes where it stopped)
# SAMPLES=30 sets the held-out prompts per task. On 2 cores each prompt costs ~5-10 s per policy.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=runs/cpu-memory/seed0
COMMON=(checkpoint="$RUN" task.seed=4243 task.num_samples="${SAMPLES:-30}" batch_size=4 progress=false
        compare=[full,namm,h2o,snapkv,streaming])
for stage in "${@:-train matched front heldout 4k}"; do
  for step in $stage; do
    case "$step" in
      train)   python train.py experiment=cpu_memory $([ -f "$RUN/latest.pt" ] && echo resume=auto) ;;
      matched) python evaluate.py task=retrieval "${COMMON[@]}" budget_attempts=2 name=cpu-memory-matched ;;
      front)   python evaluate.py task=retrieval "${COMMON[@]}" front=true match_budget=false name=cpu-memory-front ;;
      heldout) python evaluate.py task=niah_multivalue "${COMMON[@]}" name=cpu-memory-heldout ;;
      4k)      python evaluate.py task=retrieval task.context_length=4096 "${COMMON[@]}" name=cpu-memory-4k ;;
      *) echo "unknown stage '$step'; stages: train matched front heldout 4k" >&2; exit 2 ;;
    esac
  done
done
