"""socket_table on socket tables, netlink dumps and counter files captured from a real kernel.

The fixtures were captured by fixtures/capture.py inside a network namespace: range 40000-40999 with
40100-40199 reserved (900 usable), tcp_tw_reuse 2 (the default), and
  - 127.0.0.1:8080 (IPv4): 12 client ports in TIME_WAIT and 3 ESTABLISHED, plus one socket bound to the
    explicit port 5000 (outside the range);
  - [::1]:9090 (IPv6): 4 in TIME_WAIT, 2 ESTABLISHED;
  - ::ffff:127.0.0.2:7070 (IPv4-mapped, from IPv6 sockets): 5 in TIME_WAIT, 1 ESTABLISHED;
and the server side of each connection (local port = a listening port, never ephemeral).
"""

from __future__ import annotations

import json
import socket
import struct
from pathlib import Path

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils import socket_table as st
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import parse_port_list

FIXTURES = Path(__file__).resolve().parent / "fixtures"
LOOP1 = socket.inet_pton(socket.AF_INET, "127.0.0.1")
LOOP2 = socket.inet_pton(socket.AF_INET, "127.0.0.2")
LOOP6 = socket.inet_pton(socket.AF_INET6, "::1")

EXPECTED_TUPLES = {
    (4, LOOP1, LOOP1, 8080): [15, 12],
    (6, LOOP6, LOOP6, 9090): [6, 4],
    (4, LOOP1, LOOP2, 7070): [6, 5],  # IPv4-mapped, counted with IPv4
}
EXPECTED_STATES = {
    "ipv4": {"ESTABLISHED": 9, "TIME_WAIT": 12, "LISTEN": 2},
    "ipv6": {"ESTABLISHED": 5, "TIME_WAIT": 9, "LISTEN": 1},
}


def fixture(name):
    return (FIXTURES / name).read_bytes()


def flags(port_range="40000 40999", reserved="40100-40199"):
    low, high = (int(x) for x in port_range.split())
    return st.ephemeral_flags((low, high), parse_port_list(reserved))


def proc_tally(prefix="busy_", chunk=None, **kwargs):
    tally = st.Tally(flags(**kwargs))
    for name, family in (("tcp.txt", st.AF_INET), ("tcp6.txt", st.AF_INET6)):
        data = fixture(prefix + name)
        size = chunk or len(data) or 1
        st.tally_proc_chunks([data[i:i + size] for i in range(0, len(data), size)], family, tally)
    return tally


def netlink_tally(prefix="busy_", **kwargs):
    tally = st.Tally(flags(**kwargs))
    for name, family in (("inet.bin", st.AF_INET), ("inet6.bin", st.AF_INET6)):
        assert st.tally_netlink(fixture(prefix + name), family, tally) is True  # the dump ends with NLMSG_DONE
    return tally


def fake_root(tmp_path, prefix="busy_", sysctl_overrides=None, leave_out=()):
    """A directory tree holding the captured /proc files, for collect(root=...)."""
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


# ---------------------------------------------------------------- parsing
@pytest.mark.parametrize("reader", [proc_tally, netlink_tally], ids=["proc", "netlink"])
def test_busy_table_tuples_and_states(reader):
    tally = reader()
    assert tally.tuples() == EXPECTED_TUPLES
    assert tally.state_counts() == EXPECTED_STATES
    assert tally.listening == {8080, 9090, 7070}


@pytest.mark.parametrize("chunk", [1, 7, 64, 150, 4096])
def test_proc_chunks_split_anywhere(chunk):
    tally = proc_tally(chunk=chunk)
    assert tally.tuples() == EXPECTED_TUPLES
    assert tally.state_counts() == EXPECTED_STATES


def test_explicit_port_outside_range_is_not_ephemeral():
    """The socket bound to port 5000 (outside 40000-40999) talks to 127.0.0.1:8080 but is not counted."""
    tally = proc_tally()
    assert tally.tuples()[(4, LOOP1, LOOP1, 8080)][0] == 15  # 12 + 3 client ports, not 16
    # with a range that covers 5000 it would be
    wide = proc_tally(port_range="1024 65535", reserved="")
    assert wide.tuples()[(4, LOOP1, LOOP1, 8080)][0] == 16


def test_server_side_of_connections_never_ephemeral():
    """Accepted sockets use the listening port; with a range covering 7070-9090 they still do not count."""
    tally = netlink_tally(port_range="1024 65535", reserved="")
    remotes = {(key[0], key[3]) for key in tally.tuples()}
    assert all(item[1] in (7070, 8080, 9090) for item in remotes)


def test_ipv4_mapped_counted_with_ipv4():
    tally = netlink_tally()
    keys = [key for key in tally.tuples() if key[3] == 7070]
    assert keys == [(4, LOOP1, LOOP2, 7070)]
    assert st.format_address(4, keys[0][2]) == "127.0.0.2"


def test_reserved_ports_are_not_ephemeral():
    """Reserving the whole range leaves no socket counted (and nothing breaks)."""
    tally = proc_tally(reserved="40000-40999")
    assert tally.tuples() == {}
    assert sum(tally.states[st.AF_INET].values()) == 23


