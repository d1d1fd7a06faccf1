"""A mixed test fleet in one ansible-playbook: Linux hosts in network namespaces, simulated Windows hosts."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from netns import _CALLBACK, ansible_playbook, collections_path

USER, PASSWORD = "ansible", "Sim-Passw0rd!"  # the simulator's test credentials


def fleet_hosts(linux, sims, directory):
    """Inventory host variables for a mixed fleet.

    ``linux`` maps host names to Sandboxes (their modules run inside the namespace through
    Sandbox.python_wrapper(), written into ``directory``), ``sims`` host names to running windows_sim
    Simulators (WinRM, Basic over http on 127.0.0.1).
    """
    hosts = {}
    for name, box in linux.items():
        hosts[name] = {"ansible_connection": "local", "ansible_python_interpreter": str(box.python_wrapper(directory))}
    for name, sim in sims.items():
        hosts[name] = {"ansible_host": "127.0.0.1", "ansible_port": sim.port, "ansible_connection": "winrm",
                       "ansible_winrm_transport": "basic", "ansible_winrm_scheme": "http",
                       "ansible_user": USER, "ansible_password": PASSWORD}
    return hosts


def run_fleet(linux, sims, playbook, extra_vars=None, check=False, diff=False, args=(), install=None):
    """One ansible-playbook on the machine over a mixed fleet.  Returns (rc, results, output).

    ``playbook`` is YAML text or a collection playbook name.  ``install``: run another Ansible than this
    environment's, ``{"bin": directory of its ansible-playbook, "env": the whole environment to run it with}``
    (the environment names its collections path); by default the checkout's collection and this environment.
    """
    with tempfile.TemporaryDirectory(prefix="tcpstack-audit-") as tmp:
        work = Path(tmp)
        hosts = fleet_hosts(linux, sims, work)
        (work / "inventory.json").write_text(json.dumps({"all": {"hosts": hosts}}))
        if "\n" in playbook:
            (work / "play.yml").write_text(playbook)
            playbook = str(work / "play.yml")
        (work / "callback_plugins").mkdir()
        (work / "callback_plugins" / "tcpstack_results.py").write_text(_CALLBACK)
        results_file = work / "results.jsonl"
        results_file.touch()
        if install is None:
            env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_path()))
            command = ansible_playbook()
        else:
            env = dict(install["env"])
            command = str(Path(install["bin"]) / "ansible-playbook")
        env.update(ANSIBLE_CALLBACK_PLUGINS=str(work / "callback_plugins"), ANSIBLE_CALLBACKS_ENABLED="tcpstack_results",
                   TCPSTACK_RESULTS=str(results_file), ANSIBLE_RETRY_FILES_ENABLED="false", ANSIBLE_NOCOLOR="1")
        cmd = [command, "-i", str(work / "inventory.json"), playbook] + list(args)
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        cmd += ["--check"] if check else []
        cmd += ["--diff"] if diff else []
        proc = subprocess.run(cmd, cwd=tmp, env=env, text=True, capture_output=True, timeout=300, check=False)
        results = [json.loads(line) for line in results_file.read_text().splitlines() if line.strip()]
    return proc.returncode, results, proc.stdout + proc.stderr
