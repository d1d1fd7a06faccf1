"""linux_tcp on the real kernel: real ansible-playbook runs inside network namespaces these tests create.

Each test gets a Sandbox (tests/support/netns.py): a fresh network namespace with
its own /etc/sysctl.d (and, where a test wants one, /etc/sysctl.conf), so the
module reads and writes a real /proc/sys and real files, and the machine's
own /proc/sys and /etc/sysctl.d are never written.  Assertions read
/proc/sys inside the namespace and the files under /etc/netns/NAME.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from tests.support.netns import TCP_KEYS, Sandbox

pytestmark = pytest.mark.usefixtures("root_netns")  # root, ip and netns support, else skip (fail under CI)

MODULE = "tcpstack.tuning.linux_tcp"
OUR_FILE = "60-tcpstack-tuning.conf"
OUR_PATH = "/etc/sysctl.d/" + OUR_FILE
HEADER_START = "# Managed by Ansible: tcpstack.tuning.linux_tcp."

FIN = "net.ipv4.tcp_fin_timeout"
RANGE = "net.ipv4.ip_local_port_range"
RESERVED = "net.ipv4.ip_local_reserved_ports"
REUSE = "net.ipv4.tcp_tw_reuse"
DELAY = "net.ipv4.tcp_tw_reuse_delay"
STAMPS = "net.ipv4.tcp_timestamps"
SOMAXCONN = "net.core.somaxconn"
SYN = "net.ipv4.tcp_max_syn_backlog"
UNPRIV = "net.ipv4.ip_unprivileged_port_start"


# ---------------------------------------------------------------- helpers
def task(name, ignore_errors=False, check_mode=None, **options):
    """One linux_tcp task."""
    out = {"name": name, MODULE: options}
    if ignore_errors:
        out["ignore_errors"] = True
    if check_mode is not None:
        out["check_mode"] = check_mode
    return out


def play(*tasks):
    """Playbook text; JSON is YAML, and keeps tabs and quoting exact."""
    return json.dumps([{"name": "linux_tcp test", "hosts": "all", "gather_facts": False, "tasks": list(tasks)}],
                      indent=1)


def run(box, *tasks, expect_rc=0, **kwargs):
    """Run the tasks in the sandbox; returns {task name: result}.  Expected failures use ignore_errors."""
    rc, results = box.run_playbook(play(*tasks), **kwargs)
    assert rc == expect_rc, box.last_run.describe()
    by_name = {r["_task"]: r for r in results}
    missing = [t["name"] for t in tasks if t["name"] not in by_name]
    assert not missing, "no result for %s\n%s" % (missing, box.last_run.describe())
    return by_name


def assignments(text):
    """key -> value of the non-comment lines of a sysctl.d file."""
    out = {}
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith(("#", ";")):
            key, value = line.split("=", 1)
            out[key.strip()] = value.strip()
    return out


def canon(key, value):
    """What a value means, for keys whose kernel text has tabs."""
    return " ".join(value.split()) if value is not None else None


def stat(path):
    st = os.stat(path)
    return (st.st_ino, st.st_mtime_ns, st.st_size)


def has_delay(box):
    return box.has_sysctl(DELAY)


# ---------------------------------------------------------------- fixtures
def _host_state():
    """The machine's own TCP values and /etc/sysctl.d, read only: they must never change."""
    values = {}
    for key in TCP_KEYS:
        try:
            values[key] = Path("/proc/sys/" + key.replace(".", "/")).read_text()
        except OSError:
            values[key] = None
    files = {}
    for path in sorted(Path("/etc/sysctl.d").glob("*")):
        files[path.name] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None
    return values, files


@pytest.fixture(scope="module", autouse=True)
def machine_untouched():
    before = _host_state()
    yield
    assert _host_state() == before, "the machine's own /proc/sys or /etc/sysctl.d changed"


@pytest.fixture
def box(root_netns, request):
    """A fresh sandbox host, deleted after the test whatever happens."""
    sandbox = Sandbox.new()
    request.addfinalizer(sandbox.destroy)
    return sandbox.create()


