"""A NAMM as a shareable artefact: a folder (or Hugging Face hub repo) that anyone can load and run.

The folder holds `model.safetensors` (the scorer's weights, one tensor per block of the parameter
layout, so the file explains itself), `config.json` (NAMM config, parameter layout, normalisation
statistics, the engine schedule it was evolved with, what it was trained on and with which objective,
and what it measured on held-out prompts) and a generated model card, `README.md`.

This is the one way a trained NAMM leaves a run: `from_checkpoint` reads a training checkpoint (as
the evaluation does), `save_pretrained` / `from_pretrained` write and read the folder. Every field is
checked when read, so a folder for another parameter layout or with a missing field fails before any
model is loaded.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from transformers import PreTrainedModel

from namm.atomic_io import atomic_write, atomic_write_json, atomic_write_text
from namm.engine import EngineConfig
from namm.errors import ConfigError, CorruptFileError
from namm.evolution.checkpoint import (
    BEST,
    LATEST,
    CheckpointError,
    library_versions,
    load_checkpoint,
    read_provenance,
    resolve_checkpoint_path,
)
from namm.evolution.progress import METRICS_FILE, MetricsLog
from namm.generate import MemoryManagedCache
from namm.model_card import model_card
from namm.models.hub import HUB_ID
from namm.network.config import NAMMConfig
from namm.network.namm import NAMM
from namm.network.normalisation import check_statistics
from namm.network.parameters import ParameterLayout, parameter_layout
from namm.policies.namm_policy import NAMMPolicy
from namm.read_back import finite_number, read_json

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "README.md"
FORMAT = "namm-evolve"
FORMAT_VERSION = 1
CONFIG_FIELDS = (
    "format",
    "format_version",
    "namm",
    "parameter_layout",
    "normalization",  # a saved key: exported NAMMs keep this spelling (the code says normalisation)
    "engine",
    "training",
    "measured",
)
PARAMS_KINDS = ("best", "center")  # which parameters of a checkpoint: best validated centre, last search mean
EXPORT_FIX = "the folder is damaged: export it again with `python scripts/export_namm.py <run dir> <folder>`"
_OBJECT_FIELDS = ("namm", "engine", "training", "measured")  # JSON objects (dicts), never null


class PretrainedNAMMError(ConfigError):
    """A folder or hub repo that is not a usable exported NAMM; the message names the file and the fix."""


@dataclass
class PretrainedNAMM:
    """An evolved NAMM with everything needed to run and judge it.

    `engine`: the schedule it was evolved with (its decisions assume that update interval). `training`:
    the resolved model, task, `evo` (search and objective) settings, seed and generation of its run.
    `measured`: its held-out validation fitness, retained ratio and task scores, when the run had them.
    """

    namm: NAMM
    engine: EngineConfig = field(default_factory=EngineConfig)
    training: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)

    @property
    def config(self) -> NAMMConfig:
        return self.namm.config

    @property
    def trained_on(self) -> str | None:
        """The model name the NAMM was evolved on, if recorded."""
        model = self.training.get("model")
        return model.get("name") if isinstance(model, dict) else None

    def policy(self) -> NAMMPolicy:
        """An engine memory policy running this NAMM."""
        return NAMMPolicy(self.namm)

    def cache(self, model: PreTrainedModel, stop_token_ids: Iterable[int] | None = None) -> MemoryManagedCache:
        """A cache for `model.generate(..., past_key_values=cache)` with this NAMM on its training schedule."""
        return MemoryManagedCache(model, self.policy(), self.engine, stop_token_ids)

    # -- reading ----------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, revision: str | None = None) -> PretrainedNAMM:
        """Load an exported NAMM from a local folder or a hub repo id (`org/name`, downloaded once)."""
        path = Path(name_or_path).expanduser()
        if not path.is_dir():
            if not HUB_ID.match(str(name_or_path)):
                raise PretrainedNAMMError(
                    f"{name_or_path} is neither a folder nor a hub repo id (org/name); give the folder "
                    "`scripts/export_namm.py` wrote or a hub id."
                )
            from huggingface_hub import snapshot_download

            path = Path(
                snapshot_download(
                    str(name_or_path), revision=revision, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE, CARD_FILE]
                )
            )
        return cls._read(path)

    @classmethod
    def _read(cls, folder: Path) -> PretrainedNAMM:
        config_path, weights_path = folder / CONFIG_FILE, folder / WEIGHTS_FILE
        for needed in (config_path, weights_path):
            if not needed.is_file():
                raise PretrainedNAMMError(
                    f"{folder} has no {needed.name}: it is not an exported NAMM (write one with "
                    "`python scripts/export_namm.py runs/<run> <folder>` or PretrainedNAMM.save_pretrained)."
                )
        document = _config_document(config_path)
        try:
            config = NAMMConfig.from_dict(document["namm"])
            engine = EngineConfig(**document["engine"])
        except (TypeError, ValueError) as error:
            raise PretrainedNAMMError(f"{config_path}: {error}; {EXPORT_FIX}") from error
        layout = parameter_layout(config)
        if document["parameter_layout"] != layout_record(layout):
            raise PretrainedNAMMError(
                f"{config_path}: its parameter_layout {document['parameter_layout']} is not the layout of its own "
                f"namm config {layout_record(layout)}; the file was edited or written by another version."
            )
        namm = NAMM(config, parameters_from_weights(_read_weights(weights_path), layout, weights_path))
        namm.normaliser.load_state_dict(normalisation_from_record(document["normalization"], config, config_path))
        return cls(namm, engine, dict(document["training"]), dict(document["measured"]))

    @classmethod
    def from_checkpoint(cls, path: str | Path, params_kind: str = "best") -> PretrainedNAMM:
        """The NAMM of a training checkpoint (a .pt file or a run directory): its best validated centre
        (`best`) or its last search mean (`center`), with the run's validation figures when it has them."""
        if params_kind not in PARAMS_KINDS:
            raise ValueError(f"params_kind must be one of {PARAMS_KINDS}, got {params_kind!r}.")
        path = resolve_checkpoint_path(path)
        record = load_checkpoint(path)
        resolved = record.config
        try:
            config = NAMMConfig.from_dict(dict(resolved.get("namm") or {}))
        except ValueError as error:
            raise CheckpointError(f"the namm config saved in {path}: {error}") from error
        parameters = (record.best_params if params_kind == "best" else record.center).detach().float().reshape(-1)
        layout = parameter_layout(config)
        if parameters.numel() != layout.size:
            raise CheckpointError(
                f"{path} holds {parameters.numel()} NAMM parameters but its own namm config describes {layout.size}; "
                "the checkpoint is inconsistent (was it written by another version?)."
            )
        namm = NAMM(config, parameters)
        namm.normaliser.load_state_dict(_checkpoint_normalisation(record.normalisation_state, config, path))
        if params_kind == "best" and record.best_generation is not None:
            generation = record.best_generation
        else:
            generation = record.generation
        known = {item.name for item in fields(EngineConfig)}
        engine_values = {key: value for key, value in dict(resolved.get("engine") or {}).items() if key in known}
        training = {
            "model": resolved.get("model"),
            "task": resolved.get("task"),
            "evo": resolved.get("evo"),  # the searcher and the objective (reference floor, budget or penalty)
            "seed": resolved.get("seed"),
            "generation": generation,
            "params": params_kind,
            "checkpoint": {"path": str(path), "sha256": record.sha256, "generation": record.generation},
            "versions": record.versions,
            "provenance": read_provenance(record),  # its training and validation prompts (None: not recorded)
        }
        measured = _validation_record(MetricsLog(path.parent).read(), generation)
        return cls(namm, EngineConfig(**engine_values), training, measured)

    # -- writing ----------------------------------------------------------------------------------
    def config_document(self) -> dict[str, Any]:
        """What config.json holds."""
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "namm": self.config.to_dict(),
            "parameter_layout": layout_record(self.namm.layout),
            "param_count": self.namm.param_count,
            "normalization": normalisation_record(self.namm),
            "engine": asdict(self.engine),
            "training": self.training,
            "measured": self.measured,
            "exported_with": library_versions(),
        }

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write weights, config.json and the model card into `directory` (each file atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        weights = {
            name: tensor[0].contiguous() for name, tensor in self.namm.layout.unflatten(self.namm.parameters).items()
        }
        payload = safetensors_bytes(weights, metadata={"format": FORMAT})
        atomic_write(directory / WEIGHTS_FILE, lambda file: file.write(payload))
        atomic_write_json(directory / CONFIG_FILE, self.config_document())
        atomic_write_text(directory / CARD_FILE, model_card(self))
        return directory

    def push_to_hub(self, repo_id: str, token: str | None = None, private: bool | None = None) -> str:
        """Upload the exported folder to the hub repo `repo_id` (created if needed); returns the commit URL."""
        from huggingface_hub import HfApi, get_token

        token = token or get_token()
        if token is None:
            raise PretrainedNAMMError(
                "no Hugging Face credentials: run `hf auth login` (or set HF_TOKEN, or pass token=...); "
                "save_pretrained(<folder>) works without them."
            )
        api = HfApi(token=token)
        api.create_repo(repo_id, private=private, exist_ok=True)
        with tempfile.TemporaryDirectory() as folder:
            self.save_pretrained(folder)
            commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message="Upload NAMM")
        return str(getattr(commit, "commit_url", commit))


