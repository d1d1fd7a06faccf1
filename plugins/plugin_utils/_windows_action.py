# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The shell both Windows action plugins share: check the options, wrap the connection, count round trips.

Internal to the collection.  ``WindowsAction.run()`` validates the task's
options before the connection is touched (a bad value fails with the option
named and ``round_trips: 0``), wraps ``self._connection`` in a WindowsHost
named for the action and hands both to the action's ``act()``; a TuningError or WinTcpError
fails the task with its message; the result always says how many round trips
the task cost.
"""

from __future__ import annotations

from ansible.plugins.action import ActionBase

from ansible_collections.tcpstack.tuning.plugins.module_utils.plan import TuningError
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import WinTcpError
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import WindowsHost


def refused(result, exc):
    """``result`` failed with a ValidationError: the message and the option it names."""
    return dict(result, failed=True, msg=str(exc), option=exc.option)


def add_warnings(result, warnings):
    """The task's warnings, when there are any."""
    if warnings:
        result["warnings"] = list(warnings)


class WindowsAction(ActionBase):
    """An action that runs commands on a Windows host through the task's connection, from the controller."""

    TRANSFERS_FILES = False
    NAME = "windows"  # the action's name: how its -vvvvv lines start

    def validate(self, args):
        """The task's options checked; raises ValidationError."""
        raise NotImplementedError

    def act(self, options, host, result):
        """Do the action's work on ``host`` (a WindowsHost), updating ``result``."""
        raise NotImplementedError

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        self._supports_async = False
        try:
            options = self.validate(self._task.args)  # before the connection is touched
        except ValidationError as exc:
            return refused({"changed": False, "round_trips": 0}, exc)
        result = {"changed": False}
        result.update(super().run(tmp, task_vars))
        host = WindowsHost(self._connection, self.NAME)
        try:
            self.act(options, host, result)
        except ValidationError as exc:  # a rule that needs the host (win_tcp: the Windows build)
            result = refused(result, exc)
        except TuningError as exc:  # win_tcp failed: with what is known so far
            result.update(exc.result, failed=True, msg=str(exc))
            add_warnings(result, exc.warnings)
        except WinTcpError as exc:  # the host's output could not be read
            result.update(failed=True, msg=str(exc))
        result["round_trips"] = host.round_trips
        return result
