"""What the port_monitor sampler costs, and how soon its critical alert fires in a real Prometheus.

    sudo PYTHONPATH=.build/collections .venv/bin/python -m bench.monitor [--connections 50000] [--interval 15]
        [--windows 4] [--processes]                                       # monitor.cpu_percent, monitor.peak_rss_mb
    ... -m bench.monitor --churn [--rate 5000] [--warmup 60] [--interval 15] [--windows 4]     # monitor.processes.*
    ... -m bench.monitor --alert-latency [--interval 5] [--scrape 5] [--evaluation 5]  # monitor.alert_latency_seconds

from the repo root (PYTHONPATH is what ``python -m tests.support.collection`` prints; ``make bench`` sets it).

The default measurement (issue 16), 100,000 sockets at the default interval (15 s):

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

--churn (issue 22, ``monitor.processes.cpu_percent`` and ``monitor.processes.peak_rss_mb``, same targets): the
sampler with the unit's command line and the role's defaults plus port_monitor_processes: true (``--processes
--process-sample-seconds 0``, under the unit's Nice=10), at the default interval, in a namespace where clients
(tests/support/churn.py connect, 2 processes of 2, paced to --rate in all) open new loopback connections to
127.0.0.1..8 on 2 ports (16 destination tuples: the range never runs out) and close them first, so TIME_WAIT
accumulates (up to the namespace's net.ipv4.tcp_max_tw_buckets, reported); two server processes accept them, and
one process holds 200 connections open (a keep-alive pool: a process to name).  The sampler starts after --warmup
seconds of churn; its CPU and VmHWM are read as above.  The rate reached is reported from the clients' own counts
(rate_client) and from the namespace's Tcp ActiveOpens over the measured windows (rate_active_opens; rate_reached
when within 5 % of --rate).  Writes bench/results/monitor-churn.json.

--alert-latency (issue 22, ``monitor.alert_latency_seconds``): web and backend namespaces on a veth pair, web's
range narrowed to 1,000 ports; the sampler in web (the unit's command line, the role's defaults, --interval,
5 s by default); Debian's node_exporter (textfile collector only) scraped every --scrape seconds by Debian's
Prometheus, which evaluates extensions/prometheus/tcpstack-rules.yml unchanged every --evaluation seconds
(tests/support/prometheus.py Stack, shared with tests/integration/test_prometheus_alerts.py).  Once Prometheus
has the verdict 0 and no alert for the host, a client in web holds 8 connections and churns until connect()
fails with EADDRNOTAVAIL, stamping that moment (wall clock).  The latency is from that moment to the first poll
(every 0.25 s, for at most the 60 s that TIME_WAIT keeps the range full) of /api/v1/alerts that shows
TcpstackEphemeralPortsExhausted firing; also reported: the alert's activeAt, and the shares of the sample (the
sampler's own time of the first sample that saw the range full), the scrape (Prometheus' time of the first scrape
of it), the evaluation (activeAt; the rule has no for:) and the poll.  Target (the issue's): one sample interval
+ one evaluation interval + 5 s; also checked with one scrape interval more.  One exhaustion per run: the
figure depends on how the three intervals happen to be phased; run it a few times.  Writes
bench/results/monitor-alert.json.

Nothing outside the namespaces and the temporary directories is changed; every process is stopped and every
namespace deleted at the end, also on failure.  Needs root and iproute2 (and for --alert-latency the Debian
packages prometheus and prometheus-node-exporter).
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
from tests.support.prometheus import BACKEND, CLIENT, Stack, spawn, timestamp, wait_for
from tests.support.promql import samples
from tests.support.traffic import final_report, program
from tests.support.veth import ClientServer

RESULTS = ROOT / "bench" / "results" / "monitor.json"
RULES_FILE = ROOT / "extensions" / "prometheus" / "tcpstack-rules.yml"  # the shipped rules, unchanged
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


def start_holders(box, connections, seconds, holders):
    """Holder processes in ``box`` (added to ``holders``) holding ``connections`` loopback connections in all, for
    at most ``seconds``; returns how many they opened (each has two sockets, both ends)."""
    left, port = connections, 8080
    while left > 0:
        count = min(left, PER_HOLDER)
        holders.append(subprocess.Popen(box.argv(holder_command(count, port, seconds)),
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        start_new_session=True))
        left, port = left - count, port + 1
    opened = 0
    for holder in holders:
        line = holder.stdout.readline().split()
        if not line or line[0] != "ready":
            raise RuntimeError("a holder did not open its connections: %r" % line)
        opened += int(line[1])
    return opened


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
            opened = start_holders(box, connections, 120 + 2 * interval * (windows + 1), holders)
            log("monitor: %d client and %d server sockets held by %d processes" % (opened, opened, len(holders)))
            entry = install(Path(tmp) / "code")
            textfile_dir = Path(tmp) / "textfile"
            textfile_dir.mkdir()
            sampler = subprocess.Popen(box.argv(["/usr/bin/python3", "-s", "-E", "-B", entry, "--directory",
                                                 textfile_dir, "--interval", interval]
                                                + (["--processes"] if processes else [])),
                                       cwd="/", stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                       start_new_session=True)
            per_window = measure_windows(sampler, interval, windows, from_start=True)
            peak = peak_rss_mb(sampler.pid)  # ip netns exec execs the command: the same process
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


# ---------------------------------------------------------------- per-process sampling under churn (issue 22)
CHURN_ADDRESSES = ",".join("127.0.0.%d" % n for n in range(1, 9))  # 8 loopback destinations x CHURN_CLIENTS ports
CHURN_CLIENTS = 2  # churn.py connect processes, one destination port each, sharing the rate
CHURN_SERVERS = 2  # churn.py serve processes (SO_REUSEPORT) closing after each client
CHURN_RANGE = "10000 65535"
CHURN_HELD = 200  # also held open by one process (both ends), as a client's keep-alive pool: a "who" to name


def role_command(entry, textfile_dir, interval, processes):
    """The unit's ExecStart with the role's defaults (roles/port_monitor/templates/tcpstack-port-monitor.service.j2:
    --top 5, --warning-percent 70, --critical-percent 90; port_monitor_processes adds --processes
    --process-sample-seconds 0), under the unit's Nice=10."""
    command = ["nice", "-n", "10", "/usr/bin/python3", "-s", "-E", "-B", entry, "--directory", textfile_dir,
               "--interval", interval, "--top", 5, "--warning-percent", 70, "--critical-percent", 90]
    return [str(part) for part in command + (["--processes", "--process-sample-seconds", 0] if processes else [])]


