"""The win_port_usage_info action plugin on the simulated host, in-process: one round trip, validation before
connecting, what a host without Get-NetTCPConnection reports, an unreadable host."""

from __future__ import annotations

from types import SimpleNamespace

from ansible_collections.tcpstack.tuning.plugins.action.win_port_usage_info import ActionModule

from tests.support.windows_sim.connection import InProcessConnection


def run(args, connection):
    task = SimpleNamespace(args=args, check_mode=False, diff=False, async_val=0,
                           action="tcpstack.tuning.win_port_usage_info")
    return ActionModule(task, connection, SimpleNamespace(), None, None, None).run(task_vars={})


def test_one_round_trip():
    conn = InProcessConnection()
    result = run({"top": 3}, conn)
    assert not result.get("failed") and not result["changed"] and result["round_trips"] == 1 == conn.round_trips
    assert result["verdict"] == "ok" and result["build"] == 20348 and "warnings" not in result


def test_validation_before_connection():
    conn = InProcessConnection()
    result = run({"event_hours": 0}, conn)
    assert result["failed"] and result["option"] == "event_hours" and result["round_trips"] == 0 == conn.round_trips


def test_legacy_host_warns():
    result = run({}, InProcessConnection(profile="server2008r2"))
    assert result["sockets"] is None and result["round_trips"] == 1
    assert result["warnings"][0].startswith("could not read Get-NetTCPConnection:")


def test_unreadable_host():
    conn = InProcessConnection()
    conn.faults.refuse_command(1)
    result = run({}, conn)
    assert result["failed"] and not result["changed"] and result["round_trips"] == 1
    assert result["msg"].startswith("reading the host failed (rc=1): Access is denied.")


def test_service_ports_validated_before_connection():
    conn = InProcessConnection()
    result = run({"service_ports": [8080, 70000]}, conn)
    assert result["failed"] and result["option"] == "service_ports" and result["round_trips"] == 0 == conn.round_trips


def test_service_port_in_a_system_exclusion():
    conn = InProcessConnection()
    conn.host.add_excluded(49700, 49799)
    result = run({"service_ports": [49710]}, conn)
    assert result["verdict"] == "warning" and result["recommendations"] == {"excluded_ranges": ["49710"]}
