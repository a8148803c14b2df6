"""Weights & Biases for a training run: credentials check, resumable run id, artifacts, clean finish."""

from __future__ import annotations

import logging
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from namm.evolution.config import LoggerConfig, WandbMode

log = logging.getLogger(__name__)


def wandb_credentials_found() -> bool:
    """An API key in the environment or a netrc entry for the W&B host (no network access)."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname or "api.wandb.ai"
    path = Path(os.environ.get("NETRC", Path.home() / ".netrc"))
    try:
        return path.is_file() and netrc.netrc(path).authenticators(host) is not None
    except (netrc.NetrcParseError, OSError):
        return False


def effective_mode(config: LoggerConfig) -> WandbMode:
    """`WANDB_MODE` in the environment wins; `online` without credentials becomes `offline` (said once)."""
    requested = os.environ.get("WANDB_MODE")
    if requested == "dryrun":
        requested = WandbMode.offline.value
    mode = WandbMode(requested) if requested in {m.value for m in WandbMode} else config.mode
    if mode == WandbMode.online and not wandb_credentials_found():
        log.warning(
            "W&B: no credentials found (WANDB_API_KEY or `wandb login`); logging offline to the run directory. "
            "Upload later with `wandb sync <run dir>/wandb/offline-run-*`, or pass logger.mode=disabled."
        )
        mode = WandbMode.offline
    return mode


def new_run_id() -> str:
    """8 lowercase letters/digits, like W&B's own ids; `secrets` leaves the seeded RNGs untouched."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


class WandbRun:
    """One W&B run per training run; resumed with the id stored in the checkpoint."""

    def __init__(
        self, config: LoggerConfig, run_dir: Path, name: str, run_id: str | None, resolved_config: dict[str, Any]
    ):
        self.mode = effective_mode(config)
        self.config = config
        self.run = None
        self.run_id = run_id
        if self.mode == WandbMode.disabled:
            return
        import wandb

        self.run_id = run_id or new_run_id()
        self.run = wandb.init(
            project=config.project,
            entity=config.entity,
            group=config.group,
            tags=list(config.tags),
            name=name,
            id=self.run_id,
            resume="allow",
            dir=str(run_dir),
            mode=self.mode.value,
            config=resolved_config,
        )
        self.run.define_metric("generation")
        self.run.define_metric("*", step_metric="generation")

    def log(self, metrics: dict[str, Any]) -> None:
        if self.run is not None:  # the per-candidate lists stay in metrics.jsonl
            self.run.log({key: value for key, value in metrics.items() if not isinstance(value, list)})

    def save_checkpoint(self, path: Path, kind: str, generation: int) -> None:
        """Upload a checkpoint as an artifact (online only: offline runs keep the files on disk)."""
        if self.run is None or self.mode != WandbMode.online or not self.config.log_checkpoints:
            return
        import wandb

        artifact = wandb.Artifact(f"namm-{self.run_id}-{kind}", type="checkpoint", metadata={"generation": generation})
        artifact.add_file(str(path))
        self.run.log_artifact(artifact, aliases=[kind, f"generation-{generation}"])

    def finish(self, exit_code: int = 0) -> None:
        """Close the run; a sequential multirun would otherwise log the next job into it."""
        if self.run is not None:
            self.run.finish(exit_code=exit_code)
            self.run = None
