"""_windows_options: every validation rule of win_tcp and win_port_usage_info at its boundaries, check_build, and
the modules' DOCUMENTATION against the option tables (WIN_TCP_OPTIONS, INFO_OPTIONS), as sanity does for Linux."""

from __future__ import annotations

import copy
import importlib

import pytest
import yaml

from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import _windows_commands as c
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import _windows_options as o

IP4, IP6 = o.IpVersion.IPV4, o.IpVersion.IPV6
TCP, UDP = o.Protocol.TCP, o.Protocol.UDP
TWD = o.RegName.TIME_WAIT_DELAY


def err(args):
    with pytest.raises(ValidationError) as info:
        o.validate_win_tcp(args)
    return info.value


class TestValidation:
    def test_defaults(self):
        d = o.validate_win_tcp({})
        assert d == o.Desired()
        assert d.targets == ((IP4, TCP), (IP6, TCP))

    @pytest.mark.parametrize("value", [2, 300, "30", " 120 "])
    def test_time_wait_ok(self, value):
        assert o.validate_win_tcp({"time_wait_delay": value}).time_wait_delay == int(value)

    @pytest.mark.parametrize("value", [1, 0, 301, -5, "abc", 30.5, True, "3O", [30]])
    def test_time_wait_bad(self, value):
        e = err({"time_wait_delay": value})
        assert e.option == "time_wait_delay"
        assert "time_wait_delay: %r is not valid" % (value,) in str(e)
        assert "from 2 to 300" in str(e)

    @pytest.mark.parametrize("value", [5000, 65534, "10000"])
    def test_max_user_port_ok(self, value):
        assert o.validate_win_tcp({"max_user_port": value}).max_user_port == int(value)

    @pytest.mark.parametrize("value", [4999, 65535, 0, "x", False])
    def test_max_user_port_bad(self, value):
        e = err({"max_user_port": value})
        assert e.option == "max_user_port" and "from 5000 to 65534" in str(e)

    @pytest.mark.parametrize("value,expected", [
        ("10000 65535", (10000, 55536)), ("10000-65535", (10000, 55536)), ([10000, 65535], (10000, 55536)),
        ("1025\t1279", (1025, 255)), ("1025-1279", (1025, 255)), ([65281, 65535], (65281, 255)),
        (["49152", "65535"], (49152, 16384)),
    ])
    def test_port_range_ok(self, value, expected):
        assert o.validate_win_tcp({"port_range": value}).port_range == expected

    def test_port_range_start_below_1025(self):
        e = err({"port_range": "1024 65535"})
        assert e.option == "port_range" and "below 1025" in str(e) and "'1024 65535'" in str(e)

    def test_port_range_too_few_ports(self):
        e = err({"port_range": [1025, 1278]})
        assert e.option == "port_range" and "fewer than 255 ports" in str(e) and "254 ports" in str(e)
        e = err({"port_range": "65282-65535"})
        assert "fewer than 255" in str(e)

    @pytest.mark.parametrize("value", ["10000 70000", "65535 10000", "abc", 5, [1, 2, 3], "10000-", {"a": 1}])
    def test_port_range_malformed(self, value):
        e = err({"port_range": value})
        assert e.option == "port_range"

    def test_netsh_end_rule_by_constructor(self):
        with pytest.raises(TypeError):
            c.SetRange(IP4, TCP, 65281, 256)  # 65281 + 256 - 1 = 65536: "The parameter is incorrect."
        c.SetRange(IP4, TCP, 65281, 255)

    @pytest.mark.parametrize("value,expected", [
        (None, (TCP,)), (["udp"], (UDP,)), (["udp", "tcp", "tcp"], (TCP, UDP)), ("tcp,udp", (TCP, UDP)), (["TCP"], (TCP,)),
    ])
    def test_protocols(self, value, expected):
        assert o.validate_win_tcp({"protocols": value}).protocols == expected

    @pytest.mark.parametrize("value", [[], ["sctp"], "tcp;udp", 1, [None], ""])
    def test_protocols_bad(self, value):
        assert err({"protocols": value}).option == "protocols"

    @pytest.mark.parametrize("value,expected", [(["ipv6"], (IP6,)), (["ipv6", "ipv4"], (IP4, IP6))])
    def test_ip_versions(self, value, expected):
        assert o.validate_win_tcp({"ip_versions": value}).ip_versions == expected

    @pytest.mark.parametrize("value", [[], ["ipv5"], 4])
    def test_ip_versions_bad(self, value):
        assert err({"ip_versions": value}).option == "ip_versions"

    @pytest.mark.parametrize("value", ["gone", True, "Present"])
    def test_state_bad(self, value):
        assert err({"state": value}).option == "state"

    def test_unknown_option(self):
        e = err({"tw_reuse": 1})
        assert e.option == "tw_reuse" and "not an option" in str(e)

    @pytest.mark.parametrize("build,value,ok", [(7601, 30, True), (7601, 29, False), (7601, 2, False),
                                                (9200, 29, False), (9600, 29, True), (9600, 2, True),
                                                (20348, 2, True)])
    def test_legacy_minimum(self, build, value, ok):
        desired = o.validate_win_tcp({"time_wait_delay": value})
        if ok:
            o.check_build(desired, build)
        else:
            with pytest.raises(ValidationError) as info:
                o.check_build(desired, build)
            assert info.value.option == "time_wait_delay"
            assert "from 30 to 300" in str(info.value) and "build %d" % build in str(info.value)

    def test_legacy_minimum_unknown_build(self):
        with pytest.raises(o.WinTcpError, match="build could not be read"):
            o.check_build(o.validate_win_tcp({"time_wait_delay": 10}), None)
        o.check_build(o.validate_win_tcp({"time_wait_delay": 30}), None)

    def test_info_options(self):
        assert o.validate_port_usage_info({}) == o.InfoOptions()
        assert o.validate_port_usage_info({"top": "3", "event_hours": 1}).top == 3
        for args in ({"top": 0}, {"top": 1001}, {"event_hours": 0}, {"event_hours": 8761}, {"event_hours": "x"},
                     {"bogus": 1}, {"protocols": ["tcp"]}):
            with pytest.raises(ValidationError):
                o.validate_port_usage_info(args)


