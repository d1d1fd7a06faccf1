"""linux_conntrack (ctnetlink requests and parser) and linux_nat (egress keys, the table) on captured bytes.

The fixtures conntrack_*.bin were captured from Linux 6.18 by fixtures/capture_conntrack.py (see fixtures/README.md):
a router namespace masquerading 10.231.1.11 (6 open connections, 4 closed: TIME_WAIT) and 10.231.1.12 (3 open) to
10.231.2.1, all to 10.231.2.2:8080; conntrack_L.txt and conntrack_S.txt are ``conntrack -L``/``-S`` of the same
table, taken right after.  Other cases are built with ``message()`` below, in the kernel's layout.
"""

from __future__ import annotations

import socket
import struct
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from ansible_collections.tcpstack.tuning.plugins.module_utils import linux_conntrack as ct
from ansible_collections.tcpstack.tuning.plugins.module_utils import linux_nat
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_conntrack import ConntrackError, Entry

FIXTURES = Path(__file__).resolve().parent / "fixtures"
FUZZ = settings(derandomize=True, max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
little_endian_only = pytest.mark.skipif(struct.pack("=H", 1) != b"\x01\x00",
                                        reason="the fixtures are from a little-endian host")


def fixture(name):
    return (FIXTURES / name).read_bytes()


# ---------------------------------------------------------------- building messages as the kernel does
def attr(kind, payload, nested=False):
    flag = ct._NESTED if nested else 0  # pylint: disable=protected-access
    data = struct.pack("=HH", 4 + len(payload), kind | flag) + payload
    return data + b"\0" * (-len(data) % 4)


def tuple_attr(kind, family, src, dst, protocol, sport, dport):
    size = 4 if family == socket.AF_INET else 16
    first = ct.CTA_IP_V4_SRC if size == 4 else ct.CTA_IP_V6_SRC
    ip = attr(first, socket.inet_pton(family, src)) + attr(first + 1, socket.inet_pton(family, dst))
    assert len(socket.inet_pton(family, src)) == size
    proto = attr(ct.CTA_PROTO_NUM, bytes([protocol]))
    if sport is not None:  # ICMP: no ports
        proto += attr(ct.CTA_PROTO_SRC_PORT, struct.pack(">H", sport))
        proto += attr(ct.CTA_PROTO_DST_PORT, struct.pack(">H", dport))
    return attr(kind, attr(ct.CTA_TUPLE_IP, ip, True) + attr(ct.CTA_TUPLE_PROTO, proto, True), True)


def message(kind, family, payload, seq=1):
    body = struct.pack("=BBH", family, 0, 0) + payload
    return struct.pack("=IHHII", 16 + len(body), kind, 2, seq, 0) + body


def entry_message(orig, reply, status, tcp_state=None, family=socket.AF_INET, protocol=6):
    """orig/reply: (src, dst, sport, dport)."""
    payload = (tuple_attr(ct.CTA_TUPLE_ORIG, family, orig[0], orig[1], protocol, orig[2], orig[3])
               + tuple_attr(ct.CTA_TUPLE_REPLY, family, reply[0], reply[1], protocol, reply[2], reply[3])
               + attr(ct.CTA_STATUS, struct.pack(">I", status)) + attr(7, struct.pack(">I", 120)))
    if tcp_state is not None:
        tcp = attr(ct.CTA_PROTOINFO_TCP_STATE, bytes([tcp_state])) + attr(2, b"\x07")
        payload += attr(ct.CTA_PROTOINFO, attr(ct.CTA_PROTOINFO_TCP, tcp, True), True)
    return message(ct.CT_NEW, family, payload)


DONE = struct.pack("=IHHIIi", 20, ct.NLMSG_DONE, 2, 1, 0, 0)


def error(code):
    return struct.pack("=IHHIIi", 36, ct.NLMSG_ERROR, 0, 1, 0, -code) + b"\0" * 16


def parse_all(data):
    out = []
    done = ct.parse_entries(data, out)
    return out, done


# ---------------------------------------------------------------- requests
def test_requests_are_the_ctnetlink_headers():
    assert ct.dump_request() == struct.pack("=IHHIIBBH", 20, 0x0101, 0x301, 1, 0, 0, 0, 0)
    assert ct.dump_request(socket.AF_INET6, seq=7) == struct.pack("=IHHIIBBH", 20, 0x0101, 0x301, 7, 0, 10, 0, 0)
    assert ct.stats_cpu_request(2) == struct.pack("=IHHIIBBH", 20, 0x0104, 0x301, 2, 0, 0, 0, 0)
    assert ct.stats_request(3) == struct.pack("=IHHIIBBH", 20, 0x0105, 0x5, 3, 0, 0, 0, 0)
    with pytest.raises(ValueError):
        ct.dump_request(7)


# ---------------------------------------------------------------- the captured table
def conntrack_l():
    """{(src, dst, sport, dport, reply_src, reply_dst, reply_sport, reply_dport): state} from conntrack_L.txt."""
    out = {}
    for line in (FIXTURES / "conntrack_L.txt").read_text().splitlines():
        words = line.split()
        values = [word.split("=", 1)[1] for word in words if word.split("=", 1)[0] in ("src", "dst", "sport", "dport")]
        out[tuple(int(v) if v.isdigit() else v for v in values[:8])] = words[3]
    return out


@little_endian_only
def test_captured_dump_parses_as_conntrack_lists_it():
    entries, done = parse_all(fixture("conntrack_dump.bin"))
    assert done is True
    got = {(socket.inet_ntoa(e.src), socket.inet_ntoa(e.dst), e.sport, e.dport, socket.inet_ntoa(e.reply_src),
            socket.inet_ntoa(e.reply_dst), e.reply_sport, e.reply_dport): ct.tcp_state_name(e.tcp_state)
           for e in entries}
    assert got == conntrack_l() and len(entries) == 13
    assert all(e.family == socket.AF_INET and e.protocol == 6 and e.status & ct.IPS_SRC_NAT for e in entries)


@little_endian_only
def test_captured_dump_gives_one_egress_key_with_its_sources():
    tally = linux_nat.EgressTally()
    consume = tally.consumer()
    assert consume(fixture("conntrack_dump.bin")) is True
    (egress,) = tally.egress()
    assert egress == linux_nat.Egress("10.231.2.1", "10.231.2.2", 8080, "tcp", 13, 9, 4,
                                      (linux_nat.Source("10.231.1.11", 10, 6), linux_nat.Source("10.231.1.12", 3, 3)), 2)
    assert (tally.entries, tally.snat_entries) == (13, 13)


@little_endian_only
def test_captured_statistics_and_count():
    totals, stats = {}, {}
    assert ct.parse_stats_cpu(fixture("conntrack_stats_cpu.bin"), totals) is True
    assert ct.parse_stats(fixture("conntrack_stats.bin"), stats) is True
    expected = {}
    for line in (FIXTURES / "conntrack_S.txt").read_text().splitlines():
        for word in line.split()[1:]:
            name, value = word.split("=")
            expected[name] = expected.get(name, 0) + int(value)
    expected["chain_toolong"] = expected.pop("chaintoolong")
    assert totals == dict(expected, cpus=2)
    assert stats == {"count": 13, "max": 262144}
    table = linux_nat.table_summary(stats, totals)
    assert table.utilisation == 13 / 262144 and table.cpus == 2 and table.counters["insert_failed"] == 0


# ---------------------------------------------------------------- built cases
def test_snat_rules_dnat_and_plain_entries():
    """Source NAT by the status bit or by the reply going elsewhere; DNAT-only and plain entries are not counted;
    the destination is where the flow really goes (the reply's source, after DNAT)."""
    data = b"".join([
        entry_message(("10.0.0.5", "192.0.2.9", 40000, 443), ("192.0.2.9", "198.51.100.1", 443, 40000),
                      ct.IPS_SRC_NAT, ct.TCP_TIME_WAIT),
        entry_message(("10.0.0.6", "192.0.2.9", 40001, 443), ("192.0.2.9", "198.51.100.1", 443, 1024), 0, 3),
        entry_message(("10.0.0.7", "10.96.0.10", 40002, 53), ("10.244.1.3", "198.51.100.1", 53, 40002),
                      ct.IPS_SRC_NAT | ct.IPS_DST_NAT, None, protocol=17),
        entry_message(("203.0.113.4", "10.96.0.1", 5555, 80), ("10.244.1.9", "203.0.113.4", 80, 5555),
                      ct.IPS_DST_NAT, 3),
        entry_message(("10.0.0.8", "10.0.0.1", 5000, 22), ("10.0.0.1", "10.0.0.8", 22, 5000), 0, 3),
        DONE])
    tally = linux_nat.EgressTally()
    assert tally.consumer()(data) is True
    assert (tally.entries, tally.snat_entries) == (5, 3)
    tcp, udp = tally.egress()
    assert tcp[:7] == ("198.51.100.1", "192.0.2.9", 443, "tcp", 2, 1, 1)
    assert udp[:7] == ("198.51.100.1", "10.244.1.3", 53, "udp", 1, 1, 0)
    assert [source.address for source in tcp.sources] == ["10.0.0.5", "10.0.0.6"]


def test_ipv6_entry():
    data = entry_message(("fd00::5", "2001:db8::9", 40000, 443), ("2001:db8::9", "2001:db8:1::1", 443, 31000),
                         ct.IPS_SRC_NAT, 3, family=socket.AF_INET6) + DONE
    (entry,), done = parse_all(data)
    assert done and entry == Entry(socket.AF_INET6, 6, socket.inet_pton(socket.AF_INET6, "fd00::5"),
                                   socket.inet_pton(socket.AF_INET6, "2001:db8::9"), 40000, 443,
                                   socket.inet_pton(socket.AF_INET6, "2001:db8::9"),
                                   socket.inet_pton(socket.AF_INET6, "2001:db8:1::1"), 443, 31000, ct.IPS_SRC_NAT, 3)
    tally = linux_nat.EgressTally()
    tally.add([entry])
    assert tally.egress()[0][:3] == ("2001:db8:1::1", "2001:db8::9", 443)


def test_busiest_first_capped_with_the_total_kept():
    entries = []
    for index in range(30):
        for source in range(index + 1):
            entries.append(Entry(2, 6, bytes([10, 0, 0, source]), bytes([192, 0, 2, index]), 1000 + source, 80,
                                 bytes([192, 0, 2, index]), bytes([198, 51, 100, 1]), 80, 1000 + source,
                                 ct.IPS_SRC_NAT, 3))
    tally = linux_nat.EgressTally()
    tally.add(entries)
    egress = tally.egress(top=5, top_sources=3)
    assert [item.in_use for item in egress] == [30, 29, 28, 27, 26] and len(tally.keys) == 30
    assert len(egress[0].sources) == 3 and egress[0].sources_total == 30


def test_kernel_refusal_says_root_is_needed():
    with pytest.raises(ConntrackError, match="Operation not permitted.*CAP_NET_ADMIN"):
        ct.parse_entries(error(1), [])
    assert ct.parse_stats(error(0), {}) is True  # the ack


def test_table_summary_near_full():
    stats = {}
    payload = attr(ct.CTA_STATS_GLOBAL_ENTRIES, struct.pack(">I", 262144)) + attr(2, struct.pack(">I", 262144))
    assert ct.parse_stats(message(ct.CT_GET_STATS, 0, payload) + error(0), stats) is True
    counters = {}
    cpu = b"".join(attr(number, struct.pack(">I", value)) for number, value in ((9, 7), (10, 1500), (11, 3), (14, 2)))
    assert ct.parse_stats_cpu(message(ct.CT_GET_STATS_CPU, 0, cpu) * 2 + DONE, counters) is True
    table = linux_nat.table_summary(stats, counters)
    assert table.utilisation == 1.0
    assert (table.counters["insert_failed"], table.counters["drop"], table.counters["early_drop"],
            table.counters["clash_resolve"], table.cpus) == (14, 3000, 6, 4, 2)


def test_layouts_off_the_fast_path_parse_the_same(monkeypatch):
    """Without NLA_F_NESTED (as older kernels sent), attributes in another order, or no ports (ICMP): the walk."""
    orig, reply = ("10.0.0.5", "192.0.2.9", 40000, 443), ("192.0.2.9", "198.51.100.1", 443, 1024)
    fast, done = parse_all(entry_message(orig, reply, ct.IPS_SRC_NAT, 3) + DONE)
    monkeypatch.setattr(ct, "_NESTED", 0)
    flat = entry_message(orig, reply, ct.IPS_SRC_NAT, 3)
    monkeypatch.setattr(ct, "_NESTED", 0x8000)
    assert parse_all(flat + DONE) == (fast, True)
    state_last = message(ct.CT_NEW, 2, tuple_attr(1, 2, *orig[:2], 6, *orig[2:])
                         + tuple_attr(2, 2, *reply[:2], 6, *reply[2:])
                         + attr(3, struct.pack(">I", ct.IPS_SRC_NAT))
                         + attr(4, attr(1, attr(2, b"\x07") + attr(ct.CTA_PROTOINFO_TCP_STATE, b"\x03"), True), True))
    assert parse_all(state_last + DONE) == (fast, True)
    icmp_message = entry_message(("10.0.0.5", "192.0.2.9", None, None), ("192.0.2.9", "198.51.100.1", None, None),
                                 ct.IPS_SRC_NAT, protocol=1)
    (icmp,), done = parse_all(icmp_message + DONE)
    assert (icmp.protocol, icmp.sport, icmp.reply_dport, icmp.tcp_state) == (1, 0, 0, None)


def test_buffer_without_done_is_not_the_end():
    entries, done = parse_all(entry_message(("10.0.0.5", "192.0.2.9", 1, 2), ("192.0.2.9", "10.0.0.1", 2, 1), 0, 3))
    assert done is False and len(entries) == 1


@pytest.mark.parametrize("data, words", [
    (b"\x01\x02", "less than a header"),
    (struct.pack("=IHHII", 400, ct.CT_NEW, 2, 1, 0), "length 400"),
    (struct.pack("=IHHII", 18, ct.CT_NEW, 2, 1, 0) + b"\0\0", "less than its headers"),
    (message(ct.CT_NEW, 2, attr(ct.CTA_STATUS, b"\0\0")), "status: 2 bytes"),
    (message(ct.CT_NEW, 2, struct.pack("=HH", 40, 1) + b"\0" * 8), "attribute: length 40"),
    (message(ct.CT_NEW, 2, attr(ct.CTA_TUPLE_ORIG, attr(ct.CTA_TUPLE_IP, attr(1, b"\1\2\3"), True), True)),
     "address: 3 bytes"),
    (message(ct.CT_NEW, 2, attr(ct.CTA_TUPLE_ORIG, attr(ct.CTA_TUPLE_PROTO, attr(2, b"\1"), True), True)), "port"),
    (message(ct.CT_NEW, 2, attr(ct.CTA_STATUS, b"\0\0\0\0")), "no original tuple"),
    (struct.pack("=IHHII", 17, ct.NLMSG_ERROR, 0, 1, 0) + b"\0", "an error message of 17 bytes"),
])
def test_malformed_input_is_the_modules_error(data, words):
    with pytest.raises(ConntrackError, match=words):
        ct.parse_entries(data, [])


@little_endian_only
def test_every_truncation_of_the_capture_is_refused_or_a_whole_prefix():
    data = fixture("conntrack_dump.bin")
    boundaries, pos = set(), 0
    while pos < len(data):
        boundaries.add(pos)
        pos += struct.unpack_from("=I", data, pos)[0]
    for cut in range(len(data)):
        if cut in boundaries:
            entries, done = parse_all(data[:cut])
            assert done is False
        else:
            with pytest.raises(ConntrackError):
                parse_all(data[:cut])


@FUZZ
@given(hs.binary(max_size=600))
def test_fuzz_random_bytes_only_the_modules_error(data):
    for parse, out in ((ct.parse_entries, []), (ct.parse_stats_cpu, {}), (ct.parse_stats, {})):
        try:
            parse(data, out)
        except ConntrackError:
            pass


@little_endian_only
@FUZZ
@given(hs.lists(hs.tuples(hs.integers(0, 2775), hs.integers(0, 255)), max_size=8), hs.integers(0, 2776))
def test_fuzz_mutated_capture_only_the_modules_error(changes, cut):
    data = bytearray(fixture("conntrack_dump.bin"))
    for offset, value in changes:
        data[offset] = value
    tally = linux_nat.EgressTally()
    try:
        tally.consumer()(bytes(data[:cut]))
        tally.egress()
    except ConntrackError:
        pass


def test_parsing_is_linear():
    """Four times the entries take about four times the work (CPU time, generous bounds)."""
    one = b"".join(entry_message(("10.0.0.%d" % (i % 200), "192.0.2.9", 1000 + i, 443),
                                 ("192.0.2.9", "198.51.100.1", 443, 1000 + i), ct.IPS_SRC_NAT, 3) for i in range(5000))

    def cost(data):
        started = time.process_time()
        tally = linux_nat.EgressTally()
        tally.consumer()(data)
        return time.process_time() - started, tally.entries

    small, count = cost(one)
    large, count4 = cost(one * 4)
    assert (count, count4) == (5000, 20000)
    assert large < 8 * small + 0.05


class CapturedHost:
    """LinuxHost.netlink_dump answered with the captured replies, by the request's message type."""

    def __init__(self):
        self.calls = []

    def netlink_dump(self, protocol, dumps, timeout, label, error):
        self.calls.append((protocol, label, error))
        replies = {ct.CT_GET: "conntrack_dump.bin", ct.CT_GET_STATS_CPU: "conntrack_stats_cpu.bin",
                   ct.CT_GET_STATS: "conntrack_stats.bin"}
        for request, consume in dumps:
            assert consume(fixture(replies[struct.unpack_from("=H", request, 4)[0]])) is True


@little_endian_only
def test_read_nat_on_the_captured_replies():
    host = CapturedHost()
    reading = linux_nat.read_nat(host, top=5)
    assert host.calls == [(ct.NETLINK_NETFILTER, "netlink ctnetlink", ConntrackError)]
    assert (reading.entries, reading.snat_entries, reading.egress_total) == (13, 13, 1)
    assert reading.table.count == 13 and reading.table.max == 262144
    as_dict = linux_nat.as_dict(reading)
    assert as_dict["egress"][0]["sources"] == [{"address": "10.231.1.11", "in_use": 10, "live": 6, "new": None},
                                               {"address": "10.231.1.12", "in_use": 3, "live": 3, "new": None}]
    assert as_dict["table"]["counters"]["drop"] == 0 and as_dict["egress"][0]["closing"] == 4


@little_endian_only
def test_new_flows_are_those_not_in_the_table_at_the_start():
    known = linux_nat.read_flows(CapturedHost())
    assert len(known) == 13
    assert linux_nat.read_flows(CapturedHost(), limit=12) is None  # too many to remember: no rate, not a guess
    first = sorted(known)[:5]  # five flows of the start still there at the end: the other 8 are new
    reading = linux_nat.read_nat(CapturedHost(), top=5, known=set(first))
    (egress,) = reading.egress
    assert egress.new == 8 and sum(source.new for source in egress.sources) == 8
    assert linux_nat.read_nat(CapturedHost(), top=5, known=known).egress[0].new == 0
