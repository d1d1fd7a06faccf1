"""The win_tcp action plugin with a fake connection: round trips, validation before connecting, check mode, rollback.

The fake connection answers each script statement by statement from a small
in-memory host (the output formats of docs/windows_commands.md), and records
every script it was sent.
"""

from __future__ import annotations

import base64
import re
from types import SimpleNamespace

import pytest

from ansible_collections.tcpstack.tuning.plugins.action.win_tcp import ActionModule
from ansible_collections.tcpstack.tuning.plugins.module_utils.windows_tcp import POWERSHELL

REG_PREFIX = "reg add 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters' /v "


class FakeHost:
    def __init__(self, build=20348, registry=None, ranges=None, excluded=None, fail=()):
        self.build = build
        self.registry = dict(registry or {})  # name -> (type, data text)
        self.ranges = dict(ranges or {})  # (ip, proto) -> (start, number)
        self.excluded = dict(excluded or {})
        self.fail = list(fail)  # substrings of commands that fail once

    def run(self, line):
        for pattern in self.fail:
            if pattern in line:
                self.fail.remove(pattern)
                return "The parameter is incorrect.", 1
        words = line.split()
        if line.startswith("reg query") and "CurrentBuildNumber" in line:
            return "\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\n" \
                   "    CurrentBuildNumber    REG_SZ    %d\n" % self.build, 0
        if line.startswith("reg query"):
            out = ["", "HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters"]
            out += ["    %s    %s    %s" % (n, t, d) for n, (t, d) in self.registry.items()]
            return "\n".join(out + [""]), 0
        if line.startswith("reg add"):
            self.registry[words[words.index("/v") + 1]] = ("REG_DWORD", "0x%x" % int(words[words.index("/d") + 1]))
            return "The operation completed successfully.", 0
        if line.startswith("reg delete"):
            if self.registry.pop(words[words.index("/v") + 1], None) is None:
                return "", 1
            return "The operation completed successfully.", 0
        match = re.match(r"netsh int (ipv[46]) (show|set) (\w+) protocol=(\w+)(?: startport=(\d+) numberofports=(\d+))?\Z", line)
        key = (match.group(1), match.group(4))
        if match.group(2) == "set":
            self.ranges[key] = (int(match.group(5)), int(match.group(6)))
            return "Ok.", 0
        if match.group(3) == "dynamicportrange":
            start, num = self.ranges.get(key, (49152, 16384))
            return "\nProtocol tcp Dynamic Port Range\n----\nStart Port      : %d\nNumber of Ports : %d\n" % (start, num), 0
        rows = "\n".join("%10d  %10d" % r for r in self.excluded.get(key, ()))
        return "\nProtocol tcp Port Exclusion Ranges\n\nStart Port    End Port\n----------    --------\n%s\n\n" % rows, 0


class FakeConnection:
    def __init__(self, host):
        self.host = host
        self.scripts = []
        self._shell = SimpleNamespace(tmpdir=None)

    def exec_command(self, cmd, in_data=None, sudoable=True):
        assert cmd.startswith(POWERSHELL)
        cmd = base64.b64decode(cmd[len(POWERSHELL):]).decode("utf-16-le")
        self.scripts.append(cmd)
        out, rc = [], 0
        for line in cmd.splitlines():
            match = re.match(r"""Write-Output ['"](.*)['"]\Z""", line)
            if match:
                out.append(match.group(1).replace("$LASTEXITCODE", str(rc)))
                continue
            text, rc = self.host.run(line)
            out.append(text)
        return 0, "\r\n".join(out).encode("utf-8"), b""


class Untouchable:
    """A connection that fails the test when anything uses it."""

    _shell = SimpleNamespace(tmpdir=None)

    def exec_command(self, *args, **kwargs):
        raise AssertionError("the connection was used")


def run(args, connection, check_mode=False, diff=False):
    task = SimpleNamespace(args=args, check_mode=check_mode, diff=diff, async_val=0, action="tcpstack.tuning.win_tcp")
    action = ActionModule(task, connection, SimpleNamespace(), None, None, None)
    return action.run(task_vars={})


def test_validation_before_connection():
    result = run({"port_range": "1024 65535"}, Untouchable())
    assert result["failed"] and result["option"] == "port_range" and result["round_trips"] == 0
    assert "below 1025" in result["msg"]


def test_cold_then_converged():
    conn = FakeConnection(FakeHost())
    result = run({"port_range": "10000 65535", "time_wait_delay": 30}, conn)
    assert result["changed"] and result["round_trips"] == 2 and len(conn.scripts) == 2
    assert result["reboot_required"]
    assert conn.host.registry["TcpTimedWaitDelay"] == ("REG_DWORD", "0x1e")
    assert conn.host.ranges[("ipv6", "tcp")] == (10000, 55536)
    conn.scripts.clear()
    result = run({"port_range": "10000 65535", "time_wait_delay": 30}, conn)
    assert not result["changed"] and result["round_trips"] == 1 and len(conn.scripts) == 1


def test_check_mode_changes_nothing():
    conn = FakeConnection(FakeHost())
    result = run({"max_user_port": 65534}, conn, check_mode=True, diff=True)
    assert result["changed"] and result["round_trips"] == 1
    assert "MaxUserPort" not in conn.host.registry
    assert result["diff"]["after"] == "MaxUserPort = 65534\n"
    assert result["after"]["registry"] == {"MaxUserPort": 65534}
    assert "legacy" in result["warnings"][0]


def test_legacy_minimum_after_read():
    conn = FakeConnection(FakeHost(build=7601))
    result = run({"time_wait_delay": 5}, conn)
    assert result["failed"] and result["option"] == "time_wait_delay" and result["round_trips"] == 1


def test_failed_apply_rolls_back():
    host = FakeHost(registry={"MaxUserPort": ("REG_DWORD", "0x1388")}, fail=["ipv6 set"])
    conn = FakeConnection(host)
    result = run({"port_range": "10000 65535", "max_user_port": 6000}, conn)
    assert result["failed"] and result["rolled_back"] and result["round_trips"] == 3
    assert "The parameter is incorrect." in result["msg"]
    assert host.registry["MaxUserPort"] == ("REG_DWORD", "0x1388")
    assert host.ranges[("ipv4", "tcp")] == (49152, 16384)


def test_verify_mismatch_fails():
    host = FakeHost()
    conn = FakeConnection(host)
    original = host.run

    def lying(line):
        if line.startswith("reg add"):
            return "The operation completed successfully.", 0
        return original(line)

    host.run = lying
    result = run({"time_wait_delay": 30}, conn)
    assert result["failed"] and "reads back TcpTimedWaitDelay = (absent) (expected 30)" in result["msg"]


def test_unreadable_host():
    class Broken(FakeConnection):
        def exec_command(self, cmd, in_data=None, sudoable=True):
            self.scripts.append(cmd)
            return 1, b"", b"Access is denied."

    result = run({"time_wait_delay": 30}, Broken(FakeHost()))
    assert result["failed"] and "Access is denied." in result["msg"] and result["round_trips"] == 1


@pytest.mark.parametrize("bad", [{"bogus": 1}])
def test_unknown_option(bad):
    result = run(bad, Untouchable())
    assert result["failed"] and "bogus" in result["msg"]
