#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: port_usage_info
short_description: Tell whether a Linux host is running out of ephemeral ports, and towards which destination
version_added: "0.1.0"
description:
  - Reads the host's real TCP socket table and kernel counters and answers "are we running out of ephemeral ports,
    and towards what?", with a verdict, findings in plain sentences and the M(tcpstack.tuning.linux_tcp) options
    that would fix what was found.
  - Changes nothing. Runs the same in check mode.
  - The socket table is read with a netlink C(sock_diag) dump (what C(ss) uses), or from C(/proc/net/tcp) and
    C(/proc/net/tcp6) where netlink is refused. Root is not needed; what could not be read is listed in
    RV(unreadable) instead of failing.
  - Fast enough for a fleet during an incident. See C(docs/port_usage_info.md) for the measured cost on a host
    with 100,000 sockets in TIME_WAIT.
  - "B(The limit is per tuple.) C(connect()) may give the same local port to connections towards different
    destinations, so ports run out per (local address, remote address, remote port). A destination's utilisation
    is the ports held on its busiest tuple divided by the usable ephemeral ports (the range minus the reserved
    ports in it), never a count against 65535."
  - "B(Verdict.) V(critical) when a tuple holds at least O(critical_percent) of the usable ports (or none is
    usable), V(warning) at O(warning_percent) or for other findings (tcp_tw_reuse inactive, counters rising,
    TIME_WAIT near tcp_max_tw_buckets), V(ok) otherwise."
  - Only sockets whose local port is inside the ephemeral range, not reserved and not a listening port are counted
    as ephemeral; a socket bound to an explicit port outside the range is not.
author:
  - tcpstack.tuning contributors (@tcpstack)
