"""windows_usage: win_port_usage_info's analysis of simulated hosts (quiet, exhausted, excluded, legacy), in-process."""

from __future__ import annotations

import pytest

from ansible_collections.tcpstack.tuning.plugins.plugin_utils import windows_usage as u
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import (
    InfoOptions,
    IpVersion,
    Protocol,
    validate_win_tcp,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import WindowsHost

from tests.support.windows_sim.connection import InProcessConnection, simulated_host

IP4, TCP = IpVersion.IPV4, Protocol.TCP


def info_host(connections=(), events=(), registry=None, ranges=None, excluded=None, de=False, nettcpip=True):
    """A simulated host with these connections (w3wp is process 3100) and Tcpip events."""
    return simulated_host(build=20348 if nettcpip else 7601, language="de-DE" if de else "en-US", registry=registry,
                          ranges=ranges, excluded=excluded, connections=connections, processes=[(3100, "w3wp")],
                          events=events)


def analyse(host, **options):
    """win_port_usage_info's result for ``host``: one round trip over the in-process connection."""
    conn = InProcessConnection(host=host)
    result = u.audit(WindowsHost(conn), InfoOptions(**options))
    assert conn.round_trips == 1
    return result


class TestAnalysis:
    def test_quiet(self):
        r = analyse(info_host([("0.0.0.0", 135, "0.0.0.0", 0, "Listen", 784),
                               ("10.0.0.5", 50001, "10.0.0.9", 443, "Established", 3100)]))
        assert r["verdict"] == "ok" and r["recommendations"] == {} and r["ports_held"] == 1
        assert r["processes"] == [{"pid": 3100, "name": "w3wp", "ports_held": 1, "time_wait": 0}]
        assert r["sockets"]["by_state"] == {"Listen": 1, "Established": 1}
        assert r["events"]["4231"] == 0 and r["capacity"]["time_wait_seconds"] == 120

    @pytest.mark.parametrize("de", [False, True])
    def test_exhausted(self, de):
        conns = [("10.0.0.5", p, "10.0.0.9", 443, "TimeWait", 0) for p in range(49152, 49152 + 15000)]
        conns += [("::ffff:10.0.0.5", 1000, "::ffff:10.0.0.7", 80, "Established", 3100)]  # outside the range
        r = analyse(info_host(conns, events=(4231, 4231, 4227), de=de,
                              registry={"TcpTimedWaitDelay": ("REG_DWORD", 60)}), top=1)
        assert r["verdict"] == "critical"
        assert r["ports_held"] == 15000 and r["ports_held_by_family"] == {"ipv4": 15000, "ipv6": 0}
        assert r["destinations"][0]["endpoint"] == "10.0.0.9:443" and len(r["destinations"]) == 1
        assert r["events"]["4231"] == 2 and r["events"]["4227"] == 1
        assert any("logged 2 times" in f for f in r["findings"]) and any("once" in f for f in r["findings"])
        assert r["recommendations"] == {"port_range": "32768 65535", "time_wait_delay": 30}
        assert r["capacity"]["time_wait_seconds"] == 60
        assert validate_win_tcp(r["recommendations"])  # recommendations are valid win_tcp options

    def test_excluded_reduce_usable(self):
        r = analyse(info_host(excluded={(IP4, TCP): ((49152, 65535, True),)}))
        assert r["ephemeral"]["usable"] == 0 and r["verdict"] == "critical"

    def test_no_nettcpip(self):
        r = analyse(info_host(nettcpip=False))
        assert r["sockets"] is None and r["verdict"] == "warning"
        assert r["unreadable"][0]["source"] == "Get-NetTCPConnection"

    def test_wrong_type_time_wait(self):
        r = analyse(info_host(registry={"TcpTimedWaitDelay": ("REG_SZ", "30")}))
        assert r["capacity"]["time_wait_seconds"] == 120 and "ignores" in r["notes"][0]

    def test_host_wide_pool(self):
        """Ten destinations with 1,500 ports each: no tuple is near 16,384, the host-wide pool is (15,000 = 91%)."""
        rows = []
        for n in range(10):
            rows += [("10.0.0.5", 49152 + n * 1500 + i, "10.0.1.%d" % n, 443, "TimeWait", 3100) for i in range(1500)]
        r = analyse(info_host(rows, registry={"TcpTimedWaitDelay": ("REG_DWORD", 120)}))
        assert r["verdict"] == "critical"
        assert r["findings"][0] == ("the host holds 15,000 of 16,384 usable ipv4 dynamic TCP ports (91.5%); on "
                                    "Windows connect() takes them from one host-wide pool")
        assert r["recommendations"] == {"port_range": "32768 65535", "time_wait_delay": 30}
        assert r["processes"] == [{"pid": 3100, "name": "w3wp", "ports_held": 15000, "time_wait": 15000}]

    def test_excluded_and_listening_ports_are_not_held(self):
        rows = [("10.0.0.5", 50000 + i, "10.0.0.9", 443, "Established", 3100) for i in range(10)]
        rows += [("0.0.0.0", 50001, "0.0.0.0", 0, "Listen", 4)]
        r = analyse(info_host(rows, excluded={(IP4, TCP): ((50005, 50009, False), (49000, 49160, True))}))
        assert r["ports_held"] == 4  # 50000, 50002-50004: 50001 listens, 50005-50009 are excluded
        assert r["ephemeral"]["reserved"] == "49152-49160,50005-50009" and r["ephemeral"]["usable"] == 16384 - 14
        assert r["excluded_port_ranges"]["ipv4"]["tcp"] == [{"start": 49000, "end": 49160, "administered": True},
                                                            {"start": 50005, "end": 50009, "administered": False}]
