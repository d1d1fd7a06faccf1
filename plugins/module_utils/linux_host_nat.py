# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""LinuxHost's NAT rules: the host's nftables ruleset as ``nft -j list ruleset`` prints it, and the nat table of
iptables-nft as ``iptables-nft-save -t nat`` prints it (nft's JSON shows an iptables-nft target only as
``{"xt": {"name": "MASQUERADE"}}``, without its ``--to-ports``).

Each command is a fixed argv: no host or user text is ever in it, and no shell runs it.  The text is handed to
the pure parsers of nat_rules.  Reading a ruleset needs CAP_NET_ADMIN (root), as reading the conntrack table.
"""

from __future__ import annotations

import os
import shutil
import subprocess

NFT_ARGV = ("nft", "-j", "list", "ruleset")
IPTABLES_NAT_ARGV = ("iptables-nft-save", "-t", "nat")
RULESET_TIMEOUT = 20.0  # seconds: a kube-proxy ruleset of 10^5 rules prints in about a second
RULESET_MAX = 64 << 20  # bytes of output read at most
CONNTRACK_MODULE = "/sys/module/nf_conntrack"  # present when conntrack is loaded or built in (it has parameters)


class HostNat:
    """LinuxHost's part that runs the two fixed ruleset listings of its network namespace."""

    def _ruleset_text(self, argv):
        """(stdout or None, why not): None when not the running host, the tool is absent or it failed."""
        if not self.live:
            return None, "not the running host"
        tool = shutil.which(argv[0])
        if tool is None:
            return None, "%s is not installed" % argv[0]
        try:
            # a fixed argv, no shell; LinuxHost also serves the port_monitor sampler, which has no AnsibleModule
            # and so no run_command
            done = subprocess.run(  # pylint: disable=ansible-bad-function
                [tool] + list(argv[1:]), check=False, capture_output=True, timeout=RULESET_TIMEOUT,
                stdin=subprocess.DEVNULL)
        except (OSError, subprocess.SubprocessError) as exc:
            return None, "%s failed: %s" % (" ".join(argv), exc)
        if done.returncode != 0:
            error = done.stderr.decode("utf-8", "replace").strip().splitlines()
            last = ": %s" % error[-1][:200] if error else ""
            return None, "%s exited with %d%s" % (" ".join(argv), done.returncode, last)
        return done.stdout[:RULESET_MAX].decode("utf-8", "replace"), None

    def conntrack_loaded(self):
        """Whether the kernel has conntrack (loaded or built in).  Checked first, so that reading the table never
        makes the kernel load it (nfnetlink asks for the module of a subsystem it does not have)."""
        return os.path.isdir(self._p(CONNTRACK_MODULE))

    def nft_ruleset(self):
        """(the JSON text of ``nft -j list ruleset``, None) or (None, why it could not be read)."""
        return self._ruleset_text(NFT_ARGV)

    def iptables_nat_rules(self):
        """(the text of ``iptables-nft-save -t nat``, None) or (None, why it could not be read)."""
        return self._ruleset_text(IPTABLES_NAT_ARGV)
