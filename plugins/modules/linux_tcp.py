#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
---
module: linux_tcp
short_description: Tune the Linux TCP stack against ephemeral-port exhaustion, at runtime and across reboots
version_added: "0.1.0"
description:
  - Sets the TCP sysctls that decide how many outgoing connections a busy host can open, in one call per host
    and with no task per key.
  - Writes C(/proc/sys) directly (no C(sysctl) binary needed, works where only busybox exists) and persists the
    managed keys to one file it owns under a C(sysctl.d) directory, written atomically with mode 0644.
  - Values are compared by meaning, so C(32768<TAB>60999) equals C(32768 60999) and C(40010-40019,40020-40021)
    equals C(40010-40021); an unchanged host and an unchanged file are not written to.
  - Before changing anything it works out the value every managed key will have after a reboot, under both
    systemd-sysctl and procps C(sysctl --system), and refuses (or warns, see O(on_shadowed)) when another file
    would override the tuning at the next boot.
  - All or nothing. If writing a key or the file fails, the keys already written get their previous values
    back and the persisted file is left as it was. Runs that overlap on one host are serialised with a lock
    (C(/run/tcpstack-tuning.lock)); a run waits at most 120 seconds for it, then fails naming the process that
    holds it.
  - Reads only regular files, never more than 1 MiB of one. In the C(sysctl.d) directories a symbolic link is
    followed to a regular file, as systemd-sysctl does; a FIFO, device, socket, symbolic-link loop or larger file
    is not read and a warning says so.
  - Only the options given are managed; no other key is ever touched. The persisted file keeps the keys that
    earlier runs of the module put in it, so several tasks may each manage some keys in the same file.
  - "B(What frees ports.) On Linux a closed connection stays in TIME_WAIT for a fixed 60 seconds
    (C(TCP_TIMEWAIT_LEN)); no sysctl shortens it. C(tcp_fin_timeout) only limits how long an orphaned connection
    stays in FIN_WAIT_2. What lets a busy client open more connections per second to one destination is
    O(tw_reuse=1) (with TCP timestamps on), which lets C(connect()) reuse a TIME_WAIT port after
    O(tw_reuse_delay), and a wider O(port_range). The limit applies per (local address, remote address,
    remote port), not per host."
author:
  - tcpstack.tuning contributors (@tcpstack)
