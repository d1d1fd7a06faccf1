# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The thin imperative shell of the Linux side: /proc, netlink, sysctl.d files, the lock.

Everything that touches the host is here and nothing else is: /proc/sys, the
socket table (/proc/net/tcp and the netlink sock_diag socket), the kernel's
counters, the processes (/proc/PID: their fd tables, network namespaces and
comm/cmdline/status/cgroup files; user names), sysctl.d files and the lock.
What is read is handed on as text or bytes (socket inodes as numbers); the
parsers (socket_table, linux_processes, linux_sysctl_d, linux_settings) are
pure.
``root`` lets the unit tests run it against a directory tree; the modules
always use "/".

``LinuxHost`` is put together from one part per job, each in its own file:
linux_host_files (regular files, sysctl.d, atomic writes, directories),
linux_host_kernel (/proc/sys, /proc files, netlink, the kernel defaults) and
linux_host_processes (/proc/PID, user names), linux_host_nat (the NAT rules: nft, iptables-nft-save); the
lock is here.  Import it,
and the names below, from this module.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import time
from contextlib import contextmanager

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host_files import (
    CHUNK,
    FILE_MAX,
    NOFOLLOW,
    HostError,
    HostFiles,
    UnsafeFile,
    kind,
    read_regular,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host_kernel import (
    CLONE_NEWNET,
    HostKernel,
    sysctl_path,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host_nat import HostNat
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host_processes import (
    PROCESS_FILE_MAX,
    SOCKET_PREFIX,
    HostProcesses,
    socket_inode,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host_trace import HostTrace

# What callers import from here, wherever it is written.
__all__ = ["CHUNK", "CLONE_NEWNET", "FILE_MAX", "LOCK_PATH", "LOCK_WAIT", "PROCESS_FILE_MAX", "SOCKET_PREFIX",
           "HostError", "LinuxHost", "UnsafeFile", "kind", "read_regular", "socket_inode", "sysctl_path"]

LOCK_PATH = "/run/tcpstack-tuning.lock"
LOCK_WAIT = 120.0  # seconds a run waits for another run's lock before it fails, saying who holds it


class LinuxHost(HostFiles, HostKernel, HostProcesses, HostTrace, HostNat):
    """Reads and writes one Linux host's TCP settings and sysctl.d files."""

    @contextmanager
    def lock(self, wait=LOCK_WAIT, poll=0.2):
        """Serialise runs on this host: runtime and file must always agree.

        Takes an exclusive flock on LOCK_PATH, waiting at most ``wait`` seconds (polling every
        ``poll`` seconds at most), then fails with HostError naming the process that holds it (its
        pid is written into the file).  The lock file is opened with O_NOFOLLOW and O_NONBLOCK and
        must be a regular file owned by the user running the module (root), else HostError.

        The lock is skipped, and the run goes on unserialised, only when the file cannot be
        created or opened because /run is read-only (EROFS), missing (ENOENT), or not writable by
        this user (EACCES, EPERM: an unprivileged run, which cannot write /proc/sys or
        /etc/sysctl.d either).
        """
        path = self._p(LOCK_PATH)
        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            if exc.errno not in (errno.EROFS, errno.ENOENT, errno.EACCES, errno.EPERM):
                what = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
                raise HostError("cannot open the lock file %s: %s" % (LOCK_PATH, what))
            fd = None  # read-only or missing /run, or no permission: nothing to serialise against but ourselves
        if fd is not None:
            self._take_lock(fd, wait, poll)  # closes fd when it fails
        try:
            yield
        finally:
            if fd is not None:
                try:
                    os.ftruncate(fd, 0)
                except OSError:
                    pass
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    @staticmethod
    def _take_lock(fd, wait, poll):
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
                raise HostError("the lock file %s is %s owned by uid %d, not a regular file of uid %d: remove it"
                                % (LOCK_PATH, kind(st.st_mode), st.st_uid, os.geteuid()))
            deadline = time.monotonic() + wait
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise HostError("another run holds the lock %s (%s) and did not release it within %g s; "
                                        "nothing was changed" % (LOCK_PATH, _holder(fd), wait))
                    time.sleep(min(poll, left))
            os.ftruncate(fd, 0)
            os.pwrite(fd, ("%d\n" % os.getpid()).encode("ascii"), 0)
        except BaseException:
            os.close(fd)
            raise


def _holder(fd):
    """Who holds the lock, from the pid the holder wrote into it: "pid 42, ansible-playbook" or what is known."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
    except OSError:
        text = ""
    if not text.isdigit() or len(text) > 10:
        return "its holder wrote no pid into it"
    try:
        comm = read_regular("/proc/%s/comm" % text, cap=64).decode("utf-8", "replace").strip()
    except OSError:
        return "pid %s" % text
    return "pid %s, %s" % (text, "".join(c if c.isprintable() else "?" for c in comm))
