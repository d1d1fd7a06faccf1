"""Two throwaway hosts on one wire: a client and a server Sandbox joined by a veth pair.

The addresses exist only inside those two namespaces (none on the machine itself), so traffic between them never
leaves them.  Used by tests/integration (port_usage_info, port_audit), bench/cure.py and demo/demo.py.

    with ClientServer("10.213.0.1", "10.213.0.2", prefixes=("puic", "puis")) as pair:
        pair.serve(traffic.program("serve", pair.server_address, 8080, 300))    # returns once it prints "listening"
        pair.client.exec(traffic.program("connect", pair.server_address, 8080, "--attempts", 3000, "--seconds", 30))
"""

from __future__ import annotations

import subprocess

from tests.support.netns import Sandbox


class ClientServer:
    """``client`` and ``server`` sandboxes, joined by a veth pair: ``client_address``/24 on the client's end,
    ``server_address``/24 on the server's, both up.  destroy() (also on leaving a ``with``) stops what either
    runs and deletes both namespaces; it is safe to call twice."""

    def __init__(self, client_address, server_address, prefixes=("cli", "srv"), devices=("veth0", "veth1"),
                 prefix_length=24):
        self.client_address = client_address
        self.server_address = server_address
        self.devices = devices
        self.prefix_length = prefix_length
        self.client = Sandbox.new(prefix=prefixes[0])
        self.server = Sandbox.new(prefix=prefixes[1])

    def create(self):
        """Create both namespaces and the wire between them; on failure, delete whatever was made."""
        try:
            self.client.create()
            self.server.create()
            # each end is made directly in its namespace: the names need not be free on the machine
            subprocess.run(["ip", "link", "add", self.devices[0], "netns", self.client.name, "type", "veth", "peer",
                            "name", self.devices[1], "netns", self.server.name],
                           check=True, capture_output=True, timeout=30)
            for box, device, address in ((self.client, self.devices[0], self.client_address),
                                         (self.server, self.devices[1], self.server_address)):
                box.exec(["ip", "addr", "add", "%s/%d" % (address, self.prefix_length), "dev", device])
                box.exec(["ip", "link", "set", device, "up"])
        except BaseException:
            self.destroy()
            raise
        return self

    def serve(self, cmd, ready="listening"):
        """Run ``cmd`` (e.g. traffic.program("serve", ...)) in the server namespace (Sandbox.start); by default wait
        until it prints "listening".  Stopped by destroy()."""
        return self.server.start(cmd, ready=ready)

    def destroy(self):
        self.client.destroy()
        self.server.destroy()

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.destroy()
        return False
