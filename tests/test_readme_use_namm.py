"""Every snippet of README.md's "Use an evolved NAMM" section, run in order on the tiny Llama.

The snippets name the default run and model; the test points them at a training run written in a temporary
folder and at `tiny-llama`, and otherwise runs them as printed.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from evaluation_helpers import TINY, evicting_parameters, training_run

pytestmark = pytest.mark.filterwarnings("ignore:`past_key_values` is deprecated:FutureWarning")  # 5.24 spells it cache
ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Use an evolved NAMM"
RUN, FOLDER, MODEL = "runs/smollm2-135m-passkey/seed0", "namms/passkey-smollm2", 'name="smollm2-135m"'


def section_snippets() -> list[tuple[str, str]]:
    """(language, code) of each fenced block between the section's heading and the next `## ` heading."""
    text = (ROOT / "README.md").read_text()
    start = text.index(SECTION) + len(SECTION)
    end = text.find("\n## ", start)
    body = text[start : end if end >= 0 else None]
    return re.findall(r"```(python|bash)\n(.*?)```", body, flags=re.DOTALL)


def test_the_section_has_export_load_generate_and_evaluate_snippets():
    snippets = section_snippets()
    assert [language for language, _ in snippets] == ["bash", "python", "python", "bash"]
    load_and_generate = [line for line in snippets[1][1].splitlines() if line and not line.startswith("from ")]
    assert len(load_and_generate) == 5  # the promised five lines: model, NAMM, input, generate, ratio


def run_bash(code: str, tmp_path: Path) -> None:
    for line in filter(None, code.splitlines()):
        command = shlex.split(line)
        assert command[0] == "python"
        if command[1] == "evaluate.py":  # a small evaluation: 3 short prompts, two policies
            command += [*TINY, "compare=[full,namm]", "task.num_samples=1", f"out_dir={tmp_path / 'eval'}"]
        subprocess.run([sys.executable, *command[1:]], cwd=ROOT, check=True, timeout=600)


def test_every_snippet_runs_on_a_tiny_model(tmp_path, capsys):
    run = training_run(tmp_path / "run", evicting_parameters())
    namespace: dict = {}
    for language, code in section_snippets():
        code = code.replace(RUN, str(run)).replace(FOLDER, str(tmp_path / FOLDER)).replace(MODEL, 'name="tiny-llama"')
        if language == "bash":
            run_bash(code, tmp_path)
        else:
            exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 (the README is ours)
    assert (tmp_path / FOLDER / "config.json").is_file()
    assert 0.0 < namespace["cache"].retained_ratio < 1.0  # the exported NAMM evicted
    assert [row.update_positions[:2] for row in namespace["h2o"].memory()] == [[128, 256], [128, 256]]
    printed = capsys.readouterr().out
    assert re.search(r"kept \d+% of the KV cache", printed)
    assert (tmp_path / "eval" / "results.json").is_file()
