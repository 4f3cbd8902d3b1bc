"""Shared pytest fixtures (keep minimal)."""
from pathlib import Path

import pytest

DATA_DIR = Path(__file__).resolve().parent / "data"


@pytest.fixture
def data_dir() -> Path:
    """Folder of the small committed test files (``tests/data``)."""
    return DATA_DIR


@pytest.fixture(autouse=True, scope="session")
def _fftw_wisdom_file(tmp_path_factory):
    """The engine's FFTW wisdom (plans timed once per machine) goes to a file of this session,
    not to the user's cache."""
    import os
    old = os.environ.get("MSPTYCHO_FFTW_WISDOM")
    os.environ["MSPTYCHO_FFTW_WISDOM"] = str(tmp_path_factory.mktemp("fftw") / "wisdom.pickle")
    yield
    if old is None:
        os.environ.pop("MSPTYCHO_FFTW_WISDOM", None)
    else:
        os.environ["MSPTYCHO_FFTW_WISDOM"] = old
