"""Issue 13 findings 1 and 3 on the real thing: ansible-playbook runs linux_tcp in a throwaway network
namespace whose /etc/sysctl.d holds files that are not ours.

- persist_file naming another program's .conf, Debian's 99-sysctl.conf -> ../sysctl.conf, a FIFO, a link to
  /dev/zero, a directory: every task fails naming the file and the reason (state: present, state: absent,
  check mode), and the runtime values and every file are exactly as before.
- Other files in /etc/sysctl.d that are a FIFO, a link to /dev/zero, a symlink loop: a run with our own
  persist_file completes (no hang, no memory blow-up, no traceback), warns about each, and follows a link
  to a regular file (as Debian's 99-sysctl.conf -> ../sysctl.conf is) for its boot prediction, as
  systemd-sysctl does.
"""

from __future__ import annotations

import json
import os

import pytest

from tests.support.netns import Sandbox

pytestmark = pytest.mark.usefixtures("root_netns")

MODULE = "tcpstack.tuning.linux_tcp"
FIN = "net.ipv4.tcp_fin_timeout"
FOREIGN = "# hardening, by hand\nnet.ipv4.conf.*.accept_redirects = 0\n-kernel.x\nnet.ipv4.tcp_fin_timeout = 45\n"

# name in /etc/sysctl.d -> (how to make it, the reason the refusal must give)
REFUSED = {
    "20-foreign.conf": ("foreign", "does not start with the header linux_tcp writes"),
    "99-sysctl.conf": ("debian", "is a symbolic link (to ../sysctl.conf)"),
    "30-fifo.conf": ("fifo", "is a FIFO (named pipe), not a regular file"),
    "40-zero.conf": ("zero", "is a symbolic link (to /dev/zero)"),
    "50-dir.conf": ("dir", "is a directory, not a regular file"),
}


def make(box, name, how):
    path = box.path(name)
    if how == "foreign":
        box.write_file(name, FOREIGN)
    elif how == "debian":
        os.symlink("../sysctl.conf", str(path))
    elif how == "fifo":
        os.mkfifo(str(path), 0o644)
    elif how == "zero":
        os.symlink("/dev/zero", str(path))
    elif how == "dir":
        path.mkdir()
    elif how == "loop":
        os.symlink(name, str(path))


def play(*tasks):
    return json.dumps([{"name": "foreign files", "hosts": "all", "gather_facts": False, "tasks": list(tasks)}],
                      indent=1)


def lstat_view(box):
    """What a run could change that file_hashes() does not see: the type of every entry in sysctl.d."""
    return {entry.name: os.lstat(str(entry)).st_mode for entry in box.sysctl_d.iterdir()}


def test_a_persist_file_that_is_not_ours_is_never_written_deleted_or_followed(figures):
    with Sandbox.new() as box:
        box.create(sysctl_conf="# Debian's own\nnet.ipv4.tcp_fin_timeout = 50\n")
        for name, (how, _reason) in REFUSED.items():
            make(box, name, how)
        tasks = []
        for name in REFUSED:
            for label, options, check in (("present", {"fin_timeout": 31}, False),
                                          ("absent", {"state": "absent"}, False),
                                          ("check", {"fin_timeout": 31}, True)):
                task = {"name": "%s %s" % (label, name), MODULE: dict(options, persist_file="/etc/sysctl.d/" + name),
                        "ignore_errors": True}
                if check:
                    task["check_mode"] = True
                tasks.append(task)
        before = box.snapshot(), lstat_view(box)
        rc, results = box.run_playbook(play(*tasks), timeout=300)
        assert rc == 0, box.last_run.describe()
        by_name = {r["_task"]: r for r in results}
        assert len(by_name) == len(tasks), box.last_run.describe()
        for name, (_how, reason) in REFUSED.items():
            for label in ("present", "absent", "check"):
                result = by_name["%s %s" % (label, name)]
                assert result["failed"] is True and result.get("changed") is False, result
                assert result["msg"].startswith("persist_file: "), result["msg"]
                assert "/etc/sysctl.d/%s %s" % (name, reason) in result["msg"], result["msg"]
                assert "Nothing was changed" in result["msg"] and "Traceback" not in json.dumps(result)
        assert (box.snapshot(), lstat_view(box)) == before, "a refused run changed the host"
        assert box.read_file("20-foreign.conf") == FOREIGN
    figures.add("security", checks=1)


def test_fifos_device_links_and_loops_in_sysctl_d_are_skipped_and_links_followed(figures):
    with Sandbox.new() as box:
        box.create()
        (box.sysctl_d / "kept").mkdir()
        (box.sysctl_d / "kept" / "settings").write_text("net.ipv4.tcp_fin_timeout = 50\n")
        os.symlink("kept/settings", str(box.path("99-link.conf")))  # like Debian's 99-sysctl.conf -> ../sysctl.conf
        make(box, "30-fifo.conf", "fifo")
        make(box, "40-zero.conf", "zero")
        make(box, "45-loop.conf", "loop")
        rc, results = box.run_playbook(play({"name": "tune", MODULE: {"fin_timeout": 31, "on_shadowed": "warn"}}),
                                       timeout=300)
        assert rc == 0, box.last_run.describe()
        result = results[-1]
        assert result["changed"] is True and box.sysctl(FIN) == "31"
        warnings = "\n".join(result.get("warnings", []))
        assert "/etc/sysctl.d/30-fifo.conf is a FIFO (named pipe), not a regular file" in warnings, warnings
        assert "/etc/sysctl.d/40-zero.conf is a character device" in warnings, warnings
        assert "/etc/sysctl.d/45-loop.conf is a symbolic link loop" in warnings, warnings
        # followed, as systemd-sysctl follows it: the linked file's value, through 99-link.conf, wins at boot
        assert result["boot_values"][FIN]["systemd"] == {"value": "50", "file": "/etc/sysctl.d/99-link.conf",
                                                         "line": 1}
        assert os.path.islink(str(box.path("99-link.conf")))
    figures.add("security", checks=1)
