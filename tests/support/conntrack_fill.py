"""Fill a network namespace's conntrack table with source-NATed flows over ctnetlink (bench/nat.py; standard library).

    ip netns exec NS python3 -m tests.support.conntrack_fill --count 100000     # prints one JSON line

Real flows through a NAT namespace run at about a thousand new connections per second, and ``conntrack -I`` at
about 150 entries per second (one process and one netlink round trip per entry, through ``ip netns exec``): too slow
for 10^5 entries.  This sends IPCTNL_MSG_CT_NEW messages
(what ``conntrack -I`` sends), many per send(): each one an entry as a masquerading router holds it for a flow of
an inner client to an outside server:

- original tuple: INNER:SPORT -> DESTINATION:DPORT (TCP);
- reply tuple: DESTINATION:DPORT -> TRANSLATED:TPORT (the translated address and port, as after source NAT);
- status IPS_SEEN_REPLY | IPS_ASSURED (the kernel takes the NAT bits only from its NAT engine: the reply tuple
  that differs from the inverted original is what makes the entry source-NATed, to the kernel and to
  linux_nat.EgressTally alike); TCP state ESTABLISHED, or TIME_WAIT for every ``closing``-th entry of each
  destination;
  a timeout of ``timeout`` seconds, so that the table stays full for the measurement.

The layout (plan()) is deterministic: ``sources`` inner addresses 10.64.X.Y, ``destinations`` servers
198.51.100.N port 443, translated address 192.0.2.1 (192.0.2.2... past 64,512 flows per destination), translated
ports from 1024.  Every original and reply tuple is unique, so the kernel accepts every entry.

Bounded: at most MAX_COUNT entries and ``seconds`` of sending.  Run it only inside a namespace of the caller's
own: the entries go to the table of the namespace the process is in.
"""

from __future__ import annotations

import argparse
import json
import socket
import struct
import sys
import time
from typing import NamedTuple

NETLINK_NETFILTER = 12
CT_NEW = (1 << 8) | 0  # NFNL_SUBSYS_CTNETLINK, IPCTNL_MSG_CT_NEW
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLM_F_REQUEST, NLM_F_ACK, NLM_F_EXCL, NLM_F_CREATE = 0x1, 0x4, 0x200, 0x400
NLA_F_NESTED = 0x8000
AF_INET = 2
IPPROTO_TCP = 6
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO, CTA_TIMEOUT = 1, 2, 3, 4, 7
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST = 1, 2
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
IPS_SEEN_REPLY, IPS_ASSURED, IPS_CONFIRMED = 1 << 1, 1 << 2, 1 << 3
TCP_ESTABLISHED, TCP_TIME_WAIT = 3, 7
STATUS = IPS_SEEN_REPLY | IPS_ASSURED | IPS_CONFIRMED  # what the kernel shows for a confirmed, replied flow
PORTS = 64512  # translated ports 1024..65535
MAX_COUNT = 1000000
PER_SEND = 256  # messages per send(): about 40 KiB


class Flow(NamedTuple):
    """One source-NATed TCP flow: inner source, destination, translated address (packed IPv4) and ports."""

    inner: bytes
    sport: int
    destination: bytes
    dport: int
    translated: bytes
    tport: int
    state: int


def _attr(kind, payload):
    """A netlink attribute: header, payload, padding to 4 bytes."""
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def _tuple(kind, src, dst, sport, dport):
    ip = _attr(NLA_F_NESTED | CTA_TUPLE_IP, _attr(CTA_IP_V4_SRC, src) + _attr(CTA_IP_V4_DST, dst))
    proto = _attr(NLA_F_NESTED | CTA_TUPLE_PROTO, _attr(CTA_PROTO_NUM, bytes([IPPROTO_TCP]))
                  + _attr(CTA_PROTO_SRC_PORT, struct.pack(">H", sport))
                  + _attr(CTA_PROTO_DST_PORT, struct.pack(">H", dport)))
    return _attr(NLA_F_NESTED | kind, ip + proto)


def new_message(flow, seq, timeout=3600, ack=False):
    """The IPCTNL_MSG_CT_NEW message (NLM_F_CREATE | NLM_F_EXCL) that creates ``flow``'s entry."""
    body = (_tuple(CTA_TUPLE_ORIG, flow.inner, flow.destination, flow.sport, flow.dport)
            + _tuple(CTA_TUPLE_REPLY, flow.destination, flow.translated, flow.dport, flow.tport)
            + _attr(CTA_STATUS, struct.pack(">I", STATUS))
            + _attr(CTA_TIMEOUT, struct.pack(">I", timeout))
            + _attr(NLA_F_NESTED | CTA_PROTOINFO,
                    _attr(NLA_F_NESTED | CTA_PROTOINFO_TCP, _attr(CTA_PROTOINFO_TCP_STATE, bytes([flow.state])))))
    flags = NLM_F_REQUEST | NLM_F_CREATE | NLM_F_EXCL | (NLM_F_ACK if ack else 0)
    payload = struct.pack("=BBH", AF_INET, 0, 0) + body
    return struct.pack("=IHHII", 16 + len(payload), CT_NEW, flags, seq, 0) + payload