def is_exported_namm(path: str | Path) -> bool:
    """Whether `path` is a folder meant as an exported NAMM: it holds config.json or model.safetensors and no
    training checkpoint. Such a folder is then read (and checked) as one, so a damaged config.json is reported
    as such, not mistaken for a run directory."""
    folder = Path(path)
    if any((folder / name).is_file() for name in (BEST, LATEST)):
        return False
    return (folder / CONFIG_FILE).is_file() or (folder / WEIGHTS_FILE).is_file()


def _config_document(config_path: Path) -> dict[str, Any]:
    """config.json, parsed and checked field by field: its format, every field present, objects where objects
    belong; raises PretrainedNAMMError naming the file, the field and the fix."""
    try:
        document = read_json(config_path, EXPORT_FIX)
    except CorruptFileError as error:
        raise PretrainedNAMMError(str(error)) from None
    if not isinstance(document, dict):
        raise PretrainedNAMMError(f"{config_path} holds {type(document).__name__}, not a JSON object; {EXPORT_FIX}")
    if document.get("format") != FORMAT or document.get("format_version") != FORMAT_VERSION:
        raise PretrainedNAMMError(
            f"{config_path}: field format is {document.get('format')!r} version {document.get('format_version')!r}; "
            f"this code reads {FORMAT!r} version {FORMAT_VERSION}: give a folder written by scripts/export_namm.py "
            "(or PretrainedNAMM.save_pretrained)."
        )
    missing = [name for name in CONFIG_FIELDS if name not in document]
    if missing:
        raise PretrainedNAMMError(
            f"{config_path} lacks the field(s) {missing}; an exported NAMM's config.json has {list(CONFIG_FIELDS)}. "
            "Export it again with this version."
        )
    for name in _OBJECT_FIELDS:
        if not isinstance(document[name], dict):
            raise PretrainedNAMMError(
                f"{config_path}: field {name} must be a JSON object, got {document[name]!r}; {EXPORT_FIX}"
            )
    return document


