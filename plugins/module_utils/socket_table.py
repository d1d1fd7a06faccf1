# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's TCP socket table, parsed into a tally: pure, from bytes.

Two forms of the same table: the replies of a netlink ``sock_diag`` dump
(what ``ss`` uses) and the text of /proc/net/tcp and /proc/net/tcp6.  Either
way each socket costs a few byte comparisons: sockets are tallied in dicts
keyed by the raw address bytes, and addresses become text only for the
destinations reported.  Reading the bytes is LinuxHost's job; what the
tally means is port_usage's.  Standard library only.
"""

from __future__ import annotations

import os
import socket
import struct

from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_rules import unmap_pair

AF_INET = 2
AF_INET6 = 10
NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300
IPPROTO_TCP = 6
ALL_STATES = 0xFFFFFFFF
NLMSG_HDRLEN = 16
INET_DIAG_MSG_LEN = 72  # struct inet_diag_msg

# The kernel's TCP states (include/net/tcp_states.h)
STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
    13: "BOUND_INACTIVE",
}
TIME_WAIT = 6
CLOSE = 7
LISTEN = 10
NEW_SYN_RECV = 12
BOUND_INACTIVE = 13
# What the sampling dumps of process attribution ask for: the sockets that are alive (owned by a file
# descriptor), listeners (to know which local ports are servers') and bound-but-unconnected ones.
# TIME_WAIT, the bulk of a busy table, is left to the final dump.
LIVE_STATES = sum(1 << state for state in (1, 2, 3, 4, 5, 8, 9, 10, 11, BOUND_INACTIVE))
# States that hold no (local, remote) pair of their own: a listener, an unconnected socket, a
# request socket (it uses the listener's port).
NOT_HOLDING = frozenset((7, 10, 12, 13))
_HEX_STATE = dict((b"%02X" % n, n) for n in range(256))

# Where the kernel prints the table, per address family (a kernel without IPv6 has no tcp6).
PROC_TABLES = (("/proc/net/tcp", AF_INET), ("/proc/net/tcp6", AF_INET6))

_V6_LOOPBACK = b"\x00" * 15 + b"\x01"

# TIME_WAIT lasts TCP_TIMEWAIT_LEN, a fixed 60 s, and its timer is armed when the socket enters it: the time left
# on a TIME_WAIT socket's timer tells when its connection closed.  So one dump tells how many connections entered
# TIME_WAIT in the last RECENT_SECONDS towards each tuple: a rate of connections that leave a TIME_WAIT on this
# host, measured without a sample.  netlink gives the time left in milliseconds (idiag_expires); /proc/net/tcp in
# clock ticks (USER_HZ, 100 per second), after "03:" in its "tr:tm->when" column.
TIME_WAIT_MS = 60000
RECENT_SECONDS = 10
USER_HZ = 100
_EXPIRES = struct.Struct("=I").unpack_from  # idiag_expires, in the host's byte order


class TableError(Exception):
    """The socket table could not be read from this source."""


class Tally:
    """Counts of one socket table: states per family, and ephemeral ports held per tuple.

    ``ephemeral`` is a 65536-byte table (ports.port_flags), non-zero for the
    ports automatic allocation hands out (inside the range and not reserved).
    ``source`` is set by the reader: "netlink" or "proc".  ``recent`` and
    ``recent_hex`` count, per tuple as ``raw`` and ``hex`` do, the TIME_WAIT
    sockets that entered TIME_WAIT in the last ``recent_seconds``
    (``time_wait_recent()``).
    """

    def __init__(self, ephemeral, recent_seconds=RECENT_SECONDS):
        self.ephemeral = ephemeral
        self.recent_seconds = recent_seconds
        # a TIME_WAIT socket with more than this left on its timer entered TIME_WAIT in the last recent_seconds
        self.recent_after_ms = TIME_WAIT_MS - recent_seconds * 1000
        self.recent = {AF_INET: {}, AF_INET6: {}}
        self.recent_hex = {AF_INET: {}, AF_INET6: {}}
        self.states = {AF_INET: {}, AF_INET6: {}}
        self.listening = set()
        # netlink: {family: {dport + src + dst (34 raw bytes): [in use, in TIME_WAIT]}}
        self.raw = {AF_INET: {}, AF_INET6: {}}
        # /proc: {family: {(local address hex, remote address:port hex): [in use, in TIME_WAIT]}}
        self.hex = {AF_INET: {}, AF_INET6: {}}
        self.source = None
        self.bad_lines = 0  # /proc lines refused as not a socket

    def tuples(self):
        """{(family, local address bytes, remote address bytes, remote port): [in use, in TIME_WAIT]}.

        IPv4-mapped IPv6 pairs (::ffff:a.b.c.d) are counted with IPv4 (family 4).
        """
        out = {}
        for family, table in self.raw.items():
            size = 4 if family == AF_INET else 16
            for key, value in table.items():
                _add(out, family, key[2:2 + size], key[18:18 + size], (key[0] << 8) | key[1], value)
        for family, table in self.hex.items():
            for (local, remote), value in table.items():
                address, port = remote.split(b":")
                _add(out, family, hex_address(local), hex_address(address), int(port, 16), value)
        return out

    def time_wait_recent(self):
        """{(family, local address bytes, remote address bytes, remote port): sockets that entered TIME_WAIT in the
        last ``recent_seconds``}, keyed as ``tuples()``; tuples with none are left out."""
        out = {}
        for family, table in self.recent.items():
            size = 4 if family == AF_INET else 16
            for key, count in table.items():
                _add(out, family, key[2:2 + size], key[18:18 + size], (key[0] << 8) | key[1], (count, 0))
        for family, table in self.recent_hex.items():
            for (local, remote), count in table.items():
                address, port = remote.split(b":")
                _add(out, family, hex_address(local), hex_address(address), int(port, 16), (count, 0))
        return dict((key, value[0]) for key, value in out.items())

    def state_counts(self):
        """{"ipv4": {state name: count}, "ipv6": {...}}."""
        return dict((name, dict((STATES.get(state, "STATE_%d" % state), count)
                                for state, count in sorted(counts.items())))
                    for name, counts in (("ipv4", self.states[AF_INET]), ("ipv6", self.states[AF_INET6])))


def _add(out, family, local, remote, port, value):
    if family == AF_INET6:
        pair = unmap_pair(local, remote)
        if pair is not None:
            family, (local, remote) = AF_INET, pair
    key = (4 if family == AF_INET else 6, local, remote, port)
    have = out.get(key)
    if have is None:
        out[key] = [value[0], value[1]]
    else:
        have[0] += value[0]
        have[1] += value[1]


def hex_address(text):
    """An address as /proc/net/tcp prints it (32-bit words in host order, hex) as network-order bytes."""
    return b"".join(struct.pack("=I", int(text[i:i + 8], 16)) for i in range(0, len(text), 8))


def format_address(family, packed):
    return socket.inet_ntop(socket.AF_INET if family == 4 else socket.AF_INET6, packed)


def is_loopback(family, packed):
    return packed[0] == 127 if family == 4 else packed == _V6_LOOPBACK


# ---------------------------------------------------------------- netlink
def netlink_request(family, seq=1, states=ALL_STATES):
    """A SOCK_DIAG_BY_FAMILY dump request for the TCP sockets of ``family`` in ``states`` (a bit per state).

    The mask includes BOUND_INACTIVE (1 << 13): since Linux 6.x a socket bound
    to a port but not connected is dumped then, with state CLOSE (7).
    """
    body = struct.pack("=BBBBI", family, IPPROTO_TCP, 0, 0, states) + bytes(48)
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def tally_netlink(buf, family, tally, observe=None, observe_time_wait=True):
    """Count the inet_diag messages in one received buffer; True when the dump is done.

    ``observe``, when given, is called for every socket whose local port is
    ephemeral and not a listener's (those that hold a port, and bound but
    unconnected ones), as ``observe(family, state, key, cookie, expires,
    uid, inode)``: ``key`` the 34 bytes remote port + local address + remote
    address (as in ``Tally.raw``), ``cookie`` the kernel's 8-byte socket
    cookie (a TIME_WAIT socket keeps the cookie of the connection it was),
    ``expires`` the milliseconds left on its timer (TIME_WAIT: of the 60 s),
    ``inode`` 0 for a socket no file descriptor owns.  A TIME_WAIT socket that
    entered it recently is also counted in ``tally.recent``.  ``observe_time_wait``
    False leaves TIME_WAIT sockets (the bulk of a busy table) to the tally.

    Every length is checked before it is used: a message shorter than its
    header, longer than what is left of the buffer, or an inet_diag message
    shorter than ``struct inet_diag_msg`` raises TableError (and the caller
    reads /proc instead), never IndexError or struct.error.
    """
    states, table = tally.states[family], tally.raw[family]
    ephemeral, listening = tally.ephemeral, tally.listening
    recent, recent_after = tally.recent[family], tally.recent_after_ms
    unpack = struct.unpack_from
    end = len(buf)
    pos = 0
    while pos < end:
        if end - pos < NLMSG_HDRLEN:
            raise TableError("malformed netlink message: %d bytes left, less than a header" % (end - pos))
        length, kind = unpack("=IH", buf, pos)
        if length < NLMSG_HDRLEN or length > end - pos:
            raise TableError("malformed netlink message: length %d with %d bytes left" % (length, end - pos))
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            return _acknowledged(buf, pos, length)
        if kind == SOCK_DIAG_BY_FAMILY:
            if length < NLMSG_HDRLEN + INET_DIAG_MSG_LEN:
                raise TableError("malformed netlink message: an inet_diag message of %d bytes" % length)
            state = buf[pos + 17]
            states[state] = states.get(state, 0) + 1
            sport = (buf[pos + 20] << 8) | buf[pos + 21]
            if state == LISTEN:
                listening.add(sport)
            elif ephemeral[sport] and sport not in listening:
                key = buf[pos + 22:pos + 56]
                if state not in NOT_HOLDING:
                    have = table.get(key)
                    if have is None:
                        table[key] = [1, 1 if state == TIME_WAIT else 0]
                    else:
                        have[0] += 1
                        if state == TIME_WAIT:
                            have[1] += 1
                    if state == TIME_WAIT and _EXPIRES(buf, pos + 68)[0] > recent_after:
                        recent[key] = recent.get(key, 0) + 1
                if observe is not None and state != NEW_SYN_RECV and (observe_time_wait or state != TIME_WAIT):
                    expires, dummy_r, dummy_w, uid, inode = unpack("=IIIII", buf, pos + 68)
                    observe(family, state, key, buf[pos + 60:pos + 68], expires, uid, inode)
        pos += (length + 3) & ~3
    return False


def _acknowledged(buf, pos, length):
    """True for the NLMSG_ERROR message that ends a dump (error 0); raises TableError for any other."""
    if length < NLMSG_HDRLEN + 4:
        raise TableError("malformed netlink message: an error message of %d bytes" % length)
    code = -struct.unpack_from("=i", buf, pos + 16)[0]
    if code == 0:
        return True
    raise TableError("sock_diag: %s" % _strerror(code))


def _strerror(code):
    try:
        return os.strerror(code)
    except (ValueError, OverflowError):
        return "error %d" % code


# ---------------------------------------------------------------- /proc/net/tcp
_HEX_DIGITS = b"0123456789ABCDEFabcdef"
_ADDRESS_HEX = {AF_INET: 8, AF_INET6: 32}


def proc_endpoint_ok(field, family):
    """Whether ``field`` is "ADDRESS:PORT" in /proc/net/tcp's hex for ``family`` (8 or 32 + 4 hex digits)."""
    size = _ADDRESS_HEX[family]
    return (len(field) == size + 5 and field[size:size + 1] == b":"
            and not field[:size].translate(None, _HEX_DIGITS) and not field[size + 1:].translate(None, _HEX_DIGITS))


