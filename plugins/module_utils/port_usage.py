# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ephemeral-port usage, OS-neutral: capacity maths, the top destinations, verdict, findings, recommendations.

The OS side (socket_table.py on Linux) reads the host into a ``Snapshot``;
``analyse()`` turns it into the port_usage_info result.  Nothing here reads
the host.

The limit on outgoing connections applies per (local address, remote address,
remote port) tuple: connect() may give the same local port to connections
towards different destinations.  So a destination's utilisation is the ports
held on its busiest tuple divided by the usable ephemeral ports, never a
count set against 65535.
"""

from __future__ import annotations

import heapq
import math

from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import (
    count_ports,
    format_port_list,
    intersect,
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


class Snapshot:
    """What the OS side read: settings, the tallied socket table, counters.

    ``tuples``: {(family 4|6, local address key, remote address key, remote port): [in use, in TIME_WAIT]},
    the keys opaque to this module and turned into text by ``format_address(family, key)`` only for the
    destinations reported.  ``is_loopback(family, key)`` tells whether reuse-for-loopback applies.
    """

    def __init__(self, **fields):
        self.settings = {}
        self.port_range = None
        self.reserved = ()
        self.min_port = 1024
        self.listening = set()
        self.states = None
        self.tuples = {}
        self.format_address = lambda family, key: str(key)
        self.is_loopback = lambda family, key: False
        self.reuse_remote = False
        self.reuse_loopback = False
        self.reuse_delay = 1.0
        self.time_wait_seconds = 60
        self.counters = {}
        self.counters_after = None
        self.sample_seconds = None
        self.source = None
        self.unreadable = []
        self.notes = []
        self.extra_findings = []
        self.extra_recommendations = {}
        for name, value in fields.items():
            if not hasattr(self, name):
                raise TypeError("unknown Snapshot field %r" % name)
            setattr(self, name, value)


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
    """{(family, remote, port): [in use, in TIME_WAIT, tuples, busiest local, busiest in use, busiest TIME_WAIT,
    busiest blocking, reuse]} where blocking is what connect() cannot take (TIME_WAIT is free when reuse applies)."""
    groups = {}
    for (family, local, remote, port), (in_use, tw) in tuples.items():
        reuse = reuse_remote or (reuse_loopback and (is_loopback(family, remote) or is_loopback(family, local)))
        blocking = in_use - tw if reuse else in_use
        key = (family, remote, port)
        group = groups.get(key)
        if group is None:
            groups[key] = [in_use, tw, 1, local, in_use, tw, blocking, reuse]
        else:
            group[0] += in_use
            group[1] += tw
            group[2] += 1
            if (blocking, in_use) > (group[6], group[4]):
                group[3:8] = [local, in_use, tw, blocking, reuse]
    return groups


def top_destinations(groups, top, usable, format_address):
    """The ``top`` destinations, ranked by the ports blocked on their busiest tuple, then by ports held."""
    ranked = heapq.nlargest(top, groups.items(), key=lambda item: (item[1][6], item[1][0], item[0][2]))
    out = []
    for (family, remote, port), group in ranked:
        address = format_address(family, remote)
        utilisation = (float(group[6]) / usable) if usable else None
        out.append({
            "endpoint": endpoint(family, address, port),
            "address": address,
            "port": port,
            "family": "ipv%d" % family,
            "in_use": group[0],
            "time_wait": group[1],
            "local_addresses": group[2],
            "busiest_local_address": format_address(family, group[3]),
            "busiest_in_use": group[4],
            "busiest_time_wait": group[5],
            "reuse": group[7],
            "blocking": group[6],
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


def analyse(snap, top=10, warning=WARNING_PERCENT, critical=CRITICAL_PERCENT):
    """The port_usage_info result for ``snap``."""
    findings = []  # (severity, sentence)
    notes = list(snap.notes)
    recommend = {}
    eph = ephemeral_summary(snap.port_range, snap.reserved)
    usable = eph["usable"]
    settings = snap.settings

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
        beyond = sum(1 for group in groups.values() if group[6] * 100 >= warning * usable) - len(hot)
        if beyond > 0 and shown:
            findings.append(("warning", "%s more destinations beyond the top %d hold at least %d%% of the usable ports"
                             % (number(beyond), shown, warning)))
    ports_held = sum(group[0] for group in groups.values())

    if hot or usable == 0:
        wider = recommended_range(snap.port_range, usable, snap.min_port)
        if wider is not None:
            recommend["port_range"] = "%d %d" % (wider[0], wider[1])
            if any(wider[0] <= port <= wider[1] for port in snap.listening):
                recommend["reserve_listening_ports"] = True
        if any(not dest["reuse"] for dest in hot) and settings.get("tw_reuse") != 1:
            recommend["tw_reuse"] = 1
            if not settings.get("timestamps"):
                recommend["timestamps"] = 1

    # settings-level findings from the OS side -----------------------------------
    for severity, sentence in snap.extra_findings:
        findings.append((severity, sentence))
    recommend.update(snap.extra_recommendations)

    max_tw = settings.get("max_tw_buckets")
    if max_tw and tw_total * 100 >= TW_BUCKETS_PERCENT * max_tw:
        findings.append(("warning", "%s sockets in TIME_WAIT, %s of tcp_max_tw_buckets (%s): beyond it connections close "
                                    "without TIME_WAIT" % (number(tw_total), percent(float(tw_total) / max_tw), number(max_tw))))

    # counters ------------------------------------------------------------------
    counters = {"values": dict(snap.counters), "sample": None}
    measured = None
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
                    recommend[option] = max(4096, 2 * settings[option])
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
    return {
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
