"""Make the collection importable as ``ansible_collections.tcpstack.tuning`` for every test.

The repository root *is* the collection; a symlink under .build/pytest gives it
the path Ansible's import scheme needs, without copying anything.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COLLECTIONS = ROOT / ".build" / "pytest"
LINK = COLLECTIONS / "ansible_collections" / "tcpstack" / "tuning"

if not LINK.exists():
    LINK.parent.mkdir(parents=True, exist_ok=True)
    try:
        LINK.symlink_to(os.path.relpath(ROOT, LINK.parent), target_is_directory=True)
    except FileExistsError:  # another process made it first
        pass
if str(COLLECTIONS) not in sys.path:
    sys.path.insert(0, str(COLLECTIONS))
