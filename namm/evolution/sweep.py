"""One job of `python train.py [-m ...]`: a clean error in a single run, an isolated failure in a sweep.

Each job holds the lock of its run directory while it runs (namm/run_lock.py: one writer per directory).
A single run that fails on a setting exits with the message alone (it names the key and the fix). In a
multirun, a failing job must not stop the jobs after it: it logs its error, records it under
`<sweep dir>/job_status/`, and returns; once every job has run, `SweepSummary` prints which jobs finished
and which failed, writes `sweep_summary.json` beside them, and exits non-zero if any failed. The records are
files because SLURM jobs run in other processes (and other machines) than the one that launched them.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from namm.atomic_io import atomic_write_json
from namm.errors import ConfigError, CorruptFileError
from namm.evolution.checkpoint import CheckpointError
from namm.read_back import read_json
from namm.run_lock import run_directory_lock

log = logging.getLogger(__name__)

JOB_STATUS_DIR = "job_status"
SUMMARY_FILE = "sweep_summary.json"
CLEAR_ERRORS = (ConfigError, CheckpointError)  # their message is the whole story; a traceback would bury it


def run_job(cfg: DictConfig, job: Callable[[DictConfig], Any], program: str = "train.py") -> Any:
    """`job(cfg)`, with failures reported as described above; returns its value (None if it failed)."""
    hydra = HydraConfig.get()
    if hydra.mode != RunMode.MULTIRUN:
        try:
            return _locked_job(cfg, job, program)
        except CLEAR_ERRORS as error:
            raise SystemExit(f"{program}: {error}") from error
    try:
        value = _locked_job(cfg, job, program)
    except CLEAR_ERRORS as error:
        log.error("%s: job %s failed: %s", program, hydra.job.num, error)
        _write_status(hydra, cfg, error=str(error))
        return None
    except Exception as error:
        log.exception("%s: job %s failed", program, hydra.job.num)
        _write_status(hydra, cfg, error=f"{type(error).__name__}: {error}")
        return None
    _write_status(hydra, cfg, error=None)
    return value


def _locked_job(cfg: DictConfig, job: Callable[[DictConfig], Any], program: str) -> Any:
    """`job(cfg)` holding the lock of its run directory (`out_dir`): one writer per directory."""
    with run_directory_lock(Path(cfg.out_dir), " ".join([program, *sys.argv[1:]])):
        return job(cfg)


def _write_status(hydra: Any, cfg: DictConfig, error: str | None) -> None:
    record = {
        "job": int(hydra.job.num),
        "overrides": list(hydra.overrides.task),
        "out_dir": str(cfg.get("out_dir", "")),
        "status": "failed" if error else "finished",
        "error": error,
    }
    atomic_write_json(Path(hydra.sweep.dir) / JOB_STATUS_DIR / f"{int(hydra.job.num):05d}.json", record)


STATUS_FIELDS = {"job": int, "overrides": list, "out_dir": str, "status": str, "error": (str, type(None))}
STATUS_FIX = "delete it and rerun that job, or give its run directory instead of the sweep directory"


def read_job_status(path: Path) -> dict[str, Any]:
    """One job's record, checked field by field (raises CorruptFileError naming the file and the field)."""
    record = read_json(path, STATUS_FIX)
    if not isinstance(record, dict):
        raise CorruptFileError(f"{path} holds {type(record).__name__}, not a job record; {STATUS_FIX}")
    for name, kind in STATUS_FIELDS.items():
        if isinstance(record.get(name), bool) or not isinstance(record.get(name), kind):
            raise CorruptFileError(f"{path}: field {name} is {record.get(name)!r}; {STATUS_FIX}")
    if record["status"] not in ("finished", "failed") or not all(isinstance(o, str) for o in record["overrides"]):
        raise CorruptFileError(f"{path}: field status or overrides is malformed ({record!r}); {STATUS_FIX}")
    return record


def read_job_statuses(sweep_dir: Path) -> list[dict[str, Any]]:
    folder = sweep_dir / JOB_STATUS_DIR
    return [read_job_status(path) for path in sorted(folder.glob("*.json"))] if folder.is_dir() else []


class SweepSummary(Callback):
    """Hydra callback (conf/train.yaml `hydra.callbacks`): the end-of-sweep report."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        try:
            jobs = read_job_statuses(sweep_dir)
        except CorruptFileError as error:
            raise SystemExit(f"sweep summary: {error}") from error
        failed = [job for job in jobs if job["status"] == "failed"]
        atomic_write_json(sweep_dir / SUMMARY_FILE, {"jobs": jobs, "finished": len(jobs) - len(failed)})
        lines = [f"\nSweep: {len(jobs) - len(failed)} of {len(jobs)} job(s) finished ({sweep_dir / SUMMARY_FILE})"]
        for job in jobs:
            overrides = " ".join(job["overrides"]) or "(no overrides)"
            where = job["error"] if job["error"] else job["out_dir"]
            lines.append(f"  job {job['job']} [{job['status']}] {overrides}: {where}")
        print("\n".join(lines), flush=True)
        if failed:
            raise SystemExit(f"{len(failed)} of {len(jobs)} sweep job(s) failed: see above")
