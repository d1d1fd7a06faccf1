"""win_port_usage_info's per-process view (issue 14 item 3): who holds the ports on a Windows host, the services,
and the OS-neutral pooling finding, on simulated hosts over the in-process connection (one round trip)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.tcpstack.tuning.plugins.module_utils import port_usage
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import fleet_report
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import windows_usage as u
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import InfoOptions
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_parse import parse_services, split_sections
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import WindowsHost

from tests.support.windows_sim.connection import InProcessConnection, simulated_host
from tests.support.windows_sim.host import WindowsHost as SimHost

CHURNER, POOLED, OTHER = 5200, 5300, 5400
SERVER_A, SERVER_B = ("10.0.0.9", 8080), ("10.0.0.10", 5432)

M = "tcpstack-" + "7a" * 16  # the marker of the sections written here


def churn_rows(time_wait=1500, live=2, server=SERVER_A, pid=CHURNER, first=50000, owner=0):
    """A churning client: ``time_wait`` closed connections (OwningProcess ``owner``: 0 as Windows reports TIME_WAIT;
    the pid, as the simulator can print it, for a TIME_WAIT whose owner is known) and ``live`` connections in
    flight, all towards ``server``."""
    rows = [("10.0.0.5", first + i, server[0], server[1], "TimeWait", owner) for i in range(time_wait)]
    rows += [("10.0.0.5", first + time_wait + i, server[0], server[1], "Established", pid) for i in range(live)]
    return rows


def pooled_rows(count=4, server=SERVER_B, pid=POOLED, first=60000):
    """A pooled client: ``count`` keep-alive connections, always open."""
    return [("10.0.0.5", first + i, server[0], server[1], "Established", pid) for i in range(count)]


def audit(rows, services=(), registry=None, top=10):
    host = simulated_host(connections=rows, registry=registry,
                          processes=[(CHURNER, "OrderSync"), (POOLED, "w3wp"), (OTHER, "curl")])
    for pid, name in services:
        host.add_service(name, pid)
    conn = InProcessConnection(host=host)
    result = u.audit(WindowsHost(conn), InfoOptions(top=top))
    assert conn.round_trips == 1
    return result


def by_pid(result):
    return {proc["pid"]: proc for proc in result["processes"]}


class TestPooling:
    def test_the_churner_is_named_with_its_service_and_the_pooled_client_is_not_blamed(self):
        """TIME_WAIT rows that carry the churner's pid: exact evidence, the OS-neutral pooling rule names it."""
        r = audit(churn_rows(owner=CHURNER) + pooled_rows(), services=[(CHURNER, "OrderSyncSvc")])
        pooling = [f for f in r["client_findings"] if f["kind"] == "pooling"]
        assert len(pooling) == 1
        finding = pooling[0]
        assert finding["pid"] == CHURNER and finding["name"] == "OrderSync" and finding["unit"] == "OrderSyncSvc"
        assert finding["destination"] == "10.0.0.9:8080"
        assert finding["new_connections"] == 1500 and finding["new_connections_per_second"] == 12.5  # 1500 / 120 s
        assert finding["established"] == 2 and finding["time_wait"] == 1500 and finding["time_wait_per_established"] == 750
        assert finding["sentence"] == (
            "pid 5200 (OrderSync, unit OrderSyncSvc) opens 12.5 new connections per second to 10.0.0.9:8080 "
            "(1,500 in 120.0 s) and keeps 2 open (1,500 ports in TIME_WAIT, 750 per ESTABLISHED): "
            + port_usage.POOLING_ADVICE)
        assert finding["sentence"] in r["findings"]
        procs = by_pid(r)
        assert procs[POOLED]["time_wait"] == 0 and procs[POOLED]["established"] == 4
        assert procs[POOLED]["new_connections_per_second"] == 0
        assert procs[CHURNER]["time_wait_inferred"] == 0 and procs[CHURNER]["ports_held"] == 1502
        assert procs[CHURNER]["evidence"] == "exact"
        assert r["top_churner"]["pid"] == CHURNER and r["top_churner"]["unit"] == "OrderSyncSvc"
        assert r["top_churner"]["destination"] == "10.0.0.9:8080"
        assert r["cure"]["where"] == "client" and "OrderSync" in r["cure"]["summary"]
        assert r["attribution"]["sampled_seconds"] == 120.0 and r["attribution"]["method"] == "time_wait_window"
        assert r["attribution"]["unattributed"] == []
        dest = next(d for d in r["destinations"] if d["endpoint"] == "10.0.0.9:8080")
        assert dest["processes"][0]["pid"] == CHURNER

    def test_the_rate_follows_tcp_timed_wait_delay(self):
        r = audit(churn_rows(time_wait=600, owner=CHURNER), registry={"TcpTimedWaitDelay": ("REG_DWORD", 30)})
        assert r["client_findings"][0]["new_connections_per_second"] == 20.0 and r["attribution"]["sampled_seconds"] == 30

    def test_a_churner_that_exhausts_the_host_needs_both_cures(self):
        r = audit(churn_rows(time_wait=15000, first=49700, owner=CHURNER) + pooled_rows(first=65000))
        assert r["verdict"] == "critical" and r["cure"]["where"] == "both"
        assert r["recommendations"]["time_wait_delay"] == 30
        finding = r["client_findings"][0]
        assert finding["pid"] == CHURNER and finding["new_connections_per_second"] == 125.0
        assert finding["sentence"] in r["findings"][:3]  # critical: its destination holds 91.5% of the ports
        assert not any(f["pid"] == POOLED for f in r["client_findings"])

    def test_below_the_rate_no_finding(self):
        """599 TIME_WAIT in 120 s is 4.99 per second: under POOLING_MIN_RATE, no finding (the same rule as Linux)."""
        r = audit(churn_rows(time_wait=599, owner=CHURNER))
        assert r["client_findings"] == [] and r["top_churner"]["pid"] == CHURNER
        assert r["cure"]["where"] == "none"

    def test_owner_0_time_wait_given_to_the_only_live_owner_never_blames_it(self):
        """Issue 21: 1,000 TIME_WAIT with OwningProcess 0 (as Windows reports them) and one live w3wp connection
        towards the same destination.  w3wp inherits them as an inferred share: listed, with evidence "inferred",
        but neither a pooling culprit nor the top churner, and the cure does not name it."""
        r = audit(churn_rows(time_wait=1000, live=1, pid=POOLED), services=[(POOLED, "W3SVC")])
        w3wp = by_pid(r)[POOLED]
        assert w3wp["name"] == "w3wp" and w3wp["evidence"] == "inferred"
        assert w3wp["time_wait"] == 1000 and w3wp["time_wait_inferred"] == 1000 and w3wp["established"] == 1
        assert r["client_findings"] == [] and r["top_churner"] is None
        assert "w3wp" not in r["cure"]["summary"] and not any("w3wp" in f for f in r["findings"])

    def test_the_same_keys_as_linux_and_what_windows_cannot_know(self):
        """Windows parity: every process row has the Linux keys; start time, spawned children and failed connects
        are None (not guessed), and attribution.unavailable says why."""
        r = audit(churn_rows(owner=CHURNER) + pooled_rows())
        for proc in r["processes"]:
            assert proc["start_time"] is None and proc["spawned"] is None and proc["failed_connections"] is None
            assert proc["failed_connections_per_second"] is None and proc["evidence"] == "exact"
        assert set(r["attribution"]["unavailable"]) == {"spawned", "failed_connections_per_second"}
        assert all(isinstance(reason, str) and reason for reason in r["attribution"]["unavailable"].values())

    def test_hostile_process_and_service_names_are_cleaned(self):
        """ESC, C0/C1 controls and a bidi override in a ProcessName or a service name reach neither the result nor
        the findings: they are shown escaped."""
        host = simulated_host(connections=churn_rows(owner=OTHER, pid=OTHER), processes=[(OTHER, "ev\x1b[2Jil\u202egpj.exe")])
        host.add_service("Svc\x07\x9b\u2066x", OTHER)
        r = u.audit(WindowsHost(InProcessConnection(host=host)), InfoOptions())
        proc = by_pid(r)[OTHER]
        assert proc["name"] == "ev\\x1b[2Jil\\u202egpj.exe" and proc["unit"] == "Svc\\x07\\x9b\\u2066x"
        texts = list(r["findings"]) + [value for row in r["client_findings"] + r["processes"] for value in row.values()
                                       if isinstance(value, str)]
        assert "ev\\x1b[2Jil\\u202egpj.exe" in " ".join(texts)
        assert all(char.isprintable() for text in texts for char in text)

    def test_many_open_is_not_pooling(self):
        """1,500 TIME_WAIT with 200 kept open: fewer than 10 TIME_WAIT per ESTABLISHED, no finding."""
        r = audit(churn_rows(time_wait=1500, live=200))
        assert r["client_findings"] == []

    def test_two_live_owners_share_nothing_they_were_not_seen_holding(self):
        """TIME_WAIT towards a destination two processes hold: no owner can be told, it stays unattributed."""
        rows = churn_rows() + pooled_rows(server=SERVER_A)
        r = audit(rows)
        assert r["client_findings"] == []
        assert by_pid(r)[POOLED]["time_wait"] == 0 and by_pid(r)[CHURNER]["time_wait"] == 0
        assert r["attribution"]["unattributed"] == [
            {"endpoint": "10.0.0.9:8080", "in_use": 1500, "time_wait": 1500, "new_connections": 1500}]
        assert r["top_churner"] is None

    def test_no_live_owner_stays_unattributed(self):
        r = audit(churn_rows(live=0))
        assert r["processes"] == [] and r["client_findings"] == [] and r["top_churner"] is None
        assert r["attribution"]["unattributed"][0]["time_wait"] == 1500

    def test_a_shared_svchost_names_every_service(self):
        r = audit(pooled_rows(pid=784))
        assert by_pid(r)[784]["unit"] == "RpcEptMapper, RpcSs" and by_pid(r)[784]["name"] == "svchost"

    def test_an_svchost_with_many_services_is_named_in_short(self):
        assert u.service_text(tuple("S%d" % i for i in range(8))) == "S0, S1, S2, S3, S4, +3 more"
        assert u.service_text(("x" * 300,)) == "x" * 256 and u.service_text(()) is None

    def test_a_process_that_is_no_service_has_none(self):
        r = audit(pooled_rows())
        proc = by_pid(r)[POOLED]
        assert proc["unit"] is None and proc["cmdline"] is None and proc["container"] is None

    def test_services_unreadable_is_said_and_processes_still_named(self, monkeypatch):
        monkeypatch.setattr(SimHost, "has_cim", property(lambda self: False))
        r = audit(churn_rows(), services=[(CHURNER, "OrderSyncSvc")])
        assert any(item["source"] == "Win32_Service" for item in r["unreadable"])
        assert by_pid(r)[CHURNER]["name"] == "OrderSync" and by_pid(r)[CHURNER]["unit"] is None
        assert r["attribution"]["services"] is False

    def test_the_fleet_report_names_the_windows_culprit(self):
        r = audit(churn_rows(owner=CHURNER) + pooled_rows(), services=[(CHURNER, "OrderSyncSvc")])
        report = fleet_report.build_report([fleet_report.host_row("win1", "windows", r)], "now")
        row = report["hosts"][0]
        assert row["culprit"]["at"] == "OrderSync (pid 5200)@win1"
        assert row["culprit"]["destination"] == "10.0.0.9:8080" and row["culprit"]["kind"] == "pooling"
        assert "OrderSync (pid 5200)@win1 -> 10.0.0.9:8080 at 12.5 new connections/s" in fleet_report.render_summary(report)
        assert "OrderSync (pid 5200)@win1" in fleet_report.render_html(report)
        assert "OrderSync (pid 5200)@win1" in fleet_report.render_markdown(report)


