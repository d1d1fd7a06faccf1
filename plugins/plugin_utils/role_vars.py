# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The roles' variables, checked on the controller before any host is contacted.

``tcp_tuning(spec, values, ...)``, ``port_audit(spec, values, ...)`` and ``port_monitor(spec, values, ...)``
take the role variables as the play has them (rendered) and return what the
role's tasks need: whether the host is Windows, and the exact options for the
module it will call.  Every
check is the one the module itself makes (linux_tuning.validate,
windows_tuning.validate, port_usage.validate_audit_options), so a value the
role accepts is a value the module accepts; an error names the variable as the
user wrote it (``tcp_tuning_port_range``, ``tcp_tuning_linux.persist_file``).

A role's variables are declared once, in its ``meta/argument_specs.yml`` (which
ansible-core also checks and ansible-doc shows): ``role_spec()`` reads it into a
``RoleSpec``, which gives the names, the defaults and the choices used here.
The role's ``defaults/main.yml`` is generated from it (tools/role_defaults.py).

Controller only: pure functions, no Ansible objects; role_spec() reads the
collection's own file.
"""

from __future__ import annotations

import copy
import functools
import os
from typing import NamedTuple

import yaml

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_tuning import ARGUMENT_SPEC as LINUX_TCP_OPTIONS
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_tuning import validate as validate_linux_tcp
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_monitor import (
    INTERVAL_MAX as MONITOR_INTERVAL_MAX,
    PROCESS_SAMPLE_MAX as MONITOR_PROCESS_SAMPLE_MAX,
    TOP_MAX as MONITOR_TOP_MAX,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_usage import validate_audit_options
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import (
    ValidationError,
    absolute_path,
    strict_bool,
    strict_int,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import EVENT_HOURS_MAX, WIN_TCP_OPTIONS
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.audit_metrics import (
    check_options as check_metrics_options,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_tuning import validate as validate_win_tcp

WINDOWS_CONNECTIONS = frozenset(("winrm", "psrp", "ansible.builtin.winrm", "ansible.builtin.psrp"))
WINDOWS_SHELLS = frozenset(("powershell", "cmd", "ansible.builtin.powershell", "ansible.builtin.cmd"))
PLATFORMS = ("auto", "linux", "windows")
REBOOT_MODULE = "ansible.windows.win_reboot"
ROLES = ("tcp_tuning", "port_audit", "port_monitor")
# This collection's roles: plugins/plugin_utils/role_vars.py -> the collection root -> roles/.
ROLES_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "roles")

# Names with the roles' prefixes that are not role variables: the playbooks' own, and what the roles set.
NOT_ROLE_VARS = frozenset((
    "tcp_tuning_hosts", "tcp_tuning_serial", "tcp_tuning_max_fail_percentage", "tcp_tuning_result",
    "tcp_tuning_reboot_required", "port_audit_hosts", "port_audit_result", "port_audit_report",
    "port_monitor_hosts", "port_monitor_result",
))
DEPRECATED = {
    # old name -> (what replaces it, the release that removes it)
    "tcp_tuning_time_wait": (
        "tcp_tuning_fin_timeout (Linux tcp_fin_timeout: orphaned FIN_WAIT_2 only, Linux TIME_WAIT stays 60 s) and "
        "tcp_tuning_time_wait_delay (Windows TcpTimedWaitDelay)", "0.3.0"),
}
REBOOT_TIMEOUT_MAX = 86400


class RoleSpec(NamedTuple):
    """A role's variables as its meta/argument_specs.yml declares them (the entry point ``main``)."""

    role: str
    options: dict  # variable name -> its argument spec (type, choices, default, description, ...)

    @property
    def prefix(self):
        return self.role + "_"

    @property
    def variables(self):
        """The role's variable names in the spec's order, the deprecated ones left out."""
        return [name for name in self.options if name not in DEPRECATED]

    @property
    def defaults(self):
        """name -> default, for every variable whose spec has a ``default`` (what defaults/main.yml sets)."""
        return copy.deepcopy({name: spec["default"] for name, spec in self.options.items() if "default" in spec})

    def choices(self, name):
        return list(self.options[name]["choices"])

    def with_defaults(self, values):
        """``values`` over the role defaults; a value of None counts as missing."""
        return dict(self.defaults, **{k: v for k, v in values.items() if v is not None})


