"""windows_tcp: validation, parsing (English and German netsh), planning and script building.

Every script the plugins can send is parsed with a real PowerShell grammar
(tree-sitter-powershell) and checked statement by statement against the
command set of docs/windows_commands.md.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.tcpstack.tuning.plugins.module_utils import windows_tcp as w
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError

IP4, IP6 = w.IpVersion.IPV4, w.IpVersion.IPV6
TCP, UDP = w.Protocol.TCP, w.Protocol.UDP
TWD, MUP = w.RegName.TIME_WAIT_DELAY, w.RegName.MAX_USER_PORT


# ------------------------------------------------------------------ output fixtures (docs/windows_commands.md)
def dyn_en(start, num, proto="tcp"):
    return "\n".join(["", "Protocol %s Dynamic Port Range" % proto, "---------------------------------",
                      "Start Port      : %d" % start, "Number of Ports : %d" % num, ""])


def dyn_de(start, num, proto="tcp"):
    return "\n".join(["", "Protokoll %s Dynamischer Portbereich" % proto, "---------------------------------",
                      "Startport        : %d" % start, "Anzahl der Ports : %d" % num, ""])


def excl(rows, de=False):
    out = ["", ("Portausschlussbereiche für Protokoll tcp" if de else "Protocol tcp Port Exclusion Ranges"), "",
           ("Startport    Endport" if de else "Start Port    End Port"), "----------    --------"]
    out += ["%10d  %10d%s" % (a, b, "     *" if admin else "") for a, b, admin in rows]
    out += ["", ("* - Verwaltete Portausschlüsse." if de else "* - Administered port exclusions."), ""]
    return "\n".join(out)


def reg_params(values):
    lines = ["", "HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters"]
    lines += ["    NV Hostname    REG_SZ    web01", "    Domain    REG_SZ    ", "    EnableDHCP    REG_DWORD    0x1"]
    for name, (rtype, data) in values.items():
        lines.append("    %s    %s    %s" % (name, rtype, data))
    lines += ["", "HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters\\Adapters",
              "HKEY_LOCAL_MACHINE\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters\\Interfaces"]
    return "\n".join(lines)


def reg_build(build):
    return "\nHKEY_LOCAL_MACHINE\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\n    CurrentBuildNumber    REG_SZ    %d\n" % build


def section(word, body, rc=0):
    return "@@tcpstack:%s@@\n%s\n@@tcpstack:rc:%s@@\n" % (word, body, rc)


def read_output(build=20348, registry=None, ranges=None, excluded=None, targets=((IP4, TCP), (IP6, TCP)), de=False,
                prefix="", newline="\n"):
    ranges = ranges or {}
    excluded = excluded or {}
    out = "" if prefix else section("build", reg_build(build))
    out += section(prefix + "params", reg_params(registry or {}))
    for ip, proto in targets:
        start, num = ranges.get((ip, proto), (49152, 16384))
        out += section("%srange-%s-%s" % (prefix, ip.value, proto.value),
                       (dyn_de if de else dyn_en)(start, num, proto.value))
        if not prefix:
            out += section("excluded-%s-%s" % (ip.value, proto.value), excl(excluded.get((ip, proto), ()), de))
    return out.replace("\n", newline)


# ------------------------------------------------------------------ parsing
class TestParsing:
    def test_dynamic_range_english(self):
        assert w.parse_dynamic_range(dyn_en(49152, 16384).splitlines()) == (49152, 16384)

    def test_dynamic_range_german_labels_by_position(self):
        assert w.parse_dynamic_range(dyn_de(10000, 55536).splitlines()) == (10000, 55536)

    def test_dynamic_range_other_languages(self):
        french = ["", "Protocole tcp Plage de ports dynamique", "------", "Port de départ   : 5000",
                  "Nombre de ports  : 60536", ""]
        assert w.parse_dynamic_range(french) == (5000, 60536)
        ipv6_title = ["Protocol tcp Dynamic Port Range IPv6", "---", "Start Port : 1025", "Number of Ports : 255"]
        assert w.parse_dynamic_range(ipv6_title) == (1025, 255)

    def test_dynamic_range_outside_netsh_minimum_is_read(self):
        assert w.parse_dynamic_range(dyn_en(1024, 64511).splitlines()) == (1024, 64511)

    def test_dynamic_range_crlf(self):
        assert w.parse_dynamic_range(dyn_en(49152, 16384).replace("\n", "\r\n").splitlines()) == (49152, 16384)

    @settings(max_examples=300, deadline=None)
    @given(start=st.integers(0, 65535), num=st.integers(0, 65535), de=st.booleans(), crlf=st.booleans(),
           label=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc", "Nd")), max_size=20))
    def test_dynamic_range_any_labels(self, start, num, de, crlf, label):
        text = (dyn_de if de else dyn_en)(start, num).replace("Start Port", label.strip() or "x")
        if crlf:
            text = text.replace("\n", "\r\n")
        assert w.parse_dynamic_range(text.splitlines()) == (start, num)

    @pytest.mark.parametrize("text", ["", "Protocol tcp Dynamic Port Range\n-----\nStart Port : 1\n",
                                      "The parameter is incorrect."])
    def test_dynamic_range_unreadable(self, text):
        with pytest.raises(w.WinTcpError, match="dynamic port range"):
            w.parse_dynamic_range(text.splitlines())

    @pytest.mark.parametrize("de", [False, True])
    def test_excluded(self, de):
        rows = ((5357, 5357, False), (50000, 50059, True))
        assert w.parse_excluded_ranges(excl(rows, de).splitlines()) == rows
        assert w.parse_excluded_ranges(excl((), de).splitlines()) == ()

    def test_reg_query(self):
        values = w.parse_reg_query(reg_params({"TcpTimedWaitDelay": ("REG_DWORD", "0x1e"),
                                               "MaxUserPort": ("REG_SZ", "65534")}).splitlines())
        assert values["TcpTimedWaitDelay"] == w.RegValue("REG_DWORD", "0x1e")
        assert values["TcpTimedWaitDelay"].dword == 30
        assert values["MaxUserPort"].dword is None
        assert values["NV Hostname"].data == "web01"
        assert values["Domain"].data == ""
        assert "Adapters" not in str(values)

    def test_build(self):
        sections = w.split_sections(section("build", reg_build(7601)))
        assert w.parse_build(sections) == 7601
        assert w.parse_build(w.split_sections(section("build", "ERROR", 1))) is None
        assert w.parse_build({}) is None

    def test_split_sections(self):
        text = "noise\r\n" + section("a-b", "x\ny").replace("\n", "\r\n") + "@@tcpstack:c@@\nz\n@@tcpstack:rc:@@\n"
        sections = w.split_sections(text)
        assert sections["a-b"].lines == ["x", "y"] and sections["a-b"].ok
        assert sections["c"].rc == "" and not sections["c"].ok

    @pytest.mark.parametrize("de", [False, True])
    @pytest.mark.parametrize("newline", ["\n", "\r\n"])
    def test_read(self, de, newline):
        targets = ((IP4, TCP), (IP6, UDP))
        out = read_output(build=17763, registry={"TcpTimedWaitDelay": ("REG_DWORD", "0x3c")},
                          ranges={(IP4, TCP): (1024, 64511)}, excluded={(IP6, UDP): ((50000, 50100, True),)},
                          targets=targets, de=de, newline=newline)
        state = w.parse_read(out, targets)
        assert state.build == 17763
        assert state.registry["TcpTimedWaitDelay"].dword == 60
        assert state.ranges == {(IP4, TCP): (1024, 64511), (IP6, UDP): (49152, 16384)}
        assert state.excluded == {(IP4, TCP): (), (IP6, UDP): ((50000, 50100, True),)}

    def test_read_failed_section(self):
        out = read_output().replace(section("params", reg_params({})), section("params", "", 1))
        with pytest.raises(w.WinTcpError, match="reading params failed"):
            w.parse_read(out, ((IP4, TCP), (IP6, TCP)))

    def test_read_truncated(self):
        with pytest.raises(w.WinTcpError, match="no 'range-ipv6-tcp' section"):
            w.parse_read(read_output(targets=((IP4, TCP),)), ((IP4, TCP), (IP6, TCP)))


# ------------------------------------------------------------------ validation
def err(args):
    with pytest.raises(ValidationError) as info:
        w.validate_win_tcp(args)
    return info.value


class TestValidation:
    def test_defaults(self):
        d = w.validate_win_tcp({})
        assert d == w.Desired()
        assert d.targets == ((IP4, TCP), (IP6, TCP))

    @pytest.mark.parametrize("value", [2, 300, "30", " 120 "])
    def test_time_wait_ok(self, value):
        assert w.validate_win_tcp({"time_wait_delay": value}).time_wait_delay == int(value)

    @pytest.mark.parametrize("value", [1, 0, 301, -5, "abc", 30.5, True, "3O", [30]])
    def test_time_wait_bad(self, value):
        e = err({"time_wait_delay": value})
        assert e.option == "time_wait_delay"
        assert "time_wait_delay: %r is not valid" % (value,) in str(e)
        assert "from 2 to 300" in str(e)

    @pytest.mark.parametrize("value", [5000, 65534, "10000"])
    def test_max_user_port_ok(self, value):
        assert w.validate_win_tcp({"max_user_port": value}).max_user_port == int(value)

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
        assert w.validate_win_tcp({"port_range": value}).port_range == expected

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
            w.SetRange(IP4, TCP, 65281, 256)  # 65281 + 256 - 1 = 65536: "The parameter is incorrect."
        w.SetRange(IP4, TCP, 65281, 255)

    @pytest.mark.parametrize("value,expected", [
        (None, (TCP,)), (["udp"], (UDP,)), (["udp", "tcp", "tcp"], (TCP, UDP)), ("tcp,udp", (TCP, UDP)), (["TCP"], (TCP,)),
    ])
    def test_protocols(self, value, expected):
        assert w.validate_win_tcp({"protocols": value}).protocols == expected

    @pytest.mark.parametrize("value", [[], ["sctp"], "tcp;udp", 1, [None], ""])
    def test_protocols_bad(self, value):
        assert err({"protocols": value}).option == "protocols"

    @pytest.mark.parametrize("value,expected", [(["ipv6"], (IP6,)), (["ipv6", "ipv4"], (IP4, IP6))])
    def test_ip_versions(self, value, expected):
        assert w.validate_win_tcp({"ip_versions": value}).ip_versions == expected

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
        desired = w.validate_win_tcp({"time_wait_delay": value})
        if ok:
            w.validate_for_host(desired, build)
        else:
            with pytest.raises(ValidationError) as info:
                w.validate_for_host(desired, build)
            assert info.value.option == "time_wait_delay"
            assert "from 30 to 300" in str(info.value) and "build %d" % build in str(info.value)

    def test_legacy_minimum_unknown_build(self):
        with pytest.raises(w.WinTcpError, match="build could not be read"):
            w.validate_for_host(w.validate_win_tcp({"time_wait_delay": 10}), None)
        w.validate_for_host(w.validate_win_tcp({"time_wait_delay": 30}), None)

    def test_info_options(self):
        assert w.validate_port_usage_info({}) == w.InfoOptions()
        assert w.validate_port_usage_info({"top": "3", "event_hours": 1}).top == 3
        for args in ({"top": 0}, {"top": 1001}, {"event_hours": 0}, {"event_hours": 8761}, {"event_hours": "x"},
                     {"bogus": 1}, {"protocols": ["tcp"]}):
            with pytest.raises(ValidationError):
                w.validate_port_usage_info(args)


# ------------------------------------------------------------------ planning
def state_of(build=20348, registry=None, ranges=None, excluded=None, targets=((IP4, TCP), (IP6, TCP))):
    return w.parse_read(read_output(build, registry, ranges, excluded, targets), targets)


class TestPlanning:
    def test_cold(self):
        desired = w.validate_win_tcp({"time_wait_delay": 30, "port_range": "10000 65535"})
        plan = w.plan_win_tcp(desired, state_of())
        assert plan.changed and plan.reboot_required
        assert [w._key(k) for k in plan.keys()] == ["TcpTimedWaitDelay", "ipv4 tcp dynamic port range",
                                                    "ipv6 tcp dynamic port range"]
        assert w.plan_actions(plan) == (w.SetDword(TWD, 30), w.SetRange(IP4, TCP, 10000, 55536),
                                        w.SetRange(IP6, TCP, 10000, 55536))

    def test_converged(self):
        desired = w.validate_win_tcp({"time_wait_delay": 30, "max_user_port": 65534, "port_range": "10000 65535"})
        state = state_of(registry={"TcpTimedWaitDelay": ("REG_DWORD", "0x1e"), "MaxUserPort": ("REG_DWORD", "0xfffe")},
                         ranges={(IP4, TCP): (10000, 55536), (IP6, TCP): (10000, 55536)})
        plan = w.plan_win_tcp(desired, state)
        assert not plan.changed and not plan.reboot_required and w.plan_actions(plan) == ()
        assert plan.warnings == (w.MAX_USER_PORT_WARNING,)

    def test_range_only_no_reboot(self):
        plan = w.plan_win_tcp(w.validate_win_tcp({"port_range": [20000, 40000], "ip_versions": ["ipv4"]}), state_of())
        assert plan.changed and not plan.reboot_required
        assert w.plan_actions(plan) == (w.SetRange(IP4, TCP, 20000, 20001),)

    def test_wrong_type_corrected(self):
        state = state_of(registry={"TcpTimedWaitDelay": ("REG_SZ", "30")})
        plan = w.plan_win_tcp(w.validate_win_tcp({"time_wait_delay": 30}), state)
        assert plan.changed and plan.reboot_required
        assert plan.changes[0].before == {"type": "REG_SZ", "data": "30"}
        assert w.plan_actions(plan) == (w.SetDword(TWD, 30),)
        assert any("REG_SZ" in m for m in plan.warnings)

    def test_absent(self):
        state = state_of(registry={"TcpTimedWaitDelay": ("REG_DWORD", "0x1e")}, ranges={(IP4, TCP): (10000, 55536)})
        plan = w.plan_win_tcp(w.validate_win_tcp({"state": "absent"}), state)
        assert w.plan_actions(plan) == (w.DeleteValue(TWD), w.SetRange(IP4, TCP, 49152, 16384))
        assert plan.reboot_required

    def test_absent_converged(self):
        plan = w.plan_win_tcp(w.validate_win_tcp({"state": "absent", "time_wait_delay": 5}), state_of())
        assert not plan.changed
        assert plan.warnings == ("state=absent restores Windows' defaults; time_wait_delay ignored",)

    def test_excluded_overlap_warning(self):
        state = state_of(excluded={(IP4, TCP): ((5357, 5357, False), (50000, 50059, True))})
        plan = w.plan_win_tcp(w.validate_win_tcp({"port_range": "10000 65535"}), state)
        warning = [m for m in plan.warnings if "excluded" in m]
        assert len(warning) == 1 and "50000-50059" in warning[0] and "5357" not in warning[0]
        assert "ipv4 tcp" in warning[0]

    def test_no_overlap_no_warning(self):
        state = state_of(excluded={(IP4, TCP): ((5357, 5357, False),)})
        assert w.plan_win_tcp(w.validate_win_tcp({"port_range": "10000 65535"}), state).warnings == ()

    def test_legacy_host_refused_before_planning(self):
        with pytest.raises(ValidationError, match="build 7601"):
            w.plan_win_tcp(w.validate_win_tcp({"time_wait_delay": 10}), state_of(build=7601))

    def test_host_range_below_minimum_is_read(self):
        state = state_of(ranges={(IP4, TCP): (1024, 64511)})
        plan = w.plan_win_tcp(w.validate_win_tcp({"port_range": "49152 65535", "ip_versions": "ipv4"}), state)
        assert plan.changes[0].before == {"start": 1024, "number": 64511, "end": 65534}

    def test_rollback(self):
        state = state_of(registry={"MaxUserPort": ("REG_DWORD", "0x1388")}, ranges={(IP4, TCP): (1024, 64511)})
        desired = w.validate_win_tcp({"time_wait_delay": 30, "max_user_port": 6000, "port_range": "10000 65535"})
        plan = w.plan_win_tcp(desired, state)
        actions = w.plan_actions(plan)
        undo = w.rollback_actions(plan, actions)
        # the 1024 start cannot be sent back (netsh would refuse it); ipv6 goes back to the default
        assert undo == (w.DeleteValue(TWD), w.SetDword(MUP, 5000), w.SetRange(IP6, TCP, 49152, 16384))

    def test_verify(self):
        desired = w.validate_win_tcp({"time_wait_delay": 30})
        plan = w.plan_win_tcp(desired, state_of())
        wanted = {c.key: c.after for c in plan.changes}
        good = state_of(registry={"TcpTimedWaitDelay": ("REG_DWORD", "0x1e")})
        assert w.verify(plan, wanted, good) == []
        assert w.verify(plan, wanted, state_of()) == [("TcpTimedWaitDelay", "30", "(absent)")]

    def test_nest_and_diff(self):
        values = {TWD: 30, MUP: None, (IP4, TCP): w.range_value((10000, 55536))}
        assert w.nest(values) == {"registry": {"TcpTimedWaitDelay": 30, "MaxUserPort": None},
                                  "dynamic_port_range": {"ipv4": {"tcp": {"start": 10000, "number": 55536, "end": 65535}}}}
        assert w.diff_text(values) == ("TcpTimedWaitDelay = 30\nMaxUserPort = (absent)\n"
                                       "ipv4 tcp dynamic port range = start 10000, 55536 ports (10000-65535)\n")

    @settings(max_examples=200, deadline=None)
    @given(tw=st.one_of(st.none(), st.integers(2, 300)), mup=st.one_of(st.none(), st.integers(5000, 65534)),
           start=st.integers(1025, 65281), data=st.data(), protos=st.sampled_from([["tcp"], ["udp"], ["tcp", "udp"]]),
           ips=st.sampled_from([["ipv4"], ["ipv6"], ["ipv4", "ipv6"]]))
    def test_plan_of_desired_is_empty(self, tw, mup, start, data, protos, ips):
        high = data.draw(st.integers(start + 254, 65535))
        desired = w.validate_win_tcp({"time_wait_delay": tw, "max_user_port": mup, "port_range": [start, high],
                                      "protocols": protos, "ip_versions": ips})
        targets = desired.targets
        registry = {}
        if tw is not None:
            registry["TcpTimedWaitDelay"] = ("REG_DWORD", "0x%x" % tw)
        if mup is not None:
            registry["MaxUserPort"] = ("REG_DWORD", "0x%x" % mup)
        ranges = {t: desired.port_range for t in targets}
        converged = w.parse_read(read_output(registry=registry, ranges=ranges, targets=targets), targets)
        assert not w.plan_win_tcp(desired, converged).changed
        cold = w.parse_read(read_output(targets=targets), targets)
        plan = w.plan_win_tcp(desired, cold)
        for action in w.plan_actions(plan):  # every action is buildable
            w._action_line(action)
        assert plan.reboot_required == (tw is not None or mup is not None)


# ------------------------------------------------------------------ script building
ALLOWED = [
    re.compile(r"\AWrite-Output '@@tcpstack:[a-z0-9-]+@@'\Z"),
    re.compile(r'\AWrite-Output "@@tcpstack:rc:\$LASTEXITCODE@@"\Z'),
    re.compile(r'\AWrite-Output "@@tcpstack:ok:\$\?@@"\Z'),
    re.compile(r"\Areg query 'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion' /v CurrentBuildNumber\Z"),
    re.compile(r"\Areg query 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters'\Z"),
    re.compile(r"\Areg add 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters' /v (TcpTimedWaitDelay|MaxUserPort)"
               r" /t REG_DWORD /d [0-9]+ /f\Z"),
    re.compile(r"\Areg delete 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters' /v (TcpTimedWaitDelay|MaxUserPort) /f\Z"),
    re.compile(r"\Anetsh int ipv[46] show (dynamicportrange|excludedportrange) protocol=(tcp|udp)\Z"),
    re.compile(r"\Anetsh int ipv[46] set dynamicportrange protocol=(tcp|udp) startport=[0-9]+ numberofports=[0-9]+\Z"),
    re.compile(r"\A" + re.escape(w.CONNECTIONS_PIPELINE) + r"\Z"),
    re.compile(r"\A" + re.escape(w.PROCESSES_PIPELINE) + r"\Z"),
    re.compile(r"\Awevtutil qe System '/q:\*\[System\[Provider\[@Name=''Tcpip''\] and \(EventID=4227 or EventID=4231\) and "
               r"TimeCreated\[timediff\(@SystemTime\) <= [0-9]+\]\]\]' /f:xml /rd:true /c:500\Z"),
]

ALL_TARGETS = [tuple(itertools.product(ips, protos)) for ips in ([IP4], [IP6], [IP4, IP6]) for protos in ([TCP], [UDP], [TCP, UDP])]
ALL_ACTIONS = [w.SetDword(TWD, 2), w.SetDword(TWD, 300), w.SetDword(MUP, 65534), w.DeleteValue(TWD), w.DeleteValue(MUP)]
ALL_ACTIONS += [w.SetRange(ip, proto, 1025, 64511) for ip in w.IpVersion for proto in w.Protocol]


def all_scripts():
    """Every shape of script win_tcp and win_port_usage_info can send."""
    scripts = []
    for targets in ALL_TARGETS:
        scripts.append(w.build_read_script(targets))
        scripts.append(w.build_apply_script(tuple(ALL_ACTIONS), targets))
        scripts.append(w.build_apply_script((), targets))
        for hours in (0, 24, w.EVENT_HOURS_MAX):
            scripts.append(w.build_info_script(targets, hours))
    return scripts


def _tree_sitter_parser():
    try:
        import tree_sitter_powershell  # pylint: disable=import-outside-toplevel
        from tree_sitter import Language, Parser  # pylint: disable=import-outside-toplevel
    except ImportError:
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail("CI=true: tree-sitter and tree-sitter-powershell must be installed (requirements-dev.txt)")
        pytest.skip("needs tree-sitter and tree-sitter-powershell")
    return Parser(Language(tree_sitter_powershell.language()))


def grammar_problems(parser, script):
    """ERROR and MISSING nodes of the parse tree, except one known gap of the grammar.

    tree-sitter-powershell 0.26 does not know bare-word arrays in command arguments
    (``-Property A,B``, valid PowerShell): it inserts a MISSING argument separator
    after each comma.  Only that exact case is tolerated.
    """
    source = script.encode("utf-16-le").decode("utf-16-le").encode("utf-8")
    tree = parser.parse(source)
    problems = []

    def walk(node):
        if node.type == "ERROR":
            problems.append(("ERROR", node.start_point, node.text))
        elif node.is_missing:
            at = source[node.start_byte:node.start_byte + 1]
            if not (node.parent is not None and node.parent.type == "command_argument_sep" and at == b","):
                problems.append(("MISSING " + node.type, node.start_point, at))
        for child in node.children:
            walk(child)

    walk(tree.root_node)
    return problems


class TestScripts:
    def test_every_statement_is_in_the_contract(self):
        for script in all_scripts():
            for line in script.splitlines():
                assert any(p.match(line) for p in ALLOWED), line

    def test_sections_are_well_formed(self):
        for script in all_scripts():
            lines = script.splitlines()
            assert len(lines) % 3 == 0
            for i in range(0, len(lines), 3):
                assert lines[i].startswith("Write-Output '@@tcpstack:")
                assert lines[i + 2] in ('Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"', 'Write-Output "@@tcpstack:ok:$?@@"')

    def test_powershell_grammar(self):
        parser = _tree_sitter_parser()
        for script in all_scripts():
            assert grammar_problems(parser, script) == [], script

    def test_grammar_check_catches_errors(self):
        parser = _tree_sitter_parser()
        assert grammar_problems(parser, "Write-Output 'unterminated\n")
        assert grammar_problems(parser, "if (\n")
        assert grammar_problems(parser, "reg add 'HKLM\\x' /d $(\n")

    def test_read_script_exact(self):
        assert w.build_read_script(((IP4, TCP),)) == (
            "Write-Output '@@tcpstack:build@@'\n"
            "reg query 'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion' /v CurrentBuildNumber\n"
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"\n'
            "Write-Output '@@tcpstack:params@@'\n"
            "reg query 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters'\n"
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"\n'
            "Write-Output '@@tcpstack:range-ipv4-tcp@@'\n"
            "netsh int ipv4 show dynamicportrange protocol=tcp\n"
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"\n'
            "Write-Output '@@tcpstack:excluded-ipv4-tcp@@'\n"
            "netsh int ipv4 show excludedportrange protocol=tcp\n"
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"\n')

    def test_apply_script_exact(self):
        script = w.build_apply_script((w.SetDword(TWD, 30), w.DeleteValue(MUP), w.SetRange(IP6, UDP, 10000, 55536)),
                                      ((IP6, UDP),))
        assert script.splitlines()[:9] == [
            "Write-Output '@@tcpstack:apply-0@@'",
            "reg add 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters' /v TcpTimedWaitDelay /t REG_DWORD /d 30 /f",
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"',
            "Write-Output '@@tcpstack:apply-1@@'",
            "reg delete 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters' /v MaxUserPort /f",
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"',
            "Write-Output '@@tcpstack:apply-2@@'",
            "netsh int ipv6 set dynamicportrange protocol=udp startport=10000 numberofports=55536",
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"',
        ]
        assert "verify-params" in script and "verify-range-ipv6-udp" in script and "excluded" not in script

    def test_event_query(self):
        assert w.event_query(24).endswith("<= 86400000]]]")

    @pytest.mark.parametrize("make", [
        lambda: w.SetDword("TcpTimedWaitDelay", 30),
        lambda: w.SetDword(TWD, "30"),
        lambda: w.SetDword(TWD, "30; Remove-Item C:\\"),
        lambda: w.SetDword(TWD, True),
        lambda: w.SetDword(TWD, 30.0),
        lambda: w.SetDword(TWD, -1),
        lambda: w.DeleteValue("MaxUserPort"),
        lambda: w.SetRange("ipv4", TCP, 10000, 1000),
        lambda: w.SetRange(IP4, "tcp", 10000, 1000),
        lambda: w.SetRange(IP4, TCP, "10000", 1000),
        lambda: w.SetRange(IP4, TCP, 1024, 1000),
        lambda: w.SetRange(IP4, TCP, 10000, 254),
        lambda: w.build_read_script((("ipv4", "tcp"),)),
        lambda: w.build_apply_script(("reg add x",), ()),
        lambda: w.build_info_script(((IP4, TCP),), "24"),
        lambda: w.event_query(24.5),
    ])
    def test_builders_take_ints_and_enum_members_only(self, make):
        with pytest.raises(TypeError):
            make()


# ------------------------------------------------------------------ win_port_usage_info parsing
class TestInfoParsing:
    def test_csv(self):
        lines = ['"LocalAddress","LocalPort","RemoteAddress","RemotePort","State","OwningProcess"',
                 '"10.0.0.5","50001","10.0.0.9","443","TimeWait","0"', '"::","135","::","0","Listen","912"']
        rows = w.parse_csv(lines)
        assert rows[0]["State"] == "TimeWait" and rows[1]["LocalPort"] == "135"
        assert w.parse_csv(["", "  "]) == []

    def test_events(self):
        ns = "http://schemas.microsoft.com/win/2004/08/events/event"
        lines = ["<Event xmlns='%s'><System><Provider Name='Tcpip'/><EventID Qualifiers='49152'>4231</EventID>"
                 "<TimeCreated SystemTime='2026-11-24T10:00:00.000Z'/></System></Event>" % ns,
                 "<Event xmlns='%s'><System><Provider Name='Tcpip'/><EventID>4227</EventID>"
                 "<TimeCreated SystemTime='2026-11-24T09:00:00.000Z'/></System></Event>" % ns]
        assert w.parse_events(lines) == [{"id": 4231, "time": "2026-11-24T10:00:00.000Z"},
                                         {"id": 4227, "time": "2026-11-24T09:00:00.000Z"}]
        assert w.parse_events([]) == []
        with pytest.raises(w.WinTcpError):
            w.parse_events(["<Event>"])


def test_int_subclasses_become_plain_ints():
    """Ansible 2.19 hands action plugins tagged int subclasses; scripts get plain ints."""

    class Tagged(int):
        pass

    desired = w.validate_win_tcp({"time_wait_delay": Tagged(30), "max_user_port": Tagged(6000),
                                  "port_range": [Tagged(10000), Tagged(65535)]})
    assert type(desired.time_wait_delay) is int and type(desired.max_user_port) is int  # noqa: E721  pylint: disable=unidiomatic-typecheck
    assert all(type(v) is int for v in desired.port_range)  # noqa: E721  pylint: disable=unidiomatic-typecheck
    w.SetDword(TWD, desired.time_wait_delay)
    with pytest.raises(TypeError):
        w.SetDword(TWD, Tagged(30))


# ------------------------------------------------------------------ win_port_usage_info analysis
INFO_TARGETS = w.InfoOptions().targets
CSV_HEADER = '"LocalAddress","LocalPort","RemoteAddress","RemotePort","State","OwningProcess"'
EVENT = ("<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System><Provider Name='Tcpip'/>"
         "<EventID>%d</EventID><TimeCreated SystemTime='2026-11-24T10:00:0%d.000Z'/></System></Event>")


def info_output(connections=(), events=(), registry=None, ranges=None, excluded=None, de=False, nettcpip=True):
    out = read_output(registry=registry, ranges=ranges, excluded=excluded, targets=INFO_TARGETS, de=de)
    if nettcpip:
        rows = [CSV_HEADER] + ['"%s","%d","%s","%d","%s","%d"' % c for c in connections]
        out += "@@tcpstack:connections@@\n%s\n@@tcpstack:ok:True@@\n" % "\n".join(rows)
    else:
        out += "@@tcpstack:connections@@\n@@tcpstack:ok:False@@\n"
    out += '@@tcpstack:processes@@\n"Id","ProcessName"\n"0","Idle"\n"3100","w3wp"\n@@tcpstack:ok:True@@\n'
    out += section("events", "\n".join(EVENT % (e, i) for i, e in enumerate(events)))
    return out


def analyse(text, **options):
    opts = w.InfoOptions(**options)
    return w.analyse_windows(opts, w.parse_read(text, opts.targets), w.split_sections(text))


class TestAnalysis:
    def test_quiet(self):
        r = analyse(info_output([("0.0.0.0", 135, "0.0.0.0", 0, "Listen", 784),
                                 ("10.0.0.5", 50001, "10.0.0.9", 443, "Established", 3100)]))
        assert r["verdict"] == "ok" and r["recommendations"] == {} and r["ports_held"] == 1
        assert r["processes"] == [{"pid": 3100, "name": "w3wp", "ports_held": 1, "time_wait": 0}]
        assert r["sockets"]["by_state"] == {"Listen": 1, "Established": 1}
        assert r["events"]["4231"] == 0 and r["capacity"]["time_wait_seconds"] == 120

    @pytest.mark.parametrize("de", [False, True])
    def test_exhausted(self, de):
        conns = [("10.0.0.5", p, "10.0.0.9", 443, "TimeWait", 0) for p in range(49152, 49152 + 15000)]
        conns += [("::ffff:10.0.0.5", 1000, "::ffff:10.0.0.7", 80, "Established", 3100)]  # outside the range
        r = analyse(info_output(conns, events=(4231, 4231, 4227), de=de,
                                registry={"TcpTimedWaitDelay": ("REG_DWORD", "0x3c")}), top=1)
        assert r["verdict"] == "critical"
        assert r["ports_held"] == 15000 and r["ports_held_by_family"] == {"ipv4": 15000, "ipv6": 0}
        assert r["destinations"][0]["endpoint"] == "10.0.0.9:443" and len(r["destinations"]) == 1
        assert r["events"]["4231"] == 2 and r["events"]["4227"] == 1
        assert any("logged 2 times" in f for f in r["findings"]) and any("once" in f for f in r["findings"])
        assert r["recommendations"] == {"port_range": "32768 65535", "time_wait_delay": 30}
        assert r["capacity"]["time_wait_seconds"] == 60
        assert w.validate_win_tcp(r["recommendations"])  # recommendations are valid win_tcp options

    def test_excluded_reduce_usable(self):
        r = analyse(info_output(excluded={(IP4, TCP): ((49152, 65535, True),)}))
        assert r["ephemeral"]["usable"] == 0 and r["verdict"] == "critical"

    def test_no_nettcpip(self):
        r = analyse(info_output(nettcpip=False))
        assert r["sockets"] is None and r["verdict"] == "warning"
        assert r["unreadable"][0]["source"] == "Get-NetTCPConnection"

    def test_wrong_type_time_wait(self):
        r = analyse(info_output(registry={"TcpTimedWaitDelay": ("REG_SZ", "30")}))
        assert r["capacity"]["time_wait_seconds"] == 120 and "ignores" in r["notes"][0]


def test_encode_command_is_what_ansible_sends():
    """The winrm connection sends this command line unchanged, and would send the same for the bare script."""
    from ansible.plugins.loader import shell_loader  # pylint: disable=import-outside-toplevel

    shell = shell_loader.get("powershell")
    for script in all_scripts():
        encoded = w.encode_command(script)
        assert encoded == shell._encode_script(script, as_list=False, strict_mode=False, preserve_rc=False)
        assert encoded.startswith(shell._encode_script("", as_list=False, strict_mode=False, preserve_rc=False))
