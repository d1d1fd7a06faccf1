"""Issue 22's monitor keys of ``make bench`` (bench/run.py) and the pure helpers of bench/monitor.py: no namespace,
no Prometheus."""

from __future__ import annotations

import pytest
import yaml

from bench import monitor
from bench import run as bench_run
from tests.support.prometheus import config, timestamp

SNMP = """Ip: Forwarding DefaultTTL InReceives
Ip: 1 64 12345
Icmp: InMsgs InErrors
Icmp: 0 0
Tcp: RtoAlgorithm RtoMin RtoMax MaxConn ActiveOpens PassiveOpens AttemptFails
Tcp: 1 200 120000 -1 275003 275001 2
Udp: InDatagrams NoPorts
Udp: 0 0
"""


def test_flat_monitor_keys_and_their_targets():
    result = {"monitor": {"cpu_percent": 1.0, "peak_rss_mb": 16.0,
                          "processes": {"cpu_percent": 2.5, "peak_rss_mb": 20.0, "rate_active_opens": 4998.6},
                          "alert": {"latency_seconds": 6.1, "targets": {"latency_seconds": 15}},
                          "alert_latency_seconds": 6.1}}
    flat = bench_run.ratios(result)
    assert flat["monitor.cpu_percent"] == 1.0 and flat["monitor.peak_rss_mb"] == 16.0
    assert flat["monitor.processes.cpu_percent"] == 2.5 and flat["monitor.processes.peak_rss_mb"] == 20.0
    assert flat["monitor.processes.rate_active_opens"] == 4998.6
    assert flat["monitor.alert_latency_seconds"] == 6.1 and flat["monitor.alert_latency_target_seconds"] == 15
    met = bench_run.targets(flat)
    assert met["monitor.processes.cpu_percent <= 2"] is False  # missed: reported as missed
    assert met["monitor.processes.peak_rss_mb <= 32"] is True
    assert met["monitor.alert_latency_seconds <= sample + evaluation + 5 s"] is True
    flat["monitor.alert_latency_seconds"] = 15.5
    assert bench_run.targets(flat)["monitor.alert_latency_seconds <= sample + evaluation + 5 s"] is False
    flat["monitor.alert_latency_seconds"] = None  # measured, but the alert never fired: missed, not "not measured"
    assert bench_run.targets(flat)["monitor.alert_latency_seconds <= sample + evaluation + 5 s"] is False


def test_monitor_keys_not_measured_are_none():
    flat = bench_run.ratios({"monitor": {"cpu_percent": 1.0, "peak_rss_mb": 16.0, "failed_parts": {"alert": "x"}}})
    assert flat["monitor.processes.cpu_percent"] is None and flat["monitor.alert_latency_seconds"] is None
    met = bench_run.targets(flat)
    assert met["monitor.processes.cpu_percent <= 2"] is None
    assert met["monitor.alert_latency_seconds <= sample + evaluation + 5 s"] is None
    assert met["monitor.cpu_percent <= 2"] is True
    assert bench_run.ratios({})["monitor.alert_latency_target_seconds"] is None


def test_alert_targets_are_the_issue_formula_and_the_one_with_the_scrape():
    assert monitor.alert_targets(5, 5, 5) == {"issue": 15, "with_scrape": 20}
    assert monitor.alert_targets(15, 30, 10) == {"issue": 50, "with_scrape": 60}


def test_latency_shares_add_up_to_the_latency():
    shares = monitor.latency_shares(100.0, 103.44, 104.51, 105.98, 106.1)
    assert shares == {"sample": 3.44, "scrape": 1.07, "evaluation": 1.47, "poll": 0.12}
    assert sum(shares.values()) == pytest.approx(6.1)
    assert monitor.latency_shares(100.0, None, 104.5, 106.0, 106.1) == {
        "sample": None, "scrape": None, "evaluation": 1.5, "poll": 0.1}


def test_first_at_or_above_and_value_at_read_range_vector_values():
    values = [[10.0, "980"], [15.0, "bad"], [20.0, "1000"], [25.0, "1001"]]
    assert monitor.first_at_or_above(values, 1000) == 20.0
    assert monitor.first_at_or_above(values, 2000) is None
    assert monitor.first_at_or_above([], 1) is None
    assert monitor.value_at([[19.9995, "1765.5"], [25.0, "1770"]], 20.0) == 1765.5
    assert monitor.value_at([[25.0, "1770"]], 20.0) is None


def test_snmp_field_reads_one_counter_of_proc_net_snmp():
    assert monitor.snmp_field(SNMP, "Tcp", "ActiveOpens") == 275003
    assert monitor.snmp_field(SNMP, "Ip", "InReceives") == 12345
    assert monitor.snmp_field(SNMP, "Tcp", "Nothing") is None
    assert monitor.snmp_field("", "Tcp", "ActiveOpens") is None
    assert monitor.snmp_field("Tcp: ActiveOpens\n", "Tcp", "ActiveOpens") is None  # a header without values


def test_role_command_is_the_unit_exec_start_with_the_role_defaults():
    command = monitor.role_command("/code/tcpstack-port-monitor", "/text", 15, True)
    assert command[:3] == ["nice", "-n", "10"]
    assert command[3:] == ["/usr/bin/python3", "-s", "-E", "-B", "/code/tcpstack-port-monitor", "--directory", "/text",
                           "--interval", "15", "--top", "5", "--warning-percent", "70", "--critical-percent", "90",
                           "--processes", "--process-sample-seconds", "0"]
    assert "--processes" not in monitor.role_command("/e", "/t", 5, False)
    unit = (monitor.ROOT / "roles" / "port_monitor" / "templates" / "tcpstack-port-monitor.service.j2").read_text()
    assert "--top {{ _port_monitor_options.top }} --warning-percent" in unit and "Nice=10" in unit
    assert "' --processes --process-sample-seconds %d'" in unit
    defaults = yaml.safe_load((monitor.ROOT / "roles" / "port_monitor" / "defaults" / "main.yml").read_text())
    names = ("top", "warning_percent", "critical_percent", "process_sample_seconds", "interval", "python")
    assert [defaults["port_monitor_" + name] for name in names] == [5, 70, 90, 0, 15, "/usr/bin/python3"]


def test_prometheus_config_and_active_at():
    text = config(9100, "/rules.yml", 5, 10)
    assert '"scrape_interval": "5s"' in text and '"evaluation_interval": "10s"' in text
    assert '"127.0.0.1:9100"' in text and '"/rules.yml"' in text
    assert timestamp("2026-12-07T19:15:02.123456789Z") == pytest.approx(1796670902.123456789)
    assert timestamp("2026-12-07T19:15:02Z") == pytest.approx(1796670902.0)
