"""The port_monitor role and its sampler, for real: bad input through ansible-playbook, check mode, and the sampler's
metrics through a real node_exporter during a real exhaustion.

- Bad role variables fail before the host changes, naming the variable (controller-side check_role_vars, or, for a
  textfile directory that is not a directory on the host, the role's first host-side check).  The runs go through
  ``ansible_connection: local`` inside a throwaway network namespace; none of them may change the machine, and each
  test checks that the unit file and the code directory the role would install are still absent.
- The sampler, laid out exactly as the role installs it (the collection's module_utils under
  ansible_collections/tcpstack/tuning/plugins/module_utils beside the entry point, run with ``python3 -s -E -B``),
  runs inside a namespace ``web`` whose range is narrowed to 1,000 ports and which a bounded churn towards
  ``backend`` has exhausted.  Debian's node_exporter serves its textfile on 127.0.0.1 inside ``web``; /metrics is
  fetched over HTTP.  ``promtool check metrics`` passes on the file and on the tcpstack_ part of the scrape; the
  verdict is critical; every metric name of every Grafana dashboard query and alert rule is in the scrape.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.ci import need
from tests.support.collection import install_like_the_role
from tests.support.netns import Sandbox, stop_process
from tests.support.promql import exposed_names, metric_names, samples
from tests.support.traffic import program
from tests.support.veth import ClientServer

pytestmark = pytest.mark.usefixtures("root_netns")

ROOT = Path(__file__).resolve().parents[2]
ROLE = "tcpstack.tuning.port_monitor"
UNIT_FILE = Path("/etc/systemd/system/tcpstack-port-monitor.service")
CODE_DIR = Path("/usr/local/lib/tcpstack-port-monitor")
DASHBOARD = ROOT / "extensions" / "grafana" / "tcpstack-ports.json"
RULES = ROOT / "extensions" / "prometheus" / "tcpstack-rules.yml"
NAT_PREFIXES = ("tcpstack_nat_", "tcpstack_conntrack_")  # only on a host that source-NATs (port_monitor_nat)
WEB_IP, BACKEND_IP, BACKEND_PORT = "10.216.0.1", "10.216.0.2", 8080
RANGE = "40000 40999"
ATTEMPTS, STOP_AFTER, CHURN_SECONDS = 3000, 20, 60
EXPORTER_PORT = 9100  # inside web's own namespace, where nothing else listens
BEFORE_THE_HOST = ("Validating arguments against arg spec", "Check the role variables on the controller")
FETCH = r"""
import sys, time, urllib.request
for attempt in range(100):  # bounded: at most about 20 s
    try:
        with urllib.request.urlopen(sys.argv[1], timeout=5) as answer:
            sys.stdout.write(answer.read().decode("utf-8"))
            break
    except OSError:
        time.sleep(0.2)
else:
    sys.exit("no answer from " + sys.argv[1])
