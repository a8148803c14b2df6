"""Session-wide test settings."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _data_cache_in_a_temporary_folder(tmp_path_factory):
    """LongBench files are read through datasets' Arrow cache ($NAMM_DATA_CACHE/datasets); tests keep it
    out of the home folder."""
    patch = pytest.MonkeyPatch()
    patch.setenv("NAMM_DATA_CACHE", str(tmp_path_factory.mktemp("namm-data-cache")))
    yield
    patch.undo()
