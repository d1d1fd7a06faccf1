"""The module shell: argument handling, exit and fail paths (host rooted in a temporary tree)."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils.testing import patch_module_args

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import LinuxHost
from ansible_collections.tcpstack.tuning.plugins.modules import linux_tcp


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    for rel, value in {
        "net/ipv4/tcp_fin_timeout": "60", "net/ipv4/tcp_timestamps": "1", "net/ipv4/tcp_tw_reuse": "2",
        "net/ipv4/ip_local_port_range": "32768\t60999", "net/ipv4/ip_local_reserved_ports": "",
        "net/ipv4/ip_unprivileged_port_start": "1024",
    }.items():
        path = tmp_path / "proc/sys" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    (tmp_path / "etc/sysctl.d").mkdir(parents=True)
    (tmp_path / "run").mkdir()
    monkeypatch.setattr(linux_tcp, "LinuxHost", lambda: LinuxHost(str(tmp_path)))
    return tmp_path


def call(capsys, args):
    with patch_module_args(args):
        with pytest.raises(SystemExit):
            linux_tcp.main()
    return json.loads(capsys.readouterr().out)


def test_check_mode_reports_and_writes_nothing(fake_root, capsys):
    out = call(capsys, {"fin_timeout": 30, "_ansible_check_mode": True, "_ansible_diff": True})
    assert out["changed"] is True
    assert out["after"] == {"net.ipv4.tcp_fin_timeout": "30"}
    assert len(out["diff"]) == 2
    assert (fake_root / "proc/sys/net/ipv4/tcp_fin_timeout").read_text() == "60\n"
    assert not (fake_root / "etc/sysctl.d/60-tcpstack-tuning.conf").exists()


def test_apply_returns_documented_keys(fake_root, capsys):
    out = call(capsys, {"port_range": "1024-65535", "tw_reuse": 1})
    for key in ("before", "after", "boot_values", "shadowed", "persist_file", "kernel", "reboot_required"):
        assert key in out
    assert (fake_root / "proc/sys/net/ipv4/ip_local_port_range").read_text() == "1024 65535\n"


@pytest.mark.parametrize("args, option", [
    ({"tw_recycle": 1}, "tw_recycle"),
    ({"port_range": "65535 1024"}, "port_range"),
    ({"reserved_ports": "80,,81"}, "reserved_ports"),
    ({"fin_timeout": 30, "persist_file": "/etc/passwd"}, "persist_file"),
])
def test_validation_errors_fail_naming_the_option(fake_root, capsys, args, option):
    out = call(capsys, args)
    assert out["failed"] is True and out["changed"] is False
    assert out["option"] == option and out["msg"].startswith(option + ": ")
    assert (fake_root / "proc/sys/net/ipv4/tcp_fin_timeout").read_text() == "60\n"


def test_ansible_rejects_a_bad_choice(fake_root, capsys):
    out = call(capsys, {"tw_reuse": 3})
    assert out["failed"] is True and "tw_reuse" in out["msg"]
