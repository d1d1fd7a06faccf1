"""What reading a NAT host's conntrack table costs: the module's read against ``conntrack -L``, and the sampler's CPU.

    sudo .venv/bin/python -m bench.nat [--sizes 25000,50000,100000,200000] [--repetitions 5] [--interval 15]
                                       [--windows 4] [--no-sampler]                       # from the repo root

1. Creates a network namespace (a tests.support Sandbox).  Its conntrack table is its own for the entries, but
   nf_conntrack_max is global (262144 on the machine this was written on) and is never changed: the sizes
   measured are those of --sizes that fit under HEADROOM x (nf_conntrack_max - the machine's own
   nf_conntrack_count, read in the initial namespace).  1,000,000 entries do not fit under 262,144: the result
   says so (``million_reached``: false, with the reason) instead of pretending.
2. Fills the namespace's table, size after size, with source-NATed TCP flows over ctnetlink
   (tests/support/conntrack_fill.py: IPCTNL_MSG_CT_NEW, the reply tuple translated to 192.0.2.1:PORT, 3 in 4
   ESTABLISHED, 1 in 4 TIME_WAIT, a timeout of an hour), and checks the count with ``conntrack -C``.
3. At each size, inside the namespace, alternately (--repetitions times each): the module's conntrack read
   (linux_nat.read_nat over LinuxHost, as nat_usage.nat_part calls it), each in a fresh /usr/bin/python3 that
   reports the read's wall time, its CPU time and its VmHWM; and ``conntrack -L >/dev/null`` (wall time and
   CPU time of the process).  Medians; ratio = ours / conntrack -L.  It checks that every read counted every
   entry, each of them source-NATed.
4. At 100,000 entries (the size of --sizes closest to it), runs the port_monitor sampler as the role installs it
   (bench/monitor.py install(), with --nat: port_monitor_nat true) at --interval
   for --windows windows: the CPU % of one core per window and the median, as bench/monitor.py measures it.
5. Writes bench/results/nat.json.  Keys (flatten()): nat.dump.vs_conntrack_L (wall time, at the size closest to
   100,000, at least 100,000), nat.dump.cpu_vs_conntrack_L, nat.dump.entries, nat.dump.peak_rss_mb (the
   largest of every read), nat.dump.linearity (the read's CPU time per entry at the largest size over that at
   the smallest),
   nat.dump.largest, nat.dump.million_reached, nat.sample_cpu_percent.  Targets (issue 23, targets()):
   vs_conntrack_L <= 1.0, peak RSS <= 64 MiB, linearity <= 1.5, sampler <= 2 % of one core.

Nothing outside the namespace and a temporary directory is changed; deleting the namespace deletes its table.
Needs root, iproute2 and conntrack (Debian's conntrack).  Figures on a shared machine are indicative.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.support.collection import ROOT, collections_path
from tests.support.netns import Sandbox, stop_process
from tests.support.promql import samples

RESULTS = ROOT / "bench" / "results" / "nat.json"
SIZES = (25000, 50000, 100000, 200000)
WANTED = 100000  # the size for the ratio and the sampler
MILLION = 1000000
HEADROOM = 0.8  # of what nf_conntrack_max leaves
TARGET_VS = 1.0
TARGET_RSS_MB = 64.0
TARGET_LINEARITY = 1.5
TARGET_CPU_PERCENT = 2.0
PROC_CONNTRACK = Path("/proc/sys/net/netfilter")

# one read, in a fresh interpreter in the namespace (the collection on PYTHONPATH, as for bench/audit_cost.py)
READ_CHILD = r"""
import json, resource, time
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_nat import read_nat
from ansible_collections.tcpstack.tuning.plugins.module_utils.nat_findings import live_only
host = LinuxHost()
live = live_only(host.kernel_release())
before = resource.getrusage(resource.RUSAGE_SELF)
started = time.perf_counter()
reading = read_nat(host, top=10, live=live, timeout=300)
seconds = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_SELF)
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")][0]
print(json.dumps({"seconds": seconds, "cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime
                  - before.ru_stime, "entries": reading.entries, "snat_entries": reading.snat_entries,
                  "egress_total": reading.egress_total, "peak_rss_mb": hwm / 1024.0}))
