"""linux_tcp's nf_conntrack keys on the real kernel (issue 23): real ansible-playbook runs inside network namespaces.

``conntrack_time_wait`` (net.netfilter.nf_conntrack_tcp_timeout_time_wait) belongs to each network namespace: it is
set for real inside a Sandbox (tests/support/netns.py) and read back there.  ``conntrack_max``
(net.netfilter.nf_conntrack_max) is global to the machine; inside a namespace the kernel refuses to change it, so
the module must refuse it before changing anything.  The machine's own values and /etc/sysctl.d are read before
and after every test and must not change; no test here writes the machine's nf_conntrack_max (the one write of it,
from inside a namespace, writes the value it already has).

nf_conntrack must be loaded (the NAT rules of tests/integration/test_conntrack.py load it; the tests here never
load a kernel module): without it, or without root, they skip locally and fail under CI=true.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
from pathlib import Path

import pytest

from tests.support.ci import need
from tests.support.collection import collections_path
from tests.support.netns import Sandbox

pytestmark = pytest.mark.usefixtures("root_netns")

MODULE = "tcpstack.tuning.linux_tcp"
OUR_FILE = "60-tcpstack-tuning.conf"
FIN = "net.ipv4.tcp_fin_timeout"
MAX = "net.netfilter.nf_conntrack_max"
TIME_WAIT = "net.netfilter.nf_conntrack_tcp_timeout_time_wait"
MACHINE_KEYS = (MAX, TIME_WAIT, "net.nf_conntrack_max", FIN)


def _proc(key):
    return Path("/proc/sys/" + key.replace(".", "/"))


def _machine():
    """The machine's own values of the keys touched here and its /etc/sysctl.d, read only."""
    values = {key: _proc(key).read_text() if _proc(key).exists() else None for key in MACHINE_KEYS}
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None
             for p in sorted(Path("/etc/sysctl.d").glob("*"))}
    return values, files


@pytest.fixture(scope="module", autouse=True)
def machine_untouched(root_netns):
    need(_proc(MAX).exists() and _proc(TIME_WAIT).exists(),
         "needs nf_conntrack loaded (%s): the NAT rules of test_conntrack.py load it, or modprobe nf_conntrack" % MAX)
    before = _machine()
    yield
    assert _machine() == before, "the machine's own nf_conntrack keys, tcp_fin_timeout or /etc/sysctl.d changed"


@pytest.fixture
def box(request):
    sandbox = Sandbox.new()
    request.addfinalizer(sandbox.destroy)
    return sandbox.create()


def task(name, check_mode=None, ignore_errors=False, **options):
    out = {"name": name, MODULE: options}
    if check_mode is not None:
        out["check_mode"] = check_mode
    if ignore_errors:
        out["ignore_errors"] = True
    return out


def run(box, *tasks, **kwargs):
    """Run the tasks inside ``box``; {task name: result}."""
    play = json.dumps([{"name": "conntrack keys", "hosts": "all", "gather_facts": False, "tasks": list(tasks)}])
    rc, results = box.run_playbook(play, **kwargs)
    by_name = {r["_task"]: r for r in results}
    assert set(by_name) == {t["name"] for t in tasks}, box.last_run.describe()
    return rc, by_name


def other_warnings(result):
    """The warnings of a result but the boot one a loadable nf_conntrack gets on a machine that does not list it."""
    return [w for w in result.get("warnings", []) if "modules-load.d" not in w]


# ---------------------------------------------------------------- the per-namespace key, for real
def test_time_wait_check_diff_apply_read_back_and_idempotent(box):
    machine = _proc(TIME_WAIT).read_text().strip()
    start = box.sysctl(TIME_WAIT)
    assert start == "120"  # a new namespace starts with the kernel default, whatever the machine has
    rc, results = run(box, task("check", check_mode=True, conntrack_time_wait=61), diff=True)
    check = results["check"]
    assert rc == 0 and check["changed"] is True, check
    assert box.sysctl(TIME_WAIT) == start and not box.path(OUR_FILE).exists()
    runtime, persisted = check["diff"]
    assert runtime["before"] == "%s = 120\n" % TIME_WAIT and runtime["after"] == "%s = 61\n" % TIME_WAIT
    assert "%s = 61\n" % TIME_WAIT in persisted["after"]

    rc, results = run(box, task("apply", conntrack_time_wait=61), task("again", conntrack_time_wait="61"))
    apply, again = results["apply"], results["again"]
    assert rc == 0 and apply["changed"] is True and again["changed"] is False, (apply, again)
    assert other_warnings(apply) == [] and other_warnings(again) == []
    assert box.sysctl(TIME_WAIT) == "61"
    assert apply["before"] == {TIME_WAIT: "120"} and apply["after"] == {TIME_WAIT: "61"}
    assert "%s = 61\n" % TIME_WAIT in box.read_file(OUR_FILE)
    assert apply["boot_values"][TIME_WAIT]["systemd"]["value"] == "61"
    assert _proc(TIME_WAIT).read_text().strip() == machine  # the machine's own value is not the namespace's


def test_absent_puts_the_namespace_default_back(box):
    rc, results = run(box, task("apply", conntrack_time_wait=45), task("undo", state="absent"))
    assert rc == 0 and results["undo"]["changed"] is True, results["undo"]
    assert box.sysctl(TIME_WAIT) == "120" and not box.path(OUR_FILE).exists()


