"""scripts/signal_reliability.py: does a generation's candidate ranking repeat on other prompts? Checked on
hand-written metrics.jsonl files whose answer is known: a ranking every prompt shares, and one no two share."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tasks.evaluation.rank_correlation import projections

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "signal_reliability.py"


def table(tmp_path: Path, generations: dict[int, dict[str, list[float | None]]]) -> list[list[str]]:
    path = tmp_path / "metrics.jsonl"
    lines = [{"generation": 0, "search/sigma": 0.1}]  # the start's record has no candidates
    lines += [{"generation": g, "candidates/prompt_scores": scores} for g, scores in generations.items()]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    output = subprocess.run([sys.executable, str(SCRIPT), str(path)], check=True, capture_output=True, text=True)
    rows = [line.strip("|").split("|") for line in output.stdout.splitlines()[2:]]
    return [[cell.strip() for cell in row] for row in rows]


def test_a_shared_ranking_repeats_a_reversing_one_anti_repeats_and_noise_does_not(tmp_path):
    shared = {f"t:{p}": [float(c) + 10 * p for c in range(5)] for p in range(8)}  # same order on every prompt
    # candidate 4 failed (None): left out. The rest rank 0 < 1 < 2 < 3 on odd prompts and the reverse on even ones:
    # a half with more odd prompts leans one way and the other half the other way (even splits tie and are skipped)
    reversing = {f"t:{p}": [float(c if p % 2 else -c) for c in range(4)] + [None] for p in range(8)}
    generator = torch.Generator().manual_seed(0)
    noise = {f"t:{p}": torch.randn(32, generator=generator).tolist() for p in range(64)}  # none is better
    rows = table(tmp_path, {1: shared, 2: reversing, 3: noise})
    shared_row = rows[0]
    assert shared_row[:4] == ["1", "8", "5", "1.00"] and shared_row[5:] == ["1.00", "1.00", "1.00"]
    assert float(shared_row[4]) < 0.05  # shuffling the candidates within prompts never ranks them this alike
    assert rows[1][:4] == ["2", "8", "4", "-1.00"] and rows[1][5:] == ["n/a"] * 3  # no positive reliability
    assert float(rows[1][4]) > 0.9
    assert rows[2][:3] == ["3", "64", "32"] and abs(float(rows[2][3])) < 0.25  # one draw: sd ~ 1/sqrt(31)
    assert float(rows[2][4]) > 0.05


def test_projections_by_hand():
    # 8 prompts: halves of 4, so the same size is 2x a half, 2x the draw 4x, 4x the draw 8x
    assert projections(0.5, 8) == pytest.approx([2 * 0.5 / 1.5, 4 * 0.5 / 2.5, 8 * 0.5 / 4.5])
    # 3 prompts: halves of 1, so 3x, 6x and 12x a half
    assert projections(0.5, 3) == pytest.approx([0.75, 3 / 3.5, 6 / 6.5])
    assert all(math.isnan(value) for value in projections(0.0, 8) + projections(-0.4, 8))
