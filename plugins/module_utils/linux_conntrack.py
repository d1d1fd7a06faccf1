# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's connection-tracking table over ctnetlink: requests and a parser (pure, standard library).

ctnetlink is NETLINK_NETFILTER, subsystem NFNL_SUBSYS_CTNETLINK; ``conntrack -L``/``-S``/``-C`` (Debian's
conntrack) speak it too.  The kernel answers only a process with CAP_NET_ADMIN in the network namespace's user
namespace (root): nfnetlink checks it for every message.  Three requests:

- dump_request: IPCTNL_MSG_CT_GET with NLM_F_DUMP, every entry of the namespace's table (``conntrack -L``);
- stats_cpu_request: IPCTNL_MSG_CT_GET_STATS_CPU, one message per CPU with its counters (``conntrack -S``):
  insert_failed, drop, early_drop, clash_resolve...;
- stats_request: IPCTNL_MSG_CT_GET_STATS, the table's entry count and nf_conntrack_max (``conntrack -C``).

The counters are read over ctnetlink rather than from /proc/net/stat/nf_conntrack: the table dump needs the
socket anyway, the one parser checks both, and /proc/net/stat/nf_conntrack exists only with the kernel's
CONFIG_NF_CONNTRACK_PROCFS (marked obsolete there).

parse_entries is the hot path (a busy NAT host has 10^5 to 10^6 entries): one pass over each buffer, plain
ints and bytes, one Entry per entry.  Every length is checked before it is used; anything malformed raises
ConntrackError, never IndexError or struct.error.  LinuxHost.netlink_dump does the socket work.
"""

from __future__ import annotations

import os
import struct
from typing import NamedTuple, Optional

NETLINK_NETFILTER = 12
NFNL_SUBSYS_CTNETLINK = 1
IPCTNL_MSG_CT_NEW = 0
IPCTNL_MSG_CT_GET = 1
IPCTNL_MSG_CT_GET_STATS_CPU = 4
IPCTNL_MSG_CT_GET_STATS = 5
CT_NEW = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW
CT_GET = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET
CT_GET_STATS_CPU = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS_CPU
CT_GET_STATS = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET_STATS

NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLMSG_HDRLEN = 16
NFGENMSG_LEN = 4
AF_UNSPEC, AF_INET, AF_INET6 = 0, 2, 10
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER

# attributes (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP = 1
CTA_PROTOINFO_TCP_STATE = 1
# enum ctattr_stats_cpu: the counters the kernel still keeps, by attribute number
STATS_CPU = {2: "found", 4: "invalid", 8: "insert", 9: "insert_failed", 10: "drop", 11: "early_drop",
             12: "error", 13: "search_restart", 14: "clash_resolve", 15: "chain_toolong"}
CTA_STATS_GLOBAL_ENTRIES, CTA_STATS_GLOBAL_MAX_ENTRIES = 1, 2

# linux/netfilter/nf_conntrack_common.h, nf_conntrack_tcp.h
IPS_SRC_NAT = 1 << 4
IPS_DST_NAT = 1 << 5
TCP_CONNTRACK_STATES = ("NONE", "SYN_SENT", "SYN_RECV", "ESTABLISHED", "FIN_WAIT", "CLOSE_WAIT", "LAST_ACK",
                        "TIME_WAIT", "CLOSE", "SYN_SENT2")
TCP_TIME_WAIT, TCP_CLOSE = 7, 8

_HEADER = struct.Struct("=IHHII")
_ATTR = struct.Struct("=HH")
_U32 = struct.Struct(">I")
_ADDRESS_SIZE = {CTA_IP_V4_SRC: 4, CTA_IP_V4_DST: 4, CTA_IP_V6_SRC: 16, CTA_IP_V6_DST: 16}
_TCP_STATE = struct.Struct("=HHHHB")


def _headers(*pairs):
    """Attribute headers (length, type) as the big-endian u32s the fast-path structs below read them as."""
    return tuple(struct.unpack(">I", _ATTR.pack(length, kind))[0] for length, kind in pairs)


# The fast path: a tuple as the kernel lays it out (IP addresses, then protocol number and both ports), read in one
# unpack and taken only when all seven attribute headers are the expected ones; anything else is walked.
_NESTED = 0x8000
_TUPLE_LAYOUT = {
    48: (struct.Struct(">II4sI4sIIB3xIH2xIH2x"),
         _headers((20, _NESTED | CTA_TUPLE_IP), (8, CTA_IP_V4_SRC), (8, CTA_IP_V4_DST), (28, _NESTED | CTA_TUPLE_PROTO),
                  (5, CTA_PROTO_NUM), (6, CTA_PROTO_SRC_PORT), (6, CTA_PROTO_DST_PORT))),
    72: (struct.Struct(">II16sI16sIIB3xIH2xIH2x"),
         _headers((44, _NESTED | CTA_TUPLE_IP), (20, CTA_IP_V6_SRC), (20, CTA_IP_V6_DST),
                  (28, _NESTED | CTA_TUPLE_PROTO),
                  (5, CTA_PROTO_NUM), (6, CTA_PROTO_SRC_PORT), (6, CTA_PROTO_DST_PORT))),
}


class ConntrackError(Exception):
    """The ctnetlink conversation failed or a message is malformed; the message says which."""


class Entry(NamedTuple):
    """One conntrack entry: the original tuple (as the first packet came), the reply tuple (as replies come
    back; after source NAT its destination is the translated address and port), the status bits and, for TCP,
    the tracker's state (an index into TCP_CONNTRACK_STATES; None for other protocols).  Addresses are packed
    bytes (4 or 16), ports ints (0 where the protocol has none)."""

    family: int
    protocol: int
    src: bytes
    dst: bytes
    sport: int
    dport: int
    reply_src: bytes
    reply_dst: bytes
    reply_sport: int
    reply_dport: int
    status: int
    tcp_state: Optional[int]


# ---------------------------------------------------------------- requests
def _request(kind, flags, family, seq):
    return _HEADER.pack(NLMSG_HDRLEN + NFGENMSG_LEN, kind, flags, seq, 0) + struct.pack("=BBH", family, 0, 0)


def dump_request(family=AF_UNSPEC, seq=1):
    """IPCTNL_MSG_CT_GET with NLM_F_DUMP: every entry of ``family`` (AF_UNSPEC: all) in the namespace's table."""
    if family not in (AF_UNSPEC, AF_INET, AF_INET6):
        raise ValueError("family must be AF_UNSPEC, AF_INET or AF_INET6, not %r" % (family,))
    return _request(CT_GET, NLM_F_REQUEST | NLM_F_DUMP, family, seq)