@functools.lru_cache(maxsize=None)
def role_spec(role, roles_dir=ROLES_DIR):
    """Read ``roles_dir/ROLE/meta/argument_specs.yml`` into a RoleSpec (cached: the file ships with the code)."""
    with open(os.path.join(roles_dir, role, "meta", "argument_specs.yml"), encoding="utf-8") as stream:
        document = yaml.load(stream, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    return RoleSpec(role, dict(document["argument_specs"]["main"]["options"]))


class RoleVarError(ValueError):
    """A role variable is not valid; the message names it as the user wrote it, its value and what is valid."""

    def __init__(self, name, value, valid):
        self.name = name
        super().__init__(str(ValidationError(name, value, valid)))


def unknown_names(names, known, prefix):
    """Names starting with ``prefix`` (the role's) that are not in ``known`` (its variables): typos, sorted."""
    return sorted(name for name in names
                  if name.startswith(prefix) and name not in known and name not in NOT_ROLE_VARS
                  and name not in DEPRECATED)


def is_windows(platform, variable, connection=None, shell_type=None, os_family=None):
    """The platform the role tunes on this host: from ``platform`` or, for auto, the connection without facts."""
    if platform not in PLATFORMS:
        raise RoleVarError(variable, platform, "one of %s" % ", ".join(PLATFORMS))
    if platform != "auto":
        return platform == "windows"
    return (str(connection or "") in WINDOWS_CONNECTIONS or str(shell_type or "") in WINDOWS_SHELLS
            or str(os_family or "") == "Windows")


def _as_dict(values, name):
    value = values.get(name)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RoleVarError(name, value, "a dictionary of module options, e.g. {somaxconn: 8192}")
    return dict(value)


def _choice(spec, values, name):
    """The variable's value, which must be one of its spec's ``choices``."""
    choices = spec.choices(name)
    if values[name] not in choices:
        raise RoleVarError(name, values[name], " or ".join(choices))
    return values[name]


def _bool(values, name):
    try:
        return strict_bool(values.get(name), name)
    except ValidationError as exc:
        raise RoleVarError(name, exc.value, exc.valid) from None


def _renamed(exc, sources):
    """Re-raise a module's ValidationError under the role variable that gave the option."""
    name = sources.get(exc.option, exc.option)
    return RoleVarError(name, exc.value, exc.valid)


def _merge(options, sources, extra, extra_name, allowed):
    """Overlay the per-OS dict (tcp_tuning_linux / tcp_tuning_windows) on the OS-neutral options."""
    for option, value in extra.items():
        if option not in allowed:
            raise RoleVarError("%s.%s" % (extra_name, option), value,
                               "not an option of the module; %s takes %s" % (extra_name, ", ".join(allowed)))
        options[option] = value
        sources[option] = "%s.%s" % (extra_name, option)


def _checked(options, sources, values, per_os_var, module_options, validate):
    """Overlay the per-OS dict on ``options`` and run the module's own checks, errors under the variable's name."""
    _merge(options, sources, _as_dict(values, per_os_var), per_os_var, [o for o in module_options if o != "state"])
    try:
        validate(options)
    except ValidationError as exc:
        raise _renamed(exc, sources) from None


def tcp_tuning(spec, values, windows, have_reboot_module=lambda: True):
    """Check the tcp_tuning role's variables for one host; returns (module options, deprecations).

    ``spec``: the role's RoleSpec.  ``values`` maps variable names to their
    rendered values (missing = the role default).  ``windows``: the host's platform, from is_windows().
    The options are those of tcpstack.tuning.win_tcp when ``windows``, else
    of tcpstack.tuning.linux_tcp, with ``state`` set.  ``have_reboot_module()``
    tells whether ansible.windows.win_reboot can be loaded on this controller
    (asked only when a Windows host may be rebooted).
    """
    values = spec.with_defaults(values)
    deprecations = []
    state = _choice(spec, values, "tcp_tuning_state")
    reboot = _choice(spec, values, "tcp_tuning_reboot")
    strict_int_var(values, "tcp_tuning_reboot_timeout", 1, REBOOT_TIMEOUT_MAX, "an integer number of seconds")
    fin_timeout, time_wait_delay = values["tcp_tuning_fin_timeout"], values["tcp_tuning_time_wait_delay"]
    sources = {"fin_timeout": "tcp_tuning_fin_timeout", "time_wait_delay": "tcp_tuning_time_wait_delay",
               "port_range": "tcp_tuning_port_range", "tw_reuse": "tcp_tuning_tw_reuse",
               "reserved_ports": "tcp_tuning_reserved_ports",
               "reserve_listening_ports": "tcp_tuning_reserve_listening_ports"}
    if "tcp_tuning_time_wait" in values:
        replacement, version = DEPRECATED["tcp_tuning_time_wait"]
        deprecations.append({
            "msg": "The role variable tcp_tuning_time_wait is deprecated: it never shortened Linux TIME_WAIT. "
                   "Use %s. Until then it sets both." % replacement,
            "version": version, "collection_name": "tcpstack.tuning"})
        fin_timeout = time_wait_delay = values["tcp_tuning_time_wait"]
        sources.update(fin_timeout="tcp_tuning_time_wait", time_wait_delay="tcp_tuning_time_wait")

    if windows:
        options = {"state": state, "time_wait_delay": time_wait_delay, "port_range": values["tcp_tuning_port_range"]}
        _checked(options, sources, values, "tcp_tuning_windows", WIN_TCP_OPTIONS, validate_win_tcp)
        if reboot == "if_required" and not have_reboot_module():
            raise RoleVarError("tcp_tuning_reboot", reboot,
                               "never, unless the collection ansible.windows is installed on the controller: "
                               "if_required reboots with %s. Install it with "
                               "'ansible-galaxy collection install ansible.windows'" % REBOOT_MODULE)
        return options, deprecations

    options = {"state": state, "fin_timeout": fin_timeout, "port_range": values["tcp_tuning_port_range"],
               "tw_reuse": 1 if _bool(values, "tcp_tuning_tw_reuse") else 2,
               "reserve_listening_ports": _bool(values, "tcp_tuning_reserve_listening_ports")}
    reserved = values["tcp_tuning_reserved_ports"]
    if reserved not in ([], "", ()):  # empty leaves the host's reservations alone
        options["reserved_ports"] = reserved
    _checked(options, sources, values, "tcp_tuning_linux", LINUX_TCP_OPTIONS, validate_linux_tcp)
    return options, deprecations


def strict_int_var(values, name, low, high, what):
    try:
        return strict_int(values[name], name, low, high, what)
    except ValidationError as exc:
        raise RoleVarError(name, exc.value, exc.valid) from None


def port_audit(spec, values, windows):
    """Check the port_audit role's variables for one host; returns the info module's options.

    The options are those of tcpstack.tuning.win_port_usage_info when
    ``windows``, else of tcpstack.tuning.port_usage_info.  The fleet report's
    own variables (directory, formats, title, gate) are checked too.
    """
    values = spec.with_defaults(values)
    report_dir = values["port_audit_report_dir"]
    if not isinstance(report_dir, str) or not report_dir.strip():
        raise RoleVarError("port_audit_report_dir", report_dir, "a directory path on the controller")
    formats, known = values["port_audit_formats"], spec.choices("port_audit_formats")
    if isinstance(formats, str) or not isinstance(formats, (list, tuple)) or any(f not in known for f in formats):
        raise RoleVarError("port_audit_formats", formats, "a list of %s (or [] for none)" % ", ".join(known))
    if not isinstance(values["port_audit_title"], str):
        raise RoleVarError("port_audit_title", values["port_audit_title"], "a string")
    _bool(values, "port_audit_fail_on_critical")
    try:  # the metrics of hosts without a sampler (the fleet_report task writes and pushes them)
        check_metrics_options(values.get("port_audit_metrics_dir"), values.get("port_audit_pushgateway_url"),
                              values["port_audit_interval_seconds"],
                              {"metrics_dir": "port_audit_metrics_dir", "pushgateway_url": "port_audit_pushgateway_url",
                               "interval_seconds": "port_audit_interval_seconds"})
    except ValidationError as exc:
        raise RoleVarError(exc.option, exc.value, exc.valid) from None
    hours = strict_int_var(values, "port_audit_event_hours", 1, EVENT_HOURS_MAX, "an integer number of hours")
    sample = values["port_audit_sample_seconds"]
    if isinstance(sample, str) and len(sample) <= 32:  # -e port_audit_sample_seconds=2.5 arrives as text
        try:
            sample = float(sample)
        except ValueError:
            pass  # refused below, as it was written
    names = {option: "port_audit_" + option for option in ("top", "sample_seconds", "warning_percent", "critical_percent")}
    try:
        top, sample, warning, critical = validate_audit_options(
            values["port_audit_top"], sample, values["port_audit_warning_percent"], values["port_audit_critical_percent"],
            names)
    except ValidationError as exc:
        raise RoleVarError(exc.option, exc.value, exc.valid) from None
    if windows:
        return {"top": top, "event_hours": hours}
    return {"top": top, "sample_seconds": sample, "warning_percent": warning, "critical_percent": critical}


def _absolute_path(values, name, what, empty_ok=False):
    """An absolute, plain path (validation.absolute_path, as the sampler checks it: it goes into a systemd unit)."""
    try:
        return absolute_path(values[name], name, what, empty_ok)
    except ValidationError as exc:
        raise RoleVarError(exc.option, exc.value, exc.valid) from None


def port_monitor(spec, values, windows):
    """Check the port_monitor role's variables for one host; returns the sampler's settings.

    Linux only: a Windows host (``windows``, is_windows() of
    ``port_monitor_platform``) is refused.  Paths must be absolute and
    plain (they go into the systemd unit's command line): no spaces, control
    characters, ``%`` (systemd specifiers), backslashes, ``.``/``..`` parts.
    Whether the textfile directory is a directory is checked on the host by
    the role, before it changes anything.
    """
    values = spec.with_defaults(values)
    state = _choice(spec, values, "port_monitor_state")
    if windows:
        raise RoleVarError("port_monitor_platform", values["port_monitor_platform"],
                           "auto or linux on a Linux host; this host is Windows, and the role tcpstack.tuning."
                           "port_monitor runs its sampler under systemd: Windows is out of scope (audit Windows hosts "
                           "with tcpstack.tuning.port_audit)")
    interval = strict_int_var(values, "port_monitor_interval", 1, MONITOR_INTERVAL_MAX, "an integer number of seconds")
    names = {option: "port_monitor_" + option
             for option in ("top", "sample_seconds", "warning_percent", "critical_percent")}
    strict_int_var(values, "port_monitor_top", 1, MONITOR_TOP_MAX, "an integer number of destinations")
    try:
        checked = validate_audit_options(values["port_monitor_top"], 0, values["port_monitor_warning_percent"],
                                         values["port_monitor_critical_percent"], names)
    except ValidationError as exc:
        raise RoleVarError(exc.option, exc.value, exc.valid) from None
    processes = _bool(values, "port_monitor_processes")
    if processes:
        high = min(MONITOR_PROCESS_SAMPLE_MAX, interval - 1)
        sample = strict_int_var(values, "port_monitor_process_sample_seconds", 0, high,
                                "an integer number of seconds below port_monitor_interval (%d)" % interval)
    else:
        sample = strict_int_var(values, "port_monitor_process_sample_seconds", 0, 0,
                                "0 while port_monitor_processes is false: an integer")
    return {
        "state": state,
        "interval": interval,
        "textfile_dir": _absolute_path(values, "port_monitor_textfile_dir",
                                       "an absolute path to a directory, without spaces, %, backslashes or . parts"),
        "top": checked[0],
        "warning_percent": checked[2],
        "critical_percent": checked[3],
        "processes": processes,
        "process_sample_seconds": sample,
        "nat": _bool(values, "port_monitor_nat"),
        "python": _absolute_path(values, "port_monitor_python", "an absolute path to a Python 3.9+ interpreter"),
        "rules_dir": _absolute_path(values, "port_monitor_rules_dir",
                                    "'' (do not install the alert rules) or an absolute path to a directory",
                                    empty_ok=True),
    }
