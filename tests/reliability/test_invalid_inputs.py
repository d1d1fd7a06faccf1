"""Issue 8: a table of invalid inputs, each refused with a message naming the option and what is valid,
and the host unchanged byte for byte.

Everything goes through real ansible-playbook, batched: one run for every Linux case (module options and
role variables) inside one throwaway network namespace, one run for every Windows case against one
simulator.  On Linux a fingerprint task after each case (runtime values of the TCP keys, sha256 of every
file in /etc/sysctl.d, /etc/sysctl.conf and a scratch directory, as seen inside the namespace) is compared
with the one taken before it.  On Windows every case must leave the simulator's registry, dynamic and
excluded ranges and boot values as they were, and no command that changes anything (reg add, reg delete,
netsh set) may have run.
"""

from __future__ import annotations

import json
import re

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_sysctl_d import render
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_tuning import HEADER

from tests.support.fleet import run_fleet
from tests.support.netns import TCP_KEYS, Sandbox, python_interpreter
from tests.support.windows_sim import Simulator

LINUX = "tcpstack.tuning.linux_tcp"
WIN = "tcpstack.tuning.win_tcp"
ROLE = "tcpstack.tuning.tcp_tuning"
OUR_FILE = "60-tcpstack-tuning.conf"
EARLIER_RUN = render({"net.ipv4.tcp_fin_timeout": "45"}, HEADER)


_FINGERPRINT = r"""
import hashlib, json, os, sys
keys, paths = json.loads(sys.argv[1]), sys.argv[2:]
out = {"sysctl": {}, "files": {}}
for key in keys:
    try:
        with open("/proc/sys/" + key.replace(".", "/")) as handle:
            out["sysctl"][key] = handle.read()
    except OSError as exc:
        out["sysctl"][key] = "error %s" % exc.errno
for top in paths:
    items = [top] if os.path.isfile(top) else [os.path.join(d, n) for d, _s, names in os.walk(top) for n in names]
    for path in sorted(items):
        with open(path, "rb") as handle:
            out["files"][path] = hashlib.sha256(handle.read()).hexdigest()
        out["files"][path] += " %o" % (os.stat(path).st_mode & 0o7777)
print(json.dumps(out, sort_keys=True))
"""


def case(cid, options, option, fragment, marks=(), kind="module"):
    """One invalid input: ``options`` (module options, or role variables when kind == "role"); the message
    must contain ``option`` (a name, or a tuple of acceptable names) and ``fragment`` (what is valid)."""
    return pytest.param(cid, kind, options, option, fragment, marks=marks, id=cid)


NONASCII_30 = "\u0663\u0660"  # Arabic-Indic "30"
FULLWIDTH_1024 = "\uff11\uff10\uff12\uff14"

