# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kinds of value win_tcp manages, as one table: ``KINDS``.

Internal to the collection.  Pure.  A plan key is an instance of a kind, and
the kind says everything the rest of win_tcp needs to know about it:

=========  ===============================================================
plans      ``wanted(desired)``: {key: value} for the task's options
reads      ``read(state)``: the value the host has (the result's ``before``)
applies    ``apply(after)``: the action (``_windows_commands``) that sets it;
           ``order(after)``: its place among the actions
undoes     ``undo(before)``: (action, None), or (None, why it is skipped)
shows      ``label`` and ``show(value)``: the diff's and messages' text
reports    ``report(out, value)``: its place in ``before``/``after``
=========  ===============================================================

plus ``reboot_required`` (Windows reads it at boot), ``reads_excluded`` (its read-back needs the excluded ranges)
and ``note(state, before, after)`` (a warning about it, or None).  Code elsewhere calls these methods and never
asks which kind a key is.  A new kind of option is one class here, added to ``KINDS``, plus its command
(``_windows_commands``) and, if it reads something new, its parser (``_windows_parse``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import PORT_MAX, intersect
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_commands import (
    DWORD_MAX,
    AddExcluded,
    DeleteExcluded,
    DeleteValue,
    SetDword,
    SetRange,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import (
    DEFAULT_RANGE,
    NETSH_MIN_PORTS,
    NETSH_MIN_START,
    REGISTRY_OPTIONS,
    IpVersion,
    Protocol,
    RegName,
    State,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_parse import range_value, reg_value

ABSENT = "(absent)"


@dataclass(frozen=True)
class RegistryValue:
    """A REG_DWORD under Tcpip\\Parameters.  Value: an int, None (absent), or {type, data} (another type, read)."""

    name: RegName

    reboot_required = True
    reads_excluded = False

    @classmethod
    def wanted(cls, desired):
        if desired.state is State.ABSENT:
            return {cls(name): None for name in RegName}
        return {cls(name): getattr(desired, option) for option, name in REGISTRY_OPTIONS
                if getattr(desired, option) is not None}

    @property
    def label(self):
        return self.name.value

    def read(self, state):
        return reg_value(state, self.name)

    def show(self, value):
        if value is None:
            return ABSENT
        if isinstance(value, dict):
            return "%s %r" % (value["type"], value["data"])
        return str(value)

    def report(self, out, value):
        out["registry"][self.name.value] = value

    def order(self, _after):
        return 0

    def apply(self, after):
        return DeleteValue(self.name) if after is None else SetDword(self.name, after)

    def undo(self, before):
        if before is None:
            return DeleteValue(self.name), None
        if type(before) is int and 0 <= before <= DWORD_MAX:  # pylint: disable=unidiomatic-typecheck
            return SetDword(self.name, before), None
        return None, "%s (was %s)" % (self.name.value, self.show(before))

    def note(self, _state, before, after):
        if isinstance(before, dict):
            return ("%s was %s %r, which Windows ignores; it is %s as a REG_DWORD"
                    % (self.name.value, before["type"], before["data"], "removed" if after is None else "rewritten"))
        return None


@dataclass(frozen=True)
class DynamicRange:
    """The dynamic port range of one (ip, protocol).  Value: {start, number, end} (``range_value``)."""

    ip: IpVersion
    protocol: Protocol

    reboot_required = False
    reads_excluded = False

    @classmethod
    def wanted(cls, desired):
        start_number = DEFAULT_RANGE if desired.state is State.ABSENT else desired.port_range
        if start_number is None:
            return {}
        return {cls(ip, proto): range_value(start_number) for ip, proto in desired.targets}

    @property
    def label(self):
        return "%s %s dynamic port range" % (self.ip.value, self.protocol.value)

    def read(self, state):
        return range_value(state.ranges[(self.ip, self.protocol)])

    def show(self, value):
        if value is None:
            return ABSENT
        return "start %d, %d ports (%d-%d)" % (value["start"], value["number"], value["start"], value["end"])

    def report(self, out, value):
        out["dynamic_port_range"].setdefault(self.ip.value, {})[self.protocol.value] = value

    def order(self, _after):
        return 2

    def apply(self, after):
        return SetRange(self.ip, self.protocol, after["start"], after["number"])

    def undo(self, before):
        if before and before["start"] >= NETSH_MIN_START and before["number"] >= NETSH_MIN_PORTS \
                and before["end"] <= PORT_MAX:
            return self.apply(before), None
        return None, "%s (was %s, outside netsh's rules)" % (self.label, self.show(before))

    def note(self, state, _before, after):
        hits = [(a, b) for a, b, _admin in state.excluded.get((self.ip, self.protocol), ())
                if intersect(((a, b),), (after["start"], after["end"]))]
        if not hits:
            return None
        ip, proto = self.ip.value, self.protocol.value
        return ("port_range: excluded port ranges %s (netsh int %s show excludedportrange protocol=%s) overlap "
                "the %s %s dynamic range %d-%d; Windows never hands those ports out"
                % (", ".join("%d-%d" % h for h in hits), ip, proto, ip, proto, after["start"], after["end"]))


@dataclass(frozen=True)
class Exclusion:
    """One managed excluded range low-high of (ip, protocol).  Value: True (the host has it as an administered
    exclusion, listed with ``*``) or False (it has not)."""

    ip: IpVersion
    protocol: Protocol
    low: int
    high: int

    reboot_required = False
    reads_excluded = True

    @classmethod
    def wanted(cls, desired):
        return {key: desired.state is State.PRESENT for key in exclusion_keys(desired)}

    @property
    def text(self):
        return "%d-%d" % (self.low, self.high)

    @property
    def target(self):
        return (self.ip, self.protocol)

    @property
    def label(self):
        return "%s %s excluded port range %s" % (self.ip.value, self.protocol.value, self.text)

    def read(self, state):
        return (self.low, self.high, True) in state.excluded.get(self.target, ())

    def show(self, value):
        return "excluded (administered)" if value else "(not excluded)"

    def report(self, out, value):
        out.setdefault("excluded_ranges", {}).setdefault(self.ip.value, {}).setdefault(
            self.protocol.value, {})[self.text] = value

    def order(self, after):
        return 3 if after else 1  # removed before the ranges change, added after

    def apply(self, after):
        return (AddExcluded if after else DeleteExcluded)(self.ip, self.protocol, self.low, self.high - self.low + 1)

    def undo(self, before):
        return self.apply(before), None

    def note(self, _state, _before, _after):
        return None


def exclusion_keys(desired):
    """The plan keys of the listed excluded ranges, per target, in order."""
    return [Exclusion(ip, proto, low, high) for ip, proto in desired.targets for low, high in desired.excluded_ranges or ()]


# The table, in the order the plan lists its keys.
KINDS = (RegistryValue, DynamicRange, Exclusion)


def desired_values(desired):
    """{plan key: value} of every kind, for validated options (Desired)."""
    out = {}
    for kind in KINDS:
        out.update(kind.wanted(desired))
    return out


def current_values(state, keys):
    """{plan key: what the host has} for ``keys``."""
    return {key: key.read(state) for key in keys}


def nest(values):
    """Plan values -> the result's shape: {"registry": {...}, "dynamic_port_range": {ipv4: {tcp: {...}}}}, and
    with managed exclusions {"excluded_ranges": {ipv4: {tcp: {"50000-50099": true}}}}."""
    out = {"registry": {}, "dynamic_port_range": {}}
    for key, value in values.items():
        key.report(out, value)
    return out


def diff_text(values):
    """Plan values as the diff shows them, one ``key = value`` line each."""
    return "".join("%s = %s\n" % (key.label, key.show(value)) for key, value in values.items())
