"""The collection under ansible-runner, the engine AWX and AAP run their jobs with.

Two jobs, each an ``ansible-runner run`` (the real CLI, process isolation off, no container) on a private
data directory laid out as AWX lays one out for a job: a "preview" (tune.yml with ``--check --diff``) that
must change nothing, then site.yml for real.  The layout:

    project/site.yml                       imports tcpstack.tuning.tune and tcpstack.tuning.audit by FQCN
    project/tune.yml, project/audit.yml    import one each
    project/collections/requirements.yml   the collection, as a file artifact (type: file)
    project/collections/ansible_collections/tcpstack/tuning
                                           installed from that artifact with ansible-galaxy --offline
    inventory/hosts                        an executable script printing the inventory as JSON, as AWX writes it
    env/extravars                          port_audit_report_dir: inside the private data directory
    env/envvars                            ANSIBLE_COLLECTIONS_PATH: project/collections; the Windows login
    env/settings                           job_timeout

The fleet: two Linux hosts in network namespaces (tests/support/netns.py, reached with ``ansible_connection:
local`` and an interpreter that runs inside the namespace) and one simulated Windows Server 2022 over WinRM
(tests/support/windows_sim), their host variables from tests.support.fleet.fleet_hosts().  The jobs must succeed;
their events must carry every host's module result; the fleet report must name every host; the namespaces and the
simulator must really be tuned.  The checkout's own copy of the collection is never on the job's collection path:
the events show which copy ran.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.support.ci import need
from tests.support.collection import ROOT
from tests.support.fleet import fleet_hosts
from tests.support.netns import Sandbox, stop_process
from tests.support.windows_sim import PASSWORD, USER, Simulator

pytestmark = pytest.mark.usefixtures("root_netns")

BIN = Path(sys.executable).parent
JOB_TIMEOUT = 180  # ansible-runner's own job_timeout; the process is killed a little later still
LINUX, WINDOWS = ("lin1", "lin2"), ("win2022",)
# the project's playbooks, as docs/awx.md shows them: AWX offers only a project's own files as playbooks
PLAYBOOKS = {
    "tune.yml": "---\n- name: Tune\n  ansible.builtin.import_playbook: tcpstack.tuning.tune\n",
    "audit.yml": "---\n- name: Audit\n  ansible.builtin.import_playbook: tcpstack.tuning.audit\n",
    "site.yml": "---\n- name: Tune the fleet\n  ansible.builtin.import_playbook: tcpstack.tuning.tune\n\n"
                "- name: Audit the fleet and write the report\n"
                "  ansible.builtin.import_playbook: tcpstack.tuning.audit\n",
}


def tool(name):
    path = BIN / name
    need(path.exists(), "%s is missing from %s (requirements-dev.txt pins it)" % (name, BIN))
    return str(path)


def galaxy(*args, env):
    done = subprocess.run([tool("ansible-galaxy"), "collection", *args], capture_output=True, text=True, env=env,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.fixture
def fleet(request):
    """Two Linux namespaces and one simulated Windows host; all removed afterwards."""
    boxes = {name: Sandbox.new(prefix="arn") for name in LINUX}
    for box in boxes.values():
        request.addfinalizer(box.destroy)
        box.create()
    with Simulator(profile="server2022", username=USER, password=PASSWORD) as win2022:
        yield boxes, {"win2022": win2022}


def build(dist, env):
    """The collection artifact, built from the checkout as a release would be."""
    galaxy("build", "--output-path", str(dist), str(ROOT), env=env)
    (tarball,) = dist.glob("tcpstack-tuning-*.tar.gz")
    return tarball


def private_data_dir(pdd, tarball, linux, sims, env):
    """Lay out the private data directory of one AWX job; returns the project's collections directory."""
    for sub in ("project/collections", "inventory", "env", "bin"):
        (pdd / sub).mkdir(parents=True)
    # the collection, as a project gets it: the artifact listed in collections/requirements.yml, installed offline
    collections = pdd / "project" / "collections"
    requirements = collections / "requirements.yml"
    requirements.write_text(yaml.safe_dump({"collections": [{"name": str(tarball), "type": "file"}]}))
    galaxy("install", "--offline", "-r", str(requirements), "-p", str(collections), env=env)
    for name, text in PLAYBOOKS.items():
        (pdd / "project" / name).write_text(text)

    # the Linux hosts run their modules inside the namespace through an interpreter in pdd/bin; the Windows login
    # is not in the host variables: it comes from the environment, as an AWX custom credential type injects it
    # (docs/awx.md)
    hostvars = fleet_hosts(linux, sims, pdd / "bin", login=False)
    windows = {"ansible_user": "{{ lookup('ansible.builtin.env', 'WINRM_USER') }}",
               "ansible_password": "{{ lookup('ansible.builtin.env', 'WINRM_PASSWORD') }}"}
    inventory = {"linux": {"hosts": sorted(linux)}, "windows": {"hosts": sorted(sims), "vars": windows},
                 "_meta": {"hostvars": hostvars}}
    script = pdd / "inventory" / "hosts"  # what AWX writes: a script that prints the inventory
    script.write_text("#!/usr/bin/env python3\nprint(%r)\n" % json.dumps(inventory))
    script.chmod(0o700)

    env_dir = pdd / "env"
    (env_dir / "extravars").write_text(yaml.safe_dump({"port_audit_report_dir": str(pdd / "report"),
                                                       "port_audit_title": "Audit under ansible-runner"}))
    envvars = {"ANSIBLE_COLLECTIONS_PATH": str(collections), "ANSIBLE_NOCOLOR": "1",
               "WINRM_USER": USER, "WINRM_PASSWORD": PASSWORD}
    (env_dir / "envvars").write_text(yaml.safe_dump(envvars))
    (env_dir / "settings").write_text(yaml.safe_dump({"process_isolation": False, "job_timeout": JOB_TIMEOUT}))
    return collections


