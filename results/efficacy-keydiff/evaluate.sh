#!/usr/bin/env bash
# Issue 21's second efficacy evaluation, run one at a time as `time bash evaluate.sh start`, then `centre`,
# `quarter`, `post_prefill`, `multivalue`, `double_length` and `three_quarters` (each one's output is the log
# named beside it). The NAMM of results/efficacy-keydiff/train.sh on 30 held-out prompts (task.seed=4243; training
# draws with seed 42; niah_prose's are the first run's and the baselines grid's) in the grid's layout (per-KV-head
# storage, evict every 512 tokens), against the full cache and the strongest baselines, each matched to the NAMM's
# retained ratio; eviction maps of the first 2 prompts.
set -euo pipefail
cd "$(dirname "$0")/../.."
# namm_held_out TASK LENGTH SCHEDULE [override ...]
namm_held_out() {
  local task="$1" length="$2" schedule="$3"
  shift 3
  python evaluate.py task="$task" task.context_length="$length" task.seed=4243 task.num_samples="${SAMPLES:-30}" \
    engine.eviction_mode=per_head engine.update_at_prefill_end=false schedule="$schedule" match_budget=true \
    eviction_maps=2 batch_size=4 progress=false "$@"
}
namm_on_held_out_prose() { namm_held_out niah_prose 2048 prefill "$@"; }
# The full cache's answers do not depend on the NAMM, and its sample store has the same key in every command: the
# centre's and the quarter's runs read the start's back ("- (reused)" in their logs).
reuse_full_cache_store() {
  mkdir -p "$1/samples/full"
  cp results/efficacy-keydiff/niah_prose-prefill-start/samples/full/*.jsonl "$1/samples/full/"
}
# evaluate-start.log: the distilled start (start.pt: best.pt as generation 0's validation wrote it) beside
# KeyDiff, the policy it was fitted to copy.
start() {
  namm_on_held_out_prose checkpoint=results/efficacy-keydiff/start.pt checkpoint_params=best \
    "compare=[full,namm,keydiff]" name=efficacy-keydiff-start \
    out_dir="$PWD/results/efficacy-keydiff/niah_prose-prefill-start"
}
# evaluate.log: the search's centre after the last generation, beside the baselines.
centre() {
  reuse_full_cache_store results/efficacy-keydiff/niah_prose-prefill
  namm_on_held_out_prose checkpoint=results/efficacy-keydiff/checkpoint.pt checkpoint_params=center \
    "compare=[full,namm,keydiff,tova,streaming,h2o]" name=efficacy-keydiff \
    out_dir="$PWD/results/efficacy-keydiff/niah_prose-prefill"
}
# The same centre at another budget (its checkpoint's NAMM settings, namm.budget_ratio=RATIO), beside the three
# strongest prefill-time baselines, matched to it.
centre_at_budget() {
  local ratio="$1"
  reuse_full_cache_store "results/efficacy-keydiff/niah_prose-prefill-$ratio"
  namm_on_held_out_prose checkpoint=results/efficacy-keydiff/checkpoint.pt checkpoint_params=center namm=bam \
    namm.key_novelty=true namm.protect_first=4 namm.feature_bound=3 namm.budget_ratio="$ratio" \
    "compare=[full,namm,keydiff,tova,streaming]" name="efficacy-keydiff-$ratio" \
    out_dir="$PWD/results/efficacy-keydiff/niah_prose-prefill-$ratio"
}
# evaluate-0.25.log: a quarter of the memory, the ratio where every prefill-time baseline loses the needle
# (results/baselines).
quarter() { centre_at_budget 0.25; }
# evaluate-0.75.log: three quarters, the front's third point.
three_quarters() { centre_at_budget 0.75; }
# evaluate-post_prefill.log: the centre in the other schedule (one compression once the whole prompt, question
# included, is in; peak memory is the full prompt's cache), beside the two strongest post-prefill baselines of the
# grid (KeyDiff 83, TOVA 80 at 0.5).
post_prefill() {
  namm_held_out niah_prose 2048 post_prefill checkpoint=results/efficacy-keydiff/checkpoint.pt \
    checkpoint_params=center "compare=[full,namm,keydiff,tova]" name=efficacy-keydiff-post \
    out_dir="$PWD/results/efficacy-keydiff/niah_prose-post_prefill"
}
# evaluate-multivalue.log: a task it was not trained on (niah_multivalue: four values of one key, all to be
# recalled), same length and schedule.
multivalue() {
  namm_held_out niah_multivalue 2048 prefill checkpoint=results/efficacy-keydiff/checkpoint.pt \
    checkpoint_params=center "compare=[full,namm,keydiff,tova,streaming]" name=efficacy-keydiff-multivalue \
    out_dir="$PWD/results/efficacy-keydiff/niah_multivalue-prefill"
}
# evaluate-4k.log: twice the training length (niah_prose at ~4k tokens), same schedule and budget, beside the two
# strongest baselines at 2k (StreamingLLM, tied with TOVA there, left out for time).
double_length() {
  namm_held_out niah_prose 4096 prefill checkpoint=results/efficacy-keydiff/checkpoint.pt \
    checkpoint_params=center "compare=[full,namm,keydiff,tova]" name=efficacy-keydiff-4k \
    out_dir="$PWD/results/efficacy-keydiff/niah_prose-4k-prefill"
}
for command in ${@:-start centre quarter three_quarters post_prefill multivalue double_length}; do "$command"; done
