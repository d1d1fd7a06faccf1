"""Tests of the Windows host simulator itself (tests/support/windows_sim), driven by the real pywinrm, the asyncssh
client (its SSH endpoint) and, once, by a real ``ansible`` ad-hoc run over Ansible's winrm connection.

Everything runs on 127.0.0.1 without root: nothing here skips.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import re
import subprocess
import sys
import threading
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import asyncssh
import pytest
import requests
import winrm
from hypothesis import given, settings
from hypothesis import strategies as st
from winrm.exceptions import InvalidCredentialsError, WSManFaultError

from tests.support.collection import ROOT as REPO
from tests.support.fleet import fleet_hosts
from tests.support.windows_sim import PASSWORD, PROFILES, USER, Simulator
from tests.support.windows_sim.host import WindowsHost
from tests.support.windows_sim.script import SINGLE_QUOTES, clixml_text, run_powershell, tokenize
from tests.support.windows_sim.tools import run_netsh

VENV_BIN = Path(sys.executable).parent
PARAMS = r"HKLM\SYSTEM\CurrentControlSet\Services\Tcpip\Parameters"
RC = 'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"'
OK = 'Write-Output "@@tcpstack:ok:$?@@"'
TCP_PIPELINE = ("Get-NetTCPConnection | Select-Object -Property LocalAddress,LocalPort,RemoteAddress,RemotePort,"
                "State,OwningProcess | ConvertTo-Csv -NoTypeInformation")
PROC_PIPELINE = "Get-Process | Select-Object -Property Id,ProcessName | ConvertTo-Csv -NoTypeInformation"
EXHAUSTION = ("wevtutil qe System '/q:*[System[Provider[@Name=''Tcpip''] and (EventID=4227 or EventID=4231) "
              "and TimeCreated[timediff(@SystemTime) <= {ms}]]]' /f:xml /rd:true /c:500")


@pytest.fixture
def sim():
    with Simulator() as simulator:
        yield simulator


def session(simulator, **kwargs):
    return winrm.Session("http://127.0.0.1:%d/wsman" % simulator.port, auth=(USER, PASSWORD), transport="basic",
                         ca_trust_path=None, **kwargs)


def protocol(simulator, **kwargs):
    return winrm.Protocol(simulator.endpoint, transport="basic", username=USER, password=PASSWORD, ca_trust_path=None,
                          **kwargs)


def ps(simulator, script):
    """run_ps: (exit code, stdout text, stderr text). pywinrm opens its shell with code page 437."""
    r = session(simulator).run_ps(script)
    return r.status_code, r.std_out.decode("cp437"), r.std_err.decode("cp437")


def ansible_exec(simulator, script):
    """Exactly what Ansible's winrm connection sends for exec_command(script): the real
    PowerShell shell plugin's _encode_script, in a shell opened with codepage 65001."""
    from ansible.plugins.shell.powershell import ShellModule

    parts = ShellModule()._encode_script(script, as_list=True, strict_mode=False, preserve_rc=False)
    proto = protocol(simulator)
    shell_id = proto.open_shell(codepage=65001)
    try:
        command_id = proto.run_command(shell_id, parts[0], parts[1:], console_mode_stdin=True)
        out, err, rc = proto.get_command_output(shell_id, command_id)
        proto.cleanup_command(shell_id, command_id)
    finally:
        proto.close_shell(shell_id)
    return rc, out.decode("utf-8"), err.decode("utf-8")


def section(stdout, name):
    """The lines between @@tcpstack:name@@ and the next marker."""
    lines = stdout.split("\r\n")
    start = lines.index("@@tcpstack:%s@@" % name) + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("@@tcpstack:"))
    return lines[start:end], lines[end]


# ---------------------------------------------------------------------------
# WS-Management protocol
# ---------------------------------------------------------------------------
def test_shell_lifecycle_with_protocol(sim):
    proto = protocol(sim)
    shell_id = proto.open_shell()
    assert sim.open_shells == 1
    command_id = proto.run_command(shell_id, "netsh", ["int", "ipv4", "show", "dynamicportrange", "protocol=tcp"])
    out, err, rc = proto.get_command_output(shell_id, command_id)
    assert rc == 0 and err == b""
    assert out == b"\r\nProtocol tcp Dynamic Port Range\r\n---------------------------------\r\n" \
                  b"Start Port      : 49152\r\nNumber of Ports : 16384\r\n\r\n"
    proto.cleanup_command(shell_id, command_id)  # Signal: RelatesTo checked by pywinrm
    proto.close_shell(shell_id)  # Delete: RelatesTo read by pywinrm
    assert sim.open_shells == 0
    assert sim.requests == {"Create": 1, "Command": 1, "Receive": 1, "Signal": 1, "Delete": 1}
    assert sim.round_trips == 1


def test_unknown_shell_is_a_soap_fault(sim):
    proto = protocol(sim)
    shell_id = proto.open_shell()
    proto.close_shell(shell_id)
    with pytest.raises(WSManFaultError) as info:
        proto.run_command(shell_id, "netsh", ["int", "ipv4", "show", "dynamicportrange", "tcp"])
    assert info.value.wsman_fault_code == 2150858843
    assert info.value.fault_subcode == "w:InvalidSelectors"
    assert "shell was not found" in info.value.reason or "invalid selectors" in info.value.reason
    with pytest.raises(WSManFaultError):
        proto.get_command_output_raw("00000000-0000-0000-0000-000000000000", "X")


def test_reply_relates_to_request_message_id(sim):
    proto = protocol(sim)
    req = {"env:Envelope": proto.build_wsman_header(
        action="http://schemas.xmlsoap.org/ws/2004/09/transfer/Create",
        resource_uri="http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd",
        message_id="12345678-1234-1234-1234-123456789abc")}
    req["env:Envelope"]["env:Body"] = {"rsp:Shell": {"rsp:InputStreams": "stdin", "rsp:OutputStreams": "stdout stderr"}}
    import xmltodict

    root = ET.fromstring(proto.send_message(xmltodict.unparse(req)))
    relates = next(n for n in root.iter() if n.tag.endswith("RelatesTo")).text
    assert relates == "uuid:12345678-1234-1234-1234-123456789abc"
    assert next(n for n in root.iter() if n.tag.endswith("ShellId")).text


def test_wrong_password_is_rejected(sim):
    s = winrm.Session(sim.endpoint, auth=(USER, "wrong"), transport="basic", ca_trust_path=None)
    with pytest.raises(InvalidCredentialsError):
        s.run_ps("Write-Output 'x'")
    assert sim.round_trips == 0


