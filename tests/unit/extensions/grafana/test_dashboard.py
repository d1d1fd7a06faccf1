"""The Grafana dashboard shipped in extensions/grafana: well formed, and it reads only metrics the sampler writes.

The names are checked against what prometheus.render() writes for a full audit result here; the integration test
(tests/integration/test_port_monitor.py) checks them against a real node_exporter scrape of the real sampler.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ansible_collections.tcpstack.tuning.plugins.module_utils.prometheus import render

from tests.support.promql import exposed_names, metric_names

ROOT = Path(__file__).resolve().parents[4]
DASHBOARD = ROOT / "extensions" / "grafana" / "tcpstack-ports.json"

FULL = {
    "settings": {"fin_timeout": 60, "tw_reuse": 2, "tw_reuse_delay": 1000, "timestamps": 1, "somaxconn": 4096,
                 "max_syn_backlog": 512, "max_tw_buckets": 131072, "unprivileged_port_start": 1024},
    "ephemeral": {"range": [32768, 60999], "reserved_in_range": 0, "usable": 28232},
    "sockets": {"by_state": {"ESTABLISHED": 3, "TIME_WAIT": 10}},
    "ports_held": 13,
    "destinations": [{"endpoint": "192.0.2.9:443", "busiest_local_address": "192.0.2.1", "busiest_in_use": 13,
                      "busiest_time_wait": 10, "blocking": 13, "utilisation": 0.0005}],
    "counters": {"values": {"ListenOverflows": 0, "ListenDrops": 0, "TCPTimeWaitOverflow": 0, "ActiveOpens": 99,
                            "AttemptFails": 1}},
    "capacity": {"remote": {"max_new_connections_per_second": 470.5},
                 "loopback": {"max_new_connections_per_second": 28232.0}},
    "verdict": "ok",
    "thresholds": {"warning_percent": 70, "critical_percent": 90},
}


def dashboard():
    return json.loads(DASHBOARD.read_text())


def expressions(board):
    out = [target["expr"] for panel in board["panels"] for target in panel.get("targets", [])]
    for variable in board["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            out.append(re.sub(r"label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)", r"\1", query["query"]))
    return out


def test_well_formed_with_a_data_source_variable_and_unique_ids():
    board = dashboard()
    assert board["uid"] == "tcpstack-ports" and board["title"]
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids)) >= 8
    assert all(panel["datasource"]["uid"] == "${datasource}" for panel in board["panels"])
    assert {v["name"] for v in board["templating"]["list"]} == {"datasource", "instance"}


def test_every_query_reads_only_metrics_the_sampler_writes():
    written = exposed_names(render(FULL, top=5, duration_seconds=0.1, timestamp=1, interval_seconds=15))
    used = set()
    for expr in expressions(dashboard()):
        names = metric_names(expr)
        assert names and names <= written, (expr, sorted(names - written))
        used |= names
    # the panels the issue asks for: utilisation against thresholds, usable ports, capacity, states, TIME_WAIT
    # against the buckets, listen overflows, the verdict, the settings, the sampler
    for name in ("tcpstack_destination_utilisation_ratio", "tcpstack_critical_utilisation_ratio",
                 "tcpstack_ephemeral_ports_usable", "tcpstack_capacity_new_connections_per_second", "tcpstack_sockets",
                 "tcpstack_time_wait_sockets", "tcpstack_listen_overflows_total", "tcpstack_verdict",
                 "tcpstack_setting", "tcpstack_sampler_last_success_timestamp_seconds"):
        assert name in used, name


def test_the_promql_name_lexer():
    assert metric_names('max by (instance, job) (a_ratio{x="y", z=~"$v"}) >= on (instance) group_left b') == {
        "a_ratio", "b"}
    assert metric_names("rate(c_total[$__rate_interval]) / ignoring(le) d offset 5m") == {"c_total", "d"}
    assert metric_names('time() - e_seconds > 3 * f and g{h="i and j"}') == {"e_seconds", "f", "g"}
