# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Parsers of what the Windows scripts print, and the host state they make.

Internal to the collection.  Pure: text in, values out.  Labels are translated
on non-English systems, so numbers are taken by position; exit codes, not
messages, decide whether a section succeeded.  The formats are those of
docs/windows_commands.md.
"""

from __future__ import annotations

import csv
import io
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_commands import (
    DWORD_MAX,
    WORD_RE,
    check_marker,
    range_word,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import clean_text
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import IpVersion, WinTcpError


# ------------------------------------------------------------------ limits
# No line of the tools' output is anywhere near this long (an event's XML is a few KB); a longer one is refused, so
# that a hostile host cannot make the controller parse megabytes as one line.  Every parser below is linear.
LINE_MAX = 65536
# A port, a REG_DWORD, a build, an event id, a pid: never more digits than this in the host's output (the options'
# own bound is _windows_options.OPTION_DIGITS_MAX).
HOST_DIGITS_MAX = 10


def check_line(line, what):
    """``line`` when it is at most LINE_MAX characters, else WinTcpError naming ``what``."""
    if len(line) > LINE_MAX:
        raise WinTcpError("%s: a line of %d characters, more than the %d accepted (the host's output is refused)"
                          % (what, len(line), LINE_MAX))
    return line


def small_int(text, base=10):
    """The int of a short string of digits (at most HOST_DIGITS_MAX; hex with base 16), else None.  Never raises."""
    if not isinstance(text, str):
        return None
    text = text.strip()
    if not text or len(text) > HOST_DIGITS_MAX or not text.isascii():
        return None
    if not (text.isdigit() if base == 10 else all(c in "0123456789abcdefABCDEF" for c in text)):
        return None
    return int(text, base)


# ------------------------------------------------------------------ sections
@dataclass
class Section:
    """The lines one command printed, and its exit code (``$LASTEXITCODE``) or success (``$?``) as text."""

    lines: list
    rc: Optional[str] = None

    @property
    def ok(self):
        return self.rc in ("0", "True")

    @property
    def text(self):
        return "\n".join(self.lines).strip()


def _marker_of(stdout, marker):
    """The marker to split ``stdout`` on: ``marker``, else the one ``stdout`` carries (Marked text, what
    WindowsHost.run() returns).  TypeError without one: a host's output is never split on a guessable marker."""
    if marker is None:
        marker = getattr(stdout, "marker", None)
    if marker is None:
        raise TypeError("the section marker of this output is not known")
    return check_marker(marker)


def split_sections(stdout, marker=None):
    """Split a script's stdout on the markers of its script: {word: Section(lines, rc)}.  Text before the first
    marker is dropped.  ``marker``: the script's (default: the one ``stdout`` carries, see _marker_of).

    Only a line that is exactly ``@@MARKER:word@@`` (or ``@@MARKER:rc:N@@`` / ``@@MARKER:ok:True@@``) is a marker,
    and the random MARKER is in no host text.  Raises WinTcpError for a section that comes twice (never silently
    replaced) and for a line inside a section longer than LINE_MAX.
    """
    prefix = "@@%s:" % _marker_of(stdout, marker)
    sections = {}
    current = None
    word = None
    for raw in stdout.splitlines():
        line = raw.rstrip("\r")
        if current is not None:
            check_line(line, "section %s" % word)
        stripped = line.strip()
        if stripped.startswith(prefix) and stripped.endswith("@@") and len(stripped) >= len(prefix) + 3:
            body = stripped[len(prefix):-2]
            kind, sep, value = body.partition(":")
            if sep and kind in ("rc", "ok") and current is not None and "@" not in value:
                current.rc = value
                current = None
                continue
            if not sep and WORD_RE.match(body):
                if body in sections:
                    raise WinTcpError("the host's output has section %r twice: refused (a section is never "
                                      "replaced)" % body)
                word = body
                current = sections[word] = Section([])
                continue
        if current is not None:
            current.lines.append(line)
    return sections


