"""What the port_monitor sampler costs on a host holding 100,000 TCP sockets, at the default interval (15 s).

    sudo .venv/bin/python -m bench.monitor [--connections 50000] [--interval 15] [--windows 4]   # from the repo root

1. Creates a network namespace (a tests.support Sandbox) with loopback up and ip_local_port_range 10000 65535.
2. Inside it only, holder processes open --connections loopback connections in all to listeners on
   127.0.0.1..4 (one port per holder) and keep both ends open: 2 x 50,000 = 100,000 ESTABLISHED sockets that stay
   for the whole measurement (TIME_WAIT sockets would expire within 60 s).  Each holder keeps under the open-file
   limit (at most PER_HOLDER connections, two descriptors each; tests/support/churn.py hold).  Bounded: a holder
   exits when its stdin closes, or after twice the measurement and 2 minutes.
3. Installs the sampler in a temporary directory exactly as the role lays it out (the collection's module_utils
   under ansible_collections/tcpstack/tuning/plugins/module_utils, the role's entry point) and runs it as the unit
   does (``python3 -s -E -B ENTRY --directory DIR --interval 15``) inside the namespace.
4. Reads the sampler's CPU time (utime + stime, /proc/PID/stat) at the end of each of --windows windows of one
   interval each: the CPU % of one core per window, and its median (the first window includes Python's start).
   The peak RSS is the sampler's VmHWM (/proc/PID/status).  It checks the textfile counted the sockets.
5. Prints the figures and writes bench/results/monitor.json (monitor.cpu_percent, monitor.peak_rss_mb, ...);
   with --processes, the cost of the optional process attribution, in bench/results/monitor-processes.json.
   Targets (issue 16): median CPU at most 2 % of one core, peak RSS at most 32 MiB.

Nothing outside the namespace and the temporary directory is changed.  Needs root and iproute2.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.collection import ROOT
from tests.support.netns import Sandbox, stop_process
from tests.support.promql import samples
from tests.support.traffic import program

RESULTS = ROOT / "bench" / "results" / "monitor.json"
PACKAGE = "ansible_collections/tcpstack/tuning/plugins/module_utils"
TARGET_CPU_PERCENT = 2.0
TARGET_RSS_MB = 32.0
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

PER_HOLDER = 8000  # 16,000 descriptors: under a 20,000 open-file limit
HOLDER_ADDRESSES = "127.0.0.1,127.0.0.2,127.0.0.3,127.0.0.4"


def holder_command(count, port, seconds):
    """tests/support/churn.py hold: ``count`` loopback connections to HOLDER_ADDRESSES:``port``, both ends held
    by one process until its stdin closes (at most ``seconds``); it prints "ready N SECONDS_TO_OPEN"."""
    return program("hold", HOLDER_ADDRESSES, port, count, seconds, "--stdin")


def install(code_dir):
    """The sampler laid out as the role installs it; returns the entry point."""
    package = code_dir / PACKAGE
    package.mkdir(parents=True)
    parts = PACKAGE.split("/")
    for depth in range(1, len(parts) + 1):
        (code_dir.joinpath(*parts[:depth]) / "__init__.py").write_text("")
    for source in sorted((ROOT / "plugins" / "module_utils").glob("*.py")):
        shutil.copyfile(source, package / source.name)
    entry = code_dir / "tcpstack-port-monitor"
    shutil.copyfile(ROOT / "roles" / "port_monitor" / "files" / "tcpstack-port-monitor", entry)
    return entry


def cpu_seconds(pid):
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS  # utime, stime (fields 14 and 15)


def peak_rss_mb(pid):
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return None


def run(connections=50000, interval=15, windows=4, log=print, processes=False):
    """Measure; returns the section's result dict (also written to bench/results/monitor.json).

    ``processes``: run the sampler with --processes (port_monitor_processes: true), which reads every
    /proc/PID/fd on each run; ``make bench`` measures the role's default (off).
    """
    with Sandbox.new(prefix="pmbench") as box, tempfile.TemporaryDirectory(prefix="tcpstack-monitor-") as tmp:
        box.set_sysctl("net.ipv4.ip_local_port_range", "10000 65535")  # the listeners (8080...) outside it
        holders = []
        sampler = None
        try:
            left, port = connections, 8080
            while left > 0:
                count = min(left, PER_HOLDER)
                command = holder_command(count, port, 120 + 2 * interval * (windows + 1))
                holders.append(subprocess.Popen(box.argv(command),
                                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                                start_new_session=True))
                left, port = left - count, port + 1
            opened = [0, 0]
            for holder in holders:
                line = holder.stdout.readline().split()
                if not line or line[0] != "ready":
                    raise RuntimeError("a holder did not open its connections: %r" % line)
                opened = [opened[0] + int(line[1]), opened[1] + int(line[1])]  # both ends of each connection
            log("monitor: %d client and %d server sockets held by %d processes" % (opened[0], opened[1], len(holders)))
            entry = install(Path(tmp) / "code")
            textfile_dir = Path(tmp) / "textfile"
            textfile_dir.mkdir()
            sampler = subprocess.Popen(box.argv(["/usr/bin/python3", "-s", "-E", "-B", entry, "--directory",
                                                 textfile_dir, "--interval", interval]
                                                + (["--processes"] if processes else [])),
                                       cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                       start_new_session=True)
            pid = sampler.pid  # ip netns exec execs the command: the same process
            per_window = []
            started = time.monotonic()
            before = 0.0
            for window in range(1, windows + 1):
                time.sleep(max(0.0, started + window * interval - time.monotonic()))
                if sampler.poll() is not None:
                    raise RuntimeError("the sampler exited (rc=%s): %s" % (sampler.returncode, sampler.stderr.read()))
                now = cpu_seconds(pid)
                per_window.append(round(100.0 * (now - before) / interval, 3))
                before = now
            peak = peak_rss_mb(pid)
            text = (textfile_dir / "tcpstack.prom").read_text()
        finally:
            if sampler is not None:
                stop_process(sampler)
            for holder in holders:
                holder.stdin.close()
                stop_process(holder)
    counted = sum(item[1] for item in samples(text, "tcpstack_sockets"))
    duration = samples(text, "tcpstack_sampler_duration_seconds")
    result = {
        "sockets": int(counted),
        "interval_seconds": interval,
        "processes": processes,
        "cpu_percent": statistics.median(per_window),
        "cpu_percent_per_window": per_window,
        "peak_rss_mb": peak,
        "sample_seconds": duration[0][1] if duration else None,
        "targets": {"cpu_percent": TARGET_CPU_PERCENT, "peak_rss_mb": TARGET_RSS_MB},
    }
    result["targets_met"] = {"cpu_percent <= %g" % TARGET_CPU_PERCENT: result["cpu_percent"] <= TARGET_CPU_PERCENT,
                             "peak_rss_mb <= %g" % TARGET_RSS_MB: peak is not None and peak <= TARGET_RSS_MB,
                             "sockets >= 100000": counted >= 2 * connections >= 100000}
    output = RESULTS.with_name("monitor-processes.json") if processes else RESULTS
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result, indent=1) + "\n")
    log("monitor: %d sockets, one sample %.3f s, CPU %s %% of one core per %d s window (median %.3f %%), "
        "peak RSS %.1f MiB" % (result["sockets"], result["sample_seconds"] or 0, per_window, interval,
                               result["cpu_percent"], peak or 0))
    return result


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.monitor", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--connections", type=int, default=50000, help="connections held (2 sockets each)")
    parser.add_argument("--interval", type=int, default=15)
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--processes", action="store_true",
                        help="with --processes (port_monitor_processes: true); writes monitor-processes.json")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.monitor needs root (a network namespace)")
    result = run(max(1, min(args.connections, 100000)), max(1, min(args.interval, 3600)), max(2, min(args.windows, 20)),
                 processes=args.processes)
    print(json.dumps(result, indent=1))
    return 0 if all(result["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
