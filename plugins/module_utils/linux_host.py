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
"""

from __future__ import annotations

import errno
import fcntl
import os
import posixpath
import socket
import stat
import time
from contextlib import contextmanager

try:
    import pwd
except ImportError:  # pragma: no cover - not Linux
    pwd = None

from ansible_collections.tcpstack.tuning.plugins.module_utils.socket_table import (
    NETLINK_SOCK_DIAG,
    PROC_TABLES,
    TableError,
    listener_tally,
    tally_proc_chunks,
)

CLONE_NEWNET = 0x40000000
LOCK_PATH = "/run/tcpstack-tuning.lock"
LOCK_WAIT = 120.0  # seconds a run waits for another run's lock before it fails, saying who holds it
CHUNK = 1 << 20  # /proc/net/tcp is read in chunks of this size
FILE_MAX = 1 << 20  # the most a sysctl.d file, /etc/sysctl.conf or a /proc file may hold: 1 MiB
_READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
PROCESS_FILE_MAX = 1 << 16  # bytes read from /proc/PID/{comm,cmdline,status,cgroup}: the rest is not read
SOCKET_PREFIX = "socket:["  # what /proc/PID/fd/N links to for a socket: socket:[INODE]
# How a path that is not a regular file is named in messages.
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))
# ctypes, json and tempfile are imported by the methods only linux_tcp calls (fresh_defaults,
# write_file_atomic): port_usage_info never needs them, and its start-up time and memory are
# measured (docs/port_usage_info.md, Cost).


class HostError(Exception):
    """Something on the host failed; the message says what and where."""


class UnsafeFile(OSError):
    """A file that is not read: not a regular file, a symbolic link where none may be, or too large.

    An OSError (errno EINVAL, EFBIG or ELOOP), so callers that already handle an unreadable file
    handle this one too; ``strerror`` says why in words and ``filename`` is the path as the user
    knows it.
    """


def kind(mode):
    """What a file of ``mode`` is, in words ("a FIFO (named pipe)"), or "a regular file"."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def _read_fd(fd, cap, shown, truncate=False):
    """At most ``cap`` bytes from ``fd``; UnsafeFile when there are more (reads cap + 1 bytes at most), or with
    ``truncate`` the first ``cap`` bytes (reads no more)."""
    chunks = []
    total = 0
    limit = cap if truncate else cap + 1
    while total < limit:
        try:
            chunk = os.read(fd, min(CHUNK, limit - total))
        except BlockingIOError:  # only a FIFO or device can say this, and fstat refused those
            raise UnsafeFile(errno.EAGAIN, "would block on read", shown)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    if truncate:
        return b"".join(chunks)
    raise UnsafeFile(errno.EFBIG, "is larger than %d bytes, the most read from such a file" % cap, shown)


def _is_dev_null(st):
    return stat.S_ISCHR(st.st_mode) and st.st_rdev == os.makedev(1, 3)


def read_regular(path, shown=None, follow=False, cap=FILE_MAX, truncate=False):
    """The bytes of the regular file ``path``: never a FIFO, device, socket or directory, never more than ``cap``.

    The file is looked at first (lstat, or stat with ``follow``) and opened only when it is a
    regular file, with O_NONBLOCK (a FIFO swapped in meanwhile cannot block), O_CLOEXEC and, unless
    ``follow``, O_NOFOLLOW; after the open, fstat must show the same regular file.  Procfs files
    are regular files of size 0: they are read to their end like any other, up to ``cap``.  A
    longer file raises UnsafeFile, or with ``truncate`` gives its first ``cap`` bytes.

    Raises FileNotFoundError when there is nothing at ``path``, UnsafeFile (an OSError) naming
    ``shown`` and what the file is otherwise, or the OSError of the open or read.
    """
    shown = path if shown is None else shown
    try:
        before = os.stat(path) if follow else os.lstat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(errno.ELOOP, "is a symbolic link loop", shown)
        raise
    if not stat.S_ISREG(before.st_mode):
        raise UnsafeFile(errno.EINVAL, "is %s, not a regular file" % kind(before.st_mode), shown)
    if before.st_size > cap and not truncate:
        raise UnsafeFile(errno.EFBIG, "is %d bytes, more than the %d read from such a file" % (before.st_size, cap),
                         shown)
    try:
        fd = os.open(path, _READ_FLAGS | (0 if follow else _NOFOLLOW))
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # replaced by a symbolic link since the lstat
            raise UnsafeFile(errno.ELOOP, "is a symbolic link", shown)
        raise
    try:
        now = os.fstat(fd)
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            raise UnsafeFile(errno.EINVAL, "changed while it was opened (now %s)" % kind(now.st_mode), shown)
        return _read_fd(fd, cap, shown, truncate)
    finally:
        os.close(fd)


