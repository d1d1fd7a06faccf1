"""Skip locally, fail under CI=true: CI must never pass by skipping."""

from __future__ import annotations

import os
import shutil

import pytest

ON_CI = os.environ.get("CI", "").lower() == "true"


def need(condition, reason):
    """Skip (locally) or fail (under CI=true) when ``condition`` is false."""
    if condition:
        return
    if ON_CI:
        pytest.fail("CI=true and this test cannot run: %s" % reason, pytrace=False)
    pytest.skip(reason)


def need_root_netns():
    """Root, the ip command and network-namespace support (the ``root_netns`` fixture, tests/conftest.py)."""
    need(os.geteuid() == 0, "needs root (network namespaces, /proc/sys writes)")
    need(shutil.which("ip") is not None, "needs the ip command (Debian package iproute2)")
    need(os.path.exists("/proc/self/ns/net"), "needs a kernel with network namespaces")
    return True