@pytest.mark.parametrize("reader", [proc_tally, netlink_tally], ids=["proc", "netlink"])
def test_empty_table(reader):
    tally = reader(prefix="empty_")
    assert tally.tuples() == {}
    assert tally.state_counts() == {"ipv4": {}, "ipv6": {}}


def test_netlink_error_is_a_table_error():
    error = struct.pack("=IHHII", 36, st.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -13) + bytes(16)
    with pytest.raises(st.TableError, match="Permission denied"):
        st.tally_netlink(error, st.AF_INET, st.Tally(flags()))


def test_netlink_request_layout():
    request = st.netlink_request(st.AF_INET6, seq=7)
    assert len(request) == 72
    assert struct.unpack_from("=IHHII", request) == (72, 20, 0x301, 7, 0)
    assert struct.unpack_from("=BBBBI", request, 16) == (10, 6, 0, 0, 0xFFFFFFFF)


@pytest.mark.parametrize("text, address", [
    ("0100007F", "127.0.0.1"),
    ("00000000000000000000000001000000", "::1"),
    ("0000000000000000FFFF00000200007F", "::ffff:127.0.0.2"),
])
def test_hex_address(text, address):
    family = socket.AF_INET if len(text) == 8 else socket.AF_INET6
    if struct.pack("=I", 1) == b"\x00\x00\x00\x01":  # big-endian hosts print the words the other way round
        pytest.skip("fixtures are from a little-endian host")
    assert st.hex_address(text.encode()) == socket.inet_pton(family, address)


def test_ephemeral_flags():
    table = st.ephemeral_flags((40000, 40999), ((39990, 40004), (40500, 40500), (41000, 41010)))
    assert sum(table) == 1000 - 5 - 1
    assert not table[40004] and table[40005] and not table[40500] and not table[41000]
    assert sum(st.ephemeral_flags(None, ())) == 0


# ---------------------------------------------------------------- counters, settings
def test_counter_files():
    netstat = st.parse_counter_file(fixture("busy_netstat.txt").decode())
    snmp = st.parse_counter_file(fixture("busy_snmp.txt").decode())
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
    rules = st.reuse_rules({"tw_reuse": reuse, "timestamps": stamps, "tw_reuse_delay": 250})
    assert (rules["remote"], rules["loopback"], rules["inactive"]) == expected
    assert rules["delay_seconds"] == 0.25


def test_reuse_delay_before_6_14_is_one_second():
    assert st.reuse_rules({"tw_reuse": 1, "timestamps": 1, "tw_reuse_delay": None})["delay_seconds"] == 1.0


# ---------------------------------------------------------------- the whole audit on a captured host
def test_audit_on_captured_host(tmp_path):
    result = st.audit(top=10, root=fake_root(tmp_path))
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
    result = st.audit(top=1, root=fake_root(tmp_path, sysctl_overrides={"net.ipv4.tcp_tw_reuse": "0"}))
    assert len(result["destinations"]) == 1
    first = result["destinations"][0]
    assert first["endpoint"] == "127.0.0.1:8080" and first["blocking"] == 15 and first["reuse"] is False


def test_audit_fully_reserved_range(tmp_path):
    root = fake_root(tmp_path, sysctl_overrides={"net.ipv4.ip_local_reserved_ports": "39000-41000"})
    result = st.audit(root=root)
    assert result["ephemeral"]["usable"] == 0
    assert result["destinations"] == []
    assert result["capacity"]["remote"]["max_new_connections_per_second"] == 0.0
    assert result["verdict"] == "critical"
    assert result["findings"][0] == "no usable ephemeral ports: the range 40000-40999 is entirely reserved"
    assert result["recommendations"]["port_range"] == "32768 65535"


def test_audit_reuse_without_timestamps(tmp_path):
    root = fake_root(tmp_path, sysctl_overrides={"net.ipv4.tcp_tw_reuse": "1", "net.ipv4.tcp_timestamps": "0"})
    result = st.audit(root=root)
    assert result["verdict"] == "warning"
    assert "tcp_tw_reuse is 1 but tcp_timestamps is 0: reuse is inactive" in result["findings"]
    assert result["recommendations"] == {"timestamps": 1}
    assert result["capacity"]["remote"]["reuse"] is False


def test_audit_empty_host(tmp_path):
    result = st.audit(root=fake_root(tmp_path, prefix="empty_"))
    assert result["sockets"] == {"total": 0, "by_state": {}, "ipv4": {}, "ipv6": {}}
    assert result["destinations"] == [] and result["ports_held"] == 0
    assert result["verdict"] == "ok"


def test_audit_says_what_it_could_not_read(tmp_path):
    root = fake_root(tmp_path, leave_out=("snmp", "tcp", "tcp6"))
    (Path(root) / "proc/sys/net/ipv4/tcp_max_tw_buckets").unlink()
    result = st.audit(root=root)
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

    result = st.audit(root=root, sample_seconds=2, sleep=sleep)
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
    def refuse(tally, families=(), timeout=0):
        raise st.TableError("netlink sock_diag unavailable: [Errno 93] Protocol not supported")

    monkeypatch.setattr(st, "read_netlink", refuse)
    result = st.audit()
    assert result["source"] == "proc"
    assert result["notes"][0].startswith("netlink sock_diag unavailable")
    assert result["sockets"] is not None
