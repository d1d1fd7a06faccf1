"""linux_processes: the pure parsers of /proc/PID text (real formats); ProcessTable reading through LinuxHost, on this
very process (the real /proc) and on a directory tree standing in for /proc (LinuxHost(root)), where a FIFO, a
symbolic link or an oversized file can be put in a process's place."""

from __future__ import annotations

import ast
import errno
import importlib
import os
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from ansible_collections.tcpstack.tuning.plugins.module_utils import linux_processes as lp
from ansible_collections.tcpstack.tuning.plugins.module_utils import prometheus
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_usage_rules import LINUX
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_usage import Snapshot, analyse
from ansible_collections.tcpstack.tuning.plugins.module_utils.socket_table import format_address
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import DestinationCounts, process_record
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import (
    PROCESS_FILE_MAX,
    LinuxHost,
    UnsafeFile,
    socket_inode,
)

DOCKER = "0::/system.slice/docker-%s.scope" % ("ab12" * 16)


@pytest.mark.parametrize("link, inode", [
    ("socket:[12345]", 12345), ("socket:[]", None), ("socket:[12a]", None), ("pipe:[12345]", None),
    ("/dev/null", None), ("socket:[%s]" % ("9" * 21), None),
])
def test_socket_inode(link, inode):
    assert socket_inode(link) == inode


