import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _data_root() -> Path:
    return Path(os.environ.get("RECON_TEST_DATA", REPO.parent / "shared" / "data")).resolve()


@pytest.fixture(scope="session")
def test_data() -> Path:
    """Root of the shared test data (env RECON_TEST_DATA, default ../shared/data)."""
    root = _data_root()
    if not root.is_dir():
        pytest.fail(f"test data not found at {root}; set RECON_TEST_DATA")
    return root


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _denormals_restored():
    """The field trainers flush denormal floats process-wide (recon.train.triplane: a speed fix); a test that
    trains one must not change what later tests compute (an HDR reader's 1e-40 values read back as 0)."""
    yield
    torch.set_flush_denormal(False)