def active_opens(box):
    """The namespace's Tcp ActiveOpens (/proc/net/snmp): every connect() that sent a SYN."""
    return snmp_field(box.exec(["cat", "/proc/net/snmp"]).stdout, "Tcp", "ActiveOpens")


def snmp_field(text, group, field):
    """One counter of /proc/net/snmp's text (a header line and a value line per group); None when absent."""
    lines = [line.split() for line in text.splitlines() if line.startswith(group + ":")]
    for header, values in zip(lines[0::2], lines[1::2]):
        if field in header and len(values) == len(header):
            return int(values[header.index(field)])
    return None


def measure_windows(sampler, interval, windows, from_start=False):
    """The sampler's CPU % of one core in each of ``windows`` windows of ``interval`` s from now (``from_start``:
    the first window also counts the CPU the sampler used before now, its start included)."""
    per_window, started = [], time.monotonic()
    before = 0.0 if from_start else cpu_seconds(sampler.pid)
    for window in range(1, windows + 1):
        time.sleep(max(0.0, started + window * interval - time.monotonic()))
        if sampler.poll() is not None:
            raise RuntimeError("the sampler exited (rc=%s): %s" % (sampler.returncode, sampler.stderr.read()))
        now = cpu_seconds(sampler.pid)
        per_window.append(round(100.0 * (now - before) / interval, 3))
        before = now
    return per_window


