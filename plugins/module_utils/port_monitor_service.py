# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The port_monitor sampler's service: its command line, the loop, the signals; ``main()`` is its entry point.

The role tcpstack.tuning.port_monitor installs an entry point,
``tcpstack-port-monitor``, that calls ``main()`` under systemd.  What one run
does is port_monitor's (``check_options``, ``sample``); what this module adds
is the shell around it: argparse, the schedule, SIGTERM/SIGINT, the journal,
and the host, touched only through one LinuxHost: the textfile directory
checked (``check_directory``), the textfile replaced atomically
(``write_atomically``) and removed (``remove_textfile``, ``--remove``), every
step relative to the directory opened without following a symbolic link.

Standard library only, Python 3.9+.
"""

from __future__ import annotations

import argparse
import errno
import os
import posixpath
import signal
import sys
import time

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost, UnsafeFile
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_monitor import (
    DEFAULT_DIRECTORY,
    DEFAULT_INTERVAL,
    DEFAULT_TOP,
    FILE_NAME,
    MonitorError,
    check_options,
    sample,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError

DESCRIPTION = "The port_monitor sampler: the port_usage_info audit, again and again, as a node_exporter textfile."


def check_directory(path, host=None, option="--directory"):
    """``path`` (checked by check_options) must be an existing directory on ``host``, reached without following a
    symbolic link in any of its components (LinuxHost.check_real_directory)."""
    try:
        (LinuxHost() if host is None else host).check_real_directory(path)
    except UnsafeFile:
        raise MonitorError(str(ValidationError(option, path, "a directory, not a symbolic link or a file"))) from None
    except OSError as exc:
        raise MonitorError(str(ValidationError(option, path, "an existing directory (%s)"
                                               % os.strerror(exc.errno or errno.EIO)))) from None
    return path


def _parser():
    parser = argparse.ArgumentParser(prog="tcpstack-port-monitor", description=DESCRIPTION)
    parser.add_argument("--directory", default=DEFAULT_DIRECTORY)
    parser.add_argument("--interval", default=str(DEFAULT_INTERVAL))
    parser.add_argument("--top", default=str(DEFAULT_TOP))
    parser.add_argument("--warning-percent", default="70")
    parser.add_argument("--critical-percent", default="90")
    parser.add_argument("--processes", action="store_true",
                        help="name the processes that hold the ports (reads /proc/PID/fd of every process)")
    parser.add_argument("--process-sample-seconds", default="0",
                        help="with --processes: follow new connections this long per run, for their rates")
    parser.add_argument("--nat", action="store_true",
                        help="export the NAT section of a host that source-NATs (conntrack over ctnetlink and nft: "
                             "needs CAP_NET_ADMIN)")
    parser.add_argument("--once", action="store_true", help="write one sample and exit")
    parser.add_argument("--remove", action="store_true",
                        help="remove the textfile (and temporaries of a killed write) from --directory, never through "
                             "a symbolic link, and exit: what port_monitor_state=absent runs")
    return parser


def _options(args, host, check=True):
    options = check_options(args.directory, args.interval, args.top, args.warning_percent, args.critical_percent,
                            args.processes, args.process_sample_seconds, args.once, args.nat)
    if check:
        check_directory(options.directory, host)
    return options


def parse_args(argv, host=None):
    """The sampler's configuration (a port_monitor.MonitorOptions) from its command line; MonitorError names a bad
    option.  The directory is checked on ``host`` (default: this one)."""
    return _options(_parser().parse_args(argv), host)


def write_atomically(directory, text, name=FILE_NAME, host=None):
    """Replace ``directory/name`` with ``text``; returns the path.

    LinuxHost.write_in_directory: a hidden temporary file in the same directory, 0644, fsync, rename,
    fsync of the directory, every step relative to one descriptor of the directory opened without
    following a symbolic link in any component (checked again at every run, not only at start).  The
    collector's directory is the package's (or the user's): a missing one is an error, never made here.
    """
    (LinuxHost() if host is None else host).write_in_directory(directory, name, text, mode=0o644)
    return posixpath.join(directory, name)


def remove_textfile(directory, name=FILE_NAME, host=None):
    """Remove the textfile and any temporary file of a killed write (``port_monitor_state: absent``).

    LinuxHost.remove_in_directory: relative to a descriptor of the real directory, never through a
    symbolic link.  Returns (status, line): 0 and what was removed, or 0 and why nothing was (a missing
    directory, a component that is a link: the sampler never wrote through one, so nothing there is ours).
    """
    try:
        removed = (LinuxHost() if host is None else host).remove_in_directory(directory, name)
    except UnsafeFile as exc:
        return 0, "left alone: %s %s, so nothing of the sampler's is there" % (exc.filename, exc.strerror)
    return 0, ("removed: %s" % " ".join(removed)) if removed else "nothing to remove"


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


def run(options, host=None, runs=None, sleep=time.sleep, monotonic=time.monotonic, stop=None, log=None):
    """Sample every ``options.interval`` seconds (``runs`` times, or until ``stop.requested``); returns the failures.

    The schedule does not drift: each run starts ``interval`` after the
    previous one started; when a run overruns, the next starts at once.
    """
    host = LinuxHost() if host is None else host
    stop = stop or _Stop()
    log = log or _log
    failures = 0
    done = 0
    next_start = monotonic()
    while not stop.requested and (runs is None or done < runs):
        try:
            write_atomically(options.directory, sample(options, host), host=host)
        except Exception as exc:  # pylint: disable=broad-except  # one bad run must not end the service
            failures += 1
            log("tcpstack-port-monitor: sample failed, %s was not written: %s: %s"
                % (posixpath.join(options.directory, FILE_NAME), type(exc).__name__, exc))
        done += 1
        if runs is not None and done >= runs:
            break
        next_start += options.interval
        now = monotonic()
        if next_start < now:  # overran: start again now, do not try to catch up
            next_start = now
        while not stop.requested and monotonic() < next_start:  # bounded: the remaining wait shrinks each time
            sleep(min(1.0, max(0.0, next_start - monotonic())))
    return failures


def main(argv=None):
    """Entry point of the service; returns the exit status (2 for a bad option)."""
    host = LinuxHost()
    args = _parser().parse_args(sys.argv[1:] if argv is None else argv)
    try:
        options = _options(args, host, check=not args.remove)
    except MonitorError as exc:
        _log("tcpstack-port-monitor: %s" % exc)
        return 2
    if args.remove:
        status, line = remove_textfile(options.directory, host=host)
        sys.stdout.write(line + "\n")
        return status
    if options.once:
        return 1 if run(options, host, runs=1) else 0
    stop = _Stop()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    run(options, host, stop=stop)
    return 0