LINUX_CASES = [
    # wrong types
    case("fin_timeout-word", {"fin_timeout": "thirty"}, "fin_timeout", "int"),
    case("fin_timeout-float", {"fin_timeout": 30.5}, "fin_timeout", "int"),
    case("fin_timeout-list", {"fin_timeout": [30]}, "fin_timeout", "int"),
    case("somaxconn-dict", {"somaxconn": {"value": 1024}}, "somaxconn", "int"),
    case("timestamps-word", {"timestamps": "on"}, "timestamps", "one of 0, 1, 2"),
    case("port_range-bool", {"port_range": True}, "port_range", "LOW HIGH"),
    case("port_range-dict", {"port_range": {"low": 32768, "high": 60999}}, "port_range", "LOW HIGH"),
    case("reserved_ports-dict", {"reserved_ports": {"8080": 1}}, "reserved_ports", "comma-separated"),
    # out of range, negative, huge
    case("fin_timeout-zero", {"fin_timeout": 0}, "fin_timeout", "from 1 to 86400"),
    case("fin_timeout-negative", {"fin_timeout": -1}, "fin_timeout", "from 1 to 86400"),
    case("fin_timeout-huge", {"fin_timeout": 10 ** 30}, "fin_timeout", "from 1 to 86400"),
    case("somaxconn-2^31", {"somaxconn": 2147483648}, "somaxconn", "2147483647"),
    case("max_syn_backlog-negative", {"max_syn_backlog": -5}, "max_syn_backlog", "2147483647"),
    case("tw_reuse-3", {"tw_reuse": 3}, "tw_reuse", "0, 1, 2"),
    case("tw_reuse_delay-0", {"tw_reuse_delay": 0}, "tw_reuse_delay", "60000"),
    case("tw_recycle", {"tw_recycle": 0}, "tw_recycle", "tw_reuse"),
    # port ranges
    case("port_range-inverted", {"port_range": "40000 30000"}, "port_range", "must not be above"),
    case("port_range-above-65535", {"port_range": [1024, 70000]}, "port_range", "1 to 65535"),
    case("port_range-zero", {"port_range": "0 60999"}, "port_range", "1 to 65535"),
    case("port_range-negative", {"port_range": [-1, 60999]}, "port_range", "1 to 65535"),
    case("port_range-one-port", {"port_range": [32768]}, "port_range", "LOW HIGH"),
    case("port_range-three-ports", {"port_range": "32768 60999 61000"}, "port_range", "LOW HIGH"),
    case("port_range-newline", {"port_range": "32768\n60999"}, "port_range", "LOW HIGH"),
    case("port_range-tab-inside-number", {"port_range": "327\t68 60999"}, "port_range", "LOW HIGH"),
    case("port_range-quotes", {"port_range": "'32768' '60999'"}, "port_range", "LOW HIGH"),
    case("port_range-shell", {"port_range": "32768 60999; reboot"}, "port_range", "LOW HIGH"),
    case("port_range-subshell", {"port_range": "$(reboot) 60999"}, "port_range", "LOW HIGH"),
    case("port_range-fullwidth", {"port_range": "\uff13\uff12\uff17\uff16\uff18 60999"}, "port_range", "LOW HIGH"),
    # reserved-port lists
    case("reserved_ports-word", {"reserved_ports": "8080,http"}, "reserved_ports", "comma-separated"),
    case("reserved_ports-empty-item", {"reserved_ports": "80,,8080"}, "reserved_ports", "comma-separated"),
    case("reserved_ports-inverted", {"reserved_ports": "9100-9000"}, "reserved_ports", "low port"),
    case("reserved_ports-above-65535", {"reserved_ports": [8080, 70000]}, "reserved_ports", "1 to 65535"),
    case("reserved_ports-negative", {"reserved_ports": [-1]}, "reserved_ports", "1 to 65535"),
    case("reserved_ports-semicolon", {"reserved_ports": "8080;9000"}, "reserved_ports", "comma-separated"),
    case("reserved_ports-newline", {"reserved_ports": "8080\n9000"}, "reserved_ports", "comma-separated"),
    case("reserved_ports-backticks", {"reserved_ports": "`id`,8080"}, "reserved_ports", "comma-separated"),
    case("reserved_ports-quotes", {"reserved_ports": "8080,\"9000\""}, "reserved_ports", "comma-separated"),
    case("reserved_ports-bool-item", {"reserved_ports": [True]}, "reserved_ports", "comma-separated"),
    # persist_file
    case("persist_file-dotdot", {"fin_timeout": 30, "persist_file": "/etc/sysctl.d/../sysctl.d/61-x.conf"},
         "persist_file", "sysctl.d"),
    case("persist_file-escape", {"fin_timeout": 30, "persist_file": "/etc/sysctl.d/../../tmp/61-x.conf"},
         "persist_file", "sysctl.d"),
    case("persist_file-outside", {"fin_timeout": 30, "persist_file": "{scratch}/60-x.conf"}, "persist_file", "sysctl.d"),
    case("persist_file-relative", {"fin_timeout": 30, "persist_file": "60-x.conf"}, "persist_file", "sysctl.d"),
    case("persist_file-shell-name", {"fin_timeout": 30, "persist_file": "/etc/sysctl.d/60-x;rm -rf x.conf"},
         "persist_file", "letters, digits"),
    case("persist_file-newline", {"fin_timeout": 30, "persist_file": "/etc/sysctl.d/60-x\n.conf"},
         "persist_file", "letters, digits"),
    case("persist_file-absent-dotdot", {"state": "absent", "persist_file": "/etc/sysctl.d/../x.conf"},
         "persist_file", "sysctl.d"),
    # unknown keys and choices
    case("unknown-option", {"fin_timeout": 30, "fin_timeuot": 30}, "fin_timeuot", "Supported parameters"),
    case("state-choice", {"state": "gone"}, "state", "present, absent"),
    case("on_shadowed-choice", {"fin_timeout": 30, "on_shadowed": "ignore"}, "on_shadowed", "fail, warn"),
    # non-ASCII digits and other number spellings: refused by strict_int (the module takes them as raw, not as Ansible ints)
    case("fin_timeout-arabic-indic", {"fin_timeout": NONASCII_30}, "fin_timeout", "from 1 to 86400"),
    case("somaxconn-fullwidth", {"somaxconn": FULLWIDTH_1024}, "somaxconn", "2147483647"),
    case("fin_timeout-exponent", {"fin_timeout": "3e1"}, "fin_timeout", "from 1 to 86400"),
    # issue 13: digit strings over 4,300 characters, and the line that took ports.parse_port_range 46.9 s
    case("somaxconn-5000-digits", {"somaxconn": "1" * 5000}, "somaxconn", "(5000 characters) is not valid"),
    case("fin_timeout-5000-digits", {"fin_timeout": "9" * 5000}, "fin_timeout", "from 1 to 86400"),
    case("reserved_ports-5000-digits", {"reserved_ports": "1" * 5000}, "reserved_ports", "1 to 65535"),
    case("port_range-64000-blanks", {"port_range": "1" + " " * 64000 + "x"}, "port_range", "at most 256 characters"),
    # role variables (tcp_tuning), Linux host
    case("role-time_wait-word", {"tcp_tuning_time_wait": "thirty"}, "tcp_tuning_time_wait", "int", kind="role"),
    case("role-time_wait-zero", {"tcp_tuning_time_wait": 0}, ("tcp_tuning_time_wait", "fin_timeout"), "86400",
         kind="role"),
    case("role-port_range-inverted", {"tcp_tuning_port_range": "40000 30000"}, ("tcp_tuning_port_range", "port_range"),
         "must not be above", kind="role"),
    case("role-port_range-three", {"tcp_tuning_port_range": [1, 2, 3]}, ("tcp_tuning_port_range", "port_range"),
         "LOW HIGH", kind="role"),
    case("role-reserved-shell", {"tcp_tuning_reserved_ports": ["80;reboot"]},
         ("tcp_tuning_reserved_ports", "reserved_ports"), "comma-separated", kind="role"),
    case("role-reserved-dict", {"tcp_tuning_reserved_ports": {"a": 1}}, "tcp_tuning_reserved_ports", "list",
         kind="role"),
    case("role-tw_reuse-word", {"tcp_tuning_tw_reuse": "maybe"}, "tcp_tuning_tw_reuse", "bool", kind="role"),
    case("role-state", {"tcp_tuning_state": "gone"}, "tcp_tuning_state", "present, absent", kind="role"),
    case("role-platform", {"tcp_tuning_platform": "bsd"}, "tcp_tuning_platform", "auto, linux, windows", kind="role"),
    case("role-reboot", {"tcp_tuning_reboot": "always"}, "tcp_tuning_reboot", "never, if_required", kind="role"),
    case("role-linux-unknown-key", {"tcp_tuning_linux": {"bogus": 1}}, "tcp_tuning_linux.bogus", "not an option of the module",
         kind="role"),
    case("role-linux-tw_reuse", {"tcp_tuning_linux": {"tw_reuse": 5}}, "tw_reuse", "0, 1, 2", kind="role"),
    case("role-linux-persist-dotdot", {"tcp_tuning_linux": {"persist_file": "/etc/sysctl.d/../x.conf"}},
         "persist_file", "sysctl.d", kind="role"),
    case("role-linux-not-dict", {"tcp_tuning_linux": ["somaxconn"]}, "tcp_tuning_linux", "dict", kind="role"),
    case("role-time_wait-arabic-indic", {"tcp_tuning_time_wait": NONASCII_30}, ("tcp_tuning_time_wait", "fin_timeout"),
         "86400", kind="role"),
]

