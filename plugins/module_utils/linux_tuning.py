# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""What the linux_tcp module does: validate -> read -> plan -> apply -> verify.

The module is a thin shell around ``run()``; the host is a LinuxHost (or a
test double rooted in a directory tree).  For state: present, ``run()`` is
``validate_options()`` (pure: each value parsed once into its meaning), ``read()``
(every host read, once: a ``HostState``), ``plan_linux_tcp()`` (pure: the host
checks, the boot order, the ``Plan``), ``apply()`` (the only writes, each value
read back, all or nothing) and ``result()``.  Text is made from the meanings only
where it is written (/proc, our sysctl.d file) or shown (the result, the diff).
"""

from __future__ import annotations

import errno
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import FILE_MAX, HostError
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import (
    BY_KEY,
    CONTEXT_KEYS,
    INITIAL_NETNS_WITNESS,
    PORT_RANGE,
    RESERVED_PORTS,
    SETTINGS,
    loose,
    same,
    sort_keys,
    text_of,
    texts,
    validate_for_host,
    validate_options,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_sysctl_d import (
    INITS,
    MODULES_CONF,
    MODULES_LOAD_DIRS,
    OUR_MARKS,
    SYSCTL_CONF,
    SYSCTL_D_DIRS,
    boot_values,
    check_persist_path,
    hidden_by,
    loaded_at_boot,
    overrides,
    parse,
    predict,
    render,
    unusable,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.plan import Plan, TuningError, make_plan
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
    text, refused = _own_file(host, path)
    if refused is not None:
        raise ValidationError("persist_file", path, refused)
    return text


def _own_file(host, path):
    """(text of our file at ``path`` or None when absent, None), or (None, why the file there is not ours)."""
    try:
        return host.own_file(path, OUR_MARKS), None
    except OSError as exc:
        return None, ("%s %s; linux_tcp rewrites or removes only a regular file of its own, of at most %d bytes, "
                      "whose first line starts with %r. Nothing was changed: choose another persist_file, or move "
                      "that file away yourself" % (exc.filename or path, exc.strerror or exc, FILE_MAX, OUR_MARKS[0]))


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


def _defaults(probed, keys):
    """The kernel default of each key, as canonical text: as probed in a new namespace, else SETTINGS' default."""
    probed = probed or {}
    out = {}
    for key in keys:
        value = probed.get(key)
        if value is None and key in BY_KEY:
            value = BY_KEY[key].default
        out[key] = loose(key, value) if value is not None else None
    return out


def _verify(host, change):
    """Read ``change``'s key back after writing it; HostError unless it now means ``change.after``."""
    now = host.read_sysctl(change.key)
    if not same(change.key, now, change.after):
        raise HostError("%s reads back %r after writing %r" % (change.key, now, text_of(change.key, change.after)))


def _write(host, change):
    """Write ``change``'s key; a refused global key's HostError says why the kernel refuses it."""
    try:
        host.write_sysctl(change.key, text_of(change.key, change.after))
    except HostError as exc:
        refused = any(os.strerror(code) in str(exc) for code in (errno.EACCES, errno.EPERM))
        if not refused or BY_KEY.get(change.key) is None or BY_KEY[change.key].scope != "global":
            raise
        raise HostError("%s: %s is global to the machine, and the kernel lets only the machine's initial network "
                        "namespace change it (not a container); set %s on the host itself"
                        % (exc, change.key, BY_KEY[change.key].option))


def apply(host, plan, raw_before):
    """Write the runtime changes (each verified), then the file; on any failure restore what was written.

    The only code of a linux_tcp run that writes.  ``raw_before`` maps keys to the text they held.
    """
    written = []
    try:
        for change in plan.changes:
            _write(host, change)
            written.append(change.key)
            _verify(host, change)
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


@dataclass(frozen=True)
class Options:
    """linux_tcp's own options for state: present (the sysctl values are the desired ones)."""

    persist_file: Optional[str]  # None: persist is false
    reserve_listening: bool
    on_shadowed: str


