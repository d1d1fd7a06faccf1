"""Make the collection importable as ``ansible_collections.tcpstack.tuning`` for every test.

The repository root *is* the collection; a symlink under .build/pytest gives it
the path Ansible's import scheme needs, without copying anything (made by
tests/lib/netns.py, which the demo shares).
"""

from __future__ import annotations

import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent
LIB = TESTS / "lib"
for _path in (TESTS, LIB):  # tests/lib's modules, and the windows_sim package
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from netns import collections_path  # noqa: E402  pylint: disable=wrong-import-position

COLLECTIONS = str(collections_path())
if COLLECTIONS not in sys.path:
    sys.path.insert(0, COLLECTIONS)
