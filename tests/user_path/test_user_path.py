"""The user's path: the Galaxy tarball, installed next to ansible-core alone, run by FQCN.

A Linux-only shop builds nothing and installs nothing else: ``ansible-galaxy collection install`` of our
tarball into an empty collections path, in a virtualenv holding only ansible-core and pywinrm
(requirements-user.txt, made by ``make user-path`` as .venv-user). Every command here runs from that virtualenv
in a temporary directory, with an environment built from nothing: no ANSIBLE_* variable, no PYTHONPATH, a HOME
of its own, PATH without the development virtualenv. So nothing can reach the checkout or the ``ansible``
package; the first test proves it.

The fleet: two Linux hosts in network namespaces (tests/support/netns.py) and one simulated Windows Server 2022
over WinRM (tests/support/windows_sim, a simulator: there is no Windows here), in one inventory, as
tests/support/fleet.py makes it.
"""

from __future__ import annotations

import json
import os
import subprocess
import tarfile
from pathlib import Path

import pytest

from tests.support.ci import need, need_root_netns
from tests.support.collection import ROOT
from tests.support.fleet import run_fleet
from tests.support.netns import Sandbox
from tests.support.windows_sim import PASSWORD, USER, Simulator

USER_VENV = Path(os.environ.get("TCPSTACK_USER_VENV", ROOT / ".venv-user"))
ALLOWED = {  # requirements-user.txt: ansible-core, pywinrm and what they need, nothing more
    "ansible-core", "certifi", "cffi", "charset-normalizer", "cryptography", "idna", "jinja2", "markupsafe",
    "packaging", "pycparser", "pyspnego", "pywinrm", "pyyaml", "requests", "requests-ntlm", "resolvelib", "urllib3",
    "xmltodict", "pip", "setuptools", "wheel",
}
NOT_SHIPPED = ("bench/", "demo/", "tools/", ".venv", ".build/", "Makefile", "requirements-dev.txt", ".ci/")
LINUX, WINDOWS = ("lin1", "lin2"), ("win2022",)
TUNED = {"net.ipv4.tcp_fin_timeout": "30", "net.ipv4.ip_local_port_range": "32768\t65535", "net.ipv4.tcp_tw_reuse": "1"}


def _user_env(home, collections):
    """The environment a new user's shell would have: only the user virtualenv's tools and the collection."""
    return {"PATH": "%s:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" % (USER_VENV / "bin"),
            "HOME": str(home), "LANG": "C.UTF-8", "ANSIBLE_COLLECTIONS_PATH": str(collections),
            "ANSIBLE_COLLECTIONS_SCAN_SYS_PATH": "false", "ANSIBLE_NOCOLOR": "1"}


class User:
    """The user's Ansible: its environment, and a way to run its commands where the user would."""

    def __init__(self, work):
        self.work = work
        self.collections = work / "collections"
        self.env = _user_env(work / "home", self.collections)
        (work / "home").mkdir()
        self.bin = USER_VENV / "bin"

    def run(self, *argv, timeout=300):
        done = subprocess.run([str(self.bin / argv[0])] + list(argv[1:]), cwd=self.work, env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=False)
        return done.returncode, done.stdout + done.stderr

    def ok(self, *argv):
        rc, output = self.run(*argv)
        assert rc == 0, "%s failed (%d):\n%s" % (" ".join(argv), rc, output[-4000:])
        return output


@pytest.fixture(scope="module")
def user(tmp_path_factory):
    """ansible-core alone, with the tarball built from this checkout installed by ansible-galaxy."""
    need((USER_VENV / "bin" / "ansible-playbook").exists(),
         "needs the user virtualenv %s (make user-path builds it from requirements-user.txt)" % USER_VENV)
    person = User(tmp_path_factory.mktemp("user"))
    dist = person.work / "dist"
    person.ok("ansible-galaxy", "collection", "build", str(ROOT), "--output-path", str(dist))
    tarballs = list(dist.glob("tcpstack-tuning-*.tar.gz"))
    assert len(tarballs) == 1, tarballs
    person.tarball = tarballs[0]
    person.ok("ansible-galaxy", "collection", "install", "--offline", "-p", str(person.collections), str(person.tarball))
    return person


@pytest.fixture(scope="module")
def fleet(user):  # pylint: disable=redefined-outer-name,unused-argument
    need_root_netns()
    boxes = {name: Sandbox.new(prefix="usr") for name in LINUX}
    try:
        for box in boxes.values():
            box.create()
        with Simulator(profile="server2022", username=USER, password=PASSWORD) as win2022:
            yield boxes, {"win2022": win2022}
    finally:
        for box in boxes.values():
            box.destroy()


def play(user, fleet, playbook, **kwargs):  # pylint: disable=redefined-outer-name
    boxes, sims = fleet
    return run_fleet(boxes, sims, playbook, install={"bin": user.bin, "env": user.env}, **kwargs)


def state(fleet):  # pylint: disable=redefined-outer-name
    boxes, sims = fleet
    linux = {name: (box.snapshot(), box.sysctls()) for name, box in boxes.items()}
    windows = {name: (sim.host.registry_value("TcpTimedWaitDelay"), sim.host.dynamic_range("ipv4", "tcp"),
                      sim.host.dynamic_range("ipv6", "tcp")) for name, sim in sims.items()}
    return linux, windows


