"""Shared by every suite: the collection is importable, and the ``root_netns`` fixture.

pytest.ini puts the repository root (for ``tests.support``) and .build/collections on pytest's path;
collections_path() makes the link there, ansible_collections/tcpstack/tuning -> this checkout, before any test
module imports the collection.
"""

from __future__ import annotations

import os
import sys

import pytest

from tests.support.ci import need_root_netns
from tests.support.collection import collections_path

if os.path.realpath(collections_path()) not in {os.path.realpath(entry) for entry in sys.path}:
    raise pytest.UsageError("%s is not on pytest's path: the repository's pytest.ini names it in pythonpath "
                            "(was another configuration file used?)" % collections_path())


@pytest.fixture(scope="session")
def root_netns():
    """Root, the ip command and network-namespace support are all present (else skip; fail under CI=true)."""
    return need_root_netns()
