"""linux_tcp's nf_conntrack keys (issue 23): conntrack_max (global) and conntrack_time_wait (per network namespace).

run() against LinuxHost rooted in a temporary tree: validation, the refusals (module not loaded, a global key
from inside a network namespace), all or nothing, check mode and diff, the boot warning.  The real kernel is
exercised by tests/integration/test_linux_tcp_conntrack_keys.py.
"""

from __future__ import annotations

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_host import HostError
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import (
    CONNTRACK_MAX,
    CONNTRACK_TIME_WAIT,
    validate_options,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_sysctl_d import loaded_at_boot
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_tuning import run
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError

from tests.support.fake_linux import OURS, fake_host, params

FIN = "net.ipv4.tcp_fin_timeout"


def _proc(root, key):
    return root / "proc/sys" / key.replace(".", "/")


def _conntrack(root, initial=True, loadable=False, loaded=True):
    """Give the tree nf_conntrack's keys: the machine's initial namespace (net.nf_conntrack_max shown) or another."""
    for key, value in ((CONNTRACK_MAX, "262144"), (CONNTRACK_TIME_WAIT, "120")):
        path = _proc(root, key)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    if initial:
        _proc(root, "net.nf_conntrack_max").write_text("262144\n")
    if loaded:
        (root / "sys/module/nf_conntrack/parameters").mkdir(parents=True)
        if loadable:
            (root / "sys/module/nf_conntrack/initstate").write_text("live\n")


def _without_conntrack(root):
    for key in (CONNTRACK_MAX, CONNTRACK_TIME_WAIT, "net.nf_conntrack_max"):
        path = _proc(root, key)
        if path.exists():
            path.unlink()


@pytest.fixture
def tree(tmp_path):
    host = fake_host(tmp_path)
    return tmp_path, host


# ---------------------------------------------------------------- validation (no host)
@pytest.mark.parametrize("option,value,valid", [
    ("conntrack_max", 0, "from 1 to 2147483647"),
    ("conntrack_max", "2147483648", "from 1 to 2147483647"),
    ("conntrack_max", "lots", "from 1 to 2147483647"),
    ("conntrack_max", -1, "from 1 to 2147483647"),
    ("conntrack_time_wait", 0, "from 1 to 86400"),
    ("conntrack_time_wait", 86401, "from 1 to 86400"),
    ("conntrack_time_wait", "2m", "from 1 to 86400"),
])
def test_bad_values_name_the_option_the_value_and_what_is_valid(option, value, valid):
    with pytest.raises(ValidationError) as err:
        validate_options({option: value})
    assert err.value.option == option
    assert str(err.value).startswith("%s: %r" % (option, value)) or str(value) in str(err.value)
    assert valid in str(err.value)


def test_good_values_are_managed_in_apply_order_after_the_tcp_keys():
    desired = validate_options({"conntrack_time_wait": "60", "conntrack_max": 1048576, "fin_timeout": 30})
    assert list(desired.items()) == [(FIN, 30), (CONNTRACK_MAX, 1048576), (CONNTRACK_TIME_WAIT, 60)]


# ---------------------------------------------------------------- on the machine's initial namespace
def test_set_both_then_idempotent_and_persisted(tree):
    root, host = tree
    _conntrack(root)
    result, warnings = run(params(conntrack_max=524288, conntrack_time_wait=60), host)
    assert result["changed"] and warnings == []
    assert host.read_sysctl(CONNTRACK_MAX) == "524288" and host.read_sysctl(CONNTRACK_TIME_WAIT) == "60"
    text = host.read_file(OURS)
    assert "%s = 524288\n" % CONNTRACK_MAX in text and "%s = 60\n" % CONNTRACK_TIME_WAIT in text
    assert result["boot_values"][CONNTRACK_TIME_WAIT]["systemd"]["file"] == OURS
    again, warnings = run(params(conntrack_max="524288", conntrack_time_wait="60"), host)
    assert not again["changed"] and warnings == []


def test_check_mode_writes_nothing_and_the_diff_shows_the_keys(tree):
    root, host = tree
    _conntrack(root)
    result, _w = run(params(conntrack_time_wait=30), host, check_mode=True, want_diff=True)
    assert result["changed"]
    assert host.read_sysctl(CONNTRACK_TIME_WAIT) == "120" and host.read_file(OURS) is None
    runtime, persisted = result["diff"]
    assert runtime["before"] == "%s = 120\n" % CONNTRACK_TIME_WAIT
    assert runtime["after"] == "%s = 30\n" % CONNTRACK_TIME_WAIT
    assert "%s = 30" % CONNTRACK_TIME_WAIT in persisted["after"]


def test_a_short_time_wait_warns_about_its_trade_off(tree):
    root, host = tree
    _conntrack(root)
    _result, warnings = run(params(conntrack_time_wait=30), host)
    assert any("shorter than the 60 s" in w for w in warnings)


def test_a_refused_write_of_the_global_key_rolls_back_and_says_why(tree, monkeypatch):
    """Whatever the namespace check says, the kernel's EACCES is an error that explains the key is global."""
    root, host = tree
    _conntrack(root)
    real_write = host.write_sysctl

    def write(key, value):
        if key == CONNTRACK_MAX:
            raise HostError("writing %r to %s failed: Permission denied" % (value, key))
        real_write(key, value)
    monkeypatch.setattr(host, "write_sysctl", write)
    with pytest.raises(HostError) as err:
        run(params(fin_timeout=30, conntrack_max=1000, conntrack_time_wait=60), host)
    message = str(err.value)
    assert "global to the machine" in message and "conntrack_max on the host" in message
    assert "restored net.ipv4.tcp_fin_timeout" in message
    assert host.read_sysctl(FIN) == "60" and host.read_sysctl(CONNTRACK_TIME_WAIT) == "120"
    assert host.read_file(OURS) is None


# ---------------------------------------------------------------- inside another network namespace
def test_the_global_key_is_refused_inside_a_namespace_and_nothing_changes(tree):
    root, host = tree
    _conntrack(root, initial=False)
    with pytest.raises(ValidationError) as err:
        run(params(fin_timeout=30, conntrack_max=1000, conntrack_time_wait=60), host)
    assert err.value.option == "conntrack_max"
    message = str(err.value)
    assert "'1000'" in message and "global to the machine" in message and "on the host" in message
    assert "Nothing was changed" in message
    assert host.read_sysctl(FIN) == "60" and host.read_sysctl(CONNTRACK_TIME_WAIT) == "120"
    assert host.read_sysctl(CONNTRACK_MAX) == "262144" and host.read_file(OURS) is None


def test_the_global_key_at_its_current_value_is_left_out_with_a_warning(tree):
    root, host = tree
    _conntrack(root, initial=False)
    result, warnings = run(params(conntrack_max=262144, conntrack_time_wait=60), host)
    assert result["changed"] and host.read_sysctl(CONNTRACK_TIME_WAIT) == "60"
    assert list(result["after"]) == [CONNTRACK_TIME_WAIT]
    assert CONNTRACK_MAX not in host.read_file(OURS)
    assert any("global to the machine" in w and "neither written nor persisted" in w for w in warnings)


def test_the_per_namespace_key_alone_is_set_inside_a_namespace(tree):
    root, host = tree
    _conntrack(root, initial=False)
    result, warnings = run(params(conntrack_time_wait=90), host)
    assert result["changed"] and warnings == [] and host.read_sysctl(CONNTRACK_TIME_WAIT) == "90"


# ---------------------------------------------------------------- nf_conntrack not loaded
@pytest.mark.parametrize("option", ["conntrack_max", "conntrack_time_wait"])
def test_a_key_of_an_unloaded_module_is_refused_and_nothing_changes(tree, option):
    root, host = tree
    _without_conntrack(root)
    with pytest.raises(ValidationError) as err:
        run(params(fin_timeout=30, **{option: 100}), host)
    assert err.value.option == option
    message = str(err.value)
    assert "nf_conntrack is loaded" in message and "not loaded on this host" in message
    assert "never loads kernel modules" in message and "modules-load.d" in message and "Nothing was changed" in message
    assert host.read_sysctl(FIN) == "60" and host.read_file(OURS) is None


def test_a_loaded_module_whose_key_this_namespace_hides_is_refused_saying_so(tree):
    root, host = tree
    _conntrack(root)
    _proc(root, CONNTRACK_TIME_WAIT).unlink()
    with pytest.raises(ValidationError) as err:
        run(params(conntrack_time_wait=60), host)
    assert "does not show" in str(err.value) and "although nf_conntrack is loaded" in str(err.value)


def test_hosts_without_conntrack_are_unaffected_when_the_keys_are_not_asked_for(tree):
    root, host = tree
    _without_conntrack(root)
    result, warnings = run(params(fin_timeout=30), host)
    assert result["changed"] and warnings == [] and "conntrack" not in host.read_file(OURS)


# ---------------------------------------------------------------- boot
def test_a_loadable_module_that_nothing_loads_at_boot_is_warned_about(tree):
    root, host = tree
    _conntrack(root, loadable=True)
    _result, warnings = run(params(conntrack_time_wait=60), host)
    assert len(warnings) == 1 and "conntrack_time_wait" in warnings[0]
    assert "no modules-load.d file loads" in warnings[0] and "/etc/modules-load.d/" in warnings[0]


@pytest.mark.parametrize("listing", ["nf_conntrack\n", "# NAT\nnf-nat\n", "iptable_nat\n"])
def test_a_module_listed_for_boot_or_built_in_is_not_warned_about(tree, listing):
    root, host = tree
    _conntrack(root, loadable=True)
    (root / "etc/modules-load.d").mkdir(parents=True)
    (root / "etc/modules-load.d/nat.conf").write_text(listing)
    _result, warnings = run(params(conntrack_time_wait=60), host)
    assert warnings == []


def test_no_boot_warning_without_persist(tree):
    root, host = tree
    _conntrack(root, loadable=True)
    _result, warnings = run(params(conntrack_time_wait=60, persist=False), host)
    assert not any("modules-load.d" in w for w in warnings)


def test_loaded_at_boot_reads_modules_load_d_like_modprobe():
    assert loaded_at_boot({"/etc/modules": "# comment\nnf-conntrack option=1\n"}, "nf_conntrack")
    assert loaded_at_boot({"/etc/modules-load.d/a.conf": "xt_MASQUERADE\n"}, "nf_conntrack")
    assert not loaded_at_boot({"/etc/modules-load.d/a.conf": "#nf_conntrack\n; nf_nat\nbr_netfilter\n"},
                              "nf_conntrack")
    assert not loaded_at_boot({}, "nf_conntrack")


# ---------------------------------------------------------------- kernel defaults and state: absent
def test_the_global_key_is_never_probed_in_a_new_namespace(tree, monkeypatch):
    """A new network namespace shows the machine's nf_conntrack_max, not a default."""
    root, host = tree
    _conntrack(root)
    probed = []
    monkeypatch.setattr(host, "fresh_defaults", lambda keys: probed.append(list(keys)))
    run(params(conntrack_max=524288, conntrack_time_wait=60), host)
    assert probed == [[CONNTRACK_TIME_WAIT]]
    run(params(state="absent"), host)
    assert probed[-1] == [CONNTRACK_TIME_WAIT]


def test_absent_restores_the_time_wait_default_and_leaves_the_global_key(tree):
    root, host = tree
    _conntrack(root)
    run(params(conntrack_max=524288, conntrack_time_wait=60), host)
    result, warnings = run(params(state="absent"), host)
    assert result["changed"] and host.read_file(OURS) is None
    assert host.read_sysctl(CONNTRACK_TIME_WAIT) == "120"
    assert host.read_sysctl(CONNTRACK_MAX) == "524288"
    assert any("kernel default of %s is unknown" % CONNTRACK_MAX in w for w in warnings)
