# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""win_tcp: tune a Windows host's TCP/IP against ephemeral-port exhaustion, from the controller.

A thin shell, as ansible.windows' win_reboot is around plugin_utils/_reboot.py:
it checks the options before the connection is touched and hands the task to
plugin_utils/windows_tuning.py's ``run()`` with a WindowsHost on the task's
connection (plugin_utils/windows_host.py).
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import WIN_TCP_OPTIONS
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import WindowsHost
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_tuning import TuningError, run, validate


class ActionModule(ActionBase):
    """Read, plan, apply and verify, in one or two round trips."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(WIN_TCP_OPTIONS)

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        self._supports_async = False
        try:
            validate(self._task.args)  # before the connection is touched
        except ValidationError as exc:
            return {"failed": True, "changed": False, "msg": str(exc), "option": exc.option, "round_trips": 0}
        result = {"changed": False}
        result.update(super().run(tmp, task_vars))
        host = WindowsHost(self._connection, "win_tcp")
        try:
            outcome, warnings = run(self._task.args, host, check_mode=bool(self._task.check_mode),
                                    want_diff=bool(self._task.diff))
        except ValidationError as exc:
            return dict(result, failed=True, msg=str(exc), option=exc.option, round_trips=host.round_trips)
        except TuningError as exc:
            outcome, warnings = exc.result, exc.warnings
            result.update(failed=True, msg=str(exc))
        result.update(outcome)
        if warnings:
            result["warnings"] = warnings
        result["round_trips"] = host.round_trips
        return result
