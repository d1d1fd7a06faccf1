#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# This file only documents the module; the code is the action plugin plugins/action/win_port_usage_info.py,
# which runs on the controller and drives standard Windows tools over the task's connection.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_port_usage_info
short_description: Tell whether a Windows host is running out of ephemeral ports, and towards which destination
version_added: "0.1.0"
description:
  - The Windows counterpart of M(tcpstack.tuning.port_usage_info), with the same result shape where it applies.
    Answers "are we running out of ephemeral ports, and towards what?" with a verdict, findings in plain sentences
    and the M(tcpstack.tuning.win_tcp) options that would fix what was found.
  - Changes nothing. Runs the same in check mode.
  - Runs on the controller (an action plugin) and sends one command over the task's own connection (WinRM or SSH),
    which runs standard Windows tools, called by their full path under C($env:SystemRoot\System32). C(reg)
    (build, C(TcpTimedWaitDelay), C(MaxUserPort)), C(netsh) (dynamic
    and excluded port ranges of TCP and UDP, IPv4 and IPv6), C(Get-NetTCPConnection), C(Get-Process),
    C(Get-CimInstance Win32_Service) (which services run in which process) and C(wevtutil) (Tcpip events 4227
    and 4231 in the System log).
  - "B(The limit is host-wide.) On Windows C(connect()) takes an ephemeral port from one pool per IP version (event
    4231 says the global TCP port space is exhausted), so the verdict comes from all ephemeral ports held on the host
    against the usable dynamic ports (the range minus the excluded ranges in it). RV(destinations) and RV(processes)
    show who holds them."
  - "B(Who burns the ports.) The per-process view of M(tcpstack.tuning.port_usage_info) with O(tcpstack.tuning.port_usage_info#module:attribution),
    with the same keys and the same pooling rule: each connection's owning process, its name and the Windows
    service(s) it runs (in C(unit)), its ports, ESTABLISHED and TIME_WAIT per destination, and its rate of new
    connections. Windows reports a connection in TIME_WAIT with process id 0, so a destination's TIME_WAIT is given
    to the one process holding live connections to it (C(time_wait_inferred)); with two or more such processes it
    stays in C(attribution.unattributed), so a pooled client is never blamed for its neighbour's TIME_WAIT. Every
    TIME_WAIT socket closed within the last C(TcpTimedWaitDelay) seconds, so that window is the sample: the rate is
    a destination's TIME_WAIT count divided by it (C(attribution.sampled_seconds)), from the same single read."
  - "B(Pooling.) A process that opens at least 5 new connections per second to one destination and keeps at most a
    tenth as many open as it has in TIME_WAIT gets a finding in RV(client_findings) (and RV(findings)) naming the
    process, its service, the destination, the rate and the TIME_WAIT to ESTABLISHED ratio, with the advice to pool
    or keep its connections alive; RV(cure) says whether the cure is in the client, the host, or both."
  - "B(The range as Windows really has it.) For each IP version the TCP dynamic range is set against its excluded
    ranges, split into administered exclusions (C(netsh ... add excludedportrange), listed with C(*)) and system
    ones (WinNAT, Hyper-V, WSL, Docker: usually blocks of 100 carved from the dynamic range when WinNAT starts,
    elsewhere after each reboot): usable ports and the largest contiguous free block (RV(dynamic_range_analysis))."
  - "Warnings for: a range left by an installer (start 1024 with 64,511 or 13,977 ports); a range fragmented so that
    no contiguous block of 4,096 ports is free (the figure microsoft/WSL#12351 reported for the host networking
    service, which then failed with 0x8007054f; a reported figure, not a documented Windows limit); a listening port
    or one of O(service_ports) inside a system exclusion, where a bind fails with WSAEACCES (10013), which is that
    exclusion and not port exhaustion. Their recommendations are M(tcpstack.tuning.win_tcp) options: C(port_range)
    (back to 49152-65535) and C(excluded_ranges) (the ports to reserve, while the C(winnat) service and the service
    itself are stopped)."
  - "B(Verdict.) V(critical) from 90% of the usable ports held, for any event 4231, or when no port is usable;
    V(warning) from 70%, for event 4227, for the range findings above, or when something could not be read; V(ok)
    otherwise."
  - Output is parsed by position, not by label, so hosts in any display language work.
