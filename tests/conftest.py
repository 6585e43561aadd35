"""Shared test fixtures."""

from pathlib import Path

import pytest


@pytest.fixture
def shared_datasets() -> Path:
    """``../shared/datasets`` next to the repository root; skips when the folder is absent."""
    path = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"
    if not path.is_dir():
        pytest.skip(f"shared datasets folder {path} not found (only present in the development workspace)")
    return path
