# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The port audit as tcpstack_ metrics, for hosts without a sampler (Windows first).

The fleet_report action calls ``deliver()`` once on the controller with every
host's result.  Each audited host's series are those of the port_monitor
sampler (``prometheus.render()``: the same names, HELP and TYPE), with
``instance="<inventory host>"`` and ``tcpstack_source="port_audit"`` on every
sample, the audit's Unix time in ``tcpstack_sampler_last_success_timestamp_seconds``
and the schedule in ``tcpstack_sampler_interval_seconds``, so that the alert
TcpstackSamplerStale calls a host stale once its last audit is older than two
intervals.  ``tcpstack_audit_success`` is 1 for a host audited, 0 for a host that
failed or was unreachable: such a host gets no verdict and no figures (never "ok").

- textfile: one file for the run, ``<metrics_dir>/tcpstack_port_audit.prom``, for the
  controller's node_exporter; every sample also carries ``job="tcpstack_port_audit"``
  (scrape it with ``honor_labels: true`` so that instance and job stay).  Written
  with LinuxHost.write_in_directory (temporary file, fsync, rename, all relative to
  a descriptor of the real directory: no link is followed), mode 0644.
- Pushgateway: one PUT per host to ``<url>/metrics/job/tcpstack_port_audit/instance/<host>``
  (the grouping key gives job and instance); a PUT replaces the host's group, so a
  host that failed loses its old verdict.  Standard library urllib, with a timeout.