def tally_proc_lines(lines, family, tally, ports):
    """Count complete /proc/net/tcp{,6} lines (bytes, header line allowed).

    ``ports`` caches {port hex: allocated automatically} across calls.  A line
    that is not the header and not a socket as the kernel prints it (state
    two hex digits, both endpoints hex ADDRESS:PORT of the family's size) is
    refused: counted in ``tally.bad_lines``, never raised.  A TIME_WAIT line
    whose timer has more than ``tally.recent_after_ms`` left is also counted in
    ``tally.recent_hex``.
    """
    states = tally.states[family]
    table = tally.hex[family]
    recent = tally.recent_hex[family]
    recent_after = tally.recent_after_ms * USER_HZ // 1000
    ephemeral = tally.ephemeral
    listening = ports.setdefault("listening", set())
    for line in lines:
        fields = line.split(None, 4)
        if len(fields) < 4:
            if fields:
                tally.bad_lines += 1
            continue
        state = _HEX_STATE.get(fields[3])
        if state is None or not proc_endpoint_ok(fields[1], family) or not proc_endpoint_ok(fields[2], family):
            if fields[0] != b"sl":  # the header
                tally.bad_lines += 1
            continue
        states[state] = states.get(state, 0) + 1
        local = fields[1]
        port = local[-4:]
        if state == LISTEN:
            listening.add(port)
            tally.listening.add(int(port, 16))
            continue
        eph = ports.get(port)
        if eph is None:
            eph = ports[port] = bool(ephemeral[int(port, 16)])
        if eph and state not in NOT_HOLDING and port not in listening:
            key = (local[:-5], fields[2])
            have = table.get(key)
            if have is None:
                have = table[key] = [0, 0]
            have[0] += 1
            if state == TIME_WAIT:
                have[1] += 1
                if len(fields) > 4 and proc_ticks_left(fields[4]) > recent_after:
                    recent[key] = recent.get(key, 0) + 1


def proc_ticks_left(rest):
    """The clock ticks left on a socket's timer from the columns after the state ("tx:rx tr:when ..."); -1 when
    they are not as the kernel prints them."""
    parts = rest.split(None, 2)
    if len(parts) < 2:
        return -1
    timer = parts[1]
    if len(timer) != 11 or timer[2:3] != b":" or timer[3:].translate(None, _HEX_DIGITS):
        return -1
    return int(timer[3:], 16)


def tally_proc_chunks(chunks, family, tally):
    """Count a /proc/net/tcp{,6} file given as an iterable of byte chunks split anywhere."""
    ports = {}
    rest = b""
    for chunk in chunks:
        lines = (rest + chunk).split(b"\n")
        rest = lines.pop()
        tally_proc_lines(lines, family, tally, ports)
    if rest:
        tally_proc_lines([rest], family, tally, ports)


def listener_tally():
    """A Tally in which no port is ephemeral: it counts states and listening ports only."""
    return Tally(bytearray(65536))
