"""The metric names a PromQL expression reads, and those a Prometheus text exposition contains.

Used by the tests of the port_monitor role's dashboard and alert rules (every name they query must be in a real
scrape).  A small lexer, not a PromQL parser: it drops strings, label matchers ``{...}``, range and subquery
selectors ``[...]``, Grafana variables (``$name``, ``${name}``), the label lists of ``by``/``without``/``on``/
``ignoring``/``group_left``/``group_right``, keywords, numbers and function names (an identifier followed by
``(``); what remains are metric names.  Standard library only.
"""

from __future__ import annotations

import re

KEYWORDS = frozenset(("and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
                      "offset", "atan2", "inf", "nan"))
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_VARIABLE = re.compile(r"\$\{[^}]*\}|\$\w+")
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGES = re.compile(r"\[[^\[\]]*\]")
_LABEL_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)", re.I)
_IDENTIFIER = re.compile(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?")


def metric_names(expr):
    """The set of metric names ``expr`` selects."""
    text = _STRING.sub(" ", expr)
    text = _VARIABLE.sub(" ", text)
    text = _MATCHERS.sub(" ", text)
    text = _RANGES.sub(" ", text)
    text = _LABEL_LISTS.sub(" ", text)
    names = set()
    for match in _IDENTIFIER.finditer(text):
        name, call = match.group(1), match.group(2)
        if call or name.lower() in KEYWORDS:
            continue
        names.add(name)
    return names


def exposed_names(text):
    """The metric names with at least one sample in a text exposition (a /metrics page or a .prom file)."""
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            names.add(re.split(r"[{\s]", line, maxsplit=1)[0])
    return names


def samples(text, name):
    """[(labels dict, value)] of metric ``name`` in a text exposition."""
    out = []
    pattern = re.compile(r"^%s(?:\{(.*)\})?\s+(\S+)" % re.escape(name))
    for line in text.splitlines():
        match = pattern.match(line)
        if match:
            labels = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(1) or ""))
            out.append((labels, float(match.group(2))))
    return out
