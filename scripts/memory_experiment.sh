#!/usr/bin/env bash
# The CPU memory experiment of docs/experiments.md: train a NAMM with
# experiment=cpu_memory (SmolLM2-135M, passkey + niah_single at ~2k tokens, objective memory_penalty), then
# evaluate it on held-out prompts (task.seed=4243: prompts training never saw) against the full cache and
# H2O, SnapKV and StreamingLLM, with 95% bootstrap intervals:
#   train    python train.py experiment=cpu_memory (continues the run if it exists)
#   front    the trained tasks: each baseline at the NAMM's retained ratio and at budgets 0.1/0.25/0.5/0.75
#            (the score-memory front); the baselines' samples do not depend on the NAMM, so re-evaluating a
#            later checkpoint of the same run reruns only the NAMM and the matched points
#   heldout  a synthetic task it was not trained on (niah_multivalue), baselines matched to its ratio
#   4k       the trained tasks at 4k tokens, twice the training length, baselines matched
# Usage: bash scripts/memory_experiment.sh [stage ...]   (default: all; every stage resumes where it stopped)
# SAMPLES=30 sets the held-out prompts per task; EXTRA="key=value ..." adds evaluate.py overrides (e.g.
# EXTRA="match_budget=false" when the NAMM keeps ~everything, so matching would rerun the full cache).
# On 2 cores a baseline costs ~3-4 s per prompt at 2k tokens, the NAMM more (its updates compute attention
# features); the front stage is ~1 hour, heldout ~20 min, 4k ~1 hour.
set -euo pipefail
cd "$(dirname "$0")/.."
RUN=runs/cpu-memory/seed0
COMMON=(checkpoint="$RUN" task.seed=4243 task.num_samples="${SAMPLES:-30}" batch_size=4 progress=false
        "compare=[full,namm,h2o,snapkv,streaming]")
read -ra EXTRA_ARGS <<< "${EXTRA:-}"   # split on whitespace: no spaces inside one override
COMMON+=(${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"})
for stage in "${@:-train front heldout 4k}"; do
  for step in $stage; do
    case "$step" in
      train)   python train.py experiment=cpu_memory $([ -f "$RUN/latest.pt" ] && echo resume=auto) ;;
      front)   python evaluate.py task=retrieval "${COMMON[@]}" front=true budget_attempts=2 name=cpu-memory-front ;;
      heldout) python evaluate.py task=niah_multivalue "${COMMON[@]}" name=cpu-memory-heldout ;;
      4k)      python evaluate.py task=retrieval task.context_length=4096 "${COMMON[@]}" name=cpu-memory-4k ;;
      *) echo "unknown stage '$step'; stages: train front heldout 4k" >&2; exit 2 ;;
    esac
  done
done
