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


def simulate_clients(host, time_wait=1500, owner=0):
    host.add_process(CHURNER, "OrderSync")
    host.add_process(POOLED, "w3wp")
    host.add_service("OrderSyncSvc", CHURNER)
    host.add_service("W3SVC", POOLED)
    for i in range(time_wait):
        host.add_connection("10.0.0.5", 50000 + i, "10.0.0.9", 8080, "TimeWait", owner)
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
    """Issue 21: Windows reports each TIME_WAIT with OwningProcess 0, so the churner's 1,500 are given to it as the
    destination's only live owner: an inferred share.  It is listed first with its service and ``evidence:
    inferred``, but neither a pooling culprit nor the top churner; the pooled client is not blamed; one read."""
    assert r["_status"] == "ok" and r["round_trips"] == 1 and sim.round_trips == 1
    procs = {p["pid"]: p for p in r["processes"]}
    churner = procs[CHURNER]
    assert churner["name"] == "OrderSync" and churner["unit"] == "OrderSyncSvc" and churner["evidence"] == "inferred"
    assert churner["time_wait"] == churner["time_wait_inferred"] == 1500 and churner["established"] == 2
    assert churner["start_time"] is None and churner["spawned"] is None and churner["failed_connections"] is None
    assert set(r["attribution"]["unavailable"]) == {"spawned", "failed_connections_per_second"}
    assert procs[POOLED]["unit"] == "W3SVC" and procs[POOLED]["established"] == 4
    assert procs[POOLED]["time_wait"] == 0 and procs[POOLED]["new_connections_per_second"] == 0
    assert procs[POOLED]["evidence"] == "exact"
    assert r["client_findings"] == [] and r["top_churner"] is None
    assert r["processes"][0]["pid"] == CHURNER  # ranked by ports held when nothing was seen opening


def test_the_fleet_report_shows_the_windows_culprit(tmp_path):
    """With TIME_WAIT rows that carry the churner's pid (the simulator prints them so for a parser; Windows reports
    0), the evidence is exact and the fleet report names the culprit."""
    with make_sim() as sim:
        simulate_clients(sim.host, owner=CHURNER)
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
