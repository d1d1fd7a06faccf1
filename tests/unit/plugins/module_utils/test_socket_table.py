"""socket_table on socket tables and netlink dumps captured from a real kernel.

The fixtures were captured by fixtures/capture.py inside a network namespace: range 40000-40999 with
40100-40199 reserved (900 usable), tcp_tw_reuse 2 (the default), and
  - 127.0.0.1:8080 (IPv4): 12 client ports in TIME_WAIT and 3 ESTABLISHED, plus one socket bound to the
    explicit port 5000 (outside the range);
  - [::1]:9090 (IPv6): 4 in TIME_WAIT, 2 ESTABLISHED;
  - ::ffff:127.0.0.2:7070 (IPv4-mapped, from IPv6 sockets): 5 in TIME_WAIT, 1 ESTABLISHED;
and the server side of each connection (local port = a listening port, never ephemeral).
"""

from __future__ import annotations

import socket
import struct
from pathlib import Path

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils import socket_table as st
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import parse_port_list, port_flags

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
    return port_flags((low, high), parse_port_list(reserved))


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


def test_listening_ports_are_read_by_the_host_and_parsed_here(tmp_path):
    """LinuxHost.listening_ports() reads /proc/net/tcp{,6} and counts them with this module's parser."""
    net = tmp_path / "proc/net"
    net.mkdir(parents=True)
    (net / "tcp").write_bytes(fixture("busy_tcp.txt"))
    assert LinuxHost(str(tmp_path)).listening_ports() == {8080, 7070}  # no tcp6: IPv6 listeners unknown, no failure
    (net / "tcp6").write_bytes(fixture("busy_tcp6.txt"))
    assert LinuxHost(str(tmp_path)).listening_ports() == {8080, 9090, 7070}
    assert LinuxHost(str(tmp_path / "nowhere")).listening_ports() == set()


# ---------------------------------------------------------------- malformed input (issue 13, finding 5)
def _messages(data):
    """The (offset, length) of each netlink message of a captured dump."""
    out = []
    pos = 0
    while pos + 16 <= len(data):
        length = struct.unpack_from("=I", data, pos)[0]
        out.append((pos, length))
        pos += (length + 3) & ~3
    return out


@pytest.mark.parametrize("cut", ["header", "body", "length_beyond", "length_short", "error_short"])
def test_truncated_netlink_is_a_table_error(cut):
    """Each way a dump can be cut short raises TableError (never IndexError or struct.error)."""
    data = bytearray(fixture("busy_inet.bin"))
    first, length = _messages(bytes(data))[0]
    if cut == "header":
        buf = bytes(data[:first + 10])
    elif cut == "body":
        struct.pack_into("=I", data, first, 40)  # a SOCK_DIAG_BY_FAMILY message shorter than inet_diag_msg
        buf = bytes(data[:first + 40])
    elif cut == "length_beyond":
        buf = bytes(data[:first + length - 1])
    elif cut == "length_short":
        struct.pack_into("=I", data, first, 8)
        buf = bytes(data)
    else:
        buf = struct.pack("=IHHII", 18, st.NLMSG_ERROR, 0, 1, 0) + b"\x00\x00"
    with pytest.raises(st.TableError, match="malformed netlink message"):
        st.tally_netlink(buf, st.AF_INET, st.Tally(flags()))


def test_the_captured_dump_still_parses_whole():
    assert _messages(fixture("busy_inet.bin"))[0][1] >= 16 + st.INET_DIAG_MSG_LEN
    assert netlink_tally().tuples() == EXPECTED_TUPLES


@pytest.mark.parametrize("line", [
    b"   0: 0100007F:1F90 0100007F:9C4",            # remote port of 3 digits
    b"   0: 0100007F:1F90 0100007F 06 x",           # no port
    b"   0: 0100007G:9C41 0100007F:1F90 06 x",      # not hex
    b"   0: 0100007F:9C41 0100007F:1F90 6 x",       # state of one digit
    b"   0: 0100007F:9C41 0100007F:1F90 XX x",      # state not hex
    b"   0: 00000000000000000000000001000000:9C41 0100007F:1F90 06 x",  # IPv6 address in the IPv4 table
    b"   0: 0100007F:+C41 0100007F:1F90 06 x",      # int() would take a sign
    b"   0: 0100007F:9_41 0100007F:1F90 06 x",      # and an underscore
    b"\x00\xff\xfe",
    b"a b c",
])
def test_bad_proc_lines_are_refused_not_raised(line):
    tally = st.Tally(flags(port_range="1024 65535", reserved=""))
    st.tally_proc_lines([line], st.AF_INET, tally, {})
    assert tally.bad_lines == 1
    assert tally.tuples() == {} and tally.state_counts() == {"ipv4": {}, "ipv6": {}}


def test_header_and_blank_lines_are_not_bad():
    tally = proc_tally()
    assert tally.bad_lines == 0
    st.tally_proc_lines([b"", b"  "], st.AF_INET, tally, {})
    assert tally.bad_lines == 0


def test_good_lines_around_a_bad_one_still_count():
    lines = fixture("busy_tcp.txt").split(b"\n")
    lines.insert(3, b"   9: garbage:zz 0100007F:1F90 06 x")
    tally = st.Tally(flags())
    st.tally_proc_lines(lines, st.AF_INET, tally, {})
    assert tally.bad_lines == 1
    assert tally.tuples()[(4, LOOP1, LOOP1, 8080)] == [15, 12]
