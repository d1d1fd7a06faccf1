# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Windows TCP tuning, pure logic: validation, output parsing, script building, planning.

Used by the ``win_tcp`` and ``win_port_usage_info`` action plugins, which run on
the controller and send the scripts built here over the task's connection.
Nothing here touches a host.  The command set and output formats are those of
docs/windows_commands.md (standard ``reg``, ``netsh`` and ``wevtutil``, and two
fixed cmdlet pipelines).

No text from the user ever reaches a script: the builders accept only ints
(validated again here) and members of the enums below, and every other word
they emit is a constant of this module.
"""

from __future__ import annotations

import base64
import csv
import enum
import io
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ansible_collections.tcpstack.tuning.plugins.module_utils import port_usage
from ansible_collections.tcpstack.tuning.plugins.module_utils.plan import make_plan
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import parse_port_range
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import (
    ValidationError,
    strict_int,
)

PARAMETERS_KEY = "HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters"
VERSION_KEY = "HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion"

# netsh's rules for set dynamicportrange (windowsserverdocs netsh-interface.md, KB929851)
NETSH_MIN_START = 1025
NETSH_MIN_PORTS = 255
PORT_MAX = 65535
DEFAULT_RANGE = (49152, 16384)  # start, number of ports (Vista / Server 2008 and later)

# TcpTimedWaitDelay (KB314053; biztalk-docs): 30-300 before Windows 8.1 / Server 2012 R2, 2-300 from then on
TIME_WAIT_MIN = 2
TIME_WAIT_MIN_LEGACY = 30
TIME_WAIT_MAX = 300
TIME_WAIT_DEFAULT = 120
BUILD_2012R2 = 9600
MAX_USER_PORT_MIN = 5000
MAX_USER_PORT_MAX = 65534

EVENT_IDS = (4227, 4231)
EVENT_MAX = 500
EVENT_HOURS_MAX = 8760  # a year
MARKER = "@@tcpstack:%s@@"
_MARKER_RE = re.compile(r"\A@@tcpstack:([a-z0-9-]+)@@\Z")
_RC_RE = re.compile(r"\A@@tcpstack:(rc|ok):([^@]*)@@\Z")

MAX_USER_PORT_WARNING = (
    "max_user_port: MaxUserPort is legacy. Since Windows Vista / Server 2008 the dynamic port range "
    "(port_range, netsh int ipv4|ipv6 set dynamicportrange) decides which ports are handed out; "
    "MaxUserPort is read at boot and only affects old code paths.")


class Protocol(enum.Enum):
    """The transport protocols netsh keeps a dynamic range for."""

    TCP = "tcp"
    UDP = "udp"


class IpVersion(enum.Enum):
    """The IP versions netsh keeps a dynamic range for."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"


class RegName(enum.Enum):
    """The registry values under PARAMETERS_KEY that win_tcp manages (REG_DWORD, read at boot)."""

    TIME_WAIT_DELAY = "TcpTimedWaitDelay"
    MAX_USER_PORT = "MaxUserPort"


class State(enum.Enum):
    PRESENT = "present"
    ABSENT = "absent"


class WinTcpError(Exception):
    """The host did something unexpected (a command failed, output could not be parsed)."""


# ------------------------------------------------------------------ validation
WIN_TCP_OPTIONS = ("time_wait_delay", "max_user_port", "port_range", "protocols", "ip_versions", "state")
_OPTIONS_INFO = ("top", "event_hours")


@dataclass(frozen=True)
class Desired:
    """win_tcp's validated options."""

    time_wait_delay: Optional[int] = None
    max_user_port: Optional[int] = None
    port_range: Optional[Tuple[int, int]] = None  # (start, number of ports)
    protocols: Tuple[Protocol, ...] = (Protocol.TCP,)
    ip_versions: Tuple[IpVersion, ...] = (IpVersion.IPV4, IpVersion.IPV6)
    state: State = State.PRESENT

    @property
    def targets(self):
        """The (ip version, protocol) pairs whose dynamic range is read and, with port_range, managed."""
        return tuple((ip, proto) for ip in self.ip_versions for proto in self.protocols)


def _choice_list(value, option, enum_type, default):
    names = [m.value for m in enum_type]
    valid = "a non-empty list of %s" % ", ".join(names)
    if value is None:
        return default
    if isinstance(value, str):
        items = [v.strip() for v in value.split(",")]
    elif isinstance(value, (list, tuple)):
        items = list(value)
    else:
        raise ValidationError(option, value, valid)
    out = []
    for item in items:
        if not isinstance(item, str) or item.lower() not in names:
            raise ValidationError(option, value, valid)
        member = enum_type(item.lower())
        if member not in out:
            out.append(member)
    if not out:
        raise ValidationError(option, value, valid)
    # a fixed order, whatever the order given
    return tuple(m for m in enum_type if m in out)


