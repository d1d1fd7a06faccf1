"""The NAT alert rules (issue 23 item 4): promtool test rules over a NAT host, a quiet NAT host and a NAT-less host.

The promtool test file is built here: the summaries are written out (the figures the alerts must print), the
descriptions are the rules' own with the labels filled in (so a test does not repeat prose).  One NAT host ``gw``
goes through warning (pending, then firing), critical and exhausted on one egress key and on its conntrack table,
and back; its insert_failed and drop counters rise for 5 minutes.  ``gw2`` source-NATs quietly (counters flat but
not zero); ``web`` has no NAT at all (only the thresholds and the verdict): no NAT alert ever fires for either.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from tests.support.promql import exposed_names, metric_names
from tests.unit.extensions.prometheus.test_rules import promtool

from ansible_collections.tcpstack.tuning.plugins.module_utils.prometheus import render

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[3] / "extensions" / "prometheus" / "tcpstack-rules.yml"
GROUP = "tcpstack-nat-egress"
NAT_ALERTS = ("TcpstackNatEgressExhausted", "TcpstackNatEgressWarning", "TcpstackNatEgressCritical",
              "TcpstackConntrackTableFull", "TcpstackConntrackTableWarning", "TcpstackConntrackTableCritical",
              "TcpstackConntrackInsertFailed", "TcpstackConntrackDropping")
GW = {"instance": "gw:9100", "job": "node"}
KEY_A = dict(GW, translated="203.0.113.1", destination="192.0.2.9:443", protocol="tcp")
KEY_B = dict(GW, translated="203.0.113.1", destination="192.0.2.10:5432", protocol="tcp")


def series(name, labels, values):
    text = ",".join('%s="%s"' % item for item in sorted(labels.items()))
    return {"series": "%s{%s}" % (name, text), "values": values}


def input_series():
    out = []
    for instance in ("gw:9100", "gw2:9100", "web:9100"):
        host = {"instance": instance, "job": "node"}
        out += [series("tcpstack_warning_utilisation_ratio", host, "0.7x29"),
                series("tcpstack_critical_utilisation_ratio", host, "0.9x29"),
                series("tcpstack_verdict", host, "0x29")]
    # gw, one minute a sample: 5 min each of 10%, 75% (warning), 95% (critical), 100% (exhausted), then 10%
    out += [series("tcpstack_nat_egress_in_use", KEY_A, "100x4 750x4 950x4 1000x4 100x9"),
            series("tcpstack_nat_egress_capacity", KEY_A, "1000x29"),
            series("tcpstack_nat_egress_utilisation_ratio", KEY_A, "0.1x4 0.75x4 0.95x4 1x4 0.1x9"),
            series("tcpstack_nat_egress_in_use", KEY_B, "200x29"),
            series("tcpstack_nat_egress_capacity", KEY_B, "64512x29"),
            series("tcpstack_nat_egress_utilisation_ratio", KEY_B, "0.0031x29"),
            series("tcpstack_conntrack_entries", GW, "1000x4 190000x4 240000x4 262144x4 1000x9"),
            series("tcpstack_conntrack_max", GW, "262144x29"),
            series("tcpstack_conntrack_utilisation_ratio", GW, "0.0038x4 0.7248x4 0.9155x4 1x4 0.0038x9"),
            # insert_failed and drop rise by 10 a minute from 10 to 15 min, then stay
            series("tcpstack_conntrack_insert_failed_total", GW, "0x9 0+10x5 60x14"),
            series("tcpstack_conntrack_drop_total", GW, "5x9 5+10x5 65x14")]
    gw2 = {"instance": "gw2:9100", "job": "node"}
    key = dict(gw2, translated="198.51.100.1", destination="192.0.2.9:443", protocol="tcp")
    out += [series("tcpstack_nat_egress_in_use", key, "5x29"), series("tcpstack_nat_egress_capacity", key, "1000x29"),
            series("tcpstack_nat_egress_utilisation_ratio", key, "0.005x29"),
            series("tcpstack_conntrack_entries", gw2, "50x29"), series("tcpstack_conntrack_max", gw2, "262144x29"),
            series("tcpstack_conntrack_utilisation_ratio", gw2, "0.0002x29"),
            series("tcpstack_conntrack_insert_failed_total", gw2, "7x29"),
            series("tcpstack_conntrack_drop_total", gw2, "9x29")]
    return out


KEY_A_TEXT = "from 203.0.113.1 to 192.0.2.9:443/tcp"
# (minute, alert, [(labels, summary)]): every NAT alert at the minutes where it changes, and around them
EXPECTED = [
    (4, "TcpstackNatEgressWarning", []),
    (6, "TcpstackNatEgressWarning", []),  # pending (for: 2m)
    (7, "TcpstackNatEgressWarning", [(KEY_A, "gw:9100 uses 75% of the translated ports " + KEY_A_TEXT)]),
    (10, "TcpstackNatEgressWarning", []),  # critical now, no longer warning
    (10, "TcpstackNatEgressCritical", []),  # pending (for: 1m)
    (11, "TcpstackNatEgressCritical", [(KEY_A, "gw:9100 uses 95% of the translated ports " + KEY_A_TEXT)]),
    (15, "TcpstackNatEgressCritical", [(KEY_A, "gw:9100 uses 100% of the translated ports " + KEY_A_TEXT)]),
    (20, "TcpstackNatEgressCritical", []),
    (14, "TcpstackNatEgressExhausted", []),
    (15, "TcpstackNatEgressExhausted", [(KEY_A, "gw:9100 has no free translated port " + KEY_A_TEXT
                                         + ": 1k in use")]),  # at once, no pending
    (20, "TcpstackNatEgressExhausted", []),
    (6, "TcpstackConntrackTableWarning", []),
    (7, "TcpstackConntrackTableWarning", [(GW, "gw:9100: the conntrack table is 72.48% full")]),
    (10, "TcpstackConntrackTableWarning", []),
    (10, "TcpstackConntrackTableCritical", []),
    (11, "TcpstackConntrackTableCritical", [(GW, "gw:9100: the conntrack table is 91.55% full")]),
    (20, "TcpstackConntrackTableCritical", []),
    (14, "TcpstackConntrackTableFull", []),
    (15, "TcpstackConntrackTableFull", [(GW, "gw:9100: the conntrack table is full, 262.1k entries")]),
    (20, "TcpstackConntrackTableFull", []),
    (10, "TcpstackConntrackInsertFailed", []),
    (11, "TcpstackConntrackInsertFailed", [(GW, "gw:9100: conntrack insert_failed rose by 10 in 5 minutes")]),
    (13, "TcpstackConntrackInsertFailed", [(GW, "gw:9100: conntrack insert_failed rose by 30 in 5 minutes")]),
    (22, "TcpstackConntrackInsertFailed", []),  # resolved once the window holds no rise
    (10, "TcpstackConntrackDropping", []),
    (13, "TcpstackConntrackDropping", [(GW, "gw:9100: conntrack dropped 30 packets in 5 minutes")]),
    (22, "TcpstackConntrackDropping", []),
]


def rules():
    return {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}


def nat_rules():
    return {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] if group["name"] == GROUP
            for rule in group["rules"]}


def description(rule, labels):
    text = rule["annotations"]["description"]
    return re.sub(r"{{\s*\$labels\.(\w+)\s*}}", lambda match: labels[match.group(1)], text)


def test_nat_rules_fire_pend_and_resolve_and_never_for_hosts_without_nat(tmp_path):
    by_name = rules()
    tests = []
    for minute, name, alerts in EXPECTED:
        tests.append({"eval_time": "%dm" % minute, "alertname": name, "exp_alerts": [
            {"exp_labels": dict(labels, severity=by_name[name]["labels"]["severity"]),
             "exp_annotations": {"summary": summary, "description": description(by_name[name], labels)}}
            for labels, summary in alerts]})
    assert {name for dummy, name, dummy2 in EXPECTED} == set(NAT_ALERTS) == set(nat_rules())
    document = {"rule_files": [str(RULES)], "evaluation_interval": "1m",
                "tests": [{"interval": "1m", "input_series": input_series(), "alert_rule_test": tests}]}
    path = tmp_path / "nat_rules_test.yml"
    path.write_text(yaml.safe_dump(document, sort_keys=False, width=1000))
    done = promtool("test", "rules", str(path))
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_the_failing_now_alerts_have_no_for_and_the_thresholds_come_from_the_host():
    by_name = nat_rules()
    for name in ("TcpstackNatEgressExhausted", "TcpstackConntrackTableFull", "TcpstackConntrackInsertFailed",
                 "TcpstackConntrackDropping"):
        assert "for" not in by_name[name], name
    for name, rule in by_name.items():
        numbers = {float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?", rule["expr"])}
        assert numbers <= {0, 5}, (name, numbers)  # "> 0", and a 5-minute window: nothing else is written in
        if name.endswith(("Warning", "Critical")):
            level = "warning" if name.endswith("Warning") else "critical"
            assert "tcpstack_%s_utilisation_ratio" % level in rule["expr"], name
            assert rule["labels"]["severity"] == level and rule["for"] in ("1m", "2m"), name


NAT_RESULT = {
    "verdict": "critical", "thresholds": {"warning_percent": 70, "critical_percent": 90},
    "nat": {"conntrack": {"count": 1012, "max": 262144, "utilisation": 0.0039,
                          "counters": {"insert_failed": 3, "drop": 4, "early_drop": 0, "clash_resolve": 1}},
            "egress": [{"translated": "10.231.2.1", "destination": "10.231.2.2", "port": 8080, "protocol": "tcp",
                        "in_use": 1000, "time_wait": 0, "capacity": 1000, "utilisation": 1.0}],
            "egress_total": 1, "verdict": "critical"},
}


def test_every_nat_rule_reads_series_the_sampler_writes_for_a_nat_host():
    written = exposed_names(render(NAT_RESULT, top=5, duration_seconds=0.1, timestamp=1, interval_seconds=15))
    for name, rule in nat_rules().items():
        assert metric_names(rule["expr"]) <= written, (name, metric_names(rule["expr"]) - written)
    without = exposed_names(render(dict(NAT_RESULT, nat=None), top=5))
    assert not any(name.startswith(("tcpstack_nat_", "tcpstack_conntrack_")) for name in without), without
