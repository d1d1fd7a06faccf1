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

# A shell loop starting a curl per request; each attempt's wall-clock time and outcome go to a file, so that the
# test can count what the loop did during the sample itself (a failing curl is fast, and the loop's pace changes
# while ansible-playbook starts on the same cores).
LOOP = ("echo ready $$; end=$((EPOCHSECONDS+{seconds})); while [ $EPOCHSECONDS -lt $end ]; do "
        "if curl -s -o /dev/null http://127.0.0.1:8081/; then r=ok; else r=failed; fi; "
        "echo \"$EPOCHREALTIME $r\" >> {log}; sleep {pause}; done; echo '{{\"done\": 1}}'")


def loop_argv(log, pause):
    return ["bash", "-c", LOOP.format(seconds=RUN_SECONDS, log=log, pause=pause)]


def counts_in_windows(log, outcome, begun, ended, seconds):
    """(fewest, most) attempts with ``outcome`` the loop made in any ``seconds`` between ``begun`` and ``ended``
    (the sample lies somewhere in there)."""
    stamps = []
    for text in Path(log).read_text().splitlines():
        stamp, result = text.split()
        if result == outcome:
            stamps.append(float(stamp))
    counts = []
    start = begun
    while start + seconds <= ended:
        counts.append(sum(1 for stamp in stamps if start <= stamp < start + seconds))
        start += 0.05
    return min(counts), max(counts)


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
    """The module's result, and the wall-clock times the playbook began and ended."""
    begun = time.time()
    rc, results = box.run_playbook(play(), timeout=180)
    ended = time.time()
    assert rc == 0, box.last_run.describe()
    (result,) = [r for r in results if r["_task"] == "audit"]
    assert not result.get("failed"), result
    assert result["attribution"]["method"] == "tracepoints", result["notes"]
    return result, begun, ended


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


def test_every_close_order_and_a_spawn_loop_are_counted_for_who_made_them(box, tmp_path):
    start(box, [sys.executable, "-c", SERVER, "8081", "server"])
    start(box, [sys.executable, "-c", SERVER, "8082", "client"])
    server_first, (pid_a,) = start(box, [sys.executable, "-c", CLIENT, "8081", "100", str(RUN_SECONDS), "server"])
    client_first, (pid_c,) = start(box, [sys.executable, "-c", CLIENT, "8082", "15", str(RUN_SECONDS), "client"])
    loop, (pid_sh,) = start(box, loop_argv(tmp_path / "loop.log", 0.08))
    result, begun, ended = audit(box)
    truth_a, truth_c = last_json(server_first), last_json(client_first)
    last_json(loop)
    rows = dict((row["pid"], row) for row in result["processes"])
    seconds = result["attribution"]["sampled_seconds"]
    fewest, most = counts_in_windows(tmp_path / "loop.log", "ok", begun, ended, seconds)
    print(json.dumps(result["processes"], indent=1)[:4000], truth_a, truth_c, fewest, most)
    a, c, sh = rows[int(pid_a)], rows[int(pid_c)], rows[int(pid_sh)]
    assert a["evidence"] == "exact" and near(a["new_connections_per_second"], truth_a["rate"])
    assert c["evidence"] == "exact" and near(c["new_connections_per_second"], truth_c["rate"])
    assert c["time_wait"] >= 0.8 * truth_c["rate"] * SAMPLE  # closed first: its TIME_WAITs are its own
    assert a["time_wait"] == 0  # the server closed first: no TIME_WAIT here
    assert sh["name"] == "bash" and sh["spawned"]["command"] == "curl"
    assert 0.8 * fewest <= sh["spawned"]["count"] == sh["new_connections"] <= 1.2 * most
    for row in result["processes"]:  # a curl still running at the end is its own, with its one connection
        assert row["name"] != "curl" or row["new_connections"] <= 1


def test_an_exhausted_range_names_the_process_that_fails(box, tmp_path):
    start(box, [sys.executable, "-c", SERVER, "8081", "client"])
    holder, held = start(box, [sys.executable, "-c", HOLD])
    assert int(held[0]) == 1000
    loop, (pid_sh,) = start(box, loop_argv(tmp_path / "loop.log", 0))
    result, begun, ended = audit(box)
    last_json(loop)
    rows = dict((row["pid"], row) for row in result["processes"])
    sh = rows[int(pid_sh)]
    fewest, most = counts_in_windows(tmp_path / "loop.log", "failed", begun, ended,
                                     result["attribution"]["sampled_seconds"])
    print(json.dumps(sh, indent=1), fewest, most)
    assert counts_in_windows(tmp_path / "loop.log", "ok", begun, ended, 1.0) == (0, 0)
    assert sh["name"] == "bash" and sh["spawned"]["command"] == "curl" and sh["new_connections"] == 0
    assert 0.8 * fewest <= sh["failed_connections"] <= 1.2 * most


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


NESTED = r"""
import sys
sys.path.insert(0, sys.argv[1])
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host_trace import TraceUnavailable
try:
    LinuxHost().tracefs()
except TraceUnavailable as exc:
    print("unavailable:", exc)
else:
    print("available")
"""


def test_a_run_in_a_pid_namespace_of_its_own_does_not_trace(root_netns):
    """The trace names processes by the initial namespace's pids: in a PID namespace of its own (whose /proc shows
    other pids) the audit must not trace, or a trace pid would be read as another process."""
    outside = subprocess.run([sys.executable, "-c", NESTED, collections_path()], capture_output=True, text=True,
                             timeout=60, check=False)
    assert outside.stdout.strip() == "available", outside.stdout + outside.stderr
    inside = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", NESTED,
                             collections_path()], capture_output=True, text=True, timeout=60, check=False)
    assert inside.stdout.startswith("unavailable: this process runs in a PID namespace of its own"), \
        inside.stdout + inside.stderr
