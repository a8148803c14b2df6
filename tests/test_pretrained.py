"""Exported NAMMs: the folder format, round trips from a training checkpoint, offline hub upload, bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from evaluation_helpers import MEAN, VAR, evicting_parameters, training_run, write_checkpoint
from safetensors.torch import load_file

from namm.engine import EngineConfig, GenerationSettings, MemoryEngine
from namm.models import ModelConfig, load_model
from namm.network import NAMM, NAMMConfig
from namm.policies.namm_policy import NAMMPolicy
from namm.pretrained import (
    CARD_FILE,
    CONFIG_FILE,
    WEIGHTS_FILE,
    PretrainedNAMM,
    PretrainedNAMMError,
    export_checkpoint,
    layout_record,
)
from scripts.export_namm import main as export_main
from tasks.evaluation.namm_source import load_namm_source

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def exported(tmp_path):
    run = training_run(tmp_path / "run", evicting_parameters())
    export_main([str(run), str(tmp_path / "namm")])
    return tmp_path / "namm"


def test_the_folder_holds_named_weights_a_complete_config_and_a_card(exported):
    weights = load_file(exported / WEIGHTS_FILE)
    assert {name: tuple(t.shape) for name, t in weights.items()} == {  # the README's table of the BAM layout
        "qkv_weight": (25, 96),
        "qkv_bias": (96,),
        "out_weight": (32, 50),
        "out_bias": (50,),
        "readout_weight": (25, 1),
        "readout_bias": (1,),
    }
    theta = evicting_parameters()
    assert torch.equal(weights["qkv_weight"].flatten(), theta[:2400])  # input-major, as the reference stores it
    assert torch.equal(weights["readout_bias"], theta[4171:])
    config = json.loads((exported / CONFIG_FILE).read_text())
    assert config["normalization"] == {"count": 500.0, "mean": MEAN, "var": VAR}
    assert config["engine"] == {
        "update_interval": 128,
        "eviction_mode": "per_layer_max",
        "prefill_chunk": None,
        "update_at_prefill_end": False,
        "schedule": "prefill",
    }
    assert config["training"]["model"] == {"name": "tiny-llama"} and config["training"]["generation"] == 4
    assert config["training"]["evo"]["reference_floor"] == 1.0
    assert config["measured"]["retained_ratio"] == 0.61 and config["measured"]["task_scores"] == {"passkey": 50.0}
    card = (exported / CARD_FILE).read_text()
    assert card.startswith("---\nlibrary_name: namm-evolve")
    assert "| passkey | 50.00 | 66.70 |" in card and "retained ratio 0.610" in card
    assert "every 128 tokens" in card and "4,172 parameters" in card


def test_round_trip_gives_the_checkpoints_decisions(exported, tmp_path):
    """The loaded NAMM evicts exactly as one built by hand from the checkpoint's numbers."""
    loaded = PretrainedNAMM.from_pretrained(exported)
    by_hand = NAMM(NAMMConfig(), evicting_parameters())
    by_hand.normaliser.set_stats(torch.tensor(MEAN), torch.tensor(VAR), count=500.0)
    assert torch.equal(loaded.namm.normaliser.stats.mean, by_hand.normaliser.stats.mean)
    assert loaded.engine == EngineConfig(update_interval=128)
    model = load_model(ModelConfig(name="tiny-llama")).model
    prompts = [torch.randint(3, 256, (300,), generator=torch.Generator().manual_seed(1)).tolist()]
    settings = GenerationSettings(max_new_tokens=8, stop_on_eos=False)
    ours = MemoryEngine(model, loaded.policy(), loaded.engine).generate(prompts, settings)[0]
    reference = MemoryEngine(model, NAMMPolicy(by_hand), loaded.engine).generate(prompts, settings)[0]
    assert (ours.token_ids, ours.retained_ratio) == (reference.token_ids, reference.retained_ratio)
    assert ours.retained_ratio < 1.0
    # saved again, the folder is the same
    again = loaded.save_pretrained(tmp_path / "again")
    assert (again / WEIGHTS_FILE).read_bytes() == (exported / WEIGHTS_FILE).read_bytes()
    first, second = (json.loads((folder / CONFIG_FILE).read_text()) for folder in (exported, again))
    assert first == second


def test_evaluation_reads_an_exported_folder_like_its_checkpoint(exported, tmp_path):
    from_folder = load_namm_source(exported, "best", None)
    from_checkpoint = load_namm_source(tmp_path / "run", "best", None)
    assert (from_folder.kind, from_folder.params_kind) == ("exported", "exported")
    assert from_folder.fingerprint() == from_checkpoint.fingerprint()
    assert from_folder.training_engine == from_checkpoint.training_engine
    with pytest.raises(ValueError, match=r"NAMM of 4172 parameters \(bam.*asks for .* \(mlp"):
        load_namm_source(exported, "best", NAMMConfig(scorer="mlp").to_dict())


