"""The verdict from what really holds ports, on the real kernel (issue 21, item 4).

Two namespaces joined by a veth pair (10.227.0.1 client, 10.227.0.2 server); the client's range is narrowed to
40000-40999 (1,000 ports), stock reuse settings (tcp_tw_reuse 2: no reuse towards a non-loopback destination).

- Client-first close at 20 connections per second (churn.py connect, served by churn.py serve, which waits for the
  client's FIN): each connection leaves a TIME_WAIT on the client for 60 s, so the range would be used up after
  50 s.  After about 12 s, with fewer than half the ports held and no connect() failed, port_usage_info (through a
  real ansible-playbook, sample_seconds 0 and 2) says critical by projection, and port_monitor's sampler (laid out as
  the role installs it, run once) writes tcpstack_verdict 2; the fleet report's row of the same result agrees.
- Server-first close at 50 per second (a server here that answers one byte and closes at once; the client reads it,
  then closes): no TIME_WAIT stays on the client.  The verdict stays ok, the capacity note claims no limit, and the
  metric file says 0.

Only /proc/sys inside the namespaces this test created is written.
"""

from __future__ import annotations

import json
import re
import sys
import time

import pytest

from ansible_collections.tcpstack.tuning.plugins.plugin_utils.fleet_report import host_row
from tests.support.collection import install_like_the_role
from tests.support.traffic import final_report, program
from tests.support.veth import ClientServer

pytestmark = pytest.mark.usefixtures("root_netns")

CLIENT_IP, SERVER_IP, PORT = "10.227.0.1", "10.227.0.2", 8080
RANGE = "40000 40999"
CLIENT_SECONDS = 45  # 20/s for 45 s holds at most 900 ports: the range is never used up
WARM = 12  # seconds of churn before the first audit: more than the 10 s the TIME_WAIT timers are read over
VERDICT = {"ok": 0, "warning": 1, "critical": 2}

# A server that closes first: it reads the client's byte, answers one, and closes its end at once.
SERVER_FIRST = r"""
import socket, sys, time
sock = socket.socket()
sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
sock.bind((sys.argv[1], int(sys.argv[2])))
sock.listen(1024)
sock.settimeout(0.5)
print("listening", flush=True)
deadline = time.monotonic() + float(sys.argv[3])
while time.monotonic() < deadline:
    try:
        conn, peer = sock.accept()
    except OSError:
        continue
    try:
        conn.settimeout(2)
        conn.recv(1)
        conn.sendall(b"x")
    except OSError:
        pass
    conn.close()
"""


def play(*tasks):
    return json.dumps([{"name": "verdict", "hosts": "all", "gather_facts": False, "tasks": list(tasks)}])


def audits(box):
    """port_usage_info without and with a sample, in one real ansible-playbook run: {task name: result}."""
    rc, results = box.run_playbook(play(
        {"name": "now", "tcpstack.tuning.port_usage_info": {"top": 3}},
        {"name": "sampled", "tcpstack.tuning.port_usage_info": {"top": 3, "sample_seconds": 2}},
    ), timeout=180)
    assert rc == 0, box.last_run.describe()
    out = dict((r["_task"], r) for r in results if r["_task"] in ("now", "sampled"))
    assert sorted(out) == ["now", "sampled"] and not any(r.get("failed") for r in out.values()), out
    return out