WIN_CASES = [
    case("w-time_wait-word", {"time_wait_delay": "thirty"}, "time_wait_delay", "from 2 to 300"),
    case("w-time_wait-1", {"time_wait_delay": 1}, "time_wait_delay", "from 2 to 300"),
    case("w-time_wait-301", {"time_wait_delay": 301}, "time_wait_delay", "from 2 to 300"),
    case("w-time_wait-negative", {"time_wait_delay": -30}, "time_wait_delay", "from 2 to 300"),
    case("w-time_wait-huge", {"time_wait_delay": 10 ** 20}, "time_wait_delay", "from 2 to 300"),
    case("w-time_wait-float", {"time_wait_delay": 30.5}, "time_wait_delay", "from 2 to 300"),
    case("w-time_wait-arabic-indic", {"time_wait_delay": NONASCII_30}, "time_wait_delay", "from 2 to 300"),
    case("w-time_wait-exponent", {"time_wait_delay": "3e1"}, "time_wait_delay", "from 2 to 300"),
    case("w-time_wait-powershell", {"time_wait_delay": "30; Restart-Computer"}, "time_wait_delay", "from 2 to 300"),
    case("w-time_wait-tab-inside", {"time_wait_delay": "3\t0"}, "time_wait_delay", "from 2 to 300"),
    case("w-max_user_port-low", {"max_user_port": 4999}, "max_user_port", "from 5000 to 65534"),
    case("w-max_user_port-65535", {"max_user_port": 65535}, "max_user_port", "from 5000 to 65534"),
    case("w-max_user_port-bool", {"max_user_port": True}, "max_user_port", "from 5000 to 65534"),
    case("w-max_user_port-subexpression", {"max_user_port": "$(Stop-Computer)"}, "max_user_port", "from 5000 to 65534"),
    case("w-port_range-254-ports", {"port_range": "65282 65535"}, "port_range", "fewer than 255"),
    case("w-port_range-10-ports", {"port_range": [50000, 50009]}, "port_range", "fewer than 255"),
    case("w-port_range-start-1024", {"port_range": [1024, 65535]}, "port_range", "below 1025"),
    case("w-port_range-beyond-65535", {"port_range": "60000 70000"}, "port_range", "1 to 65535"),
    case("w-port_range-inverted", {"port_range": "50000 40000"}, "port_range", "must not be above"),
    case("w-port_range-backtick", {"port_range": "10000-20000`nnetsh"}, "port_range", "LOW HIGH"),
    case("w-port_range-quote-injection",
         {"port_range": "10000 20000'; netsh int ipv4 set dynamicport tcp start=1025 num=255; '"},
         "port_range", "LOW HIGH"),
    case("w-port_range-newline", {"port_range": "49152\n65535"}, "port_range", "LOW HIGH"),
    case("w-protocols-sctp", {"protocols": ["tcp", "sctp"]}, "protocols", "tcp, udp"),
    case("w-protocols-empty", {"protocols": []}, "protocols", "tcp, udp"),
    case("w-ip_versions-injection", {"ip_versions": ["ipv4; reg delete HKLM\\SYSTEM /f"]}, "ip_versions", "ipv4, ipv6"),
    case("w-ip_versions-ipv5", {"ip_versions": "ipv5"}, "ip_versions", "ipv4, ipv6"),
    case("w-state", {"state": "gone"}, "state", "present or absent"),
    case("w-unknown-option", {"time_wait_delay": 30, "time_wait": 30}, "time_wait", "options are"),
    # role variables (tcp_tuning), Windows host
    case("w-role-port_range-254", {"tcp_tuning_port_range": "65282 65535"}, ("tcp_tuning_port_range", "port_range"),
         "fewer than 255", kind="role"),
    case("w-role-time_wait-1", {"tcp_tuning_time_wait": 1}, ("tcp_tuning_time_wait", "time_wait_delay"),
         "from 2 to 300", kind="role"),
    case("w-role-windows-max_user_port", {"tcp_tuning_windows": {"max_user_port": 70000}}, "max_user_port",
         "from 5000 to 65534", kind="role"),
    case("w-role-windows-protocols", {"tcp_tuning_windows": {"protocols": ["icmp"]}}, "protocols", "tcp, udp",
         kind="role"),
    case("w-role-windows-unknown-key", {"tcp_tuning_windows": {"bogus": 1}}, "tcp_tuning_windows.bogus", "not an option of the module",
         kind="role"),
    case("w-role-time_wait-word", {"tcp_tuning_time_wait": "thirty"}, "tcp_tuning_time_wait", "int", kind="role"),
]

