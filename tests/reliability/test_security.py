"""docs/security.md's claims, checked: credentials stay out of logs and results even at -vvvvv, the
persisted file and the lock have the documented modes, and the Linux code paths start no process at all."""

from __future__ import annotations

import ast
import json
import os
import stat
from pathlib import Path

import pytest

from tests.support.collection import ROOT
from tests.support.fleet import run_fleet
from tests.support.netns import Sandbox
from tests.support.windows_sim import PASSWORD, Simulator

LINUX_CODE = ["plugins/modules/linux_tcp.py", "plugins/modules/port_usage_info.py"] + [
    "plugins/module_utils/%s.py" % name for name in (
        "linux_host", "linux_host_files", "linux_host_kernel", "linux_host_processes", "linux_settings",
        "linux_sysctl_d", "linux_tuning", "plan", "ports", "validation", "port_usage", "socket_table",
        "linux_port_usage", "prometheus")]
WINDOWS_CODE = ["plugins/action/win_tcp.py", "plugins/action/win_port_usage_info.py"] + [
    "plugins/plugin_utils/%s.py" % name for name in (
        "_windows_commands", "_windows_options", "_windows_parse", "windows_host", "windows_tuning", "windows_usage")]
FORBIDDEN_CALLS = {"system", "popen", "Popen", "run", "call", "check_call", "check_output", "run_command", "spawnv",
                   "execv", "execve", "execvp"}


def test_no_process_is_started_by_the_linux_code():
    for name in LINUX_CODE:
        tree = ast.parse((ROOT / name).read_text(), name)
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                modules = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
                assert not {"subprocess", "pty", "shlex"} & set(modules), (name, modules)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                assert node.func.attr not in FORBIDDEN_CALLS, (name, node.func.attr, node.lineno)


def test_the_windows_scripts_contain_no_option_text():
    """The action plugins send only what _windows_commands' builders emit (ints and enum members)."""
    for name in WINDOWS_CODE:
        tree = ast.parse((ROOT / name).read_text(), name)
        calls = {node.func.attr for node in ast.walk(tree)
                 if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)}
        assert not {"run_command", "_low_level_execute_command", "_execute_module"} & calls, (name, calls)


def test_credentials_stay_out_of_output_and_results_at_maximum_verbosity(figures):
    with Simulator(profile="server2022", language="en-US") as sim:
        play = json.dumps([{"name": "secrets", "hosts": "all", "gather_facts": False, "tasks": [
            {"name": "tune", "tcpstack.tuning.win_tcp": {"time_wait_delay": 30}},
            {"name": "read", "tcpstack.tuning.win_port_usage_info": {}}]}], indent=1)
        rc, results, output = run_fleet({}, {"win": sim}, play, args=["-vvvvv"])
        assert rc == 0, output
        assert "@@tcpstack" in output  # the scripts and their output are logged at -vvvvv ...
        assert PASSWORD not in output  # ... the password is not
        assert PASSWORD not in json.dumps(results, default=str)
    figures.add("security", checks=1)


@pytest.mark.usefixtures("root_netns")
def test_files_written_have_the_documented_modes(figures):
    with Sandbox.new() as box:
        rc, results = box.run_playbook(json.dumps([{"name": "modes", "hosts": "all", "gather_facts": False, "tasks": [
            {"name": "tune", "tcpstack.tuning.linux_tcp": {"fin_timeout": 30}}]}], indent=1))
        assert rc == 0, box.last_run.describe()
        st = os.stat(box.path("60-tcpstack-tuning.conf"))
        assert stat.S_IMODE(st.st_mode) == 0o644 and st.st_uid == 0
        assert [p.name for p in Path(box.sysctl_d).iterdir()] == ["60-tcpstack-tuning.conf"]
    lock = os.stat("/run/tcpstack-tuning.lock")
    assert stat.S_IMODE(lock.st_mode) & 0o077 == 0 and lock.st_uid == 0
    figures.add("security", checks=1)
