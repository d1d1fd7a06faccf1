"""linux_processes: the pure parsers of /proc/PID text (real formats), and ProcessTable on this very process."""

from __future__ import annotations

import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from ansible_collections.tcpstack.tuning.plugins.module_utils import linux_processes as lp

DOCKER = "0::/system.slice/docker-%s.scope" % ("ab12" * 16)


@pytest.mark.parametrize("link, inode", [
    ("socket:[12345]", 12345), ("socket:[]", None), ("socket:[12a]", None), ("pipe:[12345]", None),
    ("/dev/null", None), ("socket:[%s]" % ("9" * 21), None),
])
def test_socket_inode(link, inode):
    assert lp.socket_inode(link) == inode


@pytest.mark.parametrize("text, expected", [
    ("0::/system.slice/nginx.service\n", ("/system.slice/nginx.service", "nginx.service", None)),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope", None)),
    (DOCKER + "\n", (DOCKER[3:], "docker-%s.scope" % ("ab12" * 16), "ab12ab12ab12")),
    ("12:pids:/docker/%s\n1:name=systemd:/docker/%s\n" % ("cd34" * 16, "cd34" * 16),
     ("/docker/%s" % ("cd34" * 16), None, "cd34cd34cd34")),
    ("0::/\n", ("/", None, None)),
    ("", (None, None, None)),
    ("garbage without colons", (None, None, None)),
])
def test_parse_cgroup(text, expected):
    assert lp.parse_cgroup(text) == expected


def test_parse_cmdline_and_status():
    assert lp.parse_cmdline(b"python3\x00-c\x00print(1)\x00") == "python3 -c print(1)"
    assert lp.parse_cmdline(b"") is None
    assert lp.parse_cmdline(b"a\x1b[2Jb\x00") == "a?[2Jb"
    assert len(lp.parse_cmdline(b"x" * 100000)) == lp.CMDLINE_MAX
    assert lp.parse_status_uid("Name:\tx\nUid:\t1000\t1000\t1000\t1000\n") == 1000
    assert lp.parse_status_uid("Uid:\tx\n") is None and lp.parse_status_uid("") is None


@settings(derandomize=True, max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(hs.text(max_size=300), hs.binary(max_size=300))
def test_parsers_never_raise(text, data):
    lp.parse_cgroup(text)
    lp.parse_status_uid(text)
    lp.parse_cmdline(data)
    lp.socket_inode(text)


def test_process_table_finds_this_process_socket():
    """A socket this test opens is found in its own /proc/PID/fd, and the process described."""
    sock = socket.socket()
    try:
        table = lp.ProcessTable()
        assert os.getpid() in table.pids()
        table.scan([os.getpid()])
        assert table.owner(os.fstat(sock.fileno()).st_ino) == os.getpid()
        info = table.describe(os.getpid())
        assert info["pid"] == os.getpid() and info["uid"] == os.getuid() and info["name"]
        assert info["cmdline"] and info["user"]
    finally:
        sock.close()
