"""Shared test setup: tests import the installed package (CI installs the wheel), and find the fixtures."""
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
if str(TESTS) not in sys.path:  # reference_nets.py lives beside the tests
    sys.path.insert(0, str(TESTS))

# Subprocesses the tests start (`python -c ...`, `python -m pyns`) run with the repository as their working
# directory, and Python would put it first on sys.path: they would import the source tree (which has no
# compiled core) instead of the installed package. PYTHONSAFEPATH (3.11+) keeps the working directory off it.
__import__("os").environ["PYTHONSAFEPATH"] = "1"

if __import__("os").environ.get("PYNS_EXPECT_INSTALLED"):
    import pyns

    # CI must exercise the wheel (grammar and .arch files inside the package), not the source tree.
    assert "site-packages" in pyns.__file__, f"tests imported pyns from {pyns.__file__}"


@pytest.fixture
def one_thread():
    """Tiny models on a shared 2-core CPU: one torch thread avoids OpenMP oversubscription (3-5x faster)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
