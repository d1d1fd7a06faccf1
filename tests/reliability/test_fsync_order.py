"""Issue 13, losing power mid-write: the persisted file is written, fsynced, renamed, and its directory fsynced.

strace traces a real linux_tcp run (linux_tuning.run with LinuxHost on "/", the code the module runs)
inside a throwaway network namespace, whose /etc/sysctl.d is the sandbox's own directory.  From the trace,
the system calls on the temporary file, the target and the directory must come in exactly this order:

    openat(<same dir>/.60-tcpstack-tuning.conf.XXXX.tmp, O_CREAT|O_EXCL|O_NOFOLLOW) = T
    fchmod(T, 0644)
    write(T, ...)            (one or more)
    fsync(T)
    close(T)
    rename(<tmp>, <target>)  (or renameat/renameat2)
    fsync(D)

where D is openat(<dir>, O_DIRECTORY), opened before the temporary is created (which is then created
relative to D: openat(D, ".60-tcpstack-tuning.conf.XXXX.tmp"), and renamed with renameat(D, ..., D, ...)),

and removing the file (state: absent) is unlink(<target>) then fsync of the directory.  Any change of that
order (a rename before the fsync, a missing directory fsync, fdatasync, a write to the target itself) fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys

import pytest

from tests.support.ci import need
from tests.support.collection import collections_path
from tests.support.netns import Sandbox

pytestmark = pytest.mark.usefixtures("root_netns")

DIRECTORY = "/etc/sysctl.d"
TARGET = DIRECTORY + "/60-tcpstack-tuning.conf"
CALLS = "openat,open,creat,write,pwrite64,fsync,fdatasync,sync_file_range,close,rename,renameat,renameat2,fchmod,chmod,fchmodat,unlink,unlinkat"

# Runs linux_tcp's run() on the namespace's real /proc/sys and /etc/sysctl.d; argv: JSON params.
SCRIPT = r"""
import json, sys
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_tuning import run
result, warnings = run(json.loads(sys.argv[1]), LinuxHost())
print(json.dumps({"changed": result["changed"]}))
"""

LINE = re.compile(r"^(?:\[pid\s+)?(\d+)\]?\s+(\w+)\((.*)\)\s+=\s+(-?\d+|\?)")


def trace(box, tmp_path, params):
    """Run SCRIPT under strace -f in the sandbox; returns the parsed calls [(name, args, result)]."""
    out = tmp_path / ("trace-%d.txt" % len(list(tmp_path.iterdir())))
    env = dict(os.environ, PYTHONPATH=str(collections_path()))
    done = box.exec(["strace", "-f", "-qq", "-s", "256", "-e", "trace=" + CALLS, "-o", str(out),
                     sys.executable, "-c", SCRIPT, json.dumps(params)], check=False, timeout=120, env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1])["changed"]
    calls = []
    for line in out.read_text().splitlines():
        match = LINE.match(line)
        if match:
            calls.append((match.group(2), match.group(3), match.group(4)))
    return calls


def quoted(args):
    return re.findall(r'"((?:[^"\\]|\\.)*)"', args)


def _resolve(args, dir_fds):
    """The absolute paths a call names: a name relative to a descriptor of DIRECTORY (openat(D, "name"),
    renameat(D, "old", D, "new")) is joined to DIRECTORY."""
    fields = [field.strip() for field in args.split(",")]
    out = []
    for index, name in enumerate(quoted(args)):  # the descriptor of name N is among the fields before it
        if name.startswith("/"):
            out.append(name)
            continue
        out.append((DIRECTORY + "/" + name) if any(f in dir_fds for f in fields[:2 * index + 1] if f.isdigit())
                   else name)
    return out


def file_events(calls):
    """The calls on our temporary file, the target and the directory, in order, as short names.

    A descriptor of the directory is named "open-dir" when it is first used for our file (the temporary
    created relative to it, or an fsync of it): the directory's other opens are listdir()."""
    events = []
    tmp_fd = dir_fd = None
    tmp_path = None
    dir_fds = set()
    for name, args, result in calls:
        paths = _resolve(args, dir_fds)
        first = args.split(",", 1)[0].strip()
        if name in ("openat", "open") and paths:
            path = paths[0]
            if path == DIRECTORY and "O_DIRECTORY" in args:
                dir_fds.add(result)
            elif path.startswith(DIRECTORY + "/.60-tcpstack-tuning.conf.") and path.endswith(".tmp"):
                assert "O_CREAT" in args and "O_EXCL" in args and "O_NOFOLLOW" in args, args
                if first in dir_fds and dir_fd != first:
                    dir_fd = first
                    events.append("open-dir")
                tmp_fd, tmp_path = result, path
                events.append("create-temp-in-same-dir")
            elif path == TARGET and ("O_WRONLY" in args or "O_RDWR" in args or "O_CREAT" in args):
                events.append("open-target-for-writing")
        elif name == "fchmod" and first == tmp_fd:
            events.append("fchmod-" + args.split(",")[1].strip())
        elif name in ("write", "pwrite64") and first == tmp_fd:
            if not events or events[-1] != "write-temp":
                events.append("write-temp")
        elif name in ("fsync", "fdatasync", "sync_file_range") and (first == tmp_fd or first in dir_fds):
            if first != tmp_fd and first != dir_fd:
                dir_fd = first
                events.append("open-dir")
            events.append("%s-%s" % (name, "temp" if first == tmp_fd else "dir"))
        elif name == "close" and (first == tmp_fd or first in dir_fds):
            dir_fds.discard(first)
            if first == tmp_fd:
                events.append("close-temp")
                tmp_fd = None
            elif first == dir_fd:
                events.append("close-dir")
                dir_fd = None
        elif name.startswith("rename") and TARGET in paths:
            assert paths == [tmp_path, TARGET], (args, tmp_path)
            events.append("rename-temp-over-target")
        elif name.startswith("unlink") and TARGET in paths:
            events.append("unlink-target")
        elif name in ("chmod", "fchmodat") and any(p.startswith(DIRECTORY) for p in paths):
            events.append("chmod-by-path")
    return events


