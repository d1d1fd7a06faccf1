"""A throwaway Linux host for real tests: a network namespace with its own sysctl.d.

``Sandbox`` creates a network namespace and /etc/netns/NAME/sysctl.d.  Every
command it runs goes through ``ip netns exec NAME``, which gives the command
the namespace's /proc/sys/net and bind-mounts /etc/netns/NAME/sysctl.d over
/etc/sysctl.d (and /etc/netns/NAME/sysctl.conf over /etc/sysctl.conf when
that file exists).  A playbook run that way changes only the sandbox: the
machine's own /proc/sys and /etc/sysctl.d are never written.

Used by the tests, bench/ and demo/.  Needs root and iproute2.  Imports the
collection (TCP_KEYS comes from its settings table).

    with Sandbox.new() as box:
        box.sysctl("net.ipv4.tcp_fin_timeout")                # "60"
        rc, results = box.run_playbook(PLAY, diff=True)
        box.file_hashes()                                     # {"sysctl.d/60-...conf": "ab12..."}
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import LINUX_TCP_KEYS

from tests.support.collection import collections_path
from tests.support.playbook import ansible_playbook, install_results_callback, read_results

FQCN = re.compile(r"[a-z0-9_]+\.[a-z0-9_]+\.[a-z0-9_]+")
PREFIX = "tcpst"

# The keys linux_tcp manages (its settings table, in apply order), plus the host context it reads.
TCP_KEYS = LINUX_TCP_KEYS

_counter = itertools.count(1)
_counter_lock = threading.Lock()

# Reads (or writes) sysctls inside the namespace; argv: JSON of {key: value or None}.
_SYSCTL_SCRIPT = r"""
import json, sys
out = {}
for key, value in json.loads(sys.argv[1]).items():
    path = "/proc/sys/" + key.replace(".", "/")
    if value is not None:
        with open(path, "w") as handle:
            handle.write(value + "\n")
    try:
        with open(path) as handle:
            out[key] = handle.read().rstrip("\n")
    except FileNotFoundError:
        out[key] = None
print(json.dumps(out))
"""

# Listens on a TCP port, says so, and exits after a bounded time.
_LISTENER_SCRIPT = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.listen(8)
print("listening", flush=True)
time.sleep(float(sys.argv[2]))
"""


class SandboxError(RuntimeError):
    """A sandbox command failed; the message holds the command and its output."""


def python_interpreter():
    """The Python the module runs with on the sandbox host."""
    return "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def missing_requirements():
    """Why sandboxes cannot be made here (a list of sentences), or [] when they can."""
    problems = []
    if not sys.platform.startswith("linux"):
        problems.append("a Linux kernel with network namespaces")
    if os.geteuid() != 0:
        problems.append("root (creating network namespaces and writing their /proc/sys needs it)")
    if shutil.which("ip") is None:
        problems.append("the ip command (Debian package iproute2)")
    if not os.path.exists("/proc/self/ns/net"):
        problems.append("network namespace support in the kernel")
    return problems


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@dataclass
class PlaybookRun:
    """One ansible-playbook run: the command, its exit code and output, and the task results."""

    cmd: list
    rc: int
    stdout: str = ""
    stderr: str = ""
    results: list = field(default_factory=list)
    seconds: float = 0.0

    def describe(self):
        return "$ %s\nrc=%d after %.1fs\n--- stdout ---\n%s\n--- stderr ---\n%s" % (
            " ".join(shlex.quote(str(c)) for c in self.cmd), self.rc, self.seconds, self.stdout, self.stderr)