def _ipv4(*octets):
    return bytes(octets)


def plan(index, sources=64, destinations=16, closing=4):
    """The ``index``-th flow (0 <= index < MAX_COUNT) of the fill's layout; unique original and reply tuples."""
    if not 0 <= index < MAX_COUNT:
        raise ValueError("index must be in 0..%d, not %r" % (MAX_COUNT - 1, index))
    destination, slot = index % destinations, index // destinations
    source, round_ = slot % sources, slot // sources  # every source to every destination
    return Flow(_ipv4(10, 64, source // 256, source % 256), 1024 + round_ % PORTS,
                _ipv4(198, 51, 100, 1 + destination), 443,
                _ipv4(192, 0, 2, 1 + slot // PORTS), 1024 + slot % PORTS,
                TCP_TIME_WAIT if closing and slot % closing == closing - 1 else TCP_ESTABLISHED)


def errors(buf):
    """The error codes (positive errno) of the NLMSG_ERROR messages in a received buffer; acks (0) left out."""
    out = []
    pos = 0
    while pos + 16 <= len(buf):
        length, kind = struct.unpack_from("=IH", buf, pos)
        if length < 16 or pos + length > len(buf):
            break
        if kind == NLMSG_ERROR and length >= 20:
            code = -struct.unpack_from("=i", buf, pos + 16)[0]
            if code:
                out.append(code)
        pos += (length + 3) & ~3
    return out


def fill(count, seconds=300.0, timeout=3600, sources=64, destinations=16, closing=4, start=0):
    """Create the entries ``start`` to ``count`` - 1 of the layout in this namespace's table (to grow a table
    already filled to ``start``); {"sent": the messages sent, "errors", "first_error", "seconds"}.

    Each send() carries PER_SEND messages, the last one asking for an ack, whose arrival paces the sending
    (the kernel handles one send's messages in order, so the ack comes after their errors).
    """
    count = max(0, min(int(count), MAX_COUNT))
    started = time.monotonic()
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    failed, first = 0, None
    start = sent = max(0, min(int(start), count))
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(10)
        while sent < count and time.monotonic() - started < seconds:
            last = min(count, sent + PER_SEND)
            chunk = b"".join(new_message(plan(i, sources, destinations, closing), i + 1, timeout, ack=i == last - 1)
                             for i in range(sent, last))
            sock.sendall(chunk)
            acked = False
            while not acked:
                buf = sock.recv(1 << 16)
                acked = _acked(buf, last)
                codes = errors(buf)
                failed += len(codes)
                first = first if first is not None or not codes else codes[0]
            sent = last
    finally:
        sock.close()
    return {"sent": sent - start, "errors": failed, "first_error": None if first is None else _strerror(first),
            "seconds": round(time.monotonic() - started, 3)}


def _acked(buf, seq):
    """True when ``buf`` holds the NLMSG_ERROR (ack or error) of the message numbered ``seq``."""
    pos = 0
    while pos + 16 <= len(buf):
        length, kind, _flags, number = struct.unpack_from("=IHHI", buf, pos)
        if length < 16:
            break
        if kind == NLMSG_ERROR and number == seq:
            return True
        pos += (length + 3) & ~3
    return False


def _strerror(code):
    import os
    try:
        return os.strerror(code)
    except ValueError:
        return "error %d" % code


def main():
    parser = argparse.ArgumentParser(prog="python -m tests.support.conntrack_fill",
                                     description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--count", type=int, required=True, help="the table's size when done")
    parser.add_argument("--start", type=int, default=0, help="the entries already made by an earlier run")
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--timeout", type=int, default=3600, help="each entry's conntrack timeout (seconds)")
    parser.add_argument("--sources", type=int, default=64)
    parser.add_argument("--destinations", type=int, default=16)
    args = parser.parse_args()
    result = fill(args.count, args.seconds, max(60, args.timeout), max(1, min(args.sources, 65536)),
                  max(1, min(args.destinations, 255)), start=args.start)
    print(json.dumps(result), flush=True)
    wanted = max(0, min(args.count, MAX_COUNT) - max(0, args.start))
    return 0 if result["sent"] == wanted and not result["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
