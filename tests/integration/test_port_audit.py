"""The port_audit role and the audit playbook against a mixed fleet, with real ansible-playbook on the real kernel.

The fleet, in one inventory and one ansible-playbook run:

- ``web``: a network namespace joined by a veth pair to ``backend`` (10.214.0.1 and 10.214.0.2, addresses that
  exist only inside those two namespaces).  web's range is narrowed to 1,000 ports with the stock reuse settings
  and a bounded churn of connect()/close() towards backend:8080 runs until connect() fails with EADDRNOTAVAIL:
  real exhaustion, so the audit must call web critical and recommend tw_reuse and a wider range;
- ``backend`` and ``idle``: Linux namespaces with nothing wrong;
- ``win2022`` (healthy) and ``win2016`` (80% of a 1,000-port dynamic range held: warning): simulated Windows
  hosts over WinRM on 127.0.0.1 (tests/support/windows_sim).

Linux hosts are reached with ``ansible_connection: local`` and an interpreter that runs Python inside their
namespace (``Sandbox.python_wrapper``).  The HTML report is opened in a real headless browser (Debian's chromium).
Only /proc/sys inside the namespaces this test created is written, never the machine's own.
"""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.support.ci import need
from tests.support.fleet import run_fleet
from tests.support.netns import Sandbox
from tests.support.traffic import program
from tests.support.veth import ClientServer
from tests.support.windows_sim import PASSWORD, USER, Simulator


pytestmark = pytest.mark.usefixtures("root_netns")

WEB_IP, BACKEND_IP, BACKEND_PORT = "10.214.0.1", "10.214.0.2", 8080
RANGE = "40000 40999"
ATTEMPTS, STOP_AFTER, CHURN_SECONDS = 3000, 20, 60
ROLE = "tcpstack.tuning.port_audit"
HOSTS = ("web", "backend", "idle", "win2022", "win2016")


def play(**play_keys):
    body = {"name": "site", "hosts": "all", "gather_facts": False, "roles": [ROLE]}
    body.update(play_keys)
    return json.dumps([body], indent=1)


@pytest.fixture
def fleet(request):
    """web -> backend over a veth pair, an idle Linux host, two simulated Windows hosts; all removed afterwards."""
    link = ClientServer(WEB_IP, BACKEND_IP, prefixes=("paw", "pab"))
    idle = Sandbox.new(prefix="pai")
    for made in (link, idle):
        request.addfinalizer(made.destroy)
        made.create()
    web, backend = link.client, link.server
    server = link.serve(program("serve", BACKEND_IP, BACKEND_PORT, 600), ready=None)  # stopped by link.destroy()
    assert server.stdout.readline().strip() == "listening"
    assert web.set_sysctl("net.ipv4.ip_local_port_range", RANGE).split() == RANGE.split()
    assert web.sysctl("net.ipv4.tcp_tw_reuse") == "2"  # stock: no reuse towards 10.214.0.2

    with Simulator(profile="server2022", username=USER, password=PASSWORD) as win2022, \
            Simulator(profile="server2016", language="de-DE", username=USER, password=PASSWORD) as win2016:
        # win2016: 800 of 1,000 dynamic ports held towards one service: warning
        win2016.host.set_dynamic_range(49152, 1000)
        for port in range(49152, 49952):
            win2016.host.add_connection("10.0.0.5", port, "10.0.0.9", 443, "TimeWait", 0)
        yield {"web": web, "backend": backend, "idle": idle}, {"win2022": win2022, "win2016": win2016}


def exhaust(web):
    """Run the bounded churn from web to backend until EADDRNOTAVAIL (or at once when ports are still held)."""
    done = web.exec(program("connect", BACKEND_IP, BACKEND_PORT, "--attempts", ATTEMPTS, "--stop-after", STOP_AFTER,
                            "--seconds", CHURN_SECONDS), timeout=CHURN_SECONDS + 30)
    counts = json.loads(done.stdout)
    assert counts["eaddrnotavail"] == STOP_AFTER and counts["other"] == 0, counts
    return counts


def task(results, name):
    return [r for r in results if r["_task"] == name]


REPORT_TASK = "Write the fleet report on the controller and print its summary"


# ------------------------------------------------------------------ the browser
def chromium():
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def browse(page, screenshot=None):
    """The DOM of ``page`` after a real headless chromium loaded it (and, optionally, a screenshot)."""
    browser = chromium()
    need(browser is not None, "needs chromium (Debian package chromium; tools/hostdeps.py installs it)")
    with tempfile.TemporaryDirectory(prefix="tcpstack-chromium-") as profile:
        base = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--user-data-dir=" + profile]
        dom = subprocess.run(base + ["--dump-dom", Path(page).as_uri()], capture_output=True, text=True, timeout=120,
                             check=False)
        assert dom.returncode == 0 and "<html" in dom.stdout, dom.stderr[-2000:]
        if screenshot is not None:
            subprocess.run(base + ["--window-size=1400,900", "--screenshot=%s" % screenshot, Path(page).as_uri()],
                           capture_output=True, timeout=120, check=False)
    return dom.stdout


