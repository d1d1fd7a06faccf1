"""Blame only what is proven (issue 21 item 5), on the real kernel: a pid reused during the audit inherits nothing,
and a process that unshares its network namespace after creating its sockets is still named by them.

Both run in namespaces of their own: the pid reuse in a new pid namespace (``unshare --pid --fork --mount-proc``,
where writing /proc/sys/kernel/ns_last_pid picks the next pid of that namespace only, never the host's), the
network case in a new network namespace.  Nothing here ever skips under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

from tests.support.ci import need

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join((ROOT, os.path.join(ROOT, ".build", "collections"))))

# Runs as pid 1 of a new pid namespace with its own /proc.  Process A (pid P) holds a socket and is scanned; it
# exits; ns_last_pid = P - 1 gives the next fork pid P: process B, another program with a socket of its own.
REUSE = textwrap.dedent('''
    import json, os, socket, subprocess, sys, time
    from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_processes import ProcessTable
    HOLD = "import socket, sys, time; s = socket.socket(); print(s.fileno(), flush=True); time.sleep(60)"
    a = subprocess.Popen([sys.executable, "-c", HOLD, "first-process"], stdout=subprocess.PIPE)
    a.stdout.readline()
    table = ProcessTable()
    table.scan()
    pid = a.pid
    first = table.describe(pid)
    a.kill(); a.wait()
    time.sleep(0.05)  # another start time (clock ticks of 10 ms)
    with open("/proc/sys/kernel/ns_last_pid", "w") as handle:
        handle.write(str(pid - 1))
    b = subprocess.Popen([sys.executable, "-c", HOLD, "second-process"], stdout=subprocess.PIPE)
    b.stdout.readline()
    table.scan()
    inode = [os.readlink("/proc/%d/fd/%s" % (b.pid, fd)) for fd in os.listdir("/proc/%d/fd" % b.pid)]
    inodes = [int(link[8:-1]) for link in inode if link.startswith("socket:[")]
    out = {"pid": pid, "b_pid": b.pid, "first": first, "end": table.describe(pid), "now": getattr(table, "identify", table.describe)(pid),
           "b_owned": [table.owner(i) for i in inodes], "reused": sorted(getattr(table, "reused", ()))}
    b.kill(); b.wait()
    print(json.dumps(out))
''')


def test_a_reused_pid_inherits_nothing(root_netns):
    need(shutil.which("unshare") is not None, "needs unshare (Debian package util-linux)")
    done = subprocess.run(["unshare", "--pid", "--fork", "--mount-proc", sys.executable, "-c", REUSE], env=ENV,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    print(out)
    assert out["b_pid"] == out["pid"]  # the pid really was reused
    assert "first-process" in out["first"]["cmdline"]
    assert out["end"] == out["first"]  # the end of the audit describes the process that had the sockets
    assert "second-process" in out["now"]["cmdline"] and out["now"]["start_time"] != out["first"]["start_time"]
    assert out["b_owned"] and all(owner is None for owner in out["b_owned"])  # B's socket is nobody's here
    assert out["reused"] == [out["pid"]]


# Runs inside a new network namespace: a listener on 127.0.0.1; the hider creates its sockets there, unshares a
# network namespace of its own (CLONE_NEWNET), then connects and closes them one by one during the sample
# (client first: TIME_WAIT on this side), each held 25 ms so that the live dumps see them; the neighbour opens one
# connection to the same destination during the sample.  Before issue 21 the hider was skipped (another network
# namespace now) and its connections were shared out to the neighbour, the only opener seen.
UNSHARED = textwrap.dedent('''
    import json, socket, subprocess, sys, threading, time
    from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_port_usage import audit
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    server = socket.socket(); server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    server.bind(("127.0.0.1", 8088)); server.listen(512)
    def serve():
        while True:
            conn, _ = server.accept()
            conn.recv(1); conn.close()
    threading.Thread(target=serve, daemon=True).start()
    HIDER = """
    import ctypes, socket, sys, time
    socks = [socket.socket() for _ in range(500)]
    assert ctypes.CDLL(None, use_errno=True).unshare(0x40000000) == 0, "unshare(CLONE_NEWNET)"
    print("ready", flush=True); sys.stdin.readline()
    made = 0
    for s in socks:
        s.connect(("127.0.0.1", 8088)); time.sleep(0.025); s.close(); made += 1
    print(made, flush=True); time.sleep(30)
    """
    NEIGHBOUR = """
    import socket, sys, time
    print("ready", flush=True); sys.stdin.readline()
    time.sleep(0.5)  # during the sample: seen opening one connection, as an opener is
    s = socket.create_connection(("127.0.0.1", 8088)); time.sleep(30)
    """
    kids = [subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
            for code in (HIDER, NEIGHBOUR)]
    for kid in kids:
        assert kid.stdout.readline().strip() == "ready"
    netns = [open("/proc/%d/ns/net" % kid.pid).close() or __import__("os").readlink("/proc/%d/ns/net" % kid.pid)
             for kid in kids]
    for kid in kids:
        kid.stdin.write("go\\n"); kid.stdin.flush()
    started = time.monotonic()
    result = audit(top=10, sample_seconds=3)
    for kid in kids:
        kid.kill(); kid.wait()
    print(json.dumps({"hider": kids[0].pid, "neighbour": kids[1].pid, "netns": netns,
                      "own": __import__("os").readlink("/proc/self/ns/net"), "result": result}))
''')


def test_a_process_that_unshares_after_creating_its_sockets_is_named(root_netns):
    need(shutil.which("unshare") is not None, "needs unshare (Debian package util-linux)")
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", UNSHARED], env=ENV, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    result = out["result"]
    hider, neighbour = out["hider"], out["neighbour"]
    procs = dict((proc["pid"], proc) for proc in result["processes"])
    print({"top_churner": result["top_churner"], "client_findings": result["client_findings"],
           "processes": [(p["pid"], p["evidence"], p["new_connections"], p["new_connections_inferred"])
                         for p in result["processes"]]})
    assert out["netns"][0] != out["own"] and out["netns"][1] == out["own"]  # the hider really left
    assert hider in procs and procs[hider]["evidence"] == "exact"
    assert procs[hider]["new_connections"] - procs[hider]["new_connections_inferred"] > 0  # seen, not inferred
    assert result["top_churner"]["pid"] == hider
    assert result["processes"][0]["pid"] == hider
    assert not [f for f in result["client_findings"] if f["pid"] == neighbour]
    assert procs[neighbour]["new_connections"] - procs[neighbour]["new_connections_inferred"] == 1
