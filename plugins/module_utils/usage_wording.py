# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""How the analysis says things: numbers, rates, percents, endpoints, processes, host text.

One wording for every output: the port_usage_info and win_port_usage_info
findings, the ``tcpstack_`` metrics and the fleet report all call these, so a
host at 89.96% reads "89.9%" everywhere.  Pure functions, standard library
only, Python 3.9+.
"""

from __future__ import annotations

import math
import unicodedata

# Characters a terminal or an editor acts on instead of showing: C0/C1 controls, DEL, the bidi controls that
# reorder text (Trojan Source, CVE-2021-42574) and the other format characters (zero-width ones), line and
# paragraph separators, lone surrogates. Host text shows them as \\xNN / \\uNNNN instead.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_HIDDEN = frozenset(("Cf", "Zl", "Zp", "Cs"))


def number(value):
    """1000 -> "1,000"."""
    return "{:,}".format(value)


def rate(value):
    """250.0 -> "250", 16.666 -> "16.7", 1500 -> "1,500"."""
    text = "{:,.1f}".format(value)
    return text[:-2] if text.endswith(".0") else text


def percent(fraction):
    """0.7 -> "70%", 0.12345 -> "12.3%"; rounded down so that it never shows a threshold not reached."""
    tenths = math.floor(fraction * 1000 + 1e-9) / 10.0
    return ("%d%%" % tenths) if tenths == int(tenths) else ("%.1f%%" % tenths)


def endpoint(family, address, port):
    """"10.0.0.2:80", "[2001:db8::1]:443"."""
    return ("[%s]:%d" % (address, port)) if family == 6 else ("%s:%d" % (address, port))


def process_text(pid, name, user=None, unit=None, container=None, host=None):
    """How a process is named, the one way for every output.

    Without ``host`` (a finding, the cure): "pid 1234 (curl, user alice, unit web.service, container ID)", the
    name "?" when unknown.  With ``host`` (the fleet report's culprit): "curl (pid 1234)@web", without the pid
    part when ``pid`` is None.
    """
    if host is not None:
        return "%s%s@%s" % (name, "" if pid is None else " (pid %d)" % pid, host)
    parts = [name or "?"]
    for label, value in (("user", user), ("unit", unit), ("container", container)):
        if value:
            parts.append("%s %s" % (label, value))
    return "pid %d (%s)" % (pid, ", ".join(parts))


def clean_text(value):
    """``value`` as text with every control and bidi character shown escaped, never acted on."""
    text = value if isinstance(value, str) else str(value)
    out = []
    for char in text:
        code = ord(char)
        if code < 0x20 or 0x7f <= code < 0xa0:
            out.append("\\x%02x" % code)
        elif char in _BIDI or (code >= 0xa0 and unicodedata.category(char) in _HIDDEN):
            out.append("\\u%04x" % code if code <= 0xffff else "\\U%08x" % code)
        else:
            out.append(char)
    return "".join(out)
