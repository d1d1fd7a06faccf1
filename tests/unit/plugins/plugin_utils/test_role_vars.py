"""The roles' variables checked on the controller: the module's own checks, under the variable's name."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import yaml

from ansible_collections.tcpstack.tuning.plugins.module_utils import port_monitor as sampler
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.role_vars import (
    DEPRECATED,
    ROLES,
    ROLES_DIR,
    RoleVarError,
    is_windows,
    port_audit,
    port_monitor,
    role_spec,
    tcp_tuning,
    unknown_names,
)

ROOT = Path(__file__).resolve().parents[4]
TCP, AUDIT, MONITOR = (role_spec(role, str(ROOT / "roles")) for role in ROLES)


def _role_defaults_tool():
    """tools/role_defaults.py, which writes each role's defaults/main.yml from its argument spec."""
    loaded = importlib.util.spec_from_file_location("role_defaults", ROOT / "tools" / "role_defaults.py")
    module = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ROLES)
def test_the_role_defaults_are_generated_from_the_argument_specs(name):
    role = ROOT / "roles" / name
    committed = (role / "defaults" / "main.yml").read_text()
    options = yaml.safe_load((role / "meta" / "argument_specs.yml").read_text())["argument_specs"]["main"]["options"]
    assert committed == _role_defaults_tool().defaults_text(options), \
        "roles/%s/defaults/main.yml is not generated from its spec: run .venv/bin/python tools/role_defaults.py" % name
    spec = role_spec(name, str(ROOT / "roles"))
    assert yaml.safe_load(committed) == spec.defaults
    assert set(options) - set(DEPRECATED) == set(spec.defaults) == set(spec.variables)
    assert {n: o["default"] for n, o in options.items() if "default" in o} == spec.defaults
    assert all(old in TCP.options and "default" not in TCP.options[old] for old in DEPRECATED)


def test_the_collection_finds_its_own_roles():
    assert Path(ROLES_DIR).resolve() == (ROOT / "roles").resolve()
    assert role_spec("port_audit") == AUDIT


def test_the_sampler_defaults_are_the_role_defaults():
    assert MONITOR.defaults["port_monitor_interval"] == sampler.DEFAULT_INTERVAL
    assert MONITOR.defaults["port_monitor_textfile_dir"] == sampler.DEFAULT_DIRECTORY


def test_the_defaults_are_copies():
    TCP.defaults["tcp_tuning_port_range"].append(1)
    assert TCP.defaults["tcp_tuning_port_range"] == [32768, 65535]


def test_linux_defaults_give_the_options_the_role_always_gave():
    options, deprecations = tcp_tuning(TCP, {}, windows=False)
    assert options == {"state": "present", "fin_timeout": 30, "port_range": [32768, 65535], "tw_reuse": 1,
                       "reserve_listening_ports": True}
    assert deprecations == []


def test_windows_defaults_and_per_os_overrides():
    options = tcp_tuning(TCP, {"tcp_tuning_windows": {"max_user_port": 65534, "port_range": "49152 65535"}},
                         windows=True)[0]
    assert options == {"state": "present", "time_wait_delay": 30, "port_range": "49152 65535", "max_user_port": 65534}


