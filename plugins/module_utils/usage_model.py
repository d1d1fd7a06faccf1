# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The records of the port-usage analysis, one shape for Linux, Windows, the metrics and the report.

The OS side (linux_port_usage.py, plugin_utils/windows_usage.py) reads a host
into a ``Snapshot``; port_usage.analyse() turns it into the module's result.
A process the OS side attributed ports to is a ``ProcessRecord`` (built by
``process_record()``, its identity by ``identity()``), its ports per
destination a ``DestinationCounts`` keyed by (family 4|6, remote address key,
remote port): the key joins processes to destinations, never a display text.
The records read by name (``record.time_wait``) and, for the callers and tests
that treat them as the dicts they were, also as ``record["time_wait"]``.
Platform-only rules come in as a ``Platform`` (linux_usage_rules.LINUX,
windows_usage.WINDOWS): this file imports no platform file.  Standard library
only, Python 3.9+.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

TUPLE = "tuple"  # Linux: the limit is per (local address, remote address, remote port)
HOST = "host"  # Windows: one host-wide pool of dynamic ports per IP version


class _Named:
    """Read a record's fields by name as a mapping too: ``record["in_use"]``, ``record.get("unit")``."""

    def __getitem__(self, name):
        try:
            return getattr(self, name)
        except AttributeError:
            raise KeyError(name) from None

    def get(self, name, default=None):
        return getattr(self, name, default)

    def keys(self):
        return [item.name for item in fields(self)]


@dataclass
class DestinationCounts(_Named):
    """One process's sockets towards one destination.  new_connections* None: no sample measured them."""

    in_use: int = 0
    established: int = 0
    time_wait: int = 0
    time_wait_inferred: int = 0
    new_connections: Optional[int] = None
    new_connections_inferred: Optional[int] = None
    # connections of the sample that left a TIME_WAIT on this host (this end closed first); None: not known
    time_wait_entered: Optional[int] = None
    # connect() calls that failed for want of a local port (EADDRNOTAVAIL); None: not measured
    failed_connections: Optional[int] = None


# The counts of one process towards one destination: DestinationCounts' fields, declared once, there.
COUNT_FIELDS = tuple(item.name for item in fields(DestinationCounts))


@dataclass
class Unattributed(_Named):
    """The sockets towards one destination that no process could be given."""

    in_use: int = 0
    time_wait: int = 0
    new_connections: Optional[int] = None


@dataclass
class ProcessRecord(_Named):
    """A process and the ports it holds: identity (IDENTITY_FIELDS), bound-but-unconnected ports
    (``bound_inactive`` now, ``bound_inactive_seen`` during the sample) and ``destinations``
    {(family, remote address key, remote port): DestinationCounts}."""

    pid: int
    name: Optional[str] = None
    cmdline: Optional[str] = None
    uid: Optional[int] = None
    user: Optional[str] = None
    cgroup: Optional[str] = None
    unit: Optional[str] = None
    container: Optional[str] = None
    start_time: Optional[float] = None  # seconds after boot (/proc/PID/stat): with the pid, who the process is
    evidence: str = "exact"  # "exact": seen owning sockets or opening connections; "inferred": only given a share
    spawned: Optional[Dict[str, Any]] = None  # {"command", "count"}: short-lived children whose counts are here
    failed_connections: Optional[int] = None  # connect() calls failed for want of a port; None: not measured
    bound_inactive: int = 0
    bound_inactive_seen: int = 0
    destinations: Dict[tuple, DestinationCounts] = field(default_factory=dict)


# Who a process is (ProcessRecord's fields but its ports); what cannot be read is None.
IDENTITY_FIELDS = tuple(item.name for item in fields(ProcessRecord)
                        if item.name not in ("evidence", "spawned", "failed_connections", "bound_inactive",
                                             "bound_inactive_seen", "destinations"))


