"""The Grafana dashboard shipped in extensions/grafana: well formed, and it reads only metrics the sampler writes.

The names are checked against what prometheus.render() writes for a full audit result here; the integration test
(tests/integration/test_port_monitor.py) checks them against a real node_exporter scrape of the real sampler.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ansible_collections.tcpstack.tuning.plugins.module_utils.prometheus import render

import yaml

from tests.support.promql import exposed_names, metric_names

ROOT = Path(__file__).resolve().parents[4]
DASHBOARD = ROOT / "extensions" / "grafana" / "tcpstack-ports.json"
RULES = ROOT / "extensions" / "prometheus" / "tcpstack-rules.yml"

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
    # with port_monitor_processes and a process sample: the "who"
    "processes": [{"name": "curl", "user": "www", "unit": "fetch.service", "ports_held": 13,
                   "new_connections_per_second": 12.5}],
    "attribution": {"sampled_seconds": 2.0},
    # on a host that source-NATs, with port_monitor_nat: the nat section (issue 23)
    "nat": {"conntrack": {"count": 1012, "max": 262144, "utilisation": 0.0039,
                          "counters": {"insert_failed": 1, "drop": 1, "early_drop": 0, "clash_resolve": 0}},
            "egress": [{"translated": "10.231.2.1", "destination": "10.231.2.2", "port": 8080, "protocol": "tcp",
                        "in_use": 1000, "time_wait": 0, "capacity": 1000, "utilisation": 1.0}],
            "egress_total": 1, "verdict": "critical"},
}
NAT_PREFIXES = ("tcpstack_nat_", "tcpstack_conntrack_")  # written only for a host that source-NATs


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
    assert len(ids) == len(set(ids)) >= 16
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
                 "tcpstack_setting", "tcpstack_sampler_last_success_timestamp_seconds",
                 # issue 22: the who (process series), the top destinations' figures, the alerts' own series
                 "tcpstack_process_ports_held", "tcpstack_process_new_connections_per_second",
                 "tcpstack_destination_ports_in_use", "tcpstack_destination_ports_blocking",
                 # issue 23: egress utilisation by destination, conntrack fill, insert_failed and drop rates
                 "tcpstack_nat_egress_utilisation_ratio", "tcpstack_nat_egress_in_use", "tcpstack_nat_egress_capacity",
                 "tcpstack_conntrack_entries", "tcpstack_conntrack_max", "tcpstack_conntrack_insert_failed_total",
                 "tcpstack_conntrack_drop_total"):
        assert name in used, name


def test_the_nat_row_reads_what_the_nat_alerts_read_and_only_nat_series():
    board = dashboard()
    rules = {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    rows = [panel for panel in board["panels"] if panel["type"] == "row"]
    assert len(rows) == 1 and "NAT" in rows[0]["title"]
    below = [panel for panel in board["panels"] if panel["gridPos"]["y"] > rows[0]["gridPos"]["y"]]
    assert len(below) >= 5
    thresholds = {"tcpstack_warning_utilisation_ratio", "tcpstack_critical_utilisation_ratio"}
    for panel in below:  # every panel of the row reads NAT series (and the host's thresholds), nothing else
        names = {name for expr in panel_exprs(panel) for name in metric_names(expr)}
        assert names - thresholds and all(name.startswith(NAT_PREFIXES) for name in names - thresholds), names
    exhausted = rules["TcpstackNatEgressExhausted"]["expr"].strip()
    panel = [panel for panel in below if "TcpstackNatEgressExhausted" in panel["title"]]
    assert len(panel) == 1
    assert exhausted in panel_exprs(panel[0])[0].replace('{instance=~"$instance"}', "")
    rates = [expr for panel in below for expr in panel_exprs(panel) if "_total" in expr]
    assert rates and all("rate(" in expr for expr in rates)  # counters are shown as rates, never raw
    tables = [panel for panel in below if panel["type"] == "table"]
    assert len(tables) == 1 and all("by (instance, translated, destination, protocol)" in expr
                                    for expr in panel_exprs(tables[0]))


def panel_exprs(panel):
    return [target["expr"] for target in panel.get("targets", [])]


def test_the_who_a_process_panel_by_name_and_unit_with_rate_and_ports():
    board = dashboard()
    tables = [panel for panel in board["panels"] if panel["type"] == "table"]
    who = [panel for panel in tables if any("tcpstack_process_" in expr for expr in panel_exprs(panel))]
    assert len(who) == 1, [panel["title"] for panel in tables]
    exprs = panel_exprs(who[0])
    for name in ("tcpstack_process_ports_held", "tcpstack_process_new_connections_per_second"):
        assert any(metric_names(expr) == {name} for expr in exprs), (name, exprs)
    # each row is one process of one host: its name, user and unit (or container scope) stay as labels
    assert all(re.search(r"by \(instance, process, user, unit\)", expr) for expr in exprs), exprs
    assert all(target.get("format") == "table" and target.get("instant") for target in who[0]["targets"])
    assert who[0]["transformations"][0]["id"] == "merge"
    series = [panel for panel in board["panels"] if panel["type"] == "timeseries"
              and any("tcpstack_process_" in expr for expr in panel_exprs(panel))]
    assert {name for panel in series for expr in panel_exprs(panel) for name in metric_names(expr)} == {
        "tcpstack_process_ports_held", "tcpstack_process_new_connections_per_second"}
    assert all("{{process}}" in target["legendFormat"] and "{{unit}}" in target["legendFormat"]
               for panel in series for target in panel["targets"])


def test_a_table_of_the_top_destinations():
    tables = [panel for panel in dashboard()["panels"] if panel["type"] == "table"
              and any("tcpstack_destination_" in expr for expr in panel_exprs(panel))]
    assert len(tables) == 1
    names = {name for expr in panel_exprs(tables[0]) for name in metric_names(expr)}
    assert names == {"tcpstack_destination_utilisation_ratio", "tcpstack_destination_ports_in_use",
                     "tcpstack_destination_ports_time_wait", "tcpstack_destination_ports_blocking"}
    assert all("by (instance, destination, local_address)" in expr for expr in panel_exprs(tables[0]))


def test_the_verdict_panels_read_what_the_alerts_read():
    board = dashboard()
    rules = {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}
    verdict_panels = [panel for panel in board["panels"]
                      if any(metric_names(expr) == {"tcpstack_verdict"} for expr in panel_exprs(panel))]
    assert len(verdict_panels) >= 2  # the verdict now, and over time
    for panel in verdict_panels:
        texts = {value["text"]: key for mapping in panel["fieldConfig"]["defaults"]["mappings"]
                 for key, value in mapping["options"].items()}
        assert texts == {"ok": "0", "warning": "1", "critical": "2"}, panel["title"]
    # the values the verdict alerts compare with are those the panels map to warning and critical
    assert rules["TcpstackVerdictWarning"]["expr"].strip().endswith("== 1")
    assert rules["TcpstackVerdictCritical"]["expr"].strip().endswith(">= 2")
    # the no-free-port panel counts exactly the destinations the critical alert fires for
    exhausted = " ".join(rules["TcpstackEphemeralPortsExhausted"]["expr"].split())
    panel = [panel for panel in board["panels"] if "TcpstackEphemeralPortsExhausted" in panel["title"]]
    assert len(panel) == 1
    expr = panel_exprs(panel[0])[0].replace('{instance=~"$instance"}', "")
    assert exhausted in expr, (exhausted, expr)


def test_no_two_panels_overlap_on_the_grid():
    cells = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in cells, (panel["title"], cells.get((x, y)))
                cells[(x, y)] = panel["title"]


def test_the_promql_name_lexer():
    assert metric_names('max by (instance, job) (a_ratio{x="y", z=~"$v"}) >= on (instance) group_left b') == {
        "a_ratio", "b"}
    assert metric_names("rate(c_total[$__rate_interval]) / ignoring(le) d offset 5m") == {"c_total", "d"}
    assert metric_names('time() - e_seconds > 3 * f and g{h="i and j"}') == {"e_seconds", "f", "g"}
