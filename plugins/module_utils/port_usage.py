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
    destination_sentence,
    failing_findings,
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
    projected,
    recommended_range,
    worst,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import endpoint, number, percent, rate
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


# Opens measured over a sample, of which at most this share left a TIME_WAIT here: their peers close first.
PEER_CLOSES_SHARE = 0.1


def time_wait_rates(snap):
    """({destination key: rate}, total rate): new connections per second that entered TIME_WAIT on this host over
    the last ``snap.time_wait_recent_seconds`` (the TIME_WAIT timers of one dump), a destination's on its busiest
    tuple for it (the limit is per tuple); (None, None) where the timers were not read."""
    seconds = snap.time_wait_recent_seconds
    if snap.time_wait_recent is None or not seconds:
        return None, None
    busiest, total = {}, 0
    for (family, dummy_local, remote, port), count in snap.time_wait_recent.items():
        total += count
        key = (family, remote, port)
        busiest[key] = max(busiest.get(key, 0), count)
    return (dict((key, round(count / float(seconds), 2)) for key, count in busiest.items() if count),
            round(total / float(seconds), 2))


def measured_capacity(snap, usable, measured, notes, entered=None):
    """capacity() with the measured rates, and a note on them.

    The sustainable rate holds for connections that leave a TIME_WAIT here
    (this end closes first): ``entered``, their rate over the last
    ``snap.time_wait_recent_seconds``, is what it is set against.  Opens
    measured over a sample of which almost none left a TIME_WAIT are
    connections whose peer closes first: their ports are free at once, and no
    limit is claimed for them.
    """
    cap = capacity(usable, snap.time_wait_seconds, snap.reuse_remote, snap.reuse_loopback, snap.reuse_delay)
    cap["measured"] = measured
    cap["time_wait_entered_per_second"] = entered
    cap["time_wait_recent_seconds"] = snap.time_wait_recent_seconds if entered is not None else None
    most = cap["remote"]["max_new_connections_per_second"]
    opens = (measured or {}).get("active_opens_per_second")
    if opens is not None and entered is not None and opens > 0 and entered <= PEER_CLOSES_SHARE * opens:
        notes.append("%s new outgoing connections per second over %.1f s, of which %s per second left a TIME_WAIT "
                     "here: their peers close first, so their ports are free again at once and the TIME_WAIT "
                     "limit does not apply to them" % (rate(opens), measured["seconds"], rate(entered)))
    elif entered:
        notes.append("%s%s connections per second left a TIME_WAIT here over the last %s s%s" % (
            "%s new outgoing connections per second over %.1f s; " % (rate(opens), measured["seconds"])
            if opens is not None else "", rate(entered), rate(snap.time_wait_recent_seconds),
            "; one remote destination sustains at most %s such connections per second" % rate(most)
            if most else ""))
    elif opens is not None and most:
        notes.append("%s new outgoing connections per second over %.1f s; one remote destination sustains at most "
                     "%s per second of those that leave a TIME_WAIT here (this end closes first)"
                     % (rate(opens), measured["seconds"], rate(most)))
    return cap


class Projection:
    """What a steady rate of connections that leave a TIME_WAIT here will hold: rate x the time a port stays held
    (usage_rules.projected(), the one rule), against the usable ports.

    ``rates``: {destination key: its own rate} (time_wait_rates()), from the
    TIME_WAIT timers, so it needs no sample and no process.  Called as
    ``dest_level`` by usage_findings.process_analysis(): (a destination's level,
    the worse of now and its own projection, raised to what a client's rate
    would hold; a sentence when that rate raises it beyond now).
    ``without_reuse``: the destinations such a rate will fill and that
    TIME_WAIT reuse does not cover.
    """

    def __init__(self, snap, groups, usable, warning, critical, rates=None):
        self.snap, self.groups, self.usable = snap, groups, usable
        self.warning, self.critical = warning, critical
        self.rates = rates or {}
        self.without_reuse = []

    def hold(self, key):
        """(TIME_WAIT reuse applies, seconds a closed port stays held) towards a destination."""
        group = self.groups.get(key)
        reuse = group.reuse if group is not None else self.snap.reuse_remote
        return reuse, hold_seconds(reuse, self.snap.reuse_delay, self.snap.time_wait_seconds)

    def now(self, key):
        group = self.groups.get(key)
        return level(float(group.blocking) / self.usable, self.warning, self.critical) \
            if group is not None and self.usable else "ok"

    def destination(self, key):
        """(severity, ports needed) of the destination's own rate."""
        return projected(self.rates.get(key), self.hold(key)[1], self.usable, self.warning, self.critical)

    def __call__(self, key, per_second):
        now = self.now(key)
        base = worst((now, self.destination(key)[0]))
        reuse, hold = self.hold(key)
        then, needed = projected(per_second, hold, self.usable, self.warning, self.critical)
        if SEVERITY[then] <= SEVERITY[now] or then == "ok":
            return base, None
        if not reuse:
            self.without_reuse.append(key)
        return worst((base, then)), ("at that rate it holds %s ports (%s s each), %s of the %s usable: %s" % (
            number(int(round(needed))), rate(hold), percent(needed / self.usable), number(self.usable),
            _failure(needed, self.usable)))


