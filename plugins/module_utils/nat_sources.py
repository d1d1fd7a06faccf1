# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Who is behind a NAT source: the local network namespace an inner address belongs to (a container, a pod
sandbox), and, with attribution on, the processes of that namespace whose sockets go to the egress's
destination.

A NAT host's inner addresses that are its own live in the network namespaces of its containers and pods.  Every
process shows its namespace's tables under /proc/PID/net: ``fib_trie`` lists the namespace's local IPv4
addresses ("/32 host LOCAL" under the address), ``if_inet6`` its IPv6 addresses, ``tcp`` and ``tcp6`` its TCP
sockets with their inodes.  The parsers here are pure and linear; the host reads the files (LinuxHost,
ProcessDir.read_net).
"""

from __future__ import annotations

import socket

LOCAL_MARK = "/32 host LOCAL"
MAX_NAMESPACES = 4096  # network namespaces looked at, at most
PROCESSES_NAMED = 3  # processes named per source


def parse_fib_trie(text):
    """The local IPv4 addresses of a /proc/PID/net/fib_trie text (set of str), loopback left out."""
    found = set()
    last = None
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("|-- "):
            last = stripped[4:].strip()
        elif stripped == LOCAL_MARK and last is not None:
            if not last.startswith("127."):
                found.add(last)
            last = None
    return found


def parse_if_inet6(text):
    """The IPv6 addresses of a /proc/PID/net/if_inet6 text (set of str), loopback and link-local left out."""
    found = set()
    for line in text.splitlines():
        fields = line.split()
        if not fields or len(fields[0]) != 32:
            continue
        try:
            address = socket.inet_ntop(socket.AF_INET6, bytes.fromhex(fields[0]))
        except ValueError:
            continue
        if address != "::1" and not address.startswith("fe80:"):
            found.add(address)
    return found


def _hex_address(text):
    """The address of a /proc/net/tcp(6) field ("0100007F" or 32 hex digits, host byte order per 32-bit word)."""
    raw = bytes.fromhex(text)
    words = b"".join(raw[index:index + 4][::-1] for index in range(0, len(raw), 4))
    family = socket.AF_INET if len(raw) == 4 else socket.AF_INET6
    text = socket.inet_ntop(family, words)
    if text.startswith("::ffff:") and "." in text:
        return text[7:]
    return text


def sockets_to(text, destinations):
    """{(local address, destination address, port): [inode, ...]} of the sockets of a /proc/PID/net/tcp or tcp6
    text whose remote end is one of ``destinations`` (a set of (address str, port int)).  Odd lines are
    skipped."""
    out = {}
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        remote = fields[2].rpartition(":")
        try:
            where = (_hex_address(remote[0]), int(remote[2], 16))
            if where not in destinations:
                continue
            local = _hex_address(fields[1].rpartition(":")[0])
            inode = int(fields[9])
        except ValueError:
            continue
        if inode:
            out.setdefault((local,) + where, []).append(inode)
    return out


def namespace_entry(info):
    """What a source says of its namespace: {"netns", "pid", "name", "container", "unit"} of the namespace's
    first process (lowest pid: a container's init or a pod's sandbox)."""
    return {"netns": info.get("netns"), "pid": info.get("pid"), "name": info.get("name"),
            "container": info.get("container"), "unit": info.get("unit")}


def annotate(egress, namespaces, owners=None):
    """Add to each source of the ``egress`` entries (the nat section's) ``namespace`` (namespace_entry() of the
    local namespace whose address it is, or None) and, where ``owners`` is given ({(netns, source address,
    destination address, port): [(pid, name, sockets), ...]}), ``processes``: the first PROCESSES_NAMED with their sockets to the
    egress's destination from the source's address.  ``namespaces``: {address: namespace info}."""
    for entry in egress:
        where = (entry.get("destination"), entry.get("port"))
        for source in entry.get("sources") or ():
            info = namespaces.get(source.get("address"))
            source["namespace"] = namespace_entry(info) if info is not None else None
            if owners is not None:
                named = owners.get((info.get("netns"), source.get("address")) + where) if info is not None else None
                source["processes"] = [{"pid": pid, "name": name, "sockets": count}
                                       for pid, name, count in (named or ())[:PROCESSES_NAMED]]
    return egress
