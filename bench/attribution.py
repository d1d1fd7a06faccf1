"""Who burns the ports, at what cost: process attribution against ``ss -tanp``, its rate error, and the audit's
scale curve to a million sockets (issue 14).

    sudo PYTHONPATH=$(python3 -m tests.support.collection) .venv/bin/python -m bench.attribution \
        [--owned 100000] [--processes 500] [--scale 10000,100000,1000000] [--fill-seconds 240] [--fillers 4]
        [--repetitions 5] [--only attribution,rate,scale]

Three measurements, each in a network namespace of its own (loopback only), deleted afterwards (the rate error
first, then the attribution cost, then the scale):

1. **attribution**: ``--processes`` client processes (forked) hold ``--owned``/2 connections to 5 server processes
   that accept and hold them: ``--owned`` sockets in all, every one owned by a process.  The module's core
   function with attribution (``linux_port_usage.audit()``, a fresh process per run) against ``ss -tanp`` on the
   same table; peak RSS of the audit runs (RUSAGE_CHILDREN of a driver process that runs only them).
2. **rate error**: a client at a steady 100 new connections per second, each living 2 ms
   (tests.support.traffic.STEADY), and ``audit(sample_seconds=3)``: the relative error of the churner's rate
   against the rate the client counted itself.
3. **scale**: ``tcp_max_tw_buckets`` raised to 2,000,000 and 16 destination tuples (127.0.0.1-4, ports
   8080-8083, one server process each): ``--fillers`` churn processes connect and close first (their ports stay 60 s in TIME_WAIT) until the table
   holds each size of ``--scale``; the churn is stopped (SIGSTOP) while the audit without attribution and
   ``ss -tan`` are timed at that size, then resumed.  Bounded: ``--fill-seconds`` in all; a size not reached
   in time is measured at the largest reached and says so.

Prints the figures and writes bench/results/attribution.json.  Nothing outside the namespaces is changed.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.audit_cost import DRIVER, delete_namespace, median
from tests.support.collection import ROOT, collections_path
from tests.support.traffic import ECHO, STEADY

RESULTS = ROOT / "bench" / "results" / "attribution.json"
TARGET_VS_SS_P = 1.0
TARGET_VS_SS = 1.0
TARGET_RSS_MB = 64.0
TARGET_RATE_ERROR = 0.2

# PROCESSES PER_PROCESS SERVERS: SERVERS processes accept and hold every connection (selectors); PROCESSES
# forked clients open PER_PROCESS connections each to 127.0.0.1/127.0.0.2:9000+server and hold them.  Prints
# "ready N" once all are open, then holds until killed (at most 600 s).
HOLD = r"""
import os, resource, selectors, signal, socket, sys, time
processes, per_process, servers = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
children = []
listeners = []
for index in range(servers):
    for address in ("127.0.0.1", "127.0.0.2"):
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, 9000 + index))
        sock.listen(4096)
        listeners.append((index, sock))
for index in range(servers):
    pid = os.fork()
    if pid == 0:
        sel = selectors.DefaultSelector()
        mine = [sock for owner, sock in listeners if owner == index]
        for sock in mine:
            sock.setblocking(False)
            sel.register(sock, selectors.EVENT_READ)
        held = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            for key, dummy in sel.select(timeout=1.0):
                while True:
                    try:
                        conn, peer = key.fileobj.accept()
                    except (BlockingIOError, InterruptedError):
                        break
                    except OSError:  # reset before it was accepted (ECONNABORTED)
                        continue
                    held.append(conn)
        os._exit(0)
    children.append(pid)
ready_r, ready_w = os.pipe()
for index in range(processes):
    pid = os.fork()
    if pid == 0:
        held = []
        for number in range(per_process):
            held.append(socket.create_connection(("127.0.0.%d" % (1 + number % 2), 9000 + index % servers)))
        os.write(ready_w, b".")
        time.sleep(600)
        os._exit(0)
    children.append(pid)
got = 0
while got < processes:
    got += len(os.read(ready_r, processes))
print("ready %d" % (processes * per_process), flush=True)

def stop(*args):
    for pid in children:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    os._exit(0)

