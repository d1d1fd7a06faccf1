"""The alert rules for hosts without a sampler (issue 22 item 5), replayed with promtool test rules.

A scheduled port_audit's series (every 15 minutes): stale after two of its intervals (TcpstackSamplerStale, whose
sampler arm keeps its three intervals), a host the audit could not reach (TcpstackAuditFailed), and Windows Tcpip
events 4227/4231 within the audit's window (TcpstackWindowsTcpipEvents).
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.support.promql import exposed_names, metric_names
from tests.unit.extensions.prometheus.test_rules import promtool

from ansible_collections.tcpstack.tuning.plugins.plugin_utils.audit_metrics import host_text

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[3] / "extensions" / "prometheus" / "tcpstack-rules.yml"
AUDIT_RULES = HERE.parents[3] / "extensions" / "prometheus" / "tcpstack-audit-rules.yml"
WINDOWS = {"verdict": "ok", "ephemeral": {"range": [49152, 65535], "usable": 16384, "reserved_in_range": 0},
           "sockets": {"by_state": {"TimeWait": 3}}, "ports_held": 3,
           "thresholds": {"warning_percent": 70, "critical_percent": 90},
           "events": {"hours": 24, "4227": 1, "4231": 0, "latest": None, "capped": False}, "counters": None}


def test_promtool_checks_the_audit_rules():
    done = promtool("check", "rules", str(AUDIT_RULES))
    assert done.returncode == 0 and "SUCCESS: 2 rules found" in done.stdout, done.stdout + done.stderr


def test_the_audit_rules_fire_and_stay_quiet_when_they_should():
    done = promtool("test", "rules", "audit_metrics_rules_test.yml")
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_every_audit_rule_reads_series_the_audit_writes():
    rules = {rule["alert"]: rule for path in (RULES, AUDIT_RULES)
             for group in yaml.safe_load(path.read_text())["groups"] for rule in group["rules"]}
    written = exposed_names(host_text("win1", WINDOWS, 1.0, 900)) | exposed_names(host_text("gone", None, 1.0, 900))
    for name in ("TcpstackSamplerStale", "TcpstackAuditFailed", "TcpstackWindowsTcpipEvents"):
        assert metric_names(rules[name]["expr"]) <= written, (name, metric_names(rules[name]["expr"]) - written)
    stale = rules["TcpstackSamplerStale"]["expr"]
    assert "2 * tcpstack_sampler_interval_seconds{tcpstack_source=\"port_audit\"}" in stale
    assert "for" not in rules["TcpstackAuditFailed"] and "for" not in rules["TcpstackWindowsTcpipEvents"]
