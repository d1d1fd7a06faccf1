"""port_usage_info on the real kernel: real ephemeral-port exhaustion between two network namespaces.

The test creates two namespaces joined by a veth pair, addresses 10.213.0.1/24 (client) and
10.213.0.2/24 (server) on the veth ends inside them: traffic only ever flows between the two namespaces
it made.  The client's range is narrowed to 40000-40999 (1,000 ports) with the stock reuse settings
(tcp_tw_reuse 2: no reuse towards a non-loopback destination), and a bounded churn of connect()/close()
against 10.213.0.2:8080 runs until connect() fails with EADDRNOTAVAIL.  The module, run with a real
ansible-playbook inside the client namespace, must report critical and name that destination first
with the right count, and recommend a fix.  The recommendation is applied with linux_tcp (persisted
into /etc/netns/CLIENT/sysctl.d, which ``ip netns exec`` mounts over /etc/sysctl.d), the same churn runs
again without a single EADDRNOTAVAIL, and the module no longer reports critical.

Only /proc/sys inside the namespaces this test created is written, never the machine's own.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.support.ci import need
from tests.support.netns import Sandbox, stop_process
from tests.support.traffic import final_report, program
from tests.support.veth import ClientServer

CLIENT_IP = "10.213.0.1"
SERVER_IP = "10.213.0.2"
SERVER_PORT = 8080
RANGE = "40000 40999"
ATTEMPTS = 3000
STOP_AFTER = 20  # EADDRNOTAVAIL failures before the churn stops
CHURN_SECONDS = 60
NOBODY = pwd.getpwnam("nobody").pw_uid

# Bounded background load inside one namespace, for LOAD_SECONDS: a paced churn of loopback connections (ActiveOpens)
# to 127.0.0.1:9001, served by the same program, and every tenth attempt a non-blocking connect() to 127.0.0.1:9000,
# a listener with backlog 0 that never accepts: its SYNs are dropped and counted in ListenOverflows.
LOAD_SECONDS, LOAD_RATE = 40, 2000
LOAD = program("connect", "127.0.0.1", 9001, "--serve", 1, "--knock", 9000, "--rate", LOAD_RATE,
               "--seconds", LOAD_SECONDS, "--ready")

AUDIT_TASK = {"name": "audit", "tcpstack.tuning.port_usage_info": {"top": 5}, "register": "audit"}


def start(box, cmd):
    """Run ``cmd`` inside the sandbox in the background; returns it and the first line it printed.  Stopped
    when the sandbox is destroyed (at teardown)."""
    child = box.start(cmd)
    return child, child.stdout.readline().strip()


def play(*tasks):
    return json.dumps([{"name": "port_usage_info", "hosts": "all", "gather_facts": False, "tasks": list(tasks)}])


@pytest.fixture
def pair(root_netns, request):
    """(client, server) sandboxes joined by a veth pair; both deleted (with /etc/netns/NAME) afterwards."""
    link = ClientServer(CLIENT_IP, SERVER_IP, prefixes=("puic", "puis"))
    request.addfinalizer(link.destroy)
    link.create()
    return link.client, link.server


def ports_towards(box, address, port):
    """Sockets towards address:port as ``ss`` counts them (an independent reading of the same table)."""
    out = box.exec(["ss", "-Htan", "dst", "%s:%d" % (address, port)]).stdout
    return len([line for line in out.splitlines() if line.strip()])


def churn(client):
    done = client.exec(program("connect", SERVER_IP, SERVER_PORT, "--attempts", ATTEMPTS, "--stop-after", STOP_AFTER,
                               "--seconds", CHURN_SECONDS), timeout=CHURN_SECONDS + 30)
    return json.loads(done.stdout)


def audit(client, check=False):
    rc, results = client.run_playbook(play(AUDIT_TASK), check=check)
    assert rc == 0, client.last_run.describe()
    (result,) = [r for r in results if r["_task"] == "audit"]
    assert result["changed"] is False and not result.get("failed")
    return result


def test_exhaustion_found_fixed_and_gone(pair):
    client, server = pair
    assert client.set_sysctl("net.ipv4.ip_local_port_range", RANGE).split() == RANGE.split()
    assert client.sysctl("net.ipv4.tcp_tw_reuse") == "2"  # stock: no reuse towards 10.213.0.2
    assert client.sysctl("net.ipv4.ip_local_reserved_ports") == ""
    # our own listener (not Sandbox.listener): it waits for the client's FIN before closing
    dummy, line = start(server, program("serve", SERVER_IP, SERVER_PORT, 300))
    assert line == "listening"

    # 1. exhaust the 1,000 ports towards 10.213.0.2:8080
    first = churn(client)
    assert first["eaddrnotavail"] == STOP_AFTER, first
    assert first["other"] == 0, first
    # at least the 1,000 ports; a few more when a TIME_WAIT socket is killed by a late RST (RFC 1337
    # "TIME-WAIT assassination", tcp_rfc1337 is 0), which frees its port
    assert 1000 <= first["made"] <= 1000 + STOP_AFTER, first
    time.sleep(0.5)  # let the server close its side: every client port ends in TIME_WAIT

    before = audit(client)
    print("first churn:", first, "\nfindings:", before["findings"], "\nrecommendations:", before["recommendations"])
    assert before["verdict"] == "critical", before["findings"]
    held = ports_towards(client, SERVER_IP, SERVER_PORT)
    top = before["destinations"][0]
    assert top["endpoint"] == "%s:%d" % (SERVER_IP, SERVER_PORT)
    assert top["in_use"] == top["busiest_in_use"] == held == 1000  # every port of the range
    assert top["busiest_local_address"] == CLIENT_IP
    assert top["time_wait"] >= held - 5 and top["reuse"] is False
    assert top["utilisation"] == 1.0
    assert before["ephemeral"]["usable"] == 1000
    assert before["findings"][0].startswith("%s:%d holds 1,000 of 1,000 usable ports (100%%), " % (SERVER_IP, SERVER_PORT))
    assert before["recommendations"]["tw_reuse"] == 1
    assert before["recommendations"]["port_range"] == "32768 65535"
    assert before["capacity"]["remote"]["max_new_connections_per_second"] == round(1000 / 60.0, 2)
    assert before["source"] == "netlink" and before["unreadable"] == []

    # the same in check mode
    checked = audit(client, check=True)
    assert checked["verdict"] == "critical"
    assert checked["destinations"][0]["endpoint"] == top["endpoint"]

    # 2. apply the recommendation with linux_tcp (persisted into the client's own sysctl.d)
    rc, results = client.run_playbook(play({"name": "fix", "tcpstack.tuning.linux_tcp": "{{ fix }}"}),
                                      extra_vars={"fix": before["recommendations"]})
    assert rc == 0, client.last_run.describe()
    assert client.sysctl("net.ipv4.tcp_tw_reuse") == "1"
    assert client.sysctl("net.ipv4.ip_local_port_range").split() == ["32768", "65535"]
    assert "net.ipv4.tcp_tw_reuse = 1" in (client.read_file("60-tcpstack-tuning.conf") or "")

    # 3. the same churn again: not one EADDRNOTAVAIL
    second = churn(client)
    assert {k: second[k] for k in ("made", "eaddrnotavail", "other", "errors")} == {
        "made": ATTEMPTS, "eaddrnotavail": 0, "other": 0, "errors": {}}, second
    time.sleep(0.5)

    after = audit(client)
    print("second churn:", second, "\nverdict:", after["verdict"], after["findings"], after["destinations"][0])
    assert after["verdict"] != "critical", after["findings"]
    assert after["verdict"] == "ok", after["findings"]
    top = after["destinations"][0]
    assert top["endpoint"] == "%s:%d" % (SERVER_IP, SERVER_PORT)
    # the first churn's ports are still in TIME_WAIT too, less those connect() reused
    assert top["in_use"] == ports_towards(client, SERVER_IP, SERVER_PORT) >= 1000
    assert top["reuse"] is True
    assert after["capacity"]["remote"]["reuse"] is True
    assert after["recommendations"] == {}


def test_sample_measures_rates_and_rising_overflows(root_netns, request):
    """sample_seconds: the measured rate of new connections, and ListenOverflows rising, from the real counters."""
    box = Sandbox.new(prefix="puil")
    request.addfinalizer(box.destroy)
    box.create()
    load, line = start(box, LOAD)
    assert line == "running"
    rc, results = box.run_playbook(play(
        {"name": "sampled", "tcpstack.tuning.port_usage_info": {"sample_seconds": 3, "top": 3}},
        {"name": "top 0", "tcpstack.tuning.port_usage_info": {"top": 0}, "ignore_errors": True},
        {"name": "sample 61", "tcpstack.tuning.port_usage_info": {"sample_seconds": 61}, "ignore_errors": True},
    ), timeout=120)
    assert rc == 0, box.last_run.describe()
    assert load.poll() is None, "the load ended before the sample did"
    by_name = dict((r["_task"], r) for r in results)
    result = by_name["sampled"]
    print("findings:", result["findings"], "\nmeasured:", result["capacity"]["measured"],
          "\nrecommendations:", result["recommendations"])
    sample = result["counters"]["sample"]
    assert 3 <= sample["seconds"] < 4
    assert sample["changes"]["ActiveOpens"]["delta"] > 0
    assert sample["changes"]["ListenOverflows"]["delta"] > 0
    measured = result["capacity"]["measured"]
    assert measured["active_opens_per_second"] > 50
    assert any(f.startswith("ListenOverflows is rising: +") for f in result["findings"])
    assert result["verdict"] == "warning"  # loopback churn with tcp_tw_reuse 2: TIME_WAIT ports are reusable
    dests = dict((d["endpoint"], d) for d in result["destinations"])
    # the churned destination: its TIME_WAIT ports are reusable and do not block
    assert dests["127.0.0.1:9001"]["reuse"] is True and dests["127.0.0.1:9001"]["time_wait"] > 0
    assert dests["127.0.0.1:9001"]["blocking"] == dests["127.0.0.1:9001"]["busiest_in_use"] - dests["127.0.0.1:9001"]["busiest_time_wait"]
    # the connect()s stuck in SYN_SENT towards the full listener hold their ports, none in TIME_WAIT
    assert dests["127.0.0.1:9000"]["time_wait"] == 0 and dests["127.0.0.1:9000"]["blocking"] > 0
    assert result["recommendations"]["somaxconn"] >= 8192
    assert "max_syn_backlog" in result["recommendations"]
    assert by_name["top 0"]["failed"] and "top: 0 is not valid: an integer number of destinations from 1 to 1000" in by_name["top 0"]["msg"]
    assert by_name["sample 61"]["failed"] and "sample_seconds: 61.0 is not valid: a number of seconds from 0 to 60" in by_name["sample 61"]["msg"]


# ---------------------------------------------------------------- who burns the ports (issue 14)
CHURN_RATE = 100  # new connections per second from the churning client
CLIENT_SECONDS = 25  # how long the three clients run: longer than ansible-playbook's start and the sample
SAMPLE = 3
POOLED_PORT, CHURN_PORT, BIND_PORT = 9000, 9001, 9002


def sampled_audit(box, **kwargs):
    rc, results = box.run_playbook(play({"name": "audit", "tcpstack.tuning.port_usage_info":
                                         {"sample_seconds": SAMPLE, "top": 5}, "register": "audit"}),
                                   timeout=120, **kwargs)
    assert rc == 0, box.last_run.describe()
    (result,) = [r for r in results if r["_task"] == "audit"]
    assert not result.get("failed"), result
    return result


def client_report(child, seconds=CLIENT_SECONDS + 20):
    """The JSON line a traffic client prints when it is done (it runs for CLIENT_SECONDS)."""
    report = final_report(child, seconds)
    assert report is not None, "the client printed no report"
    return report


def servers(link):
    link.serve(program("serve", SERVER_IP, POOLED_PORT, CLIENT_SECONDS + 60, "--echo"))
    link.serve(program("serve", SERVER_IP, CHURN_PORT, CLIENT_SECONDS + 60, "--echo"))
    link.serve(program("serve", SERVER_IP, BIND_PORT, CLIENT_SECONDS + 60))


def pooled_client():
    """4 keep-alive connections, CHURN_RATE one-byte requests per second over them: the same traffic volume as
    the churner's, without new connections."""
    return program("connect", SERVER_IP, POOLED_PORT, "--pool", 4, "--rate", CHURN_RATE, "--seconds", CLIENT_SECONDS,
                   "--exchange", "--ready")