@pytest.mark.parametrize("values, message", [
    ({"tcp_tuning_port_range": "lots"}, "tcp_tuning_port_range: 'lots' is not valid: "),
    ({"tcp_tuning_fin_timeout": 0}, "tcp_tuning_fin_timeout: 0 is not valid: an integer from 1 to 86400"),
    ({"tcp_tuning_tw_reuse": "maybe"}, "tcp_tuning_tw_reuse: 'maybe' is not valid: a boolean"),
    ({"tcp_tuning_reserve_listening_ports": 2}, "tcp_tuning_reserve_listening_ports: 2 is not valid: a boolean"),
    ({"tcp_tuning_reserved_ports": "99999"}, "tcp_tuning_reserved_ports: '99999' is not valid"),
    ({"tcp_tuning_state": "gone"}, "tcp_tuning_state: 'gone' is not valid: present or absent"),
    ({"tcp_tuning_reboot": "always"}, "tcp_tuning_reboot: 'always' is not valid: never or if_required"),
    ({"tcp_tuning_reboot_timeout": 0}, "tcp_tuning_reboot_timeout: 0 is not valid: an integer number of seconds"),
    ({"tcp_tuning_linux": []}, "tcp_tuning_linux: [] is not valid: a dictionary"),
    ({"tcp_tuning_linux": {"state": "absent"}}, "tcp_tuning_linux.state: 'absent' is not valid: not an option"),
    ({"tcp_tuning_linux": {"somaxconn": -1}}, "tcp_tuning_linux.somaxconn: -1 is not valid"),
    ({"tcp_tuning_linux": {"persist": "perhaps"}}, "tcp_tuning_linux.persist: 'perhaps' is not valid: a boolean"),
    ({"tcp_tuning_linux": {"on_shadowed": "ignore"}}, "tcp_tuning_linux.on_shadowed: 'ignore' is not valid: one of"),
    ({"tcp_tuning_linux": {"persist_file": "/tmp/x.conf"}}, "tcp_tuning_linux.persist_file: '/tmp/x.conf' is not valid"),
    ({"tcp_tuning_linux": {"tw_recycle": 0}}, "tcp_tuning_linux.tw_recycle: 0 is not valid: "),
    ({"tcp_tuning_time_wait": "x"}, "tcp_tuning_time_wait: 'x' is not valid"),
])
def test_linux_errors_name_the_variable_the_value_and_what_is_valid(values, message):
    with pytest.raises(RoleVarError) as caught:
        tcp_tuning(TCP, values, windows=False)
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize("values, message", [
    ({"tcp_tuning_port_range": [1024, 1100]}, "tcp_tuning_port_range: [1024, 1100] is not valid: netsh refuses"),
    ({"tcp_tuning_time_wait_delay": 1}, "tcp_tuning_time_wait_delay: 1 is not valid: an integer number of seconds"),
    ({"tcp_tuning_time_wait": 500}, "tcp_tuning_time_wait: 500 is not valid"),
    ({"tcp_tuning_windows": {"protocols": ["icmp"]}}, "tcp_tuning_windows.protocols: ['icmp'] is not valid"),
    ({"tcp_tuning_windows": {"fin_timeout": 30}}, "tcp_tuning_windows.fin_timeout: 30 is not valid: not an option"),
])
def test_windows_errors_name_the_variable(values, message):
    with pytest.raises(RoleVarError) as caught:
        tcp_tuning(TCP, values, windows=True)
    assert str(caught.value).startswith(message), str(caught.value)


def test_linux_only_variables_do_not_bother_windows_hosts():
    options = tcp_tuning(TCP, {"tcp_tuning_fin_timeout": 0, "tcp_tuning_linux": {"persist_file": "bad"}},
                         windows=True)[0]
    assert "fin_timeout" not in options and "persist_file" not in options


def test_the_deprecated_name_still_sets_both_with_a_deprecation():
    linux, deprecations = tcp_tuning(TCP, {"tcp_tuning_time_wait": 45}, windows=False)
    windows = tcp_tuning(TCP, {"tcp_tuning_time_wait": 45}, windows=True)[0]
    assert linux["fin_timeout"] == 45 and windows["time_wait_delay"] == 45
    assert deprecations[0]["version"] == "0.3.0" and "tcp_tuning_fin_timeout" in deprecations[0]["msg"]


def test_reboot_needs_ansible_windows_only_on_windows():
    asked = []

    def missing():
        asked.append(1)
        return False

    tcp_tuning(TCP, {"tcp_tuning_reboot": "if_required"}, windows=False, have_reboot_module=missing)
    assert not asked  # a Linux host never looks for ansible.windows
    with pytest.raises(RoleVarError) as caught:
        tcp_tuning(TCP, {"tcp_tuning_reboot": "if_required"}, windows=True, have_reboot_module=missing)
    assert "ansible-galaxy collection install ansible.windows" in str(caught.value)
    tcp_tuning(TCP, {"tcp_tuning_reboot": "never"}, windows=True, have_reboot_module=missing)
    assert len(asked) == 1