options:
  fin_timeout:
    description:
      - Seconds an orphaned connection may stay in FIN_WAIT_2 (C(net.ipv4.tcp_fin_timeout)). From 1 to 86400.
      - "Like every integer option of this module, an int or a string of ASCII digits: other spellings that Python's
        C(int()) would take (C(\"\u0663\u0660\"), C(\"3e1\")) are refused, so that what is applied is exactly what was written."
      - This does B(not) shorten TIME_WAIT, which lasts 60 seconds on Linux whatever this is set to.
    type: raw
  port_range:
    description:
      - The ephemeral port range (C(net.ipv4.ip_local_port_range)), given as C("LOW HIGH") (spaces or tabs,
        as the kernel prints it), C("LOW-HIGH"), or a list C([LOW, HIGH]).
      - Ports from 1 to 65535, LOW not above HIGH, and LOW at least the host's
        C(net.ipv4.ip_unprivileged_port_start). A warning is given when LOW and HIGH have the same parity
        (since Linux 4.6 C(connect()) takes even ports first and C(bind()) odd ones).
      - TCP ports listening now inside the new range and not reserved produce a warning naming them; see
        O(reserve_listening_ports).
    type: raw
  reserved_ports:
    description:
      - Ports that automatic port allocation skips (C(net.ipv4.ip_local_reserved_ports)), so that service ports
        stay free inside a wider O(port_range). Kernel syntax C("8080,9000-9100") or a list of ports and
        C("LOW-HIGH") items; an empty string or list clears the list.
      - Compared the way the kernel prints it (sorted, adjacent ranges merged).
    type: raw
  tw_reuse:
    description:
      - C(net.ipv4.tcp_tw_reuse). V(0) off; V(1) every outgoing C(connect()) may reuse a port in TIME_WAIT;
        V(2) (the kernel default) only for loopback addresses.
      - Reuse needs TCP timestamps. V(1) while C(net.ipv4.tcp_timestamps) is 0 (and O(timestamps) does not
        turn it on) fails, because reuse would silently do nothing.
    type: raw
  tw_reuse_delay:
    description:
      - Milliseconds a TIME_WAIT port must wait before C(tcp_tw_reuse) may reuse it
        (C(net.ipv4.tcp_tw_reuse_delay)), from 1 to 60000; the kernel default is 1000.
      - Only on Linux 6.14 and later; on an older kernel the module fails naming the missing key.
    type: raw
  timestamps:
    description:
      - C(net.ipv4.tcp_timestamps) (V(0) off, V(1) on with random offsets, the default, V(2) on without).
        O(tw_reuse) needs it on.
    type: raw
  somaxconn:
    description:
      - Upper limit of a listening socket's accept backlog (C(net.core.somaxconn)), from 1 to 2147483647.
        The backlog floods under the same load that exhausts ports.
    type: raw
  max_syn_backlog:
    description:
      - Connections in SYN_RECV a listener may hold (C(net.ipv4.tcp_max_syn_backlog)), from 1 to 2147483647.
    type: raw
  conntrack_max:
    description:
      - "The connection-tracking table's ceiling (C(net.netfilter.nf_conntrack_max)), from 1 to 2147483647 (V(0),
        which removes the ceiling, is refused). When the table is full the kernel logs C(nf_conntrack: table full,
        dropping packet) and drops new flows. The kernel computes its default at boot from the memory."
      - B(Global to the machine.) Only the machine's initial network namespace can change it. Run inside a container
        (any other network namespace), where the kernel refuses the write even to root, the module fails naming
        the option before changing anything; a value equal to the current one is left alone with a warning, and
        not persisted. The namespace is told by C(net.nf_conntrack_max), which the kernel shows in the initial
        network namespace only.
      - Exists only while the kernel module C(nf_conntrack) is loaded (see O(conntrack_time_wait)).
    type: raw
  conntrack_time_wait:
    description:
      - Seconds a tracked TCP connection stays in the table after it reached TIME_WAIT
        (C(net.netfilter.nf_conntrack_tcp_timeout_time_wait)), from 1 to 86400; the kernel default is 120.
        On a NAT host the entry counts against O(conntrack_max) for that long. Below 60 a warning says the
        trade-off (a translated port may go to a new flow while the server still holds the old connection).
      - B(Per network namespace.) In a container it sets the container's value; the machine's is unchanged.
      - "Exists only while the kernel module C(nf_conntrack) is loaded. When it is not, the module fails naming the
        option before changing anything; it never loads kernel modules. At boot systemd-sysctl runs after
        systemd-modules-load but before anything else loads C(nf_conntrack) (a firewall, kube-proxy, Docker): unless
        the module is built in or listed in C(/etc/modules-load.d/), the persisted value is not applied at boot, and
        a warning says so."
    type: raw
  tw_recycle:
    description:
      - Always refused, with the reason. C(net.ipv4.tcp_tw_recycle) was removed in Linux 4.12 because it
        broke clients behind NAT. Use O(tw_reuse=1) and a wider O(port_range) instead.
      - Present only so that playbooks copied from old guides fail clearly instead of silently.
    type: raw
  reserve_listening_ports:
    description:
      - Add the TCP ports listening now inside the ephemeral range to O(reserved_ports) (to the given list, or
        to the host's current list), instead of warning about them.
      - With this set, C(net.ipv4.ip_local_reserved_ports) is a managed key.
    type: bool
    default: false
  persist:
    description:
      - Also write the managed keys to O(persist_file), so that they survive a reboot.
      - With V(false) only the runtime changes, and a warning says which file would set a different value at
        the next boot.
    type: bool
    default: true
  persist_file:
    description:
      - The file the module owns. An absolute path to a C(.conf) file directly inside C(/etc/sysctl.d),
        C(/usr/local/lib/sysctl.d), C(/usr/lib/sysctl.d) or C(/lib/sysctl.d); anything else is refused
        (C(/run/sysctl.d) is emptied at every boot).
      - "The module rewrites or removes this file only when it is absent or is a regular file of at most 1 MiB
        whose first line is the header the module writes (C(# Managed by Ansible: tcpstack.tuning.linux_tcp.),
        the same in every release). Anything else there, such as another C(.conf) file, a symbolic link
        (Debian's C(99-sysctl.conf -> ../sysctl.conf)), a FIFO, a device or a directory, makes the module fail
        naming the file and the reason before anything changes, with O(state=absent) and in check mode too."
      - Its directory is created (mode 0755) when missing. On a merged C(/usr), where C(/lib) links to C(usr/lib),
        a file given under C(/lib/sysctl.d) is the same file as under C(/usr/lib/sysctl.d) and is reported by that name.
      - Its name decides when it is applied at boot. Files are applied sorted by name across all the
        directories, the last assignment wins, and procps applies C(/etc/sysctl.conf) after all of them.
    type: path
    default: /etc/sysctl.d/60-tcpstack-tuning.conf
  on_shadowed:
    description:
      - What to do when another file would override a managed key at the next boot (a file that sorts after
        ours, C(/etc/sysctl.conf), or a file of the same name in an earlier directory that hides ours).
      - V(fail) fails before changing anything and names the file and line; V(warn) applies and warns.
      - Another file that sets the same value is reported in RV(shadowed) and as a warning, never a failure.
    type: str
    choices: [fail, warn]
    default: fail
  state:
    description:
      - V(present) applies the given options.
      - V(absent) removes O(persist_file) and sets every key it named back to the value the host would boot
        with without it (another file's value, else the kernel default, read from a fresh network namespace).
        The other options are ignored.
extends_documentation_fragment:
  - tcpstack.tuning.tuning
attributes:
  check_mode:
    description: Exact. Reports what would change, including the file, and writes nothing.
  diff_mode:
    description: Shows the runtime values and the persisted file, before and after.
  platform:
    platforms: linux
    description: Linux, with /proc mounted. Runs as root to change anything.
notes:
  - These sysctls belong to the network namespace the module runs in; in a container it tunes the container. The
    exception is O(conntrack_max), global to the machine and changed from the machine's initial network namespace
    only.
  - Values set by other files are compared by meaning; keys written with glob patterns in other files are not
    analysed.
  - Client-side remedies that need no sysctl are C(IP_BIND_ADDRESS_NO_PORT) (Linux 4.2+) and
    C(IP_LOCAL_PORT_RANGE) (Linux 6.3+) socket options.
seealso:
  - name: ip-sysctl.rst
    description: The kernel's documentation of these sysctls.
    link: https://docs.kernel.org/networking/ip-sysctl.html
  - name: sysctl.d(5)
    description: How systemd-sysctl orders sysctl.d files at boot.
    link: https://man7.org/linux/man-pages/man5/sysctl.d.5.html
"""

EXAMPLES = r"""
- name: Let a busy web tier open more outgoing connections
  tcpstack.tuning.linux_tcp:
    port_range: 1024 65535
    reserve_listening_ports: true
    tw_reuse: 1
    fin_timeout: 30

- name: Keep service ports out of a wide ephemeral range
  tcpstack.tuning.linux_tcp:
    port_range: [10000, 65535]
    reserved_ports: 11211,15672,25672-25680

- name: Larger accept and SYN backlogs, persisted in a file of our own
  tcpstack.tuning.linux_tcp:
    somaxconn: 8192
    max_syn_backlog: 8192
    persist_file: /etc/sysctl.d/90-web-backlog.conf

- name: A NAT host (Kubernetes node, gateway) that tracks many short flows; run on the host, not in a container
  tcpstack.tuning.linux_tcp:
    conntrack_max: 524288
    conntrack_time_wait: 60

- name: Apply even though a later file sets a key (and say so)
  tcpstack.tuning.linux_tcp:
    tw_reuse: 1
    on_shadowed: warn

- name: Undo the tuning, back to what the host would boot with
  tcpstack.tuning.linux_tcp:
    state: absent
"""

RETURN = r"""
before:
  description: Runtime value of each managed key before the run, as canonical sysctl strings.
  returned: always
  type: dict
  sample: {"net.ipv4.tcp_fin_timeout": "60", "net.ipv4.ip_local_port_range": "32768 60999"}
after:
  description: Runtime value of each managed key after the run (what it would be, in check mode).
  returned: always
  type: dict
  sample: {"net.ipv4.tcp_fin_timeout": "30", "net.ipv4.ip_local_port_range": "1024 65535"}
boot_values:
  description:
    - For each managed key, the value it will have after the next boot under systemd-sysctl and under procps
      C(sysctl --system), with the file and line that sets it (C(null) where no file does and the kernel
      default applies).
  returned: always
  type: dict
  sample:
    net.ipv4.tcp_fin_timeout:
      systemd: {"value": "30", "file": "/etc/sysctl.d/60-tcpstack-tuning.conf", "line": 4}
      procps: {"value": "30", "file": "/etc/sysctl.d/60-tcpstack-tuning.conf", "line": 4}
shadowed:
  description:
    - Other files that set a managed key after ours at boot. C(conflicting) is true when their value differs
      from ours (with O(on_shadowed=warn)); false when they set the same value.
  returned: always
  type: list
  elements: dict
  sample: [{"key": "net.ipv4.tcp_tw_reuse", "init": "procps", "file": "/etc/sysctl.conf", "line": 12,
            "value": "1", "conflicting": false}]
persist_file:
  description: The file holding the persisted keys, or C(null) with O(persist=false).
  returned: always
  type: str
  sample: /etc/sysctl.d/60-tcpstack-tuning.conf
kernel:
  description: The running kernel's release.
  returned: always
  type: str
  sample: 6.12.48-1-amd64
reboot_required:
  description: Always false on Linux; the values take effect at once.
  returned: always
  type: bool
  sample: false
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import HostError, LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_tuning import (
    ARGUMENT_SPEC,
    TuningError,
    run,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError


def main():
    module = AnsibleModule(
        argument_spec=ARGUMENT_SPEC,
        supports_check_mode=True,
    )
    try:
        result, warnings = run(module.params, LinuxHost(), module.check_mode, module._diff)
    except ValidationError as exc:
        module.fail_json(msg=str(exc), option=exc.option, changed=False)
    except TuningError as exc:
        module.fail_json(msg=str(exc), changed=False, **exc.result)
    except HostError as exc:
        module.fail_json(msg=str(exc), changed=False)
    for warning in warnings:
        module.warn(warning)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
