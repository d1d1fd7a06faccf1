"""What port_usage_info costs on a host with ~100,000 TCP sockets in TIME_WAIT, side by side with ``ss -tan``.

    sudo .venv/bin/python -m bench.audit_cost [--sockets 100000] [--repetitions 5]    # from the repository root

1. Creates a network namespace (puib-PID) and, inside it only: loopback up, ip_local_port_range
   1024 65535, tcp_tw_reuse 0, tcp_max_tw_buckets 262144.
2. Fills it with TIME_WAIT sockets by real loopback connection churn: listeners on 127.0.0.1..127.0.0.4
   port 8080 (4 server processes: accept, wait for the client's FIN, close), a client that connects and
   closes first, so that every client port stays 60 s in TIME_WAIT.  Bounded: at most --sockets
   connections and 45 s.
3. Inside the namespace, times the module's core function (linux_port_usage.audit(), what the module runs)
   in a fresh Python process per repetition, and ``ss -tan >/dev/null`` as many times.  Each kind of run
   is driven by a process of its own, whose resource.getrusage(RUSAGE_CHILDREN) ru_maxrss is the peak
   RSS of those runs.  It also times the /proc/net/tcp fallback, and the whole module run standalone
   (``python -m ...port_usage_info ARGS.json``, Ansible's module runtime included).
4. Prints the figures and writes them to bench/results/audit.json (audit.sockets, audit.seconds
   (median), audit.vs_ss, audit.peak_rss_mb, ...).  Deletes the namespace.

Nothing outside the namespace is changed.  Needs root and iproute2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.collection import ROOT, collections_path
from tests.support.traffic import program

RESULTS = ROOT / "bench" / "results" / "audit.json"
TARGET_SECONDS = 0.5
TARGET_VS_SS = 2.0
TARGET_RSS_MB = 64.0

# the fill (tests/support/churn.py connect): 4 server processes serve the 4 listeners, the client connects to them
# round robin and closes first; at most SOCKETS connections made, 100 failures and 45 s
FILL_ADDRESSES, FILL_PORT, FILL_SECONDS = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4", 8080, 45

# the collection comes from PYTHONPATH (the collections directory), as for the module run below
AUDIT_CHILD = r"""
import json, sys, time
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_port_usage import audit
use_netlink = sys.argv[1] == "netlink"
started = time.perf_counter()
result = audit(top=10, use_netlink=use_netlink)
seconds = time.perf_counter() - started
print(json.dumps({"seconds": seconds, "sockets": result["sockets"]["total"], "source": result["source"],
                  "verdict": result["verdict"], "top": result["destinations"][0]["endpoint"] if result["destinations"] else None}))
"""

# One kind of measurement, in a process of its own so that RUSAGE_CHILDREN covers only its runs.
DRIVER = r"""
import json, resource, subprocess, sys, time
kind, reps = sys.argv[1], int(sys.argv[2])
cmd = json.loads(sys.argv[3])
runs = []
for _ in range(reps):
    started = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL if kind == "ss" else subprocess.PIPE, text=True, timeout=60,
                          check=True)
    run = {"process_seconds": time.perf_counter() - started}
    if kind == "audit":
        run.update(json.loads(done.stdout))
    elif kind == "module":
        result = json.loads(done.stdout)
        run.update(sockets=result["sockets"]["total"], verdict=result["verdict"], failed=result.get("failed", False))
    runs.append(run)