# Windows, issues 13 (digit strings over 4,300 characters) and 15 (excluded_ranges): H3's cases
WIN_CASES_EXCLUDED = [
    case("w-time_wait-5000-digits", {"time_wait_delay": "1" * 5000}, "time_wait_delay", "from 2 to 300"),
    case("w-max_user_port-5000-digits", {"max_user_port": "9" * 5000}, "max_user_port", "from 5000 to 65534"),
    case("w-excluded-overlapping", {"excluded_ranges": ["50000-50099", "50050-50149"]}, "excluded_ranges",
         "overlaps 50050-50149"),
    case("w-excluded-port-0", {"excluded_ranges": [0]}, "excluded_ranges", "from 1 to 65535"),
    case("w-excluded-beyond-65535", {"excluded_ranges": ["65500-65600"]}, "excluded_ranges", "1 to 65535"),
    case("w-excluded-5000-digits", {"excluded_ranges": ["1" * 5000]}, "excluded_ranges", "from 1 to 65535"),
    case("w-excluded-injection", {"excluded_ranges": ["50000-50099'; netsh int ipv4 delete excludedportrange"]},
         "excluded_ranges", "a list of at most 100"),
    case("w-excluded-dict", {"excluded_ranges": {"start": 50000}}, "excluded_ranges", "a list of at most 100"),
    case("w-excluded-too-many", {"excluded_ranges": list(range(1000, 1101))}, "excluded_ranges", "at most 100"),
    case("w-role-windows-excluded", {"tcp_tuning_windows": {"excluded_ranges": ["x"]}},
         ("tcp_tuning_windows.excluded_ranges", "excluded_ranges"), "a list of at most 100", kind="role"),
]
WIN_CASES = WIN_CASES + WIN_CASES_EXCLUDED