class Sandbox:
    """A network namespace NAME with /etc/netns/NAME/sysctl.d: a host of its own for sysctl work."""

    def __init__(self, name):
        if not name or "/" in name or name.startswith("."):
            raise ValueError("bad namespace name %r" % name)
        self.name = name
        self.etc_dir = Path("/etc/netns") / name
        self.sysctl_d = self.etc_dir / "sysctl.d"
        # for anything else a test wants to keep (e.g. a directory to bind-mount with private_mounts());
        # not under etc_dir, since ``ip netns exec`` bind-mounts every entry there over /etc/ENTRY
        self.scratch = Path(tempfile.gettempdir()) / ("%s.scratch" % name)
        self.created = False
        self._owned = False  # set once this object made the namespace: only then does destroy() delete anything
        self.last_run = None
        self._children = []

    @classmethod
    def new(cls, prefix=PREFIX):
        """A sandbox with a name unique to this process: PREFIX-PID-N."""
        with _counter_lock:
            number = next(_counter)
        return cls("%s-%d-%d" % (prefix, os.getpid(), number))

    # lifecycle ----------------------------------------------------------
    def create(self, sysctl_conf=None, loopback=True):
        """Create the namespace and its sysctl.d (empty).  ``sysctl_conf``: text for its /etc/sysctl.conf."""
        if self.created:
            return self
        if os.path.exists("/run/netns/" + self.name) or self.etc_dir.exists() or self.scratch.exists():
            raise SandboxError("namespace %s already exists; refusing to reuse it" % self.name)
        self._run(["ip", "netns", "add", self.name])
        self.created = self._owned = True
        try:
            self.sysctl_d.mkdir(parents=True)
            self.scratch.mkdir(mode=0o700)
            if sysctl_conf is not None:
                self.write_sysctl_conf(sysctl_conf)
            if loopback:
                self.exec(["ip", "link", "set", "lo", "up"])
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self):
        """Stop what this sandbox started, delete the namespace and /etc/netns/NAME.  Safe to call twice.

        Does nothing to a namespace of that name that this object did not create.
        """
        for child in self._children:
            stop_process(child)
        self._children = []
        if not self._owned:
            return
        if os.path.exists("/run/netns/" + self.name):
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True, check=False)
        for directory in (self.etc_dir, self.scratch):
            if directory.exists():
                shutil.rmtree(directory, ignore_errors=True)
        self.created = self._owned = False

    def __enter__(self):
        return self.create()

    def __exit__(self, *exc):
        self.destroy()
        return False

    # running things inside ---------------------------------------------
    def argv(self, cmd):
        """``cmd`` prefixed so that it runs inside the namespace."""
        self._need()
        return ["ip", "netns", "exec", self.name] + [str(c) for c in cmd]

    def exec(self, cmd, check=True, timeout=60, **kwargs):
        """Run ``cmd`` inside the namespace; returns the CompletedProcess (text)."""
        return self._run(self.argv(cmd), check=check, timeout=timeout, **kwargs)

    @staticmethod
    def _run(cmd, check=True, timeout=60, **kwargs):
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False, **kwargs)
        if check and done.returncode != 0:
            raise SandboxError("%s failed (rc=%d): %s%s" % (
                " ".join(shlex.quote(c) for c in cmd), done.returncode, done.stdout, done.stderr))
        return done

    def _need(self):
        if not self.created:
            raise SandboxError("sandbox %s is not created" % self.name)

    # /proc/sys ----------------------------------------------------------
    def sysctls(self, keys=TCP_KEYS):
        """{key: runtime value as the kernel prints it (None if the kernel lacks it)} inside the namespace."""
        return self._sysctl_io({key: None for key in keys})

    def sysctl(self, key):
        """The runtime value of ``key`` inside the namespace, as the kernel prints it (None if missing)."""
        return self.sysctls([key])[key]

    def set_sysctl(self, key, value):
        """Write ``value`` to ``key`` inside the namespace (never the machine's own); returns what it reads back."""
        return self._sysctl_io({key: str(value)})[key]

    def _sysctl_io(self, request):
        done = self.exec([sys.executable, "-c", _SYSCTL_SCRIPT, json.dumps(request)])
        return json.loads(done.stdout)

    def has_sysctl(self, key):
        return self.sysctl(key) is not None

    # files --------------------------------------------------------------
    def python_wrapper(self, directory):
        """An interpreter that runs Python inside this namespace, for inventories run from outside it.

        ``ansible_python_interpreter: <this path>`` with ``ansible_connection: local`` lets one
        ansible-playbook on the machine reach this sandbox and, say, simulated Windows hosts on the
        machine's loopback in the same inventory.
        """
        wrapper = Path(directory) / ("python-in-" + self.name)
        wrapper.write_text("#!/bin/sh\nexec ip netns exec %s %s \"$@\"\n" % (shlex.quote(self.name), python_interpreter()))
        wrapper.chmod(0o755)
        return wrapper

    def path(self, name):
        """Where the file the namespace sees as /etc/sysctl.d/``name`` really is."""
        return self.sysctl_d / name

    def write_file(self, name, text):
        """Create /etc/sysctl.d/``name`` as seen inside the namespace."""
        target = self.path(name)
        target.write_text(text)
        target.chmod(0o644)
        return target

    def read_file(self, name):
        target = self.path(name)
        return target.read_text() if target.exists() else None

    def write_sysctl_conf(self, text):
        """Give the namespace its own /etc/sysctl.conf (bind-mounted by ``ip netns exec``)."""
        target = self.etc_dir / "sysctl.conf"
        target.write_text(text)
        target.chmod(0o644)
        return target

    def file_hashes(self):
        """{path: sha256} of every file of the sandbox: relative to /etc/netns/NAME (sysctl.d/*,
        sysctl.conf), and under "scratch/" those of ``scratch``."""
        out = {}
        for base, prefix in ((self.etc_dir, ""), (self.scratch, "scratch/")):
            for path in sorted(base.rglob("*")) if base.exists() else ():
                if path.is_file() or path.is_symlink():
                    name = prefix + str(path.relative_to(base))
                    out[name] = sha256(path) if path.is_file() and not path.is_symlink() else "link:" + os.readlink(path)
        return out

    def snapshot(self):
        """Everything a run could change: runtime values of the TCP keys and the hash of every file."""
        return {"sysctl": self.sysctls(), "files": self.file_hashes()}

    # helpers for tests -------------------------------------------------
    def start(self, cmd, ready=None):
        """Run ``cmd`` (e.g. tests.support.traffic.program(...)) inside the namespace in the background; destroy()
        stops it.

        Its stdout is a pipe (text).  With ``ready``, wait for the first line it prints and raise SandboxError
        unless its first word is ``ready`` (e.g. "listening", or "ready" of "ready 50 0.01"); without, the caller
        reads it.
        """
        child = subprocess.Popen(self.argv(cmd), stdout=subprocess.PIPE, text=True, start_new_session=True)
        self._children.append(child)
        if ready is not None:
            line = child.stdout.readline().strip()
            if line.split()[:1] != [ready]:
                stop_process(child)
                raise SandboxError("a process in %s did not start: it printed %r, not %r" % (self.name, line, ready))
        return child

    @contextmanager
    def listener(self, port, seconds=120):
        """A TCP listener on ``port`` inside the namespace, for at most ``seconds``."""
        child = subprocess.Popen(
            self.argv([sys.executable, "-c", _LISTENER_SCRIPT, str(port), str(seconds)]),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        self._children.append(child)
        try:
            line = child.stdout.readline()
            if line.strip() != "listening":
                raise SandboxError("listener on port %d did not start: %s %s" % (port, line, child.stderr.read()))
            yield child
        finally:
            stop_process(child)
            if child in self._children:
                self._children.remove(child)

    @staticmethod
    def private_mounts(sysctl_values=None, binds=None, readonly=()):
        """A command prefix that runs the command in a private mount namespace of its own, changed first.

        - ``sysctl_values`` {key: value}: a read-only file holding ``value`` is
          bind-mounted over /proc/sys/KEY, so that reading it gives ``value``
          and writing it fails with EROFS (the kernel value is not touched);
        - ``binds`` {target: source}: ``source`` is bind-mounted over ``target``;
        - ``readonly``: these paths become read-only (writes fail with EROFS).

        Put it after ``ip netns exec NAME`` (``run_playbook(wrapper=...)``):
        /proc/sys/net entries are looked up per network namespace, so the
        mounts must be made from inside it.  Nothing outlives the command.
        """
        steps = ["set -e"]
        for key, value in (sysctl_values or {}).items():
            proc = shlex.quote("/proc/sys/" + key.replace(".", "/"))
            steps.append('f=$(mktemp); printf "%%s\\n" %s > "$f"; mount --bind "$f" %s; rm -f "$f"; '
                         "mount -o remount,bind,ro %s" % (shlex.quote(str(value)), proc, proc))
        for target, source in (binds or {}).items():
            steps.append("mount --bind %s %s" % (shlex.quote(str(source)), shlex.quote(str(target))))
        for target in readonly:
            target = shlex.quote(str(target))
            steps.append("mount --bind %s %s; mount -o remount,bind,ro %s" % (target, target, target))
        steps.append('exec "$@"')
        return ["unshare", "--mount", "--propagation", "private", "sh", "-c", "\n".join(steps), "sh"]

    @classmethod
    def readonly_sysctl_wrapper(cls, key, value):
        """A command prefix under which writing ``key`` fails (EROFS) while reading it gives ``value``."""
        return cls.private_mounts(sysctl_values={key: value})

    # ansible ------------------------------------------------------------
    def run_playbooks_at_once(self, playbooks, timeout=300):
        """Start one ansible-playbook per item of ``playbooks`` at the same moment; [(rc, results)] in order."""
        outcomes = [None] * len(playbooks)

        def one(index):
            outcomes[index] = self.run_playbook(playbooks[index], timeout=timeout)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(playbooks))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return outcomes

    def playbook_argv(self, playbook, extra_vars=None, check=False, diff=False, inventory=None, args=()):
        """The ansible-playbook command (without the ``ip netns exec`` prefix)."""
        cmd = [ansible_playbook()]
        if inventory is None:
            cmd += ["-c", "local", "-i", "localhost,", "-e", "ansible_python_interpreter=%s" % python_interpreter()]
        else:
            cmd += ["-i", str(inventory)]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        if check:
            cmd.append("--check")
        if diff:
            cmd.append("--diff")
        cmd += list(args)
        cmd.append(str(playbook))
        return cmd

    def run_playbook(self, playbook, extra_vars=None, check=False, diff=False, inventory=None, wrapper=(),
                     stream=False, timeout=300, env=None, args=(), kill_after=None):
        """Run ansible-playbook inside the namespace; returns (rc, results).

        ``playbook`` is a path (a Path, or a str without a newline naming a
        file) or the playbook's YAML text.  ``results`` is a list, one item per
        task result in the order they came, each the result as ``register``
        would give it (``failed``, ``changed``, ``msg``, ``warnings`` as
        strings, ``diff``...) plus ``_task`` (its name), ``_action`` and
        ``_status`` (ok, failed, skipped, unreachable).

        ``wrapper``: argv put between ``ip netns exec NAME`` and
        ansible-playbook (e.g. readonly_sysctl_wrapper()).  ``stream``: let
        ansible's own output go to this process's stdout/stderr instead of
        capturing it.  ``kill_after``: SIGKILL the whole run (ansible-playbook, its workers and the module, one
        process group) after that many seconds, as a power cut or an OOM kill would; rc is then -9.  The full
        run is kept in ``self.last_run``.
        """
        self._need()
        with tempfile.TemporaryDirectory(prefix="tcpstack-run-") as tmp:
            work = Path(tmp)
            if isinstance(playbook, Path) or ("\n" not in playbook and os.path.isfile(playbook)):
                playbook_path = Path(playbook).resolve()
            elif FQCN.fullmatch(playbook):  # a collection playbook, e.g. tcpstack.tuning.tune
                playbook_path = playbook
            else:
                playbook_path = work / "playbook.yml"
                playbook_path.write_text(playbook)
            plugins, results_file = install_results_callback(work)
            run_env = dict(os.environ)
            run_env.update(
                ANSIBLE_COLLECTIONS_PATH=str(collections_path()),
                ANSIBLE_LOCALHOST_WARNING="false",
                ANSIBLE_INVENTORY_UNPARSED_WARNING="false",
                ANSIBLE_RETRY_FILES_ENABLED="false",
                ANSIBLE_CALLBACK_PLUGINS=":".join(filter(None, [str(plugins), os.environ.get("ANSIBLE_CALLBACK_PLUGINS")])),
                ANSIBLE_CALLBACKS_ENABLED=",".join(filter(None, ["tcpstack_results",
                                                                 os.environ.get("ANSIBLE_CALLBACKS_ENABLED")])),
                TCPSTACK_RESULTS=str(results_file),
            )
            if not stream:
                run_env.update(ANSIBLE_NOCOLOR="1", ANSIBLE_FORCE_COLOR="0")
            run_env.update(env or {})
            cmd = self.argv(list(wrapper) + self.playbook_argv(playbook_path, extra_vars, check, diff, inventory, args))
            started = time.monotonic()
            child = subprocess.Popen(
                cmd, cwd=tmp, env=run_env, text=True, start_new_session=True,
                stdout=None if stream else subprocess.PIPE, stderr=None if stream else subprocess.PIPE)
            try:
                if kill_after is not None:
                    try:
                        stdout, stderr = child.communicate(timeout=kill_after)
                    except subprocess.TimeoutExpired:
                        os.killpg(child.pid, signal.SIGKILL)
                        stdout, stderr = child.communicate(timeout=timeout)
                else:
                    stdout, stderr = child.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                stop_process(child)
                stdout, stderr = child.communicate()
                stderr = (stderr or "") + "\n[netns] killed after %ds" % timeout
            except BaseException:  # Ctrl-C: do not leave ansible running in a namespace we delete
                stop_process(child)
                raise
            results = read_results(results_file)
            run = PlaybookRun(cmd, child.returncode, stdout or "", stderr or "", results, time.monotonic() - started)
        self.last_run = run
        return run.rc, run.results


def stop_process(child, grace=3.0):
    """End a process this module started, and its process group (it was started in a session of its own)."""
    if child.poll() is not None:
        return
    try:
        os.killpg(child.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        child.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(child.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        child.wait()