"""

# conntrack -L, timed by a process of its own in the namespace (its RUSAGE_CHILDREN is conntrack's CPU)
LIST_CHILD = r"""
import json, resource, subprocess, time
before = resource.getrusage(resource.RUSAGE_CHILDREN)
started = time.perf_counter()
done = subprocess.run(["conntrack", "-L"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                      timeout=300, check=False)
seconds = time.perf_counter() - started
after = resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"seconds": seconds, "cpu_seconds": after.ru_utime + after.ru_stime - before.ru_utime
                  - before.ru_stime, "rc": done.returncode, "stderr": done.stderr[-300:]}))
"""


# ---------------------------------------------------------------- pure helpers
def sizes_that_fit(sizes, maximum, used, headroom=HEADROOM):
    """The sizes (ascending, distinct) at most ``headroom`` x (``maximum`` - ``used``) entries."""
    room = int(headroom * max(0, maximum - used))
    return sorted(size for size in set(sizes) if 0 < size <= room)


def closest(sizes, wanted=WANTED):
    """The measured size for the issue's figures: the smallest at least ``wanted``, else the largest; None."""
    above = [size for size in sizes if size >= wanted]
    if above:
        return min(above)
    return max(sizes) if sizes else None


def linearity(points, key="cpu_seconds"):
    """Per-entry read time at the largest size over that at the smallest (1.0: linear), None with < 2 sizes.

    CPU time by default: on a shared machine the wall time of one size swings with the load, its CPU time less."""
    usable = sorted((p for p in points if p.get("entries") and p.get(key)), key=lambda p: p["entries"])
    if len(usable) < 2:
        return None
    first, last = usable[0], usable[-1]
    return round((last[key] / last["entries"]) / (first[key] / first["entries"]), 3)


def ratio(ours, theirs):
    return round(ours / theirs, 3) if ours is not None and theirs else None


def point(size, reads, lists):
    """One size's figures from the reads' and conntrack -L's runs (lists of their JSON dicts)."""
    seconds = statistics.median(r["seconds"] for r in reads)
    cpu = statistics.median(r["cpu_seconds"] for r in reads)
    list_seconds = statistics.median(r["seconds"] for r in lists)
    list_cpu = statistics.median(r["cpu_seconds"] for r in lists)
    return {"entries": size, "seconds": round(seconds, 4), "cpu_seconds": round(cpu, 4),
            "conntrack_L_seconds": round(list_seconds, 4), "conntrack_L_cpu_seconds": round(list_cpu, 4),
            "vs_conntrack_L": ratio(seconds, list_seconds), "cpu_vs_conntrack_L": ratio(cpu, list_cpu),
            "microseconds_per_entry": round(1e6 * seconds / size, 3),
            "peak_rss_mb": round(max(r["peak_rss_mb"] for r in reads), 1),
            "counted": sorted({r["entries"] for r in reads}),
            "snat_counted": sorted({r["snat_entries"] for r in reads}),
            "repetitions": len(reads)}


def million_note(maximum, used):
    return ("not reached: nf_conntrack_max is global (%d here, %d entries of the machine's own) and is never "
            "changed by the bench; 1,000,000 entries need nf_conntrack_max above 1,000,000. Linearity is measured "
            "over the sizes that fit" % (maximum, used))


def flatten(nat):
    """The section's flat keys (bench/run.py ratios())."""
    dump = nat.get("dump") or {}
    sampler = nat.get("sampler") or {}
    return {"nat.dump.entries": dump.get("entries"), "nat.dump.vs_conntrack_L": dump.get("vs_conntrack_L"),
            "nat.dump.cpu_vs_conntrack_L": dump.get("cpu_vs_conntrack_L"),
            "nat.dump.peak_rss_mb": dump.get("peak_rss_mb"), "nat.dump.linearity": dump.get("linearity"),
            "nat.dump.largest": dump.get("largest"), "nat.dump.million_reached": dump.get("million_reached"),
            "nat.sample_cpu_percent": sampler.get("cpu_percent")}