def _values(params):
    return [p.values for p in params]


def _tasks(cases, module, fingerprint=None, subst=None):
    """Playbook tasks: per case a marker, the case (ignore_errors / rescue), and optionally a fingerprint."""
    tasks = []
    if fingerprint:
        tasks.append(dict(fingerprint, name="fingerprint before 0"))
    for index, (cid, kind, options, _option, _fragment) in enumerate(cases):
        options = json.loads(json.dumps(options).replace("{scratch}", subst or "")) if subst else options
        tasks.append({"name": "begin %d %s" % (index, cid), "ansible.builtin.debug": {"msg": cid}})
        if kind == "module":
            tasks.append({"name": "case %d" % index, module: options, "ignore_errors": True})
        else:
            tasks.append({"name": "case %d" % index, "block": [
                {"name": "case %d role" % index, "ansible.builtin.include_role": {"name": ROLE}, "vars": options}],
                "rescue": [{"name": "rescued %d" % index, "ansible.builtin.debug": {"msg": "rescued"}}]})
        if fingerprint:
            tasks.append(dict(fingerprint, name="fingerprint after %d" % index))
    return tasks


def _by_case(results, count):
    """{case index: [results of the case's own tasks]} and {index: fingerprint after} from the ordered results."""
    per_case, prints, current = {}, {}, None
    for result in results:
        name = result["_task"]
        match = re.match(r"(?:.*: )?begin (\d+) ", name)
        if match:
            current = int(match.group(1))
            per_case[current] = []
            continue
        match = re.fullmatch(r"fingerprint (before|after) (\d+)", name)
        if match:
            key = -1 if match.group(1) == "before" else int(match.group(2))
            prints[key] = json.loads(result["stdout"])
            continue
        if current is not None and not name.startswith("rescued"):
            per_case[current].append(result)
    assert set(per_case) == set(range(count)), sorted(per_case)
    return per_case, prints


def _check_refused(results, option, fragment):
    """The case failed, changed nothing, and its message names the option and what is valid."""
    assert results, "no task result for the case"
    failed = [r for r in results if r["failed"]]
    assert failed, "the invalid input was accepted: %s" % json.dumps(results, default=str)[:1500]
    assert not any(r.get("changed") for r in results), results
    msg = failed[-1].get("msg", "")
    names = option if isinstance(option, tuple) else (option,)
    assert any(name in msg for name in names), "message does not name %s: %s" % (names, msg)
    assert fragment in msg, "message does not say what is valid (%r): %s" % (fragment, msg)
    return msg