def _unknown(args, known):
    extra = sorted(set(args) - set(known))
    if extra:
        raise ValidationError(extra[0], args[extra[0]], "not an option of this action; options are %s" % ", ".join(known))


def validate_dynamic_range(value, option="port_range"):
    """Parse a port range in the forms linux_tcp accepts and apply netsh's rules; returns (start, number)."""
    low, high = parse_port_range(value, option)
    low, high = int(low), int(high)  # plain ints: Ansible hands tagged int subclasses to action plugins
    number = high - low + 1
    if low < NETSH_MIN_START:
        raise ValidationError(option, value, "netsh refuses a dynamic range starting below %d (the start is %d)"
                              % (NETSH_MIN_START, low))
    if number < NETSH_MIN_PORTS:
        raise ValidationError(option, value, "netsh refuses a dynamic range of fewer than %d ports (%d-%d is %d ports)"
                              % (NETSH_MIN_PORTS, low, high, number))
    if low + number - 1 > PORT_MAX:  # cannot happen with LOW-HIGH forms; kept as netsh's own rule
        raise ValidationError(option, value, "start + number of ports - 1 must be at most %d" % PORT_MAX)
    return (low, number)


def validate_win_tcp(args):
    """Validate win_tcp's options (everything that does not depend on the host); returns Desired."""
    args = dict(args or {})
    _unknown(args, WIN_TCP_OPTIONS)
    state = args.get("state")
    if state is None:
        state = State.PRESENT
    elif isinstance(state, str) and state in ("present", "absent"):
        state = State(state)
    else:
        raise ValidationError("state", state, "present or absent")
    time_wait = args.get("time_wait_delay")
    if time_wait is not None:
        time_wait = int(strict_int(time_wait, "time_wait_delay", TIME_WAIT_MIN, TIME_WAIT_MAX,
                                   "an integer number of seconds (TcpTimedWaitDelay)"))
    max_user_port = args.get("max_user_port")
    if max_user_port is not None:
        max_user_port = int(strict_int(max_user_port, "max_user_port", MAX_USER_PORT_MIN, MAX_USER_PORT_MAX,
                                       "an integer port (MaxUserPort)"))
    port_range = args.get("port_range")
    if port_range is not None:
        port_range = validate_dynamic_range(port_range)
    protocols = _choice_list(args.get("protocols"), "protocols", Protocol, (Protocol.TCP,))
    ip_versions = _choice_list(args.get("ip_versions"), "ip_versions", IpVersion, (IpVersion.IPV4, IpVersion.IPV6))
    return Desired(time_wait, max_user_port, port_range, protocols, ip_versions, state)


def validate_for_host(desired, build):
    """The checks that depend on the host's Windows build; raise ValidationError before any change."""
    if desired.state is State.PRESENT and desired.time_wait_delay is not None and desired.time_wait_delay < TIME_WAIT_MIN_LEGACY:
        if build is None:
            raise WinTcpError("time_wait_delay: %d needs Windows 8.1 / Server 2012 R2 (build %d) or later, and the "
                              "host's build could not be read" % (desired.time_wait_delay, BUILD_2012R2))
        if build < BUILD_2012R2:
            raise ValidationError(
                "time_wait_delay", desired.time_wait_delay,
                "an integer number of seconds from %d to %d on this host: its Windows build %d is older than "
                "Windows 8.1 / Server 2012 R2 (build %d), where TcpTimedWaitDelay's minimum is %d"
                % (TIME_WAIT_MIN_LEGACY, TIME_WAIT_MAX, build, BUILD_2012R2, TIME_WAIT_MIN_LEGACY))


@dataclass(frozen=True)
class InfoOptions:
    top: int = 10
    event_hours: int = 24

    @property
    def targets(self):
        """win_port_usage_info reads the dynamic and excluded ranges of every IP version and protocol."""
        return tuple((ip, proto) for ip in IpVersion for proto in Protocol)


def validate_port_usage_info(args):
    """Validate win_port_usage_info's options; returns InfoOptions."""
    args = dict(args or {})
    _unknown(args, _OPTIONS_INFO)
    top = args.get("top")
    top = 10 if top is None else int(strict_int(top, "top", 1, 1000, "an integer number of destinations"))
    hours = args.get("event_hours")
    hours = 24 if hours is None else int(strict_int(hours, "event_hours", 1, EVENT_HOURS_MAX, "an integer number of hours"))
    return InfoOptions(top, hours)


