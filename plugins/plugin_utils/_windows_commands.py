# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The scripts the Windows plugins send, and the command line that carries them.

Internal to the collection.  The command set is docs/windows_commands.md:
standard ``reg``, ``netsh`` and ``wevtutil``, called by their full path under
``$env:SystemRoot\\System32`` (never through the host's PATH, which another
program could have put a ``netsh.exe`` in front of), and fixed cmdlet
pipelines.
Each part of a script is a section: a marker line, one command, its exit code
(``_windows_parse.split_sections`` splits the output on the markers).

No text from the user ever reaches a script: the builders accept only ints
(checked again here) and members of the enums of ``_windows_options``, and
every other word they emit is a constant of this module.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass

from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import PORT_MAX
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import (
    EVENT_HOURS_MAX,
    EVENT_IDS,
    EVENT_MAX,
    NETSH_MIN_PORTS,
    NETSH_MIN_START,
    IpVersion,
    Protocol,
    RegName,
)

PARAMETERS_KEY = "HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters"
VERSION_KEY = "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion"
MARKER = "@@tcpstack:%s@@"
MARKER_RE = re.compile(r"\A@@tcpstack:([a-z0-9-]+)@@\Z")
RC_RE = re.compile(r"\A@@tcpstack:(rc|ok):([^@]*)@@\Z")
CONNECTIONS_PIPELINE = ("Get-NetTCPConnection | Select-Object -Property LocalAddress,LocalPort,RemoteAddress,RemotePort,"
                        "State,OwningProcess | ConvertTo-Csv -NoTypeInformation")
PROCESSES_PIPELINE = "Get-Process | Select-Object -Property Id,ProcessName | ConvertTo-Csv -NoTypeInformation"
# The services and the process each runs in (Win32_Service's ProcessId and Name; ProcessId 0: not running).
SERVICES_PIPELINE = ("Get-CimInstance -ClassName Win32_Service | Select-Object -Property ProcessId,Name | "
                     "ConvertTo-Csv -NoTypeInformation")
LISTENERS_PIPELINE = ("Get-NetTCPConnection -State Listen | Select-Object -Property LocalAddress,LocalPort | "
                      "ConvertTo-Csv -NoTypeInformation")
POWERSHELL = "PowerShell -NoProfile -NonInteractive -ExecutionPolicy Unrestricted -EncodedCommand "
TOOLS = ("reg", "netsh", "wevtutil")
# The call operator with the tool's full path; $env:SystemRoot is the host's own variable (C:\Windows), the only
# expansion besides $LASTEXITCODE and $? that a script contains.
TOOL_PATH = '& "$env:SystemRoot\\System32\\%s.exe"'


def _int(value, low, high):
    """An int (never a bool, never a str) within [low, high]: the only numbers a script may contain."""
    if type(value) is not int or not low <= value <= high:  # pylint: disable=unidiomatic-typecheck
        raise TypeError("script values must be ints from %d to %d, got %r" % (low, high, value))
    return value


def _member(value, enum_type):
    if not isinstance(value, enum_type):
        raise TypeError("expected a %s member, got %r" % (enum_type.__name__, value))
    return value


# ------------------------------------------------------------------ the changes win_tcp can make
# Each action checks its values when it is made and builds its own command from its ints and enum members:
# ``command(call)``, where ``call(tool)`` is how the tool is named: by full path in what statement() sends
# (``tool()``), bare in what describe() shows.
DWORD_MAX = 0xFFFFFFFF


@dataclass(frozen=True)
class SetDword:
    """reg add PARAMETERS_KEY /v NAME /t REG_DWORD /d VALUE /f"""

    name: RegName
    value: int

    def __post_init__(self):
        _member(self.name, RegName)
        _int(self.value, 0, DWORD_MAX)

    def command(self, call):
        return "%s add '%s' /v %s /t REG_DWORD /d %d /f" % (
            call("reg"), PARAMETERS_KEY, _member(self.name, RegName).value, _int(self.value, 0, DWORD_MAX))