def test_the_user_has_ansible_core_alone_and_sees_only_the_installed_collection(user):
    rc, output = user.run("python", "-m", "pip", "list", "--format=json", "--disable-pip-version-check")
    assert rc == 0, output
    installed = {p["name"].lower().replace("_", "-") for p in json.loads(output[output.index("["):output.rindex("]") + 1])}
    assert "ansible" not in installed and installed <= ALLOWED, sorted(installed - ALLOWED)
    listed = user.ok("ansible-galaxy", "collection", "list", "--format=json")
    collections = {name for path in json.loads(listed).values() for name in path
                   if not name.startswith("ansible._")}  # ansible-core's own internal collection
    assert collections == {"tcpstack.tuning"}, listed
    where = user.ok("ansible-doc", "-t", "module", "tcpstack.tuning.linux_tcp", "--json")
    assert str(user.collections) in where and str(ROOT) + "/plugins" not in where


def test_the_tarball_carries_what_users_need_and_not_the_repository_tools(user):
    with tarfile.open(user.tarball) as archive:
        names = archive.getnames()
    for wanted in ("MANIFEST.json", "README.md", "meta/runtime.yml", "meta/execution-environment.yml",
                   "requirements.txt", "bindep.txt", "playbooks/tune.yml", "roles/tcp_tuning/tasks/main.yml",
                   "plugins/plugin_utils/role_vars.py", "docs/awx.md"):
        assert wanted in names, wanted
    shipped = [n for n in names if n.startswith(NOT_SHIPPED)]
    assert not shipped, shipped


def test_ansible_doc_for_every_plugin_and_role(user):
    installed = user.collections / "ansible_collections" / "tcpstack" / "tuning"
    modules = sorted(p.stem for p in (installed / "plugins" / "modules").glob("*.py"))
    actions = sorted(p.stem for p in (installed / "plugins" / "action").glob("*.py"))
    assert set(actions) <= set(modules)  # every action plugin is documented by a module file of its name
    listed = user.ok("ansible-doc", "-t", "module", "-l", "tcpstack.tuning")
    for name in modules:
        assert "tcpstack.tuning.%s " % name in listed, name
        doc = json.loads(user.ok("ansible-doc", "-t", "module", "tcpstack.tuning." + name, "--json"))
        entry = doc["tcpstack.tuning." + name]
        assert entry["doc"]["short_description"] and entry["examples"] and entry["return"] is not None, name
    for role in sorted(p.name for p in (installed / "roles").iterdir()):
        doc = user.ok("ansible-doc", "-t", "role", "tcpstack.tuning." + role)
        assert "ROLE: *tcpstack.tuning.%s*" % role in doc and str(user.collections) in doc, doc[:2000]
        assert "%s_platform" % role in doc and "AUTHOR" in doc, doc[:2000]


def test_the_three_playbooks_by_fqcn_on_a_mixed_fleet(user, fleet, tmp_path):  # pylint: disable=redefined-outer-name
    boxes, sims = fleet
    for name in ("tune", "audit", "rollback"):
        user.ok("ansible-playbook", "--syntax-check", "tcpstack.tuning." + name)

    before = state(fleet)
    rc, results, output = play(user, fleet, "tcpstack.tuning.tune", check=True, diff=True)
    assert rc == 0, output
    changed = {r["_host"] for r in results if r["_action"] in ("tcpstack.tuning.linux_tcp", "tcpstack.tuning.win_tcp")
               and r.get("changed")}
    assert changed == set(LINUX + WINDOWS), output
    assert "--- before" in output or "+++ after" in output
    assert state(fleet) == before  # --check changed nothing

    rc, results, output = play(user, fleet, "tcpstack.tuning.tune")
    assert rc == 0, output
    assert "[WARNING]" not in output and "[DEPRECATION WARNING]" not in output, output  # a clean run says nothing
    for box in boxes.values():
        assert {k: box.sysctl(k) for k in TUNED} == TUNED
    assert sims["win2022"].host.registry_value("TcpTimedWaitDelay") == 30
    assert sims["win2022"].host.dynamic_range("ipv4", "tcp") == (32768, 32768)
    rc, results, output = play(user, fleet, "tcpstack.tuning.tune")
    assert rc == 0 and not [r for r in results if r.get("changed") and r["_action"] != "ansible.builtin.set_fact"], output

    for check in (True, False):
        report = tmp_path / ("check" if check else "real")
        rc, results, output = play(user, fleet, "tcpstack.tuning.audit", check=check,
                                   extra_vars={"port_audit_report_dir": str(report)})
        assert rc == 0, output
        data = json.loads((report / "port_audit.json").read_text())
        assert sorted(h["host"] for h in data["hosts"]) == sorted(LINUX + WINDOWS)
        assert (report / "port_audit.html").exists() and (report / "port_audit.md").exists()

    tuned = state(fleet)
    rc, results, output = play(user, fleet, "tcpstack.tuning.rollback", check=True, diff=True)
    assert rc == 0, output
    assert state(fleet) == tuned
    rc, results, output = play(user, fleet, "tcpstack.tuning.rollback")
    assert rc == 0, output
    assert state(fleet) == before