class Rows(HTMLParser):
    """Host rows (tr.host) of the DOM chromium dumped: data-host, data-verdict, the text of each cell."""

    def __init__(self):
        super().__init__()
        self.rows, self.tags, self.h1 = [], [], ""
        self._row = self._cell = None
        self._in_h1 = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "tr" and "host" in (attrs.get("class") or "").split():
            self._row = {"host": attrs.get("data-host"), "verdict": attrs.get("data-verdict"), "cells": []}
        elif tag == "td" and self._row is not None:
            self._cell = []
        elif tag == "h1":
            self._in_h1 = True

    def handle_endtag(self, tag):
        if tag == "td" and self._row is not None and self._cell is not None:
            self._row["cells"].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "h1":
            self._in_h1 = False

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_h1:
            self.h1 += data


# ------------------------------------------------------------------ tests
def test_mixed_fleet_report_gate_and_check_mode(fleet, tmp_path):
    linux, sims = fleet
    web = linux["web"]
    report_dir = tmp_path / "report"
    title = 'Audit <script>document.title="owned"</script> & co'
    first = exhaust(web)
    assert first["made"] >= 1000, first  # a few more when a late RST frees a TIME_WAIT port (RFC 1337)

    rc, results, output = run_fleet(linux, sims, "tcpstack.tuning.audit",
                                    extra_vars={"port_audit_report_dir": str(report_dir), "port_audit_title": title})
    assert rc == 0, output
    # one info module call per host, the right one
    for host in HOSTS:
        ran = [r["_action"] for r in results if r["_host"] == host and r["_status"] == "ok"
               and r["_action"].endswith("port_usage_info")]
        assert ran == ["tcpstack.tuning.%s" % ("win_port_usage_info" if host.startswith("win") else "port_usage_info")]
    (reported,) = task(results, REPORT_TASK)  # once for the fleet
    assert reported["changed"] is False

    report = json.loads((report_dir / "port_audit.json").read_text())
    order = [row["host"] for row in report["hosts"]]
    print("\n".join(reported["summary"]))
    assert sorted(order) == sorted(HOSTS)
    assert order[:2] == ["web", "win2016"], order  # critical, then warning, then the healthy ones
    assert report["critical"] == ["web"] and report["verdict"] == "critical"
    top = report["hosts"][0]
    assert top["verdict"] == "critical" and top["platform"] == "linux" and top["utilisation"] == 1.0
    assert top["top_destination"]["endpoint"] == "%s:%d" % (BACKEND_IP, BACKEND_PORT)
    assert top["top_destination"]["in_use"] >= 1000
    assert top["recommendations"]["tw_reuse"] == 1 and top["recommendations"]["port_range"] == "32768 65535"
    assert top["findings"][0].startswith("%s:%d holds 1,000 of 1,000 usable ports" % (BACKEND_IP, BACKEND_PORT))
    warn = report["hosts"][1]
    assert warn["verdict"] == "warning" and warn["platform"] == "windows" and 0.7 <= warn["utilisation"] < 0.9
    assert all(row["verdict"] == "ok" for row in report["hosts"][2:]), report["hosts"]
    # the summary table at the end of the play, riskiest first
    assert re.search(r"^web\s+linux\s+CRITICAL\s+100%\s+10\.214\.0\.2:8080", output, re.M), output
    assert output.index("\nweb ") < output.index("\nwin2016 ") < output.index("\nidle ")
    assert "html report: %s" % (report_dir / "port_audit.html") in output

    markdown = (report_dir / "port_audit.md").read_text()
    assert [line.split(" | ")[0][2:] for line in markdown.splitlines()[6:] if line.startswith("| ")] == order
    assert "<script" not in markdown

    # the HTML page in a real browser: every host has its row, riskiest first, the title is text
    page = report_dir / "port_audit.html"
    shot = tmp_path / "report.png"
    rows = Rows()
    rows.feed(browse(page, screenshot=shot))
    print("screenshot:", shot, shot.exists())
    assert [row["host"] for row in rows.rows] == order
    assert [row["verdict"] for row in rows.rows] == [row["verdict"] for row in report["hosts"]]
    web_cells = rows.rows[0]["cells"]
    assert web_cells[0] == "web" and web_cells[2] == "critical" and web_cells[3] == "100%"
    assert web_cells[4].startswith("%s:%d" % (BACKEND_IP, BACKEND_PORT))
    assert "tw_reuse: 1" in web_cells[5] and "port_range: 32768 65535" in web_cells[5]
    assert "script" not in rows.tags  # the title's markup stayed text: nothing ran
    assert rows.h1 == title
    assert "http" not in re.sub(r'xmlns="[^"]*"', "", page.read_text())  # no external asset
    assert html.escape(title) in page.read_text()

    # the CI gate: fail on critical, after writing the report
    exhaust(web)
    (report_dir / "port_audit.json").unlink()
    rc, results, output = run_fleet(linux, sims, "tcpstack.tuning.audit",
                                    extra_vars={"port_audit_report_dir": str(report_dir),
                                                "port_audit_fail_on_critical": True, "port_audit_formats": ["json"]})
    assert rc != 0, output
    (gate,) = task(results, REPORT_TASK)
    assert gate["_status"] == "failed" and gate["msg"] == "critical ephemeral-port exhaustion on 1 host(s): web", gate
    assert json.loads((report_dir / "port_audit.json").read_text())["critical"] == ["web"]

    # check mode: the same verdicts, and no host changes
    exhaust(web)
    before = {name: box.snapshot() for name, box in linux.items()}
    registry = {name: (sim.host.registry_value("TcpTimedWaitDelay"), sim.host.dynamic_range()) for name, sim in sims.items()}
    trips = {name: sim.round_trips for name, sim in sims.items()}
    rc, results, output = run_fleet(linux, sims, "tcpstack.tuning.audit", check=True,
                                    extra_vars={"port_audit_report_dir": str(tmp_path / "check")})
    assert rc == 0, output
    assert not any(r.get("changed") for r in results)
    checked = json.loads((tmp_path / "check" / "port_audit.json").read_text())
    assert [(r["host"], r["verdict"]) for r in checked["hosts"]][:2] == [("web", "critical"), ("win2016", "warning")]
    assert {name: box.snapshot() for name, box in linux.items()} == before
    assert {name: (sim.host.registry_value("TcpTimedWaitDelay"), sim.host.dynamic_range())
            for name, sim in sims.items()} == registry
    assert {name: sim.round_trips - trips[name] for name, sim in sims.items()} == {"win2022": 1, "win2016": 1}


