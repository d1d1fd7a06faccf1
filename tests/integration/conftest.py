"""Integration tests run on the real kernel, as root, inside network namespaces they create.

Without what they need they skip locally and fail under CI=true: CI must
never pass by skipping (``root_netns`` is in tests/conftest.py).
"""

from __future__ import annotations

import os

import pytest

from tests.support.ci import need


@pytest.fixture
def ssh_client_key(tmp_path):
    """A key pair made for this test, for the Windows host simulator's SSH endpoint: (private key file, public key line).

    Ansible's ssh connection runs the OpenSSH client, so that must be here (Debian package openssh-client).
    """
    need(os.access("/usr/bin/ssh", os.X_OK), "needs the OpenSSH client /usr/bin/ssh (Debian package openssh-client)")
    import asyncssh  # pylint: disable=import-outside-toplevel  # only the SSH tests need it

    key = asyncssh.generate_private_key("ssh-ed25519")
    path = tmp_path / "id_ed25519"
    key.write_private_key(str(path))
    path.chmod(0o600)  # ssh refuses a private key others can read
    return path, key.export_public_key().decode("ascii")
