# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which process owns which socket: /proc/PID/fd, and who a process is (name, command line, user, cgroup).

The socket table (netlink sock_diag) gives each live socket the inode of its
file; /proc/PID/fd/N links to ``socket:[INODE]``.  ``ProcessTable`` keeps
inode -> pid for the fd tables it may read, and says which it could not;
the reads themselves are LinuxHost's (pids(), net_namespace(),
socket_inodes(), read_process_file(), user_name()), the only code that
touches the host.  ``parse_*`` are pure.  Without root a process of another
user cannot be read (EACCES): it is counted in ``unreadable``, never an
error.  Standard library only.
"""

from __future__ import annotations

import errno
import re

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import identity

CMDLINE_MAX = 512  # characters of a command line reported
# A container id in a cgroup path: 64 hex digits (docker, podman/libpod, containerd, cri-o).
_CONTAINER = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?:/|$)")
_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".timer", ".slice")


def parse_cmdline(data):
    """/proc/PID/cmdline (NUL-separated bytes) as one line of text, at most CMDLINE_MAX characters; None if empty."""
    text = data.rstrip(b"\x00").replace(b"\x00", b" ").decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else "?" for ch in text[:CMDLINE_MAX])
    return text or None


def parse_status_uid(text):
    """The real uid from /proc/PID/status ("Uid:\\treal\\teffective\\t..."), or None."""
    for line in text.splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) > 1 and fields[1].isdigit() and len(fields[1]) <= 10:
                return int(fields[1])
            return None
    return None


def parse_cgroup(text):
    """(cgroup path, systemd unit or None, container id or None) from /proc/PID/cgroup.

    The unified (cgroup v2, "0::PATH") line is preferred, else the name=systemd
    one, else the first.  The unit is the innermost path component ending in
    .service/.scope/...; the container id is a 64-hex-digit component (docker-,
    libpod-, cri-containerd-ID.scope or /docker/ID).
    """
    chosen = None
    for line in text.splitlines()[:64]:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            chosen = parts[2]
            break
        if parts[1] == "name=systemd" or chosen is None:
            chosen = parts[2]
    if not chosen:
        return None, None, None
    path = chosen.strip()[:1024]
    unit = None
    for component in reversed(path.split("/")):
        if component.endswith(_UNIT_SUFFIXES) and not component.endswith(".slice"):
            unit = component
            break
    match = _CONTAINER.search(path)
    return path, unit, (match.group(1)[:12] if match else None)


class ProcessTable:
    """inode -> pid for the sockets of every process whose /proc/PID/fd can be read, through ``host`` (a LinuxHost).

    ``scan(pids)`` rereads those fd tables (all processes when None) and
    records in ``changed`` the pids whose set of socket inodes differs from
    their previous scan: the processes opening and closing sockets, scanned
    first when a new socket must be found an owner quickly.
    """

    def __init__(self, host=None, same_netns=True):
        self.host = LinuxHost() if host is None else host
        self.netns = None
        if same_netns:  # the sockets of the dump are this network namespace's: so are their processes
            try:
                self.netns = self.host.net_namespace()
            except OSError:
                self.netns = None
        self.other_netns = 0
        self.inode_pid = {}
        self.sockets = {}  # pid -> frozenset of socket inodes at its last scan
        self.unreadable = {}  # pid -> errno of its fd table
        self.changed = set()
        self.scans = 0
        self.first_seen = {}  # pid -> describe() when its sockets were first seen: a process may be gone at the end

    def pids(self):
        """The pids of /proc, only those in this network namespace (when known): sockets of the table are
        owned by processes of the namespace (one that holds a socket of another namespace is not looked at)."""
        pids = self.host.pids()
        if self.netns is None:
            return pids
        net_namespace = self.host.net_namespace
        out = []
        others = 0
        for pid in pids:
            try:
                if net_namespace(pid) != self.netns:
                    others += 1
                    continue
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EPERM):
                    continue  # gone, or a kernel thread
            out.append(pid)  # unreadable namespace: its fd table will say so
        self.other_netns = others
        return out

    def scan(self, pids=None):
        """Read the fd tables of ``pids`` (default: all); returns how many were read."""
        self.scans += 1
        everyone = pids is None
        if everyone:
            pids = self.pids()
        read = 0
        alive = set()
        for pid in pids:
            inodes = self._socket_inodes(pid)
            if inodes is None:
                continue
            read += 1
            alive.add(pid)
            before = self.sockets.get(pid)
            if before is not None and before != inodes:
                self.changed.add(pid)
            if inodes and pid not in self.first_seen:
                self.first_seen[pid] = self._read_description(pid)
            self.sockets[pid] = inodes
            for inode in inodes:
                self.inode_pid[inode] = pid
        if everyone:  # forget processes that are gone
            for pid in [pid for pid in self.sockets if pid not in alive]:
                del self.sockets[pid]
                self.changed.discard(pid)
        return read

    def _socket_inodes(self, pid):
        try:
            inodes = self.host.socket_inodes(pid)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                self.unreadable[pid] = exc.errno
            return None
        self.unreadable.pop(pid, None)
        return inodes

    def owner(self, inode):
        return self.inode_pid.get(inode)

    def describe(self, pid):
        """{"pid", "name", "cmdline", "uid", "user", "cgroup", "unit", "container"}; what cannot be read is None.

        Read now; a process gone since (a short-lived client) is described as it was when its sockets were first
        seen."""
        info = self._read_description(pid)
        if info["name"] is None and pid in self.first_seen:
            return dict(self.first_seen[pid])
        return info

    def _read_description(self, pid):
        info = identity(pid)
        readers = (
            ("comm", lambda data: {"name": data.decode("utf-8", "replace").strip()[:64] or None}),
            ("cmdline", lambda data: {"cmdline": parse_cmdline(data)}),
            ("status", lambda data: {"uid": parse_status_uid(data.decode("utf-8", "replace"))}),
            ("cgroup", lambda data: dict(zip(("cgroup", "unit", "container"),
                                             parse_cgroup(data.decode("utf-8", "replace"))))),
        )
        read = self.host.read_process_file
        for name, parse in readers:
            try:
                info.update(parse(read(pid, name)))
            except OSError:
                continue
        info["user"] = self.host.user_name(info["uid"])
        return info
