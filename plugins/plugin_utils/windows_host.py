# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""WindowsHost: the only code that touches a Windows host, through the task's connection.

One method, ``run(script)``: one round trip.  It encodes the script as
Ansible's PowerShell shell plugin does (``_windows_commands.encode_command``),
hands the command line to the connection's ``exec_command`` (WinRM or SSH, as
ansible.windows' win_reboot does), decodes what comes back and counts the
round trip.  Everything else on the Windows side is pure.
"""

from __future__ import annotations

from typing import NamedTuple

from ansible.errors import AnsibleError
from ansible.module_utils.common.text.converters import to_text
from ansible.utils.display import Display

from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_commands import Marked, encode_command

try:
    from winrm.exceptions import WinRMError  # pywinrm, which Ansible's winrm connection uses
except ImportError:  # no pywinrm on this controller: no winrm connection either
    WinRMError = None

display = Display()

# What the connection's exec_command raises when the host cannot be reached or stops answering.  There is no
# common base class but Exception, so the list is explicit:
# - AnsibleError, AnsibleConnectionFailure among them: Ansible's ssh and winrm connections (a timeout, a closed
#   SSH connection, an unreachable host);
# - OSError: what Ansible's winrm connection lets through from requests (ConnectionError when the HTTP
#   connection drops, a RequestException) and from sockets;
# - pywinrm's WinRMError (WinRMTransportError, WSManFaultError) that Ansible's winrm connection re-raises.
CONNECTION_ERRORS = (AnsibleError, OSError) + ((WinRMError,) if WinRMError is not None else ())


class Output(NamedTuple):
    """What one script printed: the exit code of PowerShell, stdout and stderr as text."""

    rc: int
    stdout: str
    stderr: str


class WindowsHost:
    """One Windows host behind an Ansible connection (anything with ``exec_command``)."""

    def __init__(self, connection, name="windows"):
        self.connection = connection
        self.name = name  # how the -vvvvv log lines start: the action's name
        self.round_trips = 0

    def run(self, script):
        """One round trip: run ``script`` on the host; returns Output.  When ``script`` is Marked (the builders'
        scripts), Output.stdout is Marked with the same marker: what its sections are split on.

        Raises what the connection raises (CONNECTION_ERRORS): the caller
        decides what a lost connection means at that point.
        """
        self.round_trips += 1
        display.vvvvv("%s: sending script:\n%s" % (self.name, script))
        rc, stdout, stderr = self.connection.exec_command(encode_command(script), in_data=None, sudoable=False)
        stdout = to_text(stdout, errors="surrogate_or_strict")
        marker = getattr(script, "marker", None)
        if marker is not None:
            stdout = Marked(stdout, marker)
        stderr = to_text(stderr, errors="surrogate_or_strict")
        display.vvvvv("%s: rc=%s stdout:\n%s\nstderr:\n%s" % (self.name, rc, stdout, stderr))
        return Output(rc, stdout, stderr)
