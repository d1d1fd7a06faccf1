"""port_audit's metrics for hosts without a sampler: options, rendering, labels, escaping, textfile, push."""

from __future__ import annotations

import http.server
import os
import shutil
import socket
import stat
import subprocess
import threading

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import UnsafeFile
from ansible_collections.tcpstack.tuning.plugins.module_utils.prometheus import render
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import audit_metrics as am
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import role_vars

from tests.support.ci import need
from tests.support.promql import exposed_names, samples

NAMES = {"metrics_dir": "port_audit_metrics_dir", "pushgateway_url": "port_audit_pushgateway_url",
         "interval_seconds": "port_audit_interval_seconds"}
LINUX = {
    "settings": {"fin_timeout": 60, "tw_reuse": 2, "max_tw_buckets": 131072},
    "ephemeral": {"range": [40000, 40999], "reserved_in_range": 0, "usable": 1000},
    "sockets": {"by_state": {"ESTABLISHED": 2, "TIME_WAIT": 1000}},
    "ports_held": 1002,
    "destinations": [{"endpoint": "198.51.100.2:8080", "busiest_local_address": "192.0.2.1", "busiest_in_use": 1000,
                      "busiest_time_wait": 998, "blocking": 1000, "utilisation": 1.0}],
    "counters": {"values": {"ListenOverflows": 3, "ActiveOpens": 5000, "AttemptFails": 3}},
    "capacity": {"remote": {"max_new_connections_per_second": 16.67}},
    "verdict": "critical",
    "thresholds": {"warning_percent": 70, "critical_percent": 90},
    "platform": "linux",
}
WINDOWS = {  # the shape of win_port_usage_info's RETURN
    "settings": {"port_range": "49152 50151", "time_wait_delay": None, "max_user_port": None},
    "ephemeral": {"range": [49152, 50151], "size": 1000, "reserved": "", "reserved_in_range": 0, "usable": 1000},
    "sockets": {"total": 803, "by_state": {"Established": 2, "TimeWait": 800, "Listen": 1}},
    "ports_held": 802,
    "destinations": [{"endpoint": "10.0.0.9:443", "busiest_local_address": "10.0.0.5", "busiest_in_use": 800,
                      "busiest_time_wait": 800, "blocking": 800, "utilisation": 0.8}],
    "processes": [{"name": "OrderSync", "user": None, "unit": "OrderSyncSvc", "ports_held": 802,
                   "new_connections_per_second": 6.7}],
    "attribution": {"sampled_seconds": 120.0},
    "capacity": {"remote": {"max_new_connections_per_second": 8.33},
                 "loopback": {"max_new_connections_per_second": 8.33}},
    "events": {"hours": 24, "4227": 0, "4231": 3, "latest": "2026-11-24T10:00:00Z", "capped": False},
    "counters": None,
    "verdict": "warning",
    "thresholds": {"warning_percent": 70, "critical_percent": 90},
    "platform": "windows",
}


def families(text):
    """{name: (HELP line, TYPE line)} of an exposition."""
    out = {}
    for line in text.splitlines():
        if line.startswith("# HELP ") or line.startswith("# TYPE "):
            name = line.split(" ", 3)[2]
            out.setdefault(name, [None, None])[0 if line[2:6] == "HELP" else 1] = line
    return out


