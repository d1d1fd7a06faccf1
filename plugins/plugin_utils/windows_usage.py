# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the win_port_usage_info action does: one read, then the analysis.

The Windows twin of module_utils/linux_port_usage.py: ``audit(host, options)``
runs one script on a WindowsHost (ranges, excluded ranges, TcpTimedWaitDelay,
Get-NetTCPConnection, Get-Process, Win32_Service, the Tcpip events) and
``analyse_windows`` turns it into the result.  The interval maths is module_utils/ports.py, the
records, rules and verdict are the OS-neutral module_utils/usage_*.py and port_usage.analyse(); the rules and
wording only Windows has are ``WINDOWS`` here.

On Windows connect() takes every local port from one host-wide pool per IP
version, so the pools' utilisation is judged too, not only each destination's.

Who holds the ports (``attribute()``): each connection's OwningProcess, its
name from Get-Process and the services it runs from Win32_Service, in the
records Linux gives (usage_model.ProcessRecord), so that the OS-neutral
pooling rules apply.  Windows reports a TIME_WAIT connection with
OwningProcess 0 (as reported publicly, see tests/support/windows_sim/README.md):
a destination's TIME_WAIT is given to its only live owner (inferred,
usage_rules.time_wait_heir), as on Linux without a sample, else it stays
unattributed; an inferred share never makes a pooling finding or the top
churner by itself (usage_findings), so such a process is listed with
``evidence: inferred``, never blamed.  Names (ProcessName, service names) are
host text, cleaned here (usage_wording.clean_text).  Windows cannot say here
which process spawned which, nor which connect() failed for want of a port:
``spawned``, ``failed_connections`` are None and ``attribution.unavailable``
says why; ``start_time`` is None (Get-Process is read for Id and ProcessName
only).  The rate: every TIME_WAIT
socket closed within the last TIME_WAIT period (TcpTimedWaitDelay), so a
destination's TIME_WAIT count over that period is its rate of connections
opened and closed, measured over that window without sampling.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, NamedTuple, Optional

