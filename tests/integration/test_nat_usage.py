"""port_usage_info's nat section on the real kernel: the module, run by ansible-playbook inside a router namespace
that source-NATs clients to a server (nftables, iptables-nft), against ``conntrack -L`` of the same table.

Each test builds its own three namespaces (tests/integration/nat_lab.py); traffic never leaves them.  The clients
hold their connections open for the whole test, so the table does not move between the module's read and
``conntrack -L``.  Every client is bounded in count and time; everything is deleted at teardown.  Root, iproute2,
nft, iptables-nft and conntrack are needed: locally the tests skip without them, under CI=true they fail.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.nat_lab import (
    CLIENT_IPS,
    ROUTER_OUTSIDE,
    SERVER_IP,
    SERVER_PORT,
    NatLab,
    conntrack_lines,
    need_nat_tools,
)
from tests.integration.test_conntrack import egress_counts

EGRESS = "%s -> %s:%d/tcp" % (ROUTER_OUTSIDE, SERVER_IP, SERVER_PORT)


@pytest.fixture
def nat_tools():
    need_nat_tools(("iptables-nft", "iptables"), ("iptables-nft-save", "iptables"))


def the_egress(result):
    """The nat section's only egress key, checked to be the lab's."""
    (egress,) = result["nat"]["egress"]
    assert (egress["translated"], egress["destination"], egress["port"], egress["protocol"]) == (
        ROUTER_OUTSIDE, SERVER_IP, SERVER_PORT, "tcp")
    return egress


def assert_like_conntrack(lab, egress):
    """in_use and each source's count within 2% of ``conntrack -L`` of the router's table, read right after."""
    counted = list(egress_counts(conntrack_lines(lab.router, "-p", "tcp")).values())
    assert len(counted) == 1, counted
    count, sources = counted[0]
    assert abs(egress["in_use"] - count) <= max(1, 0.02 * count), (egress, count)
    for source in egress["sources"]:
        assert abs(source["in_use"] - sources[source["address"]]) <= max(1, 0.02 * count), (source, sources)


def test_nft_masquerade_range_sources_and_shares(nat_tools):
    with NatLab(rule="nft", ports=(20000, 20999)) as lab:
        lab.server_echo(seconds=300)
        holder, first = lab.hold(CLIENT_IPS[0], 300, seconds=300)
        other, second = lab.hold(CLIENT_IPS[1], 100, seconds=300)
        assert first == {"open": 300, "failed": 0} and second == {"open": 100, "failed": 0}
        result = lab.port_usage_info(top=5)
        nat = result["nat"]
        egress = the_egress(result)
        assert_like_conntrack(lab, egress)
        assert (egress["in_use"], egress["live"], egress["time_wait"]) == (400, 400, 0)
        assert (egress["capacity"], egress["port_range"]) == (1000, [20000, 20999])
        assert egress["capacity_source"] == "nftables"
        assert egress["utilisation"] == 0.4 and egress["verdict"] == "ok" and nat["verdict"] == "ok"
        assert [(s["address"], s["in_use"], s["share"]) for s in egress["sources"]] == [
            (CLIENT_IPS[0], 300, 0.75), (CLIENT_IPS[1], 100, 0.25)]
        # both sources are addresses of the clients' namespace; each names the process holding its connections
        namespaces = [source["namespace"] for source in egress["sources"]]
        assert namespaces[0] == namespaces[1] and namespaces[0]["pid"] == min(holder.pid, other.pid)
        assert namespaces[0]["netns"] == "net:[%d]" % os.stat("/run/netns/" + lab.clients.name).st_ino
        name = Path("/proc/%d/comm" % holder.pid).read_text().strip()
        assert [source["processes"] for source in egress["sources"]] == [
            [{"pid": holder.pid, "name": name, "sockets": 300}], [{"pid": other.pid, "name": name, "sockets": 100}]]
        finding_free = lab.port_usage_info(top=5, attribution=False)["nat"]["egress"][0]["sources"][0]
        assert finding_free["namespace"] == namespaces[0] and "processes" not in finding_free
        assert nat["rules"] == [{"kind": "masquerade", "addresses": [], "ports": [20000, 20999],
                                 "fully_random": False, "source": "nftables"}]
        assert nat["source"] == "ctnetlink" and nat["snat_entries"] >= 400
        assert nat["conntrack"]["count"] >= 400 and nat["conntrack"]["max"] > 0
        assert nat["conntrack"]["per_second"] is None and nat["notes"]
        assert not [text for text in result["findings"] if text.startswith("NAT egress")]
        # the server's namespace does not source-NAT: no section there
        assert "nat" not in lab.port_usage_info(box=lab.server, top=5)
        # 20 new flows a second from the second client (each held open): over a sample, the new flows per second
        # of the key and of that source, and the rate the range sustains by Little's law
        lab.knock(CLIENT_IPS[1], rate=20, seconds=120)
        sampled = the_egress(lab.port_usage_info(top=5, sample_seconds=3))
        rates = {s["address"]: s["new_flows_per_second"] for s in sampled["sources"]}
        assert 12 <= sampled["new_flows_per_second"] <= 22 and rates[CLIENT_IPS[0]] == 0, sampled
        assert rates[CLIENT_IPS[1]] == sampled["new_flows_per_second"], sampled
        assert sampled["max_new_flows_per_second"] == round(
            1000 * sampled["new_flows_per_second"] / sampled["in_use"], 2), sampled


def test_iptables_to_ports_capacity_and_a_warning(nat_tools):
    with NatLab(rule="iptables", ports=(20000, 20199)) as lab:
        lab.server_echo(seconds=300)
        dummy, first = lab.hold(CLIENT_IPS[0], 100, seconds=300)
        dummy, second = lab.hold(CLIENT_IPS[1], 50, seconds=300)
        assert first == {"open": 100, "failed": 0} and second == {"open": 50, "failed": 0}
        result = lab.port_usage_info(top=5, sample_seconds=1)
        egress = the_egress(result)
        assert_like_conntrack(lab, egress)
        assert (egress["capacity"], egress["port_range"]) == (200, [20000, 20199])
        assert egress["capacity_source"] == "iptables-nft"
        assert egress["in_use"] == 150 and egress["utilisation"] == 0.75 and egress["verdict"] == "warning"
        shares = {s["address"]: s["share"] for s in egress["sources"]}
        assert shares == {CLIENT_IPS[0]: 0.6667, CLIENT_IPS[1]: 0.3333}
        assert result["nat"]["verdict"] == "warning" and result["verdict"] in ("warning", "critical")
        assert any(text.startswith("NAT egress " + EGRESS) for text in result["findings"])
        rates = result["nat"]["conntrack"]["per_second"]
        assert set(rates) == {"insert_failed", "drop", "early_drop", "clash_resolve"}
        assert all(value is not None and value >= 0 for value in rates.values())
        assert any("widen the translated port range" in text for text in result["nat"]["recommendations"])


def test_range_runs_out_critical_and_the_egress_named(nat_tools):
    with NatLab(rule="nft", ports=(20000, 20099)) as lab:
        lab.server_echo(seconds=300)
        # 110 connections at once through 100 translated ports: the SYNs that find no port are dropped
        dummy, got = lab.hold(CLIENT_IPS[0], 110, timeout=15.0, seconds=300)
        assert 95 <= got["open"] <= 100 and got["open"] + got["failed"] == 110, got
        result = lab.port_usage_info(top=5)
        egress = the_egress(result)
        assert egress["in_use"] == got["open"] and egress["capacity"] == 100
        assert_like_conntrack(lab, egress)
        assert egress["verdict"] == "critical" and result["nat"]["verdict"] == "critical"
        assert result["verdict"] == "critical"
        finding = next(text for text in result["findings"] if text.startswith("NAT egress " + EGRESS))
        assert "of 100 translated ports" in finding and CLIENT_IPS[0] in finding
        advice = result["nat"]["recommendations"]
        assert any("pool the connections" in text and CLIENT_IPS[0] in text for text in advice)
        # new connects while the range is full: every SYN is dropped at insertion, and the sample sees it
        lab.knock(CLIENT_IPS[1], rate=10, seconds=120)
        sampled = lab.port_usage_info(top=5, sample_seconds=3)
        rates = sampled["nat"]["conntrack"]["per_second"]
        assert rates["insert_failed"] > 0 and rates["drop"] > 0, sampled["nat"]["conntrack"]
        assert any(text.startswith("conntrack insert_failed rose by") for text in sampled["findings"])
        assert any("fully-random" in text for text in sampled["nat"]["recommendations"])
        assert sampled["verdict"] == "critical"
