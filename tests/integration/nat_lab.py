"""A NAT host of its own: clients -> a router namespace that masquerades -> a server, all throwaway namespaces.

    with NatLab(rule="nft") as lab:                          # or rule="iptables", ports=(20000, 20999)
        lab.server_echo()                                     # ECHO on SERVER_IP:SERVER_PORT
        child = lab.hold(lab.client_ips[0], 300)             # 300 open connections from that address
        result = lab.port_usage_info(top=5)                   # the module, run by ansible-playbook in the router

The addresses exist only inside these namespaces, so no traffic leaves them.  Used by test_conntrack.py, test_nat_usage.py and by
tests/unit/plugins/module_utils/fixtures/capture_conntrack.py (which captured the ctnetlink fixtures).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from tests.support import traffic
from tests.support.ci import need, need_root_netns
from tests.support.collection import collections_path
from tests.support.netns import Sandbox


def need_nat_tools(*more):
    """The NAT lab's tools (nft, conntrack) and ``more`` (tool, Debian package) pairs, and the root network
    namespace: a test skips without them locally and fails under CI=true."""
    need_root_netns()
    for tool, package in (("nft", "nftables"), ("conntrack", "conntrack")) + more:
        need(shutil.which(tool) is not None, "needs %s (Debian package %s; tools/hostdeps.py)" % (tool, package))


CLIENT_IPS = ("10.231.1.11", "10.231.1.12")
ROUTER_INSIDE = "10.231.1.1"
ROUTER_OUTSIDE = "10.231.2.1"  # the translated (masquerade) address
SERVER_IP = "10.231.2.2"
SERVER_PORT = 8080

# HOLD SOURCE ADDRESS PORT COUNT TIMEOUT SECONDS: open COUNT connections from SOURCE at once (non-blocking),
# wait at most TIMEOUT s for them, print one JSON line {"open": n, "failed": n}, hold the open ones SECONDS (or
# until stdin closes), then close them.
HOLD = r"""
import json, select, socket, sys, time
source, address, port, count, timeout, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
pending = {}
for _ in range(count):
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    sock.connect_ex((address, port))
    pending[sock.fileno()] = sock
opened, failed = [], 0
deadline = time.monotonic() + timeout
poller = select.poll()
for fd in pending:
    poller.register(fd, select.POLLOUT)
while pending and time.monotonic() < deadline:
    for fd, dummy in poller.poll(200):
        sock = pending.pop(fd)
        poller.unregister(fd)
        if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            opened.append(sock)
        else:
            failed += 1
            sock.close()
print(json.dumps({"open": len(opened), "failed": failed + len(pending)}), flush=True)
for sock in pending.values():
    sock.close()
select.select([sys.stdin], [], [], seconds)
for sock in opened:
    sock.close()
"""

# KNOCK SOURCE ADDRESS PORT RATE SECONDS: a non-blocking connect() from SOURCE every 1/RATE s for SECONDS (or until
# stdin closes), at most RATE x SECONDS of them; one that has not opened within 2 s is closed, one that opened is
# held (so a port it found stays taken).  Prints "knocking" first.  Through a full translated range every new SYN
# is dropped by conntrack (insert_failed).
KNOCK = r"""
import select, socket, sys, time
source, address, port, rate, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
print("knocking", flush=True)
pending, opened = [], []
deadline = time.monotonic() + seconds
for _ in range(int(rate * seconds)):
    if time.monotonic() >= deadline or select.select([sys.stdin], [], [], 1.0 / rate)[0]:
        break
    sock = socket.socket()
    sock.bind((source, 0))
    sock.setblocking(False)
    sock.connect_ex((address, port))
    pending.append((time.monotonic(), sock))
    still = []
    for started, item in pending:
        if select.select([], [item], [], 0)[1] and item.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
            opened.append(item)
        elif select.select([], [item], [], 0)[1] or time.monotonic() - started > 2.0:
            item.close()
        else:
            still.append((started, item))
    pending = still
for item in opened:
    item.close()