@dataclass(frozen=True)
class DeleteValue:
    """reg delete PARAMETERS_KEY /v NAME /f"""

    name: RegName

    def __post_init__(self):
        _member(self.name, RegName)

    def command(self, call):
        return "%s delete '%s' /v %s /f" % (call("reg"), PARAMETERS_KEY, _member(self.name, RegName).value)


@dataclass(frozen=True)
class _PortBlock:
    """``numberofports`` ports from ``startport`` of one (ip, protocol): what netsh's port range commands take."""

    ip: IpVersion
    protocol: Protocol
    start: int
    number: int

    MIN_START = 1  # netsh's lowest start and number of ports for this command
    MIN_NUMBER = 1
    WHAT = "excluded range"

    def __post_init__(self):
        _member(self.ip, IpVersion)
        self._arguments()

    def _arguments(self):
        """``protocol=P startport=S numberofports=N``, every value checked again."""
        start = _int(self.start, self.MIN_START, PORT_MAX)
        number = _int(self.number, self.MIN_NUMBER, PORT_MAX)
        if start + number - 1 > PORT_MAX:
            raise TypeError("%s %d + %d ends above %d" % (self.WHAT, start, number, PORT_MAX))
        return "protocol=%s startport=%d numberofports=%d" % (_member(self.protocol, Protocol).value, start, number)

    def _netsh(self, call, verb_object, suffix=""):
        return "%s int %s %s %s%s" % (call("netsh"), _member(self.ip, IpVersion).value, verb_object, self._arguments(),
                                      suffix)


@dataclass(frozen=True)
class SetRange(_PortBlock):
    """netsh int IP set dynamicportrange protocol=PROTO startport=START numberofports=NUMBER"""

    MIN_START = NETSH_MIN_START
    MIN_NUMBER = NETSH_MIN_PORTS
    WHAT = "dynamic range"

    def command(self, call):
        return self._netsh(call, "set dynamicportrange")


@dataclass(frozen=True)
class AddExcluded(_PortBlock):
    """netsh int IP add excludedportrange protocol=PROTO startport=START numberofports=NUMBER store=persistent"""

    def command(self, call):
        return self._netsh(call, "add excludedportrange", " store=persistent")


@dataclass(frozen=True)
class DeleteExcluded(_PortBlock):
    """netsh int IP delete excludedportrange protocol=PROTO startport=START numberofports=NUMBER store=persistent"""

    def command(self, call):
        return self._netsh(call, "delete excludedportrange", " store=persistent")


ACTIONS = (SetDword, DeleteValue, SetRange, AddExcluded, DeleteExcluded)


def _action(action):
    if type(action) not in ACTIONS:  # pylint: disable=unidiomatic-typecheck
        raise TypeError("not a win_tcp action: %r" % (action,))
    return action


def _bare(name):
    """A contract tool's bare name, as messages show it."""
    if name not in TOOLS:
        raise TypeError("not a contract tool: %r" % (name,))
    return name


def tool(name):
    """The call of a System32 tool by full path: ``& "$env:SystemRoot\\System32\\netsh.exe"``."""
    return TOOL_PATH % _bare(name)


def statement(action):
    """The statement an action sends: its command, built from its ints and enum members, the tool by full path."""
    return _action(action).command(tool)


def describe(action):
    """The command an action runs, as messages name it (``netsh int ipv4 ...``; statement() is what is sent)."""
    return _action(action).command(_bare)


# ------------------------------------------------------------------ sections and scripts
def _section(word, command):
    """Marker, command, exit-code marker: the three statements of one section."""
    if not MARKER_RE.match(MARKER % word):
        raise TypeError("bad section name %r" % (word,))
    return ["Write-Output '%s'" % (MARKER % word), command, 'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"']


