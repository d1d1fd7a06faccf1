# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Linux side of port_usage_info: the kernel's socket table, counters and settings.

The socket table is read with one netlink ``sock_diag`` dump per address
family (what ``ss`` uses; no root needed), or, where netlink is refused, from
/proc/net/tcp and /proc/net/tcp6 in large chunks.  Either way each socket
costs a few byte comparisons: sockets are tallied in dicts keyed by the raw
address bytes, and addresses become text only for the destinations reported.

What is read is handed to the OS-neutral ``port_usage.analyse()`` as a
``Snapshot``.  Standard library only.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
import time

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import (
    PORT_RANGE,
    RESERVED_PORTS,
    TIMESTAMPS,
    TW_REUSE,
    UNPRIVILEGED_PORT_START,
    BY_OPTION,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_usage import (
    Snapshot,
    analyse,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import (
    parse_port_list,
    parse_port_range,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError

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

# The kernel's TCP states (include/net/tcp_states.h)
STATES = {
    1: "ESTABLISHED", 2: "SYN_SENT", 3: "SYN_RECV", 4: "FIN_WAIT1", 5: "FIN_WAIT2", 6: "TIME_WAIT",
    7: "CLOSE", 8: "CLOSE_WAIT", 9: "LAST_ACK", 10: "LISTEN", 11: "CLOSING", 12: "NEW_SYN_RECV",
    13: "BOUND_INACTIVE",
}
TIME_WAIT = 6
LISTEN = 10
# States that hold no (local, remote) pair of their own: a listener, an unconnected socket, a
# request socket (it uses the listener's port).
NOT_HOLDING = frozenset((7, 10, 12, 13))
_HEX_STATE = dict((b"%02X" % n, n) for n in range(256))

TIME_WAIT_SECONDS = 60  # TCP_TIMEWAIT_LEN: fixed, no sysctl changes it
OLD_REUSE_DELAY_MS = 1000  # before tcp_tw_reuse_delay (Linux 6.14) reuse waited about one second

SETTING_KEYS = (
    ("port_range", PORT_RANGE),
    ("reserved_ports", RESERVED_PORTS),
    ("unprivileged_port_start", UNPRIVILEGED_PORT_START),
    ("fin_timeout", BY_OPTION["fin_timeout"].key),
    ("tw_reuse", TW_REUSE),
    ("tw_reuse_delay", BY_OPTION["tw_reuse_delay"].key),
    ("timestamps", TIMESTAMPS),
    ("max_tw_buckets", "net.ipv4.tcp_max_tw_buckets"),
    ("somaxconn", BY_OPTION["somaxconn"].key),
    ("max_syn_backlog", BY_OPTION["max_syn_backlog"].key),
)

# Counters reported, by file and section: /proc/net/netstat TcpExt, /proc/net/snmp Tcp.
COUNTERS = (
    ("/proc/net/netstat", "TcpExt", ("TW", "TWRecycled", "TWKilled", "TCPTimeWaitOverflow", "ListenOverflows",
                                     "ListenDrops")),
    ("/proc/net/snmp", "Tcp", ("ActiveOpens", "PassiveOpens", "AttemptFails", "EstabResets", "CurrEstab")),
)

_MAPPED = b"\x00" * 10 + b"\xff\xff"
_V6_LOOPBACK = b"\x00" * 15 + b"\x01"
_CHUNK = 1 << 20


class TableError(Exception):
    """The socket table could not be read from this source."""


class Tally:
    """Counts of one socket table: states per family, and ephemeral ports held per tuple.

    ``ephemeral`` is a 65536-byte bytearray, non-zero for the ports automatic
    allocation hands out (inside the range and not reserved).
    """

    def __init__(self, ephemeral):
        self.ephemeral = ephemeral
        self.states = {AF_INET: {}, AF_INET6: {}}
        self.listening = set()
        # netlink: {family: {dport + src + dst (34 raw bytes): [in use, in TIME_WAIT]}}
        self.raw = {AF_INET: {}, AF_INET6: {}}
        # /proc: {family: {(local address hex, remote address:port hex): [in use, in TIME_WAIT]}}
        self.hex = {AF_INET: {}, AF_INET6: {}}
        self.source = None

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

    def state_counts(self):
        """{"ipv4": {state name: count}, "ipv6": {...}}."""
        return dict((name, dict((STATES.get(state, "STATE_%d" % state), count) for state, count in sorted(counts.items())))
                    for name, counts in (("ipv4", self.states[AF_INET]), ("ipv6", self.states[AF_INET6])))


def _add(out, family, local, remote, port, value):
    if family == AF_INET6 and local[:12] == _MAPPED and remote[:12] == _MAPPED:
        family, local, remote = AF_INET, local[12:], remote[12:]
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


def ephemeral_flags(port_range, reserved):
    """A 65536-byte table, 1 for each port automatic allocation may hand out."""
    flags = bytearray(65536)
    if port_range is None:
        return flags
    low, high = port_range
    flags[low:high + 1] = b"\x01" * (high - low + 1)
    for a, b in reserved:
        a, b = max(a, low), min(b, high)
        if a <= b:
            flags[a:b + 1] = bytes(b - a + 1)
    return flags


# ---------------------------------------------------------------- netlink
def netlink_request(family, seq=1):
    """A SOCK_DIAG_BY_FAMILY dump request for every TCP socket of ``family``."""
    body = struct.pack("=BBBBI", family, IPPROTO_TCP, 0, 0, ALL_STATES) + bytes(48)
    return struct.pack("=IHHII", 16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0) + body


def tally_netlink(buf, family, tally):
    """Count the inet_diag messages in one received buffer; True when the dump is done."""
    states = tally.states[family]
    table = tally.raw[family]
    ephemeral = tally.ephemeral
    listening = tally.listening
    unpack = struct.unpack_from
    end = len(buf)
    pos = 0
    while pos + 16 <= end:
        length, kind = unpack("=IH", buf, pos)
        if length < 16:
            raise TableError("malformed netlink message")
        if kind == NLMSG_DONE:
            return True
        if kind == NLMSG_ERROR:
            code = -unpack("=i", buf, pos + 16)[0]
            if code == 0:
                return True
            raise TableError("sock_diag: %s" % os.strerror(code))
        if kind == SOCK_DIAG_BY_FAMILY:
            state = buf[pos + 17]
            states[state] = states.get(state, 0) + 1
            sport = (buf[pos + 20] << 8) | buf[pos + 21]
            if state == LISTEN:
                listening.add(sport)
            elif ephemeral[sport] and state not in NOT_HOLDING and sport not in listening:
                key = buf[pos + 22:pos + 56]
                have = table.get(key)
                if have is None:
                    table[key] = [1, 1 if state == TIME_WAIT else 0]
                else:
                    have[0] += 1
                    if state == TIME_WAIT:
                        have[1] += 1
        pos += (length + 3) & ~3
    return False


def read_netlink(tally, families=(AF_INET, AF_INET6), timeout=10.0):
    """Dump every TCP socket over NETLINK_SOCK_DIAG into ``tally``; raises TableError."""
    deadline = time.monotonic() + timeout
    for seq, family in enumerate(families, 1):
        try:
            sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
        except (OSError, AttributeError, ValueError) as exc:
            raise TableError("netlink sock_diag unavailable: %s" % exc)
        try:
            sock.settimeout(timeout)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
            except OSError:
                pass
            sock.sendall(netlink_request(family, seq))
            while True:
                buf = sock.recv(1 << 17)
                if not buf:
                    raise TableError("netlink sock_diag: the dump ended early")
                if tally_netlink(buf, family, tally):
                    break
                if time.monotonic() > deadline:
                    raise TableError("netlink sock_diag: the dump took more than %ds" % timeout)
        except (OSError, socket.timeout) as exc:
            raise TableError("netlink sock_diag: %s" % exc)
        finally:
            sock.close()
    tally.source = "netlink"


# ---------------------------------------------------------------- /proc/net/tcp
def tally_proc_lines(lines, family, tally, ports):
    """Count complete /proc/net/tcp{,6} lines (bytes, header line allowed).

    ``ports`` caches {port hex: allocated automatically} across calls.
    """
    states = tally.states[family]
    table = tally.hex[family]
    ephemeral = tally.ephemeral
    listening = ports.setdefault("listening", set())
    for line in lines:
        fields = line.split(None, 4)
        if len(fields) < 4:
            continue
        state = _HEX_STATE.get(fields[3])
        if state is None:  # the header
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
                table[key] = [1, 1 if state == TIME_WAIT else 0]
            else:
                have[0] += 1
                if state == TIME_WAIT:
                    have[1] += 1


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


def read_chunks(path, size=_CHUNK):
    """Yield a file's bytes in chunks of about ``size``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        while True:
            chunk = os.read(fd, size)
            if not chunk:
                return
            yield chunk
    finally:
        os.close(fd)


def read_proc(tally, root="/"):
    """Read /proc/net/tcp and /proc/net/tcp6 into ``tally``; returns the paths that could not be read."""
    unreadable = []
    for path, family in (("/proc/net/tcp", AF_INET), ("/proc/net/tcp6", AF_INET6)):
        try:
            tally_proc_chunks(read_chunks(_p(root, path)), family, tally)
        except OSError as exc:
            if exc.errno == errno.ENOENT and family == AF_INET6:
                continue  # no IPv6 in this kernel: nothing to count
            unreadable.append({"source": path, "reason": os.strerror(exc.errno or errno.EIO)})
    tally.source = "proc"
    return unreadable


# ---------------------------------------------------------------- counters and settings
def parse_counter_file(text):
    """{section: {name: int}} from /proc/net/netstat or /proc/net/snmp (pairs of header and value lines)."""
    out = {}
    lines = text.splitlines()
    for names, values in zip(lines[0::2], lines[1::2]):
        head, dummy, names = names.partition(":")
        head2, dummy, values = values.partition(":")
        if head != head2:
            continue
        section = out.setdefault(head.strip(), {})
        for name, value in zip(names.split(), values.split()):
            try:
                section[name] = int(value)
            except ValueError:
                continue
    return out


def read_counters(root="/"):
    """(counters {name: int}, unreadable [{source, reason}])."""
    counters = {}
    unreadable = []
    for path, section, names in COUNTERS:
        try:
            with open(_p(root, path), "r") as handle:
                parsed = parse_counter_file(handle.read()).get(section, {})
        except OSError as exc:
            unreadable.append({"source": path, "reason": os.strerror(exc.errno or errno.EIO)})
            continue
        for name in names:
            if name in parsed:
                counters[name] = parsed[name]
    return counters, unreadable


def read_settings(root="/"):
    """({name: value as the kernel prints it, or None}, unreadable).  A missing key is None and not unreadable."""
    settings = {}
    unreadable = []
    for name, key in SETTING_KEYS:
        path = _p(root, "/proc/sys/" + key.replace(".", "/"))
        try:
            with open(path, "r") as handle:
                settings[name] = " ".join(handle.read().split())
        except OSError as exc:
            settings[name] = None
            if exc.errno != errno.ENOENT:
                unreadable.append({"source": path, "reason": os.strerror(exc.errno or errno.EIO)})
    return settings, unreadable


def _int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def typed_settings(raw):
    """The settings as reported: ints, the range as "LOW HIGH", the reserved list in kernel syntax."""
    out = {}
    for name, value in raw.items():
        out[name] = value if name in ("port_range", "reserved_ports") else _int(value)
    return out


def reuse_rules(settings):
    """{"remote": bool, "loopback": bool, "delay_seconds": float, "inactive": bool} from typed settings.

    tcp_tw_reuse 1 reuses TIME_WAIT ports towards every destination, 2 only
    over loopback; either needs tcp_timestamps on (1 or 2).
    """
    reuse = settings.get("tw_reuse")
    stamps = settings.get("timestamps")
    on = stamps is not None and stamps != 0
    delay = settings.get("tw_reuse_delay")
    return {
        "remote": reuse == 1 and on,
        "loopback": reuse in (1, 2) and on,
        "delay_seconds": (delay if delay is not None else OLD_REUSE_DELAY_MS) / 1000.0,
        "inactive": reuse == 1 and not on,
    }


def _p(root, path):
    return path if root == "/" else root.rstrip("/") + path


# ---------------------------------------------------------------- the whole read
def collect(root="/", use_netlink=True):
    """Read everything port_usage needs from this host (this network namespace): a Snapshot."""
    raw, unreadable = read_settings(root)
    settings = typed_settings(raw)
    port_range = None
    reserved = ()
    try:
        if raw.get("port_range"):
            port_range = parse_port_range(raw["port_range"], PORT_RANGE)
        reserved = parse_port_list(raw.get("reserved_ports") or "", RESERVED_PORTS)
    except ValidationError as exc:
        unreadable.append({"source": PORT_RANGE, "reason": str(exc)})
    tally = Tally(ephemeral_flags(port_range, reserved))
    notes = []
    table_ok = True
    if use_netlink and root == "/":
        try:
            read_netlink(tally)
        except TableError as exc:
            notes.append("%s; read /proc/net/tcp and /proc/net/tcp6 instead" % exc)
            tally = Tally(tally.ephemeral)
    if tally.source is None:
        missing = read_proc(tally, root)
        unreadable.extend(missing)
        table_ok = len(missing) < 2
    counters, missing = read_counters(root)
    unreadable.extend(missing)
    reuse = reuse_rules(settings)
    return Snapshot(
        settings=settings,
        port_range=port_range,
        reserved=reserved,
        min_port=settings.get("unprivileged_port_start") if settings.get("unprivileged_port_start") is not None else 1024,
        listening=tally.listening,
        states=tally.state_counts() if table_ok else None,
        tuples=tally.tuples(),
        format_address=format_address,
        is_loopback=is_loopback,
        reuse_remote=reuse["remote"],
        reuse_loopback=reuse["loopback"],
        reuse_delay=reuse["delay_seconds"],
        time_wait_seconds=TIME_WAIT_SECONDS,
        counters=counters,
        source=tally.source,
        unreadable=unreadable,
        notes=notes,
        extra_findings=_setting_findings(settings, reuse),
        extra_recommendations={"timestamps": 1} if reuse["inactive"] else {},
    )


def _setting_findings(settings, reuse):
    out = []
    if reuse["inactive"]:
        out.append(("warning", "tcp_tw_reuse is 1 but tcp_timestamps is 0: reuse is inactive"))
    return out


def audit(top=10, sample_seconds=0, warning=70, critical=90, root="/", use_netlink=True, sleep=time.sleep):
    """The module's work: read the host, optionally sample the counters, analyse.  Returns the result dict."""
    snapshot = collect(root, use_netlink)
    if sample_seconds and sample_seconds > 0:
        started = time.monotonic()
        sleep(sample_seconds)
        after, missing = read_counters(root)
        snapshot.counters_after = after
        snapshot.sample_seconds = time.monotonic() - started
        snapshot.unreadable.extend(item for item in missing if item not in snapshot.unreadable)
    return analyse(snapshot, top=top, warning=warning, critical=critical)