def test_encoded_command_as_ansible_sends_it(sim):
    rc, out, err = ansible_exec(sim, "Write-Output '@@tcpstack:build@@'\n"
                                     "reg query 'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion' /v CurrentBuildNumber\n"
                                     + RC + "\nWrite-Output 'Grüße ☃'")
    assert rc == 0 and err == ""
    lines, rc_line = section(out, "build")
    assert lines == ["", r"HKEY_LOCAL_MACHINE\SOFTWARE\Microsoft\Windows NT\CurrentVersion",
                     "    CurrentBuildNumber    REG_SZ    20348", ""]
    assert rc_line == "@@tcpstack:rc:0@@"
    assert out.endswith("Grüße ☃\r\n")  # UTF-16LE decoded, sent back as UTF-8 (codepage 65001)
    assert sim.log[-1] == "Write-Output 'Grüße ☃'"
    assert sim.round_trips == 1


def test_run_ps_lowercase_switch_and_stdin_free_commands(sim):
    rc, out, dummy = ps(sim, "Write-Output 'a'\nWrite-Output 'b'")
    assert (rc, out) == (0, "a\r\nb\r\n")


def test_cmd_native_command_line_and_unknown_program(sim):
    r = session(sim).run_cmd("reg", ["query", PARAMS, "/v", "IPEnableRouter"])
    assert r.status_code == 0
    assert r.std_out == b"\r\n" + PARAMS.replace("HKLM", "HKEY_LOCAL_MACHINE").encode() + \
        b"\r\n    IPEnableRouter    REG_DWORD    0x0\r\n\r\n"
    r = session(sim).run_cmd("ipconfig", ["/all"])
    assert r.status_code == 1 and b"is not recognized as an internal or external command" in r.std_err


# ---------------------------------------------------------------------------
# The script language
# ---------------------------------------------------------------------------
def test_exit_code_is_the_status_of_the_last_statement(sim):
    rc, out, err = ps(sim, "reg query '%s' /v NoSuchValue" % PARAMS)
    assert rc == 1 and out == ""
    # Windows PowerShell 5.1, output redirected: the tool's stderr comes back as NativeCommandError records
    assert err.splitlines()[:3] == ["reg : ERROR: The system was unable to find the specified registry key or value.",
                                    "At line:1 char:1", "+ reg query '%s' /v NoSuchValue" % PARAMS]
    assert "    + FullyQualifiedErrorId : NativeCommandError" in err.splitlines()
    rc, out, dummy = ps(sim, "reg query '%s' /v NoSuchValue\n%s" % (PARAMS, RC))
    assert rc == 0 and out == "@@tcpstack:rc:1@@\r\n"
    rc, out, dummy = ps(sim, RC)  # no native command run yet: $LASTEXITCODE is $null
    assert out == "@@tcpstack:rc:@@\r\n"


def test_status_marker_after_pipelines():
    host = WindowsHost("server2008r2")
    log = []
    result = run_powershell(host, "\n".join([PROC_PIPELINE, OK, TCP_PIPELINE, OK]), log)
    assert result.stdout.split("\r\n", maxsplit=1)[0] == '"Id","ProcessName"'
    assert "@@tcpstack:ok:True@@" in result.stdout and "@@tcpstack:ok:False@@" in result.stdout
    assert result.exit_code == 0
    assert "Get-NetTCPConnection : The term 'Get-NetTCPConnection' is not recognized" in result.stderr


@pytest.mark.parametrize("statement, name", [
    ("Get-Service", "Get-Service"),
    ("Write-Host 'x'", "Write-Host"),
    ("Invoke-Expression 'netsh'", "Invoke-Expression"),
    ("ipconfig /all", "ipconfig"),
    ("netsh int ipv4 show dynamicportrange protocol=tcp; Get-Service", None),
    ("netsh int ipv4 set dynamicportrange protocol=tcp startport=$x numberofports=255", None),
    ('reg query "HKLM\\SOFTWARE"', None),
    ("Write-Output hello", None),
    ('Write-Output "$env:COMPUTERNAME"', None),
    ("Get-NetTCPConnection | Format-Table", None),
    ("Get-Process | Select-Object -Property Id,ProcessName,Path | ConvertTo-Csv -NoTypeInformation", None),
    ("& netsh int ipv4 show dynamicportrange protocol=tcp", "&"),
    ('& "$env:SystemRoot\\System32\\netsh.exe" int ipv4 set dynamicportrange protocol=tcp startport=$x', "&"),
    ('& "$env:windir\\System32\\netsh.exe" int ipv4 show dynamicportrange protocol=tcp', "&"),
    ('& "$env:SystemRoot\\System32\\ipconfig.exe"', "&"),
    ("& 'C:\\Temp\\netsh.exe' int ipv4 show dynamicportrange protocol=tcp", "&"),
])
def test_statements_outside_the_contract_fail(sim, statement, name):
    rc, out, err = ps(sim, statement)
    assert rc == 1 and out == ""
    assert "is not recognized as the name of a cmdlet, function, script file, or operable program" in err
    assert "The term '%s' is not recognized" % (name or statement) in err
    assert sim.host.dynamic_range() == (49152, 16384)


def test_errors_are_clixml_on_the_wire(sim):
    proto = protocol(sim)
    shell_id = proto.open_shell()
    script = base64.b64encode("Get-Service".encode("utf-16-le")).decode()
    command_id = proto.run_command(shell_id, "PowerShell", ["-NoProfile", "-NonInteractive", "-EncodedCommand", script])
    out, err, rc = proto.get_command_output(shell_id, command_id)
    proto.close_shell(shell_id)
    assert rc == 1 and out == b""
    assert err.startswith(b'#< CLIXML\r\n<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">')
    assert clixml_text(err).startswith(b"Get-Service : The term 'Get-Service' is not recognized")


def test_quoting_rules():
    words = tokenize("reg add 'HKLM\\A B' /v It''s /d 'it''s' /t'REG_SZ' |,")
    values = [w if isinstance(w, str) else w.value for w in words]
    assert values == ["reg", "add", "HKLM\\A B", "/v", "Its", "/d", "it's", "/tREG_SZ", "|", ","]
    host = WindowsHost()
    result = run_powershell(host, "reg add '%s' /v 'Odd Name' /t REG_SZ /d 'it''s here' /f" % PARAMS, [])
    assert result.exit_code == 0
    assert host.registry_value("Odd Name") == "it's here"


