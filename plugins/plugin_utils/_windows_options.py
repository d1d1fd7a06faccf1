# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Windows options: what win_tcp and win_port_usage_info accept, and Windows' own limits.

Internal to the collection (leading underscore, as in ansible.windows).  Pure
functions on the controller: validation happens here before any host is
contacted; ``check_build`` is the one rule that needs the host's Windows build.
The enums are the only words, besides constants, that the script builders of
``_windows_commands`` accept.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Optional, Tuple

from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import PORT_MAX, list_items, parse_port_range
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError, strict_int

# netsh's rules for set dynamicportrange (windowsserverdocs netsh-interface.md, KB929851)
NETSH_MIN_START = 1025
NETSH_MIN_PORTS = 255
DEFAULT_RANGE = (49152, 16384)  # start, number of ports (Vista / Server 2008 and later)

# TcpTimedWaitDelay (KB314053; biztalk-docs): 30-300 before Windows 8.1 / Server 2012 R2, 2-300 from then on
TIME_WAIT_MIN = 2
TIME_WAIT_MIN_LEGACY = 30
TIME_WAIT_MAX = 300
TIME_WAIT_DEFAULT = 120
BUILD_2012R2 = 9600
MAX_USER_PORT_MIN = 5000
MAX_USER_PORT_MAX = 65534

EVENT_IDS = (4227, 4231)  # Tcpip: TIME_WAIT reuse failed; no ephemeral port left
EVENT_MAX = 500  # events read at most (wevtutil /c:)
EVENT_HOURS_MAX = 8760  # a year

# netsh int ipv4|ipv6 add excludedportrange: administered exclusions (Azure/AgentBaker#1913 recommends them with
# store=persistent over shrinking the dynamic range)
EXCLUDED_MAX = 100  # ranges win_tcp manages in one task at most

# Figures the analysis cites, as they were reported (not documented Windows limits):
# microsoft/WSL#12351: the host networking service asked for a contiguous block of 4,096 ports and failed with
# 0x8007054f when the dynamic range was fragmented.
CONTIGUOUS_BLOCK_REPORTED = 4096
# Dynamic ranges left behind by installers: start 1024 with 64,511 ports (Visual Studio installer,
# actions/runner-images#1442) or 13,977 ports (Windows 10/11 captures).
INSTALLER_RANGES = ((1024, 64511), (1024, 13977))
WSAEACCES = 10013

# Digits of a number given in an option: a longer digit string is refused before int() (Python refuses ints of
# over 4,300 digits).  Host output has its own, smaller bound: _windows_parse.HOST_DIGITS_MAX.
OPTION_DIGITS_MAX = 20


# The words a script may contain besides constants (the enum API keeps four tiny classes from repeating one shape).
# Protocol and IpVersion: what netsh keeps a dynamic range for; RegName: the REG_DWORD values under
# Tcpip\Parameters that win_tcp manages (read at boot).
Protocol = enum.Enum("Protocol", [("TCP", "tcp"), ("UDP", "udp")], module=__name__, qualname="Protocol")
IpVersion = enum.Enum("IpVersion", [("IPV4", "ipv4"), ("IPV6", "ipv6")], module=__name__, qualname="IpVersion")
RegName = enum.Enum("RegName", [("TIME_WAIT_DELAY", "TcpTimedWaitDelay"), ("MAX_USER_PORT", "MaxUserPort")],
                    module=__name__, qualname="RegName")
State = enum.Enum("State", [("PRESENT", "present"), ("ABSENT", "absent")], module=__name__, qualname="State")

DEFAULT_PROTOCOLS = (Protocol.TCP,)
DEFAULT_IP_VERSIONS = (IpVersion.IPV4, IpVersion.IPV6)


def _words(members):
    return [member.value for member in members]