"""

# Runs inside the router namespace: the table as linux_nat reads it with LinuxHost, one JSON line.
READ = r"""
import json, sys
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils import linux_nat
reading = linux_nat.read_nat(LinuxHost("/"), top=int(sys.argv[1]))
print(json.dumps(linux_nat.as_dict(reading)))
"""


def conntrack_lines(box, *args):
    """``conntrack -L ARGS`` inside ``box``: the entry lines."""
    done = box.exec(["conntrack", "-L"] + list(args), check=False)
    if done.returncode != 0:
        raise AssertionError("conntrack -L failed: %s" % done.stderr)
    return [line for line in done.stdout.splitlines() if "src=" in line]


def parse_conntrack_line(line):
    """(protocol, state, original {src,dst,sport,dport}, reply {...}) of one ``conntrack -L`` line."""
    words = line.split()
    tuples, current = [], None
    for word in words:
        key, sep, value = word.partition("=")
        if sep and key in ("src", "dst", "sport", "dport"):
            if key == "src":
                current = {}
                tuples.append(current)
            current[key] = value
    state = words[3] if words[0] == "tcp" else None
    return words[0], state, tuples[0], tuples[1]


class NatLab:
    """Three sandboxes: ``clients`` (CLIENT_IPS), ``router`` (masquerades to ROUTER_OUTSIDE) and ``server``."""

    def __init__(self, rule="nft", ports=None):
        self.rule = rule
        self.ports = ports
        self.clients = Sandbox.new(prefix="ctc")
        self.router = Sandbox.new(prefix="ctr")
        self.server = Sandbox.new(prefix="cts")
        self.children = []

    def create(self):
        try:
            for box in (self.clients, self.router, self.server):
                box.create()
            self._wire(self.clients, "vc0", self.router, "vr0")
            self._wire(self.router, "vs0", self.server, "vs1")
            for address in CLIENT_IPS:
                self.clients.exec(["ip", "addr", "add", address + "/24", "dev", "vc0"])
            self.clients.exec(["ip", "route", "add", "default", "via", ROUTER_INSIDE])
            self.router.exec(["ip", "addr", "add", ROUTER_INSIDE + "/24", "dev", "vr0"])
            self.router.exec(["ip", "addr", "add", ROUTER_OUTSIDE + "/24", "dev", "vs0"])
            self.server.exec(["ip", "addr", "add", SERVER_IP + "/24", "dev", "vs1"])
            self.router.set_sysctl("net.ipv4.ip_forward", 1)
            self._masquerade()
        except BaseException:
            self.destroy()
            raise
        return self

    @staticmethod
    def _wire(left, left_dev, right, right_dev):
        subprocess.run(["ip", "link", "add", left_dev, "netns", left.name, "type", "veth", "peer", "name", right_dev,
                        "netns", right.name], check=True, capture_output=True, timeout=30)
        left.exec(["ip", "link", "set", left_dev, "up"])
        right.exec(["ip", "link", "set", right_dev, "up"])

    def _masquerade(self):
        ports = "%d-%d" % self.ports if self.ports else None
        if self.rule == "nft":
            to = " to :%s" % ports if ports else ""
            script = ("table ip tcpst_nat {\n chain post {\n"
                      "  type nat hook postrouting priority srcnat; policy accept;\n"
                      "  oifname \"vs0\" meta l4proto tcp masquerade%s\n }\n}\n" % to)
            self.router.exec(["nft", "-f", "-"], input=script)
        elif self.rule == "iptables":
            argv = ["iptables-nft", "-t", "nat", "-A", "POSTROUTING", "-o", "vs0", "-p", "tcp", "-j", "MASQUERADE"]
            self.router.exec(argv + (["--to-ports", ports] if ports else []))
        else:
            raise ValueError("rule must be nft or iptables, not %r" % self.rule)

    def server_echo(self, seconds=120):
        return self.server.start(traffic.program("serve", SERVER_IP, SERVER_PORT, seconds, "--echo"), ready="listening")

    def server_accept(self, seconds=120):
        """The SERVER script: accept, wait for the client's FIN, close (short connections)."""
        return self.server.start(traffic.program("serve", SERVER_IP, SERVER_PORT, seconds), ready="listening")

    def hold(self, source, count, timeout=10.0, seconds=120):
        """Open ``count`` connections from ``source`` and hold them; returns (child, {"open", "failed"})."""
        child = subprocess.Popen(
            self.clients.argv([sys.executable, "-c", HOLD, source, SERVER_IP, SERVER_PORT, count, timeout, seconds]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.children.append(child)
        line = child.stdout.readline()
        if not line.startswith("{"):
            raise AssertionError("the holding client printed %r" % line)
        return child, json.loads(line)

    def knock(self, source, rate=10, seconds=60):
        """Start KNOCK from ``source`` (stopped at teardown at the latest); returns the child once it knocks."""
        child = subprocess.Popen(
            self.clients.argv([sys.executable, "-c", KNOCK, source, SERVER_IP, SERVER_PORT, rate, seconds]),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        self.children.append(child)
        line = child.stdout.readline()
        if line.strip() != "knocking":
            raise AssertionError("the knocking client printed %r" % line)
        return child

    def read_nat(self, top=50):
        """linux_nat.read_nat run inside the router namespace with LinuxHost, as a dict."""
        env = dict(os.environ, PYTHONPATH=str(collections_path()))
        done = self.router.exec([sys.executable, "-c", READ, top], env=env, check=False)
        if done.returncode != 0:
            raise AssertionError("reading the table failed: %s" % done.stderr)
        return json.loads(done.stdout)

    def port_usage_info(self, box=None, **options):
        """The port_usage_info module's result, run by ansible-playbook inside ``box`` (default: the router)."""
        box = self.router if box is None else box
        task = {"name": "audit", "tcpstack.tuning.port_usage_info": options, "register": "audit"}
        playbook = json.dumps([{"name": "nat", "hosts": "all", "gather_facts": False, "tasks": [task]}])
        rc, results = box.run_playbook(playbook, timeout=240)
        if rc != 0:
            raise AssertionError(box.last_run.describe())
        (result,) = [item for item in results if item["_task"] == "audit"]
        assert not result.get("failed"), result
        return result

    def destroy(self):
        from tests.support.netns import stop_process  # pylint: disable=import-outside-toplevel
        for child in self.children:
            stop_process(child)
        self.children = []
        for box in (self.clients, self.router, self.server):
            box.destroy()

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.destroy()
        return False
