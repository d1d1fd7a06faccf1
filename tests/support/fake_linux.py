"""A Linux host as plain files, for run() without root: LinuxHost rooted in a temporary tree.

``fake_host(tmp_path)`` writes ``DEFAULTS`` under proc/sys and makes the directories linux_tcp reads and writes;
``params(**kw)`` is linux_tcp's parameters with the module's defaults and ``persist_file`` ``OURS``.
The real kernel is exercised by tests/integration and tests/reliability.
"""

from __future__ import annotations

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import PORT_RANGE, SETTINGS


def _proc_text(key, value):
    """What /proc/sys/KEY reads for ``value`` (the kernel separates a range's two numbers with a tab)."""
    return "\t".join(value.split()) if key == PORT_RANGE else value


# proc/sys of a kernel older than 6.14 (no tcp_tw_reuse_delay): every managed key that has a default in SETTINGS,
# then the keys whose value the kernel computes at boot or that linux_tcp only reads, with a typical value
DEFAULTS = dict(
    [(s.key.replace(".", "/"), _proc_text(s.key, s.default)) for s in SETTINGS
     if s.default is not None and s.since is None]
    + [("net/ipv4/ip_unprivileged_port_start", "1024"), ("net/ipv4/tcp_max_syn_backlog", "2048")])
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
