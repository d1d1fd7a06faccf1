# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The thin imperative shell of the Linux side: /proc/sys, sysctl.d files, the lock.

Everything that touches the host is here and nothing else is.  ``root`` lets
the unit tests run it against a directory tree; the module always uses "/".
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import posixpath
import tempfile
from contextlib import contextmanager

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_sysctl_d import (
    SYSCTL_CONF,
    SYSCTL_D_DIRS,
)

CLONE_NEWNET = 0x40000000
LOCK_PATH = "/run/tcpstack-tuning.lock"
_TCP_LISTEN = "0A"


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

    # runtime ------------------------------------------------------------
    def has_sysctl(self, key):
        return os.path.exists(self._p(sysctl_path(key)))

    def read_sysctl(self, key):
        """The runtime value of ``key`` as the kernel prints it, or None if the kernel lacks it."""
        try:
            with open(self._p(sysctl_path(key)), "r") as handle:
                return handle.read().rstrip("\n")
        except FileNotFoundError:
            return None
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

    def listening_ports(self):
        """TCP ports with a listening socket in this network namespace (IPv4 and IPv6)."""
        ports = set()
        for name in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                with open(self._p(name), "r") as handle:
                    next(handle, None)
                    for line in handle:
                        fields = line.split()
                        if len(fields) > 3 and fields[3] == _TCP_LISTEN:
                            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
            except (IOError, OSError):
                continue
        return ports

    def fresh_defaults(self, keys):
        """The values ``keys`` have in a brand-new network namespace: the kernel's defaults.

        Forks a child that unshares its network namespace and reads them.  Returns
        None when that is not possible (no CAP_SYS_ADMIN, not Linux, test root).
        """
        if self.root != "/":
            return None
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

    def read_layout(self):
        """Every sysctl.d ``*.conf`` file and /etc/sysctl.conf (when a regular file): path -> text."""
        layout = {}
        seen = set()
        for directory in SYSCTL_D_DIRS:
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
        if os.path.isfile(self._p(SYSCTL_CONF)):
            layout[SYSCTL_CONF] = self.read_file(SYSCTL_CONF) or ""
        return layout

    def first_name(self, path):
        """``path`` named through the first sysctl.d directory that is the same directory.

        On a merged /usr, /lib/sysctl.d/X is /usr/lib/sysctl.d/X: one file, one name.
        """
        parent, name = posixpath.split(path)
        real = os.path.realpath(self._p(parent))
        for directory in SYSCTL_D_DIRS:
            if os.path.realpath(self._p(directory)) == real:
                return posixpath.join(directory, name)
        return path

    def write_file_atomic(self, path, text, mode=0o644):
        """Write ``text`` to ``path`` atomically: temp file in the same directory, fsync, rename.

        Either the old or the new file is there afterwards, never a partial one,
        and no temporary file is left behind.
        """
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