def test_parse_error_runs_nothing(sim):
    rc, out, err = ps(sim, "netsh int ipv4 set dynamicportrange protocol=tcp startport=20000 numberofports=1000\n"
                           "Write-Output 'unterminated")
    assert rc == 1 and out == ""
    assert "The string is missing the terminator: '." in err
    assert sim.host.dynamic_range() == (49152, 16384)


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Zl", "Zp")), max_size=40))
def test_single_quoted_literals_round_trip(literal):
    quoted = literal
    for quote in SINGLE_QUOTES:  # PowerShell also ends a single-quoted string at a typographic quote
        quoted = quoted.replace(quote, quote * 2)
    result = run_powershell(WindowsHost(), "Write-Output '%s'" % quoted, [])
    assert result.exit_code == 0
    assert result.stdout == literal + "\r\n"


# ---------------------------------------------------------------------------
# netsh
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("ip", ["ipv4", "ipv6"])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_netsh_show_default_range(sim, ip, proto):
    rc, out, dummy = ps(sim, "netsh int %s show dynamicportrange protocol=%s" % (ip, proto))
    assert rc == 0
    assert out == ("\r\nProtocol %s Dynamic Port Range\r\n---------------------------------\r\n"
                   "Start Port      : 49152\r\nNumber of Ports : 16384\r\n\r\n" % proto)


def test_netsh_abbreviations_and_positional_parameters(sim):
    for command in ("netsh interface ipv6 show dynamicport udp", "netsh int ipv6 sh dynamicportrange protocol=udp",
                    "netsh int ipv6 show dynamicportrange proto=udp"):
        rc, out, dummy = ps(sim, command)
        assert rc == 0 and "Protocol udp Dynamic Port Range" in out, command
    rc, dummy, dummy = ps(sim, "netsh int ipv6 set dynamic udp start=10000 num=1000")
    assert rc == 0 and sim.host.dynamic_range("ipv6", "udp") == (10000, 1000)
    assert sim.host.dynamic_range("ipv4", "udp") == (49152, 16384)


def test_netsh_unknown_command_and_missing_parameter(sim):
    rc, out, dummy = ps(sim, "netsh int ipv4 show nonsense protocol=tcp")
    assert rc == 1 and out == "The following command was not found: int ipv4 show nonsense protocol=tcp.\r\n"
    rc, out, dummy = ps(sim, "netsh int ipv4 set dynamicportrange protocol=tcp startport=20000")
    assert rc == 1 and out.startswith("One or more essential parameters were not entered.")


@pytest.mark.parametrize("start, num, accepted", [
    (1024, 255, False),
    (1025, 255, True),
    (1025, 254, False),
    (49152, 16384, True),   # ends at 65535
    (49153, 16384, False),  # would end at 65536
    (65281, 255, True),     # the highest possible start
    (65282, 255, False),
    (1025, 64511, True),
    (1024, 64511, False),   # what some installers leave: netsh itself refuses it
])
def test_netsh_set_validation_boundaries(sim, start, num, accepted):
    rc, out, err = ps(sim, "netsh int ipv4 set dynamicportrange protocol=tcp startport=%d numberofports=%d\n%s"
                      % (start, num, RC))
    assert rc == 0 and err == ""
    if accepted:
        assert out == "Ok.\r\n\r\n@@tcpstack:rc:0@@\r\n"
        assert sim.host.dynamic_range() == (start, num)
    else:
        assert out == "The parameter is incorrect.\r\n\r\n@@tcpstack:rc:1@@\r\n"
        assert sim.host.dynamic_range() == (49152, 16384)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 70000), st.integers(0, 70000))
def test_netsh_validation_rule(start, num):
    host = WindowsHost()
    result = run_netsh(host, ["int", "ipv4", "set", "dynamicportrange", "protocol=tcp", "startport=%d" % start,
                              "numberofports=%d" % num])
    valid = start >= 1025 and num >= 255 and start + num - 1 <= 65535
    assert (result.exit_code == 0) == valid
    assert host.dynamic_range() == ((start, num) if valid else (49152, 16384))


def test_netsh_range_is_effective_at_once_and_persistent(sim):
    rc, dummy, dummy = ps(sim, "netsh int ipv4 set dynamicportrange protocol=tcp startport=10000 numberofports=50000")
    assert rc == 0
    assert sim.host.dynamic_range() == (10000, 50000)
    sim.host.reboot()
    assert sim.host.dynamic_range() == (10000, 50000)
    rc, dummy, dummy = ps(sim, "netsh int ipv4 set dynamicportrange protocol=tcp startport=20000 numberofports=1000 store=active")
    assert rc == 0 and sim.host.dynamic_range() == (20000, 1000)
    sim.host.reboot()
    assert sim.host.dynamic_range() == (10000, 50000)


def test_installer_range_is_shown_as_it_is():
    with Simulator(host_state={"dynamic_ranges": {"ipv4/tcp": [1024, 64511]}}) as sim:
        rc, out, dummy = ps(sim, "netsh int ipv4 show dynamicportrange protocol=tcp")
        assert rc == 0
        assert "Start Port      : 1024\r\nNumber of Ports : 64511\r\n" in out
        sim.host.set_dynamic_range(1024, 64511, ip="ipv6", proto="udp")
        assert "Start Port      : 1024" in ps(sim, "netsh int ipv6 show dynamicportrange protocol=udp")[1]


@pytest.mark.parametrize("profile, pad", [("server2019", ""), ("server2022", "      ")])
def test_netsh_excluded_ranges(profile, pad):
    with Simulator(profile=profile) as sim:
        sim.host.add_excluded(50000, 50059, administered=True)
        sim.host.add_excluded(8000, 8000)
        sim.host.add_excluded(49709, 49808)  # a Hyper-V / WinNAT reservation
        sim.host.add_excluded(1000, 1001, proto="udp")
        rc, out, dummy = ps(sim, "netsh int ipv4 show excludedportrange protocol=tcp")
        assert rc == 0
        # some builds pad the header and the rows without "*" for the empty administered column
        assert out == ("\r\nProtocol tcp Port Exclusion Ranges\r\n\r\nStart Port    End Port%s\r\n"
                       "----------    --------\r\n      8000        8000%s\r\n     49709       49808%s\r\n"
                       "     50000       50059     *\r\n\r\n* - Administered port exclusions.\r\n\r\n" % (pad, pad, pad))
        assert sim.host.excluded_ranges("ipv4", "udp") == [(1000, 1001, False)]


