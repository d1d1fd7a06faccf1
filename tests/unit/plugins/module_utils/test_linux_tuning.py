"""run() against LinuxHost rooted in a temporary tree: the plan/apply/verify logic without root.

The real kernel is exercised by tests/integration; here /proc/sys is plain files.
"""

from __future__ import annotations

import os

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import HostError
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import (
    PORT_RANGE,
    RESERVED_PORTS,
    validate_options,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_tuning import (
    HostState,
    Options,
    TuningError,
    apply,
    plan_linux_tcp,
    read,
    result,
    run,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import PortRange
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError

from tests.support.fake_linux import DEFAULTS, OURS, fake_host, params


@pytest.fixture
def host(tmp_path):
    return fake_host(tmp_path)


def sysctl(host, key):
    return host.read_sysctl(key)


def test_apply_then_idempotent(host):
    result, warnings = run(params(fin_timeout=30, port_range=[1024, 65535], tw_reuse=1), host)
    assert result["changed"] and warnings == []
    assert sysctl(host, "net.ipv4.ip_local_port_range") == "1024 65535"
    text = host.read_file(OURS)
    assert "net.ipv4.tcp_fin_timeout = 30\n" in text and "somaxconn" not in text
    assert oct(os.stat(host._p(OURS)).st_mode & 0o777) == "0o644"
    assert result["boot_values"]["net.ipv4.tcp_tw_reuse"]["systemd"]["file"] == OURS
    inode = os.stat(host._p(OURS)).st_ino
    again, _w = run(params(fin_timeout="30", port_range="1024\t65535", tw_reuse=1), host)
    assert not again["changed"]
    assert os.stat(host._p(OURS)).st_ino == inode


def test_check_mode_writes_nothing_and_diff_shows_both(host):
    result, _w = run(params(somaxconn=8192), host, check_mode=True, want_diff=True)
    assert result["changed"]
    assert sysctl(host, "net.core.somaxconn") == "4096"
    assert host.read_file(OURS) is None
    runtime, persisted = result["diff"]
    assert runtime["before"] == "net.core.somaxconn = 4096\n" and runtime["after"] == "net.core.somaxconn = 8192\n"
    assert persisted["after_header"] == OURS and "net.core.somaxconn = 8192" in persisted["after"]


def test_separate_calls_keep_each_others_keys_in_the_file(host):
    run(params(fin_timeout=30), host)
    run(params(somaxconn=8192), host)
    text = host.read_file(OURS)
    assert "tcp_fin_timeout = 30" in text and "somaxconn = 8192" in text


def test_failure_rolls_back_runtime_and_keeps_file(host, monkeypatch):
    run(params(fin_timeout=30), host)
    before = host.read_file(OURS)
    real_write = host.write_sysctl

    def write(key, value):  # somaxconn is written after the others: they must be rolled back
        if key == "net.core.somaxconn":
            raise HostError("writing %r to %s failed: Read-only file system" % (value, key))
        real_write(key, value)
    monkeypatch.setattr(host, "write_sysctl", write)
    with pytest.raises(HostError) as err:
        run(params(fin_timeout=20, port_range="1024 65535", somaxconn=8192), host)
    assert "restored net.ipv4.tcp_fin_timeout, net.ipv4.ip_local_port_range" in str(err.value)
    assert sysctl(host, "net.ipv4.tcp_fin_timeout") == "30"
    assert sysctl(host, "net.ipv4.ip_local_port_range") == "32768\t60999"
    assert host.read_file(OURS) == before


def test_file_write_failure_rolls_back_runtime(host, monkeypatch):
    def broken(*_a, **_k):
        raise HostError("writing the file failed: No space left on device")
    monkeypatch.setattr(host, "write_file_atomic", broken)
    with pytest.raises(HostError) as err:
        run(params(fin_timeout=30, tw_reuse=1), host)
    assert "restored net.ipv4.tcp_fin_timeout, net.ipv4.tcp_tw_reuse" in str(err.value)
    assert sysctl(host, "net.ipv4.tcp_fin_timeout") == "60" and sysctl(host, "net.ipv4.tcp_tw_reuse") == "2"


def test_shadowed_fails_before_changing_anything_or_warns(host):
    later = host._p("/etc/sysctl.d/99-zz.conf")
    with open(later, "w") as handle:
        handle.write("# hand made\nnet.ipv4.tcp_fin_timeout = 10\n")
    with pytest.raises(TuningError) as err:
        run(params(fin_timeout=30), host)
    assert "/etc/sysctl.d/99-zz.conf line 2" in str(err.value)
    assert sysctl(host, "net.ipv4.tcp_fin_timeout") == "60" and host.read_file(OURS) is None
    result, warnings = run(params(fin_timeout=30, on_shadowed="warn"), host)
    assert result["changed"] and any("99-zz.conf line 2" in w for w in warnings)
    assert result["boot_values"]["net.ipv4.tcp_fin_timeout"]["systemd"]["value"] == "10"


def test_hidden_persist_file_is_reported(host):
    with open(host._p("/etc/sysctl.d/60-x.conf"), "w") as handle:
        handle.write("")
    with pytest.raises(TuningError) as err:
        run(params(fin_timeout=30, persist_file="/usr/lib/sysctl.d/60-x.conf"), host)
    assert "hides it" in str(err.value)


def test_absent_restores_boot_values(host):
    run(params(fin_timeout=30, somaxconn=8192), host)
    with open(host._p("/usr/lib/sysctl.d/50-vendor.conf"), "w") as handle:
        handle.write("net.core.somaxconn = 1024\n")
    result, _w = run(params(state="absent"), host, want_diff=True)
    assert result["changed"] and host.read_file(OURS) is None
    assert sysctl(host, "net.ipv4.tcp_fin_timeout") == "60"  # static default (no netns probe on a test root)
    assert sysctl(host, "net.core.somaxconn") == "1024"  # what the vendor file sets at boot
    again, _w = run(params(state="absent"), host)
    assert not again["changed"]


def test_persist_false_warns_about_the_next_boot(host):
    with open(host._p("/etc/sysctl.d/10-old.conf"), "w") as handle:
        handle.write("net.ipv4.tcp_fin_timeout = 45\n")
    result, warnings = run(params(fin_timeout=30, persist=False), host)
    assert result["persist_file"] is None and result["changed"]
    assert any("until the next boot" in w for w in warnings)
    assert host.read_file(OURS) is None


@pytest.mark.parametrize("bad", [
    dict(persist_file="/etc/sysctl.d/../x.conf"),
    dict(persist_file="/run/sysctl.d/60-x.conf"),
    dict(port_range="1 2", fin_timeout=30),
    dict(tw_recycle=1),
])
def test_bad_input_changes_nothing(host, bad):
    snapshot = {k: sysctl(host, k.replace("/", ".")) for k in DEFAULTS}
    with pytest.raises(ValidationError):
        run(params(**bad), host)
    assert snapshot == {k: sysctl(host, k.replace("/", ".")) for k in DEFAULTS}
    assert os.listdir(host._p("/etc/sysctl.d")) == []


def test_unreadable_sysctl_is_a_clear_error(host):
    target = host._p("/proc/sys/net/core/somaxconn")
    os.unlink(target)
    os.mkdir(target)
    with pytest.raises(HostError) as err:
        run(params(somaxconn=8192), host)
    assert "reading net.core.somaxconn failed" in str(err.value)


def test_key_missing_from_this_kernel_fails_before_any_change(host):
    # the fake kernel has no net.ipv4.tcp_tw_reuse_delay, like Linux before 6.14
    with pytest.raises(ValidationError) as err:
        run(params(fin_timeout=30, tw_reuse_delay=500), host)
    assert "has no net.ipv4.tcp_tw_reuse_delay (it was added in Linux 6.14)" in str(err.value)
    assert sysctl(host, "net.ipv4.tcp_fin_timeout") == "60" and host.read_file(OURS) is None


def test_values_already_set_by_meaning_are_not_rewritten(host):
    with open(host._p("/proc/sys/net/ipv4/ip_local_reserved_ports"), "w") as handle:
        handle.write("40010-40021,40500\n")
    result, _w = run(params(reserved_ports="40500,40010-40019,40020-40021", persist=False), host)
    assert not result["changed"]


def test_missing_sysctl_d_directory_is_created(host):
    result, _w = run(params(fin_timeout=30, persist_file="/usr/local/lib/sysctl.d/60-x.conf"), host)
    assert result["changed"] and "tcp_fin_timeout = 30" in host.read_file("/usr/local/lib/sysctl.d/60-x.conf")


def test_merged_usr_lib_is_one_directory(host, tmp_path):
    os.symlink("usr/lib", str(tmp_path / "lib"))  # Debian 12: /lib -> usr/lib
    first, _w = run(params(fin_timeout=30, persist_file="/lib/sysctl.d/60-x.conf"), host)
    assert first["persist_file"] == "/usr/lib/sysctl.d/60-x.conf"
    again, _w = run(params(fin_timeout=30, persist_file="/lib/sysctl.d/60-x.conf"), host)
    assert not again["changed"]
    gone, _w = run(params(state="absent", persist_file="/lib/sysctl.d/60-x.conf"), host)
    assert gone["changed"] and sysctl(host, "net.ipv4.tcp_fin_timeout") == "60"


# ---------------------------------------------------------------- read -> HostState -> plan_linux_tcp (pure) -> apply
def _counting(host, monkeypatch):
    """Count the calls of each host read (LinuxHost methods), by name and first argument."""
    calls = []
    for name in ("read_sysctl", "kernel_release", "listening_ports", "read_layout", "own_file", "fresh_defaults"):
        real = getattr(host, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            calls.append((_name, args[0] if args and isinstance(args[0], str) else None))
            return _real(*args, **kwargs)
        monkeypatch.setattr(host, name, counted)
    return calls


def test_every_host_read_happens_once(host, monkeypatch):
    calls = _counting(host, monkeypatch)
    run(params(fin_timeout=30, port_range=[1024, 65535], reserve_listening_ports=True), host)
    assert calls.count(("kernel_release", None)) == 1
    assert [c[0] for c in calls].count("read_layout") == 1
    assert [c[0] for c in calls].count("listening_ports") == 1
    assert [c[0] for c in calls].count("fresh_defaults") == 1
    assert [c[0] for c in calls].count("own_file") == 1
    # each key once before the apply, and each written key once more, when apply() reads it back
    sysctl_reads = [c[1] for c in calls if c[0] == "read_sysctl"]
    written = ["net.ipv4.tcp_fin_timeout", PORT_RANGE]  # the reserved ports (no listener here) stay as they are
    assert {key: sysctl_reads.count(key) for key in set(sysctl_reads)} == dict(
        {key: 1 for key in set(sysctl_reads)}, **{key: 2 for key in written})


def _state(**kw):
    runtime = {"net.ipv4.tcp_fin_timeout": "60", PORT_RANGE: "32768\t60999", RESERVED_PORTS: "",
               "net.ipv4.tcp_timestamps": "1", "net.ipv4.tcp_tw_reuse": "2",
               "net.ipv4.ip_unprivileged_port_start": "1024"}
    base = dict(runtime=runtime, listening=(), kernel="6.1.0", layout={}, layout_notes=(), file_text=None,
                file_refused=None, defaults=None)
    base.update(kw)
    return HostState(**base)


def test_plan_is_pure_and_the_port_range_flows_as_a_port_range():
    desired = validate_options({"port_range": "1024-65535", "fin_timeout": 60})
    tuning = plan_linux_tcp(desired, _state(), Options(OURS, False, "fail"))
    assert [c.key for c in tuning.plan.changes] == [PORT_RANGE]  # fin_timeout 60 is already so
    change = tuning.plan.changes[0]
    assert change.after == PortRange(1024, 65535) and isinstance(change.after, PortRange)
    assert change.before == "32768 60999"
    assert tuning.after == {"net.ipv4.tcp_fin_timeout": "60", PORT_RANGE: "1024 65535"}  # shown as text
    assert "net.ipv4.ip_local_port_range = 1024 65535\n" in tuning.plan.file_after  # written as text
    assert tuning.layout[OURS] == tuning.plan.file_after
    # the same desired values against a host that has them: nothing to change
    runtime = dict(_state().runtime, **{PORT_RANGE: "1024\t65535"})
    again = plan_linux_tcp(desired, _state(runtime=runtime, file_text=tuning.plan.file_after),
                           Options(OURS, False, "fail"))
    assert not again.plan.changed


def test_plan_refuses_a_file_that_is_not_ours_after_the_host_checks():
    desired = validate_options({"port_range": "1500 65535"})
    low = dict(_state().runtime, **{"net.ipv4.ip_unprivileged_port_start": "2000"})
    state = _state(runtime=low, file_refused="is not ours")
    with pytest.raises(ValidationError) as err:
        plan_linux_tcp(desired, state, Options(OURS, False, "fail"))
    assert err.value.option == "port_range"
    with pytest.raises(ValidationError) as err:
        plan_linux_tcp(desired, _state(file_refused="is not ours"), Options(OURS, False, "fail"))
    assert err.value.option == "persist_file" and "is not ours" in str(err.value)


def test_apply_writes_the_port_range_as_text(host):
    desired = validate_options({"port_range": [1024, 65535]})
    options = Options(None, False, "fail")
    state = read(host, desired, options)
    tuning = plan_linux_tcp(desired, state, options)
    apply(host, tuning.plan, state.runtime)
    assert sysctl(host, PORT_RANGE) == "1024 65535"
    assert result(tuning, state, False)["after"] == {PORT_RANGE: "1024 65535"}
