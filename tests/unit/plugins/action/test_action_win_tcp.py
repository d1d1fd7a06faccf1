"""The win_tcp action plugin on the simulated host, in-process: round trips, validation before connecting, check
mode, rollback, verification.

The connection is the simulator's in-process stand-in (tests/support/windows_sim/connection.py): each
exec_command runs on an emulated Windows host, the same code the simulator's WinRM and SSH endpoints run.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ansible_collections.tcpstack.tuning.plugins.action.win_tcp import ActionModule

from tests.support.windows_sim.connection import InProcessConnection


def run(args, connection, check_mode=False, diff=False):
    task = SimpleNamespace(args=args, check_mode=check_mode, diff=diff, async_val=0, action="tcpstack.tuning.win_tcp")
    action = ActionModule(task, connection, SimpleNamespace(), None, None, None)
    return action.run(task_vars={})


def dword(host, name):
    return host.registry_type(name), host.registry_value(name)


def test_validation_before_connection():
    conn = InProcessConnection()
    result = run({"port_range": "1024 65535"}, conn)
    assert result["failed"] and result["option"] == "port_range" and result["round_trips"] == 0
    assert "below 1025" in result["msg"]
    assert conn.round_trips == 0


def test_cold_then_converged():
    conn = InProcessConnection()
    result = run({"port_range": "10000 65535", "time_wait_delay": 30}, conn)
    assert result["changed"] and result["round_trips"] == 2 and len(conn.scripts) == 2
    assert result["reboot_required"]
    assert dword(conn.host, "TcpTimedWaitDelay") == ("REG_DWORD", 30)
    assert conn.host.dynamic_range("ipv6", "tcp") == (10000, 55536)
    conn.scripts.clear()
    result = run({"port_range": "10000 65535", "time_wait_delay": 30}, conn)
    assert not result["changed"] and result["round_trips"] == 1 and len(conn.scripts) == 1


def test_check_mode_changes_nothing():
    conn = InProcessConnection()
    result = run({"max_user_port": 65534}, conn, check_mode=True, diff=True)
    assert result["changed"] and result["round_trips"] == 1
    assert conn.host.registry_value("MaxUserPort") is None
    assert result["diff"]["after"] == "MaxUserPort = 65534\n"
    assert result["after"]["registry"] == {"MaxUserPort": 65534}
    assert "legacy" in result["warnings"][0]


def test_legacy_minimum_after_read():
    conn = InProcessConnection(profile="server2008r2")
    result = run({"time_wait_delay": 5}, conn)
    assert result["failed"] and result["option"] == "time_wait_delay" and result["round_trips"] == 1


def test_failed_apply_rolls_back():
    conn = InProcessConnection()
    host = conn.host
    host.set_registry("MaxUserPort", "REG_DWORD", 5000)
    conn.faults.fail_tool("netsh", verb=("ipv6", "set"))  # the ipv6 set fails, once
    result = run({"port_range": "10000 65535", "max_user_port": 6000}, conn)
    assert result["failed"] and result["rolled_back"] and result["round_trips"] == 3
    assert "The parameter is incorrect." in result["msg"]
    assert dword(host, "MaxUserPort") == ("REG_DWORD", 5000)
    assert host.dynamic_range("ipv4", "tcp") == (49152, 16384)


def test_verify_mismatch_fails():
    conn = InProcessConnection()
    # reg add reports success and changes nothing
    conn.faults.fail_tool("reg", verb="add", output="The operation completed successfully.", exit_code=0)
    result = run({"time_wait_delay": 30}, conn)
    assert result["failed"] and "reads back TcpTimedWaitDelay = (absent) (expected 30)" in result["msg"]


def test_unreadable_host():
    conn = InProcessConnection()
    conn.faults.refuse_command(1, stderr="Access is denied.")
    result = run({"time_wait_delay": 30}, conn)
    assert result["failed"] and "Access is denied." in result["msg"] and result["round_trips"] == 1


@pytest.mark.parametrize("bad", [{"bogus": 1}])
def test_unknown_option(bad):
    conn = InProcessConnection()
    result = run(bad, conn)
    assert result["failed"] and "bogus" in result["msg"]
    assert conn.round_trips == 0


def test_excluded_ranges_overlap_fails_after_one_read_naming_the_option():
    conn = InProcessConnection()
    conn.host.add_excluded(50050, 50149)  # a system (WinNAT) block
    result = run({"excluded_ranges": ["50000-50099"], "time_wait_delay": 30}, conn)
    assert result["failed"] and result["option"] == "excluded_ranges" and result["round_trips"] == 1
    assert "50050-50149" in result["msg"] and "winnat" in result["msg"]
    assert conn.host.registry_value("TcpTimedWaitDelay") is None


def test_excluded_ranges_added_then_converged():
    conn = InProcessConnection()
    result = run({"excluded_ranges": [8080]}, conn, diff=True)
    assert result["changed"] and result["round_trips"] == 2 and not result["reboot_required"]
    assert "ipv6 tcp excluded port range 8080-8080 = excluded (administered)" in result["diff"]["after"]
    assert run({"excluded_ranges": "8080"}, conn)["round_trips"] == 1
