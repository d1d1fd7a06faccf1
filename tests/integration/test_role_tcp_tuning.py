"""The tcp_tuning role and the tune/rollback playbooks, with real ansible-playbook on the real kernel.

Each test runs in a throwaway network namespace (tests/support/netns.py) whose
/etc/sysctl.d is its own; assertions read /proc/sys and files inside it.
"""

from __future__ import annotations

import json

import pytest

from tests.support.fleet import run_fleet as fleet_run
from tests.support.netns import Sandbox
from tests.support.windows_sim import PASSWORD, USER, Simulator

pytestmark = pytest.mark.usefixtures("root_netns")

OUR_FILE = "60-tcpstack-tuning.conf"
ROLE = "tcpstack.tuning.tcp_tuning"


def play(tasks=None, roles=None, **play_keys):
    body = {"name": "site", "hosts": "all", "gather_facts": False}
    body.update(play_keys)
    if roles is not None:
        body["roles"] = roles
    if tasks is not None:
        body["tasks"] = tasks
    return json.dumps([body], indent=1)


@pytest.fixture
def box():
    with Sandbox.new() as sandbox:
        yield sandbox


def by_action(results, action):
    return [r for r in results if r["_action"] == action and r["_status"] != "skipped"]


def test_converge_then_idempotent_with_defaults(box):
    rc, results = box.run_playbook(play(roles=[ROLE]), diff=True)
    assert rc == 0, box.last_run.describe()
    calls = by_action(results, "tcpstack.tuning.linux_tcp")
    assert len(calls) == 1 and calls[0]["changed"]  # one module call per host
    assert box.sysctl("net.ipv4.ip_local_port_range").split() == ["32768", "65535"]
    assert box.sysctl("net.ipv4.tcp_tw_reuse") == "1"
    assert box.sysctl("net.ipv4.tcp_fin_timeout") == "30"
    assert "net.ipv4.tcp_tw_reuse = 1" in box.read_file(OUR_FILE)
    facts = [r for r in results if r["_task"] == "Record the result of this host"][0]
    assert facts["ansible_facts"]["tcp_tuning_reboot_required"] is False
    assert facts["ansible_facts"]["tcp_tuning_result"]["after"]["net.ipv4.tcp_tw_reuse"] == "1"

    rc, results = box.run_playbook(play(roles=[ROLE]))
    assert rc == 0, box.last_run.describe()
    assert not any(r.get("changed") for r in results if r["_action"] != "ansible.builtin.set_fact")


def test_check_mode_changes_nothing(box):
    before = box.snapshot()
    rc, results = box.run_playbook(play(roles=[ROLE]), check=True, diff=True)
    assert rc == 0, box.last_run.describe()
    assert by_action(results, "tcpstack.tuning.linux_tcp")[0]["changed"]
    assert box.snapshot() == before


BEFORE_THE_HOST = ("Validating arguments against arg spec", "Check the role variables on the controller")


@pytest.mark.parametrize("variables, fragment", [
    ({"tcp_tuning_tw_reuse": "maybe"}, "tcp_tuning_tw_reuse"),
    ({"tcp_tuning_time_wait": "thirty"}, "tcp_tuning_time_wait"),
    ({"tcp_tuning_fin_timeout": "thirty"}, "tcp_tuning_fin_timeout"),
    ({"tcp_tuning_fin_timeout": 0}, "tcp_tuning_fin_timeout: 0 is not valid: an integer from 1 to 86400"),
    ({"tcp_tuning_state": "gone"}, "tcp_tuning_state"),
    ({"tcp_tuning_platform": "solaris"}, "tcp_tuning_platform"),
    ({"tcp_tuning_reboot": "always"}, "tcp_tuning_reboot"),
    ({"tcp_tuning_reserved_ports": {"port": 8080}}, "tcp_tuning_reserved_ports"),
    ({"tcp_tuning_reserved_ports": ["80x"]}, "tcp_tuning_reserved_ports: ['80x'] is not valid"),
    ({"tcp_tuning_port_range": "lots"}, "tcp_tuning_port_range: 'lots' is not valid"),
    ({"tcp_tuning_port_range": [70000, 80000]}, "tcp_tuning_port_range: [70000, 80000] is not valid"),
    ({"tcp_tuning_linux": {"somaxcon": 8192}}, "tcp_tuning_linux.somaxcon: 8192 is not valid: not an option"),
    ({"tcp_tuning_linux": {"tw_reuse": 5}}, "tcp_tuning_linux.tw_reuse: 5 is not valid: one of 0, 1, 2"),
    ({"tcp_tuning_linux": {"persist_file": "/etc/passwd"}}, "tcp_tuning_linux.persist_file: '/etc/passwd' is not valid"),
    ({"tcp_tuning_linux": {"tw_recycle": 1}}, "tcp_tuning_linux.tw_recycle: 1 is not valid"),
    ({"tcp_tuning_linux": 5}, "tcp_tuning_linux"),
    ({"tcp_tuning_reboot_timeout": "soon"}, "tcp_tuning_reboot_timeout"),
])
def test_bad_role_variables_fail_before_the_host_is_touched(box, variables, fragment):
    before = box.snapshot()
    rc, results = box.run_playbook(play(roles=[ROLE]), extra_vars=variables)
    assert rc != 0
    failed = [r for r in results if r["_status"] == "failed"]
    assert failed and failed[0]["_task"].startswith(BEFORE_THE_HOST), box.last_run.describe()
    assert fragment in failed[0]["msg"] or fragment in json.dumps(failed[0].get("argument_errors", "")), failed[0]["msg"]
    assert not by_action(results, "tcpstack.tuning.linux_tcp")
    assert box.snapshot() == before


