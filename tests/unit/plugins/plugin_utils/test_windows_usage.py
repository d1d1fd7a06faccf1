"""windows_usage: win_port_usage_info's analysis of simulated hosts (quiet, exhausted, excluded, legacy), in-process."""

from __future__ import annotations

import pytest

from ansible_collections.tcpstack.tuning.plugins.plugin_utils import fleet_report
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import windows_usage as u
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import (
    InfoOptions,
    IpVersion,
    Protocol,
    validate_win_tcp,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import WindowsHost

from tests.support.windows_sim.connection import InProcessConnection, simulated_host
from tests.support.windows_sim.host import WindowsHost as SimHost

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


def brief(processes):
    return [{key: proc[key] for key in ("pid", "name", "ports_held", "time_wait")} for proc in processes]


class TestAnalysis:
    def test_quiet(self):
        r = analyse(info_host([("0.0.0.0", 135, "0.0.0.0", 0, "Listen", 784),
                               ("10.0.0.5", 50001, "10.0.0.9", 443, "Established", 3100)]))
        assert r["verdict"] == "ok" and r["recommendations"] == {} and r["ports_held"] == 1
        assert brief(r["processes"]) == [{"pid": 3100, "name": "w3wp", "ports_held": 1, "time_wait": 0}]
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
        assert brief(r["processes"]) == [{"pid": 3100, "name": "w3wp", "ports_held": 15000, "time_wait": 15000}]

    def test_excluded_and_listening_ports_are_not_held(self):
        rows = [("10.0.0.5", 50000 + i, "10.0.0.9", 443, "Established", 3100) for i in range(10)]
        rows += [("0.0.0.0", 50001, "0.0.0.0", 0, "Listen", 4)]
        r = analyse(info_host(rows, excluded={(IP4, TCP): ((50005, 50009, False), (49000, 49160, True))}))
        assert r["ports_held"] == 4  # 50000, 50002-50004: 50001 listens, 50005-50009 are excluded
        assert r["ephemeral"]["reserved"] == "49152-49160,50005-50009" and r["ephemeral"]["usable"] == 16384 - 14
        assert r["excluded_port_ranges"]["ipv4"]["tcp"] == [{"start": 49000, "end": 49160, "administered": True},
                                                            {"start": 50005, "end": 50009, "administered": False}]


# ------------------------------------------------------------------ issue 15: the range as Windows really has it
def blocks_host(blocks=0, installer=None, connections=(), language="en-US", profile="server2022"):
    """A host whose WinNAT reserves ``blocks`` blocks of 100 at boot, optionally with an installer-left range."""
    state = {"winnat_blocks": blocks, "installer_range": installer}
    if connections:
        keys = ("LocalAddress", "LocalPort", "RemoteAddress", "RemotePort", "State", "OwningProcess")
        state["connections"] = [dict(zip(keys, row)) for row in connections]
    return SimHost(profile=profile, language=language, host_state=state)


class TestRangeAnalysis:
    def test_free_blocks(self):
        assert u.free_blocks((10, 100), [(20, 29), (5, 12), (95, 200)]) == ((13, 19), (30, 94))
        assert u.free_blocks((10, 100), []) == ((10, 100),)
        assert u.free_blocks((10, 100), [(1, 65535)]) == ()

    @pytest.mark.parametrize("language", ["en-US", "de-DE"])
    def test_administered_and_system_are_split(self, language):
        host = blocks_host(2, language=language)
        host.add_excluded(60000, 60009, administered=True)
        r = analyse(host)
        a = r["dynamic_range_analysis"]["ipv4"]
        assert a["administered"] == [{"start": 60000, "end": 60009}]
        assert a["system"] == [{"start": 49153, "end": 49252}, {"start": 49253, "end": 49352}]
        assert a["usable"] == 16384 - 210
        assert a["largest_free_block"] == {"start": 49353, "end": 59999, "size": 10647}
        assert r["verdict"] == "ok" and r["recommendations"] == {}

    def test_fragmentation_cites_the_reported_figure(self):
        host = blocks_host()
        for start in range(49152 + 3000, 65535 - 100, 3000):  # a block of 100 every 3,000 ports
            host.add_excluded(start, start + 99)
        r = analyse(host)
        largest = r["dynamic_range_analysis"]["ipv4"]["largest_free_block"]
        assert largest["size"] < 4096
        finding = next(f for f in r["findings"] if "fragmented" in f)
        assert "4,096" in finding and "microsoft/WSL#12351" in finding and "not a documented Windows limit" in finding
        assert "largest contiguous free block is %s ports" % "{:,}".format(largest["size"]) in finding
        assert r["verdict"] == "warning"

    @pytest.mark.parametrize("installer, number", [("visual-studio", 64511), ("windows-1024-13977", 13977)])
    def test_installer_range_flagged_with_winnat_blocks_from_1025(self, installer, number):
        r = analyse(blocks_host(3, installer=installer))
        a = r["dynamic_range_analysis"]["ipv4"]
        assert a["installer_range"] is True and a["range"] == {"start": 1024, "end": 1024 + number - 1, "number": number}
        assert a["system"][0] == {"start": 1025, "end": 1124}
        assert any("as installers leave it" in f and "{:,}".format(number) in f for f in r["findings"])
        assert r["recommendations"]["port_range"] == "49152 65535"
        assert validate_win_tcp(r["recommendations"])

    def test_a_listener_inside_a_system_exclusion(self):
        rows = [("0.0.0.0", 49200, "0.0.0.0", 0, "Listen", 3100)]
        host = blocks_host(0, connections=rows)
        host.add_excluded(49153, 49252)  # WinNAT took the block after the service bound its port
        r = analyse(host, service_ports=(49160, 8080))
        text = " ".join(r["findings"])
        assert "port 49200, which a service listens on, lies inside the ipv4 tcp system exclusion 49153-49252" in text
        assert "port 49160, which a service is configured for" in text and "8080" not in text
        assert "WSAEACCES (10013), which is this exclusion, not port exhaustion" in text
        assert r["recommendations"]["excluded_ranges"] == ["49160", "49200"]
        assert validate_win_tcp(r["recommendations"])

    def test_an_administered_exclusion_is_no_finding(self):
        host = blocks_host(0, connections=[("0.0.0.0", 50000, "0.0.0.0", 0, "Listen", 3100)])
        host.add_excluded(50000, 50000, administered=True)
        r = analyse(host, service_ports=(50000,))
        assert r["findings"] == [] and r["recommendations"] == {}

    def test_winnat_blocks_move_after_a_reboot_and_vanish_when_it_stops(self):
        host = blocks_host(2)
        first = analyse(host)["dynamic_range_analysis"]["ipv4"]["system"]
        host.reboot()
        second = analyse(host)["dynamic_range_analysis"]["ipv4"]["system"]
        assert first != second and len(second) == 2
        host.stop_winnat()
        assert analyse(host)["dynamic_range_analysis"]["ipv4"]["system"] == []


def test_the_fleet_report_shows_the_range_findings_of_a_windows_host():
    """Issue 15 item 3: the findings and recommendations flow through fleet_report unchanged (no Windows code there)."""
    host = blocks_host(1, installer="visual-studio")
    host.add_connection("0.0.0.0", 1100, "0.0.0.0", 0, "Listen", 3100)  # bound after WinNAT took 1025-1124
    row = fleet_report.host_row("win1", "windows", analyse(host))
    assert any("as installers leave it" in f for f in row["findings"])
    assert any("WSAEACCES (10013)" in f for f in row["findings"])
    assert row["recommendations"] == {"port_range": "49152 65535", "excluded_ranges": ["1100"]}
    report = fleet_report.build_report([row], "now")
    markdown = fleet_report.render_markdown(report)
    assert "excluded\\_ranges: \\[&quot;1100&quot;\\]" in markdown or "excluded\\_ranges: \\[\"1100\"\\]" in markdown
    assert "as installers leave it" in fleet_report.render_html(report)