def start_churn(box, rate, seconds, clients):
    """The servers of the churn in ``box`` (stopped when it is destroyed), and its clients, added to ``clients``."""
    ports = [8080 + index for index in range(CHURN_CLIENTS)]
    box.start(program("serve", CHURN_ADDRESSES, ",".join(map(str, ports)), seconds + 30, "--procs", CHURN_SERVERS),
              ready="listening")
    box.start(program("hold", "127.0.0.9", 9090, CHURN_HELD, seconds + 30), ready="ready")
    for port in ports:
        clients.append(subprocess.Popen(box.argv(program("connect", CHURN_ADDRESSES, port, "--seconds", seconds,
                                                         "--rate", rate / CHURN_CLIENTS, "--procs", 2, "--grace", 5)),
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True))


def run_churn(rate=5000, interval=15, windows=4, warmup=60, log=print):
    """monitor.processes: the sampler as the role installs it with port_monitor_processes: true, at ``interval``,
    while clients in the namespace open ``rate`` new loopback connections per second (client-first close, so TIME_WAIT
    accumulates; over 8 addresses x 2 ports, so the range never runs out).  The sampler starts after ``warmup``
    seconds of churn (TIME_WAIT fills for 60 s); returns the result (also in bench/results/monitor-churn.json)."""
    seconds = warmup + interval * windows + 10
    with Sandbox.new(prefix="pmchurn") as box, tempfile.TemporaryDirectory(prefix="tcpstack-monitor-") as tmp:
        box.set_sysctl("net.ipv4.ip_local_port_range", CHURN_RANGE)
        entry = install(Path(tmp) / "code")
        textfile_dir = Path(tmp) / "textfile"
        textfile_dir.mkdir()
        clients, sampler = [], None
        try:
            start_churn(box, rate, seconds, clients)
            time.sleep(warmup)
            sampler = subprocess.Popen(box.argv(role_command(entry, textfile_dir, interval, True)), cwd="/",
                                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                       start_new_session=True)
            opens, opened_at = active_opens(box), time.monotonic()
            seen = {"per_window": measure_windows(sampler, interval, windows)}
            seen["opens"] = (active_opens(box) - opens) / (time.monotonic() - opened_at)
            seen["peak"] = peak_rss_mb(sampler.pid)
            seen["text"] = (textfile_dir / "tcpstack.prom").read_text()
            seen["max_tw_buckets"] = int(box.sysctl("net.ipv4.tcp_max_tw_buckets"))
            seen["reports"] = [final_report(client, seconds + 60) for client in clients]
        finally:
            if sampler is not None:
                stop_process(sampler)
            for client in clients:
                stop_process(client)
    return churn_result(rate, interval, seen, log)


def churn_result(rate, interval, seen, log):
    """The figures of run_churn (``seen``: per_window, opens, peak, text, max_tw_buckets, reports), checked against
    the targets, written to bench/results/monitor-churn.json."""
    per_window, opens, peak, text, reports = (seen[key] for key in ("per_window", "opens", "peak", "text", "reports"))
    if None in reports:
        raise RuntimeError("a churn client printed no report")
    made = sum(report["made"] for report in reports)
    client_rate = round(sum(report["rate"] for report in reports), 1)
    duration = samples(text, "tcpstack_sampler_duration_seconds")
    time_wait = samples(text, "tcpstack_time_wait_sockets")
    result = {
        "interval_seconds": interval, "processes": True, "rate_asked": rate,
        "rate_client": client_rate, "rate_active_opens": round(opens, 1), "rate_reached": opens >= 0.95 * rate,
        "client_made": made, "client_failed": sum(report["failed"] for report in reports),
        "client_errors": [report["errors"] for report in reports if report["errors"]],
        "time_wait_sockets": int(time_wait[0][1]) if time_wait else None, "tcp_max_tw_buckets": seen["max_tw_buckets"],
        "process_series": len(samples(text, "tcpstack_process_ports_held")),
        "cpu_percent": statistics.median(per_window), "cpu_percent_per_window": per_window, "peak_rss_mb": peak,
        "sample_seconds": duration[0][1] if duration else None,
        "targets": {"cpu_percent": TARGET_CPU_PERCENT, "peak_rss_mb": TARGET_RSS_MB, "rate": rate},
    }
    result["targets_met"] = {
        "cpu_percent <= %g" % TARGET_CPU_PERCENT: result["cpu_percent"] <= TARGET_CPU_PERCENT,
        "peak_rss_mb <= %g" % TARGET_RSS_MB: peak is not None and peak <= TARGET_RSS_MB,
        "rate_active_opens >= 0.95 x %d" % rate: result["rate_reached"]}
    write(RESULTS.with_name("monitor-churn.json"), result)
    log("monitor.processes: %.0f new connections/s asked, %.0f/s by the clients' counts, %.0f/s by ActiveOpens%s; "
        "%s TIME_WAIT, %d process series; CPU %s %% per %d s window (median %.3f %%), peak RSS %.1f MiB" % (
            rate, client_rate, opens, "" if result["rate_reached"] else " (NOT reached)", result["time_wait_sockets"],
            result["process_series"], per_window, interval, result["cpu_percent"], peak or 0))
    return result


