"""A Linux host as plain files, for run() without root: LinuxHost rooted in a temporary tree.

``fake_host(tmp_path)`` writes ``DEFAULTS`` under proc/sys and makes the directories linux_tcp reads and writes;
``params(**kw)`` is linux_tcp's parameters with the module's defaults and ``persist_file`` ``OURS``.
The real kernel is exercised by tests/integration and tests/reliability.
"""

from __future__ import annotations

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost

DEFAULTS = {
    "net/ipv4/tcp_fin_timeout": "60",
    "net/ipv4/ip_local_port_range": "32768\t60999",
    "net/ipv4/ip_local_reserved_ports": "",
    "net/ipv4/tcp_tw_reuse": "2",
    "net/ipv4/tcp_timestamps": "1",
    "net/ipv4/ip_unprivileged_port_start": "1024",
    "net/core/somaxconn": "4096",
    "net/ipv4/tcp_max_syn_backlog": "2048",
}
OURS = "/etc/sysctl.d/60-tcpstack-tuning.conf"


def fake_host(root):
    """LinuxHost rooted at ``root`` (a pathlib.Path), with DEFAULTS in proc/sys and empty sysctl.d, run, proc/net."""
    for rel, value in DEFAULTS.items():
        path = root / "proc/sys" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    for rel in ("etc/sysctl.d", "usr/lib/sysctl.d", "run", "proc/net"):
        (root / rel).mkdir(parents=True, exist_ok=True)
    return LinuxHost(str(root))


def params(**kw):
    """linux_tcp's parameters: the module's defaults, persist_file OURS, then ``kw``."""
    base = dict(persist=True, persist_file=OURS, on_shadowed="fail", state="present", reserve_listening_ports=False)
    base.update(kw)
    return base