def targets(flat):
    """{target: True/False, or None when not measured} for the flat keys (bench/run.py targets())."""
    def check(key, test):
        value = flat.get(key)
        return None if value is None else bool(test(value))
    entries = flat.get("nat.dump.entries")
    return {
        "nat.dump.vs_conntrack_L <= 1.0 (>= 100000 entries)": check(
            "nat.dump.vs_conntrack_L", lambda v: v <= TARGET_VS) if entries and entries >= WANTED else None,
        "nat.dump.peak_rss_mb <= 64": check("nat.dump.peak_rss_mb", lambda v: v <= TARGET_RSS_MB),
        "nat.dump.linearity <= 1.5": check("nat.dump.linearity", lambda v: v <= TARGET_LINEARITY),
        # linear to 1,000,000: not measured where nf_conntrack_max (global, never changed) is lower
        "nat.dump.million_reached": flat.get("nat.dump.million_reached") or None,
        "nat.sample_cpu_percent <= 2": check("nat.sample_cpu_percent", lambda v: v <= TARGET_CPU_PERCENT),
    }


# ---------------------------------------------------------------- the machine
def read_int(path):
    return int(Path(path).read_text().split()[0])


def child_json(box, code, env=None, timeout=600):
    done = box.exec(["/usr/bin/python3", "-s", "-B", "-c", code], timeout=timeout, env=env)
    return json.loads(done.stdout.strip().splitlines()[-1])


def grow(box, start, size):
    """Fill the namespace's table from ``start`` to ``size`` entries; checks ``conntrack -C``."""
    done = box.exec([sys.executable, "-m", "tests.support.conntrack_fill", "--count", size, "--start", start],
                    check=False, timeout=600, cwd=str(ROOT))
    if done.returncode != 0:
        raise RuntimeError("conntrack_fill to %d entries failed: %s %s" % (size, done.stdout, done.stderr[-1000:]))
    count = int(box.exec(["conntrack", "-C"]).stdout.split()[0])
    if count != size:
        raise RuntimeError("the namespace's table holds %d entries, not %d" % (count, size))
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(box, size, repetitions, env):
    reads, lists = [], []
    for dummy in range(repetitions):
        reads.append(child_json(box, READ_CHILD, env))
        lists.append(child_json(box, LIST_CHILD))
        if lists[-1]["rc"] != 0:
            raise RuntimeError("conntrack -L failed: %s" % lists[-1]["stderr"])
    result = point(size, reads, lists)
    if result["counted"] != [size] or result["snat_counted"] != [size]:
        raise RuntimeError("the read counted %s entries (%s source-NATed), not %d" % (
            result["counted"], result["snat_counted"], size))
    return result


def sampler_cpu(box, interval, windows, log):
    """The installed port_monitor sampler in the namespace: CPU % of one core per window, the median."""
    from bench.monitor import cpu_seconds, install, peak_rss_mb  # pylint: disable=import-outside-toplevel
    with tempfile.TemporaryDirectory(prefix="tcpstack-natbench-") as tmp:
        entry = install(Path(tmp) / "code")
        textfile_dir = Path(tmp) / "textfile"
        textfile_dir.mkdir()
        # --nat: port_monitor_nat true, the only way the sampler reads the conntrack table
        sampler = subprocess.Popen(box.argv(["/usr/bin/python3", "-s", "-E", "-B", entry, "--directory",
                                             textfile_dir, "--interval", interval, "--nat"]),
                                   cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                   start_new_session=True)
        try:
            per_window, before, started = [], 0.0, time.monotonic()
            for window in range(1, windows + 1):
                time.sleep(max(0.0, started + window * interval - time.monotonic()))
                if sampler.poll() is not None:
                    raise RuntimeError("the sampler exited (rc=%s): %s"
                                       % (sampler.returncode, sampler.stderr.read()[-2000:]))
                now = cpu_seconds(sampler.pid)
                per_window.append(round(100.0 * (now - before) / interval, 3))
                before = now
                log("nat: sampler window %d: %.3f %% of one core" % (window, per_window[-1]))
            peak = peak_rss_mb(sampler.pid)
            text = (textfile_dir / "tcpstack.prom").read_text()
        finally:
            stop_process(sampler)
    duration = samples(text, "tcpstack_sampler_duration_seconds")
    return {"cpu_percent": statistics.median(per_window), "cpu_percent_per_window": per_window,
            "interval_seconds": interval, "peak_rss_mb": peak,
            "sample_seconds": duration[0][1] if duration else None}