ALL_OPTIONS = {
    "timestamps": 1,
    "fin_timeout": 30,
    "reserved_ports": "40020-40021,40010-40019",
    "port_range": [32768, 65535],
    "tw_reuse": 1,
    "tw_reuse_delay": 500,
    "somaxconn": 8192,
    "max_syn_backlog": 4096,
}
ALL_EXPECTED = {
    STAMPS: "1",
    FIN: "30",
    RESERVED: "40010-40021",
    RANGE: "32768 65535",
    REUSE: "1",
    DELAY: "500",
    SOMAXCONN: "8192",
    SYN: "4096",
}
APPLY_ORDER = [STAMPS, FIN, RESERVED, RANGE, REUSE, DELAY, SOMAXCONN, SYN]


def all_options(box):
    """Every option; tw_reuse_delay only where the kernel has it (6.14+)."""
    options, expected = dict(ALL_OPTIONS), dict(ALL_EXPECTED)
    if not has_delay(box):
        del options["tw_reuse_delay"], expected[DELAY]
    return options, expected


@pytest.fixture(scope="module")
def applied(root_netns):
    """One sandbox where every option was applied at once, with --diff."""
    sandbox = Sandbox.new()
    try:
        sandbox.create()
        options, expected = all_options(sandbox)
        initial = sandbox.sysctls()
        result = run(sandbox, task("apply all", **options), diff=True)["apply all"]
        yield {"box": sandbox, "options": options, "expected": expected, "initial": initial, "result": result,
               "stdout": sandbox.last_run.stdout}
    finally:
        sandbox.destroy()


# ---------------------------------------------------------------- apply, idempotence, check, diff
def test_apply_all_options_in_one_task(applied):
    box, expected, result = applied["box"], applied["expected"], applied["result"]
    assert result["failed"] is False and result["changed"] is True, result
    now = box.sysctls()
    for key, value in expected.items():
        assert canon(key, now[key]) == value, key
    assert now[RANGE] == "32768\t65535"  # the kernel's own text
    assert result["after"] == expected
    assert result["before"][FIN] == "60" and result["before"][RANGE] == "32768 60999"
    assert list(result["after"]) == [k for k in APPLY_ORDER if k in expected]
    assert result["persist_file"] == OUR_PATH and result["shadowed"] == []
    assert result["kernel"] == os.uname().release
    for key, value in expected.items():
        for init in ("systemd", "procps"):
            boot = result["boot_values"][key][init]
            assert boot["value"] == value and boot["file"] == OUR_PATH and isinstance(boot["line"], int)

    path = box.path(OUR_FILE)
    assert (os.stat(path).st_mode & 0o7777) == 0o644
    text = path.read_text()
    assert text.startswith(HEADER_START)
    lines = text.splitlines()
    body = [line for line in lines if not line.startswith("#")]
    assert all(line.startswith("#") for line in lines[: len(lines) - len(body)]), "header first"
    assert assignments(text) == expected, "only the managed keys, with their values"
    assert [line.split(" = ")[0] for line in body] == list(expected), "one line per key, in apply order"
    assert set(box.file_hashes()) == {"sysctl.d/" + OUR_FILE}, "no temporary file left behind"
    # the boot_values line numbers point at the right lines
    for key in expected:
        line = result["boot_values"][key]["systemd"]["line"]
        assert lines[line - 1].startswith(key + " = ")


def test_apply_diff_shows_runtime_and_file(applied):
    result, stdout = applied["result"], applied["stdout"]
    runtime, persisted = result["diff"]
    assert runtime["before_header"] == "runtime (/proc/sys)"
    assert "net.ipv4.tcp_fin_timeout = 60\n" in runtime["before"]
    assert "net.ipv4.tcp_fin_timeout = 30\n" in runtime["after"]
    assert persisted["before_header"] == OUR_PATH and persisted["before"] == ""
    assert persisted["after"] == applied["box"].path(OUR_FILE).read_text()
    # and ansible shows it to the user
    assert "runtime (/proc/sys)" in stdout and "+net.ipv4.tcp_fin_timeout = 30" in stdout


