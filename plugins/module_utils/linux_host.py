# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The thin imperative shell of the Linux side: /proc, netlink, sysctl.d files, the lock.

Everything that touches the host is here and nothing else is: /proc/sys, the
socket table (/proc/net/tcp and the netlink sock_diag socket), the kernel's
counters, sysctl.d files and the lock.  What is read is handed on as text or
bytes; the parsers (socket_table, linux_sysctl_d, linux_settings) are pure.
``root`` lets the unit tests run it against a directory tree; the modules
always use "/".
"""

from __future__ import annotations

import errno
import fcntl
import os
import posixpath
import socket
import time
from contextlib import contextmanager

from ansible_collections.tcpstack.tuning.plugins.module_utils.socket_table import (
    NETLINK_SOCK_DIAG,
    PROC_TABLES,
    TableError,
    listener_tally,
    tally_proc_chunks,
)

CLONE_NEWNET = 0x40000000
LOCK_PATH = "/run/tcpstack-tuning.lock"
CHUNK = 1 << 20  # /proc/net/tcp is read in chunks of this size
# ctypes, json and tempfile are imported by the methods only linux_tcp calls (fresh_defaults,
# write_file_atomic): port_usage_info never needs them, and its start-up time and memory are
# measured (docs/port_usage_info.md, Cost).


class HostError(Exception):
    """Something on the host failed; the message says what and where."""


def sysctl_path(key):
    return "/proc/sys/" + key.replace(".", "/")


class LinuxHost:
    """Reads and writes one Linux host's TCP settings and sysctl.d files."""

    def __init__(self, root="/"):
        self.root = root

    def _p(self, path):
        return self.root.rstrip("/") + path if self.root != "/" else path

    @property
    def live(self):
        """Whether this is the running host (root "/"), not a directory tree standing in for it."""
        return self.root == "/"

    # runtime ------------------------------------------------------------
    def sysctl_text(self, key):
        """``key``'s value as the kernel prints it (without the newline), None if the kernel lacks it.

        Raises OSError when the key is there but cannot be read.
        """
        try:
            with open(self._p(sysctl_path(key)), "r") as handle:
                return handle.read().rstrip("\n")
        except FileNotFoundError:
            return None

    def read_sysctl(self, key):
        """The runtime value of ``key`` as the kernel prints it, or None if the kernel lacks it."""
        try:
            return self.sysctl_text(key)
        except OSError as exc:
            raise HostError("reading %s failed: %s" % (key, os.strerror(exc.errno or errno.EIO)))

    def write_sysctl(self, key, value):
        """Write ``value`` to /proc/sys; raises HostError naming the key and the kernel's answer."""
        path = self._p(sysctl_path(key))
        data = (value + "\n").encode("ascii")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC if self.root != "/" else os.O_WRONLY)
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
        """The text of a /proc file such as /proc/net/snmp; raises OSError."""
        with open(self._p(path), "r") as handle:
            return handle.read()

    def read_chunks(self, path, size=CHUNK):
        """Yield a file's bytes in chunks of about ``size`` (a large /proc/net/tcp is never held whole).

        Raises OSError, from the first or a later chunk.
        """
        fd = os.open(self._p(path), os.O_RDONLY)
        try:
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
        deadline = time.monotonic() + timeout
        for request, consume in dumps:
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
                sock.sendall(request)
                while True:
                    buf = sock.recv(1 << 17)
                    if not buf:
                        raise TableError("netlink sock_diag: the dump ended early")
                    if consume(buf):
                        break
                    if time.monotonic() > deadline:
                        raise TableError("netlink sock_diag: the dump took more than %ds" % timeout)
            except (OSError, socket.timeout) as exc:
                raise TableError("netlink sock_diag: %s" % exc)
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

    # files --------------------------------------------------------------
    def read_file(self, path):
        """Text of ``path``, or None when it does not exist.  A link to /dev/null reads as ""."""
        try:
            with open(self._p(path), "r", encoding="utf-8", errors="replace") as handle:
                return handle.read()
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            return None

    def read_layout(self, directories, conf):
        """Every ``*.conf`` file of ``directories`` and ``conf`` (when a regular file): path -> text.

        linux_sysctl_d says which: the sysctl.d directories and /etc/sysctl.conf.
        """
        layout = {}
        seen = set()
        for directory in directories:
            real = os.path.realpath(self._p(directory))
            if real in seen:  # merged /usr: /lib/sysctl.d is /usr/lib/sysctl.d, read it once
                continue
            seen.add(real)
            try:
                names = os.listdir(self._p(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in names:
                if not name.endswith(".conf"):
                    continue
                path = posixpath.join(directory, name)
                text = self.read_file(path)
                if text is not None:
                    layout[path] = text
        if os.path.isfile(self._p(conf)):
            layout[conf] = self.read_file(conf) or ""
        return layout

    def first_name(self, path, directories):
        """``path`` named through the first of ``directories`` that is the same directory as its own.

        On a merged /usr, /lib/sysctl.d/X is /usr/lib/sysctl.d/X: one file, one name.
        """
        parent, name = posixpath.split(path)
        real = os.path.realpath(self._p(parent))
        for directory in directories:
            if os.path.realpath(self._p(directory)) == real:
                return posixpath.join(directory, name)
        return path

    def write_file_atomic(self, path, text, mode=0o644):
        """Write ``text`` to ``path`` atomically: temp file in the same directory, fsync, rename.

        Either the old or the new file is there afterwards, never a partial one,
        and no temporary file is left behind.
        """
        import tempfile
        real = self._p(path)
        directory, name = os.path.split(real)
        try:
            if not os.path.isdir(directory):
                os.makedirs(directory, 0o755)
            self._remove_stale_temporaries(directory, name)
            fd, tmp = tempfile.mkstemp(prefix=".%s." % name, suffix=".tmp", dir=directory)
        except OSError as exc:
            raise HostError("cannot create a temporary file in %s: %s" % (posixpath.dirname(path), exc.strerror))
        try:
            try:
                os.fchmod(fd, mode)
                data = text.encode("utf-8")
                view = memoryview(data)
                while view:
                    written = os.write(fd, view)
                    view = view[written:]
                os.fsync(fd)
            finally:
                os.close(fd)
            os.rename(tmp, real)
        except OSError as exc:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise HostError("writing %s failed: %s" % (path, exc.strerror))
        self._fsync_dir(directory)

    @staticmethod
    def _remove_stale_temporaries(directory, name):
        """Temporary files an earlier, killed write left behind (".NAME.XXXX.tmp").

        Callers hold the module's lock, so no other run of ours is writing one now.
        """
        for entry in os.listdir(directory):
            if entry.startswith(".%s." % name) and entry.endswith(".tmp"):
                try:
                    os.unlink(os.path.join(directory, entry))
                except OSError:
                    pass

    def remove_file(self, path):
        try:
            os.unlink(self._p(path))
        except FileNotFoundError:
            return
        except OSError as exc:
            raise HostError("removing %s failed: %s" % (path, exc.strerror))
        self._fsync_dir(os.path.dirname(self._p(path)))

    @staticmethod
    def _fsync_dir(directory):
        try:
            fd = os.open(directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)

    def is_dir(self, path):
        return os.path.isdir(self._p(path))

    @contextmanager
    def lock(self):
        """Serialise runs on this host: runtime and file must always agree."""
        path = self._p(LOCK_PATH)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError:
            fd = None  # read-only /run: nothing to serialise against but ourselves
        try:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            if fd is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)
