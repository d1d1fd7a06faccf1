"""linux_port_usage: port_usage_info's whole read on a host captured from a real kernel, counters and settings.

The fixtures are those of test_socket_table.py (captured by fixtures/capture.py inside a network namespace):
range 40000-40999 with 40100-40199 reserved (900 usable), tcp_tw_reuse 2 (the default), connections to
127.0.0.1:8080, [::1]:9090 and ::ffff:127.0.0.2:7070.  LinuxHost rooted in a directory tree holding them
stands in for the host.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils import linux_port_usage as lpu
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.socket_table import TableError

FIXTURES = Path(__file__).resolve().parent / "fixtures"


def fixture(name):
    return (FIXTURES / name).read_bytes()


def fake_root(tmp_path, prefix="busy_", sysctl_overrides=None, leave_out=()):
    """A directory tree holding the captured /proc files, for LinuxHost(root)."""
    values = json.loads(fixture(prefix + "sysctl.json"))
    values.update(sysctl_overrides or {})
    for key, value in values.items():
        if value is None:
            continue
        path = tmp_path / ("proc/sys/" + key.replace(".", "/"))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    net = tmp_path / "proc/net"
    net.mkdir(parents=True, exist_ok=True)
    for name, target in (("tcp.txt", "tcp"), ("tcp6.txt", "tcp6"), ("netstat.txt", "netstat"), ("snmp.txt", "snmp")):
        if target not in leave_out:
            (net / target).write_bytes(fixture(prefix + name))
    return str(tmp_path)


# ---------------------------------------------------------------- counters, settings
def test_counter_files():
    netstat = lpu.parse_counter_file(fixture("busy_netstat.txt").decode())
    snmp = lpu.parse_counter_file(fixture("busy_snmp.txt").decode())
    assert netstat["TcpExt"]["TW"] >= 0 and "ListenOverflows" in netstat["TcpExt"]
    assert snmp["Tcp"]["ActiveOpens"] == 28  # 15 + 6 + 6 + 1 (port 5000) connect() calls in the capture
    assert snmp["Tcp"]["PassiveOpens"] == 28
    assert "AttemptFails" in snmp["Tcp"]


@pytest.mark.parametrize("reuse, stamps, expected", [
    (0, 1, (False, False, False)),
    (1, 1, (True, True, False)),
    (2, 1, (False, True, False)),
    (1, 0, (False, False, True)),
    (2, 0, (False, False, False)),
    (1, 2, (True, True, False)),
])
def test_reuse_rules(reuse, stamps, expected):
    rules = lpu.reuse_rules({"tw_reuse": reuse, "timestamps": stamps, "tw_reuse_delay": 250})
    assert (rules["remote"], rules["loopback"], rules["inactive"]) == expected
    assert rules["delay_seconds"] == 0.25


def test_reuse_delay_before_6_14_is_one_second():
    assert lpu.reuse_rules({"tw_reuse": 1, "timestamps": 1, "tw_reuse_delay": None})["delay_seconds"] == 1.0


# ---------------------------------------------------------------- the whole audit on a captured host
def test_audit_on_captured_host(tmp_path):
    result = lpu.audit(LinuxHost(fake_root(tmp_path)), top=10)
    assert result["source"] == "proc"
    assert result["unreadable"] == []
    assert result["ephemeral"] == {"range": [40000, 40999], "size": 1000, "reserved": "40100-40199",
                                   "reserved_in_range": 100, "usable": 900}
    assert result["settings"]["tw_reuse"] == 2 and result["settings"]["tw_reuse_delay"] == 1000
    assert result["sockets"]["total"] == 38
    assert result["sockets"]["by_state"] == {"ESTABLISHED": 14, "TIME_WAIT": 21, "LISTEN": 3}
    assert result["ports_held"] == 27
    first = result["destinations"][0]
    assert (first["endpoint"], first["in_use"], first["time_wait"]) == ("127.0.0.1:8080", 15, 12)
    # tcp_tw_reuse 2 reuses TIME_WAIT over loopback: only the 3 ESTABLISHED ports block
    assert first["reuse"] is True and first["blocking"] == 3
    assert first["utilisation"] == round(3 / 900.0, 4)
    endpoints = [d["endpoint"] for d in result["destinations"]]
    assert sorted(endpoints) == ["127.0.0.1:8080", "127.0.0.2:7070", "[::1]:9090"]
    assert result["capacity"]["remote"] == {"reuse": False, "port_hold_seconds": 60.0, "max_new_connections_per_second": 15.0}
    assert result["capacity"]["loopback"] == {"reuse": True, "port_hold_seconds": 1.0, "max_new_connections_per_second": 900.0}
    assert result["verdict"] == "ok" and result["findings"] == [] and result["recommendations"] == {}
    assert result["counters"]["values"]["ActiveOpens"] == 28


def test_audit_without_reuse_counts_time_wait(tmp_path):
    result = lpu.audit(LinuxHost(fake_root(tmp_path, sysctl_overrides={"net.ipv4.tcp_tw_reuse": "0"})), top=1)
    assert len(result["destinations"]) == 1
    first = result["destinations"][0]
    assert first["endpoint"] == "127.0.0.1:8080" and first["blocking"] == 15 and first["reuse"] is False


def test_audit_fully_reserved_range(tmp_path):
    root = fake_root(tmp_path, sysctl_overrides={"net.ipv4.ip_local_reserved_ports": "39000-41000"})
    result = lpu.audit(LinuxHost(root))
    assert result["ephemeral"]["usable"] == 0
    assert result["destinations"] == []
    assert result["capacity"]["remote"]["max_new_connections_per_second"] == 0.0
    assert result["verdict"] == "critical"
    assert result["findings"][0] == "no usable ephemeral ports: the range 40000-40999 is entirely reserved"
    assert result["recommendations"]["port_range"] == "32768 65535"


def test_audit_reuse_without_timestamps(tmp_path):
    root = fake_root(tmp_path, sysctl_overrides={"net.ipv4.tcp_tw_reuse": "1", "net.ipv4.tcp_timestamps": "0"})
    result = lpu.audit(LinuxHost(root))
    assert result["verdict"] == "warning"
    assert "tcp_tw_reuse is 1 but tcp_timestamps is 0: reuse is inactive" in result["findings"]
    assert result["recommendations"] == {"timestamps": 1}
    assert result["capacity"]["remote"]["reuse"] is False


def test_audit_empty_host(tmp_path):
    result = lpu.audit(LinuxHost(fake_root(tmp_path, prefix="empty_")))
    assert result["sockets"] == {"total": 0, "by_state": {}, "ipv4": {}, "ipv6": {}}
    assert result["destinations"] == [] and result["ports_held"] == 0
    assert result["verdict"] == "ok"


def test_audit_says_what_it_could_not_read(tmp_path):
    root = fake_root(tmp_path, leave_out=("snmp", "tcp", "tcp6"))
    (Path(root) / "proc/sys/net/ipv4/tcp_max_tw_buckets").unlink()
    result = lpu.audit(LinuxHost(root))
    sources = sorted(item["source"] for item in result["unreadable"])
    assert sources == ["/proc/net/snmp", "/proc/net/tcp"]  # a missing tcp6 is a kernel without IPv6
    assert result["settings"]["max_tw_buckets"] is None
    assert "ActiveOpens" not in result["counters"]["values"] and "TW" in result["counters"]["values"]


def test_audit_sample_measures_rates(tmp_path):
    root = fake_root(tmp_path)
    snmp = Path(root) / "proc/net/snmp"
    netstat = Path(root) / "proc/net/netstat"

    def sleep(seconds):
        assert seconds == 2
        snmp.write_text(snmp.read_text().replace(" 28 28 ", " 128 38 ", 1))
        lines = netstat.read_text().splitlines()
        names, values = lines[0].split(), lines[1].split()
        values[names.index("ListenOverflows")] = str(int(values[names.index("ListenOverflows")]) + 5)
        netstat.write_text("\n".join([" ".join(names), " ".join(values)] + lines[2:]) + "\n")

    result = lpu.audit(LinuxHost(root), sample_seconds=2, sleep=sleep)
    changes = result["counters"]["sample"]["changes"]
    assert changes["ActiveOpens"]["delta"] == 100 and changes["PassiveOpens"]["delta"] == 10
    assert changes["ListenOverflows"]["delta"] == 5
    measured = result["capacity"]["measured"]
    assert measured["active_opens_per_second"] > 0 and measured["seconds"] >= 0
    assert result["verdict"] == "warning"
    assert any(f.startswith("ListenOverflows is rising: +5 in ") for f in result["findings"])
    assert result["recommendations"] == {"somaxconn": 8192, "max_syn_backlog": 4096}


def test_netlink_refused_falls_back_to_proc(monkeypatch):
    """Where sock_diag is refused (a seccomp filter, no inet_diag), /proc/net/tcp is read instead: a note, no failure."""
    def refuse(self, dumps, timeout=0):
        raise TableError("netlink sock_diag unavailable: [Errno 93] Protocol not supported")

    monkeypatch.setattr(LinuxHost, "sock_diag", refuse)
    result = lpu.audit()
    assert result["source"] == "proc"
    assert result["notes"][0].startswith("netlink sock_diag unavailable")
    assert result["sockets"] is not None


@pytest.mark.parametrize("cut", [10, 16 + 40, 100])
def test_truncated_netlink_dump_falls_back_to_proc(monkeypatch, cut):
    """A dump cut short (issue 13, finding 5) is a TableError inside the real consumer: /proc is read instead,
    the result says so (source "proc" and a note), and nothing counted from the broken dump is kept."""
    captured = fixture("busy_inet.bin")

    def truncated(self, dumps, timeout=0):
        for dummy, consume in dumps:
            consume(captured[:cut])

    monkeypatch.setattr(LinuxHost, "sock_diag", truncated)
    result = lpu.audit()
    assert result["source"] == "proc"
    assert result["notes"][0].startswith("malformed netlink message")
    assert result["notes"][0].endswith("read /proc/net/tcp and /proc/net/tcp6 instead")
    assert result["sockets"] is not None


def test_bad_proc_lines_are_skipped_with_a_note(tmp_path):
    root = fake_root(tmp_path)
    tcp = Path(root) / "proc/net/tcp"
    tcp.write_bytes(tcp.read_bytes() + b"  99: nonsense:ZZZZ 0100007F:1F90 06 x\n")
    result = lpu.audit(LinuxHost(root))
    assert result["source"] == "proc"
    assert "1 lines of /proc/net/tcp and /proc/net/tcp6 were not sockets as the kernel prints them and were skipped" \
        in result["notes"]
    assert result["destinations"][0]["in_use"] == 15
