#!/usr/bin/env bash
# Issue 21's efficacy search, continued (2026-12-07/08, 2-core CPU): the third run (results/efficacy-readout/, 3
# generations) stopped where a session ended and its run directory was not kept, so this run starts from its
# committed checkpoint (init_from: its best centre and CMA-ES distribution: step size, covariance, paths) with the
# same settings (seed=1), for 4 more generations, and validates on 16
# prompts instead of 8 (at the start and after generation 4). resume=auto continues an interrupted run; train.log
# is its output. It ran 12 generations (this, then `bash train.sh evo.generations=12`).
# 2026-12-08: as written this is now refused: task.num_samples=20 less 16 validation prompts leaves a training pool
# of 4, smaller than the 8 prompts a generation asks for, which the scorer used to shrink silently to the same 4
# prompts every generation (docs/experiments.md, the fourth run's correction). To rerun it as it ran, add
# evo.prompts_per_task=4; results/efficacy-readout-3/train.sh is the run with a pool of 184.
set -euo pipefail
cd "$(dirname "$0")/../.."
python train.py experiment=efficacy_keydiff name=efficacy-readout-2 seed=1 evo.distill.target=keydiff_exact \
  "evo.evolve=[readout_weight,readout_bias]" evo.sigma_relative=null evo.sigma=0.1 \
  init_from=results/efficacy-readout/checkpoint.pt evo.generations=4 evo.validation_prompts=16 evo.eval_interval=4 \
  resume=auto "$@"