def _failure(needed, usable):
    return "connect() will fail with EADDRNOTAVAIL" if needed >= usable else "the verdict's threshold"


def projected_destinations(projection, keyed, found, format_address):
    """(findings, the shown destinations they concern, whether one not shown runs short): each destination whose
    own rate of connections that leave a TIME_WAIT projects beyond its level now.  Its finding replaces the one on
    its ports now (in ``found``, removed there): one finding per destination, the worse of now and projected.
    Every shown destination gains ``time_wait_entered_per_second`` and ``projected_utilisation``."""
    usable = projection.usable
    shown = dict(keyed)
    measured = projection.snap.time_wait_recent is not None and projection.snap.time_wait_recent_seconds
    for dest in shown.values():
        dest["time_wait_entered_per_second"] = 0.0 if measured else None
        dest["projected_utilisation"] = 0.0 if measured and usable else None
    out, hot, short = [], [], False
    for key, per_second in sorted(projection.rates.items(), key=lambda item: (-item[1], item[0][2])):
        then, needed = projection.destination(key)
        dest = shown.get(key)
        if dest is not None:
            dest["time_wait_entered_per_second"] = per_second
            dest["projected_utilisation"] = round(needed / usable, 4) if needed is not None else None
        if then == "ok" or SEVERITY[then] <= SEVERITY[projection.now(key)]:
            continue
        reuse, hold = projection.hold(key)
        family, remote, port = key
        text = endpoint(family, format_address(family, remote), port)
        sentence = ("at %s new connections per second that leave a TIME_WAIT here, %s will hold %s of %s usable "
                    "ports (%s) within %s s: %s" % (rate(per_second), text, number(int(round(needed))),
                                                    number(usable), percent(needed / usable), rate(hold),
                                                    _failure(needed, usable)))
        if dest is not None:
            now_sentence = destination_sentence(dest, usable)
            found[:] = [item for item in found if item.sentence != now_sentence]
            sentence += "; it holds %s (%s) now" % (number(dest["busiest_in_use"]), percent(dest["utilisation"]))
            hot.append(dest)
        else:
            short = True
        if not reuse:
            projection.without_reuse.append(key)
        out.append(Finding(then, sentence))
    return out, hot, short


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
    rates, entered = time_wait_rates(snap)
    projection = Projection(snap, groups, usable, warning, critical, rates)
    ahead, hot_ahead, short_ahead = projected_destinations(projection, keyed, found, snap.format_address)
    hot += [dest for dest in hot_ahead if dest not in hot]
    findings += ahead + found + list(snap.extra_findings)
    held_by_family, pools_short = None, False
    if host_scope:
        held_by_family = ports_held_by_family(snap.tuples)
        found, pools_short = pool_findings(snap.pools, held_by_family, warning, critical, snap.platform.pool_held)
        findings += found
    findings += snap.platform.findings(snap, time_wait)
    counted = snap.platform.counters(snap)
    findings += counted.findings
    notes = list(snap.notes) + list(counted.notes)
    cap = measured_capacity(snap, usable, counted.measured, notes, entered)
    attributed = snap.processes is not None
    if attributed:
        processes, client, unattributed, churner, owners = process_analysis(snap, top, projection)
        client = failing_findings(snap) + client
        findings += [Finding(item.severity, item.report["sentence"]) for item in client]
        if (snap.attribution or {}).get("sampled_seconds") is None:
            notes.append(SAMPLE_NOTE)
    findings = [Finding(*item) for item in findings]  # the OS side's extra_findings may be plain pairs
    findings.sort(key=lambda item: -SEVERITY[item.severity])
    verdict = worst(item.severity for item in findings)
    short = (pools_short if host_scope else hot) or short_ahead or usable == 0 or verdict == "critical"
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
