"""Install the Debian packages the tests need, when any is missing.

Checks for each tool below; when one is missing and we are root on Debian,
runs ``apt-get update`` once and ``apt-get install -y`` the packages that
provide the missing tools.  Does nothing when everything is present.
When something is missing and we cannot install it, says what and exits 1.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

# tool (a command on PATH, or an absolute path) -> Debian package
TOOLS = {
    'ip': 'iproute2',
    'sysctl': 'procps',
    '/lib/systemd/systemd-sysctl': 'systemd',
    'unshare': 'util-linux',
    'mount': 'util-linux',
    'git': 'git',
    'shellcheck': 'shellcheck',  # used by the ansible-test sanity test "shellcheck"
    'chromium': 'chromium',  # the port_audit test opens the HTML report in a headless browser
    # extensions/molecule/default: containers booted with systemd (podman brings its network stack), images by debootstrap
    'podman': 'podman',
    'runc': 'runc',  # extensions/molecule/containers.conf selects it
    'debootstrap': 'debootstrap',
    'ssh': 'openssh-client',  # Ansible's ssh connection to the Windows host simulator's SSH endpoint
    'promtool': 'prometheus',  # promtool check metrics / check rules / test rules (port_monitor)
    'prometheus-node-exporter': 'prometheus-node-exporter',  # the real textfile collector scrapes our metrics
    'prometheus-pushgateway': 'prometheus-pushgateway',  # port_audit pushes the metrics of hosts without a sampler
    'strace': 'strace',  # tests/reliability/test_fsync_order.py traces the syscalls of a persisted-file write
    # tests/integration/test_conntrack.py: a router namespace that source-NATs (nftables, iptables-nft), and
    # conntrack -L/-S/-C, the reference the ctnetlink reader is measured against
    'nft': 'nftables',
    'iptables-nft': 'iptables',
    'conntrack': 'conntrack',
    # tests/integration/test_real_traffic.py and bench/attribution.py (issue 21): real servers and clients
    'nginx': 'nginx',
    'ab': 'apache2-utils',
    'wrk': 'wrk',
    'curl': 'curl',
    '/usr/lib/python3/dist-packages/requests/__init__.py': 'python3-requests',  # python-requests, the system python3
}


def present(tool: str) -> bool:
    """Return True when the tool is installed."""
    if os.path.isabs(tool):
        return os.path.exists(tool)
    return shutil.which(tool, path=os.environ.get('PATH', '') + ':/usr/sbin:/sbin') is not None


def is_debian() -> bool:
    """Return True on Debian or a derivative with apt-get."""
    return os.path.exists('/etc/debian_version') and shutil.which('apt-get') is not None


def main() -> int:
    """Install what is missing; report what was done."""
    missing = {tool: pkg for tool, pkg in TOOLS.items() if not present(tool)}
    if not missing:
        print('hostdeps: all present (' + ', '.join(sorted(set(TOOLS.values()))) + ')')
        return 0
    packages = sorted(set(missing.values()))
    if os.geteuid() != 0 or not is_debian():
        print(f'hostdeps: missing {", ".join(missing)}; install the Debian packages '
              f'{" ".join(packages)} (needs root on Debian)', file=sys.stderr)
        return 1
    env = dict(os.environ, DEBIAN_FRONTEND='noninteractive')
    print(f'hostdeps: installing {" ".join(packages)}', flush=True)
    subprocess.run(['apt-get', 'update', '-q'], check=True, env=env)
    subprocess.run(['apt-get', 'install', '-y', '-q', '--no-install-recommends'] + packages,
                   check=True, env=env)
    still = [tool for tool in missing if not present(tool)]
    if still:
        print(f'hostdeps: still missing after install: {", ".join(still)}', file=sys.stderr)
        return 1
    return 0


if __name__ == '__main__':
    sys.exit(main())