def write(path, result):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=1) + "\n")


# ---------------------------------------------------------------- alert latency in a real Prometheus (issue 22)
ALERT = "TcpstackEphemeralPortsExhausted"
WEB_IP, BACKEND_IP, BACKEND_PORT = "10.218.0.1", "10.218.0.2", 8080
ALERT_RANGE, ALERT_HELD, ALERT_CLIENT_SECONDS = "42000 42999", 8, 150
TIME_WAIT_SECONDS = 60  # the range drains after this: the alert can no longer fire for this incident


def alert_targets(sample, evaluation, scrape):
    """The latency bounds: the issue's (one sample interval + one evaluation interval + 5 s) and the same with one
    scrape interval more (the scrape is a step on the way)."""
    return {"issue": sample + evaluation + 5, "with_scrape": sample + evaluation + scrape + 5}


def baseline(api, instance, interval):
    """Prometheus has the sampler's verdict 0 for ``instance``, every rule evaluated healthy, nothing firing."""
    if not wait_for(lambda: api.query('tcpstack_verdict{instance="%s"} == 0' % instance), 60 + 3 * interval):
        raise RuntimeError("no tcpstack_verdict 0 of %s in Prometheus" % instance)
    if not wait_for(lambda: all(rule["health"] == "ok" for group in api.get("/api/v1/rules")["groups"]
                                for rule in group["rules"]), 30):
        raise RuntimeError("the shipped rules are not all healthy: %s" % api.get("/api/v1/rules"))
    firing = [a for a in api.get("/api/v1/alerts")["alerts"] if a["labels"].get("instance") == instance]
    if firing:
        raise RuntimeError("alerts before the churn: %s" % firing)


def first_firing(api, instance, deadline):
    """(wall time of the first poll that saw the alert firing, the alert) polling every 0.25 s until ``deadline``
    (wall clock); (None, None) if it never fired."""
    while time.time() < deadline:
        seen = api.alerts(ALERT, instance)
        now = time.time()
        if seen and seen[0]["state"] == "firing":
            return now, seen[0]
        time.sleep(0.25)
    return None, None


def first_at_or_above(values, threshold):
    """The time of the first ``[time, "value"]`` (a range vector's values, oldest first) at or above ``threshold``;
    None when there is none."""
    for moment, value in values:
        try:
            if float(value) >= threshold:
                return float(moment)
        except (TypeError, ValueError):
            continue
    return None


def value_at(values, moment):
    """The value of the ``[time, "value"]`` pair taken at ``moment`` (a float); None when there is none."""
    for when, value in values:
        if abs(float(when) - moment) < 0.001:
            return float(value)
    return None


def latency_shares(exhausted_at, written_at, scraped_at, active_at, seen_at):
    """Where the latency went (seconds, None where a time is unknown): the sampler's next sample after the first
    failure, node_exporter's scrape of it, the rule evaluation that made the alert active (it has no for:, so
    active is firing), and this bench's poll of /api/v1/alerts."""
    def step(start, end):
        return None if start is None or end is None else round(end - start, 2)
    return {"sample": step(exhausted_at, written_at), "scrape": step(written_at, scraped_at),
            "evaluation": step(scraped_at, active_at), "poll": step(active_at, seen_at)}


