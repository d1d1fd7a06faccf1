"""Apply one sysctl.d layout with the real boot tools, inside throw-away namespaces; print JSON.

Run ONLY as ``unshare -m -n --propagation private python3 -I boot_runner.py`` with a
JSON request on stdin (see ``test_boot_differential.py``).  Stdlib only.

Inside the new mount namespace this mounts a tmpfs on /run and bind-mounts
empty directories from it over /etc/sysctl.d, /usr/lib/sysctl.d,
/usr/local/lib/sysctl.d (or /usr/local/lib when it has no sysctl.d) and a
non-merged /lib/sysctl.d, and an empty file over /etc/sysctl.conf.  Every path
it writes is checked to lie on that tmpfs first, so nothing reaches the real
file systems.  Then, once per init, a forked child moves into a further new
network namespace, reads the keys (the kernel defaults of a fresh namespace),
runs the tool restricted to exactly the requested keys, and reads them again.
The network namespaces die with their processes: nothing needs undoing.

Request: {"layout": {path: text}, "links": {path: target}, "keys": [...] (the tools are
restricted to exactly these), "watch": [...] (only read, before and after: they must not
change), "host_net": "net:[...]", "host_mnt": "mnt:[...]", "timeout": seconds}.
Reply: {"dirs": [...], "systemd": {"rc", "stdout", "stderr", "defaults", "values"},
"procps": {...}} or {"error": text} with exit status 2 (refused) / 3 (setup failed).
"""

import ctypes
import json
import os
import posixpath
import re
import shutil
import subprocess
import sys

CLONE_NEWNET = 0x40000000
MS_BIND = 4096
SCRATCH = "/run/.tcpstack-boot-diff"
SYSTEMD_SYSCTL = "/lib/systemd/systemd-sysctl"
SYSCTL_DIRS = ("/etc/sysctl.d", "/run/sysctl.d", "/usr/local/lib/sysctl.d", "/usr/lib/sysctl.d", "/lib/sysctl.d")
SYSCTL_CONF = "/etc/sysctl.conf"
# A key is only ever one of these: per-network-namespace net.* sysctls with plain names.
KEY_RE = re.compile(r"\Anet\.(ipv4|ipv6|core|unix)\.[a-z0-9_]+\Z")

_libc = ctypes.CDLL(None, use_errno=True)


class Refused(Exception):
    pass


def _ns(kind, pid="self"):
    """The namespace ``kind`` of ``pid`` ("net:[4026531840]"); None when it may not be read."""
    try:
        return os.readlink("/proc/%s/ns/%s" % (pid, kind))
    except PermissionError:  # e.g. pid 1 in a container we do not fully own
        if pid == "self":
            raise
        return None


def _mount(source, target, fstype, flags):
    if _libc.mount(source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None) != 0:
        err = ctypes.get_errno()
        raise OSError(err, "mount %s on %s: %s" % (source, target, os.strerror(err)))


def _bind(source, target):
    _mount(source, target, None, MS_BIND)


def _proc_path(key):
    return "/proc/sys/" + key.replace(".", "/")


def _read(keys):
    values = {}
    for key in keys:
        try:
            with open(_proc_path(key)) as handle:
                values[key] = handle.read().rstrip("\n")
        except OSError:
            values[key] = None
    return values


def _regex(keys):
    """procps --pattern: an ERE matched against the whole (left-stripped) line."""
    names = "|".join(re.escape(k).replace(r"\.", "[./]") for k in keys)
    # "=" or end of line: "-key" alone is procps' glob-exclude form, keep it too.
    return "^-?[[:space:]]*(%s)[[:space:]]*(=|$)" % names


def _command(init, keys):
    if init == "systemd":
        return [SYSTEMD_SYSCTL] + ["--prefix=%s" % k for k in keys]
    sysctl = shutil.which("sysctl", path="/usr/sbin:/sbin:/usr/bin:/bin")
    # --pattern must come BEFORE --system: procps 4.0.2 acts on --system the moment getopt
    # sees it, so a later --pattern is never read and every line of every file is applied.
    return [sysctl, "--pattern", _regex(keys), "--system"]


def _child(init, keys, watch, timeout, parent_net, host_net, write_end):
    """In a forked child: a new network namespace, then the tool; JSON down the pipe."""
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
        net = _ns("net")
        if net in (parent_net, host_net):
            raise Refused("still in an old network namespace")
        defaults = _read(keys)
        watched = _read(watch)
        proc = subprocess.run(_command(init, keys), stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, timeout=timeout, check=False)
        out = {"rc": proc.returncode, "stdout": proc.stdout, "stderr": proc.stderr,
               "defaults": defaults, "values": _read(keys), "net": net,
               "watch_before": watched, "watch_after": _read(watch)}
    except BaseException as exc:  # report everything, the parent decides
        out = {"error": "%s: %s" % (type(exc).__name__, exc)}
    os.write(write_end, json.dumps(out).encode())
    os._exit(0)


