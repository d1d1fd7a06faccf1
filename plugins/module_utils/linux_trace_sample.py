# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""port_usage_info's sample through the kernel's tracepoints: run it, then give its counts to the processes.

``trace_sample`` records ``sample_seconds`` of the events linux_trace counts, in a private trace instance of
LinuxHost's, reading its trace_pipe every TRACE_INTERVAL; ``traced_processes`` joins what the trace counted
(new connections, TIME_WAITs entered, failed connects, per process and destination) with the final dump of the
socket table (the sockets each process holds now, its fd table; the TIME_WAIT sockets the trace saw it close
first).  Host access is LinuxHost's; the counting is linux_trace's.
"""

from __future__ import annotations

import errno
import os
import time

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_trace import (
    FAILED,
    NEW,
    TIME_WAIT_ENTERED,
    TraceTally,
    parse_lines,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import (
    DestinationCounts,
    identity,
    process_record,
)

TRACE_INTERVAL = 0.05  # seconds between two reads of the trace_pipe
BUFFER_TOTAL_KB = 65536  # the ring buffers of all CPUs together, at most (kernel memory, freed with the instance)
READ_CHUNK = 1 << 19  # bytes of trace text read and parsed at a time: the memory a read costs stays small
READS_PER_INTERVAL = 64  # reads at most per TRACE_INTERVAL (a bound: a busy host needs a few)
DRAIN_READS = 512  # reads of what is left in the buffer once recording stops
UNREADABLE_PIDS_SHOWN = 20


def trace_events(port_range=None):
    """[(SYSTEM/EVENT, filter, required)]: what linux_trace counts, filtered in the kernel.

    The closes that matter are a client's (its local port ephemeral): a FIN_WAIT1 or a TIME_WAIT of a local
    port outside ``port_range`` (a server's) is not even recorded.
    """
    ours = ""
    if port_range is not None:
        ours = "sport >= %d && sport <= %d && " % (int(port_range[0]), int(port_range[1]))
    state = ("protocol == 6 && (newstate == 2 || (oldstate == 2 && newstate == 7 && sport == 0) || "
             "(%s(newstate == 4 || (newstate == 7 && (oldstate == 4 || oldstate == 5 || oldstate == 11)))))" % ours)
    return [
        ("sock/inet_sock_set_state", state, True),
        ("sched/sched_process_fork", None, True),
        ("sched/sched_process_exec", None, True),
        ("sched/sched_process_exit", None, True),
        ("syscalls/sys_exit_connect", "ret == -%d" % errno.EADDRNOTAVAIL, False),
    ]


def buffer_kb(cpus=None):
    """Ring buffer kilobytes per CPU: BUFFER_TOTAL_KB shared out, between 512 and 8192."""
    cpus = cpus or os.cpu_count() or 1
    return max(512, min(8192, BUFFER_TOTAL_KB // cpus))


class HostView:
    """What linux_trace.TraceTally asks of the host, through LinuxHost and a ProcessTable: who a process is
    (``processes.identify``: pid and start time, read through one /proc/PID handle; None when gone) and its
    network namespace."""

    def __init__(self, host, processes):
        self.host = host
        self.processes = processes
        self.own_netns = _netns(host, None)
        self.identify = processes.identify

    def netns(self, pid):
        return _netns(self.host, pid)


def _netns(host, pid):
    try:
        return host.net_namespace(pid)
    except OSError:
        return None


def trace_sample(host, view, seconds, port_range, listening, clock=time.monotonic, sleep=time.sleep):
    """Trace ``seconds``; returns (TraceTally, seconds recorded, notes).  Raises TraceUnavailable (and OSError
    when the instance fails while recording)."""
    tally = TraceTally(view, listening, ephemeral=port_range)
    rest = ""
    with host.trace_instance(trace_events(port_range), buffer_kb()) as (pipe, notes):
        begun = clock()
        deadline = begun + seconds
        for dummy_read in range(int(seconds / TRACE_INTERVAL + 1) * READS_PER_INTERVAL):
            text = pipe.read(READ_CHUNK)
            rest = parse_lines(text, tally, rest)
            now = clock()
            if now >= deadline:
                break
            if len(text) < READ_CHUNK // 2:  # the buffer is drained: wait for more
                sleep(min(TRACE_INTERVAL, deadline - now))
        pipe.stop()
        window = clock() - begun
        for dummy_read in range(DRAIN_READS):
            text = pipe.read(READ_CHUNK)
            if not text:
                break
            rest = parse_lines(text, tally, rest)
        else:
            notes.append("the trace was not read to its end: what was left is not counted")
    return tally, window, list(notes)


def _record_id(entry, key):
    """The key of a traced process in Attribution's table: its pid while it runs (so that the sockets its fd table
    holds join it), else a number no live pid can be (a process gone is never merged with one holding its pid)."""
    return entry["pid"] if not entry["ended"] else key | (1 << 62)


def traced_processes(attribution, processes, tally, window):
    """(Snapshot.processes, Snapshot.attribution, unreadable) from the trace and the final dump's Attribution."""
    traced = tally.finish(attribution.owners())
    by_id = {}
    for key, entry in traced.items():
        by_id[_record_id(entry, key)] = entry
        for dest, counts in entry["destinations"].items():
            if counts[TIME_WAIT_ENTERED]:
                attribution.give_time_wait(dest, _record_id(entry, key), counts[TIME_WAIT_ENTERED])
    owned, unattributed = attribution.finish()
    out = []
    for record_id in sorted(set(owned) | set(by_id)):
        entry = by_id.get(record_id)
        found = owned.get(record_id)
        out.append(_merge(record_id, entry, found, processes))
    denied = sorted(processes.unreadable)
    unreadable = []
    if denied:
        unreadable.append({"source": "/proc/PID/fd of %d processes" % len(denied),
                           "reason": "Permission denied: their sockets cannot be attributed (run as root to see them)"})
    capped = sorted(set(tally.capped) | set(attribution.capped))
    info = {
        "method": "tracepoints",
        "sampled_seconds": round(window, 3),
        "live_dumps": 0,
        "fd_scans": processes.scans,
        "unattributed": unattributed,
        "unreadable_processes": len(denied),
        "unreadable_pids": denied[:UNREADABLE_PIDS_SHOWN],
        "trace_events": tally.events,
        "lost_events": tally.lost,
        "other_namespace_events": tally.other_namespace,
        "admitted_from_other_namespaces": tally.admitted_foreign,
        "unknown_namespace_events": tally.unknown_namespace,
        "capped": capped,
    }
    return out, info, unreadable


