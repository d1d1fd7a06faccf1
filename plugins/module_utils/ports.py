# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Port ranges and port lists, shared by Linux and Windows.

A port range is a ``PortRange(low, high)``: a named tuple of ints, parsed once from what the user wrote and
passed as it is to every step that needs its numbers.  A port list is a sorted tuple
of disjoint, non-adjacent ``(low, high)`` intervals: the form the kernel prints
``net.ipv4.ip_local_reserved_ports`` in ("40010-40021,40500").
"""

from __future__ import annotations

import re
from typing import NamedTuple

from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import (
    ValidationError,
    strict_int,
)

PORT_MIN = 1
PORT_MAX = 65535

_RANGE_FORMS = "two ports LOW HIGH (spaces or tabs), LOW-HIGH, or a list [LOW, HIGH]"
# Text longer than these is refused before it is parsed.  A port range is two ports and a separator; a port
# list can hold every other port ("1,3,5,...,65535": 190,000 characters).
RANGE_TEXT_MAX = 256
LIST_TEXT_MAX = 1 << 20
_DIGITS = re.compile(r"[0-9]+")  # one run of ASCII digits, matched at a position: linear, no backtracking
_BLANK_RUN = re.compile(r"[ \t]*")  # one run of blanks, the same


def _number(text, pos):
    """The ASCII digits at ``pos``: (digits, end), or (None, pos)."""
    match = _DIGITS.match(text, pos)
    if not match:
        return None, pos
    return match.group(0), match.end()


def _skip_blanks(text, pos):
    return _BLANK_RUN.match(text, pos).end()


def _small(digits, limit=PORT_MAX):
    """``digits`` as an int, or ``limit + 1`` when it has more digits than any port (int() is never given those)."""
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= len(str(limit)) else limit + 1


def _split_pair(text):
    """"LOW HIGH", "LOW-HIGH" (blanks allowed around '-') between optional blanks: (low, high) digits, or None.

    One pass over the text: the old regular expression backtracked over every split of a run of
    blanks, quadratic in its length.
    """
    pos = _skip_blanks(text, 0)
    low, pos = _number(text, pos)
    if low is None:
        return None
    after = _skip_blanks(text, pos)
    if after < len(text) and text[after] == "-":
        after = _skip_blanks(text, after + 1)
    elif after == pos:
        return None  # no separator at all
    high, pos = _number(text, after)
    if high is None or _skip_blanks(text, pos) != len(text):
        return None
    return low, high


def _split_item(text):
    """"PORT" or "LOW-HIGH" (blanks allowed around '-') between optional blanks: (low, high or None), or None."""
    pos = _skip_blanks(text, 0)
    low, pos = _number(text, pos)
    if low is None:
        return None
    after = _skip_blanks(text, pos)
    if after == len(text):
        return low, None
    if text[after] != "-":
        return None
    high, pos = _number(text, _skip_blanks(text, after + 1))
    if high is None or _skip_blanks(text, pos) != len(text):
        return None
    return low, high


class PortRange(NamedTuple):
    """An inclusive range of ports; equal to the plain ``(low, high)`` tuple."""

    low: int
    high: int

    @property
    def count(self):
        """How many ports the range holds."""
        return self.high - self.low + 1

    def text(self, sep=" "):
        """"LOW HIGH", as ``net.ipv4.ip_local_port_range`` is written (the kernel prints a tab)."""
        return "%d%s%d" % (self.low, sep, self.high)


def _port(value, option, whole):
    try:
        return strict_int(value, option, PORT_MIN, PORT_MAX, "an integer port")
    except ValidationError:
        raise ValidationError(option, whole, "ports must be integers from %d to %d" % (PORT_MIN, PORT_MAX))


def parse_port_range(value, option="port_range"):
    """Parse a port range given as "LOW HIGH", "LOW\\tHIGH", "LOW-HIGH" or [LOW, HIGH].

    Returns a ``PortRange``; raises ValidationError naming ``option``.
    Host-dependent rules (the unprivileged port start, netsh's minimums) are
    checked by the callers that know the host.
    """
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValidationError(option, value, _RANGE_FORMS)
        low = _port(value[0], option, value)
        high = _port(value[1], option, value)
    elif isinstance(value, str):
        if len(value) > RANGE_TEXT_MAX:
            raise ValidationError(option, value, "%s, at most %d characters" % (_RANGE_FORMS, RANGE_TEXT_MAX))
        pair = _split_pair(value)
        if pair is None:
            raise ValidationError(option, value, _RANGE_FORMS)
        low = _port(pair[0], option, value)
        high = _port(pair[1], option, value)
    else:
        raise ValidationError(option, value, _RANGE_FORMS)
    if low > high:
        raise ValidationError(option, value, "the low port (%d) must not be above the high port (%d)" % (low, high))
    return PortRange(low, high)


def format_port_range(port_range, sep=" "):
    """Render ``(low, high)`` as "LOW HIGH" (the kernel prints a tab); a PortRange has it as ``.text(sep)``."""
    return PortRange(*port_range).text(sep)


def normalise_intervals(intervals):
    """Sort and merge overlapping or adjacent intervals."""
    merged = []
    for low, high in sorted(intervals):
        if merged and low <= merged[-1][1] + 1:
            if high > merged[-1][1]:
                merged[-1] = (merged[-1][0], high)
        else:
            merged.append((low, high))
    return tuple(merged)


def _list_items(value, option, valid):
    """The items of a port list: the comma-separated parts of a string (none for a blank one), or a list's."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, str):
        raise ValidationError(option, value, valid)
    if len(value) > LIST_TEXT_MAX:
        raise ValidationError(option, value, "%s, at most %d characters" % (valid, LIST_TEXT_MAX))
    return [] if value.strip(" \t") == "" else value.split(",")


def parse_port_list(value, option="reserved_ports", lowest=PORT_MIN):
    """Parse a port list: kernel syntax "8080,9000-9100" or a list of ports and "LOW-HIGH" items.

    Returns the normalised interval tuple; an empty string or list is the empty list.
    ``lowest`` is 0 for lists read from a kernel, which accepts port 0 in
    ip_local_reserved_ports; what users give must start at 1.
    """
    valid = 'a comma-separated list of ports and LOW-HIGH ranges from 1 to 65535 (e.g. "8080,9000-9100"), or a list of them'
    if value is None:
        return ()
    intervals = []
    for item in _list_items(value, option, valid):
        if isinstance(item, bool):
            raise ValidationError(option, value, valid)
        if isinstance(item, int):
            low = high = item
        elif isinstance(item, str):
            found = _split_item(item)
            if found is None:
                raise ValidationError(option, value, valid)
            low = _small(found[0])
            high = _small(found[1]) if found[1] is not None else low
        else:
            raise ValidationError(option, value, valid)
        if not (lowest <= low <= PORT_MAX and lowest <= high <= PORT_MAX):
            raise ValidationError(option, value, "ports must be integers from %d to %d" % (lowest, PORT_MAX))
        if low > high:
            raise ValidationError(option, value, "in %r the low port must not be above the high port" % (item,))
        intervals.append((low, high))
    return normalise_intervals(intervals)


def format_port_list(intervals):
    """Render intervals the way the kernel prints ip_local_reserved_ports."""
    return ",".join("%d" % low if low == high else "%d-%d" % (low, high) for low, high in intervals)


def count_ports(intervals):
    """How many ports the intervals hold."""
    return sum(high - low + 1 for low, high in intervals)


def intersect(intervals, port_range):
    """The part of ``intervals`` that lies inside ``port_range``."""
    low, high = port_range
    out = []
    for a, b in intervals:
        a, b = max(a, low), min(b, high)
        if a <= b:
            out.append((a, b))
    return tuple(out)


def contains(intervals, port):
    """Whether ``port`` is in ``intervals``."""
    return any(a <= port <= b for a, b in intervals)


def ports_to_intervals(ports):
    """Turn an iterable of single ports into normalised intervals."""
    return normalise_intervals((p, p) for p in ports)


def clip(intervals, port_range):
    """``intervals`` cut to ``port_range``, sorted and merged (a port list of the ports inside the range)."""
    return normalise_intervals(intersect(intervals, port_range))


def usable_ports(port_range, reserved):
    """How many ports of ``port_range`` are not in ``reserved``."""
    low, high = port_range
    return (high - low + 1) - count_ports(clip(reserved, port_range))


def start_count_range(start, number):
    """A range given as a start port and a number of ports (Windows' form), as ``(low, high)``.

    The high end is capped at 65535; ``number`` 0 gives an empty range (``high`` below ``low``).
    """
    return (start, min(start + number - 1, PORT_MAX))


def port_flags(port_range, reserved):
    """A 65536-byte table, 1 for each port of ``port_range`` that is not in ``reserved`` (0 everywhere without a range).

    For tallies that test a port per socket: one index instead of an interval search.
    """
    flags = bytearray(65536)
    if port_range is None:
        return flags
    low, high = port_range
    flags[low:high + 1] = b"\x01" * (high - low + 1)
    for a, b in reserved:
        a, b = max(a, low), min(b, high)
        if a <= b:
            flags[a:b + 1] = bytes(b - a + 1)
    return flags
