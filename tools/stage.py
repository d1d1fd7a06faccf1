"""Stage the collection where ansible-test expects it.

Copies the files git knows about (tracked, plus untracked files that are
not ignored: ``git ls-files -co --exclude-standard``) into a fresh
``<dest>/ansible_collections/tcpstack/tuning`` and prints that path.  A copy,
not the link tests/support/collection.py makes for everything else:
ansible-test resolves its working directory, and must find itself inside
ansible_collections/NAMESPACE/NAME.

The copy gets an empty git repository of its own: ansible-test walks up
from the collection looking for ``.git`` and would otherwise find this
repository, where .build/ is ignored, and see no files at all.

Usage: python3 tools/stage.py [DEST]     (DEST defaults to .build)
"""

from __future__ import annotations

import importlib.util
import os
import pathlib
import shutil
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _collection():
    """tests/support/collection.py, the one definition of where the collection goes (standard library only).

    Loaded by its path: the tools run as scripts (``python tools/sanity.py``), with tools/, not the repository
    root, on sys.path.
    """
    spec = importlib.util.spec_from_file_location('tcpstack_collection', ROOT / 'tests' / 'support' / 'collection.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


COLLECTION = _collection()


def tracked_files(root: pathlib.Path) -> list[str]:
    """Return the repository's tracked and untracked-but-not-ignored files."""
    out = subprocess.run(
        ['git', 'ls-files', '-z', '-co', '--exclude-standard'],
        cwd=root, check=True, capture_output=True,
    ).stdout.decode()
    names = sorted({name for name in out.split('\0') if name})
    # `-c` still lists tracked files that were deleted from the work tree
    return [name for name in names if os.path.lexists(root / name)]


def stage(dest: pathlib.Path, root: pathlib.Path = ROOT) -> pathlib.Path:
    """Copy the collection into a fresh dest/ansible_collections/NS/NAME."""
    target = COLLECTION.collection_dir(dest)
    if target.exists():
        shutil.rmtree(target)
    for name in tracked_files(root):
        src, dst = root / name, target / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            os.symlink(os.readlink(src), dst)
        else:
            shutil.copy2(src, dst)
    subprocess.run(['git', 'init', '--quiet', str(target)], check=True)
    return target


def main() -> int:
    """Stage into the directory given on the command line (default .build)."""
    dest = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / '.build'
    print(stage(dest.resolve()))
    return 0


if __name__ == '__main__':
    sys.exit(main())
