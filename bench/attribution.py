"""Who burns the ports, at what cost: process attribution against ``ss -tanp``, its rate error, and the audit's
scale curve to a million sockets (issue 14).

    sudo PYTHONPATH=$(python3 -m tests.support.collection) .venv/bin/python -m bench.attribution \
        [--owned 100000] [--processes 500] [--scale 10000,100000,300000,1000000] [--fill-seconds 240] [--fillers 4]
        [--established 100000]
        [--repetitions 5] [--only attribution,rate,scale,real]

Four measurements, each in network namespaces of its own, deleted afterwards (the rate error first, then the
attribution cost, then the real traffic, then the scale):

1. **attribution**: ``--processes`` client processes (forked) hold ``--owned``/2 connections to 5 server processes
   that accept and hold them: ``--owned`` sockets in all, every one owned by a process.  The module's core
   function with attribution (``linux_port_usage.audit()``, a fresh process per run) against ``ss -tanp`` on the
   same table; peak RSS of the audit runs (RUSAGE_CHILDREN of a driver process that runs only them).
2. **rate error**: a client at a steady 100 new connections per second, each living 2 ms
   (tests/support/churn.py connect --rate 100 --exchange --hold-ms 2), and ``audit(sample_seconds=3)``: the
   relative error of the churner's rate against the rate the client counted itself.
3. **scale**: ``tcp_max_tw_buckets`` raised to 2,000,000 (or 1.32x the largest size), range 1024-65535,
   ``tcp_tw_reuse`` 0.  ``--fillers`` churn processes (tests/support/churn.py self-churn), each both ends of its own
   loopback churn over 4 addresses x 4 ports (127.0.10+N.1-4, ports 8080-8083: 64 destination tuples with 4
   fillers), connect, accept and close the client end first (its port stays 60 s in TIME_WAIT) until the table
   holds 110% of each size of ``--scale``.  From the size of a million on, ``--established`` more sockets are held
   ESTABLISHED (tests/support/churn.py hold: loopback connections opened once, both ends held, 5,000 per
   process, within the hard RLIMIT_NOFILE).  The churn is stopped (SIGSTOP) while the audit without attribution and
   ``ss -tan`` are timed alternately at that size (SCALE_DRIVER: the sockets each run saw, the states, the peak
   RSS of each process), then resumed.  Bounded: ``--fill-seconds`` in all, each filler at most 20,000,000
   connections and 900 s; a size not reached in time is measured at the largest reached and says so.  The fill's
   time, rate, processes' RSS and the machine's Slab and MemAvailable (machine-wide) are recorded.

4. **real** (issue 21): real software between two namespaces (tests/support/realtraffic.py, the harness the
   integration tests use: nginx in a server namespace, the clients in a client namespace with 1,000 ports), the
   module run through its own main() with ``sample_seconds: 5``:
   - ``rate_error.SHAPE.PACE``: |reported - truth| / truth, truth being the client's OWN count over the sample
     window; PACE ``10`` (about 10 per second) or ``flat_out`` (as fast as the client goes: >= 5,000/s wanted where
     the machine can; the rate reached is in ``cases``).  SHAPE ``client_close`` (a python client that connects and
     closes first; flat out with the range 1024-65535, so that it does not run out of ports), ``server_close`` (a
     python client sending ``Connection: close`` at 10/s, connections of well under 1 ms; ApacheBench HTTP/1.0
     without keep-alive flat out: nginx closes first), ``spawn_loop`` (a bash loop starting a new curl per request;
     reported: the loop's own entry, the group's rate), ``exhausted`` (the same loop after 1,000 connections held
     to nginx took every port; reported: the loop's ``failed_connections_per_second`` against its own count of
     curl exit 7).  A client the module does not name counts as reported 0 (error 1.0).
   - ``workload_slowdown``: a flat-out python client's own rate during the sample against its mean rate over the
     5 s before and the 5 s after (1 - with / without, at least 0).
   - ``sample_cpu_seconds``: the module's CPU seconds (main() only, imports done before) per sampled second, with
     ApacheBench flat out (>= 5,000 connections/s wanted), against ``ss -tanp`` run every 10 ms for the same time
     under the same load, right after (``ss_p_cpu_seconds`` per second); ``sample_cpu_vs_ss_p`` is their ratio.
     The load during each, as the kernel counts it (ActiveOpens per second), is recorded beside them.
   - ``sample_peak_rss_mb``: the largest ru_maxrss of those module runs.

Prints the figures and writes bench/results/attribution.json.  Nothing outside the namespaces is changed.
"""

