"""nat_sources: who is behind a NAT source, from the tables of /proc/PID/net (data/proc_net_capture.txt, captured on
Linux 6.18), and nat_usage.who_is_behind on a host of network namespaces."""

from __future__ import annotations

from pathlib import Path

from ansible_collections.tcpstack.tuning.plugins.module_utils import nat_usage
from ansible_collections.tcpstack.tuning.plugins.module_utils.nat_findings import source_text
from ansible_collections.tcpstack.tuning.plugins.module_utils.nat_sources import (
    annotate,
    parse_fib_trie,
    parse_if_inet6,
    sockets_to,
)

PARTS = [part.strip("\n") for part in
         (Path(__file__).resolve().parent / "data" / "proc_net_capture.txt").read_text().split("=====")]
FIB_TRIE = "\n".join(line for line in PARTS[0].splitlines() if not line.startswith("#"))
IF_INET6, TCP, TCP6 = PARTS[1], PARTS[2], PARTS[3]


def test_local_addresses_of_a_namespace():
    assert parse_fib_trie(FIB_TRIE) == {"10.233.0.11"}  # not the network, broadcast or loopback entries
    assert parse_if_inet6(IF_INET6) == {"fd33::11"}  # not ::1, not the link-local fe80::
    assert parse_fib_trie("") == set() and parse_if_inet6("zz\n" + "f" * 31 + " 01\n") == set()


def test_sockets_to_a_destination_v4_v6_and_v4_mapped():
    assert sockets_to(TCP, {("127.0.0.1", 8080)}) == {("127.0.0.1", "127.0.0.1", 8080): [38002424]}
    assert sockets_to(TCP6, {("::1", 8080)}) == {("::1", "::1", 8080): [38007409]}
    # ::ffff:127.0.0.1 on both ends
    assert sockets_to(TCP6, {("127.0.0.1", 58212)}) == {("127.0.0.1", "127.0.0.1", 58212): [38007413]}
    assert sockets_to(TCP, {("10.0.0.1", 80)}) == {}
    assert sockets_to("header\n  0: zz:zz yy:yy 01 a b c d e 5\n short line\n", {("10.0.0.1", 80)}) == {}


def egress():
    return [{"destination": "10.9.0.2", "port": 8080, "sources": [
        {"address": "10.233.0.11", "in_use": 30, "time_wait": 0, "share": 0.75},
        {"address": "10.233.9.9", "in_use": 10, "time_wait": 0, "share": 0.25}]}]


def test_annotate_names_the_namespace_and_its_processes():
    info = {"netns": "net:[7]", "pid": 42, "name": "pause", "container": "0123456789ab", "unit": None}
    owners = {("net:[7]", "10.233.0.11", "10.9.0.2", 8080): [(43, "python3", 30)]}
    entries = annotate(egress(), {"10.233.0.11": info}, owners)
    first, second = entries[0]["sources"]
    assert first["namespace"] == info and first["processes"] == [{"pid": 43, "name": "python3", "sockets": 30}]
    assert second["namespace"] is None and second["processes"] == []
    assert source_text(first) == "10.233.0.11 (75%, container 0123456789ab, pid 43 (python3))"
    assert source_text(second) == "10.233.9.9 (25%)"
    plain = annotate(egress(), {"10.233.0.11": dict(info, container=None)})[0]["sources"][0]
    assert "processes" not in plain
    assert source_text(plain) == "10.233.0.11 (75%, network namespace of pid 42 (pause))"


class Proc:
    def __init__(self, tables):
        self.tables = tables

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def read_net(self, name):
        if name not in self.tables:
            raise OSError(2, "absent")
        return self.tables[name].encode()


# the captured layout, a connection from 10.233.0.11:40000 to 127.0.0.1:8080 (inode 555)
CLIENT_LINE = ("\n   3: 0B00E90A:9C40 0100007F:1F90 01 00000000:00000000 00:00000000 00000000     0        0 555 1 "
               "0000000000000000 20 0 0 10 -1")


class NamespacesHost:
    """Three processes in the audited namespace, two (pids 40, 41) in a client namespace with the captured tables."""

    def __init__(self):
        self.netns = {1: "net:[1]", 2: "net:[1]", 40: "net:[7]", 41: "net:[7]"}
        self.reads = []

    def pids(self):
        return [41, 2, 40, 1, 99]  # 99: gone

    def net_namespace(self, pid=None):
        if pid is None:
            return "net:[1]"
        if pid not in self.netns:
            raise OSError(2, "gone")
        return self.netns[pid]

    def process_dir(self, pid):
        self.reads.append(pid)
        return Proc({"fib_trie": FIB_TRIE, "if_inet6": IF_INET6, "tcp": TCP + CLIENT_LINE, "tcp6": ""})


class Processes:
    def __init__(self):
        self.scanned = []

    def identify(self, pid):
        return {"pid": pid, "name": "pause", "container": "0123456789ab", "unit": None}

    def scan(self, pids):
        self.scanned.append(list(pids))

    def owner(self, inode):
        return {555: 41, 38002424: 40}.get(inode)

    def describe(self, pid):
        return {"pid": pid, "name": "client"}


def test_who_is_behind_reads_each_other_namespace_once_through_its_lowest_pid():
    host, processes = NamespacesHost(), Processes()
    entries = [{"destination": "127.0.0.1", "port": 8080, "sources": [
        {"address": "10.233.0.11", "in_use": 1, "time_wait": 0, "share": 1.0}]}]
    nat_usage.who_is_behind(host, processes)(entries)
    source = entries[0]["sources"][0]
    assert source["namespace"] == {"netns": "net:[7]", "pid": 40, "name": "pause", "container": "0123456789ab",
                                   "unit": None}
    assert source["processes"] == [{"pid": 41, "name": "client", "sockets": 1}]
    assert processes.scanned == [[40, 41]] and set(host.reads) == {40}  # never the audited namespace's own


def test_without_attribution_no_process_is_named_and_nothing_fails_without_tables():
    host = NamespacesHost()
    host.process_dir = lambda pid: Proc({})
    entries = egress()
    nat_usage.who_is_behind(host, None)(entries)
    assert [source["namespace"] for source in entries[0]["sources"]] == [None, None]
    assert all("processes" not in source for source in entries[0]["sources"])


def test_flow_rates_by_littles_law():
    from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_nat import Egress
    from ansible_collections.tcpstack.tuning.plugins.module_utils.nat_findings import flow_rates
    item = Egress("192.0.2.1", "198.51.100.2", 443, "tcp", 500, 500, 0, (), 1, new=100)
    # 500 ports held at 50 new flows/s: each flow holds its port 10 s; 1,000 ports sustain 100/s
    assert flow_rates(item, 1000, 500, 2.0) == (50.0, 100.0)
    assert flow_rates(item, 1000, 0, 2.0) == (50.0, None)  # nothing held: no lifetime to divide by
    assert flow_rates(item, 1000, 500, None) == (None, None)  # no sample
    assert flow_rates(item._replace(new=None), 1000, 500, 2.0) == (None, None)  # the start was not read
    assert flow_rates(item._replace(new=0), 1000, 500, 2.0) == (0.0, None)
