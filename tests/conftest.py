"""Shared test fixtures.

Lab tests need ``ccdr lab up``. Outside CI they skip when the lab is down; with
``CI=true`` (or ``CCDR_REQUIRE_LAB=1``) they fail instead, so CI can never pass by
skipping what it was meant to prove.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"


def lab_required() -> bool:
    return os.environ.get("CI", "").lower() == "true" or os.environ.get("CCDR_REQUIRE_LAB") == "1"


def need(condition: bool, why: str) -> None:
    """Skip locally, fail in CI, when a real component a test needs is missing."""
    if condition:
        return
    if lab_required():
        pytest.fail(f"required component missing in CI: {why}")
    pytest.skip(why)
