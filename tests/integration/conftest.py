"""Integration tests run on the real kernel, as root, inside network namespaces they create.

Without what they need they skip locally and fail under CI=true: CI must
never pass by skipping.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

LIB = Path(__file__).resolve().parents[1] / "lib"
if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))

from ci import need_root_netns  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope="session")
def root_netns():
    """Root, the ip command and network-namespace support are all present."""
    return need_root_netns()
