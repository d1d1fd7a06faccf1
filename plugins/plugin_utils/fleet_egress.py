# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The fleet report's rollup by shared egress (issue 23): pure functions, no I/O, on the controller only.

``check_egresses`` validates the role variable ``port_audit_egresses`` and each host's ``tcpstack_egress``;
``rollup`` sums the hosts' open connections per (egress, destination endpoint), compares each sum with the
egress kind's documented limit (a ``linux`` egress: the NAT host's own ``nat.egress`` measurement) and sizes the
egress from the measured peak with ``MARGIN``; ``markdown_lines``, ``html_section`` and ``summary_lines`` render
the entries.  docs/nat.md ("Fleet rollup") states the limits and their documents.

The count compared with a cloud limit is a destination's ``in_use`` minus its ``time_wait``: the connections
open now (established, opening or closing, not yet in TIME_WAIT).  Every document cited counts simultaneous or
concurrent connections (AWS, Azure NAT Gateway, Google Cloud NAT) or the ports they take (Azure Load Balancer),
and a socket in TIME_WAIT on the host is a connection already closed; the TIME_WAIT count is reported beside it
(``time_wait``) because how long a NAT keeps the port of a closed connection is not in those limits.
"""

from __future__ import annotations

import math

from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import clean_text, endpoint
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import percent as _percent

VARIABLE = "port_audit_egresses"
HOST_VARIABLE = "tcpstack_egress"
MARGIN = 1.5  # sizing: the measured peak times this, so that the next burst still fits
KINDS = ("linux", "aws_nat_gateway", "azure_nat_gateway", "azure_lb", "gcp_cloud_nat")
KEYS = {
    "linux": ("kind", "host"),
    "aws_nat_gateway": ("kind", "addresses"),
    "azure_nat_gateway": ("kind", "addresses"),
    "azure_lb": ("kind", "addresses", "ports_per_instance", "pool_size"),
    "gcp_cloud_nat": ("kind", "addresses", "ports_per_vm"),
}
AWS_PER_ADDRESS, AWS_MAX_ADDRESSES = 55000, 8
AZURE_NAT_PER_ADDRESS = 50000
SNAT_PORTS_PER_ADDRESS = 64512  # Azure NAT Gateway per public IP, Google Cloud NAT per NAT IP, Linux 1024-65535
AZURE_LB_PORTS_PER_ADDRESS = 64000
AZURE_LB_TABLE = ((50, 1024), (100, 512), (200, 256), (400, 128), (800, 64), (1000, 32))
GCP_PORTS_PER_VM = 64
SOURCES = {
    "linux": "docs/nat.md, Linux: the translated ports of the NAT host's rule, else 1024-65535 (64,512)",
    "aws_nat_gateway": "AWS VPC user guide, \"NAT gateway basics\"",
    "azure_nat_gateway": "Azure NAT Gateway documentation on SNAT",
    "azure_lb": "azure-docs load-balancer-outbound-connections.md",
    "gcp_cloud_nat": "Google Cloud NAT documentation (ports and addresses)",
}
PER_VM = ("azure_lb", "gcp_cloud_nat")  # the limit is per VM and destination, not per egress
SEVERITIES = ("critical", "warning", "unknown", "ok")


class EgressError(ValueError):
    """port_audit_egresses or a host's tcpstack_egress is not valid; the message says which and why."""


def _number(value):
    return None if isinstance(value, bool) or not isinstance(value, int) else value


def _positive(name, spec, key, default=None, most=None):
    value = spec.get(key, default)
    number = _number(value)
    if number is None or number < 1 or (most is not None and number > most):
        raise EgressError("%s: %s.%s is %r; it must be a whole number from 1%s" % (
            VARIABLE, name, key, value, " to %d" % most if most else " up"))
    return number


def azure_lb_default_ports(pool_size, addresses=1):
    """Azure Load Balancer's default outbound ports per instance for a backend pool of ``pool_size``: the table's
    ports per frontend IP times the frontend IPs, at most 1,024."""
    for most, ports in AZURE_LB_TABLE:
        if pool_size <= most:
            return min(ports * addresses, AZURE_LB_TABLE[0][1])
    return None