@dataclass(frozen=True)
class HostState:
    """Everything a linux_tcp run needs from the host, read once by read()."""

    runtime: Mapping[str, Optional[str]]  # managed and context keys -> text as the kernel prints it (None: no key)
    listening: Tuple[int, ...]  # TCP ports with a listener (read only when the port range matters)
    kernel: str
    layout: Mapping[str, str]  # every sysctl.d file and /etc/sysctl.conf: path -> text
    layout_notes: Tuple[str, ...]  # files left out of the layout, and why
    file_text: Optional[str]  # our persisted file's text; None when absent or not ours
    file_refused: Optional[str]  # why the file at persist_file is not ours (plan_linux_tcp() refuses it)
    defaults: Optional[Mapping[str, Optional[str]]]  # the keys' values in a new network namespace, if it could be made
    init: Optional[str] = None  # what applies sysctl.d at boot here, systemd or procps (read for state: absent)
    loaded: Tuple[str, ...] = ()  # the kernel modules the desired keys need (nf_conntrack) that are loaded
    initial_netns: Optional[bool] = None  # in the machine's initial network namespace (None: no global key asked)
    boot_unloaded: Tuple[str, ...] = ()  # loadable modules of the desired keys that no modules-load.d file loads


@dataclass(frozen=True)
class Tuning:
    """What plan_linux_tcp() decided: the Plan (changes to meanings, the file, warnings) and what the result shows."""

    plan: Plan
    before: Mapping[str, str]  # the runtime values, as canonical text
    after: Mapping[str, str]  # the desired values, as canonical text
    layout: Mapping[str, str]  # what a boot reads, our file as it will be
    shadowed: Tuple[dict, ...]
    keys: Tuple[str, ...]  # the keys whose boot values the result shows


def read(host, desired, options):
    """Every host read of a state: present run, once: a HostState.  ``desired`` from validate_options()."""
    keys = list(desired) + [key for key in CONTEXT_KEYS if key not in desired]
    runtime = OrderedDict((key, host.read_sysctl(key)) for key in keys)
    reserve = options.reserve_listening
    listening = tuple(host.listening_ports()) if (PORT_RANGE in desired or reserve) else ()
    kernel = host.kernel_release()
    file_text = refused = None
    if options.persist_file is not None:
        file_text, refused = _own_file(host, options.persist_file)
    notes = []
    layout = host.read_layout(SYSCTL_D_DIRS, SYSCTL_CONF, notes)
    probe = _per_netns(list(desired) + ([RESERVED_PORTS] if reserve and RESERVED_PORTS not in desired else []))
    loaded, initial, unloaded = _module_facts(host, desired, runtime)
    return HostState(runtime, listening, kernel, layout, tuple(notes), file_text, refused, host.fresh_defaults(probe),
                     None, loaded, initial, unloaded)


def _per_netns(keys):
    """``keys`` without the global ones: a new network namespace shows the machine's value, not a default."""
    return [key for key in keys if key not in BY_KEY or BY_KEY[key].scope != "global"]


def _module_facts(host, desired, runtime):
    """(modules the desired keys need that are loaded, whether this is the initial network namespace or None,
    loaded modules that are not built in and that no modules-load.d file loads at boot)."""
    modules = sorted({BY_KEY[key].module for key in desired if BY_KEY[key].module})
    loaded = tuple(module for module in modules if host.is_dir("/sys/module/" + module))
    initial = None
    for key, witness in INITIAL_NETNS_WITNESS.items():
        if key in desired and runtime.get(key) is not None:
            initial = host.read_sysctl(witness) is not None
    unloaded = []
    for module in loaded:
        try:  # a loadable module has /sys/module/NAME/initstate; a built-in one has not
            builtin = host.read_file("/sys/module/%s/initstate" % module) is None
        except OSError:
            builtin = False
        if not builtin and not loaded_at_boot(host.read_layout(MODULES_LOAD_DIRS, MODULES_CONF), module):
            unloaded.append(module)
    return loaded, initial, tuple(unloaded)


