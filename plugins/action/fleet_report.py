# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""fleet_report: gather every host's port audit on the controller into one report (JSON, Markdown, HTML).

Runs on the controller only (it never uses the task's connection).  The
rendering is plugin_utils/fleet_report.py (pure, unit-tested); this shell
checks its options, reads the hosts' results from hostvars, writes the files
(LinuxHost.write_file_atomic, into a directory _report_dir() has checked) and
prints the summary table.
"""

from __future__ import annotations

import datetime
import os
import stat

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import HostError, LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError, strict_bool
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import fleet_egress
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.audit_metrics import (
    DEFAULT_INTERVAL,
    check_options,
    deliver,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.fleet_report import (
    FORMATS,
    build_report,
    host_row,
    render,
    render_summary,
)

display = Display()


class Refused(Exception):
    """An option or the report directory is not usable; the message is the task's."""


def _report_dir(path):
    """Make ``path`` (absolute) ready for the report, or return why it cannot be used.

    The report is what an operator trusts: a directory another local user owns, or may write to, would let that
    user swap a page or fake a verdict. Missing directories are created 0755 (less under a stricter umask).
    """
    missing = []
    probe = path
    while not os.path.lexists(probe):
        missing.append(probe)
        probe = os.path.dirname(probe)
    for directory in reversed(missing):
        os.mkdir(directory, 0o755)
    info = os.lstat(path)
    if not stat.S_ISDIR(info.st_mode):
        return "it is not a directory%s" % (" (a symbolic link)" if stat.S_ISLNK(info.st_mode) else "")
    if info.st_uid not in (os.geteuid(), 0):
        return "it belongs to another user (uid %d); use a directory of your own" % info.st_uid
    if info.st_mode & 0o022:
        return "group or others may write to it (mode %04o): another user could replace the report; use a " \
               "directory only you can write to" % stat.S_IMODE(info.st_mode)
    return None


def _plain(value):
    """Hostvars values as plain Python containers (2.19 hands out lazy, tagged ones)."""
    if isinstance(value, dict) or hasattr(value, "items"):
        return dict((to_text(k), _plain(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    return to_text(value)


def _formats(args):
    """The report formats asked for (a list, or text separated by commas), all known ones."""
    formats = args.get("formats", ["json", "markdown", "html"])
    if isinstance(formats, str):
        formats = [f.strip() for f in formats.split(",") if f.strip()]
    formats = [to_text(f) for f in formats]
    bad = [f for f in formats if f not in FORMATS]
    if bad:
        raise Refused("formats must be among %s, got %s" % (", ".join(FORMATS), ", ".join(bad)))
    return formats


def _flag(args, name):
    """A boolean option, as Ansible's ``type: bool`` reads it (validation.strict_bool)."""
    value = args.get(name, False)
    try:
        return strict_bool(value, name)
    except ValidationError:
        raise Refused("%s must be a boolean, got %r" % (name, value)) from None


def _failure(variables, names):
    """The first registered result among ``names`` that failed or was unreachable: why the host has no result."""
    for name in names:
        registered = variables.get(name)
        if hasattr(registered, "get") and (registered.get("failed") or registered.get("unreachable")):
            return {"failed": True, "msg": to_text(registered.get("msg") or "the audit failed")}
    return None


def _host_result(hostvars, host, result_var, error_vars):
    """One host's audit result from its variables, its failure when it has none, or None when it has neither."""
    try:
        value = hostvars[host].get(result_var) if host in hostvars else None
        if value is None and host in hostvars:
            value = _failure(hostvars[host], error_vars)
    except Exception as exc:  # noqa: BLE001 - a broken variable is that host's error, not the report's
        value = {"failed": True, "msg": "could not read %s: %s" % (result_var, exc)}
    return _plain(value) if value is not None else None


def _gathered(args, task_vars):
    """host -> its result: the ``results`` option, else each host's ``result_var`` (or its failure)."""
    explicit = args.get("results")
    if explicit is not None:
        if not isinstance(explicit, dict):
            raise Refused("results must be a dict {host: info module result with platform}")
        return dict((to_text(h), _plain(r)) for h, r in explicit.items())
    hosts = args.get("hosts") or task_vars.get("ansible_play_hosts_all") or []
    result_var = to_text(args.get("result_var", "port_audit_result"))
    error_vars = [to_text(v) for v in (args.get("error_vars") or [])]
    hostvars = task_vars.get("hostvars", {})
    return dict((to_text(host), _host_result(hostvars, to_text(host), result_var, error_vars)) for host in hosts)


def _egresses(args, task_vars, gathered):
    """fleet_egress.rollup() of the hosts: each host's tcpstack_egress from hostvars, the egresses option checked
    first (Refused, nothing written, when either is not valid)."""
    hostvars = task_vars.get("hostvars", {})
    host_egress = {}
    for host in gathered:
        try:
            value = hostvars[host].get(fleet_egress.HOST_VARIABLE) if host in hostvars else None
        except Exception as exc:  # noqa: BLE001 - a broken variable is refused with its name
            raise Refused("could not read %s of host %s: %s" % (fleet_egress.HOST_VARIABLE, host, exc)) from None
        host_egress[host] = None if value is None else _plain(value)
    try:
        checked = fleet_egress.check_egresses(_plain(args.get("egresses") or {}), host_egress, list(hostvars))
    except fleet_egress.EgressError as exc:
        raise Refused(str(exc)) from None
    results = dict(gathered)
    for spec in checked.values():
        if spec["kind"] == "linux" and spec["host"] not in results:
            results[spec["host"]] = _host_result(hostvars, spec["host"],
                                                 to_text(args.get("result_var", "port_audit_result")), [])
    return fleet_egress.rollup(checked, host_egress, results)


def _metrics_options(args):
    """(metrics_dir, pushgateway_url, interval_seconds) checked (audit_metrics.check_options), before any write."""
    names = dict((option, option) for option in ("metrics_dir", "pushgateway_url", "interval_seconds"))
    try:
        return check_options(args.get("metrics_dir"), args.get("pushgateway_url"),
                             args.get("interval_seconds", DEFAULT_INTERVAL), names)
    except ValidationError as exc:
        raise Refused(str(exc)) from None


def _metrics(gathered, options):
    """Write the textfile and push each host (audit_metrics.deliver); (what was done, push errors as warnings)."""
    metrics_dir, url, interval = options
    if not metrics_dir and not url:
        return None, []
    try:
        done = deliver(gathered, metrics_dir, url, interval)
    except (OSError, HostError) as exc:
        raise Refused("metrics_dir: could not write %s/tcpstack_port_audit.prom: %s" % (metrics_dir, exc)) from None
    warnings = ["pushgateway_url: the metrics of %s were not pushed: %s" % (host, why)
                for host, why in sorted(done["push_errors"].items())]
    return done, warnings


def _rows(gathered):
    return [host_row(host, value.get("platform") if isinstance(value, dict) else None, value)
            for host, value in gathered.items()]


def _write_report(report, formats, dest):
    """Write one file per format into ``dest`` (checked by _report_dir()), each atomically, mode 0644.

    Returns {format: path}.  The writes are LinuxHost.write_file_atomic (temporary file, fsync, rename).
    """
    if not formats:
        return {}
    dest = os.path.abspath(os.path.expanduser(to_text(dest)))
    files = {}
    try:
        problem = _report_dir(dest)
        if problem:
            raise Refused("dest: refusing to write the report to %s: %s" % (dest, problem))
        host = LinuxHost()
        for fmt, text in render(report, formats).items():
            files[fmt] = os.path.join(dest, FORMATS[fmt])
            host.write_file_atomic(files[fmt], text, mode=0o644, make_directory=False)
    except (OSError, HostError) as exc:
        raise Refused("could not write the report to %s: %s" % (dest, exc)) from None
    return files


class ActionModule(ActionBase):
    """Build, write and summarise the fleet report; changes no host."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("hosts", "result_var", "error_vars", "dest", "formats", "title", "fail_on_critical",
                             "results", "metrics_dir", "pushgateway_url", "interval_seconds", "egresses"))
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        self._supports_async = False
        task_vars = task_vars or {}
        result = super().run(tmp, task_vars)
        result["changed"] = False
        args = self._task.args
        try:
            formats, fail_on_critical = _formats(args), _flag(args, "fail_on_critical")
            metrics_options = _metrics_options(args)
            gathered = _gathered(args, task_vars)
            rows, egresses = _rows(gathered), _egresses(args, task_vars, gathered)
            generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
            report = build_report(rows, generated, to_text(args.get("title", "Ephemeral-port audit")), egresses)
            files = _write_report(report, formats, args.get("dest", "port_audit_report"))
            metrics, warnings = _metrics(gathered, metrics_options)
        except Refused as exc:
            return dict(result, failed=True, msg=str(exc))
        if warnings:
            result["warnings"] = warnings
        summary = render_summary(report)
        display.display("\nport audit of %d host(s), riskiest first:\n%s%s" % (
            len(rows), summary, "".join("\n%s report: %s" % (f, p) for f, p in files.items())))
        result.update(report=report, files=files, critical=report["critical"], verdict=report["verdict"],
                      summary=summary.splitlines(), metrics=metrics)
        if metrics and metrics["push_errors"]:
            errors = sorted(metrics["push_errors"].items())
            return dict(result, failed=True, msg="the metrics of %d host(s) were not pushed to the Pushgateway: %s" % (
                len(errors), "; ".join("%s: %s" % item for item in errors)))
        if fail_on_critical and report["critical"]:
            result.update(failed=True, msg="critical ephemeral-port exhaustion on %d host(s): %s" % (
                len(report["critical"]), ", ".join(report["critical"])))
        return result