"""


def play(**variables):
    return json.dumps([{"name": "site", "hosts": "all", "gather_facts": False, "vars": variables,
                        "roles": [ROLE]}], indent=1)


def untouched_machine():
    """What the role would install on the machine running the tests is not there (before and after each run)."""
    return not UNIT_FILE.exists() and not CODE_DIR.exists()


@pytest.fixture
def box():
    need(untouched_machine(), "the machine itself has %s or %s (the role is installed here)" % (UNIT_FILE, CODE_DIR))
    with Sandbox.new(prefix="pmb") as sandbox:
        yield sandbox
    assert untouched_machine()


@pytest.mark.parametrize("variables, fragment", [
    ({"port_monitor_interval": 0}, "port_monitor_interval: 0 is not valid: an integer number of seconds from 1 to 3600"),
    ({"port_monitor_interval": "soon"}, "port_monitor_interval"),
    ({"port_monitor_top": 0}, "port_monitor_top: 0 is not valid: an integer number of destinations from 1 to 100"),
    ({"port_monitor_top": 101}, "port_monitor_top: 101 is not valid: an integer number of destinations from 1 to 100"),
    ({"port_monitor_warning_percent": 95}, "port_monitor_warning_percent: 95 is not valid: at most"),
    ({"port_monitor_textfile_dir": "textfile"}, "port_monitor_textfile_dir: 'textfile' is not valid: an absolute path"),
    ({"port_monitor_textfile_dir": "/srv/a b"}, "port_monitor_textfile_dir: '/srv/a b' is not valid"),
    ({"port_monitor_state": "gone"}, "port_monitor_state"),
])
def test_bad_variables_fail_on_the_controller_before_the_host_is_touched(box, variables, fragment):
    before = box.snapshot()
    rc, results = box.run_playbook(play(), extra_vars=variables)
    assert rc != 0
    failed = [r for r in results if r["_status"] == "failed"]
    assert failed and failed[0]["_task"].startswith(BEFORE_THE_HOST), box.last_run.describe()
    assert fragment in failed[0]["msg"] or fragment in json.dumps(failed[0].get("argument_errors", "")), failed[0]
    assert [r["_task"] for r in results if r["_status"] != "skipped"][-1] == failed[0]["_task"]  # nothing after it
    assert box.snapshot() == before


@pytest.mark.parametrize("what", ["a regular file", "missing", "a symbolic link"])
def test_a_textfile_directory_that_is_not_a_directory_fails_before_anything_changes(box, what):
    target = box.scratch / "textfile"
    if what == "a regular file":
        target.write_text("not a directory\n")
    elif what == "a symbolic link":
        (box.scratch / "real").mkdir()
        target.symlink_to(box.scratch / "real")
    before = box.file_hashes()
    rc, results = box.run_playbook(play(port_monitor_textfile_dir=str(target)))
    assert rc != 0
    failed = [r for r in results if r["_status"] == "failed"]
    assert [r["_task"] for r in failed] == ["Refuse a textfile directory that is not a directory"], \
        box.last_run.describe()
    expected = {"a regular file": "not a directory", "missing": "missing", "a symbolic link": "a symbolic link"}[what]
    assert failed[0]["msg"].startswith("port_monitor_textfile_dir: '%s' is not valid: an existing directory" % target)
    assert "it is %s" % expected in failed[0]["msg"] and "Nothing was changed" in failed[0]["msg"]
    assert not any(r.get("changed") for r in results)
    assert box.file_hashes() == before


def test_check_mode_on_a_fresh_host_reports_the_install_and_changes_nothing(box):
    textfile_dir = box.scratch / "textfile"
    textfile_dir.mkdir()
    rc, results = box.run_playbook(play(port_monitor_textfile_dir=str(textfile_dir)), check=True, diff=True)
    assert rc == 0, box.last_run.describe()
    changed = {r["_task"] for r in results if r.get("changed")}
    assert {"Create the code directory and its package directories", "Copy the collection's analysis code",
            "Install the systemd unit"} <= changed, changed
    unit = [r for r in results if r["_task"] == "Install the systemd unit"][0]
    after = unit["diff"][0]["after"] if isinstance(unit["diff"], list) else unit["diff"]["after"]
    assert "--directory %s --interval 15 --top 5" % textfile_dir in after
    assert list(textfile_dir.iterdir()) == []
    assert untouched_machine()


# ----------------------------------------------------------------- the sampler through node_exporter
@pytest.fixture
def exhausted():
    """web -> backend over a veth pair; web's range narrowed to 1,000 ports and exhausted by a bounded churn."""
    with ClientServer(WEB_IP, BACKEND_IP, prefixes=("pmw", "pms")) as link:
        server = link.serve(program("serve", BACKEND_IP, BACKEND_PORT, 600), ready=None)
        assert server.stdout.readline().strip() == "listening"
        assert link.client.set_sysctl("net.ipv4.ip_local_port_range", RANGE).split() == RANGE.split()
        done = link.client.exec(program("connect", BACKEND_IP, BACKEND_PORT, "--attempts", ATTEMPTS, "--stop-after",
                                        STOP_AFTER, "--seconds", CHURN_SECONDS), timeout=CHURN_SECONDS + 30)
        counts = json.loads(done.stdout)
        assert counts["eaddrnotavail"] == STOP_AFTER and counts["other"] == 0, counts
        yield link.client