print(json.dumps({"runs": runs, "peak_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024.0}))
"""


def run(cmd, timeout=120, **kwargs):
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout, check=True, **kwargs)


def delete_namespace(name):
    """Delete the namespace (bounded retries: deleting can fail while its last processes exit)."""
    for attempt in range(10):
        done = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True, check=False)
        if not os.path.exists("/run/netns/" + name):
            return
        time.sleep(0.5)
    print("WARNING: could not delete network namespace %s after %d attempts: %s" % (name, attempt + 1, done.stderr.strip()),
          file=sys.stderr)


def median(values):
    values = sorted(values)
    middle = len(values) // 2
    return values[middle] if len(values) % 2 else (values[middle - 1] + values[middle]) / 2.0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--sockets", type=int, default=100000, help="TIME_WAIT sockets to create (at most 200000)")
    parser.add_argument("--repetitions", type=int, default=5, help="timed runs of each tool (1 to 20)")
    parser.add_argument("--python", default="/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable,
                        help="the interpreter the module runs with (default /usr/bin/python3)")
    parser.add_argument("--output", default=str(RESULTS))
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("audit_cost.py needs root (it creates a network namespace)")
    sockets = max(1, min(args.sockets, 200000))
    reps = max(1, min(args.repetitions, 20))
    collections = collections_path()

    namespace = "puib-%d" % os.getpid()
    run(["ip", "netns", "add", namespace])
    try:
        inside = ["ip", "netns", "exec", namespace]
        run(inside + ["ip", "link", "set", "lo", "up"])
        for key, value in (("net/ipv4/ip_local_port_range", "1024 65535"), ("net/ipv4/tcp_tw_reuse", "0"),
                           ("net/ipv4/tcp_max_tw_buckets", "262144")):
            run(inside + ["sh", "-c", 'echo "$1" > /proc/sys/%s' % key, "sh", value])
        filled = json.loads(run(inside + program("connect", FILL_ADDRESSES, FILL_PORT, "--serve", 4, "--made", sockets,
                                                 "--attempts", sockets + 100, "--stop-after-failures", 100,
                                                 "--seconds", FILL_SECONDS, "--linger", 0.5), timeout=90).stdout)
        churn = {"made": filled["made"], "failed": filled["failed"], "seconds": round(filled["seconds"], 2)}
        measured_at = time.monotonic()
        args_file = Path(tempfile.mkdtemp(prefix="puib-")) / "args.json"
        args_file.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"top": 10}}))
        commands = (
            ("audit", "audit", [args.python, "-c", AUDIT_CHILD, "netlink"]),
            ("proc", "audit", [args.python, "-c", AUDIT_CHILD, "proc"]),
            ("module", "module", [sys.executable, "-m", "ansible_collections.tcpstack.tuning.plugins.modules.port_usage_info",
                                  str(args_file)]),
            ("ss", "ss", ["ss", "-tan"]),
        )
        data = {}
        env = dict(os.environ, PYTHONPATH=str(collections))
        for label, kind, cmd in commands:
            driver = inside + [sys.executable, "-c", DRIVER, kind, reps, json.dumps(cmd)]
            data[label] = json.loads(run(driver, timeout=300, env=env).stdout)
        elapsed = time.monotonic() - measured_at
        shutil.rmtree(str(args_file.parent), ignore_errors=True)
    finally:
        delete_namespace(namespace)

    audit_runs, proc_runs, module_runs = data["audit"]["runs"], data["proc"]["runs"], data["module"]["runs"]
    audit_seconds = median([r["seconds"] for r in audit_runs])
    ss_seconds = median([r["process_seconds"] for r in data["ss"]["runs"]])
    proc_seconds = median([r["seconds"] for r in proc_runs])
    result = {
        "command": "sudo .venv/bin/python -m bench.audit_cost --sockets %d --repetitions %d" % (sockets, reps),
        "host": {"kernel": platform.release(), "cpus": os.cpu_count(), "python": run([args.python, "-V"]).stdout.strip(),
                 "machine": platform.machine()},
        "churn": churn,
        "audit": {
            "sockets": audit_runs[0]["sockets"],
            "seconds": round(audit_seconds, 4),
            "seconds_all": [round(r["seconds"], 4) for r in audit_runs],
            "process_seconds": round(median([r["process_seconds"] for r in audit_runs]), 4),
            "vs_ss": round(audit_seconds / ss_seconds, 2),
            "peak_rss_mb": round(data["audit"]["peak_rss_mb"], 1),
            "source": audit_runs[0]["source"],
            "verdict": audit_runs[0]["verdict"],
            "top_destination": audit_runs[0]["top"],
        },
        "ss": {"seconds": round(ss_seconds, 4), "seconds_all": [round(r["process_seconds"], 4) for r in data["ss"]["runs"]],
               "peak_rss_mb": round(data["ss"]["peak_rss_mb"], 1)},
        "proc_fallback": {
            "sockets": proc_runs[0]["sockets"],
            "seconds": round(proc_seconds, 4),
            "vs_ss": round(proc_seconds / ss_seconds, 2),
            "peak_rss_mb": round(data["proc"]["peak_rss_mb"], 1),
        },
        "module_process": {
            "what": "the module run standalone (%s -m ...port_usage_info ARGS.json): Ansible's module runtime included"
                    % os.path.basename(sys.executable),
            "sockets": module_runs[0]["sockets"],
            "process_seconds": round(median([r["process_seconds"] for r in module_runs]), 4),
            "peak_rss_mb": round(data["module"]["peak_rss_mb"], 1),
            "verdict": module_runs[0]["verdict"],
        },
        "measurement_seconds": round(elapsed, 1),
        "targets": {"seconds": TARGET_SECONDS, "vs_ss": TARGET_VS_SS, "peak_rss_mb": TARGET_RSS_MB},
    }
    result["targets_met"] = (audit_seconds < TARGET_SECONDS and audit_seconds <= TARGET_VS_SS * ss_seconds
                             and data["audit"]["peak_rss_mb"] < TARGET_RSS_MB
                             and data["module"]["peak_rss_mb"] < TARGET_RSS_MB)
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    audit = result["audit"]
    print("churn: %(made)d connections in %(seconds)ss (%(failed)d failed)" % churn)
    print("audit (netlink): %d sockets, median %.3f s (runs %s), process %.3f s, %.2fx ss, peak RSS %.1f MiB" % (
        audit["sockets"], audit["seconds"], audit["seconds_all"], audit["process_seconds"], audit["vs_ss"], audit["peak_rss_mb"]))
    print("audit (/proc fallback): median %.3f s, %.2fx ss, peak RSS %.1f MiB" % (
        result["proc_fallback"]["seconds"], result["proc_fallback"]["vs_ss"], result["proc_fallback"]["peak_rss_mb"]))
    module = result["module_process"]
    print("module process (standalone, Ansible runtime included): %.3f s, peak RSS %.1f MiB" % (
        module["process_seconds"], module["peak_rss_mb"]))
    print("ss -tan: median %.3f s (runs %s)" % (ss_seconds, result["ss"]["seconds_all"]))
    verdict = "met" if result["targets_met"] else "NOT met"
    print("targets (< %.1f s, <= %.0fx ss, < %d MiB): %s" % (TARGET_SECONDS, TARGET_VS_SS, TARGET_RSS_MB, verdict))
    print("written to %s" % output)


if __name__ == "__main__":
    main()
