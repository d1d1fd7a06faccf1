# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ephemeral-port usage, OS-neutral: the options' checks and ``analyse()``, a short composition of named steps.

The OS side (linux_port_usage.py on Linux, plugin_utils/windows_usage.py on
Windows) reads the host into a ``Snapshot`` (usage_model.py) and hands it,
with its ``Platform`` rules, to ``analyse()``, which turns it into the
module's result.  The rules are usage_rules.py, the findings
usage_findings.py, the wording usage_wording.py.  Nothing here reads the host.

The limit on outgoing connections applies per (local address, remote address,
remote port) tuple on Linux: connect() may give the same local port to
connections towards different destinations.  So a destination's utilisation
is the ports held on its busiest tuple divided by the usable ephemeral ports,
never a count set against 65535.  Windows hands every connection a port from
one host-wide pool per IP version: there the pools' utilisation decides too
(``Snapshot.scope``).
"""

from __future__ import annotations

# Some names are imported here only to be re-exported (noqa: F401): code and tests import them from port_usage.
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import clip, usable_ports
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_findings import (  # noqa: F401
    POOLING_ADVICE,
    PROCESS_DESTINATIONS,
    cure,
    destination_findings,
    group_destinations,
    pool_findings,
    ports_held_by_family,
    process_analysis,
    top_destinations,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import (  # noqa: F401
    HOST,
    TUPLE,
    Finding,
    Pool,
    Snapshot,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_rules import (  # noqa: F401
    CRITICAL_PERCENT,
    SEVERITY,
    WARNING_PERCENT,
    capacity,
    ephemeral_summary,
    hold_seconds,
    level,
    recommended_range,
    worst,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import number, percent, rate
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError, strict_int

__all__ = ["CRITICAL_PERCENT", "HOST", "MAX_SAMPLE_SECONDS", "MAX_TOP", "POOLING_ADVICE", "SEVERITY", "TUPLE",
           "WARNING_PERCENT", "Pool", "Snapshot", "analyse", "capacity", "ephemeral_summary", "level", "number",
           "percent", "recommended_range", "validate_audit_options"]

MAX_TOP = 1000
MAX_SAMPLE_SECONDS = 60
SAMPLE_NOTE = ("sample_seconds above 0 follows each new connection to its process: it measures each process's rate "
               "of new connections, attributes TIME_WAIT and finds clients to pool")


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


# ---------------------------------------------------------------- the steps of analyse()
def measured_range(snap):
    """(port range, reserved) the destinations are measured against: in HOST scope, the IPv4 pool's."""
    if snap.scope != HOST:
        return snap.port_range, snap.reserved
    pool4 = next((pool for pool in snap.pools if pool.family == 4), None)
    if pool4 is None:
        return None, ()
    return pool4.port_range, clip(pool4.reserved, pool4.port_range)


def socket_states(states):
    """(the result's ``sockets``, sockets in TIME_WAIT); (None, 0) when the table could not be read."""
    if states is None:
        return None, 0
    merged = {}
    for family in ("ipv4", "ipv6"):
        for state, count in states.get(family, {}).items():
            merged[state] = merged.get(state, 0) + count
    return ({"total": sum(merged.values()), "by_state": merged, "ipv4": dict(states.get("ipv4", {})),
             "ipv6": dict(states.get("ipv6", {}))}, merged.get("TIME_WAIT", 0))


def measured_capacity(snap, usable, measured, notes):
    """capacity() with the measured rates; a note when the host's own rate is known."""
    cap = capacity(usable, snap.time_wait_seconds, snap.reuse_remote, snap.reuse_loopback, snap.reuse_delay)
    cap["measured"] = measured
    if measured and measured.get("active_opens_per_second") is not None \
            and cap["remote"]["max_new_connections_per_second"]:
        notes.append("%s new outgoing connections per second over %.1f s; one remote destination sustains at most "
                     "%s per second" % (rate(measured["active_opens_per_second"]), measured["seconds"],
                                        rate(cap["remote"]["max_new_connections_per_second"])))
    return cap


class Projection:
    """``dest_level`` of usage_findings.process_analysis(): a destination's level now, raised to what a client's
    rate of new connections would hold in steady state.  ``without_reuse``: the destinations such a rate will
    fill and that TIME_WAIT reuse does not cover."""

    def __init__(self, snap, groups, usable, warning, critical):
        self.snap, self.groups, self.usable = snap, groups, usable
        self.warning, self.critical = warning, critical
        self.without_reuse = []

    def __call__(self, key, per_second):
        group, usable = self.groups.get(key), self.usable
        now = level(float(group.blocking) / usable, self.warning, self.critical) \
            if group is not None and usable else "ok"
        if not per_second or not usable:
            return now, None
        reuse = group.reuse if group is not None else self.snap.reuse_remote
        hold = hold_seconds(reuse, self.snap.reuse_delay, self.snap.time_wait_seconds)
        needed = per_second * hold
        then = level(needed / usable, self.warning, self.critical)
        if SEVERITY[then] <= SEVERITY[now] or then == "ok":
            return now, None
        if not reuse:
            self.without_reuse.append(key)
        return then, ("at that rate it holds %s ports (%s s each), %s of the %s usable: %s" % (
            number(int(round(needed))), rate(hold), percent(needed / usable), number(usable),
            "connect() will fail with EADDRNOTAVAIL" if needed >= usable else "the verdict's threshold"))


