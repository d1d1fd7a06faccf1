# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The processes of a Linux host: /proc/PID (fd tables, network namespaces, stat/comm/cmdline/status/cgroup), user
names, the clock tick.

Part of LinuxHost (linux_host.py), the only code that touches a Linux host.
What is read is handed on as bytes or numbers; linux_processes parses it.
A process is read through one handle on its /proc/PID directory (``ProcessDir``): a pid reused while it is read
is never read in its place.
"""

from __future__ import annotations

import errno
import os
import stat

try:
    import pwd
except ImportError:  # pragma: no cover - not Linux
    pwd = None

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host_files import (
    DIR_FLAGS,
    NOFOLLOW,
    READ_FLAGS,
    HostRoot,
    UnsafeFile,
    _read_fd,
    kind,
)

PROCESS_FILE_MAX = 1 << 16  # bytes read from /proc/PID/{comm,cmdline,status,cgroup}: the rest is not read
NET_FILE_MAX = 32 << 20  # bytes read from /proc/PID/net/{fib_trie,if_inet6,tcp,tcp6} (tcp: ~150 per socket)
SOCKET_PREFIX = "socket:["  # what /proc/PID/fd/N links to for a socket: socket:[INODE]
CLOCK_TICKS_DEFAULT = 100  # USER_HZ on every Linux architecture, when sysconf cannot say


def socket_inode(link):
    """The inode of ``socket:[INODE]`` (what /proc/PID/fd/N links to), or None for anything else."""
    if link.startswith(SOCKET_PREFIX) and link.endswith("]"):
        digits = link[len(SOCKET_PREFIX):-1]
        if digits.isdigit() and len(digits) <= 20:
            return int(digits)
    return None


def _file_name(name):
    if not isinstance(name, str) or not name or "/" in name or name in (".", ".."):
        raise ValueError("not a file of /proc/PID: %r" % (name,))
    return name


def _read_regular(directory, name, cap, shown):
    """At most ``cap`` bytes of the file ``name`` in the directory descriptor ``directory``: opened without
    following a link, read only when fstat shows a regular file.  Raises OSError (UnsafeFile)."""
    try:
        fd = os.open(name, READ_FLAGS | NOFOLLOW, dir_fd=directory)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(errno.EINVAL, "is a symbolic link, not a regular file", shown)
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise UnsafeFile(errno.EINVAL, "is %s, not a regular file" % kind(mode), shown)
        return _read_fd(fd, cap, shown, truncate=True)
    finally:
        os.close(fd)


class ProcessDir:
    """/proc/PID opened once (O_DIRECTORY|O_NOFOLLOW), and every file of that process read through this handle.

    The handle stays with the process it was opened for: once that process is gone its files fail (ESRCH or
    ENOENT), even when its pid has been given to another process meanwhile, so what is read through one handle
    (start time, name, command line, user, cgroup, sockets) is always one process's.  Close it (or use ``with``).
    """

    def __init__(self, fd, pid):
        self.fd = fd
        self.pid = pid

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def read(self, name, cap=PROCESS_FILE_MAX):
        """The bytes of /proc/PID/NAME (``name`` one file: stat, comm, cmdline, status, cgroup), at most ``cap``.

        Opened relative to the handle with O_NOFOLLOW, O_NONBLOCK and O_CLOEXEC, and read only when fstat shows
        a regular file; of a longer file only the first ``cap`` bytes.  Raises OSError (UnsafeFile when it is
        not a regular file); ValueError for a ``name`` that is not one file name.
        """
        return _read_regular(self.fd, name, cap, "/proc/%d/%s" % (self.pid, _file_name(name)))

    def read_net(self, name, cap=NET_FILE_MAX):
        """The bytes of /proc/PID/net/NAME (``name`` one file: fib_trie, if_inet6, tcp, tcp6), the tables of the
        process's network namespace, at most ``cap`` (the first ``cap`` bytes of a longer one).  "net" and the
        file are opened relative to the handle without following links; only a regular file is read.  Raises
        OSError (UnsafeFile), ValueError."""
        shown = "/proc/%d/net/%s" % (self.pid, _file_name(name))
        directory = os.open("net", DIR_FLAGS, dir_fd=self.fd)
        try:
            return _read_regular(directory, name, cap, shown)
        finally:
            os.close(directory)

    def socket_inodes(self):
        """The inodes of the sockets the process holds (a frozenset): its fd/N linking to socket:[INODE].

        The fd directory is opened once relative to the handle (O_NOFOLLOW) and each link read relative to it;
        an fd closed meanwhile is skipped.  Raises OSError when the fd table cannot be read: EACCES or EPERM
        for another user's process without root, ENOENT or ESRCH when it is gone.
        """
        fd = os.open("fd", DIR_FLAGS, dir_fd=self.fd)
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


class HostProcesses(HostRoot):
    """LinuxHost's processes: their pids, network namespaces, /proc/PID handles and files, user names."""

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

    def process_dir(self, pid):
        """A ProcessDir: /proc/PID opened once.  Raises OSError (ENOENT when the process is gone)."""
        if type(pid) is not int or pid <= 0:  # pylint: disable=unidiomatic-typecheck
            raise ValueError("not a pid: %r" % (pid,))
        return ProcessDir(os.open(self._p("/proc/%d" % pid), DIR_FLAGS), pid)

    def socket_inodes(self, pid):
        """The inodes of the sockets process ``pid`` holds (ProcessDir.socket_inodes).  Raises OSError."""
        with self.process_dir(pid) as proc:
            return proc.socket_inodes()

    def read_process_file(self, pid, name):
        """The bytes of /proc/PID/NAME (ProcessDir.read), at most PROCESS_FILE_MAX.  Raises OSError, ValueError."""
        _file_name(name)
        with self.process_dir(pid) as proc:
            return proc.read(name)

    @staticmethod
    def clock_ticks():
        """The clock ticks per second of /proc/PID/stat's times (sysconf SC_CLK_TCK), else 100."""
        try:
            ticks = os.sysconf("SC_CLK_TCK")
        except (AttributeError, ValueError, OSError):
            return CLOCK_TICKS_DEFAULT
        return ticks if isinstance(ticks, int) and ticks > 0 else CLOCK_TICKS_DEFAULT

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
