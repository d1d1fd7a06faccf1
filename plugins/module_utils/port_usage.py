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
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import (
    clip,
    count_ports,
    format_port_list,
    intersect,
    usable_ports,
)
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


def number(value):
    """1000 -> "1,000"."""
    return "{:,}".format(value)


def rate(value):
    """250.0 -> "250", 16.666 -> "16.7", 1500 -> "1,500"."""
    text = "{:,.1f}".format(value)
    return text[:-2] if text.endswith(".0") else text


def percent(fraction):
    """0.7 -> "70%", 0.12345 -> "12.3%"; rounded down so that it never shows a threshold not reached."""
    tenths = math.floor(fraction * 1000 + 1e-9) / 10.0
    return ("%d%%" % tenths) if tenths == int(tenths) else ("%.1f%%" % tenths)


def endpoint(family, address, port):
    return ("[%s]:%d" % (address, port)) if family == 6 else ("%s:%d" % (address, port))


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

    findings.sort(key=lambda item: -SEVERITY[item[0]])
    verdict = max([item[0] for item in findings], key=lambda s: SEVERITY[s]) if findings else "ok"

    # recommendations, in the platform's options ------------------------------------
    if (pools_short if host_scope else hot) or usable == 0 or verdict == "critical":  # ports run short
        wider = recommended_range(port_range, usable, snap.min_port)
        if wider is not None:
            recommend["port_range"] = "%d %d" % (wider[0], wider[1])
            if snap.reserve_option and any(wider[0] <= port <= wider[1] for port in snap.listening):
                recommend[snap.reserve_option] = True
        if host_scope or any(not dest["reuse"] for dest in hot):
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
    if host_scope:
        pool6 = next((pool for pool in snap.pools if pool.family == 6), None)
        if port_range is not None and pool6 is not None:
            low, high = pool6.port_range
            result["ephemeral_ipv6"] = {"range": [low, high], "size": high - low + 1,
                                        "usable": usable_ports(pool6.port_range, pool6.reserved)}
        result["ports_held_by_family"] = held_by_family
    result.update(snap.extra_result)
    return result
