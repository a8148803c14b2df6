#!/usr/bin/env bash
# Issue 21's third efficacy training (2026-12-07, 2-core CPU, SmolLM2-135M): the second run's settings
# (experiment=efficacy_keydiff: niah_prose at ~2k, per-KV-head budget 0.5, answer-likelihood signal, population 16,
# 8 prompts a generation) with the two levers that run asked for: the start is KeyDiff's ranking in closed form
# (evo.distill.target=keydiff_exact), and the search moves only the read-out (evo.evolve: 27 numbers, not 4,335),
# at a fixed step of 0.1 (sigma_relative would scale it to the novelty weight, ~11). resume=auto continues an
# interrupted run; train.log is its output.
set -euo pipefail
cd "$(dirname "$0")/../.."
python train.py experiment=efficacy_keydiff name=efficacy-readout evo.distill.target=keydiff_exact \
  "evo.evolve=[readout_weight,readout_bias]" evo.sigma_relative=null evo.sigma=0.1 resume=auto "$@"