# ------------------------------------------------------------------ script building
def _int(value, low, high):
    """An int (never a bool, never a str) within [low, high]: the only numbers a script may contain."""
    if type(value) is not int or not low <= value <= high:  # pylint: disable=unidiomatic-typecheck
        raise TypeError("script values must be ints from %d to %d, got %r" % (low, high, value))
    return value


def _member(value, enum_type):
    if not isinstance(value, enum_type):
        raise TypeError("expected a %s member, got %r" % (enum_type.__name__, value))
    return value


@dataclass(frozen=True)
class SetDword:
    """reg add PARAMETERS_KEY /v NAME /t REG_DWORD /d VALUE /f"""

    name: RegName
    value: int

    def __post_init__(self):
        _member(self.name, RegName)
        _int(self.value, 0, 0xFFFFFFFF)


@dataclass(frozen=True)
class DeleteValue:
    """reg delete PARAMETERS_KEY /v NAME /f"""

    name: RegName

    def __post_init__(self):
        _member(self.name, RegName)


@dataclass(frozen=True)
class SetRange:
    """netsh int IP set dynamicportrange protocol=PROTO startport=START numberofports=NUMBER"""

    ip: IpVersion
    protocol: Protocol
    start: int
    number: int

    def __post_init__(self):
        _member(self.ip, IpVersion)
        _member(self.protocol, Protocol)
        _int(self.start, NETSH_MIN_START, PORT_MAX)
        _int(self.number, NETSH_MIN_PORTS, PORT_MAX)
        if self.start + self.number - 1 > PORT_MAX:
            raise TypeError("dynamic range %d + %d ends above %d" % (self.start, self.number, PORT_MAX))


def _section(word, command):
    """Marker, command, exit-code marker: the three statements of one section."""
    if not _MARKER_RE.match(MARKER % word):
        raise TypeError("bad section name %r" % (word,))
    return ["Write-Output '%s'" % (MARKER % word), command, 'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"']


def _range_word(prefix, ip, proto):
    return "%s-%s-%s" % (prefix, _member(ip, IpVersion).value, _member(proto, Protocol).value)


def _read_lines(targets, excluded=True, prefix=""):
    lines = []
    lines += _section(prefix + "params", "reg query '%s'" % PARAMETERS_KEY)
    for ip, proto in targets:
        lines += _section(_range_word(prefix + "range", ip, proto),
                          "netsh int %s show dynamicportrange protocol=%s" % (ip.value, proto.value))
        if excluded:
            lines += _section(_range_word(prefix + "excluded", ip, proto),
                              "netsh int %s show excludedportrange protocol=%s" % (ip.value, proto.value))
    return lines


def build_read_script(targets):
    """The one read of win_tcp: build, TCP parameters, dynamic and excluded ranges of each (ip, protocol)."""
    lines = _section("build", "reg query '%s' /v CurrentBuildNumber" % VERSION_KEY)
    lines += _read_lines(targets)
    return "\n".join(lines) + "\n"


def _action_line(action):
    if isinstance(action, SetDword):
        return "reg add '%s' /v %s /t REG_DWORD /d %d /f" % (PARAMETERS_KEY, action.name.value, _int(action.value, 0, 0xFFFFFFFF))
    if isinstance(action, DeleteValue):
        return "reg delete '%s' /v %s /f" % (PARAMETERS_KEY, action.name.value)
    if isinstance(action, SetRange):
        return "netsh int %s set dynamicportrange protocol=%s startport=%d numberofports=%d" % (
            action.ip.value, action.protocol.value,
            _int(action.start, NETSH_MIN_START, PORT_MAX), _int(action.number, NETSH_MIN_PORTS, PORT_MAX))
    raise TypeError("not a win_tcp action: %r" % (action,))


def describe(action):
    """The command an action sends, for messages."""
    return _action_line(action)


def build_apply_script(actions, targets):
    """Apply ``actions`` in order, then read back the parameters and ranges (``verify-`` sections)."""
    lines = []
    for index, action in enumerate(actions):
        lines += _section("apply-%d" % _int(index, 0, 1000), _action_line(action))
    lines += _read_lines(targets, excluded=False, prefix="verify-")
    return "\n".join(lines) + "\n"


CONNECTIONS_PIPELINE = ("Get-NetTCPConnection | Select-Object -Property LocalAddress,LocalPort,RemoteAddress,RemotePort,"
                        "State,OwningProcess | ConvertTo-Csv -NoTypeInformation")
PROCESSES_PIPELINE = "Get-Process | Select-Object -Property Id,ProcessName | ConvertTo-Csv -NoTypeInformation"