def identity(pid, **known):
    """{"pid", "name", "cmdline", "uid", "user", "cgroup", "unit", "container"}: who a process is, None where
    unknown.  Raises TypeError for a field that is not one of them."""
    unknown = set(known) - set(IDENTITY_FIELDS)
    if unknown:
        raise TypeError("not a process identity field: %s" % ", ".join(sorted(unknown)))
    out = dict.fromkeys(IDENTITY_FIELDS)
    out.update(known, pid=pid)
    return out


def process_record(who, destinations=None, bound_inactive=0, bound_inactive_seen=0, evidence="exact", spawned=None,
                   failed_connections=None):
    """The one builder of a ProcessRecord: ``who`` an identity() (or a pid), the counts per destination."""
    who = identity(who) if isinstance(who, int) else who
    return ProcessRecord(bound_inactive=bound_inactive, bound_inactive_seen=bound_inactive_seen,
                         destinations={} if destinations is None else destinations, evidence=evidence,
                         spawned=spawned, failed_connections=failed_connections,
                         **dict((name, who.get(name)) for name in IDENTITY_FIELDS))


class Finding(NamedTuple):
    """A finding of the analysis: "ok" | "warning" | "critical", and the sentence the result shows."""

    severity: str
    sentence: str


class ClientFinding(NamedTuple):
    """A finding on one process (pooling, bind before connect): its severity, and the dict the result reports
    under ``client_findings`` ("kind", "pid", "process", "sentence", ...)."""

    severity: str
    report: Dict[str, Any]


class Pool(NamedTuple):
    """A host-wide pool of local ports: every connect() of its address family takes its port from here.

    ``name`` is how findings name it ("ipv4 dynamic"); ``reserved`` are the
    ports of the range that are never handed out (any intervals: those inside
    the range count).
    """

    name: str
    family: int
    port_range: Tuple[int, int]
    reserved: Tuple[Tuple[int, int], ...] = ()


class CounterReport(NamedTuple):
    """What a platform's counters say: the result's ``counters``, the measured rates (None: no sample), and
    the findings, notes and recommendations they lead to."""

    counters: Optional[Dict[str, Any]] = None
    measured: Optional[Dict[str, Any]] = None
    findings: Tuple[Finding, ...] = ()
    notes: Tuple[str, ...] = ()
    recommendations: Optional[Dict[str, Any]] = None


def _no_remedy(snap):
    return {}


def _no_findings(snap, time_wait):
    return []


def _counters_as_read(snap):
    if snap.counters is None:
        return CounterReport()
    return CounterReport(counters={"values": dict(snap.counters), "sample": None})


class Platform(NamedTuple):
    """The rules and wording only one platform has, handed to analyse() (which imports no platform file).

    ``hold_remedy(snap)``: the options that shorten how long a closed port is held; ``findings(snap,
    sockets in TIME_WAIT)``: findings on the platform's own settings; ``counters(snap)``: a CounterReport;
    ``reserve_option``: the option that keeps listening ports out of the range (None: none);
    ``pool_held``: the sentence of a host-wide pool held beyond a threshold (held, usable, pool name, percent).
    """

    name: str = "neutral"
    hold_remedy: Callable[[Any], Dict[str, Any]] = _no_remedy
    findings: Callable[[Any, int], List[Finding]] = _no_findings
    counters: Callable[[Any], CounterReport] = _counters_as_read
    reserve_option: Optional[str] = None
    pool_held: str = "the host holds %s of %s usable %s ports (%s)"


NEUTRAL = Platform()


def _text_address(family, key):
    return str(key)


def _never_loopback(family, key):
    return False