def test_second_run_changes_nothing(applied):
    box = applied["box"]
    path = box.path(OUR_FILE)
    before_stat, before = stat(path), box.snapshot()
    result = run(box, task("again", **applied["options"]))["again"]
    assert result["changed"] is False, result
    assert result["before"] == result["after"] == applied["expected"]
    assert stat(path) == before_stat, "file rewritten (inode, mtime or size changed)"
    assert box.snapshot() == before


def test_check_mode_reports_and_writes_nothing(box):
    options, expected = all_options(box)
    box.write_file("10-other.conf", "net.ipv4.tcp_fin_timeout = 45\n")
    before = box.snapshot()
    result = run(box, task("check", **options), check=True, diff=True)["check"]
    assert result["changed"] is True and result["failed"] is False
    assert result["after"] == expected
    assert box.snapshot() == before, "check mode wrote something"
    assert not box.path(OUR_FILE).exists()
    runtime, persisted = result["diff"]
    assert "net.ipv4.tcp_fin_timeout = 60\n" in runtime["before"]
    assert "net.ipv4.tcp_fin_timeout = 30\n" in runtime["after"]
    assert persisted["before_header"] == OUR_PATH and persisted["before"] == ""
    assert persisted["after"].startswith(HEADER_START) and assignments(persisted["after"]) == expected
    assert "runtime (/proc/sys)" in box.last_run.stdout


def test_values_are_compared_by_meaning(box):
    # the kernel prints the range with a tab and merges the reserved ranges it is given
    box.set_sysctl(RESERVED, "40020-40021,40010-40019")
    assert box.sysctl(RANGE) == "32768\t60999" and box.sysctl(RESERVED) == "40010-40021"
    results = run(
        box,
        task("runtime only", port_range="32768 60999", reserved_ports="40010-40021", persist=False),
        task("persist", port_range="32768-60999", reserved_ports=["40010-40021"]),
        task("list forms", port_range=[32768, 60999], reserved_ports=[40021, "40010-40020"]),
        task("tab and split ranges", port_range="32768\t60999", reserved_ports="40016-40021,40010-40015"),
        task("spaces", port_range="  32768 \t 60999 ", reserved_ports=" 40010 - 40021 "),
    )
    assert results["runtime only"]["changed"] is False
    assert results["runtime only"]["persist_file"] is None
    assert results["persist"]["changed"] is True  # the file is new; runtime already right
    assert results["persist"]["before"] == results["persist"]["after"]
    for name in ("list forms", "tab and split ranges", "spaces"):
        assert results[name]["changed"] is False, name
        assert results[name]["failed"] is False, name
    assert assignments(box.read_file(OUR_FILE)) == {RESERVED: "40010-40021", RANGE: "32768 60999"}


# ---------------------------------------------------------------- validation
def _bad(option, fragment, options, setup=None):
    return pytest.param(option, fragment, options, setup or {}, id=option + ":" + json.dumps(options)[:60])