def edit_config(folder: Path, edit) -> None:
    document = json.loads((folder / CONFIG_FILE).read_text())
    edit(document)
    (folder / CONFIG_FILE).write_text(json.dumps(document))


def test_a_folder_for_another_parameter_layout_fails_naming_it(exported):
    other = NAMMConfig(hidden=16)

    def relabel(document):
        document["namm"] = other.to_dict()
        document["parameter_layout"] = layout_record(NAMM(other).layout)

    edit_config(exported, relabel)
    with pytest.raises(PretrainedNAMMError, match="exported for another parameter layout"):
        PretrainedNAMM.from_pretrained(exported)


def test_a_layout_that_disagrees_with_its_config_fails(exported):
    edit_config(exported, lambda document: document["namm"].update(hidden=16))
    with pytest.raises(PretrainedNAMMError, match="is not the layout of its own namm config"):
        PretrainedNAMM.from_pretrained(exported)


@pytest.mark.parametrize("field", ["normalization", "engine", "namm"])
def test_a_missing_config_field_is_named(exported, field):
    edit_config(exported, lambda document: document.pop(field))
    with pytest.raises(PretrainedNAMMError, match=rf"lacks the field\(s\) \['{field}'\]"):
        PretrainedNAMM.from_pretrained(exported)


def test_missing_files_and_bad_names_say_what_to_give(exported, tmp_path):
    (exported / WEIGHTS_FILE).unlink()
    with pytest.raises(PretrainedNAMMError, match="has no model.safetensors.*export_namm.py"):
        PretrainedNAMM.from_pretrained(exported)
    with pytest.raises(PretrainedNAMMError, match="neither a folder nor a hub repo id"):
        PretrainedNAMM.from_pretrained(tmp_path / "nowhere")


def test_normalisation_of_another_size_is_refused(exported):
    edit_config(exported, lambda document: document["normalization"].update(mean=[0.0] * 9))
    with pytest.raises(PretrainedNAMMError, match="normalization has 9 bins, the namm config has 17"):
        PretrainedNAMM.from_pretrained(exported)


class LocalHub:
    """Stands in for huggingface_hub.HfApi: repos are folders under `root` (nothing leaves the machine)."""

    def __init__(self, root: Path):
        self.root = root

    def __call__(self, token=None):
        assert token == "test-token"
        return self

    def create_repo(self, repo_id, private=None, exist_ok=False):
        (self.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

    def upload_folder(self, repo_id, folder_path, commit_message):
        shutil.copytree(folder_path, self.root / repo_id, dirs_exist_ok=True)
        return f"local://{repo_id}"

    def snapshot_download(self, repo_id, revision=None, allow_patterns=None):
        return str(self.root / repo_id)


def test_push_to_hub_and_load_by_repo_id_offline(exported, tmp_path, monkeypatch):
    import huggingface_hub

    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", hub)
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: "test-token")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    artefact = PretrainedNAMM.from_pretrained(exported)
    assert artefact.push_to_hub("someone/passkey-namm") == "local://someone/passkey-namm"
    assert sorted(path.name for path in (tmp_path / "hub" / "someone" / "passkey-namm").iterdir()) == sorted(
        [CARD_FILE, CONFIG_FILE, WEIGHTS_FILE]
    )
    downloaded = PretrainedNAMM.from_pretrained("someone/passkey-namm")
    assert torch.equal(downloaded.namm.parameters, artefact.namm.parameters)


def test_push_to_hub_without_credentials_says_how_to_log_in(exported, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None)
    with pytest.raises(PretrainedNAMMError, match="no Hugging Face credentials: run `hf auth login`"):
        PretrainedNAMM.from_pretrained(exported).push_to_hub("someone/passkey-namm")


def test_a_checkpoint_without_validation_exports_without_figures(tmp_path):
    path = write_checkpoint(tmp_path / "run" / "latest.pt", evicting_parameters())
    artefact = PretrainedNAMM.from_checkpoint(path.parent, "center")
    assert torch.equal(artefact.namm.parameters, evicting_parameters() * 0.5)
    assert artefact.measured == {} and artefact.training["params"] == "center"
    card = (artefact.save_pretrained(tmp_path / "out") / CARD_FILE).read_text()
    assert "No held-out validation was recorded" in card


@pytest.mark.parametrize(
    ("statistic", "value", "message"),
    [
        ("mean", float("nan"), r"field 'normalisation_state\['mean'\]' holds a non-finite number"),
        ("var", -1.0, r"field 'normalisation_state': var\[3\] is -1.0; a variance cannot be negative"),
    ],
)
def test_a_checkpoint_with_unusable_statistics_is_refused_before_any_model(tmp_path, statistic, value, message):
    """Issue 23: one NaN mean or a variance of -1 loaded and evaluated silently wrong."""
    from namm.evolution.checkpoint import CheckpointError, content_digest, load_checkpoint, save_checkpoint

    run = training_run(tmp_path / "run", evicting_parameters())
    record = load_checkpoint(run / "best.pt")
    record.normalisation_state[statistic][3] = value
    if statistic == "var":
        save_checkpoint(record, run / "best.pt")  # finite, so the checkpoint itself is well formed
    else:
        payload = record.to_payload()
        torch.save({**payload, "sha256": content_digest(payload)}, run / "best.pt")
    with pytest.raises(CheckpointError, match=rf"best.pt: {message}"):
        PretrainedNAMM.from_checkpoint(run)