@pytest.mark.parametrize("text, expected", [
    ("0::/system.slice/nginx.service\n", ("/system.slice/nginx.service", "nginx.service", None)),
    ("0::/user.slice/user-1000.slice/session-3.scope\n", ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope", None)),
    (DOCKER + "\n", (DOCKER[3:], "docker-%s.scope" % ("ab12" * 16), "ab12ab12ab12")),
    ("12:pids:/docker/%s\n1:name=systemd:/docker/%s\n" % ("cd34" * 16, "cd34" * 16),
     ("/docker/%s" % ("cd34" * 16), None, "cd34cd34cd34")),
    ("0::/\n", ("/", None, None)),
    ("", (None, None, None)),
    ("garbage without colons", (None, None, None)),
])
def test_parse_cgroup(text, expected):
    assert lp.parse_cgroup(text) == expected


def test_parse_cmdline_and_status():
    assert lp.parse_cmdline(b"python3\x00-c\x00print(1)\x00") == "python3 -c print(1)"
    assert lp.parse_cmdline(b"") is None
    assert lp.parse_cmdline(b"a\x1b[2Jb\x00") == "a\\x1b[2Jb"  # issue 21: cleaned as the report cleans host text
    assert len(lp.parse_cmdline(b"x" * 100000)) == lp.CMDLINE_MAX
    assert lp.parse_status_uid("Name:\tx\nUid:\t1000\t1000\t1000\t1000\n") == 1000
    assert lp.parse_status_uid("Uid:\tx\n") is None and lp.parse_status_uid("") is None


@settings(derandomize=True, max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(hs.text(max_size=300), hs.binary(max_size=300))
def test_parsers_never_raise(text, data):
    lp.parse_cgroup(text)
    lp.parse_status_uid(text)
    lp.parse_cmdline(data)
    socket_inode(text)


def test_process_table_finds_this_process_socket():
    """A socket this test opens is found in its own /proc/PID/fd, and the process described."""
    sock = socket.socket()
    try:
        table = lp.ProcessTable(LinuxHost())
        assert os.getpid() in table.pids()
        table.scan([os.getpid()])
        assert table.owner(os.fstat(sock.fileno()).st_ino) == os.getpid()
        info = table.describe(os.getpid())
        assert info["pid"] == os.getpid() and info["uid"] == os.getuid() and info["name"]
        assert info["cmdline"] and info["user"]
    finally:
        sock.close()


def test_host_socket_inodes_follow_this_process_sockets():
    """LinuxHost.socket_inodes(pid) on the real /proc: a socket is there while open, gone once closed."""
    host = LinuxHost()
    sock = socket.socket()
    inode = os.fstat(sock.fileno()).st_ino
    try:
        assert inode in host.socket_inodes(os.getpid())
    finally:
        sock.close()
    assert inode not in host.socket_inodes(os.getpid())
    assert os.getpid() in host.pids()
    assert host.net_namespace() == host.net_namespace(os.getpid())
    assert host.read_process_file(os.getpid(), "status").startswith(b"Name:")


# ---------------------------------------------------------------- a directory tree standing in for /proc
def stat_line(pid, comm="client", start=4200):
    """/proc/PID/stat as the kernel prints it, with ``start`` (clock ticks after boot) in field 22."""
    return ("%d (%s) S 1 %d %d 0 -1 4194304 100 0 0 0 1 2 0 0 20 0 1 0 %d 12345678 300 18446744073709551615 "
            "1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0\n" % (pid, comm, pid, pid, start)).encode()


def fake_proc(root, pid, netns="net:[4026531840]", fds=None, files=None, start=4200):
    """/proc/PID in ``root``: ns/net and fd/N as symbolic links (a dangling link reads like the real one), stat
    (started ``start`` ticks after boot), files."""
    base = root / "proc" / str(pid)
    (base / "fd").mkdir(parents=True)
    (base / "stat").write_bytes(stat_line(pid, start=start))
    if netns is not None:
        (base / "ns").mkdir()
        os.symlink(netns, str(base / "ns/net"))
    for number, link in (fds or {}).items():
        os.symlink(link, str(base / "fd" / str(number)))
    for name, data in (files or {}).items():
        (base / name).write_bytes(data)
    return base


@pytest.fixture
def tree(tmp_path):
    (tmp_path / "proc/self/ns").mkdir(parents=True)
    os.symlink("net:[4026531840]", str(tmp_path / "proc/self/ns/net"))
    (tmp_path / "proc/sys").mkdir()
    (tmp_path / "proc/12345678901").mkdir()  # not a pid: more than 10 digits
    fake_proc(tmp_path, 100, fds={0: "/dev/null", 3: "socket:[111]", 4: "socket:[222]", 5: "pipe:[9]",
                                  6: "socket:[oops]"},
              files={"comm": b"client\n", "cmdline": b"python3\x00-c\x00pass\x00",
                     "status": b"Name:\tclient\nUid:\t0\t0\t0\t0\n",
                     "cgroup": b"0::/system.slice/client.service\n"})
    fake_proc(tmp_path, 200, netns="net:[4026532999]", fds={3: "socket:[333]"})  # another network namespace
    fake_proc(tmp_path, 300, netns=None)  # a kernel thread: no ns/net
    return tmp_path


def test_process_table_reads_every_process_through_the_host(tree):
    """Issue 21: every process is read, whatever network namespace it is in now (pid 200's is another one): a
    socket keeps the namespace it was created in, so only the dump's inodes decide."""
    table = lp.ProcessTable(LinuxHost(str(tree)))
    assert sorted(table.pids()) == [100, 200, 300]
    assert table.scan() == 3
    assert (table.owner(111), table.owner(222), table.owner(333), table.owner(9)) == (100, 100, 200, None)
    assert table.sockets == {100: frozenset({111, 222}), 200: frozenset({333}), 300: frozenset()}
    assert not table.unreadable and not table.changed
    info = table.describe(100)
    assert info == {"pid": 100, "name": "client", "cmdline": "python3 -c pass", "uid": 0,
                    "user": LinuxHost.user_name(0), "cgroup": "/system.slice/client.service",
                    "unit": "client.service", "container": None, "start_time": 42.0}


def test_a_process_that_changes_its_sockets_is_marked_changed_and_a_gone_one_forgotten(tree):
    table = lp.ProcessTable(LinuxHost(str(tree)))
    table.scan()
    fd = tree / "proc/100/fd"
    os.unlink(str(fd / "4"))
    os.symlink("socket:[444]", str(fd / "4"))
    table.scan([100])
    assert table.changed == {100} and table.owner(444) == 100 and table.sockets[100] == frozenset({111, 444})
    os.rename(str(tree / "proc/100"), str(tree / "gone"))
    table.scan()
    assert 100 not in table.sockets and table.changed == set()


def test_a_process_gone_by_the_end_is_described_as_it_was_when_its_sockets_were_seen(tree):
    """A short-lived client (a curl per request) exits before the audit ends: it keeps its name, command line,
    user and unit from the scan that first saw its sockets; a pid never seen with sockets is not invented."""
    table = lp.ProcessTable(LinuxHost(str(tree)))
    table.scan()
    seen = table.describe(100)
    os.rename(str(tree / "proc/100"), str(tree / "gone"))
    table.scan()
    assert table.describe(100) == seen and seen["name"] == "client" and seen["unit"] == "client.service"
    assert table.describe(300)["name"] is None  # no sockets, no comm: never described from a first sighting


def test_a_process_gone_between_listing_and_reading_is_skipped(tree):
    table = lp.ProcessTable(LinuxHost(str(tree)))
    assert table.scan([100, 999]) == 1 and not table.unreadable
    assert table.describe(999) == {"pid": 999, "name": None, "cmdline": None, "uid": None, "user": None,
                                   "cgroup": None, "unit": None, "container": None, "start_time": None}


@pytest.mark.parametrize("what", ["fifo", "symlink", "directory"])
def test_a_process_file_that_is_not_a_regular_file_is_not_opened(tree, what):
    """/proc/PID/comm swapped for a FIFO (would block), a symbolic link or a directory: UnsafeFile, and describe()
    leaves the name out instead of hanging or following it."""
    host = LinuxHost(str(tree))
    comm = tree / "proc/100/comm"
    comm.unlink()
    if what == "fifo":
        os.mkfifo(str(comm))
    elif what == "symlink":
        os.symlink(str(tree / "proc/100/status"), str(comm))
    else:
        comm.mkdir()
    with pytest.raises(UnsafeFile) as err:
        host.read_process_file(100, "comm")
    assert err.value.filename == "/proc/100/comm" and err.value.errno == errno.EINVAL
    info = lp.ProcessTable(host).describe(100)
    assert info["name"] is None and info["cmdline"] == "python3 -c pass"


def test_a_long_command_line_is_read_up_to_the_cap_only(tree):
    """A command line longer than PROCESS_FILE_MAX is cut there, not refused: the process is still named."""
    long_line = b"java\x00" + b"-Dx=" + b"y" * (3 * PROCESS_FILE_MAX) + b"\x00"
    (tree / "proc/100/cmdline").write_bytes(long_line)
    host = LinuxHost(str(tree))
    data = host.read_process_file(100, "cmdline")
    assert data == long_line[:PROCESS_FILE_MAX]
    assert lp.ProcessTable(host).describe(100)["cmdline"] == ("java -Dx=" + "y" * lp.CMDLINE_MAX)[:lp.CMDLINE_MAX]


@pytest.mark.parametrize("name", ["", ".", "..", "../100/comm", "fd/3"])
def test_only_a_file_of_the_process_directory_is_read(tree, name):
    with pytest.raises(ValueError):
        LinuxHost(str(tree)).read_process_file(100, name)


def test_an_fd_that_is_not_a_link_is_skipped(tree):
    (tree / "proc/100/fd/7").write_text("")
    assert LinuxHost(str(tree)).socket_inodes(100) == frozenset({111, 222})


def test_fd_tables_that_cannot_be_read(tree):
    """ENOENT (gone) and ENOTDIR are skipped quietly; only EACCES/EPERM count as unreadable (the integration test
    test_unprivileged_run_attributes_its_own_processes sees real ones: root reads every fd table)."""
    os.rmdir(str(tree / "proc/300/fd"))
    (tree / "proc/300/fd").write_text("")
    host = LinuxHost(str(tree))
    with pytest.raises(OSError) as err:
        host.socket_inodes(300)
    assert err.value.errno == errno.ENOTDIR
    table = lp.ProcessTable(host)
    assert table.scan() == 2 and not table.unreadable


# ---------------------------------------------------------------- issue 21: who a process is, proven
@pytest.mark.parametrize("comm, start, expected", [
    ("curl", 4200, 42.0), ("a b) S 1 2 3 (x", 123456, 1234.56), (")", 1, 0.01), ("", 0, 0.0),
])
def test_parse_stat_start_counts_fields_from_the_last_parenthesis(comm, start, expected):
    """comm may hold spaces and ")": the start time (field 22) is found from the line's last ")"."""
    assert lp.parse_stat_start(stat_line(7, comm, start), 100) == expected


@pytest.mark.parametrize("data", [b"", b"7 (x", b"7 (x) S 1 2", b"7 (x) " + b"1 " * 19 + b"-5 0", b")" * 100000,
                                  b"7 (x) " + b"1 " * 19 + b"9" * 30])
def test_parse_stat_start_refuses_what_is_not_a_stat_line(data):
    assert lp.parse_stat_start(data, 100) is None


def test_parse_stat_start_on_this_process():
    """/proc/self/stat of the real kernel: a start time after boot, no later than now."""
    with open("/proc/uptime") as handle:
        uptime = float(handle.read().split()[0])
    start = LinuxHost().process_dir(os.getpid())
    with start:
        value = lp.parse_stat_start(start.read("stat"), LinuxHost.clock_ticks())
    assert 0 <= value <= uptime + 1
    assert lp.ProcessTable().identify(os.getpid())["start_time"] == value


@pytest.mark.parametrize("text, unit", [
    ("0::/user.slice/user-1000.slice/user@1000.service/app.slice/evil.service\n", "user@1000.service/evil.service"),
    ("0::/user.slice/user-1000.slice/user@1000.service/init.scope\n", "user@1000.service/init.scope"),
    ("0::/user.slice/user-1000.slice/user@1000.service\n", "user@1000.service"),
    ("0::/system.slice/user@1000.x/nginx.service\n", "nginx.service"),
])
def test_a_per_user_unit_is_shown_under_its_user_manager(text, unit):
    """A unit a user's systemd runs never passes for a system unit: it keeps its user@UID.service/ prefix."""
    assert lp.parse_cgroup(text)[1] == unit


HOSTILE = "a\x1b[31mb\u202ecod.exe\x07\x85\u200b"
CLEAN = "a\\x1b[31mb\\u202ecod.exe\\x07\\x85\\u200b"


def test_host_text_is_cleaned_where_it_is_read(tree):
    """ESC, other C0/C1 controls, bidi overrides and zero-width characters in comm, cmdline, the cgroup path and the
    unit are shown escaped, never passed on (they reach the result, the metrics' labels and the findings)."""
    base = tree / "proc/100"
    (base / "comm").write_bytes(HOSTILE.encode()[:15] + b"\n")
    (base / "cmdline").write_bytes(HOSTILE.encode() + b"\x00-x\x00")
    (base / "cgroup").write_bytes(("0::/system.slice/%s.service\n" % HOSTILE).encode())
    info = lp.ProcessTable(LinuxHost(str(tree))).identify(100)
    assert info["name"] == lp.parse_comm(HOSTILE.encode()[:15]) and "\x1b" not in info["name"]
    assert info["cmdline"] == CLEAN + " -x"
    assert info["unit"] == CLEAN + ".service" and info["cgroup"] == "/system.slice/%s.service" % CLEAN
    for value in info.values():
        assert not isinstance(value, str) or all(c.isprintable() for c in value)


def test_hostile_host_text_reaches_neither_the_findings_nor_the_metrics(tree):
    """A process named with ESC and U+202E, in a unit holding them, that churns: its finding, its process row and
    its tcpstack_ series show the bytes escaped (the cleaning happens where /proc is read)."""
    base = tree / "proc/100"
    (base / "comm").write_bytes(b"\x1b]0;pwn\x07\xe2\x80\xae\n")
    (base / "cgroup").write_bytes("0::/system.slice/a\x1b[2J\u202eb.service\n".encode())
    table = lp.ProcessTable(LinuxHost(str(tree)))
    table.scan()
    counts = DestinationCounts(in_use=601, established=1, time_wait=600, new_connections=600,
                               new_connections_inferred=0)
    record = process_record(table.describe(100), {(4, b"\x0a\x00\x00\x02", 80): counts})
    result = analyse(Snapshot(port_range=(40000, 40999), platform=LINUX, tuples={}, format_address=format_address,
                              processes=[record], attribution={"sampled_seconds": 10.0, "unattributed": {}}))
    assert result["client_findings"] and result["top_churner"]["name"] == "\\x1b]0;pwn\\x07\\u202e"
    texts = list(result["findings"]) + [result["cure"]["summary"]]
    texts += [value for row in result["processes"] + result["client_findings"] for value in row.values()
              if isinstance(value, str)]
    assert all(char.isprintable() for text in texts for char in text)
    metrics = prometheus.render(result)
    assert "\\x1b]0;pwn" in metrics and "unit=\"a\\\\x1b[2J\\\\u202eb.service\"" in metrics
    assert all(char.isprintable() for line in metrics.splitlines() for char in line)


def test_a_name_holding_a_line_break_of_unicode_does_not_forge_its_uid():
    """/proc/PID/status starts with the process's own comm (15 bytes it chooses): "\\u0085Uid:\\t0" there is not a
    Uid line (the kernel ends lines with \\n only)."""
    status = "Name:\t\x85Uid:\t0\t0\nUmask:\t0022\nUid:\t1000\t1000\t1000\t1000\n"
    assert lp.parse_status_uid(status) == 1000
    assert lp.parse_cgroup("0::/system.slice/a\u2028b.service\n")[1] == "a\\u2028b.service"


def test_identify_reads_one_process_through_one_handle(tree, monkeypatch):
    """The files of a process are read through the handle opened first: a /proc/PID swapped for another process's
    between the open and the reads is not read (it is what a pid reused meanwhile looks like)."""
    host = LinuxHost(str(tree))
    opened = host.process_dir

    def swap_after_open(pid):
        proc = opened(pid)
        os.rename(str(tree / "proc/100"), str(tree / "old100"))
        fake_proc(tree, 100, fds={3: "socket:[999]"}, start=9999,
                  files={"comm": b"intruder\n", "status": b"Uid:\t1000\t1000\t1000\t1000\n"})
        return proc

    monkeypatch.setattr(host, "process_dir", swap_after_open)
    table = lp.ProcessTable(host)
    info = table.identify(100)
    assert info["name"] == "client" and info["start_time"] == 42.0 and info["uid"] == 0
    assert table.owner(111) == 100 and table.owner(999) is None


def test_identify_of_a_gone_process_is_none(tree):
    assert lp.ProcessTable(LinuxHost(str(tree))).identify(4242) is None


def test_a_reused_pid_inherits_nothing(tree):
    """pid 100 had sockets and exits; another process (another start time) gets pid 100 and opens sockets: the
    end of the audit describes pid 100 as the first process, and the newcomer's sockets are not given to it."""
    table = lp.ProcessTable(LinuxHost(str(tree)))
    table.scan()
    first = table.describe(100)
    os.rename(str(tree / "proc/100"), str(tree / "gone"))
    fake_proc(tree, 100, fds={3: "socket:[555]"}, start=8800,
              files={"comm": b"other\n", "cmdline": b"other\x00", "status": b"Uid:\t1000\t1000\t1000\t1000\n"})
    table.scan()
    assert table.owner(555) is None and table.reused == {100} and table.owner(111) == 100
    assert table.describe(100) == first and first["name"] == "client" and first["start_time"] == 42.0
    assert table.identify(100)["name"] == "other"  # who it is now, for a caller that asks while it runs
    assert table.describe(100) == first


# ---------------------------------------------------------------- the host object is the only host-touching piece
# module -> its functions that touch the host (None: importing it at all is one)
HOST_CALLS = {"os": {"open", "read", "write", "close", "listdir", "scandir", "readlink", "stat", "lstat", "fstat",
                     "access", "unlink", "rename", "replace", "walk", "kill"},
              "socket": {"socket", "socketpair", "create_connection"}, "pwd": None, "grp": None, "io": {"open"},
              "pathlib": None, "shutil": None, "subprocess": None}


@pytest.mark.parametrize("name", ["linux_processes", "linux_attribution", "linux_port_usage"])
def test_attribution_reads_the_host_only_through_linux_host(name):
    """No open(), os.listdir/readlink/open..., socket or pwd call in the attribution modules: LinuxHost does them."""
    source = importlib.import_module("ansible_collections.tcpstack.tuning.plugins.module_utils." + name).__file__
    assert host_calls(source) == []


def test_the_host_call_check_finds_what_the_processes_module_did_before():
    """The check above fails on linux_processes as first written (issue 14), which read /proc itself."""
    old = ('import os\nimport pwd\n'
           'def f(proc):\n    return os.listdir(proc), os.readlink(proc + "/self/ns/net"), pwd.getpwuid(0)\n'
           'def g(path):\n    fd = os.open(path, os.O_RDONLY)\n    return os.read(fd, 1), open(path)\n')
    assert [item.split(" line")[0] for item in host_calls(old, text=True)] == [
        "import pwd", "os.listdir()", "os.readlink()", "pwd.getpwuid()", "os.open()", "os.read()", "open()"]


def host_calls(source, text=False):
    """The host-touching imports and calls of a Python file (or of ``source`` itself with ``text``)."""
    if not text:
        with open(source, encoding="utf-8") as handle:
            source = handle.read()
    tree = ast.parse(source)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            modules = [alias.name for alias in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            found.extend("import %s" % module for module in modules
                         if module.split(".")[0] in HOST_CALLS and HOST_CALLS[module.split(".")[0]] is None)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                found.append("open() line %d" % node.lineno)
            elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                allowed = HOST_CALLS.get(func.value.id, ())
                if allowed is None or func.attr in (allowed or ()):
                    found.append("%s.%s() line %d" % (func.value.id, func.attr, node.lineno))
    return sorted(found, key=lambda item: int(item.rsplit(" ", 1)[1]) if " line " in item else 0)
