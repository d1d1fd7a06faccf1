"""win_tcp against the Windows host simulator: real ansible-playbook, real pywinrm, real WS-Management.

Each test starts a simulator (tests/support/windows_sim) on 127.0.0.1 and runs
ansible-playbook with ``ansible_connection: winrm`` (Basic over http) against
it.  Assertions read the emulated host's state and the simulator's count of
round trips.  No root needed; nothing here ever skips.
"""

from __future__ import annotations

import json
import socket
import time

import pytest

from tests.support.fleet import run_fleet
from tests.support.windows_sim import PASSWORD, USER, Simulator

MODULE = "tcpstack.tuning.win_tcp"
DEFAULT = (49152, 16384)


def task(name, ignore_errors=False, check_mode=None, diff=None, ignore_unreachable=False, **options):
    out = {"name": name, MODULE: options}
    if ignore_errors:
        out["ignore_errors"] = True
    if ignore_unreachable:
        out["ignore_unreachable"] = True
    if check_mode is not None:
        out["check_mode"] = check_mode
    if diff is not None:
        out["diff"] = diff
    return out


WINRM_TIMEOUTS = {"ansible_winrm_operation_timeout_sec": 20, "ansible_winrm_read_timeout_sec": 30}


def run_play(sim, *tasks, timeout=180, roles=None, **inventory):
    """Run the tasks (after the roles, if any) against the simulator ``sim`` (host "win"), over WinRM, or over its
    SSH endpoint with ``ssh_key=`` (test_win_ssh.py; ``inventory``: arguments for fleet_hosts()); returns
    {task name: result}."""
    play = {"name": "win_tcp", "hosts": "all", "gather_facts": False, "tasks": list(tasks)}
    if roles:
        play["roles"] = list(roles)
    if inventory.get("ssh_key") is None:
        inventory.setdefault("simulator_vars", WINRM_TIMEOUTS)
    rc, results, output = run_fleet({}, {"win": sim}, json.dumps([play], indent=1), timeout=timeout, **inventory)
    by_name = {r["_task"]: r for r in results}
    if any(t["name"] not in by_name for t in tasks) or (roles and not results):
        raise AssertionError("ansible-playbook rc=%d\n%s" % (rc, output))
    return by_name


@pytest.fixture
def sim():
    with Simulator(profile="server2022", language="en-US", username=USER, password=PASSWORD) as simulator:
        yield simulator


def make_sim(profile="server2022", language="en-US"):
    return Simulator(profile=profile, language=language, username=USER, password=PASSWORD)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def dword(sim, name):
    return sim.host.registry_value(name)


# ------------------------------------------------------------------ tests
def test_apply_then_idempotent(sim):
    started = time.monotonic()
    out = run_play(sim, task("tune", port_range="10000 65535", time_wait_delay=30))
    r = out["tune"]
    assert r["_status"] == "ok" and r["changed"] is True, r
    assert r["round_trips"] == 2 and sim.round_trips == 2
    assert r["reboot_required"] is True
    assert r["before"] == {"registry": {"TcpTimedWaitDelay": None}, "dynamic_port_range": {
        "ipv4": {"tcp": {"start": 49152, "number": 16384, "end": 65535}},
        "ipv6": {"tcp": {"start": 49152, "number": 16384, "end": 65535}}}}
    assert r["after"] == {"registry": {"TcpTimedWaitDelay": 30}, "dynamic_port_range": {
        "ipv4": {"tcp": {"start": 10000, "number": 55536, "end": 65535}},
        "ipv6": {"tcp": {"start": 10000, "number": 55536, "end": 65535}}}}
    assert r["build"] == 20348
    assert dword(sim, "TcpTimedWaitDelay") == 30
    assert sim.host.registry_type("TcpTimedWaitDelay") == "REG_DWORD"
    for ip in ("ipv4", "ipv6"):
        assert tuple(sim.host.dynamic_range(ip, "tcp")) == (10000, 55536)
        assert tuple(sim.host.dynamic_range(ip, "udp")) == DEFAULT
    # effective only after a reboot
    sim.host.reboot()
    assert sim.host.effective_value("TcpTimedWaitDelay") == 30

    sim.reset_counters()
    again = run_play(sim, task("again", port_range=[10000, 65535], time_wait_delay="30"))["again"]
    assert again["changed"] is False and again["reboot_required"] is False
    assert again["round_trips"] == 1 and sim.round_trips == 1
    assert time.monotonic() - started < 120