def _merge(record_id, entry, found, processes):
    """One ProcessRecord: the sockets it holds now (``found``, from the final dump) and what the trace counted."""
    pid = record_id & 0xffffffff
    if entry is not None:
        who = entry["who"] or identity(pid, name=entry["comm"])
    else:
        who = processes.describe(pid)
    destinations = {}
    for dest, counts in (found.destinations if found is not None else {}).items():
        destinations[dest] = counts
    traced = entry["destinations"] if entry is not None else {}
    for dest in set(destinations) | set(traced):
        have = destinations.get(dest) or DestinationCounts()
        new, entered, failed = traced.get(dest, (0, 0, 0))
        have.new_connections = new
        have.new_connections_inferred = 0
        have.time_wait_entered = entered
        have.failed_connections = failed
        destinations[dest] = have
    exact = entry is not None or any(counts.in_use > counts.time_wait_inferred for counts in destinations.values())
    bound = [found.bound_inactive, found.bound_inactive_seen] if found is not None else [0, 0]
    failed = 0
    if entry is not None:
        failed = max(entry["failed"], sum(counts[FAILED] for counts in entry["destinations"].values()))
        bound[1] += entry["bound"]  # those bound now are not connected: the traced ones connected, other sockets
    return process_record(who, destinations, bound[0], bound[1], evidence="exact" if exact or bound[0] else "inferred",
                          spawned=entry["spawned"] if entry is not None else None, failed_connections=failed)


__all__ = ["NEW", "TRACE_INTERVAL", "HostView", "buffer_kb", "trace_events", "trace_sample", "traced_processes"]
