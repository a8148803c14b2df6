#!/usr/bin/env bash
# Issue 21's efficacy training (2026-12-07, 2-core CPU, SmolLM2-135M): conf/experiment/efficacy.yaml says what
# it runs and why. The measured run was launched with those settings written out as command-line overrides on the
# previous efficacy.yaml; composing that command and this one gives the same config (checked before committing).
# resume=auto continues an interrupted run; train.log is its output.
set -euo pipefail
cd "$(dirname "$0")/../.."
python train.py experiment=efficacy name=efficacy-prose resume=auto "$@"
