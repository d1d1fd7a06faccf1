"""port_usage_info's sample through the kernel's tracepoints, on the real kernel, with a real ansible-playbook.

In one network namespace (range 40000-40999): a python client whose server closes first (Connection: close
style) at 100/s, a shell loop that starts a curl per request at about 10/s against the same server, and a python
client that closes first at 15/s.  The module must say it traced (``attribution.method: tracepoints``), give each
client its rate within 20% of the client's own count, name the shell (not the curls) with ``spawned``, and give
the client that closes first its TIME_WAITs.  A second namespace has its range held full by another process:
the shell loop's curls fail, and the shell is named with the failures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_trace_sample import trace_events
from tests.support.collection import collections_path
from tests.support.netns import Sandbox

RANGE = "40000 40999"
RUN_SECONDS = 30  # the clients run longer than ansible-playbook's start and the sample
SAMPLE = 4

SERVER = r"""
import socket, sys, threading
port, first = int(sys.argv[1]), sys.argv[2]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(4096)
print("ready", flush=True)
def serve(c):
    try:
        c.recv(4096); c.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok")
        if first == "client":
            c.recv(10)  # wait for the client to close first
    except OSError:
        pass
    c.close()
while True:
    c, a = s.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT = r"""
import os, socket, sys, time, json
port, rate, seconds, first = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
print("ready", os.getpid(), flush=True)
made = 0; begun = time.monotonic(); due = begun
while time.monotonic() - begun < seconds:
    c = socket.create_connection(("127.0.0.1", port))
    c.sendall(b"GET / HTTP/1.0\r\n\r\n")
    if first == "client":
        c.recv(100)
    else:
        while c.recv(100):
            pass
    c.close(); made += 1
    due += 1.0 / rate; time.sleep(max(0.0, due - time.monotonic()))
print(json.dumps({"rate": made / (time.monotonic() - begun)}), flush=True)
"""

HOLD = r"""
import socket, time
held = []
while True:
    try:
        held.append(socket.create_connection(("127.0.0.1", 8081)))
    except OSError:
        break
print("ready", len(held), flush=True)
time.sleep(120)
"""

LOOP = ("echo ready $$; n=0; f=0; start=$(date +%s.%N); end=$(($(date +%s)+{seconds})); "
        "while [ $(date +%s) -lt $end ]; do curl -s -o /dev/null http://127.0.0.1:8081/ || f=$((f+1)); n=$((n+1)); "
        "sleep {pause}; done; "
        "echo \"{{\\\"count\\\": $n, \\\"failed\\\": $f, \\\"seconds\\\": $(echo \"$(date +%s.%N) - $start\" | bc)}}\"")


def play():
    return json.dumps([{"name": "trace", "hosts": "all", "gather_facts": False, "tasks": [
        {"name": "audit", "tcpstack.tuning.port_usage_info": {"sample_seconds": SAMPLE, "top": 10},
         "register": "audit"}]}])


@pytest.fixture
def box(root_netns, request):
    box = Sandbox.new(prefix="trat")
    request.addfinalizer(box.destroy)
    box.create()
    box.set_sysctl("net.ipv4.ip_local_port_range", RANGE)
    return box


def start(box, argv):
    child = box.start(argv)
    words = child.stdout.readline().split()
    assert words[:1] == ["ready"], words
    return child, words[1:]


def audit(box):
    rc, results = box.run_playbook(play(), timeout=180)
    assert rc == 0, box.last_run.describe()
    (result,) = [r for r in results if r["_task"] == "audit"]
    assert not result.get("failed"), result
    assert result["attribution"]["method"] == "tracepoints", result["notes"]
    return result


def last_json(child, seconds=RUN_SECONDS + 30):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        line = child.stdout.readline()
        if not line:
            break
        if line.startswith("{"):
            return json.loads(line)
    raise AssertionError("the client printed no report")


def near(value, truth):
    return abs(value - truth) <= 0.2 * truth


