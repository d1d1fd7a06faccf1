# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Source NAT on a Linux host, from its conntrack table: the translated ports in use per egress key.

A source-NATed flow holds one translated port per (translated address, destination address, destination port,
protocol): the kernel keeps the reply tuples unique, and a reply tuple is (destination, destination port,
translated address, translated port).  So each egress key can hold as many flows at once as the translated
port range has ports.  From a ctnetlink dump (linux_conntrack) this module counts, per egress key:

- ``in_use``: the entries holding a translated port, split into ``live`` and ``closing`` (TCP TIME_WAIT or
  CLOSE: checked on Linux 6.18, a new flow takes over a port held only by such an entry; docs/nat.md);
- ``sources``: the inner (original source) addresses with their entry counts.

An entry is source-NATed when its status has IPS_SRC_NAT or its reply goes to another address than the one
that sent the original (the reply tuple's destination is not the original source).  The destination is the
reply tuple's source (where the flow really goes, after any destination NAT).

Plus the table: its entry count against nf_conntrack_max, and the kernel's counters summed over the CPUs.
Pure: read_nat asks LinuxHost.netlink_dump for the bytes.
"""

from __future__ import annotations

import socket
from typing import NamedTuple, Optional, Tuple

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_conntrack import (
    IPS_SRC_NAT,
    NETLINK_NETFILTER,
    TCP_CLOSE,
    TCP_TIME_WAIT,
    ConntrackError,
    dump_request,
    parse_entries,
    parse_stats,
    parse_stats_cpu,
    stats_cpu_request,
    stats_request,
)

PROTOCOLS = {1: "icmp", 6: "tcp", 17: "udp", 33: "dccp", 58: "ipv6-icmp", 132: "sctp", 136: "udplite"}
COUNTERS = ("insert_failed", "drop", "early_drop", "clash_resolve", "insert", "invalid", "error", "search_restart",
            "found", "chain_toolong")
TOP = 20
TOP_SOURCES = 10
FLOWS_MAX = 500000  # source-NATed flows remembered from the start of a sample, at most (new flows are counted)


class Source(NamedTuple):
    """An inner address behind an egress key and how many of its entries hold a translated port there."""

    address: str
    in_use: int
    live: int = 0
    new: Optional[int] = None  # flows not in the table at the start of the sample; None without one


class Egress(NamedTuple):
    """One egress key: (translated address, destination address, destination port, protocol) and its use."""

    translated: str
    destination: str
    port: int
    protocol: str
    in_use: int
    live: int
    closing: int
    sources: Tuple[Source, ...]
    sources_total: int
    new: Optional[int] = None  # flows not in the table at the start of the sample; None without one


class Table(NamedTuple):
    """The namespace's conntrack table: entries, the (global) maximum, their ratio, the counters over all CPUs."""

    count: Optional[int]
    max: Optional[int]
    utilisation: Optional[float]
    counters: dict
    cpus: int


class NatReading(NamedTuple):
    """What read_nat found: the entries dumped, those source-NATed, the busiest egress keys (at most ``top``, of
    ``egress_total``) and the table."""

    entries: int
    snat_entries: int
    egress: Tuple[Egress, ...]
    egress_total: int
    table: Table


def flow_id(entry):
    """A flow's identity: its original tuple (family, protocol, source, source port, destination, port)."""
    return (entry.family, entry.protocol, entry.src, entry.sport, entry.dst, entry.dport)


def is_snat(entry):
    return bool(entry.status & IPS_SRC_NAT) or entry.reply_dst != entry.src


class EgressTally:
    """Counts the entries of a table dump, per egress key; add() takes the Entries of one received buffer.

    ``known``: the flow_id()s of the source-NATed flows at the start of a sample (read_flows()): an entry not
    among them is a new flow, counted per key and per source (``new``)."""

    def __init__(self, known=None):
        self.entries = 0
        self.snat_entries = 0
        self.known = known
        # (family, protocol, translated, destination, port) -> [in_use, closing, {source: [n, live, new]}, new]
        self.keys = {}

    def add(self, batch):
        keys = self.keys
        snat = 0
        known = self.known
        for entry in batch:
            if not is_snat(entry):
                continue
            snat += 1
            key = (entry.family, entry.protocol, entry.reply_dst, entry.reply_src, entry.reply_sport)
            have = keys.get(key)
            if have is None:
                have = keys[key] = [0, 0, {}, 0]
            have[0] += 1
            closing = entry.tcp_state == TCP_TIME_WAIT or entry.tcp_state == TCP_CLOSE
            if closing:
                have[1] += 1
            counts = have[2].get(entry.src)
            if counts is None:
                counts = have[2][entry.src] = [0, 0, 0]
            counts[0] += 1
            if not closing:
                counts[1] += 1
            if known is not None and flow_id(entry) not in known:
                counts[2] += 1
                have[3] += 1
        self.entries += len(batch)
        self.snat_entries += snat

    def consumer(self):
        """A LinuxHost.netlink_dump consumer: parse each buffer, count its entries; True when the dump is done."""
        batch = []

        def consume(buf):
            del batch[:]
            done = parse_entries(buf, batch)
            self.add(batch)
            return done

        return consume

    def egress(self, top=TOP, top_sources=TOP_SOURCES, live=False):
        """The egress keys, busiest first (then by address), at most ``top`` of them, as Egress records.

        Busiest: the most entries, or with ``live`` the most live entries (not TIME_WAIT or CLOSE); the sources
        are ranked the same way."""
        if live:
            ranked = sorted(self.keys.items(), key=lambda item: (item[1][1] - item[1][0], item[0]))
        else:
            ranked = sorted(self.keys.items(), key=lambda item: (-item[1][0], item[0]))
        return tuple(_egress(key, counts, top_sources, live, self.known is not None)
                     for key, counts in ranked[:top])


def address_text(family, packed):
    """An address as text; the packed bytes in hex when they are not an address of ``family``."""
    try:
        return socket.inet_ntop(family, packed)
    except (ValueError, OSError):
        return packed.hex()


def _egress(key, counts, top_sources, live=False, sampled=False):
    family, protocol, translated, destination, port = key
    in_use, closing, sources, new = counts
    which = 1 if live else 0
    ranked = sorted(sources.items(), key=lambda item: (-item[1][which], -item[1][0], item[0]))
    return Egress(address_text(family, translated), address_text(family, destination), port,
                  PROTOCOLS.get(protocol, str(protocol)), in_use, in_use - closing, closing,
                  tuple(Source(address_text(family, address), count[0], count[1], count[2] if sampled else None)
                        for address, count in ranked[:top_sources]),
                  len(sources), new if sampled else None)


def table_summary(stats, counters):
    """A Table from parse_stats' {count, max} and parse_stats_cpu's totals."""
    count, maximum = stats.get("count"), stats.get("max")
    utilisation = count / maximum if count is not None and maximum else None
    return Table(count, maximum, utilisation, {name: counters.get(name, 0) for name in COUNTERS},
                 counters.get("cpus", 0))


def read_nat(host, top=TOP, top_sources=TOP_SOURCES, timeout=10.0, live=False, known=None):
    """Dump the conntrack table of the host's network namespace over ctnetlink and count it: a NatReading
    (``live``: rank the egress keys and their sources by their live entries; EgressTally.egress; ``known``:
    the flows of read_flows() at the start of a sample, for the new flows).

    Raises ConntrackError, saying why (no CAP_NET_ADMIN, no netfilter, a malformed message, too slow).
    """
    stats, counters = {}, {}
    tally = EgressTally(known)
    host.netlink_dump(NETLINK_NETFILTER, [
        (stats_request(1), lambda buf: parse_stats(buf, stats)),
        (dump_request(seq=2), tally.consumer()),
        (stats_cpu_request(3), lambda buf: parse_stats_cpu(buf, counters)),
    ], timeout, "netlink ctnetlink", ConntrackError)
    return NatReading(tally.entries, tally.snat_entries, tally.egress(top, top_sources, live), len(tally.keys),
                      table_summary(stats, counters))


def read_flows(host, timeout=10.0, limit=FLOWS_MAX):
    """The flow_id()s of the source-NATed flows in the table now (a set), or None when there are more than
    ``limit``: the start of a sample, against which read_nat counts the new flows.  Raises ConntrackError."""
    flows = set()
    batch = []
    over = []

    def consume(buf):
        del batch[:]
        done = parse_entries(buf, batch)
        if not over:
            flows.update(flow_id(entry) for entry in batch if is_snat(entry))
            if len(flows) > limit:
                over.append(True)
                flows.clear()  # too many to remember: the memory is given back at once
        return done

    host.netlink_dump(NETLINK_NETFILTER, [(dump_request(seq=1), consume)], timeout, "netlink ctnetlink",
                      ConntrackError)
    return None if over else flows


def read_counters(host, timeout=5.0):
    """The table's counters summed over the CPUs, over ctnetlink ({name: int}, with ``cpus``): the start of a
    sample.  Raises ConntrackError."""
    counters = {}
    host.netlink_dump(NETLINK_NETFILTER, [(stats_cpu_request(1), lambda buf: parse_stats_cpu(buf, counters))],
                      timeout, "netlink ctnetlink", ConntrackError)
    return counters


def as_dict(reading):
    """A NatReading as plain dicts and lists (JSON)."""
    table = reading.table._asdict()
    egress = []
    for item in reading.egress:
        record = item._asdict()
        record["sources"] = [source._asdict() for source in item.sources]
        egress.append(record)
    return {"entries": reading.entries, "snat_entries": reading.snat_entries, "egress": egress,
            "egress_total": reading.egress_total, "table": table}
