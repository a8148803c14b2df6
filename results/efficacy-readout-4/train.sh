#!/usr/bin/env bash
# Issue 21's sixth efficacy run (2026-12-08, 2-core CPU): the fifth run (results/efficacy-readout-3/) with the step
# size the signal scan points to. At the carried-over step size (0.087) the candidates' ranking did not repeat
# across prompts (split-half Spearman -0.07, 0.00); at 0.5 it does (0.28: about 0.44 between two draws of 8
# prompts; results/efficacy-readout-3/signal-scan.log). init_from carries a separable CMA-ES's step size, so this
# run uses full-covariance CMA-ES (27 dimensions) to start from the third run's centre with a fresh step size of
# 0.5. Validation (16 prompts) at the start and after generation 3. resume=auto continues an interrupted run.
# Ran 2026-12-08 04:10-04:50 alone (train.log, metrics.jsonl; checkpoint.pt is its latest.pt). The signal was real
# (signal-reliability.md: split-half 0.58 and 0.47, p = 0.005) and the centre went downhill: validation 13 -> 9 of
# 16 (docs/experiments.md, the sixth run).
set -euo pipefail
cd "$(dirname "$0")/../.."
python train.py experiment=efficacy_keydiff name=efficacy-readout-4 seed=1 evo.distill.target=keydiff_exact \
  "evo.evolve=[readout_weight,readout_bias]" evo.searcher=cmaes_full evo.sigma_relative=null evo.sigma=0.5 \
  init_from=results/efficacy-readout/checkpoint.pt task.num_samples=200 evo.prompts_per_task=8 \
  evo.generations=3 evo.validation_prompts=16 evo.eval_interval=3 resume=auto "$@"
