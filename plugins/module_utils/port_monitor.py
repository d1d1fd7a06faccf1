# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The port_monitor sampler: the port_usage_info audit, again and again, as a node_exporter textfile.

The role tcpstack.tuning.port_monitor copies this collection's module_utils to
the host (keeping the ``ansible_collections.tcpstack.tuning.plugins.module_utils``
package path) and runs ``main()`` under systemd.  Every ``interval`` seconds it
runs ``linux_port_usage.audit()`` -- the same code as the port_usage_info
module -- renders it with ``prometheus.render()`` and replaces
``<directory>/tcpstack.prom`` atomically: a temporary file in the same
directory (named so that the textfile collector, which reads ``*.prom`` only,
never sees it), written, fsync'd, chmod 0644, renamed over the old file, and
the directory fsync'd.  A run that fails writes nothing, so the metric
``tcpstack_sampler_last_success_timestamp_seconds`` ages and the alert
TcpstackSamplerStale fires; the error goes to the journal.

    python3 -s -E -B /usr/local/lib/tcpstack-port-monitor/tcpstack-port-monitor \\
        --directory /var/lib/prometheus/node-exporter --interval 15 --top 5

``--processes`` also names the processes holding the ports (the audit's
process attribution, which reads every /proc/PID/fd: off by default for its
cost), and ``--process-sample-seconds N`` follows new connections for N
seconds of each run to measure each process's rate.  Called with an audit
that cannot attribute (no ``attribute`` parameter), the options are ignored.

Standard library only, Python 3.9+.
"""

from __future__ import annotations

import argparse
import inspect
import os
import signal
import stat
import sys
import time

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_port_usage import audit
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_usage import validate_audit_options
from ansible_collections.tcpstack.tuning.plugins.module_utils.prometheus import render
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError, strict_int

DEFAULT_DIRECTORY = "/var/lib/prometheus/node-exporter"  # Debian's prometheus-node-exporter reads it
FILE_NAME = "tcpstack.prom"
DEFAULT_INTERVAL = 15
INTERVAL_MAX = 3600
DEFAULT_TOP = 5
TOP_MAX = 100  # series per destination family: bounded cardinality
PROCESS_SAMPLE_MAX = 60


_AUDIT_ATTRIBUTES = "attribute" in inspect.signature(audit).parameters


class MonitorError(Exception):
    """The sampler cannot run with this configuration; the message says why, naming the option."""


def check_directory(path, option="--directory"):
    """``path`` must be an absolute path to an existing directory (not a symbolic link to one)."""
    if not isinstance(path, str) or not path.startswith("/") or "\n" in path or "\0" in path:
        raise MonitorError(str(ValidationError(option, path, "an absolute path to a directory")))
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise MonitorError(str(ValidationError(option, path, "an existing directory (%s)" % os.strerror(exc.errno))))
    if not stat.S_ISDIR(mode):
        raise MonitorError(str(ValidationError(option, path, "a directory, not a symbolic link or a file")))
    return os.path.normpath(path)


def parse_args(argv):
    """The sampler's configuration from its command line; MonitorError names a bad option."""
    parser = argparse.ArgumentParser(prog="tcpstack-port-monitor", description=__doc__.split("\n", 1)[0])
    parser.add_argument("--directory", default=DEFAULT_DIRECTORY)
    parser.add_argument("--interval", default=str(DEFAULT_INTERVAL))
    parser.add_argument("--top", default=str(DEFAULT_TOP))
    parser.add_argument("--warning-percent", default="70")
    parser.add_argument("--critical-percent", default="90")
    parser.add_argument("--processes", action="store_true",
                        help="name the processes that hold the ports (reads /proc/PID/fd of every process)")
    parser.add_argument("--process-sample-seconds", default="0",
                        help="with --processes: follow new connections this long per run, for their rates")
    parser.add_argument("--once", action="store_true", help="write one sample and exit")
    args = parser.parse_args(argv)
    try:
        args.interval = strict_int(args.interval, "--interval", 1, INTERVAL_MAX, "an integer number of seconds")
        args.top = strict_int(args.top, "--top", 1, TOP_MAX, "an integer number of destinations")
        checked = validate_audit_options(
            args.top, 0, args.warning_percent, args.critical_percent,
            {"top": "--top", "warning_percent": "--warning-percent", "critical_percent": "--critical-percent"})
        args.top, args.warning_percent, args.critical_percent = checked[0], checked[2], checked[3]
        args.process_sample_seconds = strict_int(args.process_sample_seconds, "--process-sample-seconds", 0,
                                                 min(PROCESS_SAMPLE_MAX, args.interval - 1) if args.processes else 0,
                                                 "an integer number of seconds below --interval (0 without "
                                                 "--processes)")
    except ValidationError as exc:
        raise MonitorError(str(exc)) from None
    args.directory = check_directory(args.directory)
    return args


