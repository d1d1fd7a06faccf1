"""Run the reliability suites (issue 8) and write down their figures.

    .venv/bin/python tools/reliability_report.py [--json PATH] [--markdown]

Runs, in one pytest session, tests/unit/plugins/module_utils/test_properties.py (hypothesis properties of every
parser and of the planning logic), the hostile-file and hostile-text tests of issue 13 (HOSTILE) and
tests/reliability (invalid inputs through real ansible-playbook, faults on
the real kernel and filesystem, WinRM faults from the Windows simulator; root for the Linux parts).  The tests
count what they tried; this script adds pytest's own counts and the run time, writes everything to
.build/reliability.json (or --json PATH) and prints a summary (--markdown: the table docs/reliability.md
shows).  Exits with pytest's exit code.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUITES = ["tests/unit/plugins/module_utils/test_properties.py", "tests/reliability"]
# issue 13: hostile files and hostile text, counted per group from pytest's own results
HOSTILE = {
    "hostile_files": ["tests/unit/plugins/module_utils/test_linux_files.py", "tests/reliability/test_foreign_files.py"],
    "hostile_text": ["tests/unit/plugins/module_utils/test_parsers_linear.py",
                     "tests/unit/plugins/module_utils/test_socket_table_fuzz.py",
                     "tests/unit/plugins/plugin_utils/test_windows_hardening.py",
                     "tests/unit/plugins/plugin_utils/test_fleet_report_hostile.py"],
    "write_order": ["tests/reliability/test_fsync_order.py"],
}
SUITES += [path for group in HOSTILE.values() for path in group if not path.startswith("tests/reliability/")]


def _module(path):
    """tests/unit/x/test_y.py -> tests.unit.x.test_y, as junit's classname starts."""
    return path[:-len(".py")].replace("/", ".")


def _junit_counts(path):
    """pytest's counts, and for each HOSTILE group its tests and how many passed."""
    counts = {"tests": 0, "passed": 0, "failed": 0, "errors": 0, "skipped": 0, "xfailed": 0}
    groups = {name: {"tests": 0, "passed": 0} for name in HOSTILE}
    failures = []
    root = ET.parse(path).getroot()
    for case in root.iter("testcase"):
        counts["tests"] += 1
        name = "%s::%s" % (case.get("classname"), case.get("name"))
        outcome = "passed"
        for child in case:
            if child.tag == "skipped":
                outcome = "xfailed" if (child.get("type") == "pytest.xfail") else "skipped"
            elif child.tag == "failure":
                outcome = "failed"
            elif child.tag == "error":
                outcome = "errors"
        counts[outcome] += 1
        if outcome in ("failed", "errors"):
            failures.append(name)
        classname = case.get("classname") or ""
        for group, paths in HOSTILE.items():
            if any(classname == _module(p) or classname.startswith(_module(p) + ".") for p in paths):
                groups[group]["tests"] += 1
                groups[group]["passed"] += int(outcome == "passed")
    counts["groups"] = groups
    return counts, failures


def _getter(suites):
    def get(suite, key):
        return suites.get(suite, {}).get(key, 0)
    return get


def summarise(suites):
    """The headline figures from the per-suite counts the tests recorded."""
    get = _getter(suites)
    inputs = get("invalid_inputs", "tried")
    faults = (get("linux_faults", "faults_injected") + get("sigkill", "sigkills_sent")
              + get("windows_faults", "faults_injected") + get("overlapping_runs", "runs")
              + get("playbook_kills", "faults_injected"))
    survived = (get("linux_faults", "converged_after_fault") + get("sigkill", "old_file") + get("sigkill", "new_file")
                + get("windows_faults", "converged") + get("overlapping_runs", "survived")
                + get("playbook_kills", "survived"))
    # data lost: a partial file, a runtime that disagrees with the file, a fault not rolled back
    lost = (get("sigkill", "partial_files") + get("overlapping_runs", "runtime_file_disagreements")
            + get("playbook_kills", "data_lost")
            + (get("linux_faults", "faults_injected") - get("linux_faults", "host_unchanged")))
    return {
        "invalid_inputs_tried": inputs,
        "invalid_inputs_refused_clearly": get("invalid_inputs", "refused_clearly"),
        "faults_injected": faults,
        "runs_survived": survived,
        "data_lost": lost,
        "property_examples": get("properties", "examples"),
    }


