# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""win_port_usage_info: is a Windows host running out of ephemeral ports, and towards what?

One round trip over the task's connection runs reg, netsh, wevtutil and two
cmdlet pipelines; the analysis is module_utils/windows_tcp.py (Windows
parsing) and module_utils/port_usage.py (OS-neutral capacity maths).
"""

from __future__ import annotations

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError
from ansible_collections.tcpstack.tuning.plugins.module_utils.windows_tcp import (
    WinTcpError,
    analyse_windows,
    build_info_script,
    encode_command,
    parse_read,
    split_sections,
    validate_port_usage_info,
)

display = Display()


class ActionModule(ActionBase):
    """Read everything in one command, analyse on the controller; changes nothing."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("top", "event_hours"))

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        self._supports_async = False
        try:
            options = validate_port_usage_info(self._task.args)
        except ValidationError as exc:
            return {"failed": True, "changed": False, "msg": str(exc), "option": exc.option, "round_trips": 0}
        result = super().run(tmp, task_vars)
        script = build_info_script(options.targets, options.event_hours)
        display.vvvvv("win_port_usage_info: sending script:\n%s" % script)
        rc, stdout, stderr = self._connection.exec_command(encode_command(script), in_data=None, sudoable=False)
        stdout = to_text(stdout, errors="surrogate_or_strict")
        stderr = to_text(stderr, errors="surrogate_or_strict")
        display.vvvvv("win_port_usage_info: rc=%s stdout:\n%s\nstderr:\n%s" % (rc, stdout, stderr))
        try:
            if "@@tcpstack:" not in stdout:
                raise WinTcpError("reading the host failed (rc=%s): %s" % (rc, (stderr or stdout).strip()))
            state = parse_read(stdout, options.targets)
            result.update(analyse_windows(options, state, split_sections(stdout)))
        except WinTcpError as exc:
            result.update(failed=True, msg="%s%s" % (exc, "; stderr: %s" % stderr.strip() if stderr.strip() else ""))
        result.update(changed=False, round_trips=1)
        warnings = ["could not read %s: %s" % (item["source"], item["reason"]) for item in result.get("unreadable", [])]
        if warnings:
            result["warnings"] = warnings
        return result
