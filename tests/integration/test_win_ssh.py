"""win_tcp and win_port_usage_info over SSH: real ansible-playbook, Ansible's real ``ssh`` connection and the real
OpenSSH client (/usr/bin/ssh) against the SSH endpoint of the Windows host simulator (tests/support/windows_sim/ssh.py:
Windows' OpenSSH server with DefaultShell = powershell.exe), with ``ansible_shell_type: powershell``.

Each test makes a client key pair, starts a simulator with that public key authorized, and checks the host key
against a known_hosts file holding the simulator's own.  The plays, and the round trips they cost, are those
of test_win_tcp.py over WinRM.  No root needed.
"""

from __future__ import annotations

import asyncssh
import pytest

from test_win_tcp import DEFAULT, dword, info_task, run_play, task
from tests.support.windows_sim import USER, Simulator

ROLE = "tcpstack.tuning.tcp_tuning"


def start_sim(ssh_client_key, language="en-US"):
    return Simulator(profile="server2022", language=language, username=USER, ssh=True,
                     ssh_authorized_keys=ssh_client_key[1])


@pytest.fixture
def sim(ssh_client_key):
    with start_sim(ssh_client_key) as simulator:
        yield simulator


@pytest.fixture
def play(sim, ssh_client_key):
    """run_play over SSH against ``sim`` (its host key pinned in a known_hosts file: tests.support.fleet)."""

    def run(*tasks, roles=None):
        return run_play(sim, *tasks, ssh_key=ssh_client_key[0], roles=roles)
    return run


def test_cold_converge_then_converged(sim, play):
    r = play(task("tune", port_range="10000 65535", time_wait_delay=30))["tune"]
    assert r["_status"] == "ok" and r["changed"] is True, r
    assert r["round_trips"] == 2 and sim.round_trips == 2  # read, then apply + read back
    assert r["reboot_required"] is True and r["build"] == 20348
    assert dword(sim, "TcpTimedWaitDelay") == 30 and sim.host.registry_type("TcpTimedWaitDelay") == "REG_DWORD"
    for ip in ("ipv4", "ipv6"):
        assert tuple(sim.host.dynamic_range(ip, "tcp")) == (10000, 55536)
        assert tuple(sim.host.dynamic_range(ip, "udp")) == DEFAULT
    assert sim.requests == {"Command": 2}  # nothing but the plugin's two commands reached the host

    sim.reset_counters()
    again = play(task("again", port_range=[10000, 65535], time_wait_delay="30"))["again"]
    assert again["changed"] is False and again["reboot_required"] is False
    assert again["round_trips"] == 1 and sim.round_trips == 1


def test_check_mode_and_diff(sim, play):
    r = play(task("check", check_mode=True, diff=True, port_range="20000-40000", max_user_port=65534,
                  ip_versions=["ipv4"], protocols=["tcp", "udp"]))["check"]
    assert r["changed"] is True and r["round_trips"] == 1 and sim.round_trips == 1
    assert dword(sim, "MaxUserPort") is None and tuple(sim.host.dynamic_range("ipv4", "tcp")) == DEFAULT
    assert "MaxUserPort = (absent)" in r["diff"]["before"] and "MaxUserPort = 65534" in r["diff"]["after"]
    assert "ipv4 udp dynamic port range = start 20000, 20001 ports (20000-40000)" in r["diff"]["after"]


@pytest.mark.parametrize("options,option,words", [
    ({"port_range": "1024 65535"}, "port_range", ["'1024 65535'", "below 1025"]),
    ({"time_wait_delay": 301}, "time_wait_delay", ["301", "from 2 to 300"]),
])
def test_validation_sends_nothing(sim, play, options, option, words):
    r = play(task("bad", ignore_errors=True, **options))["bad"]
    assert r["failed"] is True and r["msg"].startswith(option + ": ")
    assert all(word in r["msg"] for word in words)
    assert r["round_trips"] == 0 and sim.round_trips == 0


def test_port_usage_info_one_round_trip(sim, play):
    sim.host.add_process(3100, "w3wp")
    for port in range(49152, 49152 + 2000):
        sim.host.add_connection("10.0.0.5", port, "10.0.0.9", 443, "TimeWait" if port % 4 else "Established",
                                0 if port % 4 else 3100)
    sim.host.add_event(4227)
    r = play(info_task("info"))["info"]
    assert r["_status"] == "ok" and r["changed"] is False
    assert r["round_trips"] == 1 and sim.round_trips == 1
    assert r["ephemeral"]["range"] == [49152, 65535] and r["destinations"][0]["endpoint"] == "10.0.0.9:443"
    assert r["events"]["4227"] == 1 and r["build"] == 20348


