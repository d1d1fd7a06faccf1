"""The port_monitor alert rules: promtool's own checks, and an incident replayed with promtool test rules."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support.ci import need
from tests.support.promql import metric_names

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[3] / "extensions" / "prometheus" / "tcpstack-rules.yml"


def promtool(*args):
    tool = shutil.which("promtool")
    need(tool is not None, "needs promtool (Debian package prometheus)")
    return subprocess.run([tool, *args], cwd=HERE, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rules():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0 and "SUCCESS: 16 rules found" in done.stdout, done.stdout + done.stderr


def test_the_incident_fires_and_resolves():
    done = promtool("test", "rules", "rules_test.yml")
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_at_the_samplers_pace_an_exhausted_range_fires_at_once_and_every_verdict_has_an_alert():
    done = promtool("test", "rules", "rules_test_timing.yml")
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def rules():
    return {rule["alert"]: rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}


def seconds(duration):
    """A Prometheus duration such as 1m, 90s or 1m30s in seconds; an absent for: is 0."""
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|s|m|h|d)", duration or ""))


def test_the_for_durations_are_sized_against_time_wait():
    """No free port: no for: at all. Thresholds and verdicts: at least one TIME_WAIT (60 s), at most two."""
    by_name = rules()
    assert "for" not in by_name["TcpstackEphemeralPortsExhausted"]
    assert by_name["TcpstackEphemeralPortsExhausted"]["labels"]["severity"] == "critical"
    for name in ("TcpstackEphemeralPortsWarning", "TcpstackEphemeralPortsCritical", "TcpstackVerdictWarning",
                 "TcpstackVerdictCritical"):
        assert 60 <= seconds(by_name[name].get("for")) <= 120, (name, by_name[name].get("for"))
    # each state of tcpstack_verdict above ok (1 warning, 2 critical) has an alert of that severity
    verdicts = {name: rule for name, rule in by_name.items() if "tcpstack_verdict" in rule["expr"]}
    assert {rule["labels"]["severity"] for rule in verdicts.values()} == {"warning", "critical"}


def test_summaries_print_numbers_with_the_humanize_functions():
    for name, rule in rules().items():
        summary = rule["annotations"]["summary"]
        for use in re.findall(r"{{(.*?)}}", summary):
            if "$value" in use:
                assert re.search(r"\|\s*humanize(Percentage|Duration)?\s*$", use), (name, summary)


def test_no_rule_hard_codes_a_port_count():
    for rule in rules().values():
        numbers = {float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?", rule["expr"])}
        # ratios, a multiple of the interval, a window; and the verdict's own values (1 warning, 2 critical)
        allowed = {0, 0.9, 3, 5} | ({1, 2} if metric_names(rule["expr"]) == {"tcpstack_verdict"} else set())
        allowed |= {2} if rule["alert"] == "TcpstackSamplerStale" else set()  # a scheduled audit: 2 intervals
        assert numbers <= allowed, (rule["alert"], numbers)