def parse_output(output, parse):
    """``parse(output.stdout)`` of a script's Output (rc, stdout, stderr), for win_tcp and win_port_usage_info.

    WinTcpError when the script did not run (no marker of its script in stdout: the host refused the command
    line), quoting stderr, else stdout; a WinTcpError of ``parse`` gets the host's stderr, if any, appended.
    """
    if "@@%s:" % _marker_of(output.stdout, None) not in output.stdout:
        raise WinTcpError("reading the host failed (rc=%s): %s" % (output.rc, (output.stderr or output.stdout).strip()))
    try:
        return parse(output.stdout)
    except WinTcpError as exc:
        stderr = output.stderr.strip()
        raise WinTcpError("%s%s" % (exc, "; stderr: %s" % stderr if stderr else "")) from exc


# ------------------------------------------------------------------ reg and netsh

@dataclass(frozen=True)
class RegValue:
    type: str
    data: str

    @property
    def dword(self):
        """The value as an int when it is a well-formed REG_DWORD (0 to 0xFFFFFFFF, as reg prints it), else None."""
        if self.type != "REG_DWORD":
            return None
        data = self.data.strip()
        number = small_int(data[2:], 16) if data[:2].lower() == "0x" else small_int(data)
        return number if number is not None and 0 <= number <= DWORD_MAX else None


def _reg_line(line):
    """(name, type, data) of a ``    Name    REG_TYPE    data`` line, else None.  Linear: str.find only.

    The type is the first ``REG_X`` word with two or more spaces before it and two or more spaces (or the end)
    after it; the name is what comes before it (it may contain single spaces), the data what follows.
    """
    if not line.startswith("  "):
        return None
    body = line.strip()
    pos = 0
    while True:
        at = body.find("  REG_", pos)
        if at < 0:
            return None
        end = at + 6
        while end < len(body) and (body[end].isascii() and (body[end].isupper() or body[end].isdigit() or body[end] == "_")):
            end += 1
        if end > at + 6 and (end == len(body) or body.startswith("  ", end)):
            name = body[:at].rstrip()
            if name:
                return name, body[at + 2:end], body[end:].strip()
        pos = end


def parse_reg_query(lines):
    """``reg query KEY [/v NAME]`` output -> {name: RegValue} for the key's own values (subkeys are skipped).

    Names and types are never translated; the data of a REG_DWORD is hex (0x1e).
    """
    values = {}
    in_key = 0
    for line in lines:
        check_line(line, "reg query")
        if line.startswith("HKEY_"):
            in_key += 1
            continue
        found = _reg_line(line)
        if found and in_key <= 1:
            values[found[0]] = RegValue(found[1], found[2])
    return values


def _trailing_number(line):
    """The number a line ends with (after a space, a colon or the start), else None."""
    text = line.rstrip()
    end = len(text)
    start = end
    while start > 0 and text[start - 1].isascii() and text[start - 1].isdigit():
        start -= 1
    if start == end or (start > 0 and not (text[start - 1].isspace() or text[start - 1] in ":\uff1a")):
        return None
    return small_int(text[start:end])


def parse_dynamic_range(lines):
    """``netsh int ipvX show dynamicportrange`` -> (start, number).

    Labels are translated ("Start Port", "Startport", "Port de départ"...) and padded differently by build, so
    the two numbers are taken by position: the first and the second line ending in a number.  Ranges outside
    netsh's minimums (start=1024) are returned as they are.
    """
    numbers = []
    for line in lines:
        check_line(line, "netsh show dynamicportrange")
        number = _trailing_number(line)
        if number is not None:
            numbers.append(number)
    if len(numbers) != 2:
        shown = "\n".join(lines)
        raise WinTcpError("cannot read the dynamic port range from netsh's output: %r"
                          % (shown if len(shown) <= 500 else shown[:500] + "..."))
    return (numbers[0], numbers[1])