from ansible_collections.tcpstack.tuning.plugins.module_utils.port_usage import analyse
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import (
    PORT_MAX,
    clip,
    port_flags,
    start_count_range,
    usable_ports,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import (
    HOST,
    DestinationCounts,
    Platform,
    Pool,
    Snapshot,
    Unattributed,
    identity,
    process_record,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_rules import time_wait_heir, unmap_text
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_commands import build_info_script
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import (
    CONTIGUOUS_BLOCK_REPORTED,
    DEFAULT_RANGE,
    EVENT_MAX,
    INSTALLER_RANGES,
    WSAEACCES,
    NETSH_MIN_START,
    TIME_WAIT_DEFAULT,
    TIME_WAIT_MAX,
    TIME_WAIT_MIN,
    IpVersion,
    Protocol,
    RegName,
    validate_port_usage_info,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_parse import (
    excluded_result,
    parse_csv,
    parse_output,
    parse_events,
    parse_read,
    parse_services,
    process_name,
    ranges_result,
    reg_value,
    service_text,
    small_int,
    split_sections,
)

SHORTER_TIME_WAIT = 30  # the time_wait_delay recommended when ports run short
TIME_WAIT, ESTABLISHED, BOUND = "TimeWait", "Established", "Bound"  # Get-NetTCPConnection's State names
# A host-wide pool held beyond a threshold, in Windows' words.
POOL_HELD = ("the host holds %s of %s usable %s TCP ports (%s); on Windows connect() takes them from one "
             "host-wide pool")


def _shorter_time_wait(snap):
    """Windows' way to shorten how long a closed port is held: a shorter TcpTimedWaitDelay (win_tcp time_wait_delay)."""
    return {"time_wait_delay": SHORTER_TIME_WAIT} if snap.time_wait_seconds > SHORTER_TIME_WAIT else {}


# The rules and wording only Windows has, for port_usage.analyse().
WINDOWS = Platform(name="windows", hold_remedy=_shorter_time_wait, pool_held=POOL_HELD)


def validate(params):
    """Check win_port_usage_info's options; returns InfoOptions.  Raises ValidationError."""
    return validate_port_usage_info(params)


def audit(host, options):
    """win_port_usage_info's result from one round trip on ``host`` (a WindowsHost).

    Raises WinTcpError when the output cannot be read (its message ends with
    the host's stderr, if any); the connection's own errors propagate.
    """
    output = host.run(build_info_script(options.targets, options.event_hours))
    return parse_output(output, lambda stdout: analyse_windows(options, parse_read(stdout, options.targets),
                                                               split_sections(stdout)))


# ------------------------------------------------------------------ the parts of one read
def _pools(state):
    """{IpVersion: usage_model.Pool}: each IP version's dynamic TCP range and the excluded ports inside it."""
    pools = {}
    for ip in IpVersion:
        start_number = state.ranges.get((ip, Protocol.TCP))
        if start_number is not None:
            port_range = start_count_range(*start_number)
            excluded = [(a, b) for a, b, _admin in state.excluded.get((ip, Protocol.TCP), ())]
            pools[ip] = Pool("%s dynamic" % ip.value, 4 if ip is IpVersion.IPV4 else 6, port_range,
                             clip(excluded, port_range))
    return pools


def _time_wait(state):
    """(TcpTimedWaitDelay as read, the seconds TIME_WAIT lasts, notes)."""
    value = reg_value(state, RegName.TIME_WAIT_DELAY)
    seconds = value if isinstance(value, int) and TIME_WAIT_MIN <= value <= TIME_WAIT_MAX else TIME_WAIT_DEFAULT
    notes = []
    if value is not None and not isinstance(value, int):
        notes.append("TcpTimedWaitDelay is %s %r, which Windows ignores: TIME_WAIT lasts the default %d seconds"
                     % (value["type"], value["data"], TIME_WAIT_DEFAULT))
    elif value is not None:
        notes.append("TcpTimedWaitDelay is %d in the registry; Windows reads it at boot, so it is in effect once the "
                     "host has restarted since it was set" % value)
    return value, seconds, notes


def _port_of(text):
    """The int of a short digit string from the host's CSV, else None (never int() of a long string)."""
    return small_int(text if isinstance(text, str) else str(text))


class HeldConnection(NamedTuple):
    """A connection that holds a dynamic port: its destination, Get-NetTCPConnection's State, its OwningProcess."""

    family: int
    remote: str
    port: int
    state: str
    pid: Optional[int]


@dataclass
class ConnectionTally:
    """Get-NetTCPConnection counted: states per family, ports held per tuple, family and process."""

    source: Optional[str] = None  # None: the table could not be read
    states: Optional[dict] = None
    tuples: Dict[tuple, list] = field(default_factory=dict)
    listening: set = field(default_factory=set)
    held: Dict[IpVersion, int] = field(default_factory=lambda: {IpVersion.IPV4: 0, IpVersion.IPV6: 0})
    rows: List[HeldConnection] = field(default_factory=list)
    names: Dict[int, Optional[str]] = field(default_factory=dict)


def _process_names(sections):
    section = sections.get("processes")
    if section is None or not section.ok:
        return None
    names = {}
    for row in parse_csv(section.lines):
        pid = _port_of(row.get("Id"))
        if pid is not None:
            names[pid] = row.get("ProcessName")
    return names


def _tally(sections, pools, unreadable):
    """Count the connections; the ports held are those of a pool, not excluded, not listening, any state but Listen."""
    tally = ConnectionTally()
    section = sections.get("connections")
    if section is None or not section.ok:
        unreadable.append({"source": "Get-NetTCPConnection", "reason": "Get-NetTCPConnection failed or is missing (it "
                           "needs Windows Server 2012 / Windows 8 or later)"})
        return tally
    rows = parse_csv(section.lines)
    names = _process_names(sections)
    if names is None:
        unreadable.append({"source": "Get-Process", "reason": "Get-Process failed"})
        names = {}
    tally.names = names
    tally.source = "Get-NetTCPConnection"
    tally.states = {"ipv4": {}, "ipv6": {}}
    for row in rows:
        family, _address = unmap_text(row.get("LocalAddress"))
        tcp_state = (row.get("State") or "").strip()
        bucket = tally.states["ipv%d" % family]
        bucket[tcp_state] = bucket.get(tcp_state, 0) + 1
        port = _port_of(row.get("LocalPort"))
        if tcp_state == "Listen" and port is not None:
            tally.listening.add(port)
    flags = {ip: port_flags(pool.port_range, pool.reserved) for ip, pool in pools.items()}
    for row in rows:
        tcp_state = (row.get("State") or "").strip()
        family, local = unmap_text(row.get("LocalAddress"))
        ip = IpVersion.IPV4 if family == 4 else IpVersion.IPV6
        port = _port_of(row.get("LocalPort"))
        if tcp_state == "Listen" or ip not in flags or port is None or not 0 <= port <= PORT_MAX \
                or not flags[ip][port] or port in tally.listening:
            continue
        _rfamily, remote = unmap_text(row.get("RemoteAddress"))
        remote_port = _port_of(row.get("RemotePort")) or 0
        entry = tally.tuples.setdefault((family, local, remote, remote_port), [0, 0])
        entry[0] += 1
        entry[1] += tcp_state == TIME_WAIT
        tally.held[ip] += 1
        tally.rows.append(HeldConnection(family, remote, remote_port, tcp_state, _port_of(row.get("OwningProcess"))))
    return tally


# ------------------------------------------------------------------ who holds the ports
UNAVAILABLE = {  # what Windows cannot tell from one read, said instead of guessed (attribution.unavailable)
    "spawned": "Windows: Get-Process and Get-NetTCPConnection do not say which process started which",
    "failed_connections_per_second": "Windows: no per-process count of connect() calls failed for want of a port; "
                                     "Tcpip event 4231 counts them host-wide (events)"}


def attribute(rows, names, services, window):
    """(Snapshot.processes, Snapshot.attribution) from the held connections.

    ``rows``: HeldConnection (family, remote address, remote port, State, OwningProcess or None) of each connection
    holding a dynamic port; ``names`` {pid: ProcessName}; ``services`` {pid: (service name, ...)} or None (not read);
    ``window``: the seconds TIME_WAIT lasts.  OwningProcess 0 or unreadable owns nothing.  A TIME_WAIT connection
    with an owner counts as seen alive; those without one go to the destination's only live owner (inferred), else
    stay unattributed: a pid is never invented, and a pooled client beside a churner towards the same destination
    is not given the churner's TIME_WAIT.  ``new_connections`` of a destination: its TIME_WAIT sockets, each closed
    within the last ``window`` seconds.  Bound ports (bound, not connected: no destination) are counted in
    ``attribution["bound"]`` only.
    """
    table = {}  # destination -> {pid or None: _Held}
    bound = 0
    for family, remote, port, tcp_state, pid in rows:
        if tcp_state == BOUND:
            bound += 1
            continue
        counts = table.setdefault((family, remote, port), {}).setdefault(pid or None, _Held())
        if tcp_state == TIME_WAIT:
            counts.time_wait += 1
        else:
            counts.live += 1
            counts.established += tcp_state == ESTABLISHED
    processes = {}
    unattributed = {}
    for dest, by_pid in table.items():
        nobody = by_pid.get(None, _Held())
        heir = time_wait_heir([pid for pid, counts in by_pid.items() if pid is not None and counts.live > 0])
        for pid, counts in by_pid.items():
            if pid is None:
                continue
            inferred = nobody.time_wait if pid == heir else 0
            time_wait = counts.time_wait + inferred
            proc = processes.get(pid) or processes.setdefault(pid, process_record(identity(
                pid, name=process_name(names.get(pid)), unit=service_text((services or {}).get(pid)))))
            proc.destinations[dest] = DestinationCounts(
                in_use=counts.live + time_wait, established=counts.established, time_wait=time_wait,
                time_wait_inferred=inferred, new_connections=time_wait, new_connections_inferred=inferred)
        if nobody.live or (nobody.time_wait and heir is None):
            left = 0 if heir is not None else nobody.time_wait
            unattributed[dest] = Unattributed(in_use=nobody.live + left, time_wait=left, new_connections=left)
    for proc in processes.values():
        proc.evidence = _evidence(proc)
    attribution = {"sampled_seconds": float(window), "method": "time_wait_window", "bound": bound,
                   "services": services is not None, "unattributed": unattributed, "unavailable": dict(UNAVAILABLE)}
    return [processes[pid] for pid in sorted(processes)], attribution


def _evidence(proc):
    """"inferred" for a process whose every TIME_WAIT is an owner-0 one given to it, else "exact"."""
    counts = proc.destinations.values()
    inferred = sum(c.time_wait_inferred for c in counts)
    return "inferred" if inferred and inferred == sum(c.time_wait for c in counts) else "exact"


class _Held:
    """One process's connections towards one destination: live, established, in TIME_WAIT."""

    __slots__ = ("live", "established", "time_wait")

    def __init__(self):
        self.live = self.established = self.time_wait = 0


def _times(count):
    return "once" if count == 1 else "%d times" % count


def _events(sections, hours, unreadable):
    """(the events entry of the result, findings) from the Tcpip 4227/4231 events of the last ``hours``."""
    events = {"hours": hours, "4227": None, "4231": None, "latest": None, "capped": False}
    findings = []
    section = sections.get("events")
    if section is None or not section.ok:
        unreadable.append({"source": "wevtutil (System log, Tcpip 4227/4231)",
                           "reason": (section.text if section is not None else "no output") or "failed"})
        return events, findings
    found = parse_events(section.lines)
    events["4227"] = sum(1 for e in found if e["id"] == 4227)
    events["4231"] = sum(1 for e in found if e["id"] == 4231)
    events["latest"] = max((e["time"] for e in found if e["time"]), default=None)
    events["capped"] = len(found) >= EVENT_MAX
    more = "at least " if events["capped"] else ""
    if events["4231"]:
        findings.append(("critical", "Tcpip event 4231 (an ephemeral port could not be allocated from the global TCP "
                                     "port space) was logged %s%s in the last %d hours"
                         % (more, _times(events["4231"]), hours)))
    if events["4227"]:
        findings.append(("warning", "Tcpip event 4227 (a connect failed because the local endpoint was recently used "
                                    "and is still in TIME_WAIT) was logged %s%s in the last %d hours"
                         % (more, _times(events["4227"]), hours)))
    return events, findings


# ------------------------------------------------------------------ the dynamic range against its exclusions
def free_blocks(port_range, excluded):
    """The runs of ports of ``port_range`` that no interval of ``excluded`` covers: ((low, high), ...)."""
    low, high = port_range
    out = []
    cursor = low
    for a, b in clip(excluded, port_range):
        if a > cursor:
            out.append((cursor, a - 1))
        cursor = max(cursor, b + 1)
    if cursor <= high:
        out.append((cursor, high))
    return tuple(out)


INSTALLER_FINDING = ("the %s dynamic range starts at %d with %s ports, as installers leave it (the Visual Studio "
                     "installer left 1024/64511, actions/runner-images#1442): services listening on low ports "
                     "compete with it, and WinNAT/Hyper-V carve their reservations from it; set it back with win_tcp "
                     "port_range")
FRAGMENTED_FINDING = ("the %s dynamic range %d-%d is fragmented by %d excluded ranges: its largest contiguous free "
                      "block is %s ports%s. microsoft/WSL#12351 reported the host networking service needing a "
                      "contiguous block of 4,096 ports and failing with 0x8007054f when the range was fragmented (a "
                      "reported figure, not a documented Windows limit). Restarting WinNAT (or the host) makes it "
                      "carve its blocks again; a wider port_range leaves more room")
BLOCKED_FINDING = ("port %d, which a service %s, lies inside the %s (WinNAT/Hyper-V): a bind to it fails with "
                   "WSAEACCES (%d), which is this exclusion, not port exhaustion. Reserve it as an administered "
                   "exclusion (win_tcp excluded_ranges) while winnat and the service are stopped (netsh refuses a "
                   "port in use), so that WinNAT leaves it alone after the next start")
DEFAULT_RANGE_TEXT = "%d %d" % (DEFAULT_RANGE[0], DEFAULT_RANGE[0] + DEFAULT_RANGE[1] - 1)


def _one_range(ip, start_number, rows, findings, recommend):
    """One IP version's range against its excluded ``rows``: its entry of the result; its findings and
    recommendations added to ``findings`` and ``recommend``."""
    port_range = start_count_range(*start_number)
    excluded = [(a, b) for a, b, _admin in rows]
    blocks = free_blocks(port_range, excluded)
    largest = max(blocks, key=lambda r: (r[1] - r[0], -r[0]), default=None)
    installer = tuple(start_number) in INSTALLER_RANGES
    inside = clip(excluded, port_range)
    name = "%s tcp" % ip.value
    if installer:
        findings.append(("warning", INSTALLER_FINDING % (name, start_number[0], "{:,}".format(start_number[1]))))
        recommend["port_range"] = DEFAULT_RANGE_TEXT
    size = largest[1] - largest[0] + 1 if largest else 0
    if inside and size < CONTIGUOUS_BLOCK_REPORTED <= port_range[1] - port_range[0] + 1:
        where = " (%d-%d)" % largest if largest else ""
        findings.append(("warning", FRAGMENTED_FINDING % (name, port_range[0], port_range[1], len(inside),
                                                          "{:,}".format(size), where)))
        if port_range[1] - port_range[0] + 1 < DEFAULT_RANGE[1]:
            recommend.setdefault("port_range", DEFAULT_RANGE_TEXT)
    return {
        "range": {"start": port_range[0], "end": port_range[1], "number": start_number[1]},
        "administered": [{"start": a, "end": b} for a, b, admin in rows if admin],
        "system": [{"start": a, "end": b} for a, b, admin in rows if not admin],
        "usable": usable_ports(port_range, excluded),
        "largest_free_block": (None if largest is None else
                               {"start": largest[0], "end": largest[1], "size": largest[1] - largest[0] + 1}),
        "installer_range": installer,
    }


def _blocked_findings(blocked):
    """The findings on ports a service needs that a system exclusion holds: {port: [(range name, (a, b),
    listening)]}."""
    findings = []
    for port, hits in sorted(blocked.items()):
        what = "listens on" if any(h[2] for h in hits) else "is configured for"
        where = "; ".join("%s system exclusion %d-%d" % (name, a, b) for name, (a, b), dummy in hits)
        findings.append(("warning", BLOCKED_FINDING % (port, what, where, WSAEACCES)))
    return findings


def range_analysis(state, listening, service_ports):
    """The TCP dynamic range of each IP version against its excluded ranges: (result, findings, recommendations).

    ``result``: {ipv4: {range, administered, system, usable, largest_free_block, installer_range}}.  Findings: a
    range left by an installer; fragmentation that leaves no contiguous block of CONTIGUOUS_BLOCK_REPORTED ports
    (the figure microsoft/WSL#12351 reported, cited as such); listening or configured ports inside a system
    exclusion (a bind there fails with WSAEACCES 10013: an exclusion, not exhaustion).  Recommendations are
    win_tcp options: ``port_range`` and ``excluded_ranges``.
    """
    out = {}
    findings = []
    recommend = {}
    blocked = {}
    for ip in IpVersion:
        start_number = state.ranges.get((ip, Protocol.TCP))
        if start_number is None:
            continue
        rows = state.excluded.get((ip, Protocol.TCP), ())
        out[ip.value] = _one_range(ip, start_number, rows, findings, recommend)
        system = [(a, b) for a, b, admin in rows if not admin]
        for port in sorted(set(listening) | set(service_ports)):
            hit = next(((a, b) for a, b in system if a <= port <= b), None)
            if hit is not None:
                blocked.setdefault(port, []).append(("%s tcp" % ip.value, hit, port in listening))
    findings.extend(_blocked_findings(blocked))
    if blocked:
        recommend["excluded_ranges"] = ["%d" % port for port in sorted(blocked)]
    return out, findings, recommend


# ------------------------------------------------------------------ the analysis
def analyse_windows(options, state, sections):
    """The win_port_usage_info result from one read (``state``: parse_read; ``sections``: split_sections).

    One port_usage.analyse() call in host scope: Windows takes every ephemeral port of an IP version from one
    host-wide pool (the dynamic range minus its excluded ranges), and the remedies are win_tcp's options.
    """
    pools = _pools(state)
    tw_value, time_wait, notes = _time_wait(state)
    unreadable = []
    tally = _tally(sections, pools, unreadable)
    events, event_findings = _events(sections, options.event_hours, unreadable)
    ranges, range_findings, range_recommendations = range_analysis(state, tally.listening, options.service_ports)
    processes, attribution = None, None
    if tally.source is not None:
        services = parse_services(sections)
        if services is None:
            unreadable.append({"source": "Win32_Service", "reason": "Get-CimInstance Win32_Service failed: processes "
                               "are named without their services"})
        processes, attribution = attribute(tally.rows, tally.names, services, time_wait)
    v4 = pools.get(IpVersion.IPV4)
    shorter = {"time_wait_delay": SHORTER_TIME_WAIT} if time_wait > SHORTER_TIME_WAIT else {}
    extra = dict(shorter) if events["4227"] else {}
    extra.update(range_recommendations)
    snap = Snapshot(
        scope=HOST,
        platform=WINDOWS,
        pools=tuple(pools.values()),
        settings={"port_range": "%d %d" % v4.port_range if v4 else None, "time_wait_delay": tw_value,
                  "max_user_port": reg_value(state, RegName.MAX_USER_PORT)},
        min_port=NETSH_MIN_START,
        listening=tally.listening,
        states=tally.states,
        tuples=tally.tuples,
        format_address=lambda family, key: key,
        time_wait_seconds=time_wait,
        counters=None,
        source=tally.source,
        unreadable=unreadable,
        notes=notes,
        extra_findings=event_findings + range_findings,
        processes=processes,
        attribution=attribution,
        extra_recommendations=extra,
        extra_result={
            "dynamic_port_range": ranges_result(state),
            "excluded_port_ranges": excluded_result(state),
            "dynamic_range_analysis": ranges,
            "events": events,
            "build": state.build,
        },
    )
    return analyse(snap, top=options.top)
