"""Make the collection importable as ``ansible_collections.tcpstack.tuning`` for every test.

The repository root *is* the collection; a symlink under .build/pytest gives it
the path Ansible's import scheme needs, without copying anything (made by
tests/lib/netns.py, which the demo shares).
"""

from __future__ import annotations

import sys
from pathlib import Path

LIB = Path(__file__).resolve().parent / "lib"
if str(LIB) not in sys.path:
    sys.path.insert(0, str(LIB))

from netns import collections_path  # noqa: E402  pylint: disable=wrong-import-position

COLLECTIONS = str(collections_path())
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
