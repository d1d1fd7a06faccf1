# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plan: what would change on a host, as a small value object.

``make_plan(current, desired, same)`` compares by meaning through ``same``;
``make_plan(desired, desired, same)`` is always empty.  Check mode and diff
are "show the plan"; apply code only ever executes a plan.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional, Tuple


class TuningError(Exception):
    """A tuning run must fail (linux_tcp, win_tcp); ``result`` and ``warnings`` carry what is known so far."""

    def __init__(self, message, result=None, warnings=()):
        super().__init__(message)
        self.result = result or {}
        self.warnings = list(warnings)


@dataclass(frozen=True)
class Change:
    """One setting that differs: ``before`` is what the host has, ``after`` what it will have."""

    key: str
    before: Any
    after: Any


@dataclass(frozen=True)
class Plan:
    """Changes per key, plus optional file content change, reboot flag and warnings."""

    changes: Tuple[Change, ...] = ()
    file_path: Optional[str] = None
    file_before: Optional[str] = None
    file_after: Optional[str] = None
    reboot_required: bool = False
    warnings: Tuple[str, ...] = field(default_factory=tuple)

    @property
    def file_changed(self):
        return self.file_path is not None and self.file_before != self.file_after

    @property
    def changed(self):
        return bool(self.changes) or self.file_changed


def diff_values(current: Mapping[str, Any], desired: Mapping[str, Any], same: Callable[[str, Any, Any], bool]):
    """The changes needed to go from ``current`` to ``desired``, in ``desired``'s key order.

    A key absent from ``current`` (unknown before) is always a change.
    """
    changes = []
    for key, after in desired.items():
        before = current.get(key)
        if key in current and same(key, before, after):
            continue
        changes.append(Change(key, before, after))
    return tuple(changes)


def make_plan(current, desired, same, file_path=None, file_before=None, file_after=None,
              reboot_required_keys=(), warnings=()):
    """Build a Plan; ``reboot_required`` is set when a changing key is in ``reboot_required_keys``."""
    changes = diff_values(current, desired, same)
    reboot = any(c.key in reboot_required_keys for c in changes)
    return Plan(
        changes=changes,
        file_path=file_path,
        file_before=file_before,
        file_after=file_after,
        reboot_required=reboot,
        warnings=tuple(warnings),
    )
