#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

# This file only documents the module; the code is the action plugin plugins/action/win_tcp.py,
# which runs on the controller and drives reg and netsh over the task's connection.

from __future__ import annotations

DOCUMENTATION = r"""
---
module: win_tcp
short_description: Tune the Windows TCP/IP stack against ephemeral-port exhaustion
version_added: "0.1.0"
description:
  - Sets the dynamic (ephemeral) port range with C(netsh int ipv4|ipv6 set dynamicportrange), which takes effect
    at once and persists, administered port exclusions with C(netsh int ipv4|ipv6 add excludedportrange ...
    store=persistent), and the C(TcpTimedWaitDelay) and C(MaxUserPort) registry values under
    C(HKLM\SYSTEM\CurrentControlSet\Services\Tcpip\Parameters) as C(REG_DWORD), which Windows reads at boot.
  - Runs on the controller (an action plugin) and uses only standard Windows tools (C(reg), C(netsh)), called by
    their full path under C($env:SystemRoot\System32) (never found through the host's C(PATH)), over the task's own
    connection (WinRM or SSH). Nothing is copied to the host and no module runs there.
  - One command reads everything; at most one more applies the changes and reads them back to verify. A host
    that already has the wanted values costs one round trip. RV(round_trips) reports the number.
  - Every option is validated on the controller before the host is contacted, so a bad value fails with a
    message naming the option, the value and the limit even when the host is unreachable. The rule that depends
    on the Windows version (the 30-second minimum of O(time_wait_delay) before build 9600) is checked after the
    read and before any change.
  - No text from the task is put into a command; every value sent is a validated integer or a fixed keyword.
  - Output is parsed by position, not by label, so hosts in any display language work.
  - A registry value of the wrong type (for example a C(REG_SZ) C(TcpTimedWaitDelay), which Windows ignores) is
    rewritten as a C(REG_DWORD).
author:
  - tcpstack.tuning contributors (@tcpstack)
options:
  time_wait_delay:
    description:
      - Seconds a closed connection stays in TIME_WAIT (C(TcpTimedWaitDelay)). From 2 to 300; from 30 to 300 on
        Windows older than Windows 8.1 / Server 2012 R2 (build 9600). Windows' default is 120.
      - Read at boot, so changing it sets RV(reboot_required).
    type: int
  max_user_port:
    description:
      - C(MaxUserPort), from 5000 to 65534. Read at boot, so changing it sets RV(reboot_required).
      - Legacy. Since Windows Vista / Server 2008 the dynamic port range (O(port_range)) decides which ports are
        handed out; setting this gives a warning saying so.
    type: int
  port_range:
    description:
      - The dynamic port range, given as C("LOW HIGH"), C("LOW-HIGH") or a list C([LOW, HIGH]) (the forms
        M(tcpstack.tuning.linux_tcp) accepts), sent to netsh as C(startport=LOW numberofports=HIGH-LOW+1) for
        each of O(protocols) and O(ip_versions).
      - netsh's rules apply. LOW at least 1025, at least 255 ports, HIGH at most 65535.
      - A range already on the host outside these rules (C(start=1024), left by some installers) is read and
        replaced without error.
      - A warning names the excluded port ranges (C(netsh int ipv4 show excludedportrange), often reserved by
        Hyper-V or WinNAT) that overlap the range; Windows never hands those ports out.
    type: raw
  excluded_ranges:
    description:
      - Port ranges to keep as administered exclusions (listed with C(*) by C(netsh int ipv4 show
        excludedportrange)), so that no program gets them as ephemeral ports and WinNAT, Hyper-V, WSL or Docker
        cannot reserve them. A list of ports and ranges, each C(50000), C("50000-50099") or C([50000, 50099]),
        or a comma-separated string; at most 100, none overlapping another. Each is managed for every
        O(protocols) x O(ip_versions), as O(port_range) is.
      - With O(state=present) each listed range missing on the host is added with C(netsh int ipv4|ipv6 add
        excludedportrange protocol=tcp startport=N numberofports=M store=persistent), which takes effect at once
        and survives a reboot. A listed range the host already has as an administered exclusion is left alone.
      - With O(state=absent) each listed range the host has as an administered exclusion is deleted (C(delete
        excludedportrange ... store=persistent)).
      - Exclusions that are not listed are never touched. Exclusions made by the system (WinNAT, Hyper-V; listed
        without C(*)) are never removed; a listed one gives a warning.
      - netsh refuses a range that overlaps an exclusion the host has, or that holds a TCP port something listens
        on. Both are checked after the read (which then also lists the listening ports with
        C(Get-NetTCPConnection -State Listen)) and before any change, and the task fails naming the range and what
        is in its way (for a system exclusion, stop the C(winnat) service, run the task, start it again; for a
        listener, stop the service). Refusals that only netsh can know (a port in use on Windows Server 2008 R2,
        which has no C(Get-NetTCPConnection), or a UDP port) fail the task with netsh's own message, and the
        changes already made are undone.
      - An exclusion made by hand with C(store=active) counts as present until the next boot, when the task adds
        it again persistently.
    type: raw
  protocols:
    description:
      - The protocols whose dynamic range O(port_range) sets (Windows keeps one per protocol and IP version).
    type: list
    elements: str
    choices: [tcp, udp]
    default: [tcp]
  ip_versions:
    description:
      - The IP versions whose dynamic range O(port_range) sets.
    type: list
    elements: str
    choices: [ipv4, ipv6]
    default: [ipv4, ipv6]
  state:
    description:
      - V(present) applies the given options; only those are managed.
      - V(absent) restores Windows' defaults, whatever other options say. It removes both registry values
        (Windows then uses 120 seconds and 5000) and sets the dynamic range of each of O(protocols) and
        O(ip_versions) back to start 49152 with 16384 ports (49152-65535).
      - With V(absent), O(excluded_ranges) lists the administered exclusions to delete; no other exclusion is
        deleted.
extends_documentation_fragment:
  - tcpstack.tuning.tuning
attributes:
  check_mode:
    description: Exact. Reads the host (one round trip) and reports what would change; changes nothing.
  diff_mode:
    description: Shows each managed value before and after.
  platform:
    platforms: windows
    description: Windows Vista / Server 2008 and later. Changing values needs an administrator.
notes:
  - "Connections: C(ansible_connection=winrm), or C(ansible_connection=ssh) to Windows' OpenSSH server with
    C(powershell.exe) as its C(DefaultShell) and C(ansible_shell_type=powershell). Both are tested, against a
    simulated Windows host; PSRP is not."
  - The registry values take effect after a reboot; use M(ansible.windows.win_reboot) when RV(reboot_required) is true.
  - The dynamic range is per protocol and IP version; O(port_range) with the defaults sets TCP for IPv4 and IPv6.
  - "After a failed apply the changes already made are undone (RV(rolled_back)). A value that cannot be written
    back (a registry value that is not a C(REG_DWORD) from 0 to 0xFFFFFFFF, a range outside netsh's rules) is
    skipped, named in RV(rollback_skipped) and in a warning, and the rest is still undone."
  - Microsoft's networking team recommends administered exclusions (O(excluded_ranges)) over shrinking the dynamic
    range to keep ports free for a service (Azure/AgentBaker#1913).
seealso:
  - module: tcpstack.tuning.linux_tcp
  - module: tcpstack.tuning.win_port_usage_info
  - name: The default dynamic port range for TCP/IP has changed (KB929851)
    description: netsh's dynamic port range and its limits.
    link: https://learn.microsoft.com/en-us/troubleshoot/windows-server/networking/default-dynamic-port-range-tcpip-chang
  - name: Troubleshoot port exhaustion issues
    description: Microsoft's guide to ephemeral-port exhaustion on Windows.
    link: https://learn.microsoft.com/en-us/troubleshoot/windows-client/networking/tcp-ip-port-exhaustion-troubleshooting
"""