author:
  - tcpstack.tuning contributors (@tcpstack)
options:
  top:
    description:
      - How many destinations and processes to report, from 1 to 1000.
    type: int
    default: 10
  event_hours:
    description:
      - How far back to look for Tcpip events 4227 and 4231, in hours, from 1 to 8760. At most 500 events are read.
    type: int
    default: 24
  service_ports:
    description:
      - Ports that services on the host are configured to listen on (at most 100). Each one inside a system
        exclusion is a finding, as a listening port there is, even while the service is stopped.
    type: list
    elements: int
    default: []
extends_documentation_fragment:
  - tcpstack.tuning.info
attributes:
  platform:
    platforms: windows
    description: >-
      Windows Vista / Server 2008 and later. The connection table needs C(Get-NetTCPConnection) (Windows Server
      2012 / Windows 8 and later); without it the ranges and events are still reported and RV(unreadable) says why.
notes:
  - "Connections: C(ansible_connection=winrm), or C(ansible_connection=ssh) to Windows' OpenSSH server with
    C(powershell.exe) as its C(DefaultShell) and C(ansible_shell_type=powershell). Both are tested, against a
    simulated Windows host; PSRP is not."
  - "How long a closed port stays unusable: C(TcpTimedWaitDelay) seconds of TIME_WAIT (120 when not set). The value is
    read from the registry; Windows takes it into effect at boot."
  - Sockets in TIME_WAIT belong to no process; Windows reports them with process id 0 (C(Idle)) (as public
    C(netstat -ano) captures show; not stated in Microsoft's documentation). They are attributed as described
    above, never to process 0.
  - The rate of new connections is an average over the last C(TcpTimedWaitDelay) seconds (120 when not set) of the
    connections that have already closed; connections still open are not counted in it. The registry value is the
    one in effect only after a restart (see RV(notes)).
  - Ports in the C(Bound) state (bound, not connected) have no destination and are counted in
    C(attribution.bound) only; RV(client_findings) has no V(bind_before_connect) on Windows.
seealso:
  - module: tcpstack.tuning.win_tcp
    description: Applies the recommended settings.
  - module: tcpstack.tuning.port_usage_info
  - name: Troubleshoot port exhaustion issues
    description: Microsoft's guide to ephemeral-port exhaustion on Windows, with events 4227 and 4231.
    link: https://learn.microsoft.com/en-us/troubleshoot/windows-client/networking/tcp-ip-port-exhaustion-troubleshooting
"""

EXAMPLES = r"""
- name: Are we running out of ephemeral ports, and towards what?
  tcpstack.tuning.win_port_usage_info:
  register: ports

- name: Show the verdict
  ansible.builtin.debug:
    msg: "{{ ports.verdict }}: {{ ports.findings }}"

- name: Also check the ports our services are configured for
  tcpstack.tuning.win_port_usage_info:
    service_ports: [8080, 8443]

- name: Apply what it recommends
  tcpstack.tuning.win_tcp: "{{ ports.recommendations }}"
  when: ports.verdict == 'critical'
"""

RETURN = r"""
settings:
  description:
    - The values that decide how many ports there are and how fast they come back, named as the options of
      M(tcpstack.tuning.win_tcp). C(port_range) is the IPv4 TCP range; C(null) where a registry value is not set.
  returned: success
  type: dict
  sample: {"port_range": "49152 65535", "time_wait_delay": null, "max_user_port": null}
dynamic_port_range:
  description: The dynamic port range of each IP version and protocol.
  returned: success
  type: dict
  sample: {"ipv4": {"tcp": {"start": 49152, "number": 16384, "end": 65535}}}
excluded_port_ranges:
  description: The excluded port ranges of each IP version and protocol.
  returned: success
  type: dict
  sample: {"ipv4": {"tcp": [{"start": 50000, "end": 50059, "administered": true}]}}
dynamic_range_analysis:
  description:
    - Per IP version, the TCP dynamic range (C(range) with C(start), C(end), C(number)), its C(administered) and
      C(system) exclusions, the C(usable) ports after them, the C(largest_free_block) (C(start), C(end), C(size);
      C(null) when none is free) and whether the range is one installers leave (C(installer_range)).
  returned: success
  type: dict
  sample: {"ipv4": {"range": {"start": 49152, "end": 65535, "number": 16384},
                    "administered": [{"start": 50000, "end": 50059}], "system": [{"start": 49153, "end": 49252}],
                    "usable": 16224, "largest_free_block": {"start": 50060, "end": 65535, "size": 15476},
                    "installer_range": false}}
ephemeral:
  description:
    - The IPv4 TCP dynamic range C([LOW, HIGH]), its size, the excluded ports inside it (C(reserved), as a port
      list, and C(reserved_in_range)), and the usable ports.
  returned: success
  type: dict
  sample: {"range": [49152, 65535], "size": 16384, "reserved": "50000-50059", "reserved_in_range": 60, "usable": 16324}
ephemeral_ipv6:
  description: The IPv6 TCP dynamic range, its size and usable ports.
  returned: success
  type: dict
  sample: {"range": [49152, 65535], "size": 16384, "usable": 16384}
sockets:
  description:
    - TCP connections by state (the names C(Get-NetTCPConnection) prints), all together and per IP version.
      C(null) when the connection table could not be read.
  returned: success
  type: dict
  sample: {"total": 1003, "by_state": {"Established": 2, "TimeWait": 1000, "Listen": 1},
           "ipv4": {"Established": 2, "TimeWait": 1000, "Listen": 1}, "ipv6": {}}
ports_held:
  description: Dynamic ports held by connections of this host (any state but Listen), all destinations together.
  returned: success
  type: int
  sample: 1002
ports_held_by_family:
  description: RV(ports_held) per IP version.
  returned: success
  type: dict
  sample: {"ipv4": 1002, "ipv6": 0}
destinations:
  description:
    - The O(top) remote endpoints by ports held, in the shape of C(destinations) of
      M(tcpstack.tuning.port_usage_info). C(utilisation) is the share of the usable ports held towards that
      destination.
    - C(processes) lists up to 5 processes holding ports towards it (C(pid), C(name), C(in_use), C(time_wait),
      C(new_connections_per_second)), among those in RV(processes), when the connection table was read.
  returned: success
  type: list
  elements: dict
  sample: [{"endpoint": "10.0.0.9:443", "address": "10.0.0.9", "port": 443, "family": "ipv4", "in_use": 15000,
            "time_wait": 14000, "local_addresses": 1, "busiest_local_address": "10.0.0.5", "busiest_in_use": 15000,
            "busiest_time_wait": 14000, "reuse": false, "blocking": 15000, "utilisation": 0.9155}]
processes:
  description:
    - The top O(top) processes holding dynamic ports, by what they were seen opening and holding (an inferred
      share never ranks a process first by itself), then by rate of new connections and ports held, in the shape
      of RV(tcpstack.tuning.port_usage_info#module:processes), the same keys as on Linux. C(pid), C(name)
      (C(Get-Process)), C(unit) (the Windows services running in that process, comma-separated, at most 5 then
      C(+N more), C(null) when it runs none or C(Win32_Service) could not be read); names are host text, shown
      with control and bidi characters escaped (C(\\x1b), C(\\u202e)). C(cmdline), C(user), C(uid), C(cgroup),
      C(container) and C(start_time) are always C(null) on Windows.
    - C(evidence) V(inferred) when all its TIME_WAIT is owner-0 TIME_WAIT given to it as the destination's only
      live owner, else V(exact). An inferred share never makes a pooling finding or the RV(top_churner) by
      itself (Windows reports every TIME_WAIT with process id 0), so such a process is listed, never blamed.
    - C(spawned), C(failed_connections) and C(failed_connections_per_second) are always C(null) on Windows, not
      available (C(attribution.unavailable) says why), never guessed.
    - C(ports_held) (= C(in_use)) counts its dynamic ports in every state but Listen and Bound, C(established)
      and C(time_wait) those states; C(time_wait_inferred) is the part of C(time_wait) given to it as the only
      live owner of the destination (Windows reports TIME_WAIT with process id 0). C(new_connections) is its
      TIME_WAIT count, the connections it opened and closed within C(attribution.sampled_seconds);
      C(new_connections_per_second) that over the window; C(new_connections_inferred) the inferred part.
    - C(bound_inactive) and C(bound_inactive_seen) are always 0 on Windows. C(destinations) the top 5
      destinations of the process (C(endpoint) and the same counts), C(destination_count) how many it has.
  returned: success, when the connection table was read
  type: list
  elements: dict
  sample: [{"pid": 5200, "start_time": null, "name": "OrderSync", "cmdline": null, "user": null, "uid": null,
            "unit": "OrderSyncSvc", "cgroup": null, "container": null, "evidence": "inferred", "ports_held": 1502, "in_use": 1502, "established": 2,
            "time_wait": 1500, "time_wait_inferred": 1500, "new_connections": 1500, "new_connections_inferred": 1500,
            "new_connections_per_second": 12.5, "bound_inactive": 0, "bound_inactive_seen": 0,
            "spawned": null, "failed_connections": null, "failed_connections_per_second": null,
            "destination_count": 1,
            "destinations": [{"endpoint": "10.0.0.9:8080", "address": "10.0.0.9", "port": 8080, "family": "ipv4",
                              "in_use": 1502, "established": 2, "time_wait": 1500, "time_wait_inferred": 1500,
                              "new_connections": 1500, "new_connections_inferred": 1500,
                              "new_connections_per_second": 12.5}]}]
client_findings:
  description:
    - What only the client can cure, also listed (as sentences) in RV(findings). C(kind) V(pooling) is a process
      that opens at least 5 new connections per second to one destination and keeps at most a tenth as many open
      as it has in TIME_WAIT, counting only the connections and TIME_WAIT seen with its process id (never an
      inferred share, as Windows reports TIME_WAIT with process id 0). The rule and the keys are those of
      RV(tcpstack.tuning.port_usage_info#module:client_findings), each with C(pid), C(name), C(user), C(unit) (its
      services), C(container), C(process) (a phrase naming it), C(destination), C(new_connections_per_second),
      C(new_connections), C(established), C(time_wait), C(time_wait_per_established), C(advice), C(sentence).
    - A pooling finding takes the severity of its destination (it changes RV(verdict) only where that
      destination's ports run short).
  returned: success, when the connection table was read
  type: list
  elements: dict
  sample: [{"kind": "pooling", "pid": 5200, "name": "OrderSync", "user": null, "unit": "OrderSyncSvc",
            "container": null, "process": "pid 5200 (OrderSync, unit OrderSyncSvc)", "destination": "10.0.0.9:8080",
            "new_connections_per_second": 12.5, "new_connections": 1500, "established": 2, "time_wait": 1500,
            "time_wait_per_established": 750.0, "advice": "pool the connections or keep them alive ...",
            "sentence": "pid 5200 (OrderSync, unit OrderSyncSvc) opens 12.5 new connections per second to ..."}]
top_churner:
  description:
    - "The process with the highest rate of new connections seen with its process id (never an inferred share):
      C(pid), C(name), C(user), C(unit), C(container), C(process), C(destination) (its busiest) and
      C(new_connections_per_second) (that rate); C(null) when no process has a connection in TIME_WAIT seen with
      its process id, as when Windows reports every TIME_WAIT with process id 0."
  returned: success, when the connection table was read
  type: dict
  sample: {"pid": 5200, "name": "OrderSync", "user": null, "unit": "OrderSyncSvc", "container": null,
           "process": "pid 5200 (OrderSync, unit OrderSyncSvc)", "destination": "10.0.0.9:8080",
           "new_connections_per_second": 12.5}
attribution:
  description:
    - How the attribution went. C(sampled_seconds), the window the rates are over (the seconds TIME_WAIT lasts);
      C(method) V(time_wait_window); C(bound), ports in the Bound state (no destination, not attributed);
      C(services), whether C(Win32_Service) was read; C(unattributed), the destinations whose ports no process
      could be given (each C(endpoint), C(in_use), C(time_wait), C(new_connections)); C(unavailable), what
      Windows cannot tell from one read, each with the reason (C(spawned), C(failed_connections_per_second)).
  returned: success, when the connection table was read
  type: dict
  sample: {"sampled_seconds": 120.0, "method": "time_wait_window", "bound": 0, "services": true,
           "unattributed": [{"endpoint": "10.0.0.9:443", "in_use": 900, "time_wait": 900, "new_connections": 900}],
           "unavailable": {"spawned": "Windows: Get-Process and Get-NetTCPConnection do not say which process
                           started which", "failed_connections_per_second": "Windows: no per-process count ..."}}
cure:
  description:
    - Which cure applies. C(where) V(client) (client findings, and the host's settings are not short), V(host)
      (RV(recommendations), and no client to fix), V(both), or V(none); C(summary) says it in a sentence, naming
      the processes.
  returned: success, when the connection table was read
  type: dict
  sample: {"where": "client", "summary": "fix the client (pid 5200 (OrderSync, unit OrderSyncSvc)): the host's
           settings are not what runs short"}
events:
  description:
    - Tcpip events in the System log within O(event_hours). C(4227) (a connect failed because the local endpoint
      was recently used) and C(4231) (no ephemeral port could be allocated) are counts, C(null) when the log could
      not be read; C(latest) is the newest one's time; C(capped) is true when the 500 events read are not all.
  returned: success
  type: dict
  sample: {"hours": 24, "4227": 0, "4231": 3, "latest": "2026-11-24T10:00:00.0000000Z", "capped": false}
capacity:
  description:
    - The sustainable rate of new connections, C(usable_ports) / C(port_hold_seconds) (C(TcpTimedWaitDelay)).
  returned: success
  type: dict
  sample: {"usable_ports": 16384, "time_wait_seconds": 120,
           "remote": {"reuse": false, "port_hold_seconds": 120.0, "max_new_connections_per_second": 136.53},
           "loopback": {"reuse": false, "port_hold_seconds": 120.0, "max_new_connections_per_second": 136.53},
           "measured": null}
verdict:
  description: V(ok), V(warning) or V(critical); the most severe finding.
  returned: success
  type: str
  sample: critical
findings:
  description: What was found, most severe first, as plain sentences with the figures.
  returned: success
  type: list
  elements: str
  sample: ["the host holds 15,000 of 16,384 usable ipv4 dynamic TCP ports (91.5%); on Windows connect() takes them
            from one host-wide pool"]
recommendations:
  description:
    - M(tcpstack.tuning.win_tcp) options that would fix the findings (empty when there is nothing to fix). A wider
      C(port_range) starts at 32768, 16384 or 1026, whichever is the first wider than now, or is C("49152 65535")
      for a range left by an installer; C(time_wait_delay) 30 when TIME_WAIT lasts longer; C(excluded_ranges) the
      ports found inside a system exclusion.
  returned: success
  type: dict
  sample: {"port_range": "32768 65535", "time_wait_delay": 30, "excluded_ranges": ["8080"]}
thresholds:
  description: The utilisation thresholds used, in percent.
  returned: success
  type: dict
  sample: {"warning_percent": 70, "critical_percent": 90}
notes:
  description: Context that does not change the verdict.
  returned: success
  type: list
  elements: str
  sample: ["TcpTimedWaitDelay is 30 in the registry; Windows reads it at boot"]
counters:
  description: Always C(null); Windows has no TIME_WAIT counter comparable to Linux's.
  returned: success
  type: dict
  sample: null
source:
  description: Where the connection table came from, V(Get-NetTCPConnection); C(null) when it could not be read.
  returned: success
  type: str
  sample: Get-NetTCPConnection
unreadable:
  description: What could not be read, each with C(source) and C(reason); each is also a warning.
  returned: success
  type: list
  elements: dict
  sample: [{"source": "Get-NetTCPConnection", "reason": "Get-NetTCPConnection failed or is missing"}]
build:
  description: The host's Windows build number.
  returned: success
  type: int
  sample: 20348
round_trips:
  description: Commands sent to the host (0 when validation failed, else 1).
  returned: always
  type: int
  sample: 1
"""