def _check_one(name, spec, inventory):
    if not isinstance(spec, dict):
        raise EgressError("%s: %s is %r; it must be a dict with kind and its size" % (VARIABLE, name, spec))
    kind = spec.get("kind")
    if kind not in KINDS:
        raise EgressError("%s: %s.kind is %r; it must be one of %s" % (VARIABLE, name, kind, ", ".join(KINDS)))
    unknown = sorted(str(key) for key in spec if key not in KEYS[kind])
    if unknown:
        raise EgressError("%s: %s has %s, not a key of kind %s (valid: %s)" % (
            VARIABLE, name, ", ".join(unknown), kind, ", ".join(KEYS[kind])))
    out = {"kind": kind}
    if kind == "linux":
        host = spec.get("host")
        if not isinstance(host, str) or host not in inventory:
            raise EgressError("%s: %s.host is %r; a linux egress names its NAT host, an inventory host" % (
                VARIABLE, name, host))
        out["host"] = host
        return out
    out["addresses"] = _positive(name, spec, "addresses", most=AWS_MAX_ADDRESSES if kind == "aws_nat_gateway" else None)
    if kind == "gcp_cloud_nat":
        out["ports_per_vm"] = _positive(name, spec, "ports_per_vm", GCP_PORTS_PER_VM, SNAT_PORTS_PER_ADDRESS)
    elif kind == "azure_lb":
        if "ports_per_instance" in spec:
            out["ports_per_instance"] = _positive(name, spec, "ports_per_instance", most=AZURE_LB_PORTS_PER_ADDRESS)
        elif "pool_size" in spec:
            out["pool_size"] = _positive(name, spec, "pool_size", most=AZURE_LB_TABLE[-1][0])
            out["ports_per_instance"] = azure_lb_default_ports(out["pool_size"], out["addresses"])
        else:
            raise EgressError("%s: %s (azure_lb) needs ports_per_instance (the outbound rule's "
                              "allocatedOutboundPorts) or pool_size (default allocation)" % (VARIABLE, name))
    return out


def check_egresses(egresses, host_egress, inventory=()):
    """The declared egresses, checked: {name: {"kind", and "host" or "addresses", ...}}.

    ``egresses`` is port_audit_egresses; ``host_egress`` {host: its tcpstack_egress or None}; ``inventory`` the
    inventory's host names (a linux egress names one).  Raises EgressError naming the variable, the value and
    what is valid.
    """
    if egresses is None:
        egresses = {}
    if not isinstance(egresses, dict):
        raise EgressError("%s is %r; it must be a dict {egress name: {kind: ..., addresses: ...}}" % (
            VARIABLE, egresses))
    checked = dict((str(name), _check_one(str(name), spec, inventory)) for name, spec in egresses.items())
    for host, name in sorted(host_egress.items()):
        if name is None:
            continue
        if not isinstance(name, str) or name not in checked:
            raise EgressError("%s of host %s is %r; it must name an egress declared in %s (declared: %s)" % (
                HOST_VARIABLE, host, name, VARIABLE, ", ".join(sorted(checked)) or "none"))
    return checked


# ---------------------------------------------------------------- what each host sends where
def _count(value):
    number = _number(value)
    return number if number is not None and number >= 0 else 0


def _processes(result, endpoint):
    """Up to 5 processes of one host holding connections to ``endpoint``: [{"pid", "name", "in_use"}]."""
    found = {}
    for dest in _list(result.get("destinations")):
        if dest.get("endpoint") == endpoint:
            for proc in _list(dest.get("processes")):
                found[_number(proc.get("pid"))] = (clean_text(proc.get("name") or "?")[:64], _count(proc.get("in_use")))
    for proc in _list(result.get("processes")):
        for dest in _list(proc.get("destinations")):
            if dest.get("endpoint") == endpoint and _number(proc.get("pid")) not in found:
                found[_number(proc.get("pid"))] = (clean_text(proc.get("name") or "?")[:64], _count(dest.get("in_use")))
    ranked = sorted(found.items(), key=lambda item: (-item[1][1], str(item[0])))
    return [{"pid": pid, "name": name, "in_use": in_use} for pid, (name, in_use) in ranked[:5]]


def _list(value):
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def host_connections(result):
    """{endpoint: (open, time_wait)} of one host's result: open = in_use - time_wait, per destination."""
    out = {}
    if not isinstance(result, dict) or result.get("failed") or result.get("unreachable"):
        return out
    for dest in _list(result.get("destinations")):
        endpoint = dest.get("endpoint")
        if not isinstance(endpoint, str) or not endpoint:
            continue
        in_use, time_wait = _count(dest.get("in_use")), _count(dest.get("time_wait"))
        time_wait = min(time_wait, in_use)
        out[clean_text(endpoint)[:200]] = (in_use - time_wait, time_wait)
    return out


