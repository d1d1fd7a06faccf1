"""The scale bench's table fill (churn.py self-churn and hold, tests.support.traffic) on the real kernel, small.

bench/attribution.py fills a namespace to a million sockets with these two scripts; here each runs a few hundred
or thousand connections in a namespace the test created (loopback only), and the kernel's own count
(/proc/net/sockstat of that namespace) and the module's core function (linux_port_usage.audit()) must see the
sockets they say they made: TIME_WAIT for the churn, ESTABLISHED (both ends) for the holder.  Also their bounds:
the churn stops at its time limit, the holder opens no more connections than its hard RLIMIT_NOFILE allows.
"""

from __future__ import annotations

import json
import os
import shutil
import time

import pytest

from tests.support.ci import need
from tests.support.collection import collections_path
from tests.support.netns import Sandbox, python_interpreter, stop_process
from tests.support.traffic import program

pytestmark = pytest.mark.usefixtures("root_netns")

AUDIT = r"""
import json
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_port_usage import audit
print(json.dumps(audit(top=5, attribute=False)["sockets"]))
"""


def sockstat(box):
    """The TCP line of /proc/net/sockstat inside ``box``."""
    for line in box.exec(["cat", "/proc/net/sockstat"]).stdout.splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return dict(zip(fields[1::2], (int(v) for v in fields[2::2])))
    raise AssertionError("no TCP line in /proc/net/sockstat")


def audited(box):
    env = dict(os.environ, PYTHONPATH=str(collections_path()))
    return json.loads(box.exec([python_interpreter(), "-c", AUDIT], env=env).stdout)


@pytest.fixture
def box():
    with Sandbox.new() as sandbox:
        sandbox.set_sysctl("net.ipv4.ip_local_port_range", "1024 65535")
        sandbox.set_sysctl("net.ipv4.tcp_tw_reuse", "0")
        yield sandbox


def test_self_churn_leaves_each_connection_in_time_wait(box):
    child = box.start(program("self-churn", "127.0.10.1,127.0.10.2", "8080,8081", 2000, 60), ready="listening")
    try:
        counts = json.loads(child.stdout.readline())
        child.wait(timeout=30)
    finally:
        stop_process(child)
    assert counts["made"] == 2000 and counts["failed"] == 0, counts
    assert sockstat(box)["tw"] == 2000  # TIME_WAIT lasts 60 s: none has expired
    sockets = audited(box)
    assert sockets["by_state"].get("TIME_WAIT") == 2000, sockets
    # the client end closed first: every TIME_WAIT socket is a client port towards one of the 4 listeners
    listing = box.exec(["ss", "-Htan", "state", "time-wait"]).stdout.splitlines()
    assert len(listing) == 2000
    assert {line.split()[-1] for line in listing} == {"127.0.10.1:8080", "127.0.10.1:8081", "127.0.10.2:8080",
                                                      "127.0.10.2:8081"}


def test_self_churn_stops_at_its_time_limit(box):
    started = time.monotonic()
    child = box.start(program("self-churn", "127.0.10.1", "8080", 20000000, 1), ready="listening")
    try:
        counts = json.loads(child.stdout.readline())
        child.wait(timeout=30)
    finally:
        stop_process(child)
    assert time.monotonic() - started < 10
    assert counts["seconds"] < 3 and 0 < counts["made"] < 20000000, counts


def test_established_holds_both_ends_open(box):
    child = box.start(program("hold", "127.0.20.1", 9000, 300, 60))
    try:
        fields = child.stdout.readline().split()
        assert fields[:2] == ["ready", "300"], fields
        stat = sockstat(box)
        assert stat["inuse"] == 601 and stat["tw"] == 0, stat  # 300 connections, both ends, and the listener
        sockets = audited(box)
        assert sockets["by_state"] == {"ESTABLISHED": 600, "LISTEN": 1}, sockets
    finally:
        stop_process(child)


def test_established_stays_within_its_hard_descriptor_limit(box):
    need(shutil.which("prlimit") is not None, "needs prlimit (Debian package util-linux)")
    # hard limit 264 descriptors: (264 - 64) // 2 = 100 connections, whatever is asked
    hold = program("hold", "127.0.20.2", "9000", "5000", "1", python=python_interpreter())
    done = box.exec(["prlimit", "--nofile=264:264"] + hold, timeout=30)
    fields = done.stdout.split()
    assert fields[:2] == ["ready", "100"], done.stdout
    assert len(fields) == 3  # no error: it asked for no more than it could hold