@dataclass(frozen=True)
class Snapshot:
    """What the OS side read: settings, the tallied socket table, counters; and how to judge it.

    ``tuples``: {(family 4|6, local address key, remote address key, remote port): [in use, in TIME_WAIT]},
    the keys opaque to the analysis and turned into text by ``format_address(family, key)`` only for the
    destinations reported.  ``is_loopback(family, key)`` tells whether reuse-for-loopback applies.

    ``scope``: TUPLE (Linux) measures each tuple against ``port_range`` minus
    ``reserved``.  HOST (Windows) also measures ``pools``, the host-wide pools
    connect() takes every port from (one per address family): each pool's
    utilisation is a finding, and the IPv4 pool replaces ``port_range`` and
    ``reserved``; the result gains ``ports_held_by_family`` and ``ephemeral_ipv6``.

    When ports run short the recommendations are a wider ``port_range`` (from
    ``min_port``), the platform's ``reserve_option`` when ports listen inside it,
    and its ``hold_remedy`` (in TUPLE scope only towards a destination without
    TIME_WAIT reuse); then ``extra_recommendations``.  ``counters`` None: the
    platform has none.  ``extra_result``: platform-only fields, added to the result as they are.

    ``processes`` (None: not attributed; the result then has none of the
    process keys): ProcessRecords.  ``attribution``: "sampled_seconds" (what
    new_connections were counted over, None without a sample),
    "unattributed" {(family, remote, port): Unattributed}, and any other
    facts, reported as they are.  ``platform``: the Platform whose rules apply.

    ``time_wait_recent``: {tuple key as in ``tuples``: sockets that entered
    TIME_WAIT in the last ``time_wait_recent_seconds``}, read from the
    TIME_WAIT timers of one dump (None: not measured, e.g. on Windows): the
    rate of connections that leave a TIME_WAIT on this host.
    """

    settings: Dict[str, Any] = field(default_factory=dict)
    port_range: Optional[Tuple[int, int]] = None
    reserved: Tuple[Tuple[int, int], ...] = ()
    min_port: int = 1024
    listening: Any = field(default_factory=set)
    states: Optional[Dict[str, Dict[str, int]]] = None
    tuples: Dict[tuple, list] = field(default_factory=dict)
    format_address: Callable[[int, Any], str] = _text_address
    is_loopback: Callable[[int, Any], bool] = _never_loopback
    reuse_remote: bool = False
    reuse_loopback: bool = False
    reuse_delay: float = 1.0
    time_wait_seconds: float = 60
    counters: Optional[Dict[str, int]] = field(default_factory=dict)
    counters_after: Optional[Dict[str, int]] = None
    sample_seconds: Optional[float] = None
    source: Optional[str] = None
    unreadable: List[dict] = field(default_factory=list)
    notes: List[str] = field(default_factory=list)
    extra_findings: List[Tuple[str, str]] = field(default_factory=list)
    extra_recommendations: Dict[str, Any] = field(default_factory=dict)
    scope: str = TUPLE
    pools: Tuple[Pool, ...] = ()
    extra_result: Dict[str, Any] = field(default_factory=dict)
    processes: Optional[List[ProcessRecord]] = None
    attribution: Optional[Dict[str, Any]] = None
    platform: Platform = NEUTRAL
    time_wait_recent: Optional[Dict[tuple, int]] = None
    time_wait_recent_seconds: Optional[float] = None


class Destination:
    """The sockets towards one (family, remote address, remote port), and its busiest tuple.

    ``blocking`` is what connect() cannot take on the busiest tuple (TIME_WAIT
    is free where ``reuse`` applies); the busiest tuple is the one with the most
    blocking ports, then the most ports held.  A mutable record: one per
    destination, updated once per tuple.
    """

    __slots__ = ("in_use", "time_wait", "tuples", "busiest_local", "busiest_in_use", "busiest_time_wait", "blocking",
                 "reuse")

    def __init__(self, in_use, time_wait, tuples, busiest_local, busiest_in_use, busiest_time_wait, blocking, reuse):
        self.in_use = in_use
        self.time_wait = time_wait
        self.tuples = tuples
        self.busiest_local = busiest_local
        self.busiest_in_use = busiest_in_use
        self.busiest_time_wait = busiest_time_wait
        self.blocking = blocking
        self.reuse = reuse