def markdown(report):
    s, t, fig = report["summary"], report["pytest"], report["suites"]
    get = _getter(fig)

    def group(name, key):
        return t.get("groups", {}).get(name, {}).get(key, 0)
    rows = [
        ("Invalid inputs tried (through ansible-playbook)", "%d (Linux %d, Windows %d; role variables %d)" % (
            s["invalid_inputs_tried"], get("invalid_inputs", "linux"), get("invalid_inputs", "windows"),
            get("invalid_inputs", "role"))),
        ("... refused with a message naming the option and what is valid, host unchanged",
         "%d" % s["invalid_inputs_refused_clearly"]),
        ("Linux faults (read-only /proc/sys, read-only and full sysctl.d, key failing mid-apply)",
         "%d injected, %d rolled back, %d converged on the next run" % (
             get("linux_faults", "faults_injected"), get("linux_faults", "host_unchanged"),
             get("linux_faults", "converged_after_fault"))),
        ("SIGKILL during the persistence write", "%d kills (%d in flight): old file %d, new file %d, partial %d" % (
            get("sigkill", "sigkills_sent"), get("sigkill", "killed_in_flight"), get("sigkill", "old_file"),
            get("sigkill", "new_file"), get("sigkill", "partial_files"))),
        ("... temporary files a kill left (removed by the next write, which the test checks)", "%d" % get("sigkill", "temporaries_left")),
        ("A whole ansible-playbook run SIGKILLed at a random point while tuning or undoing",
         "%d kills: ended old %d, new %d, some keys old and some new %d; next run converged %d" % (
             get("playbook_kills", "faults_injected"), get("playbook_kills", "ended_old"),
             get("playbook_kills", "ended_new"), get("playbook_kills", "mixed_keys"), get("playbook_kills", "survived"))),
        ("Hostile files: a persist_file not ours, symbolic links, FIFOs, devices, loops, oversized files, the lock",
         "%d tests, %d passed: never written, deleted, followed or hung on" % (
             group("hostile_files", "tests"), group("hostile_files", "passed"))),
        ("Hostile text: every parser fed 1 MB lines, 5,000-digit numbers and deterministic hypothesis examples",
         "%d tests, %d passed: no other exception than the parser's own, linear time" % (
             group("hostile_text", "tests"), group("hostile_text", "passed"))),
        ("The persistence write's syscall order, traced with strace",
         "%d tests, %d passed" % (group("write_order", "tests"), group("write_order", "passed"))),
        ("Overlapping runs on one host", "%d runs, %d succeeded, runtime/file disagreements %d" % (
            get("overlapping_runs", "runs"), get("overlapping_runs", "survived"),
            get("overlapping_runs", "runtime_file_disagreements"))),
        ("WinRM faults (drops, failing netsh, timeouts, retried OperationTimeout)",
         "%d injected, %d failed with an error, %d retried by pywinrm, %d converged on the next run" % (
             get("windows_faults", "faults_injected"), get("windows_faults", "failed_clearly"),
             get("windows_faults", "faults_injected") - get("windows_faults", "failed_clearly"),
             get("windows_faults", "converged"))),
        ("Property-based examples (hypothesis)", "%d over %d properties" % (
            s["property_examples"], get("properties", "properties"))),
        ("**Faults injected / runs survived / data lost**", "**%d / %d / %d**" % (
            s["faults_injected"], s["runs_survived"], s["data_lost"])),
        ("pytest", "%d tests: %d passed, %d xfailed, %d failed, %d skipped, in %.0f s" % (
            t["tests"], t["passed"], t["xfailed"], t["failed"] + t["errors"], t["skipped"], report["seconds"])),
    ]
    out = ["| figure | value |", "|---|---|"]
    out += ["| %s | %s |" % row for row in rows]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", maxsplit=1)[0])
    parser.add_argument("--json", default=str(ROOT / ".build" / "reliability.json"))
    parser.add_argument("--markdown", action="store_true", help="print the Markdown table of docs/reliability.md")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments")
    args = parser.parse_args(argv)

    build = ROOT / ".build"
    build.mkdir(exist_ok=True)
    figures = build / "reliability-figures.json"
    junit = build / "reliability-junit.xml"
    for stale in (figures, junit):
        if stale.exists():
            stale.unlink()
    env = dict(os.environ, TCPSTACK_RELIABILITY_FIGURES=str(figures))
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--junitxml", str(junit)] + SUITES + args.pytest_args
    started = time.monotonic()
    rc = subprocess.call(cmd, cwd=str(ROOT), env=env)
    seconds = time.monotonic() - started
    suites = json.loads(figures.read_text()) if figures.exists() else {}
    counts, failures = _junit_counts(junit) if junit.exists() else ({}, [])
    report = {
        "command": "%s tools/reliability_report.py" % os.path.relpath(sys.executable, ROOT),
        "pytest_command": " ".join(cmd[1:]),
        "finished": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "root": os.geteuid() == 0,
        "ci": os.environ.get("CI", ""),
        "seconds": round(seconds, 1),
        "exit_code": rc,
        "pytest": counts,
        "failures": failures,
        "summary": summarise(suites),
        "suites": suites,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1, sort_keys=True) + "\n")
    print()
    if args.markdown:
        print(markdown(report))
    else:
        print(json.dumps(report["summary"], indent=1))
        print("pytest: %s in %.0f s; figures in %s" % (counts, seconds, args.json))
    return rc


if __name__ == "__main__":
    sys.exit(main())