def parse_excluded_ranges(lines):
    """``netsh int ipvX show excludedportrange`` -> ((low, high, administered), ...), by position.

    A row is two ports (1-65535, low not above high) and an optional ``*`` (administered), whatever the padding;
    titles, headers and the footer in any language are not, and neither is a line of other numbers (never
    converted when longer than HOST_DIGITS_MAX).
    """
    out = []
    for line in lines:
        check_line(line, "netsh show excludedportrange")
        words = line.split()
        if len(words) not in (2, 3) or (len(words) == 3 and words[2] != "*"):
            continue
        low, high = small_int(words[0]), small_int(words[1])
        if low is not None and high is not None and 1 <= low <= high <= 65535:
            out.append((low, high, len(words) == 3))
    return tuple(out)


# ------------------------------------------------------------------ one read
@dataclass
class HostState:
    """What one read found: the build (None: unreadable), Tcpip\\Parameters, and per (ip, protocol) the
    dynamic range (start, number) and the excluded ranges ((low, high, administered), ...)."""

    build: Optional[int] = None
    registry: Dict[str, RegValue] = field(default_factory=dict)
    listening: Optional[frozenset] = None  # {(ip version, port)} listening on TCP; None: not read
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
    """The Windows build from the ``build`` section, None when it failed or is unreadable."""
    section = sections.get("build")
    if section is None or not section.ok:
        return None
    value = parse_reg_query(section.lines).get("CurrentBuildNumber")
    return None if value is None else small_int(value.data)


def parse_listeners(sections):
    """{(IpVersion, port)} from the ``listeners`` section; None when it is missing or failed (no
    Get-NetTCPConnection before Windows Server 2012)."""
    section = sections.get("listeners")
    if section is None or not section.ok:
        return None
    out = set()
    for row in parse_csv(section.lines):
        port = small_int(row.get("LocalPort") if isinstance(row.get("LocalPort"), str) else "")
        address = row.get("LocalAddress") if isinstance(row.get("LocalAddress"), str) else ""
        if port is not None and 0 <= port <= 65535:
            out.add((IpVersion.IPV6 if ":" in address and "." not in address else IpVersion.IPV4, port))
    return frozenset(out)


def parse_read(stdout, targets, prefix="", excluded=True, marker=None):
    """Parse a read (or, with ``prefix="verify-"`` and no excluded ranges, the read-back of an apply); ``marker``
    as split_sections takes it."""
    sections = split_sections(stdout, marker)
    state = HostState(build=parse_build(sections) if not prefix else None,
                      listening=parse_listeners(sections) if not prefix else None)
    state.registry = parse_reg_query(_need(sections, prefix + "params").lines)
    for ip, proto in targets:
        state.ranges[(ip, proto)] = parse_dynamic_range(_need(sections, range_word(prefix + "range", ip, proto)).lines)
        if excluded:
            state.excluded[(ip, proto)] = parse_excluded_ranges(
                _need(sections, range_word(prefix + "excluded", ip, proto)).lines)
    return state


# ------------------------------------------------------------------ the connections, processes and events
def parse_csv(lines):
    """ConvertTo-Csv output -> list of dicts (header names are property names: never translated).

    A malformed CSV (a field over csv's 128 KiB limit, a NUL) is WinTcpError.
    """
    text = "\n".join(line for line in lines if line.strip())
    if not text:
        return []
    try:
        return list(csv.DictReader(io.StringIO(text)))
    except csv.Error as exc:
        raise WinTcpError("cannot parse the CSV of a cmdlet pipeline: %s" % exc) from exc