def test_check_mode_and_diff(sim):
    out = run_play(sim,
                   task("check", check_mode=True, diff=True, port_range="20000-40000", max_user_port=65534,
                        ip_versions=["ipv4"], protocols=["tcp", "udp"]))
    r = out["check"]
    assert r["changed"] is True and r["round_trips"] == 1 and sim.round_trips == 1
    assert r["reboot_required"] is True
    assert dword(sim, "MaxUserPort") is None
    assert tuple(sim.host.dynamic_range("ipv4", "tcp")) == DEFAULT
    assert "MaxUserPort = (absent)" in r["diff"]["before"]
    assert "MaxUserPort = 65534" in r["diff"]["after"]
    assert "ipv4 udp dynamic port range = start 20000, 20001 ports (20000-40000)" in r["diff"]["after"]
    assert r["after"]["dynamic_port_range"]["ipv4"]["udp"] == {"start": 20000, "number": 20001, "end": 40000}
    assert any("MaxUserPort is legacy" in w for w in r["warnings"])


@pytest.mark.parametrize("options,option,words", [
    ({"time_wait_delay": 1}, "time_wait_delay", ["1", "from 2 to 300"]),
    ({"time_wait_delay": 301}, "time_wait_delay", ["301", "from 2 to 300"]),
    ({"max_user_port": 4999}, "max_user_port", ["4999", "from 5000 to 65534"]),
    ({"max_user_port": 65535}, "max_user_port", ["65535", "from 5000 to 65534"]),
    ({"port_range": "1024 65535"}, "port_range", ["'1024 65535'", "below 1025"]),
    ({"port_range": "60000 60253"}, "port_range", ["'60000 60253'", "fewer than 255 ports"]),
    ({"port_range": "60000 70000"}, "port_range", ["'60000 70000'", "65535"]),
    ({"port_range": "abc"}, "port_range", ["'abc'"]),
    ({"protocols": ["sctp"]}, "protocols", ["sctp", "tcp, udp"]),
    ({"ip_versions": ["ipv5"]}, "ip_versions", ["ipv5"]),
    ({"state": "gone"}, "state", ["gone"]),
    ({"bogus": 1}, "bogus", ["not an option"]),
])
def test_validation_sends_nothing(sim, options, option, words):
    r = run_play(sim, task("bad", ignore_errors=True, **options))["bad"]
    assert r["failed"] is True and r["_status"] == "failed"
    assert r["msg"].startswith(option + ": ")
    for word in words:
        assert word in r["msg"]
    assert r["round_trips"] == 0
    assert sim.round_trips == 0


def test_validation_unreachable_host():
    nothing = Simulator(port=free_port())  # never started: nothing listens there
    out = run_play(nothing, task("bad", ignore_errors=True, port_range="1024 2000"),
                   task("reach", ignore_errors=True, port_range="10000 65535"))
    assert out["bad"]["_status"] == "failed" and "below 1025" in out["bad"]["msg"]
    assert out["reach"]["_status"] == "unreachable"


def test_wrong_type_corrected_and_reboot(sim):
    sim.host.set_registry("TcpTimedWaitDelay", "REG_SZ", "30")
    r = run_play(sim, task("fix", time_wait_delay=30))["fix"]
    assert r["changed"] is True and r["reboot_required"] is True
    assert r["before"]["registry"]["TcpTimedWaitDelay"] == {"type": "REG_SZ", "data": "30"}
    assert sim.host.registry_type("TcpTimedWaitDelay") == "REG_DWORD" and dword(sim, "TcpTimedWaitDelay") == 30
    assert any("REG_SZ" in w for w in r["warnings"])


