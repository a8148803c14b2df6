"""One writer per run directory (namm/run_lock.py), checked with real processes: a second run on a busy
directory exits at once naming the holder; a run killed with kill -9 leaves no lock that blocks resume=auto,
and the temporary files of its interrupted writes are removed when the next run takes the directory."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from namm.atomic_io import atomic_write_text, remove_interrupted_writes
from namm.run_lock import HOLDER_FILE, RunDirectoryBusy, run_directory_lock

ROOT = Path(__file__).resolve().parents[1]
FAKE_RUN = [
    "scorer._target_=evolution_fake_scorer.FakeScorer",
    "+scorer.dimension=6",
    "evo.init=zeros",
    "evo.evolve=[]",
    "evo.objective=score",
    "evo.popsize=4",
    "evo.generations=3",
    "evo.eval_interval=1",
    "logger.mode=disabled",
    "name=fake",
]


def train_py(run_dir: Path, *extra: str) -> list[str]:
    return [sys.executable, str(ROOT / "train.py"), *FAKE_RUN, f"out_dir={run_dir}", *extra]


def environment(**extra: str) -> dict[str, str]:
    path = os.pathsep.join(filter(None, [str(ROOT / "tests"), str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, **extra}


def wait_for(path: Path, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None:
            pytest.fail(f"the first run exited ({process.returncode}): {process.stderr.read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"the first run did not reach {path.name} in {timeout} s")
        time.sleep(0.2)


def test_a_second_run_is_refused_and_a_killed_ones_lock_does_not_block_resume(tmp_path):
    run_dir, paused = tmp_path / "run", tmp_path / "paused"
    first = subprocess.Popen(
        train_py(run_dir),
        env=environment(FAKE_SCORER_PAUSE_AT=f"2:{paused}"),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(paused, first)  # generation 1 is saved, generation 2 is running

        second = subprocess.run(
            train_py(run_dir, "resume=auto"),
            check=False,
            env=environment(),
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert second.returncode != 0 and "Traceback" not in second.stderr
        assert f"{run_dir} is in use by another run (pid {first.pid} on " in second.stderr
        assert "train.py" in second.stderr  # the holder's command
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()

    assert (run_dir / ".namm-run.lock").exists() and (run_dir / HOLDER_FILE).exists()  # left by the kill
    leftover, unrelated = run_dir / ".latest.pt.k9x2m4qz.tmp", run_dir / ".notes.tmp"
    leftover.write_bytes(b"half a checkpoint")
    unrelated.write_text("not ours")
    resumed = subprocess.run(
        train_py(run_dir, "resume=auto"), check=False, env=environment(), cwd=tmp_path, capture_output=True, text=True
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stdout + resumed.stderr
    generations = [json.loads(line)["generation"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert generations == [0, 1, 2, 3]  # one writer: every generation once
    assert not leftover.exists() and unrelated.exists()
    assert not (run_dir / HOLDER_FILE).exists()  # released at the end


def test_the_lock_is_refused_while_held_and_free_after(tmp_path):
    with run_directory_lock(tmp_path, "train.py a=1"):
        holder = json.loads((tmp_path / HOLDER_FILE).read_text())
        assert holder["pid"] == os.getpid() and holder["command"] == "train.py a=1"
        busy = rf"{tmp_path} is in use by another run \(pid {os.getpid()} on"
        with pytest.raises(RunDirectoryBusy, match=busy), run_directory_lock(tmp_path, "train.py a=2"):
            pass
    with run_directory_lock(tmp_path, "train.py a=3"):
        pass


def test_only_atomic_write_leftovers_are_removed(tmp_path):
    atomic_write_text(tmp_path / "results.json", "{}")
    ours = [tmp_path / ".results.json.ab12cd34.tmp", tmp_path / ".best.pt.x_y1z2w3.tmp"]
    others = [tmp_path / ".notes.tmp", tmp_path / "keep.tmp", tmp_path / ".results.json.short.tmp"]
    (tmp_path / "nested").mkdir()
    nested = tmp_path / "nested" / ".latest.pt.ab12cd34.tmp"  # maybe another run's: left alone
    for path in [*ours, *others, nested]:
        path.write_text("x")
    assert remove_interrupted_writes(tmp_path) == sorted(ours)
    assert all(path.exists() for path in [*others, nested, tmp_path / "results.json"])
