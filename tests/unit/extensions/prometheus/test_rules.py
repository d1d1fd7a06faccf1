"""The port_monitor alert rules: promtool's own checks, and an incident replayed with promtool test rules."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.support.ci import need

HERE = Path(__file__).resolve().parent
RULES = HERE.parents[3] / "extensions" / "prometheus" / "tcpstack-rules.yml"


def promtool(*args):
    tool = shutil.which("promtool")
    need(tool is not None, "needs promtool (Debian package prometheus)")
    return subprocess.run([tool, *args], cwd=HERE, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_checks_the_rules():
    done = promtool("check", "rules", str(RULES))
    assert done.returncode == 0 and "SUCCESS: 5 rules found" in done.stdout, done.stdout + done.stderr


def test_the_incident_fires_and_resolves():
    done = promtool("test", "rules", "rules_test.yml")
    assert done.returncode == 0 and "SUCCESS" in done.stdout, done.stdout + done.stderr


def test_no_rule_hard_codes_a_port_count():
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    for rule in rules:
        numbers = {float(n) for n in re.findall(r"(?<![\w.])\d+(?:\.\d+)?", rule["expr"])}
        assert numbers <= {0, 0.9, 3, 5}, (rule["alert"], numbers)  # ratios, a multiple of the interval, a window
