# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The rules of the port-usage analysis, one function each, for both platforms.

Who inherits a destination's TIME_WAIT, how an IPv4-mapped address is
normalised, what "warning" and "critical" mean, how many ports a range leaves
and how fast they can be reused: the module, the metrics and the fleet report
call these, so they cannot disagree.  Platform-only rules live in the platform
files (linux_usage_rules.py, plugin_utils/windows_usage.py).  Pure, standard
library only, Python 3.9+.
"""

from __future__ import annotations

from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import count_ports, format_port_list, intersect

WARNING_PERCENT = 70
CRITICAL_PERCENT = 90
SEVERITY = {"ok": 0, "warning": 1, "critical": 2}
# Ranges recommended when the current one is too small, widest last; the low end is raised to the
# host's lowest unprivileged port (and made even, so that LOW and HIGH differ in parity).
RANGE_CANDIDATES = ((32768, 65535), (16384, 65535), (1024, 65535))
# The first 12 bytes of an IPv4-mapped IPv6 address (::ffff:a.b.c.d).
MAPPED = b"\x00" * 10 + b"\xff\xff"


# ---------------------------------------------------------------- addresses
def unmap_pair(local, remote):
    """(local, remote) as IPv4 bytes when both are IPv4-mapped IPv6 addresses, else None: such a pair is
    counted with IPv4."""
    if local[:12] == MAPPED and remote[:12] == MAPPED:
        return local[12:], remote[12:]
    return None


def unmap_text(address):
    """(4|6, address) of an address as text, an IPv4-mapped IPv6 address ("::ffff:10.0.0.1") turned into IPv4."""
    address = (address or "").strip()
    if address.lower().startswith("::ffff:") and "." in address:
        return 4, address[7:]
    return (6 if ":" in address else 4), address


# ---------------------------------------------------------------- attribution
def time_wait_heir(live_owners):
    """The process that inherits a destination's TIME_WAIT sockets that have no owner: its only live owner
    (a pid in ``live_owners``, the processes holding live sockets towards it), else None.  A pooled client
    beside a churner is never given the churner's TIME_WAIT."""
    return live_owners[0] if len(live_owners) == 1 else None


def per_second(count, seconds):
    """``count`` over ``seconds``, rounded to hundredths; None without a count or a time."""
    if count is None or not seconds:
        return None
    return round(count / float(seconds), 2)


# ---------------------------------------------------------------- levels
def level(utilisation, warning, critical):
    """"ok", "warning" or "critical" for a utilisation (0..1) against percent thresholds; None is "ok"."""
    if utilisation is None:
        return "ok"
    if utilisation * 100 >= critical:
        return "critical"
    if utilisation * 100 >= warning:
        return "warning"
    return "ok"


def worst(severities):
    """The most severe of ``severities``; "ok" for none."""
    return max(severities, key=lambda s: SEVERITY[s], default="ok")


# ---------------------------------------------------------------- capacity
def ephemeral_summary(port_range, reserved):
    """{"range", "size", "reserved", "reserved_in_range", "usable"}; all None without a range."""
    if port_range is None:
        return {"range": None, "size": None, "reserved": format_port_list(reserved), "reserved_in_range": None,
                "usable": None}
    size = port_range[1] - port_range[0] + 1
    inside = count_ports(intersect(reserved, port_range))
    return {
        "range": [port_range[0], port_range[1]],
        "size": size,
        "reserved": format_port_list(reserved),
        "reserved_in_range": inside,
        "usable": size - inside,
    }


def hold_seconds(reuse, reuse_delay, time_wait_seconds):
    """How long a closed port stays unusable: the reuse delay where TIME_WAIT reuse applies, else TIME_WAIT."""
    return reuse_delay if reuse else float(time_wait_seconds)


def projected(per_second, hold, usable, warning, critical):
    """(severity, ports held in steady state) of a steady rate of new connections that each hold a port for
    ``hold`` seconds (hold_seconds()), against ``usable`` ports: the one rule of every projection, a
    destination's and a process's.  ("ok", None) without a rate or usable ports."""
    if not per_second or not usable or hold <= 0:
        return "ok", None
    needed = per_second * hold
    return level(needed / float(usable), warning, critical), needed


def leaving_rate(counts, seconds):
    """The rate of a process's connections towards one destination that leave a TIME_WAIT on this host (and so
    hold a port): ``time_wait_entered`` over ``seconds`` where it was measured (tracepoints), else its new
    connections (a sample that finds connections by their TIME_WAIT counts those only).  ``counts``: a
    DestinationCounts or the result's destination dict."""
    entered = counts.get("time_wait_entered")
    if entered is not None:
        return per_second(entered, seconds)
    if counts.get("new_connections_per_second") is not None:
        return counts.get("new_connections_per_second")
    return per_second(counts.get("new_connections"), seconds)


def capacity(usable, time_wait_seconds, reuse_remote, reuse_loopback, reuse_delay):
    """The sustainable rate of new connections to one destination tuple, for remote and loopback destinations.

    A closed port stays unusable for TIME_WAIT (``time_wait_seconds``), or for
    the reuse delay where reuse applies; the rate is usable ports / that time.
    """
    out = {"usable_ports": usable, "time_wait_seconds": time_wait_seconds}
    for name, reuse in (("remote", reuse_remote), ("loopback", reuse_loopback)):
        hold = hold_seconds(reuse, reuse_delay, time_wait_seconds)
        most = None
        if usable is not None and hold > 0:
            most = round(usable / hold, 2)
        out[name] = {"reuse": bool(reuse), "port_hold_seconds": hold, "max_new_connections_per_second": most}
    return out


def recommended_range(port_range, usable, min_port):
    """A wider ``[LOW, HIGH]`` than ``port_range`` (respecting ``min_port``), or None when none is wider."""
    floor = max(int(min_port or 1024), 1)
    for low, high in RANGE_CANDIDATES:
        low = max(low, floor)
        if low % 2:
            low += 1
        if low >= high:
            continue
        if port_range is not None and low >= port_range[0] and high <= port_range[1]:
            continue  # not wider than what the host has
        if usable is not None and high - low + 1 <= usable:
            continue
        return [low, high]
    return None