VALIDATION = [
    _bad("port_range", "65535", {"port_range": [1024, 70000]}),
    _bad("port_range", "65535", {"port_range": "0 60999"}),
    _bad("port_range", "must not be above", {"port_range": "40000 30000"}),
    _bad("port_range", "2000", {"port_range": "1500 60999"}, {UNPRIV: "2000"}),
    _bad("port_range", "LOW HIGH", {"port_range": "32768:60999"}),
    _bad("port_range", "LOW HIGH", {"port_range": "low high"}),
    _bad("port_range", "LOW HIGH", {"port_range": [32768, 60999, 61000]}),
    _bad("reserved_ports", "8080", {"reserved_ports": "8080,http"}),
    _bad("reserved_ports", "8080", {"reserved_ports": "80,,8080"}),
    _bad("reserved_ports", "low port", {"reserved_ports": "9100-9000"}),
    _bad("reserved_ports", "65535", {"reserved_ports": [8080, 70000]}),
    _bad("tw_reuse", "0, 1, 2", {"tw_reuse": 3}),
    _bad("tw_reuse", "timestamps", {"tw_reuse": 1}, {STAMPS: "0"}),
    _bad("tw_reuse", "timestamps", {"tw_reuse": 1, "timestamps": 0}),
    _bad("tw_recycle", "4.12", {"tw_recycle": 0}),
    _bad("tw_recycle", "4.12", {"tw_recycle": 1, "fin_timeout": 30}),
    _bad("tw_reuse_delay", "60000", {"tw_reuse_delay": 0}),
    _bad("tw_reuse_delay", "60000", {"tw_reuse_delay": 60001}),
    _bad("timestamps", "0, 1, 2", {"timestamps": 3}),
    _bad("fin_timeout", "86400", {"fin_timeout": 0}),
    _bad("fin_timeout", "86400", {"fin_timeout": 86401}),
    _bad("fin_timeout", "int", {"fin_timeout": "thirty"}),
    _bad("somaxconn", "2147483647", {"somaxconn": 0}),
    _bad("max_syn_backlog", "2147483647", {"max_syn_backlog": 2147483648}),
    _bad("persist_file", "sysctl.d", {"fin_timeout": 30, "persist_file": "{sandbox}/60-tcpstack.conf"}),
    _bad("persist_file", "sysctl.d", {"fin_timeout": 30, "persist_file": "/etc/sysctl.d/sub/60-tcpstack.conf"}),
    _bad("persist_file", "sysctl.d", {"fin_timeout": 30, "persist_file": "/etc/sysctl.d/../sysctl.d/61-x.conf"}),
    _bad("persist_file", "sysctl.d", {"fin_timeout": 30, "persist_file": "/etc/sysctl.d/./61-x.conf"}),
    _bad("persist_file", "/run", {"fin_timeout": 30, "persist_file": "/run/sysctl.d/60-tcpstack.conf"}),
    _bad("persist_file", ".conf", {"fin_timeout": 30, "persist_file": "/etc/sysctl.d/60-tcpstack.cfg"}),
    _bad("persist_file", ".conf", {"fin_timeout": 30, "persist_file": "/etc/sysctl.d/.conf"}),
    _bad("persist_file", "sysctl.d", {"fin_timeout": 30, "persist_file": "60-tcpstack.conf"}),
    _bad("persist_file", "sysctl.d", {"state": "absent", "persist_file": "/etc/sysctl.d/../x.conf"}),
    _bad("on_shadowed", "fail, warn", {"fin_timeout": 30, "on_shadowed": "ignore"}),
    _bad("state", "present, absent", {"state": "gone"}),
]


@pytest.mark.parametrize("option, fragment, options, setup", VALIDATION)
def test_validation_error_names_the_option_and_changes_nothing(box, option, fragment, options, setup):
    # a host with history: our file, another file, and a runtime that differs from both
    box.write_file(OUR_FILE, HEADER_START + " Changes made here by hand are overwritten.\nnet.ipv4.tcp_fin_timeout = 45\n")
    box.write_file("10-other.conf", "net.ipv4.tcp_tw_reuse = 1\n")
    if "persist_file" in options:
        # {sandbox}: /etc/netns/NAME, outside every sysctl.d; were a file written there, file_hashes() shows it
        options = dict(options, persist_file=options["persist_file"].format(sandbox=box.etc_dir))
    for key, value in setup.items():
        assert box.set_sysctl(key, value) == value
    before = box.snapshot()
    result = run(box, task("bad", ignore_errors=True, **options))["bad"]
    assert result["failed"] is True, result
    assert result.get("changed") is False
    assert option in result["msg"], result["msg"]
    assert fragment in result["msg"], result["msg"]
    if "option" in result:  # the module's own validation (not ansible's argument spec)
        assert result["option"] == option
        assert result["msg"].startswith(option + ": ")
    assert box.snapshot() == before, "a refused run changed the host"


# ---------------------------------------------------------------- warnings and listening ports
def test_parity_and_listening_port_warnings_then_reserving_it(box):
    with box.listener(50000):
        results = run(
            box,
            task("same parity", port_range=[32768, 60998]),
            task("wide, listening port inside", port_range=[32768, 65535]),
            task("reserve it", port_range=[32768, 65535], reserve_listening_ports=True),
            task("reserve it again", port_range=[32768, 65535], reserve_listening_ports=True),
        )
        after = box.snapshot()
    parity = results["same parity"]["warnings"]
    assert any("same parity" in w and "32768-60998" in w for w in parity), parity
    assert any("50000" in w and "32768-60998" in w for w in parity), parity
    listening = results["wide, listening port inside"]["warnings"]
    assert any("50000" in w and "reserve_listening_ports" in w for w in listening), listening
    assert not any("same parity" in w for w in listening)
    reserve = results["reserve it"]
    assert reserve["changed"] is True and reserve["after"][RESERVED] == "50000"
    assert not any("listening" in w for w in reserve["warnings"]), reserve["warnings"]
    assert results["reserve it again"]["changed"] is False
    assert after["sysctl"][RESERVED] == "50000"
    assert after["sysctl"][RANGE] == "32768\t65535"
    assert assignments(box.read_file(OUR_FILE))[RESERVED] == "50000"


