"""Issue 13 findings 1 and 3: linux_tcp touches only its own regular file, and reads only regular files.

run() against LinuxHost rooted in a temporary tree (real files, FIFOs, devices and symbolic links on the
real filesystem; /proc/sys is plain files).  Every refusal must leave the runtime values and every file
exactly as they were, in check mode too, and name the file and the reason.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
import time

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils import linux_host
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import (
    FILE_MAX,
    LOCK_PATH,
    HostError,
    LinuxHost,
    UnsafeFile,
    read_regular,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_sysctl_d import OUR_MARKS
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_tuning import HEADER, run
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError

from tests.support.ci import need
from tests.support.fake_linux import DEFAULTS, OURS, fake_host, params

# The header of every release so far (git log -p -- plugins/module_utils/linux_tuning.py: unchanged since the
# first commit that wrote a file, 76a4dc9).  A file an earlier version wrote must still be recognised as ours.
FIRST_RELEASE_FILE = (
    "# Managed by Ansible: tcpstack.tuning.linux_tcp. Changes made here by hand are overwritten.\n"
    "# Remove with the module's state: absent, which also restores the runtime values.\n"
    "# Note: Linux TIME_WAIT lasts a fixed 60 s; tcp_fin_timeout only limits orphaned FIN_WAIT_2 sockets.\n"
    "net.ipv4.tcp_fin_timeout = 45\n"
)
# What finding 1 lost: a comment, a glob line, and a bare "-key" line (re-rendered as "kernel.x = None").
FOREIGN = "# hardening, by hand\nnet.ipv4.conf.*.accept_redirects = 0\n-kernel.x\nnet.ipv4.tcp_fin_timeout = 45\n"


@pytest.fixture
def host(tmp_path):
    return fake_host(tmp_path)


def state(host):
    """Every runtime value and every entry under /etc (lstat type, mode, target or content)."""
    files = {}
    etc = host._p("/etc")
    for base, dirs, names in os.walk(etc):
        for name in sorted(dirs + names):
            path = os.path.join(base, name)
            st = os.lstat(path)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as handle:
                    detail = handle.read()
            elif stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            else:
                detail = None
            files[path] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), st.st_ino, detail)
    runtime = {key: host.read_sysctl(key.replace("/", ".")) for key in DEFAULTS}
    return runtime, files


def make_foreign(host, tmp_path, what):
    """Put ``what`` at OURS; returns the reason the refusal must give."""
    target = host._p(OURS)
    if what == "foreign":
        with open(target, "w") as handle:
            handle.write(FOREIGN)
        return "does not start with the header linux_tcp writes"
    if what == "debian_symlink":  # Debian: /etc/sysctl.d/99-sysctl.conf -> ../sysctl.conf
        with open(host._p("/etc/sysctl.conf"), "w") as handle:
            handle.write(FOREIGN)
        os.symlink("../sysctl.conf", target)
        return "is a symbolic link (to ../sysctl.conf)"
    if what == "secret_symlink":  # finding 3: would leak a 0600 secret into --diff and a new 0644 file
        secret = tmp_path / "secret"
        secret.write_text(HEADER + "\nroot-password = hunter2\n")
        secret.chmod(0o600)
        os.symlink(str(secret), target)
        return "is a symbolic link"
    if what == "own_symlink":  # a link to a file that even carries our header is not followed
        real = host._p("/etc/sysctl.d/real.txt")
        with open(real, "w") as handle:
            handle.write(FIRST_RELEASE_FILE)
        os.symlink("real.txt", target)
        return "is a symbolic link (to real.txt)"
    if what == "loop":
        os.symlink(os.path.basename(target), target)
        return "is a symbolic link"
    if what == "fifo":
        os.mkfifo(target)
        return "is a FIFO (named pipe), not a regular file"
    if what == "device":
        need(os.geteuid() == 0, "creating a device node needs root")
        os.mknod(target, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # what /dev/zero is
        return "is a character device, not a regular file"
    if what == "directory":
        os.mkdir(target)
        return "is a directory, not a regular file"
    if what == "oversized":  # our header, but more than any file of ours can be
        with open(target, "w") as handle:
            handle.write(FIRST_RELEASE_FILE + "#" * FILE_MAX)
        return "more than the %d read" % FILE_MAX
    raise AssertionError(what)


KINDS = ["foreign", "debian_symlink", "secret_symlink", "own_symlink", "loop", "fifo", "device", "directory",
         "oversized"]


@pytest.mark.parametrize("check_mode", [False, True], ids=["apply", "check"])
@pytest.mark.parametrize("desired", [dict(fin_timeout=30), dict(state="absent")], ids=["present", "absent"])
@pytest.mark.parametrize("what", KINDS)
def test_a_file_that_is_not_ours_is_refused_and_nothing_changes(host, tmp_path, what, desired, check_mode):
    reason = make_foreign(host, tmp_path, what)
    before = state(host)
    outcome = []

    def attempt():
        try:
            run(params(**desired), host, check_mode=check_mode, want_diff=True)
        except ValidationError as exc:
            outcome.append(exc)
        except BaseException as exc:  # pylint: disable=broad-except  # reported below, with its type
            outcome.append(exc)
    worker = threading.Thread(target=attempt, daemon=True)  # a FIFO opened for reading would block for ever
    worker.start()
    worker.join(30)
    assert not worker.is_alive(), "the run hung on %s" % what
    assert len(outcome) == 1 and isinstance(outcome[0], ValidationError), outcome
    message = str(outcome[0])
    assert outcome[0].option == "persist_file" and OURS in message and reason in message, message
    assert "Nothing was changed" in message and "hunter2" not in message
    assert state(host) == before


def test_a_file_of_an_earlier_release_is_still_ours(host):
    with open(host._p(OURS), "w") as handle:
        handle.write(FIRST_RELEASE_FILE)
    result, _w = run(params(somaxconn=8192), host)
    text = host.read_file(OURS)
    assert result["changed"] and "net.ipv4.tcp_fin_timeout = 45\n" in text and "net.core.somaxconn = 8192\n" in text
    assert text.startswith(OUR_MARKS)
    gone, _w = run(params(state="absent"), host)
    assert gone["changed"] and host.read_file(OURS) is None


def test_what_we_write_starts_with_our_mark(host):
    run(params(fin_timeout=30), host)
    assert host.read_file(OURS).startswith(OUR_MARKS[0]) and HEADER.startswith(OUR_MARKS[0][2:])


# ---------------------------------------------------------------- reads (finding 3)
def run_bounded(host, seconds=30, **kw):
    """run() in a thread that must end within ``seconds``; returns (result, warnings) or raises what it raised."""
    out = []

    def attempt():
        try:
            out.append(("ok", run(params(**kw), host)))
        except BaseException as exc:  # pylint: disable=broad-except  # re-raised in the test's thread
            out.append(("error", exc))
    worker = threading.Thread(target=attempt, daemon=True)
    worker.start()
    worker.join(seconds)
    assert not worker.is_alive(), "the run hung"
    kind, value = out[0]
    if kind == "error":
        raise value
    return value


def test_a_fifo_in_sysctl_d_is_skipped_with_a_warning_and_never_opened(host):
    os.mkfifo(host._p("/etc/sysctl.d/10-x.conf"))
    result, warnings = run_bounded(host, fin_timeout=30)
    assert result["changed"]
    assert any("/etc/sysctl.d/10-x.conf is a FIFO (named pipe), not a regular file" in w for w in warnings), warnings


def test_a_link_to_dev_zero_is_skipped_and_a_link_to_dev_null_masks(host):
    os.symlink("/dev/zero", host._p("/etc/sysctl.d/10-zero.conf"))
    with open(host._p("/usr/lib/sysctl.d/50-vendor.conf"), "w") as handle:
        handle.write("net.ipv4.tcp_fin_timeout = 10\n")
    os.symlink("/dev/null", host._p("/etc/sysctl.d/50-vendor.conf"))  # masks the vendor file (sysctl.d(5))
    result, warnings = run_bounded(host, fin_timeout=30)
    assert any("10-zero.conf is a character device" in w for w in warnings), warnings
    assert result["boot_values"]["net.ipv4.tcp_fin_timeout"]["systemd"]["file"] == OURS


@pytest.mark.parametrize("link", ["10-loop.conf", "missing-target"])
def test_a_symlink_loop_or_dangling_link_is_no_traceback(host, link):
    path = host._p("/etc/sysctl.d/10-loop.conf")
    os.symlink(link, path)
    result, warnings = run_bounded(host, fin_timeout=30)
    assert result["changed"]
    if link == "10-loop.conf":
        assert any("10-loop.conf is a symbolic link loop" in w for w in warnings), warnings


def test_a_symlink_to_a_regular_file_is_followed_for_boot_predictions(host):
    """systemd-sysctl follows Debian's 99-sysctl.conf -> ../sysctl.conf: so does the prediction."""
    with open(host._p("/etc/sysctl.conf"), "w") as handle:
        handle.write("net.ipv4.tcp_fin_timeout = 10\n")
    os.symlink("../sysctl.conf", host._p("/etc/sysctl.d/99-sysctl.conf"))
    result, _w = run(params(fin_timeout=30, on_shadowed="warn"), host)
    assert result["boot_values"]["net.ipv4.tcp_fin_timeout"]["systemd"] == {
        "value": "10", "file": "/etc/sysctl.d/99-sysctl.conf", "line": 1}