def timeline(api, instance):
    """(scraped_at, written_at) of the first scrape in which a destination held every usable port: its scrape time
    in Prometheus, and the sampler's own time of that sample (tcpstack_sampler_last_success_timestamp_seconds)."""
    usable = api.query('tcpstack_ephemeral_ports_usable{instance="%s"}' % instance)
    blocking = api.query('tcpstack_destination_ports_blocking{instance="%s"}[3m]' % instance)
    written = api.query('tcpstack_sampler_last_success_timestamp_seconds{instance="%s"}[3m]' % instance)
    if not usable or not blocking or not written:
        return None, None
    threshold = float(usable[0]["value"][1])
    firsts = [first_at_or_above(series["values"], threshold) for series in blocking]
    firsts = [moment for moment in firsts if moment is not None]
    scraped_at = min(firsts) if firsts else None
    return scraped_at, value_at(written[0]["values"], scraped_at) if scraped_at is not None else None


def exhaust(link, api, instance):
    """Run the client until EADDRNOTAVAIL, poll the alerts until the critical one fires; returns (churn counts with
    the timeline of the alert: seen_at, scraped_at, written_at; the alert or None)."""
    client = link.client.start([sys.executable, "-c", CLIENT, BACKEND_IP, BACKEND_PORT, ALERT_HELD,
                                ALERT_CLIENT_SECONDS])
    try:
        lines = [json.loads(client.stdout.readline() or "null") for dummy in range(2)]
        if not lines[1] or not lines[1].get("exhausted_at"):
            raise RuntimeError("the client did not exhaust the range: %s" % lines)
        seen_at, alert = first_firing(api, instance, lines[1]["exhausted_at"] + TIME_WAIT_SECONDS)
        scraped_at, written_at = timeline(api, instance) if alert else (None, None)
    finally:
        stop_process(client)
    return dict(lines[1], seen_at=seen_at, scraped_at=scraped_at, written_at=written_at), alert


def run_alert_latency(interval=5, scrape=5, evaluation=5, log=print):
    """monitor.alert_latency_seconds: from the client's first EADDRNOTAVAIL (its wall clock) to the first poll of
    /api/v1/alerts showing the shipped critical alert firing, with the sampler every ``interval`` s (role defaults
    otherwise), node_exporter scraped every ``scrape`` s, the shipped rules evaluated every ``evaluation`` s.
    Returns the result (also in bench/results/monitor-alert.json)."""
    binaries = [shutil.which(name) for name in ("prometheus", "prometheus-node-exporter")]
    if None in binaries:
        raise RuntimeError("needs prometheus and prometheus-node-exporter (Debian packages of the same names)")
    with tempfile.TemporaryDirectory(prefix="tcpstack-alert-") as tmp, \
            ClientServer(WEB_IP, BACKEND_IP, prefixes=("pmaw", "pmab")) as link:
        workdir = Path(tmp)
        entry = install(workdir / "code")
        textfile_dir = workdir / "textfile"
        textfile_dir.mkdir()
        sampler = None
        try:
            link.serve([sys.executable, "-c", BACKEND, BACKEND_IP, BACKEND_PORT, ALERT_CLIENT_SECONDS + 60])
            link.client.set_sysctl("net.ipv4.ip_local_port_range", ALERT_RANGE)
            sampler = spawn(link.client.argv(role_command(entry, textfile_dir, interval, False)),
                            workdir / "sampler.log")
            with Stack(binaries, textfile_dir, workdir, RULES_FILE, scrape, evaluation) as stack:
                baseline(stack.api, stack.instance, interval)
                churn, alert = exhaust(link, stack.api, stack.instance)
            duration = samples((textfile_dir / "tcpstack.prom").read_text(), "tcpstack_sampler_duration_seconds")
        finally:
            if sampler is not None:
                stop_process(sampler)
    return alert_result(interval, scrape, evaluation, churn, alert, duration, log)


