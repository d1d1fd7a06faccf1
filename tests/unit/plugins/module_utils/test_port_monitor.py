"""The port_monitor sampler: its options, the atomic textfile write, the schedule, on this machine's real /proc."""

from __future__ import annotations

import ast
import os
import stat

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils import port_monitor, port_monitor_service
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_monitor import (
    FILE_NAME,
    MonitorError,
    MonitorOptions,
    check_options,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.port_monitor_service import (
    main,
    parse_args,
    run,
    write_atomically,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import (
    PATH_MAX,
    ValidationError,
    absolute_path,
    show,
)


def test_defaults_and_options(tmp_path):
    args = parse_args(["--directory", str(tmp_path)])
    assert (args.directory, args.interval, args.top, args.warning_percent, args.critical_percent, args.once) == (
        str(tmp_path), 15, 5, 70, 90, False)
    args = parse_args(["--directory", str(tmp_path) + "/", "--interval", "60", "--top", "100", "--once",
                       "--warning-percent", "50", "--critical-percent", "60"])
    assert (args.directory, args.interval, args.top, args.warning_percent, args.critical_percent, args.once) == (
        str(tmp_path), 60, 100, 50, 60, True)


@pytest.mark.parametrize("argv, message", [
    (["--interval", "0"], "--interval: '0' is not valid: an integer number of seconds from 1 to 3600"),
    (["--interval", "1.5"], "--interval: '1.5' is not valid"),
    (["--top", "101"], "--top: '101' is not valid: an integer number of destinations from 1 to 100"),
    (["--top", "0"], "--top: '0' is not valid"),
    (["--warning-percent", "95"], "--warning-percent: 95 is not valid: at most --critical-percent (90)"),
])
def test_bad_options_name_the_option(tmp_path, argv, message):
    with pytest.raises(MonitorError) as caught:
        parse_args(["--directory", str(tmp_path)] + argv)
    assert str(caught.value).startswith(message), str(caught.value)


def test_the_directory_must_be_a_directory(tmp_path):
    regular = tmp_path / "file"
    regular.write_text("x")
    link = tmp_path / "link"
    link.symlink_to(tmp_path)
    for path, valid in ((regular, "a directory, not a symbolic link or a file"),
                        (link, "a directory, not a symbolic link or a file"),
                        (tmp_path / "missing", "an existing directory (No such file or directory)"),
                        ("relative", "an absolute path to a directory")):
        with pytest.raises(MonitorError) as caught:
            parse_args(["--directory", str(path)])
        assert str(caught.value) == "--directory: %r is not valid: %s" % (str(path), valid)


def test_main_refuses_a_bad_option_with_status_2_and_one_line(tmp_path, capsys):
    assert main(["--directory", str(tmp_path), "--interval", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "tcpstack-port-monitor: --interval: '0' is not valid: an integer number of seconds from 1 to 3600\n"
    assert list(tmp_path.iterdir()) == []


def test_the_write_is_atomic_0644_and_leaves_no_temporary_file(tmp_path):
    old_umask = os.umask(0o077)
    try:
        write_atomically(str(tmp_path), "a 1\n")
        write_atomically(str(tmp_path), "a 2\n")
    finally:
        os.umask(old_umask)
    target = tmp_path / FILE_NAME
    assert target.read_text() == "a 2\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]


def test_a_failed_write_keeps_the_old_file_and_removes_the_temporary_one(tmp_path):
    write_atomically(str(tmp_path), "a 1\n")
    with pytest.raises(UnicodeEncodeError):
        write_atomically(str(tmp_path), "a \ud800\n")  # cannot be encoded: fails after the temporary file exists
    assert (tmp_path / FILE_NAME).read_text() == "a 1\n"
    assert [p.name for p in tmp_path.iterdir()] == [FILE_NAME]


def test_the_temporary_name_is_not_one_the_textfile_collector_reads(tmp_path, monkeypatch):
    seen = []
    real_rename = os.rename

    def spy(source, destination, **dir_fds):  # the sampler renames relative to its directory's descriptor
        seen.append(os.path.basename(source))
        return real_rename(source, destination, **dir_fds)

    monkeypatch.setattr(os, "rename", spy)
    write_atomically(str(tmp_path), "a 1\n")
    assert len(seen) == 1 and seen[0].startswith(".") and not seen[0].endswith(".prom")


def swap_layout(tmp_path):
    """Debian's layout in a tree: prometheus owns the parent, so it can swap node-exporter for a link into a
    root-only directory that holds root's own temporary file.  Returns (textfile directory, root-only directory)."""
    parent = tmp_path / "var" / "lib" / "prometheus"
    (parent / "node-exporter").mkdir(parents=True)
    secret = tmp_path / "root-only"
    secret.mkdir(mode=0o700)
    (secret / (".%s.root.tmp" % FILE_NAME)).write_text("root's temporary file")
    return parent / "node-exporter", secret


def test_a_directory_swapped_for_a_link_between_two_writes_is_not_written_through(tmp_path):
    """Issue 22: the sampler checked its directory only at start; a swap between runs moved the write (and the
    stale-temporary cleanup) into the link's target.  Now each write reaches the directory without any link."""
    textfile_dir, secret = swap_layout(tmp_path)
    options = parse_args(["--directory", str(textfile_dir)])  # the check at start passes: a real directory
    write_atomically(options.directory, "a 1\n")
    textfile_dir.rename(textfile_dir.parent / "node-exporter.old")
    textfile_dir.symlink_to(secret)
    with pytest.raises(OSError):
        write_atomically(options.directory, "a 2\n")
    assert sorted(p.name for p in secret.iterdir()) == [".%s.root.tmp" % FILE_NAME]  # nothing made, nothing deleted
    assert (textfile_dir.parent / "node-exporter.old" / FILE_NAME).read_text() == "a 1\n"


def test_a_parent_swapped_for_a_link_is_not_written_through(tmp_path):
    textfile_dir, secret = swap_layout(tmp_path)
    (secret / "node-exporter").mkdir()
    prometheus = textfile_dir.parent
    prometheus.rename(prometheus.parent / "prometheus.old")
    prometheus.symlink_to(secret)
    with pytest.raises(OSError):
        write_atomically(str(textfile_dir), "a 1\n")
    assert list((secret / "node-exporter").iterdir()) == []
    assert main(["--directory", str(textfile_dir), "--once"]) == 2  # and the check at start refuses it too


def test_remove_never_deletes_through_a_link(tmp_path, capsys):
    textfile_dir, secret = swap_layout(tmp_path)
    (secret / FILE_NAME).write_text("root's")
    textfile_dir.rmdir()
    textfile_dir.symlink_to(secret)
    assert main(["--directory", str(textfile_dir), "--remove"]) == 0
    assert capsys.readouterr().out == "left alone: %s is a symbolic link, not a directory, so nothing of the " \
        "sampler's is there\n" % textfile_dir
    assert sorted(p.name for p in secret.iterdir()) == [".%s.root.tmp" % FILE_NAME, FILE_NAME]
    textfile_dir.unlink()
    textfile_dir.mkdir()
    write_atomically(str(textfile_dir), "a 1\n")
    (textfile_dir / (".%s.dead.tmp" % FILE_NAME)).write_text("")
    (textfile_dir / "other.prom").write_text("")
    assert main(["--directory", str(textfile_dir), "--remove"]) == 0
    assert capsys.readouterr().out == "removed: .%s.dead.tmp %s\n" % (FILE_NAME, FILE_NAME)
    assert [p.name for p in textfile_dir.iterdir()] == ["other.prom"]
    assert main(["--directory", str(textfile_dir), "--remove"]) == 0
    assert capsys.readouterr().out == "nothing to remove\n"
    assert main(["--directory", str(tmp_path / "missing"), "--remove"]) == 0
    assert capsys.readouterr().out == "nothing to remove\n"


class Clock:
    """A monotonic clock that sleep() advances: the schedule without waiting."""

    def __init__(self):
        self.now = 1000.0
        self.sleeps = []

    def monotonic(self):
        return self.now

    def sleep(self, seconds):
        self.sleeps.append(seconds)
        self.now += seconds


def test_the_loop_samples_this_host_on_schedule(tmp_path):
    clock = Clock()
    args = parse_args(["--directory", str(tmp_path), "--interval", "15"])
    assert run(args, runs=3, sleep=clock.sleep, monotonic=clock.monotonic) == 0
    assert clock.now == 1030.0  # two waits of one interval, none after the last run
    text = (tmp_path / FILE_NAME).read_text()
    assert "# TYPE tcpstack_verdict gauge" in text and "tcpstack_sampler_interval_seconds 15" in text
    assert "tcpstack_ephemeral_ports_usable " in text  # the real audit of this machine's network namespace


def test_a_failing_run_is_logged_counted_and_the_loop_goes_on(tmp_path):
    clock = Clock()
    args = parse_args(["--directory", str(tmp_path), "--interval", "5"])
    os.rmdir(tmp_path)  # the directory disappears after the start: every write fails
    logged = []
    assert run(args, runs=2, sleep=clock.sleep, monotonic=clock.monotonic, log=logged.append) == 2
    assert len(logged) == 2 and all(line.startswith("tcpstack-port-monitor: sample failed, %s was not written: "
                                                    % (tmp_path / FILE_NAME)) for line in logged)


def test_a_stop_request_ends_the_loop(tmp_path):
    clock = Clock()
    args = parse_args(["--directory", str(tmp_path), "--interval", "15"])

    class Stop:
        requested = False

    stop = Stop()

    def sleep(seconds):
        clock.sleep(seconds)
        stop.requested = True  # SIGTERM while waiting

    assert run(args, sleep=sleep, monotonic=clock.monotonic, stop=stop) == 0
    assert clock.sleeps == [1.0]


def test_process_options(tmp_path):
    args = parse_args(["--directory", str(tmp_path), "--processes", "--process-sample-seconds", "14"])
    assert (args.processes, args.process_sample_seconds) == (True, 14)
    for argv, message in ((["--process-sample-seconds", "2"], "--process-sample-seconds: '2' is not valid: "
                           "an integer number of seconds below --interval (0 without --processes) from 0 to 0"),
                          (["--processes", "--process-sample-seconds", "15"],
                           "--process-sample-seconds: '15' is not valid: an integer number of seconds below --interval "
                           "(0 without --processes) from 0 to 14")):
        with pytest.raises(MonitorError) as caught:
            parse_args(["--directory", str(tmp_path)] + argv)
        assert str(caught.value) == message


# ---------------------------------------------------------------- one check of the directory's value (issue 20)
@pytest.mark.parametrize("value", [
    "var/lib/x", "/a b", "/a\tb", "/a/../etc", "/a/..", "/a/./b", "/a/.", "/a//b", "//a", "/var/%h", "/a\\b",
    "/x\nExecStartPre=/bin/true", "/x\0", "/x\x7f", "/", "", None, ["/x"], 5, "/" + "a" * PATH_MAX,
])
def test_the_sampler_and_the_role_refuse_the_same_directories(tmp_path, value):
    """validation.absolute_path is the one check of the value: the sampler's --directory and the role's
    port_monitor_textfile_dir (plugin_utils/role_vars.py) refuse the same paths, naming their own option."""
    with pytest.raises(ValidationError) as caught:
        absolute_path(value, "port_monitor_textfile_dir", "an absolute path to a directory")
    assert str(caught.value).startswith("port_monitor_textfile_dir: %s is not valid: an absolute path to a directory"
                                        % show(value))
    with pytest.raises(MonitorError) as caught:
        check_options(value, 15, 5, 70, 90)
    assert str(caught.value) == "--directory: %s is not valid: an absolute path to a directory" % show(value)


@pytest.mark.parametrize("value, expected", [
    ("/var/lib/prometheus/node-exporter", "/var/lib/prometheus/node-exporter"), ("/srv/textfile/", "/srv/textfile"),
    ("/a.b/c..d/.e", "/a.b/c..d/.e"), ("/" + "a" * (PATH_MAX - 1), "/" + "a" * (PATH_MAX - 1)),
])
def test_a_plain_absolute_path_is_kept_without_its_trailing_slash(value, expected):
    assert absolute_path(value, "x") == expected
    assert check_options(value, 15, 5, 70, 90).directory == expected


def test_an_empty_path_means_none_only_where_allowed():
    assert absolute_path("", "port_monitor_rules_dir", empty_ok=True) == ""
    assert absolute_path(None, "port_monitor_rules_dir", empty_ok=True) == ""
    with pytest.raises(ValidationError):
        absolute_path("", "port_monitor_rules_dir")


def test_the_options_are_one_checked_value():
    assert check_options("/srv/t/", "60", "3", "50", "60", processes=True, process_sample_seconds="5") == \
        MonitorOptions("/srv/t", 60, 3, 50, 60, True, 5, False)


def test_the_directory_is_looked_at_through_the_host_object(tmp_path):
    """parse_args checks the directory on the host it is given (LinuxHost rooted in a tree here), not on "/"."""
    (tmp_path / "srv" / "textfile").mkdir(parents=True)
    (tmp_path / "srv" / "file").write_text("x")
    host = LinuxHost(str(tmp_path))
    assert parse_args(["--directory", "/srv/textfile"], host).directory == "/srv/textfile"
    with pytest.raises(MonitorError) as caught:
        parse_args(["--directory", "/srv/file"], host)
    assert str(caught.value) == "--directory: '/srv/file' is not valid: a directory, not a symbolic link or a file"


# ---------------------------------------------------------------- the host is touched through LinuxHost only
HOST_CALLS = {"open", "read", "write", "close", "listdir", "scandir", "readlink", "stat", "lstat", "fstat", "access",
              "unlink", "rename", "replace", "walk", "makedirs", "mkdir", "chmod", "fchmod", "fsync"}
HOST_MODULES = {"stat", "shutil", "pathlib", "tempfile", "io", "subprocess", "socket", "pwd"}


def host_calls(source):
    """The calls of ``source`` (Python text) that touch a host themselves: os.<file call>(), open(), and the
    imports of modules that only such code needs."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.extend("import %s" % alias.name for alias in node.names if alias.name in HOST_MODULES)
        elif isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id == "open":
                found.append("open()")
            elif (isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "os"
                  and func.attr in HOST_CALLS):
                found.append("os.%s()" % func.attr)
    return found


@pytest.mark.parametrize("module", [port_monitor, port_monitor_service])
def test_the_sampler_touches_the_host_only_through_linux_host(module):
    with open(module.__file__, encoding="utf-8") as handle:
        assert host_calls(handle.read()) == []


def test_the_host_call_check_finds_what_the_sampler_did_before():
    """The check above fails on the sampler as it was before issue 20: its own lstat of the directory."""
    old = "import os\nimport stat\ndef check_directory(path):\n    return stat.S_ISDIR(os.lstat(path).st_mode)\n"
    assert host_calls(old) == ["import stat", "os.lstat()"]