def _run_init(init, keys, watch, timeout, host_net):
    read_end, write_end = os.pipe()
    parent_net = _ns("net")
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _child(init, keys, watch, timeout, parent_net, host_net, write_end)
    os.close(write_end)
    chunks = []
    while True:
        chunk = os.read(read_end, 65536)
        if not chunk:
            break
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(pid, 0)
    return json.loads(b"".join(chunks).decode() or '{"error": "child said nothing"}')


def _on_scratch(path, dev):
    if os.stat(path).st_dev != dev:
        raise Refused("%s is not on the scratch tmpfs" % path)


def setup(request):
    """Mount the scratch tmpfs and the empty directories; return the usable sysctl.d directories."""
    _mount("tmpfs", "/run", "tmpfs", 0)
    dev = os.stat("/run").st_dev
    os.mkdir(SCRATCH, 0o755)
    usable = ["/run/sysctl.d"]
    os.mkdir("/run/sysctl.d", 0o755)

    def empty(name):
        path = posixpath.join(SCRATCH, name)
        os.mkdir(path, 0o755)
        return path

    for target in ("/etc/sysctl.d", "/usr/lib/sysctl.d"):
        if os.path.isdir(target) and not os.path.islink(target):
            _bind(empty(target.strip("/").replace("/", "_")), target)
            usable.append(target)
    if os.path.isdir("/usr/local/lib/sysctl.d") and not os.path.islink("/usr/local/lib/sysctl.d"):
        _bind(empty("usr_local_lib_sysctl.d"), "/usr/local/lib/sysctl.d")
        usable.append("/usr/local/lib/sysctl.d")
    elif not os.path.lexists("/usr/local/lib/sysctl.d") and os.path.isdir("/usr/local/lib") \
            and not os.path.islink("/usr/local/lib"):
        _bind(empty("usr_local_lib"), "/usr/local/lib")
        os.mkdir("/usr/local/lib/sysctl.d", 0o755)
        usable.append("/usr/local/lib/sysctl.d")
    if os.path.realpath("/lib/sysctl.d") == os.path.realpath("/usr/lib/sysctl.d"):
        pass  # merged /usr: /lib/sysctl.d is /usr/lib/sysctl.d
    elif os.path.isdir("/lib/sysctl.d") and not os.path.islink("/lib/sysctl.d"):
        _bind(empty("lib_sysctl.d"), "/lib/sysctl.d")
        usable.append("/lib/sysctl.d")
    if os.path.isfile(SYSCTL_CONF) and not os.path.islink(SYSCTL_CONF):
        conf = posixpath.join(SCRATCH, "sysctl.conf")
        with open(conf, "w"):
            pass
        _bind(conf, SYSCTL_CONF)
        usable.append(SYSCTL_CONF)
    for path in usable:
        _on_scratch(path, dev)
        if path != SYSCTL_CONF and os.listdir(path):
            raise Refused("%s is not empty after mounting" % path)
    return usable, dev


def write_layout(request, usable, dev):
    def check(path):
        parent = posixpath.dirname(path)
        if path == SYSCTL_CONF:
            if SYSCTL_CONF not in usable:
                raise Refused("this machine has no regular %s to cover" % SYSCTL_CONF)
        elif parent not in usable or posixpath.normpath(path) != path or parent == path:
            raise Refused("%s is not in a covered sysctl.d directory" % path)
        _on_scratch(parent if path != SYSCTL_CONF else path, dev)

    for path, text in sorted(request.get("layout", {}).items()):
        check(path)
        with open(path, "w", encoding="utf-8") as handle:
            handle.write(text)
    for path, target in sorted(request.get("links", {}).items()):
        check(path)
        if os.path.lexists(path):
            os.unlink(path)
        os.symlink(target, path)


def main():
    request = json.load(sys.stdin)
    keys = list(request["keys"])
    watch = list(request.get("watch", ()))
    try:
        for key in keys + watch:
            if not KEY_RE.match(key):
                raise Refused("not a plain net.* key: %r" % key)
        host_net, host_mnt = request["host_net"], request["host_mnt"]
        if _ns("net") in (host_net, _ns("net", 1)) or _ns("mnt") in (host_mnt, _ns("mnt", 1)) \
                or not host_net or not host_mnt:
            raise Refused("not inside new mount and network namespaces")
    except Refused as exc:
        print(json.dumps({"error": "refused: %s" % exc}))
        return 2
    try:
        usable, dev = setup(request)
        write_layout(request, usable, dev)
    except (Refused, OSError) as exc:
        print(json.dumps({"error": "setup: %s" % exc}))
        return 3
    timeout = float(request.get("timeout", 20))
    result = {"dirs": usable}
    for init in ("systemd", "procps"):
        result[init] = _run_init(init, keys, watch, timeout, host_net)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