options:
  top:
    description:
      - How many destinations to report in RV(destinations), from 1 to 1000.
    type: int
    default: 10
  sample_seconds:
    description:
      - When above 0, read the counters twice this many seconds apart (at most 60) and report their rates,
        among them the measured rate of new outgoing connections (C(ActiveOpens)). Counters that rise during
        the sample (C(ListenOverflows), C(ListenDrops), C(TCPTimeWaitOverflow), C(AttemptFails)) are findings.
      - With O(attribution), the same seconds follow each new connection to its process (see there), through the
        kernel's tracepoints where tracefs can be used (mounted, or mounted by root in the module's own mount
        namespace), else by polling the socket table every 10 ms (C(method) in RV(attribution)).
      - V(0) reads everything once.
    type: float
    default: 0
  attribution:
    description:
      - "Name the processes that hold the ephemeral ports (RV(processes)): pid, name, command line, user, systemd
        unit, cgroup and container id, the ports each holds towards each destination, ESTABLISHED and
        TIME_WAIT, and with O(sample_seconds) above 0 each one's rate of new connections; find the clients that
        should pool their connections or that bind before they connect (RV(client_findings)), and say which
        cure applies (RV(cure))."
      - "How: the socket table is read over netlink (each socket's inode and cookie) and each inode is looked
        up in C(/proc/PID/fd) of the processes in the module's network namespace, as C(ss -p) does. During
        O(sample_seconds) the live sockets are dumped every 10 ms and each new one is given its process; a
        TIME_WAIT socket keeps the cookie it had while alive, and the milliseconds left of its 60 s tell
        whether it closed during the sample. So a client whose connections live under 10 ms is counted by
        the TIME_WAIT it leaves, and named where a dump caught one of its connections alive; what no dump
        caught is shared among the processes seen opening connections to the same destination (C(inferred)
        counts), never given to a process that was not."
      - Without root, the fd tables of other users' processes cannot be read. The module still succeeds,
        attributes what it can (its own user's processes) and lists the rest in RV(unreadable).
      - Needs netlink; where the table is read from C(/proc/net/tcp) instead nothing is attributed (a note says
        so). V(false) skips it, and the cost of the audit is then the table's alone.
    type: bool
    default: true
  warning_percent:
    description:
      - Utilisation of one tuple, in percent of the usable ports, from which the verdict is V(warning).
    type: int
    default: 70
  critical_percent:
    description:
      - Utilisation of one tuple, in percent of the usable ports, from which the verdict is V(critical).
        Must not be below O(warning_percent).
    type: int
    default: 90
extends_documentation_fragment:
  - tcpstack.tuning.info
attributes:
  platform:
    platforms: linux
    description: Linux, with /proc mounted. Needs no root.
notes:
  - The socket table, counters and sysctls belong to the network namespace the module runs in.
  - "How long a closed port stays unusable: 60 seconds of TIME_WAIT (fixed on Linux), or C(tcp_tw_reuse_delay)
    (1 second before Linux 6.14) where reuse applies, that is with C(tcp_tw_reuse=1) and TCP timestamps on, or
    C(tcp_tw_reuse=2) (the default) towards loopback addresses. Where reuse applies, ports in TIME_WAIT do not
    count against the destination (C(blocking) in RV(destinations))."
  - IPv4-mapped IPv6 connections (C(::ffff:a.b.c.d)) are counted with their IPv4 destination.
  - RV(processes) holds the command lines of the top processes (up to 512 characters each, control characters
    replaced), as C(/proc/PID/cmdline) shows them. A secret passed to a program as an argument shows there too;
    use C(no_log) on the task or O(attribution=false) where that matters.
seealso:
  - module: tcpstack.tuning.linux_tcp
    description: Applies the recommended settings.
"""

EXAMPLES = r"""
- name: Are we running out of ephemeral ports, and towards what?
  tcpstack.tuning.port_usage_info:
  register: ports

- name: Show the verdict
  ansible.builtin.debug:
    msg: "{{ ports.verdict }}: {{ ports.findings }}"

- name: Measure the rate of new connections over 5 seconds as well
  tcpstack.tuning.port_usage_info:
    sample_seconds: 5
    top: 3
  register: ports

- name: Apply what it recommends
  tcpstack.tuning.linux_tcp: "{{ ports.recommendations }}"
  when: ports.verdict == 'critical'

- name: Who burns the ports? Sample 5 seconds and name the clients to fix
  tcpstack.tuning.port_usage_info:
    sample_seconds: 5
  register: ports

- name: Show the top churner and which cure applies
  ansible.builtin.debug:
    msg: "{{ ports.top_churner }} -- {{ ports.cure.summary }}"
"""

RETURN = r"""
settings:
  description:
    - The sysctls that decide how many ports there are and how fast they come back, named as the options of
      M(tcpstack.tuning.linux_tcp) where it has one. C(null) where the kernel lacks the key
      (C(tw_reuse_delay) before Linux 6.14).
  returned: always
  type: dict
  sample: {"timestamps": 1, "fin_timeout": 60, "reserved_ports": "", "port_range": "32768 60999", "tw_reuse": 2,
           "tw_reuse_delay": 1000, "somaxconn": 4096, "max_syn_backlog": 512, "unprivileged_port_start": 1024,
           "max_tw_buckets": 131072}
ephemeral:
  description:
    - The ephemeral range C([LOW, HIGH]), its size, the reserved ports (kernel syntax), how many of them lie
      inside the range, and the usable ports (size minus reserved inside).
  returned: always
  type: dict
  sample: {"range": [32768, 60999], "size": 28232, "reserved": "", "reserved_in_range": 0, "usable": 28232}
sockets:
  description:
    - TCP sockets by state, IPv4 and IPv6 together (C(by_state)) and per family. IPv4-mapped IPv6 sockets are
      IPv6 sockets here. C(null) when the socket table could not be read.
  returned: always
  type: dict
  sample: {"total": 1003, "by_state": {"ESTABLISHED": 2, "TIME_WAIT": 1000, "LISTEN": 1},
           "ipv4": {"ESTABLISHED": 2, "TIME_WAIT": 1000, "LISTEN": 1}, "ipv6": {}}
ports_held:
  description: Ephemeral ports held by sockets of this host, all destinations together.
  returned: always
  type: int
  sample: 1002
destinations:
  description:
    - The O(top) remote endpoints ranked by the ports blocked on their busiest (local address, remote address,
      remote port) tuple, then by the ports held.
    - C(in_use) and C(time_wait) count every local address; C(busiest_*) are those of the busiest tuple;
      C(blocking) is what C(connect()) cannot take there (ports in TIME_WAIT are free when C(reuse) applies);
      C(utilisation) is C(blocking) / usable ports (C(null) when no port is usable).
    - C(time_wait_entered_per_second) the new connections per second towards it that left a TIME_WAIT on this
      host over the last 10 s, on its busiest tuple for them, read from the TIME_WAIT timers of the final dump
      (no sample needed); C(projected_utilisation) what that rate holds in steady state (rate x the seconds a
      closed port stays held) over the usable ports. Both C(null) where the timers were not read.
    - With O(attribution), C(processes) lists up to 5 processes holding ports towards it (C(pid), C(name),
      C(in_use), C(time_wait), C(new_connections_per_second)), among those in RV(processes).
  returned: always
  type: list
  elements: dict
  sample: [{"endpoint": "198.51.100.2:8080", "address": "198.51.100.2", "port": 8080, "family": "ipv4",
            "in_use": 1000, "time_wait": 998, "local_addresses": 1, "busiest_local_address": "192.0.2.1",
            "busiest_in_use": 1000, "busiest_time_wait": 998, "reuse": false, "blocking": 1000, "utilisation": 1.0}]
counters:
  description:
    - C(values) from C(/proc/net/netstat) (TcpExt C(TW), C(TWRecycled), C(TWKilled), C(TCPTimeWaitOverflow),
      C(ListenOverflows), C(ListenDrops)) and C(/proc/net/snmp) (Tcp C(ActiveOpens), C(PassiveOpens),
      C(AttemptFails), C(EstabResets), C(CurrEstab)), where the kernel counts them.
    - C(sample) with O(sample_seconds) above 0, the seconds measured and for each counter
      C(before), C(after), C(delta) and C(per_second); else C(null).
  returned: always
  type: dict
  sample: {"values": {"TW": 1234, "ListenOverflows": 0, "ActiveOpens": 5000, "AttemptFails": 3}, "sample": null}
capacity:
  description:
    - The sustainable rate of new connections to one destination tuple, C(usable_ports) / C(port_hold_seconds),
      for C(remote) and C(loopback) destinations (they differ with C(tcp_tw_reuse=2)).
    - The sustainable rate holds for connections that leave a TIME_WAIT on this host (this end closes first);
      a connection whose peer closes first frees its port at once. C(time_wait_entered_per_second) is the rate of
      those connections, all destinations together, over the last C(time_wait_recent_seconds) (10), read from the
      TIME_WAIT timers of one dump; C(null) where they were not read.
    - C(measured) with O(sample_seconds) above 0, the measured C(active_opens_per_second),
      C(passive_opens_per_second) and C(attempt_fails_per_second) of the whole host; else C(null).
  returned: always
  type: dict
  sample: {"usable_ports": 1000, "time_wait_seconds": 60,
           "remote": {"reuse": false, "port_hold_seconds": 60.0, "max_new_connections_per_second": 16.67},
           "loopback": {"reuse": true, "port_hold_seconds": 1.0, "max_new_connections_per_second": 1000.0},
           "measured": null, "time_wait_entered_per_second": 20.0, "time_wait_recent_seconds": 10}
verdict:
  description: V(ok), V(warning) or V(critical); the most severe finding, those of RV(nat) included.
  returned: always
  type: str
  sample: critical
findings:
  description: What was found, most severe first, as plain sentences with the figures (with RV(nat.findings)).
  returned: always
  type: list
  elements: str
  sample: ["198.51.100.2:8080 holds 1,000 of 1,000 usable ports (100%), 998 in TIME_WAIT, from 192.0.2.1"]
recommendations:
  description:
    - M(tcpstack.tuning.linux_tcp) options that would fix the findings (empty when there is nothing to fix).
      A wider C(port_range) starts at 32768, 16384 or 1024 (whichever is the first wider than now), never below
      C(ip_unprivileged_port_start); C(reserve_listening_ports) comes with it when ports listen inside it.
      A NAT finding adds nothing here; the NAT cures are RV(nat.recommendations).
  returned: always
  type: dict
  sample: {"tw_reuse": 1, "port_range": "32768 65535", "reserve_listening_ports": true}
thresholds:
  description: The utilisation thresholds used, in percent.
  returned: always
  type: dict
  sample: {"warning_percent": 70, "critical_percent": 90}
notes:
  description: Context that does not change the verdict (counters since boot, the measured rate, a fallback).
  returned: always
  type: list
  elements: str
  sample: ["ListenOverflows is 12 since the network namespace started; sample_seconds shows whether it is rising"]
source:
  description: Where the socket table came from, V(netlink) or V(proc); C(null) when it could not be read.
  returned: always
  type: str
  sample: netlink
unreadable:
  description:
    - What could not be read, each with C(source) and C(reason); each is also a warning. Without root, the fd
      tables of other users' processes are one item, C(/proc/PID/fd of N processes).
  returned: always
  type: list
  elements: dict
  sample: [{"source": "/proc/net/snmp", "reason": "Permission denied"}]
processes:
  description:
    - With O(attribution), the top O(top) processes holding ephemeral ports, by rate of new connections, then
      ports held. C(pid), C(name), C(cmdline) (at most 512 characters), C(user), C(uid), C(unit) (systemd),
      C(cgroup), C(container) (12-digit id) where they can be read, else C(null).
    - C(ports_held) (= C(in_use)) counts its ports in every state, C(established) and C(time_wait) those
      states; C(time_wait_inferred) is the part of C(time_wait) shared out because no dump saw those sockets
      alive (see O(attribution)). C(new_connections) and C(new_connections_per_second) over the sample (with
      C(new_connections_inferred), the shared-out part); C(null) without O(sample_seconds).
    - C(bound_inactive) ports bound and not connected now, C(bound_inactive_seen) such sockets seen during the
      sample (with tracepoints, also every connect() from an ephemeral port bound before it). C(destinations) the
      top 5 destinations of the process (C(endpoint) and the same counts),
      C(destination_count) how many it has.
  returned: when O(attribution) is true and the table was read over netlink
  type: list
  elements: dict
  sample: [{"pid": 4242, "name": "python3", "cmdline": "python3 client.py", "user": "app", "uid": 1000,
            "unit": "client.service", "cgroup": "/system.slice/client.service", "container": null,
            "ports_held": 6012, "in_use": 6012, "established": 1, "time_wait": 6011, "time_wait_inferred": 5730,
            "new_connections": 301, "new_connections_inferred": 290, "new_connections_per_second": 100.3,
            "bound_inactive": 0, "bound_inactive_seen": 0, "destination_count": 1,
            "destinations": [{"endpoint": "198.51.100.2:8080", "address": "198.51.100.2", "port": 8080,
                              "family": "ipv4", "in_use": 6012, "established": 1, "time_wait": 6011,
                              "time_wait_inferred": 5730, "new_connections": 301, "new_connections_inferred": 290,
                              "new_connections_per_second": 100.3}]}]
client_findings:
  description:
    - With O(attribution), what only the client can cure, also listed (as sentences) in RV(findings).
      C(kind) V(pooling), a process that opens at least 5 new connections per second to one destination and
      keeps at most a tenth as many open as it has in TIME_WAIT (without a sample, 100 TIME_WAIT sockets seen
      alive); or V(bind_before_connect), a process holding ephemeral ports bound and not connected (dumped by
      Linux 6.x with state CLOSE when the dump asks for BOUND_INACTIVE), with the advice
      C(IP_BIND_ADDRESS_NO_PORT) (Linux 4.2+) or C(IP_LOCAL_PORT_RANGE) (Linux 6.3+); or V(failing), a process
      whose C(connect()) calls failed for want of a local port (EADDRNOTAVAIL, where they were counted), with
      C(failed_connections) and C(failed_connections_per_second), always V(critical), listed first and named
      first by RV(cure).
    - Each has C(pid), C(name), C(user), C(unit), C(container), C(process) (a phrase naming it),
      C(destination) (C(null) for bind_before_connect), C(new_connections_per_second), C(advice) and
      C(sentence); pooling adds C(new_connections), C(established), C(time_wait) and
      C(time_wait_per_established), bind_before_connect C(bound_inactive) and C(bound_inactive_seen).
    - A pooling finding takes the severity of its destination (it changes RV(verdict) only where that
      destination's ports run short); a bind_before_connect finding does not change it.
  returned: when O(attribution) is true and the table was read over netlink
  type: list
  elements: dict
  sample: [{"kind": "pooling", "pid": 4242, "name": "python3", "user": "app", "unit": "client.service",
            "container": null, "process": "pid 4242 (python3, user app, unit client.service)",
            "destination": "198.51.100.2:8080", "new_connections_per_second": 100.3, "new_connections": 301,
            "established": 1, "time_wait": 6011, "time_wait_per_established": 6011.0,
            "advice": "pool the connections or keep them alive ...", "sentence": "pid 4242 (...) opens ..."}]
top_churner:
  description:
    - "With O(attribution) and O(sample_seconds), the process with the highest rate of new connections:
      C(pid), C(name), C(user), C(unit), C(container), C(process), C(destination) (its busiest) and
      C(new_connections_per_second); C(null) when no process opened a connection during the sample."
  returned: when O(attribution) is true and the table was read over netlink
  type: dict
  sample: {"pid": 4242, "name": "python3", "user": "app", "unit": "client.service", "container": null,
           "process": "pid 4242 (python3, user app, unit client.service)", "destination": "198.51.100.2:8080",
           "new_connections_per_second": 100.3}
attribution:
  description:
    - How the attribution went. C(method), how the sample was taken, C(tracepoints) (the kernel's
      tracepoints in a private tracefs instance, every connection counted for the process that called
      connect()), C(sampling) (the socket table polled every 10 ms, where tracing cannot be used; the reason is in
      RV(notes)) or C(snapshot) (no sample). C(sampled_seconds) (C(null) without a sample), C(live_dumps) and
      C(fd_scans) made, C(unreadable_processes) (fd tables that could not be read) and C(unreadable_pids) (the
      first 20), C(capped) (the maps whose cap was hit, what they dropped not counted), C(unattributed), the
      destinations whose ports or new connections no process could be given (each C(endpoint), C(in_use),
      C(time_wait), C(new_connections)).
    - With C(tracepoints), also C(trace_events) (events read), C(lost_events) (events the kernel dropped),
      C(other_namespace_events) (events of processes now in another network namespace, counted only for those
      that still hold sockets of this one at the end, C(admitted_from_other_namespaces) of them) and
      C(unknown_namespace_events) (events of processes whose namespace could not be known, not counted).
  returned: when O(attribution) is true and the table was read over netlink
  type: dict
  sample: {"sampled_seconds": 3.0, "live_dumps": 170, "fd_scans": 65, "unreadable_processes": 0,
           "unreadable_pids": [], "unattributed": []}
cure:
  description:
    - Which cure applies. C(where) V(client) (client findings, and the host's settings are not short),
      V(host) (RV(recommendations), and no client to fix), V(both), or V(none); C(summary) says it in a
      sentence, naming the processes.
  returned: when O(attribution) is true and the table was read over netlink
  type: dict
  sample: {"where": "both", "summary": "fix the client (pid 4242 (python3, user app)) for a lasting cure; tune
           the host with the recommendations meanwhile"}
nat:
  description:
    - "The source NAT of this host (its network namespace), from its conntrack table (ctnetlink) and its
      nftables and iptables-nft rules. Present only on a host that source-NATs: the table holds a source-NATed
      entry, or the ruleset has a masquerade or snat rule. Its verdict counts in RV(verdict) and its findings
      are in RV(findings). See docs/nat.md."
  returned: on a host that source-NATs (root is needed to read the table and the rules)
  type: dict
  contains:
    source:
      description: V(ctnetlink), or C(null) when the conntrack table could not be read (a note says why).
      type: str
    kernel:
      description: The kernel release, which decides what counts against a translated range.
      type: str
    counted:
      description:
        - "V(live): on Linux 6.18 and later (measured) a new flow takes over a translated port held only by a
          TIME_WAIT entry, so live flows count. V(live_and_time_wait): on older kernels (not checked) both count."
      type: str
    conntrack:
      description:
        - "The table: C(count) entries of C(max) (nf_conntrack_max, global to the host), C(utilisation), the
          totals of the kernel's C(counters) over the C(cpus), and C(per_second), the change per second of
          C(insert_failed), C(drop), C(early_drop) and C(clash_resolve) over C(sample_seconds) (C(null) without
          O(sample_seconds) above 0; a note says so). C(null) when the table could not be read."
      type: dict
    entries:
      description: Entries dumped from the table.
      type: int
    snat_entries:
      description: Entries that are source-NATed.
      type: int
    egress_total:
      description: Egress keys found; RV(nat.egress) shows the busiest O(top).
      type: int
    egress:
      description:
        - "One entry per egress key (C(translated) address, C(destination) address, C(port), C(protocol);
          C(endpoint) as text), busiest first. C(in_use) is what counts against the range (see RV(nat.counted)),
          C(live) the live entries, C(time_wait) those in TCP TIME_WAIT or CLOSE. C(capacity) is the size of
          the translated C(port_range) of the rule that translates to the address (C(capacity_source)
          V(nftables) or V(iptables-nft)), or the kernel's 64,512 (1024-65535; C(port_range) C(null), with a
          note). C(utilisation) is C(in_use) over C(capacity), C(verdict) its level against the thresholds.
          With O(sample_seconds), C(new_flows_per_second) counts the flows not in the table at the start of
          the sample, and C(max_new_flows_per_second) is the rate the range sustains by Little's law
          (C(capacity) times the rate over C(in_use)); C(null) without a sample.
          C(sources) are the inner addresses (at most 10 of C(sources_total)) with their C(in_use),
          C(time_wait), C(share) of the key's C(in_use) and C(new_flows_per_second); C(namespace), when the
          address is one of this host's own network namespaces (a container, a pod sandbox), its C(netns), C(pid) and C(name) of
          its lowest pid, C(container) and C(unit) (else C(null)); with O(attribution), C(processes), the
          processes of that namespace with sockets from the address to the destination (C(pid), C(name),
          C(sockets), at most 3)."
      type: list
      elements: dict
    rules:
      description:
        - The masquerade and snat rules found, each with C(kind), C(addresses), C(ports) (C(null) for the
          kernel's range), C(fully_random) and C(source).
      type: list
      elements: dict
    verdict:
      description: V(ok), V(warning) or V(critical), the worst of the NAT findings.
      type: str
    findings:
      description: Sentences, the most severe first; each names the egress or the table it is about.
      type: list
      elements: str
    recommendations:
      description:
        - "Sentences: more translated addresses or a wider translated port range, pooling in the named source,
          net.netfilter.nf_conntrack_max when the table is near full, C(--random-fully) (nftables
          C(fully-random)) when insert_failed rises, and on older kernels
          net.netfilter.nf_conntrack_tcp_timeout_time_wait with its trade-off."
      type: list
      elements: str
    notes:
      description: What was assumed or could not be read.
      type: list
      elements: str
  sample:
    source: ctnetlink
    kernel: 6.18.0-1-amd64
    counted: live
    conntrack: {"count": 1012, "max": 262144, "utilisation": 0.0039, "per_second": null, "sample_seconds": null,
                "counters": {"insert_failed": 0, "drop": 0}, "cpus": 2}
    entries: 1012
    snat_entries: 1000
    egress_total: 1
    egress:
      - {"translated": "10.231.2.1", "destination": "10.231.2.2", "port": 8080, "protocol": "tcp",
         "endpoint": "10.231.2.2:8080/tcp", "in_use": 1000, "live": 1000, "time_wait": 0, "capacity": 1000,
         "port_range": [20000, 20999], "capacity_source": "nftables", "utilisation": 1.0, "verdict": "critical",
         "sources": [{"address": "10.231.1.11", "in_use": 1000, "time_wait": 0, "share": 1.0,
                      "namespace": {"netns": "net:[4026532801]", "pid": 5120, "name": "pause",
                                    "container": "3f2a9c1b7d4e", "unit": null},
                      "processes": [{"pid": 5188, "name": "java", "sockets": 1000}]}],
         "sources_total": 1}
    rules: [{"kind": "masquerade", "addresses": [], "ports": [20000, 20999], "fully_random": false,
             "source": "nftables"}]
    verdict: critical
    findings: ["NAT egress 10.231.2.1 -> 10.231.2.2:8080/tcp holds 1,000 of 1,000 translated ports (100%) in live
                flows; from 10.231.1.11 (100%): new connections through it time out"]
    recommendations: ["widen the translated port range of 10.231.2.1 -> 10.231.2.2:8080/tcp (now 20000-20999, ...)"]
    notes: []
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_port_usage import audit
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_usage import validate_audit_options
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError


def main():
    module = AnsibleModule(
        argument_spec=dict(
            top=dict(type="int", default=10),
            sample_seconds=dict(type="float", default=0),
            warning_percent=dict(type="int", default=70),
            critical_percent=dict(type="int", default=90),
            attribution=dict(type="bool", default=True),
        ),
        supports_check_mode=True,
    )
    params = module.params
    try:
        validate_audit_options(params["top"], params["sample_seconds"], params["warning_percent"],
                               params["critical_percent"])
    except ValidationError as exc:
        module.fail_json(msg=str(exc), option=exc.option, changed=False)
    result = audit(LinuxHost(), top=params["top"], sample_seconds=params["sample_seconds"],
                   warning=params["warning_percent"], critical=params["critical_percent"],
                   attribute=params["attribution"])
    for item in result["unreadable"]:
        module.warn("could not read %s: %s" % (item["source"], item["reason"]))
    module.exit_json(changed=False, **result)


if __name__ == "__main__":
    main()
