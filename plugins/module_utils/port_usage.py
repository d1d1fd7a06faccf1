# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ephemeral-port usage, OS-neutral: capacity maths, the top destinations, verdict, findings, recommendations.

The OS side (linux_port_usage.py on Linux, the win_port_usage_info action on
Windows) reads the host into a ``Snapshot``; ``analyse()`` turns it into the
module's result.  Nothing here reads the host.

The limit on outgoing connections applies per (local address, remote address,
remote port) tuple on Linux: connect() may give the same local port to
connections towards different destinations.  So a destination's utilisation
is the ports held on its busiest tuple divided by the usable ephemeral ports,
never a count set against 65535.  Windows hands every connection a port from
one host-wide pool per IP version: there the pools' utilisation decides too
(``Snapshot.scope``).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import (
    clip,
    count_ports,
    format_port_list,
    intersect,
    usable_ports,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import endpoint, number, percent, rate  # noqa: F401 (re-exported)
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError, strict_int

WARNING_PERCENT = 70
CRITICAL_PERCENT = 90
MAX_TOP = 1000
MAX_SAMPLE_SECONDS = 60
TW_BUCKETS_PERCENT = 90
SEVERITY = {"ok": 0, "warning": 1, "critical": 2}
# Ranges recommended when the current one is too small, widest last; the low end is raised to the
# host's lowest unprivileged port (and made even, so that LOW and HIGH differ in parity).
RANGE_CANDIDATES = ((32768, 65535), (16384, 65535), (1024, 65535))
RISING = ("ListenOverflows", "ListenDrops", "TCPTimeWaitOverflow", "AttemptFails")


def validate_audit_options(top, sample_seconds, warning_percent, critical_percent, names=None):
    """The ranges port_usage_info's options must be in; raises ValidationError naming the option.

    ``names`` maps option names to the names the caller's user wrote (role variables).
    """
    names = dict({o: o for o in ("top", "sample_seconds", "warning_percent", "critical_percent")}, **(names or {}))
    top = strict_int(top, names["top"], 1, MAX_TOP, "an integer number of destinations")
    if isinstance(sample_seconds, bool) or not isinstance(sample_seconds, (int, float)) \
            or not 0 <= sample_seconds <= MAX_SAMPLE_SECONDS:
        raise ValidationError(names["sample_seconds"], sample_seconds,
                              "a number of seconds from 0 to %d" % MAX_SAMPLE_SECONDS)
    warning_percent = strict_int(warning_percent, names["warning_percent"], 1, 100, "an integer percentage")
    critical_percent = strict_int(critical_percent, names["critical_percent"], 1, 100, "an integer percentage")
    if warning_percent > critical_percent:
        raise ValidationError(names["warning_percent"], warning_percent, "at most %s (%d)"
                              % (names["critical_percent"], critical_percent))
    return top, float(sample_seconds), warning_percent, critical_percent


TUPLE = "tuple"
HOST = "host"
# A host-wide pool's findings (Windows keeps one pool of dynamic ports per IP version).
POOL_EMPTY = "no usable %s ports: %d-%d is entirely excluded"
POOL_HELD = ("the host holds %s of %s usable %s TCP ports (%s); on Windows connect() takes them from one "
             "host-wide pool")


def _text_address(family, key):
    return str(key)


def _never_loopback(family, key):
    return False


class Pool(NamedTuple):
    """A host-wide pool of local ports: every connect() of its address family takes its port from here.

    ``name`` is how findings name it ("ipv4 dynamic"); ``reserved`` are the
    ports of the range that are never handed out (any intervals: those inside
    the range count).
    """

    name: str
    family: int
    port_range: Tuple[int, int]
    reserved: Tuple[Tuple[int, int], ...] = ()


@dataclass(frozen=True)
class Snapshot:
    """What the OS side read: settings, the tallied socket table, counters; and how to judge it.

    ``tuples``: {(family 4|6, local address key, remote address key, remote port): [in use, in TIME_WAIT]},
    the keys opaque to this module and turned into text by ``format_address(family, key)`` only for the
    destinations reported.  ``is_loopback(family, key)`` tells whether reuse-for-loopback applies.

    ``scope``: TUPLE (Linux) measures each tuple against ``port_range`` minus
    ``reserved``.  HOST (Windows) also measures ``pools``, the host-wide pools
    connect() takes every port from (one per address family): each pool's
    utilisation is a finding, and the IPv4 pool replaces ``port_range`` and
    ``reserved``; the result gains ``ports_held_by_family`` and ``ephemeral_ipv6``.

    When ports run short the recommendations are a wider ``port_range`` (from
    ``min_port``), ``reserve_option`` when ports listen inside it (None: no
    such option), and ``hold_remedy``, the options that shorten how long a
    closed port is held (None: Linux's tcp_tw_reuse 1; in TUPLE scope only
    towards a destination without TIME_WAIT reuse); then
    ``extra_recommendations``.  ``counters`` None: the platform has none.
    ``extra_result``: platform-only fields, added to the result as they are.

    ``processes`` (None: not attributed; the result then has none of the
    process keys) is what the OS side attributed to processes, one dict per
    process: "pid", "name", "cmdline", "user", "uid", "unit", "cgroup",
    "container" (each may be None), "bound_inactive" (ports bound and not
    connected now), "bound_inactive_seen" (such sockets seen during the
    sample), and "destinations": {(family, remote address key, remote port):
    {"in_use", "established", "time_wait", "time_wait_inferred",
    "new_connections", "new_connections_inferred"}} (new_connections None
    without a sample).  ``attribution``: "sampled_seconds" (what
    new_connections were counted over, None without a sample),
    "unattributed" {(family, remote, port): {"in_use", "time_wait",
    "new_connections"}}, and any other facts, reported as they are.  See
    process_analysis().
    """

    settings: Dict[str, Any] = field(default_factory=dict)
    port_range: Optional[Tuple[int, int]] = None
    reserved: Tuple[Tuple[int, int], ...] = ()
    min_port: int = 1024
    listening: Any = field(default_factory=set)
    states: Optional[Dict[str, Dict[str, int]]] = None
    tuples: Dict[tuple, list] = field(default_factory=dict)
    format_address: Callable[[int, Any], str] = _text_address
    is_loopback: Callable[[int, Any], bool] = _never_loopback
    reuse_remote: bool = False
    reuse_loopback: bool = False
    reuse_delay: float = 1.0
    time_wait_seconds: float = 60
    counters: Optional[Dict[str, int]] = field(default_factory=dict)
    counters_after: Optional[Dict[str, int]] = None
    sample_seconds: Optional[float] = None
    source: Optional[str] = None
    unreadable: List[dict] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    extra_findings: List[Tuple[str, str]] = field(default_factory=list)
    extra_recommendations: Dict[str, Any] = field(default_factory=dict)
    scope: str = TUPLE
    pools: Tuple[Pool, ...] = ()
    reserve_option: Optional[str] = "reserve_listening_ports"
    hold_remedy: Optional[Dict[str, Any]] = None
    extra_result: Dict[str, Any] = field(default_factory=dict)
    processes: Optional[List[Dict[str, Any]]] = None
    attribution: Optional[Dict[str, Any]] = None


class Destination:
    """The sockets towards one (family, remote address, remote port), and its busiest tuple.

    ``blocking`` is what connect() cannot take on the busiest tuple (TIME_WAIT
    is free where ``reuse`` applies); the busiest tuple is the one with the most
    blocking ports, then the most ports held.  A mutable record: one per
    destination, updated once per tuple.
    """

    __slots__ = ("in_use", "time_wait", "tuples", "busiest_local", "busiest_in_use", "busiest_time_wait", "blocking",
                 "reuse")

    def __init__(self, in_use, time_wait, tuples, busiest_local, busiest_in_use, busiest_time_wait, blocking, reuse):
        self.in_use = in_use
        self.time_wait = time_wait
        self.tuples = tuples
        self.busiest_local = busiest_local
        self.busiest_in_use = busiest_in_use
        self.busiest_time_wait = busiest_time_wait
        self.blocking = blocking
        self.reuse = reuse


def ephemeral_summary(port_range, reserved):
    """{"range", "size", "reserved", "reserved_in_range", "usable"}; all None without a range."""
    if port_range is None:
        return {"range": None, "size": None, "reserved": format_port_list(reserved), "reserved_in_range": None, "usable": None}
    size = port_range[1] - port_range[0] + 1
    inside = count_ports(intersect(reserved, port_range))
    return {
        "range": [port_range[0], port_range[1]],
        "size": size,
        "reserved": format_port_list(reserved),
        "reserved_in_range": inside,
        "usable": size - inside,
    }


def capacity(usable, time_wait_seconds, reuse_remote, reuse_loopback, reuse_delay):
    """The sustainable rate of new connections to one destination tuple, for remote and loopback destinations.

    A closed port stays unusable for TIME_WAIT (``time_wait_seconds``), or for
    the reuse delay where reuse applies; the rate is usable ports / that time.
    """
    out = {"usable_ports": usable, "time_wait_seconds": time_wait_seconds}
    for name, reuse in (("remote", reuse_remote), ("loopback", reuse_loopback)):
        hold = reuse_delay if reuse else float(time_wait_seconds)
        rate = None
        if usable is not None and hold > 0:
            rate = round(usable / hold, 2)
        out[name] = {"reuse": bool(reuse), "port_hold_seconds": hold, "max_new_connections_per_second": rate}
    return out


def group_destinations(tuples, reuse_remote, reuse_loopback, is_loopback):
    """{(family, remote, port): Destination}, each with its busiest tuple."""
    groups = {}
    for (family, local, remote, port), (in_use, tw) in tuples.items():
        reuse = reuse_remote or (reuse_loopback and (is_loopback(family, remote) or is_loopback(family, local)))
        blocking = in_use - tw if reuse else in_use
        key = (family, remote, port)
        group = groups.get(key)
        if group is None:
            groups[key] = Destination(in_use, tw, 1, local, in_use, tw, blocking, reuse)
        else:
            group.in_use += in_use
            group.time_wait += tw
            group.tuples += 1
            if (blocking, in_use) > (group.blocking, group.busiest_in_use):
                group.busiest_local = local
                group.busiest_in_use = in_use
                group.busiest_time_wait = tw
                group.blocking = blocking
                group.reuse = reuse
    return groups


def top_destinations(groups, top, usable, format_address):
    """The ``top`` destinations, ranked by the ports blocked on their busiest tuple, then by ports held."""
    ranked = heapq.nlargest(top, groups.items(), key=lambda item: (item[1].blocking, item[1].in_use, item[0][2]))
    out = []
    for (family, remote, port), group in ranked:
        address = format_address(family, remote)
        utilisation = (float(group.blocking) / usable) if usable else None
        out.append({
            "endpoint": endpoint(family, address, port),
            "address": address,
            "port": port,
            "family": "ipv%d" % family,
            "in_use": group.in_use,
            "time_wait": group.time_wait,
            "local_addresses": group.tuples,
            "busiest_local_address": format_address(family, group.busiest_local),
            "busiest_in_use": group.busiest_in_use,
            "busiest_time_wait": group.busiest_time_wait,
            "reuse": group.reuse,
            "blocking": group.blocking,
            "utilisation": round(utilisation, 4) if utilisation is not None else None,
        })
    return out


def level(utilisation, warning, critical):
    if utilisation is None:
        return "ok"
    if utilisation * 100 >= critical:
        return "critical"
    if utilisation * 100 >= warning:
        return "warning"
    return "ok"


def destination_sentence(dest, usable):
    text = "%s holds %s of %s usable ports (%s), %s in TIME_WAIT, from %s" % (
        dest["endpoint"], number(dest["busiest_in_use"]), number(usable), percent(dest["utilisation"]),
        number(dest["busiest_time_wait"]), dest["busiest_local_address"])
    if dest["reuse"]:
        text += "; TIME_WAIT reuse applies, %s ports blocked" % number(dest["blocking"])
    return text


def recommended_range(port_range, usable, min_port):
    """A wider ``[LOW, HIGH]`` than ``port_range`` (respecting ``min_port``), or None when none is wider."""
    floor = max(int(min_port or 1024), 1)
    for low, high in RANGE_CANDIDATES:
        low = max(low, floor)
        if low % 2:
            low += 1
        if low >= high:
            continue
        if port_range is not None and low >= port_range[0] and high <= port_range[1]:
            continue  # not wider than what the host has
        if usable is not None and high - low + 1 <= usable:
            continue
        return [low, high]
    return None


def counter_changes(before, after, seconds):
    """{name: {"before", "after", "delta", "per_second"}} for counters present in both samples."""
    out = {}
    for name, value in before.items():
        if name in after:
            delta = after[name] - value
            out[name] = {"before": value, "after": after[name], "delta": delta,
                         "per_second": round(delta / seconds, 2) if seconds else None}
    return out


def tw_reuse_remedy(settings):
    """Linux's way to shorten how long a closed port is held: tcp_tw_reuse 1, with TCP timestamps on."""
    remedy = {}
    if settings.get("tw_reuse") != 1:
        remedy["tw_reuse"] = 1
        if not settings.get("timestamps"):
            remedy["timestamps"] = 1
    return remedy


def _ports_held_by_family(tuples):
    held = {"ipv4": 0, "ipv6": 0}
    for (family, _local, _remote, _port), (in_use, _tw) in tuples.items():
        held["ipv%d" % family] += in_use
    return held


def _pool_findings(pools, held, warning, critical):
    """(findings, any pool short) for the host-wide pools, given the ports held per family."""
    findings = []
    short = False
    for pool in pools:
        low, high = pool.port_range
        count = usable_ports(pool.port_range, pool.reserved)
        if count <= 0:
            findings.append(("critical", POOL_EMPTY % (pool.name, low, high)))
            short = True
            continue
        fraction = float(held["ipv%d" % pool.family]) / count
        severity = level(fraction, warning, critical)
        if severity != "ok":
            short = True
            findings.append((severity, POOL_HELD % (number(held["ipv%d" % pool.family]), number(count), pool.name,
                                                    percent(fraction))))
    return findings, short


# ---------------------------------------------------------------- processes: who burns the ports
POOLING_MIN_RATE = 5.0  # new connections per second to one destination, from one process
POOLING_MIN_RATIO = 10  # ports in TIME_WAIT per ESTABLISHED connection (at least 1)
POOLING_MIN_TIME_WAIT = 100  # without a measured rate: TIME_WAIT seen alive (not inferred) at least this
PROCESS_DESTINATIONS = 5  # destinations shown per process, processes shown per destination
POOLING_ADVICE = ("pool the connections or keep them alive (HTTP keep-alive, a connection pool) in that client: "
                  "each new connection holds a port for the TIME_WAIT time; tuning the host only buys time")
BIND_ADVICE = ("set IP_BIND_ADDRESS_NO_PORT on the socket before bind() (Linux 4.2+), or give connect() its port "
               "range with IP_LOCAL_PORT_RANGE (Linux 6.3+), or connect() without bind(): a socket bound to an "
               "ephemeral port holds it for every destination")


def who(proc):
    """'pid 1234 (curl, user alice, unit web.service)'."""
    parts = [proc.get("name") or "?"]
    for key, label in (("user", "user"), ("unit", "unit"), ("container", "container")):
        if proc.get(key):
            parts.append("%s %s" % (label, proc[key]))
    return "pid %d (%s)" % (proc["pid"], ", ".join(parts))


def _per_second(count, seconds):
    if count is None or not seconds:
        return None
    return round(count / float(seconds), 2)


_DESTINATION_COUNTS = ("in_use", "established", "time_wait", "time_wait_inferred", "new_connections",
                       "new_connections_inferred")


def process_analysis(snap, top, dest_level):
    """(processes, client_findings [(severity, dict)], unattributed, top_churner) from Snapshot.processes.

    ``dest_level((family, remote key, port), new connections per second or None)``: (severity, projection
    sentence or None) for a pooling finding: the destination's own level, raised to what the process's
    rate would hold in steady state (rate x seconds a port stays held, against the usable ports), so a
    client that will run out of ports is a finding before it has; a bind finding is "ok".
    """
    # pylint: disable=too-many-locals
    seconds = (snap.attribution or {}).get("sampled_seconds")
    procs = []
    findings = []
    for proc in snap.processes or ():
        dests = []
        totals = dict((key, 0) for key in ("in_use", "established", "time_wait", "time_wait_inferred"))
        new_total = None
        new_inferred = None
        for (family, remote, port), counts in proc.get("destinations", {}).items():
            for key in totals:
                totals[key] += counts.get(key) or 0
            new = counts.get("new_connections")
            if new is not None:
                new_total = (new_total or 0) + new
                new_inferred = (new_inferred or 0) + (counts.get("new_connections_inferred") or 0)
            address = snap.format_address(family, remote)
            entry = {"endpoint": endpoint(family, address, port), "address": address, "port": port,
                     "family": "ipv%d" % family}
            entry.update((key, counts.get(key)) for key in _DESTINATION_COUNTS)
            entry["new_connections_per_second"] = _per_second(new, seconds)
            dests.append(entry)
            finding = _pooling(proc, entry, seconds)
            if finding is not None:
                severity, projection = dest_level((family, remote, port), entry["new_connections_per_second"])
                if projection:
                    finding["sentence"] = finding["sentence"].replace(": " + POOLING_ADVICE,
                                                                      "; %s: %s" % (projection, POOLING_ADVICE))
                    finding["projection"] = projection
                findings.append((severity, finding))
        dests.sort(key=lambda d: (-(d["new_connections_per_second"] or 0), -(d["in_use"] or 0), d["endpoint"]))
        out = dict((key, proc.get(key)) for key in ("pid", "name", "cmdline", "user", "uid", "unit", "cgroup",
                                                    "container"))
        out.update(totals)
        out["ports_held"] = totals["in_use"]
        out["new_connections"] = new_total
        out["new_connections_inferred"] = new_inferred
        out["new_connections_per_second"] = _per_second(new_total, seconds)
        out["bound_inactive"] = proc.get("bound_inactive", 0)
        out["bound_inactive_seen"] = proc.get("bound_inactive_seen", 0)
        out["destinations"] = dests[:PROCESS_DESTINATIONS]
        out["destination_count"] = len(dests)
        procs.append(out)
        if out["bound_inactive"] or out["bound_inactive_seen"]:
            findings.append(("ok", _binding(out)))
    procs.sort(key=lambda p: (-(p["new_connections_per_second"] or 0), -p["ports_held"], -p["bound_inactive"],
                              p["pid"]))
    churner = None
    if procs and procs[0]["new_connections_per_second"]:
        first = procs[0]
        churner = {"pid": first["pid"], "name": first["name"], "user": first["user"], "unit": first["unit"],
                   "container": first["container"], "process": who(first),
                   "destination": first["destinations"][0]["endpoint"] if first["destinations"] else None,
                   "new_connections_per_second": first["new_connections_per_second"]}
    unattributed = []
    for (family, remote, port), counts in (snap.attribution or {}).get("unattributed", {}).items():
        address = snap.format_address(family, remote)
        unattributed.append(dict(counts, endpoint=endpoint(family, address, port)))
    unattributed.sort(key=lambda d: (-(d.get("time_wait") or 0), -(d.get("in_use") or 0), d["endpoint"]))
    findings.sort(key=lambda item: (-SEVERITY[item[0]], item[1]["kind"] != "pooling",
                                    -(item[1].get("new_connections_per_second") or 0)))
    return procs[:top], findings, unattributed[:top], churner


def _pooling(proc, dest, seconds):
    """The pooling finding for one process and destination, or None."""
    established = dest["established"] or 0
    time_wait = dest["time_wait"] or 0
    per_second = dest["new_connections_per_second"]
    if per_second is not None:
        if per_second < POOLING_MIN_RATE or time_wait < POOLING_MIN_RATIO * max(established, 1):
            return None
        how = "opens %s new connections per second to %s (%s in %.1f s)" % (
            rate(per_second), dest["endpoint"], number(dest["new_connections"]), seconds)
    else:
        seen_alive = time_wait - (dest["time_wait_inferred"] or 0)
        if seen_alive < POOLING_MIN_TIME_WAIT or time_wait < POOLING_MIN_RATIO * max(established, 1):
            return None
        how = "closed %s connections to %s that are now in TIME_WAIT" % (number(time_wait), dest["endpoint"])
    ratio = round(time_wait / float(max(established, 1)), 1)
    sentence = "%s %s and keeps %s open (%s ports in TIME_WAIT, %s per ESTABLISHED): %s" % (
        who(proc), how, number(established), number(time_wait), rate(ratio), POOLING_ADVICE)
    return {"kind": "pooling", "pid": proc["pid"], "name": proc.get("name"), "user": proc.get("user"),
            "unit": proc.get("unit"), "container": proc.get("container"), "process": who(proc),
            "destination": dest["endpoint"], "new_connections_per_second": per_second,
            "new_connections": dest["new_connections"], "established": established, "time_wait": time_wait,
            "time_wait_per_established": ratio, "advice": POOLING_ADVICE, "sentence": sentence}


def _binding(proc):
    """The bind-before-connect finding for one process."""
    now, seen = proc["bound_inactive"], proc["bound_inactive_seen"]
    sentence = "%s holds %s ephemeral ports bound but not connected (bind before connect%s): %s" % (
        who(proc), number(now), ", %s seen during the sample" % number(seen) if seen else "", BIND_ADVICE)
    return {"kind": "bind_before_connect", "pid": proc["pid"], "name": proc.get("name"), "user": proc.get("user"),
            "unit": proc.get("unit"), "container": proc.get("container"), "process": who(proc),
            "destination": None, "bound_inactive": now, "bound_inactive_seen": seen,
            "new_connections_per_second": proc.get("new_connections_per_second"),
            "advice": BIND_ADVICE, "sentence": sentence}


def cure(recommendations, client_findings):
    """{"where": "client" | "host" | "both" | "none", "summary"}: which of the two cures applies."""
    client = list(client_findings)
    host = bool(recommendations)
    if client and host:
        where = "both"
        summary = ("fix the client (%s) for a lasting cure; tune the host with the recommendations meanwhile"
                   % "; ".join(sorted(set(item["process"] for item in client))[:3]))
    elif client:
        where = "client"
        summary = ("fix the client (%s): the host's settings are not what runs short"
                   % "; ".join(sorted(set(item["process"] for item in client))[:3]))
    elif host:
        where = "host"
        summary = "tune the host with the recommendations: no client opens connections in a way that pooling would cure"
    else:
        where = "none"
        summary = "nothing to cure"
    return {"where": where, "summary": summary}


def analyse(snap, top=10, warning=WARNING_PERCENT, critical=CRITICAL_PERCENT):
    """The port_usage_info (or win_port_usage_info) result for ``snap``."""
    # pylint: disable=too-many-locals,too-many-branches,too-many-statements
    findings = []  # (severity, sentence)
    notes = list(snap.notes)
    recommend = {}
    settings = snap.settings
    host_scope = snap.scope == HOST
    port_range, reserved = snap.port_range, snap.reserved
    if host_scope:  # destinations and ``ephemeral`` are measured against the IPv4 pool
        pool4 = next((pool for pool in snap.pools if pool.family == 4), None)
        port_range = pool4.port_range if pool4 is not None else None
        reserved = clip(pool4.reserved, port_range) if pool4 is not None else ()
    eph = ephemeral_summary(port_range, reserved)
    usable = eph["usable"]

    # sockets --------------------------------------------------------------
    sockets = None
    tw_total = 0
    if snap.states is not None:
        merged = {}
        for family in ("ipv4", "ipv6"):
            for state, count in snap.states.get(family, {}).items():
                merged[state] = merged.get(state, 0) + count
        tw_total = merged.get("TIME_WAIT", 0)
        sockets = {"total": sum(merged.values()), "by_state": merged,
                   "ipv4": dict(snap.states.get("ipv4", {})), "ipv6": dict(snap.states.get("ipv6", {}))}
    else:
        findings.append(("warning", "the socket table could not be read: the usage of ephemeral ports is unknown"))

    # destinations ---------------------------------------------------------
    groups = group_destinations(snap.tuples, snap.reuse_remote, snap.reuse_loopback, snap.is_loopback)
    destinations = top_destinations(groups, max(int(top), 0), usable, snap.format_address)
    hot = []
    if usable == 0:
        findings.append(("critical", "no usable ephemeral ports: the range %d-%d is entirely reserved" % tuple(eph["range"])))
    elif usable:
        for dest in destinations:
            severity = level(dest["utilisation"], warning, critical)
            if severity != "ok":
                hot.append(dest)
                findings.append((severity, destination_sentence(dest, usable)))
        shown = len(destinations)
        beyond = sum(1 for group in groups.values() if group.blocking * 100 >= warning * usable) - len(hot)
        if beyond > 0 and shown:
            findings.append(("warning", "%s more destinations beyond the top %d hold at least %d%% of the usable ports"
                             % (number(beyond), shown, warning)))
    ports_held = sum(group.in_use for group in groups.values())

    # findings from the OS side, then the host-wide pools --------------------------
    findings.extend(snap.extra_findings)
    held_by_family = None
    pools_short = False
    if host_scope:
        held_by_family = _ports_held_by_family(snap.tuples)
        pool_findings, pools_short = _pool_findings(snap.pools, held_by_family, warning, critical)
        findings.extend(pool_findings)

    max_tw = settings.get("max_tw_buckets")
    if max_tw and tw_total * 100 >= TW_BUCKETS_PERCENT * max_tw:
        findings.append(("warning", "%s sockets in TIME_WAIT, %s of tcp_max_tw_buckets (%s): beyond it connections close "
                                    "without TIME_WAIT" % (number(tw_total), percent(float(tw_total) / max_tw), number(max_tw))))

    # counters ------------------------------------------------------------------
    counters = None
    measured = None
    backlog = {}
    if snap.counters is not None:
        counters = {"values": dict(snap.counters), "sample": None}
        if snap.counters_after is not None:
            seconds = snap.sample_seconds or 0
            changes = counter_changes(snap.counters, snap.counters_after, seconds)
            counters["sample"] = {"seconds": round(seconds, 3), "changes": changes}
            measured = {"seconds": round(seconds, 3)}
            for name, key in (("ActiveOpens", "active_opens_per_second"), ("PassiveOpens", "passive_opens_per_second"),
                              ("AttemptFails", "attempt_fails_per_second")):
                measured[key] = changes[name]["per_second"] if name in changes else None
            for name in RISING:
                change = changes.get(name)
                if change and change["delta"] > 0:
                    findings.append(("warning", "%s is rising: +%s in %.1f s" % (name, number(change["delta"]), seconds)))
            if any(changes.get(name, {}).get("delta", 0) > 0 for name in ("ListenOverflows", "ListenDrops")):
                for option in ("somaxconn", "max_syn_backlog"):
                    if settings.get(option):
                        backlog[option] = max(4096, 2 * settings[option])
                notes.append("a larger somaxconn only helps if the application asks for a larger listen() backlog")
            if changes.get("TCPTimeWaitOverflow", {}).get("delta", 0) > 0:
                notes.append("TCPTimeWaitOverflow rises when tcp_max_tw_buckets is reached (not a linux_tcp option)")
        else:
            for name in RISING[:3]:
                if snap.counters.get(name):
                    notes.append("%s is %s since the network namespace started; sample_seconds shows whether it is rising"
                                 % (name, number(snap.counters[name])))

    cap = capacity(usable, snap.time_wait_seconds, snap.reuse_remote, snap.reuse_loopback, snap.reuse_delay)
    cap["measured"] = measured
    if measured and measured.get("active_opens_per_second") is not None and cap["remote"]["max_new_connections_per_second"]:
        notes.append("%s new outgoing connections per second over %.1f s; one remote destination sustains at most %s per second"
                     % (rate(measured["active_opens_per_second"]), measured["seconds"],
                        rate(cap["remote"]["max_new_connections_per_second"])))

    attributed = snap.processes is not None
    projected_without_reuse = []  # destinations a client's rate will fill, without TIME_WAIT reuse
    if attributed:
        def dest_level(key, per_second):
            group = groups.get(key)
            now = level(float(group.blocking) / usable, warning, critical) if group is not None and usable else "ok"
            if not per_second or not usable:
                return now, None
            reuse = group.reuse if group is not None else snap.reuse_remote
            hold = snap.reuse_delay if reuse else float(snap.time_wait_seconds)
            needed = per_second * hold
            then = level(needed / usable, warning, critical)
            if SEVERITY[then] <= SEVERITY[now] or then == "ok":
                return now, None
            if not reuse:
                projected_without_reuse.append(key)
            return then, ("at that rate it holds %s ports (%s s each), %s of the %s usable: %s" % (
                number(int(round(needed))), rate(hold), percent(needed / usable), number(usable),
                "connect() will fail with EADDRNOTAVAIL" if needed >= usable else "the verdict's threshold"))

        processes, client, unattributed, churner = process_analysis(snap, max(int(top), 0), dest_level)
        findings.extend((severity, item["sentence"]) for severity, item in client)
        if (snap.attribution or {}).get("sampled_seconds") is None:
            notes.append("sample_seconds above 0 follows each new connection to its process: it measures each "
                         "process's rate of new connections, attributes TIME_WAIT and finds clients to pool")

    findings.sort(key=lambda item: -SEVERITY[item[0]])
    verdict = max([item[0] for item in findings], key=lambda s: SEVERITY[s]) if findings else "ok"

    # recommendations, in the platform's options ------------------------------------
    if (pools_short if host_scope else hot) or usable == 0 or verdict == "critical":  # ports run short
        wider = recommended_range(port_range, usable, snap.min_port)
        if wider is not None:
            recommend["port_range"] = "%d %d" % (wider[0], wider[1])
            if snap.reserve_option and any(wider[0] <= port <= wider[1] for port in snap.listening):
                recommend[snap.reserve_option] = True
        if host_scope or any(not dest["reuse"] for dest in hot) or projected_without_reuse:
            recommend.update(tw_reuse_remedy(settings) if snap.hold_remedy is None else snap.hold_remedy)
    recommend.update(snap.extra_recommendations)
    recommend.update(backlog)

    result = {
        "settings": dict(settings),
        "ephemeral": eph,
        "sockets": sockets,
        "ports_held": ports_held,
        "destinations": destinations,
        "counters": counters,
        "capacity": cap,
        "verdict": verdict,
        "findings": [item[1] for item in findings],
        "recommendations": recommend,
        "thresholds": {"warning_percent": warning, "critical_percent": critical},
        "notes": notes,
        "source": snap.source,
        "unreadable": list(snap.unreadable),
    }
    if attributed:
        client_findings = [item for dummy, item in client]
        result["processes"] = processes
        result["client_findings"] = client_findings
        result["top_churner"] = churner
        result["attribution"] = dict((key, value) for key, value in (snap.attribution or {}).items()
                                     if key != "unattributed")
        result["attribution"]["unattributed"] = unattributed
        result["cure"] = cure(recommend, client_findings)
        by_dest = {}
        for proc in processes:
            for dest in proc["destinations"]:
                by_dest.setdefault(dest["endpoint"], []).append(
                    {"pid": proc["pid"], "name": proc["name"], "in_use": dest["in_use"], "time_wait": dest["time_wait"],
                     "new_connections_per_second": dest["new_connections_per_second"]})
        for dest in destinations:
            owners = by_dest.get(dest["endpoint"], [])
            owners.sort(key=lambda o: (-(o["new_connections_per_second"] or 0), -(o["in_use"] or 0), o["pid"]))
            dest["processes"] = owners[:PROCESS_DESTINATIONS]
    if host_scope:
        pool6 = next((pool for pool in snap.pools if pool.family == 6), None)
        if port_range is not None and pool6 is not None:
            low, high = pool6.port_range
            result["ephemeral_ipv6"] = {"range": [low, high], "size": high - low + 1,
                                        "usable": usable_ports(pool6.port_range, pool6.reserved)}
        result["ports_held_by_family"] = held_by_family
    result.update(snap.extra_result)
    return result