def test_fault_netsh_failure(sim):
    sim.faults.fail_netsh(times=1, verb="set")
    script = "netsh int ipv4 set dynamicportrange protocol=tcp startport=10000 numberofports=1000\n" + RC
    assert ps(sim, "netsh int ipv4 show dynamicportrange protocol=tcp")[0] == 0  # show is not affected
    assert ps(sim, script)[1].endswith("@@tcpstack:rc:1@@\r\n")
    assert sim.host.dynamic_range() == (49152, 16384)
    assert ps(sim, script)[1] == "Ok.\r\n\r\n@@tcpstack:rc:0@@\r\n"
    assert sim.host.dynamic_range() == (10000, 1000)


# ---------------------------------------------------------------------------
# reg and reboot semantics
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_build_number_per_profile(profile):
    with Simulator(profile=profile) as sim:
        rc, out, dummy = ps(sim, "reg query 'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion' /v CurrentBuildNumber")
        assert rc == 0
        assert out == ("\r\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\r\n"
                       "    CurrentBuildNumber    REG_SZ    %d\r\n\r\n" % PROFILES[profile]["build"])
        assert sim.host.build == {"server2008r2": 7601, "server2016": 14393, "server2019": 17763,
                                  "server2022": 20348, "server2025": 26100, "client26200": 26200}[profile]


def test_reg_query_whole_key_format(sim):
    sim.host.set_registry("TcpTimedWaitDelay", "REG_DWORD", 30)
    rc, out, dummy = ps(sim, "reg query '%s'" % PARAMS)
    assert rc == 0
    lines = out.split("\r\n")
    assert lines[0] == "" and lines[1] == r"HKEY_LOCAL_MACHINE\SYSTEM\CurrentControlSet\Services\Tcpip\Parameters"
    assert "    TcpTimedWaitDelay    REG_DWORD    0x1e" in lines
    assert "    NV Hostname    REG_SZ    WIN-SIM-SERVER2022" in lines  # value names may contain spaces
    assert "    SearchList    REG_SZ    " in lines  # empty data keeps the separator
    values_end = lines.index("", 2)
    assert all(line.startswith("    ") for line in lines[2:values_end])
    assert lines[values_end + 1].startswith(lines[1] + "\\")  # then the subkeys
    rc, dummy, err = ps(sim, "reg query 'HKLM\\SYSTEM\\NoSuchKey'")
    assert rc == 1 and "unable to find the specified registry key or value" in err


def test_reg_add_delete_and_reboot(sim):
    host = sim.host
    assert host.effective == {"TcpTimedWaitDelay": None, "MaxUserPort": None}
    assert host.effective_value("TcpTimedWaitDelay") == 120
    script = ("reg add '%s' /v TcpTimedWaitDelay /t REG_DWORD /d 30 /f\n%s\n"
              "reg add '%s' /v MaxUserPort /t REG_DWORD /d 0xfffe /f\n%s" % (PARAMS, RC, PARAMS, RC))
    rc, out, dummy = ps(sim, script)
    assert rc == 0
    assert out == ("The operation completed successfully.\r\n@@tcpstack:rc:0@@\r\n"
                   "The operation completed successfully.\r\n@@tcpstack:rc:0@@\r\n")
    assert host.registry_value("TcpTimedWaitDelay") == 30 and host.registry_type("TcpTimedWaitDelay") == "REG_DWORD"
    assert host.registry_value("MaxUserPort") == 65534
    assert "    MaxUserPort    REG_DWORD    0xfffe" in ps(sim, "reg query '%s' /v maxuserport" % PARAMS)[1]
    # read at boot only
    assert host.effective_value("TcpTimedWaitDelay") == 120 and host.effective["MaxUserPort"] is None
    host.reboot()
    assert host.effective == {"TcpTimedWaitDelay": 30, "MaxUserPort": 65534}
    rc, out, dummy = ps(sim, "reg delete '%s' /v MaxUserPort /f" % PARAMS)
    assert (rc, out) == (0, "The operation completed successfully.\r\n")
    assert host.registry_value("MaxUserPort") is None and host.effective["MaxUserPort"] == 65534
    rc, out, err = ps(sim, "reg delete '%s' /v MaxUserPort /f\n%s" % (PARAMS, RC))
    assert out == "@@tcpstack:rc:1@@\r\n"
    assert err.startswith("reg : ERROR: The system was unable to find the specified registry key or value.\n")
    host.reboot()
    assert host.effective == {"TcpTimedWaitDelay": 30, "MaxUserPort": None}
    assert host.effective_value("MaxUserPort") == 5000


def test_reg_add_invalid_dword_and_missing_force(sim):
    rc, dummy, err = ps(sim, "reg add '%s' /v TcpTimedWaitDelay /t REG_DWORD /d thirty /f" % PARAMS)
    assert rc == 1 and err.startswith("reg : ERROR: Invalid syntax.") and err.endswith('Type "REG ADD /?" for usage.')
    rc, dummy, dummy = ps(sim, "reg add '%s' /v TcpTimedWaitDelay /t REG_DWORD /d 4294967296 /f" % PARAMS)
    assert rc == 1 and sim.host.registry_value("TcpTimedWaitDelay") is None
    sim.host.set_registry("TcpTimedWaitDelay", "REG_DWORD", 60)
    rc, out, dummy = ps(sim, "reg add '%s' /v TcpTimedWaitDelay /t REG_DWORD /d 30" % PARAMS)
    assert "exists, overwrite" in out and sim.host.registry_value("TcpTimedWaitDelay") == 60


def test_host_state_values_are_in_effect_since_boot():
    state = {"registry": {"TcpTimedWaitDelay": ["REG_DWORD", 45]}}
    with Simulator(host_state=state) as sim:
        assert sim.host.effective["TcpTimedWaitDelay"] == 45
        assert "0x2d" in ps(sim, "reg query '%s' /v TcpTimedWaitDelay" % PARAMS)[1]


