# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Linux settings model: module options, the sysctl keys they manage, validation, meaning.

Pure: the host-dependent checks take the host's values as arguments.

A value is parsed once into its meaning, by its setting's kind: an ``int``, a ``ports.PortRange``
(``range``) or a port list, a tuple of ``(low, high)`` intervals (``ports``).  ``validate_options()``
gives the desired values in that form; ``value_of()`` reads a host's text into it; ``text_of()``
renders it where text is written (/proc, a sysctl.d file) or shown.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Optional, Tuple

from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import (
    PortRange,
    contains,
    format_port_list,
    normalise_intervals,
    parse_port_list,
    parse_port_range,
    ports_to_intervals,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import (
    ValidationError,
    strict_int,
)

INT_MAX = 2147483647

UNPRIVILEGED_PORT_START = "net.ipv4.ip_unprivileged_port_start"
TIMESTAMPS = "net.ipv4.tcp_timestamps"
TW_REUSE = "net.ipv4.tcp_tw_reuse"
PORT_RANGE = "net.ipv4.ip_local_port_range"
RESERVED_PORTS = "net.ipv4.ip_local_reserved_ports"
MAX_TW_BUCKETS = "net.ipv4.tcp_max_tw_buckets"
CONNTRACK_MAX = "net.netfilter.nf_conntrack_max"
CONNTRACK_TIME_WAIT = "net.netfilter.nf_conntrack_tcp_timeout_time_wait"
# Registered by nf_conntrack for the machine's initial network namespace only (register_net_sysctl(&init_net,
# "net", ...)): where net.netfilter.nf_conntrack_max exists and this does not, the run is in another namespace.
CONNTRACK_MAX_INIT_ONLY = "net.nf_conntrack_max"
# For each global key: a key that exists in the initial network namespace only, telling where a run is.
INITIAL_NETNS_WITNESS = {CONNTRACK_MAX: CONNTRACK_MAX_INIT_ONLY}


@dataclass(frozen=True)
class Setting:
    """One managed sysctl: the single declaration of a linux_tcp option.

    ``kind`` is ``int``, ``range`` or ``ports``.  ``low``/``high`` (or
    ``choices``) are what the option accepts.  ``default`` is the value a new
    network namespace starts with on a current kernel (None where the kernel
    computes it at boot); the module prefers to read the real default from a
    fresh namespace and falls back to this.  ``handler`` is the kernel's proc
    handler for the key, which decides how the kernel reads a number another
    file writes to it (see ``kernel_int_rule``); ``kernel_low`` is the kernel's
    own minimum where it is below the option's.  ``module`` is the kernel module
    that must be loaded for the key to exist (linux_tcp never loads one);
    ``scope`` is ``netns`` (each network namespace has its own value) or
    ``global`` (one value for the machine, which the kernel lets only the
    initial network namespace change).
    """

    option: str
    key: str
    kind: str
    low: int = 0
    high: int = INT_MAX
    choices: Optional[Tuple[int, ...]] = None
    default: Optional[str] = None
    since: Optional[str] = None
    handler: Optional[str] = None
    kernel_low: Optional[int] = None
    module: Optional[str] = None
    scope: str = "netns"


# Apply order matters: reserve ports before the range widens over them, and turn
# timestamps on before tcp_tw_reuse relies on them.
SETTINGS = (
    Setting("timestamps", TIMESTAMPS, "int", choices=(0, 1, 2), default="1", handler="proc_dou8vec_minmax"),
    Setting("fin_timeout", "net.ipv4.tcp_fin_timeout", "int", 1, 86400, default="60", handler="proc_dointvec_jiffies"),
    Setting("reserved_ports", RESERVED_PORTS, "ports", default="", handler="proc_do_large_bitmap"),
    Setting("port_range", PORT_RANGE, "range", default="32768 60999", handler="ipv4_local_port_range"),
    Setting("tw_reuse", TW_REUSE, "int", choices=(0, 1, 2), default="2", handler="proc_dou8vec_minmax"),
    Setting("tw_reuse_delay", "net.ipv4.tcp_tw_reuse_delay", "int", 1, 60000, default="1000", since="6.14",
            handler="proc_douintvec_minmax"),
    Setting("somaxconn", "net.core.somaxconn", "int", 1, INT_MAX, default="4096", handler="proc_dointvec_minmax",
            kernel_low=0),
    Setting("max_syn_backlog", "net.ipv4.tcp_max_syn_backlog", "int", 1, INT_MAX, handler="proc_dointvec"),
    # nf_conntrack's: the table's global ceiling (computed at boot from the memory: no fixed default) and how long
    # an entry in TCP TIME_WAIT stays (per network namespace, 120 s).  0 would remove the ceiling: refused.
    Setting("conntrack_max", CONNTRACK_MAX, "int", 1, INT_MAX, handler="proc_dointvec", module="nf_conntrack",
            scope="global"),
    Setting("conntrack_time_wait", CONNTRACK_TIME_WAIT, "int", 1, 86400, default="120",
            handler="proc_dointvec_jiffies", module="nf_conntrack"),
)
BY_KEY = OrderedDict((s.key, s) for s in SETTINGS)
KEY_ORDER = {s.key: i for i, s in enumerate(SETTINGS)}

# Keys linux_tcp reads around the managed ones, to check them against the host (never written).
CONTEXT_KEYS = (UNPRIVILEGED_PORT_START, TIMESTAMPS, TW_REUSE, PORT_RANGE, RESERVED_PORTS)
# The keys linux_tcp manages plus the context keys it reads: everything a run can read or change.
LINUX_TCP_KEYS = tuple(BY_KEY) + tuple(key for key in CONTEXT_KEYS if key not in BY_KEY)
# What port_usage_info reports under ``settings`` (name, key): every managed TCP key under its option's name,
# then the sysctls that only inform the analysis (nf_conntrack's keys are reported by its ``nat`` section).
REPORTED_SETTINGS = tuple((s.option, s.key) for s in SETTINGS if s.module is None) + (
    ("unprivileged_port_start", UNPRIVILEGED_PORT_START),
    ("max_tw_buckets", MAX_TW_BUCKETS),
)

TW_RECYCLE_REASON = (
    "net.ipv4.tcp_tw_recycle was removed in Linux 4.12 because it broke clients behind NAT; "
    "use tw_reuse: 1 (with tcp_timestamps on) and a wider port_range instead"
)


def value_of(key, value):
    """The meaning of a value of ``key``: an int, a PortRange or a port list (see the module's docstring).

    ``value`` is that meaning already (returned as it is) or text as the kernel prints it or a file sets
    it.  Raises ValueError when the text has no meaning; a key not in SETTINGS gives its words.
    """
    setting = BY_KEY.get(key)
    if setting is None:
        return " ".join(str(value).split())
    if setting.kind == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        words = str(value).split()
        if len(words) != 1 or not words[0].lstrip("-").isdigit() or not words[0].isascii():
            raise ValueError("%s: %r is not an integer" % (key, value))
        return int(words[0])
    typed = PortRange if setting.kind == "range" else tuple
    if isinstance(value, typed):
        return value
    text = value if isinstance(value, str) else str(value)
    try:
        if setting.kind == "range":
            return parse_port_range(" ".join(text.split()), key)
        return parse_port_list(text.strip(), key, lowest=0)
    except ValidationError as exc:
        raise ValueError(str(exc))


def text_of(key, value):
    """The canonical text of ``value`` (a meaning from value_of(), or text that loose() tidies)."""
    setting = BY_KEY.get(key)
    if setting is None or isinstance(value, str):
        return loose(key, value)
    if setting.kind == "int":
        return str(value)
    if setting.kind == "range":
        return value.text()
    return format_port_list(value)


def texts(values):
    """``values`` (key -> meaning) with each value as its canonical text, in the same order."""
    return OrderedDict((key, text_of(key, value)) for key, value in values.items())


def canonical(key, value):
    """The meaning of a sysctl value as a canonical string; raises ValueError when it has none."""
    meaning = value_of(key, value)
    return meaning if BY_KEY.get(key) is None else text_of(key, meaning)


def loose(key, value):
    """Like canonical() but never fails: an unparsable value keeps its words."""
    try:
        return canonical(key, value)
    except ValueError:
        return " ".join(str(value).split())


def same(key, a, b):
    """Whether two values of ``key`` mean the same."""
    if a is None or b is None:
        return a is b
    return loose(key, a) == loose(key, b)


# How the kernel parses what is written to each key (used for values other files
# set, never for our own options): proc_dointvec-style numbers in C syntax (base
# 0: 010 is 8, 0x10 is 16), separated by blanks, the rest of the line ignored.
def kernel_int_rule(setting):
    """(lowest, highest, negative numbers accepted) for an ``int`` setting, from its kernel proc handler."""
    handler = setting.handler
    if handler in ("proc_dou8vec_minmax", "proc_douintvec_minmax"):  # unsigned, the key's own bounds
        if setting.choices is not None:
            return (min(setting.choices), max(setting.choices), False)
        return (setting.low, setting.high, False)
    if handler == "proc_dointvec_minmax":  # signed, the key's own bounds
        return (setting.low if setting.kernel_low is None else setting.kernel_low, setting.high, True)
    if handler == "proc_dointvec_jiffies":  # seconds, stored as jiffies (HZ <= 1000)
        return (-INT_MAX // 1000, INT_MAX // 1000, True)
    if handler == "proc_dointvec":  # any int
        return (-INT_MAX - 1, INT_MAX, True)
    raise ValueError("%s: no rule for the kernel handler %r" % (setting.key, handler))


KERNEL_INT_RULES = {s.key: kernel_int_rule(s) for s in SETTINGS if s.kind == "int"}
KERNEL_DEFAULT_UNPRIVILEGED_PORT_START = 1024
_C_NUMBER = re.compile(r"0[xX][0-9a-fA-F]+|0[0-7]*|[1-9][0-9]*")
_BLANKS = " \t\n\r\v\f"


_KERNEL_NUMBER_CHARS = 21  # kernel/sysctl.c: TMPBUFLEN 22


def _c_number(text, pos):
    """A C-syntax unsigned number at ``pos`` (strtoul base 0): (value, end) or (None, pos)."""
    match = _C_NUMBER.match(text, pos)
    if not match:
        return None, pos
    word = match.group(0)
    if len(word) >= _KERNEL_NUMBER_CHARS:
        # proc_get_long() copies at most TMPBUFLEN - 1 (21) characters and refuses a number that fills them
        return None, pos
    if word[:2] in ("0x", "0X"):
        return int(word, 16), match.end()
    if word.startswith("0"):
        return int(word, 8), match.end()
    return int(word), match.end()


def _kernel_ints(text, count, negative):
    """Up to ``count`` numbers the way proc_dointvec reads them; None when the kernel says EINVAL."""
    buf = text + "\n"
    pos = 0
    out = []
    while len(out) < count:
        while pos < len(buf) and buf[pos] in _BLANKS:
            pos += 1
        if pos >= len(buf):
            break
        neg = buf[pos] == "-"
        if neg:
            if not negative:
                return None
            pos += 1
        value, end = _c_number(buf, pos)
        if value is None or (end < len(buf) and buf[end] not in " \t\n"):
            return None
        out.append(-value if neg else value)
        pos = end
    return out or None


def _kernel_bitmap(text):
    """ip_local_reserved_ports as proc_do_large_bitmap reads it: ports and ranges, commas, no blanks."""
    buf = text + "\n"
    pos = 0
    spans = []
    while pos < len(buf) and buf[pos] != "\n":
        low, pos = _c_number(buf, pos)
        if low is None or low > 65535 or buf[pos] not in "-,\n":
            return None
        high = low
        if buf[pos] == "-":
            high, pos = _c_number(buf, pos + 1)
            if high is None or high > 65535 or high < low or buf[pos] not in ",\n":
                return None
        spans.append((low, high))
        if buf[pos] == ",":
            pos += 1
    return format_port_list(normalise_intervals(spans))


def kernel_value(key, text, previous=None):
    """The value ``key`` holds after writing ``text`` to it, as a canonical string, or None if rejected.

    ``previous`` is the value before the write (writing one number to the port
    range changes only its low end).
    """
    setting = BY_KEY.get(key)
    if setting is None:
        return " ".join(text.split())
    if setting.kind == "range":
        numbers = _kernel_ints(text, 2, True)
        if numbers is None:
            return None
        if len(numbers) == 1:
            base = parse_port_range(" ".join((previous or setting.default).split()))
            numbers = [numbers[0], base[1]]
        low, high = numbers
        if not (1 <= low <= 65535 and 1 <= high <= 65535) or high < low or low < KERNEL_DEFAULT_UNPRIVILEGED_PORT_START:
            return None
        return PortRange(low, high).text()
    if setting.kind == "ports":
        return _kernel_bitmap(text)
    rule = KERNEL_INT_RULES[key]
    numbers = _kernel_ints(text, 1, rule[2])
    if numbers is None or not rule[0] <= numbers[0] <= rule[1]:
        return None
    return str(numbers[0])


def _option_value(setting, value):
    """The meaning of what the user gave for ``setting`` (see value_of()); raises ValidationError."""
    if setting.kind == "range":
        return parse_port_range(value, setting.option)
    if setting.kind == "ports":
        return parse_port_list(value, setting.option)
    if setting.choices is None:
        return strict_int(value, setting.option, setting.low, setting.high)
    valid = "one of %s" % ", ".join(map(str, setting.choices))
    try:
        number = strict_int(value, setting.option, min(setting.choices), max(setting.choices))
    except ValidationError:
        raise ValidationError(setting.option, value, valid)
    if number not in setting.choices:
        raise ValidationError(setting.option, value, valid)
    return number


def validate_options(params):
    """Validate the option values that do not depend on the host.

    ``params`` maps option names to values (None = not managed).  Returns an
    ordered dict key -> meaning (an int, a PortRange or a port list: see value_of())
    for the managed keys, in apply order; texts() gives their canonical text.
    """
    if params.get("tw_recycle") is not None:
        raise ValidationError("tw_recycle", params["tw_recycle"], TW_RECYCLE_REASON)
    desired = OrderedDict()
    for setting in SETTINGS:
        value = params.get(setting.option)
        if value is not None:
            desired[setting.key] = _option_value(setting, value)
    return desired


def _parity_warning(port_range):
    low, high = port_range
    if low % 2 == high % 2:
        return (
            "port_range %d-%d: low and high have the same parity; the kernel prefers different parity "
            "(since Linux 4.6 connect() takes even ports first and bind() odd ones), e.g. %d-%d"
            % (low, high, low, high + 1 if high < 65535 else high - 1)
        )
    return None


def _missing_module_key(setting, value, loaded):
    """The refusal of a key whose kernel module (nf_conntrack) is not loaded, or is loaded but not shown here."""
    if setting.module not in loaded:
        return ValidationError(
            setting.option, value,
            "a value for %s, which exists only while the kernel module %s is loaded, and it is not loaded on this "
            "host (/sys/module/%s is absent). linux_tcp never loads kernel modules: load it yourself (modprobe %s; "
            "list it in /etc/modules-load.d/ so that it is loaded at boot before systemd-sysctl runs), or leave "
            "%s unset. Nothing was changed" % (setting.key, setting.module, setting.module, setting.module,
                                               setting.option))
    return ValidationError(
        setting.option, value,
        "a value for %s, which this network namespace does not show although %s is loaded. Nothing was changed"
        % (setting.key, setting.module))


def _check_keys_exist(desired, missing_keys, kernel, loaded=()):
    """Refuse a managed key the running kernel does not have: its module is not loaded, or the release is older."""
    for key in desired:
        if key in missing_keys:
            setting = BY_KEY[key]
            if setting.module is not None:
                raise _missing_module_key(setting, text_of(key, desired[key]), loaded)
            since = " (it was added in Linux %s)" % setting.since if setting.since else ""
            raise ValidationError(
                setting.option, text_of(key, desired[key]),
                "this kernel%s has no %s%s" % (" (%s)" % kernel if kernel else "", key, since),
            )


def check_global_keys(desired, current, initial_netns, warnings):
    """Global keys asked for outside the machine's initial network namespace: refused, or dropped when unchanged.

    ``initial_netns`` is False when the run is known to be in another network namespace (a container,
    ``ip netns exec``), where the kernel refuses to change a global key even to root; None when unknown.
    A value the key already has is nothing to change: it is left out (not written, not persisted, since a
    boot of the container could not apply it either) with a warning.  Returns ``desired`` without those keys.
    """
    if initial_netns is not False:
        return desired
    kept = OrderedDict()
    for key, value in desired.items():
        setting = BY_KEY.get(key)
        if setting is None or setting.scope != "global":
            kept[key] = value
        elif same(key, current.get(key), value):
            warnings.append(
                "%s: %s is already the value of %s, which is global to the machine; from inside this network "
                "namespace it is neither written nor persisted (set it on the host)" % (setting.option, text_of(
                    key, value), key))
        else:
            raise ValidationError(
                setting.option, text_of(key, value),
                "only the machine's current value (%s) here: %s is global to the machine, and this run is "
                "inside a network namespace that is not the machine's initial one (a container or ip netns exec), "
                "where the kernel refuses to change it even to root. Set it on the host itself. Nothing was changed"
                % (current.get(key), key))
    return kept


def _check_port_range(port_range, current, warnings):
    """The low port against ip_unprivileged_port_start (refused below it), and the parity advice."""
    start = current.get(UNPRIVILEGED_PORT_START)
    if start is not None and port_range.low < int(start):
        raise ValidationError(
            "port_range", port_range.text(),
            "the low port must be at least %s (%s) on this host" % (UNPRIVILEGED_PORT_START, start),
        )
    parity = _parity_warning(port_range)
    if parity:
        warnings.append(parity)


def _check_tw_reuse(desired, current, warnings):
    """tcp_tw_reuse 1 does nothing without TCP timestamps: refused when we set it, a warning otherwise."""
    stamps = desired.get(TIMESTAMPS, current.get(TIMESTAMPS))
    reuse = desired.get(TW_REUSE, current.get(TW_REUSE))
    if reuse is not None and stamps is not None and int(reuse) == 1 and int(stamps) == 0:
        if TW_REUSE in desired:
            raise ValidationError(
                "tw_reuse", 1,
                "tcp_tw_reuse 1 needs TCP timestamps, and net.ipv4.tcp_timestamps is 0: reuse would silently do "
                "nothing; also set timestamps: 1",
            )
        warnings.append("timestamps: 0 with tcp_tw_reuse at 1 makes TIME_WAIT reuse inactive")


def _check_listeners(desired, port_range, current, listening_ports, reserve_listening, warnings):
    """Listening ports inside the ephemeral range and not reserved: reserved (into ``desired``) or warned about."""
    if RESERVED_PORTS in desired:
        reserved = desired[RESERVED_PORTS]
    else:  # the host's own list, as the kernel prints it (port 0 included)
        reserved = parse_port_list(current.get(RESERVED_PORTS, ""), RESERVED_PORTS, lowest=0)
    exposed = sorted(p for p in set(listening_ports) if port_range.low <= p <= port_range.high
                     and not contains(reserved, p))
    if reserve_listening:
        desired[RESERVED_PORTS] = normalise_intervals(reserved + ports_to_intervals(exposed))
    elif exposed:
        warnings.append(
            "TCP ports listening now inside the ephemeral range %d-%d and not reserved: %s; an outgoing "
            "connection can take one while its service restarts. Add them to reserved_ports or set "
            "reserve_listening_ports: true" % (port_range.low, port_range.high, ", ".join(map(str, exposed)))
        )


def validate_for_host(desired, current, missing_keys, listening_ports=(), reserve_listening=False, kernel="",
                      loaded=(), initial_netns=None):
    """Checks that depend on the host; returns (desired, warnings), desired possibly extended (or reduced).

    ``desired`` maps keys to meanings (validate_options()); ``current`` maps
    keys to the host's runtime text (including ip_unprivileged_port_start and
    tcp_timestamps when readable); ``missing_keys`` are managed keys the
    running kernel does not have; ``listening_ports`` are the TCP ports with a
    listener now; ``loaded`` the kernel modules of SETTINGS' ``module`` that are
    loaded; ``initial_netns`` see check_global_keys().
    """
    warnings = []
    _check_keys_exist(desired, missing_keys, kernel, loaded)
    desired = check_global_keys(OrderedDict(desired), current, initial_netns, warnings)
    if desired.get(CONNTRACK_TIME_WAIT, 60) < 60:
        warnings.append(
            "conntrack_time_wait %d s is shorter than the 60 s the endpoints keep a closed connection in TIME_WAIT: a "
            "new flow can get the same translated port to the same destination while the server still holds the old "
            "connection, and its SYN may need a retransmission" % desired[CONNTRACK_TIME_WAIT])
    if PORT_RANGE in desired:
        _check_port_range(desired[PORT_RANGE], current, warnings)
    _check_tw_reuse(desired, current, warnings)
    effective_range = desired.get(PORT_RANGE, current.get(PORT_RANGE))
    if effective_range is not None and listening_ports:
        if not isinstance(effective_range, PortRange):  # the host's, as the kernel prints it
            effective_range = parse_port_range(effective_range)
        _check_listeners(desired, effective_range, current, listening_ports, reserve_listening, warnings)
    elif reserve_listening and RESERVED_PORTS not in desired:
        try:
            desired[RESERVED_PORTS] = value_of(RESERVED_PORTS, current.get(RESERVED_PORTS, ""))
        except ValueError:
            desired[RESERVED_PORTS] = loose(RESERVED_PORTS, current.get(RESERVED_PORTS, ""))
    return sort_keys(desired), warnings


def sort_keys(values):
    """An ordered dict of ``values`` in apply order (unknown keys last, by name)."""
    return OrderedDict(sorted(values.items(), key=lambda kv: (KEY_ORDER.get(kv[0], len(KEY_ORDER)), kv[0])))
