# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The findings of the port-usage analysis: destinations, host-wide pools, processes (pooling, bind before
connect) and the cure.  Pure; called by port_usage.analyse().  Findings are usage_model.Finding
(severity, sentence); a client finding is also a dict the result reports.
"""

from __future__ import annotations

import heapq

from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import usable_ports
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import (
    COUNT_FIELDS,
    ClientFinding,
    Destination,
    Finding,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_rules import (
    SEVERITY,
    leaving_rate,
    level,
    per_second,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import (
    endpoint,
    number,
    percent,
    process_text,
    rate,
)

POOL_EMPTY = "no usable %s ports: %d-%d is entirely excluded"
POOLING_MIN_RATE = 5.0  # new connections per second to one destination, from one process
POOLING_MIN_RATIO = 10  # ports in TIME_WAIT per ESTABLISHED connection (at least 1)
POOLING_MIN_TIME_WAIT = 100  # without a measured rate: TIME_WAIT seen alive (not inferred) at least this
PROCESS_DESTINATIONS = 5  # destinations shown per process, processes shown per destination
POOLING_ADVICE = ("pool the connections or keep them alive (HTTP keep-alive, a connection pool) in that client: "
                  "each new connection holds a port for the TIME_WAIT time; tuning the host only buys time")
BIND_ADVICE = ("set IP_BIND_ADDRESS_NO_PORT on the socket before bind() (Linux 4.2+), or give connect() its port "
               "range with IP_LOCAL_PORT_RANGE (Linux 6.3+), or connect() without bind(): a socket bound to an "
               "ephemeral port holds it for every destination")
FAILING_ADVICE = ("pool the connections or keep them alive in that client, and stop opening a new connection (or "
                  "starting a new process) per request; a wider port range or tcp_tw_reuse on the host only buys "
                  "time")
_IDENTITY = ("pid", "start_time", "name", "cmdline", "user", "uid", "unit", "cgroup", "container",
             "evidence")  # the result's order
_TOTALS = ("in_use", "established", "time_wait", "time_wait_inferred")


# ---------------------------------------------------------------- destinations
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
    """[(key, destination dict)] of the ``top`` destinations, ranked by the ports blocked on their busiest tuple,
    then by ports held."""
    ranked = heapq.nlargest(top, groups.items(), key=lambda item: (item[1].blocking, item[1].in_use, item[0][2]))
    out = []
    for (family, remote, port), group in ranked:
        address = format_address(family, remote)
        utilisation = (float(group.blocking) / usable) if usable else None
        out.append(((family, remote, port), {
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
        }))
    return out


def destination_sentence(dest, usable):
    text = "%s holds %s of %s usable ports (%s), %s in TIME_WAIT, from %s" % (
        dest["endpoint"], number(dest["busiest_in_use"]), number(usable), percent(dest["utilisation"]),
        number(dest["busiest_time_wait"]), dest["busiest_local_address"])
    if dest["reuse"]:
        text += "; TIME_WAIT reuse applies, %s ports blocked" % number(dest["blocking"])
    return text


def destination_findings(eph, groups, destinations, warning, critical):
    """(findings, the destinations at warning or above) for the top ``destinations`` against the usable ports."""
    usable = eph["usable"]
    findings = []
    hot = []
    if usable == 0:
        findings.append(Finding("critical", "no usable ephemeral ports: the range %d-%d is entirely reserved"
                                % tuple(eph["range"])))
    elif usable:
        for dest in destinations:
            severity = level(dest["utilisation"], warning, critical)
            if severity != "ok":
                hot.append(dest)
                findings.append(Finding(severity, destination_sentence(dest, usable)))
        shown = len(destinations)
        beyond = sum(1 for group in groups.values() if group.blocking * 100 >= warning * usable) - len(hot)
        if beyond > 0 and shown:
            findings.append(Finding("warning", "%s more destinations beyond the top %d hold at least %d%% of the "
                                               "usable ports" % (number(beyond), shown, warning)))
    return findings, hot


# ---------------------------------------------------------------- host-wide pools
def ports_held_by_family(tuples):
    held = {"ipv4": 0, "ipv6": 0}
    for (family, _local, _remote, _port), (in_use, _tw) in tuples.items():
        held["ipv%d" % family] += in_use
    return held


def pool_findings(pools, held, warning, critical, held_text):
    """(findings, any pool short) for the host-wide pools, given the ports held per family; ``held_text``
    words a pool held beyond a threshold (the platform's)."""
    findings = []
    short = False
    for pool in pools:
        low, high = pool.port_range
        count = usable_ports(pool.port_range, pool.reserved)
        if count <= 0:
            findings.append(Finding("critical", POOL_EMPTY % (pool.name, low, high)))
            short = True
            continue
        fraction = float(held["ipv%d" % pool.family]) / count
        severity = level(fraction, warning, critical)
        if severity != "ok":
            short = True
            findings.append(Finding(severity, held_text % (number(held["ipv%d" % pool.family]), number(count),
                                                           pool.name, percent(fraction))))
    return findings, short


# ---------------------------------------------------------------- processes: who burns the ports
def who(proc):
    """'pid 1234 (curl, user alice, unit web.service)'."""
    return process_text(proc["pid"], proc.get("name"), proc.get("user"), proc.get("unit"), proc.get("container"))


def _destination_entry(snap, key, counts, seconds):
    family, remote, port = key
    address = snap.format_address(family, remote)
    entry = {"endpoint": endpoint(family, address, port), "address": address, "port": port, "family": "ipv%d" % family}
    entry.update((name, getattr(counts, name)) for name in COUNT_FIELDS)
    entry["new_connections_per_second"] = per_second(counts.new_connections, seconds)
    return entry


def _exact(entry, seconds):
    """The destination ``entry`` with only what was seen (its inferred shares taken out): what a culprit or a
    pooling finding may rest on."""
    out = dict(entry)
    out["time_wait"] = (entry["time_wait"] or 0) - (entry["time_wait_inferred"] or 0)
    out["time_wait_inferred"] = 0
    if entry["new_connections"] is not None:
        out["new_connections"] = entry["new_connections"] - (entry["new_connections_inferred"] or 0)
        out["new_connections_inferred"] = 0
        out["new_connections_per_second"] = per_second(out["new_connections"], seconds)
    return out


def _pooling_finding(proc, key, entry, seconds, dest_level):
    """The ClientFinding on pooling for one process towards one destination, or None; on its exact counts only
    (an inferred share never makes a pooling finding by itself)."""
    exact = _exact(entry, seconds)
    finding = pooling(proc, exact, seconds)
    if finding is None:
        return None
    severity, projection = dest_level(key, leaving_rate(exact, seconds))
    if projection:
        finding["sentence"] = finding["sentence"].replace(": " + POOLING_ADVICE,
                                                          "; %s: %s" % (projection, POOLING_ADVICE))
        finding["projection"] = projection
    return ClientFinding(severity, finding)


def evidence(proc, totals, new_total, new_inferred):
    """"inferred" when all a process is said to have opened or left in TIME_WAIT is an inferred share (or its
    record says so), else "exact"."""
    if proc.evidence == "inferred":
        return "inferred"
    inferred = totals["time_wait_inferred"] + (new_inferred or 0)
    exact = totals["time_wait"] - totals["time_wait_inferred"] + (new_total or 0) - (new_inferred or 0)
    return "inferred" if inferred and not exact else "exact"


def _process_row(proc, seconds, snap, dest_level, findings):
    """(the result's process dict, [(key, destination dict)] busiest first, the exact rank); its pooling findings
    to ``findings``.  The rank: (new connections per second seen, not inferred; ports held, not inferred)."""
    keyed = []
    totals = dict.fromkeys(_TOTALS, 0)
    new_total = new_inferred = None
    for key, counts in proc.destinations.items():
        for name in _TOTALS:
            totals[name] += getattr(counts, name) or 0
        if counts.new_connections is not None:
            new_total = (new_total or 0) + counts.new_connections
            new_inferred = (new_inferred or 0) + (counts.new_connections_inferred or 0)
        entry = _destination_entry(snap, key, counts, seconds)
        keyed.append((key, entry))
        found = _pooling_finding(proc, key, entry, seconds, dest_level)
        if found is not None:
            findings.append(found)
    keyed.sort(key=lambda item: (-(item[1]["new_connections_per_second"] or 0), -(item[1]["in_use"] or 0),
                                 item[1]["endpoint"]))
    out = dict((name, getattr(proc, name)) for name in _IDENTITY)
    out["evidence"] = evidence(proc, totals, new_total, new_inferred)
    out.update(totals)
    out.update(ports_held=totals["in_use"], new_connections=new_total, new_connections_inferred=new_inferred,
               new_connections_per_second=per_second(new_total, seconds), bound_inactive=proc.bound_inactive,
               bound_inactive_seen=proc.bound_inactive_seen, spawned=proc.spawned,
               failed_connections=proc.failed_connections,
               failed_connections_per_second=per_second(proc.failed_connections, seconds),
               destinations=[entry for dummy, entry in keyed[:PROCESS_DESTINATIONS]], destination_count=len(keyed))
    if out["bound_inactive"] or out["bound_inactive_seen"]:
        findings.append(ClientFinding("ok", binding(out)))
    exact_new = None if new_total is None else new_total - (new_inferred or 0)
    rank = (per_second(exact_new, seconds) or 0, totals["in_use"] - totals["time_wait_inferred"])
    return out, keyed[:PROCESS_DESTINATIONS], rank


def _churner(row):
    """The top churner from the first row (out, keyed, rank): named only on what it was seen opening, with that
    rate and the destination it opened most connections to."""
    first, keyed, rank = row
    if not rank[0]:
        return None
    exact = [(_exact(dest, None)["new_connections"] or 0, -index, dest["endpoint"])
             for index, (dummy, dest) in enumerate(keyed)]
    return {"pid": first["pid"], "name": first["name"], "user": first["user"], "unit": first["unit"],
            "container": first["container"], "process": who(first),
            "destination": max(exact)[2] if exact else None,
            "new_connections_per_second": rank[0]}


def unattributed_rows(snap, top):
    out = []
    for (family, remote, port), counts in (snap.attribution or {}).get("unattributed", {}).items():
        row = dict((name, counts[name]) for name in counts.keys())
        row["endpoint"] = endpoint(family, snap.format_address(family, remote), port)
        out.append(row)
    out.sort(key=lambda d: (-(d.get("time_wait") or 0), -(d.get("in_use") or 0), d["endpoint"]))
    return out[:top]


def process_analysis(snap, top, dest_level):
    """(processes, [ClientFinding], unattributed, top_churner, owners) from Snapshot.processes.

    ``dest_level((family, remote key, port), new connections per second or None)``: (severity, projection
    sentence or None) for a pooling finding: the destination's own level, raised to what the process's
    rate would hold in steady state (rate x seconds a port stays held, against the usable ports), so a
    client that will run out of ports is a finding before it has; a bind finding is "ok".  ``owners``:
    {destination key: [{"pid", "name", "in_use", "time_wait", "new_connections_per_second"}]} of the
    processes shown.
    """
    seconds = (snap.attribution or {}).get("sampled_seconds")
    rows = []
    findings = []
    for proc in snap.processes or ():
        rows.append(_process_row(proc, seconds, snap, dest_level, findings))
    # ranked on what was seen first (an inferred share never puts a process ahead by itself), then on the whole
    rows.sort(key=lambda row: (-row[2][0], -(row[0]["new_connections_per_second"] or 0), -row[2][1],
                               -row[0]["ports_held"], -row[0]["bound_inactive"], row[0]["pid"]))
    rows = rows[:top]
    owners = {}
    for out, keyed, dummy in rows:
        for key, dest in keyed:
            owners.setdefault(key, []).append(
                {"pid": out["pid"], "name": out["name"], "in_use": dest["in_use"], "time_wait": dest["time_wait"],
                 "new_connections_per_second": dest["new_connections_per_second"]})
    findings.sort(key=lambda item: (-SEVERITY[item.severity], item.report["kind"] != "pooling",
                                    -(item.report.get("new_connections_per_second") or 0)))
    procs = [row[0] for row in rows]
    churner = _churner(rows[0]) if rows else None
    return procs, findings, unattributed_rows(snap, top), churner, owners


def _client(proc, kind, destination, per_second_value, advice, sentence, **facts):
    out = {"kind": kind, "pid": proc["pid"], "name": proc.get("name"), "user": proc.get("user"),
           "unit": proc.get("unit"), "container": proc.get("container"), "process": who(proc),
           "destination": destination}
    out.update(facts)
    out.update(new_connections_per_second=per_second_value, advice=advice, sentence=sentence)
    return out


def pooling(proc, dest, seconds):
    """The pooling finding for one process and destination, or None."""
    established = dest["established"] or 0
    time_wait = dest["time_wait"] or 0
    rate_now = dest["new_connections_per_second"]
    if rate_now is not None:
        if rate_now < POOLING_MIN_RATE or time_wait < POOLING_MIN_RATIO * max(established, 1):
            return None
        how = "opens %s new connections per second to %s (%s in %.1f s)" % (
            rate(rate_now), dest["endpoint"], number(dest["new_connections"]), seconds)
    else:
        seen_alive = time_wait - (dest["time_wait_inferred"] or 0)
        if seen_alive < POOLING_MIN_TIME_WAIT or time_wait < POOLING_MIN_RATIO * max(established, 1):
            return None
        how = "closed %s connections to %s that are now in TIME_WAIT" % (number(time_wait), dest["endpoint"])
    ratio = round(time_wait / float(max(established, 1)), 1)
    sentence = "%s %s and keeps %s open (%s ports in TIME_WAIT, %s per ESTABLISHED): %s" % (
        who(proc), how, number(established), number(time_wait), rate(ratio), POOLING_ADVICE)
    out = _client(proc, "pooling", dest["endpoint"], rate_now, POOLING_ADVICE, sentence)
    out.update(new_connections=dest["new_connections"], established=established, time_wait=time_wait,
               time_wait_per_established=ratio)
    return _reorder(out, ("kind", "pid", "name", "user", "unit", "container", "process", "destination",
                          "new_connections_per_second", "new_connections", "established", "time_wait",
                          "time_wait_per_established", "advice", "sentence"))


def binding(proc):
    """The bind-before-connect finding for one process."""
    now, seen = proc["bound_inactive"], proc["bound_inactive_seen"]
    if now:
        sentence = "%s holds %s ephemeral ports bound but not connected (bind before connect%s): %s" % (
            who(proc), number(now), ", %s seen during the sample" % number(seen) if seen else "", BIND_ADVICE)
    else:
        sentence = "%s bound %s ephemeral ports before connecting them during the sample (bind before connect): %s" % (
            who(proc), number(seen), BIND_ADVICE)
    return _client(proc, "bind_before_connect", None, proc.get("new_connections_per_second"), BIND_ADVICE,
                   sentence, bound_inactive=now, bound_inactive_seen=seen)


def _reorder(item, order):
    return dict((key, item[key]) for key in order)


def failing(proc, seconds, format_address):
    """The "failing" ClientFinding (critical) of a ProcessRecord whose connect() calls failed for want of a local
    port (``failed_connections`` above 0, measured by tracing), or None: it names the process, its failures per
    second and the destination that failed most, when known."""
    failed = proc.failed_connections
    if not failed or failed <= 0:
        return None
    key, most, new = None, 0, None
    for dest_key, counts in proc.destinations.items():
        if (counts.failed_connections or 0) > most:
            key, most = dest_key, counts.failed_connections
        if counts.new_connections is not None:
            new = (new or 0) + counts.new_connections
    destination = None
    if key is not None:
        destination = endpoint(key[0], format_address(key[0], key[1]), key[2])
    per = per_second(failed, seconds)
    how = ("fails %s connect() calls per second" % rate(per) if per is not None
           else "failed %s connect() calls" % number(failed))
    sentence = "%s %s%s for want of a local port (EADDRNOTAVAIL%s): %s" % (
        who(proc), how, " to %s" % destination if destination else "",
        ", %s in %.1f s" % (number(failed), seconds) if per is not None else "", FAILING_ADVICE)
    return ClientFinding("critical", _client(proc, "failing", destination, per_second(new, seconds), FAILING_ADVICE,
                                             sentence, failed_connections=failed,
                                             failed_connections_per_second=per))


def failing_findings(snap):
    """[ClientFinding] "failing" of every process of ``snap`` whose connect() calls failed for want of a port,
    the most failures first (before any cut to the top N: while connections fail, the failing client is named)."""
    seconds = (snap.attribution or {}).get("sampled_seconds")
    found = [failing(proc, seconds, snap.format_address) for proc in snap.processes or ()]
    found = [item for item in found if item is not None]
    found.sort(key=lambda item: (-item.report["failed_connections"], item.report["pid"]))
    return found


def cure(recommendations, client_findings):
    """{"where": "client" | "host" | "both" | "none", "summary"}: which of the two cures applies.  The clients
    whose connect() calls fail (a "failing" finding) are named first."""
    names = []
    for item in sorted(client_findings, key=lambda item: (item.get("kind") != "failing", item["process"])):
        if item["process"] not in names:
            names.append(item["process"])
    named = "; ".join(names[:3])
    why = ("its connect() calls fail for want of a local port" if any(
        item.get("kind") == "failing" for item in client_findings) else None)
    host = bool(recommendations)
    if client_findings and host:
        return {"where": "both", "summary": "fix the client (%s)%s for a lasting cure; tune the host with the "
                                            "recommendations meanwhile" % (named, ", whose connect() calls fail "
                                                                                  "for want of a local port," if why
                                                                           else "")}
    if client_findings:
        return {"where": "client", "summary": "fix the client (%s): %s" % (
            named, why or "the host's settings are not what runs short")}
    if host:
        return {"where": "host", "summary": "tune the host with the recommendations: no client opens connections "
                                            "in a way that pooling would cure"}
    return {"where": "none", "summary": "nothing to cure"}
