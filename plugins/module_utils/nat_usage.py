# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""port_usage_info's ``nat`` section: read the host's conntrack table and NAT rules (through LinuxHost),
judge them (nat_findings) and merge the section, its findings and its verdict into the module's result.

The section is present only on a host that source-NATs: conntrack is loaded (/sys/module/nf_conntrack) and its
table holds at least one source-NATed entry, or its nftables or iptables-nft ruleset has a masquerade or snat
rule.  On any other host (no conntrack,
no NAT rule, not root) nothing is added and nothing fails.
"""

from __future__ import annotations

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_conntrack import ConntrackError
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_nat import TOP_SOURCES, read_counters, read_nat
from ansible_collections.tcpstack.tuning.plugins.module_utils.nat_findings import live_only, nat_section
from ansible_collections.tcpstack.tuning.plugins.module_utils.nat_rules import (
    NatRules,
    parse_iptables_save,
    parse_nft_json,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_rules import SEVERITY, worst
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import clean_text


def counters_before(host):
    """The conntrack counters at the start of a sample, or None (no conntrack, not root, not the live host)."""
    if not host.live or not host.conntrack_loaded():
        return None
    try:
        return read_counters(host)
    except ConntrackError:
        return None


def read_rules(host):
    """The host's NatRules: nft's JSON, and iptables-nft's nat table where nft shows its targets without their
    options (or where nft is absent).  Notes say what could not be read."""
    notes = []
    text, why = host.nft_ruleset()
    rules = parse_nft_json(text) if text is not None else NatRules((), 0, ())
    if why:
        notes.append("the nftables ruleset could not be read (%s): the translated port ranges are unknown" % why)
    found = list(rules.rules)
    notes.extend(rules.notes)
    if rules.xt_targets or text is None:
        saved, why_not = host.iptables_nat_rules()
        if saved is not None:
            found.extend(parse_iptables_save(saved).rules)
        elif rules.xt_targets:
            notes.append("%d iptables-nft MASQUERADE/SNAT rules could not be read (%s): their port ranges are "
                         "unknown" % (rules.xt_targets, why_not))
    return NatRules(tuple(found), rules.xt_targets, tuple(clean_text(note) for note in notes))


def nat_part(host, before, seconds, top, warning, critical):
    """(the nat section, [(severity, sentence)]), or (None, []) on a host that does not source-NAT."""
    if not host.live or not host.conntrack_loaded():
        return None, []  # no conntrack, no source NAT: nothing is run, no module is loaded
    release = host.kernel_release()
    reading, notes = None, []
    try:
        reading = read_nat(host, top=max(int(top), 1), top_sources=TOP_SOURCES, live=live_only(release))
    except ConntrackError as exc:
        notes.append(clean_text("the conntrack table could not be read: %s" % exc))
    snat = reading is not None and reading.snat_entries > 0
    rules = read_rules(host)
    if not snat and not rules.rules and not rules.xt_targets:
        return None, []
    notes.extend(rules.notes)
    return nat_section(reading, rules, before, seconds, release, top, warning, critical, notes)


def merge(result, section, findings):
    """Add the nat section to the module's ``result``: its findings join the host's (the most severe first) and
    its verdict counts in the host's verdict."""
    if section is None:
        return result
    result["nat"] = section
    before = result.get("verdict", "ok")
    head = [text for severity, text in findings if SEVERITY[severity] >= SEVERITY[before] and severity != "ok"]
    tail = [text for severity, text in findings if SEVERITY[severity] < SEVERITY[before] and severity != "ok"]
    result["findings"] = head + list(result.get("findings", [])) + tail
    result["verdict"] = worst([before] + [severity for severity, dummy in findings])
    return result