@pytest.mark.parametrize("args, expected", [
    (("auto", "x"), False), (("linux", "x", "winrm"), False), (("windows", "x"), True),
    (("auto", "x", "winrm"), True), (("auto", "x", "ansible.builtin.psrp"), True), (("auto", "x", "ssh", "powershell"), True),
    (("auto", "x", "ssh", "sh"), False), (("auto", "x", None, None, "Windows"), True),
])
def test_platform_without_facts(args, expected):
    assert is_windows(*args) is expected


def test_an_unknown_platform_is_refused():
    with pytest.raises(RoleVarError, match="tcp_tuning_platform: 'solaris' is not valid: one of auto, linux, windows"):
        is_windows("solaris", "tcp_tuning_platform")


def test_misspelt_names_are_found_and_the_playbooks_own_are_not():
    names = ["tcp_tuning_port_rnage", "tcp_tuning_port_range", "tcp_tuning_hosts", "tcp_tuning_time_wait",
             "_tcp_tuning_checked", "port_audit_top", "port_audit_topp"]
    assert unknown_names(names, TCP.options, "tcp_tuning_") == ["tcp_tuning_port_rnage"]
    assert unknown_names(names, AUDIT.options, "port_audit_") == ["port_audit_topp"]


def test_port_audit_options_per_platform():
    assert port_audit(AUDIT, {}, windows=False) == {"top": 5, "sample_seconds": 0.0, "warning_percent": 70,
                                                    "critical_percent": 90}
    assert port_audit(AUDIT, {"port_audit_sample_seconds": "2.5"}, windows=False)["sample_seconds"] == 2.5
    assert port_audit(AUDIT, {}, windows=True) == {"top": 5, "event_hours": 24}


@pytest.mark.parametrize("values, message", [
    ({"port_audit_top": 0}, "port_audit_top: 0 is not valid: an integer number of destinations from 1 to 1000"),
    ({"port_audit_sample_seconds": 61}, "port_audit_sample_seconds: 61 is not valid: a number of seconds from 0 to 60"),
    ({"port_audit_sample_seconds": "soon"}, "port_audit_sample_seconds: 'soon' is not valid"),
    ({"port_audit_warning_percent": 95}, "port_audit_warning_percent: 95 is not valid: at most port_audit_critical_percent"),
    ({"port_audit_critical_percent": 101}, "port_audit_critical_percent: 101 is not valid: an integer percentage"),
    ({"port_audit_event_hours": 0}, "port_audit_event_hours: 0 is not valid: an integer number of hours"),
    ({"port_audit_formats": "html"}, "port_audit_formats: 'html' is not valid: a list of json, markdown, html"),
    ({"port_audit_formats": ["pdf"]}, "port_audit_formats: ['pdf'] is not valid"),
    ({"port_audit_report_dir": " "}, "port_audit_report_dir: ' ' is not valid: a directory path"),
    ({"port_audit_title": 5}, "port_audit_title: 5 is not valid: a string"),
    ({"port_audit_fail_on_critical": "perhaps"}, "port_audit_fail_on_critical: 'perhaps' is not valid: a boolean"),
])
def test_port_audit_errors_name_the_variable(values, message):
    with pytest.raises(RoleVarError) as caught:
        port_audit(AUDIT, values, windows=False)
    assert str(caught.value).startswith(message), str(caught.value)


def test_port_monitor_defaults_give_the_sampler_its_defaults():
    assert port_monitor(MONITOR, {}, windows=False) == {
        "state": "present", "interval": 15, "textfile_dir": "/var/lib/prometheus/node-exporter", "top": 5,
        "warning_percent": 70, "critical_percent": 90, "processes": False, "process_sample_seconds": 0,
        "nat": False, "python": "/usr/bin/python3", "rules_dir": ""}
    assert port_monitor(MONITOR, {"port_monitor_nat": "true"}, False)["nat"] is True
    options = port_monitor(MONITOR, {"port_monitor_processes": "yes", "port_monitor_process_sample_seconds": 14}, False)
    assert (options["processes"], options["process_sample_seconds"]) == (True, 14)
    options = port_monitor(MONITOR, {"port_monitor_interval": "60", "port_monitor_textfile_dir": "/srv/textfile/",
                                     "port_monitor_rules_dir": "/etc/prometheus/rules", "port_monitor_state": "absent"},
                           windows=False)
    assert (options["interval"], options["textfile_dir"], options["rules_dir"], options["state"]) == (
        60, "/srv/textfile", "/etc/prometheus/rules", "absent")