def test_deprecated_time_wait_still_works_with_a_warning(box):
    rc, results = box.run_playbook(play(roles=[ROLE]), extra_vars={"tcp_tuning_time_wait": 45})
    assert rc == 0, box.last_run.describe()
    assert box.sysctl("net.ipv4.tcp_fin_timeout") == "45"
    checked = [r for r in results if r["_action"] == "tcpstack.tuning.check_role_vars"][0]
    assert any("tcp_tuning_time_wait is deprecated" in d and "tcp_tuning_fin_timeout" in d
               for d in checked["deprecations"]), checked
    assert "DEPRECATION WARNING" in box.last_run.stdout + box.last_run.stderr


def test_a_misspelt_role_variable_is_warned_about(box):
    rc, results = box.run_playbook(play(roles=[ROLE]), extra_vars={"tcp_tuning_port_rnage": "1024 65535"})
    assert rc == 0, box.last_run.describe()
    checked = [r for r in results if r["_action"] == "tcpstack.tuning.check_role_vars"][0]
    assert any("tcp_tuning_port_rnage: not a variable of the role" in w for w in checked["warnings"]), checked


def test_site_playbook_include_role_with_tags_and_module_options(box):
    site = play(tasks=[
        {"name": "Something else in the site", "ansible.builtin.debug": {"msg": "unrelated"}, "tags": ["other"]},
        {"name": "Cure ephemeral-port exhaustion", "ansible.builtin.include_role": {"name": ROLE, "apply": {"tags": ["tcp"]}},
         "vars": {"tcp_tuning_port_range": "16384 65535", "tcp_tuning_linux": {"somaxconn": 8192}}, "tags": ["tcp"]},
    ])
    rc, results = box.run_playbook(site, args=["--tags", "tcp"])
    assert rc == 0, box.last_run.describe()
    assert not [r for r in results if r["_task"] == "Something else in the site"]
    assert box.sysctl("net.core.somaxconn") == "8192"
    assert box.sysctl("net.ipv4.ip_local_port_range").split() == ["16384", "65535"]


def test_import_role_and_the_collection_playbooks_tune_then_rollback(box):
    rc, _results = box.run_playbook(play(tasks=[{"name": "Import", "ansible.builtin.import_role": {"name": ROLE}}]),
                                    extra_vars={"tcp_tuning_fin_timeout": 45})
    assert rc == 0, box.last_run.describe()
    assert box.sysctl("net.ipv4.tcp_fin_timeout") == "45"

    rc, results = box.run_playbook("tcpstack.tuning.tune", extra_vars={"tcp_tuning_serial": 1})
    assert rc == 0, box.last_run.describe()
    assert box.sysctl("net.ipv4.tcp_fin_timeout") == "30"

    rc, results = box.run_playbook("tcpstack.tuning.rollback")
    assert rc == 0, box.last_run.describe()
    assert by_action(results, "tcpstack.tuning.linux_tcp")[0]["changed"]
    assert box.sysctl("net.ipv4.tcp_fin_timeout") == "60"
    assert box.sysctl("net.ipv4.ip_local_port_range").split() == ["32768", "60999"]
    assert box.sysctl("net.ipv4.tcp_tw_reuse") == "2"
    assert box.read_file(OUR_FILE) is None


def test_tune_playbook_hosts_variable_limits_the_targets(box):
    rc, results = box.run_playbook("tcpstack.tuning.tune", extra_vars={"tcp_tuning_hosts": "nosuchgroup"})
    assert rc == 0, box.last_run.describe()
    assert results == []
    assert box.read_file(OUR_FILE) is None