def test_raw_runs_in_the_default_shell(sim, play):
    """``raw`` reaches the host as it is; PowerShell (the DefaultShell) runs it."""
    r = play({"name": "raw", "ansible.builtin.raw": "netsh int ipv4 show dynamicportrange protocol=tcp"})["raw"]
    assert r["rc"] == 0 and "Number of Ports : 16384" in r["stdout"]
    assert sim.log == ["netsh int ipv4 show dynamicportrange protocol=tcp"] and sim.round_trips == 1


def test_german_display_language(ssh_client_key):
    """Output in the OEM code page (850 on de-DE: the excluded-range footer has an ü), translated labels."""
    with start_sim(ssh_client_key, language="de-DE") as sim:
        sim.host.add_excluded(50000, 50059, ip="ipv4", proto="tcp", administered=True)
        out = run_play(sim, task("tune", port_range="10000 65535", time_wait_delay=60),
                       task("again", port_range="10000 65535", time_wait_delay=60), info_task("info"),
                       ssh_key=ssh_client_key[0])
        assert out["tune"]["changed"] is True and out["tune"]["round_trips"] == 2
        assert out["tune"]["excluded_port_ranges"]["ipv4"]["tcp"] == [{"start": 50000, "end": 50059, "administered": True}]
        assert out["again"]["changed"] is False and out["again"]["round_trips"] == 1
        assert out["info"]["_status"] == "ok" and out["info"]["ephemeral"]["range"] == [10000, 65535]
        assert sim.round_trips == 4


def test_role_detects_windows_from_the_shell_type(sim, play):
    out = play(roles=[ROLE])
    ran = {r["_action"]: r for r in out.values() if r["_status"] != "skipped"}
    assert "tcpstack.tuning.linux_tcp" not in ran
    tuned = ran["tcpstack.tuning.win_tcp"]
    assert tuned["changed"] is True and tuned["round_trips"] == 2 and sim.round_trips == 2
    assert dword(sim, "TcpTimedWaitDelay") == 30
    assert tuple(sim.host.dynamic_range("ipv4", "tcp")) == (32768, 32768)


def test_a_wrong_host_key_is_refused(sim, ssh_client_key):
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode("ascii")
    r = run_play(sim, task("tune", ignore_unreachable=True, port_range="10000 65535"), ssh_key=ssh_client_key[0],
                 known_hosts="[127.0.0.1]:%d %s" % (sim.ssh_port, other))["tune"]
    assert r["_status"] == "unreachable" and "Host key verification failed" in r["msg"]
    assert sim.round_trips == 0 and tuple(sim.host.dynamic_range("ipv4", "tcp")) == DEFAULT


def test_lost_reply_then_rerun_converges(sim, play):
    """The apply ran on the host but the connection dropped before its reply: unreachable, then converged."""
    sim.faults.drop_command(2, execute=True)
    r = play(task("lost", ignore_errors=True, ignore_unreachable=True, port_range="20000 65535"))["lost"]
    assert r["_status"] in ("unreachable", "failed")
    assert tuple(sim.host.dynamic_range("ipv4", "tcp")) == (20000, 45536)
    sim.reset_counters()
    again = play(task("again", port_range="20000 65535"))["again"]
    assert again["changed"] is False and again["round_trips"] == 1 and sim.round_trips == 1


def test_excluded_ranges_over_ssh(sim, play):
    """Issue 15 over SSH: the exclusions added with store=persistent in one apply, then converged after a reboot."""
    out = play(task("add", excluded_ranges=["50000-50099"]), info_task("info"))
    assert out["add"]["changed"] is True and out["add"]["round_trips"] == 2
    assert out["info"]["dynamic_range_analysis"]["ipv6"]["administered"] == [{"start": 50000, "end": 50099}]
    sim.host.reboot()
    sim.reset_counters()
    again = play(task("again", excluded_ranges=["50000-50099"]))["again"]
    assert again["changed"] is False and again["round_trips"] == 1 and sim.requests == {"Command": 1}
