"""The collection's execution-environment metadata, as ansible-builder reads it.

The collection is built and installed the way users get it (ansible-galaxy
collection build + install, offline), and ``ansible-builder introspect`` is
run on the installed copy: it must report pywinrm (and nothing else) for
Python, the OpenSSH client for the system, and never ansible-core or a pin.
ansible-builder is pinned in requirements-dev.txt; these tests never skip.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
FROM = "  # from collection tcpstack.tuning"


def tool(name):
    path = BIN / name
    assert path.exists(), f"{name} is missing from {BIN}: run `make venv` (it is pinned in requirements-dev.txt)"
    return str(path)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """Build the collection artifact and install it offline; return the collections dir."""
    work = tmp_path_factory.mktemp("ee")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(work / "installed"))
    subprocess.run([tool("ansible-galaxy"), "collection", "build", "--force", "--output-path", str(work / "dist"), str(ROOT)],
                   check=True, capture_output=True, env=env)
    tarball = next((work / "dist").glob("tcpstack-tuning-*.tar.gz"))
    subprocess.run([tool("ansible-galaxy"), "collection", "install", "--offline", "--force", "-p", str(work / "installed"),
                    str(tarball)], check=True, capture_output=True, env=env)
    return work / "installed"


def introspect(folder, *args):
    done = subprocess.run([tool("ansible-builder"), "introspect", str(folder), *args],
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


def test_the_artifact_ships_the_metadata(installed):
    base = installed / "ansible_collections" / "tcpstack" / "tuning"
    meta = yaml.safe_load((base / "meta" / "execution-environment.yml").read_text(encoding="utf-8"))
    assert meta["dependencies"] == {"python": "requirements.txt", "system": "bindep.txt"}
    for name in ("requirements.txt", "bindep.txt"):
        assert (base / name).read_text(encoding="utf-8") == (ROOT / name).read_text(encoding="utf-8")


def test_introspect_reports_pywinrm_and_the_ssh_client(installed):
    data = introspect(installed)
    assert data["python"] == ["pywinrm" + FROM]
    assert sorted(data["system"]) == sorted(["openssh-client [platform:dpkg]" + FROM,
                                             "openssh-clients [platform:rpm]" + FROM])


def test_python_requirements_leave_ansible_and_versions_to_the_ee():
    lines = [line.split("#", 1)[0].strip() for line in (ROOT / "requirements.txt").read_text(encoding="utf-8").splitlines()]
    requirements = [line for line in lines if line]
    assert requirements == ["pywinrm"]
    for requirement in requirements:
        assert not re.search(r"[<>=!~;@\[]", requirement), requirement
        assert not requirement.lower().startswith("ansible")


def test_bindep_file_parses():
    from bindep.depends import Depends  # pylint: disable=import-outside-toplevel

    depends = Depends((ROOT / "bindep.txt").read_text(encoding="utf-8"))
    assert sorted(rule[0] for rule in depends._rules) == ["openssh-client", "openssh-clients"]  # pylint: disable=protected-access


def test_introspect_writes_the_files_an_ee_build_uses(tmp_path):
    """The checkout itself (through a symlink), as ansible-builder's build step combines it."""
    folder = tmp_path / "linked"
    (folder / "ansible_collections" / "tcpstack").mkdir(parents=True)
    (folder / "ansible_collections" / "tcpstack" / "tuning").symlink_to(ROOT)
    introspect(folder, "--write-pip", str(tmp_path / "requirements.txt"), "--write-bindep", str(tmp_path / "bindep.txt"))
    assert (tmp_path / "requirements.txt").read_text(encoding="utf-8").splitlines() == ["pywinrm" + FROM]
    assert sorted((tmp_path / "bindep.txt").read_text(encoding="utf-8").splitlines()) == sorted(
        ["openssh-client [platform:dpkg]" + FROM, "openssh-clients [platform:rpm]" + FROM])