def thresholds(results):
    """(warning, critical) in percent: the strictest the hosts' audits used (their ``thresholds``), else 70, 90."""
    warning, critical = [], []
    for result in results.values():
        given = result.get("thresholds") if isinstance(result, dict) else None
        if isinstance(given, dict):
            warning += [v for v in [_number(given.get("warning_percent"))] if v is not None and 0 < v <= 100]
            critical += [v for v in [_number(given.get("critical_percent"))] if v is not None and 0 < v <= 100]
    return (min(warning) if warning else 70), (min(critical) if critical else 90)


def severity(utilisation, limits):
    if utilisation is None:
        return "unknown"
    if utilisation * 100.0 >= limits[1]:
        return "critical"
    return "warning" if utilisation * 100.0 >= limits[0] else "ok"


def _needed(count, per_address):
    return max(1, int(math.ceil(count * MARGIN / float(per_address))))


def _grouped(egresses, host_egress, results):
    """{(egress, endpoint): [host rows]}, each {"host", "in_use", "time_wait", "processes"}, busiest first."""
    groups = {}
    for host in sorted(host_egress):
        name = host_egress[host]
        if name not in egresses:
            continue
        result = results.get(host)
        for endpoint, (opened, time_wait) in host_connections(result).items():
            groups.setdefault((name, endpoint), []).append(
                {"host": clean_text(host), "in_use": opened, "time_wait": time_wait,
                 "processes": _processes(result, endpoint)})
    for rows in groups.values():
        rows.sort(key=lambda row: (-row["in_use"], row["host"]))
    return groups


def nat_endpoint(item):
    """A ``nat.egress`` item's destination as port_usage_info's destinations write it ("IP:PORT", "[IPv6]:PORT"):
    from ``destination`` (an address) and ``port``, or a ``destination`` that already is an endpoint; else None."""
    destination, port = item.get("destination"), _number(item.get("port"))
    if not isinstance(destination, str) or not destination:
        return None
    if port is not None and 0 < port < 65536:
        return endpoint(6 if ":" in destination else 4, destination, port)
    return destination


def _nat_measured(result):
    """{destination: {"in_use", "capacity", "utilisation", "per_address", "sources"}} from a NAT host's
    ``nat.egress`` (``in_use`` is what counts against the translated range on that kernel: ``nat.counted``)."""
    nat = result.get("nat") if isinstance(result, dict) else None
    out = {}
    for item in _list(nat.get("egress") if isinstance(nat, dict) else None):
        destination = nat_endpoint(item)
        if destination is None or (item.get("protocol") or "tcp") != "tcp":
            continue
        entry = out.setdefault(clean_text(destination)[:200],
                               {"in_use": 0, "capacity": 0, "utilisation": None, "per_address": 0, "sources": {}})
        in_use, capacity = _count(item.get("in_use")), _count(item.get("capacity"))
        entry["in_use"] += in_use
        entry["capacity"] += capacity
        entry["per_address"] = max(entry["per_address"], capacity)
        share = float(in_use) / capacity if capacity else None
        if share is not None:
            entry["utilisation"] = max(share, entry["utilisation"] or 0.0)
        for source in _list(item.get("sources")):
            address = clean_text(source.get("address") or "?")[:64]
            entry["sources"][address] = entry["sources"].get(address, 0) + _count(source.get("in_use"))
    return out


def _cite(kind):
    return "; source: %s" % SOURCES[kind]


def _figure(number):
    return "{:,}".format(number)