def socket_inode(link):
    """The inode of ``socket:[INODE]`` (what /proc/PID/fd/N links to), or None for anything else."""
    if link.startswith(SOCKET_PREFIX) and link.endswith("]"):
        digits = link[len(SOCKET_PREFIX):-1]
        if digits.isdigit() and len(digits) <= 20:
            return int(digits)
    return None


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
            flags = os.O_WRONLY | os.O_NONBLOCK | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
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
        fd = os.open(self._p(path), _READ_FLAGS)
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

    # processes ------------------------------------------------------------
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
        fd = os.open(self._p("/proc/%d/fd" % pid), _DIR_FLAGS)
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
        """Text of ``path`` as boot-time tools read it, or None when it does not exist or is a directory.

        A symbolic link is followed to a regular file (systemd-sysctl and procps follow them); a
        link to /dev/null reads as "" (it masks a file of that name) and is not opened.  Anything
        else that is not a regular file, a symlink loop or a file over FILE_MAX raises UnsafeFile.
        """
        real = self._p(path)
        try:
            st = os.stat(real)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeFile(errno.ELOOP, "is a symbolic link loop", path)
            raise
        if stat.S_ISDIR(st.st_mode):
            return None
        if _is_dev_null(st):
            return ""
        return read_regular(real, path, follow=True).decode("utf-8", "replace")

    def read_layout(self, directories, conf, notes=None):
        """Every ``*.conf`` file of ``directories`` and ``conf`` (when a regular file): path -> text.

        linux_sysctl_d says which: the sysctl.d directories and /etc/sysctl.conf.  These reads
        predict what a boot applies, so they follow symbolic links as systemd-sysctl does (Debian's
        99-sysctl.conf -> ../sysctl.conf).  A file that cannot be read safely (a FIFO, a device, a
        socket, a symlink loop or a dangling link, a file over FILE_MAX, an unreadable one) is left
        out and a sentence saying so is appended to ``notes``: it is never opened if it is not a
        regular file, so it can neither block nor flood the run.
        """
        layout = {}
        seen = set()
        notes = [] if notes is None else notes

        def take(path):
            try:
                text = self.read_file(path)
            except OSError as exc:
                reason = exc.strerror if isinstance(exc, UnsafeFile) else "cannot be read (%s)" % (
                    exc.strerror or exc)
                notes.append("%s %s: it was not read, so what it sets at boot is not taken into account"
                             % (path, reason))
                return
            if text is not None:
                layout[path] = text

        for directory in directories:
            real = os.path.realpath(self._p(directory))
            if real in seen:  # merged /usr: /lib/sysctl.d is /usr/lib/sysctl.d, read it once
                continue
            seen.add(real)
            try:
                names = os.listdir(self._p(directory))
            except (FileNotFoundError, NotADirectoryError):
                continue
            for name in sorted(names):
                if name.endswith(".conf"):
                    take(posixpath.join(directory, name))
        if os.path.lexists(self._p(conf)):
            try:
                st = os.stat(self._p(conf))
            except OSError:
                st = None
            if st is None or not stat.S_ISDIR(st.st_mode):
                take(conf)
        return layout

    def own_file(self, path, marks):
        """The text of our persisted file ``path``, None when absent; UnsafeFile when it is not ours.

        Ours is a regular file (not a symbolic link, FIFO, device, socket or directory) of at most
        FILE_MAX bytes whose first line starts with one of ``marks``.  Never follows a symbolic link
        and never opens anything but a regular file.
        """
        real = self._p(path)
        try:
            if os.path.islink(real):
                target = os.readlink(real)
                raise UnsafeFile(errno.ELOOP, "is a symbolic link (to %s), not a regular file"
                                 % (target if len(target) <= 200 else target[:200] + "..."), path)
            data = read_regular(real, path, follow=False)
        except FileNotFoundError:
            return None
        except UnsafeFile:
            raise
        except OSError as exc:
            if exc.errno == errno.ENOTDIR:
                raise UnsafeFile(errno.ENOTDIR, "is inside something that is not a directory", path)
            raise UnsafeFile(exc.errno or errno.EIO, "cannot be read (%s)" % (exc.strerror or exc), path)
        text = data.decode("utf-8", "replace")
        if not text.startswith(tuple(marks)):
            raise UnsafeFile(errno.EPERM, "does not start with the header linux_tcp writes, so it is not ours", path)
        return text

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

    def write_file_atomic(self, path, text, mode=0o644, make_directory=True):
        """Write ``text`` to ``path`` atomically: temp file in the same directory, fsync, rename.

        Either the old or the new file is there afterwards, never a partial one,
        and no temporary file is left behind.  ``make_directory``: create a
        missing directory (0755); otherwise its absence is a HostError.
        """
        import tempfile
        real = self._p(path)
        directory, name = os.path.split(real)
        try:
            if make_directory and not os.path.isdir(directory):
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
        except BaseException as exc:  # also text that cannot be encoded, or a signal: never leave the temporary file
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(exc, OSError):
                raise HostError("writing %s failed: %s" % (path, exc.strerror)) from None
            raise
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
            fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
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
        flags = os.O_RDWR | os.O_CREAT | os.O_NONBLOCK | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
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