from __future__ import annotations

import argparse
import importlib
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
from tests.support.traffic import program

RESULTS = ROOT / "bench" / "results" / "attribution.json"
TARGET_VS_SS_P = 1.0
TARGET_VS_SS = 1.0
TARGET_RSS_MB = 64.0
TARGET_RATE_ERROR = 0.2
TARGET_SLOWDOWN = 0.05
TARGET_SAMPLE_CPU_VS_SS_P = 1.0

# the attribution table: PROCESSES forked clients hold PER_PROCESS connections each to SERVERS server processes,
# which accept and hold them (one port each, 9000 + N, on 127.0.0.1 and 127.0.0.2).  Prints "ready N" once all are
# open, then holds until killed (at most 600 s).
SERVERS, HOLD_SECONDS = 5, 600


def held_table(processes, per_process):
    return program("hold", "127.0.0.1,127.0.0.2", ",".join(str(9000 + n) for n in range(SERVERS)),
                   processes * per_process, HOLD_SECONDS, "--client-procs", processes, "--server-procs", SERVERS)


# Inside the scale namespace: REPS AUDIT_CMD SS_CMD (JSON argv lists): the audit and ``ss -tan >/dev/null``
# alternately (audit then ss, then ss then audit, ...: the TIME_WAIT that expire while the runs are timed fall on
# both alike), each a fresh process reaped with wait4() for its own peak RSS; the TCP sockets of
# /proc/net/sockstat (inuse + tw) read before each run.  Prints {"audit": [runs], "ss": [runs]}.
SCALE_DRIVER = r"""
import json, os, subprocess, sys, time
reps, commands = int(sys.argv[1]), {"audit": json.loads(sys.argv[2]), "ss": json.loads(sys.argv[3])}
def table():
    with open("/proc/net/sockstat") as stat:
        for line in stat:
            if line.startswith("TCP:"):
                fields = line.split()
                values = dict(zip(fields[1::2], (int(v) for v in fields[2::2])))
                return values.get("inuse", 0) + values.get("tw", 0)
    return 0
def one(kind):
    before = table()
    started = time.perf_counter()
    child = subprocess.Popen(commands[kind], stdout=subprocess.PIPE if kind == "audit" else subprocess.DEVNULL,
                             text=True)
    out = child.stdout.read() if kind == "audit" else ""
    dummy, status, usage = os.wait4(child.pid, 0)
    elapsed = time.perf_counter() - started
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode != 0:
        raise SystemExit("%s exited with %d" % (commands[kind][0], child.returncode))
    run = {"process_seconds": elapsed, "table": before, "peak_rss_mb": usage.ru_maxrss / 1024.0}
    if kind == "audit":
        run.update(json.loads(out))
    return run
runs = {"audit": [], "ss": []}
for index in range(reps):
    for kind in (("audit", "ss") if index % 2 == 0 else ("ss", "audit")):
        runs[kind].append(one(kind))
print(json.dumps(runs))
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
debug = {"pids": len(table.pids()), "known": len(table.inode_pid), "unreadable": len(table.unreadable),
         "reused": len(table.reused)}
seconds = time.perf_counter() - started
out = {"seconds": seconds, "sockets": result["sockets"]["total"], "states": result["sockets"].get("by_state"),
       "source": result["source"],
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

    def start(self, cmd, ready=None):
        child = subprocess.Popen(self.argv(cmd), stdout=subprocess.PIPE, text=True, start_new_session=True)
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


def sockstat(box, pid):
    """The TCP line of /proc/net/sockstat in ``box`` ({"inuse": N, "tw": N, ...}): read through /proc/PID/net of
    process ``pid`` inside it (no process started), or with ``cat`` in the namespace once that process is gone."""
    try:
        text = Path("/proc/%d/net/sockstat" % pid).read_text()
    except OSError:
        text = run(box.argv(["cat", "/proc/net/sockstat"])).stdout
    for line in text.splitlines():
        if line.startswith("TCP:"):
            fields = line.split()
            return dict(zip(fields[1::2], (int(v) for v in fields[2::2])))
    return {}


def meminfo():
    """The machine's MemAvailable, Slab and SUnreclaim in MiB (machine-wide: other work moves them too)."""
    out = {}
    for line in Path("/proc/meminfo").read_text().splitlines():
        key, dummy, value = line.partition(":")
        if key in ("MemAvailable", "Slab", "SUnreclaim"):
            out[key] = round(int(value.split()[0]) / 1024.0, 1)
    return out


