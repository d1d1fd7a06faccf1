"""win_port_usage_info names who burns the ports (issue 14 item 3): real ansible-playbook over the real winrm
connection (pywinrm) and over SSH (the OpenSSH client), against the Windows host simulator.

A simulated Windows host runs a churning client as a service (many short connections to one destination: Windows
reports each closed one in TIME_WAIT with OwningProcess 0, two in flight with the client's pid) and a pooled client
(four keep-alive connections to another destination). One round trip; the churner gets the pooling finding naming
process, service, destination and numbers; the pooled client is not blamed. Then the fleet_report module (the port_audit
role's report) shows the Windows culprit. Nothing here ever skips.
"""

from __future__ import annotations

import json

from test_win_tcp import info_task, make_sim, run_play
from tests.support.windows_sim import USER, Simulator

CHURNER, POOLED = 5200, 5300


def simulate_clients(host, time_wait=1500):
    host.add_process(CHURNER, "OrderSync")
    host.add_process(POOLED, "w3wp")
    host.add_service("OrderSyncSvc", CHURNER)
    host.add_service("W3SVC", POOLED)
    for i in range(time_wait):
        host.add_connection("10.0.0.5", 50000 + i, "10.0.0.9", 8080, "TimeWait", 0)
    for i in range(2):
        host.add_connection("10.0.0.5", 50000 + time_wait + i, "10.0.0.9", 8080, "Established", CHURNER)
    for i in range(4):
        host.add_connection("10.0.0.5", 60000 + i, "10.0.0.10", 5432, "Established", POOLED)


def test_the_churner_is_named_and_the_pooled_client_is_not_blamed():
    with make_sim() as sim:
        simulate_clients(sim.host)
        check_named(sim, run_play(sim, info_task("info", top=5))["info"])


def test_the_same_over_ssh(ssh_client_key):
    with Simulator(profile="server2022", username=USER, ssh=True, ssh_authorized_keys=ssh_client_key[1]) as sim:
        simulate_clients(sim.host)
        check_named(sim, run_play(sim, info_task("info", top=5), ssh_key=ssh_client_key[0])["info"])


def check_named(sim, r):
    """The churner named (process, service, destination, numbers), the pooled client not blamed, in one read."""
    assert r["_status"] == "ok" and r["round_trips"] == 1 and sim.round_trips == 1
    pooling = [f for f in r["client_findings"] if f["kind"] == "pooling"]
    assert [f["pid"] for f in pooling] == [CHURNER]
    finding = pooling[0]
    assert finding["name"] == "OrderSync" and finding["unit"] == "OrderSyncSvc"
    assert finding["destination"] == "10.0.0.9:8080"
    assert finding["new_connections"] == 1500 and finding["new_connections_per_second"] == 12.5
    assert finding["established"] == 2 and finding["time_wait_per_established"] == 750
    assert finding["sentence"] in r["findings"]
    assert "pid 5200 (OrderSync, unit OrderSyncSvc) opens 12.5 new connections per second to 10.0.0.9:8080" \
        in finding["sentence"]
    procs = {p["pid"]: p for p in r["processes"]}
    assert procs[POOLED]["unit"] == "W3SVC" and procs[POOLED]["established"] == 4
    assert procs[POOLED]["time_wait"] == 0 and procs[POOLED]["new_connections_per_second"] == 0
    assert not any(f["pid"] == POOLED for f in r["client_findings"])
    assert r["top_churner"]["pid"] == CHURNER and r["cure"]["where"] == "client"
    assert r["processes"][0]["pid"] == CHURNER  # ranked by rate


def test_the_fleet_report_shows_the_windows_culprit(tmp_path):
    with make_sim() as sim:
        simulate_clients(sim.host)
        out = tmp_path / "report"
        play = {"name": "fleet_report", "tcpstack.tuning.fleet_report": {
            "results": {"win": "{{ ports | combine({'platform': 'windows'}) }}"}, "dest": str(out),
            "formats": ["json", "markdown"]}, "run_once": True}
        results = run_play(sim, info_task("info"), play)
        assert results["fleet_report"]["_status"] == "ok", results["fleet_report"]
        report = json.loads((out / "port_audit.json").read_text())
        row = report["hosts"][0]
        assert row["culprit"]["at"] == "OrderSync (pid 5200)@win" and row["culprit"]["kind"] == "pooling"
        assert row["culprit"]["destination"] == "10.0.0.9:8080"
        markdown = (out / "port_audit.md").read_text()
        assert "OrderSync" in markdown and "10.0.0.9:8080 at 12.5 new connections/s" in markdown
        assert "culprit: OrderSync (pid 5200)@win -> 10.0.0.9:8080 at 12.5 new connections/s (pool its connections)" \
            in results["fleet_report"]["summary"]  # a list of lines