def promtool(*args, stdin=None):
    tool = shutil.which("promtool")
    need(tool is not None, "needs promtool (Debian package prometheus)")
    return subprocess.run([tool, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False)


def queries(dashboard):
    """Every PromQL expression of the dashboard: panel targets and the templating queries."""
    out = []
    for panel in dashboard["panels"]:
        out.extend(target["expr"] for target in panel.get("targets", []))
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        text = query.get("query") if isinstance(query, dict) else None
        if text:  # label_values(METRIC, LABEL): the metric only
            out.append(re.sub(r"label_values\(\s*([^,()]+?)\s*,\s*\w+\s*\)", r"\1", text))
    return out


def test_real_scrape_of_the_sampler_during_an_exhaustion(exhausted, tmp_path):
    web = exhausted
    exporter_bin = shutil.which("prometheus-node-exporter")
    need(exporter_bin is not None, "needs Debian's prometheus-node-exporter")
    entry = install_like_the_role(tmp_path / "code")
    textfile_dir = tmp_path / "textfile"
    textfile_dir.mkdir()
    web.start(program("hold", "127.0.0.1", 8081, 5, 120), ready="ready")  # a process holding ports, for the dashboard's process panels
    done = web.exec([sys.executable, "-s", "-E", "-B", entry, "--directory", textfile_dir, "--top", 3, "--once",
                     "--processes", "--process-sample-seconds", 1], cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    written = textfile_dir / "tcpstack.prom"
    assert sorted(p.name for p in textfile_dir.iterdir()) == ["tcpstack.prom"]  # no temporary file left
    assert written.stat().st_mode & 0o777 == 0o644
    text = written.read_text()
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    exporter = subprocess.Popen(web.argv([
        exporter_bin, "--collector.disable-defaults", "--collector.textfile",
        "--collector.textfile.directory=%s" % textfile_dir, "--web.listen-address=127.0.0.1:%d" % EXPORTER_PORT]),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        scraped = web.exec([sys.executable, "-c", FETCH, "http://127.0.0.1:%d/metrics" % EXPORTER_PORT], timeout=60)
    finally:
        stop_process(exporter)
    assert scraped.returncode == 0, scraped.stderr
    scrape = scraped.stdout
    assert samples(scrape, "node_textfile_scrape_error") == [({}, 0.0)]

    # the verdict and the utilisation, as Prometheus would store them
    assert samples(scrape, "tcpstack_verdict") == [({}, 2.0)]
    ratios = samples(scrape, "tcpstack_destination_utilisation_ratio")
    assert 1 <= len(ratios) <= 3
    busiest = max(ratios, key=lambda item: item[1])
    assert busiest[0]["destination"] == "%s:%d" % (BACKEND_IP, BACKEND_PORT) and busiest[1] >= 0.9, ratios
    assert samples(scrape, "tcpstack_critical_utilisation_ratio") == [({}, 0.9)]
    assert samples(scrape, "tcpstack_ephemeral_ports_usable") == [({}, 1000.0)]
    families = {line.split()[2] for line in scrape.splitlines() if line.startswith("# TYPE tcpstack_")}
    ours = "\n".join(line for line in scrape.splitlines()
                     if line.startswith(("tcpstack_", "# HELP tcpstack_", "# TYPE tcpstack_"))) + "\n"
    assert exposed_names(ours) == families
    checked = promtool("check", "metrics", stdin=ours)
    assert checked.returncode == 0, checked.stdout + checked.stderr

    # every name the dashboard and the alert rules read is in the real scrape
    present = exposed_names(scrape)
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = queries(dashboard)
    rules = [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]
    expressions += [rule["expr"] for rule in rules]
    used = set()
    for expr in expressions:
        names = metric_names(expr)
        assert names, expr  # a query that reads no metric would make this test vacuous
        # the NAT series exist only on a host that source-NATs, sampled with --nat: test_nat_metrics_sampler.py
        # checks them in a real NAT host's textfile; this host does not NAT, and the sampler ran without --nat
        names = {name for name in names if not name.startswith(NAT_PREFIXES)}
        assert names <= present, (expr, sorted(names - present))
        used |= names
    assert len(used) >= 15 and all(name.startswith("tcpstack_") for name in used), sorted(used)
    assert not any(name.startswith(NAT_PREFIXES) for name in present), sorted(present)
    assert written.exists()


def test_the_sampler_names_the_processes_that_hold_the_ports_when_asked(tmp_path):
    with Sandbox.new(prefix="pmp") as box:
        box.start(program("hold", "127.0.0.1", 8080, 50, 120), ready="ready")
        entry = install_like_the_role(tmp_path / "code")
        textfile_dir = tmp_path / "textfile"
        textfile_dir.mkdir()
        base = [sys.executable, "-s", "-E", "-B", entry, "--directory", textfile_dir, "--top", 3, "--once"]
        assert box.exec(base, cwd="/").returncode == 0
        assert not samples((textfile_dir / "tcpstack.prom").read_text(), "tcpstack_process_ports_held")  # off
        done = box.exec(base + ["--processes", "--process-sample-seconds", 1], cwd="/", timeout=120)
        assert done.returncode == 0, done.stderr
        text = (textfile_dir / "tcpstack.prom").read_text()
    held = samples(text, "tcpstack_process_ports_held")
    assert len(held) == 1 and held[0][0]["process"].startswith("python") and held[0][1] == 50, held
    assert samples(text, "tcpstack_process_attribution_sample_seconds")[0][1] >= 1.0
    checked = promtool("check", "metrics", stdin=text)
    assert checked.returncode == 0, checked.stdout + checked.stderr


@pytest.mark.parametrize("check", [True, False])
def test_absent_on_a_host_that_never_had_it_succeeds_and_changes_nothing(box, check):
    textfile_dir = box.scratch / "textfile"
    textfile_dir.mkdir()
    (textfile_dir / "other.prom").write_text("other_metric 1\n")  # someone else's file stays
    before = box.file_hashes()
    rc, results = box.run_playbook(play(port_monitor_textfile_dir=str(textfile_dir), port_monitor_state="absent"),
                                   check=check)
    assert rc == 0, box.last_run.describe()
    assert not any(r.get("changed") for r in results if r["_action"] != "ansible.builtin.set_fact"), results
    assert box.file_hashes() == before
    assert not any(r.get("warnings") for r in results), [r.get("warnings") for r in results]


# ----------------------------------------------------------------- issue 22: a confined sampler
@pytest.mark.parametrize("what", ["a link above it", "owned by another user"])
def test_a_textfile_directory_behind_a_link_or_not_roots_fails_before_anything_changes(box, what):
    real = box.scratch / "real"
    (real / "textfile").mkdir(parents=True)
    if what == "a link above it":
        (box.scratch / "via").symlink_to(real)
        target = box.scratch / "via" / "textfile"
        expected = "the links %s lead to it" % (box.scratch / "via")
    else:
        target = real / "textfile"
        os.chown(target, 65534, 65534)
        expected = "it is owned by uid 65534, mode 0755"
    before = box.file_hashes()
    rc, results = box.run_playbook(play(port_monitor_textfile_dir=str(target)))
    assert rc != 0
    failed = [r for r in results if r["_status"] == "failed"]
    assert [r["_task"] for r in failed] == [
        "Refuse a textfile directory reached through a symbolic link, or one root cannot write without privileges"], \
        box.last_run.describe()
    assert failed[0]["msg"].startswith("port_monitor_textfile_dir: '%s' is not valid: a directory reached" % target)
    assert expected in failed[0]["msg"] and "Nothing was changed" in failed[0]["msg"], failed[0]["msg"]
    assert not any(r.get("changed") for r in results)
    assert box.file_hashes() == before


def roots_files(box):
    """A root-only directory holding a textfile and a temporary file of root's: what a swapped link points to."""
    secret = box.scratch / "root-only"
    secret.mkdir(mode=0o700)
    for name in ("tcpstack.prom", ".tcpstack.prom.root.tmp"):
        (secret / name).write_text("root's own\n")
    return secret


def absent_run(box, textfile_dir, with_code, check=False):
    """port_monitor_state=absent; ``with_code``: the sampler's code installed (in scratch, as the role lays it out),
    so its --remove does the removal; without, the role's own lstat-checked fallback does."""
    extra = None
    if with_code:
        if not (box.scratch / "code").exists():
            install_like_the_role(box.scratch / "code")
        extra = {"_port_monitor_code_dir": str(box.scratch / "code")}
    rc, results = box.run_playbook(play(port_monitor_textfile_dir=str(textfile_dir), port_monitor_state="absent"),
                                   extra_vars=extra, check=check)
    assert rc == 0, box.last_run.describe()
    used = {r["_task"] for r in results if r["_status"] != "skipped"}
    assert ("Remove the textfile and any temporary file of an interrupted write, never through a link" in used) == (
        with_code and not check), used
    return results


@pytest.mark.parametrize("with_code", [True, False])
@pytest.mark.parametrize("where", ["the directory", "a directory above it"])
def test_absent_never_deletes_through_a_link(box, with_code, where):
    secret = roots_files(box)
    if where == "the directory":
        textfile_dir = box.scratch / "prometheus" / "node-exporter"
        textfile_dir.parent.mkdir()
        textfile_dir.symlink_to(secret)
    else:
        (secret / "node-exporter").mkdir()
        (secret / "node-exporter" / "tcpstack.prom").write_text("root's own\n")
        (box.scratch / "prometheus").symlink_to(secret)
        textfile_dir = box.scratch / "prometheus" / "node-exporter"
    before = {str(p.relative_to(secret)): p.read_bytes() for p in secret.rglob("*") if p.is_file()}
    absent_run(box, textfile_dir, with_code)
    assert {str(p.relative_to(secret)): p.read_bytes() for p in secret.rglob("*") if p.is_file()} == before
    assert textfile_dir.exists()  # the link (or the directory behind it) is left as it was
    assert not (box.scratch / "code").exists()


@pytest.mark.parametrize("with_code", [True, False])
def test_absent_removes_the_textfile_and_temporaries_from_the_real_directory(box, with_code):
    textfile_dir = box.scratch / "textfile"
    textfile_dir.mkdir()
    for name in ("tcpstack.prom", ".tcpstack.prom.killed.tmp", "other.prom"):
        (textfile_dir / name).write_text("x 1\n")
    results = absent_run(box, textfile_dir, with_code, check=True)
    assert sorted(p.name for p in textfile_dir.iterdir()) == [  # check mode changes nothing
        ".tcpstack.prom.killed.tmp", "other.prom", "tcpstack.prom"]
    assert any(r.get("changed") for r in results if r["_task"] == "Remove them"), results
    absent_run(box, textfile_dir, with_code)
    assert [p.name for p in textfile_dir.iterdir()] == ["other.prom"]
    assert not (box.scratch / "code").exists()


def rendered_unit(box, textfile_dir, processes, **more):
    """The unit the role would install (check mode, --diff: nothing is written), as text; ``more``: role variables."""
    variables = dict({"port_monitor_textfile_dir": str(textfile_dir)}, **more)
    if processes:
        variables.update(port_monitor_processes=True, port_monitor_process_sample_seconds=1)
    rc, results = box.run_playbook(play(**variables), check=True, diff=True)
    assert rc == 0, box.last_run.describe()
    unit = [r for r in results if r["_task"] == "Install the systemd unit"][0]
    return unit["diff"][0]["after"] if isinstance(unit["diff"], list) else unit["diff"]["after"]


def unit_setting(text, key):
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


SECURITY_WORDS = ("PERFECT", "SAFE", "OK")  # systemd's words below 5.0; then MEDIUM, EXPOSED, UNSAFE


def security_rating(text, tmp_path):
    """What ``systemd-analyze security --offline`` rates the unit ``text``: its exposure level, checked to be one
    of SECURITY_WORDS (below 5.0)."""
    tool = shutil.which("systemd-analyze")
    need(tool is not None, "needs systemd-analyze (Debian package systemd)")
    unit_file = tmp_path / "tcpstack-port-monitor.service"
    unit_file.write_text(text)
    done = subprocess.run([tool, "security", "--offline=yes", "--no-pager", str(unit_file)], capture_output=True,
                          text=True, timeout=120, check=False)
    found = re.search(r"Overall exposure level for tcpstack-port-monitor\.service: (\d+\.\d) (\w+)", done.stdout)
    assert found, done.stdout + done.stderr
    level, word = float(found.group(1)), found.group(2)
    assert word in SECURITY_WORDS and level < 5.0, (level, word)
    return level


@pytest.mark.parametrize("processes", [False, True])
def test_systemd_analyze_rates_the_installed_unit_ok(box, tmp_path, processes):
    textfile_dir = box.scratch / "textfile"
    textfile_dir.mkdir()
    text = rendered_unit(box, textfile_dir, processes)
    assert unit_setting(text, "ReadWritePaths") == [str(textfile_dir)]  # the one writable path
    assert unit_setting(text, "ProtectSystem") == ["strict"]
    assert unit_setting(text, "CapabilityBoundingSet") == (["CAP_DAC_READ_SEARCH CAP_SYS_PTRACE"] if processes
                                                           else [""])
    level = security_rating(text, tmp_path)
    assert level <= (1.8 if processes else 1.4), level  # what it rates today: a setting lost shows here
    assert untouched_machine()


def test_the_sampler_works_with_only_the_units_capabilities(box, tmp_path):
    """The capabilities of the rendered unit (CapabilityBoundingSet) are enough to name the processes holding ports,
    root's and another user's, and each one is needed: setpriv runs the sampler with exactly that bounding set."""
    need(shutil.which("setpriv") is not None, "needs setpriv (Debian package util-linux)")
    (box.scratch / "textfile").mkdir()
    text = rendered_unit(box, box.scratch / "textfile", processes=True)
    caps = unit_setting(text, "CapabilityBoundingSet")[0].split()
    box.start(program("hold", "127.0.0.1", 8080, 50, 120), ready="ready")  # root's
    nobody = subprocess.Popen(box.argv(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
                                       + program("hold", "127.0.0.1", 8081, 30, 120, python="/usr/bin/python3")),
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert nobody.stdout.readline().split()[:1] == ["ready"]  # churn.py hold: "ready N SECONDS"
        entry = install_like_the_role(tmp_path / "code")
        textfile_dir = tmp_path / "textfile"
        textfile_dir.mkdir()

        def held_with(capabilities):
            bounding = ",".join(["-all"] + ["+" + cap[len("CAP_"):].lower() for cap in capabilities])
            done = box.exec(["setpriv", "--bounding-set", bounding, "--inh-caps", "-all", "--no-new-privs",
                             sys.executable, "-s", "-E", "-B", entry, "--directory", textfile_dir, "--top", 3,
                             "--once", "--processes"], cwd="/", timeout=120)
            assert done.returncode == 0, done.stderr
            text = (textfile_dir / "tcpstack.prom").read_text()
            return sorted(value for _labels, value in samples(text, "tcpstack_process_ports_held"))

        assert caps == ["CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"]
        assert held_with(caps) == [30, 50]
        assert held_with(["CAP_SYS_PTRACE"]) == [50]  # another user's fd directory (0500) needs CAP_DAC_READ_SEARCH
        assert held_with(["CAP_DAC_READ_SEARCH"]) == []  # and every one needs CAP_SYS_PTRACE (ptrace access check)
        assert held_with([]) == []
    finally:
        stop_process(nobody)
