"""Where this checkout is the collection tcpstack.tuning: the one definition.

The repository root *is* the collection.  Ansible (ANSIBLE_COLLECTIONS_PATH) and Python (``import
ansible_collections.tcpstack.tuning...``) both find a collection as DIR/ansible_collections/NAMESPACE/NAME.
Here DIR is COLLECTIONS, .build/collections, where ansible_collections/tcpstack/tuning is a symlink to the
checkout made by collections_path(); nothing is copied.

Who uses it: tests/conftest.py (pytest.ini's ``pythonpath`` names the same directory, so that the tests import
the collection), tests.support's playbook runs, bench/, and the Makefile (lint, molecule, demo, bench), through
``python -m tests.support.collection``, which makes the link and prints the directory.  tools/stage.py places
the *copy* ansible-test needs with collection_dir() (ansible-test resolves its working directory, so a link to
the checkout would not do for it).

Standard library only, Python 3.9+, and nothing from the rest of tests.support: tools/stage.py loads this file
by its path.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository, which is the collection
COLLECTIONS = ROOT / ".build" / "collections"


def _galaxy(field):
    """A top-level field of galaxy.yml (the collection's own declaration of its namespace and name)."""
    match = re.search(r"^%s:[ \t]*([A-Za-z0-9_]+)[ \t]*$" % field, (ROOT / "galaxy.yml").read_text(encoding="utf-8"),
                      re.M)
    if match is None:
        raise RuntimeError("galaxy.yml has no top-level %r" % field)
    return match.group(1)


NAMESPACE, NAME = _galaxy("namespace"), _galaxy("name")


def collection_dir(base):
    """Where a collections directory ``base`` holds this collection: BASE/ansible_collections/NAMESPACE/NAME."""
    return Path(base) / "ansible_collections" / NAMESPACE / NAME


LINK = collection_dir(COLLECTIONS)


def collections_path():
    """The directory to give ANSIBLE_COLLECTIONS_PATH (and Python's path): its tcpstack.tuning is this checkout.

    Makes the link when it is missing or points elsewhere (safe when several processes do it at once).
    """
    target = os.path.relpath(ROOT, LINK.parent)
    if not (LINK.is_symlink() and os.readlink(LINK) == target):
        LINK.parent.mkdir(parents=True, exist_ok=True)
        if LINK.is_symlink():  # a stale link (another checkout's, an old layout): replace it in one step
            temporary = LINK.with_name(".%s.%d" % (LINK.name, os.getpid()))
            temporary.symlink_to(target, target_is_directory=True)
            os.replace(temporary, LINK)
        else:
            try:
                LINK.symlink_to(target, target_is_directory=True)
            except FileExistsError:  # made by another process meanwhile
                pass
        # an import that looked here before the directory existed is cached as "nothing here"; forget that
        importlib.invalidate_caches()
    return COLLECTIONS


def main():
    """``python -m tests.support.collection``: make the link, print the collections directory."""
    print(collections_path())
    return 0


MODULE_UTILS_PACKAGE = "ansible_collections/tcpstack/tuning/plugins/module_utils"


def install_like_the_role(code_dir):
    """The port_monitor sampler laid out as the role's tasks install it: every module_utils file, an __init__.py
    per package, the entry point; returns the entry point's path."""
    import shutil
    package = Path(code_dir) / MODULE_UTILS_PACKAGE
    package.mkdir(parents=True)
    parts = MODULE_UTILS_PACKAGE.split("/")
    for depth in range(1, len(parts) + 1):
        (Path(code_dir).joinpath(*parts[:depth]) / "__init__.py").write_text("")
    for source in sorted((ROOT / "plugins" / "module_utils").glob("*.py")):
        shutil.copyfile(source, package / source.name)
    entry = Path(code_dir) / "tcpstack-port-monitor"
    shutil.copyfile(ROOT / "roles" / "port_monitor" / "files" / "tcpstack-port-monitor", entry)
    return entry


if __name__ == "__main__":
    sys.exit(main())