# ---------------------------------------------------------------- shadowing
def test_later_file_with_another_value_fails_then_warn_applies(box):
    box.write_file("99-zz.conf", "# set by someone else\nnet.ipv4.tcp_fin_timeout = 45\n")
    before = box.snapshot()
    failed = run(box, task("shadowed", ignore_errors=True, fin_timeout=30, tw_reuse=1))["shadowed"]
    assert failed["failed"] is True
    assert "/etc/sysctl.d/99-zz.conf line 2" in failed["msg"] and FIN in failed["msg"], failed["msg"]
    assert "Nothing was changed" in failed["msg"]
    assert box.snapshot() == before, "a refused run changed the host"
    conflicts = {(s["init"], s["key"]): s for s in failed["shadowed"]}
    assert set(conflicts) == {("systemd", FIN), ("procps", FIN)}
    assert all(s["conflicting"] and s["value"] == "45" and s["line"] == 2 for s in conflicts.values())

    warned = run(box, task("warn", fin_timeout=30, tw_reuse=1, on_shadowed="warn"))["warn"]
    assert warned["failed"] is False and warned["changed"] is True
    assert box.sysctl(FIN) == "30" and box.sysctl(REUSE) == "1"
    assert any("99-zz.conf line 2" in w for w in warned["warnings"]), warned["warnings"]
    assert {(s["init"], s["key"], s["conflicting"]) for s in warned["shadowed"]} == {
        ("systemd", FIN, True), ("procps", FIN, True)}
    assert warned["boot_values"][FIN]["systemd"] == {"value": "45", "file": "/etc/sysctl.d/99-zz.conf", "line": 2}
    assert box.read_file("99-zz.conf") == "# set by someone else\nnet.ipv4.tcp_fin_timeout = 45\n"
    assert assignments(box.read_file(OUR_FILE)) == {FIN: "30", REUSE: "1"}


def test_later_file_with_the_same_value_is_reported_not_refused(box):
    # also in the other spellings sysctl.d allows: no spaces, '/' separators, '-' (ignore errors) prefix
    box.write_file("99-zz.conf", "net.ipv4.tcp_fin_timeout=30\n-net/ipv4/tcp_tw_reuse = 1\n")
    result = run(box, task("same value", fin_timeout=30, tw_reuse=1))["same value"]
    assert result["failed"] is False and result["changed"] is True
    assert (box.sysctl(FIN), box.sysctl(REUSE)) == ("30", "1")
    assert sorted((s["init"], s["key"], s["conflicting"], s["file"], s["line"], s["value"])
                  for s in result["shadowed"]) == [
        ("procps", FIN, False, "/etc/sysctl.d/99-zz.conf", 1, "30"),
        ("procps", REUSE, False, "/etc/sysctl.d/99-zz.conf", 2, "1"),
        ("systemd", FIN, False, "/etc/sysctl.d/99-zz.conf", 1, "30"),
        ("systemd", REUSE, False, "/etc/sysctl.d/99-zz.conf", 2, "1"),
    ]
    assert any("same value" in w for w in result["warnings"]), result["warnings"]