WRITE_ORDER = ["open-dir", "create-temp-in-same-dir", "fchmod-0644", "write-temp", "fsync-temp", "close-temp",
               "rename-temp-over-target", "fsync-dir", "close-dir"]
REMOVE_ORDER = ["unlink-target", "open-dir", "fsync-dir", "close-dir"]


def test_write_fsync_rename_fsync_dir_in_that_order(tmp_path, figures):
    need(shutil.which("strace") is not None, "needs strace (Debian package strace; tools/hostdeps.py installs it)")
    with Sandbox.new() as box:
        first = file_events(trace(box, tmp_path, {"fin_timeout": 31, "somaxconn": 8191}))
        assert first == WRITE_ORDER, first
        assert box.read_file("60-tcpstack-tuning.conf").count("\n") >= 5
        # a rewrite of an existing file of ours: the same order, the old file replaced only by the rename
        again = file_events(trace(box, tmp_path, {"fin_timeout": 32}))
        assert again == WRITE_ORDER, again
        gone = file_events(trace(box, tmp_path, {"state": "absent"}))
        assert gone == REMOVE_ORDER, gone
        assert box.read_file("60-tcpstack-tuning.conf") is None
    figures.add("security", checks=1)


def test_the_order_check_notices_a_changed_order():
    """The parser of the trace is not vacuous: a rename before the fsync, or no directory fsync, is caught."""
    calls = [("openat", 'AT_FDCWD, "%s/.60-tcpstack-tuning.conf.ab.tmp", O_RDWR|O_CREAT|O_EXCL|O_NOFOLLOW, 0600'
              % DIRECTORY, "3"), ("fchmod", "3, 0644", "0"), ("write", '3, "x", 1', "1"),
             ("rename", '"%s/.60-tcpstack-tuning.conf.ab.tmp", "%s"' % (DIRECTORY, TARGET), "0"),
             ("fsync", "3", "0"), ("close", "3", "0")]
    events = file_events(calls)
    assert events != WRITE_ORDER and events.index("rename-temp-over-target") < events.index("fsync-temp")


def test_the_order_check_reads_calls_relative_to_the_directory():
    """openat(D, name) and renameat(D, old, D, new) are read as the directory's files: the right order passes,
    a missing directory fsync does not."""
    good = [("openat", 'AT_FDCWD, "%s", O_RDONLY|O_DIRECTORY|O_CLOEXEC' % DIRECTORY, "3"),
            ("openat", '3, ".60-tcpstack-tuning.conf.ab.tmp", O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC, 0600',
             "4"), ("fchmod", "4, 0644", "0"), ("write", '4, "x", 1', "1"), ("fsync", "4", "0"), ("close", "4", "0"),
            ("renameat", '3, ".60-tcpstack-tuning.conf.ab.tmp", 3, "60-tcpstack-tuning.conf"', "0"),
            ("fsync", "3", "0"), ("close", "3", "0")]
    assert file_events(good) == WRITE_ORDER
    assert file_events(good[:-2] + [("close", "3", "0")]) != WRITE_ORDER
