#!/usr/bin/env bash
# The order the baselines grid runs in (session of 2026-12-07; run.log: lines 1-2 finished, line 3 was stopped
# when the session ended, lines 4-5 have not run; from a worktree pinned at one commit so every
# prompt is scored by the same code; output in results/baselines/run.log). Most informative slice first:
# varied prose at 0.25 in both schedules (where key novelty is known to fall), then 0.5, then AdaKV.
# Each line resumes the samples the lines before it scored (the sample stores are keyed by the settings).
set -euo pipefail
cd "$(dirname "$0")/../.."
RATIOS="0.25" ALLOCATIONS=none bash scripts/baselines_experiment.sh niah_prose
RATIOS="0.25 0.5" ALLOCATIONS=none bash scripts/baselines_experiment.sh niah_prose
RATIOS="0.25 0.5" ALLOCATIONS=adakv bash scripts/baselines_experiment.sh niah_prose
RATIOS="0.1 0.25 0.5 0.75" ALLOCATIONS=none bash scripts/baselines_experiment.sh niah_prose
RATIOS="0.25 0.5" ALLOCATIONS=none bash scripts/baselines_experiment.sh niah_single passkey
# 2026-12-08: the machine was replaced between sessions, so line 3's AdaKV samples were lost. What ran next was
# passkey's prefill slice (from /work/main at b254223, alone on 2 cores except for CI during its first 14 minutes;
# 1480 s; its output is results/baselines/passkey-prefill-none/run.log):
#   RATIOS="0.25 0.5" SCHEDULES=prefill ALLOCATIONS=none bash scripts/baselines_experiment.sh passkey
