"""windows_host: one round trip per run(), the command line Ansible's PowerShell shell would send, text back."""

from __future__ import annotations

import requests
from ansible.errors import AnsibleConnectionFailure

from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_commands import POWERSHELL
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import CONNECTION_ERRORS, WindowsHost

from tests.support.windows_sim.connection import InProcessConnection


def test_run_is_one_round_trip():
    conn = InProcessConnection()
    host = WindowsHost(conn, "test")
    output = host.run("Write-Output '@@tcpstack:a@@'\nnetsh int ipv4 show dynamicportrange protocol=tcp\n"
                      'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"\n')
    assert host.round_trips == conn.round_trips == 1
    assert output.rc == 0 and output.stdout.startswith("@@tcpstack:a@@\r\n") and "Start Port      : 49152" in output.stdout
    assert output.stderr == ""
    assert conn.scripts[0].splitlines()[1] == "netsh int ipv4 show dynamicportrange protocol=tcp"


def test_powershell_errors_come_back_as_text():
    conn = InProcessConnection()
    output = WindowsHost(conn).run("Remove-Item C:\\\n")
    assert output.rc == 1 and "Remove-Item" in output.stderr and "CommandNotFoundException" in output.stderr
    assert not output.stderr.startswith("#< CLIXML")


def test_connection_errors_are_the_connections_own():
    assert issubclass(AnsibleConnectionFailure, CONNECTION_ERRORS)
    assert issubclass(requests.exceptions.ConnectionError, CONNECTION_ERRORS)  # what pywinrm lets through
    assert issubclass(ConnectionResetError, CONNECTION_ERRORS)
    assert not issubclass(ValueError, CONNECTION_ERRORS)


def test_the_command_line_is_powershell_encoded():
    conn = InProcessConnection()
    WindowsHost(conn).run("Write-Output 'x'\n")
    assert conn.commands[0].startswith(POWERSHELL) and conn.scripts == ["Write-Output 'x'"]