def run_job(pdd, env, ident, playbook, cmdline=None):
    """``ansible-runner run`` on ``pdd``; checks that the job succeeded and returns its artifacts directory.

    One private data directory per job, as AWX does: ansible-runner keeps ``--cmdline`` in env/cmdline.
    """
    cmd = [tool("ansible-runner"), "run", str(pdd), "-p", playbook, "--ident", ident]
    cmd += ["--cmdline", cmdline] if cmdline else []  # what a job template's Check / Show Changes add
    child = subprocess.Popen(cmd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             start_new_session=True)
    try:
        output = child.communicate(timeout=JOB_TIMEOUT + 30)[0]
    finally:
        stop_process(child)
    artifacts = pdd / "artifacts" / ident
    status = (artifacts / "status").read_text().strip() if (artifacts / "status").exists() else None
    assert (child.returncode, status) == (0, "successful"), output
    assert (artifacts / "rc").read_text().strip() == "0"
    return artifacts


def job_events(artifacts, kind):
    """The event_data of every ``kind`` event of the job, in order."""
    events = [json.loads(path.read_text()) for path in (artifacts / "job_events").glob("*.json")]
    events.sort(key=lambda event: event["counter"])
    return [event["event_data"] for event in events if event["event"] == kind]


def by_host(events, *actions):
    """{host: event_data} of the events of these tcpstack.tuning actions."""
    return {data["host"]: data for data in events if data["task_action"] in ["tcpstack.tuning." + a for a in actions]}


