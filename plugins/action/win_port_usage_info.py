# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""win_port_usage_info: is a Windows host running out of ephemeral ports, and towards what?

A thin shell: it checks the options before the connection is touched and hands
the task to plugin_utils/windows_usage.py's ``audit()`` with a WindowsHost on
the task's connection: one round trip, the analysis on the controller.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import INFO_OPTIONS, WinTcpError
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import WindowsHost
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_usage import audit, validate


class ActionModule(ActionBase):
    """Read everything in one command, analyse on the controller; changes nothing."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(INFO_OPTIONS)

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        self._supports_async = False
        try:
            options = validate(self._task.args)  # before the connection is touched
        except ValidationError as exc:
            return {"failed": True, "changed": False, "msg": str(exc), "option": exc.option, "round_trips": 0}
        result = super().run(tmp, task_vars)
        host = WindowsHost(self._connection, "win_port_usage_info")
        try:
            result.update(audit(host, options))
        except WinTcpError as exc:
            result.update(failed=True, msg=str(exc))
        result.update(changed=False, round_trips=host.round_trips)
        warnings = ["could not read %s: %s" % (item["source"], item["reason"]) for item in result.get("unreadable", [])]
        if warnings:
            result["warnings"] = warnings
        return result