def event_query(hours):
    """wevtutil's XPath for Tcpip 4227/4231 within ``hours`` (an int), doubled quotes as PowerShell needs."""
    ms = _int(hours, 0, EVENT_HOURS_MAX) * 3600 * 1000
    return ("*[System[Provider[@Name=''Tcpip''] and (EventID=%d or EventID=%d) and "
            "TimeCreated[timediff(@SystemTime) <= %d]]]" % (EVENT_IDS[0], EVENT_IDS[1], ms))


def build_info_script(targets, event_hours):
    """The one read of win_port_usage_info."""
    lines = _section("build", "reg query '%s' /v CurrentBuildNumber" % VERSION_KEY)
    lines += _read_lines(targets)
    lines += ["Write-Output '%s'" % (MARKER % "connections"), CONNECTIONS_PIPELINE, 'Write-Output "@@tcpstack:ok:$?@@"']
    lines += ["Write-Output '%s'" % (MARKER % "processes"), PROCESSES_PIPELINE, 'Write-Output "@@tcpstack:ok:$?@@"']
    lines += _section("events", "wevtutil qe System '/q:%s' /f:xml /rd:true /c:%d" % (event_query(event_hours), EVENT_MAX))
    return "\n".join(lines) + "\n"


POWERSHELL = "PowerShell -NoProfile -NonInteractive -ExecutionPolicy Unrestricted -EncodedCommand "


def encode_command(script):
    """The command line that runs ``script``: PowerShell with the script as UTF-16LE base64.

    The same bytes Ansible's winrm connection would send for ``script`` (it recognises this prefix and does not
    encode twice); the ssh connection passes it unchanged to Windows' OpenSSH server, whose default shell
    (PowerShell) runs it. Both are tested against the Windows host simulator. This is what ansible.windows'
    win_reboot sends too.
    """
    lines = [line.strip() for line in script.splitlines() if line.strip()]
    return POWERSHELL + base64.b64encode("\n".join(lines).encode("utf-16-le")).decode("ascii")


# ------------------------------------------------------------------ parsing
@dataclass
class Section:
    lines: list
    rc: Optional[str] = None

    @property
    def ok(self):
        return self.rc in ("0", "True")

    @property
    def text(self):
        return "\n".join(self.lines).strip()


def split_sections(stdout):
    """Split a script's stdout on the markers: {word: Section(lines, rc)}.  Text before the first marker is dropped."""
    sections = {}
    current = None
    for raw in stdout.splitlines():
        line = raw.rstrip("\r")
        stripped = line.strip()
        match = _MARKER_RE.match(stripped)
        if match:
            current = Section([])
            sections[match.group(1)] = current
            continue
        match = _RC_RE.match(stripped)
        if match and current is not None:
            current.rc = match.group(2)
            current = None
            continue
        if current is not None:
            current.lines.append(line)
    return sections


@dataclass(frozen=True)
class RegValue:
    type: str
    data: str

    @property
    def dword(self):
        """The value as an int when it is a well-formed REG_DWORD, else None."""
        if self.type != "REG_DWORD":
            return None
        try:
            return int(self.data, 16) if self.data.lower().startswith("0x") else int(self.data)
        except ValueError:
            return None


_REG_LINE = re.compile(r"\A {2,}(\S(?:.*?\S)?) {2,}(REG_[A-Z0-9_]+)(?: {2,}(.*?))?\s*\Z")


def parse_reg_query(lines):
    """``reg query KEY [/v NAME]`` output -> {name: RegValue} for the key's own values (subkeys are skipped).

    Names and types are never translated; the data of a REG_DWORD is hex (0x1e).
    """
    values = {}
    in_key = 0
    for line in lines:
        if line.startswith("HKEY_"):
            in_key += 1
            continue
        match = _REG_LINE.match(line)
        if match and in_key <= 1:
            values[match.group(1)] = RegValue(match.group(2), match.group(3) or "")
    return values


_TRAILING_NUMBER = re.compile(r"(?:\A|[\s:：])(\d+)\s*\Z")


def parse_dynamic_range(lines):
    """``netsh int ipvX show dynamicportrange`` -> (start, number).

    Labels are translated ("Start Port", "Startport", "Port de départ"...), so the two numbers are taken by
    position: the first and the second line ending in a number.  Ranges outside netsh's minimums (start=1024)
    are returned as they are.
    """
    numbers = []
    for line in lines:
        match = _TRAILING_NUMBER.search(line)
        if match:
            numbers.append(int(match.group(1)))
    if len(numbers) != 2:
        raise WinTcpError("cannot read the dynamic port range from netsh's output: %r" % "\n".join(lines))
    return (numbers[0], numbers[1])


_EXCLUDED_ROW = re.compile(r"\A\s*(\d+)\s+(\d+)\s*(\*?)\s*\Z")


