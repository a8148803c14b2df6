#!/usr/bin/env bash
# Issue 21's fifth efficacy run (2026-12-08, 2-core CPU): the fourth run's settings and start (the third run's
# committed checkpoint and CMA-ES distribution), with one change. The fourth run left task.num_samples at 20, so
# 16 validation prompts left a training pool of 4: every generation scored the same 4 prompts, not 8 fresh ones
# (its fitness rose 0.71 -> 0.90 on them while validation did not move). Here the pool holds 184 prompts, so each
# generation draws 8 prompts (55 distinct in the 8 draws planned). resume=auto continues an interrupted run;
# train.log is its output (the full-cache references of a first attempt, 26 minutes, were cached and reused).
# Stopped by hand after generation 2: the candidates' ranking did not repeat across prompts (split-half Spearman
# -0.07 and 0.00: `python scripts/signal_reliability.py results/efficacy-readout-3/metrics.jsonl`), so the
# search could only walk at random; checkpoint.pt is its latest.pt then. docs/experiments.md, the fifth run.
set -euo pipefail
cd "$(dirname "$0")/../.."
python train.py experiment=efficacy_keydiff name=efficacy-readout-3 seed=1 evo.distill.target=keydiff_exact \
  "evo.evolve=[readout_weight,readout_bias]" evo.sigma_relative=null evo.sigma=0.1 \
  init_from=results/efficacy-readout/checkpoint.pt task.num_samples=200 evo.prompts_per_task=8 \
  evo.generations=8 evo.validation_prompts=16 evo.eval_interval=4 resume=auto "$@"
