"""Shared test setup: tests import the installed package (CI installs the wheel), and find the fixtures."""
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
FIXTURES = TESTS / "fixtures"
if str(TESTS) not in sys.path:  # reference_nets.py lives beside the tests
    sys.path.insert(0, str(TESTS))

if __import__("os").environ.get("PYNS_EXPECT_INSTALLED"):
    import pyns

    # CI must exercise the wheel (grammar and .arch files inside the package), not the source tree.
    assert "site-packages" in pyns.__file__, f"tests imported pyns from {pyns.__file__}"
