"""Running Ansible from the tests, bench and demo: which ansible-playbook, and the callback that records results.

``RESULTS_CALLBACK`` is a notification callback plugin (it leaves the stdout callback, what users see, alone)
that appends every task result, as a playbook would register it, as one JSON line to the file named by
$TCPSTACK_RESULTS; install_results_callback() puts it in a run's directory and read_results() reads the lines
back.  Standard library only.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

# A notification callback that writes every task result as one JSON line to
# $TCPSTACK_RESULTS, leaving the stdout callback (what users see) alone.
RESULTS_CALLBACK = r'''
from __future__ import annotations

import json
import os

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: tcpstack_results
type: aggregate
short_description: one JSON line per task result (tcpstack.tuning test helper)
description: Writes each task result, as a playbook would register it, to the file named by TCPSTACK_RESULTS.
"""


def _message(item):
    event = getattr(item, "event", None)
    if event is not None:
        return getattr(event, "msg", str(event))
    if isinstance(item, dict):
        if isinstance(item.get("event"), dict):
            return item["event"].get("msg")
        return item.get("msg", str(item))
    return str(item)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "tcpstack_results"
    CALLBACK_NEEDS_ENABLED = True

    def _record(self, result, status):
        data = getattr(result, "result", None)
        if data is None:
            data = result._result
        data = dict(data)
        data["warnings"] = [_message(w) for w in (data.get("warnings") or [])]
        data["deprecations"] = [_message(w) for w in (data.get("deprecations") or [])]
        if data.get("exception") is not None:
            data["exception"] = _message(data["exception"])
        data["failed"] = status == "failed"
        data["skipped"] = status == "skipped"
        data["unreachable"] = status == "unreachable"
        data["_status"] = status
        data["_task"] = result.task_name if hasattr(result, "task_name") else result._task.get_name()
        data["_action"] = getattr(result, "task", None).action if hasattr(result, "task") else result._task.action
        data["_host"] = result._host.get_name()
        with open(os.environ["TCPSTACK_RESULTS"], "a") as handle:
            handle.write(json.dumps(data, default=str) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")
'''


def ansible_playbook():
    """ansible-playbook of the running Python's environment (e.g. .venv/bin), else the one on PATH."""
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise RuntimeError("ansible-playbook is neither next to %s nor on PATH" % sys.executable)
    return found


def install_results_callback(directory):
    """Write the callback as DIRECTORY/callback_plugins/tcpstack_results.py and an empty DIRECTORY/results.jsonl.

    Returns (the plugin directory, the results file): run Ansible with ANSIBLE_CALLBACK_PLUGINS naming the
    first, ANSIBLE_CALLBACKS_ENABLED=tcpstack_results and TCPSTACK_RESULTS naming the second.
    """
    plugins = Path(directory) / "callback_plugins"
    plugins.mkdir(exist_ok=True)
    (plugins / "tcpstack_results.py").write_text(RESULTS_CALLBACK)
    results = Path(directory) / "results.jsonl"
    results.write_text("")
    return plugins, results


def read_results(path):
    """The task results the callback wrote to ``path``, in the order they came."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]
