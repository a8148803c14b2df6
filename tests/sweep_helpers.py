"""Running an entry point as a Hydra multirun in a subprocess, as a user would (`python train.py -m ...`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_multirun(
    script: str, overrides: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, timeout: int
) -> subprocess.CompletedProcess[str]:
    """`python <script> -m <overrides>` run in `tmp_path`, its sweep directory `tmp_path/sweep`, with a
    reference cache of its own."""
    monkeypatch.setenv("NAMM_REFERENCE_CACHE", str(tmp_path / "references"))
    command = [sys.executable, str(ROOT / script), "-m", *overrides, f"hydra.sweep.dir={tmp_path / 'sweep'}"]
    return subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=timeout)