def parse_excluded_ranges(lines):
    """``netsh int ipvX show excludedportrange`` -> ((low, high, administered), ...), by position."""
    out = []
    for line in lines:
        match = _EXCLUDED_ROW.match(line)
        if match:
            out.append((int(match.group(1)), int(match.group(2)), match.group(3) == "*"))
    return tuple(out)


@dataclass
class HostState:
    """What one read found."""

    build: Optional[int] = None
    registry: Dict[str, RegValue] = field(default_factory=dict)
    ranges: Dict[tuple, Tuple[int, int]] = field(default_factory=dict)
    excluded: Dict[tuple, tuple] = field(default_factory=dict)


def _need(sections, word):
    section = sections.get(word)
    if section is None:
        raise WinTcpError("the host's output has no %r section (the script did not run to the end)" % word)
    if not section.ok:
        raise WinTcpError("reading %s failed (exit code %s): %s" % (word, section.rc, section.text))
    return section


def parse_build(sections):
    section = sections.get("build")
    if section is None or not section.ok:
        return None
    value = parse_reg_query(section.lines).get("CurrentBuildNumber")
    if value is None:
        return None
    try:
        return int(value.data.strip())
    except ValueError:
        return None


def parse_read(stdout, targets, prefix="", excluded=True):
    """Parse a read (or the verify part of an apply) into a HostState."""
    sections = split_sections(stdout)
    state = HostState(build=parse_build(sections) if not prefix else None)
    state.registry = parse_reg_query(_need(sections, prefix + "params").lines)
    for ip, proto in targets:
        state.ranges[(ip, proto)] = parse_dynamic_range(_need(sections, _range_word(prefix + "range", ip, proto)).lines)
        if excluded:
            state.excluded[(ip, proto)] = parse_excluded_ranges(
                _need(sections, _range_word(prefix + "excluded", ip, proto)).lines)
    return state


# ------------------------------------------------------------------ planning
def reg_value(state, name):
    """The plan value of a registry value: its int (REG_DWORD), None (absent), or {type, data} (wrong type)."""
    value = state.registry.get(name.value)
    if value is None:
        return None
    if value.dword is not None:
        return value.dword
    return {"type": value.type, "data": value.data}


def range_value(start_number):
    start, number = start_number
    return {"start": start, "number": number, "end": start + number - 1}


def _key(item):
    if isinstance(item, RegName):
        return item.value
    ip, proto = item
    return "%s %s dynamic port range" % (ip.value, proto.value)


def current_values(state, keys):
    out = {}
    for key in keys:
        if isinstance(key, RegName):
            out[key] = reg_value(state, key)
        else:
            out[key] = range_value(state.ranges[key])
    return out


def desired_values(desired):
    """{plan key: value}: RegName -> int or None (removed); (ip, proto) -> range dict."""
    out = {}
    if desired.state is State.ABSENT:
        out[RegName.TIME_WAIT_DELAY] = None
        out[RegName.MAX_USER_PORT] = None
        for target in desired.targets:
            out[target] = range_value(DEFAULT_RANGE)
        return out
    if desired.time_wait_delay is not None:
        out[RegName.TIME_WAIT_DELAY] = desired.time_wait_delay
    if desired.max_user_port is not None:
        out[RegName.MAX_USER_PORT] = desired.max_user_port
    if desired.port_range is not None:
        for target in desired.targets:
            out[target] = range_value(desired.port_range)
    return out


def _same(_key_, before, after):
    return type(before) is type(after) and before == after  # pylint: disable=unidiomatic-typecheck


def _overlaps(excluded, low, high):
    return [(a, b) for a, b, _admin in excluded if a <= high and b >= low]


def plan_win_tcp(desired, state):
    """Plan from the host's state.  Raises ValidationError for the checks that depend on the host."""
    validate_for_host(desired, state.build)
    wanted = desired_values(desired)
    current = current_values(state, wanted)
    warnings = []
    if desired.state is State.PRESENT and desired.max_user_port is not None:
        warnings.append(MAX_USER_PORT_WARNING)
    ignored = [name for name in ("time_wait_delay", "max_user_port", "port_range") if getattr(desired, name) is not None]
    if desired.state is State.ABSENT and ignored:
        warnings.append("state=absent restores Windows' defaults; %s ignored" % ", ".join(ignored))
    for key, value in current.items():
        if isinstance(key, RegName) and isinstance(value, dict):
            warnings.append("%s was %s %r, which Windows ignores; it is %s as a REG_DWORD"
                            % (key.value, value["type"], value["data"],
                               "removed" if wanted[key] is None else "rewritten"))
    for target in desired.targets:
        if target in wanted:
            want = wanted[target]
            hits = _overlaps(state.excluded.get(target, ()), want["start"], want["end"])
            if hits:
                warnings.append(
                    "port_range: excluded port ranges %s (netsh int %s show excludedportrange protocol=%s) overlap "
                    "the %s %s dynamic range %d-%d; Windows never hands those ports out"
                    % (", ".join("%d-%d" % h for h in hits), target[0].value, target[1].value,
                       target[0].value, target[1].value, want["start"], want["end"]))
    reboot_keys = tuple(RegName)
    return make_plan(current, wanted, _same, reboot_required_keys=reboot_keys, warnings=warnings)