def recommendations(snap, port_range, usable, short, hot, without_reuse):
    """The platform's options that cure what runs short, then the OS side's own (``extra_recommendations``)."""
    recommend = {}
    if short:
        wider = recommended_range(port_range, usable, snap.min_port)
        if wider is not None:
            recommend["port_range"] = "%d %d" % (wider[0], wider[1])
            option = snap.platform.reserve_option
            if option and any(wider[0] <= port <= wider[1] for port in snap.listening):
                recommend[option] = True
        if snap.scope == HOST or any(not dest["reuse"] for dest in hot) or without_reuse:
            recommend.update(snap.platform.hold_remedy(snap))
    recommend.update(snap.extra_recommendations)
    return recommend


def attribution_result(snap, processes, client, unattributed, churner, recommend):
    """The process keys of the result (only when the OS side attributed the ports)."""
    client_findings = [item.report for item in client]
    info = dict((key, value) for key, value in (snap.attribution or {}).items() if key != "unattributed")
    info["unattributed"] = unattributed
    return {"processes": processes, "client_findings": client_findings, "top_churner": churner, "attribution": info,
            "cure": cure(recommend, client_findings)}


def host_scope_result(snap, port_range, held_by_family):
    """The HOST scope keys: the IPv6 pool and the ports held per family."""
    out = {}
    pool6 = next((pool for pool in snap.pools if pool.family == 6), None)
    if port_range is not None and pool6 is not None:
        low, high = pool6.port_range
        out["ephemeral_ipv6"] = {"range": [low, high], "size": high - low + 1,
                                 "usable": usable_ports(pool6.port_range, pool6.reserved)}
    out["ports_held_by_family"] = held_by_family
    return out


# ---------------------------------------------------------------- analyse()
def analyse(snap, top=10, warning=WARNING_PERCENT, critical=CRITICAL_PERCENT):
    """The port_usage_info (or win_port_usage_info) result for ``snap``."""
    top = max(int(top), 0)
    host_scope = snap.scope == HOST
    port_range, reserved = measured_range(snap)
    eph = ephemeral_summary(port_range, reserved)
    usable = eph["usable"]
    sockets, time_wait = socket_states(snap.states)
    findings = [] if sockets is not None else [
        Finding("warning", "the socket table could not be read: the usage of ephemeral ports is unknown")]
    groups = group_destinations(snap.tuples, snap.reuse_remote, snap.reuse_loopback, snap.is_loopback)
    keyed = top_destinations(groups, top, usable, snap.format_address)
    destinations = [dest for dummy, dest in keyed]
    found, hot = destination_findings(eph, groups, destinations, warning, critical)
    findings += found + list(snap.extra_findings)
    held_by_family, pools_short = None, False
    if host_scope:
        held_by_family = ports_held_by_family(snap.tuples)
        found, pools_short = pool_findings(snap.pools, held_by_family, warning, critical, snap.platform.pool_held)
        findings += found
    findings += snap.platform.findings(snap, time_wait)
    counted = snap.platform.counters(snap)
    findings += counted.findings
    notes = list(snap.notes) + list(counted.notes)
    cap = measured_capacity(snap, usable, counted.measured, notes)
    attributed = snap.processes is not None
    projection = Projection(snap, groups, usable, warning, critical)
    if attributed:
        processes, client, unattributed, churner, owners = process_analysis(snap, top, projection)
        findings += [Finding(item.severity, item.report["sentence"]) for item in client]
        if (snap.attribution or {}).get("sampled_seconds") is None:
            notes.append(SAMPLE_NOTE)
    findings = [Finding(*item) for item in findings]  # the OS side's extra_findings may be plain pairs
    findings.sort(key=lambda item: -SEVERITY[item.severity])
    verdict = worst(item.severity for item in findings)
    short = (pools_short if host_scope else hot) or usable == 0 or verdict == "critical"
    recommend = recommendations(snap, port_range, usable, short, hot, projection.without_reuse)
    recommend.update(counted.recommendations or {})
    result = {
        "settings": dict(snap.settings), "ephemeral": eph, "sockets": sockets,
        "ports_held": sum(group.in_use for group in groups.values()), "destinations": destinations,
        "counters": counted.counters, "capacity": cap, "verdict": verdict,
        "findings": [item.sentence for item in findings],
        "recommendations": recommend, "thresholds": {"warning_percent": warning, "critical_percent": critical},
        "notes": notes, "source": snap.source, "unreadable": list(snap.unreadable),
    }
    if attributed:
        result.update(attribution_result(snap, processes, client, unattributed, churner, recommend))
        for key, dest in keyed:
            dest["processes"] = sorted(owners.get(key, []), key=lambda o: (
                -(o["new_connections_per_second"] or 0), -(o["in_use"] or 0), o["pid"]))[:PROCESS_DESTINATIONS]
    if host_scope:
        result.update(host_scope_result(snap, port_range, held_by_family))
    result.update(snap.extra_result)
    return result
