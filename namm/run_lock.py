"""One writer per run directory: training and evaluation hold a lock on their `out_dir` while they run.

Two processes writing one run directory interleave metrics.jsonl and train.log and leave checkpoints from
different searches side by side, so the second one exits at once, naming the directory and the process that
holds it. The lock is `filelock`'s (an OS lock, `flock`, on `<out_dir>/.namm-run.lock`): the kernel drops it
when its process dies, however it dies, so a run killed with `kill -9` never blocks `resume=auto`. Who holds
it is written beside it (`.namm-run.lock.holder.json`: pid, host, command, start time) for the message.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from namm.atomic_io import atomic_write_json, remove_interrupted_writes
from namm.errors import ConfigError, CorruptFileError
from namm.read_back import read_json

log = logging.getLogger(__name__)

LOCK_FILE = ".namm-run.lock"
HOLDER_FILE = ".namm-run.lock.holder.json"


class RunDirectoryBusy(ConfigError):
    """Another live process holds the run directory's lock."""


def _describe_holder(run_dir: Path) -> str:
    try:
        holder = read_json(run_dir / HOLDER_FILE, "")
        return f"pid {holder['pid']} on {holder['host']}, started {holder['started']}: {holder['command']}"
    except (OSError, CorruptFileError, KeyError, TypeError):
        return "a process that has not recorded itself yet"


@contextmanager
def run_directory_lock(run_dir: str | Path, command: str) -> Iterator[None]:
    """Hold `run_dir`'s lock for the block (raises RunDirectoryBusy at once if another process holds it).
    Once held, the temporary files of writes an earlier, killed run left behind are removed."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise RunDirectoryBusy(
            f"{run_dir} is in use by another run ({_describe_holder(run_dir)}). One directory takes one writer: "
            "wait for that run to finish (or stop it), or give this one another out_dir= (or name=/seed=)."
        ) from None
    try:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        atomic_write_json(run_dir / HOLDER_FILE, holder)
        for leftover in remove_interrupted_writes(run_dir):
            log.info("removed %s, left by an interrupted write", leftover)
        yield
    finally:
        (run_dir / HOLDER_FILE).unlink(missing_ok=True)  # before the release: never a successor's record
        lock.release()