def test_range_only_needs_no_reboot(sim):
    r = run_play(sim, task("range", port_range=[30000, 65535], protocols=["udp"], ip_versions=["ipv6"]))["range"]
    assert r["changed"] is True and r["reboot_required"] is False
    assert tuple(sim.host.dynamic_range("ipv6", "udp")) == (30000, 35536)
    assert tuple(sim.host.dynamic_range("ipv4", "udp")) == DEFAULT


def test_state_absent(sim):
    sim.host.set_registry("TcpTimedWaitDelay", "REG_DWORD", 30)
    sim.host.set_registry("MaxUserPort", "REG_DWORD", 65534)
    sim.host.set_dynamic_range(1024, 64511, ip="ipv4", proto="tcp")  # left by an installer
    out = run_play(sim, task("absent", state="absent"), task("again", state="absent"))
    r = out["absent"]
    assert r["changed"] is True and r["reboot_required"] is True and r["round_trips"] == 2
    assert r["before"]["dynamic_port_range"]["ipv4"]["tcp"] == {"start": 1024, "number": 64511, "end": 65534}
    assert dword(sim, "TcpTimedWaitDelay") is None and dword(sim, "MaxUserPort") is None
    assert tuple(sim.host.dynamic_range("ipv4", "tcp")) == DEFAULT
    assert out["again"]["changed"] is False and out["again"]["round_trips"] == 1


def test_excluded_ranges_warning(sim):
    sim.host.add_excluded(50000, 50059, ip="ipv4", proto="tcp", administered=True)
    r = run_play(sim, task("tune", port_range="10000 65535"))["tune"]
    assert any("50000-50059" in w and "excluded" in w for w in r["warnings"]), r["warnings"]
    assert r["excluded_port_ranges"]["ipv4"]["tcp"] == [{"start": 50000, "end": 50059, "administered": True}]


def test_german_display_language():
    with make_sim(language="de-DE") as sim:
        sim.host.set_dynamic_range(20000, 45536, ip="ipv4", proto="tcp")
        out = run_play(sim, task("tune", port_range="10000 65535", time_wait_delay=60),
                       task("again", port_range="10000 65535", time_wait_delay=60))
        assert out["tune"]["before"]["dynamic_port_range"]["ipv4"]["tcp"]["start"] == 20000
        assert out["tune"]["changed"] is True
        assert tuple(sim.host.dynamic_range("ipv6", "tcp")) == (10000, 55536)
        assert out["again"]["changed"] is False and out["again"]["round_trips"] == 1


def test_legacy_2008r2_minimum():
    with make_sim(profile="server2008r2") as sim:
        out = run_play(sim, task("short", ignore_errors=True, time_wait_delay=10, port_range="10000 65535"),
                       task("ok", time_wait_delay=30))
        r = out["short"]
        assert r["failed"] is True and r["option"] == "time_wait_delay"
        assert "from 30 to 300" in r["msg"] and "7601" in r["msg"]
        assert r["round_trips"] == 1  # read, then refused before any change
        assert tuple(sim.host.dynamic_range("ipv4", "tcp")) == DEFAULT
        assert out["ok"]["changed"] is True and dword(sim, "TcpTimedWaitDelay") == 30


def test_failed_apply_is_rolled_back(sim):
    sim.faults.fail_netsh(times=1, verb="set")
    r = run_play(sim, task("tune", ignore_errors=True, time_wait_delay=30, port_range="10000 65535"))["tune"]
    assert r["failed"] is True and "failed" in r["msg"]
    assert r["round_trips"] == 3 and r.get("rolled_back") is True
    assert dword(sim, "TcpTimedWaitDelay") is None
    for ip in ("ipv4", "ipv6"):
        assert tuple(sim.host.dynamic_range(ip, "tcp")) == DEFAULT