def stats_cpu_request(seq=1):
    """IPCTNL_MSG_CT_GET_STATS_CPU with NLM_F_DUMP: one message of counters per possible CPU."""
    return _request(CT_GET_STATS_CPU, NLM_F_REQUEST | NLM_F_DUMP, AF_UNSPEC, seq)


def stats_request(seq=1):
    """IPCTNL_MSG_CT_GET_STATS with NLM_F_ACK: one message with the entry count and the maximum, then the ack."""
    return _request(CT_GET_STATS, NLM_F_REQUEST | NLM_F_ACK, AF_UNSPEC, seq)


# ---------------------------------------------------------------- messages
def _strerror(code):
    try:
        return os.strerror(code)
    except (ValueError, OverflowError):
        return "error %d" % code


def _messages(buf, want):
    """Yield (offset, length) of each message whose type is in ``want`` in ``buf``; then, as the last item, (-1, done).

    done is True when the buffer ends the conversation (NLMSG_DONE, or an ack).  A message of another type is
    skipped; an error message raises ConntrackError with the kernel's reason.
    """
    end = len(buf)
    pos = 0
    unpack = _HEADER.unpack_from
    while pos < end:
        if end - pos < NLMSG_HDRLEN:
            raise ConntrackError("malformed netlink message: %d bytes left, less than a header" % (end - pos))
        length, kind, _flags, _seq, _pid = unpack(buf, pos)
        if length < NLMSG_HDRLEN or length > end - pos:
            raise ConntrackError("malformed netlink message: length %d with %d bytes left" % (length, end - pos))
        if kind == NLMSG_DONE:
            yield -1, True
            return
        if kind == NLMSG_ERROR:
            if length < NLMSG_HDRLEN + 4:
                raise ConntrackError("malformed netlink message: an error message of %d bytes" % length)
            code = -struct.unpack_from("=i", buf, pos + NLMSG_HDRLEN)[0]
            if code == 0:
                yield -1, True
                return
            hint = " (reading the conntrack table needs CAP_NET_ADMIN: root)" if code == 1 else ""
            raise ConntrackError("ctnetlink: %s%s" % (_strerror(code), hint))
        if kind in want:
            if length < NLMSG_HDRLEN + NFGENMSG_LEN:
                raise ConntrackError("malformed ctnetlink message: %d bytes, less than its headers" % length)
            yield pos, length
        pos += (length + 3) & ~3
    yield -1, False


