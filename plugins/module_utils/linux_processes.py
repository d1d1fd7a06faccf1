# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which process owns which socket: /proc/PID/fd, and who a process is (pid and start time, name, command line,
user, cgroup).

The socket table (netlink sock_diag) gives each live socket the inode of its
file; /proc/PID/fd/N links to ``socket:[INODE]``.  ``ProcessTable`` keeps
inode -> pid for the fd tables it may read, and says which it could not.
Every process of the host is looked at, whatever network namespace it is in
now: a socket keeps the namespace it was created in, and only the inodes of
the audited namespace's dump are ever looked up.  A process is one pid and
one start time (/proc/PID/stat), read through one handle on /proc/PID
(LinuxHost.process_dir): a pid reused by another process never takes over
what the first one did.  The reads are LinuxHost's (pids(), process_dir(),
clock_ticks(), user_name()), the only code that touches the host;
``parse_*`` are pure.  Host text (comm, cmdline, cgroup, unit, user) is
cleaned here, where it is read (usage_wording.clean_text).  Without root a
process of another user cannot be read (EACCES): it is counted in
``unreadable``, never an error.  Standard library only.
"""

from __future__ import annotations

import errno
import re

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import identity
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import clean_text

CMDLINE_MAX = 512  # characters of a command line reported
NAME_MAX = 64  # characters of a name (comm is at most 15 bytes; cleaned, an escape takes 4 characters)
# A container id in a cgroup path: 64 hex digits (docker, podman/libpod, containerd, cri-o).
_CONTAINER = re.compile(r"(?:^|[/-])([0-9a-f]{64})(?:\.scope)?(?:/|$)")
_UNIT_SUFFIXES = (".service", ".scope", ".socket", ".mount", ".timer", ".slice")
_USER_MANAGER = re.compile(r"\Auser@[0-9]{1,10}\.service\Z")  # systemd's per-user manager: its units are a user's
_STAT_START = 19  # starttime, field 22 of /proc/PID/stat, is the 20th after the ")" that ends comm (field 2)


def parse_cmdline(data):
    """/proc/PID/cmdline (NUL-separated bytes) as one line of text, at most CMDLINE_MAX characters, cleaned; None
    if empty."""
    text = data.rstrip(b"\x00").replace(b"\x00", b" ").decode("utf-8", "replace")
    return clean_text(text[:CMDLINE_MAX])[:CMDLINE_MAX] or None


def parse_comm(data):
    """/proc/PID/comm as a cleaned name, or None."""
    return clean_text(data.decode("utf-8", "replace").strip()[:NAME_MAX])[:NAME_MAX] or None


def parse_stat_start(data, ticks):
    """The start time of a process, in seconds after boot, from /proc/PID/stat (``data``, bytes) and the clock
    ticks per second; None when unreadable.

    comm (field 2) is in parentheses and may itself hold spaces and ")": the fields are counted from the last
    ")" of the line, after which only numbers and the state letter follow.
    """
    end = data.rfind(b")")
    if end < 0 or not ticks:
        return None
    fields = data[end + 1:end + 1 + 4096].split()
    if len(fields) <= _STAT_START:
        return None
    value = fields[_STAT_START]
    if not value.isdigit() or len(value) > 20:
        return None
    return round(int(value) / float(ticks), 2)


def parse_status_uid(text):
    """The real uid from /proc/PID/status ("Uid:\\treal\\teffective\\t..."), or None.

    Lines end at "\\n" only: the Name line holds the process's own comm, and str.splitlines() would also break it
    at U+0085 or U+2028, letting a process named "\\u0085Uid:\\t0" pass for root."""
    for line in text.split("\n"):
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) > 1 and fields[1].isdigit() and len(fields[1]) <= 10:
                return int(fields[1])
            return None
    return None


def _unit_of(components):
    """The innermost unit of a cgroup path's components (not a slice), prefixed with ``user@UID.service/`` when
    it runs under a user's service manager, so that a user's unit never passes for a system one."""
    for index in range(len(components) - 1, -1, -1):
        component = components[index]
        if component.endswith(_UNIT_SUFFIXES) and not component.endswith(".slice"):
            manager = next((c for c in components[:index] if _USER_MANAGER.match(c)), None)
            return component if manager is None else "%s/%s" % (manager, component)
    return None


def parse_cgroup(text):
    """(cgroup path, systemd unit or None, container id or None) from /proc/PID/cgroup, cleaned.

    The unified (cgroup v2, "0::PATH") line is preferred, else the name=systemd
    one, else the first.  The unit is the innermost path component ending in
    .service/.scope/... (``user@UID.service/UNIT`` under a user's manager); the
    container id is a 64-hex-digit component (docker-, libpod-,
    cri-containerd-ID.scope or /docker/ID).
    """
    chosen = None
    for line in text.split("\n", 64)[:64]:  # "\n" only, as the kernel ends lines
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
    unit = _unit_of(path.split("/"))
    match = _CONTAINER.search(path)
    return clean_text(path), None if unit is None else clean_text(unit), (match.group(1)[:12] if match else None)


def _replaced(first, now):
    """Whether ``now`` (an identity) is another process than ``first`` at the same pid: their start times differ."""
    return first.get("start_time") is not None and now.get("start_time") is not None \
        and first["start_time"] != now["start_time"]


class ProcessTable:
    """inode -> pid for the sockets of every process whose /proc/PID/fd can be read, through ``host`` (a LinuxHost).

    ``scan(pids)`` rereads those fd tables (all processes when None) and
    records in ``changed`` the pids whose set of socket inodes differs from
    their previous scan: the processes opening and closing sockets, scanned
    first when a new socket must be found an owner quickly.  A pid whose
    process was replaced by another (another start time) since its sockets
    were first seen is in ``reused``: the newcomer's sockets are not given to
    that pid.
    """

    def __init__(self, host=None):
        self.host = LinuxHost() if host is None else host
        self.ticks = self.host.clock_ticks()
        self.inode_pid = {}
        self.sockets = {}  # pid -> frozenset of socket inodes at its last scan
        self.unreadable = {}  # pid -> errno of its fd table
        self.changed = set()
        self.reused = set()
        self.scans = 0
        self.first_seen = {}  # pid -> identity when its sockets were first seen: a process may be gone at the end

    def pids(self):
        """The pids of /proc: every process, whatever network namespace it is in now (sockets keep the namespace
        they were created in)."""
        return self.host.pids()

    def scan(self, pids=None):
        """Read the fd tables of ``pids`` (default: all); returns how many were read."""
        self.scans += 1
        everyone = pids is None
        if everyone:
            pids = self.pids()
        read = 0
        alive = set()
        for pid in pids:
            if not self._read(pid, describe=False):
                continue
            read += 1
            alive.add(pid)
        if everyone:  # forget processes that are gone
            for pid in [pid for pid in self.sockets if pid not in alive]:
                del self.sockets[pid]
                self.changed.discard(pid)
        return read

    def identify(self, pid):
        """Who process ``pid`` is now (usage_model.identity, with its start time), or None when it is gone.

        Its stat, comm, cmdline, status, cgroup and fd table are read through one handle on /proc/PID; its
        sockets are recorded as a scan records them."""
        return self._read(pid, describe=True)

    def _read(self, pid, describe):
        """Read process ``pid`` through one handle and record its sockets.  Returns its identity with ``describe``
        (None when it is gone), else whether its fd table could be read.

        Its start time is read only when it holds sockets not seen under this pid before: a pid reused by another
        process shows other inodes, so that is when the check is needed, and an unchanged fd table costs no more
        reads than before."""
        try:
            proc = self.host.process_dir(pid)
        except (OSError, ValueError):
            return None if describe else False
        with proc:
            inodes = self._socket_inodes(proc)
            if not describe:
                if inodes is None:
                    return False
                if not inodes or inodes == self.sockets.get(pid):
                    self._record(pid, None, inodes, None)
                    return True
            try:
                start = parse_stat_start(proc.read("stat"), self.ticks)
            except OSError:
                return None if describe else False  # gone (ENOENT, ESRCH): every process has a stat
            info = self._identity(proc, pid, start) if describe or pid not in self.first_seen else None
        self._record(pid, start, inodes, info)
        return info if describe else True

    def _record(self, pid, start, inodes, info):
        if inodes is None:
            return
        first = self.first_seen.get(pid)
        if first is not None and _replaced(first, {"start_time": start}):
            self.reused.add(pid)  # another process at a pid already blamed: its sockets are nobody's here
            return
        before = self.sockets.get(pid)
        if before is not None and before != inodes:
            self.changed.add(pid)
        if inodes and first is None:
            self.first_seen[pid] = info
        self.sockets[pid] = inodes
        for inode in inodes:
            self.inode_pid[inode] = pid

    def _socket_inodes(self, proc):
        try:
            inodes = proc.socket_inodes()
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                self.unreadable[proc.pid] = exc.errno
            return None
        self.unreadable.pop(proc.pid, None)
        return inodes

    def owner(self, inode):
        return self.inode_pid.get(inode)

    def describe(self, pid):
        """{"pid", "start_time", "name", "cmdline", "uid", "user", "cgroup", "unit", "container"}; what cannot be
        read is None.

        Read now, unless the process is gone or its pid now belongs to another process (another start time):
        then it is described as it was when its sockets were first seen (a short-lived client), and a pid never
        seen with sockets is not invented."""
        first = self.first_seen.get(pid)
        now = self._current(pid)
        if now is None or first is not None and (now["name"] is None or _replaced(first, now)):
            return dict(first) if first is not None else identity(pid)
        return now

    def _current(self, pid):
        """The identity of process ``pid`` now, or None when it is gone (or its stat cannot be read)."""
        try:
            with self.host.process_dir(pid) as proc:
                return self._identity(proc, pid, parse_stat_start(proc.read("stat"), self.ticks))
        except (OSError, ValueError):
            return None

    def _identity(self, proc, pid, start):
        """The identity of the process behind ``proc`` (a ProcessDir), its files read through it."""
        info = identity(pid, start_time=start)
        readers = (
            ("comm", lambda data: {"name": parse_comm(data)}),
            ("cmdline", lambda data: {"cmdline": parse_cmdline(data)}),
            ("status", lambda data: {"uid": parse_status_uid(data.decode("utf-8", "replace"))}),
            ("cgroup", lambda data: dict(zip(("cgroup", "unit", "container"),
                                             parse_cgroup(data.decode("utf-8", "replace"))))),
        )
        for name, parse in readers:
            try:
                info.update(parse(proc.read(name)))
            except OSError:
                continue
        user = self.host.user_name(info["uid"])
        info["user"] = None if user is None else clean_text(user)[:NAME_MAX]
        return info