def test_int_subclasses_become_plain_ints():
    """Ansible 2.19 hands action plugins tagged int subclasses; scripts get plain ints."""

    class Tagged(int):
        pass

    desired = o.validate_win_tcp({"time_wait_delay": Tagged(30), "max_user_port": Tagged(6000),
                                  "port_range": [Tagged(10000), Tagged(65535)]})
    assert type(desired.time_wait_delay) is int and type(desired.max_user_port) is int  # noqa: E721  pylint: disable=unidiomatic-typecheck
    assert all(type(v) is int for v in desired.port_range)  # noqa: E721  pylint: disable=unidiomatic-typecheck
    c.SetDword(TWD, desired.time_wait_delay)
    with pytest.raises(TypeError):
        c.SetDword(TWD, Tagged(30))


# ------------------------------------------------------------------ the modules' DOCUMENTATION against the tables
SPEC_FIELDS = ("type", "elements", "choices", "default", "required")


def _doc(kind, name):
    """The DOCUMENTATION of plugins/<kind>/<name>.py (a module, or a doc fragment's ModuleDocFragment), as YAML."""
    found = importlib.import_module("ansible_collections.tcpstack.tuning.plugins.%s.%s" % (kind, name))
    return yaml.safe_load((found.ModuleDocFragment if kind == "doc_fragments" else found).DOCUMENTATION)


def documented_options(module):
    """The ``options`` of plugins/modules/<module>.py's DOCUMENTATION with its tcpstack.tuning doc fragments merged
    in as Ansible merges them (the module's own keys over the fragment's)."""
    doc = _doc("modules", module)
    options = {}
    for fragment in doc.get("extends_documentation_fragment") or ():
        assert fragment.startswith("tcpstack.tuning."), fragment
        for name, spec in (_doc("doc_fragments", fragment.split(".")[-1]).get("options") or {}).items():
            options[name] = dict(spec)
    for name, spec in doc["options"].items():
        options[name] = dict(options.get(name, {}), **spec)
    return options


def doc_mismatches(documented, table):
    """What ansible-test sanity's validate-modules would say for an action plugin's options: (option, field,
    documented, declared) for every option missing on one side and every field that differs."""
    out = [(name, "option", name in documented, name in table)
           for name in sorted(set(documented) ^ set(table))]
    for name in sorted(set(documented) & set(table)):
        for field in SPEC_FIELDS:
            doc, spec = documented[name].get(field), table[name].get(field)
            if field == "required":
                doc, spec = bool(doc), bool(spec)
            if doc != spec:
                out.append((name, field, doc, spec))
    return out


@pytest.mark.parametrize("module, table", [("win_tcp", o.WIN_TCP_OPTIONS), ("win_port_usage_info", o.INFO_OPTIONS)])
def test_documentation_matches_the_options(module, table):
    assert doc_mismatches(documented_options(module), table) == []


def test_documentation_check_finds_each_kind_of_mismatch():
    documented = copy.deepcopy(documented_options("win_tcp"))
    documented["protocols"]["default"] = ["udp"]
    documented["state"]["choices"] = ["present"]
    documented["time_wait_delay"]["type"] = "str"
    documented["port_range"]["required"] = True
    del documented["max_user_port"]
    documented["extra"] = {"type": "int"}
    assert doc_mismatches(documented, o.WIN_TCP_OPTIONS) == [
        ("extra", "option", True, False), ("max_user_port", "option", False, True),
        ("port_range", "required", True, False), ("protocols", "default", ["udp"], ["tcp"]),
        ("state", "choices", ["present"], ["present", "absent"]), ("time_wait_delay", "type", "str", "int")]


def test_the_table_is_what_validation_accepts():
    """Every choice of the table validates; its defaults are Desired's and InfoOptions'."""
    defaults = {name: spec["default"] for name, spec in o.WIN_TCP_OPTIONS.items() if "default" in spec}
    assert o.validate_win_tcp(defaults) == o.Desired()
    for name in ("protocols", "ip_versions"):
        for choice in o.WIN_TCP_OPTIONS[name]["choices"]:
            assert [m.value for m in getattr(o.validate_win_tcp({name: [choice]}), name)] == [choice]
    info = {name: spec["default"] for name, spec in o.INFO_OPTIONS.items()}
    assert o.validate_port_usage_info(info) == o.InfoOptions()
