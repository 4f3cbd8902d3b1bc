"""Shared pytest fixtures (keep minimal)."""
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parent / "data"


@pytest.fixture
def data_dir() -> Path:
    """Folder of the small committed test files (``tests/data``)."""
    return DATA_DIR
