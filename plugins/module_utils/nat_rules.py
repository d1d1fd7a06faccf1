# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The host's source-NAT rules and the translated port range they give each egress address (pure).

Two sources, both read by LinuxHost with a fixed argv (linux_host_nat):

- ``nft -j list ruleset``: every native ``masquerade`` and ``snat`` statement, with its ``to :LOW-HIGH`` port
  range and its flags (``fully-random``);
- ``iptables-nft-save -t nat``: the ``-j MASQUERADE --to-ports`` and ``-j SNAT --to-source ADDR:LOW-HIGH``
  rules of iptables-nft, which nft's JSON shows only as an ``xt`` target without their options.

Without a port range the kernel picks translated ports from 1024-65535 (64,512 ports; docs/nat.md).  Both
parsers are one pass over their input and never raise on odd input: what they cannot read becomes a note.
"""

from __future__ import annotations

import ipaddress
import json
from typing import NamedTuple, Optional, Tuple

DEFAULT_RANGE = (1024, 65535)
DEFAULT_CAPACITY = DEFAULT_RANGE[1] - DEFAULT_RANGE[0] + 1  # 64,512
XT_TARGETS = ("MASQUERADE", "SNAT")


class NatRule(NamedTuple):
    """One source-NAT statement: ``kind`` "masquerade" or "snat", the translated ``addresses`` as written
    ("10.0.0.1", "10.0.0.1-10.0.0.4", "10.0.0.0/31"; none for masquerade), the port range or None (the
    kernel's), whether it is fully random, and where it was read ("nftables" or "iptables-nft")."""

    kind: str
    addresses: Tuple[str, ...]
    ports: Optional[Tuple[int, int]]
    fully_random: bool
    source: str


class NatRules(NamedTuple):
    """The rules found, how many iptables-nft targets nft showed without their options, and notes."""

    rules: Tuple[NatRule, ...]
    xt_targets: int
    notes: Tuple[str, ...]


# ---------------------------------------------------------------- nft -j list ruleset
def _nft_ports(port):
    """(LOW, HIGH), None for none, or False for an expression the parser does not read (a map, a set...)."""
    if port is None:
        return None
    if isinstance(port, int) and not isinstance(port, bool):
        return (port, port)
    if isinstance(port, dict) and isinstance(port.get("range"), list) and len(port["range"]) == 2:
        low, high = port["range"]
        if isinstance(low, int) and isinstance(high, int):
            return (low, high)
    return False


def _nft_addresses(addr):
    if addr is None:
        return ()
    if isinstance(addr, str):
        return (addr,)
    if isinstance(addr, dict):
        pair = addr.get("range")
        if isinstance(pair, list) and len(pair) == 2:
            return ("%s-%s" % (pair[0], pair[1]),)
        prefix = addr.get("prefix")
        if isinstance(prefix, dict):
            return ("%s/%s" % (prefix.get("addr"), prefix.get("len")),)
    return ("(an expression)",)


def _nft_statement(kind, body, notes):
    body = body if isinstance(body, dict) else {}
    ports = _nft_ports(body.get("port"))
    if ports is False:
        notes.append("an nftables %s statement maps its ports with an expression this reader does not follow: "
                     "the kernel's range is assumed for it" % kind)
        ports = None
    flags = body.get("flags")
    flags = [flags] if isinstance(flags, str) else flags if isinstance(flags, list) else []
    return NatRule(kind, _nft_addresses(body.get("addr")) if kind == "snat" else (), ports,
                   "fully-random" in flags, "nftables")


def parse_nft_json(text):
    """NatRules from the output of ``nft -j list ruleset``; a note, and no rules, when it is not that JSON."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        return NatRules((), 0, ("nft -j list ruleset printed no JSON (%s)" % str(exc)[:80],))
    items = data.get("nftables") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return NatRules((), 0, ("nft -j list ruleset printed JSON without an nftables list",))
    rules, notes, xt = [], [], 0
    for item in items:
        rule = item.get("rule") if isinstance(item, dict) else None
        expressions = rule.get("expr") if isinstance(rule, dict) else None
        if not isinstance(expressions, list):
            continue
        for expression in expressions:
            if not isinstance(expression, dict):
                continue
            for kind in ("masquerade", "snat"):
                if kind in expression:
                    rules.append(_nft_statement(kind, expression[kind], notes))
            target = expression.get("xt")
            if isinstance(target, dict) and target.get("type") == "target" and target.get("name") in XT_TARGETS:
                xt += 1
    return NatRules(tuple(rules), xt, tuple(dict.fromkeys(notes)))


# ---------------------------------------------------------------- iptables-nft-save -t nat
def _port_pair(text):
    low, dummy, high = text.partition("-")
    try:
        low = int(low)
        high = int(high) if high else low
    except ValueError:
        return None
    return (low, high) if 0 < low <= high <= 65535 else None


def _to_source(text):
    """(addresses, ports) of a ``--to-source`` value: ADDR[-ADDR][:LOW[-HIGH]], IPv6 in brackets."""
    if text.startswith("["):
        address, dummy, rest = text[1:].partition("]")
        return (address,), _port_pair(rest[1:]) if rest.startswith(":") else None
    address, colon, ports = text.partition(":")
    return (address,), _port_pair(ports) if colon else None


def parse_iptables_save(text):
    """NatRules from the output of ``iptables-nft-save -t nat``: its MASQUERADE and SNAT rules."""
    rules = []
    for line in text.splitlines():
        if not line.startswith("-A "):
            continue
        words = line.split()
        target = None
        addresses, ports, fully = (), None, False
        for index, word in enumerate(words):
            value = words[index + 1] if index + 1 < len(words) else ""
            if word == "-j":
                target = value
            elif word == "--to-ports":
                ports = _port_pair(value)
            elif word == "--to-source":
                addresses, ports = _to_source(value)
            elif word == "--random-fully":
                fully = True
        if target in XT_TARGETS:
            rules.append(NatRule(target.lower(), addresses if target == "SNAT" else (), ports, fully, "iptables-nft"))
    return NatRules(tuple(rules), 0, ())


# ---------------------------------------------------------------- capacity
def _holds(written, address):
    """Whether the translated ``address`` is one of those a rule ``written`` ("A", "A-B", "A/N")."""
    try:
        ip = ipaddress.ip_address(address)
        if "/" in written:
            return ip in ipaddress.ip_network(written, strict=False)
        low, dummy, high = written.partition("-")
        first = ipaddress.ip_address(low)
        last = ipaddress.ip_address(high) if high else first
        return first.version == ip.version and first <= ip <= last
    except ValueError:
        return False


def range_size(ports):
    """Ports in a (LOW, HIGH) range; the kernel's 64,512 for None."""
    return DEFAULT_CAPACITY if ports is None else ports[1] - ports[0] + 1


def egress_capacity(rules, address):
    """(capacity, [LOW, HIGH] or None, origin, note or None) of the translated ``address``.

    The rules that may translate to it: the SNAT rules naming it, else every masquerade rule (a masquerade
    takes the outgoing interface's address, which the rule does not name).  Of their ranges the narrowest
    is assumed (where several differ, a note says so).  No such rule: the kernel's 1024-65535.
    """
    named = [rule for rule in rules if rule.kind == "snat" and any(_holds(w, address) for w in rule.addresses)]
    candidates = named or [rule for rule in rules if rule.kind == "masquerade"]
    if not candidates:
        return DEFAULT_CAPACITY, None, "default", ("no masquerade or snat rule was found for %s: the kernel's "
                                                   "range 1024-65535 (64,512 ports) is assumed" % address)
    narrowest = min(candidates, key=lambda rule: (range_size(rule.ports), rule.ports or DEFAULT_RANGE))
    note = None
    if len(set(rule.ports for rule in candidates)) > 1:
        note = ("%d rules with different port ranges may translate to %s: the narrowest is assumed"
                % (len(candidates), address))
    if narrowest.ports is None:
        return DEFAULT_CAPACITY, None, narrowest.source, note
    return range_size(narrowest.ports), list(narrowest.ports), narrowest.source, note