def test_hosts_variable_and_a_host_that_cannot_be_audited(fleet, tmp_path):
    linux, sims = fleet
    sims["win2022"].faults.drop_command(1)  # the next command to win2022 gets no answer
    rc, results, output = run_fleet({"idle": linux["idle"]}, sims, "tcpstack.tuning.audit",
                                    extra_vars={"port_audit_report_dir": str(tmp_path), "port_audit_hosts": "idle:win2022",
                                                "port_audit_formats": ["json", "html"]})
    assert rc != 0, output  # win2022 failed; the report still covers it
    report = json.loads((tmp_path / "port_audit.json").read_text())
    assert [(r["host"], r["verdict"]) for r in report["hosts"]] == [("win2022", "unknown"), ("idle", "ok")]
    assert report["hosts"][0]["error"] and report["hosts"][0]["error"] != "no result: the host was unreachable or " \
        "its audit failed before it ran", report["hosts"][0]  # the reason, from the failed task
    print("win2022:", report["hosts"][0]["error"])
    assert not (tmp_path / "port_audit.md").exists()
    assert {r["_host"] for r in results} <= {"idle", "win2022"}  # win2016 is not in port_audit_hosts


@pytest.mark.parametrize("variables, fragment, task_name", [
    ({"port_audit_top": "many"}, "port_audit_top", "Validating arguments against arg spec"),
    ({"port_audit_formats": ["pdf"]}, "port_audit_formats", "Validating arguments against arg spec"),
    ({"port_audit_fail_on_critical": "perhaps"}, "port_audit_fail_on_critical", "Validating arguments against arg spec"),
    ({"port_audit_platform": "solaris"}, "port_audit_platform", "Validating arguments against arg spec"),
    ({"port_audit_sample_seconds": "soon"}, "port_audit_sample_seconds", "Validating arguments against arg spec"),
    ({"port_audit_event_hours": [1]}, "port_audit_event_hours", "Validating arguments against arg spec"),
    ({"port_audit_critical_percent": "high"}, "port_audit_critical_percent", "Validating arguments against arg spec"),
    ({"port_audit_top": 0}, "port_audit_top: 0 is not valid: an integer number of destinations from 1 to 1000",
     "Check the role variables"),
    ({"port_audit_sample_seconds": 61}, "port_audit_sample_seconds: 61 is not valid: a number of seconds from 0 to 60",
     "Check the role variables"),
    ({"port_audit_warning_percent": 95}, "port_audit_warning_percent: 95 is not valid: at most port_audit_critical_percent (90)",
     "Check the role variables"),
])
def test_argument_errors_stop_before_any_host_is_audited(variables, fragment, task_name, tmp_path):
    with Sandbox.new(prefix="paa") as box:
        rc, results = box.run_playbook(play(), extra_vars=dict(variables, port_audit_report_dir=str(tmp_path)))
        assert rc != 0
        failed = [r for r in results if r["_status"] == "failed"]
        assert failed and failed[0]["_task"].startswith(task_name), box.last_run.describe()
        assert fragment in failed[0]["msg"] or fragment in json.dumps(failed[0].get("argument_errors", ""))
        assert not [r for r in results if r["_action"].endswith("port_usage_info")]
        assert not list(tmp_path.iterdir())