def sizing(kind, spec, destination, peak, busiest, vms):
    """The sizing of one (egress, destination) from its measured peak: {"margin", "peak", "addresses_needed",
    and "min_ports_per_vm" (GCP) or "allocated_outbound_ports" (Azure LB), "sentences"}."""
    out = {"margin": MARGIN, "peak": peak}
    if kind in PER_VM:
        ports = max(1, int(math.ceil(busiest["in_use"] * MARGIN)))
        per_address = SNAT_PORTS_PER_ADDRESS if kind == "gcp_cloud_nat" else AZURE_LB_PORTS_PER_ADDRESS
        option, now = (("min_ports_per_vm", spec["ports_per_vm"]) if kind == "gcp_cloud_nat"
                       else ("allocatedOutboundPorts", spec["ports_per_instance"]))
        out["min_ports_per_vm" if kind == "gcp_cloud_nat" else "allocated_outbound_ports"] = ports
        out["addresses_needed"] = max(1, int(math.ceil(vms * ports / float(per_address))))
        out["sentences"] = [
            "The busiest VM, %s, holds %s concurrent connections to %s; with a %sx margin set %s to at least %s "
            "(now %s per VM per destination)%s." % (busiest["host"], _figure(busiest["in_use"]), destination,
                                                    MARGIN, option, _figure(ports), _figure(now), _cite(kind)),
            "%d VM(s) x %s ports need %d %s (%s ports each); %d declared%s." % (
                vms, _figure(ports), out["addresses_needed"],
                "NAT IP(s)" if kind == "gcp_cloud_nat" else "frontend IP(s)", _figure(per_address),
                spec["addresses"], _cite(kind))]
        return out
    per_address = {"aws_nat_gateway": AWS_PER_ADDRESS, "azure_nat_gateway": AZURE_NAT_PER_ADDRESS}.get(kind)
    if kind == "linux":
        per_address = spec.get("per_address") or SNAT_PORTS_PER_ADDRESS
    out["addresses_needed"] = _needed(peak, per_address)
    what = {"linux": "translated address(es) (or a wider translated port range)",
            "aws_nat_gateway": "address(es)", "azure_nat_gateway": "public IP address(es)"}[kind]
    sentence = "%s concurrent connections to %s at the peak; with a %sx margin (%s) the egress needs %d %s at %s " \
               "per address to one destination" % (_figure(peak), destination, MARGIN, _figure(int(math.ceil(
                   peak * MARGIN))), out["addresses_needed"], what, _figure(per_address))
    if spec.get("addresses"):
        sentence += "; %d declared" % spec["addresses"]
    if kind == "aws_nat_gateway" and out["addresses_needed"] > AWS_MAX_ADDRESSES:
        sentence += "; more than the %d an AWS NAT gateway can have: spread the hosts over more NAT gateways" \
                    % AWS_MAX_ADDRESSES
    out["sentences"] = [sentence + _cite(kind) + "."]
    return out


def _capacity(kind, spec):
    """The documented limit of one (egress, destination): per egress, or per VM for PER_VM kinds."""
    if kind == "aws_nat_gateway":
        return AWS_PER_ADDRESS * spec["addresses"]
    if kind == "azure_nat_gateway":
        return AZURE_NAT_PER_ADDRESS * spec["addresses"]
    if kind == "gcp_cloud_nat":
        return spec["ports_per_vm"]
    return spec["ports_per_instance"]


def _entry(name, spec, destination, rows, limits, vms, measured=None):
    kind = spec["kind"]
    peak = sum(row["in_use"] for row in rows)
    busiest = rows[0] if rows else {"host": "-", "in_use": 0}
    notes = []
    if kind == "linux":
        capacity = measured["capacity"] if measured else None
        notes.append("measured on the NAT host %s; the hosts behind it hold %s" % (spec["host"], _figure(peak))
                     if measured else "the NAT host %s reported no nat section for this destination" % spec["host"])
        peak = measured["in_use"] if measured else peak
        utilisation = measured["utilisation"] if measured else None
        if measured and measured["per_address"]:
            spec = dict(spec, per_address=measured["per_address"])
    else:
        capacity = _capacity(kind, spec)
        used = busiest["in_use"] if kind in PER_VM else peak
        utilisation = float(used) / capacity
    entry = {"egress": name, "kind": kind, "destination": destination, "in_use": peak,
             "time_wait": sum(row["time_wait"] for row in rows), "capacity": capacity,
             "limit": "per_vm" if kind in PER_VM else "per_egress", "utilisation": utilisation,
             "hosts": rows, "busiest": {"host": busiest["host"], "in_use": busiest["in_use"]},
             "severity": severity(utilisation, limits), "source": SOURCES[kind], "notes": notes}
    if measured:
        entry["sources"] = [{"address": a, "in_use": n} for a, n in sorted(
            measured["sources"].items(), key=lambda item: (-item[1], item[0]))][:10]
    entry["sizing"] = sizing(kind, spec, destination, peak, busiest, vms)
    return entry


def rollup(egresses, host_egress, results):
    """One entry per (egress, destination endpoint), riskiest first; [] when no host names an egress.

    ``egresses`` as check_egresses() returns it, ``host_egress`` {host: tcpstack_egress}, ``results`` {host: its
    port_usage_info result}.  See _entry() for the keys."""
    if not any(name in egresses for name in host_egress.values()):
        return []
    limits = thresholds(results)
    groups = _grouped(egresses, host_egress, results)
    entries = []
    for name, spec in sorted(egresses.items()):
        vms = spec.get("pool_size") or sum(1 for value in host_egress.values() if value == name)
        destinations = sorted(endpoint for egress, endpoint in groups if egress == name)
        measured = _nat_measured(results.get(spec["host"])) if spec["kind"] == "linux" else {}
        for destination in sorted(set(destinations) | set(measured)):
            entries.append(_entry(name, spec, destination, groups.get((name, destination), []), limits, max(vms, 1),
                                  measured.get(destination)))
    entries.sort(key=lambda e: (SEVERITIES.index(e["severity"]), -(e["utilisation"] or 0.0), e["egress"],
                                e["destination"]))
    return entries


