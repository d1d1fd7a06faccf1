from __future__ import annotations

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import (
    CONTEXT_KEYS,
    KERNEL_INT_RULES,
    LINUX_TCP_KEYS,
    PORT_RANGE,
    REPORTED_SETTINGS,
    RESERVED_PORTS,
    SETTINGS,
    canonical,
    kernel_value,
    same,
    text_of,
    texts,
    validate_for_host,
    validate_options,
    value_of,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import PortRange
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError

HOST = {
    "net.ipv4.ip_unprivileged_port_start": "1024",
    "net.ipv4.tcp_timestamps": "1",
    "net.ipv4.tcp_tw_reuse": "2",
    PORT_RANGE: "32768\t60999",
    RESERVED_PORTS: "",
}


def test_only_given_options_are_managed_in_apply_order():
    desired = validate_options({"tw_reuse": 1, "port_range": "1024-65535", "fin_timeout": "30",
                                "reserved_ports": [9000, "8080"], "timestamps": 1, "somaxconn": None})
    assert list(texts(desired).items()) == [
        ("net.ipv4.tcp_timestamps", "1"),
        ("net.ipv4.tcp_fin_timeout", "30"),
        (RESERVED_PORTS, "8080,9000"),
        (PORT_RANGE, "1024 65535"),
        ("net.ipv4.tcp_tw_reuse", "1"),
    ]
    # parsed once: each value is its meaning, which flows as it is to the plan and the writers
    assert list(desired.items()) == [
        ("net.ipv4.tcp_timestamps", 1),
        ("net.ipv4.tcp_fin_timeout", 30),
        (RESERVED_PORTS, ((8080, 8080), (9000, 9000))),
        (PORT_RANGE, PortRange(1024, 65535)),
        ("net.ipv4.tcp_tw_reuse", 1),
    ]
    assert isinstance(desired[PORT_RANGE], PortRange)
    assert validate_options({}) == {}


def test_value_of_reads_host_text_and_keeps_a_meaning():
    assert value_of(PORT_RANGE, "32768\t60999") == PortRange(32768, 60999)
    assert value_of(PORT_RANGE, PortRange(1024, 65535)) == (1024, 65535)
    assert value_of(RESERVED_PORTS, "0-5,8080") == ((0, 5), (8080, 8080))  # the kernel's list may hold port 0
    assert value_of("net.ipv4.tcp_fin_timeout", " 30\n") == 30
    assert value_of("net.unknown", "a  b") == "a b"
    with pytest.raises(ValueError):
        value_of(PORT_RANGE, "1 2 3")
    assert text_of(PORT_RANGE, PortRange(1024, 65535)) == "1024 65535"
    assert text_of(RESERVED_PORTS, ()) == ""
    assert text_of(PORT_RANGE, "1024\t65535") == "1024 65535"
    assert same(PORT_RANGE, "1024\t65535", PortRange(1024, 65535))
    assert not same(RESERVED_PORTS, "8080", ((8080, 8081),))


@pytest.mark.parametrize("params, option, fragment", [
    ({"fin_timeout": 0}, "fin_timeout", "from 1 to 86400"),
    ({"fin_timeout": "30s"}, "fin_timeout", "from 1 to 86400"),
    ({"fin_timeout": True}, "fin_timeout", "from 1 to 86400"),
    ({"tw_reuse": 3}, "tw_reuse", "one of 0, 1, 2"),
    ({"tw_reuse_delay": 0}, "tw_reuse_delay", "from 1 to 60000"),
    ({"tw_reuse_delay": 60001}, "tw_reuse_delay", "from 1 to 60000"),
    ({"somaxconn": -1}, "somaxconn", "from 1 to 2147483647"),
    ({"max_syn_backlog": 2 ** 31}, "max_syn_backlog", "from 1 to 2147483647"),
    ({"port_range": "60000 1024"}, "port_range", "must not be above"),
    ({"reserved_ports": "8080;rm"}, "reserved_ports", "comma-separated"),
    ({"tw_recycle": 0}, "tw_recycle", "removed in Linux 4.12"),
])
def test_option_errors(params, option, fragment):
    with pytest.raises(ValidationError) as err:
        validate_options(params)
    assert err.value.option == option
    assert str(err.value).startswith(option + ": ")
    assert fragment in str(err.value)


def test_canonical_and_same():
    assert canonical(PORT_RANGE, "32768\t60999") == "32768 60999"
    assert canonical(RESERVED_PORTS, "40010-40019,40500,40020-40021") == "40010-40021,40500"
    assert canonical("net.ipv4.tcp_fin_timeout", " 30\n") == "30"
    assert same(PORT_RANGE, "1024  65535", "1024-65535")
    assert not same("net.ipv4.tcp_fin_timeout", "30", "31")
    assert same("net.unknown", "a  b", "a b")
    with pytest.raises(ValueError):
        canonical("net.ipv4.tcp_fin_timeout", "thirty")


def test_low_port_below_unprivileged_start_is_refused():
    host = dict(HOST, **{"net.ipv4.ip_unprivileged_port_start": "2000"})
    with pytest.raises(ValidationError) as err:
        validate_for_host({PORT_RANGE: PortRange(1024, 65535)}, host, [])
    assert "at least net.ipv4.ip_unprivileged_port_start (2000)" in str(err.value)


def test_same_parity_warns():
    _desired, warnings = validate_for_host({PORT_RANGE: PortRange(1024, 65534)}, HOST, [])
    assert any("same parity" in w for w in warnings)
    _desired, warnings = validate_for_host({PORT_RANGE: PortRange(1024, 65535)}, HOST, [])
    assert warnings == []


def test_tw_reuse_needs_timestamps():
    host = dict(HOST, **{"net.ipv4.tcp_timestamps": "0"})
    with pytest.raises(ValidationError) as err:
        validate_for_host({"net.ipv4.tcp_tw_reuse": 1}, host, [])
    assert "tcp_timestamps is 0" in str(err.value)
    # turning timestamps on in the same call makes it valid
    validate_for_host({"net.ipv4.tcp_timestamps": 1, "net.ipv4.tcp_tw_reuse": 1}, host, [])
    # turning timestamps off under an unmanaged tw_reuse=1 warns
    host = dict(HOST, **{"net.ipv4.tcp_tw_reuse": "1"})
    _d, warnings = validate_for_host({"net.ipv4.tcp_timestamps": 0}, host, [])
    assert any("inactive" in w for w in warnings)


def test_missing_kernel_key_fails_clearly():
    with pytest.raises(ValidationError) as err:
        validate_for_host({"net.ipv4.tcp_tw_reuse_delay": 500}, HOST, ["net.ipv4.tcp_tw_reuse_delay"],
                          kernel="6.1.0")
    assert str(err.value).startswith("tw_reuse_delay: ")
    assert "this kernel (6.1.0) has no net.ipv4.tcp_tw_reuse_delay (it was added in Linux 6.14)" in str(err.value)


def test_listening_ports_warn_or_are_reserved():
    desired = {PORT_RANGE: PortRange(1024, 65535)}
    _d, warnings = validate_for_host(desired, dict(HOST, **{RESERVED_PORTS: "8080"}), [], listening_ports={22, 8080, 9090})
    assert any("9090" in w and "8080" not in w for w in warnings)
    reserved, warnings = validate_for_host(desired, dict(HOST, **{RESERVED_PORTS: "8080"}), [],
                                           listening_ports={22, 8080, 9090}, reserve_listening=True)
    assert text_of(RESERVED_PORTS, reserved[RESERVED_PORTS]) == "8080,9090" and warnings == []
    # keys come out in apply order: reserved ports before the range
    assert list(reserved) == [RESERVED_PORTS, PORT_RANGE]


def test_reserve_listening_without_listeners_still_manages_the_key():
    desired, _w = validate_for_host({}, dict(HOST, **{RESERVED_PORTS: "9000-9001"}), [], (), True)
    assert texts(desired) == {RESERVED_PORTS: "9000-9001"}


@pytest.mark.parametrize("key, text, previous, expected", [
    ("net.ipv4.tcp_fin_timeout", "5 # five", None, "5"),  # the rest after a blank is ignored
    ("net.ipv4.tcp_fin_timeout", "5#", None, None),
    ("net.ipv4.tcp_fin_timeout", "010", None, "8"),  # C syntax: octal
    ("net.ipv4.tcp_fin_timeout", "0x10", None, "16"),
    ("net.ipv4.tcp_fin_timeout", "08", None, None),
    # the kernel copies at most 21 characters of a number and refuses one that fills them (checked by writing
    # both to /proc/sys/net/ipv4/tcp_fin_timeout in a new network namespace: 24, then EINVAL)
    ("net.ipv4.tcp_fin_timeout", "0" * 18 + "30", None, "24"),
    ("net.ipv4.tcp_fin_timeout", "0" * 19 + "30", None, None),
    ("net.ipv4.tcp_fin_timeout", "0" * 5000 + "1", None, None),
    ("net.ipv4.tcp_fin_timeout", "", None, None),
    ("net.ipv4.tcp_tw_reuse", "3", None, None),
    ("net.ipv4.tcp_tw_reuse", "-1", None, None),
    ("net.ipv4.tcp_max_syn_backlog", "-1", None, "-1"),
    (PORT_RANGE, "2000 3001 ; c", None, "2000 3001"),
    (PORT_RANGE, "02000 03001", None, "1024 1537"),
    (PORT_RANGE, "1024-65000", None, None),  # our option accepts LOW-HIGH, the kernel does not
    (PORT_RANGE, "1000 2000", None, None),  # below ip_unprivileged_port_start
    (PORT_RANGE, "3000 2000", None, None),
    (PORT_RANGE, "2000", "1024 65535", "2000 65535"),  # one value changes only the low end
    (RESERVED_PORTS, "040010", None, "16392"),
    (RESERVED_PORTS, "40010-40019,", None, "40010-40019"),
    (RESERVED_PORTS, "", None, ""),
    (RESERVED_PORTS, "40010 - 40019", None, None),
    (RESERVED_PORTS, "40010-40019,\t40500", None, None),
    (RESERVED_PORTS, "70000", None, None),
])
def test_kernel_value_reads_like_the_kernel(key, text, previous, expected):
    assert kernel_value(key, text, previous) == expected


def test_kernel_rules_follow_each_keys_proc_handler():
    """The rules derived from SETTINGS are the kernel's (net/ipv4/sysctl_net_ipv4.c, net/core/sysctl_net_core.c)."""
    int_max = 2147483647
    assert KERNEL_INT_RULES == {
        "net.ipv4.tcp_timestamps": (0, 2, False),  # proc_dou8vec_minmax
        "net.ipv4.tcp_tw_reuse": (0, 2, False),  # proc_dou8vec_minmax
        "net.ipv4.tcp_tw_reuse_delay": (1, 60000, False),  # proc_douintvec_minmax
        "net.ipv4.tcp_fin_timeout": (-int_max // 1000, int_max // 1000, True),  # proc_dointvec_jiffies
        "net.core.somaxconn": (0, int_max, True),  # proc_dointvec_minmax, extra1 = 0
        "net.ipv4.tcp_max_syn_backlog": (-int_max - 1, int_max, True),  # proc_dointvec
        # net/netfilter/nf_conntrack_standalone.c, nf_conntrack_proto_tcp.c
        "net.netfilter.nf_conntrack_max": (-int_max - 1, int_max, True),  # proc_dointvec
        "net.netfilter.nf_conntrack_tcp_timeout_time_wait": (-int_max // 1000, int_max // 1000, True),  # jiffies
    }


def test_key_lists_derive_from_the_settings_table():
    assert LINUX_TCP_KEYS == tuple(s.key for s in SETTINGS) + ("net.ipv4.ip_unprivileged_port_start",)
    assert set(CONTEXT_KEYS) <= set(LINUX_TCP_KEYS)
    reported = dict(REPORTED_SETTINGS)
    assert all(reported[s.option] == s.key for s in SETTINGS if s.module is None)
    assert not any(s.option in reported for s in SETTINGS if s.module is not None)  # the nat section's
    assert reported["unprivileged_port_start"] == "net.ipv4.ip_unprivileged_port_start"
    assert reported["max_tw_buckets"] == "net.ipv4.tcp_max_tw_buckets"
    assert all(s.key in KERNEL_INT_RULES for s in SETTINGS if s.kind == "int")
