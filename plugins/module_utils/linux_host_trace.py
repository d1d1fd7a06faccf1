# -*- coding: utf-8 -*-
# Copyright: tcpstack.tuning contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel's tracepoints of a Linux host, through tracefs: a private trace instance, its trace_pipe.

Part of LinuxHost (linux_host.py), the only code that touches a Linux host.
What is read is handed on as text; linux_trace parses it.

tracefs is used where it is mounted (/sys/kernel/tracing, /sys/kernel/debug/tracing).  Where it is not, and
the module runs as root, it is mounted in a mount namespace of this process's own: unshare(CLONE_NEWNS), every
mount made private first (so that nothing propagates to the host), tracefs mounted, its directory opened, and
the process returns to its own mount namespace (setns) at once.  The private namespace dies with it and the
host's mount table never shows tracefs; the instance is reached through the open directory only.  A trace
instance (instances/tcpstack-PID-RANDOM) is removed, its events disabled first, in a ``finally``; one left by a
run that was killed (its pid gone) is removed by the next run.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host_files import HostRoot

TRACEFS_PATHS = ("/sys/kernel/tracing", "/sys/kernel/debug/tracing")
INSTANCE_PREFIX = "tcpstack-"
CLONE_NEWNS = 0x00020000
MS_REC = 0x4000
MS_PRIVATE = 1 << 18
READ_MAX = 16 << 20  # bytes of trace text one read() takes at most: the rest waits for the next call
_DIR = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0)


# The inode of the initial PID namespace, fixed by the kernel since 3.8 (PROC_PID_INIT_INO in
# include/linux/proc_ns.h): the only namespace whose pids the trace's pids are.
INITIAL_PID_NAMESPACE = "pid:[%d]" % 0xEFFFFFFC


def _nested_pid_namespace():
    """True unless this process runs in the initial PID namespace (or its namespace cannot be read)."""
    try:
        return os.readlink("/proc/self/ns/pid") != INITIAL_PID_NAMESPACE
    except OSError:
        return True


class TraceUnavailable(Exception):
    """Tracing cannot be used on this host; the message says why (it becomes a note of the result)."""


def _libc():
    import ctypes  # only a run that must mount tracefs needs it
    return ctypes, ctypes.CDLL(None, use_errno=True)


def _write(dir_fd, path, text):
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), dir_fd=dir_fd)
    try:
        os.write(fd, text.encode("ascii"))
    finally:
        os.close(fd)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


class TracePipe:
    """The trace_pipe of an instance, read without blocking."""

    def __init__(self, fd, instance):
        self.fd = fd
        self.instance = instance

    def read(self, limit=READ_MAX):
        """The text the kernel has for us now ("" when none), at most ``limit`` bytes (whole lines are not
        promised: linux_trace.parse_lines keeps the unfinished one)."""
        chunks = []
        size = 0
        while size < limit:
            try:
                data = os.read(self.fd, min(1 << 20, limit - size))
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            if not data:
                break
            chunks.append(data)
            size += len(data)
        return b"".join(chunks).decode("utf-8", "replace")

    def stop(self):
        """Stop recording (what is in the buffer can still be read)."""
        _write(self.instance, "tracing_on", "0")


