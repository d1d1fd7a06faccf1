"""Hosts without a sampler (issue 22 item 5): the port_audit role's metrics in a real Pushgateway and a textfile.

The mixed fleet of test_port_audit (``web`` exhausted: critical; ``backend`` and ``idle``; the simulated Windows
hosts ``win2016``, warning, and ``win2022``, whose audit command gets no answer here: a failed host), audited by a
real ``ansible-playbook tcpstack.tuning.audit`` with ``port_audit_metrics_dir`` (a textfile directory in tmp_path)
and ``port_audit_pushgateway_url``: Debian's ``prometheus-pushgateway`` on a free port of 127.0.0.1 (its storage in
tmp_path), scraped by Debian's Prometheus with ``honor_labels: true`` as docs/monitoring.md says.  Asserted: the
textfile passes ``promtool check metrics`` and Debian's node_exporter serves it; each host's series carry
``instance="<inventory host>"``; the verdicts are the report's; the failed host is written as failed, with no
verdict; through Prometheus, the shipped TcpstackSamplerStale expression calls no host stale now and every audited
host stale once its last audit is older than two intervals.  Every process is stopped at teardown.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
# fleet is the fixture these tests use
from test_port_audit import HOSTS, exhaust, fleet  # noqa: F401  # pylint: disable=unused-import
from test_prometheus_alerts import tool

from tests.support.collection import collections_path
from tests.support.fleet import fleet_hosts, run_fleet
from tests.support.playbook import ansible_playbook
from tests.support.netns import stop_process
from tests.support.prometheus import Api, free_port, spawn, wait_for
from tests.support.promql import samples

pytestmark = pytest.mark.usefixtures("root_netns")

DOC = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"

EXTENSIONS = Path(__file__).resolve().parents[2] / "extensions" / "prometheus"
RULE_FILES = [EXTENSIONS / "tcpstack-rules.yml", EXTENSIONS / "tcpstack-audit-rules.yml"]
STALE = [rule for group in yaml.safe_load(RULE_FILES[0].read_text())["groups"] for rule in group["rules"]
         if rule.get("alert") == "TcpstackSamplerStale"][0]
INTERVAL, SCRAPE = 60, 1
AUDITED = sorted(set(HOSTS) - {"win2022"})
VERDICTS = {"web": 2, "win2016": 1, "backend": 0, "idle": 0}


def get(url):
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.read().decode("utf-8")


@pytest.fixture
def monitoring(tmp_path):
    """A Pushgateway, a node_exporter on the textfile directory, a Prometheus scraping the Pushgateway."""
    gateway, exporter, prometheus = tool("prometheus-pushgateway"), tool("prometheus-node-exporter"), tool("prometheus")
    ports = {"gateway": free_port(), "exporter": free_port(), "prometheus": free_port()}
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    (tmp_path / "prometheus.yml").write_text(json.dumps({
        "global": {"scrape_interval": "%ds" % SCRAPE, "evaluation_interval": "%ds" % SCRAPE},
        "rule_files": [str(path) for path in RULE_FILES],
        "scrape_configs": [{"job_name": "pushgateway", "honor_labels": True,
                            "static_configs": [{"targets": ["127.0.0.1:%d" % ports["gateway"]]}]}]}))
    children = []
    try:
        children.append(spawn([gateway, "--web.listen-address=127.0.0.1:%d" % ports["gateway"],
                               "--persistence.file=%s" % (tmp_path / "pushgateway.db")], tmp_path / "gateway.log"))
        children.append(spawn([exporter, "--collector.disable-defaults", "--collector.textfile",
                               "--collector.textfile.directory=%s" % textfile_dir,
                               "--web.listen-address=127.0.0.1:%d" % ports["exporter"]], tmp_path / "exporter.log"))
        children.append(spawn([prometheus, "--config.file=%s" % (tmp_path / "prometheus.yml"),
                               "--storage.tsdb.path=%s" % (tmp_path / "tsdb"),
                               "--web.listen-address=127.0.0.1:%d" % ports["prometheus"]], tmp_path / "prometheus.log"))
        api = Api(ports["prometheus"])
        gateway_api = Api(ports["gateway"])
        assert wait_for(gateway_api.ready, 60), (tmp_path / "gateway.log").read_text()
        assert wait_for(api.ready, 60), (tmp_path / "prometheus.log").read_text()
        yield {"api": api, "gateway": gateway_api.base, "exporter": "http://127.0.0.1:%d" % ports["exporter"],
               "textfile_dir": textfile_dir}
    finally:
        for child in reversed(children):
            stop_process(child)


def by_instance(text, name, **match):
    return {labels["instance"]: value for labels, value in samples(text, name)
            if all(labels.get(k) == v for k, v in match.items())}


def test_every_host_on_the_dashboard_and_a_failed_host_not_as_ok(fleet, monitoring, tmp_path):  # noqa: F811
    linux, sims = fleet
    exhaust(linux["web"])
    sims["win2022"].faults.drop_command(1)  # the next command to win2022 gets no answer: its audit fails
    before = time.time()
    rc, results, output = run_fleet(linux, sims, "tcpstack.tuning.audit", extra_vars={
        "port_audit_report_dir": str(tmp_path / "report"), "port_audit_formats": ["json"],
        "port_audit_metrics_dir": str(monitoring["textfile_dir"]), "port_audit_pushgateway_url": monitoring["gateway"],
        "port_audit_interval_seconds": INTERVAL})
    assert rc != 0, output  # win2022 failed
    (reported,) = [r for r in results if r["_action"] == "tcpstack.tuning.fleet_report"]
    assert reported["metrics"]["push_errors"] == {} and reported["metrics"]["failed"] == ["win2022"], reported
    assert reported["metrics"]["pushed"] == sorted(HOSTS) and reported["metrics"]["audited"] == AUDITED
    rows = json.loads((tmp_path / "report" / "port_audit.json").read_text())["hosts"]
    report = {row["host"]: row["verdict"] for row in rows}
    assert report["win2022"] == "unknown" and report["web"] == "critical", report

    # the textfile: valid, served by node_exporter, one instance per inventory host, the report's verdicts
    path = monitoring["textfile_dir"] / "tcpstack_port_audit.prom"
    text = path.read_text()
    assert oct(path.stat().st_mode & 0o777) == "0o644"
    check = subprocess.run([tool("promtool"), "check", "metrics"], input=text, capture_output=True, text=True,
                           timeout=60, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    assert by_instance(text, "tcpstack_verdict") == VERDICTS
    assert by_instance(text, "tcpstack_audit_success") == dict({h: 1 for h in AUDITED}, win2022=0)
    stamps = by_instance(text, "tcpstack_sampler_last_success_timestamp_seconds")
    assert sorted(stamps) == AUDITED and all(before <= t <= time.time() for t in stamps.values())
    assert by_instance(text, "tcpstack_windows_tcpip_events", event_id="4231").keys() == {"win2016"}
    assert by_instance(text, "tcpstack_sockets", state="TIME_WAIT")["win2016"] == 800  # Windows' TimeWait
    served = get(monitoring["exporter"] + "/metrics")
    assert by_instance(served, "tcpstack_verdict", job="tcpstack_port_audit") == VERDICTS
    assert "node_textfile_scrape_error 0" in served

    # the Pushgateway, through Prometheus (honor_labels: true keeps instance and job)
    api = monitoring["api"]
    verdicts = wait_for(lambda: api.query('tcpstack_verdict{job="tcpstack_port_audit",tcpstack_source="port_audit"}'
                                          ) if len(api.query("tcpstack_audit_success")) == len(HOSTS) else [], 60)
    assert {s["metric"]["instance"]: float(s["value"][1]) for s in verdicts} == VERDICTS, verdicts
    failed = api.query('tcpstack_audit_success == 0')
    assert [s["metric"]["instance"] for s in failed] == ["win2022"]
    assert not api.query('{instance="win2022",__name__=~"tcpstack_verdict|tcpstack_destination_.*"}')
    fired = wait_for(lambda: [a for a in api.get("/api/v1/alerts")["alerts"] if a["state"] == "firing"
                              and a["labels"]["alertname"] == "TcpstackAuditFailed"], 30)
    assert [a["labels"]["instance"] for a in fired] == ["win2022"], fired
    assert all(group["rules"] and all(rule["health"] == "ok" for rule in group["rules"])
               for group in api.get("/api/v1/rules")["groups"])

    # staleness, with the shipped rule's expression: nobody now, every audited host after two intervals
    last = max(stamps.values())
    assert api.get("/api/v1/query", query=STALE["expr"], time="%.3f" % time.time())["result"] == []
    later = api.get("/api/v1/query", query=STALE["expr"], time="%.3f" % (last + 2 * INTERVAL + 5))["result"]
    assert sorted(s["metric"]["instance"] for s in later) == AUDITED, later
    assert all(s["metric"]["tcpstack_source"] == "port_audit" for s in later)
    earlier = api.get("/api/v1/query", query=STALE["expr"], time="%.3f" % (min(stamps.values()) + 2 * INTERVAL - 5))
    assert earlier["result"] == [], earlier


def test_a_push_that_fails_fails_the_task_after_the_report_and_the_textfile(fleet, tmp_path):  # noqa: F811
    linux, sims = fleet
    closed = free_port()  # nothing listens there
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    rc, results, output = run_fleet({"idle": linux["idle"]}, {"win2016": sims["win2016"]}, "tcpstack.tuning.audit",
                                    extra_vars={"port_audit_report_dir": str(tmp_path / "report"),
                                                "port_audit_metrics_dir": str(textfile_dir),
                                                "port_audit_pushgateway_url": "http://127.0.0.1:%d" % closed})
    assert rc != 0, output
    (reported,) = [r for r in results if r["_action"] == "tcpstack.tuning.fleet_report"]
    assert reported["_status"] == "failed" and reported["msg"].startswith(
        "the metrics of 2 host(s) were not pushed to the Pushgateway: idle: could not reach "
        "http://127.0.0.1:%d/" % closed)
    assert (tmp_path / "report" / "port_audit.json").exists()
    text = (textfile_dir / "tcpstack_port_audit.prom").read_text()
    assert by_instance(text, "tcpstack_verdict") == {"idle": 0, "win2016": 1}


@pytest.mark.parametrize("variable, value", [("port_audit_pushgateway_url", "ftp://127.0.0.1:9091"),
                                             ("port_audit_metrics_dir", "relative"),
                                             ("port_audit_interval_seconds", 10)])
def test_a_bad_variable_stops_before_any_host_and_writes_nothing(fleet, tmp_path, variable, value):  # noqa: F811
    _linux, sims = fleet
    rc, results, output = run_fleet({}, {"win2016": sims["win2016"]}, "tcpstack.tuning.audit",
                                    extra_vars={"port_audit_report_dir": str(tmp_path / "report"), variable: value})
    assert rc != 0, output
    failed = [r for r in results if r["_status"] == "failed"]
    assert failed[0]["_task"].startswith("Check the role variables"), failed
    assert failed[0]["msg"].startswith("%s: %r is not valid: " % (variable, value)), failed[0]["msg"]
    assert not [r for r in results if r["_action"].endswith("port_usage_info")]
    assert not (tmp_path / "report").exists()


def documented_units():
    """{file name: text} of the systemd service and timer docs/monitoring.md shows (its ```ini block)."""
    block = re.search(r"```ini\n(.*?)```", DOC.read_text(), re.S).group(1)
    parts = re.split(r"^# /etc/systemd/system/(\S+)\n", block, flags=re.M)
    return {name: text.strip() + "\n" for name, text in zip(parts[1::2], parts[2::2])}


def exec_start(service):
    """The service's ExecStart as argv (continuation lines joined)."""
    joined = re.sub(r"\\\n\s*", " ", service)
    return shlex.split(re.search(r"^ExecStart=(.*)$", joined, re.M).group(1))


def test_the_documented_systemd_timer_and_its_command(fleet, monitoring, tmp_path):  # noqa: F811
    """The timer and service of docs/monitoring.md: systemd-analyze verify passes on them (in tmp_path, nothing
    installed), the timer's interval is the one the command writes, and the command itself, with the inventory and
    the directories moved into tmp_path, writes every host into the textfile node_exporter serves."""
    analyze = tool("systemd-analyze")
    units = documented_units()
    assert sorted(units) == ["tcpstack-port-audit.service", "tcpstack-port-audit.timer"]
    argv = exec_start(units["tcpstack-port-audit.service"])
    assert argv[:2] == ["/usr/bin/ansible-playbook", "tcpstack.tuning.audit"]
    extra = dict(argv[i + 1].split("=", 1) for i, arg in enumerate(argv) if arg == "-e")
    interval = re.search(r"^OnUnitActiveSec=(\d+)$", units["tcpstack-port-audit.timer"], re.M).group(1)
    assert extra["port_audit_interval_seconds"] == interval
    assert "Type=oneshot" in units["tcpstack-port-audit.service"]
    for name, text in units.items():  # the command must exist for verify: this environment's ansible-playbook
        (tmp_path / name).write_text(text.replace("/usr/bin/ansible-playbook", ansible_playbook()))
    verified = subprocess.run([analyze, "verify", str(tmp_path / "tcpstack-port-audit.service"),
                               str(tmp_path / "tcpstack-port-audit.timer")], capture_output=True, text=True,
                              timeout=60, check=False)
    assert verified.returncode == 0 and not verified.stderr.strip(), verified.stderr

    linux, sims = fleet
    hosts = {"idle": linux["idle"], "backend": linux["backend"]}
    inventory = tmp_path / "inventory.json"
    inventory.write_text(json.dumps({"all": {"hosts": fleet_hosts(hosts, {"win2016": sims["win2016"]}, tmp_path)}}))
    moved = {"/etc/ansible/inventory": str(inventory), "/usr/bin/ansible-playbook": ansible_playbook(),
             "/var/lib/prometheus/node-exporter": str(monitoring["textfile_dir"]),
             "/var/lib/tcpstack-audit/report": str(tmp_path / "report")}
    command = [moved.get(arg, arg) for arg in argv]
    command = [re.sub(r"=(/\S+)$", lambda m: "=" + moved.get(m.group(1), m.group(1)), arg) for arg in command]
    assert not [arg for arg in command if "/etc/" in arg or "/var/lib/" in arg], command
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_path()), ANSIBLE_NOCOLOR="1")
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    served = get(monitoring["exporter"] + "/metrics")
    verdicts = by_instance(served, "tcpstack_verdict", job="tcpstack_port_audit")
    assert verdicts == {"idle": 0, "backend": 0, "win2016": 1}
    assert set(by_instance(served, "tcpstack_sampler_interval_seconds").values()) == {float(interval)}