def _set_first_mean(value):
    return lambda document: document["normalization"]["mean"].__setitem__(3, value)


def _set_first_var(value):
    return lambda document: document["normalization"]["var"].__setitem__(5, value)


CORRUPT_EXPORTS = {
    "truncated": (lambda folder: _cut(folder / CONFIG_FILE), r"config\.json is not valid JSON .*truncated"),
    "binary garbage": (
        lambda folder: (folder / CONFIG_FILE).write_bytes(b"\x89PNG\r\n\x1a\n\x00\xff\xfe"),
        r"config\.json is not a text file",
    ),
    "unknown format": (
        lambda folder: edit_config(folder, lambda d: d.update(format="safetensors-namm")),
        r"config\.json: field format is 'safetensors-namm'.*export_namm\.py",
    ),
    "string in the mean": (
        lambda folder: edit_config(folder, _set_first_mean("0.5")),
        r"config\.json: field normalization\.mean\[3\] must be a number, got '0\.5'",
    ),
    "training null": (
        lambda folder: edit_config(folder, lambda d: d.update(training=None)),
        r"config\.json: field training must be a JSON object, got None",
    ),
    "nan mean": (
        lambda folder: edit_config(folder, _set_first_mean(float("nan"))),
        r"config\.json: field normalization\.mean\[3\] is nan, not a finite number",
    ),
    "negative variance": (
        lambda folder: edit_config(folder, _set_first_var(-1.0)),
        r"config\.json: field normalization\.var\[5\] is -1\.0; a variance cannot be negative",
    ),
    "garbage weights": (
        lambda folder: (folder / WEIGHTS_FILE).write_bytes(b"\x00\xff" * 64),
        r"model\.safetensors could not be read",
    ),
}


def _cut(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])


@pytest.mark.parametrize("damage, message", CORRUPT_EXPORTS.values(), ids=CORRUPT_EXPORTS.keys())
def test_a_damaged_export_is_refused_naming_the_file_and_the_field(exported, damage, message):
    """Never a silently wrong NAMM: a NaN mean or a negative variance would make its features NaN."""
    damage(exported)
    with pytest.raises(PretrainedNAMMError, match=message):
        load_namm_source(exported, "best", None)  # how evaluate.py reads checkpoint=<folder>


def test_evaluate_py_refuses_a_damaged_export_without_a_traceback(exported, tmp_path):
    edit_config(exported, _set_first_var(-1.0))
    command = [
        sys.executable,
        str(ROOT / "evaluate.py"),
        "model=tiny-llama",
        f"checkpoint={exported}",
        "compare=[namm]",
        f"out_dir={tmp_path / 'eval'}",
    ]
    done = subprocess.run(command, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert f"{exported / CONFIG_FILE}: field normalization.var[5] is -1.0" in done.stderr


def test_the_committed_cpu_memory_checkpoint_and_its_export_load_with_their_budget_keys(tmp_path):
    """Saved files spell the NAMM's budget `budget_ratio` / `budget_tokens`, the keys every config uses."""
    checkpoint = Path(__file__).resolve().parents[1] / "results" / "cpu-memory" / "latest.pt"
    saved = torch.load(checkpoint, weights_only=False)["config"]["namm"]
    assert (saved["budget_ratio"], saved["budget_tokens"]) == (None, None)
    loaded = PretrainedNAMM.from_checkpoint(checkpoint)
    assert loaded.config.budget is None and loaded.config.threshold == saved["threshold"]
    export_checkpoint(checkpoint, tmp_path / "exported")
    document = json.loads((tmp_path / "exported" / "config.json").read_text())
    assert {"budget_ratio", "budget_tokens"} <= set(document["namm"])
    assert PretrainedNAMM.from_pretrained(tmp_path / "exported").config == loaded.config


def test_which_parameters_of_a_checkpoint_is_spelled_once():
    """PARAMS_KINDS names them; every other module (results schema, evaluate config) reads it, so a new kind
    cannot be accepted in one place and refused by another."""
    root = Path(__file__).resolve().parents[1]
    spelled = re.compile(r"""["']best["'],\s*["']center["']""")
    sources = [*root.glob("*.py"), *root.glob("namm/**/*.py"), *root.glob("tasks/**/*.py"), *root.glob("scripts/*.py")]
    assert [str(path.relative_to(root)) for path in sources if spelled.search(path.read_text())] == [
        "namm/pretrained.py"
    ]
    from tasks.evaluation.schema import RESULTS_SCHEMA

    namm_record = RESULTS_SCHEMA["properties"]["namms"]["additionalProperties"]["properties"]
    assert namm_record["params"]["enum"] == ["best", "center", "exported", "zero"]