@pytest.mark.parametrize("values, message", [
    ({"port_monitor_interval": 0}, "port_monitor_interval: 0 is not valid: an integer number of seconds from 1 to 3600"),
    ({"port_monitor_interval": 3601}, "port_monitor_interval: 3601 is not valid: an integer number of seconds"),
    ({"port_monitor_interval": 1.5}, "port_monitor_interval: 1.5 is not valid"),
    ({"port_monitor_top": 0}, "port_monitor_top: 0 is not valid: an integer number of destinations from 1 to 100"),
    ({"port_monitor_top": 101}, "port_monitor_top: 101 is not valid: an integer number of destinations from 1 to 100"),
    ({"port_monitor_warning_percent": 95}, "port_monitor_warning_percent: 95 is not valid: at most "
                                           "port_monitor_critical_percent (90)"),
    ({"port_monitor_critical_percent": 0}, "port_monitor_critical_percent: 0 is not valid"),
    ({"port_monitor_textfile_dir": "var/lib/x"}, "port_monitor_textfile_dir: 'var/lib/x' is not valid: an absolute"),
    ({"port_monitor_textfile_dir": "/a b"}, "port_monitor_textfile_dir: '/a b' is not valid"),
    ({"port_monitor_textfile_dir": "/a/../etc"}, "port_monitor_textfile_dir: '/a/../etc' is not valid"),
    ({"port_monitor_textfile_dir": "/var/%h"}, "port_monitor_textfile_dir: '/var/%h' is not valid"),
    ({"port_monitor_textfile_dir": "/x\nExecStartPre=/bin/true"}, "port_monitor_textfile_dir: "),
    ({"port_monitor_textfile_dir": ["/x"]}, "port_monitor_textfile_dir: ['/x'] is not valid"),
    ({"port_monitor_python": "python3"}, "port_monitor_python: 'python3' is not valid: an absolute path"),
    ({"port_monitor_rules_dir": "rules"}, "port_monitor_rules_dir: 'rules' is not valid: '' (do not install"),
    ({"port_monitor_state": "gone"}, "port_monitor_state: 'gone' is not valid: present or absent"),
    ({"port_monitor_processes": "maybe"}, "port_monitor_processes: 'maybe' is not valid: a boolean"),
    ({"port_monitor_nat": "auto"}, "port_monitor_nat: 'auto' is not valid: a boolean"),
    ({"port_monitor_process_sample_seconds": 5}, "port_monitor_process_sample_seconds: 5 is not valid: 0 while "
                                                 "port_monitor_processes is false"),
    ({"port_monitor_processes": True, "port_monitor_process_sample_seconds": 15},
     "port_monitor_process_sample_seconds: 15 is not valid: an integer number of seconds below port_monitor_interval "
     "(15) from 0 to 14"),
])
def test_port_monitor_errors_name_the_variable(values, message):
    with pytest.raises(RoleVarError) as caught:
        port_monitor(MONITOR, values, windows=False)
    assert str(caught.value).startswith(message), str(caught.value)


def test_port_monitor_refuses_windows_and_finds_typos():
    with pytest.raises(RoleVarError) as caught:
        port_monitor(MONITOR, {}, windows=True)
    assert str(caught.value).startswith("port_monitor_platform: 'auto' is not valid: auto or linux on a Linux host; "
                                        "this host is Windows")
    assert caught.value.name == "port_monitor_platform"
    assert unknown_names(["port_monitor_intreval", "port_monitor_top", "port_monitor_result"], MONITOR.options,
                         MONITOR.prefix) == ["port_monitor_intreval"]