def rss_mb(pids):
    """The summed VmRSS of ``pids`` in MiB (those still alive)."""
    total = 0
    for pid in pids:
        try:
            for line in Path("/proc/%d/status" % pid).read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return round(total / 1024.0, 1)


def measure_attribution(owned, processes, reps, python, env):
    per_process = max(1, owned // 2 // processes)
    with Namespace("a") as box:
        box.sysctl("net.ipv4.ip_local_port_range", "1024 65535")
        box.sysctl("net.core.somaxconn", "4096")
        dummy, line = box.start(held_table(processes, per_process), ready="ready")
        held = int(line.split()[1])
        audit = box.measure("audit", [python, "-c", AUDIT_CHILD, "attribute"], reps, env)
        ss_p = box.measure("ss", ["ss", "-tanp"], reps, env)
    runs = audit["runs"]
    seconds = median([r["seconds"] for r in runs])
    ss_seconds = median([r["process_seconds"] for r in ss_p["runs"]])
    return {
        "connections": held, "sockets": runs[0]["sockets"], "processes": processes + SERVERS,
        "seconds": round(seconds, 4), "seconds_all": [round(r["seconds"], 4) for r in runs],
        "process_seconds": round(median([r["process_seconds"] for r in runs]), 4),
        "ss_p_seconds": round(ss_seconds, 4), "vs_ss_p": round(seconds / ss_seconds, 2),
        "peak_rss_mb": round(audit["peak_rss_mb"], 1), "unattributed_sockets": runs[0]["unattributed"],
    }


def measure_rate(python, env):
    with Namespace("r") as box:
        box.start(program("serve", "127.0.0.1", 8080, 120, "--echo"), ready="listening")
        client, dummy = box.start(program("connect", "127.0.0.1", 8080, "--rate", 100, "--seconds", 12, "--exchange",
                                          "--hold-ms", 2, "--ready"), ready="running")
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


# The scale fill: each churn process has 4 addresses x 4 ports of its own (16 destination tuples, each with its own
# 64,512 ephemeral ports); the ESTABLISHED holders 5,000 connections each (10,000 descriptors: the hard
# RLIMIT_NOFILE here is 20,000, and the bench raises no limit).  OVERSHOOT: the fill runs to 110% of a size, so
# that the TIME_WAIT that expire while the runs are timed (churn stopped) leave the table above the size.
SCALE_PORTS = (8080, 8081, 8082, 8083)
HOLD_PER_PROCESS = 5000
OVERSHOOT = 1.1
MILLION = 1000000


def signal_all(children, signum):
    """Send ``signum`` to each child's process group (those still there)."""
    for child in children:
        try:
            os.killpg(child.pid, signum)
        except ProcessLookupError:
            pass


def start_holders(box, established):
    """Open ``established`` sockets (established/2 connections) held ESTABLISHED by ESTABLISHED processes in
    ``box``; returns (processes, connections opened, seconds to open, errors)."""
    connections = established // 2
    processes, opened, errors = [], 0, []
    started = time.monotonic()
    for index in range((connections + HOLD_PER_PROCESS - 1) // HOLD_PER_PROCESS):
        share = min(HOLD_PER_PROCESS, connections - index * HOLD_PER_PROCESS)
        child, line = box.start(program("hold", "127.0.20.%d" % (index + 1), 9000, share, 900), ready="ready")
        processes.append(child)
        fields = line.split(None, 3)
        opened += int(fields[1])
        if len(fields) > 3:
            errors.append(fields[3])
    return processes, opened, round(time.monotonic() - started, 2), errors


def measure_scale(sizes, fill_seconds, reps, python, env, count=4, established=100000):
    """The audit without attribution against ``ss -tan`` at each of ``sizes`` (TCP sockets in one namespace):
    TIME_WAIT by ``count`` SELF_CHURN processes, plus ``established`` sockets held ESTABLISHED from the first size
    of a million on.  Returns (points, fill)."""
    points = []
    fill = {"churn_processes": count, "destination_tuples": count * len(SCALE_PORTS) * 4,
            "established_requested": established if max(sizes) >= MILLION else 0,
            "memory_before_mb": meminfo(), "overshoot": OVERSHOOT}
    tw_buckets = max(2000000, int(max(sizes) * OVERSHOOT * 1.2))
    started = time.monotonic()
    with Namespace("s") as box:
        for key, value in (("net.ipv4.ip_local_port_range", "1024 65535"), ("net.ipv4.tcp_tw_reuse", "0"),
                           ("net.ipv4.tcp_max_tw_buckets", str(tw_buckets)), ("net.core.somaxconn", "4096")):
            box.sysctl(key, value)
        fill["sysctls"] = {"net.ipv4.ip_local_port_range": "1024 65535", "net.ipv4.tcp_tw_reuse": 0,
                           "net.ipv4.tcp_max_tw_buckets": tw_buckets}
        fillers = []
        for index in range(count):
            addresses = ",".join("127.0.%d.%d" % (10 + index, n) for n in range(1, 5))
            fillers.append(box.start(program("self-churn", addresses, ",".join(str(p) for p in SCALE_PORTS), 20000000,
                                             900), ready="listening")[0])
        holders = []
        probe = fillers[0].pid
        churn_seconds = 0.0
        resumed, tw_resumed = time.monotonic(), 0
        for size in sorted(sizes):
            if size >= MILLION and established and not holders:
                signal_all(fillers, signal.SIGSTOP)
                churn_seconds += time.monotonic() - resumed
                holders, opened, seconds, errors = start_holders(box, established)
                fill.update(established_processes=len(holders), established_connections=opened,
                            established_open_seconds=seconds, established_errors=errors)
                print("scale: %d connections held ESTABLISHED by %d processes, opened in %.2f s%s" % (
                    opened, len(holders), seconds, (": " + "; ".join(errors)) if errors else ""), flush=True)
                signal_all(fillers, signal.SIGCONT)
                resumed, tw_resumed = time.monotonic(), sockstat(box, probe).get("tw", 0)
            goal = int(size * OVERSHOOT)
            stat = sockstat(box, probe)
            while stat.get("inuse", 0) + stat.get("tw", 0) < goal and time.monotonic() - started < fill_seconds:
                time.sleep(0.2)
                stat = sockstat(box, probe)
            signal_all(fillers, signal.SIGSTOP)
            running = time.monotonic() - resumed
            churn_seconds += running
            time.sleep(0.3)
            stat = sockstat(box, probe)
            memory = meminfo()
            fill_rss = rss_mb([c.pid for c in fillers + holders])
            filled_after = round(time.monotonic() - started, 1)
            runs = json.loads(run(box.argv([sys.executable, "-c", SCALE_DRIVER, reps,
                                            json.dumps([python, "-c", AUDIT_CHILD, "plain"]),
                                            json.dumps(["ss", "-tan"])]), timeout=900, env=env).stdout)
            audits, plain = runs["audit"], runs["ss"]
            seconds = median([r["seconds"] for r in audits])
            ss_seconds = median([r["process_seconds"] for r in plain])
            process_seconds = median([r["process_seconds"] for r in audits])
            seen = [r["sockets"] for r in audits]
            point = {"target": size, "sockets": int(median(seen)), "sockets_min": min(seen), "sockets_max": max(seen),
                     "ss_table_min": min(r["table"] for r in plain), "ss_table_max": max(r["table"] for r in plain),
                     "reached": min(seen) >= size, "states": audits[0]["states"],
                     "sockstat": {k: stat.get(k) for k in ("inuse", "tw", "orphan", "alloc", "mem")},
                     "seconds": round(seconds, 4), "seconds_all": [round(r["seconds"], 4) for r in audits],
                     "process_seconds": round(process_seconds, 4), "ss_seconds": round(ss_seconds, 4),
                     "ss_seconds_all": [round(r["process_seconds"], 4) for r in plain],
                     "vs_ss": round(seconds / ss_seconds, 2), "process_vs_ss": round(process_seconds / ss_seconds, 2),
                     "peak_rss_mb": round(max(r["peak_rss_mb"] for r in audits), 1),
                     "ss_peak_rss_mb": round(max(r["peak_rss_mb"] for r in plain), 1),
                     "filled_after_seconds": filled_after, "churn_seconds": round(churn_seconds, 1),
                     "time_wait_per_churn_second": round((stat.get("tw", 0) - tw_resumed) / running) if running else None,
                     "fill_processes_rss_mb": fill_rss, "memory_mb": memory,
                     "measure_seconds": round(time.monotonic() - started - filled_after, 1)}
            points.append(point)
            print("scale: %(sockets)d sockets (target %(target)d, %(sockets_min)d-%(sockets_max)d across the runs): audit "
                  "%(seconds).3f s, ss -tan %(ss_seconds).3f s, %(vs_ss).2fx, peak RSS %(peak_rss_mb).1f MiB; states "
                  "%(states)s" % point, flush=True)
            if not point["reached"]:
                break
            signal_all(fillers, signal.SIGCONT)
            resumed, tw_resumed = time.monotonic(), sockstat(box, probe).get("tw", 0)
        teardown = time.monotonic()
    fill["teardown_seconds"] = round(time.monotonic() - teardown, 1)
    fill["memory_after_mb"] = meminfo()
    return points, fill


def realtraffic():
    """tests/support/realtraffic.py (it imports the collection: its path is put on sys.path first)."""
    if str(collections_path()) not in sys.path:
        sys.path.insert(0, str(collections_path()))
    return importlib.import_module("tests.support.realtraffic")


# (shape, pace, the scenario (lab -> Outcome), the client's port range, what is compared: "rate" the client's entry's
# new_connections_per_second against its own rate, "failed" its failed_connections_per_second against its failures)
def real_cases():
    rt = realtraffic()
    return [
        ("client_close", "10", lambda lab: rt.client_close(lab, rate=10), rt.RANGE, "rate"),
        ("client_close", "flat_out", lambda lab: rt.client_close(lab, rate=0), "1024 65535", "rate"),
        ("server_close", "10", lambda lab: rt.client_close(lab, rate=10, mode="close"), rt.RANGE, "rate"),
        ("server_close", "flat_out", lambda lab: rt.server_close_ab(lab, flat_out=True), rt.RANGE, "rate"),
        ("spawn_loop", "10", lambda lab: rt.spawn_loop(lab, interval=0.1), rt.RANGE, "rate"),
        ("spawn_loop", "flat_out", lambda lab: rt.spawn_loop(lab, interval=0, keepalive_timeout=0), rt.RANGE, "rate"),
        ("exhausted", "10", lambda lab: rt.exhausted_loop(lab, interval=0.1), rt.RANGE, "failed"),
        ("exhausted", "flat_out", lambda lab: rt.exhausted_loop(lab, interval=0), rt.RANGE, "failed"),
    ]


def rate_case(scenario, port_range, compared):
    """One real-traffic case in a lab of its own: the figures of its client and of the module's entry for it."""
    rt = realtraffic()
    with rt.RealLab(prefixes=("rbc", "rbs"), port_range=port_range) as lab:
        outcome = scenario(lab)
    row = outcome.row or {}
    truth = outcome.truth.rate if compared == "rate" else outcome.truth.failed_rate
    reported = row.get("new_connections_per_second" if compared == "rate" else "failed_connections_per_second")
    error = abs((reported or 0.0) - truth) / truth if truth else None
    return {"client": outcome.client.name, "truth_per_second": round(truth, 2), "reported_per_second": reported,
            "named": bool(row), "spawned": row.get("spawned"), "evidence": row.get("evidence"),
            "window_covered": outcome.truth.covered, "rate_error": None if error is None else round(error, 4),
            "method": (outcome.result.get("attribution") or {}).get("method"),
            "verdict": outcome.result.get("verdict"), "cpu_seconds": outcome.run.cpu_seconds,
            "sampled_seconds": outcome.run.sampled_seconds, "peak_rss_mb": outcome.run.peak_rss_mb}


def workload_slowdown():
    """A flat-out python client (Connection: close, nginx closes first): its own rate during the sample against its
    mean over the 5 s before and the 5 s after."""
    rt = realtraffic()
    with rt.RealLab(prefixes=("rbwc", "rbws")) as lab:
        lab.nginx(keepalive_timeout=65, workers=2)
        client = lab.python_client("close", rate=0, seconds=40)
        time.sleep(1)
        before = (time.monotonic(), time.monotonic() + 5)
        time.sleep(5.2)
        run = lab.audit(rt.SAMPLE_SECONDS)
        after = (time.monotonic() + 0.5, time.monotonic() + 5.5)
        time.sleep(5.7)
        rates = [client.truth(window).rate for window in (before, run.window, after)]
    without = (rates[0] + rates[2]) / 2.0
    return {"without_per_second": round(without, 1), "with_per_second": round(rates[1], 1),
            "before_per_second": round(rates[0], 1), "after_per_second": round(rates[2], 1),
            "workload_slowdown": round(max(0.0, 1.0 - rates[1] / without), 4) if without else None}


def sample_cpu():
    """The module's CPU per sampled second under ApacheBench flat out, against ``ss -tanp`` every 10 ms."""
    rt = realtraffic()
    with rt.RealLab(prefixes=("rbpc", "rbps")) as lab:
        lab.nginx(keepalive_timeout=0, workers=2)
        lab.ab(1000000, concurrency=8, seconds=40)
        time.sleep(1)
        run = lab.audit(rt.SAMPLE_SECONDS)
        seconds = run.sampled_seconds
        opens = active_opens(lab.client)
        polled = json.loads(lab.client.exec([sys.executable, "-c", rt.SS_POLL, seconds], timeout=120).stdout)
        opens = (active_opens(lab.client) - opens) / polled["seconds"]
    audit_cpu = run.cpu_seconds / seconds
    ss_cpu = polled["cpu_seconds"] / polled["seconds"]
    sampled = ((run.result["counters"].get("sample") or {}).get("changes") or {}).get("ActiveOpens") or {}
    return {"sample_cpu_seconds": round(audit_cpu, 4), "ss_p_cpu_seconds": round(ss_cpu, 4),
            "sample_cpu_vs_ss_p": round(audit_cpu / ss_cpu, 2) if ss_cpu else None, "ss_p_runs": polled["runs"],
            "connections_per_second_sampled": sampled.get("per_second"),
            "connections_per_second_ss_p": round(opens, 1), "sample_peak_rss_mb": run.peak_rss_mb}


def active_opens(box):
    """The client namespace's ActiveOpens (/proc/net/snmp): the load, as the kernel counts it."""
    lines = [line.split() for line in box.exec(["cat", "/proc/net/snmp"]).stdout.splitlines() if line.startswith("Tcp:")]
    return int(dict(zip(lines[0], lines[1]))["ActiveOpens"])


def measure_real():
    """The real-traffic figures (section 4 of the docstring)."""
    cases, errors = {}, {}
    for shape, pace, scenario, port_range, compared in real_cases():
        case = rate_case(scenario, port_range, compared)
        cases["%s.%s" % (shape, pace)] = case
        errors.setdefault(shape, {})[pace] = case["rate_error"]
        print("real: %s.%s: truth %s/s, reported %s/s, error %s (%s, named %s)" % (
            shape, pace, case["truth_per_second"], case["reported_per_second"], case["rate_error"],
            case["client"], case["named"]), flush=True)
    out = {"rate_error": errors, "cases": cases}
    out.update(workload_slowdown())
    out.update(sample_cpu())
    out["sample_peak_rss_mb"] = max([out["sample_peak_rss_mb"]] + [c["peak_rss_mb"] or 0 for c in cases.values()])
    print("real: workload_slowdown %(workload_slowdown)s (%(with_per_second)s/s against %(without_per_second)s/s); "
          "sample %(sample_cpu_seconds)s CPU s per s against ss -tanp %(ss_p_cpu_seconds)s "
          "(%(sample_cpu_vs_ss_p)sx) at %(connections_per_second_sampled)s connections/s; "
          "peak RSS %(sample_peak_rss_mb)s MiB" % out,
          flush=True)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--owned", type=int, default=100000, help="owned sockets for the attribution cost (at most 200000)")
    parser.add_argument("--processes", type=int, default=500, help="client processes holding them (at most 1000)")
    parser.add_argument("--scale", default="10000,100000,300000,1000000", help="table sizes of the scale curve")
    parser.add_argument("--fill-seconds", type=float, default=240, help="the most the scale fill may take (at most 600)")
    parser.add_argument("--repetitions", type=int, default=5, help="timed runs of each tool (1 to 20)")
    parser.add_argument("--fillers", type=int, default=4, help="processes churning connections for the scale fill (1-8)")
    parser.add_argument("--established", type=int, default=100000,
                        help="sockets held ESTABLISHED in the scale table from the size of a million on (0-400000)")
    parser.add_argument("--only", default="attribution,rate,scale,real")
    parser.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable)
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench/attribution.py needs root (it creates network namespaces)")

    # SIGTERM/SIGHUP (bench.run stopping it) end the run through the namespaces' __exit__: processes killed,
    # namespaces deleted
    def stop(signum, dummy):
        raise KeyboardInterrupt("signal %d" % signum)
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGHUP, stop)
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
    if "real" in only:
        result["real"] = measure_real()
    if "scale" in only:
        points, fill = measure_scale(sizes, max(10.0, min(args.fill_seconds, 600.0)), reps, args.python, env,
                                     max(1, min(args.fillers, 8)), max(0, min(args.established, 400000)))
        result["scale"] = points
        result["scale_fill"] = fill
        largest = points[-1] if points else None
        if largest is not None:
            before, at = fill["memory_before_mb"], largest["memory_mb"]
            result["million"] = {
                "sockets": largest["sockets"], "sockets_min": largest["sockets_min"],
                "reached": largest["target"] >= MILLION and largest["reached"],
                "vs_ss": largest["vs_ss"], "process_vs_ss": largest["process_vs_ss"],
                "peak_rss_mb": largest["peak_rss_mb"], "seconds": largest["seconds"],
                "ss_seconds": largest["ss_seconds"], "states": largest["states"], "sockstat": largest["sockstat"],
                "fill": {"seconds": largest["filled_after_seconds"], "churn_seconds": largest["churn_seconds"],
                         "churn_processes": fill["churn_processes"], "destination_tuples": fill["destination_tuples"],
                         "time_wait_per_churn_second": largest["time_wait_per_churn_second"],
                         "established_connections": fill.get("established_connections", 0),
                         "established_processes": fill.get("established_processes", 0),
                         "established_open_seconds": fill.get("established_open_seconds"),
                         "processes_rss_mb": largest["fill_processes_rss_mb"],
                         "machine_slab_growth_mb": round(at["Slab"] - before["Slab"], 1),
                         "machine_available_drop_mb": round(before["MemAvailable"] - at["MemAvailable"], 1),
                         "teardown_seconds": fill["teardown_seconds"]}}
        if len(points) >= 2:  # linear: seconds per socket at the largest size against the smallest
            first, last = points[0], points[-1]
            result["linearity"] = round((last["seconds"] / last["sockets"]) / (first["seconds"] / first["sockets"]), 2)
    result["targets"] = {"attribution.vs_ss_p": TARGET_VS_SS_P, "attribution.peak_rss_mb": TARGET_RSS_MB,
                         "attribution.rate_error": TARGET_RATE_ERROR, "audit.million.vs_ss": TARGET_VS_SS,
                         "audit.million.peak_rss_mb": TARGET_RSS_MB,
                         "attribution.rate_error.SHAPE.PACE": TARGET_RATE_ERROR,
                         "attribution.workload_slowdown": TARGET_SLOWDOWN,
                         "attribution.sample_cpu_vs_ss_p": TARGET_SAMPLE_CPU_VS_SS_P}
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    print("written to %s" % output)


if __name__ == "__main__":
    main()