def test_both_roles_in_a_site_playbook(user, fleet, tmp_path):  # pylint: disable=redefined-outer-name
    site = """
- name: Something else the site does
  hosts: all
  gather_facts: false
  tasks:
    - name: Unrelated
      ansible.builtin.debug:
        msg: unrelated
- name: Tune, then audit
  hosts: all
  gather_facts: false
  tasks:
    - name: Tune
      ansible.builtin.include_role:
        name: tcpstack.tuning.tcp_tuning
      vars:
        tcp_tuning_fin_timeout: 40
    - name: Audit
      ansible.builtin.import_role:
        name: tcpstack.tuning.port_audit
      vars:
        port_audit_report_dir: %s
- name: Undo
  hosts: all
  gather_facts: false
  roles:
    - role: tcpstack.tuning.tcp_tuning
      vars:
        tcp_tuning_state: absent
""" % (tmp_path / "report")
    before = state(fleet)
    rc, results, output = play(user, fleet, site)
    assert rc == 0, output
    tuned = [r for r in results if r["_action"] == "tcpstack.tuning.linux_tcp" and r["_status"] == "ok"]
    assert len(tuned) == 2 * len(LINUX) and all(r["after"]["net.ipv4.tcp_fin_timeout"] == "40" for r in tuned[:2])
    assert (tmp_path / "report" / "port_audit.json").exists()
    assert state(fleet) == before


def test_a_windows_reboot_without_ansible_windows_says_what_to_install(user, fleet):  # pylint: disable=redefined-outer-name
    sims = fleet[1]
    before, sent = state(fleet), sims["win2022"].round_trips
    rc, results, output = play(user, fleet, "tcpstack.tuning.tune", extra_vars={"tcp_tuning_reboot": "if_required"})
    assert rc != 0
    failed = [r for r in results if r["_status"] == "failed"]
    assert [r["_host"] for r in failed] == ["win2022"], output
    assert "ansible-galaxy collection install ansible.windows" in failed[0]["msg"], failed[0]["msg"]
    assert sims["win2022"].round_trips == sent  # failed before the host was contacted
    assert state(fleet)[1] == before[1]


def test_a_bad_role_variable_is_named_before_any_host_is_contacted(user, fleet):  # pylint: disable=redefined-outer-name
    sims = fleet[1]
    before, sent = state(fleet), sims["win2022"].round_trips
    rc, results, output = play(user, fleet, "tcpstack.tuning.tune", extra_vars={"tcp_tuning_port_range": "lots"})
    assert rc != 0
    failed = [r for r in results if r["_status"] == "failed"]
    assert sorted(r["_host"] for r in failed) == sorted(LINUX + WINDOWS), output
    assert all(r["msg"].startswith("tcp_tuning_port_range: 'lots' is not valid: ") for r in failed), failed
    assert sims["win2022"].round_trips == sent and state(fleet) == before


def test_the_monitor_playbook_finds_its_code_and_rules_in_the_installed_collection(user, fleet, tmp_path):  # pylint: disable=redefined-outer-name
    """port_monitor copies the collection's own module_utils and alert rules to the host: from where ansible-galaxy
    installed the collection, not from a checkout. Check mode, on the Linux hosts (Windows is out of its scope):
    every file is found and nothing is written."""
    textfiles, rules = tmp_path / "textfile", tmp_path / "rules"
    textfiles.mkdir()
    rules.mkdir()
    code_dir = Path("/usr/local/lib/tcpstack-port-monitor")
    had_code_dir = code_dir.exists()
    rc, results, output = play(user, fleet, "tcpstack.tuning.monitor", check=True, extra_vars={
        "port_monitor_hosts": ":".join(LINUX), "port_monitor_textfile_dir": str(textfiles),
        "port_monitor_rules_dir": str(rules), "ansible_become_method": "su"})
    assert rc == 0, output
    copies = [r for r in results if r["_task"] == "Copy the collection's analysis code"]
    assert sorted(r["_host"] for r in copies) == sorted(LINUX), output
    installed = str(user.collections / "ansible_collections" / "tcpstack" / "tuning" / "plugins" / "module_utils")
    for result in copies:
        items = [item["item"] for item in result["results"]]
        assert all(item.startswith(installed + "/") for item in items), items
        names = {os.path.basename(item) for item in items}
        assert {"port_monitor.py", "linux_port_usage.py", "port_usage.py", "prometheus.py", "socket_table.py",
                "linux_host.py"} <= names, names
        assert all(item["changed"] for item in result["results"])
    installed_rules = [r for r in results if r["_task"] == "Install the alert rules where Prometheus reads them"]
    assert len(installed_rules) == len(LINUX) and all(r["changed"] for r in installed_rules), installed_rules
    assert not list(textfiles.iterdir()) and not list(rules.iterdir())  # check mode wrote nothing
    assert code_dir.exists() == had_code_dir
