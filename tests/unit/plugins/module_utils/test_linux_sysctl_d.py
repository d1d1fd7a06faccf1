from __future__ import annotations

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_sysctl_d import (
    applied_files,
    boot_values,
    check_persist_path,
    dotted,
    hidden_by,
    overrides,
    parse,
    predict,
    render,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import PortRange

FIN = "net.ipv4.tcp_fin_timeout"
RANGE = "net.ipv4.ip_local_port_range"
OURS = "/etc/sysctl.d/60-tcpstack-tuning.conf"


def test_parse_syntax():
    text = "# c\n; c\n\n  net.ipv4.tcp_fin_timeout =  30 \n-net/ipv4/tcp_tw_reuse=1\nbogus line\n=5\nnet.core.somaxconn = \n"
    got = parse(text, "/x.conf")
    assert [(a.key, a.value, a.line, a.ignore_failure) for a in got] == [
        (FIN, "30", 4, False),
        ("net.ipv4.tcp_tw_reuse", "1", 5, True),
        ("net.core.somaxconn", "", 8, False),
    ]


def test_dotted_swaps_when_slash_comes_first():
    assert dotted("net/ipv4/conf/eth0.100/rp_filter") == "net.ipv4.conf.eth0/100.rp_filter"
    assert dotted("net.ipv4.tcp_fin_timeout") == FIN


def test_order_across_directories_and_hiding():
    layout = {
        "/usr/lib/sysctl.d/50-a.conf": "",
        "/etc/sysctl.d/50-a.conf": "",
        "/run/sysctl.d/10-b.conf": "",
        "/usr/local/lib/sysctl.d/99-c.conf": "",
        "/lib/sysctl.d/70-d.conf": "",
        "/etc/sysctl.d/readme": "",
        "/etc/sysctl.conf": "",
    }
    assert applied_files(layout) == [
        "/run/sysctl.d/10-b.conf", "/etc/sysctl.d/50-a.conf", "/lib/sysctl.d/70-d.conf",
        "/usr/local/lib/sysctl.d/99-c.conf",
    ]
    assert applied_files(layout, "procps")[-1] == "/etc/sysctl.conf"
    assert hidden_by(layout, "/usr/lib/sysctl.d/50-a.conf") == "/etc/sysctl.d/50-a.conf"
    assert hidden_by(layout, "/etc/sysctl.d/50-a.conf") is None


def test_last_assignment_wins_and_sysctl_conf_only_for_procps():
    layout = {
        OURS: "%s = 30\n" % FIN,
        "/etc/sysctl.d/99-zz.conf": "%s = 33\n" % FIN,
        "/etc/sysctl.conf": "%s = 44\n" % FIN,
    }
    assert predict(layout, [FIN], "systemd")[FIN].value == "33"
    assert predict(layout, [FIN], "procps")[FIN].value == "44"
    values = boot_values(layout, [FIN, RANGE], {FIN: "60", RANGE: "32768 60999"})
    assert values[FIN]["systemd"] == {"value": "33", "file": "/etc/sysctl.d/99-zz.conf", "line": 1}
    assert values[RANGE]["procps"] == {"value": "32768 60999", "file": None, "line": None}


def test_values_the_kernel_rejects():
    layout = {OURS: "%s = 1024 65535\n" % RANGE, "/etc/sysctl.d/99-zz.conf": "%s = 9 1\n" % RANGE}
    # procps writes every line: the rejected one leaves ours
    assert predict(layout, [RANGE], "procps")[RANGE].path == OURS
    # systemd-sysctl writes only the last assignment of a key: rejected, the key keeps its boot value
    assert RANGE not in predict(layout, [RANGE], "systemd")


def test_init_specific_syntax():
    layout = {
        "/etc/sysctl.d/10-a.conf": "%s = 5\n- %s = 9\n" % (FIN, FIN),
        "/etc/sysctl.d/.hidden.conf": "%s = 2000 3001\n" % RANGE,
    }
    # systemd strips the blank after '-', procps keeps it in the key (no such key); systemd skips dot files
    assert predict(layout, [FIN, RANGE], "systemd") == {FIN: predict(layout, [FIN], "systemd")[FIN]}
    assert predict(layout, [FIN], "systemd")[FIN].value == "9"
    assert predict(layout, [FIN, RANGE], "procps")[FIN].value == "5"
    assert predict(layout, [RANGE], "procps")[RANGE].value == "2000 3001"
    # a systemd "-key" line without '=' cancels the earlier assignment; procps ignores it
    layout = {"/etc/sysctl.d/10-a.conf": "%s = 5\n-%s\n" % (FIN, FIN)}
    assert predict(layout, [FIN], "systemd") == {}
    assert predict(layout, [FIN], "procps")[FIN].value == "5"


def test_overrides_conflicting_and_same_value():
    layout = {
        OURS: "%s = 30\n%s = 1024 65535\n" % (FIN, RANGE),
        "/etc/sysctl.d/99-zz.conf": "%s = 10\n" % FIN,
        "/etc/sysctl.conf": "%s =\t1024\t65535\n" % RANGE,
    }
    found = overrides(layout, OURS, {FIN: "30", RANGE: "1024 65535"})
    summary = sorted((o.key, o.init, o.path, o.line, o.conflicting) for o in found)
    assert summary == [
        (RANGE, "procps", "/etc/sysctl.conf", 1, False),
        (FIN, "procps", "/etc/sysctl.d/99-zz.conf", 1, True),
        (FIN, "systemd", "/etc/sysctl.d/99-zz.conf", 1, True),
    ]
    assert "99-zz.conf line 1" in [o for o in found if o.conflicting][0].describe()
    # the desired values as their meanings (linux_settings.validate_options()) give the same, shown as text
    typed = overrides(layout, OURS, {FIN: 30, RANGE: PortRange(1024, 65535)})
    assert sorted((o.key, o.init, o.path, o.line, o.conflicting) for o in typed) == summary
    assert [o.ours for o in typed if o.key == RANGE] == ["1024 65535"]
    assert "(we set 1024 65535)" in [o for o in typed if o.key == RANGE][0].describe()


@pytest.mark.parametrize("path, ok", [
    ("/etc/sysctl.d/60-tcpstack-tuning.conf", True),
    ("/usr/lib/sysctl.d/60-x.conf", True),
    ("/lib/sysctl.d/60-x.conf", True),
    ("/usr/local/lib/sysctl.d/60-x.conf", True),
    ("/run/sysctl.d/60-x.conf", False),
    ("/etc/sysctl.d/../passwd.conf", False),
    ("/etc/sysctl.d/sub/60-x.conf", False),
    ("/etc/sysctl.d/60-x", False),
    ("/etc/sysctl.d/.conf", False),
    ("/etc/sysctl.d/.hidden.conf", False),
    ("/etc/sysctl.d/60 x.conf", False),
    ("/etc/sysctl.d/60-x.conf\n", False),
    ("/etc/sysctl.d//60-x.conf", False),
    ("etc/sysctl.d/60-x.conf", False),
    ("/etc/sysctl.conf", False),
    ("/tmp/60-x.conf", False),
])
def test_persist_path(path, ok):
    assert (check_persist_path(path) is None) is ok


def test_render_round_trips():
    text = render({FIN: "30", RANGE: "1024 65535"}, "managed\n\nby us")
    assert text.startswith("# managed\n#\n# by us\n")
    assert [(a.key, a.value) for a in parse(text)] == [(FIN, "30"), (RANGE, "1024 65535")]