def test_site_playbook_as_an_awx_job(fleet, tmp_path):
    linux, sims = fleet
    # the job's environment is the EE's, not this test's: ansible tools from the venv, no ANSIBLE_* from outside
    env = {key: value for key, value in os.environ.items() if not key.startswith("ANSIBLE_")}
    env["PATH"] = "%s:%s" % (BIN, env.get("PATH", "/usr/bin:/bin"))
    tarball = build(tmp_path / "dist", env)
    hosts = sorted(LINUX + WINDOWS)

    # the "preview" job template: tune.yml, Check and Show Changes; every host would change, none does
    before = {name: box.snapshot() for name, box in linux.items()}
    private_data_dir(tmp_path / "preview", tarball, linux, sims, env)
    artifacts = run_job(tmp_path / "preview", env, "1", "tune.yml", cmdline="--check --diff")
    previewed = by_host(job_events(artifacts, "runner_on_ok"), "linux_tcp", "win_tcp")
    assert sorted(previewed) == hosts and all(data["res"]["changed"] for data in previewed.values()), previewed
    diffs = by_host(job_events(artifacts, "runner_on_file_diff"), "linux_tcp", "win_tcp")
    assert sorted(diffs) == hosts and all(data["diff"] for data in diffs.values()), diffs
    assert {name: box.snapshot() for name, box in linux.items()} == before
    assert sims["win2022"].host.registry_value("TcpTimedWaitDelay") is None

    # the real job: site.yml, tune then audit
    pdd = tmp_path / "site"
    collections = private_data_dir(pdd, tarball, linux, sims, env)
    artifacts = run_job(pdd, env, "2", "site.yml")
    ok = job_events(artifacts, "runner_on_ok")
    # every task ran from the installed artifact, none from the checkout
    installed = "%s/" % (collections / "ansible_collections" / "tcpstack" / "tuning")
    paths = {data["task_path"] for data in ok if data.get("task_path")}
    assert paths and all(path.startswith(installed) for path in paths), paths

    # tune: one module call per host, the right one, changed, with the module's result
    tuned = by_host(ok, "linux_tcp", "win_tcp")
    assert sorted(tuned) == hosts
    for host, data in tuned.items():
        res = data["res"]
        assert res["changed"] is True and "before" in res and "after" in res, (host, res)
    for host in LINUX:
        assert tuned[host]["task_action"] == "tcpstack.tuning.linux_tcp"
        assert "boot_values" in tuned[host]["res"]
    assert tuned["win2022"]["task_action"] == "tcpstack.tuning.win_tcp" and tuned["win2022"]["res"]["reboot_required"]

    # audit: the info module of each host, then one report for the fleet
    audited = by_host(ok, "port_usage_info", "win_port_usage_info")
    assert sorted(audited) == hosts
    for host, data in audited.items():
        assert data["res"]["changed"] is False and data["res"]["verdict"] == "ok", (host, data["res"])
    assert audited["win2022"]["task_action"] == "tcpstack.tuning.win_port_usage_info"
    (reported,) = by_host(ok, "fleet_report").values()  # once for the fleet
    assert sorted(row["host"] for row in reported["res"]["report"]["hosts"]) == hosts

    # the report files, where env/extravars put them, name every host
    report_dir = pdd / "report"
    report = json.loads((report_dir / "port_audit.json").read_text())
    assert sorted(row["host"] for row in report["hosts"]) == hosts and report["verdict"] == "ok", report
    for name in ("port_audit.md", "port_audit.html"):
        text = (report_dir / name).read_text()
        assert all(host in text for host in hosts), name
    assert "Audit under ansible-runner" in (report_dir / "port_audit.html").read_text()

    # the hosts really changed: the namespaces' sysctls and sysctl.d, the simulator's registry and netsh store
    for box in linux.values():
        values = box.sysctls()
        assert values["net.ipv4.tcp_fin_timeout"] == "30"
        assert values["net.ipv4.ip_local_port_range"].split() == ["32768", "65535"]
        assert values["net.ipv4.tcp_tw_reuse"] == "1"
        assert "net.ipv4.tcp_fin_timeout = 30" in (box.read_file("60-tcpstack-tuning.conf") or "")
    host = sims["win2022"].host
    assert host.registry_value("TcpTimedWaitDelay") == 30
    assert host.dynamic_range("ipv4", "tcp") == (32768, 32768)

    # what AWX shows as the job output
    stdout = (artifacts / "stdout").read_text()
    assert "PLAY RECAP" in stdout and all(host in stdout for host in hosts)