# ---------------------------------------------------------------- rendering
def percent(value):
    return "n/a" if value is None else _percent(value)


def hosts_text(entry, most=5):
    """"web1 300 (python3 pid 42 300), web2 200" for the busiest hosts of an entry."""
    parts = []
    for row in entry["hosts"][:most]:
        text = "%s %s" % (row["host"], _figure(row["in_use"]))
        if row["processes"]:
            text += " (%s)" % ", ".join("%s pid %s %s" % (p["name"], p["pid"], _figure(p["in_use"]))
                                        for p in row["processes"][:3])
        parts.append(text)
    more = len(entry["hosts"]) - most
    return ", ".join(parts) + (", and %d more" % more if more > 0 else "") if parts else "-"


def capacity_text(entry):
    if entry["capacity"] is None:
        return "n/a"
    return "%s%s" % (_figure(entry["capacity"]), " per VM" if entry["limit"] == "per_vm" else "")


def markdown_lines(entries, escape):
    """The Markdown egress section (``escape`` makes a table cell safe), or [] without entries."""
    if not entries:
        return []
    lines = ["## Shared egress", "",
             "| egress | kind | destination | severity | in use | capacity | utilisation | hosts | sizing |",
             "|---|---|---|---|---|---|---|---|---|"]
    for e in entries:
        lines.append("| %s |" % " | ".join([
            escape(e["egress"]), escape(e["kind"]), escape(e["destination"]), escape(e["severity"]),
            escape(_figure(e["in_use"])), escape(capacity_text(e)), escape(percent(e["utilisation"])),
            escape(hosts_text(e)), "<br>".join(escape(s) for s in e["sizing"]["sentences"] + e["notes"])]))
    lines.append("")
    return lines


def html_section(entries, escape):
    """The HTML egress section (``escape`` is html.escape with quotes), or "" without entries."""
    if not entries:
        return ""
    rows = []
    for e in entries:
        cells = [escape(e["egress"]), escape(e["kind"]), escape(e["destination"]),
                 '<span class="badge %s">%s</span>' % (escape(e["severity"]), escape(e["severity"])),
                 escape(_figure(e["in_use"])), escape(capacity_text(e)), escape(percent(e["utilisation"])),
                 escape(hosts_text(e)),
                 "<ul>%s</ul>" % "".join("<li>%s</li>" % escape(s) for s in e["sizing"]["sentences"] + e["notes"])]
        rows.append('<tr class="egress verdict-%s" data-egress="%s" data-destination="%s">%s</tr>' % (
            escape(e["severity"]), escape(e["egress"]), escape(e["destination"]),
            "".join("<td>%s</td>" % cell for cell in cells)))
    return ('<h2>Shared egress</h2>\n<table id="egresses">\n<thead><tr><th>egress</th><th>kind</th>'
            "<th>destination</th><th>severity</th><th>in use</th><th>capacity</th><th>utilisation</th><th>hosts</th>"
            "<th>sizing</th></tr></thead>\n<tbody>\n%s\n</tbody>\n</table>\n"
            '<p class="meta">In use: the connections open now (TIME_WAIT not counted) summed over the hosts that '
            "name the egress in tcpstack_egress, per destination; a linux egress shows its NAT host's own "
            "measurement. Capacity: the documented limit of the kind (per VM for azure_lb and gcp_cloud_nat, "
            "measured on the busiest VM).</p>\n" % "\n".join(rows))


def summary_lines(entries):
    """One console line per (egress, destination) at risk (warning or critical)."""
    lines = []
    for e in entries:
        if e["severity"] not in ("warning", "critical"):
            continue
        lines.append("egress %s (%s) -> %s: %s, %s of %s (%s), busiest %s; %s" % (
            e["egress"], e["kind"], e["destination"], e["severity"].upper() if e["severity"] == "critical"
            else e["severity"], _figure(e["in_use"] if e["limit"] == "per_egress" else e["busiest"]["in_use"]),
            capacity_text(e), percent(e["utilisation"]), e["busiest"]["host"], e["sizing"]["sentences"][0]))
    return [" ".join(clean_text(line).split()) for line in lines]