def monitor(box, tmp_path):
    """The sampler's textfile after one run (--once) inside ``box``: {metric line name with labels: value}."""
    entry = install_like_the_role(tmp_path / "code")
    textfile = tmp_path / "textfile"
    textfile.mkdir()
    done = box.exec([sys.executable, "-s", "-E", "-B", entry, "--directory", textfile, "--top", 3, "--once"],
                    cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    return (textfile / "tcpstack.prom").read_text()


def metric(text, name, **labels):
    values = []
    for line in text.splitlines():
        match = re.match(r"^%s(\{[^}]*\})? (\S+)$" % name, line)
        if match and all('%s="%s"' % item in (match.group(1) or "") for item in labels.items()):
            values.append(float(match.group(2)))
    return values


@pytest.fixture
def link(request):
    pair = ClientServer(CLIENT_IP, SERVER_IP, prefixes=("pvc", "pvs"))
    request.addfinalizer(pair.destroy)
    pair.create()
    assert pair.client.set_sysctl("net.ipv4.ip_local_port_range", RANGE).split() == RANGE.split()
    assert pair.client.sysctl("net.ipv4.tcp_tw_reuse") == "2"  # stock: no reuse towards 10.227.0.2
    return pair


def churn_and_audit(link, tmp_path, server, client):
    """Serve ``server``, churn with ``client`` (ready: "running"), audit it every way while it runs:
    (the audits' results, port_monitor's metric text, the client's own final report)."""
    link.serve(server)
    churn = link.client.start(client, ready="running")
    time.sleep(WARM)
    results = audits(link.client)
    text = monitor(link.client, tmp_path)
    assert churn.poll() is None, "the churn ended before the audits did"
    own = final_report(churn, CLIENT_SECONDS + 30)
    print("client:", own, "\n".join("\n%s: %s %s %s" % (name, r["verdict"], r["findings"], r["notes"])
                                    for name, r in results.items()))
    return results, text, own


def test_client_first_churn_is_critical_by_projection_before_the_range_is_used_up(link, tmp_path):
    results, text, own = churn_and_audit(link, tmp_path, program("serve", SERVER_IP, PORT, CLIENT_SECONDS + 60),
                                         program("connect", SERVER_IP, PORT, "--rate", 20, "--seconds",
                                                 CLIENT_SECONDS, "--ready"))
    assert own["failed"] == 0 and own["eaddrnotavail"] == 0, own  # nothing failed: the range was never used up
    endpoint = "%s:%d" % (SERVER_IP, PORT)
    for name, result in results.items():
        top = result["destinations"][0]
        assert top["endpoint"] == endpoint
        assert top["utilisation"] < 0.7, (name, top)  # ok now: fewer than 700 of the 1,000 ports held
        assert 14 <= top["time_wait_entered_per_second"] <= 22, (name, top)  # ~20/s over the last 10 s
        assert result["verdict"] == "critical", (name, result["findings"])
        (finding,) = [f for f in result["findings"] if f.startswith("at ")]
        assert "new connections per second that leave a TIME_WAIT here, %s will hold" % endpoint in finding
        assert "within 60 s" in finding
        assert any("left a TIME_WAIT here" in note and "sustains at most 16.7" in note for note in result["notes"])
        assert host_row("client", "linux", result)["verdict"] == "critical"
        assert "tw_reuse" in result["recommendations"] and "port_range" in result["recommendations"]
    assert metric(text, "tcpstack_verdict") == [VERDICT["critical"]]
    (rate,) = metric(text, "tcpstack_destination_time_wait_entered_per_second", destination=endpoint)
    (ratio,) = metric(text, "tcpstack_destination_projected_utilisation_ratio", destination=endpoint)
    assert 14 <= rate <= 22 and ratio >= 0.9, (rate, ratio)


def test_server_first_close_stays_ok_and_claims_no_limit(link, tmp_path):
    results, text, own = churn_and_audit(
        link, tmp_path, [sys.executable, "-c", SERVER_FIRST, SERVER_IP, str(PORT), str(CLIENT_SECONDS + 60)],
        program("connect", SERVER_IP, PORT, "--rate", 50, "--seconds", CLIENT_SECONDS, "--exchange", "--hold-ms", 10,
                "--ready"))
    assert own["failed"] == 0 and own["made"] >= 50 * (CLIENT_SECONDS - 2), own
    for name, result in results.items():
        assert result["verdict"] == "ok", (name, result["findings"])
        assert result["findings"] == []
        assert not any("sustains" in note for note in result["notes"]), (name, result["notes"])
        assert result["capacity"]["time_wait_entered_per_second"] <= 1, (name, result["capacity"])
        assert host_row("client", "linux", result)["verdict"] == "ok"
    # the sample measured the opens: the note says their peers close first
    sampled = results["sampled"]
    assert sampled["capacity"]["measured"]["active_opens_per_second"] >= 40
    assert any("their peers close first, so their ports are free again at once" in note for note in sampled["notes"])
    assert metric(text, "tcpstack_verdict") == [VERDICT["ok"]]