EXAMPLES = r"""
- name: Give a busy client more ephemeral ports and a shorter TIME_WAIT
  tcpstack.tuning.win_tcp:
    port_range: 10000 65535
    time_wait_delay: 30
  register: tuned

- name: Reboot when a registry value changed
  ansible.windows.win_reboot:
  when: tuned.reboot_required

- name: The same range for UDP, IPv4 only
  tcpstack.tuning.win_tcp:
    port_range: [10000, 65535]
    protocols: [udp]
    ip_versions: [ipv4]

- name: Keep ports for a service out of the dynamic range and away from WinNAT and Hyper-V
  tcpstack.tuning.win_tcp:
    excluded_ranges:
      - 8080
      - 50000-50099

- name: Remove one administered exclusion (others, and system ones, stay)
  tcpstack.tuning.win_tcp:
    state: absent
    excluded_ranges: [50000-50099]

- name: Back to Windows' defaults
  tcpstack.tuning.win_tcp:
    state: absent
"""

RETURN = r"""
before:
  description:
    - The managed values before the run. C(registry) maps each managed registry value to its C(REG_DWORD) number,
      C(null) when absent, or C({type, data}) when it has the wrong type; C(dynamic_port_range) maps IP version
      and protocol to C({start, number, end}); with O(excluded_ranges), C(excluded_ranges) maps IP version and
      protocol to each listed range and whether the host has it as an administered exclusion.
  returned: always
  type: dict
  sample: {"registry": {"TcpTimedWaitDelay": null},
           "dynamic_port_range": {"ipv4": {"tcp": {"start": 49152, "number": 16384, "end": 65535}}}}
after:
  description: The managed values after the run as read back from the host (what they would be, in check mode).
  returned: always
  type: dict
  sample: {"registry": {"TcpTimedWaitDelay": 30},
           "dynamic_port_range": {"ipv4": {"tcp": {"start": 10000, "number": 55536, "end": 65535}}}}
reboot_required:
  description: Whether a registry value changed; Windows reads them at boot. The dynamic range needs no reboot.
  returned: always
  type: bool
  sample: true
round_trips:
  description: Commands sent to the host (0 when validation failed, 1 to read, 2 to read and apply).
  returned: always
  type: int
  sample: 2
build:
  description: The host's Windows build number (C(CurrentBuildNumber)).
  returned: success
  type: int
  sample: 20348
rolled_back:
  description: After a failed apply, whether every change already made was undone.
  returned: when an apply failed
  type: bool
  sample: true
rollback_skipped:
  description: After a failed apply, the old values that could not be written back, each with what it was.
  returned: when an apply failed and a value could not be written back
  type: list
  elements: str
  sample: ["TcpTimedWaitDelay (was REG_DWORD '0x1FFFFFFFF')"]
excluded_port_ranges:
  description: The excluded port ranges the host reports, by IP version and protocol.
  returned: success
  type: dict
  sample: {"ipv4": {"tcp": [{"start": 50000, "end": 50059, "administered": true}]}}
"""
