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
(``_windows_parse.split_sections`` splits the output on the markers).  The
marker is random per script (``new_marker``: 16 bytes from the controller's
``secrets``), written into the script as a literal: a host's output (a process
or service name holding CR/LF and a copy of a marker) cannot forge a section
without knowing it.  A script is ``Marked`` text: it carries its marker, and so
does the output WindowsHost.run() returns for it.

No text from the user ever reaches a script: the builders accept only ints
(checked again here) and members of the enums of ``_windows_options``, and
every other word they emit is a constant of this module.
"""

from __future__ import annotations

import base64
import re
import secrets
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
MARKER_BYTES = 16  # random bytes of a script's marker
MARKER_PREFIX = "tcpstack-"
MARKER_TOKEN_RE = re.compile(r"\Atcpstack-[0-9a-f]{%d}\Z" % (2 * MARKER_BYTES))
WORD_RE = re.compile(r"\A[a-z0-9-]+\Z")  # a section's name
MARKER = "@@%s:%s@@"  # (marker, section name)
RC_MARKER = '@@%s:rc:$LASTEXITCODE@@'  # (marker): after a native command
OK_MARKER = '@@%s:ok:$?@@'  # (marker): after a cmdlet pipeline
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
class Marked(str):
    """Text (a script, or the stdout of one) and the marker of its sections (``marker``)."""

    def __new__(cls, text, marker):
        self = super().__new__(cls, text)
        self.marker = check_marker(marker)
        return self


def new_marker():
    """A fresh marker: "tcpstack-" and 16 random bytes in hex, from the controller's CSPRNG."""
    return MARKER_PREFIX + secrets.token_hex(MARKER_BYTES)


def check_marker(marker):
    """``marker`` when it is one new_marker() makes, else TypeError: only such a literal enters a script."""
    if not isinstance(marker, str) or not MARKER_TOKEN_RE.match(marker):
        raise TypeError("not a section marker: %r" % (marker,))
    return marker


def _section(word, command, marker, end=RC_MARKER):
    """Marker, command, exit-code marker: the three statements of one section."""
    if not isinstance(word, str) or not WORD_RE.match(word):
        raise TypeError("bad section name %r" % (word,))
    check_marker(marker)
    return ["Write-Output '%s'" % (MARKER % (marker, word)), command, 'Write-Output "%s"' % (end % marker)]


def _pipeline(word, pipeline, marker):
    """A cmdlet pipeline's section: its success is ``$?`` (True/False), cmdlets set no exit code."""
    return _section(word, pipeline, marker, end=OK_MARKER)


def range_word(prefix, ip, proto):
    """The section name of one (ip, protocol) read: ``range-ipv4-tcp``, ``verify-excluded-ipv6-udp``."""
    return "%s-%s-%s" % (prefix, _member(ip, IpVersion).value, _member(proto, Protocol).value)


def _build_lines(marker):
    return _section("build", "%s query '%s' /v CurrentBuildNumber" % (tool("reg"), VERSION_KEY), marker)


def _read_lines(targets, marker, excluded=True, prefix=""):
    lines = []
    lines += _section(prefix + "params", "%s query '%s'" % (tool("reg"), PARAMETERS_KEY), marker)
    for ip, proto in targets:
        lines += _section(range_word(prefix + "range", ip, proto),
                          "%s int %s show dynamicportrange protocol=%s" % (tool("netsh"), ip.value, proto.value),
                          marker)
        if excluded:
            lines += _section(range_word(prefix + "excluded", ip, proto),
                              "%s int %s show excludedportrange protocol=%s" % (tool("netsh"), ip.value, proto.value),
                              marker)
    return lines


def _script(lines, marker):
    return Marked("\n".join(lines) + "\n", marker)


def build_read_script(targets, listeners=False, marker=None):
    """The one read of win_tcp: build, TCP parameters, dynamic and excluded ranges of each (ip, protocol); with
    ``listeners`` the listening TCP ports too (section ``listeners``), to refuse an exclusion netsh would refuse.
    A Marked script: its sections use ``marker`` (default: a new one)."""
    marker = new_marker() if marker is None else marker
    lines = _build_lines(marker) + _read_lines(targets, marker)
    if listeners:
        lines += _pipeline("listeners", LISTENERS_PIPELINE, marker)
    return _script(lines, marker)


def build_apply_script(actions, targets, excluded=False, marker=None):
    """Apply ``actions`` in order (sections ``apply-N``), then read back the parameters and ranges (``verify-``),
    with ``excluded`` the excluded ranges too.  A Marked script (``marker``: default a new one)."""
    marker = new_marker() if marker is None else marker
    lines = []
    for index, action in enumerate(actions):
        lines += _section("apply-%d" % _int(index, 0, 1000), statement(action), marker)
    lines += _read_lines(targets, marker, excluded=bool(excluded), prefix="verify-")
    return _script(lines, marker)


def event_query(hours):
    """wevtutil's XPath for Tcpip 4227/4231 within ``hours`` (an int), doubled quotes as PowerShell needs."""
    ms = _int(hours, 0, EVENT_HOURS_MAX) * 3600 * 1000
    return ("*[System[Provider[@Name=''Tcpip''] and (EventID=%d or EventID=%d) and "
            "TimeCreated[timediff(@SystemTime) <= %d]]]" % (EVENT_IDS[0], EVENT_IDS[1], ms))


def build_info_script(targets, event_hours, marker=None):
    """The one read of win_port_usage_info: win_tcp's read, the connections, the processes, the services, the
    Tcpip events.  A Marked script (``marker``: default a new one)."""
    marker = new_marker() if marker is None else marker
    lines = _build_lines(marker) + _read_lines(targets, marker)
    lines += _pipeline("connections", CONNECTIONS_PIPELINE, marker)
    lines += _pipeline("processes", PROCESSES_PIPELINE, marker)
    lines += _pipeline("services", SERVICES_PIPELINE, marker)
    lines += _section("events", "%s qe System '/q:%s' /f:xml /rd:true /c:%d"
                      % (tool("wevtutil"), event_query(event_hours), EVENT_MAX), marker)
    return _script(lines, marker)


def encode_command(script):
    """The command line that runs ``script``: PowerShell with the script as UTF-16LE base64.

    The same bytes Ansible's winrm connection would send for ``script`` (it recognises this prefix and does not
    encode twice); the ssh connection passes it unchanged to Windows' OpenSSH server, whose default shell
    (PowerShell) runs it. Both are tested against the Windows host simulator. This is what ansible.windows'
    win_reboot sends too.
    """
    lines = [line.strip() for line in script.splitlines() if line.strip()]
    return POWERSHELL + base64.b64encode("\n".join(lines).encode("utf-16-le")).decode("ascii")
