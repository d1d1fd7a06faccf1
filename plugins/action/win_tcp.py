# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""win_tcp: tune a Windows host's TCP/IP against ephemeral-port exhaustion, from the controller.

A thin shell, as ansible.windows' win_reboot is around plugin_utils/_reboot.py:
plugin_utils/_windows_action.py checks the options before the connection is
touched and wraps the connection in a WindowsHost; this hands the task to
plugin_utils/windows_tuning.py's ``tune()`` with the options it checked.
"""

from __future__ import annotations

from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_action import WindowsAction, add_warnings
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import WIN_TCP_OPTIONS
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_tuning import tune, validate


class ActionModule(WindowsAction):
    """Read, plan, apply and verify, in one or two round trips."""

    _VALID_ARGS = frozenset(WIN_TCP_OPTIONS)
    NAME = "win_tcp"

    validate = staticmethod(validate)

    def act(self, options, host, result):
        outcome, warnings = tune(options, host, check_mode=bool(self._task.check_mode),
                                 want_diff=bool(self._task.diff))
        result.update(outcome)
        add_warnings(result, warnings)
