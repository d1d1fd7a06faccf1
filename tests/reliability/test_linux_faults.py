"""Issue 8: faults on the real kernel and filesystem, inside throwaway network namespaces.

- /proc/sys read-only (as in an unprivileged container), the persist directory read-only, the persist
  directory full (a 16 KiB tmpfs mounted over the namespace's /etc/sysctl.d in a private mount namespace),
  a key that fails in the middle of an apply: each run fails with a message naming the key or file and the
  system's error, the runtime values written so far are rolled back, the files are byte for byte the same,
  and the next run without the fault converges.
- SIGKILL during the persistence write, >= 200 times: LinuxHost.write_file_atomic runs in a forked child
  against the real directory /etc/netns/NAME/sysctl.d (the sandbox's sysctl.d, on the machine's /etc
  filesystem) and is killed at a random moment; the file is always exactly the old or the new text.
- Overlapping ansible-playbook runs on one host: the runtime and the file agree at the end.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shlex
import signal
import time

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_sysctl_d import render
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_tuning import HEADER

from tests.support.netns import Sandbox

pytestmark = pytest.mark.usefixtures("root_netns")

MODULE = "tcpstack.tuning.linux_tcp"
OUR_FILE = "60-tcpstack-tuning.conf"
EARLIER_RUN = render({"net.ipv4.tcp_fin_timeout": "45"}, HEADER)
FIN = "net.ipv4.tcp_fin_timeout"
RANGE = "net.ipv4.ip_local_port_range"
RESERVED = "net.ipv4.ip_local_reserved_ports"
REUSE = "net.ipv4.tcp_tw_reuse"
SOMAXCONN = "net.core.somaxconn"
SYN = "net.ipv4.tcp_max_syn_backlog"
KILLS = int(os.environ.get("TCPSTACK_SIGKILL_ITERATIONS", "300"))

# written in this order (linux_settings.SETTINGS): fin_timeout, reserved_ports, port_range, tw_reuse, somaxconn,
# max_syn_backlog; every value differs from a fresh namespace's
OPTIONS = {"fin_timeout": 31, "reserved_ports": "40010-40021", "port_range": [32768, 60999], "tw_reuse": 0,
           "somaxconn": 8191, "max_syn_backlog": 4095}
EXPECTED = {FIN: "31", RESERVED: "40010-40021", RANGE: "32768 60999", REUSE: "0", SOMAXCONN: "8191", SYN: "4095"}


def play(*tasks):
    return json.dumps([{"name": "faults", "hosts": "all", "gather_facts": False, "tasks": list(tasks)}])


def task(name, **options):
    return {"name": name, MODULE: options, "ignore_errors": True}


def run_one(box, name, options, wrapper=()):
    rc, results = box.run_playbook(play(task(name, **options)), wrapper=wrapper, timeout=240)
    by_name = {r["_task"]: r for r in results}
    assert name in by_name, box.last_run.describe()
    return by_name[name]


def assignments(text):
    out = {}
    for line in (text or "").splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            out[key.strip()] = " ".join(value.split())
    return out


def canon(value):
    return " ".join(value.split()) if value is not None else None


@pytest.fixture
def box(root_netns, request):  # pylint: disable=unused-argument
    sandbox = Sandbox.new()
    request.addfinalizer(sandbox.destroy)
    sandbox.create()
    # a host with history: an earlier run's file, another file, a runtime that differs from both
    sandbox.write_file(OUR_FILE, EARLIER_RUN)  # what an earlier run wrote: our header, then the keys
    sandbox.write_file("10-other.conf", "net.ipv4.tcp_keepalive_time = 7200\n")
    sandbox.set_sysctl(SOMAXCONN, "1000")
    return sandbox


def _full_tmpfs_wrapper(box):
    """Mount a 16 KiB tmpfs over /etc/sysctl.d (private mount namespace), copy the files in, fill it up,
    run the command, then record what the tmpfs holds (names, sha256) in the scratch directory."""
    scratch = shlex.quote(str(box.scratch))
    script = "\n".join([
        "set -e",
        "mkdir -p %s/copy && cp -a /etc/sysctl.d/. %s/copy/" % (scratch, scratch),
        "mount -t tmpfs -o size=16k,mode=0755 tcpstack-full /etc/sysctl.d",
        "cp -a %s/copy/. /etc/sysctl.d/" % scratch,
        "dd if=/dev/urandom of=/etc/sysctl.d/zz-filler bs=1024 count=64 2>/dev/null || true",
        "df -k /etc/sysctl.d | tail -1 > %s/df" % scratch,
        "set +e",
        '"$@"',
        "rc=$?",
        "ls -A /etc/sysctl.d > %s/listing" % scratch,
        "cd /etc/sysctl.d && sha256sum -- *.conf > %s/hashes" % scratch,
        "exit $rc",
    ])
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]


def test_faults_fail_clearly_roll_back_and_the_next_run_converges(box, figures):
    before = box.snapshot()
    suite = "linux_faults"

    # 1. /proc/sys read-only: the first write fails, nothing was changed
    r = run_one(box, "read-only /proc/sys", OPTIONS, wrapper=box.private_mounts(readonly=["/proc/sys"]))
    assert r["failed"] is True and r.get("changed") is False, r
    assert FIN in r["msg"] and "Read-only file system" in r["msg"] and "nothing had been changed" in r["msg"], r["msg"]
    assert box.snapshot() == before, "read-only /proc/sys: the host changed"
    figures.add(suite, faults_injected=1, failed_clearly=1, host_unchanged=1)

    # 2. the persist directory read-only: every key written is restored
    r = run_one(box, "read-only sysctl.d", OPTIONS, wrapper=box.private_mounts(readonly=["/etc/sysctl.d"]))
    assert r["failed"] is True and r.get("changed") is False, r
    msg = r["msg"]
    assert "/etc/sysctl.d" in msg and "Read-only file system" in msg, msg
    assert "restored %s to their previous values" % ", ".join([FIN, RESERVED, REUSE, SOMAXCONN, SYN]) in msg, msg
    assert box.snapshot() == before, "read-only sysctl.d: runtime not restored"
    figures.add(suite, faults_injected=1, failed_clearly=1, host_unchanged=1)

    # 3. the persist directory full (16 KiB tmpfs)
    r = run_one(box, "full sysctl.d", OPTIONS, wrapper=_full_tmpfs_wrapper(box))
    assert r["failed"] is True and r.get("changed") is False, r
    msg = r["msg"]
    assert "/etc/sysctl.d/%s" % OUR_FILE in msg and "No space left on device" in msg, msg
    assert "restored" in msg and "persisted file is unchanged" in msg, msg
    listing = (box.scratch / "listing").read_text().split()
    assert sorted(listing) == sorted(["10-other.conf", OUR_FILE, "zz-filler"]), ("temporary file left", listing)
    hashes = dict(reversed(line.split()) for line in (box.scratch / "hashes").read_text().splitlines())
    assert hashes == {name: before["files"]["sysctl.d/" + name] for name in ("10-other.conf", OUR_FILE)}, hashes
    for extra in ("listing", "hashes", "df"):
        (box.scratch / extra).unlink()
    import shutil  # pylint: disable=import-outside-toplevel
    shutil.rmtree(box.scratch / "copy")
    assert box.snapshot() == before, "full sysctl.d: runtime not restored"
    figures.add(suite, faults_injected=1, failed_clearly=1, host_unchanged=1)

    # 4. a key failing in the middle of the apply (tw_reuse, 4th): the three before it are rolled back
    wrapper = box.readonly_sysctl_wrapper(REUSE, before["sysctl"][REUSE])
    r = run_one(box, "tw_reuse fails", OPTIONS, wrapper=wrapper)
    assert r["failed"] is True and r.get("changed") is False, r
    msg = r["msg"]
    assert REUSE in msg and "Read-only file system" in msg, msg
    assert "restored %s to their previous values" % ", ".join([FIN, RESERVED]) in msg or \
        "restored %s to their previous values" % ", ".join([FIN, RESERVED, RANGE]) in msg, msg
    assert box.snapshot() == before, "failing key: the keys written before it were not restored"
    figures.add(suite, faults_injected=1, failed_clearly=1, host_unchanged=1)

    # the next run without a fault converges, and the one after changes nothing
    r = run_one(box, "converge", OPTIONS)
    assert r["failed"] is False and r["changed"] is True, r
    again = run_one(box, "again", OPTIONS)
    assert again["failed"] is False and again["changed"] is False, again
    now = box.sysctls()
    assert {k: canon(now[k]) for k in EXPECTED} == EXPECTED
    persisted = assignments(box.read_file(OUR_FILE))
    assert {k: persisted[k] for k in EXPECTED} == EXPECTED
    assert set(box.file_hashes()) == {"sysctl.d/" + OUR_FILE, "sysctl.d/10-other.conf"}
    figures.add(suite, converged_after_fault=4, runs=7)


# ---------------------------------------------------------------- SIGKILL during the persistence write
SIZES = (40, 400, 4000, 64 * 1024, 256 * 1024)


def _contents(i, size):
    """Distinct texts of varied sizes (a few bytes to 256 KiB) so that kills land in every phase."""
    line = "# version %d %s\n" % (i, hashlib.sha256(str(i).encode()).hexdigest())
    return (line * (size // len(line) + 1))[:size] + "net.ipv4.tcp_fin_timeout = %d\n" % (30 + i % 100)


def _write_in_child(path, text):
    """Fork a child that says "go" on a pipe, then writes ``path`` with write_file_atomic; returns (pid, fd)."""
    from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost  # pylint: disable=import-outside-toplevel
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        code = 1
        try:
            os.close(read_end)
            os.write(write_end, b"g")
            LinuxHost().write_file_atomic(path, text)
            code = 0
        finally:
            os._exit(code)  # pylint: disable=protected-access
    os.close(write_end)
    return pid, read_end


def _temporaries(directory, name):
    return sorted(n for n in os.listdir(directory) if n.startswith("." + name + ".") and n.endswith(".tmp"))


def _durations(path):
    """How long one write_file_atomic takes here for each size _contents() uses (median of 5, seconds)."""
    from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost  # pylint: disable=import-outside-toplevel
    out = {}
    probe = path + ".probe"
    for size in SIZES:
        runs = []
        for _attempt in range(5):
            started = time.monotonic()
            LinuxHost().write_file_atomic(probe, "x" * size)
            runs.append(time.monotonic() - started)
        out[size] = sorted(runs)[2]
    os.unlink(probe)
    return out


def _kill_loop(box, iterations, clean_temporaries=True, in_flight=0, most=1000):
    """Write, SIGKILL at a random moment within the write's usual duration, check: ``iterations`` times, and on
    until ``in_flight`` kills landed before the write finished and both outcomes were seen (at most ``most``
    times, for a loaded machine)."""
    directory = str(box.sysctl_d)
    path = os.path.join(directory, OUR_FILE)
    rng = random.Random(8)
    durations = _durations(path)
    old = box.read_file(OUR_FILE)
    seen = {"old": 0, "new": 0, "partial": 0, "temporaries_left": 0, "most_temporaries": 0, "killed_in_flight": 0,
            "iterations": 0}
    for i in range(most):
        if i >= iterations and seen["killed_in_flight"] >= in_flight and seen["old"] and seen["new"]:
            break
        seen["iterations"] += 1
        size = rng.choice(SIZES)
        new = _contents(i, size)
        pid, ready = _write_in_child(path, new)
        os.read(ready, 1)  # the child is about to call write_file_atomic
        os.close(ready)
        time.sleep(rng.uniform(0, 1.3 * durations[size]))  # mostly during the write, sometimes just after
        os.kill(pid, signal.SIGKILL)  # the child is ours and not yet reaped: this never fails
        _pid, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status):
            seen["killed_in_flight"] += 1  # killed before it finished (else it had exited 0 already)
        with open(path, "rb") as handle:
            now = handle.read().decode("utf-8")
        if now == old:
            seen["old"] += 1
        elif now == new:
            seen["new"] += 1
            old = new
        else:
            seen["partial"] += 1
        assert os.stat(path).st_mode & 0o777 == 0o644
        left = _temporaries(directory, OUR_FILE)
        seen["most_temporaries"] = max(seen["most_temporaries"], len(left))
        if left:
            seen["temporaries_left"] += 1
            if clean_temporaries:
                for name in left:
                    os.unlink(os.path.join(directory, name))
    return seen


def test_sigkill_during_the_write_leaves_the_old_or_the_new_file(box, figures):
    assert KILLS >= 200
    seen = _kill_loop(box, KILLS, in_flight=200)
    figures.add("sigkill", iterations=seen["iterations"], sigkills_sent=seen["iterations"],
                killed_in_flight=seen["killed_in_flight"], old_file=seen["old"], new_file=seen["new"],
                partial_files=seen["partial"], temporaries_left=seen["temporaries_left"])
    assert seen["partial"] == 0, seen
    assert seen["old"] + seen["new"] == seen["iterations"], seen
    assert seen["killed_in_flight"] >= 200, seen  # at least 200 kills landed during the write
    # the kills landed both before and after the rename
    assert seen["old"] > 0 and seen["new"] > 0, seen


def test_sigkill_leaves_no_temporary_file_behind(box):
    directory = str(box.sysctl_d)
    seen = _kill_loop(box, 60, clean_temporaries=False)
    # a SIGKILL may leave the killed write's temporary file, but never more than that one: each write removes
    # what the killed writes before it left, before it makes its own (the loop above leaves them all in place)
    assert seen["most_temporaries"] <= 1, seen
    assert seen["temporaries_left"] >= 2, seen  # the kills did leave temporaries: the check above was exercised
    # the next write (the next run) must leave the directory clean
    from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost  # pylint: disable=import-outside-toplevel
    LinuxHost().write_file_atomic(os.path.join(directory, OUR_FILE), "net.ipv4.tcp_fin_timeout = 30\n")
    assert _temporaries(directory, OUR_FILE) == []


# ---------------------------------------------------------------- overlapping runs
def test_overlapping_runs_agree_at_the_end(box, figures):
    runs = 4
    outcomes = box.run_playbooks_at_once([
        play({"name": "run %d" % i, MODULE: {"fin_timeout": 40 + i, "port_range": [32768 + 2 * i, 60999],
                                             "somaxconn": 6000 + i,
                                             "reserved_ports": "%d,%d" % (42000 + i, 43000 + i)}})
        for i in range(runs)], timeout=240)
    for i, (rc, results) in enumerate(outcomes):
        assert rc == 0 and results and results[0]["failed"] is False, (i, results)
    persisted = assignments(box.read_file(OUR_FILE))
    now = box.sysctls()
    disagree = {k: (v, now[k]) for k, v in persisted.items() if canon(now[k]) != v}
    winner = int(persisted[FIN]) - 40
    figures.add("overlapping_runs", runs=runs, survived=sum(1 for rc, _r in outcomes if rc == 0),
                runtime_file_disagreements=len(disagree))
    assert not disagree, disagree
    assert persisted == {FIN: str(40 + winner), RESERVED: "%d,%d" % (42000 + winner, 43000 + winner),
                         RANGE: "%d 60999" % (32768 + 2 * winner), SOMAXCONN: str(6000 + winner)}
    assert set(box.file_hashes()) == {"sysctl.d/" + OUR_FILE, "sysctl.d/10-other.conf"}, "a temporary file was left"