# ---------------------------------------------------------------------------
# wevtutil
# ---------------------------------------------------------------------------
def test_wevtutil_exhaustion_events(sim):
    now = dt.datetime.now(dt.timezone.utc)
    sim.host.add_event(4227, now - dt.timedelta(minutes=10))
    sim.host.add_event(4231, now - dt.timedelta(minutes=5))
    sim.host.add_event(4231, now - dt.timedelta(hours=3))     # too old
    sim.host.add_event(7036, now - dt.timedelta(minutes=1))   # another event id
    sim.host.add_event(4227, now - dt.timedelta(minutes=2), provider="Other")
    rc, out, dummy = ps(sim, EXHAUSTION.format(ms=3600000) + "\n" + RC)
    assert rc == 0
    lines = out.split("\r\n")
    assert lines[-2:] == ["@@tcpstack:rc:0@@", ""]
    events = [ET.fromstring(line) for line in lines[:-2]]
    ns = {"e": "http://schemas.microsoft.com/win/2004/08/events/event"}
    assert [e.findtext("e:System/e:EventID", namespaces=ns) for e in events] == ["4231", "4227"]  # newest first
    assert all(e.find("e:System/e:Provider", ns).get("Name") == "Tcpip" for e in events)
    stamps = [e.find("e:System/e:TimeCreated", ns).get("SystemTime") for e in events]
    assert all(s.endswith("Z") and "T" in s for s in stamps) and stamps[0] > stamps[1]
    out = ps(sim, EXHAUSTION.format(ms=3600000).replace("/c:500", "/c:1"))[1]
    assert out.count("<Event ") == 1 and "4231" in out
    assert ps(sim, EXHAUSTION.format(ms=1000))[:2] == (0, "")  # none in the last second


def test_wevtutil_invalid_query(sim):
    rc, out, err = ps(sim, "wevtutil qe System '/q:*[System[Nonsense(]]' /f:xml\n" + RC)
    assert out == "@@tcpstack:rc:15001@@\r\n" and "query is invalid" in err


# ---------------------------------------------------------------------------
# Cmdlet pipelines
# ---------------------------------------------------------------------------
def test_connection_and_process_csv():
    state = {"connections": [
        {"LocalAddress": "10.0.0.5", "LocalPort": 50001, "RemoteAddress": "10.0.0.9", "RemotePort": 443,
         "State": "TimeWait", "OwningProcess": 0},
        {"LocalAddress": "0.0.0.0", "LocalPort": 443, "RemoteAddress": "0.0.0.0", "RemotePort": 0,
         "State": "Listen", "OwningProcess": 4242}],
        "processes": [{"Id": 4242, "ProcessName": "w3wp"}]}
    with Simulator(host_state=state) as sim:
        sim.host.add_connection("10.0.0.5", 50002, "10.0.0.9", 443, "Established", 4242)
        rc, out, dummy = ps(sim, TCP_PIPELINE + "\n" + OK)
        assert rc == 0
        assert out == ('"LocalAddress","LocalPort","RemoteAddress","RemotePort","State","OwningProcess"\r\n'
                       '"10.0.0.5","50001","10.0.0.9","443","TimeWait","0"\r\n'
                       '"0.0.0.0","443","0.0.0.0","0","Listen","4242"\r\n'
                       '"10.0.0.5","50002","10.0.0.9","443","Established","4242"\r\n'
                       "@@tcpstack:ok:True@@\r\n")
        rc, out, dummy = ps(sim, PROC_PIPELINE.replace("Get-Process", "get-process"))
        lines = out.split("\r\n")
        assert lines[0] == '"Id","ProcessName"' and '"4242","w3wp"' in lines
        names = [line.split(",")[1] for line in lines[1:-1]]
        assert names == sorted(names, key=str.lower)
        sim.host.reboot()
        assert [c["State"] for c in sim.host.connections] == ["Listen"]


def test_server2008r2_lacks_get_nettcpconnection():
    with Simulator(profile="server2008r2") as sim:
        rc, out, err = ps(sim, "Write-Output '@@tcpstack:conn@@'\n" + TCP_PIPELINE + "\n" + OK)
        assert rc == 0 and out == "@@tcpstack:conn@@\r\n@@tcpstack:ok:False@@\r\n"
        assert "The term 'Get-NetTCPConnection' is not recognized" in err
        rc, dummy, dummy = ps(sim, TCP_PIPELINE)
        assert rc == 1
        assert ps(sim, "netsh int ipv4 show dynamicportrange protocol=tcp")[0] == 0


# ---------------------------------------------------------------------------
# German display language
# ---------------------------------------------------------------------------
def test_german_profile_translates_labels_not_numbers():
    with Simulator(language="de-DE") as sim:
        rc, out, dummy = ps(sim, "netsh int ipv4 show dynamicportrange protocol=tcp")
        assert rc == 0
        lines = out.split("\r\n")
        assert "Start Port" not in out and lines[1].startswith("Protokoll tcp")
        assert [line.split(":")[-1].strip() for line in lines[3:5]] == ["49152", "16384"]
        rc, out, dummy = ps(sim, "netsh int ipv4 set dynamicportrange protocol=tcp startport=1024 numberofports=255\n" + RC)
        assert out.endswith("@@tcpstack:rc:1@@\r\n") and "The parameter is incorrect." not in out
        dummy, dummy, err = ps(sim, "reg query '%s' /v Nope" % PARAMS)
        # pywinrm reads the CLIXML in code page 437 and cannot parse it as XML (the German text is not UTF-8): it
        # hands it over as it is, as it would from a German Windows
        assert err.startswith("#< CLIXML") and "reg : FEHLER:" in err
        assert ps(sim, TCP_PIPELINE)[1].startswith('"LocalAddress","LocalPort"')  # CSV is not translated
        dummy, dummy, err = ansible_exec(sim, "Get-Service")
        assert "Die Benennung" in err and "not recognized" not in err


# ---------------------------------------------------------------------------
# Fault injection, round trips, parallel hosts
# ---------------------------------------------------------------------------
def test_drop_connection_on_nth_command(sim):
    set_range = "netsh int ipv4 set dynamicportrange protocol=tcp startport=%d numberofports=1000"
    sim.faults.drop_command(2)
    sim.faults.drop_command(3, execute=True)
    assert ps(sim, set_range % 10000)[0] == 0
    with pytest.raises(requests.exceptions.ConnectionError):
        ps(sim, set_range % 20000)
    assert sim.host.dynamic_range() == (10000, 1000)  # dropped before it ran
    with pytest.raises(requests.exceptions.ConnectionError):
        ps(sim, set_range % 30000)
    assert sim.host.dynamic_range() == (30000, 1000)  # ran, reply lost
    assert ps(sim, set_range % 40000)[0] == 0
    assert sim.round_trips == 4


def test_delayed_reply_times_out(sim):
    sim.faults.delay(3, action="Command", n=1)
    proto = protocol(sim, read_timeout_sec=2, operation_timeout_sec=1)
    shell_id = proto.open_shell()
    with pytest.raises(requests.exceptions.Timeout):
        proto.run_command(shell_id, "netsh", ["int", "ipv4", "show", "dynamicportrange", "tcp"])
    command_id = proto.run_command(shell_id, "netsh", ["int", "ipv4", "show", "dynamicportrange", "tcp"])
    assert proto.get_command_output(shell_id, command_id)[2] == 0


