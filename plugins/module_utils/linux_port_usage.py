# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the port_usage_info module does: read the host, tally, analyse.

The host is a LinuxHost (the only code that reads it); the socket table is
parsed by socket_table, the settings mean what linux_settings says, and the
OS-neutral ``port_usage.analyse()`` gives the answer.  The socket table is read
with one netlink ``sock_diag`` dump per address family, or, where netlink is
refused, from /proc/net/tcp and /proc/net/tcp6 in large chunks.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import replace

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_attribution import Attribution
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host_trace import TraceUnavailable
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_processes import ProcessTable
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_trace_sample import (
    HostView,
    trace_sample,
    traced_processes,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import (
    PORT_RANGE,
    RESERVED_PORTS,
    REPORTED_SETTINGS,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_usage_rules import LINUX
from ansible_collections.tcpstack.tuning.plugins.module_utils.nat_usage import (
    counters_before,
    flows_before,
    merge,
    nat_part,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_usage import analyse
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import (
    parse_port_list,
    parse_port_range,
    port_flags,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.socket_table import (
    AF_INET,
    AF_INET6,
    ALL_STATES,
    LISTEN,
    LIVE_STATES,
    PROC_TABLES,
    TableError,
    Tally,
    format_address,
    is_loopback,
    netlink_request,
    tally_netlink,
    tally_proc_chunks,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import Snapshot, process_record
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError

TIME_WAIT_SECONDS = 60  # TCP_TIMEWAIT_LEN: fixed, no sysctl changes it
OLD_REUSE_DELAY_MS = 1000  # before tcp_tw_reuse_delay (Linux 6.14) reuse waited about one second

# Counters reported, by file and section: /proc/net/netstat TcpExt, /proc/net/snmp Tcp.
COUNTERS = (
    ("/proc/net/netstat", "TcpExt", ("TW", "TWRecycled", "TWKilled", "TCPTimeWaitOverflow", "ListenOverflows",
                                     "ListenDrops")),
    ("/proc/net/snmp", "Tcp", ("ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "CurrEstab")),
)


def _unreadable(source, exc):
    return {"source": source, "reason": os.strerror(exc.errno or errno.EIO)}


# ---------------------------------------------------------------- the socket table
def read_netlink(host, tally, families=(AF_INET, AF_INET6), observe=None, states=ALL_STATES, observe_time_wait=True):
    """Dump the TCP sockets in ``states`` over netlink sock_diag into ``tally``; raises TableError.

    ``observe``, ``observe_time_wait``: see socket_table.tally_netlink (process attribution).
    """
    host.sock_diag([(netlink_request(family, seq, states), _consumer(family, tally, observe, observe_time_wait))
                    for seq, family in enumerate(families, 1)])
    tally.source = "netlink"


def _consumer(family, tally, observe=None, observe_time_wait=True):
    return lambda buf: tally_netlink(buf, family, tally, observe, observe_time_wait)


def read_proc(host, tally):
    """Read /proc/net/tcp and /proc/net/tcp6 into ``tally``; returns the paths that could not be read."""
    unreadable = []
    for path, family in PROC_TABLES:
        try:
            tally_proc_chunks(host.read_chunks(path), family, tally)
        except OSError as exc:
            if exc.errno == errno.ENOENT and family == AF_INET6:
                continue  # no IPv6 in this kernel: nothing to count
            unreadable.append(_unreadable(path, exc))
    tally.source = "proc"
    return unreadable


# ---------------------------------------------------------------- counters and settings
def parse_counter_file(text):
    """{section: {name: int}} from /proc/net/netstat or /proc/net/snmp (pairs of header and value lines)."""
    out = {}
    lines = text.splitlines()
    for names, values in zip(lines[0::2], lines[1::2]):
        head, dummy, names = names.partition(":")
        head2, dummy, values = values.partition(":")
        if head != head2:
            continue
        section = out.setdefault(head.strip(), {})
        for name, value in zip(names.split(), values.split()):
            try:
                section[name] = int(value)
            except ValueError:
                continue
    return out


def read_counters(host):
    """(counters {name: int}, unreadable [{source, reason}])."""
    counters = {}
    unreadable = []
    for path, section, names in COUNTERS:
        try:
            parsed = parse_counter_file(host.read_proc(path)).get(section, {})
        except OSError as exc:
            unreadable.append(_unreadable(path, exc))
            continue
        for name in names:
            if name in parsed:
                counters[name] = parsed[name]
    return counters, unreadable


def read_settings(host):
    """({name: value as the kernel prints it, or None}, unreadable).  A missing key is None and not unreadable."""
    settings = {}
    unreadable = []
    for name, key in REPORTED_SETTINGS:
        try:
            text = host.sysctl_text(key)
        except OSError as exc:
            settings[name] = None
            unreadable.append(_unreadable(exc.filename or key, exc))
            continue
        settings[name] = None if text is None else " ".join(text.split())
    return settings, unreadable


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def typed_settings(raw):
    """The settings as reported: ints, the range as "LOW HIGH", the reserved list in kernel syntax."""
    out = {}
    for name, value in raw.items():
        out[name] = value if name in ("port_range", "reserved_ports") else _int(value)
    return out


def reuse_rules(settings):
    """{"remote": bool, "loopback": bool, "delay_seconds": float, "inactive": bool} from typed settings.

    tcp_tw_reuse 1 reuses TIME_WAIT ports towards every destination, 2 only
    over loopback; either needs tcp_timestamps on (1 or 2).
    """
    reuse = settings.get("tw_reuse")
    stamps = settings.get("timestamps")
    on = stamps is not None and stamps != 0
    delay = settings.get("tw_reuse_delay")
    return {
        "remote": reuse == 1 and on,
        "loopback": reuse in (1, 2) and on,
        "delay_seconds": (delay if delay is not None else OLD_REUSE_DELAY_MS) / 1000.0,
        "inactive": reuse == 1 and not on,
    }


# ---------------------------------------------------------------- the whole read
def read_ports(host):
    """(raw settings, typed settings, port range or None, reserved intervals, unreadable)."""
    raw, unreadable = read_settings(host)
    settings = typed_settings(raw)
    port_range = None
    reserved = ()
    try:
        if raw.get("port_range"):
            port_range = parse_port_range(raw["port_range"], PORT_RANGE)
        reserved = parse_port_list(raw.get("reserved_ports") or "", RESERVED_PORTS)
    except ValidationError as exc:
        unreadable.append({"source": PORT_RANGE, "reason": str(exc)})
    return raw, settings, port_range, reserved, unreadable


def read_table(host, tally, use_netlink=True, attribution=None, processes=None):
    """Read the socket table into ``tally``: over netlink (attributing its sockets when an ``attribution`` is
    given), else from /proc.  Returns (tally, table read, attributed, notes, unreadable)."""
    notes = []
    unreadable = []
    attributed = False
    if use_netlink and host.live:
        observe = None
        if attribution is not None:
            if attribution.started is not None:
                attribution.window_ms = (time.monotonic() - attribution.started) * 1000.0
            observe = attribution.observer(processes.owner)
        # without a sample no TIME_WAIT socket can be known by its cookie: the tally counts them per destination
        sampled = attribution is not None and attribution.started is not None
        try:
            read_netlink(host, tally, observe=observe, observe_time_wait=sampled)
            attributed = observe is not None
            if attributed and not sampled:
                attribution.add_time_wait(tally.tuples())
        except TableError as exc:
            notes.append("%s; read /proc/net/tcp and /proc/net/tcp6 instead" % exc)
            tally = Tally(tally.ephemeral)
    table_ok = True
    if tally.source is None:
        missing = read_proc(host, tally)
        unreadable.extend(missing)
        table_ok = len(missing) < 2
        if tally.bad_lines:
            notes.append("%d lines of /proc/net/tcp and /proc/net/tcp6 were not sockets as the kernel prints them "
                         "and were skipped" % tally.bad_lines)
    return tally, table_ok, attributed, notes, unreadable


def collect(host, use_netlink=True, attribution=None, processes=None, traced=None):
    """Read everything port_usage needs from ``host`` (its network namespace): a Snapshot.

    With an ``attribution`` (linux_attribution.Attribution) and ``processes``
    (linux_processes.ProcessTable, scanned just before), the netlink dump
    also attributes the sockets to processes: Snapshot.processes.  ``traced``:
    (linux_trace.TraceTally, seconds) of a traced sample, joined with it.
    """
    dummy_raw, settings, port_range, reserved, unreadable = read_ports(host)
    tally, table_ok, attributed, notes, missing = read_table(host, Tally(port_flags(port_range, reserved)),
                                                             use_netlink, attribution, processes)
    unreadable.extend(missing)
    counters, missing = read_counters(host)
    unreadable.extend(missing)
    reuse = reuse_rules(settings)
    owners, attribution_info = None, None
    if attribution is not None:
        if attributed and traced is not None:
            owners, attribution_info, missing = traced_processes(attribution, processes, *traced)
            unreadable.extend(missing)
        elif attributed:
            owners, attribution_info, missing = attributed_processes(attribution, processes)
            unreadable.extend(missing)
        else:
            notes.append("processes are attributed from the netlink dump only: no process attribution")
    start = settings.get("unprivileged_port_start")
    return Snapshot(
        settings=settings, port_range=port_range, reserved=reserved, min_port=start if start is not None else 1024,
        listening=tally.listening, states=tally.state_counts() if table_ok else None, tuples=tally.tuples(),
        format_address=format_address, is_loopback=is_loopback, reuse_remote=reuse["remote"],
        reuse_loopback=reuse["loopback"], reuse_delay=reuse["delay_seconds"], time_wait_seconds=TIME_WAIT_SECONDS,
        counters=counters, source=tally.source, unreadable=unreadable, notes=notes,
        extra_findings=_setting_findings(reuse), extra_recommendations={"timestamps": 1} if reuse["inactive"] else {},
        processes=owners, attribution=attribution_info, platform=LINUX,
        time_wait_recent=tally.time_wait_recent() if table_ok else None,
        time_wait_recent_seconds=tally.recent_seconds if table_ok else None,
    )


def _setting_findings(reuse):
    out = []
    if reuse["inactive"]:
        out.append(("warning", "tcp_tw_reuse is 1 but tcp_timestamps is 0: reuse is inactive"))
    return out


# ---------------------------------------------------------------- process attribution
SAMPLE_INTERVAL = 0.01  # seconds between the live dumps of a sample
UNREADABLE_PIDS_SHOWN = 20


def attributed_processes(attribution, processes):
    """(Snapshot.processes, Snapshot.attribution, unreadable) from a finished Attribution and its ProcessTable."""
    owned, unattributed = attribution.finish()
    out = []
    for pid in sorted(owned):
        found = owned[pid]
        out.append(process_record(processes.describe(pid), found.destinations, found.bound_inactive,
                                  found.bound_inactive_seen))
    unreadable = []
    denied = sorted(processes.unreadable)
    if denied:
        unreadable.append({"source": "/proc/PID/fd of %d processes" % len(denied),
                           "reason": "Permission denied: their sockets cannot be attributed (run as root to see them)"})
    info = {
        "method": "sampling" if attribution.window_ms is not None else "snapshot",
        "capped": sorted(attribution.capped),
        "sampled_seconds": round(attribution.window_ms / 1000.0, 3) if attribution.window_ms is not None else None,
        "live_dumps": attribution.dumps,
        "fd_scans": processes.scans,
        "unattributed": unattributed,
        "unreadable_processes": len(denied),
        "unreadable_pids": denied[:UNREADABLE_PIDS_SHOWN],
    }
    return out, info, unreadable


def sample_processes(host, processes, attribution, seconds, ephemeral, sleep=time.sleep, interval=SAMPLE_INTERVAL):
    """Dump the live sockets every ``interval`` for ``seconds``, giving each new socket its owner.

    A socket that lives a few milliseconds must be found in an fd table while
    it is open: each dump is bracketed by scans of the likely owners, every
    process of the namespace where a scan of them all is cheap (under a fifth
    of the interval), else the processes seen opening and closing sockets;
    every process is scanned again at most a fifth of the time.  Bounded in
    count (seconds / interval + 2 dumps) and time.  Raises TableError when
    netlink fails.
    """
    clock = time.monotonic
    deadline = clock() + seconds
    begun = clock()
    processes.scan()
    last_full = clock()
    full_cost = last_full - begun

    def likely_owners():
        """Scan every process where that is cheap, else those seen opening and closing sockets; returns the
        cost of a scan of every process, as last measured."""
        if full_cost * 5 < interval:
            started = clock()
            processes.scan()
            return clock() - started
        if processes.changed:
            processes.scan(sorted(processes.changed))
        return full_cost

    for dummy_tick in range(int(seconds / interval) + 2):
        begun = clock()
        full_cost = likely_owners()
        if attribution.started is None:
            attribution.started = begun
        read_netlink(host, Tally(ephemeral), observe=attribution.observe_live, states=LIVE_STATES)
        attribution.end_dump()
        if attribution.resolve(processes.owner, count=False):
            full_cost = likely_owners()
            if full_cost * 5 >= interval and clock() - last_full >= 4 * full_cost:
                started = clock()
                processes.scan()
                last_full = clock()
                full_cost = last_full - started
        attribution.resolve(processes.owner)
        now = clock()
        if now >= deadline:
            break
        sleep(max(0.0, min(interval - (now - begun), deadline - now)))


def audit(host=None, top=10, sample_seconds=0, warning=70, critical=90, use_netlink=True, sleep=time.sleep,
          attribute=True, processes=None, nat=True):
    """The module's work: read ``host`` (default: this one), optionally sample, analyse.  Returns the result dict.

    ``attribute`` (on a live host, with netlink): name the processes that hold
    the ports (Snapshot.processes); with ``sample_seconds`` above 0, the
    sample follows each new socket to its process and measures each
    process's rate of new connections.  ``processes``: a ProcessTable
    (default: one reading through ``host``).  On a host that source-NATs the
    result gets a ``nat`` section (nat_usage), whose verdict counts in the host's; ``nat`` False skips that
    part (no conntrack dump, no nft run): port_monitor without its ``--nat``.
    """
    host = LinuxHost() if host is None else host
    attribution = None
    if attribute and use_netlink and host.live:
        attribution = Attribution()
        processes = ProcessTable(host) if processes is None else processes
    if not (sample_seconds and sample_seconds > 0):
        if attribution is not None:
            processes.scan()
        return merge(analyse(collect(host, use_netlink, attribution, processes), top=top, warning=warning,
                             critical=critical),
                     *(nat_part(host, None, None, top, warning, critical, _named(processes, attribution))
                       if nat else (None, [])))
    started = time.monotonic()
    before, missing = read_counters(host)
    nat_before, nat_flows = (counters_before(host), flows_before(host)) if nat else (None, None)
    notes = []
    traced = None
    if attribution is not None:
        traced, attribution = _sample(host, processes, attribution, sample_seconds, notes, sleep, started)
    else:
        sleep(sample_seconds)
    snapshot = collect(host, use_netlink, attribution, processes, traced)
    snapshot = replace(snapshot, counters=before, counters_after=snapshot.counters,
                       sample_seconds=time.monotonic() - started, notes=notes + snapshot.notes)
    snapshot.unreadable.extend(item for item in missing if item not in snapshot.unreadable)
    return merge(analyse(snapshot, top=top, warning=warning, critical=critical),
                 *(nat_part(host, nat_before, snapshot.sample_seconds, top, warning, critical,
                            _named(processes, attribution), nat_flows) if nat else (None, [])))


def _named(processes, attribution):
    """The ProcessTable the nat section names the sources' processes with: the audit's, when it attributes."""
    return processes if attribution is not None else None


def _sample(host, processes, attribution, seconds, notes, sleep, started):
    """Sample ``seconds``: trace where the kernel lets us (tracepoints), else poll (sampling).  Returns
    (traced or None, the Attribution for the final dump, or None when the socket table could not be read)."""
    port_range, reserved = read_ports(host)[2:4]
    try:
        listening = Tally(port_flags(port_range, reserved))
        read_netlink(host, listening, states=1 << LISTEN)
        tally, window, trace_notes = trace_sample(host, HostView(host, processes), seconds, port_range,
                                                  listening.listening, sleep=sleep)
        processes.scan()
        notes.extend(trace_notes)
        return (tally, window), attribution
    except (TraceUnavailable, TableError, OSError) as exc:
        reason = str(exc) if not isinstance(exc, OSError) else "%s (%s)" % (exc.strerror, exc.filename or "tracefs")
        notes.append("the kernel's tracepoints could not be used (%s): connections were sampled every %g ms "
                     "instead, which misses the shortest ones" % (reason, SAMPLE_INTERVAL * 1000))
    left = max(0.0, seconds - (time.monotonic() - started))
    try:
        sample_processes(host, processes, attribution, left, port_flags(port_range, reserved), sleep=sleep)
        processes.scan()
    except TableError as exc:
        notes.append("%s: no process attribution" % exc)
        sleep(max(0.0, seconds - (time.monotonic() - started)))
        return None, None
    return None, attribution
