"""Capture trace_capture.txt: the text LinuxHost's trace instance gives for known traffic (run as root).

    .venv/bin/python tests/unit/plugins/module_utils/data/capture_trace.py
    .venv/bin/python tests/unit/plugins/module_utils/data/capture_trace.py --bound

With ``--bound`` it captures trace_bound_capture.txt instead: one process connects once from an ephemeral port it
bound first (bind before connect), once after IP_BIND_ADDRESS_NO_PORT, once without bind(), and once from port 5000
(bound, outside the range); its pid and the ports goes into trace_bound_capture.json.

In a network namespace with ip_local_port_range "40000 40009": a python client holds 10 connections open
(client-first closes later), fails one connect for want of a port (EADDRNOTAVAIL), connects over IPv6 and to a
v4-mapped address; a shell forks `curl` twice against a server that closes first.  The pids are written into
trace_capture.json, for the tests to assert against.
"""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[4] / ".build" / "collections"))

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost  # noqa: E402
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_trace import parse_line  # noqa: E402
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_trace_sample import trace_events  # noqa: E402

LOOPBACK = (socket.inet_pton(socket.AF_INET, "127.0.0.1"), socket.inet_pton(socket.AF_INET6, "::1"))

SERVER = """
import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("127.0.0.1", 8080)); s.listen(64)
s6 = socket.socket(socket.AF_INET6); s6.bind(("::1", 8081)); s6.listen(64)
s.settimeout(0.2); s6.settimeout(0.2)
end = time.time() + 4
while time.time() < end:
    for l in (s, s6):
        try:
            c, a = l.accept()
        except OSError:
            continue
        c.recv(100); c.sendall(b"HTTP/1.0 200 OK\\r\\nContent-Length: 0\\r\\n\\r\\n"); c.close()
"""
CLIENT = """
import os, socket, time
held = [socket.create_connection(("127.0.0.1", 8080)) for n in range(10)]
try:
    socket.create_connection(("127.0.0.1", 8080))
except OSError as exc:
    print("failed", exc.errno)
for c in held:
    c.close()
c = socket.create_connection(("::1", 8081)); c.sendall(b"GET / HTTP/1.0\\r\\n\\r\\n"); c.recv(100); c.close()
time.sleep(0.3)
print("client", os.getpid())
"""


BOUND = """
import json, os, socket
IP_BIND_ADDRESS_NO_PORT = 24
out = {"pid": os.getpid()}
first = socket.socket(); first.bind(("127.0.0.1", 0)); out["bound"] = first.getsockname()[1]
first.connect(("127.0.0.1", 8080))
late = socket.socket(); late.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1); late.bind(("127.0.0.1", 0))
late.connect(("127.0.0.1", 8080)); out["no_port"] = late.getsockname()[1]
plain = socket.create_connection(("127.0.0.1", 8080)); out["plain"] = plain.getsockname()[1]
fixed = socket.socket(); fixed.bind(("127.0.0.1", 5000)); fixed.connect(("127.0.0.1", 8080)); out["fixed"] = 5000
print(json.dumps(out))
"""


def bound():
    """trace_bound_capture.txt and .json: see the docstring."""
    ns = "trcapb"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = ["ip", "netns", "exec", ns]
        subprocess.run(run + ["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(run + ["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40009"], check=True)
        server = subprocess.Popen(run + [sys.executable, "-c", "import socket, time\ns = socket.socket()\n"
                                         "s.bind(('127.0.0.1', 8080)); s.listen(8); time.sleep(3)"])
        time.sleep(0.5)
        with LinuxHost().trace_instance(trace_events((40000, 40009)), 1024) as (pipe, notes):
            client = subprocess.run(run + [sys.executable, "-c", BOUND], capture_output=True, text=True, check=True)
            time.sleep(0.3)
            pipe.stop()
            text = pipe.read()
        server.kill()
        server.wait()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    meta = json.loads(client.stdout)
    (HERE / "trace_bound_capture.txt").write_text(ours(text, meta["pid"]))
    (HERE / "trace_bound_capture.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(meta)


def ours(text, root):
    """The lines of this capture's processes (the tree forked from ``root``) and of loopback sockets: the host
    has other traffic, which the tests need not carry."""
    tree = {root}
    keep = []
    for line in text.splitlines():
        parsed = parse_line(line)
        if parsed is None or parsed[0] == "lost":
            continue
        event, comm, tid, tgid, stamp, data = parsed
        if event == "sched_process_fork" and tgid in tree:
            tree.add(data)
        if tgid in tree or (event == "inet_sock_set_state" and data[3] in LOOPBACK):
            keep.append(line)
    return "\n".join(keep) + "\n"


def main():
    ns = "trcap"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = ["ip", "netns", "exec", ns]
        subprocess.run(run + ["ip", "link", "set", "lo", "up"], check=True)
        subprocess.run(run + ["sysctl", "-qw", "net.ipv4.ip_local_port_range=40000 40009"], check=True)
        server = subprocess.Popen(run + [sys.executable, "-c", SERVER])
        time.sleep(0.5)
        host = LinuxHost()
        with host.trace_instance(trace_events((40000, 40009)), 1024) as (pipe, notes):
            client = subprocess.run(run + [sys.executable, "-c", CLIENT], capture_output=True, text=True, check=False)
            time.sleep(1.2)
            loop = subprocess.run(run + ["sh", "-c", "for n in 1 2; do curl -s -o /dev/null http://127.0.0.1:8080/; "
                                         "done; echo loop $$"], capture_output=True, text=True, check=False)
            time.sleep(0.3)
            pipe.stop()
            text = pipe.read()
        server.wait()
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    (HERE / "trace_capture.txt").write_text(ours(text, os.getpid()))
    meta = {"capture": os.getpid(), "client": client.stdout, "loop": loop.stdout, "notes": notes}
    (HERE / "trace_capture.json").write_text(json.dumps(meta, indent=1) + "\n")
    print(meta)


if __name__ == "__main__":
    if sys.argv[1:] == ["--bound"]:
        bound()
    else:
        main()