def test_operation_timeout_is_retried_by_pywinrm(sim):
    sim.faults.operation_timeout(times=2)
    assert ps(sim, "Write-Output 'x'") == (0, "x\r\n", "")
    assert sim.requests["Receive"] == 3


def test_round_trips_and_log(sim):
    ansible_exec(sim, "Write-Output '@@tcpstack:range@@'\nnetsh int ipv4 show dynamicportrange protocol=tcp\n" + RC)
    ansible_exec(sim, "netsh int ipv4 set dynamicportrange protocol=tcp startport=10000 numberofports=1000\n" + RC)
    assert sim.round_trips == 2
    assert sim.log == ["Write-Output '@@tcpstack:range@@'", "netsh int ipv4 show dynamicportrange protocol=tcp", RC,
                       "netsh int ipv4 set dynamicportrange protocol=tcp startport=10000 numberofports=1000", RC]
    sim.reset_counters()
    assert sim.round_trips == 0 and sim.log == []


def test_twenty_hosts_in_parallel():
    sims = [Simulator(profile=sorted(PROFILES)[i % 5]).start() for i in range(20)]
    try:
        barrier = threading.Barrier(20)

        def work(i):
            barrier.wait()
            start = 2000 + i * 1000
            script = ("netsh int ipv4 set dynamicportrange protocol=tcp startport=%d numberofports=500\n%s\n"
                      "netsh int ipv4 show dynamicportrange protocol=tcp" % (start, RC))
            return ansible_exec(sims[i], script)

        with ThreadPoolExecutor(20) as pool:
            results = list(pool.map(work, range(20)))
        assert len({s.port for s in sims}) == 20
        for i, (rc, out, dummy) in enumerate(results):
            assert rc == 0 and re.search(r"Start Port {6,8}: %d\r\n" % (2000 + i * 1000), out)
            assert sims[i].host.dynamic_range() == (2000 + i * 1000, 500)
            assert sims[i].round_trips == 1
    finally:
        for s in sims:
            s.stop()


# ---------------------------------------------------------------------------
# SSH endpoint (Windows OpenSSH, DefaultShell powershell.exe), driven by the asyncssh client
# ---------------------------------------------------------------------------
CLIENT_KEY = asyncssh.generate_private_key("ssh-ed25519")
ENCODED = "PowerShell -NoProfile -NonInteractive -ExecutionPolicy Unrestricted -EncodedCommand "


@pytest.fixture
def ssh_sim():
    with Simulator(ssh=True, ssh_authorized_keys=CLIENT_KEY.export_public_key().decode()) as simulator:
        yield simulator


def ssh_run(simulator, command, username=USER, key=CLIENT_KEY):
    """One exec request over a new connection, the host key checked against sim.ssh_known_hosts."""
    async def run():
        async with asyncssh.connect("127.0.0.1", simulator.ssh_port, username=username, client_keys=[key],
                                    known_hosts=asyncssh.import_known_hosts(simulator.ssh_known_hosts),
                                    connect_timeout=10) as conn:
            return await asyncio.wait_for(conn.run(command, encoding=None), 20)
    return asyncio.run(run())


def encoded(script):
    return ENCODED + base64.b64encode(script.encode("utf-16-le")).decode("ascii")


def test_ssh_exec_shares_the_host_and_the_round_trips_with_winrm(ssh_sim):
    r = ssh_run(ssh_sim, encoded("netsh int ipv4 set dynamicportrange protocol=tcp startport=10000 numberofports=1000\n"
                                 + RC))
    assert (r.exit_status, r.stdout, r.stderr) == (0, b"Ok.\r\n\r\n@@tcpstack:rc:0@@\r\n", b"")
    assert "Number of Ports : 1000" in ps(ssh_sim, "netsh int ipv4 show dynamicportrange tcp")[1]  # over WinRM
    r = ssh_run(ssh_sim, "netsh int ipv4 show dynamicportrange protocol=tcp")  # raw: the default shell runs it
    assert r.exit_status == 0 and b"Start Port      : 10000" in r.stdout
    assert ssh_sim.round_trips == 3 and ssh_sim.requests["Command"] == 3


def test_ssh_exit_status_clixml_stderr_and_oem_code_page():
    with Simulator(language="de-DE", ssh=True, ssh_authorized_keys=CLIENT_KEY.export_public_key().decode()) as sim:
        r = ssh_run(sim, encoded("Write-Output 'x'\nGet-Service"))
        assert r.exit_status == 1 and r.stdout == b"x\r\n" and r.stderr.startswith(b"#< CLIXML\r\n")
        r = ssh_run(sim, encoded("reg query '%s' /v NoSuchValue\n%s" % (PARAMS, RC)))
        assert r.exit_status == 0 and b"@@tcpstack:rc:1@@" in r.stdout  # the last statement succeeded
        assert "reg : FEHLER: Der angegebene Registrierungsschlüssel" in r.stderr.decode("cp850")
        r = ssh_run(sim, "netsh int ipv4 show excludedportrange protocol=tcp")
        assert "Verwaltete Portausschlüsse".encode("cp850") in r.stdout  # OEM code page 850, not UTF-8


def test_ssh_refuses_other_keys_users_shells_and_subsystems(ssh_sim):
    with pytest.raises(asyncssh.PermissionDenied):
        ssh_run(ssh_sim, "netsh", key=asyncssh.generate_private_key("ssh-ed25519"))
    with pytest.raises(asyncssh.PermissionDenied):
        ssh_run(ssh_sim, "netsh", username="administrator")
    assert ssh_run(ssh_sim, "netsh int ipv4 show dynamicportrange tcp", username="ANSIBLE").exit_status == 0

    async def shell_and_sftp():
        async with asyncssh.connect("127.0.0.1", ssh_sim.ssh_port, username=USER, client_keys=[CLIENT_KEY],
                                    known_hosts=None, connect_timeout=10) as conn:
            shell = await asyncio.wait_for(conn.run(encoding=None), 20)
            with pytest.raises(asyncssh.ChannelOpenError):
                await asyncio.wait_for(conn.run(subsystem="sftp", encoding=None), 20)
            return shell
    shell = asyncio.run(shell_and_sftp())
    assert shell.exit_status == 1 and b"only exec requests are simulated" in shell.stderr
    assert ssh_sim.round_trips == 1