# The options, as an argument spec: the action plugins accept these names, and a unit test checks the modules'
# DOCUMENTATION against them (types, choices, defaults), as ansible-test sanity does for the Linux modules.
WIN_TCP_OPTIONS = {
    "time_wait_delay": {"type": "int"},
    "max_user_port": {"type": "int"},
    "port_range": {"type": "raw"},
    "excluded_ranges": {"type": "raw"},
    "protocols": {"type": "list", "elements": "str", "choices": _words(Protocol), "default": _words(DEFAULT_PROTOCOLS)},
    "ip_versions": {"type": "list", "elements": "str", "choices": _words(IpVersion),
                    "default": _words(DEFAULT_IP_VERSIONS)},
    "state": {"type": "str", "choices": _words(State), "default": State.PRESENT.value},
}
TOP_DEFAULT = 10
EVENT_HOURS_DEFAULT = 24
INFO_OPTIONS = {
    "top": {"type": "int", "default": TOP_DEFAULT},
    "event_hours": {"type": "int", "default": EVENT_HOURS_DEFAULT},
    "service_ports": {"type": "list", "elements": "int", "default": []},
}
# The registry values the options set: (option, value name).
REGISTRY_OPTIONS = (("time_wait_delay", RegName.TIME_WAIT_DELAY), ("max_user_port", RegName.MAX_USER_PORT))


class WinTcpError(Exception):
    """The host did something unexpected (a command failed, output could not be parsed)."""


@dataclass(frozen=True)
class Desired:
    """win_tcp's validated options."""

    time_wait_delay: Optional[int] = None
    max_user_port: Optional[int] = None
    port_range: Optional[Tuple[int, int]] = None  # (start, number of ports)
    excluded_ranges: Optional[Tuple[Tuple[int, int], ...]] = None  # ((low, high), ...) sorted, disjoint
    protocols: Tuple[Protocol, ...] = DEFAULT_PROTOCOLS
    ip_versions: Tuple[IpVersion, ...] = DEFAULT_IP_VERSIONS
    state: State = State.PRESENT

    @property
    def targets(self):
        """The (ip version, protocol) pairs whose dynamic range is read and, with port_range, managed."""
        return tuple((ip, proto) for ip in self.ip_versions for proto in self.protocols)


@dataclass(frozen=True)
class InfoOptions:
    """win_port_usage_info's validated options."""

    top: int = TOP_DEFAULT
    event_hours: int = EVENT_HOURS_DEFAULT
    service_ports: Tuple[int, ...] = ()

    @property
    def targets(self):
        """win_port_usage_info reads the dynamic and excluded ranges of every IP version and protocol."""
        return tuple((ip, proto) for ip in IpVersion for proto in Protocol)


def _choice_list(value, option, enum_type, default):
    names = [m.value for m in enum_type]
    valid = "a non-empty list of %s" % ", ".join(names)
    if value is None:
        return default
    items = list_items(value, option, valid)
    if isinstance(value, str):
        items = [v.strip() for v in items]
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


def bounded_int(value, option, low, high, what):
    """strict_int with the length of a digit string bounded first (Python refuses ints of over 4,300 digits)."""
    if isinstance(value, str) and len(value.strip(" \t")) > OPTION_DIGITS_MAX:
        shown = value if len(value) <= 40 else "%s... (%d characters)" % (value[:20], len(value))
        raise ValidationError(option, shown, "%s from %d to %d" % (what, low, high))
    return int(strict_int(value, option, low, high, what))