class HostTrace(HostRoot):
    """LinuxHost's tracepoints: tracefs, a private instance, its trace_pipe."""

    def tracefs(self):
        """(fd of the tracefs directory, how it was found); raises TraceUnavailable."""
        if not self.live:
            raise TraceUnavailable("not the running host")
        if _nested_pid_namespace():
            raise TraceUnavailable("this process runs in a PID namespace of its own: the kernel's trace names "
                                   "processes by the host's pids, which its /proc does not show")
        for path in TRACEFS_PATHS:
            try:
                fd = os.open(path, _DIR)
            except OSError:
                continue
            try:
                os.stat("instances", dir_fd=fd)
                return fd, "mounted"
            except OSError:
                os.close(fd)
        if os.geteuid() != 0:
            raise TraceUnavailable("tracefs is not mounted and only root may mount it")
        return self._mount_tracefs(), "mounted for this run in a private mount namespace"

    @staticmethod
    def _mount_tracefs():
        ctypes, libc = _libc()

        def check(result, what):
            if result != 0:
                number = ctypes.get_errno()
                raise TraceUnavailable("cannot mount tracefs: %s: %s" % (what, os.strerror(number)))

        own = os.open("/proc/self/ns/mnt", os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
            try:
                check(libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None), "making every mount private")
                check(libc.mount(b"nodev", TRACEFS_PATHS[0].encode(), b"tracefs", 0, None), "mount")
                return os.open(TRACEFS_PATHS[0], _DIR)
            finally:
                check(libc.setns(own, CLONE_NEWNS), "returning to this process's mount namespace")
        finally:
            os.close(own)

    @staticmethod
    def remove_stale_instances(instances):
        """Remove the instances a killed run left (tcpstack-PID-*, PID gone); returns their names."""
        removed = []
        for name in os.listdir(instances):
            pid = name[len(INSTANCE_PREFIX):].split("-", 1)[0]
            if not name.startswith(INSTANCE_PREFIX) or not pid.isdigit() or len(pid) > 10 or _pid_alive(int(pid)):
                continue
            try:
                fd = os.open(name, _DIR, dir_fd=instances)
                try:
                    _write(fd, "tracing_on", "0")
                    _write(fd, "events/enable", "0")
                finally:
                    os.close(fd)
                os.rmdir(name, dir_fd=instances)
                removed.append(name)
            except OSError:
                continue
        return removed

    @contextmanager
    def trace_instance(self, events, buffer_kb):
        """A private trace instance recording ``events`` [(SYSTEM/EVENT, filter or None, required)] with the
        tgid of each task and the boot clock; yields (TracePipe, notes).  Raises TraceUnavailable (a required
        event missing or refused).  Everything is undone when the block ends, however it ends."""
        root, how = self.tracefs()
        notes = ["tracefs: %s" % how]
        try:
            instances = os.open("instances", _DIR, dir_fd=root)
        except OSError as exc:
            os.close(root)
            raise TraceUnavailable("tracefs has no instances directory: %s" % os.strerror(exc.errno))
        name = "%s%d-%s" % (INSTANCE_PREFIX, os.getpid(), os.urandom(4).hex())
        try:
            stale = self.remove_stale_instances(instances)
            if stale:
                notes.append("removed trace instances left by killed runs: %s" % ", ".join(sorted(stale)))
            try:
                os.mkdir(name, 0o700, dir_fd=instances)
            except OSError as exc:
                raise TraceUnavailable("cannot create a trace instance: %s" % os.strerror(exc.errno))
            with self._instance(instances, name, events, buffer_kb, notes) as pipe:
                yield pipe, notes
        finally:
            try:
                os.rmdir(name, dir_fd=instances)
            except OSError:
                pass
            os.close(instances)
            os.close(root)

    @contextmanager
    def _instance(self, instances, name, events, buffer_kb, notes):
        inst = os.open(name, _DIR, dir_fd=instances)
        enabled = []
        pipe = None
        try:
            try:
                _write(inst, "tracing_on", "0")
                _write(inst, "options/record-tgid", "1")
                _write(inst, "trace_clock", "boot")
                _write(inst, "buffer_size_kb", str(int(buffer_kb)))
            except OSError as exc:
                raise TraceUnavailable("cannot set up the trace instance: %s" % os.strerror(exc.errno))
            for event, condition, required in events:
                try:
                    if condition:
                        _write(inst, "events/%s/filter" % event, condition)
                    _write(inst, "events/%s/enable" % event, "1")
                    enabled.append(event)
                except OSError as exc:
                    if required:
                        raise TraceUnavailable("the kernel's tracepoint %s cannot be used: %s"
                                               % (event, os.strerror(exc.errno)))
                    notes.append("the kernel's tracepoint %s cannot be used (%s): not counted"
                                 % (event, os.strerror(exc.errno)))
            pipe = TracePipe(os.open("trace_pipe", os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0),
                                     dir_fd=inst), inst)
            _write(inst, "tracing_on", "1")
            yield pipe
        finally:
            for event in enabled:
                try:
                    _write(inst, "events/%s/enable" % event, "0")
                except OSError:
                    pass
            if pipe is not None:
                os.close(pipe.fd)
            os.close(inst)
