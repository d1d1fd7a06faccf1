"""The Prometheus textfile of an audit: names, types, bounded series, and promtool's own check."""

from __future__ import annotations

import shutil
import subprocess

from ansible_collections.tcpstack.tuning.plugins.module_utils.prometheus import render

from tests.support.ci import need

RESULT = {
    "settings": {"timestamps": 1, "fin_timeout": 60, "reserved_ports": "", "port_range": "32768 60999", "tw_reuse": 2,
                 "tw_reuse_delay": None, "somaxconn": 4096, "max_syn_backlog": 512, "unprivileged_port_start": 1024,
                 "max_tw_buckets": 131072},
    "ephemeral": {"range": [40000, 40999], "size": 1000, "reserved": "", "reserved_in_range": 0, "usable": 1000},
    "sockets": {"total": 1003, "by_state": {"ESTABLISHED": 2, "TIME_WAIT": 1000, "LISTEN": 1},
                "ipv4": {"ESTABLISHED": 2, "TIME_WAIT": 1000, "LISTEN": 1}, "ipv6": {}},
    "ports_held": 1002,
    "destinations": [
        {"endpoint": "198.51.100.2:8080", "busiest_local_address": "192.0.2.1", "busiest_in_use": 1000,
         "busiest_time_wait": 998, "blocking": 1000, "utilisation": 1.0},
        {"endpoint": "[2001:db8::2]:443", "busiest_local_address": "2001:db8::1", "busiest_in_use": 2,
         "busiest_time_wait": 0, "blocking": 2, "utilisation": 0.002},
        {"endpoint": 'odd"\\name', "busiest_local_address": None, "busiest_in_use": 1, "busiest_time_wait": 0,
         "blocking": 0, "utilisation": None},
    ],
    "counters": {"values": {"TW": 1234, "ListenOverflows": 3, "ActiveOpens": 5000, "AttemptFails": 3}, "sample": None},
    "capacity": {"usable_ports": 1000, "time_wait_seconds": 60,
                 "remote": {"reuse": False, "port_hold_seconds": 60.0, "max_new_connections_per_second": 16.67},
                 "loopback": {"reuse": True, "port_hold_seconds": 1.0, "max_new_connections_per_second": 1000.0},
                 "measured": None},
    "verdict": "critical",
    "thresholds": {"warning_percent": 70, "critical_percent": 90},
}


def samples(text):
    return [line for line in text.splitlines() if line and not line.startswith("#")]


def test_the_figures_the_alert_rules_read():
    text = render(RESULT, top=5, duration_seconds=0.25, timestamp=1700000000, interval_seconds=15)
    lines = samples(text)
    assert "tcpstack_ephemeral_ports_usable 1000" in lines
    assert "tcpstack_ephemeral_port_range_low 40000" in lines and "tcpstack_ephemeral_port_range_high 40999" in lines
    assert 'tcpstack_destination_utilisation_ratio{destination="198.51.100.2:8080",local_address="192.0.2.1"} 1.0' in lines
    assert 'tcpstack_destination_ports_blocking{destination="[2001:db8::2]:443",local_address="2001:db8::1"} 2' in lines
    assert "tcpstack_warning_utilisation_ratio 0.7" in lines and "tcpstack_critical_utilisation_ratio 0.9" in lines
    assert "tcpstack_verdict 2" in lines
    assert 'tcpstack_setting{sysctl="net.ipv4.tcp_max_tw_buckets"} 131072' in lines
    assert not any("tcp_tw_reuse_delay" in line for line in lines)  # the kernel lacks it: no sample, not 0
    assert "tcpstack_time_wait_sockets 1000" in lines and "tcpstack_listen_overflows_total 3" in lines
    assert "tcpstack_sampler_last_success_timestamp_seconds 1700000000" in lines
    assert 'tcpstack_destination_ports_in_use{destination="odd\\"\\\\name",local_address=""} 1' in lines
    assert not any(line.startswith("tcpstack_destination_utilisation_ratio{destination=\"odd") for line in lines)


def test_series_are_bounded_by_top():
    text = render(RESULT, top=1)
    assert sum(line.startswith("tcpstack_destination_ports_in_use{") for line in samples(text)) == 1


def test_an_unreadable_host_gives_only_what_was_read():
    text = render({"settings": {}, "ephemeral": None, "sockets": None, "destinations": [], "counters": None,
                   "capacity": {}, "verdict": "ok", "thresholds": {}}, timestamp=1)
    assert samples(text) == ["tcpstack_verdict 0", "tcpstack_sampler_last_success_timestamp_seconds 1"]


def test_promtool_accepts_the_textfile(tmp_path):
    promtool = shutil.which("promtool")
    need(promtool is not None, "needs promtool (Debian package prometheus)")
    text = render(RESULT, top=5, duration_seconds=0.25, timestamp=1700000000, interval_seconds=15)
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr


PROCESSES = [
    {"pid": 10, "name": "curl", "user": "www-data", "unit": "fetch.service", "ports_held": 700,
     "new_connections_per_second": 95.5},
    {"pid": 11, "name": "curl", "user": "www-data", "unit": "fetch.service", "ports_held": 200,
     "new_connections_per_second": 4.5},
    {"pid": 12, "name": 'we"ird', "user": None, "unit": None, "ports_held": 3, "new_connections_per_second": None},
    {"pid": 13, "name": "java", "user": "app", "unit": "app.service", "ports_held": 1,
     "new_connections_per_second": 0.0},
]


def test_processes_by_name_user_and_unit_workers_added_up():
    result = dict(RESULT, processes=PROCESSES, attribution={"sampled_seconds": 2.0})
    lines = samples(render(result, top=5))
    assert 'tcpstack_process_ports_held{process="curl",unit="fetch.service",user="www-data"} 900' in lines
    assert 'tcpstack_process_new_connections_per_second{process="curl",unit="fetch.service",user="www-data"} 100.0' \
        in lines
    assert 'tcpstack_process_ports_held{process="we\\"ird",unit="",user=""} 3' in lines
    assert not any(line.startswith('tcpstack_process_new_connections_per_second{process="we') for line in lines)
    assert "tcpstack_process_attribution_sample_seconds 2.0" in lines
    # bounded: top series at most, whatever the number of processes
    bounded = samples(render(result, top=2))
    assert sum(line.startswith("tcpstack_process_ports_held{") for line in bounded) == 2


def test_a_process_without_a_name_is_unknown_not_an_empty_label():
    nameless = [{"pid": 7, "name": None, "user": None, "unit": None, "ports_held": 4, "new_connections_per_second": 1.5}]
    lines = samples(render(dict(RESULT, processes=nameless, attribution={"sampled_seconds": 1.0})))
    assert 'tcpstack_process_ports_held{process="unknown",unit="",user=""} 4' in lines
    assert not any('process=""' in line for line in lines)


def test_no_attribution_no_process_series():
    assert not any(line.startswith("tcpstack_process_") for line in samples(render(RESULT)))


def test_promtool_accepts_the_process_series():
    promtool = shutil.which("promtool")
    need(promtool is not None, "needs promtool (Debian package prometheus)")
    text = render(dict(RESULT, processes=PROCESSES, attribution={"sampled_seconds": 2.0}), top=5)
    done = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0 and not done.stdout.strip() and not done.stderr.strip(), done.stdout + done.stderr
