"""Skip locally, fail under CI=true: CI must never pass by skipping."""

from __future__ import annotations

import os

import pytest

ON_CI = os.environ.get("CI", "").lower() == "true"


def need(condition, reason):
    """Skip (locally) or fail (under CI=true) when ``condition`` is false."""
    if condition:
        return
    if ON_CI:
        pytest.fail("CI=true and this test cannot run: %s" % reason, pytrace=False)
    pytest.skip(reason)