def _boot_layout(state, path, desired, warnings):
    """What a boot will read, with our file as we write it: (layout, our file's new text or None)."""
    wanted = texts(desired)
    if path is None:
        for init in INITS:
            for key, found in predict(state.layout, wanted.keys(), init).items():
                if not same(key, found.value, desired[key]):
                    warnings.append(
                        "persist is false: %s = %s lasts until the next boot, when %s line %d sets %s"
                        % (key, wanted[key], found.path, found.line, found.value))
        return state.layout, None
    kept = OrderedDict((a.key, a.value) for a in parse(state.file_text or "") if a.value is not None)
    kept.update(wanted)
    file_after = render(sort_keys(kept), HEADER)
    layout = dict(state.layout)
    layout[path] = file_after
    return layout, file_after


def _shadowing(layout, path, desired, options, refusal, warnings):
    """Files that would undo our file at boot: a TuningError (on_shadowed: fail) or warnings; the shadowed list."""
    blocker = hidden_by(layout, path)
    found = overrides(layout, path, desired)
    shadowed = tuple({"key": o.key, "init": o.init, "file": o.path, "line": o.line, "value": o.value,
                      "conflicting": o.conflicting} for o in found)
    messages = []
    if blocker is not None:
        messages.append("%s is never read at boot: %s has the same name and hides it" % (path, blocker))
    messages.extend(o.describe() for o in found if o.conflicting and blocker is None)
    if messages:
        if options.on_shadowed == "fail":
            refusal["shadowed"] = list(shadowed)
            raise TuningError(
                "the tuning would not survive a reboot: %s. Nothing was changed. Remove or fix that setting, "
                "use a persist_file that sorts later, or set on_shadowed: warn" % "; ".join(messages), refusal)
        warnings.extend(messages)
    warnings.extend(o.describe() for o in found if not o.conflicting)
    return shadowed


def _boot_module_warnings(desired, unloaded, path):
    """A persisted key whose module nothing loads at boot is applied at runtime only: say so, once per module."""
    out = []
    for module in unloaded:
        keys = [key for key in desired if BY_KEY[key].module == module]
        if keys:
            one = len(keys) == 1
            out.append(
                "%s: %s %s persisted in %s, but %s is a loadable kernel module that no modules-load.d file loads: "
                "at boot systemd-sysctl (or procps) runs before anything loads it, when %s, and once %s "
                "loads %s the kernel default. List %s in /etc/modules-load.d/ to keep the %s across reboots"
                % (", ".join(BY_KEY[k].option for k in keys), " and ".join(keys), "is" if one else "are", path, module,
                   "the key does not exist yet" if one else "the keys do not exist yet", module,
                   "it has" if one else "they have", module, "value" if one else "values"))
    return out


def plan_linux_tcp(desired, state, options):
    """Pure: the Tuning that takes the host in ``state`` to ``desired`` (validate_options()'s meanings).

    Checks ``desired`` against the host (ValidationError), finds what would undo it at boot
    (TuningError with on_shadowed: fail) and plans the runtime and file changes.
    """
    path = options.persist_file
    missing = [key for key in desired if state.runtime.get(key) is None]
    current = {key: value for key, value in state.runtime.items() if value is not None}
    desired, warnings = validate_for_host(desired, current, missing, state.listening, options.reserve_listening,
                                          kernel=state.kernel, loaded=state.loaded, initial_netns=state.initial_netns)
    if path is not None:
        warnings.extend(_boot_module_warnings(desired, state.boot_unloaded, path))
    if state.file_refused is not None:
        raise ValidationError("persist_file", path, state.file_refused)
    warnings.extend(state.layout_notes)
    warnings.extend(unusable({p: t for p, t in state.layout.items() if p != path}, desired.keys()))
    layout, file_after = _boot_layout(state, path, desired, warnings)
    before = OrderedDict((key, loose(key, state.runtime[key])) for key in desired)
    shadowed = ()
    if path is not None:
        refusal = OrderedDict([("persist_file", path), ("kernel", state.kernel), ("before", before)])
        shadowed = _shadowing(layout, path, desired, options, refusal, warnings)
    plan = make_plan(before, desired, same, path, state.file_text, file_after, warnings=warnings)
    return Tuning(plan, before, texts(desired), layout, shadowed, tuple(desired))