def _attr(buf, pos, end):
    """(type without flags, payload start, payload end, next attribute) of the attribute at ``pos``."""
    if end - pos < 4:
        raise ConntrackError("malformed ctnetlink attribute: %d bytes left, less than its header" % (end - pos))
    alen, atype = _ATTR.unpack_from(buf, pos)
    if alen < 4 or alen > end - pos:
        raise ConntrackError("malformed ctnetlink attribute: length %d with %d bytes left" % (alen, end - pos))
    return atype & NLA_TYPE_MASK, pos + 4, pos + alen, pos + ((alen + 3) & ~3)


def _tuple(buf, pos, end):
    """(src, dst, protocol, sport, dport) from a CTA_TUPLE_* attribute's payload."""
    layout = _TUPLE_LAYOUT.get(end - pos)
    if layout is not None:
        h1, h2, src, h3, dst, h4, h5, protocol, h6, sport, h7, dport = layout[0].unpack_from(buf, pos)
        if (h1, h2, h3, h4, h5, h6, h7) == layout[1]:
            return src, dst, protocol, sport, dport
    src = dst = b""
    protocol = sport = dport = 0
    while pos < end:
        kind, start, stop, pos = _attr(buf, pos, end)
        if kind == CTA_TUPLE_IP:
            while start < stop:
                ip_kind, a, b, start = _attr(buf, start, stop)
                size = _ADDRESS_SIZE.get(ip_kind)
                if size is None:
                    continue
                if b - a != size:
                    raise ConntrackError("malformed ctnetlink address: %d bytes, not %d" % (b - a, size))
                if ip_kind & 1:
                    src = buf[a:b]
                else:
                    dst = buf[a:b]
        elif kind == CTA_TUPLE_PROTO:
            while start < stop:
                proto_kind, a, b, start = _attr(buf, start, stop)
                if proto_kind == CTA_PROTO_NUM:
                    if b - a < 1:
                        raise ConntrackError("malformed ctnetlink protocol number: empty")
                    protocol = buf[a]
                elif proto_kind == CTA_PROTO_SRC_PORT or proto_kind == CTA_PROTO_DST_PORT:
                    if b - a < 2:
                        raise ConntrackError("malformed ctnetlink port: %d bytes" % (b - a))
                    if proto_kind == CTA_PROTO_SRC_PORT:
                        sport = (buf[a] << 8) | buf[a + 1]
                    else:
                        dport = (buf[a] << 8) | buf[a + 1]
    return src, dst, protocol, sport, dport


def _tcp_state(buf, pos, end):
    """CTA_PROTOINFO_TCP_STATE from a CTA_PROTOINFO attribute's payload, None when absent."""
    if end - pos >= 9:  # the kernel puts the state first in CTA_PROTOINFO_TCP
        length, kind, state_length, state_kind, state = _TCP_STATE.unpack_from(buf, pos)
        if kind & NLA_TYPE_MASK == CTA_PROTOINFO_TCP and length >= 9 and state_length == 5 and state_kind == 1:
            return state
    tcp = _find(buf, pos, end, CTA_PROTOINFO_TCP)
    state = _find(buf, tcp[0], tcp[1], CTA_PROTOINFO_TCP_STATE) if tcp else None
    if state is None:
        return None
    if state[1] - state[0] < 1:
        raise ConntrackError("malformed ctnetlink TCP state: empty")
    return buf[state[0]]


