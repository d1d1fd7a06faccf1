# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""check_role_vars: check a role's variables on the controller, before the role contacts the host.

A thin shell: it collects the role's variables from the play, renders them,
and hands them to plugin_utils/role_vars.py.  It never uses the connection.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible.plugins.loader import action_loader, module_loader

from ansible_collections.tcpstack.tuning.plugins.plugin_utils.role_vars import (
    DEPRECATED,
    PORT_AUDIT_VARS,
    PORT_MONITOR_VARS,
    REBOOT_MODULE,
    TCP_TUNING_VARS,
    RoleVarError,
    is_windows,
    port_audit,
    port_monitor,
    tcp_tuning,
    unknown_names,
)

ROLES = {"tcp_tuning": TCP_TUNING_VARS, "port_audit": PORT_AUDIT_VARS, "port_monitor": PORT_MONITOR_VARS}


def _reboot_module_available():
    """Whether ansible.windows.win_reboot can be loaded here (the only use of another collection)."""
    return action_loader.has_plugin(REBOOT_MODULE) or module_loader.has_plugin(REBOOT_MODULE)


class ActionModule(ActionBase):
    """Check the role variables of this host; return the platform and the module options."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("role",))

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        result = super().run(tmp, task_vars)
        result["changed"] = False
        task_vars = task_vars or {}
        role = self._task.args.get("role")
        if role not in ROLES:
            return dict(result, failed=True, msg="role: %r is not valid: one of %s" % (role, ", ".join(ROLES)))
        role_vars = ROLES[role]
        names = [name for name in task_vars if name in role_vars or name in DEPRECATED]
        values = {name: self._templar.template(task_vars[name]) for name in names}
        platform_var = role + "_platform"
        try:
            windows = is_windows(
                values.get(platform_var, "auto"), platform_var,
                *(self._templar.template(task_vars.get(name)) for name in
                  ("ansible_connection", "ansible_shell_type", "ansible_os_family")))
            if role == "tcp_tuning":
                options, deprecations = tcp_tuning(values, windows, _reboot_module_available)
            elif role == "port_audit":
                options, deprecations = port_audit(values, windows), []
            else:
                options, deprecations = port_monitor(values, windows), []
        except RoleVarError as exc:
            return dict(result, failed=True, msg=str(exc), variable=exc.name)
        typos = unknown_names(role_vars, task_vars)
        if typos:
            result["warnings"] = ["%s: not a variable of the role tcpstack.tuning.%s (misspelt?); it has %s"
                                  % (", ".join(typos), role, ", ".join(role_vars))]
        if deprecations:
            result["deprecations"] = deprecations
        result.update(windows=windows, options=options)
        return result