def result(tuning, state, want_diff):
    """linux_tcp's result: what plan_linux_tcp() or plan_absent() decided (the apply changes none of it)."""
    plan = tuning.plan
    out = OrderedDict()
    out["persist_file"] = plan.file_path
    out["kernel"] = state.kernel
    out["changed"] = plan.changed
    out["before"] = tuning.before
    out["after"] = tuning.after
    out["boot_values"] = boot_values(tuning.layout, list(tuning.keys), _defaults(state.defaults, tuning.keys))
    out["shadowed"] = list(tuning.shadowed)
    out["reboot_required"] = False
    if want_diff:
        out["diff"] = _diff(tuning.before, tuning.after, plan.file_path, plan.file_before, plan.file_after)
    return out


def run(params, host, check_mode=False, want_diff=False):
    """Run linux_tcp with module ``params`` against ``host``; returns (result, warnings).

    validate (pure) -> read() (every host read, once, under the lock) -> plan_linux_tcp() (pure) ->
    apply() (the only writes, all or nothing, each value verified) -> result().
    """
    state = params.get("state") or "present"
    persist = params.get("persist", True)
    path = params.get("persist_file") or DEFAULT_PERSIST_FILE
    if persist or state == "absent":
        problem = check_persist_path(path)
        if problem:
            raise ValidationError("persist_file", path, problem)
        path = host.first_name(path, SYSCTL_D_DIRS)
    if state == "absent":
        with host.lock():
            host_state = read_absent(host, path)
            return _done(host, plan_absent(host_state, path), host_state, check_mode, want_diff)
    desired = validate_options(params)
    options = Options(path if persist else None, bool(params.get("reserve_listening_ports")),
                      params.get("on_shadowed", "fail"))
    with host.lock():
        host_state = read(host, desired, options)
        return _done(host, plan_linux_tcp(desired, host_state, options), host_state, check_mode, want_diff)


def _done(host, tuning, host_state, check_mode, want_diff):
    """Apply the plan (not in check mode); (result, warnings)."""
    if tuning.plan.changed and not check_mode:
        apply(host, tuning.plan, host_state.runtime)
    return result(tuning, host_state, want_diff), list(tuning.plan.warnings)


# state: absent ------------------------------------------------------------------------------------------------


def _named(path, text):
    """The managed keys our file ``text`` sets, in apply order, and a warning for each other key it names."""
    named = OrderedDict()
    warnings = []
    for assignment in parse(text):
        if assignment.value is None:
            continue
        if assignment.key in BY_KEY:
            named[assignment.key] = assignment.value
        else:
            warnings.append("%s names %s, which this module does not manage: it is left as it is at runtime"
                            % (path, assignment.key))
    return sort_keys(named), warnings


def read_absent(host, path):
    """Every host read of a state: absent run, once: a HostState (ValidationError when the file is not ours)."""
    file_text = own_text(host, path)
    notes = []
    layout = host.read_layout(SYSCTL_D_DIRS, SYSCTL_CONF, notes) if file_text is not None else {}
    kernel = host.kernel_release()
    if file_text is None:
        return HostState(OrderedDict(), (), kernel, layout, tuple(notes), None, None, None)
    keys = list(_named(path, file_text)[0])
    defaults = host.fresh_defaults(_per_netns(keys))
    init = "systemd" if host.is_dir("/run/systemd/system") else "procps"
    runtime = OrderedDict((key, host.read_sysctl(key)) for key in keys)
    return HostState(runtime, (), kernel, layout, tuple(notes), file_text, None, defaults, init)


def plan_absent(state, path):
    """Pure: the Tuning that removes our file and puts each key it set back to what a boot would give it."""
    warnings = list(state.layout_notes)
    if state.file_text is None:
        return Tuning(make_plan({}, {}, same, path, None, None), OrderedDict(), OrderedDict(), {}, (), ())
    named, unmanaged = _named(path, state.file_text)
    warnings.extend(unmanaged)
    without = {p: t for p, t in state.layout.items() if p != path}
    warnings.extend(unusable(without, named.keys()))
    defaults = _defaults(state.defaults, named.keys())
    boot = predict(without, named.keys(), state.init)
    raw = state.runtime
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
    plan = make_plan(before, target, same, path, state.file_text, None, warnings=warnings)
    return Tuning(plan, before, target, without, (), tuple(named))