def _pipeline(word, pipeline):
    """A cmdlet pipeline's section: its success is ``$?`` (True/False), cmdlets set no exit code."""
    return ["Write-Output '%s'" % (MARKER % word), pipeline, 'Write-Output "@@tcpstack:ok:$?@@"']


def range_word(prefix, ip, proto):
    """The section name of one (ip, protocol) read: ``range-ipv4-tcp``, ``verify-excluded-ipv6-udp``."""
    return "%s-%s-%s" % (prefix, _member(ip, IpVersion).value, _member(proto, Protocol).value)


def _build_lines():
    return _section("build", "%s query '%s' /v CurrentBuildNumber" % (tool("reg"), VERSION_KEY))


def _read_lines(targets, excluded=True, prefix=""):
    lines = []
    lines += _section(prefix + "params", "%s query '%s'" % (tool("reg"), PARAMETERS_KEY))
    for ip, proto in targets:
        lines += _section(range_word(prefix + "range", ip, proto),
                          "%s int %s show dynamicportrange protocol=%s" % (tool("netsh"), ip.value, proto.value))
        if excluded:
            lines += _section(range_word(prefix + "excluded", ip, proto),
                              "%s int %s show excludedportrange protocol=%s" % (tool("netsh"), ip.value, proto.value))
    return lines


def _script(lines):
    return "\n".join(lines) + "\n"


def build_read_script(targets, listeners=False):
    """The one read of win_tcp: build, TCP parameters, dynamic and excluded ranges of each (ip, protocol); with
    ``listeners`` the listening TCP ports too (section ``listeners``), to refuse an exclusion netsh would refuse."""
    lines = _build_lines() + _read_lines(targets)
    if listeners:
        lines += _pipeline("listeners", LISTENERS_PIPELINE)
    return _script(lines)


def build_apply_script(actions, targets, excluded=False):
    """Apply ``actions`` in order (sections ``apply-N``), then read back the parameters and ranges (``verify-``),
    with ``excluded`` the excluded ranges too."""
    lines = []
    for index, action in enumerate(actions):
        lines += _section("apply-%d" % _int(index, 0, 1000), statement(action))
    lines += _read_lines(targets, excluded=bool(excluded), prefix="verify-")
    return _script(lines)


def event_query(hours):
    """wevtutil's XPath for Tcpip 4227/4231 within ``hours`` (an int), doubled quotes as PowerShell needs."""
    ms = _int(hours, 0, EVENT_HOURS_MAX) * 3600 * 1000
    return ("*[System[Provider[@Name=''Tcpip''] and (EventID=%d or EventID=%d) and "
            "TimeCreated[timediff(@SystemTime) <= %d]]]" % (EVENT_IDS[0], EVENT_IDS[1], ms))


def build_info_script(targets, event_hours):
    """The one read of win_port_usage_info: win_tcp's read, the connections, the processes, the services, the
    Tcpip events."""
    lines = _build_lines() + _read_lines(targets)
    lines += _pipeline("connections", CONNECTIONS_PIPELINE)
    lines += _pipeline("processes", PROCESSES_PIPELINE)
    lines += _pipeline("services", SERVICES_PIPELINE)
    lines += _section("events", "%s qe System '/q:%s' /f:xml /rd:true /c:%d"
                      % (tool("wevtutil"), event_query(event_hours), EVENT_MAX))
    return _script(lines)


def encode_command(script):
    """The command line that runs ``script``: PowerShell with the script as UTF-16LE base64.

    The same bytes Ansible's winrm connection would send for ``script`` (it recognises this prefix and does not
    encode twice); the ssh connection passes it unchanged to Windows' OpenSSH server, whose default shell
    (PowerShell) runs it. Both are tested against the Windows host simulator. This is what ansible.windows'
    win_reboot sends too.
    """
    lines = [line.strip() for line in script.splitlines() if line.strip()]
    return POWERSHELL + base64.b64encode("\n".join(lines).encode("utf-16-le")).decode("ascii")