def test_ssh_faults_and_stop_closes_connections(ssh_sim):
    set_range = encoded("netsh int ipv4 set dynamicportrange protocol=tcp startport=30000 numberofports=1000")
    ssh_sim.faults.drop_command(1, execute=True)
    r = ssh_run(ssh_sim, set_range)
    assert (r.exit_status, r.stdout) == (None, b"")  # the connection was closed: no output, no exit status
    assert ssh_sim.host.dynamic_range() == (30000, 1000)  # ran, reply lost

    async def held_open():
        conn = await asyncssh.connect("127.0.0.1", ssh_sim.ssh_port, username=USER, client_keys=[CLIENT_KEY],
                                      known_hosts=None, connect_timeout=10)
        await asyncio.get_running_loop().run_in_executor(None, ssh_sim.stop)
        await asyncio.wait_for(conn.wait_closed(), 10)  # the simulator closed it
    asyncio.run(held_open())


# ---------------------------------------------------------------------------
# Real Ansible, real winrm connection
# ---------------------------------------------------------------------------
def _ansible_raw(sim, tmp_path, command):
    inventory = tmp_path / "hosts.json"
    inventory.write_text(json.dumps({"windows": {"hosts": fleet_hosts({}, {"sim": sim}, tmp_path)}}))
    cfg = tmp_path / "ansible.cfg"
    cfg.write_text("[defaults]\nstdout_callback = default\n")
    env = dict(os.environ, ANSIBLE_CONFIG=str(cfg), ANSIBLE_HOME=str(tmp_path / "home"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_LOCAL_TEMP=str(tmp_path / "tmp"))
    return subprocess.run([str(VENV_BIN / "ansible"), "-i", str(inventory), "windows", "-m", "ansible.builtin.raw",
                           "-a", command], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120,
                          check=False)


def test_real_ansible_raw_over_winrm(sim, tmp_path):
    proc = _ansible_raw(sim, tmp_path, "netsh int ipv4 show dynamicportrange protocol=tcp")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "sim | CHANGED | rc=0" in proc.stdout
    assert "Start Port      : 49152" in proc.stdout and "Number of Ports : 16384" in proc.stdout
    assert sim.log == ["netsh int ipv4 show dynamicportrange protocol=tcp"]
    assert sim.round_trips == 1 and sim.open_shells == 0
    proc = _ansible_raw(sim, tmp_path, "reg query '%s' /v NoSuchValue" % PARAMS)
    assert proc.returncode == 2 and "rc=1" in proc.stdout
    assert "unable to find the specified registry key or value" in proc.stdout + proc.stderr


# ---------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------
def test_command_line_entry_point():
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.windows_sim", "--profile", "server2019", "--language",
                             "de-DE", "--port", "0"], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        line = proc.stdout.readline()
        assert "server2019" in line and "build 17763" in line
        url = line.split(" on ")[-1].strip()
        r = winrm.Session(url, auth=(USER, PASSWORD), transport="basic", ca_trust_path=None).run_ps(
            "reg query 'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion' /v CurrentBuildNumber")
        assert r.status_code == 0 and b"17763" in r.std_out
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


def test_command_line_entry_point_with_ssh(tmp_path):
    keys = tmp_path / "authorized_keys"
    keys.write_text(CLIENT_KEY.export_public_key().decode())
    proc = subprocess.Popen([sys.executable, "-m", "tests.support.windows_sim", "--port", "0", "--ssh-port", "0",
                             "--ssh-authorized-keys", str(keys)], stdout=subprocess.PIPE, text=True, cwd=REPO)
    try:
        assert "build 20348" in proc.stdout.readline()
        line = proc.stdout.readline()
        assert line.startswith("windows_sim: ssh://ansible@127.0.0.1:") and "DefaultShell powershell.exe" in line
        known_hosts = line.split("known_hosts: ")[1].strip()
        sim = SimpleNamespace(ssh_port=int(known_hosts.split("]:")[1].split()[0]), ssh_known_hosts=known_hosts)
        r = ssh_run(sim, encoded("reg query 'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion' /v CurrentBuildNumber"))
        assert r.exit_status == 0 and b"20348" in r.stdout
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0


# ---------------------------------------------------------------------------
# Issue 13 finding 8 and issue 15: tools by full path, excluded ranges, layouts of real captures
# ---------------------------------------------------------------------------
NETSH_PATH = '& "$env:SystemRoot\\System32\\netsh.exe"'


def test_tools_by_full_path_and_a_program_planted_on_path(sim):
    sim.host.plant_on_path("netsh")
    rc, out, dummy = ps(sim, NETSH_PATH + " int ipv4 show dynamicportrange protocol=tcp\n" + RC)
    assert rc == 0 and "Start Port      : 49152" in out and out.endswith("@@tcpstack:rc:0@@\r\n")
    assert sim.host.planted_runs == []
    rc, out, dummy = ps(sim, "netsh int ipv4 show dynamicportrange protocol=tcp")  # the bare name: through PATH
    assert "Start Port      : 1025" in out and sim.host.planted_runs == [
        ["netsh", "int", "ipv4", "show", "dynamicportrange", "protocol=tcp"]]
    rc, out, dummy = ps(sim, "& 'C:\\Windows\\System32\\REG.EXE' query '%s' /v IPEnableRouter" % PARAMS)
    assert rc == 0 and "IPEnableRouter    REG_DWORD    0x0" in out


def test_add_and_delete_excludedportrange_stores(sim):
    host = sim.host
    add = NETSH_PATH + " int ipv4 add excludedportrange protocol=tcp startport=%d numberofports=%d%s\n" + RC
    rc, out, dummy = ps(sim, add % (50000, 100, " store=persistent"))
    assert out == "Ok.\r\n\r\n@@tcpstack:rc:0@@\r\n"
    ps(sim, add % (51000, 10, " store=active"))
    assert host.excluded_ranges() == [(50000, 50099, True), (51000, 51009, True)]
    assert host.excluded_ranges(store="persistent") == [(50000, 50099, True)]
    rc, out, dummy = ps(sim, add % (50050, 100, ""))  # overlaps: refused
    assert out == ("The process cannot access the file because it is being used by another process.\r\n\r\n"
                   "@@tcpstack:rc:1@@\r\n")
    rc, out, dummy = ps(sim, add % (5985, 1, ""))  # WinRM listens there
    assert "@@tcpstack:rc:1@@" in out and "being used by another process" in out
    rc, out, dummy = ps(sim, add % (65500, 100, ""))
    assert "The parameter is incorrect." in out and "rc:1@@" in out
    out = ps(sim, "netsh int ipv4 show excludedportrange protocol=tcp store=persistent")[1]
    assert "50000       50099     *" in out and "51000" not in out
    delete = NETSH_PATH + " int ipv4 delete excludedportrange protocol=tcp startport=%d numberofports=%d%s\n" + RC
    assert ps(sim, delete % (50000, 100, " store=active"))[1].endswith("rc:0@@\r\n")
    assert host.excluded_ranges() == [(51000, 51009, True)]
    host.reboot()  # the persistent store comes back, the active-only exclusion does not
    assert host.excluded_ranges() == [(50000, 50099, True)]
    assert ps(sim, delete % (50000, 100, ""))[1] == "Ok.\r\n\r\n@@tcpstack:rc:0@@\r\n"
    assert ps(sim, delete % (50000, 100, ""))[1] == "Element not found.\r\n\r\n@@tcpstack:rc:1@@\r\n"
    host.reboot()
    assert host.excluded_ranges() == []