def alert_result(interval, scrape, evaluation, churn, alert, duration, log):
    """The figures of run_alert_latency, checked against its targets, written to bench/results/monitor-alert.json."""
    bounds = alert_targets(interval, evaluation, scrape)
    seen_at, exhausted_at = churn["seen_at"], churn["exhausted_at"]
    latency = round(seen_at - exhausted_at, 2) if seen_at else None
    active_at = timestamp(alert["activeAt"]) if alert else None
    result = {
        "alert": ALERT, "sample_interval_seconds": interval, "scrape_interval_seconds": scrape,
        "evaluation_interval_seconds": evaluation, "connections_made": churn["made"],
        "latency_seconds": latency,
        "active_at_latency_seconds": round(active_at - exhausted_at, 2) if alert else None,
        "shares_seconds": latency_shares(exhausted_at, churn["written_at"], churn["scraped_at"], active_at, seen_at),
        "sample_seconds": duration[0][1] if duration else None,
        "labels": alert["labels"] if alert else None,
        "targets": {"latency_seconds": bounds["issue"], "latency_seconds_with_scrape": bounds["with_scrape"]},
        "formula": "target = sample interval + evaluation interval + 5 s = %d s (with one scrape interval: %d s)" % (
            bounds["issue"], bounds["with_scrape"]),
    }
    result["targets_met"] = {
        "latency_seconds <= %d" % bounds["issue"]: latency is not None and latency <= bounds["issue"],
        "latency_seconds <= %d (with the scrape)" % bounds["with_scrape"]:
            latency is not None and latency <= bounds["with_scrape"]}
    write(RESULTS.with_name("monitor-alert.json"), result)
    log("monitor.alert_latency_seconds: %s s from the first EADDRNOTAVAIL to %s firing (activeAt %s s; shares %s); "
        "sample %d s, scrape %d s, evaluation %d s: %s" % (
            latency, ALERT, result["active_at_latency_seconds"], result["shares_seconds"], interval, scrape,
            evaluation, result["formula"]))
    return result


def run_section(log=print):
    """``make bench``'s monitor section: run() (100,000 sockets, the role's default), run_churn() and
    run_alert_latency(), each at its defaults; a part that fails is recorded in ``failed_parts`` and the others
    still run."""
    out, errors = {}, {}
    for name, part in (("default", run), ("processes", run_churn), ("alert", run_alert_latency)):
        try:
            figures = part(log=log)
        except Exception as exc:  # pylint: disable=broad-except
            errors[name] = str(exc)[:2000]
            log("monitor %s FAILED: %s" % (name, str(exc)[:2000]))
            continue
        if name == "default":
            out.update(figures)
        else:
            out[name] = figures
    out["alert_latency_seconds"] = (out.get("alert") or {}).get("latency_seconds")
    if errors:
        out["failed_parts"] = errors
    return out


def main():
    parser = argparse.ArgumentParser(prog="python -m bench.monitor", description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--connections", type=int, default=50000, help="connections held (2 sockets each)")
    parser.add_argument("--interval", type=int, default=None,
                        help="the sampler's interval (default 15; 5 with --alert-latency)")
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--processes", action="store_true",
                        help="with --processes (port_monitor_processes: true); writes monitor-processes.json")
    parser.add_argument("--churn", action="store_true",
                        help="monitor.processes: per-process sampling while clients open --rate connections/s")
    parser.add_argument("--rate", type=int, default=5000, help="with --churn: new connections per second asked")
    parser.add_argument("--warmup", type=int, default=60, help="with --churn: seconds of churn before the sampler")
    parser.add_argument("--alert-latency", action="store_true",
                        help="monitor.alert_latency_seconds: first EADDRNOTAVAIL to the critical alert firing")
    parser.add_argument("--scrape", type=int, default=5, help="with --alert-latency: Prometheus' scrape interval")
    parser.add_argument("--evaluation", type=int, default=5, help="with --alert-latency: its evaluation interval")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("bench.monitor needs root (a network namespace)")
    if args.churn and args.alert_latency:
        sys.exit("--churn and --alert-latency are two measurements: run them one at a time")
    interval = max(1, min(args.interval or (5 if args.alert_latency else 15), 3600))
    if args.alert_latency:
        result = run_alert_latency(interval, max(1, min(args.scrape, 60)), max(1, min(args.evaluation, 60)))
    elif args.churn:
        result = run_churn(max(100, min(args.rate, 50000)), interval, max(2, min(args.windows, 20)),
                           max(0, min(args.warmup, 300)))
    else:
        result = run(max(1, min(args.connections, 100000)), interval, max(2, min(args.windows, 20)),
                     processes=args.processes)
    print(json.dumps(result, indent=1))
    return 0 if all(result["targets_met"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