class TestParseServices:
    def test_running_services_by_pid_stopped_and_bad_rows_skipped(self):
        lines = ['"ProcessId","Name"', '"784","RpcSs"', '"784","RpcEptMapper"', '"0","W3SVC"', '"","x"',
                 '"12345678901","long"', '"900",""', '"1488","Spooler"']
        sections = split_sections("@@%s:services@@\n%s\n@@%s:ok:True@@\n" % (M, "\n".join(lines), M), M)
        assert parse_services(sections) == {784: ("RpcEptMapper", "RpcSs"), 1488: ("Spooler",)}

    @pytest.mark.parametrize("stdout", ["", "@@%s:services@@\nGet-CimInstance : Access denied\n@@%s:ok:False@@\n" % (M, M)])
    def test_missing_or_failed_is_none(self, stdout):
        assert parse_services(split_sections(stdout, M)) is None


# ------------------------------------------------------------------ properties of attribute()
STATES = ("Established", "TimeWait", "SynSent", "CloseWait", "FinWait2", "Bound")
ROWS = st.lists(st.tuples(st.sampled_from((4, 6)), st.sampled_from(("10.0.0.9", "10.0.0.10", "fe80::1")),
                          st.sampled_from((80, 443)), st.sampled_from(STATES),
                          st.one_of(st.none(), st.sampled_from((0, 4, 100, 200, 300)))), max_size=60)