def sample(args, host=None, clock=time.time, monotonic=time.monotonic):
    """One run: the audit, rendered.  Returns the textfile's text."""
    started = monotonic()
    options = {}
    if _AUDIT_ATTRIBUTES:  # the audit can name processes (issue 14): only when asked, it reads every /proc/PID/fd
        options = {"attribute": args.processes, "sample_seconds": args.process_sample_seconds}
    result = audit(host, top=args.top, warning=args.warning_percent, critical=args.critical_percent, **options)
    return render(result, top=args.top, duration_seconds=round(monotonic() - started, 6),
                  timestamp=round(clock(), 3), interval_seconds=args.interval)


def write_atomically(directory, text, name=FILE_NAME, host=None):
    """Replace ``directory/name`` with ``text`` (LinuxHost.write_file_atomic: a hidden temporary file in the same
    directory, 0644, fsync, rename, fsync of the directory); returns the path."""
    final = os.path.join(directory, name)
    # the collector's directory is the package's (or the user's): a missing one is an error, never made here
    (LinuxHost() if host is None else host).write_file_atomic(final, text, make_directory=False)
    return final


class _Stop:
    """Set by SIGTERM / SIGINT: the loop ends after the current run."""

    def __init__(self):
        self.requested = False

    def __call__(self, _signum, _frame):
        self.requested = True


def _log(text):
    """One line to stderr, which systemd sends to the journal."""
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def run(args, host=None, runs=None, sleep=time.sleep, monotonic=time.monotonic, stop=None, log=None):
    """Sample every ``args.interval`` seconds (``runs`` times, or until ``stop.requested``); returns the failures.

    The schedule does not drift: each run starts ``interval`` after the
    previous one started; when a run overruns, the next starts at once.
    """
    stop = stop or _Stop()
    log = log or _log
    failures = 0
    done = 0
    next_start = monotonic()
    while not stop.requested and (runs is None or done < runs):
        try:
            write_atomically(args.directory, sample(args, host))
        except Exception as exc:  # pylint: disable=broad-except  # one bad run must not end the service
            failures += 1
            log("tcpstack-port-monitor: sample failed, %s was not written: %s: %s"
                % (os.path.join(args.directory, FILE_NAME), type(exc).__name__, exc))
        done += 1
        if runs is not None and done >= runs:
            break
        next_start += args.interval
        now = monotonic()
        if next_start < now:  # overran: start again now, do not try to catch up
            next_start = now
        while not stop.requested and monotonic() < next_start:  # bounded: the remaining wait shrinks each time
            sleep(min(1.0, max(0.0, next_start - monotonic())))
    return failures


def main(argv=None):
    """Entry point of the service; returns the exit status (2 for a bad option)."""
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except MonitorError as exc:
        _log("tcpstack-port-monitor: %s" % exc)
        return 2
    if args.once:
        return 1 if run(args, runs=1) else 0
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    run(args, stop=stop)
    return 0