def churning_client():
    """CHURN_RATE new connections per second, each a byte there and back, held 2 ms, closed by the client."""
    return program("connect", SERVER_IP, CHURN_PORT, "--rate", CHURN_RATE, "--seconds", CLIENT_SECONDS, "--exchange",
                   "--hold-ms", 2, "--ready")


def within(measured, true, tolerance=0.2):
    return abs(measured - true) <= tolerance * true


def test_the_churner_is_named_the_pooled_client_is_not_and_the_binder_is_flagged(root_netns, request):
    link = ClientServer(CLIENT_IP, SERVER_IP, prefixes=("puwc", "puws"))
    request.addfinalizer(link.destroy)
    link.create()
    servers(link)
    client = link.client
    pooled = client.start(pooled_client(), ready="running")
    churner = client.start(churning_client(), ready="running")
    binder = client.start(program("bind-first", SERVER_IP, BIND_PORT, "--local", CLIENT_IP, "--batch", 5, "--hold", 0.5,
                                  "--seconds", CLIENT_SECONDS), ready="running")

    result = sampled_audit(client)
    own = client_report(churner)
    print("churner:", own, "\ntop churner:", result["top_churner"], "\nclient findings:",
          [f["sentence"] for f in result["client_findings"]], "\nattribution:", result["attribution"])
    assert own["failed"] == 0 and own["under_10ms"] >= 0.95 * own["made"], own  # connections of under 10 ms
    assert result["source"] == "netlink"

    # the churner: named first, with its rate within 20% of its own count
    top = result["top_churner"]
    assert top["pid"] == churner.pid == own["pid"]
    assert top["destination"] == "%s:%d" % (SERVER_IP, CHURN_PORT)
    assert within(top["new_connections_per_second"], own["rate"]), (top, own)
    assert result["processes"][0]["pid"] == churner.pid
    assert result["processes"][0]["cmdline"].startswith(sys.executable)
    assert result["processes"][0]["user"] == "root"
    pooling = [f for f in result["client_findings"] if f["kind"] == "pooling"]
    assert pooling[0]["pid"] == churner.pid and within(pooling[0]["new_connections_per_second"], own["rate"])

    # the pooled client, with the same traffic volume: listed with its 4 connections, not blamed
    assert not [f for f in result["client_findings"] if f["pid"] == pooled.pid]
    (mine,) = [p for p in result["processes"] if p["pid"] == pooled.pid]
    assert mine["established"] == 4 and mine["new_connections"] == 0 and mine["time_wait"] == 0

    # the binder: bound, unconnected sockets come back as CLOSE with BOUND_INACTIVE in the mask (Linux 6.x)
    (bind,) = [f for f in result["client_findings"] if f["kind"] == "bind_before_connect"]
    assert bind["pid"] == binder.pid and bind["bound_inactive_seen"] > 0
    assert "IP_BIND_ADDRESS_NO_PORT" in bind["advice"] and "IP_LOCAL_PORT_RANGE" in bind["advice"]
    assert bind["sentence"] in result["findings"]

    assert result["cure"]["where"] in ("client", "both")
    assert "pid %d" % churner.pid in result["cure"]["summary"]
    assert result["attribution"]["unreadable_processes"] == 0 and result["unreadable"] == []