def parse_services(sections):
    """{pid: (service name, ...)} of the running services from the ``services`` section (Win32_Service's ProcessId
    and Name), names sorted; None when the section is missing or failed.  ProcessId 0 (a service not running) and
    rows without a pid or a name are skipped; several services may share one process (svchost)."""
    section = sections.get("services")
    if section is None or not section.ok:
        return None
    out = {}
    for row in parse_csv(section.lines):
        pid = small_int(row.get("ProcessId") if isinstance(row.get("ProcessId"), str) else "")
        name = row.get("Name") if isinstance(row.get("Name"), str) else ""
        if pid and name.strip():
            out.setdefault(pid, set()).add(name.strip())
    return dict((pid, tuple(sorted(names, key=str.lower))) for pid, names in out.items())


# ------------------------------------------------------------------ host names as results show them
SERVICES_SHOWN = 5  # service names shown per process (an svchost may run many)
SERVICE_NAME_MAX = 256  # the longest service name Windows allows (CreateService: 256 characters)
PROCESS_NAME_MAX = 256  # characters of a ProcessName shown (an image file name: MAX_PATH at most)


def process_name(name):
    """A ProcessName as the result shows it: cleaned host text, at most PROCESS_NAME_MAX characters, or None."""
    return clean_text(name[:PROCESS_NAME_MAX]) if isinstance(name, str) and name else None


def service_text(names):
    """"RpcEptMapper, RpcSs" (at most SERVICES_SHOWN names, then "+N more"), or None for no service."""
    if not names:
        return None
    shown = [clean_text(name[:SERVICE_NAME_MAX]) for name in names[:SERVICES_SHOWN]]
    if len(names) > SERVICES_SHOWN:
        shown.append("+%d more" % (len(names) - SERVICES_SHOWN))
    return ", ".join(shown)


_EVENT_NS = "{http://schemas.microsoft.com/win/2004/08/events/event}"


def _child(element, name):
    found = element.find(_EVENT_NS + name)
    return found if found is not None else element.find(name)


def parse_events(lines):
    """wevtutil qe /f:xml output (one <Event> per event, no root element) -> [{id, time}]."""
    text = "\n".join(check_line(line, "wevtutil") for line in lines).strip()
    if not text:
        return []
    if "<!" in text:  # no DOCTYPE or ENTITY (no entity expansion), no CDATA, no comment: wevtutil prints none
        raise WinTcpError("cannot parse wevtutil's XML: it contains a '<!' declaration")
    try:
        root = ET.fromstring("<Events>%s</Events>" % text)
    except ET.ParseError as exc:
        raise WinTcpError("cannot parse wevtutil's XML: %s" % exc) from exc
    out = []
    for event in root:
        system = _child(event, "System")
        if system is None:
            continue
        ident = _child(system, "EventID")
        created = _child(system, "TimeCreated")
        event_id = small_int(ident.text or "") if ident is not None else None
        out.append({"id": event_id, "time": created.get("SystemTime") if created is not None else None})
    return out


# ------------------------------------------------------------------ the state as results show it
def reg_value(state, name):
    """A registry value as results and plans show it: its int (REG_DWORD), None (absent), or {type, data}."""
    value = state.registry.get(name.value)
    if value is None:
        return None
    if value.dword is not None:
        return value.dword
    return {"type": value.type, "data": value.data}


def range_value(start_number):
    """A dynamic range (start, number) as results and plans show it: {start, number, end}."""
    start, number = start_number
    return {"start": start, "number": number, "end": start + number - 1}


def by_target(pairs):
    """((ip, protocol), value) pairs -> {ipv4: {tcp: value}}, the shape results use per target."""
    out = {}
    for (ip, proto), value in pairs:
        out.setdefault(ip.value, {})[proto.value] = value
    return out


def ranges_result(state):
    """The dynamic ranges read, as results show them: {ipv4: {tcp: {start, number, end}}}."""
    return by_target((target, range_value(start_number)) for target, start_number in state.ranges.items())


def excluded_result(state):
    """The excluded ranges read, as results show them: {ipv4: {tcp: [{start, end, administered}]}}."""
    return by_target((target, [{"start": a, "end": b, "administered": admin} for a, b, admin in rows])
                     for target, rows in state.excluded.items())
