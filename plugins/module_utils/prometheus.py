# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Prometheus text exposition of a port_usage_info result, for node_exporter's textfile collector.

``render(result, ...)`` turns the result of the Linux audit (the dict the
port_usage_info module returns) into the text format node_exporter serves
(https://prometheus.io/docs/instrumenting/exposition_formats/): HELP and TYPE
lines, base units (seconds, ratios), ``_total`` for counters, a ``tcpstack_``
prefix, and a bounded number of series (``top`` destinations).  The alert rules
shipped with the port_monitor role read the host's own range and thresholds
from these series, never a hard-coded figure.

Pure functions, standard library only (this runs on the monitored host, Python 3.9+).
"""

from __future__ import annotations

import math

VERDICT_VALUE = {"ok": 0, "warning": 1, "critical": 2}
# settings exported as tcpstack_setting{sysctl=...}: the result's name -> the sysctl
SETTINGS = (
    ("fin_timeout", "net.ipv4.tcp_fin_timeout"),
    ("tw_reuse", "net.ipv4.tcp_tw_reuse"),
    ("tw_reuse_delay", "net.ipv4.tcp_tw_reuse_delay"),
    ("timestamps", "net.ipv4.tcp_timestamps"),
    ("somaxconn", "net.core.somaxconn"),
    ("max_syn_backlog", "net.ipv4.tcp_max_syn_backlog"),
    ("max_tw_buckets", "net.ipv4.tcp_max_tw_buckets"),
    ("unprivileged_port_start", "net.ipv4.ip_unprivileged_port_start"),
)
# kernel counters (TcpExt / Tcp, since the network namespace started) -> metric, help
COUNTERS = (
    ("ListenOverflows", "tcpstack_listen_overflows_total",
     "Times a listener's accept queue was full (TcpExt ListenOverflows)."),
    ("ListenDrops", "tcpstack_listen_drops_total", "SYNs dropped at a listener (TcpExt ListenDrops)."),
    ("TCPTimeWaitOverflow", "tcpstack_time_wait_overflow_total",
     "Connections closed without TIME_WAIT because tcp_max_tw_buckets was reached (TcpExt TCPTimeWaitOverflow)."),
    ("ActiveOpens", "tcpstack_active_opens_total", "Outgoing connections started (Tcp ActiveOpens)."),
    ("AttemptFails", "tcpstack_attempt_fails_total", "Connection attempts that failed (Tcp AttemptFails)."),
)
# Windows TCP states (Get-NetTCPConnection) -> the Linux names the series use, so that one query reads both
WINDOWS_STATES = {
    "Established": "ESTABLISHED", "TimeWait": "TIME_WAIT", "Listen": "LISTEN", "CloseWait": "CLOSE_WAIT",
    "FinWait1": "FIN_WAIT1", "FinWait2": "FIN_WAIT2", "SynSent": "SYN_SENT", "SynReceived": "SYN_RECV",
    "LastAck": "LAST_ACK", "Closing": "CLOSING", "Closed": "CLOSE", "Bound": "BOUND", "DeleteTCB": "DELETE_TCB",
}
WINDOWS_EVENTS = ("4227", "4231")  # Tcpip events win_port_usage_info counts (result key "events")
# the nat section's conntrack counters (the kernel's, summed over the CPUs, since the network namespace's table was
# created: conntrack -S) -> metric, help
CONNTRACK_COUNTERS = (
    ("insert_failed", "tcpstack_conntrack_insert_failed_total",
     "Flows that could not enter the conntrack table, their packet dropped: no free translated port, or two flows "
     "raced for one (conntrack -S insert_failed, summed over the CPUs)."),
    ("drop", "tcpstack_conntrack_drop_total",
     "Packets conntrack dropped: a failed insert or a full table (conntrack -S drop, summed over the CPUs)."),
    ("early_drop", "tcpstack_conntrack_early_drop_total",
     "Entries evicted to make room in a full table (conntrack -S early_drop, summed over the CPUs)."),
    ("clash_resolve", "tcpstack_conntrack_clash_resolve_total",
     "Races of two flows for one entry the kernel resolved without a drop (conntrack -S clash_resolve, summed "
     "over the CPUs)."),
)


def _escape(value):
    """A label value as the text format wants it: backslash, double quote and newline escaped."""
    return str(value).replace("\\", "\\\\").replace("\"", "\\\"").replace("\n", "\\n")


def _sample_value(value):
    """A sample's value as the text format writes it: 1/0 for a bool, NaN, +Inf, -Inf."""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
        return repr(value)
    return str(int(value))


class _Family:
    """One metric family: its HELP and TYPE lines and its samples."""

    def __init__(self, name, kind, text, common=None):
        self.name, self.kind, self.text = name, kind, text
        self.common = dict(common or {})  # labels every sample of this family carries (render(labels=...))
        self.samples = []

    def add(self, value, **labels):
        if value is None:
            return
        self.samples.append((dict(self.common, **labels), value))

    def lines(self):
        out = ["# HELP %s %s" % (self.name, self.text), "# TYPE %s %s" % (self.name, self.kind)]
        for labels, value in self.samples:
            label_text = ",".join('%s="%s"' % (k, _escape(v)) for k, v in sorted(labels.items()))
            out.append("%s%s %s" % (self.name, "{%s}" % label_text if label_text else "", _sample_value(value)))
        return out


def gauge(name, text, value, labels=None):
    """One gauge family as text (HELP, TYPE, one sample with ``labels``), for a series render() does not write."""
    family = _Family(name, "gauge", text, labels)
    family.add(value)
    return "\n".join(family.lines()) + "\n"


def _process_labels(proc):
    """A process's labels: its name, user and systemd unit (no pid: a pid per series would not stay bounded)."""
    # a process whose name could not be read (gone before it was seen, or unreadable) is "unknown", not ""
    return (("process", proc.get("name") or "unknown"), ("user", proc.get("user") or ""),
            ("unit", proc.get("unit") or ""))


def _processes(result, top, family):
    """The busiest processes, when the audit attributed the ports to processes (result key "processes").

    Processes with the same name, user and unit (workers of one service) are
    added up, so that every series is unique; at most ``top`` series.
    """
    procs = result.get("processes")
    if not isinstance(procs, list):
        return
    held, rates = {}, {}
    for proc in procs:
        if not isinstance(proc, dict):
            continue
        labels = _process_labels(proc)
        if labels not in held and len(held) >= top:
            continue
        held[labels] = held.get(labels, 0) + (proc.get("ports_held") or 0)
        per_second = proc.get("new_connections_per_second")
        if per_second is not None:
            rates[labels] = rates.get(labels, 0.0) + float(per_second)
    ports = family("tcpstack_process_ports_held", "gauge",
                   "Ephemeral ports held by the busiest processes (the top N), by process name, user and unit.")
    for labels, value in held.items():
        ports.add(value, **dict(labels))
    churn = family("tcpstack_process_new_connections_per_second", "gauge",
                   "New connections per second of the busiest processes, measured over the sampler's process "
                   "sample (the top churners first).")
    for labels, value in rates.items():
        churn.add(value, **dict(labels))
    family("tcpstack_process_attribution_sample_seconds", "gauge",
           "How long the last process sample measured the rates of new connections.").add(
               (result.get("attribution") or {}).get("sampled_seconds"))


class _Families(list):
    """The metric families of one textfile, in the order they are declared; ``common``: labels of every sample."""

    def __init__(self, common=None):
        super().__init__()
        self.common = dict(common or {})

    def __call__(self, name, kind, text):
        made = _Family(name, kind, text, self.common)
        self.append(made)
        return made

    def text(self):
        lines = []
        for made in self:
            if made.samples:
                lines.extend(made.lines())
        return "\n".join(lines) + "\n"


def _ephemeral(result, family):
    ephemeral = result.get("ephemeral") or {}
    low_high = ephemeral.get("range") or (None, None)
    family("tcpstack_ephemeral_port_range_low", "gauge",
           "First port of the ephemeral range (net.ipv4.ip_local_port_range).").add(low_high[0])
    family("tcpstack_ephemeral_port_range_high", "gauge",
           "Last port of the ephemeral range (net.ipv4.ip_local_port_range).").add(low_high[1])
    family("tcpstack_ephemeral_ports_reserved", "gauge",
           "Ports of the ephemeral range kept out of it by net.ipv4.ip_local_reserved_ports.").add(
               ephemeral.get("reserved_in_range"))
    family("tcpstack_ephemeral_ports_usable", "gauge",
           "Ephemeral ports connect() can take towards one destination tuple.").add(ephemeral.get("usable"))
    family("tcpstack_ephemeral_ports_held", "gauge",
           "Ephemeral ports held by sockets of this host, all destinations together.").add(result.get("ports_held"))


def _settings_and_sockets(result, family):
    settings = result.get("settings") or {}
    setting = family("tcpstack_setting", "gauge", "A TCP sysctl in force, by name.")
    for name, sysctl in SETTINGS:
        if isinstance(settings.get(name), int) and not isinstance(settings.get(name), bool):
            setting.add(settings[name], sysctl=sysctl)
    sockets = result.get("sockets") or {}
    by_state = family("tcpstack_sockets", "gauge", "TCP sockets by state, IPv4 and IPv6 together.")
    states = dict((WINDOWS_STATES.get(state, state), count) for state, count in (sockets.get("by_state") or {}).items())
    for state, count in sorted(states.items()):
        by_state.add(count, state=state)
    time_wait = states.get("TIME_WAIT", 0) if sockets else None
    family("tcpstack_time_wait_sockets", "gauge", "TCP sockets in TIME_WAIT.").add(time_wait)


def _destinations(result, top, family):
    in_use = family("tcpstack_destination_ports_in_use", "gauge",
                    "Ports held on a destination's busiest (local address, remote address, remote port) tuple.")
    tw = family("tcpstack_destination_ports_time_wait", "gauge",
                "Of those, ports in TIME_WAIT.")
    blocking = family("tcpstack_destination_ports_blocking", "gauge",
                      "Of those, ports connect() cannot take (TIME_WAIT ports are free when tcp_tw_reuse applies).")
    ratio = family("tcpstack_destination_utilisation_ratio", "gauge",
                   "Blocking ports over usable ports on a destination's busiest tuple, 0 to 1.")
    entered = family("tcpstack_destination_time_wait_entered_per_second", "gauge",
                     "New connections per second towards a destination that left a TIME_WAIT on this host (this "
                     "end closed first), over the last seconds the TIME_WAIT timers of one dump cover.")
    projected = family("tcpstack_destination_projected_utilisation_ratio", "gauge",
                       "What that rate holds in steady state (rate x the seconds a closed port stays held) over "
                       "the usable ports; the verdict is critical from the critical threshold on (above 1: connect() "
                       "will fail).")
    for dest in (result.get("destinations") or [])[:top]:
        labels = {"destination": dest.get("endpoint"), "local_address": dest.get("busiest_local_address") or ""}
        in_use.add(dest.get("busiest_in_use"), **labels)
        tw.add(dest.get("busiest_time_wait"), **labels)
        blocking.add(dest.get("blocking"), **labels)
        ratio.add(dest.get("utilisation"), **labels)
        entered.add(dest.get("time_wait_entered_per_second"), **labels)
        projected.add(dest.get("projected_utilisation"), **labels)


def _judgement(result, family):
    """Capacity, the kernel's counters, the thresholds and the verdict."""
    capacity = result.get("capacity") or {}
    most = family("tcpstack_capacity_new_connections_per_second", "gauge",
                  "Sustainable new connections per second to one destination tuple (usable ports / hold time).")
    for scope in ("remote", "loopback"):
        most.add((capacity.get(scope) or {}).get("max_new_connections_per_second"), scope=scope)
    family("tcpstack_time_wait_entered_per_second", "gauge",
           "New connections per second, all destinations together, that left a TIME_WAIT on this host: what "
           "the capacity is set against.").add(capacity.get("time_wait_entered_per_second"))
    values = (result.get("counters") or {}).get("values") or {}
    for key, name, text in COUNTERS:
        family(name, "counter", text).add(values.get(key))
    thresholds = result.get("thresholds") or {}
    for level in ("warning", "critical"):
        threshold = thresholds.get(level + "_percent")
        family("tcpstack_%s_utilisation_ratio" % level, "gauge",
               "The audit's %s threshold for a destination's utilisation, 0 to 1." % level).add(
                   None if threshold is None else threshold / 100.0)
    family("tcpstack_verdict", "gauge", "The audit's verdict: 0 ok, 1 warning, 2 critical.").add(
        VERDICT_VALUE.get(result.get("verdict")))


def _windows_events(result, family):
    """Windows: the Tcpip events 4227/4231 counted over the audit's window (result key "events").

    A count over a sliding window is a gauge, not a counter: it falls as old events leave the window.
    """
    events = result.get("events")
    if not isinstance(events, dict):
        return
    counted = family("tcpstack_windows_tcpip_events", "gauge",
                     "Tcpip events in the System log within the audit's window (tcpstack_windows_tcpip_events_window"
                     "_seconds), by event id: 4227 a connect failed because the local endpoint was recently used, "
                     "4231 no ephemeral port could be allocated. A count over a sliding window, not a counter.")
    for event_id in WINDOWS_EVENTS:
        value = events.get(event_id)
        if isinstance(value, int) and not isinstance(value, bool):
            counted.add(value, event_id=event_id)
    hours = events.get("hours")
    family("tcpstack_windows_tcpip_events_window_seconds", "gauge",
           "How far back the Tcpip events are counted, in seconds.").add(
               hours * 3600 if counted.samples and isinstance(hours, int) and not isinstance(hours, bool) else None)
    family("tcpstack_windows_tcpip_events_capped", "gauge",
           "1 when the events read were capped, so the counts are at least these.").add(
               bool(events.get("capped")) if counted.samples else None)


def _egress_labels(entry):
    """An egress key's labels: the translated address, the destination (address:port, an IPv6 address in
    brackets, as tcpstack_destination_* write it) and the protocol."""
    address = str(entry.get("destination") or "")
    where = ("[%s]" % address) if ":" in address else address
    port = entry.get("port")
    return {"translated": entry.get("translated") or "", "protocol": entry.get("protocol") or "",
            "destination": "%s:%s" % (where, port) if port is not None else where}


def _nat(result, top, family):
    """The nat section of a host that source-NATs (result key "nat"): the conntrack table, its counters, the
    busiest ``top`` egress keys and the NAT verdict.  A host without the section gets none of these series."""
    nat = result.get("nat")
    if not isinstance(nat, dict):
        return
    table = nat.get("conntrack") if isinstance(nat.get("conntrack"), dict) else {}
    family("tcpstack_conntrack_entries", "gauge",
           "Entries in the conntrack table of this network namespace (nf_conntrack_count).").add(table.get("count"))
    family("tcpstack_conntrack_max", "gauge",
           "Size of the conntrack table (net.netfilter.nf_conntrack_max, global to the host).").add(table.get("max"))
    family("tcpstack_conntrack_utilisation_ratio", "gauge",
           "Conntrack entries over nf_conntrack_max, 0 to 1: when full the kernel drops new flows.").add(
               table.get("utilisation"))
    counters = table.get("counters") if isinstance(table.get("counters"), dict) else {}
    for key, name, text in CONNTRACK_COUNTERS:
        family(name, "counter", text).add(counters.get(key))
    in_use = family("tcpstack_nat_egress_in_use", "gauge",
                    "Translated ports in use on an egress key (translated address, destination, protocol): the "
                    "flows that count against its range (live flows on Linux 6.18 and later).")
    capacity = family("tcpstack_nat_egress_capacity", "gauge",
                      "Translated ports an egress key can use: the port range of the rule that translates to the "
                      "address, or the kernel's 64512 (1024-65535).")
    ratio = family("tcpstack_nat_egress_utilisation_ratio", "gauge",
                   "Translated ports in use over the egress key's capacity, 0 to 1 (the busiest keys, top N).")
    time_wait = family("tcpstack_nat_egress_time_wait", "gauge",
                       "Conntrack entries of an egress key in TCP TIME_WAIT or CLOSE.")
    egress = nat.get("egress") if isinstance(nat.get("egress"), list) else []
    for entry in [item for item in egress if isinstance(item, dict)][:top]:
        labels = _egress_labels(entry)
        in_use.add(entry.get("in_use"), **labels)
        capacity.add(entry.get("capacity"), **labels)
        ratio.add(entry.get("utilisation"), **labels)
        time_wait.add(entry.get("time_wait"), **labels)
    family("tcpstack_nat_egress_keys", "gauge",
           "Egress keys (translated address, destination, protocol) in the conntrack table; the busiest top N "
           "have series.").add(nat.get("egress_total"))
    family("tcpstack_nat_verdict", "gauge",
           "The NAT part of the audit's verdict (it counts in tcpstack_verdict): 0 ok, 1 warning, 2 critical.").add(
               VERDICT_VALUE.get(nat.get("verdict")))


def render(result, top=5, duration_seconds=None, timestamp=None, interval_seconds=None, labels=None):
    """The textfile for ``result`` (a port_usage_info or win_port_usage_info result); text ending in a newline.

    ``top`` bounds the destination, process and NAT egress series; ``duration_seconds``, ``timestamp``
    (Unix time of this successful run) and ``interval_seconds`` describe the
    sampler itself (or the scheduled audit that wrote the result).  ``labels``
    ({name: value}) are added to every sample, escaped like every label value
    (port_audit's metrics: ``instance`` and ``tcpstack_source``).
    """
    family = _Families(labels)
    _ephemeral(result, family)
    _settings_and_sockets(result, family)
    _destinations(result, top, family)
    _processes(result, top, family)
    _judgement(result, family)
    _nat(result, top, family)
    _windows_events(result, family)
    family("tcpstack_sampler_duration_seconds", "gauge", "How long the last sample took.").add(duration_seconds)
    family("tcpstack_sampler_last_success_timestamp_seconds", "gauge",
           "Unix time of the last sample written.").add(timestamp)
    family("tcpstack_sampler_interval_seconds", "gauge", "How often the sampler runs.").add(interval_seconds)
    return family.text()