Controller only.
"""

from __future__ import annotations

import base64
import time
import urllib.error
import urllib.parse
import urllib.request

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.prometheus import VERDICT_VALUE, gauge, render
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import clean_text
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import (
    ValidationError,
    absolute_path,
    strict_int,
)

FILE_NAME = "tcpstack_port_audit.prom"
JOB = "tcpstack_port_audit"
SOURCE = "port_audit"
DEFAULT_INTERVAL = 900
INTERVAL_MIN, INTERVAL_MAX = 60, 7 * 86400  # a scheduled audit: from a minute to a week
TOP = 1000  # the info modules already bound their destinations and processes (port_audit_top, at most 1000)
PUSH_TIMEOUT = 10  # seconds per PUT
URL_MAX = 2048
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
VALID_URL = ("null (off) or an http:// or https:// URL of a Prometheus Pushgateway, without user:password, query or "
             "fragment, e.g. http://pushgateway.example:9091")


def check_options(metrics_dir, pushgateway_url, interval_seconds, names):
    """The three options checked: (metrics_dir or None, pushgateway_url or None, interval_seconds).

    ``names`` maps ``metrics_dir``, ``pushgateway_url`` and ``interval_seconds`` to the names the
    user wrote (role variables or module options); ValidationError names them.  None or "" is off.
    """
    directory = None
    if metrics_dir not in (None, ""):
        directory = absolute_path(metrics_dir, names["metrics_dir"],
                                  "null (off) or an absolute path to a directory on the controller (the textfile "
                                  "directory of its node_exporter), without spaces, %, backslashes or . parts")
    url = None
    if pushgateway_url not in (None, ""):
        url = _checked_url(pushgateway_url, names["pushgateway_url"])
    interval = strict_int(interval_seconds, names["interval_seconds"], INTERVAL_MIN, INTERVAL_MAX,
                          "an integer number of seconds (how often the audit is scheduled)")
    return directory, url, interval


def _checked_url(value, name):
    if (not isinstance(value, str) or len(value) > URL_MAX
            or any(ord(c) < 33 or ord(c) == 127 for c in value)):
        raise ValidationError(name, value, VALID_URL)
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port  # ValueError when not a number from 0 to 65535
    except ValueError:
        raise ValidationError(name, value, VALID_URL) from None
    if (parts.scheme not in ("http", "https") or not parts.hostname or parts.username is not None
            or parts.query or parts.fragment or value.endswith("?") or value.endswith("#") or port == 0):
        raise ValidationError(name, value, VALID_URL)
    return value.rstrip("/")


def succeeded(result):
    """Whether ``result`` is an audit that ran: a dict, not failed, skipped or unreachable, with a verdict."""
    return (isinstance(result, dict) and not result.get("failed") and not result.get("unreachable")
            and not result.get("skipped") and result.get("verdict") in VERDICT_VALUE)


def _status(success, labels):
    """The tcpstack_audit_success family: 1 audited, 0 failed or unreachable (an ``up`` for the audit)."""
    return gauge("tcpstack_audit_success", "Whether the scheduled port audit of this host succeeded (1), or failed "
                 "or found the host unreachable (0): then no verdict and no figures are written.",
                 1 if success else 0, labels)


def host_text(host, result, timestamp, interval, textfile=True):
    """One host's exposition text: the sampler's series (or, for a failed host, only its status).

    ``textfile``: every sample carries ``instance`` and ``job`` (the textfile); else only
    ``tcpstack_source`` (a Pushgateway's grouping key gives instance and job).
    """
    labels = {"tcpstack_source": SOURCE}
    if textfile:
        labels.update(instance=host, job=JOB)
    if not succeeded(result):
        return _status(False, labels) + render({}, interval_seconds=interval, labels=labels)
    return render(result, top=TOP, timestamp=timestamp, interval_seconds=interval, labels=labels) + \
        _status(True, labels)


def merge(texts):
    """One exposition of several hosts' texts: each family once (its HELP and TYPE), its samples together.

    The texts are render()'s own output (HELP, TYPE, then the samples of one family); families keep the
    order in which they first appear.
    """
    families, order = {}, []
    for text in texts:
        name = None
        for line in text.splitlines():
            if line.startswith("# HELP ") or line.startswith("# TYPE "):
                name = line.split(" ", 3)[2]
                if name not in families:
                    families[name] = {"HELP": None, "TYPE": None, "samples": []}
                    order.append(name)
                families[name][line[2:6]] = families[name][line[2:6]] or line
            elif line and name is not None:
                families[name]["samples"].append(line)
    lines = []
    for name in order:
        lines.extend(line for line in (families[name]["HELP"], families[name]["TYPE"]) if line)
        lines.extend(families[name]["samples"])
    return "\n".join(lines) + "\n" if lines else ""


def textfile(results, timestamp, interval):
    """The whole run's textfile: every host of ``results`` ({host: result or None}), sorted by host."""
    return merge(host_text(host, results[host], timestamp, interval) for host in sorted(results))


def push_url(base, host):
    """The Pushgateway URL of ``host``'s group: job tcpstack_port_audit, instance ``host`` (URL-encoded).

    A host name with "/" (or an empty one) goes base64url-encoded (``instance@base64/...``), as the Pushgateway
    asks: a "%2F" in a path is decoded before the route is matched.
    """
    if not host or "/" in host:
        encoded = base64.urlsafe_b64encode(host.encode("utf-8")).decode("ascii") or "="
        return "%s/metrics/job/%s/instance@base64/%s" % (base, JOB, encoded)
    return "%s/metrics/job/%s/instance/%s" % (base, JOB, urllib.parse.quote(host, safe=""))


def push(base, host, text, timeout=PUSH_TIMEOUT, opener=urllib.request.urlopen):
    """PUT ``text`` as ``host``'s group; returns None, or why it failed (one line, cleaned)."""
    request = urllib.request.Request(push_url(base, host), data=text.encode("utf-8"), method="PUT",
                                     headers={"Content-Type": CONTENT_TYPE})
    try:
        with opener(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        body = exc.read(500).decode("utf-8", "replace") if exc.fp is not None else ""
        return clean_text("HTTP %d from %s: %s" % (exc.code, request.full_url, " ".join(body.split())))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return clean_text("could not reach %s: %s" % (request.full_url, reason))
    if status not in (200, 202):
        return clean_text("HTTP %d from %s" % (status, request.full_url))
    return None


def deliver(results, metrics_dir, pushgateway_url, interval, clock=time.time, host=None, opener=urllib.request.urlopen):
    """Write the textfile and push every host; returns what was done.

    {"textfile": path or None, "pushed": [hosts], "push_errors": {host: why}, "audited": [hosts],
    "failed": [hosts]}.  A textfile that cannot be written raises (OSError, HostError, UnsafeFile); a push
    that fails is that host's entry in push_errors, and every other host is still pushed.
    """
    timestamp = round(clock(), 3)
    done = {"textfile": None, "pushed": [], "push_errors": {},
            "audited": sorted(h for h, r in results.items() if succeeded(r)),
            "failed": sorted(h for h, r in results.items() if not succeeded(r))}
    if metrics_dir:
        (host or LinuxHost()).write_in_directory(metrics_dir, FILE_NAME, textfile(results, timestamp, interval),
                                                 mode=0o644)
        done["textfile"] = "%s/%s" % (metrics_dir, FILE_NAME)
    if pushgateway_url:
        for name in sorted(results):
            error = push(pushgateway_url, name, host_text(name, results[name], timestamp, interval, textfile=False),
                         opener=opener)
            if error:
                done["push_errors"][name] = error
            else:
                done["pushed"].append(name)
    return done
