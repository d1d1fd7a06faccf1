"""Find a working interpreter of one Python version, for tools/sanity.py (3.9) and tools/core_lines.py (3.12).

The candidates, in order: $PYTHONXY (e.g. PYTHON39=/path/to/python3.9), pythonX.Y on PATH, then pyenv's
versions directory ($PYENV_ROOT, default ~/.pyenv), newest patch release first.  A candidate counts only when it
really runs and is that version (a pyenv shim may not run).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess


def works(python: str, version: tuple[int, int]) -> bool:
    """Return True when the interpreter runs and is Python ``version`` (major, minor)."""
    try:
        return subprocess.run([python, '-c', f'import sys; sys.exit(sys.version_info[:2] != {tuple(version)!r})'],
                              capture_output=True, check=False).returncode == 0
    except OSError:
        return False


def find_python(version: tuple[int, int]) -> str | None:
    """Return a working Python ``version`` (major, minor) interpreter, or None."""
    major, minor = version
    name = f'python{major}.{minor}'
    candidates = [os.environ.get(f'PYTHON{major}{minor}', ''), shutil.which(name) or '']
    root = os.environ.get('PYENV_ROOT', os.path.expanduser('~/.pyenv'))
    candidates += sorted(glob.glob(os.path.join(root, 'versions', f'{major}.{minor}.*', 'bin', name)), reverse=True)
    return next((c for c in candidates if c and works(c, version)), None)