def test_winnat_blocks_at_boot_move_and_vanish():
    with Simulator(host_state={"winnat_blocks": 2, "installer_range": "visual-studio"}) as sim:
        first = sim.host.excluded_ranges()
        assert first == [(1025, 1124, False), (1125, 1224, False)]  # from 1025 upward in a range starting at 1024
        out = ps(sim, "netsh int ipv6 show excludedportrange protocol=tcp")[1]
        assert "      1025        1124      \r\n" in out
        sim.host.reboot()
        second = sim.host.excluded_ranges()
        assert len(second) == 2 and second != first and all(b - a == 99 for a, b, dummy in second)
        sim.host.stop_winnat()
        assert sim.host.excluded_ranges() == []
        sim.host.start_winnat()
        assert len(sim.host.excluded_ranges()) == 2


def test_german_excluded_layout():
    with Simulator(language="de-DE") as sim:
        sim.host.add_excluded(50000, 50059, administered=True)
        sim.host.add_excluded(8000, 8000)
        out = ps(sim, "netsh int ipv4 show excludedportrange protocol=tcp")[1]
        assert out == ("\r\nPortausschlussbereiche f\u00fcr das Protokoll \"tcp\"\r\n\r\nStartport      Endport\r\n"
                       "----------    --------\r\n      8000        8000\r\n     50000       50059     *\r\n\r\n"
                       "* - Verwaltete Portausschl\u00fcsse.\r\n\r\n")


def test_build_26200_dynamicport_layout():
    with Simulator(profile="client26200") as sim:
        out = ps(sim, "netsh int ipv4 show dynamicportrange protocol=tcp")[1]
        assert out == ("Protocol tcp Dynamic Port Range\r\n---------------------------------\r\n"
                       "Start Port        : 49152\r\nNumber of Ports   : 16384\r\n\r\n")


def test_classic_tcpip_event_layout(sim):
    sim.host.add_event(4231, data=("",))
    out = ps(sim, EXHAUSTION.format(ms=3600000))[1]
    event = ET.fromstring(out.strip())
    ns = {"e": "http://schemas.microsoft.com/win/2004/08/events/event"}
    provider = event.find("e:System/e:Provider", ns)
    assert provider.attrib == {"Name": "Tcpip"}  # no Guid
    ident = event.find("e:System/e:EventID", ns)
    assert (ident.text, ident.get("Qualifiers"), event.findtext("e:System/e:Level", namespaces=ns)) == ("4231", "32768", "3")
    data = list(event.find("e:EventData", ns))
    assert [child.tag.split("}")[1] for child in data] == ["Data", "Binary"]
    assert event.findtext("e:System/e:Keywords", namespaces=ns) == "0x80000000000000"


LISTEN_PIPELINE = ("Get-NetTCPConnection -State Listen | Select-Object -Property LocalAddress,LocalPort | "
                   "ConvertTo-Csv -NoTypeInformation")


def test_listeners_pipeline(sim):
    sim.host.add_connection("10.0.0.5", 50000, "10.0.0.9", 443, "Established", 4)
    rc, out, dummy = ps(sim, LISTEN_PIPELINE + "\n" + OK)
    lines = out.split("\r\n")
    assert rc == 0 and lines[0] == '"LocalAddress","LocalPort"' and '"0.0.0.0","5985"' in lines
    assert not any("50000" in line for line in lines) and lines[-2] == "@@tcpstack:ok:True@@"
    with Simulator(profile="server2008r2") as legacy:
        rc, out, err = ps(legacy, LISTEN_PIPELINE + "\n" + OK)
        assert out == "@@tcpstack:ok:False@@\r\n" and "Get-NetTCPConnection" in err


SERVICE_PIPELINE = ("Get-CimInstance -ClassName Win32_Service | Select-Object -Property ProcessId,Name | "
                    "ConvertTo-Csv -NoTypeInformation")


def test_services_pipeline(sim):
    """Win32_Service's ProcessId and Name: running services carry their process, shared svchosts carry several,
    stopped ones 0; host_state ``services`` adds to the defaults; PowerShell 2.0 (2008 R2) has no Get-CimInstance."""
    sim.host.add_service("OrderSyncSvc", 5200)
    rc, out, dummy = ps(sim, SERVICE_PIPELINE.replace("Get-CimInstance", "get-ciminstance") + "\n" + OK)
    lines = out.split("\r\n")
    assert rc == 0 and lines[0] == '"ProcessId","Name"' and lines[-2] == "@@tcpstack:ok:True@@"
    assert '"5200","OrderSyncSvc"' in lines and '"784","RpcSs"' in lines and '"784","RpcEptMapper"' in lines
    assert '"0","W3SVC"' in lines
    sim.host.add_service("OrderSyncSvc", 0)  # stopped
    assert '"0","OrderSyncSvc"' in ps(sim, SERVICE_PIPELINE)[1].split("\r\n")
    rc, dummy, err = ps(sim, SERVICE_PIPELINE.replace("ProcessId,Name", "ProcessId,Name,PathName"))
    assert rc == 1 and "not recognized" in err  # only the contract's pipeline
    with Simulator(profile="server2008r2", host_state={"services": [{"ProcessId": 77, "Name": "X"}]}) as legacy:
        assert {"ProcessId": 77, "Name": "X"} in legacy.host.services
        rc, out, err = ps(legacy, SERVICE_PIPELINE + "\n" + OK)
        assert out == "@@tcpstack:ok:False@@\r\n" and "The term 'Get-CimInstance' is not recognized" in err