def promtool_check(text):
    tool = shutil.which("promtool")
    need(tool is not None, "needs promtool (Debian package prometheus)")
    done = subprocess.run([tool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stdout + done.stderr


# ---------------------------------------------------------------- options
def test_options_off_by_default_and_checked():
    assert am.check_options(None, None, 900, NAMES) == (None, None, 900)
    assert am.check_options("", "", "600", NAMES) == (None, None, 600)
    assert am.check_options("/var/lib/prometheus/node-exporter/", "https://pg.example:9091/", 60, NAMES) == (
        "/var/lib/prometheus/node-exporter", "https://pg.example:9091", 60)
    assert am.check_options(None, "http://[::1]:9091/prefix", 604800, NAMES)[1] == "http://[::1]:9091/prefix"


@pytest.mark.parametrize("field, value, fragment", [
    ("metrics_dir", "relative/dir", "port_audit_metrics_dir: 'relative/dir' is not valid: null (off) or an absolute"),
    ("metrics_dir", "/srv/../etc", "port_audit_metrics_dir"),
    ("metrics_dir", ["/srv"], "port_audit_metrics_dir: ['/srv'] is not valid"),
    ("pushgateway_url", "ftp://pg:9091", "port_audit_pushgateway_url: 'ftp://pg:9091' is not valid: null (off) or an "
                                         "http:// or https:// URL"),
    ("pushgateway_url", "http://user:secret@pg:9091", "without user:password"),
    ("pushgateway_url", "http://pg:9091/?x=1", "port_audit_pushgateway_url"),
    ("pushgateway_url", "http://pg:9091/#f", "port_audit_pushgateway_url"),
    ("pushgateway_url", "http://pg:99999", "port_audit_pushgateway_url"),
    ("pushgateway_url", "http://pg:0", "port_audit_pushgateway_url"),
    ("pushgateway_url", "http://pg 1:9091", "port_audit_pushgateway_url"),
    ("pushgateway_url", "http://pg:9091/\n", "port_audit_pushgateway_url"),
    ("pushgateway_url", "http://", "port_audit_pushgateway_url"),
    ("pushgateway_url", 9091, "port_audit_pushgateway_url: 9091 is not valid"),
    ("interval_seconds", 59, "port_audit_interval_seconds: 59 is not valid: an integer number of seconds"),
    ("interval_seconds", 604801, "port_audit_interval_seconds: 604801 is not valid"),
    ("interval_seconds", "often", "port_audit_interval_seconds: 'often' is not valid"),
    ("interval_seconds", True, "port_audit_interval_seconds: True is not valid"),
])
def test_bad_options_name_the_variable_the_value_and_what_is_valid(field, value, fragment):
    args = {"metrics_dir": None, "pushgateway_url": None, "interval_seconds": 900, field: value}
    with pytest.raises(ValidationError) as caught:
        am.check_options(args["metrics_dir"], args["pushgateway_url"], args["interval_seconds"], NAMES)
    assert fragment in str(caught.value)


@pytest.mark.parametrize("variable, value", [("port_audit_metrics_dir", "node-exporter"),
                                             ("port_audit_pushgateway_url", "pushgateway:9091"),
                                             ("port_audit_interval_seconds", 30)])
def test_the_role_checks_its_variables_before_any_host(variable, value):
    spec = role_vars.role_spec("port_audit")
    with pytest.raises(role_vars.RoleVarError) as caught:
        role_vars.port_audit(spec, {variable: value}, windows=True)
    assert caught.value.name == variable and str(caught.value).startswith("%s: %r is not valid: " % (variable, value))
    good = {"port_audit_metrics_dir": "/srv/m", "port_audit_pushgateway_url": "http://pg:9091",
            "port_audit_interval_seconds": 3600}
    assert role_vars.port_audit(spec, good, windows=True) == {"top": 5, "event_hours": 24}


# ---------------------------------------------------------------- rendering
def test_the_sampler_series_names_help_and_type_labelled_with_the_inventory_host():
    text = am.host_text("web1", LINUX, 1700000000.5, 900)
    sampler = render(LINUX, top=5, duration_seconds=0.1, timestamp=1, interval_seconds=15)
    mine, theirs = families(text), families(sampler)
    for name, lines in theirs.items():
        if name != "tcpstack_sampler_duration_seconds":
            assert mine[name] == lines, name  # identical HELP and TYPE
    assert set(mine) - set(theirs) == {"tcpstack_audit_success"}
    for line in text.splitlines():
        if not line.startswith("#"):
            assert 'instance="web1"' in line and 'job="tcpstack_port_audit"' in line, line
            assert 'tcpstack_source="port_audit"' in line, line
    assert samples(text, "tcpstack_sampler_last_success_timestamp_seconds")[0][1] == 1700000000.5
    assert samples(text, "tcpstack_sampler_interval_seconds")[0][1] == 900
    assert samples(text, "tcpstack_verdict")[0][1] == 2
    assert samples(text, "tcpstack_audit_success")[0][1] == 1
    promtool_check(text)


def test_for_the_pushgateway_the_grouping_key_gives_instance_and_job():
    text = am.host_text("web1", LINUX, 1.0, 900, textfile=False)
    body = [line for line in text.splitlines() if not line.startswith("#")]
    assert body and all('tcpstack_source="port_audit"' in line for line in body)
    assert not any("instance=" in line or "job=" in line for line in body)


def test_a_windows_result_the_same_series_with_linux_state_names_and_its_tcpip_events():
    text = am.host_text("win2016", WINDOWS, 1.0, 900)
    assert {labels["state"]: value for labels, value in samples(text, "tcpstack_sockets")} == {
        "ESTABLISHED": 2, "TIME_WAIT": 800, "LISTEN": 1}
    assert samples(text, "tcpstack_time_wait_sockets")[0][1] == 800
    assert samples(text, "tcpstack_verdict")[0][1] == 1
    assert samples(text, "tcpstack_destination_utilisation_ratio")[0][1] == 0.8
    assert {labels["event_id"]: value for labels, value in samples(text, "tcpstack_windows_tcpip_events")} == {
        "4227": 0, "4231": 3}
    assert samples(text, "tcpstack_windows_tcpip_events_window_seconds")[0][1] == 86400
    assert samples(text, "tcpstack_windows_tcpip_events_capped")[0][1] == 0
    assert families(text)["tcpstack_windows_tcpip_events"][1].endswith(" gauge")  # a count over a window
    assert samples(text, "tcpstack_process_ports_held")[0][0]["unit"] == "OrderSyncSvc"
    assert "tcpstack_setting" not in exposed_names(text)  # no Linux sysctl on Windows
    promtool_check(text)


def test_unread_events_and_linux_results_write_no_event_series():
    unread = dict(WINDOWS, events={"hours": 24, "4227": None, "4231": None, "capped": False})
    for result in (unread, LINUX):
        assert not {n for n in exposed_names(am.host_text("h", result, 1.0, 900)) if "tcpip" in n}


@pytest.mark.parametrize("result", [None, {"failed": True, "msg": "unreachable"}, {"unreachable": True},
                                    {"skipped": True, "verdict": "ok"}, dict(LINUX, failed=True),
                                    dict(LINUX, verdict="unknown"), "garbage"])
def test_a_failed_or_unreachable_host_is_never_written_as_ok(result):
    text = am.host_text("down1", result, 1.0, 900)
    assert exposed_names(text) == {"tcpstack_audit_success", "tcpstack_sampler_interval_seconds"}
    assert samples(text, "tcpstack_audit_success") == [(
        {"instance": "down1", "job": "tcpstack_port_audit", "tcpstack_source": "port_audit"}, 0.0)]
    promtool_check(text)


def test_label_values_are_escaped():
    host = 'we"b\\1\nx'
    hostile = dict(LINUX, destinations=[dict(LINUX["destinations"][0], endpoint='a"b\\c\nd')])
    text = am.textfile({host: hostile}, 1.0, 900)
    assert 'instance="we\\"b\\\\1\\nx"' in text and 'destination="a\\"b\\\\c\\nd"' in text
    assert len([line for line in text.splitlines() if line.startswith("tcpstack_verdict")]) == 1
    promtool_check(text)


def test_one_textfile_for_the_fleet_each_family_once():
    text = am.textfile({"web1": LINUX, "win2016": WINDOWS, "down1": None}, 1.0, 900)
    helps = [line for line in text.splitlines() if line.startswith("# HELP ")]
    assert len(helps) == len(set(helps))
    assert {labels["instance"]: value for labels, value in samples(text, "tcpstack_verdict")} == {
        "web1": 2, "win2016": 1}
    assert {labels["instance"]: value for labels, value in samples(text, "tcpstack_audit_success")} == {
        "web1": 1, "win2016": 1, "down1": 0}
    promtool_check(text)
    assert am.merge([]) == ""


def test_push_urls_are_encoded():
    assert am.push_url("http://pg:9091", "web1") == "http://pg:9091/metrics/job/tcpstack_port_audit/instance/web1"
    assert am.push_url("http://pg:9091", "win 1?x") == \
        "http://pg:9091/metrics/job/tcpstack_port_audit/instance/win%201%3Fx"
    assert am.push_url("http://pg:9091", "a/b") == \
        "http://pg:9091/metrics/job/tcpstack_port_audit/instance@base64/YS9i"


# ---------------------------------------------------------------- the textfile on disk
def test_deliver_writes_the_textfile_atomically_0644(tmp_path):
    old = os.umask(0o077)
    try:
        done = am.deliver({"web1": LINUX, "down1": None}, str(tmp_path), None, 900, clock=lambda: 1700000000.0)
    finally:
        os.umask(old)
    path = tmp_path / am.FILE_NAME
    assert done == {"textfile": str(path), "pushed": [], "push_errors": {}, "audited": ["web1"],
                    "failed": ["down1"]}
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert os.listdir(tmp_path) == [am.FILE_NAME]  # no temporary left
    assert samples(path.read_text(), "tcpstack_sampler_last_success_timestamp_seconds")[0][1] == 1700000000.0


def test_deliver_refuses_a_directory_reached_through_a_link(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(UnsafeFile):
        am.deliver({"web1": LINUX}, str(tmp_path / "link"), None, 900)
    assert not list((tmp_path / "real").iterdir())


# ---------------------------------------------------------------- pushes to a real HTTP server on loopback
class Recorder(http.server.BaseHTTPRequestHandler):
    received = []
    status = 200

    def do_PUT(self):  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers["Content-Length"])).decode()
        Recorder.received.append((self.path, self.headers["Content-Type"], body))
        self.send_response(Recorder.status)
        self.end_headers()
        self.wfile.write(b"pushed metrics are invalid or inconsistent")

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    Recorder.received, Recorder.status = [], 200
    httpd = http.server.HTTPServer(("127.0.0.1", 0), Recorder)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield "http://127.0.0.1:%d" % httpd.server_address[1]
    httpd.shutdown()
    httpd.server_close()
    thread.join(10)


def test_one_put_per_host(server):
    done = am.deliver({"web1": LINUX, "down1": {"failed": True}}, None, server, 900)
    assert done["pushed"] == ["down1", "web1"] and done["push_errors"] == {} and done["textfile"] is None
    paths = [path for path, _type, _body in Recorder.received]
    assert paths == ["/metrics/job/tcpstack_port_audit/instance/down1",
                     "/metrics/job/tcpstack_port_audit/instance/web1"]
    assert all(kind == am.CONTENT_TYPE for _path, kind, _body in Recorder.received)
    assert samples(Recorder.received[0][2], "tcpstack_audit_success")[0][1] == 0
    assert samples(Recorder.received[1][2], "tcpstack_verdict")[0][1] == 2


def test_a_failed_push_is_that_hosts_error(server):
    Recorder.status = 400
    done = am.deliver({"web1": LINUX}, None, server, 900)
    assert done["pushed"] == [] and done["push_errors"]["web1"].startswith("HTTP 400 from %s/metrics/job/" % server)
    assert done["push_errors"]["web1"].endswith("pushed metrics are invalid or inconsistent")


def test_an_unreachable_pushgateway_is_each_hosts_error():
    with socket.socket() as probe:  # a loopback port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    done = am.deliver({"web1": LINUX, "win1": WINDOWS}, None, "http://127.0.0.1:%d" % port, 900)
    assert sorted(done["push_errors"]) == ["web1", "win1"]
    assert all(why.startswith("could not reach http://127.0.0.1:%d/" % port) for why in done["push_errors"].values())
