# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""win_port_usage_info: is a Windows host running out of ephemeral ports, and towards what?

A thin shell: plugin_utils/_windows_action.py checks the options before the
connection is touched and wraps the connection in a WindowsHost; this hands
the task to plugin_utils/windows_usage.py's ``audit()``: one round trip, the
analysis on the controller.
"""

from __future__ import annotations

from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_action import WindowsAction, add_warnings
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import INFO_OPTIONS
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_usage import audit, validate


class ActionModule(WindowsAction):
    """Read everything in one command, analyse on the controller; changes nothing."""

    _VALID_ARGS = frozenset(INFO_OPTIONS)
    NAME = "win_port_usage_info"

    validate = staticmethod(validate)

    def act(self, options, host, result):
        result.update(audit(host, options), changed=False)
        add_warnings(result, ["could not read %s: %s" % (item["source"], item["reason"])
                              for item in result.get("unreadable", [])])
