# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Files on a Linux host: safe reads of regular files, sysctl.d layouts, atomic writes, directories.

Part of LinuxHost (linux_host.py), the only code that touches a Linux host.
``read_regular`` opens nothing but a regular file and reads at most a cap;
``HostFiles`` reads sysctl.d files as boot-time tools do, writes atomically
(temporary file in the same directory, fsync, rename, fsync of the
directory) and checks a directory it is asked to write into; ``write_in_directory``
and ``remove_in_directory`` do the same confined to one real directory, every
step relative to a descriptor opened without following a link (the
port_monitor sampler).  ``HostRoot``
is the root every part of LinuxHost works under ("/", or a directory tree in
the unit tests).
"""

from __future__ import annotations

import errno
import os
import posixpath
import stat

CHUNK = 1 << 20  # /proc/net/tcp is read in chunks of this size
FILE_MAX = 1 << 20  # the most a sysctl.d file, /etc/sysctl.conf or a /proc file may hold: 1 MiB
READ_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
DIR_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# How a path that is not a regular file is named in messages.
_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))


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
        fd = os.open(path, READ_FLAGS | (0 if follow else NOFOLLOW))
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


class HostRoot:
    """The root a host object works under: "/" on a real host, a directory tree standing in for one in tests."""

    def __init__(self, root="/"):
        self.root = root

    def _p(self, path):
        return self.root.rstrip("/") + path if self.root != "/" else path

    @property
    def live(self):
        """Whether this is the running host (root "/"), not a directory tree standing in for it."""
        return self.root == "/"


class HostFiles(HostRoot):
    """LinuxHost's files: sysctl.d reads, our own file, atomic writes and removals, directories."""

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
        missing directory (0755); otherwise its absence is a HostError.  The
        same write as write_in_directory (``_write_at``), relative to one
        descriptor of the directory, which is reached here as the path names it.
        """
        real = self._p(path)
        directory, name = os.path.split(real)
        try:
            if make_directory and not os.path.isdir(directory):
                os.makedirs(directory, 0o755)
            dfd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
        except OSError as exc:
            raise HostError("cannot create a temporary file in %s: %s" % (posixpath.dirname(path), exc.strerror))
        try:
            _write_at(dfd, name, text, mode, path)
        finally:
            os.close(dfd)

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

    # ---------------------------------------------------------------- writes confined to one real directory
    def open_directory(self, path):
        """A descriptor of the directory ``path``, reached without following a symbolic link in any component.

        Walks from the root one component at a time with openat(O_DIRECTORY|O_NOFOLLOW), so a link
        anywhere, even one swapped in during the walk, is refused: UnsafeFile (errno ENOTDIR) saying
        what is there instead ("/srv/t is a symbolic link, not a directory"), or the open's own OSError
        (FileNotFoundError, PermissionError) when there is nothing to open.  "." and ".." components
        are UnsafeFile (EINVAL).  The caller closes the descriptor.
        """
        parts = [part for part in path.split("/") if part]
        if not path.startswith("/") or any(part in (".", "..") for part in parts):
            raise UnsafeFile(errno.EINVAL, "is not a plain absolute path", path)
        fd = os.open(self.root, DIR_FLAGS & ~NOFOLLOW)  # the root itself ("/", or a test tree) is trusted
        try:
            for depth, part in enumerate(parts):
                try:
                    below = os.open(part, DIR_FLAGS, dir_fd=fd)
                except OSError as exc:
                    if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                        raise
                    mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                    raise UnsafeFile(errno.ENOTDIR, "is %s, not a directory" % kind(mode),
                                     "/" + "/".join(parts[:depth + 1])) from None
                os.close(fd)
                fd = below
        except BaseException:
            os.close(fd)
            raise
        return fd

    def check_real_directory(self, path):
        """Raise as open_directory does unless ``path`` is a directory reached without any symbolic link."""
        os.close(self.open_directory(path))

    def write_in_directory(self, directory, name, text, mode=0o644):
        """Replace ``name`` in ``directory`` with ``text`` atomically, never outside the real ``directory``.

        Like write_file_atomic (hidden temporary file ".NAME.XXXXXXXX.tmp", fsync, rename, fsync of
        the directory; stale temporaries of a killed write removed first), but every create, rename
        and delete is relative to one descriptor of the directory from open_directory: a directory or
        a component above it swapped for a symbolic link is refused, and one swapped while this runs
        does not move the write.  The temporary file is created O_EXCL|O_NOFOLLOW, mode 0600 until
        fchmod.  HostError when the write fails; UnsafeFile or the OSError of open_directory when the
        directory cannot be reached without a link.
        """
        dfd = self.open_directory(directory)
        try:
            _write_at(dfd, name, text, mode, posixpath.join(directory, name))
        finally:
            os.close(dfd)

    def remove_in_directory(self, directory, name):
        """Remove ``name`` and the temporaries of a killed write of it from the real ``directory``; the names removed.

        The same confinement as write_in_directory: relative to a descriptor from open_directory, so
        nothing outside the real directory is deleted, and a symbolic link named ``name`` is removed
        itself, never what it points to.  A missing directory removes nothing ([]); a component that is
        a link raises UnsafeFile, and nothing is removed.
        """
        try:
            dfd = self.open_directory(directory)
        except FileNotFoundError:
            return []
        try:
            removed = _remove_temporaries_at(dfd, name)
            try:
                os.unlink(name, dir_fd=dfd)
                removed.append(name)
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise HostError("removing %s failed: %s" % (posixpath.join(directory, name), exc.strerror)) from None
            if removed:
                _fsync_fd(dfd)
            return sorted(removed)
        finally:
            os.close(dfd)

    def is_dir(self, path):
        return os.path.isdir(self._p(path))

    def check_directory(self, path):
        """Raise OSError unless ``path`` is an existing directory itself: never a symbolic link to one.

        Looked at with lstat, so a link is not followed: the lstat's own OSError (FileNotFoundError,
        PermissionError, NotADirectoryError for a path through a file) when there is nothing to look
        at, else UnsafeFile (errno ENOTDIR) saying what is there instead ("is a symbolic link, not a
        directory").
        """
        mode = os.lstat(self._p(path)).st_mode
        if not stat.S_ISDIR(mode):
            raise UnsafeFile(errno.ENOTDIR, "is %s, not a directory" % kind(mode), path)


def _unlink_at(dfd, name):
    """Remove ``name`` (never followed: a link is removed itself) from the directory ``dfd``; True when it went."""
    try:
        os.unlink(name, dir_fd=dfd)
    except OSError:
        return False
    return True


def _remove_temporaries_at(dfd, name):
    """Remove the ".NAME.*.tmp" an earlier, killed write left in the directory ``dfd``; the names removed.

    Callers are the only writer of ``name`` (linux_tcp holds the lock; the sampler runs once per host).
    """
    stale = sorted(entry for entry in os.listdir(dfd) if entry.startswith(".%s." % name) and entry.endswith(".tmp"))
    return [entry for entry in stale if _unlink_at(dfd, entry)]


def _create_temporary_at(dfd, name, shown):
    """A new ".NAME.XXXXXXXXXXXX.tmp" in the directory ``dfd`` (O_EXCL, O_NOFOLLOW, 0600): (fd, its name)."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
    for _attempt in range(100):
        temporary = ".%s.%s.tmp" % (name, os.urandom(6).hex())
        try:
            return os.open(temporary, flags, 0o600, dir_fd=dfd), temporary
        except FileExistsError:
            continue
        except OSError as exc:
            raise HostError("cannot create a temporary file in %s: %s" % (posixpath.dirname(shown), exc.strerror)) \
                from None
    raise HostError("cannot create a temporary file in %s: every name tried exists" % posixpath.dirname(shown))


def _write_at(dfd, name, text, mode, shown):
    """The one atomic write: ``text`` to ``name`` in the directory ``dfd`` (stale temporaries of a killed write
    removed first; a new temporary O_EXCL|O_NOFOLLOW 0600, fchmod ``mode``, written, fsync, renamed over
    ``name``, the directory fsynced).  Never leaves its temporary behind; HostError naming ``shown``."""
    _remove_temporaries_at(dfd, name)
    fd, temporary = _create_temporary_at(dfd, name, shown)
    try:
        try:
            os.fchmod(fd, mode)
            view = memoryview(text.encode("utf-8"))
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temporary, name, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException as exc:  # also text that cannot be encoded, or a signal: never leave it behind
        _unlink_at(dfd, temporary)
        if isinstance(exc, OSError):
            raise HostError("writing %s failed: %s" % (shown, exc.strerror)) from None
        raise
    _fsync_fd(dfd)


def _fsync_fd(fd):
    """fsync a directory's descriptor: the rename or unlink in it is on disk (an error is not the caller's)."""
    try:
        os.fsync(fd)
    except OSError:
        pass
