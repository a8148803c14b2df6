#!/usr/bin/env bash
# Issue 21's headline evaluation as it ran (three commands, run one at a time: evaluate.log is the first's
# output, timed; evaluate-start.log the second's; evaluate-post_prefill.log the third's). The first: the
# efficacy NAMM after 3 generations (checkpoint.pt, the search's centre: results/efficacy/train.sh) on 30
# held-out niah_prose prompts (task.seed=4243: never drawn in training, which uses seed 42), in the schedule it
# was trained for (prefill: evict every 512 tokens, per-KV-head storage, the baselines grid's layout), against the
# full cache and the baselines that are strongest there (results/baselines/table.md), each matched to the NAMM's
# retained ratio; eviction maps of the first 2 prompts. Rerunning resumes from the sample stores.
set -euo pipefail
cd "$(dirname "$0")/../.."
# Every command scores the checkpoint on the same held-out prompts in the grid's layout; they differ in which
# parameters (centre or best), which schedule, which policies beside it and where the results go.
namm_on_held_out_prose() {
  python evaluate.py checkpoint=results/efficacy/checkpoint.pt task=niah_prose task.context_length=2048 \
    task.seed=4243 task.num_samples="${SAMPLES:-30}" engine.eviction_mode=per_head engine.update_at_prefill_end=false \
    batch_size=4 progress=false "$@"
}
namm_on_held_out_prose checkpoint_params=center schedule=prefill "compare=[full,namm,keydiff,tova,streaming,h2o]" \
  match_budget=true eviction_maps=2 name=efficacy-niah_prose out_dir="$PWD/results/efficacy/niah_prose-prefill" "$@"
# The distilled start (the checkpoint's best_params: generation 3's validation only tied it), same prompts:
# did three generations change anything?
namm_on_held_out_prose checkpoint_params=best schedule=prefill "compare=[full,namm]" name=efficacy-start-niah_prose \
  out_dir="$PWD/results/efficacy/niah_prose-prefill-start" "$@"
# The same NAMM after prefill (schedule=post_prefill: one compression once the prompt is in; peak memory is the
# full prompt's cache), beside the two strongest post-prefill baselines of the grid, matched to its ratio.
namm_on_held_out_prose checkpoint_params=center schedule=post_prefill "compare=[full,namm,keydiff,tova]" \
  match_budget=true name=efficacy-post-niah_prose out_dir="$PWD/results/efficacy/niah_prose-post_prefill" "$@"