# ------------------------------------------------------------------ win_port_usage_info
INFO = "tcpstack.tuning.win_port_usage_info"


def info_task(name, ignore_errors=False, **options):
    out = {"name": name, INFO: options, "register": "ports"}
    if ignore_errors:
        out["ignore_errors"] = True
    return out


def test_info_quiet_host(sim):
    r = run_play(sim, info_task("info"))["info"]
    assert r["_status"] == "ok" and r["changed"] is False
    assert r["round_trips"] == 1 and sim.round_trips == 1
    assert r["verdict"] == "ok" and r["recommendations"] == {}
    assert r["ephemeral"]["range"] == [49152, 65535] and r["ephemeral"]["usable"] == 16384
    assert r["dynamic_port_range"]["ipv6"]["udp"] == {"start": 49152, "number": 16384, "end": 65535}
    assert r["sockets"]["by_state"]["Listen"] >= 1
    assert r["capacity"]["time_wait_seconds"] == 120
    assert r["events"]["4231"] == 0 and r["events"]["4227"] == 0
    assert r["build"] == 20348
    for key in ("settings", "ephemeral", "sockets", "ports_held", "destinations", "capacity", "verdict", "findings",
                "recommendations", "notes", "processes", "excluded_port_ranges"):
        assert key in r


def test_info_exhausted_host_then_apply_recommendations(sim):
    sim.host.add_process(3100, "w3wp")
    for port in range(49152, 49152 + 15000):
        state = "TimeWait" if port % 4 else "Established"
        sim.host.add_connection("10.0.0.5", port, "10.0.0.9", 443, state, 0 if state == "TimeWait" else 3100)
    sim.host.add_excluded(50000, 50059, ip="ipv4", proto="tcp")
    sim.host.add_event(4231)
    sim.host.add_event(4227)
    started = time.monotonic()
    out = run_play(sim, info_task("info", top=3),
                   {"name": "tune", MODULE: "{{ ports.recommendations }}"})
    r = out["info"]
    assert r["verdict"] == "critical" and r["round_trips"] == 1
    assert r["ports_held"] == 15000 - 60 - 4  # excluded ports are not dynamic ports; 49664-49667 listen
    assert r["destinations"][0]["endpoint"] == "10.0.0.9:443"
    assert r["processes"][0]["name"] in ("w3wp", "Idle")
    assert r["events"]["4231"] == 1 and r["events"]["4227"] == 1
    assert any("4231" in f for f in r["findings"]) and any("host-wide" in f for f in r["findings"])
    assert r["recommendations"]["time_wait_delay"] == 30
    low, high = (int(x) for x in r["recommendations"]["port_range"].split())
    assert low >= 1025 and high == 65535 and high - low + 1 > 16384
    tune = out["tune"]
    assert tune["changed"] is True and tune["reboot_required"] is True
    assert tuple(sim.host.dynamic_range("ipv4", "tcp")) == (low, high - low + 1)
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("options,option", [({"top": 0}, "top"), ({"event_hours": "x"}, "event_hours"),
                                            ({"bogus": 1}, "bogus")])
def test_info_validation_sends_nothing(sim, options, option):
    r = run_play(sim, info_task("bad", ignore_errors=True, **options))["bad"]
    assert r["failed"] is True and option in r["msg"] and sim.round_trips == 0


def test_info_legacy_host_without_nettcpip():
    with make_sim(profile="server2008r2", language="de-DE") as sim:
        r = run_play(sim, info_task("info"))["info"]
        assert r["_status"] == "ok" and r["round_trips"] == 1
        assert r["sockets"] is None and r["verdict"] == "warning"
        assert any("Get-NetTCPConnection" in u["source"] for u in r["unreadable"])
        assert any("Get-NetTCPConnection" in w for w in r["warnings"])
        assert r["ephemeral"]["range"] == [49152, 65535]


