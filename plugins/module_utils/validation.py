# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Validation errors and strict scalar parsing shared by every module and action plugin.

Pure functions only: nothing here touches a host.
"""

from __future__ import annotations

import re

_ASCII_INT = re.compile(r"\A[ \t]*([+]?[0-9]+)[ \t]*\Z")  # linear: each backtrack step fails at once
TEXT_MAX = 4096  # characters: a longer string is no integer we accept, and is refused unparsed


class ValidationError(ValueError):
    """A user-supplied value is not valid.

    The message always names the option, the bad value and what is valid, so
    that it can be shown to the user as it is.
    """

    def __init__(self, option, value, valid):
        self.option = option
        self.value = value
        self.valid = valid
        super().__init__("%s: %s is not valid: %s" % (option, show(value), valid))


SHOW_MAX = 200  # characters of a value shown in an error message


def show(value):
    """Render a user value for an error message, unambiguously, on one line and at most about SHOW_MAX characters.

    A longer rendering keeps its start and says how long the value is.
    """
    text = repr(value)
    if len(text) <= SHOW_MAX:
        return text
    size = " (%d characters)" % len(value) if isinstance(value, (str, bytes)) else ""
    return "%s...%s" % (text[:SHOW_MAX - 20], size)


def strict_int(value, option, low, high, what="an integer"):
    """Return ``value`` as an int in [low, high] or raise ValidationError.

    Accepts Python ints (not bools) and strings of ASCII digits with optional
    surrounding spaces or tabs.  Rejects floats, non-ASCII digits, signs other
    than a leading '+', strings over TEXT_MAX characters, and anything else;
    a string of more digits than ``high`` has is refused before int() sees it.
    """
    valid = "%s from %d to %d" % (what, low, high)
    if isinstance(value, bool):
        raise ValidationError(option, value, valid)
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        match = _ASCII_INT.match(value) if len(value) <= TEXT_MAX else None
        if not match:
            raise ValidationError(option, value, valid)
        digits = match.group(1).lstrip("+").lstrip("0") or "0"
        if len(digits) > len(str(max(abs(low), abs(high)))):  # out of range, and int() refuses over 4,300 digits
            raise ValidationError(option, value, valid)
        number = int(digits)
    else:
        raise ValidationError(option, value, valid)
    if not low <= number <= high:
        raise ValidationError(option, value, valid)
    return number


_TRUE = frozenset(("yes", "on", "1", "true", "y", "t"))
_FALSE = frozenset(("no", "off", "0", "false", "n", "f"))


def strict_bool(value, option):
    """Return ``value`` as a bool, accepting what Ansible's ``type: bool`` accepts; else raise ValidationError."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ValidationError(option, value, "a boolean: true or false (also yes/no, on/off, 1/0)")


PATH_MAX = 1024  # characters of a path accepted: it goes into a systemd unit's command line


def absolute_path(value, option, what="an absolute path", empty_ok=False):
    """``value`` as a plain absolute path without a trailing "/", else ValidationError(option, value, what).

    Plain, because it is written into a systemd unit's command line and must name one place as it is: a
    string of at most PATH_MAX characters that starts with "/" and is not "/" itself, without control
    characters, whitespace, ``%`` (a systemd specifier), backslashes, ``//`` or ``.``/``..`` parts.
    With ``empty_ok``, "" or None (no path) gives "".
    """
    if empty_ok and value in ("", None):
        return ""
    if (not isinstance(value, str) or not value.startswith("/") or len(value) > PATH_MAX or value == "/"
            or any(ord(c) < 32 or ord(c) == 127 or c in "%\\" or c.isspace() for c in value)
            or "/../" in value + "/" or "/./" in value + "/" or "//" in value):
        raise ValidationError(option, value, what)
    return value.rstrip("/")
