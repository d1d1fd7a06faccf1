# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the port_usage_info module does: read the host, tally, analyse.

The host is a LinuxHost (the only code that reads it); the socket table is
parsed by socket_table, the settings mean what linux_settings says, and the
OS-neutral ``port_usage.analyse()`` gives the answer.  The socket table is read
with one netlink ``sock_diag`` dump per address family, or, where netlink is
refused, from /proc/net/tcp and /proc/net/tcp6 in large chunks.
"""

from __future__ import annotations

import errno
import os
import time
from dataclasses import replace

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import (
    PORT_RANGE,
    RESERVED_PORTS,
    REPORTED_SETTINGS,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_usage import Snapshot, analyse
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import (
    parse_port_list,
    parse_port_range,
    port_flags,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.socket_table import (
    AF_INET,
    AF_INET6,
    PROC_TABLES,
    TableError,
    Tally,
    format_address,
    is_loopback,
    netlink_request,
    tally_netlink,
    tally_proc_chunks,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError

TIME_WAIT_SECONDS = 60  # TCP_TIMEWAIT_LEN: fixed, no sysctl changes it
OLD_REUSE_DELAY_MS = 1000  # before tcp_tw_reuse_delay (Linux 6.14) reuse waited about one second

# Counters reported, by file and section: /proc/net/netstat TcpExt, /proc/net/snmp Tcp.
COUNTERS = (
    ("/proc/net/netstat", "TcpExt", ("TW", "TWRecycled", "TWKilled", "TCPTimeWaitOverflow", "ListenOverflows",
                                     "ListenDrops")),
    ("/proc/net/snmp", "Tcp", ("ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "CurrEstab")),
)


def _unreadable(source, exc):
    return {"source": source, "reason": os.strerror(exc.errno or errno.EIO)}


# ---------------------------------------------------------------- the socket table
def read_netlink(host, tally, families=(AF_INET, AF_INET6)):
    """Dump every TCP socket over netlink sock_diag into ``tally``; raises TableError."""
    host.sock_diag([(netlink_request(family, seq), _consumer(family, tally)) for seq, family in enumerate(families, 1)])
    tally.source = "netlink"


def _consumer(family, tally):
    return lambda buf: tally_netlink(buf, family, tally)


def read_proc(host, tally):
    """Read /proc/net/tcp and /proc/net/tcp6 into ``tally``; returns the paths that could not be read."""
    unreadable = []
    for path, family in PROC_TABLES:
        try:
            tally_proc_chunks(host.read_chunks(path), family, tally)
        except OSError as exc:
            if exc.errno == errno.ENOENT and family == AF_INET6:
                continue  # no IPv6 in this kernel: nothing to count
            unreadable.append(_unreadable(path, exc))
    tally.source = "proc"
    return unreadable


# ---------------------------------------------------------------- counters and settings
def parse_counter_file(text):
    """{section: {name: int}} from /proc/net/netstat or /proc/net/snmp (pairs of header and value lines)."""
    out = {}
    lines = text.splitlines()
    for names, values in zip(lines[0::2], lines[1::2]):
        head, dummy, names = names.partition(":")
        head2, dummy, values = values.partition(":")
        if head != head2:
            continue
        section = out.setdefault(head.strip(), {})
        for name, value in zip(names.split(), values.split()):
            try:
                section[name] = int(value)
            except ValueError:
                continue
    return out


def read_counters(host):
    """(counters {name: int}, unreadable [{source, reason}])."""
    counters = {}
    unreadable = []
    for path, section, names in COUNTERS:
        try:
            parsed = parse_counter_file(host.read_proc(path)).get(section, {})
        except OSError as exc:
            unreadable.append(_unreadable(path, exc))
            continue
        for name in names:
            if name in parsed:
                counters[name] = parsed[name]
    return counters, unreadable


def read_settings(host):
    """({name: value as the kernel prints it, or None}, unreadable).  A missing key is None and not unreadable."""
    settings = {}
    unreadable = []
    for name, key in REPORTED_SETTINGS:
        try:
            text = host.sysctl_text(key)
        except OSError as exc:
            settings[name] = None
            unreadable.append(_unreadable(exc.filename or key, exc))
            continue
        settings[name] = None if text is None else " ".join(text.split())
    return settings, unreadable


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def typed_settings(raw):
    """The settings as reported: ints, the range as "LOW HIGH", the reserved list in kernel syntax."""
    out = {}
    for name, value in raw.items():
        out[name] = value if name in ("port_range", "reserved_ports") else _int(value)
    return out


def reuse_rules(settings):
    """{"remote": bool, "loopback": bool, "delay_seconds": float, "inactive": bool} from typed settings.

    tcp_tw_reuse 1 reuses TIME_WAIT ports towards every destination, 2 only
    over loopback; either needs tcp_timestamps on (1 or 2).
    """
    reuse = settings.get("tw_reuse")
    stamps = settings.get("timestamps")
    on = stamps is not None and stamps != 0
    delay = settings.get("tw_reuse_delay")
    return {
        "remote": reuse == 1 and on,
        "loopback": reuse in (1, 2) and on,
        "delay_seconds": (delay if delay is not None else OLD_REUSE_DELAY_MS) / 1000.0,
        "inactive": reuse == 1 and not on,
    }


# ---------------------------------------------------------------- the whole read
def collect(host, use_netlink=True):
    """Read everything port_usage needs from ``host`` (its network namespace): a Snapshot."""
    raw, unreadable = read_settings(host)
    settings = typed_settings(raw)
    port_range = None
    reserved = ()
    try:
        if raw.get("port_range"):
            port_range = parse_port_range(raw["port_range"], PORT_RANGE)
        reserved = parse_port_list(raw.get("reserved_ports") or "", RESERVED_PORTS)
    except ValidationError as exc:
        unreadable.append({"source": PORT_RANGE, "reason": str(exc)})
    tally = Tally(port_flags(port_range, reserved))
    notes = []
    table_ok = True
    if use_netlink and host.live:
        try:
            read_netlink(host, tally)
        except TableError as exc:
            notes.append("%s; read /proc/net/tcp and /proc/net/tcp6 instead" % exc)
            tally = Tally(tally.ephemeral)
    if tally.source is None:
        missing = read_proc(host, tally)
        unreadable.extend(missing)
        table_ok = len(missing) < 2
    counters, missing = read_counters(host)
    unreadable.extend(missing)
    reuse = reuse_rules(settings)
    return Snapshot(
        settings=settings,
        port_range=port_range,
        reserved=reserved,
        min_port=settings.get("unprivileged_port_start") if settings.get("unprivileged_port_start") is not None else 1024,
        listening=tally.listening,
        states=tally.state_counts() if table_ok else None,
        tuples=tally.tuples(),
        format_address=format_address,
        is_loopback=is_loopback,
        reuse_remote=reuse["remote"],
        reuse_loopback=reuse["loopback"],
        reuse_delay=reuse["delay_seconds"],
        time_wait_seconds=TIME_WAIT_SECONDS,
        counters=counters,
        source=tally.source,
        unreadable=unreadable,
        notes=notes,
        extra_findings=_setting_findings(reuse),
        extra_recommendations={"timestamps": 1} if reuse["inactive"] else {},
    )


def _setting_findings(reuse):
    out = []
    if reuse["inactive"]:
        out.append(("warning", "tcp_tw_reuse is 1 but tcp_timestamps is 0: reuse is inactive"))
    return out


def audit(host=None, top=10, sample_seconds=0, warning=70, critical=90, use_netlink=True, sleep=time.sleep):
    """The module's work: read ``host`` (default: this one), optionally sample the counters, analyse.

    Returns the result dict.
    """
    host = LinuxHost() if host is None else host
    snapshot = collect(host, use_netlink)
    if sample_seconds and sample_seconds > 0:
        started = time.monotonic()
        sleep(sample_seconds)
        after, missing = read_counters(host)
        snapshot = replace(snapshot, counters_after=after, sample_seconds=time.monotonic() - started)
        snapshot.unreadable.extend(item for item in missing if item not in snapshot.unreadable)
    return analyse(snapshot, top=top, warning=warning, critical=critical)
