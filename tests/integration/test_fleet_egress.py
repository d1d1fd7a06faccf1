"""The port_audit role rolls a fleet up by shared egress, with real ansible-playbook on the real kernel (issue 23).

The fleet: four hosts, each its own network namespace joined by a veth pair to one ``server`` namespace, which
listens on 10.217.100.1:8080 (an address on its loopback, routed to from every host): the same destination
endpoint for all, as a service behind a NAT would be.

- ``a1`` and ``a2`` leave through ``nat-a``, a declared ``aws_nat_gateway`` with one address;
- ``g1`` and ``g2`` through ``nat-g``, a declared ``gcp_cloud_nat`` with one NAT IP and the default
  ``min_ports_per_vm`` of 64.

Each host holds a known number of open connections to the server while the role runs.  The report must sum them
per egress (and equal the sum of each host's own ``in_use``), call nat-a ok and nat-g critical (the busiest VM
holds more than its 64 ports per destination), and size both with the documented sentences.  The addresses exist
only inside these namespaces; everything is deleted at teardown.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.integration.nat_lab import CLIENT_IPS, HOLD, NatLab, need_nat_tools
from tests.integration.nat_lab import SERVER_IP as NAT_SERVER_IP
from tests.integration.nat_lab import SERVER_PORT as NAT_SERVER_PORT
from tests.support.fleet import run_fleet
from tests.support.netns import Sandbox, stop_process
from tests.support.traffic import program

pytestmark = pytest.mark.usefixtures("root_netns")

SERVER_IP, SERVER_PORT = "10.217.100.1", 8080
HOLDS = {"a1": 300, "a2": 200, "g1": 120, "g2": 40}
EGRESS_OF = {"a1": "nat-a", "a2": "nat-a", "g1": "nat-g", "g2": "nat-g"}
EGRESSES = {"nat-a": {"kind": "aws_nat_gateway", "addresses": 1}, "nat-g": {"kind": "gcp_cloud_nat", "addresses": 1}}
ENDPOINT = "%s:%d" % (SERVER_IP, SERVER_PORT)
HOLD_SECONDS = 240  # the longest the connections are held; the fixture closes them first


@pytest.fixture
def fleet(request):
    """{host: Sandbox} of the four hosts, each holding HOLDS[host] connections to the server."""
    server = Sandbox.new(prefix="pes")
    hosts = dict((name, Sandbox.new(prefix="pe" + name)) for name in HOLDS)
    children = []

    def teardown():
        for child in children:
            stop_process(child)
        for box in list(hosts.values()) + [server]:
            box.destroy()
    request.addfinalizer(teardown)
    server.create()
    server.exec(["ip", "addr", "add", SERVER_IP + "/32", "dev", "lo"])
    for number, (name, box) in enumerate(sorted(hosts.items()), 1):
        box.create()
        inside, outside = "10.217.%d.2" % number, "10.217.%d.1" % number
        subprocess.run(["ip", "link", "add", "veth0", "netns", box.name, "type", "veth", "peer", "name",
                        "h%d" % number, "netns", server.name], check=True, capture_output=True, timeout=30)
        box.exec(["ip", "addr", "add", inside + "/24", "dev", "veth0"])
        box.exec(["ip", "link", "set", "veth0", "up"])
        server.exec(["ip", "addr", "add", outside + "/24", "dev", "h%d" % number])
        server.exec(["ip", "link", "set", "h%d" % number, "up"])
        box.exec(["ip", "route", "add", SERVER_IP + "/32", "via", outside])
    server.start(program("serve", SERVER_IP, SERVER_PORT, HOLD_SECONDS + 60), ready="listening")
    for name, box in sorted(hosts.items()):
        child = subprocess.Popen(box.argv([sys.executable, "-c", HOLD, "0.0.0.0", SERVER_IP, SERVER_PORT,
                                           HOLDS[name], 20, HOLD_SECONDS]),
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
        children.append(child)
        held = json.loads(child.stdout.readline())
        assert held == {"open": HOLDS[name], "failed": 0}, (name, held)
    return hosts


def audit_fleet(hosts, report_dir, egresses, host_vars):
    """The port_audit role over ``hosts`` ({name: Sandbox}) with ``port_audit_egresses`` and the hosts'
    ``host_vars``: (rc, output)."""
    playbook = json.dumps([{"name": "site", "hosts": "all", "gather_facts": False,
                            "roles": ["tcpstack.tuning.port_audit"]}], indent=1)
    rc, dummy, output = run_fleet(hosts, {}, playbook, host_vars=host_vars, extra_vars={
        "port_audit_report_dir": str(report_dir), "port_audit_egresses": egresses})
    return rc, output


def test_port_audit_rolls_the_fleet_up_by_egress(fleet, tmp_path):
    report_dir = tmp_path / "report"
    rc, output = audit_fleet(fleet, report_dir, EGRESSES,
                             dict((name, {"tcpstack_egress": egress}) for name, egress in EGRESS_OF.items()))
    assert rc == 0, output
    report = json.loads((report_dir / "port_audit.json").read_text())
    own = {}  # each host's own count towards the server, as its audit measured it
    for row in report["hosts"]:
        top = row["top_destination"]
        assert top["endpoint"] == ENDPOINT, row
        own[row["host"]] = top["in_use"] - top["time_wait"]
    assert own == HOLDS  # the held connections, all open
    entries = dict(((e["egress"], e["destination"]), e) for e in report["egresses"])
    assert sorted(entries) == [("nat-a", ENDPOINT), ("nat-g", ENDPOINT)]

    aws, gcp = entries[("nat-a", ENDPOINT)], entries[("nat-g", ENDPOINT)]
    assert aws["in_use"] == own["a1"] + own["a2"] == 500
    assert gcp["in_use"] == own["g1"] + own["g2"] == 160
    assert [(h["host"], h["in_use"]) for h in aws["hosts"]] == [("a1", 300), ("a2", 200)]
    assert aws["kind"] == "aws_nat_gateway" and aws["capacity"] == 55000 and aws["severity"] == "ok"
    assert aws["sizing"]["addresses_needed"] == 1
    assert aws["sizing"]["sentences"] == [
        "500 concurrent connections to %s at the peak; with a 1.5x margin (750) the egress needs 1 address(es) at "
        "55,000 per address to one destination; 1 declared; source: AWS VPC user guide, \"NAT gateway basics\"."
        % ENDPOINT]
    assert gcp["capacity"] == 64 and gcp["limit"] == "per_vm" and gcp["busiest"] == {"host": "g1", "in_use": 120}
    assert gcp["severity"] == "critical"  # 120 of the 64 ports g1 gets per destination
    assert gcp["sizing"]["min_ports_per_vm"] == math.ceil(120 * 1.5) == 180
    assert gcp["sizing"]["sentences"][0] == (
        "The busiest VM, g1, holds 120 concurrent connections to %s; with a 1.5x margin set min_ports_per_vm to "
        "at least 180 (now 64 per VM per destination); source: Google Cloud NAT documentation (ports and "
        "addresses)." % ENDPOINT)
    # the console summary names the egress at risk, and only that one; Markdown and HTML carry the section
    assert "egress nat-g (gcp_cloud_nat) -> %s: CRITICAL, 120 of 64 per VM" % ENDPOINT in output
    assert "egress nat-a" not in output
    assert "## Shared egress" in (report_dir / "port_audit.md").read_text()
    assert 'data-egress="nat-g"' in (report_dir / "port_audit.html").read_text()


def test_an_undeclared_egress_fails_before_anything_is_written(fleet, tmp_path):
    report_dir = tmp_path / "report"
    rc, output = audit_fleet(fleet, report_dir, EGRESSES, {"a1": {"tcpstack_egress": "nat-x"}})
    assert rc != 0
    assert "tcpstack_egress of host a1 is 'nat-x'; it must name an egress declared in port_audit_egresses " \
           "(declared: nat-a, nat-g)" in output, output
    assert not (report_dir / "port_audit.json").exists()


def test_a_linux_egress_is_sized_from_the_nat_hosts_own_table(tmp_path):
    """The NAT lab as a fleet: the router (``natgw``, which masquerades to 20000-20999) and the clients'
    namespace (``clients``, 300 + 100 connections held from its two addresses) as inventory hosts; the clients
    leave through ``nat-l``, a ``linux`` egress whose NAT host is natgw.  The rollup takes the in-use flows and the
    capacity from natgw's own nat section, and names the clients host with its own count."""
    need_nat_tools()
    with NatLab(rule="nft", ports=(20000, 20999)) as lab:
        lab.server_echo(seconds=300)
        for source, count in ((CLIENT_IPS[0], 300), (CLIENT_IPS[1], 100)):
            assert lab.hold(source, count, seconds=300)[1] == {"open": count, "failed": 0}
        report_dir = tmp_path / "report"
        rc, output = audit_fleet({"natgw": lab.router, "clients": lab.clients}, report_dir,
                                 {"nat-l": {"kind": "linux", "host": "natgw"}},
                                 {"clients": {"tcpstack_egress": "nat-l"}})
        assert rc == 0, output
    report = json.loads((report_dir / "port_audit.json").read_text())
    endpoint = "%s:%d" % (NAT_SERVER_IP, NAT_SERVER_PORT)
    (entry,) = [e for e in report["egresses"] if e["egress"] == "nat-l"]
    assert (entry["kind"], entry["destination"]) == ("linux", endpoint), entry
    assert (entry["in_use"], entry["capacity"], entry["severity"]) == (400, 1000, "ok"), entry
    assert [(h["host"], h["in_use"]) for h in entry["hosts"]] == [("clients", 400)], entry
