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
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_commands import MARKER_RE, RC_RE, range_word
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import RegName, WinTcpError


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


def split_sections(stdout):
    """Split a script's stdout on the markers: {word: Section(lines, rc)}.  Text before the first marker is dropped."""
    sections = {}
    current = None
    for raw in stdout.splitlines():
        line = raw.rstrip("\r")
        stripped = line.strip()
        match = MARKER_RE.match(stripped)
        if match:
            current = Section([])
            sections[match.group(1)] = current
            continue
        match = RC_RE.match(stripped)
        if match and current is not None:
            current.rc = match.group(2)
            current = None
            continue
        if current is not None:
            current.lines.append(line)
    return sections


# ------------------------------------------------------------------ reg and netsh
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


# ------------------------------------------------------------------ one read
@dataclass
class HostState:
    """What one read found: the build (None: unreadable), Tcpip\\Parameters, and per (ip, protocol) the
    dynamic range (start, number) and the excluded ranges ((low, high, administered), ...)."""

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
    """The Windows build from the ``build`` section, None when it failed or is unreadable."""
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
    """Parse a read (or, with ``prefix="verify-"`` and no excluded ranges, the read-back of an apply)."""
    sections = split_sections(stdout)
    state = HostState(build=parse_build(sections) if not prefix else None)
    state.registry = parse_reg_query(_need(sections, prefix + "params").lines)
    for ip, proto in targets:
        state.ranges[(ip, proto)] = parse_dynamic_range(_need(sections, range_word(prefix + "range", ip, proto)).lines)
        if excluded:
            state.excluded[(ip, proto)] = parse_excluded_ranges(
                _need(sections, range_word(prefix + "excluded", ip, proto)).lines)
    return state


# ------------------------------------------------------------------ the connections, processes and events
def parse_csv(lines):
    """ConvertTo-Csv output -> list of dicts (header names are property names: never translated)."""
    text = "\n".join(line for line in lines if line.strip())
    if not text:
        return []
    return list(csv.DictReader(io.StringIO(text)))


_EVENT_NS = "{http://schemas.microsoft.com/win/2004/08/events/event}"


def _child(element, name):
    found = element.find(_EVENT_NS + name)
    return found if found is not None else element.find(name)


def parse_events(lines):
    """wevtutil qe /f:xml output (one <Event> per event, no root element) -> [{id, time}]."""
    text = "\n".join(lines).strip()
    if not text:
        return []
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
        try:
            event_id = int((ident.text or "").strip()) if ident is not None else None
        except ValueError:
            event_id = None
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


def excluded_result(state):
    """The excluded ranges read, as results show them: {ipv4: {tcp: [{start, end, administered}]}}."""
    out = {}
    for (ip, proto), rows in state.excluded.items():
        out.setdefault(ip.value, {})[proto.value] = [{"start": a, "end": b, "administered": admin} for a, b, admin in rows]
    return out