def test_every_close_order_and_a_spawn_loop_are_counted_for_who_made_them(box):
    start(box, [sys.executable, "-c", SERVER, "8081", "server"])
    start(box, [sys.executable, "-c", SERVER, "8082", "client"])
    server_first, (pid_a,) = start(box, [sys.executable, "-c", CLIENT, "8081", "100", str(RUN_SECONDS), "server"])
    client_first, (pid_c,) = start(box, [sys.executable, "-c", CLIENT, "8082", "15", str(RUN_SECONDS), "client"])
    loop, (pid_sh,) = start(box, ["sh", "-c", LOOP.format(seconds=RUN_SECONDS, pause=0.08)])
    result = audit(box)
    truth_a, truth_c, truth_loop = last_json(server_first), last_json(client_first), last_json(loop)
    rows = dict((row["pid"], row) for row in result["processes"])
    print(json.dumps(result["processes"], indent=1)[:4000], truth_a, truth_c, truth_loop)
    a, c, sh = rows[int(pid_a)], rows[int(pid_c)], rows[int(pid_sh)]
    assert a["evidence"] == "exact" and near(a["new_connections_per_second"], truth_a["rate"])
    assert c["evidence"] == "exact" and near(c["new_connections_per_second"], truth_c["rate"])
    assert c["time_wait"] >= 0.8 * truth_c["rate"] * SAMPLE  # closed first: its TIME_WAITs are its own
    assert a["time_wait"] == 0  # the server closed first: no TIME_WAIT here
    loop_rate = truth_loop["count"] / truth_loop["seconds"]
    assert sh["name"] == "sh" and sh["spawned"]["command"] == "curl" and sh["spawned"]["count"] >= 0.8 * loop_rate * SAMPLE
    assert near(sh["new_connections_per_second"], loop_rate)
    for row in result["processes"]:  # a curl still running at the end is its own, with its one connection
        assert row["name"] != "curl" or row["new_connections"] <= 1


def test_an_exhausted_range_names_the_process_that_fails(box):
    start(box, [sys.executable, "-c", SERVER, "8081", "client"])
    holder, held = start(box, [sys.executable, "-c", HOLD])
    assert int(held[0]) == 1000
    loop, (pid_sh,) = start(box, ["sh", "-c", LOOP.format(seconds=RUN_SECONDS, pause=0)])
    result = audit(box)
    truth = last_json(loop)
    rows = dict((row["pid"], row) for row in result["processes"])
    sh = rows[int(pid_sh)]
    print(json.dumps(sh, indent=1), truth)
    assert truth["failed"] == truth["count"] > 0
    assert sh["spawned"]["command"] == "curl" and sh["failed_connections"] > 0
    assert near(sh["failed_connections_per_second"], truth["failed"] / truth["seconds"])
    assert sh["new_connections"] == 0


KILLED = r"""
import sys, time
sys.path.insert(0, sys.argv[1])
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_trace_sample import trace_events
with LinuxHost().trace_instance(trace_events(), 512) as (pipe, notes):
    print("ready", flush=True)
    time.sleep(120)
"""


def instances():
    host = LinuxHost()
    root, dummy = host.tracefs()
    try:
        fd = os.open("instances", os.O_RDONLY | os.O_DIRECTORY, dir_fd=root)
        try:
            return sorted(name for name in os.listdir(fd) if name.startswith("tcpstack-"))
        finally:
            os.close(fd)
    finally:
        os.close(root)


def test_a_killed_run_leaves_no_trace_instance_on(root_netns):
    child = subprocess.Popen([sys.executable, "-c", KILLED, collections_path()], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "ready"
        left = [name for name in instances() if name.startswith("tcpstack-%d-" % child.pid)]
        assert len(left) == 1
    finally:
        child.kill()
        child.wait()
    with LinuxHost().trace_instance(trace_events(), 512) as (pipe, notes):
        assert any(left[0] in note for note in notes), notes
        assert len([name for name in instances() if name.startswith("tcpstack-%d-" % os.getpid())]) == 1
    assert not [name for name in instances() if name.startswith(("tcpstack-%d-" % child.pid,
                                                                 "tcpstack-%d-" % os.getpid()))]
    assert "tracefs" not in Path("/proc/self/mountinfo").read_text()  # mounted, if at all, in a namespace now gone