def test_lost_reply_then_rerun_converges(sim):
    """The apply ran on the host but its reply was lost: the task is unreachable, the next run reads it converged."""
    sim.faults.drop_command(2, execute=True)
    out = run_play(sim, task("lost", ignore_errors=True, ignore_unreachable=True, port_range="20000 65535"))
    assert out["lost"]["_status"] in ("unreachable", "failed")
    assert tuple(sim.host.dynamic_range("ipv4", "tcp")) == (20000, 45536)
    sim.reset_counters()
    again = run_play(sim, task("again", port_range="20000 65535"))["again"]
    assert again["changed"] is False and again["round_trips"] == 1 and sim.round_trips == 1


# ------------------------------------------------------------------ issue 15: excluded ranges, over real pywinrm
def administered(sim, ip="ipv4", store="active"):
    return [(a, b) for a, b, admin in sim.host.excluded_ranges(ip, "tcp", store=store) if admin]


@pytest.mark.parametrize("language", ["en-US", "de-DE"])
def test_excluded_ranges_across_a_reboot(language):
    """Added idempotently with store=persistent, kept across a reboot while WinNAT's blocks move, removed by
    state: absent (only the listed), check mode and diff first; an overlap is refused before anything is sent."""
    with Simulator(profile="server2022", language=language, username=USER, password=PASSWORD,
                   host_state={"winnat_blocks": 2}) as sim:
        winnat = sim.host.excluded_ranges()
        sim.host.add_excluded(40000, 40009, administered=True)  # not given: never touched
        out = run_play(sim,
                       task("check", check_mode=True, diff=True, excluded_ranges=["50000-50099", 60000]),
                       task("add", excluded_ranges=["50000-50099", 60000]),
                       task("again", excluded_ranges="50000-50099,60000"),
                       task("overlap", ignore_errors=True, excluded_ranges=["%d-%d" % winnat[0][:2]], time_wait_delay=30))
        check = out["check"]
        assert check["changed"] is True and check["round_trips"] == 1
        assert "ipv4 tcp excluded port range 50000-50099 = excluded (administered)" in check["diff"]["after"]
        add = out["add"]
        assert add["changed"] is True and add["round_trips"] == 2 and add["reboot_required"] is False
        assert add["after"]["excluded_ranges"]["ipv6"]["tcp"] == {"50000-50099": True, "60000-60000": True}
        assert out["again"]["changed"] is False and out["again"]["round_trips"] == 1
        overlap = out["overlap"]
        assert overlap.get("failed") is True and overlap["round_trips"] == 1, overlap
        assert overlap["round_trips"] == 1 and "system exclusion" in overlap["msg"]
        assert sim.host.registry_value("TcpTimedWaitDelay") is None
        assert sim.round_trips == 1 + 2 + 1 + 1
        for ip in ("ipv4", "ipv6"):
            assert administered(sim, ip, "persistent") == ([(40000, 40009)] if ip == "ipv4" else []) + [
                (50000, 50099), (60000, 60000)]

        sim.host.reboot()
        assert [r for r in sim.host.excluded_ranges() if not r[2]] != winnat  # WinNAT's blocks moved
        sim.reset_counters()
        out = run_play(sim, task("after reboot", excluded_ranges=["50000-50099", 60000]),
                       task("remove", state="absent", excluded_ranges=[60000, "61000-61009"], ip_versions="ipv4"),
                       {"name": "info", "tcpstack.tuning.win_port_usage_info": {}})
        assert out["after reboot"]["changed"] is False and out["after reboot"]["round_trips"] == 1
        assert out["remove"]["changed"] is True
        assert administered(sim) == [(40000, 40009), (50000, 50099)]
        assert administered(sim, "ipv6") == [(50000, 50099), (60000, 60000)]
        info = out["info"]["dynamic_range_analysis"]["ipv4"]
        assert info["administered"] == [{"start": 40000, "end": 40009}, {"start": 50000, "end": 50099}]
        assert [(s["start"], s["end"]) for s in info["system"]] == [r[:2] for r in sim.host.excluded_ranges() if not r[2]]