signal.signal(signal.SIGTERM, stop)
time.sleep(600)
stop()
"""

# ADDRESSES PORTS: one server process per (address, port): accept, wait for the client's FIN, close (the client
# closes first: its port stays in TIME_WAIT).  Prints "listening"; runs until killed (at most 900 s).
SINK = r"""
import os, socket, sys, time
children = []
for address in sys.argv[1].split(","):
    for port in [int(p) for p in sys.argv[2].split(",")]:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((address, port))
        sock.listen(4096)
        pid = os.fork()
        if pid == 0:
            sock.settimeout(1.0)
            deadline = time.monotonic() + 900
            while time.monotonic() < deadline:
                try:
                    conn, peer = sock.accept()
                except OSError:
                    continue
                try:
                    conn.settimeout(2.0)
                    conn.recv(1)
                except OSError:
                    pass
                conn.close()
            os._exit(0)
        sock.close()
        children.append(pid)
print("listening", flush=True)
for pid in children:
    os.waitpid(pid, 0)
"""

# TARGETS...: connect() and close() first, round robin over the (address, port) targets (no bind(): each tuple has
# its own 64,000 ports); at most 20,000,000 connections and 900 s.
FILL = r"""
import socket, sys, time
targets = [(item.split(":")[0], int(item.split(":")[1])) for item in sys.argv[1].split(",")]
deadline = time.monotonic() + 900
made = 0
while made < 20000000 and time.monotonic() < deadline:
    for target in targets:
        sock = socket.socket()
        try:
            sock.connect(target)
            made += 1
        except OSError:
            time.sleep(0.001)
        finally:
            sock.close()
"""

AUDIT_CHILD = r"""
import json, sys, time
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_port_usage import audit
attribute = sys.argv[1] == "attribute"
sample = float(sys.argv[2]) if len(sys.argv) > 2 else 0
started = time.perf_counter()
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_processes import ProcessTable
table = ProcessTable()
result = audit(top=10, attribute=attribute, sample_seconds=sample, processes=table)
debug = {"netns": table.netns, "pids": table.pids()[:20], "other": table.other_netns, "known": len(table.inode_pid),
         "unreadable": len(table.unreadable)}
seconds = time.perf_counter() - started
out = {"seconds": seconds, "sockets": result["sockets"]["total"], "source": result["source"],
       "notes": result["notes"], "attribution": result.get("attribution"), "debug": debug}
if attribute:
    info = result["attribution"]
    out.update(unattributed=sum((d.get("in_use") or 0) for d in info["unattributed"]),
               processes_listed=len(result["processes"]), top_churner=result["top_churner"],
               unreadable_processes=info["unreadable_processes"])