@settings(derandomize=True, max_examples=300, deadline=None)
@given(ROWS)
def test_attribution_never_invents_a_pid_and_the_counts_add_up(rows):
    processes, attribution = u.attribute(rows, {}, {}, 120)
    owners = {pid for *dummy, pid in rows if pid}
    assert {proc["pid"] for proc in processes} <= owners
    held = sum(d["in_use"] for proc in processes for d in proc["destinations"].values())
    held += sum(d["in_use"] for d in attribution["unattributed"].values()) + attribution["bound"]
    assert held == len(rows)
    time_wait = sum(d["time_wait"] for proc in processes for d in proc["destinations"].values())
    time_wait += sum(d["time_wait"] for d in attribution["unattributed"].values())
    assert time_wait == sum(1 for row in rows if row[3] == "TimeWait")
    for proc in processes:
        for dest, counts in proc["destinations"].items():
            live = sum(1 for f, a, p, s, pid in rows if (f, a, p) == dest and pid == proc["pid"] and s not in
                       ("TimeWait", "Bound"))
            assert counts["in_use"] - counts["time_wait"] == live
            if counts["time_wait_inferred"]:  # only a destination's only live owner inherits its TIME_WAIT
                assert live > 0 and not any((f, a, p) == dest and pid and pid != proc["pid"] and s not in
                                            ("TimeWait", "Bound") for f, a, p, s, pid in rows)