def test_a_port_in_use_refused_before_sending(sim):
    sim.host.add_connection("::", 60000, "::", 0, "Listen", 4)  # a service listens there: netsh would refuse
    r = run_play(sim, task("add", ignore_errors=True, excluded_ranges=["50000-50099", 60000]))["add"]
    assert r["failed"] is True and r["option"] == "excluded_ranges" and r["round_trips"] == 1
    assert "TCP port 60000 listens on ipv6" in r["msg"] and sim.round_trips == 1
    assert administered(sim) == [] and administered(sim, "ipv6") == []


def test_netsh_refusal_reported_and_rolled_back():
    """Server 2008 R2 has no Get-NetTCPConnection: only netsh knows the port is in use, and says so."""
    with make_sim(profile="server2008r2") as sim:
        sim.host.add_connection("::", 60000, "::", 0, "Listen", 4)
        r = run_play(sim, task("add", ignore_errors=True, excluded_ranges=[60000, "50000-50099"]))["add"]
        assert r["failed"] is True and r["rolled_back"] is True and r["round_trips"] == 3
        assert "netsh int ipv6 add excludedportrange protocol=tcp startport=60000 numberofports=1" in r["msg"]
        assert "being used by another process" in r["msg"]
        assert administered(sim) == [] and administered(sim, "ipv6") == []


def test_info_installer_range_fragmentation_and_a_bind_in_an_exclusion_then_fixed():
    """An installer-left range with WinNAT blocks from 1025, a service inside one of them: reported, and the
    recommendations (port_range, excluded_ranges) applied by win_tcp after WinNAT is stopped."""
    with Simulator(profile="server2022", username=USER, password=PASSWORD,
                   host_state={"winnat_blocks": 3, "installer_range": "visual-studio"}) as sim:
        sim.host.add_connection("0.0.0.0", 1100, "0.0.0.0", 0, "Listen", 4)  # bound before WinNAT took 1025-1124
        for start in range(5000, 65000, 3000):  # fragmentation: no contiguous 4,096 left
            sim.host.add_excluded(start, start + 99)
        r = run_play(sim, info_task("info", service_ports=[1150, 7000]))["info"]
        assert r["round_trips"] == 1
        text = " ".join(r["findings"])
        assert "as installers leave it" in text and "64,511" in text
        assert "fragmented" in text and "4,096" in text and "microsoft/WSL#12351" in text
        assert "port 1100, which a service listens on" in text and "port 1150, which a service is configured for" in text
        assert "10013" in text
        assert r["recommendations"]["port_range"] == "49152 65535"
        assert r["recommendations"]["excluded_ranges"] == ["1100", "1150"]
        sim.host.stop_winnat()  # net stop winnat, and the service on 1100 stopped: netsh refuses a port in use
        sim.host.connections = [c for c in sim.host.connections if c["LocalPort"] != 1100]
        sim.host.clear_excluded()
        sim.reset_counters()
        options = {"port_range": r["recommendations"]["port_range"],
                   "excluded_ranges": r["recommendations"]["excluded_ranges"]}
        tune = run_play(sim, {"name": "tune", MODULE: options})
        assert tune["tune"]["changed"] is True and tune["tune"]["round_trips"] == 2
        sim.host.start_winnat()
        assert tuple(sim.host.dynamic_range("ipv4", "tcp")) == (49152, 16384)
        assert all(a >= 49152 for a, b, admin in sim.host.excluded_ranges() if not admin)
        assert administered(sim) == [(1100, 1100), (1150, 1150)]