print(json.dumps(out))
"""


def run(cmd, timeout=120, **kwargs):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=True, **kwargs)


class Namespace:
    def __init__(self, label):
        self.name = "pua%s-%d" % (label, os.getpid())
        self.children = []

    def __enter__(self):
        run(["ip", "netns", "add", self.name])
        run(self.argv(["ip", "link", "set", "lo", "up"]))
        return self

    def argv(self, cmd):
        return ["ip", "netns", "exec", self.name] + [str(c) for c in cmd]

    def sysctl(self, key, value):
        run(self.argv(["sh", "-c", 'echo "$1" > "/proc/sys/$2"', "sh", value, key.replace(".", "/")]))

    def start(self, script, *args, ready=None):
        child = subprocess.Popen(self.argv([sys.executable, "-c", script] + list(args)), stdout=subprocess.PIPE,
                                 text=True, start_new_session=True)
        self.children.append(child)
        if ready is not None:
            line = child.stdout.readline().strip()
            if not line.startswith(ready):
                raise RuntimeError("a process in %s did not start: %r" % (self.name, line))
            return child, line
        return child, None

    def measure(self, kind, cmd, reps, env):
        driver = self.argv([sys.executable, "-c", DRIVER, kind, reps, json.dumps([str(c) for c in cmd])])
        return json.loads(run(driver, timeout=900, env=env).stdout)

    def __exit__(self, *exc):
        for child in self.children:
            if child.poll() is None:
                try:
                    os.killpg(child.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                child.wait(timeout=30)
        delete_namespace(self.name)
        return False


def sockstat(box):
    """(sockets in use, in TIME_WAIT) from /proc/net/sockstat inside ``box``."""
    text = run(box.argv(["cat", "/proc/net/sockstat"])).stdout
    for line in text.splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            values = dict(zip(fields[1::2], (int(v) for v in fields[2::2])))
            return values.get("inuse", 0), values.get("tw", 0)
    return 0, 0


def measure_attribution(owned, processes, reps, python, env):
    per_process = max(1, owned // 2 // processes)
    with Namespace("a") as box:
        box.sysctl("net.ipv4.ip_local_port_range", "1024 65535")
        box.sysctl("net.core.somaxconn", "4096")
        dummy, line = box.start(HOLD, processes, per_process, 5, ready="ready")
        held = int(line.split()[1])
        audit = box.measure("audit", [python, "-c", AUDIT_CHILD, "attribute"], reps, env)
        ss_p = box.measure("ss", ["ss", "-tanp"], reps, env)
    runs = audit["runs"]
    seconds = median([r["seconds"] for r in runs])
    ss_seconds = median([r["process_seconds"] for r in ss_p["runs"]])
    return {
        "connections": held, "sockets": runs[0]["sockets"], "processes": processes + 5,
        "seconds": round(seconds, 4), "seconds_all": [round(r["seconds"], 4) for r in runs],
        "process_seconds": round(median([r["process_seconds"] for r in runs]), 4),
        "ss_p_seconds": round(ss_seconds, 4), "vs_ss_p": round(seconds / ss_seconds, 2),
        "peak_rss_mb": round(audit["peak_rss_mb"], 1), "unattributed_sockets": runs[0]["unattributed"],
    }


def measure_rate(python, env):
    with Namespace("r") as box:
        box.start(ECHO, "127.0.0.1", 8080, 120, ready="listening")
        client, dummy = box.start(STEADY, "127.0.0.1", 8080, 100, 12, 2, ready="running")
        time.sleep(1)
        audited = json.loads(run(box.argv([python, "-c", AUDIT_CHILD, "attribute", "3"]), timeout=60, env=env).stdout)
        own = None
        for dummy in range(3):
            line = client.stdout.readline()
            if line.startswith("{"):
                own = json.loads(line)
                break
    print("rate: audit %s" % json.dumps(audited), flush=True)
    top = audited["top_churner"] or {}
    measured = top.get("new_connections_per_second")
    named = top.get("pid") == own["pid"]
    error = abs(measured - own["rate"]) / own["rate"] if measured is not None and named else None
    return {"client_rate": own["rate"], "client_under_10ms": own["under_10ms"], "client_made": own["made"],
            "measured_rate": measured, "named": named, "rate_error": None if error is None else round(error, 4)}


def measure_scale(sizes, fill_seconds, reps, python, env, count=4):
    addresses = ["127.0.0.%d" % n for n in range(1, 5)]
    ports = [8080, 8081, 8082, 8083]
    targets = ",".join("%s:%d" % (a, p) for a in addresses for p in ports)
    points = []
    with Namespace("s") as box:
        for key, value in (("net.ipv4.ip_local_port_range", "1024 65535"), ("net.ipv4.tcp_tw_reuse", "0"),
                           ("net.ipv4.tcp_max_tw_buckets", "2000000"), ("net.core.somaxconn", "4096")):
            box.sysctl(key, value)
        box.start(SINK, ",".join(addresses), ",".join(str(p) for p in ports), ready="listening")
        fillers = [box.start(FILL, targets)[0] for dummy in range(count)]
        started = time.monotonic()
        for size in sorted(sizes):
            reached = sockstat(box)[1]
            while reached < size and time.monotonic() - started < fill_seconds:
                time.sleep(0.5)
                reached = sockstat(box)[1]
            for child in fillers:
                os.killpg(child.pid, signal.SIGSTOP)
            time.sleep(0.3)
            audit = box.measure("audit", [python, "-c", AUDIT_CHILD, "plain"], reps, env)
            plain = box.measure("ss", ["ss", "-tan"], reps, env)
            seconds = median([r["seconds"] for r in audit["runs"]])
            ss_seconds = median([r["process_seconds"] for r in plain["runs"]])
            points.append({"target": size, "sockets": audit["runs"][0]["sockets"], "reached": reached >= size,
                           "seconds": round(seconds, 4), "ss_seconds": round(ss_seconds, 4),
                           "vs_ss": round(seconds / ss_seconds, 2), "peak_rss_mb": round(audit["peak_rss_mb"], 1),
                           "filled_after_seconds": round(time.monotonic() - started, 1)})
            print("scale: %(sockets)d sockets (target %(target)d): audit %(seconds).3f s, ss -tan %(ss_seconds).3f s, "
                  "%(vs_ss).2fx, peak RSS %(peak_rss_mb).1f MiB" % points[-1], flush=True)
            if not points[-1]["reached"]:
                break
            for child in fillers:
                os.killpg(child.pid, signal.SIGCONT)
    return points


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--owned", type=int, default=100000, help="owned sockets for the attribution cost (at most 200000)")
    parser.add_argument("--processes", type=int, default=500, help="client processes holding them (at most 1000)")
    parser.add_argument("--scale", default="10000,100000,1000000", help="table sizes of the scale curve")
    parser.add_argument("--fill-seconds", type=float, default=240, help="the most the scale fill may take (at most 600)")
    parser.add_argument("--repetitions", type=int, default=5, help="timed runs of each tool (1 to 20)")
    parser.add_argument("--fillers", type=int, default=4, help="processes churning connections for the scale fill (1-8)")
    parser.add_argument("--only", default="attribution,rate,scale")
    parser.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/attribution.py needs root (it creates network namespaces)")
    owned = max(1000, min(args.owned, 200000))
    processes = max(1, min(args.processes, 1000))
    reps = max(1, min(args.repetitions, 20))
    sizes = sorted(set(max(1000, min(int(s), 2000000)) for s in args.scale.split(",") if s.strip()))
    only = set(args.only.split(","))
    env = dict(os.environ, PYTHONPATH=str(collections_path()))
    result = {"command": " ".join(["python -m bench.attribution"] + sys.argv[1:]),
              "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "load_avg": list(os.getloadavg())}}
    if "rate" in only:
        result["rate"] = measure_rate(args.python, env)
        print("rate: client %(client_rate)s/s, measured %(measured_rate)s/s, named %(named)s, error %(rate_error)s"
              % result["rate"], flush=True)
    if "attribution" in only:
        result["attribution"] = measure_attribution(owned, processes, reps, args.python, env)
        result["attribution"]["rate_error"] = (result.get("rate") or {}).get("rate_error")
        print("attribution: %(sockets)d sockets (%(connections)d connections, %(processes)d processes): audit "
              "%(seconds).3f s, ss -tanp %(ss_p_seconds).3f s, %(vs_ss_p).2fx, peak RSS %(peak_rss_mb).1f MiB, "
              "%(unattributed_sockets)d sockets unattributed" % result["attribution"], flush=True)
    if "scale" in only:
        points = measure_scale(sizes, max(10.0, min(args.fill_seconds, 600.0)), reps, args.python, env,
                               max(1, min(args.fillers, 8)))
        result["scale"] = points
        largest = points[-1] if points else None
        result["million"] = None if largest is None else {
            "sockets": largest["sockets"], "reached": largest["target"] >= 1000000 and largest["reached"],
            "vs_ss": largest["vs_ss"], "peak_rss_mb": largest["peak_rss_mb"], "seconds": largest["seconds"]}
        if len(points) >= 2:  # linear: seconds per socket at the largest size against the smallest
            first, last = points[0], points[-1]
            result["linearity"] = round((last["seconds"] / last["sockets"]) / (first["seconds"] / first["sockets"]), 2)
    result["targets"] = {"attribution.vs_ss_p": TARGET_VS_SS_P, "attribution.peak_rss_mb": TARGET_RSS_MB,
                         "attribution.rate_error": TARGET_RATE_ERROR, "audit.million.vs_ss": TARGET_VS_SS,
                         "audit.million.peak_rss_mb": TARGET_RSS_MB}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    print("written to %s" % output)


if __name__ == "__main__":
    main()
