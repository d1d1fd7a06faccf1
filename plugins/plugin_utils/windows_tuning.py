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

from ansible_collections.tcpstack.tuning.plugins.module_utils.plan import make_plan
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import PORT_MAX, intersect
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_commands import (
    AddExcluded,
    DeleteExcluded,
    DeleteValue,
    SetDword,
    SetRange,
    build_apply_script,
    build_read_script,
    describe,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import (
    DEFAULT_RANGE,
    NETSH_MIN_PORTS,
    Exclusion,
    NETSH_MIN_START,
    Protocol,
    RegName,
    State,
    WinTcpError,
    check_build,
    validate_win_tcp,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_parse import (
    DWORD_MAX,
    excluded_result,
    nest,
    parse_read,
    range_value,
    reg_value,
    split_sections,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import CONNECTION_ERRORS

MAX_USER_PORT_WARNING = (
    "max_user_port: MaxUserPort is legacy. Since Windows Vista / Server 2008 the dynamic port range "
    "(port_range, netsh int ipv4|ipv6 set dynamicportrange) decides which ports are handed out; "
    "MaxUserPort is read at boot and only affects old code paths.")


class TuningError(WinTcpError):
    """win_tcp must fail; ``result`` and ``warnings`` carry what is known so far."""

    def __init__(self, message, result=None, warnings=()):
        super().__init__(message)
        self.result = result or {}
        self.warnings = list(warnings)


# ------------------------------------------------------------------ plan values
def _key(item):
    if isinstance(item, RegName):
        return item.value
    if isinstance(item, Exclusion):
        return "%s %s excluded port range %s" % (item.ip.value, item.protocol.value, item.text)
    ip, proto = item
    return "%s %s dynamic port range" % (ip.value, proto.value)


def _show(value):
    if value is True:
        return "excluded (administered)"
    if value is False:
        return "(not excluded)"
    if value is None:
        return "(absent)"
    if isinstance(value, dict) and "start" in value:
        return "start %d, %d ports (%d-%d)" % (value["start"], value["number"], value["start"], value["end"])
    if isinstance(value, dict):
        return "%s %r" % (value["type"], value["data"])
    return str(value)


def diff_text(values):
    """Plan values as the diff shows them, one ``key = value`` line each."""
    return "".join("%s = %s\n" % (_key(key), _show(value)) for key, value in values.items())


def current_values(state, keys):
    """{plan key: what the host has}: RegName -> reg_value; (ip, proto) -> range dict."""
    out = {}
    for key in keys:
        if isinstance(key, RegName):
            out[key] = reg_value(state, key)
        elif isinstance(key, Exclusion):
            out[key] = (key.low, key.high, True) in state.excluded.get(key.target, ())
        else:
            out[key] = range_value(state.ranges[key])
    return out


def exclusion_keys(desired):
    """The plan keys of the listed excluded ranges, per target, in order."""
    return [Exclusion(ip, proto, low, high) for ip, proto in desired.targets for low, high in desired.excluded_ranges or ()]


def desired_values(desired):
    """{plan key: value}: RegName -> int or None (removed); (ip, proto) -> range dict; Exclusion -> bool."""
    out = {}
    if desired.state is State.ABSENT:
        out[RegName.TIME_WAIT_DELAY] = None
        out[RegName.MAX_USER_PORT] = None
        for target in desired.targets:
            out[target] = range_value(DEFAULT_RANGE)
        for key in exclusion_keys(desired):
            out[key] = False
        return out
    if desired.time_wait_delay is not None:
        out[RegName.TIME_WAIT_DELAY] = desired.time_wait_delay
    if desired.max_user_port is not None:
        out[RegName.MAX_USER_PORT] = desired.max_user_port
    if desired.port_range is not None:
        for target in desired.targets:
            out[target] = range_value(desired.port_range)
    for key in exclusion_keys(desired):
        out[key] = True
    return out


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
    for key, value in current.items():
        if isinstance(key, RegName) and isinstance(value, dict):
            warnings.append("%s was %s %r, which Windows ignores; it is %s as a REG_DWORD"
                            % (key.value, value["type"], value["data"],
                               "removed" if wanted[key] is None else "rewritten"))
    for target in desired.targets:
        if target in wanted:
            want = wanted[target]
            hits = [(a, b) for a, b, _admin in state.excluded.get(target, ())
                    if intersect(((a, b),), (want["start"], want["end"]))]
            if hits:
                warnings.append(
                    "port_range: excluded port ranges %s (netsh int %s show excludedportrange protocol=%s) overlap "
                    "the %s %s dynamic range %d-%d; Windows never hands those ports out"
                    % (", ".join("%d-%d" % h for h in hits), target[0].value, target[1].value,
                       target[0].value, target[1].value, want["start"], want["end"]))
    return warnings


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
    plan = make_plan(current, wanted, same, reboot_required_keys=tuple(RegName),
                     warnings=_warnings(desired, state, wanted, current) + notes)
    return current, plan


def _exclusion_action(key, add):
    return (AddExcluded if add else DeleteExcluded)(key.ip, key.protocol, key.low, key.high - key.low + 1)


def plan_actions(plan):
    """The apply actions of a plan in a fixed order: registry, exclusions removed, ranges, exclusions added."""
    changes = plan.changes
    actions = [DeleteValue(c.key) if c.after is None else SetDword(c.key, c.after)
               for c in changes if isinstance(c.key, RegName)]
    actions += [_exclusion_action(c.key, False) for c in changes if isinstance(c.key, Exclusion) and not c.after]
    actions += [SetRange(c.key[0], c.key[1], c.after["start"], c.after["number"])
                for c in changes if isinstance(c.key, tuple)]
    actions += [_exclusion_action(c.key, True) for c in changes if isinstance(c.key, Exclusion) and c.after]
    return tuple(actions)


def rollback_actions(plan, applied):
    """What puts back what the ``applied`` actions changed (best effort after a failed apply): (actions, skipped).

    ``skipped`` names each old value that cannot be written back (a registry value that is not a REG_DWORD from 0
    to 0xFFFFFFFF, a range outside netsh's rules), so that the rest is still undone and the task says what was not.
    """
    before = {c.key: c.before for c in plan.changes}
    out = []
    skipped = []
    for action in applied:
        if isinstance(action, (SetDword, DeleteValue)):
            old = before.get(action.name)
            if old is None:
                out.append(DeleteValue(action.name))
            elif type(old) is int and 0 <= old <= DWORD_MAX:  # pylint: disable=unidiomatic-typecheck
                out.append(SetDword(action.name, old))
            else:
                skipped.append("%s (was %s)" % (action.name.value, _show(old)))
        elif isinstance(action, SetRange):
            old = before.get((action.ip, action.protocol))
            if old and old["start"] >= NETSH_MIN_START and old["number"] >= NETSH_MIN_PORTS and old["end"] <= PORT_MAX:
                out.append(SetRange(action.ip, action.protocol, old["start"], old["number"]))
            else:
                skipped.append("%s %s dynamic port range (was %s, outside netsh's rules)"
                               % (action.ip.value, action.protocol.value, _show(old)))
        elif isinstance(action, (AddExcluded, DeleteExcluded)):
            undo = DeleteExcluded if type(action) is AddExcluded else AddExcluded  # pylint: disable=unidiomatic-typecheck
            out.append(undo(action.ip, action.protocol, action.start, action.number))
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
    return [(_key(k), _show(v), _show(found[k])) for k, v in wanted.items() if not same(k, found[k], v)]


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
    desired = validate(params)
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
    if "@@tcpstack:" not in output.stdout:
        raise WinTcpError("reading the host failed (rc=%s): %s" % (output.rc, (output.stderr or output.stdout).strip()))
    try:
        return parse_read(output.stdout, targets)
    except WinTcpError as exc:
        stderr = output.stderr.strip()
        raise WinTcpError("%s%s" % (exc, "; stderr: %s" % stderr if stderr else "")) from exc


def _apply(host, plan, targets, result, warnings):
    """Apply the plan in one round trip and read back; all or nothing.

    When a command fails, what the others changed is undone in one more round
    trip (``rolled_back`` in ``result``; values that cannot be written back in
    ``rollback_skipped`` and a warning).  Returns the state read back.
    """
    actions = plan_actions(plan)
    excluded = any(isinstance(c.key, Exclusion) for c in plan.changes)
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