def _read_weights(weights_path: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, every value finite (raises PretrainedNAMMError naming the file and the tensor)."""
    try:
        weights = load_file(weights_path)
    except (SafetensorError, OSError) as error:
        raise PretrainedNAMMError(f"{weights_path} could not be read ({error}); {EXPORT_FIX}") from None
    for name, tensor in weights.items():
        if not torch.isfinite(tensor).all():
            raise PretrainedNAMMError(f"{weights_path}: tensor {name} holds NaN or infinite values; {EXPORT_FIX}")
    return weights


def layout_record(layout: ParameterLayout) -> list[dict[str, Any]]:
    return [{"name": block.name, "shape": list(block.shape), "offset": block.offset} for block in layout.blocks]


def parameters_from_weights(weights: dict[str, torch.Tensor], layout: ParameterLayout, where: Path) -> torch.Tensor:
    """The flat vector from per-block tensors; names and shapes must be the layout's."""
    expected = {block.name: block.shape for block in layout.blocks}
    found = {name: tuple(tensor.shape) for name, tensor in weights.items()}
    if found != expected:
        raise PretrainedNAMMError(
            f"{where} holds weights {found} but its namm config needs {expected}: the NAMM was exported for "
            "another parameter layout (scorer, hidden, heads, bias, recency_dims, n_fft)."
        )
    return layout.flatten({name: weights[name].float()[None] for name in expected})[0]


def normalisation_record(namm: NAMM) -> dict[str, Any] | None:
    stats = namm.normaliser.stats
    if stats is None:
        return None
    return {"count": float(stats.count), "mean": stats.mean.tolist(), "var": stats.var.tolist()}


def normalisation_from_record(record: Any, config: NAMMConfig, where: Path) -> dict[str, torch.Tensor]:
    """FeatureNormaliser state from config.json's `normalization` (null: none). Every statistic must be a finite
    number, the count positive and each variance non-negative: a NaN mean or a negative variance would make the
    NAMM's features NaN and its decisions silently wrong."""
    if record is None:
        return {}
    if not isinstance(record, dict) or set(record) != {"count", "mean", "var"}:
        raise PretrainedNAMMError(f"{where}: normalization must be null or hold count, mean and var; got {record!r}.")
    for name in ("mean", "var"):
        if not isinstance(record[name], list):
            raise PretrainedNAMMError(
                f"{where}: field normalization.{name} must be a list of numbers, got {record[name]!r}; {EXPORT_FIX}"
            )
    if len(record["mean"]) != config.bins or len(record["var"]) != config.bins:
        raise PretrainedNAMMError(
            f"{where}: normalization has {len(record['mean'])} bins, the namm config has {config.bins}."
        )
    try:
        count = finite_number(record["count"], where, "normalization.count", EXPORT_FIX)
        mean = [finite_number(v, where, f"normalization.mean[{i}]", EXPORT_FIX) for i, v in enumerate(record["mean"])]
        var = [finite_number(v, where, f"normalization.var[{i}]", EXPORT_FIX) for i, v in enumerate(record["var"])]
    except CorruptFileError as error:
        raise PretrainedNAMMError(str(error)) from None
    stats = {
        name: torch.tensor(value, dtype=torch.float64)
        for name, value in (("count", count), ("mean", mean), ("var", var))
    }
    try:
        check_statistics(stats, config.bins)
    except ValueError as error:
        raise PretrainedNAMMError(f"{where}: field normalization.{error}; {EXPORT_FIX}") from None
    return stats


def _checkpoint_normalisation(state: dict[str, Any], config: NAMMConfig, path: Path) -> dict[str, torch.Tensor]:
    """The FeatureNormaliser statistics in a checkpoint's `normalisation_state` ({} when none), checked."""
    stats = state.get("normalization", state)  # an early layout nested them under this key
    if not isinstance(stats, dict):
        raise CheckpointError(f"{path}: field 'normalisation_state' holds a {type(stats).__name__}, expected a dict.")
    try:
        check_statistics(stats, config.bins)
    except ValueError as error:
        raise CheckpointError(
            f"{path}: field 'normalisation_state': {error}; the statistics are unusable, so the NAMM would run "
            "silently wrong: use another checkpoint of the run."
        ) from error
    return dict(stats)


def _validation_record(records: list[dict[str, Any]], generation: int) -> dict[str, Any]:
    """Held-out figures of `generation` from the run's metrics.jsonl ({} when it was not validated)."""
    record = next((r for r in records if r.get("generation") == generation and "validation/fitness" in r), None)
    if record is None:
        return {}
    tasks = sorted(key.split("/")[1] for key in record if key.startswith("validation/") and key.endswith("/score"))
    return {
        "source": METRICS_FILE,
        "generation": generation,
        "validation_fitness": record["validation/fitness"],
        "retained_ratio": record["validation/retained_ratio"],
        "task_scores": {task: record[f"validation/{task}/score"] for task in tasks},
        "reference_scores": {task: record.get(f"validation/{task}/reference") for task in tasks},
    }


def export_checkpoint(checkpoint: str | Path, directory: str | Path, params_kind: str = "best") -> PretrainedNAMM:
    """`scripts/export_namm.py`: a training checkpoint (file or run directory) to an exported folder."""
    artefact = PretrainedNAMM.from_checkpoint(checkpoint, params_kind)
    artefact.save_pretrained(directory)
    return artefact