def plan_actions(plan):
    """The apply actions of a plan, registry first, in a fixed order."""
    actions = []
    for change in plan.changes:
        if isinstance(change.key, RegName):
            actions.append(DeleteValue(change.key) if change.after is None else SetDword(change.key, change.after))
    for change in plan.changes:
        if not isinstance(change.key, RegName):
            ip, proto = change.key
            actions.append(SetRange(ip, proto, change.after["start"], change.after["number"]))
    return tuple(actions)


def rollback_actions(plan, applied):
    """Actions that put back what the ``applied`` actions changed (best effort after a failed apply)."""
    before = {c.key: c.before for c in plan.changes}
    out = []
    for action in applied:
        if isinstance(action, (SetDword, DeleteValue)):
            old = before.get(action.name)
            if old is None:
                out.append(DeleteValue(action.name))
            elif isinstance(old, int):
                out.append(SetDword(action.name, old))
            # a wrongly typed old value is not written back
        elif isinstance(action, SetRange):
            old = before.get((action.ip, action.protocol))
            if old and old["start"] >= NETSH_MIN_START and old["number"] >= NETSH_MIN_PORTS and old["end"] <= PORT_MAX:
                out.append(SetRange(action.ip, action.protocol, old["start"], old["number"]))
    return tuple(out)


def nest(values):
    """Plan values -> the result's shape: {"registry": {...}, "dynamic_port_range": {ipv4: {tcp: {...}}}}."""
    out = {"registry": {}, "dynamic_port_range": {}}
    for key, value in values.items():
        if isinstance(key, RegName):
            out["registry"][key.value] = value
        else:
            ip, proto = key
            out["dynamic_port_range"].setdefault(ip.value, {})[proto.value] = value
    return out


def _show(value):
    if value is None:
        return "(absent)"
    if isinstance(value, dict) and "start" in value:
        return "start %d, %d ports (%d-%d)" % (value["start"], value["number"], value["start"], value["end"])
    if isinstance(value, dict):
        return "%s %r" % (value["type"], value["data"])
    return str(value)


def diff_text(values):
    return "".join("%s = %s\n" % (_key(key), _show(value)) for key, value in values.items())


def plan_after(plan, current):
    after = dict(current)
    for change in plan.changes:
        after[change.key] = change.after
    return after


def verify(plan, wanted, state):
    """Keys whose read-back value differs from what was wanted: [(key text, expected, found)]."""
    found = current_values(state, wanted)
    return [(_key(k), _show(v), _show(found[k])) for k, v in wanted.items() if not _same(k, found[k], v)]


# ------------------------------------------------------------------ win_port_usage_info parsing
def parse_csv(lines):
    """ConvertTo-Csv output -> list of dicts (header names are property names: never translated)."""
    text = "\n".join(line for line in lines if line.strip())
    if not text:
        return []
    return list(csv.DictReader(io.StringIO(text)))


_EVENT_NS = "{http://schemas.microsoft.com/win/2004/08/events/event}"


def parse_events(lines):
    """wevtutil qe /f:xml output (one <Event> per event, no root element) -> [{id, time, message}]."""
    text = "\n".join(lines).strip()
    if not text:
        return []
    try:
        root = ET.fromstring("<Events>%s</Events>" % text)
    except ET.ParseError as exc:
        raise WinTcpError("cannot parse wevtutil's XML: %s" % exc) from exc
    out = []
    for event in root:
        system = event.find(_EVENT_NS + "System")
        if system is None:
            system = event.find("System")
        if system is None:
            continue
        ident = system.find(_EVENT_NS + "EventID")
        if ident is None:
            ident = system.find("EventID")
        created = system.find(_EVENT_NS + "TimeCreated")
        if created is None:
            created = system.find("TimeCreated")
        try:
            event_id = int((ident.text or "").strip()) if ident is not None else None
        except ValueError:
            event_id = None
        out.append({"id": event_id, "time": created.get("SystemTime") if created is not None else None})
    return out


