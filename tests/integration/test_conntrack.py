"""ctnetlink on the real kernel: a router namespace that source-NATs clients to a server (nftables, iptables-nft).

Each test builds its own three namespaces (tests/integration/nat_lab.py); traffic never leaves them, and every
client loop is bounded in count and time.  The facts docs/nat.md states about this kernel are the tests named
there.  Root, iproute2, nft, iptables-nft and conntrack are needed: locally the tests skip without them, under
CI=true they fail.
"""

from __future__ import annotations

import shutil
import sys
import time

import pytest

from tests.integration.nat_lab import (
    CLIENT_IPS,
    ROUTER_OUTSIDE,
    SERVER_IP,
    SERVER_PORT,
    NatLab,
    conntrack_lines,
    parse_conntrack_line,
)
from tests.support import traffic
from tests.support.ci import need, need_root_netns


@pytest.fixture
def nat_tools():
    need_root_netns()
    for tool, package in (("nft", "nftables"), ("iptables-nft", "iptables"), ("conntrack", "conntrack")):
        need(shutil.which(tool) is not None, "needs %s (Debian package %s; tools/hostdeps.py)" % (tool, package))


def egress_counts(lines):
    """{(translated, destination, port): (in_use, {source: count})} from ``conntrack -L`` lines of NATed flows."""
    out = {}
    for line in lines:
        dummy, dummy, orig, reply = parse_conntrack_line(line)
        if reply["dst"] == orig["src"]:
            continue
        key = (reply["dst"], reply["src"], int(reply["sport"]))
        count, sources = out.get(key, (0, {}))
        sources[orig["src"]] = sources.get(orig["src"], 0) + 1
        out[key] = (count + 1, sources)
    return out


def read_both(lab):
    """The router's table read by linux_nat and by ``conntrack -L``, one right after the other."""
    reading = lab.read_nat()
    return reading, conntrack_lines(lab.router, "-p", "tcp")


def assert_matches_conntrack(reading, lines):
    """in_use per egress key and the sources within 2% of ``conntrack -L``'s count of the same table."""
    expected = egress_counts(lines)
    got = {(item["translated"], item["destination"], item["port"]): item for item in reading["egress"]}
    assert set(got) == set(expected)
    for key, (count, sources) in expected.items():
        assert abs(got[key]["in_use"] - count) <= max(1, 0.02 * count), (key, got[key], count)
        for source in got[key]["sources"]:
            assert abs(source["in_use"] - sources[source["address"]]) <= max(1, 0.02 * count)


def test_nft_masquerade_in_use_and_sources_match_conntrack(nat_tools):
    with NatLab(rule="nft") as lab:
        lab.server_echo()
        dummy, first = lab.hold(CLIENT_IPS[0], 300)
        dummy, second = lab.hold(CLIENT_IPS[1], 100)
        assert first == {"open": 300, "failed": 0} and second == {"open": 100, "failed": 0}
        reading, lines = read_both(lab)
        assert_matches_conntrack(reading, lines)
        (egress,) = reading["egress"]
        assert (egress["translated"], egress["destination"], egress["port"], egress["protocol"]) == (
            ROUTER_OUTSIDE, SERVER_IP, SERVER_PORT, "tcp")
        assert egress["in_use"] == egress["live"] == 400 and egress["closing"] == 0
        shares = {source["address"]: source["in_use"] / egress["in_use"] for source in egress["sources"]}
        assert shares == {CLIENT_IPS[0]: 0.75, CLIENT_IPS[1]: 0.25}
        assert egress["sources_total"] == 2 and reading["egress_total"] == 1
        table = reading["table"]
        assert table["count"] == reading["entries"] == 400 and table["max"] == 262144  # the global value
        assert table["utilisation"] == pytest.approx(400 / 262144)


def test_iptables_to_ports_translated_ports_fall_inside(nat_tools):
    with NatLab(rule="iptables", ports=(20000, 20999)) as lab:
        lab.server_echo()
        for source in CLIENT_IPS:
            dummy, got = lab.hold(source, 200)
            assert got == {"open": 200, "failed": 0}
        reading, lines = read_both(lab)
        assert_matches_conntrack(reading, lines)
        translated = [int(parse_conntrack_line(line)[3]["dport"]) for line in lines]
        assert len(translated) == 400 and len(set(translated)) == 400
        assert all(20000 <= port <= 20999 for port in translated)
        assert reading["egress"][0]["in_use"] == 400


# BIND_PAIRS SOURCES PORT0 COUNT ADDRESS PORT SECONDS: from every source address, connect from source ports
# PORT0..PORT0+COUNT-1 (the same ports from each address), hold, print {"open": n}, wait SECONDS or stdin.
BIND_PAIRS = r"""
import json, select, socket, sys
sources, port0, count, address, port, seconds = sys.argv[1].split(","), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
held = []
for local in range(port0, port0 + count):
    for source in sources:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.settimeout(3.0)
        sock.bind((source, local))
        try:
            sock.connect((address, port))
            held.append(sock)
        except OSError:
            sock.close()
print(json.dumps({"open": len(held)}), flush=True)
select.select([sys.stdin], [], [], seconds)
"""