def run(sizes=SIZES, repetitions=5, interval=15, windows=4, sampler=True, log=print):
    """Measure; returns the section's result dict (also written to bench/results/nat.json)."""
    maximum = read_int(PROC_CONNTRACK / "nf_conntrack_max")
    used = read_int(PROC_CONNTRACK / "nf_conntrack_count")  # this process is in the initial namespace
    fitting = sizes_that_fit(sizes, maximum, used)
    if not fitting:
        raise RuntimeError("no size of %s fits under %g x (nf_conntrack_max %d - %d in use)" % (
            list(sizes), HEADROOM, maximum, used))
    at = closest(fitting)
    env = dict(os.environ, PYTHONPATH=str(collections_path()))
    points, fills, sample = [], [], None
    with Sandbox.new(prefix="natbench") as box:
        made = 0
        for size in fitting:
            fills.append(dict(grow(box, made, size), entries=size))
            made = size
            points.append(measure(box, size, repetitions, env))
            log("nat: %(entries)d entries: read %(seconds).3f s (CPU %(cpu_seconds).3f s), conntrack -L "
                "%(conntrack_L_seconds).3f s (CPU %(conntrack_L_cpu_seconds).3f s): %(vs_conntrack_L)sx, "
                "peak RSS %(peak_rss_mb).1f MiB" % points[-1])
            if sampler and size == at:
                sample = dict(sampler_cpu(box, interval, windows, log), entries=size)
    chosen = next(p for p in points if p["entries"] == at)
    dump = {"entries": at, "vs_conntrack_L": chosen["vs_conntrack_L"],
            "cpu_vs_conntrack_L": chosen["cpu_vs_conntrack_L"],
            "peak_rss_mb": max(p["peak_rss_mb"] for p in points), "linearity": linearity(points),
            "largest": fitting[-1], "million_reached": fitting[-1] >= MILLION, "points": points}
    if not dump["million_reached"]:
        dump["million_note"] = million_note(maximum, used)
    result = {"dump": dump, "sampler": sample, "fills": fills, "nf_conntrack_max": maximum,
              "machine_conntrack_count": used, "sizes_asked": list(sizes), "load_avg": list(os.getloadavg())}
    result["targets_met"] = targets(flatten(result))
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.nat", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--sizes", default=",".join(str(s) for s in SIZES), help="comma-separated table sizes")
    parser.add_argument("--repetitions", type=int, default=5)
    parser.add_argument("--interval", type=int, default=15, help="the sampler's interval (the role's default: 15)")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--no-sampler", action="store_true", help="measure the read only")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.nat needs root (a network namespace, ctnetlink)")
    try:
        sizes = [max(1, min(int(s), MILLION)) for s in args.sizes.split(",") if s.strip()]
    except ValueError:
        sys.exit("--sizes must be comma-separated integers, not %r" % args.sizes)
    result = run(sizes, max(1, min(args.repetitions, 20)), max(1, min(args.interval, 3600)),
                 max(2, min(args.windows, 20)), not args.no_sampler)
    print(json.dumps({k: v for k, v in result.items() if k != "fills"}, indent=1))
    return 0 if all(v is not False for v in result["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