# ---------------------------------------------------------------- Linux
@pytest.fixture(scope="module")
def linux_run(root_netns, figures):  # pylint: disable=unused-argument
    box = Sandbox.new()
    try:
        box.create()
        box.write_file(OUR_FILE, EARLIER_RUN)  # what an earlier run wrote: our header, then the keys
        box.write_file("10-other.conf", "net.ipv4.tcp_tw_reuse = 1\n")
        box.write_sysctl_conf("# the machine's own\nnet.ipv4.tcp_keepalive_time = 7200\n")
        (box.scratch / "keep.txt").write_text("scratch\n")
        box.set_sysctl("net.ipv4.tcp_fin_timeout", "50")
        fingerprint = {"ansible.builtin.command": {"argv": [
            python_interpreter(), "-c", _FINGERPRINT, json.dumps(list(TCP_KEYS)), "/etc/sysctl.d", "/etc/sysctl.conf",
            str(box.scratch)]}, "changed_when": False}
        cases = _values(LINUX_CASES)
        names_before = set(box.file_hashes())
        play = [{"name": "invalid inputs", "hosts": "all", "gather_facts": False,
                 "vars": {"tcp_tuning_platform": "linux"},
                 "tasks": _tasks(cases, LINUX, fingerprint, subst=str(box.scratch))}]
        _rc, results = box.run_playbook(json.dumps(play, indent=1), timeout=600)
        per_case, prints = _by_case(results, len(cases))
        figures.note("invalid_inputs_linux", playbook_runs=1, seconds=round(box.last_run.seconds, 1))
        yield {"cases": per_case, "prints": prints, "names_before": names_before, "names_after": set(box.file_hashes()),
               "log": box.last_run}
    finally:
        box.destroy()


@pytest.mark.parametrize("cid, kind, options, option, fragment", LINUX_CASES)
def test_linux_invalid_input(linux_run, figures, cid, kind, options, option, fragment):  # pylint: disable=unused-argument
    index = [p.values[0] for p in LINUX_CASES].index(cid)
    figures.add("invalid_inputs", tried=1, linux=1, role=int(kind == "role"))
    _check_refused(linux_run["cases"][index], option, fragment)
    assert linux_run["prints"][index] == linux_run["prints"][index - 1 if index else -1], "the host changed"
    figures.add("invalid_inputs", refused_clearly=1, host_unchanged=1)


def test_linux_no_file_appeared(linux_run):
    """No case left a file anywhere in /etc/netns/NAME or the scratch directory (temporary files included)."""
    assert linux_run["names_after"] == linux_run["names_before"]


# ---------------------------------------------------------------- Windows
MUTATING = re.compile(r"\b(reg(\.exe)?\"?\s+(add|delete)|netsh\b.*\b(set|add|delete)\b)", re.IGNORECASE)


@pytest.fixture(scope="module")
def windows_run(figures):
    with Simulator(profile="server2022", language="en-US") as sim:
        sim.host.set_registry("TcpTimedWaitDelay", "REG_DWORD", 60)
        sim.host.set_dynamic_range(20000, 20000, ip="ipv4", proto="tcp")
        before = sim.host.snapshot()
        cases = _values(WIN_CASES)
        play = [{"name": "invalid inputs", "hosts": "all", "gather_facts": False, "tasks": _tasks(cases, WIN)}]
        _rc, results, output = run_fleet({}, {"win": sim}, json.dumps(play, indent=1))
        per_case, _prints = _by_case(results, len(cases))
        figures.note("invalid_inputs_windows", playbook_runs=1)
        yield {"cases": per_case, "before": before, "after": sim.host.snapshot(), "log": list(sim.log),
               "round_trips": sim.round_trips, "output": output}


@pytest.mark.parametrize("cid, kind, options, option, fragment", WIN_CASES)
def test_windows_invalid_input(windows_run, figures, cid, kind, options, option, fragment):  # pylint: disable=unused-argument
    index = [p.values[0] for p in WIN_CASES].index(cid)
    figures.add("invalid_inputs", tried=1, windows=1, role=int(kind == "role"))
    results = windows_run["cases"][index]
    _check_refused(results, option, fragment)
    for result in results:
        if result.get("_action", "").endswith("win_tcp"):
            assert result.get("round_trips") in (None, 0), "an invalid input reached the host: %s" % result
    figures.add("invalid_inputs", refused_clearly=1, host_unchanged=1)


def test_windows_host_unchanged_and_nothing_applied(windows_run):
    assert windows_run["after"] == windows_run["before"], "the simulated host changed"
    changing = [line for line in windows_run["log"] if MUTATING.search(str(line))]
    assert not changing, changing
    # every case is refused before the connection is used
    assert windows_run["round_trips"] == 0, windows_run["log"]
