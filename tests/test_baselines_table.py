"""scripts/baselines_table.py: the grid's runs joined into one table, checked on hand-written results.json files."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "baselines_table.py"


def _row(label: str, score: float, interval: list[float], budget: float | None, live_bytes: int) -> dict:
    return {
        "policy": label,
        "task": "niah_prose",
        "score": score,
        "score_interval": interval,
        "budget": budget,
        "prompt_retained_ratio": budget or 1.0,
        "mean_peak_live_kv_bytes": live_bytes,
        "num_samples": 30,
    }


def _write_run(directory: Path, schedule: str, allocation: str, rows: list[dict]) -> None:
    directory.mkdir(parents=True)
    policies = [{"label": row["policy"], "allocation": "none" if row["budget"] is None else allocation} for row in rows]
    document = {"engine": {"schedule": schedule}, "policies": policies, "results": rows}
    (directory / "results.json").write_text(json.dumps(document))


def test_table_joins_schedules_and_allocations_and_names_the_strongest(tmp_path: Path) -> None:
    mib = 2**20
    _write_run(
        tmp_path / "niah_prose-prefill-none",
        "prefill",
        "none",
        [
            _row("full", 100.0, [88.6, 100.0], None, 90 * mib),
            _row("h2o@0.25", 10.0, [3.5, 25.6], 0.25, 30 * mib),
            _row("tova@0.25", 40.0, [24.6, 57.7], 0.25, 31 * mib),
        ],
    )
    _write_run(
        tmp_path / "niah_prose-prefill-adakv",
        "prefill",
        "adakv",
        [_row("full", 100.0, [88.6, 100.0], None, 90 * mib), _row("h2o@0.25", 40.0, [24.6, 57.7], 0.25, 32 * mib)],
    )
    _write_run(
        tmp_path / "niah_prose-post_prefill-none",
        "post_prefill",
        "none",
        [_row("full", 100.0, [88.6, 100.0], None, 90 * mib), _row("kvzip@0.25", 90.0, [74.4, 96.5], 0.25, 90 * mib)],
    )
    (tmp_path / "unfinished-run").mkdir()  # a run still going has no results.json yet
    subprocess.run([sys.executable, str(SCRIPT), "--results-dir", str(tmp_path)], check=True, capture_output=True)

    table = (tmp_path / "table.md").read_text().splitlines()
    assert table[0] == "### niah_prose (30 prompts)"
    assert "| policy | prefill @0.25 | post_prefill @0.25 |" in table
    assert "| full | 100 [89, 100] | 100 [89, 100] |" in table
    assert "| h2o | 10 [4, 26] | - |" in table
    assert "| h2o+adakv | 40 [25, 58] | - |" in table
    assert "| kvzip | - | 90 [74, 96] |" in table
    assert "| peak live KV MiB | 30.0-32.0 | 90.0-90.0 |" in table
    assert "| **strongest** | h2o+adakv, tova | kvzip |" in table
    assert (tmp_path / "front-niah_prose.png").stat().st_size > 0


def test_no_finished_run_is_an_error_that_names_the_script(tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--results-dir", str(tmp_path)], check=False, capture_output=True, text=True
    )
    assert run.returncode != 0
    assert "scripts/baselines_experiment.sh" in run.stderr


def test_every_policy_of_the_grid_has_its_own_style_and_shares_its_colour_with_its_allocation() -> None:
    # the grid's 9 baselines with and without adakv: 18 lines, none drawn like another, and h2o+adakv is h2o's
    # colour dashed; a style depends on the policy alone, so two panels drawing one policy draw it alike
    from scripts.baselines_table import policy_styles

    baselines = ["streaming", "h2o", "snapkv", "knorm", "random", "tova", "expected_attention", "keydiff", "kvzip"]
    styles = policy_styles(baselines + [f"{name}+adakv" for name in baselines])
    drawn = {(style["color"], style["marker"], style["linestyle"]) for style in styles.values()}
    assert len(drawn) == 18
    assert len({(styles[name]["color"], styles[name]["marker"]) for name in baselines}) == 9
    assert styles["h2o+adakv"]["color"] == styles["h2o"]["color"]
    assert (styles["h2o+adakv"]["linestyle"], styles["h2o"]["linestyle"]) == ("--", "-")