# ---------------------------------------------------------------- the global key inside a namespace
def test_conntrack_max_is_refused_inside_a_namespace_and_nothing_changes(box):
    machine = int(_proc(MAX).read_text())
    asked = machine + 1  # harmless to the machine even if a kernel let it through: one more entry allowed
    fin_before = box.sysctl(FIN)
    rc, results = run(box, task("refused", ignore_errors=True, fin_timeout=33, conntrack_max=asked,
                                conntrack_time_wait=62))
    refused = results["refused"]
    assert refused["failed"] is True and refused["changed"] is False, refused
    assert refused["msg"].startswith("conntrack_max: '%d' is not valid" % asked), refused["msg"]
    assert "global to the machine" in refused["msg"] and "Set it on the host" in refused["msg"]
    assert "Nothing was changed" in refused["msg"]
    # all or nothing: neither the per-namespace keys nor the file
    assert box.sysctl(TIME_WAIT) == "120" and box.sysctl(FIN) == fin_before
    assert not box.path(OUR_FILE).exists()
    assert int(box.sysctl(MAX)) == machine


def test_conntrack_max_at_the_machines_value_is_left_alone_with_a_warning(box):
    machine = _proc(MAX).read_text().strip()
    rc, results = run(box, task("same", conntrack_max=int(machine), conntrack_time_wait=63))
    same = results["same"]
    assert rc == 0 and same["changed"] is True, same
    assert same["after"] == {TIME_WAIT: "63"} and box.sysctl(TIME_WAIT) == "63"
    assert MAX not in box.read_file(OUR_FILE)
    assert any("global to the machine" in w and "neither written nor persisted" in w for w in same["warnings"])


_REFUSED_WRITE = r"""
import json
from collections import OrderedDict
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import HostError, LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import same
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_tuning import apply
from ansible_collections.tcpstack.tuning.plugins.module_utils.plan import make_plan
MAX, FIN = "net.netfilter.nf_conntrack_max", "net.ipv4.tcp_fin_timeout"
host = LinuxHost()
raw = {MAX: host.read_sysctl(MAX), FIN: host.read_sysctl(FIN)}
# the machine's own value, written again: on any kernel this changes nothing, and here the kernel refuses it
plan = make_plan({FIN: raw[FIN], MAX: "1"}, OrderedDict([(FIN, 34), (MAX, int(raw[MAX]))]), same)
try:
    apply(host, plan, raw)
    error = None
except HostError as exc:
    error = str(exc)
print(json.dumps({"error": error, "fin": host.read_sysctl(FIN), "before": raw[FIN]}))
"""


def test_the_kernels_refusal_of_a_global_write_is_rolled_back_and_explained(box):
    """Where the namespace could not be told, the kernel's EACCES still ends the run cleanly and says why."""
    mode = box.exec(["stat", "-c", "%a", _proc(MAX)]).stdout.strip()
    need(not int(mode, 8) & stat.S_IWUSR, "needs a kernel that makes %s read-only in a namespace (mode %s)"
         % (MAX, mode))
    env = dict(os.environ, PYTHONPATH=str(collections_path()))
    done = box.exec([sys.executable, "-c", _REFUSED_WRITE], env=env)
    out = json.loads(done.stdout)
    assert out["error"] is not None and "Permission denied" in out["error"], out
    assert "global to the machine" in out["error"] and "conntrack_max on the host" in out["error"], out
    assert "restored %s" % FIN in out["error"], out
    assert out["fin"] == out["before"]


# ---------------------------------------------------------------- through the tcp_tuning role
def _role_play(**variables):
    return json.dumps([{"name": "site", "hosts": "all", "gather_facts": False, "vars": variables,
                        "roles": ["tcpstack.tuning.tcp_tuning"]}])


def test_the_role_passes_the_keys_on_and_checks_them_before_the_host(box):
    rc, results = box.run_playbook(_role_play(tcp_tuning_linux={"conntrack_time_wait": 65}))
    assert rc == 0, box.last_run.describe()
    calls = [r for r in results if r["_action"] == MODULE and r["_status"] != "skipped"]
    assert len(calls) == 1 and calls[0]["changed"] and calls[0]["after"][TIME_WAIT] == "65"
    assert box.sysctl(TIME_WAIT) == "65"
    # a bad value is refused on the controller under the variable's name, before the module runs
    rc, results = box.run_playbook(_role_play(tcp_tuning_linux={"conntrack_time_wait": 0}))
    assert rc != 0 and not [r for r in results if r["_action"] == MODULE], box.last_run.describe()
    assert "tcp_tuning_linux.conntrack_time_wait: 0 is not valid: an integer from 1 to 86400" in box.last_run.stdout
    # the global key from inside this namespace: the module refuses it, and the per-namespace key stays
    asked = int(_proc(MAX).read_text()) + 1  # one more entry: harmless even if a kernel let it through
    rc, results = box.run_playbook(_role_play(tcp_tuning_linux={"conntrack_max": asked, "conntrack_time_wait": 66}))
    failed = [r for r in results if r["_action"] == MODULE and r["_status"] == "failed"]
    assert rc != 0 and len(failed) == 1 and "global to the machine" in failed[0]["msg"], box.last_run.describe()
    assert box.sysctl(TIME_WAIT) == "65"
