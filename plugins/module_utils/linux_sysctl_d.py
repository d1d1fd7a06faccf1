# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""sysctl.d files and the order they are applied in at boot, by systemd-sysctl and by procps.

Pure: a *layout* is a mapping of absolute path -> file text, holding the
``*.conf`` files of the sysctl.d directories and /etc/sysctl.conf.

- systemd-sysctl (sysctl.d(5)): reads /etc/sysctl.d, /run/sysctl.d,
  /usr/local/lib/sysctl.d, /usr/lib/sysctl.d (and /lib/sysctl.d); a file name
  in an earlier directory hides the same name in later ones; all files are
  applied sorted by file name, whatever their directory; the last assignment
  wins.  /etc/sysctl.conf is not read (Debian links it in as
  /etc/sysctl.d/99-sysctl.conf).
- procps ``sysctl --system`` (sysctl(8), procps-ng 4): the same directories
  and rules, then /etc/sysctl.conf last when it is a regular file.

Each value is read the way the kernel reads it (linux_settings.kernel_value):
C-syntax numbers, the rest of the line after a blank ignored, rejected values
not applied.  Keys with glob patterns are not analysed.
"""

from __future__ import annotations

import posixpath
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Optional

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import (
    kernel_value,
    same,
    text_of,
)

SYSCTL_D_DIRS = (
    "/etc/sysctl.d",
    "/run/sysctl.d",
    "/usr/local/lib/sysctl.d",
    "/usr/lib/sysctl.d",
    "/lib/sysctl.d",
)
SYSCTL_CONF = "/etc/sysctl.conf"
# /run is a tmpfs emptied at every boot: a file there does not persist.
PERSIST_DIRS = tuple(d for d in SYSCTL_D_DIRS if not d.startswith("/run/"))
INITS = ("systemd", "procps")
# The first line of every file linux_tcp has written, in this version and every earlier one (the
# header has read the same since the first release; add the old text here if it ever changes): only a
# file starting with one of these is rewritten or removed.
OUR_MARKS = ("# Managed by Ansible: tcpstack.tuning.linux_tcp.",)
# A value longer than this is refused unparsed (LinuxHost reads no file over 1 MiB, so none is this long).
VALUE_MAX = 1 << 20
_SAFE_NAME = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-+@")


@dataclass(frozen=True)
class Assignment:
    """``key = value`` at ``path`` line ``line`` (key in dotted form)."""

    key: str
    value: str
    path: Optional[str]
    line: Optional[int]
    ignore_failure: bool = False

    def where(self):
        return "%s:%d" % (self.path, self.line) if self.path else "kernel default"


def dotted(name):
    """A sysctl name in dotted form: with '/' as the first separator, '/' and '.' swap."""
    for char in name:
        if char == ".":
            return name
        if char == "/":
            return name.translate(str.maketrans("/.", "./"))
    return name


def parse(text, path=None, init="systemd"):
    """The assignments in one sysctl.d file, in file order, as ``init`` reads them.

    ``value`` is the text after '=' (stripped); a systemd line ``-key`` with no
    '=' is returned with value None: it cancels an earlier assignment of key.
    A key written with a glob pattern is left out.
    """
    out = []
    for number, raw in enumerate(text.split("\n"), 1):
        if init == "systemd":
            line = raw.strip(" \t\n\r")
            if not line or line[0] in "#;":
                continue
            if "=" not in line:
                if line.startswith("-") and line[1:].strip():
                    out.append(Assignment(dotted(line[1:].strip(" \t\n\r")), None, path, number, True))
                continue
            name, value = line.split("=", 1)
            ignore = name.startswith("-")
            name = (name[1:] if ignore else name).strip(" \t\n\r")
        else:
            # procps-ng 4: strips blanks before the key but not between '-' and the key,
            # so "- key = v" names a key with a leading blank, which does not exist.
            line = raw.lstrip()
            if len(line) < 2 or line[0] in "#;" or "=" not in line:
                continue
            name, value = line.split("=", 1)
            ignore = name.startswith("-")
            name = (name[1:] if ignore else name).rstrip()
            if name != name.lstrip():
                continue
        if not name or any(char in name for char in "*?["):
            continue
        out.append(Assignment(dotted(name), value.strip(), path, number, ignore))
    return out


def shorten(text, limit=60):
    """``text`` for a message: at most ``limit`` characters, then how long it really is."""
    if len(text) <= limit:
        return text
    return "%s... (%d characters)" % (text[:limit], len(text))


def _kernel_value(key, text, previous):
    """kernel_value(), with a value no kernel accepts refused before it is parsed: (value or None, why refused)."""
    if len(text) > VALUE_MAX:
        return None, "is %d characters long, more than the kernel accepts" % len(text)
    try:
        value = kernel_value(key, text, previous)
    except ValueError:
        value = None
    if value is None and len(text) > 64:
        # a number of 21 characters or more (kernel/sysctl.c, TMPBUFLEN): EINVAL
        return None, "is not a value the kernel accepts (a number of 21 characters or more is EINVAL)"
    return value, None


def applied_files(layout, init="systemd"):
    """Paths of the files ``init`` applies at boot, in order.

    systemd skips hidden files (names starting with '.'); procps does not.
    """
    chosen = OrderedDict()
    for directory in SYSCTL_D_DIRS:
        for path in sorted(layout):
            parent, name = posixpath.split(path)
            if parent != directory or not name.endswith(".conf") or name in chosen:
                continue
            if init == "systemd" and name.startswith("."):
                continue
            chosen[name] = path
    order = [chosen[name] for name in sorted(chosen, key=lambda n: n.encode("utf-8"))]
    if init == "procps" and layout.get(SYSCTL_CONF) is not None:
        order.append(SYSCTL_CONF)
    return order


def predict(layout, keys, init="systemd", defaults=None):
    """The assignment each key in ``keys`` ends with after ``init`` applies the files at boot.

    The returned Assignment's ``value`` is the resulting value in canonical
    form (what the kernel made of the text).  Keys that no file sets, or whose
    every assignment the kernel rejects, are absent.

    - systemd-sysctl keeps only the last assignment of each key (a later one,
      or a ``-key`` line, replaces it) and writes it once: if the kernel rejects
      it, the key keeps its boot value.
    - procps writes every assignment in order: a rejected one leaves the
      previous value.
    """
    wanted = set(keys)
    defaults = defaults or {}
    result = {}
    if init == "systemd":
        pending = OrderedDict()
        for path in applied_files(layout, init):
            for assignment in parse(layout[path] or "", path, init):
                if assignment.key in wanted:
                    pending[assignment.key] = assignment
        for key, assignment in pending.items():
            if assignment.value is None:
                continue
            value = _kernel_value(key, assignment.value, defaults.get(key))[0]
            if value is not None:
                result[key] = replace(assignment, value=value)
        return result
    for path in applied_files(layout, init):
        for assignment in parse(layout[path] or "", path, init):
            if assignment.key not in wanted:
                continue
            previous = result[assignment.key].value if assignment.key in result else defaults.get(assignment.key)
            value = _kernel_value(assignment.key, assignment.value, previous)[0]
            if value is not None:
                result[assignment.key] = replace(assignment, value=value)
    return result


def unusable(layout, keys):
    """Sentences naming each assignment of a key in ``keys`` whose value no kernel can take (too long to be a number).

    Such a value is refused at boot (the key keeps its earlier value), never a reason to fail: the
    run reports it as a warning and goes on.
    """
    wanted = set(keys)
    found = []
    seen = set()
    for init in INITS:
        for path in applied_files(layout, init):
            for assignment in parse(layout[path] or "", path, init):
                if (assignment.key not in wanted or assignment.value is None or len(assignment.value) <= 64
                        or (path, assignment.line) in seen):
                    continue  # a value of 64 characters or fewer is always parsed (kernel_value)
                why = _kernel_value(assignment.key, assignment.value, None)[1]
                if why is not None:
                    seen.add((path, assignment.line))
                    found.append("%s line %d sets %s to %s, which %s: the kernel refuses it at boot"
                                 % (path, assignment.line, assignment.key, shorten(assignment.value), why))
    return found


def boot_values(layout, keys, defaults):
    """For each key, what systemd-sysctl and procps would leave after a boot.

    ``defaults`` maps keys to the kernel default used where no file sets a key.
    Returns {key: {init: {"value", "file", "line"}}}.
    """
    out = OrderedDict()
    predictions = {init: predict(layout, keys, init, defaults) for init in INITS}
    for key in keys:
        out[key] = OrderedDict()
        for init in INITS:
            found = predictions[init].get(key)
            if found is None:
                out[key][init] = {"value": defaults.get(key), "file": None, "line": None}
            else:
                out[key][init] = {"value": found.value, "file": found.path, "line": found.line}
    return out


def hidden_by(layout, path):
    """The file that hides ``path`` at boot (same name in an earlier directory), or None."""
    parent, name = posixpath.split(path)
    for directory in SYSCTL_D_DIRS:
        if directory == parent:
            return None
        other = posixpath.join(directory, name)
        if other in layout:
            return other
    return None


@dataclass(frozen=True)
class Override:
    """At boot, ``init`` would leave ``key`` at ``value`` from ``path``:``line`` instead of ours."""

    key: str
    init: str
    path: Optional[str]
    line: Optional[int]
    value: Optional[str]
    ours: str
    conflicting: bool

    def describe(self):
        where = "%s line %d" % (self.path, self.line) if self.path else "the kernel default"
        verb = "overrides it with" if self.conflicting else "also sets it, to the same value"
        return "%s: at boot %s applies %s after our file, which %s %s (we set %s)" % (
            self.key, "systemd-sysctl" if self.init == "systemd" else "procps sysctl --system",
            where, verb, self.value, self.ours,
        )


def overrides(layout, path, desired):
    """Where a boot would not end with our file's value for a key in ``desired``.

    ``layout`` must already hold our file at ``path`` with the content we write; ``desired`` maps keys
    to their meanings (linux_settings.validate_options()) or canonical text.
    """
    found = []
    for init in INITS:
        predicted = predict(layout, desired.keys(), init)
        for key, ours in desired.items():
            winner = predicted.get(key)
            if winner is not None and winner.path == path:
                continue
            value = winner.value if winner is not None else None
            found.append(Override(
                key, init,
                winner.path if winner is not None else None,
                winner.line if winner is not None else None,
                value, text_of(key, ours),
                conflicting=winner is None or not same(key, value, ours),
            ))
    return found


def check_persist_path(path, option="persist_file"):
    """Refuse anything but a .conf file directly inside a sysctl.d directory read at boot.

    Returns an error text or None.
    """
    valid = "an absolute path to a .conf file directly inside one of %s" % ", ".join(PERSIST_DIRS)
    if not isinstance(path, str) or not path.startswith("/"):
        return valid
    parent, name = posixpath.split(path)
    if parent not in PERSIST_DIRS or posixpath.normpath(path) != path:
        if parent == "/run/sysctl.d":
            return valid + " (/run is emptied at every boot)"
        return valid
    if not name.endswith(".conf") or name == ".conf" or name.startswith(".") or not set(name) <= _SAFE_NAME:
        return valid + "; the file name may use letters, digits and . _ - + @ and must end in .conf"
    return None


def render(desired, header):
    """The content of our persisted file: a header, then one ``key = value`` line per key."""
    lines = ["# %s" % line if line else "#" for line in header.splitlines()]
    lines.extend("%s = %s" % (key, value) for key, value in desired.items())
    return "\n".join(lines) + "\n"


# Kernel modules at boot (modules-load.d(5)): systemd-modules-load.service loads the modules these files list, and
# systemd-sysctl.service runs after it (After=systemd-modules-load.service).  Debian's /etc/modules is linked in as
# /etc/modules-load.d/modules.conf (and loaded by /etc/init.d/kmod without systemd).
MODULES_LOAD_DIRS = ("/etc/modules-load.d", "/run/modules-load.d", "/usr/local/lib/modules-load.d",
                     "/usr/lib/modules-load.d", "/lib/modules-load.d")
MODULES_CONF = "/etc/modules"
# Modules that cannot load without nf_conntrack (their dependency pulls it in).
NEEDS_CONNTRACK = frozenset(("nf_conntrack", "nf_nat", "nf_conntrack_netlink", "xt_conntrack", "xt_nat",
                             "xt_masquerade", "xt_state", "iptable_nat", "ip6table_nat", "nft_ct", "nft_nat",
                             "nft_masq", "nf_nat_ftp", "nf_conntrack_ftp"))
_LOADS = {"nf_conntrack": NEEDS_CONNTRACK}


def loaded_at_boot(layout, module):
    """Whether a modules-load.d file (or /etc/modules) in ``layout`` loads ``module`` or a module that needs it.

    Module names compare with '-' and '_' alike, as modprobe does; a line's first word is the module.
    """
    names = _LOADS.get(module, frozenset((module,)))
    for text in layout.values():
        for line in text.splitlines():
            words = line.split()
            if words and not words[0].startswith(("#", ";")) and words[0].replace("-", "_").lower() in names:
                return True
    return False