def validate_excluded_ranges(value, option="excluded_ranges"):
    """Port ranges to exclude: a list of ports and ranges (50000, "50000-50099", [50000, 50099]) or a comma string.

    Returns a sorted tuple of disjoint (low, high); ranges that overlap each other are refused (each is one
    exclusion on the host, managed as it is written).  An empty list manages nothing.
    """
    valid = ('a list of at most %d ports and port ranges from 1 to %d, each 50000, "50000-50099" or [50000, 50099], '
             'none overlapping another' % (EXCLUDED_MAX, PORT_MAX))
    if isinstance(value, str) and len(value) > 20 * EXCLUDED_MAX:
        raise ValidationError(option, value[:40] + "...", valid)
    items = list_items(value, option, valid)
    if isinstance(value, str):
        items = [item for item in items if item.strip(" \t")]
    if len(items) > EXCLUDED_MAX:
        raise ValidationError(option, "%d ranges" % len(items), valid)
    ranges = []
    for item in items:
        if isinstance(item, bool):
            raise ValidationError(option, item, valid)
        if isinstance(item, int) or (isinstance(item, str) and item.strip(" \t").isdigit()):
            low = high = bounded_int(item, option, 1, PORT_MAX, "a port")
        elif isinstance(item, (str, list, tuple)):
            if isinstance(item, str) and len(item) > 40:
                raise ValidationError(option, item[:40] + "...", valid)
            try:
                low, high = parse_port_range(item, option)
            except ValidationError as exc:
                raise ValidationError(option, item, "%s (%s)" % (valid, exc.valid)) from None
            low, high = int(low), int(high)
        else:
            raise ValidationError(option, item, valid)
        if (low, high) not in ranges:
            ranges.append((low, high))
    ranges.sort()
    for (a, b), (c, d) in zip(ranges, ranges[1:]):
        if c <= b:
            raise ValidationError(option, value, "%s; %d-%d overlaps %d-%d" % (valid, a, b, c, d))
    return tuple(ranges)


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
        time_wait = bounded_int(time_wait, "time_wait_delay", TIME_WAIT_MIN, TIME_WAIT_MAX,
                                "an integer number of seconds (TcpTimedWaitDelay)")
    max_user_port = args.get("max_user_port")
    if max_user_port is not None:
        max_user_port = bounded_int(max_user_port, "max_user_port", MAX_USER_PORT_MIN, MAX_USER_PORT_MAX,
                                    "an integer port (MaxUserPort)")
    port_range = args.get("port_range")
    if port_range is not None:
        port_range = validate_dynamic_range(port_range)
    excluded = args.get("excluded_ranges")
    if excluded is not None:
        excluded = validate_excluded_ranges(excluded)
    protocols = _choice_list(args.get("protocols"), "protocols", Protocol, DEFAULT_PROTOCOLS)
    ip_versions = _choice_list(args.get("ip_versions"), "ip_versions", IpVersion, DEFAULT_IP_VERSIONS)
    return Desired(time_wait, max_user_port, port_range, excluded, protocols, ip_versions, state)


def check_build(desired, build):
    """The rule that depends on the host's Windows build (None: unreadable); run after the read, before any change.

    Raises ValidationError for a TcpTimedWaitDelay below the old minimum on an
    old build, WinTcpError when such a value is asked for and the build is unknown.
    """
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


def validate_port_usage_info(args):
    """Validate win_port_usage_info's options; returns InfoOptions."""
    args = dict(args or {})
    _unknown(args, INFO_OPTIONS)
    top = args.get("top")
    top = TOP_DEFAULT if top is None else bounded_int(top, "top", 1, 1000, "an integer number of destinations")
    hours = args.get("event_hours")
    hours = EVENT_HOURS_DEFAULT if hours is None else bounded_int(hours, "event_hours", 1, EVENT_HOURS_MAX, "an integer number of hours")
    service_ports = args.get("service_ports")
    ports = ()
    if service_ports is not None:
        valid = "a list of at most %d ports from 1 to %d" % (EXCLUDED_MAX, PORT_MAX)
        if isinstance(service_ports, (str, int)) and not isinstance(service_ports, bool):
            service_ports = [p for p in str(service_ports).split(",") if p.strip(" \t")]
        if not isinstance(service_ports, (list, tuple)) or len(service_ports) > EXCLUDED_MAX:
            raise ValidationError("service_ports", service_ports, valid)
        ports = tuple(sorted({bounded_int(p, "service_ports", 1, PORT_MAX, "a port") for p in service_ports}))
    return InfoOptions(top, hours, ports)
