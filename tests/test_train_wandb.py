"""W&B modes without network: disabled, offline (also the fallback without credentials), resumed run ids."""

import logging

import pytest
from evolution_fake_scorer import fake_train_config

from namm.evolution.checkpoint import LATEST, load_checkpoint
from namm.evolution.config import LoggerConfig, WandbMode
from namm.evolution.trainer import train
from namm.evolution.wandb_run import effective_mode


@pytest.fixture
def no_credentials(tmp_path, monkeypatch):
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    for name in ("WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_MODE", "NETRC", "WANDB_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "wandb-config"))
    monkeypatch.setenv("WANDB_CACHE_DIR", str(tmp_path / "wandb-cache"))
    return home


def test_online_without_credentials_falls_back_to_offline_and_says_so(no_credentials, caplog):
    with caplog.at_level(logging.WARNING):
        assert effective_mode(LoggerConfig(mode=WandbMode.online)) == WandbMode.offline
    assert sum("no credentials found" in r.getMessage() for r in caplog.records) == 1


def test_credentials_from_env_or_netrc_keep_online(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert effective_mode(LoggerConfig(mode=WandbMode.online)) == WandbMode.online
    monkeypatch.delenv("WANDB_API_KEY")
    (no_credentials / ".netrc").write_text("machine api.wandb.ai\n  login user\n  password secret\n")
    assert effective_mode(LoggerConfig(mode=WandbMode.online)) == WandbMode.online


def test_environment_mode_wins(no_credentials, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert effective_mode(LoggerConfig(mode=WandbMode.offline)) == WandbMode.disabled


def test_disabled_writes_no_wandb_files(no_credentials, tmp_path):
    run_dir = tmp_path / "run"
    train(fake_train_config(run_dir, evo={"generations": 1}))
    assert not (run_dir / "wandb").exists()
    assert load_checkpoint(run_dir / LATEST).wandb_run_id is None


def test_offline_run_is_resumed_with_the_same_id(no_credentials, tmp_path):
    run_dir = tmp_path / "run"
    logger = {"mode": "online"}  # no credentials: falls back to offline
    train(fake_train_config(run_dir, logger=logger, evo={"generations": 1}))
    run_id = load_checkpoint(run_dir / LATEST).wandb_run_id
    assert run_id
    train(fake_train_config(run_dir, logger=logger, resume="auto", evo={"generations": 2}))
    assert load_checkpoint(run_dir / LATEST).wandb_run_id == run_id
    offline_runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(offline_runs) == 2 and all(path.name.endswith(run_id) for path in offline_runs)
    assert all(list(path.glob("*.wandb")) for path in offline_runs)
