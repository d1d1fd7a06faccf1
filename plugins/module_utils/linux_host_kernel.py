# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's side of a Linux host: /proc/sys (sysctl), /proc files, netlink dumps (sock_diag, ctnetlink),
the kernel defaults.

Part of LinuxHost (linux_host.py), the only code that touches a Linux host.
What is read is handed on as text or bytes; socket_table (and linux_conntrack) parse it.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
import time

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host_files import (
    CHUNK,
    NOFOLLOW,
    READ_FLAGS,
    HostError,
    HostRoot,
    UnsafeFile,
    read_regular,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.socket_table import (
    NETLINK_SOCK_DIAG,
    PROC_TABLES,
    TableError,
    listener_tally,
    tally_proc_chunks,
)

CLONE_NEWNET = 0x40000000
# ctypes and json are imported by the one method only linux_tcp calls (fresh_defaults): port_usage_info never
# needs them, and its start-up time and memory are measured (docs/port_usage_info.md, Cost).


def sysctl_path(key):
    return "/proc/sys/" + key.replace(".", "/")


class HostKernel(HostRoot):
    """LinuxHost's kernel reads and writes: sysctl values, /proc files, the socket table over netlink."""

    # runtime ------------------------------------------------------------
    def sysctl_text(self, key):
        """``key``'s value as the kernel prints it (without the newline), None if the kernel lacks it.

        Raises OSError when the key is there but cannot be read.
        """
        path = sysctl_path(key)
        try:
            data = read_regular(self._p(path), path)
        except FileNotFoundError:
            return None
        return data.decode("utf-8", "replace").rstrip("\n")

    def read_sysctl(self, key):
        """The runtime value of ``key`` as the kernel prints it, or None if the kernel lacks it."""
        try:
            return self.sysctl_text(key)
        except UnsafeFile as exc:
            raise HostError("reading %s failed: %s %s" % (key, exc.filename, exc.strerror))
        except OSError as exc:
            raise HostError("reading %s failed: %s" % (key, os.strerror(exc.errno or errno.EIO)))

    def write_sysctl(self, key, value):
        """Write ``value`` to /proc/sys; raises HostError naming the key and the kernel's answer."""
        path = self._p(sysctl_path(key))
        data = (value + "\n").encode("ascii")
        try:
            flags = os.O_WRONLY | os.O_NONBLOCK | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
            fd = os.open(path, flags | os.O_TRUNC if self.root != "/" else flags)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise HostError("writing %r to %s failed: %s" % (value, key, os.strerror(exc.errno or errno.EIO)))

    def kernel_release(self):
        return os.uname().release

    # /proc and netlink ----------------------------------------------------
    def read_proc(self, path):
        """The text of a /proc file such as /proc/net/snmp; raises OSError (UnsafeFile: not a regular file, or over 1 MiB)."""
        return read_regular(self._p(path), path).decode("utf-8", "replace")

    def read_chunks(self, path, size=CHUNK):
        """Yield a file's bytes in chunks of about ``size`` (a large /proc/net/tcp is never held whole).

        Raises OSError, from the first or a later chunk.
        """
        fd = os.open(self._p(path), READ_FLAGS)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise UnsafeFile(errno.EINVAL, "is not a regular file", path)
            while True:
                chunk = os.read(fd, size)
                if not chunk:
                    return
                yield chunk
        finally:
            os.close(fd)

    def sock_diag(self, dumps, timeout=10.0):
        """Run netlink sock_diag dumps over NETLINK_SOCK_DIAG, one socket each (no root needed).

        ``dumps`` is a sequence of (request, consume): ``request`` the message to
        send, ``consume(buffer)`` called with each buffer received, returning True
        when the dump is done.  All of them must be done within ``timeout``
        seconds.  Raises socket_table.TableError, saying why, when the kernel or a
        sandbox refuses the socket or the dump fails; the caller then reads /proc.
        """
        self.netlink_dump(NETLINK_SOCK_DIAG, dumps, timeout, "netlink sock_diag", TableError)

    def netlink_dump(self, protocol, dumps, timeout, label, error):
        """Run netlink dumps over ``protocol`` (NETLINK_SOCK_DIAG, NETLINK_NETFILTER), one socket each.

        ``dumps`` and ``timeout`` as for sock_diag.  Raises ``error`` (an exception class of the caller's parser)
        with a message that starts with ``label`` when the kernel or a sandbox refuses the socket, the dump
        fails or takes too long; what ``consume`` raises goes through unchanged.
        """
        deadline = time.monotonic() + timeout
        for request, consume in dumps:
            try:
                sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol)
            except (OSError, AttributeError, ValueError) as exc:
                raise error("%s unavailable: %s" % (label, exc))
            try:
                sock.settimeout(timeout)
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
                except OSError:
                    pass
                sock.sendall(request)
                while True:
                    buf = sock.recv(1 << 17)
                    if not buf:
                        raise error("%s: the dump ended early" % label)
                    if consume(buf):
                        break
                    if time.monotonic() > deadline:
                        raise error("%s: the dump took more than %ds" % (label, timeout))
            except (OSError, socket.timeout) as exc:
                raise error("%s: %s" % (label, exc))
            finally:
                sock.close()

    def listening_ports(self):
        """TCP ports with a listening socket in this network namespace (IPv4 and IPv6), from /proc/net/tcp{,6}."""
        tally = listener_tally()
        for path, family in PROC_TABLES:
            try:
                tally_proc_chunks(self.read_chunks(path), family, tally)
            except OSError:
                continue
        return tally.listening

    def fresh_defaults(self, keys):
        """The values ``keys`` have in a brand-new network namespace: the kernel's defaults.

        Forks a child that unshares its network namespace and reads them.  Returns
        None when that is not possible (no CAP_SYS_ADMIN, not Linux, test root).
        """
        if not self.live:
            return None
        import ctypes
        import json
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            unshare = libc.unshare
        except (OSError, AttributeError):
            return None
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 1
            try:
                os.close(read_end)
                if unshare(CLONE_NEWNET) == 0:
                    os.write(write_end, json.dumps({key: self.read_sysctl(key) for key in keys}).encode())
                    code = 0
            finally:
                os._exit(code)
        os.close(write_end)
        chunks = []
        while True:
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
        os.close(read_end)
        _pid, status = os.waitpid(pid, 0)
        if not os.WIFEXITED(status) or os.WEXITSTATUS(status) != 0:
            return None
        try:
            return json.loads(b"".join(chunks).decode())
        except ValueError:
            return None