def test_windows_only_fleet_and_no_files(fleet, tmp_path):
    """The report task runs on the controller even when the first host is a Windows host; formats [] writes none."""
    _linux, sims = fleet
    trips = {name: sim.round_trips for name, sim in sims.items()}
    rc, results, output = run_fleet({}, sims, "tcpstack.tuning.audit",
                                    extra_vars={"port_audit_report_dir": str(tmp_path / "none"), "port_audit_formats": []})
    assert rc == 0, output
    (reported,) = task(results, REPORT_TASK)
    assert [r["host"] for r in reported["report"]["hosts"]] == ["win2016", "win2022"]
    assert reported["files"] == {} and not (tmp_path / "none").exists()
    assert {name: sim.round_trips - trips[name] for name, sim in sims.items()} == {"win2022": 1, "win2016": 1}


CULPRIT_PORT, CULPRIT_RATE, CULPRIT_SECONDS = 8081, 30, 30  # 900 connections: within web's 1,000 ports


def test_the_report_names_the_culprit(fleet, tmp_path):
    """A steady churner on web (connections of under 10 ms): the audit, sampling 3 s, names it as process@host with
    its destination and rate in the summary, the JSON, the Markdown and the HTML (checked in chromium)."""
    linux, sims = fleet
    web, backend = linux["web"], linux["backend"]
    backend.start(program("serve", BACKEND_IP, CULPRIT_PORT, CULPRIT_SECONDS + 60, "--echo"), ready="listening")
    churner = web.start(program("connect", BACKEND_IP, CULPRIT_PORT, "--rate", CULPRIT_RATE,
                                "--seconds", CULPRIT_SECONDS, "--exchange", "--hold-ms", 2, "--ready"), ready="running")
    report_dir = tmp_path / "report"
    rc, results, output = run_fleet(linux, sims, "tcpstack.tuning.audit",
                                    extra_vars={"port_audit_report_dir": str(report_dir),
                                                "port_audit_sample_seconds": 3})
    assert rc == 0, output
    own = json.loads(churner.stdout.readline())  # when it is done: its own count
    assert own["failed"] == 0 and own["pid"] == churner.pid, own
    at = "python (pid %d)@web" % churner.pid
    report = json.loads((report_dir / "port_audit.json").read_text())
    rows = dict((row["host"], row) for row in report["hosts"])
    blamed = rows["web"]["culprit"]
    audited = [r for r in results if r["_host"] == "web" and r["_action"].endswith("port_usage_info")]
    print("culprit:", blamed, "client:", own, "\naudit:", [(r.get("top_churner"), r.get("attribution"), r.get("notes"),
                                                            r.get("counters", {}).get("sample")) for r in audited])
    assert blamed["at"] == at and blamed["kind"] == "pooling"
    assert blamed["destination"] == "%s:%d" % (BACKEND_IP, CULPRIT_PORT)
    assert abs(blamed["new_connections_per_second"] - own["rate"]) <= 0.2 * own["rate"], (blamed, own)
    assert rows["web"]["cure"]["where"] in ("client", "both")
    assert all(rows[host]["culprit"] is None for host in HOSTS if host != "web")
    line = "culprit: %s -> %s:%d at " % (at, BACKEND_IP, CULPRIT_PORT)
    assert line in output, output
    assert html.escape(at + " -> %s:%d" % (BACKEND_IP, CULPRIT_PORT), quote=False) in \
        (report_dir / "port_audit.md").read_text()
    dom = Rows()
    dom.feed(browse(report_dir / "port_audit.html"))
    (web_row,) = [row for row in dom.rows if row["host"] == "web"]
    assert web_row["cells"][7].startswith("%s -> %s:%d at " % (at, BACKEND_IP, CULPRIT_PORT)), web_row