def _find(buf, pos, end, want):
    """(payload start, payload end) of the first attribute of type ``want`` between ``pos`` and ``end``, or None."""
    while pos < end:
        kind, start, stop, pos = _attr(buf, pos, end)
        if kind == want:
            return start, stop
    return None


def _entry(buf, pos, length):
    family = buf[pos + NLMSG_HDRLEN]
    end = pos + length
    at = pos + NLMSG_HDRLEN + NFGENMSG_LEN
    orig = reply = None
    status = 0
    state = None
    unpack = _ATTR.unpack_from
    while at < end:  # _attr written out (this loop runs for every attribute of every entry); it raises
        alen, kind = unpack(buf, at) if end - at >= 4 else (0, 0)
        if alen < 4 or alen > end - at:
            _attr(buf, at, end)  # raises ConntrackError, saying what is wrong
        kind &= NLA_TYPE_MASK
        if kind == CTA_TUPLE_ORIG:
            orig = _tuple(buf, at + 4, at + alen)
        elif kind == CTA_TUPLE_REPLY:
            reply = _tuple(buf, at + 4, at + alen)
        elif kind == CTA_STATUS:
            if alen < 8:
                raise ConntrackError("malformed ctnetlink status: %d bytes" % (alen - 4))
            status = _U32.unpack_from(buf, at + 4)[0]
        elif kind == CTA_PROTOINFO:
            state = _tcp_state(buf, at + 4, at + alen)
        at += (alen + 3) & ~3
    if orig is None or reply is None:
        raise ConntrackError("malformed ctnetlink entry: no %s tuple" % ("original" if orig is None else "reply"))
    return Entry(family, orig[2], orig[0], orig[1], orig[3], orig[4], reply[0], reply[1], reply[3], reply[4],
                 status, state)


def parse_entries(buf, out):
    """Append to ``out`` an Entry for each entry in one received buffer of a table dump; True when the dump is done.

    Raises ConntrackError for a malformed message or attribute, or for the kernel's error (EPERM without
    CAP_NET_ADMIN).
    """
    append = out.append
    for pos, length in _messages(buf, (CT_NEW, CT_GET)):  # 6.18 sends IPCTNL_MSG_CT_NEW
        if pos < 0:
            return length
        append(_entry(buf, pos, length))
    return False  # pragma: no cover - _messages always ends with (-1, done)


def _u32_attributes(buf, pos, length, names):
    """{name: value} of the u32 (big-endian) attributes of one message whose numbers ``names`` knows."""
    out = {}
    end = pos + length
    at = pos + NLMSG_HDRLEN + NFGENMSG_LEN
    while at < end:
        kind, start, stop, at = _attr(buf, at, end)
        name = names.get(kind)
        if name is not None:
            if stop - start < 4:
                raise ConntrackError("malformed ctnetlink counter %s: %d bytes" % (name, stop - start))
            out[name] = _U32.unpack_from(buf, start)[0]
    return out


def parse_stats_cpu(buf, totals):
    """Add each CPU's counters in one received buffer to ``totals`` {name: int}; True when the dump is done.

    ``totals["cpus"]`` counts the CPU messages seen.
    """
    for pos, length in _messages(buf, (CT_GET_STATS_CPU,)):
        if pos < 0:
            return length
        for name, value in _u32_attributes(buf, pos, length, STATS_CPU).items():
            totals[name] = totals.get(name, 0) + value
        totals["cpus"] = totals.get("cpus", 0) + 1
    return False  # pragma: no cover


def parse_stats(buf, out):
    """Put ``count`` and ``max`` from an IPCTNL_MSG_CT_GET_STATS reply into ``out``; True when the ack came."""
    names = {CTA_STATS_GLOBAL_ENTRIES: "count", CTA_STATS_GLOBAL_MAX_ENTRIES: "max"}
    for pos, length in _messages(buf, (CT_GET_STATS,)):
        if pos < 0:
            return length
        out.update(_u32_attributes(buf, pos, length, names))
    return False  # pragma: no cover


def tcp_state_name(state):
    """The conntrack name of a TCP tracker state ("ESTABLISHED", "TIME_WAIT"...), None for None."""
    if state is None:
        return None
    return TCP_CONNTRACK_STATES[state] if 0 <= state < len(TCP_CONNTRACK_STATES) else "STATE_%d" % state
