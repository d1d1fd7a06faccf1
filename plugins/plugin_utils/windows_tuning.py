# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the win_tcp action does: validate -> read -> plan -> apply (all or nothing) -> verify.

The Windows twin of module_utils/linux_tuning.py.  The action plugin is a thin
shell around ``run()``; the host is a WindowsHost (windows_host.py), the only
code with side effects.  A converged host costs one round trip (the read), a
change two (the read; the apply with its read-back), a failed change three
(the third undoes what the second made).
"""

from __future__ import annotations

from ansible_collections.tcpstack.tuning.plugins.module_utils.plan import TuningError, make_plan
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_commands import (
    build_apply_script,
    build_read_script,
    describe,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_kinds import (
    current_values,
    desired_values,
    diff_text,
    exclusion_keys,
    nest,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import (
    Protocol,
    State,
    WinTcpError,
    check_build,
    validate_win_tcp,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_parse import (
    excluded_result,
    parse_output,
    parse_read,
    split_sections,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import CONNECTION_ERRORS

MAX_USER_PORT_WARNING = (
    "max_user_port: MaxUserPort is legacy. Since Windows Vista / Server 2008 the dynamic port range "
    "(port_range, netsh int ipv4|ipv6 set dynamicportrange) decides which ports are handed out; "
    "MaxUserPort is read at boot and only affects old code paths.")


def same(_key_, before, after):
    """Equal and of the same type: a REG_SZ "30" is not the REG_DWORD 30."""
    return type(before) is type(after) and before == after  # pylint: disable=unidiomatic-typecheck


# ------------------------------------------------------------------ plan
SYSTEM = "a system exclusion (made by WinNAT, Hyper-V, WSL or Docker at boot, not by netsh add excludedportrange)"


def check_exclusions(desired, state):
    """netsh's refusals that one read can foresee, before anything is sent; warnings for what is left alone.

    An exclusion to add must not overlap any exclusion the host has, nor hold a TCP port something listens on
    (netsh refuses both; the listeners are known where Get-NetTCPConnection is, Server 2012 and later); one to
    remove that is a system exclusion is never removed.  Raises ValidationError naming ``excluded_ranges``.
    """
    warnings = []
    for key in exclusion_keys(desired):
        rows = state.excluded.get(key.target, ())
        if (key.low, key.high, True) in rows:
            continue
        same_system = (key.low, key.high, False) in rows
        if desired.state is State.ABSENT:
            if same_system:
                warnings.append("excluded_ranges: %s %s %s is %s; win_tcp never removes it"
                                % (key.ip.value, key.protocol.value, key.text, SYSTEM))
            continue
        for low, high, administered in rows:
            if low <= key.high and key.low <= high:
                if administered:
                    what = ("the administered exclusion %d-%d, which win_tcp was not given: list it as it is, or "
                            "remove it first with state: absent" % (low, high))
                else:
                    what = ("%d-%d, %s; it moves or vanishes after a reboot or 'net stop winnat': stop winnat, run "
                            "win_tcp, start winnat again, or choose another range" % (low, high, SYSTEM))
                raise ValidationError(
                    "excluded_ranges", key.text,
                    "a range that overlaps no exclusion the host has (netsh int %s add excludedportrange refuses "
                    "it); %s %s overlaps %s" % (key.ip.value, key.ip.value, key.protocol.value, what))
        if key.protocol is Protocol.TCP and state.listening:
            busy = sorted(port for ip, port in state.listening if ip is key.ip and key.low <= port <= key.high)
            if busy:
                raise ValidationError(
                    "excluded_ranges", key.text,
                    "a range without a port in use (netsh int %s add excludedportrange refuses it); TCP port%s %s "
                    "listen%s on %s: stop the service, run win_tcp, start it again"
                    % (key.ip.value, "s" if len(busy) > 1 else "", ", ".join(str(p) for p in busy[:10]),
                       "" if len(busy) > 1 else "s", key.ip.value))
    return warnings


def _warnings(desired, state, wanted, current):
    warnings = []
    if desired.state is State.PRESENT and desired.max_user_port is not None:
        warnings.append(MAX_USER_PORT_WARNING)
    ignored = [name for name in ("time_wait_delay", "max_user_port", "port_range") if getattr(desired, name) is not None]
    if desired.state is State.ABSENT and ignored:
        warnings.append("state=absent restores Windows' defaults; %s ignored" % ", ".join(ignored))
    notes = (key.note(state, current[key], value) for key, value in wanted.items())
    return warnings + [note for note in notes if note is not None]


def plan_win_tcp(desired, state):
    """Plan from one read: returns (current, plan).

    ``current``: every managed value as the host has it (the result's
    ``before``).  Raises ValidationError (or WinTcpError) for the rule that
    depends on the host's build, before any change.
    """
    check_build(desired, state.build)
    notes = check_exclusions(desired, state)
    wanted = desired_values(desired)
    current = current_values(state, wanted)
    plan = make_plan(current, wanted, same, reboot_required_keys=tuple(key for key in wanted if key.reboot_required),
                     warnings=_warnings(desired, state, wanted, current) + notes)
    return current, plan


def plan_actions(plan):
    """The apply actions of a plan in a fixed order: registry, exclusions removed, ranges, exclusions added."""
    changes = sorted(plan.changes, key=lambda change: change.key.order(change.after))  # stable: plan order within
    return tuple(change.key.apply(change.after) for change in changes)


def rollback_actions(plan, applied):
    """What puts back what the ``applied`` actions changed (best effort after a failed apply): (actions, skipped).

    ``skipped`` names each old value that cannot be written back (a registry value that is not a REG_DWORD from 0
    to 0xFFFFFFFF, a range outside netsh's rules), so that the rest is still undone and the task says what was not.
    """
    change_of = {change.key.apply(change.after): change for change in plan.changes}
    out = []
    skipped = []
    for action in applied:
        change = change_of[action]
        undo, why = change.key.undo(change.before)
        if undo is not None:
            out.append(undo)
        else:
            skipped.append(why)
    return tuple(out), tuple(skipped)


def plan_after(plan, current):
    """``current`` with the plan's changes made."""
    after = dict(current)
    for change in plan.changes:
        after[change.key] = change.after
    return after


def verify(wanted, state):
    """Keys whose read-back value differs from what was wanted: [(key text, expected, found)]."""
    found = current_values(state, wanted)
    return [(k.label, k.show(v), k.show(found[k])) for k, v in wanted.items() if not same(k, found[k], v)]


# ------------------------------------------------------------------ run
def validate(params):
    """Check every option that does not depend on the host; returns Desired.  Raises ValidationError."""
    return validate_win_tcp(params)


def run(params, host, check_mode=False, want_diff=False):
    """Run win_tcp with the task's ``params`` against ``host`` (a WindowsHost); returns (result, warnings).

    Raises ValidationError (naming the option) before the first round trip,
    or after the read for the rule that depends on the build; TuningError for
    everything the host did wrong, with the result known so far.  The
    connection's own errors on the read propagate (the host is unreachable).
    """
    return tune(validate(params), host, check_mode, want_diff)


def tune(desired, host, check_mode=False, want_diff=False):
    """run() for options already checked: ``desired`` is validate()'s Desired (the action plugin checks the
    task's options once, before the connection is touched, and hands that value on)."""
    targets = desired.targets
    result = {}
    warnings = []
    try:
        state = _read(host, targets, listeners=desired.state is State.PRESENT and bool(desired.excluded_ranges)
                      and Protocol.TCP in desired.protocols)
        current, plan = plan_win_tcp(desired, state)
        after = plan_after(plan, current)
        warnings.extend(plan.warnings)
        result.update(
            changed=plan.changed,
            build=state.build,
            before=nest(current),
            after=nest(after),
            reboot_required=plan.reboot_required,
            excluded_port_ranges=excluded_result(state),
        )
        if want_diff:
            result["diff"] = {"before_header": "registry and netsh (before)", "after_header": "registry and netsh (after)",
                              "before": diff_text(current), "after": diff_text(after)}
        if plan.changed and not check_mode:
            check = _apply(host, plan, targets, result, warnings)
            result["after"] = nest(current_values(check, current))
    except WinTcpError as exc:
        raise TuningError(str(exc), result, warnings) from exc
    return result, warnings


def _read(host, targets, listeners=False):
    """The one read: build, parameters, ranges, excluded ranges (and the TCP listeners, for exclusions to add)."""
    output = host.run(build_read_script(targets, listeners=listeners))
    return parse_output(output, lambda stdout: parse_read(stdout, targets))


def _apply(host, plan, targets, result, warnings):
    """Apply the plan in one round trip and read back; all or nothing.

    When a command fails, what the others changed is undone in one more round
    trip (``rolled_back`` in ``result``; values that cannot be written back in
    ``rollback_skipped`` and a warning).  Returns the state read back.
    """
    actions = plan_actions(plan)
    excluded = any(c.key.reads_excluded for c in plan.changes)
    try:
        output = host.run(build_apply_script(actions, targets, excluded=excluded))
    except CONNECTION_ERRORS as exc:
        raise WinTcpError(
            "the connection failed while applying %d change(s) (%s): %s. The host may have all or none of "
            "them; run the task again: it reads the host first and converges"
            % (len(actions), "; ".join(describe(a) for a in actions), exc)) from exc
    sections = split_sections(output.stdout)
    failed = [i for i in range(len(actions)) if sections.get("apply-%d" % i) is None or not sections["apply-%d" % i].ok]
    if failed:
        section = sections.get("apply-%d" % failed[0])
        detail = (section.text if section is not None else "") or (output.stderr or output.stdout).strip()
        applied = tuple(a for i, a in enumerate(actions) if i not in failed)
        undo, skipped = rollback_actions(plan, applied)
        rolled_back = _undo(host, undo, targets)
        result.update(changed=(not rolled_back or bool(skipped)) and bool(applied), rolled_back=rolled_back)
        if skipped:
            result["rollback_skipped"] = list(skipped)
            warnings.append("the undo after the failed apply could not write back %s; set %s by hand"
                            % ("; ".join(skipped), "it" if len(skipped) == 1 else "them"))
        raise WinTcpError("%s failed: %s%s%s" % (
            describe(actions[failed[0]]), detail, "; the changes already made were undone" if rolled_back else "",
            " except %s" % "; ".join(skipped) if rolled_back and skipped else ""))
    check = parse_read(output.stdout, targets, prefix="verify-", excluded=excluded)
    wrong = verify({c.key: c.after for c in plan.changes}, check)
    if wrong:
        raise WinTcpError("after applying, the host reads back %s" % "; ".join(
            "%s = %s (expected %s)" % (key, found, expected) for key, expected, found in wrong))
    return check


def _undo(host, undo, targets):
    """Run the rollback actions; whether every one succeeded (False when there was nothing to undo)."""
    if not undo:
        return False
    output = host.run(build_apply_script(undo, targets))
    sections = split_sections(output.stdout)
    return output.rc == 0 and all(sections.get("apply-%d" % i) is not None and sections["apply-%d" % i].ok
                                  for i in range(len(undo)))
