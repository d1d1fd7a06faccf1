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
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_nat import (
    TOP_SOURCES,
    read_counters,
    read_flows,
    read_nat,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_processes import ProcessTable
from ansible_collections.tcpstack.tuning.plugins.module_utils.nat_findings import live_only, nat_section
from ansible_collections.tcpstack.tuning.plugins.module_utils.nat_rules import (
    NatRules,
    parse_iptables_save,
    parse_nft_json,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.nat_sources import (
    MAX_NAMESPACES,
    annotate,
    parse_fib_trie,
    parse_if_inet6,
    sockets_to,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_rules import SEVERITY, worst
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import clean_text


def _at_start(host, read):
    """``read(host)`` at the start of a sample, or None (no conntrack, not root, not the live host)."""
    if not host.live or not host.conntrack_loaded():
        return None
    try:
        return read(host)
    except ConntrackError:
        return None


def counters_before(host):
    """The conntrack counters at the start of a sample, or None (no conntrack, not root, not the live host)."""
    return _at_start(host, read_counters)


def flows_before(host):
    """The source-NATed flows at the start of a sample (linux_nat.read_flows), or None (no conntrack, not root,
    too many to remember): the new flows of the sample are those not among them."""
    return _at_start(host, read_flows)


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


def _namespaces(host, own, limit=MAX_NAMESPACES):
    """{network namespace: [its pids, lowest first]} of the processes in another namespace than ``own``."""
    out = {}
    for pid in sorted(host.pids()):
        try:
            netns = host.net_namespace(pid)
        except OSError:
            continue  # gone, a kernel thread, unreadable
        if netns != own and (netns in out or len(out) < limit):
            out.setdefault(netns, []).append(pid)
    return out


def _net_text(host, pid, name):
    try:
        with host.process_dir(pid) as proc:
            return proc.read_net(name).decode("ascii", "replace")
    except (OSError, ValueError):
        return ""


def _owners(host, processes, netns, pids, destinations):
    """{(netns, local address, address, port): [(pid, name, sockets)], most sockets first} of the sockets of
    namespace ``netns`` whose remote end is one of ``destinations``, by the fd tables of its processes ``pids``."""
    inodes = {}
    for name in ("tcp", "tcp6"):
        for key, found in sockets_to(_net_text(host, pids[0], name), destinations).items():
            inodes.setdefault(key, []).extend(found)
    if not inodes:
        return {}
    processes.scan(pids)
    out = {}
    for key, found in inodes.items():
        counts = {}
        for inode in found:
            pid = processes.owner(inode)
            if pid is not None:
                counts[pid] = counts.get(pid, 0) + 1
        ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
        out[(netns,) + key] = [(pid, processes.describe(pid).get("name"), count) for pid, count in ranked]
    return out


def who_is_behind(host, processes):
    """The nat_section ``who`` callable: the sources that are addresses of this host's own network namespaces
    (containers, pod sandboxes) get their namespace; with ``processes`` (a ProcessTable: attribution on) the
    processes of that namespace with sockets to the egress's destination."""
    def who(egress):
        wanted = set(source["address"] for entry in egress for source in entry["sources"])
        if not wanted:
            return
        table = processes
        found, members = {}, {}
        for netns, pids in _namespaces(host, host.net_namespace()).items():
            addresses = parse_fib_trie(_net_text(host, pids[0], "fib_trie"))
            addresses |= parse_if_inet6(_net_text(host, pids[0], "if_inet6"))
            for address in addresses & wanted:
                table = ProcessTable(host) if table is None else table
                who_is = table.identify(pids[0]) or {}
                found[address] = dict(who_is, netns=netns, pid=pids[0])
                members[netns] = pids
        owners = None
        if processes is not None:
            owners = {}
            destinations = set((entry["destination"], entry["port"]) for entry in egress)
            for netns, pids in members.items():
                owners.update(_owners(host, processes, netns, pids, destinations))
        annotate(egress, found, owners)
    return who


def nat_part(host, before, seconds, top, warning, critical, processes=None, flows=None):
    """(the nat section, [(severity, sentence)]), or (None, []) on a host that does not source-NAT.
    ``processes``: the ProcessTable of the audit when attribution is on (the sources' processes are named);
    ``flows``: flows_before() at the start of the sample (the new flows per second)."""
    if not host.live or not host.conntrack_loaded():
        return None, []  # no conntrack, no source NAT: nothing is run, no module is loaded
    release = host.kernel_release()
    reading, notes = None, []
    try:
        reading = read_nat(host, top=max(int(top), 1), top_sources=TOP_SOURCES, live=live_only(release),
                           known=flows if seconds else None)
    except ConntrackError as exc:
        notes.append(clean_text("the conntrack table could not be read: %s" % exc))
    snat = reading is not None and reading.snat_entries > 0
    rules = read_rules(host)
    if not snat and not rules.rules and not rules.xt_targets:
        return None, []
    notes.extend(rules.notes)
    return nat_section(reading, rules, before, seconds, release, top, warning, critical, notes,
                       who=who_is_behind(host, processes))


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