def test_etc_sysctl_conf_shadows_for_procps_only(box):
    box.write_sysctl_conf("# the machine's sysctl.conf\nnet.ipv4.tcp_tw_reuse = 1\nnet.ipv4.tcp_fin_timeout = 45\n")
    before = box.snapshot()
    results = run(
        box,
        task("refused", ignore_errors=True, fin_timeout=30, tw_reuse=1),
        task("warned", fin_timeout=30, tw_reuse=1, on_shadowed="warn"),
    )
    refused = results["refused"]
    assert refused["failed"] is True and "/etc/sysctl.conf line 3" in refused["msg"], refused["msg"]
    warned = results["warned"]
    assert warned["failed"] is False and warned["changed"] is True
    assert sorted((s["init"], s["key"], s["conflicting"], s["line"]) for s in warned["shadowed"]) == [
        ("procps", FIN, True, 3), ("procps", REUSE, False, 2)]
    assert warned["boot_values"][FIN]["systemd"]["value"] == "30"
    assert warned["boot_values"][FIN]["procps"] == {"value": "45", "file": "/etc/sysctl.conf", "line": 3}
    assert box.sysctl(FIN) == "30"
    assert box.file_hashes()["sysctl.conf"] == before["files"]["sysctl.conf"]


def test_persist_file_hidden_by_the_same_name_in_an_earlier_directory(box):
    """/etc/sysctl.d/70-web.conf hides /usr/lib/sysctl.d/70-web.conf at boot (the latter is a sandbox dir here)."""
    usr_lib = box.scratch / "usr-lib-sysctl.d"
    usr_lib.mkdir()
    wrapper = box.private_mounts(binds={"/usr/lib/sysctl.d": usr_lib})
    box.write_file("70-web.conf", "# the admin's own\nnet.core.somaxconn = 1024\n")
    before = box.snapshot()
    options = {"somaxconn": 8192, "persist_file": "/usr/lib/sysctl.d/70-web.conf"}
    refused = run(box, task("hidden", ignore_errors=True, **options), wrapper=wrapper)["hidden"]
    assert refused["failed"] is True
    assert "/usr/lib/sysctl.d/70-web.conf is never read at boot" in refused["msg"], refused["msg"]
    assert "/etc/sysctl.d/70-web.conf" in refused["msg"]
    assert box.snapshot() == before, "a refused run changed the host"

    warned = run(box, task("warn", on_shadowed="warn", **options), wrapper=wrapper)["warn"]
    assert warned["failed"] is False and warned["changed"] is True
    assert any("never read at boot" in w for w in warned["warnings"]), warned["warnings"]
    assert box.sysctl(SOMAXCONN) == "8192"
    assert assignments((usr_lib / "70-web.conf").read_text()) == {SOMAXCONN: "8192"}
    assert box.read_file("70-web.conf") == "# the admin's own\nnet.core.somaxconn = 1024\n"


# ---------------------------------------------------------------- rollback
def test_failing_key_rolls_back_the_keys_already_written(box):
    """somaxconn is written 7th; making it fail leaves the six before it to be restored."""
    options, _expected = all_options(box)
    box.write_file(OUR_FILE, HEADER_START + " Changes made here by hand are overwritten.\nnet.ipv4.tcp_fin_timeout = 60\n")
    before = box.snapshot()
    wrapper = box.readonly_sysctl_wrapper(SOMAXCONN, before["sysctl"][SOMAXCONN])
    result = run(box, task("somaxconn fails", ignore_errors=True, **options), wrapper=wrapper)["somaxconn fails"]
    assert result["failed"] is True
    msg = result["msg"]
    assert SOMAXCONN in msg and "Read-only file system" in msg, msg
    written = [FIN, RESERVED, RANGE, REUSE] + ([DELAY] if "tw_reuse_delay" in options else [])
    assert "restored %s to their previous values" % ", ".join(written) in msg, msg
    assert "persisted file is unchanged" in msg
    assert box.snapshot() == before, "keys written before the failure were not restored, or the file changed"