def test_an_oversized_foreign_file_is_skipped_with_a_warning(host):
    with open(host._p("/etc/sysctl.d/10-big.conf"), "w") as handle:
        handle.write("#" * (FILE_MAX + 1))
    _r, warnings = run_bounded(host, fin_timeout=30)
    assert any("10-big.conf is %d bytes, more than the %d read" % (FILE_MAX + 1, FILE_MAX) in w for w in warnings)


def test_a_sysctl_that_is_a_fifo_is_a_clear_error_not_a_hang(host):
    target = host._p("/proc/sys/net/core/somaxconn")
    os.unlink(target)
    os.mkfifo(target)
    with pytest.raises(HostError) as err:
        run_bounded(host, somaxconn=8192)
    assert "reading net.core.somaxconn failed: /proc/sys/net/core/somaxconn is a FIFO" in str(err.value)


def test_read_regular_reads_at_most_cap_plus_one_bytes(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    assert read_regular(str(path), cap=10) == b"x" * 10
    with pytest.raises(UnsafeFile) as err:
        read_regular(str(path), cap=9)
    assert err.value.errno == errno.EFBIG


def test_read_regular_with_truncate_gives_the_first_cap_bytes(tmp_path):
    """What /proc/PID/cmdline is read with: a longer file is cut at ``cap`` (its size is not even looked at: procfs
    says 0), still only a regular file."""
    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    assert read_regular(str(path), cap=4, truncate=True) == b"0123"
    assert read_regular(str(path), cap=10, truncate=True) == b"0123456789"
    assert read_regular(str(path), cap=0, truncate=True) == b""
    os.mkfifo(str(tmp_path / "fifo"))
    with pytest.raises(UnsafeFile) as err:
        read_regular(str(tmp_path / "fifo"), cap=4, truncate=True)
    assert err.value.errno == errno.EINVAL


def test_proc_files_of_size_zero_are_read_to_their_end():
    need(os.path.exists("/proc/self/status"), "needs /proc")
    assert os.stat("/proc/self/status").st_size == 0
    text = read_regular("/proc/self/status").decode()
    assert text.startswith("Name:") and "Pid:" in text


# ---------------------------------------------------------------- the lock (finding 3)
def test_the_lock_waits_with_a_deadline_then_names_its_holder(host):
    path = host._p(LOCK_PATH)
    with host.lock(wait=1):
        with open(path) as handle:
            assert handle.read() == "%d\n" % os.getpid()  # the holder's pid, for whoever waits
        started = time.monotonic()
        with pytest.raises(HostError) as err:
            with LinuxHost(host.root).lock(wait=0.5, poll=0.1):
                pass
        waited = time.monotonic() - started
    assert "another run holds the lock %s (pid %d, " % (LOCK_PATH, os.getpid()) in str(err.value)
    assert "within 0.5 s" in str(err.value)
    assert 0.4 < waited < 10
    with LinuxHost(host.root).lock(wait=0.5):  # released: taken at once
        pass


def test_a_waiting_run_gets_the_lock_once_it_is_released(host):
    holder = os.open(host._p(LOCK_PATH), os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(holder, fcntl.LOCK_EX)
    timer = threading.Timer(0.5, lambda: fcntl.flock(holder, fcntl.LOCK_UN))
    timer.start()
    try:
        with host.lock(wait=20, poll=0.1):
            pass
    finally:
        timer.join()
        os.close(holder)


@pytest.mark.parametrize("what", ["symlink", "fifo", "directory"])
def test_a_lock_file_that_is_not_a_regular_file_fails(host, tmp_path, what):
    path = host._p(LOCK_PATH)
    if what == "symlink":
        (tmp_path / "elsewhere").write_text("")
        os.symlink(str(tmp_path / "elsewhere"), path)
    elif what == "fifo":
        os.mkfifo(path, 0o600)
    else:
        os.mkdir(path)
    with pytest.raises(HostError) as err:
        with host.lock(wait=0.2):
            pass
    assert LOCK_PATH in str(err.value)
    assert (tmp_path / "elsewhere").read_text() == "" if what == "symlink" else True


def test_the_lock_is_skipped_only_without_a_writable_run(tmp_path):
    with LinuxHost(str(tmp_path / "no-such-root")).lock(wait=0.1):  # ENOENT: no /run at all
        pass
    assert linux_host.LOCK_WAIT >= 60  # overlapping playbook runs on one host wait, they do not fail at once


# ---------------------------------------------------------------- 5,000 digits in another file (finding 5)
def test_a_5000_digit_value_in_another_file_is_reported_not_fatal(host):
    with open(host._p("/usr/lib/sysctl.d/50-vendor.conf"), "w") as handle:
        handle.write("net.core.somaxconn = %s\nnet.ipv4.tcp_fin_timeout = 45\n" % ("1" * 5000))
    result, warnings = run(params(somaxconn=8192, fin_timeout=30), host)
    assert result["changed"]
    assert any("50-vendor.conf line 1 sets net.core.somaxconn to 1111" in w and "(5000 characters)" in w
               and "the kernel refuses it at boot" in w for w in warnings), warnings
    assert all(len(w) < 1000 for w in warnings)
    gone, warnings = run(params(state="absent"), host)
    assert gone["changed"] and sysctl_value(host, "net.ipv4.tcp_fin_timeout") == "45"
    assert sysctl_value(host, "net.core.somaxconn") == "4096"  # the refused value leaves the default


def sysctl_value(host, key):
    return host.read_sysctl(key)


# ---------------------------------------------------------------- a directory to write into (the port_monitor sampler)
def test_check_directory_accepts_only_a_directory_itself(tmp_path):
    """LinuxHost.check_directory: the one on-host check of the sampler's textfile directory; lstat, no link followed."""
    host = LinuxHost(str(tmp_path))
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("x")
    (tmp_path / "link").symlink_to(tmp_path / "dir")
    os.mkfifo(tmp_path / "fifo")
    assert host.check_directory("/dir") is None
    for name, what in (("file", "a regular file"), ("link", "a symbolic link"), ("fifo", "a FIFO (named pipe)")):
        with pytest.raises(UnsafeFile) as caught:
            host.check_directory("/" + name)
        assert (caught.value.errno, caught.value.filename, caught.value.strerror) == (
            errno.ENOTDIR, "/" + name, "is %s, not a directory" % what)
    with pytest.raises(FileNotFoundError):
        host.check_directory("/missing")
    with pytest.raises(NotADirectoryError):
        host.check_directory("/file/below")
    assert [p.name for p in sorted(tmp_path.iterdir())] == ["dir", "fifo", "file", "link"]  # nothing was made


# ---------------------------------------------------------------- writes confined to the real directory (issue 22)
def test_open_directory_walks_without_following_a_link_in_any_component(tmp_path):
    host = LinuxHost(str(tmp_path))
    (tmp_path / "real" / "dir").mkdir(parents=True)
    (tmp_path / "file").write_text("x")
    (tmp_path / "up").symlink_to(tmp_path / "real")
    (tmp_path / "real" / "down").symlink_to(tmp_path / "real" / "dir")
    fd = host.open_directory("/real/dir")
    try:
        assert os.path.samestat(os.fstat(fd), os.stat(tmp_path / "real" / "dir"))
    finally:
        os.close(fd)
    host.check_real_directory("/real/dir/")
    for path, shown, what in (("/up/dir", "/up", "a symbolic link"), ("/real/down", "/real/down", "a symbolic link"),
                              ("/file", "/file", "a regular file"), ("/file/below", "/file", "a regular file")):
        with pytest.raises(UnsafeFile) as caught:
            host.check_real_directory(path)
        assert (caught.value.errno, caught.value.filename, caught.value.strerror) == (
            errno.ENOTDIR, shown, "is %s, not a directory" % what), path
    for path in ("/real/../real/dir", "real/dir", "/real/./dir"):
        with pytest.raises(UnsafeFile) as caught:
            host.open_directory(path)
        assert caught.value.errno == errno.EINVAL
    with pytest.raises(FileNotFoundError):
        host.open_directory("/missing")


def test_write_in_directory_is_atomic_and_cleans_only_its_own_temporaries(tmp_path):
    host = LinuxHost(str(tmp_path))
    target = tmp_path / "t"
    target.mkdir()
    (target / ".x.prom.dead.tmp").write_text("killed write")
    (target / ".other.prom.dead.tmp").write_text("someone else's")
    host.write_in_directory("/t", "x.prom", "a 1\n")
    host.write_in_directory("/t", "x.prom", "a 2\n", mode=0o640)
    assert (target / "x.prom").read_text() == "a 2\n"
    assert stat.S_IMODE((target / "x.prom").stat().st_mode) == 0o640
    assert sorted(p.name for p in target.iterdir()) == [".other.prom.dead.tmp", "x.prom"]
    with pytest.raises(UnicodeEncodeError):
        host.write_in_directory("/t", "x.prom", "a \ud800\n")
    assert sorted(p.name for p in target.iterdir()) == [".other.prom.dead.tmp", "x.prom"]
    assert (target / "x.prom").read_text() == "a 2\n"


def test_write_in_directory_never_writes_through_a_link(tmp_path):
    host = LinuxHost(str(tmp_path))
    (tmp_path / "secret").mkdir()
    (tmp_path / "secret" / ".x.prom.root.tmp").write_text("root's")
    (tmp_path / "t").symlink_to(tmp_path / "secret")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "x.prom").symlink_to(tmp_path / "secret" / "y")  # a link named like the file: replaced
    with pytest.raises(UnsafeFile):
        host.write_in_directory("/t", "x.prom", "a 1\n")
    host.write_in_directory("/real", "x.prom", "a 1\n")
    assert not (tmp_path / "real" / "x.prom").is_symlink() and (tmp_path / "real" / "x.prom").read_text() == "a 1\n"
    assert [p.name for p in (tmp_path / "secret").iterdir()] == [".x.prom.root.tmp"]


def test_a_write_goes_on_in_the_directory_it_opened_when_the_path_is_swapped_meanwhile(tmp_path, monkeypatch):
    host = LinuxHost(str(tmp_path))
    (tmp_path / "secret").mkdir()
    (tmp_path / "t").mkdir()
    real_fsync = os.fsync
    swapped = []

    def swap_then_fsync(fd):
        if not swapped:  # after the temporary file is written, before the rename
            os.rename(tmp_path / "t", tmp_path / "t.old")
            os.symlink(tmp_path / "secret", tmp_path / "t")
            swapped.append(fd)
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", swap_then_fsync)
    host.write_in_directory("/t", "x.prom", "a 1\n")
    assert swapped and list((tmp_path / "secret").iterdir()) == []
    assert [p.name for p in (tmp_path / "t.old").iterdir()] == ["x.prom"]


def test_remove_in_directory_removes_only_in_the_real_directory(tmp_path):
    host = LinuxHost(str(tmp_path))
    (tmp_path / "secret").mkdir()
    for name in ("x.prom", ".x.prom.root.tmp"):
        (tmp_path / "secret" / name).write_text("root's")
    (tmp_path / "t").symlink_to(tmp_path / "secret")
    with pytest.raises(UnsafeFile):
        host.remove_in_directory("/t", "x.prom")
    assert sorted(p.name for p in (tmp_path / "secret").iterdir()) == [".x.prom.root.tmp", "x.prom"]
    assert host.remove_in_directory("/missing", "x.prom") == []
    real = tmp_path / "real"
    real.mkdir()
    (real / "x.prom").symlink_to(tmp_path / "secret" / "x.prom")  # the link goes, never what it points to
    (real / ".x.prom.dead.tmp").write_text("")
    (real / "other.prom").write_text("")
    assert host.remove_in_directory("/real", "x.prom") == [".x.prom.dead.tmp", "x.prom"]
    assert [p.name for p in real.iterdir()] == ["other.prom"]
    assert host.remove_in_directory("/real", "x.prom") == []
    assert sorted(p.name for p in (tmp_path / "secret").iterdir()) == [".x.prom.root.tmp", "x.prom"]