# ------------------------------------------------------------------ a mixed fleet: Linux in a namespace, simulated Windows


def run_fleet(box, sims, playbook, **kwargs):
    """Host "lin" is the sandbox, the others simulated Windows hosts (tests/support/fleet.py)."""
    return fleet_run({"lin": box}, sims, playbook, **kwargs)


def calls(results, host=None):
    """Module calls that ran (not skipped), per host."""
    modules = ("tcpstack.tuning.linux_tcp", "tcpstack.tuning.win_tcp")
    return [r for r in results if r["_action"] in modules and r["_status"] != "skipped" and (host is None or r["_host"] == host)]


@pytest.fixture
def fleet():
    with Sandbox.new() as box, \
            Simulator(profile="server2022", username=USER, password=PASSWORD) as win2022, \
            Simulator(profile="server2016", language="de-DE", username=USER, password=PASSWORD) as win2016:
        yield box, {"win2022": win2022, "win2016": win2016}


def test_mixed_fleet_converge_idempotent_check_and_rollback(fleet):
    box, sims = fleet
    rc, results, output = run_fleet(box, sims, play(roles=[ROLE]), check=True, diff=True)
    assert rc == 0, output
    assert all(r["changed"] for r in calls(results)) and len(calls(results)) == 3
    assert box.sysctl("net.ipv4.tcp_fin_timeout") == "60" and sims["win2022"].host.registry_value("TcpTimedWaitDelay") is None

    rc, results, output = run_fleet(box, sims, "tcpstack.tuning.tune", diff=True)
    assert rc == 0, output
    for host, module in (("lin", "tcpstack.tuning.linux_tcp"), ("win2022", "tcpstack.tuning.win_tcp"),
                         ("win2016", "tcpstack.tuning.win_tcp")):
        done = calls(results, host)
        assert [r["_action"] for r in done] == [module], host  # one module call per host, the right one
        assert done[0]["changed"]
    assert box.sysctl("net.ipv4.tcp_fin_timeout") == "30"
    for sim in sims.values():
        assert sim.host.registry_value("TcpTimedWaitDelay") == 30
        assert sim.host.dynamic_range("ipv4", "tcp") == (32768, 32768)
        assert sim.host.dynamic_range("ipv6", "tcp") == (32768, 32768)
    facts = {r["_host"]: r["ansible_facts"] for r in results if r["_task"] == "Record the result of this host"}
    assert facts["win2022"]["tcp_tuning_reboot_required"] is True
    assert facts["lin"]["tcp_tuning_reboot_required"] is False

    rc, results, output = run_fleet(box, sims, "tcpstack.tuning.tune")
    assert rc == 0, output
    assert not any(r["changed"] for r in calls(results))
    assert sims["win2022"].round_trips == 2 + 1 + 1  # check mode read, tune read+apply, converged read

    rc, results, output = run_fleet(box, sims, "tcpstack.tuning.rollback")
    assert rc == 0, output
    assert box.sysctl("net.ipv4.tcp_fin_timeout") == "60" and box.read_file(OUR_FILE) is None
    for sim in sims.values():
        assert sim.host.registry_value("TcpTimedWaitDelay") is None
        assert sim.host.dynamic_range("ipv4", "tcp") == (49152, 16384)


def test_windows_only_options_and_a_bad_windows_value(fleet):
    box, sims = fleet
    rc, results, output = run_fleet(box, sims, play(roles=[ROLE]),
                                    extra_vars={"tcp_tuning_windows": {"max_user_port": 65534}})
    assert rc == 0, output
    assert sims["win2022"].host.registry_value("MaxUserPort") == 65534
    assert any("legacy" in w for r in calls(results, "win2022") for w in r.get("warnings", []))
    before = {name: sim.round_trips for name, sim in sims.items()}
    rc, results, output = run_fleet(box, sims, play(roles=[ROLE]), extra_vars={"tcp_tuning_time_wait_delay": 500})
    assert rc != 0
    failed = [r for r in results if r["_status"] == "failed"]
    assert sorted(r["_host"] for r in failed) == ["win2016", "win2022"], output  # Linux does not use it
    assert all(r["_action"] == "tcpstack.tuning.check_role_vars" for r in failed)
    assert all(r["msg"].startswith("tcp_tuning_time_wait_delay: 500 is not valid: an integer number of seconds")
               for r in failed), failed
    assert {name: sim.round_trips for name, sim in sims.items()} == before  # validation: nothing sent
