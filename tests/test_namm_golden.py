"""Exact parity with the reference implementation on the golden set (namm-reference-a).

The comparisons live in scripts/check_golden.py (the acceptance tool); each of its checks is a test
here. The golden folder is found through NAMM_GOLDEN_DIR, by default ../shared/golden/namm-reference-a
next to the repository.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from namm.budget import per_layer_max_keep_per_row
from namm.network import NAMM, NAMMConfig
from namm.policies.base import LayerView
from namm.policies.namm_policy import NAMMPolicy

REPO = Path(__file__).resolve().parents[1]
GOLDEN_REQUIRED = bool(os.environ.get("NAMM_GOLDEN_DIR"))  # asked for by name (CI): a missing set fails, never skips
GOLDEN_DIR = (
    Path(os.environ["NAMM_GOLDEN_DIR"]) if GOLDEN_REQUIRED else REPO.parent / "shared" / "golden" / "namm-reference-a"
)
pytestmark = pytest.mark.skipif(
    not GOLDEN_REQUIRED and not (GOLDEN_DIR / "manifest.json").is_file(),
    reason=f"golden set not found at {GOLDEN_DIR}; set NAMM_GOLDEN_DIR to the namm-reference-a folder",
)


def test_the_golden_set_is_there():
    assert (GOLDEN_DIR / "manifest.json").is_file(), (
        f"NAMM_GOLDEN_DIR={GOLDEN_DIR} holds no golden set (manifest.json); point it at the namm-reference-a folder "
        "or unset it to skip the parity tests"
    )


def load_checker():
    spec = importlib.util.spec_from_file_location("check_golden", REPO / "scripts" / "check_golden.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def checker():
    return load_checker()


@pytest.fixture(scope="module")
def module_results(checker):
    with torch.no_grad():
        return {check.name: check for check in checker.module_checks(GOLDEN_DIR)}


@pytest.fixture(scope="module")
def e2e_results(checker):
    return {check.name: check for check in checker.e2e_checks(GOLDEN_DIR)}


def test_module_level_parity(module_results):
    assert len(module_results) == 16
    failed = [check.line() for check in module_results.values() if not check.passed]
    assert not failed, "\n".join(failed)


def test_end_to_end_parity(e2e_results):
    assert any(name.startswith("e2e/namm_norm") for name in e2e_results)
    failed = [check.line() for check in e2e_results.values() if not check.passed]
    assert not failed, "\n".join(failed)


def test_policy_interface_reproduces_module_golden(checker):
    """The module golden driven through LayerView/select/reindex with the engine's per_layer_max rule."""
    data = np.load(GOLDEN_DIR / "module" / "module_norm.npz")
    namm = NAMM(NAMMConfig(), torch.from_numpy(data["params"]))
    namm.normaliser.set_stats(torch.from_numpy(data["norm_mean"]), torch.from_numpy(data["norm_var"]))
    policy = NAMMPolicy(namm)
    policy.reset(1, 1, 2, torch.device("cpu"))
    for call in range(3):
        attention = torch.from_numpy(checker.decode_attention(data[f"call{call}_attn_E"], data[f"call{call}_attn_S"]))
        positions = torch.from_numpy(data[f"call{call}_positions"])
        valid = torch.ones_like(positions, dtype=torch.bool)
        view = LayerView(
            layer_idx=0,
            rows=torch.arange(1),
            keys=attention,
            values=attention,
            valid=valid,
            positions=positions,
            tokens_seen=positions.amax(dim=(1, 2)) + 1,
            num_new_tokens=512,
            attention_fn=lambda count, a=attention: a[:, :, a.shape[2] - count :],
        )
        selection = policy.select(view)
        keep = per_layer_max_keep_per_row(selection.scores, selection.keep, valid)
        counts = keep.sum(dim=-1)
        index = torch.argsort((~keep).to(torch.int8), dim=-1, stable=True)[..., : int(counts.max())]
        policy.reindex(0, torch.arange(1), index, torch.arange(index.shape[-1]) < counts[..., None])
        assert index.tolist() == data[f"call{call}_retained_idxs"].tolist()
        assert selection.keep.sum(dim=-1).tolist() == data[f"call{call}_n_above_threshold"].tolist()
