#!/usr/bin/env bash
# Issue 21's second efficacy training (2026-12-07, 2-core CPU, SmolLM2-135M): conf/experiment/efficacy_keydiff.yaml
# says what it runs and why (the first run's settings, started from a fit to KeyDiff's ranking).
# resume=auto continues an interrupted run; train.log is its output.
set -euo pipefail
cd "$(dirname "$0")/../.."
python train.py experiment=efficacy_keydiff resume=auto "$@"
