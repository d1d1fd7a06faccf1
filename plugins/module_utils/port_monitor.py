# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The port_monitor sampler: the port_usage_info audit, again and again, as a node_exporter textfile.

The role tcpstack.tuning.port_monitor copies this collection's module_utils to
the host (keeping the ``ansible_collections.tcpstack.tuning.plugins.module_utils``
package path) and runs ``port_monitor_service.main()`` under systemd.  Every
``interval`` seconds it runs ``linux_port_usage.audit()`` -- the same code as
the port_usage_info module -- renders it with ``prometheus.render()`` and
replaces ``<directory>/tcpstack.prom`` atomically: a temporary file in the
same directory (named so that the textfile collector, which reads ``*.prom``
only, never sees it), written, fsync'd, chmod 0644, renamed over the old file,
and the directory fsync'd.  A run that fails writes nothing, so the metric
``tcpstack_sampler_last_success_timestamp_seconds`` ages and the alert
TcpstackSamplerStale fires; the error goes to the journal.

    python3 -s -E -B /usr/local/lib/tcpstack-port-monitor/tcpstack-port-monitor \\
        --directory /var/lib/prometheus/node-exporter --interval 15 --top 5

``--nat`` also exports the NAT section of a host that source-NATs (its
conntrack table and egress keys; it needs CAP_NET_ADMIN, which the role
grants only with port_monitor_nat).  ``--processes`` also names the
processes holding the ports (the audit's process attribution, which reads every /proc/PID/fd: off by default for its
cost), and ``--process-sample-seconds N`` follows new connections for N
seconds of each run to measure each process's rate.

This module is the sampler's pure part: its limits, the check of its options
(``check_options``) and one sample (``sample``: audit, render, text).  The
service around it -- the command line, the host checks and writes (through
LinuxHost), the loop and the signals -- is port_monitor_service.  The role's
variables are checked against the same limits (plugin_utils/role_vars.py).

Standard library only, Python 3.9+.
"""

from __future__ import annotations

import time
from typing import NamedTuple

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_port_usage import audit
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_usage import validate_audit_options
from ansible_collections.tcpstack.tuning.plugins.module_utils.prometheus import render
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import (
    ValidationError,
    absolute_path,
    strict_int,
)

DEFAULT_DIRECTORY = "/var/lib/prometheus/node-exporter"  # Debian's prometheus-node-exporter reads it
FILE_NAME = "tcpstack.prom"
DEFAULT_INTERVAL = 15
INTERVAL_MAX = 3600
DEFAULT_TOP = 5
TOP_MAX = 100  # series per destination family: bounded cardinality
PROCESS_SAMPLE_MAX = 60


class MonitorError(Exception):
    """The sampler cannot run with this configuration; the message says why, naming the option."""


class MonitorOptions(NamedTuple):
    """The sampler's checked configuration (what ``check_options`` returns)."""

    directory: str
    interval: int
    top: int
    warning_percent: int
    critical_percent: int
    processes: bool
    process_sample_seconds: int
    once: bool
    nat: bool = False


def check_options(directory, interval, top, warning_percent, critical_percent, processes=False,
                  process_sample_seconds=0, once=False, nat=False):
    """The options as the command line gives them (text), checked; MonitorError names a bad one.

    ``directory`` is checked as a value only (validation.absolute_path): whether it is a directory
    on this host is the service's check, through LinuxHost.
    """
    try:
        interval = strict_int(interval, "--interval", 1, INTERVAL_MAX, "an integer number of seconds")
        top = strict_int(top, "--top", 1, TOP_MAX, "an integer number of destinations")
        checked = validate_audit_options(
            top, 0, warning_percent, critical_percent,
            {"top": "--top", "warning_percent": "--warning-percent", "critical_percent": "--critical-percent"})
        top, warning_percent, critical_percent = checked[0], checked[2], checked[3]
        process_sample_seconds = strict_int(process_sample_seconds, "--process-sample-seconds", 0,
                                            min(PROCESS_SAMPLE_MAX, interval - 1) if processes else 0,
                                            "an integer number of seconds below --interval (0 without "
                                            "--processes)")
        directory = absolute_path(directory, "--directory", "an absolute path to a directory")
    except ValidationError as exc:
        raise MonitorError(str(exc)) from None
    return MonitorOptions(directory, interval, top, warning_percent, critical_percent, bool(processes),
                          process_sample_seconds, bool(once), bool(nat))


def sample(options, host=None, clock=time.time, monotonic=time.monotonic):
    """One run: the audit of ``host`` (default: this one), rendered.  Returns the textfile's text.

    The processes are named only when ``options.processes`` asks: it reads every /proc/PID/fd.  The NAT
    section (a conntrack dump over ctnetlink and ``nft``, both needing CAP_NET_ADMIN) is read only when
    ``options.nat`` asks: without it nothing NAT is tried, so a confined unit wastes no exec and logs no error.
    """
    started = monotonic()
    result = audit(host, top=options.top, warning=options.warning_percent, critical=options.critical_percent,
                   attribute=options.processes, sample_seconds=options.process_sample_seconds, nat=options.nat)
    return render(result, top=options.top, duration_seconds=round(monotonic() - started, 6),
                  timestamp=round(clock(), 3), interval_seconds=options.interval)
