"""scripts/check_golden.py itself: a check with nothing to check fails (no golden set needed)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_a_part_that_compares_nothing_fails(tmp_path):
    (tmp_path / "module").mkdir()
    (tmp_path / "manifest.json").write_text("{}")
    (tmp_path / "module" / "module_meta.json").write_text(json.dumps({"variants": {}}))
    command = [sys.executable, str(ROOT / "scripts" / "check_golden.py"), str(tmp_path), "--part", "module"]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "FAIL  module (module_meta.json lists no variants): nothing compared" in done.stdout
    assert "0 of 1 checks passed" in done.stdout
