# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``nat`` section of port_usage_info on a host that source-NATs: the conntrack table, the egress keys
against their translated port ranges, findings, a verdict and recommendations (pure).

What counts against an egress key's range depends on the kernel (docs/nat.md): on Linux 6.18, where it was
measured, a new flow takes over a translated port held only by a TIME_WAIT (or CLOSE) entry, so the live
flows are the limit and the TIME_WAIT entries are reported apart; on any older kernel (not checked here)
both count.  The levels are usage_rules.level against the module's warning_percent and critical_percent.
"""

from __future__ import annotations

from ansible_collections.tcpstack.tuning.plugins.module_utils.nat_rules import (
    DEFAULT_CAPACITY,
    egress_capacity,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_rules import SEVERITY, level, per_second, worst
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import number, percent, rate

CHECKED_KERNEL = (6, 18)  # the TIME_WAIT take-over was measured on this kernel (docs/nat.md)
RATE_COUNTERS = ("insert_failed", "drop", "early_drop", "clash_resolve")
SOURCES_NAMED = 3  # sources named in a finding
POOLING_SHARE = 0.5  # a source holding at least this share of a hot egress is named for pooling
SAMPLE_NOTE = ("the per-second change of the conntrack counters needs sample_seconds above 0: "
               "nat.conntrack.counters holds their totals since the table was created")


def kernel_version(release):
    """(major, minor) of a kernel release such as "6.18.0-1-amd64", None when it does not start so."""
    head = (release or "").split("-", 1)[0].split(".")
    try:
        return int(head[0]), int(head[1])
    except (IndexError, ValueError):
        return None


def live_only(release):
    """Whether TIME_WAIT entries leave their translated ports to new flows on this kernel: as measured, on
    CHECKED_KERNEL and later; else assumed not (docs/nat.md)."""
    version = kernel_version(release)
    return version is not None and version >= CHECKED_KERNEL


def egress_endpoint(item):
    destination = item.destination
    where = ("[%s]" % destination) if ":" in destination else destination
    return "%s:%d/%s" % (where, item.port, item.protocol)


def flow_rates(item, capacity, in_use, seconds):
    """(new flows per second, the sustainable rate) of one linux_nat.Egress over a sample of ``seconds``, or
    (None, None) without one.  The sustainable rate is Little's law: the ``in_use`` ports held at the measured
    rate mean each flow holds its port in_use / rate seconds, so ``capacity`` ports sustain capacity / that."""
    if item.new is None or not seconds:
        return None, None
    flows = per_second(item.new, seconds)
    if not flows or not in_use or not capacity:
        return flows, None
    return flows, round(capacity * flows / float(in_use), 2)


def egress_entry(item, rules, live, warning, critical, seconds=None):
    """(the result's egress dict, note or None) of one linux_nat.Egress against the rules' capacity; with
    ``seconds`` (a sample) and the new flows counted, the rates."""
    capacity, port_range, origin, note = egress_capacity(rules, item.translated)
    if port_range is None and origin != "default":
        note = note or ("the %s rule for %s gives no port range: the kernel's 1024-65535 (64,512 ports) is "
                        "assumed" % (origin, item.translated))
    in_use = item.live if live else item.in_use
    utilisation = round(float(in_use) / capacity, 4) if capacity else None
    flows, sustainable = flow_rates(item, capacity, in_use, seconds)
    sources = []
    for source in item.sources:
        held = source.live if live else source.in_use
        sources.append({"address": source.address, "in_use": held, "time_wait": source.in_use - source.live,
                        "share": round(float(held) / in_use, 4) if in_use else 0.0,
                        "new_flows_per_second": per_second(source.new, seconds)
                        if flows is not None and source.new is not None else None})
    return {
        "translated": item.translated, "destination": item.destination, "port": item.port,
        "protocol": item.protocol, "endpoint": egress_endpoint(item), "in_use": in_use, "live": item.live,
        "time_wait": item.closing, "capacity": capacity, "port_range": port_range, "capacity_source": origin,
        "utilisation": utilisation, "verdict": level(utilisation, warning, critical),
        "new_flows_per_second": flows, "max_new_flows_per_second": sustainable, "sources": sources,
        "sources_total": item.sources_total,
    }, note


def source_text(source, share=True):
    """A source as a finding names it: its address, its share (with ``share``), and what is known of who is
    behind it (the container or pod sandbox of its local namespace, its processes)."""
    known = [percent(source["share"])] if share else []
    namespace = source.get("namespace")
    if namespace:
        if namespace.get("container"):
            known.append("container %s" % namespace["container"])
        elif namespace.get("unit"):
            known.append("unit %s" % namespace["unit"])
        else:
            known.append("network namespace of pid %s (%s)" % (namespace.get("pid"), namespace.get("name")))
    for proc in (source.get("processes") or ())[:1]:
        known.append("pid %s (%s)" % (proc["pid"], proc["name"]))
    return "%s (%s)" % (source["address"], ", ".join(known)) if known else source["address"]


def egress_sentence(entry, live):
    named = ", ".join(source_text(source) for source in entry["sources"][:SOURCES_NAMED])
    counted = "live flows" if live else "flows (live and TIME_WAIT)"
    text = "NAT egress %s -> %s holds %s of %s translated ports (%s) in %s" % (
        entry["translated"], entry["endpoint"], number(entry["in_use"]), number(entry["capacity"]),
        percent(entry["utilisation"] or 0), counted)
    if live and entry["time_wait"]:
        text += ", %s more in TIME_WAIT (taken over by new flows on this kernel)" % number(entry["time_wait"])
    if named:
        text += "; from %s" % named
    if entry["utilisation"] is not None and entry["utilisation"] >= 1:
        text += ": new connections through it time out"
    return text


def egress_advice(entry, live):
    """The recommendations for one egress at warning or above."""
    out = []
    where = "%s -> %s" % (entry["translated"], entry["endpoint"])
    if entry["capacity"] < DEFAULT_CAPACITY:
        out.append("widen the translated port range of %s (now %d-%d, %s ports): `masquerade to :1024-65535` or "
                   "`snat to ADDRESS:1024-65535` in nftables, `--to-ports 1024-65535` in iptables; or add translated "
                   "addresses (each gives another %s ports towards every destination)"
                   % (where, entry["port_range"][0], entry["port_range"][1], number(entry["capacity"]),
                      number(entry["capacity"])))
    else:
        out.append("add translated addresses for %s (`snat to A-B` over several addresses, or more egress "
                   "addresses): one address gives at most %s ports towards one destination"
                   % (where, number(DEFAULT_CAPACITY)))
    top = entry["sources"][0] if entry["sources"] else None
    if top is not None and top["share"] >= POOLING_SHARE:
        out.append("pool the connections (a connection pool, HTTP keep-alive) in the clients at %s: they hold %s of "
                   "the translated ports of %s, one per concurrent connection"
                   % (source_text(top, share=False), percent(top["share"]), where))
    if not live and entry["time_wait"]:
        out.append("on this kernel the %s TIME_WAIT entries of %s keep their translated ports: lowering "
                   "net.netfilter.nf_conntrack_tcp_timeout_time_wait (linux_tcp's conntrack_time_wait; 120 s by "
                   "default, "
                   "per network namespace) frees them sooner, at the cost of tracking a late segment of an old "
                   "connection as a new flow"
                   % (number(entry["time_wait"]), where))
    return out


def conntrack_part(table, before, seconds, warning, critical, notes):
    """(the result's conntrack dict, [(severity, sentence)], recommendations)."""
    findings, advice = [], []
    rates = None
    if before is not None and seconds:
        rates = {}
        for name in RATE_COUNTERS:
            delta = table.counters.get(name, 0) - before.get(name, 0)
            rates[name] = per_second(delta, seconds) if delta >= 0 else None
    elif seconds:
        notes.append("the conntrack counters could not be read at the start of the sample: their per-second "
                     "change is unknown")
    else:
        notes.append(SAMPLE_NOTE)
    out = {"count": table.count, "max": table.max, "utilisation": round(table.utilisation, 4)
           if table.utilisation is not None else None, "per_second": rates,
           "sample_seconds": round(seconds, 3) if rates is not None else None, "counters": dict(table.counters),
           "cpus": table.cpus}
    severity = level(table.utilisation, warning, critical)
    if severity != "ok":
        findings.append((severity, "the conntrack table holds %s of %s entries (nf_conntrack_max, %s): when it is "
                                   "full the kernel drops new flows (\"nf_conntrack: table full, dropping packet\")"
                         % (number(table.count), number(table.max), percent(table.utilisation))))
        advice.append("raise net.netfilter.nf_conntrack_max (now %s; linux_tcp's conntrack_max; global to the host: "
                      "set it in the initial network namespace, not in a container)" % number(table.max))
    for name, why in (("insert_failed", "new flows failed to enter the table (no free translated port, or two "
                                        "flows raced for one)"),
                      ("drop", "packets were dropped by conntrack"),
                      ("early_drop", "entries were evicted to make room: the table is full")):
        if rates and rates.get(name):
            findings.append(("warning", "conntrack %s rose by %s per second over the sample: %s"
                             % (name, rate(rates[name]), why)))
    return out, findings, advice


def nat_section(reading, rules, before, seconds, release, top, warning, critical, notes=(), who=None):
    """({the nat section}, [(severity, sentence)]) of a linux_nat.NatReading (None: the table could not be read)
    and the host's nat_rules.NatRules.  ``who``: called with the egress entries before they are judged, to say
    who is behind their sources (nat_sources.annotate)."""
    live = live_only(release)
    notes = list(notes)
    findings, advice = [], []
    egress, conntrack = [], None
    if reading is not None:
        conntrack, found, more = conntrack_part(reading.table, before, seconds, warning, critical, notes)
        findings += found
        advice += more
        for item in reading.egress[:top]:
            entry, note = egress_entry(item, rules.rules, live, warning, critical, seconds)
            if note and note not in notes:
                notes.append(note)
            egress.append(entry)
        if who is not None:
            who(egress)
        for entry in egress:
            if entry["verdict"] != "ok":
                findings.append((entry["verdict"], egress_sentence(entry, live)))
                advice += [text for text in egress_advice(entry, live) if text not in advice]
    rising = bool(conntrack and conntrack["per_second"] and conntrack["per_second"].get("insert_failed"))
    if rising and not (rules.rules and all(rule.fully_random for rule in rules.rules)):
        advice.append("add --random-fully to the MASQUERADE/SNAT rules (nftables: `fully-random`): it makes the "
                      "race of two flows for one translated port (insert_failed) rare")
    if not live:
        notes.append("kernel %s: TIME_WAIT entries are counted against the translated range (the take-over of "
                     "such ports by new flows was measured on Linux %d.%d only; docs/nat.md)"
                     % (release, CHECKED_KERNEL[0], CHECKED_KERNEL[1]))
    findings.sort(key=lambda item: -SEVERITY[item[0]])
    section = {
        "source": "ctnetlink" if reading is not None else None, "kernel": release,
        "counted": "live" if live else "live_and_time_wait", "conntrack": conntrack,
        "entries": reading.entries if reading is not None else None,
        "snat_entries": reading.snat_entries if reading is not None else None,
        "egress": egress, "egress_total": reading.egress_total if reading is not None else None,
        "rules": [{"kind": rule.kind, "addresses": list(rule.addresses),
                   "ports": list(rule.ports) if rule.ports else None, "fully_random": rule.fully_random,
                   "source": rule.source} for rule in rules.rules],
        "verdict": worst(severity for severity, dummy in findings), "findings": [text for dummy, text in findings],
        "recommendations": advice, "notes": notes,
    }
    return section, findings
