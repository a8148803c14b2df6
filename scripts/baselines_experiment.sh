#!/usr/bin/env bash
# The baselines experiment of issue 22 (results/baselines/): every baseline, with and without AdaKV's budget
# allocation, at retained 0.1/0.25/0.5/0.75 (the score-memory front) in both schedules, on held-out prompts
# (task.seed=4243) of niah_prose and niah_single at ~2k tokens and passkey at ~1k, SmolLM2-135M on CPU, 95% bootstrap
# intervals, peak live / storage bytes per sample. One evaluate.py run per (task, schedule, allocation):
#   results/baselines/<task>-<schedule>-<allocation>/results.json   (labels <policy>@<ratio>, plus full)
# kvzip runs in post_prefill only (it compresses once the prompt is in). Every run uses per-head storage
# (engine.eviction_mode=per_head), which adakv needs, so the two allocations are compared on one layout.
# Usage: bash scripts/baselines_experiment.sh [task ...]   (default: niah_prose niah_single passkey; every run
# resumes). SAMPLES=30 prompts per task; RATIOS="0.1 0.25 0.5 0.75"; SCHEDULES="prefill post_prefill";
# ALLOCATIONS="none adakv"; EXTRA="key=value ..." adds evaluate.py overrides.
# Cost: 140 policy runs x SAMPLES prompts per task; measured ~13 s per prompt and policy at 2k on one thread
# (kvzip three to four times that), about 15 hours per 2k task (docs/policies.md#the-baselines-experiment).
set -euo pipefail
cd "$(dirname "$0")/.."
SAMPLES="${SAMPLES:-30}"
read -ra RATIO_LIST <<< "${RATIOS:-0.1 0.25 0.5 0.75}"
read -ra SCHEDULE_LIST <<< "${SCHEDULES:-prefill post_prefill}"
read -ra ALLOCATION_LIST <<< "${ALLOCATIONS:-none adakv}"
read -ra EXTRA_ARGS <<< "${EXTRA:-}"   # split on whitespace: no spaces inside one override
PREFILL_POLICIES=(streaming h2o snapkv knorm random tova expected_attention keydiff)
join() { local IFS=,; echo "$*"; }
for task in "${@:-niah_prose niah_single passkey}"; do
  for name in $task; do
    case "$name" in
      niah_single|niah_prose) length=2048 ;;
      passkey)     length=1024 ;;
      *) echo "unknown task '$name'; tasks: niah_prose niah_single passkey" >&2; exit 2 ;;
    esac
    for schedule in "${SCHEDULE_LIST[@]}"; do
      policies=("${PREFILL_POLICIES[@]}")
      [ "$schedule" = post_prefill ] && policies+=(kvzip)
      for allocation in "${ALLOCATION_LIST[@]}"; do
        allocations=()
        for policy in "${policies[@]}"; do allocations+=("baselines.$policy.allocation=$allocation"); done
        run="$name-$schedule-$allocation"
        python evaluate.py task="$name" task.context_length="$length" task.seed=4243 task.num_samples="$SAMPLES" \
          schedule="$schedule" engine.eviction_mode=per_head "compare=[full,$(join "${policies[@]}")]" \
          "${allocations[@]}" front=true "front_budgets=[$(join "${RATIO_LIST[@]}")]" match_budget=false \
          batch_size=4 progress=false name="baselines-$run" out_dir="$PWD/results/baselines/$run" \
          ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"}
      done
    done
  done
done