def test_unwritable_sysctl_d_rolls_back_every_key(box):
    """The file is written after all the keys: when it cannot be, every key gets its old value back."""
    options, expected = all_options(box)
    before = box.snapshot()
    wrapper = box.private_mounts(readonly=["/etc/sysctl.d"])
    result = run(box, task("read-only sysctl.d", ignore_errors=True, **options), wrapper=wrapper)[
        "read-only sysctl.d"]
    assert result["failed"] is True
    msg = result["msg"]
    assert "/etc/sysctl.d" in msg and "Read-only file system" in msg, msg
    changed = [key for key in APPLY_ORDER if key in expected and canon(key, before["sysctl"][key]) != expected[key]]
    assert "restored %s to their previous values" % ", ".join(changed) in msg, msg
    assert box.snapshot() == before, "runtime not restored after the file failed"

    # state=absent: the file cannot be removed, so the keys it restored get the tuned values back
    assert run(box, task("apply", **options))["apply"]["changed"] is True
    tuned = box.snapshot()
    result = run(box, task("absent, read-only", ignore_errors=True, state="absent"), wrapper=wrapper)[
        "absent, read-only"]
    assert result["failed"] is True and "Read-only file system" in result["msg"], result
    assert box.snapshot() == tuned, "state=absent half done"


# ---------------------------------------------------------------- overlapping runs
def test_overlapping_runs_leave_runtime_and_file_in_agreement(box):
    runs = 5
    outcomes = box.run_playbooks_at_once([
        play(task("run %d" % i, fin_timeout=31 + i, port_range=[32768 + 2 * i, 60999], somaxconn=5000 + i,
                  reserved_ports=str(41000 + i)))
        for i in range(runs)], timeout=180)
    for i, (rc, results) in enumerate(outcomes):
        assert rc == 0 and results and results[0]["failed"] is False, (i, results)
    persisted = assignments(box.read_file(OUR_FILE))
    now = box.sysctls()
    for key, value in persisted.items():
        assert canon(key, now[key]) == value, (key, now[key], value)
    winner = int(persisted[FIN]) - 31
    assert persisted == {FIN: str(31 + winner), RESERVED: str(41000 + winner),
                         RANGE: "%d 60999" % (32768 + 2 * winner), SOMAXCONN: str(5000 + winner)}
    assert set(box.file_hashes()) == {"sysctl.d/" + OUR_FILE}, "a temporary file was left behind"


# ---------------------------------------------------------------- state: absent
def test_absent_restores_defaults_or_another_files_value(box):
    defaults = box.sysctls()
    box.write_file("10-other.conf", "net.ipv4.tcp_fin_timeout = 45\n")
    results = run(
        box,
        task("apply", fin_timeout=30, port_range=[32768, 65535], tw_reuse=1, somaxconn=8192,
             reserved_ports="40000"),
        task("absent, checked", state="absent", check_mode=True),
        task("absent", state="absent"),
        task("absent again", state="absent"),
        diff=True,
    )
    assert results["apply"]["changed"] is True
    checked = results["absent, checked"]
    assert checked["changed"] is True and checked["after"][FIN] == "45"
    absent = results["absent"]
    assert absent["changed"] is True and absent["failed"] is False
    assert absent["before"] == {FIN: "30", RESERVED: "40000", RANGE: "32768 65535", REUSE: "1", SOMAXCONN: "8192"}
    assert absent["after"] == {FIN: "45", RESERVED: "", RANGE: "32768 60999", REUSE: "2", SOMAXCONN: "4096"}
    assert absent["boot_values"][FIN]["systemd"]["file"] == "/etc/sysctl.d/10-other.conf"
    assert absent["diff"][1]["after"] == "" and absent["diff"][1]["before"].startswith(HEADER_START)
    assert results["absent again"]["changed"] is False
    assert not box.path(OUR_FILE).exists()
    assert set(box.file_hashes()) == {"sysctl.d/10-other.conf"}
    expected = dict(defaults, **{FIN: "45"})
    assert box.sysctls() == expected, "not back to the kernel defaults (and 10-other.conf's value)"


def test_absent_with_nothing_there_changes_nothing(box):
    before = box.snapshot()
    result = run(box, task("absent", state="absent"))["absent"]
    assert result["changed"] is False and result["failed"] is False
    assert box.snapshot() == before


# ---------------------------------------------------------------- tw_reuse_delay
def test_tw_reuse_delay(box):
    result = run(box, task("delay", ignore_errors=True, tw_reuse=1, tw_reuse_delay=250))["delay"]
    if has_delay(box):  # Linux 6.14 and later
        assert result["failed"] is False and result["changed"] is True, result
        assert box.sysctl(DELAY) == "250" and box.sysctl(REUSE) == "1"
        assert assignments(box.read_file(OUR_FILE)) == {REUSE: "1", DELAY: "250"}
    else:
        assert result["failed"] is True and DELAY in result["msg"] and "6.14" in result["msg"], result
        assert not box.path(OUR_FILE).exists()


