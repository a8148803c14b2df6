"""Session-wide test settings."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _caches_in_a_temporary_folder(tmp_path_factory):
    """LongBench files are read through datasets' Arrow cache ($NAMM_DATA_CACHE/datasets) and full-cache
    references are shared through $NAMM_REFERENCE_CACHE: tests keep both out of the home folder (a test
    that needs its own folder sets the variable itself)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("NAMM_DATA_CACHE", str(tmp_path_factory.mktemp("namm-data-cache")))
    patch.setenv("NAMM_REFERENCE_CACHE", str(tmp_path_factory.mktemp("namm-reference-cache")))
    yield
    patch.undo()