def test_unprivileged_run_attributes_its_own_processes(root_netns, request):
    """As ``nobody``: the module succeeds, lists the fd tables it could not read, and names its own churner."""
    need(shutil.which("setpriv") is not None, "needs setpriv (Debian package util-linux)")
    link = ClientServer(CLIENT_IP, SERVER_IP, prefixes=("punc", "puns"))
    request.addfinalizer(link.destroy)
    link.create()
    servers(link)
    client = link.client
    drop = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"]
    pooled = client.start(pooled_client(), ready="running")  # root's
    churner = subprocess.Popen(client.argv(drop + churning_client()), stdout=subprocess.PIPE, text=True,
                               start_new_session=True)
    request.addfinalizer(lambda: stop_process(churner))
    assert churner.stdout.readline().strip() == "running"

    home = Path(tempfile.mkdtemp(prefix="tcpstack-nobody-"))  # pytest's tmp_path is under a 0700 directory
    request.addfinalizer(lambda: shutil.rmtree(home, ignore_errors=True))
    os.chown(home, NOBODY, NOBODY)
    # run as nobody: the run's own directory (playbook, results file) must be readable and writable by it
    wrapper = ["sh", "-c", 'chmod 0755 . && chmod 0666 results.jsonl && exec "$@"', "sh"] + drop
    result = sampled_audit(client, wrapper=wrapper, env={"HOME": str(home), "ANSIBLE_LOCAL_TEMP": str(home / "tmp"),
                                                         "ANSIBLE_REMOTE_TEMP": str(home / "tmp")})
    own = client_report(churner)
    print("churner:", own, "\ntop churner:", result["top_churner"], "\nunreadable:", result["unreadable"],
          "\nwarnings:", result.get("warnings"))
    unreadable = [item for item in result["unreadable"] if item["source"].startswith("/proc/PID/fd of ")]
    assert unreadable and "Permission denied" in unreadable[0]["reason"]
    assert result["attribution"]["unreadable_processes"] > 0
    assert pooled.pid in result["attribution"]["unreadable_pids"] or result["attribution"]["unreadable_processes"] > 20
    assert any("/proc/PID/fd of" in warning for warning in result.get("warnings", []))
    top = result["top_churner"]
    assert top["pid"] == churner.pid and top["user"] == "nobody"
    # issue 21: the top churner is named, and reports its rate, on what was seen (never an inferred share); its
    # process row keeps the whole count, the inferred share marked, within 20% of its own
    (row,) = [p for p in result["processes"] if p["pid"] == churner.pid]
    assert within(row["new_connections_per_second"], own["rate"]), (row, own)
    assert top["new_connections_per_second"] <= row["new_connections_per_second"]
    assert not [p for p in result["processes"] if p["pid"] == pooled.pid]  # root's: never invented