# ---------------------------------------------------------------- limits and ordering on the real kernel
def test_documented_limits_are_accepted_by_the_kernel(box):
    delay = has_delay(box)
    upper = {"fin_timeout": 86400, "somaxconn": 2147483647, "max_syn_backlog": 2147483647,
             "port_range": [1024, 65535], "reserved_ports": "65535"}
    lower = {"fin_timeout": 1, "somaxconn": 1, "max_syn_backlog": 1, "port_range": "65535-65535",
             "reserved_ports": ""}
    if delay:
        upper["tw_reuse_delay"], lower["tw_reuse_delay"] = 60000, 1
    results = run(box, task("upper", **upper), task("lower", **lower))
    assert results["upper"]["failed"] is False, results["upper"].get("msg")
    assert results["upper"]["after"][RANGE] == "1024 65535"
    assert results["lower"]["failed"] is False, results["lower"].get("msg")
    now = box.sysctls()
    assert (now[FIN], now[SOMAXCONN], now[SYN], now[RANGE], now[RESERVED]) == ("1", "1", "1", "65535\t65535", "")
    if delay:
        assert now[DELAY] == "1"
    assert assignments(box.read_file(OUR_FILE))[RESERVED] == ""


def test_tw_reuse_with_timestamps_turned_on_in_the_same_task(box):
    box.set_sysctl(STAMPS, "0")
    results = run(box, task("both", tw_reuse=1, timestamps=1), task("timestamps off again", timestamps=0))
    both = results["both"]
    assert both["failed"] is False, both.get("msg")
    assert list(both["after"]) == [STAMPS, REUSE]  # timestamps first
    off = results["timestamps off again"]
    assert off["failed"] is False and off["changed"] is True
    assert any("reuse inactive" in w for w in off["warnings"]), off["warnings"]
    assert (box.sysctl(STAMPS), box.sysctl(REUSE)) == ("0", "1")


# ---------------------------------------------------------------- known module bugs (last, so that -x runs the rest)
MERGED_USR = os.path.realpath("/lib/sysctl.d") == os.path.realpath("/usr/lib/sysctl.d")


@pytest.mark.skipif(not MERGED_USR, reason="needs a merged /usr, where /lib/sysctl.d is /usr/lib/sysctl.d")
def test_persist_file_in_lib_sysctl_d_on_merged_usr(box):
    """On a merged /usr (Debian 12, Fedora, Ubuntu...) /lib/sysctl.d/X and /usr/lib/sysctl.d/X are one file.

    persist_file /lib/sysctl.d/X is valid (documented), but the module reads
    the file a second time under its /usr/lib name and takes it for another
    file: the second run fails saying the file hides itself, and state=absent
    "restores" the values of the file it has just removed.
    """
    usr_lib = box.scratch / "usr-lib-sysctl.d"
    usr_lib.mkdir()
    wrapper = box.private_mounts(binds={"/usr/lib/sysctl.d": usr_lib})
    path = "/lib/sysctl.d/60-tcpstack-tuning.conf"
    results = run(
        box,
        task("first", fin_timeout=30, persist_file=path),
        task("second", ignore_errors=True, fin_timeout=30, persist_file=path),
        task("absent", ignore_errors=True, state="absent", persist_file=path),
        wrapper=wrapper,
    )
    assert results["first"]["changed"] is True and results["first"]["failed"] is False
    problems = []
    second = results["second"]
    if second["failed"] or second["changed"]:
        problems.append("second identical run: failed=%s changed=%s msg=%r"
                        % (second["failed"], second["changed"], second.get("msg")))
    absent = results["absent"]
    if box.sysctl(FIN) != "60":
        problems.append("state=absent left %s at %s (after=%r), not the kernel default 60"
                        % (FIN, box.sysctl(FIN), absent.get("after")))
    assert not (usr_lib / "60-tcpstack-tuning.conf").exists()
    assert not problems, "\n".join(problems)
