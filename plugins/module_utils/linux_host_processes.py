# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The processes of a Linux host: /proc/PID (fd tables, network namespaces, comm/cmdline/status/cgroup), user names.

Part of LinuxHost (linux_host.py), the only code that touches a Linux host.
What is read is handed on as bytes or numbers; linux_processes parses it.
"""

from __future__ import annotations

import os

try:
    import pwd
except ImportError:  # pragma: no cover - not Linux
    pwd = None

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host_files import (
    DIR_FLAGS,
    HostRoot,
    read_regular,
)

PROCESS_FILE_MAX = 1 << 16  # bytes read from /proc/PID/{comm,cmdline,status,cgroup}: the rest is not read
SOCKET_PREFIX = "socket:["  # what /proc/PID/fd/N links to for a socket: socket:[INODE]


def socket_inode(link):
    """The inode of ``socket:[INODE]`` (what /proc/PID/fd/N links to), or None for anything else."""
    if link.startswith(SOCKET_PREFIX) and link.endswith("]"):
        digits = link[len(SOCKET_PREFIX):-1]
        if digits.isdigit() and len(digits) <= 20:
            return int(digits)
    return None


class HostProcesses(HostRoot):
    """LinuxHost's processes: their pids, network namespaces, socket inodes, /proc/PID files and user names."""

    def pids(self):
        """The pids of /proc (its numeric entries), in the order listed; [] when /proc cannot be listed."""
        try:
            names = os.listdir(self._p("/proc"))
        except OSError:
            return []
        return [int(name) for name in names if name.isdigit() and len(name) <= 10]

    def net_namespace(self, pid=None):
        """What /proc/PID/ns/net links to ("net:[4026531840]"), this process's when ``pid`` is None.

        Raises OSError: EACCES or EPERM for another user's process without root, ENOENT when it is gone
        or is a kernel thread.
        """
        return os.readlink(self._p("/proc/self/ns/net" if pid is None else "/proc/%d/ns/net" % pid))

    def socket_inodes(self, pid):
        """The inodes of the sockets process ``pid`` holds (a frozenset): its /proc/PID/fd/N linking to socket:[INODE].

        One call per process, the loop over its fds here and tight (the fd directory is opened once,
        O_NOFOLLOW, and each link read relative to it): attribution reads every fd of the namespace.
        An fd closed meanwhile is skipped.  Raises OSError when the fd table cannot be read: EACCES or
        EPERM for another user's process without root, ENOENT when it is gone.
        """
        fd = os.open(self._p("/proc/%d/fd" % pid), DIR_FLAGS)
        try:
            inodes = set()
            readlink = os.readlink
            for name in os.listdir(fd):
                try:
                    link = readlink(name, dir_fd=fd)
                except OSError:
                    continue  # closed meanwhile
                if link.startswith(SOCKET_PREFIX):
                    inode = socket_inode(link)
                    if inode is not None:
                        inodes.add(inode)
            return frozenset(inodes)
        finally:
            os.close(fd)

    def read_process_file(self, pid, name):
        """The bytes of /proc/PID/NAME (``name`` one file: comm, cmdline, status, cgroup), at most PROCESS_FILE_MAX.

        Read as read_regular() reads: a regular file only, opened with O_NOFOLLOW, O_NONBLOCK and
        O_CLOEXEC; of a longer file (a long command line) only the first PROCESS_FILE_MAX bytes.
        Raises OSError (UnsafeFile when it is not a regular file); ValueError for a ``name`` that is
        not one file name.
        """
        if not name or "/" in name or name in (".", ".."):
            raise ValueError("not a file of /proc/PID: %r" % (name,))
        path = "/proc/%d/%s" % (pid, name)
        return read_regular(self._p(path), path, cap=PROCESS_FILE_MAX, truncate=True)

    @staticmethod
    def user_name(uid):
        """The name of user ``uid`` in this system's user database (pwd), else the number as text; None for None."""
        if uid is None:
            return None
        if pwd is not None:
            try:
                return pwd.getpwuid(uid).pw_name
            except (KeyError, OverflowError):
                pass
        return str(uid)
