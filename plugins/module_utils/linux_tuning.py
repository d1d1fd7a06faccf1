# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the linux_tcp module does: validate -> read -> plan -> apply -> verify.

The module is a thin shell around ``run()``; the host is a LinuxHost (or a
test double rooted in a directory tree).
"""

from __future__ import annotations

from collections import OrderedDict

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import FILE_MAX, HostError
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import (
    BY_KEY,
    CONTEXT_KEYS,
    PORT_RANGE,
    SETTINGS,
    loose,
    same,
    sort_keys,
    validate_for_host,
    validate_options,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_sysctl_d import (
    OUR_MARKS,
    SYSCTL_CONF,
    SYSCTL_D_DIRS,
    boot_values,
    check_persist_path,
    hidden_by,
    overrides,
    parse,
    predict,
    render,
    unusable,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.plan import TuningError, make_plan
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError, strict_bool

DEFAULT_PERSIST_FILE = "/etc/sysctl.d/60-tcpstack-tuning.conf"
HEADER = (
    "Managed by Ansible: tcpstack.tuning.linux_tcp. Changes made here by hand are overwritten.\n"
    "Remove with the module's state: absent, which also restores the runtime values.\n"
    "Note: Linux TIME_WAIT lasts a fixed 60 s; tcp_fin_timeout only limits orphaned FIN_WAIT_2 sockets."
)


def own_text(host, path):
    """The text of our persist_file ``path`` (None when absent); ValidationError when the file there is not ours.

    linux_tcp rewrites or removes only a regular file that it wrote itself: one whose first line is
    our header (OUR_MARKS), of at most FILE_MAX bytes.  A file of anyone else, a symbolic link, a
    FIFO, a device, a socket or a directory is refused before anything changes, in check mode too.
    """
    try:
        return host.own_file(path, OUR_MARKS)
    except OSError as exc:
        raise ValidationError("persist_file", path, "%s %s; linux_tcp rewrites or removes only a regular file of its "
                              "own, of at most %d bytes, whose first line starts with %r. Nothing was changed: "
                              "choose another persist_file, or move that file away yourself"
                              % (exc.filename or path, exc.strerror or exc, FILE_MAX, OUR_MARKS[0]))


def _read_layout(host, warnings):
    notes = []
    layout = host.read_layout(SYSCTL_D_DIRS, SYSCTL_CONF, notes)
    warnings.extend(notes)
    return layout


def _lines(values):
    return "".join("%s = %s\n" % (key, "" if value is None else value) for key, value in values.items())


def _diff(before, after, path, file_before, file_after):
    diff = [{
        "before_header": "runtime (/proc/sys)",
        "after_header": "runtime (/proc/sys)",
        "before": _lines(before),
        "after": _lines(after),
    }]
    if path is not None:
        diff.append({
            "before_header": path,
            "after_header": path,
            "before": file_before or "",
            "after": file_after or "",
        })
    return diff


def _defaults(host, keys):
    probed = host.fresh_defaults(list(keys)) or {}
    out = {}
    for key in keys:
        value = probed.get(key)
        if value is None and key in BY_KEY:
            value = BY_KEY[key].default
        out[key] = loose(key, value) if value is not None else None
    return out


def _apply(host, plan, raw_before):
    """Write the runtime changes, then the file; on any failure restore what was written."""
    written = []
    try:
        for change in plan.changes:
            host.write_sysctl(change.key, change.after)
            written.append(change.key)
            now = host.read_sysctl(change.key)
            if not same(change.key, now, change.after):
                raise HostError("%s reads back %r after writing %r" % (change.key, now, change.after))
        if plan.file_changed:
            if plan.file_after is None:
                host.remove_file(plan.file_path)
            else:
                host.write_file_atomic(plan.file_path, plan.file_after)
    except HostError as exc:
        failed = []
        for key in reversed(written):
            try:
                host.write_sysctl(key, raw_before[key])
            except HostError as again:
                failed.append(str(again))
        note = "nothing had been changed"
        if written:
            note = "restored %s to their previous values" % ", ".join(written)
        if failed:
            note += "; restoring failed too: %s" % "; ".join(failed)
        raise HostError("%s (%s; the persisted file is unchanged)" % (exc, note))


# linux_tcp's options: one per managed sysctl (the SETTINGS table), then the module's own.
ARGUMENT_SPEC = dict(
    [(setting.option, dict(type="raw")) for setting in SETTINGS]
    + [
        ("tw_recycle", dict(type="raw")),
        ("reserve_listening_ports", dict(type="bool", default=False)),
        ("persist", dict(type="bool", default=True)),
        ("persist_file", dict(type="path", default=DEFAULT_PERSIST_FILE)),
        ("on_shadowed", dict(type="str", choices=["fail", "warn"], default="fail")),
        ("state", dict(type="str", choices=["present", "absent"], default="present")),
    ]
)


def _choice(params, option):
    value = params.get(option)
    if value is None:
        return ARGUMENT_SPEC[option]["default"]
    choices = ARGUMENT_SPEC[option]["choices"]
    if value not in choices:
        raise ValidationError(option, value, "one of %s" % ", ".join(choices))
    return value


def validate(params):
    """Check every option that does not depend on the host; returns the desired sysctl values.

    The same checks the module makes before it reads the host, for callers that
    hold the options before any host is contacted (the tcp_tuning role's check
    on the controller).  Raises ValidationError naming the option.
    """
    unknown = sorted(set(params) - set(ARGUMENT_SPEC))
    if unknown:
        raise ValidationError(unknown[0], params[unknown[0]], "not an option of linux_tcp; options are %s"
                              % ", ".join(ARGUMENT_SPEC))
    state = _choice(params, "state")
    _choice(params, "on_shadowed")
    for option in ("reserve_listening_ports", "persist"):
        if params.get(option) is not None:
            strict_bool(params[option], option)
    path = params.get("persist_file") or DEFAULT_PERSIST_FILE
    problem = check_persist_path(path)
    if problem:
        raise ValidationError("persist_file", path, problem)
    return validate_options(params) if state == "present" else OrderedDict()


def run(params, host, check_mode=False, want_diff=False):
    """Run linux_tcp with module ``params`` against ``host``; returns (result, warnings)."""
    state = params.get("state") or "present"
    persist = params.get("persist", True)
    path = params.get("persist_file") or DEFAULT_PERSIST_FILE
    if persist or state == "absent":
        problem = check_persist_path(path)
        if problem:
            raise ValidationError("persist_file", path, problem)
        path = host.first_name(path, SYSCTL_D_DIRS)
    if state == "absent":
        return _absent(host, path, check_mode, want_diff)
    desired = validate_options(params)
    with host.lock():
        return _present(params, host, desired, path if persist else None, check_mode, want_diff)


def _present(params, host, desired, path, check_mode, want_diff):
    warnings = []
    raw = OrderedDict((key, host.read_sysctl(key)) for key in list(desired) + list(CONTEXT_KEYS))
    missing = [key for key in desired if raw.get(key) is None]
    reserve = bool(params.get("reserve_listening_ports"))
    listening = host.listening_ports() if (PORT_RANGE in desired or reserve) else ()
    current = {key: value for key, value in raw.items() if value is not None}
    desired, host_warnings = validate_for_host(
        desired, current, missing, listening, reserve, kernel=host.kernel_release())
    warnings.extend(host_warnings)

    file_before = own_text(host, path) if path is not None else None  # refuses a file that is not ours
    layout = _read_layout(host, warnings)
    warnings.extend(unusable({p: t for p, t in layout.items() if p != path}, desired.keys()))
    file_after = None
    if path is not None:
        kept = OrderedDict((a.key, a.value) for a in parse(file_before or "") if a.value is not None)
        kept.update(desired)
        file_after = render(sort_keys(kept), HEADER)
        layout = dict(layout)
        layout[path] = file_after
    else:
        for init in ("systemd", "procps"):
            for key, found in predict(layout, desired.keys(), init).items():
                if not same(key, found.value, desired[key]):
                    warnings.append(
                        "persist is false: %s = %s lasts until the next boot, when %s line %d sets %s"
                        % (key, desired[key], found.path, found.line, found.value))

    before = OrderedDict((key, loose(key, raw[key])) for key in desired)
    result = OrderedDict()
    result["persist_file"] = path
    result["kernel"] = host.kernel_release()

    shadowed = []
    if path is not None:
        blocker = hidden_by(layout, path)
        found = overrides(layout, path, desired)
        conflicts = [o for o in found if o.conflicting]
        shadowed = [{"key": o.key, "init": o.init, "file": o.path, "line": o.line, "value": o.value,
                     "conflicting": o.conflicting} for o in found]
        messages = []
        if blocker is not None:
            messages.append("%s is never read at boot: %s has the same name and hides it" % (path, blocker))
        messages.extend(o.describe() for o in conflicts if blocker is None)
        if messages:
            if params.get("on_shadowed", "fail") == "fail":
                result["before"] = before
                result["shadowed"] = shadowed
                raise TuningError(
                    "the tuning would not survive a reboot: %s. Nothing was changed. Remove or fix that setting, "
                    "use a persist_file that sorts later, or set on_shadowed: warn" % "; ".join(messages), result)
            warnings.extend(messages)
        warnings.extend(o.describe() for o in found if not o.conflicting)

    defaults = _defaults(host, desired.keys())
    plan = make_plan(before, desired, same, path, file_before, file_after, warnings=warnings)
    if plan.changed and not check_mode:
        _apply(host, plan, raw)
    after = OrderedDict((key, desired[key]) for key in desired)

    result["changed"] = plan.changed
    result["before"] = before
    result["after"] = after
    result["boot_values"] = boot_values(layout, list(desired), defaults)
    result["shadowed"] = shadowed
    result["reboot_required"] = False
    if want_diff:
        result["diff"] = _diff(before, after, path, file_before, file_after)
    return result, warnings


def _absent(host, path, check_mode, want_diff):
    warnings = []
    with host.lock():
        file_before = own_text(host, path)
        layout = _read_layout(host, warnings) if file_before is not None else {}
        result = OrderedDict([("persist_file", path), ("kernel", host.kernel_release())])
        if file_before is None:
            result.update(changed=False, before={}, after={}, boot_values={}, shadowed=[], reboot_required=False)
            if want_diff:
                result["diff"] = _diff({}, {}, path, "", "")
            return result, warnings
        named = OrderedDict()
        for assignment in parse(file_before):
            if assignment.value is None:
                continue
            if assignment.key in BY_KEY:
                named[assignment.key] = assignment.value
            else:
                warnings.append("%s names %s, which this module does not manage: it is left as it is at runtime"
                                % (path, assignment.key))
        named = sort_keys(named)
        without = {p: t for p, t in layout.items() if p != path}
        warnings.extend(unusable(without, named.keys()))
        defaults = _defaults(host, named.keys())
        init = "systemd" if host.is_dir("/run/systemd/system") else "procps"
        boot = predict(without, named.keys(), init)
        raw = OrderedDict((key, host.read_sysctl(key)) for key in named)
        before = OrderedDict((key, loose(key, raw[key])) for key in named if raw[key] is not None)
        target = OrderedDict()
        for key in named:
            if raw[key] is None:
                continue
            value = loose(key, boot[key].value) if key in boot else defaults.get(key)
            if value is None:
                warnings.append("the kernel default of %s is unknown here: its runtime value is left as it is" % key)
                value = before[key]
            target[key] = value
        plan = make_plan(before, target, same, path, file_before, None, warnings=warnings)
        if not check_mode:
            _apply(host, plan, raw)
        result.update(
            changed=plan.changed,
            before=before,
            after=target,
            boot_values=boot_values(without, list(named), defaults),
            shadowed=[],
            reboot_required=False,
        )
        if want_diff:
            result["diff"] = _diff(before, target, path, file_before, "")
        return result, warnings
