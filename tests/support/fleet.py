"""A mixed test fleet: Linux hosts in network namespaces and simulated Windows hosts, in one inventory.

fleet_hosts() is the one place an inventory for these hosts is written (tests, bench, demo); run_fleet() runs one
ansible-playbook over such a fleet and returns every task result.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

from tests.support.collection import collections_path
from tests.support.playbook import ansible_playbook, install_results_callback, read_results


def fleet_hosts(linux, sims, directory, ssh_key=None, known_hosts=None, login=True, simulator_vars=None,
                host_vars=None):
    """Inventory host variables for a mixed fleet: {host name: {variable: value}}.

    ``linux`` maps host names to Sandboxes: ``ansible_connection: local`` with an interpreter that runs Python
    inside the namespace (Sandbox.python_wrapper(), written into ``directory``), so that one ansible-playbook
    on the machine reaches them and the simulators alike.  ``sims`` maps host names to running windows_sim
    Simulators, reached with each simulator's own login:

    - over WinRM (Basic over http on 127.0.0.1), by default;
    - over SSH with ``ssh_key`` (the private key file whose public key the simulators authorize): Windows'
      OpenSSH with PowerShell as the default shell (``ansible_shell_type: powershell``), public-key login, each
      simulator's host key pinned in ``directory``/known_hosts (``known_hosts``: that file's text instead, e.g.
      a wrong key).

    ``login=False`` leaves out ansible_user and ansible_password, for a caller that supplies the login another
    way (as AWX injects a credential).  ``simulator_vars``: more variables for every simulated host (e.g. WinRM
    timeouts).  ``host_vars``: {host name: more inventory variables of that host} (e.g. tcpstack_egress).
    """
    directory = Path(directory)
    hosts = {}
    for name, box in linux.items():
        hosts[name] = {"ansible_connection": "local", "ansible_python_interpreter": str(box.python_wrapper(directory))}
    known_hosts_file = directory / "known_hosts"
    if ssh_key is not None and sims:
        known_hosts_file.write_text(known_hosts if known_hosts is not None else
                                    "".join(sim.ssh_known_hosts + "\n" for sim in sims.values()))
    for name, sim in sims.items():
        if ssh_key is None:
            host = {"ansible_host": "127.0.0.1", "ansible_port": sim.port, "ansible_connection": "winrm",
                    "ansible_winrm_transport": "basic", "ansible_winrm_scheme": "http",
                    "ansible_user": sim.username, "ansible_password": sim.password}
        else:
            host = {"ansible_host": "127.0.0.1", "ansible_port": sim.ssh_port, "ansible_connection": "ssh",
                    "ansible_shell_type": "powershell", "ansible_user": sim.username,
                    "ansible_ssh_private_key_file": str(ssh_key), "ansible_ssh_host_key_checking": True,
                    "ansible_ssh_common_args": "-o StrictHostKeyChecking=yes -o UserKnownHostsFile=%s "
                                               "-o IdentitiesOnly=yes" % known_hosts_file}
        if not login:
            host.pop("ansible_user")
            host.pop("ansible_password", None)
        host.update(simulator_vars or {})
        hosts[name] = host
    for name, variables in (host_vars or {}).items():
        hosts[name].update(variables)
    return hosts


def run_fleet(linux, sims, playbook, extra_vars=None, check=False, diff=False, args=(), install=None, timeout=300,
              **inventory):
    """One ansible-playbook on the machine over a mixed fleet.  Returns (rc, results, output).

    ``linux``, ``sims`` and ``inventory`` (ssh_key=, known_hosts=, simulator_vars=, host_vars=) as for fleet_hosts().
    ``playbook`` is YAML (or JSON) text, on more than one line, or a collection playbook name.  ``results``: every
    task result, as the callback of tests.support.playbook records it.  ``install``: run another Ansible than this
    environment's, ``{"bin": directory of its ansible-playbook, "env": the whole environment to run it with}``
    (the environment names its collections path); by default the checkout's collection and this environment.
    """
    with tempfile.TemporaryDirectory(prefix="tcpstack-audit-") as tmp:
        work = Path(tmp)
        hosts = fleet_hosts(linux, sims, work, **inventory)
        (work / "inventory.json").write_text(json.dumps({"all": {"hosts": hosts}}))
        if "\n" in playbook:
            (work / "play.yml").write_text(playbook)
            playbook = str(work / "play.yml")
        plugins, results_file = install_results_callback(work)
        if install is None:
            env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(collections_path()))
            command = ansible_playbook()
        else:
            env = dict(install["env"])
            command = str(Path(install["bin"]) / "ansible-playbook")
        env.update(ANSIBLE_CALLBACK_PLUGINS=str(plugins), ANSIBLE_CALLBACKS_ENABLED="tcpstack_results",
                   TCPSTACK_RESULTS=str(results_file), ANSIBLE_RETRY_FILES_ENABLED="false", ANSIBLE_NOCOLOR="1")
        cmd = [command, "-i", str(work / "inventory.json"), playbook] + list(args)
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        cmd += ["--check"] if check else []
        cmd += ["--diff"] if diff else []
        proc = subprocess.run(cmd, cwd=tmp, env=env, text=True, capture_output=True, timeout=timeout, check=False)
        results = read_results(results_file)
    return proc.returncode, results, proc.stdout + proc.stderr
