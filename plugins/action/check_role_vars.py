# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""check_role_vars: check a role's variables on the controller, before the role contacts the host.

A thin shell: it reads the role's variables from the role's own
meta/argument_specs.yml (role_vars.role_spec(), found next to this plugin in
the installed collection), collects them from the play, renders them, and hands
them to plugin_utils/role_vars.py.  It never uses the connection.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase
from ansible.plugins.loader import action_loader, module_loader

from ansible_collections.tcpstack.tuning.plugins.plugin_utils.role_vars import (
    DEPRECATED,
    REBOOT_MODULE,
    ROLES,
    RoleVarError,
    is_windows,
    port_audit,
    port_monitor,
    role_spec,
    tcp_tuning,
    unknown_names,
)

FACTS = ("ansible_connection", "ansible_shell_type", "ansible_os_family")  # how is_windows() tells without facts


def _reboot_module_available():
    """Whether ansible.windows.win_reboot can be loaded here (the only use of another collection)."""
    return action_loader.has_plugin(REBOOT_MODULE) or module_loader.has_plugin(REBOOT_MODULE)


def _check(spec, values, windows):
    """The role's own check: (module options, deprecations)."""
    if spec.role == "tcp_tuning":
        return tcp_tuning(spec, values, windows, _reboot_module_available)
    if spec.role == "port_audit":
        return port_audit(spec, values, windows), []
    return port_monitor(spec, values, windows), []


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
        spec = role_spec(role)  # the role's meta/argument_specs.yml, the one declaration of its variables
        values = {name: self._templar.template(value) for name, value in task_vars.items()
                  if name in spec.options or name in DEPRECATED}
        platform_var = role + "_platform"
        try:
            windows = is_windows(values.get(platform_var, "auto"), platform_var,
                                 *(self._templar.template(task_vars.get(name)) for name in FACTS))
            options, deprecations = _check(spec, values, windows)
        except RoleVarError as exc:
            return dict(result, failed=True, msg=str(exc), variable=exc.name)
        typos = unknown_names(task_vars, spec.options, spec.prefix)
        if typos:
            result["warnings"] = ["%s: not a variable of the role tcpstack.tuning.%s (misspelt?); it has %s"
                                  % (", ".join(typos), role, ", ".join(spec.variables))]
        if deprecations:
            result["deprecations"] = deprecations
        result.update(windows=windows, options=options)
        return result
