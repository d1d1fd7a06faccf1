# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""win_tcp: tune a Windows host's TCP/IP against ephemeral-port exhaustion, from the controller.

Runs standard Windows tools (reg, netsh) over the task's own connection: one
command reads everything, at most one more applies the plan and reads back.
All logic is in module_utils/windows_tcp.py; this file is the imperative shell.
"""

from __future__ import annotations

from ansible.module_utils.common.text.converters import to_text
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError
from ansible_collections.tcpstack.tuning.plugins.module_utils.windows_tcp import (
    WIN_TCP_OPTIONS,
    WinTcpError,
    build_apply_script,
    encode_command,
    build_read_script,
    current_values,
    desired_values,
    describe,
    diff_text,
    nest,
    parse_read,
    plan_actions,
    plan_after,
    plan_win_tcp,
    rollback_actions,
    split_sections,
    validate_win_tcp,
    verify,
)

display = Display()


class ActionModule(ActionBase):
    """Read, plan, apply and verify, in one or two round trips."""

    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(WIN_TCP_OPTIONS)

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.round_trips = 0

    def _send(self, script):
        """One round trip: run ``script`` on the host, return (rc, stdout, stderr) as text."""
        self.round_trips += 1
        display.vvvvv("win_tcp: sending script:\n%s" % script)
        rc, stdout, stderr = self._connection.exec_command(encode_command(script), in_data=None, sudoable=False)
        stdout = to_text(stdout, errors="surrogate_or_strict")
        stderr = to_text(stderr, errors="surrogate_or_strict")
        display.vvvvv("win_tcp: rc=%s stdout:\n%s\nstderr:\n%s" % (rc, stdout, stderr))
        return rc, stdout, stderr

    def run(self, tmp=None, task_vars=None):
        self._supports_check_mode = True
        self._supports_async = False
        result = {"changed": False}
        # Everything that does not depend on the host is checked before the connection is touched.
        try:
            desired = validate_win_tcp(self._task.args)
        except ValidationError as exc:
            return {"failed": True, "changed": False, "msg": str(exc), "option": exc.option, "round_trips": 0}
        result.update(super().run(tmp, task_vars))
        try:
            return self._run(desired, result)
        except ValidationError as exc:
            result.update(failed=True, msg=str(exc), option=exc.option, round_trips=self.round_trips)
        except WinTcpError as exc:
            result.update(failed=True, msg=str(exc), round_trips=self.round_trips)
        return result

    def _run(self, desired, result):
        check_mode = bool(self._task.check_mode)
        want_diff = bool(self._task.diff)
        targets = desired.targets

        rc, stdout, stderr = self._send(build_read_script(targets))
        if "@@tcpstack:" not in stdout:
            raise WinTcpError("reading the host failed (rc=%s): %s" % (rc, (stderr or stdout).strip()))
        try:
            state = parse_read(stdout, targets)
        except WinTcpError as exc:
            raise WinTcpError("%s%s" % (exc, "; stderr: %s" % stderr.strip() if stderr.strip() else "")) from exc
        plan = plan_win_tcp(desired, state)  # host-dependent validation happens here, before any change

        wanted = {c.key: c.after for c in plan.changes}
        current = current_values(state, desired_values(desired))
        after = plan_after(plan, current)
        result.update(
            changed=plan.changed,
            build=state.build,
            before=nest(current),
            after=nest(after),
            reboot_required=plan.reboot_required,
            excluded_port_ranges=_excluded(state),
        )
        if plan.warnings:
            result["warnings"] = list(plan.warnings)
        if want_diff:
            result["diff"] = {"before_header": "registry and netsh (before)", "after_header": "registry and netsh (after)",
                              "before": diff_text(current), "after": diff_text(after)}

        if plan.changed and not check_mode:
            actions = plan_actions(plan)
            try:
                rc, stdout, stderr = self._send(build_apply_script(actions, targets))
            except WinTcpError:
                raise
            except Exception as exc:  # the connection's own errors: requests, pywinrm, ssh
                raise WinTcpError(
                    "the connection failed while applying %d change(s) (%s): %s. The host may have all or none of "
                    "them; run the task again: it reads the host first and converges"
                    % (len(actions), "; ".join(describe(a) for a in actions), exc)) from exc
            sections = split_sections(stdout)
            failed = [(i, a) for i, a in enumerate(actions)
                      if sections.get("apply-%d" % i) is None or not sections["apply-%d" % i].ok]
            if failed:
                index, action = failed[0]
                section = sections.get("apply-%d" % index)
                detail = (section.text if section is not None else "") or (stderr or stdout).strip()
                applied = tuple(a for i, a in enumerate(actions) if (i, a) not in failed)
                undo = rollback_actions(plan, applied)
                rolled_back = False
                if undo:
                    urc, ustdout, _ustderr = self._send(build_apply_script(undo, targets))
                    usections = split_sections(ustdout)
                    rolled_back = urc == 0 and all(usections.get("apply-%d" % i) is not None and usections["apply-%d" % i].ok
                                                   for i in range(len(undo)))
                result.update(changed=not rolled_back and bool(applied), rolled_back=rolled_back)
                raise WinTcpError("%s failed: %s%s" % (
                    describe(action), detail, "; the changes already made were undone" if rolled_back else ""))
            check = parse_read(stdout, targets, prefix="verify-", excluded=False)
            wrong = verify(plan, wanted, check)
            if wrong:
                raise WinTcpError("after applying, the host reads back %s" % "; ".join(
                    "%s = %s (expected %s)" % (key, found, expected) for key, expected, found in wrong))
            result["after"] = nest(current_values(check, {k: None for k in current}))
        result["round_trips"] = self.round_trips
        return result


def _excluded(state):
    out = {}
    for (ip, proto), rows in state.excluded.items():
        out.setdefault(ip.value, {})[proto.value] = [{"start": a, "end": b, "administered": admin} for a, b, admin in rows]
    return out