# ------------------------------------------------------------------ win_port_usage_info analysis
def _family(address):
    """(4|6, address) with IPv4-mapped IPv6 addresses turned into IPv4."""
    address = (address or "").strip()
    if address.lower().startswith("::ffff:") and "." in address:
        return 4, address[7:]
    return (6 if ":" in address else 4), address


def _port_of(text):
    try:
        return int(str(text).strip())
    except ValueError:
        return None


def _usable(start_number, excluded):
    """(low, high), excluded intervals inside it, usable count."""
    low = start_number[0]
    high = min(start_number[0] + start_number[1] - 1, PORT_MAX)
    inside = [(max(a, low), min(b, high)) for a, b, _admin in excluded if a <= high and b >= low]
    merged = []
    for a, b in sorted(inside):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(b, merged[-1][1]))
        else:
            merged.append((a, b))
    return (low, high), tuple(merged), (high - low + 1) - sum(b - a + 1 for a, b in merged)


def _times(count):
    return "once" if count == 1 else "%d times" % count


def analyse_windows(options, state, sections):
    """The win_port_usage_info result from one read (``state``: parse_read; ``sections``: split_sections)."""
    # pylint: disable=too-many-locals,too-many-branches,too-many-statements

    tcp_range = {ip: state.ranges.get((ip, Protocol.TCP)) for ip in IpVersion}
    tcp_excluded = {ip: state.excluded.get((ip, Protocol.TCP), ()) for ip in IpVersion}
    usable = {}
    for ip in IpVersion:
        if tcp_range[ip] is not None:
            usable[ip] = _usable(tcp_range[ip], tcp_excluded[ip])
    tw_value = reg_value(state, RegName.TIME_WAIT_DELAY)
    time_wait = tw_value if isinstance(tw_value, int) and TIME_WAIT_MIN <= tw_value <= TIME_WAIT_MAX else TIME_WAIT_DEFAULT
    notes = []
    unreadable = []
    extra = []  # (severity, sentence)
    if tw_value is not None and not isinstance(tw_value, int):
        notes.append("TcpTimedWaitDelay is %s %r, which Windows ignores: TIME_WAIT lasts the default %d seconds"
                     % (tw_value["type"], tw_value["data"], TIME_WAIT_DEFAULT))
    elif tw_value is not None:
        notes.append("TcpTimedWaitDelay is %d in the registry; Windows reads it at boot, so it is in effect once the "
                     "host has restarted since it was set" % tw_value)

    # connections ---------------------------------------------------------------
    conn_section = sections.get("connections")
    rows = None
    if conn_section is not None and conn_section.ok:
        rows = parse_csv(conn_section.lines)
    else:
        reason = "Get-NetTCPConnection failed or is missing (it needs Windows Server 2012 / Windows 8 or later)"
        unreadable.append({"source": "Get-NetTCPConnection", "reason": reason})
    proc_section = sections.get("processes")
    names = {}
    if proc_section is not None and proc_section.ok:
        for row in parse_csv(proc_section.lines):
            pid = _port_of(row.get("Id"))
            if pid is not None:
                names[pid] = row.get("ProcessName")
    elif rows is not None:
        unreadable.append({"source": "Get-Process", "reason": "Get-Process failed"})

    states = None
    tuples = {}
    listening = set()
    held = {IpVersion.IPV4: 0, IpVersion.IPV6: 0}
    by_process = {}
    if rows is not None:
        states = {"ipv4": {}, "ipv6": {}}
        for row in rows:
            family, _address = _family(row.get("LocalAddress"))
            tcp_state = (row.get("State") or "").strip()
            bucket = states["ipv%d" % family]
            bucket[tcp_state] = bucket.get(tcp_state, 0) + 1
            if tcp_state == "Listen":
                port = _port_of(row.get("LocalPort"))
                if port is not None:
                    listening.add(port)
        for row in rows:
            tcp_state = (row.get("State") or "").strip()
            if tcp_state == "Listen":
                continue
            family, local = _family(row.get("LocalAddress"))
            ip = IpVersion.IPV4 if family == 4 else IpVersion.IPV6
            port = _port_of(row.get("LocalPort"))
            if ip not in usable or port is None or port in listening:
                continue
            (low, high), excluded, _count = usable[ip]
            if not low <= port <= high or any(a <= port <= b for a, b in excluded):
                continue
            _rfamily, remote = _family(row.get("RemoteAddress"))
            rport = _port_of(row.get("RemotePort")) or 0
            key = (family, local, remote, rport)
            entry = tuples.setdefault(key, [0, 0])
            entry[0] += 1
            if tcp_state == "TimeWait":
                entry[1] += 1
            held[ip] += 1
            pid = _port_of(row.get("OwningProcess"))
            proc = by_process.setdefault(pid, {"pid": pid, "name": names.get(pid), "ports_held": 0, "time_wait": 0})
            proc["ports_held"] += 1
            if tcp_state == "TimeWait":
                proc["time_wait"] += 1

    # events --------------------------------------------------------------------
    events = {"hours": options.event_hours, "4227": None, "4231": None, "latest": None, "capped": False}
    event_section = sections.get("events")
    if event_section is not None and event_section.ok:
        found = parse_events(event_section.lines)
        events["4227"] = sum(1 for e in found if e["id"] == 4227)
        events["4231"] = sum(1 for e in found if e["id"] == 4231)
        events["latest"] = max((e["time"] for e in found if e["time"]), default=None)
        events["capped"] = len(found) >= EVENT_MAX
        more = "at least " if events["capped"] else ""
        if events["4231"]:
            extra.append(("critical", "Tcpip event 4231 (an ephemeral port could not be allocated from the global TCP "
                                      "port space) was logged %s%s in the last %d hours"
                          % (more, _times(events["4231"]), options.event_hours)))
        if events["4227"]:
            extra.append(("warning", "Tcpip event 4227 (a connect failed because the local endpoint was recently used "
                                     "and is still in TIME_WAIT) was logged %s%s in the last %d hours"
                          % (more, _times(events["4227"]), options.event_hours)))
    else:
        unreadable.append({"source": "wevtutil (System log, Tcpip 4227/4231)",
                           "reason": (event_section.text if event_section is not None else "no output") or "failed"})

    # host-wide utilisation: connect() takes ports from one pool per IP version -----------
    hot = False
    for ip in IpVersion:
        if ip not in usable:
            continue
        (low, high), _excluded, count = usable[ip]
        if count <= 0:
            extra.append(("critical", "no usable %s dynamic ports: %d-%d is entirely excluded" % (ip.value, low, high)))
            hot = True
            continue
        fraction = float(held[ip]) / count
        severity = port_usage.level(fraction, port_usage.WARNING_PERCENT, port_usage.CRITICAL_PERCENT)
        if severity != "ok":
            hot = True
            extra.append((severity, "the host holds %s of %s usable %s dynamic TCP ports (%s); on Windows connect() "
                                    "takes them from one host-wide pool" % (
                                        port_usage.number(held[ip]), port_usage.number(count), ip.value,
                                        port_usage.percent(fraction))))

    v4 = usable.get(IpVersion.IPV4)
    snap = port_usage.Snapshot(
        settings={},
        port_range=v4[0] if v4 else None,
        reserved=v4[1] if v4 else (),
        min_port=NETSH_MIN_START,
        listening=listening,
        states=states,
        tuples=tuples,
        format_address=lambda family, key: key,
        time_wait_seconds=time_wait,
        source="Get-NetTCPConnection" if rows is not None else None,
        unreadable=unreadable,
        notes=notes,
        extra_findings=extra,
    )
    result = port_usage.analyse(snap, top=options.top)

    # recommendations as win_tcp options ----------------------------------------
    recommend = {}
    if hot or result["verdict"] == "critical" or events["4231"]:
        wider = port_usage.recommended_range(snap.port_range, v4[2] if v4 else None, NETSH_MIN_START)
        if wider is not None:
            recommend["port_range"] = "%d %d" % (wider[0], wider[1])
        if time_wait > 30:
            recommend["time_wait_delay"] = 30
    elif events["4227"] and time_wait > 30:
        recommend["time_wait_delay"] = 30
    result["recommendations"] = recommend
    result["settings"] = {
        "port_range": "%d %d" % v4[0] if v4 else None,
        "time_wait_delay": tw_value,
        "max_user_port": reg_value(state, RegName.MAX_USER_PORT),
    }
    result["dynamic_port_range"] = nest({t: range_value(r) for t, r in state.ranges.items()})["dynamic_port_range"]
    result["excluded_port_ranges"] = {}
    for (ip, proto), ranges in state.excluded.items():
        result["excluded_port_ranges"].setdefault(ip.value, {})[proto.value] = [
            {"start": a, "end": b, "administered": admin} for a, b, admin in ranges]
    if v4 is not None and usable.get(IpVersion.IPV6) is not None:
        six = usable[IpVersion.IPV6]
        result["ephemeral_ipv6"] = {"range": list(six[0]), "size": six[0][1] - six[0][0] + 1, "usable": six[2]}
    result["ports_held_by_family"] = {ip.value: held[ip] for ip in IpVersion}
    result["processes"] = sorted(by_process.values(), key=lambda p: (-p["ports_held"], p["pid"] if p["pid"] is not None else -1))[:options.top]
    result["events"] = events
    result["build"] = state.build
    result["counters"] = None
    return result