def test_default_range_remaps_a_clash_into_1024_65535(nat_tools):
    """Without a port range the translated port is the original one unless taken; then one from 1024-65535."""
    with NatLab(rule="nft") as lab:
        lab.server_echo()
        child = lab.clients.start([sys.executable, "-c", BIND_PAIRS, ",".join(CLIENT_IPS), "40000", "100", SERVER_IP,
                                   str(SERVER_PORT), "60"])
        assert child.stdout.readline().strip() == '{"open": 200}'
        kept, remapped = [], []
        for line in conntrack_lines(lab.router, "-p", "tcp"):
            dummy, dummy, orig, reply = parse_conntrack_line(line)
            (kept if orig["sport"] == reply["dport"] else remapped).append(int(reply["dport"]))
        # one of each pair keeps its port; rarely both lose it, when an earlier remap landed on it (100 in 64,512)
        assert len(set(kept + remapped)) == len(kept) + len(remapped) == 200
        assert 95 <= len(kept) <= 100 and set(kept) <= set(range(40000, 40100))
        assert all(1024 <= port <= 65535 for port in remapped)
        assert max(remapped) - min(remapped) > 20000  # spread over the range, not next to the original


def test_time_wait_entries_are_taken_over_by_new_flows(nat_tools):
    """Through 1,000 translated ports, 3,000 short sequential connections all succeed (Linux 6.18)."""
    with NatLab(rule="nft", ports=(20000, 20999)) as lab:
        lab.server_accept()
        done = lab.clients.exec(traffic.program("connect", SERVER_IP, SERVER_PORT, "--attempts", 3000, "--seconds", 60),
                                timeout=90)
        counts = traffic_json(done.stdout)
        assert counts["made"] == 3000 and counts["other"] == 0 and counts["eaddrnotavail"] == 0, counts
        reading = lab.read_nat()
        (egress,) = reading["egress"]
        assert egress["in_use"] <= 1000 and egress["closing"] >= egress["in_use"] - 5


def traffic_json(stdout):
    import json  # pylint: disable=import-outside-toplevel
    return json.loads(stdout.strip().splitlines()[-1])


def test_concurrent_flows_beyond_the_range_time_out(nat_tools):
    """1,000 translated ports hold at most 1,000 live connections to one destination; the rest time out.

    Near the end of the range a few connects can time out with a port or two still free: each SYN makes the
    kernel probe at most 128 + 64 + 32 + 16 ports (docs/nat.md), and in 15 s a SYN is sent 4 or 5 times.
    """
    with NatLab(rule="nft", ports=(20000, 20999)) as lab:
        lab.server_echo()
        dummy, got = lab.hold(CLIENT_IPS[0], 1010, timeout=15.0)
        assert 990 <= got["open"] <= 1000 and got["failed"] == 1010 - got["open"], got
        reading, lines = read_both(lab)
        assert_matches_conntrack(reading, lines)
        (egress,) = reading["egress"]
        assert egress["live"] == egress["in_use"] == got["open"]
        translated = {int(parse_conntrack_line(line)[3]["dport"]) for line in lines}
        assert len(translated) == got["open"] and translated <= set(range(20000, 21000))
        # every SYN the kernel could not translate was dropped at insertion: both counters rise
        counters = reading["table"]["counters"]
        assert counters["insert_failed"] >= got["failed"] and counters["drop"] >= got["failed"], counters


def test_conntrack_max_is_global_and_time_wait_per_namespace(nat_tools):
    with NatLab(rule="nft") as lab:
        with open("/proc/sys/net/netfilter/nf_conntrack_max") as handle:
            machine = handle.read().strip()
        with open("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait") as handle:
            machine_time_wait = handle.read().strip()
        assert lab.router.sysctl("net.netfilter.nf_conntrack_max") == machine
        refused = lab.router.exec(["sh", "-c", "echo 1000 > /proc/sys/net/netfilter/nf_conntrack_max"], check=False)
        assert refused.returncode != 0 and "Permission denied" in refused.stderr
        assert lab.router.set_sysctl("net.netfilter.nf_conntrack_tcp_timeout_time_wait", 30) == "30"
        with open("/proc/sys/net/netfilter/nf_conntrack_tcp_timeout_time_wait") as handle:
            assert handle.read().strip() == machine_time_wait


def conntrack_stats(box):
    """{counter: sum over CPUs} from ``conntrack -S`` inside ``box``."""
    totals = {}
    for line in box.exec(["conntrack", "-S"]).stdout.splitlines():
        for word in line.split()[1:]:
            name, dummy, value = word.partition("=")
            totals[name] = totals.get(name, 0) + int(value)
    return totals


def test_statistics_counters_and_count_match_conntrack(nat_tools):
    with NatLab(rule="nft") as lab:
        lab.server_echo()
        dummy, got = lab.hold(CLIENT_IPS[0], 50)
        assert got["open"] == 50
        time.sleep(0.2)
        reading = lab.read_nat()
        expected = conntrack_stats(lab.router)
        counters = reading["table"]["counters"]
        for name in ("found", "invalid", "insert", "insert_failed", "drop", "early_drop", "error", "search_restart",
                     "clash_resolve"):
            assert counters[name] == expected[name], name
        assert counters["chain_toolong"] == expected["chaintoolong"]
        assert reading["table"]["cpus"] >= 1
        count = int(lab.router.exec(["conntrack", "-C"]).stdout.strip())
        assert reading["table"]["count"] == count == 50
