"""_windows_commands: script building.

Every script the plugins can send is parsed with a real PowerShell grammar
(tree-sitter-powershell) and checked statement by statement against the
command set of docs/windows_commands.md.
"""

from __future__ import annotations

import itertools
import os
import re

import pytest

from ansible_collections.tcpstack.tuning.plugins.plugin_utils import _windows_commands as w
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import EVENT_HOURS_MAX, IpVersion, Protocol, RegName

IP4, IP6 = IpVersion.IPV4, IpVersion.IPV6
TCP, UDP = Protocol.TCP, Protocol.UDP
TWD, MUP = RegName.TIME_WAIT_DELAY, RegName.MAX_USER_PORT
M = "tcpstack-" + "0123456789abcdef" * 2  # a fixed marker, for the scripts compared as text


# ------------------------------------------------------------------ script building
REG, NETSH, WEVTUTIL = (re.escape('& "$env:SystemRoot\\System32\\%s.exe"' % t) for t in ("reg", "netsh", "wevtutil"))
ALLOWED = [
    re.compile(r"\AWrite-Output '@@tcpstack-[0-9a-f]{32}:[a-z0-9-]+@@'\Z"),
    re.compile(r'\AWrite-Output "@@tcpstack-[0-9a-f]{32}:rc:\$LASTEXITCODE@@"\Z'),
    re.compile(r'\AWrite-Output "@@tcpstack-[0-9a-f]{32}:ok:\$\?@@"\Z'),
    re.compile(r"\A" + REG + r" query 'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion' /v CurrentBuildNumber\Z"),
    re.compile(r"\A" + REG + r" query 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters'\Z"),
    re.compile(r"\A" + REG + r" add 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters' /v (TcpTimedWaitDelay|MaxUserPort)"
               r" /t REG_DWORD /d [0-9]+ /f\Z"),
    re.compile(r"\A" + REG + r" delete 'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters' /v (TcpTimedWaitDelay|MaxUserPort) /f\Z"),
    re.compile(r"\A" + NETSH + r" int ipv[46] show (dynamicportrange|excludedportrange) protocol=(tcp|udp)\Z"),
    re.compile(r"\A" + NETSH + r" int ipv[46] set dynamicportrange protocol=(tcp|udp) startport=[0-9]+ numberofports=[0-9]+\Z"),
    re.compile(r"\A" + NETSH + r" int ipv[46] (add|delete) excludedportrange protocol=(tcp|udp) startport=[0-9]+ "
               r"numberofports=[0-9]+ store=persistent\Z"),
    re.compile(r"\A" + re.escape(w.CONNECTIONS_PIPELINE) + r"\Z"),
    re.compile(r"\A" + re.escape(w.PROCESSES_PIPELINE) + r"\Z"),
    re.compile(r"\A" + re.escape(w.SERVICES_PIPELINE) + r"\Z"),
    re.compile(r"\A" + re.escape(w.LISTENERS_PIPELINE) + r"\Z"),
    re.compile(r"\A" + WEVTUTIL + r" qe System '/q:\*\[System\[Provider\[@Name=''Tcpip''\] and \(EventID=4227 or EventID=4231\) and "
               r"TimeCreated\[timediff\(@SystemTime\) <= [0-9]+\]\]\]' /f:xml /rd:true /c:500\Z"),
]

ALL_TARGETS = [tuple(itertools.product(ips, protos)) for ips in ([IP4], [IP6], [IP4, IP6]) for protos in ([TCP], [UDP], [TCP, UDP])]
ALL_ACTIONS = [w.SetDword(TWD, 2), w.SetDword(TWD, 300), w.SetDword(MUP, 65534), w.DeleteValue(TWD), w.DeleteValue(MUP)]
ALL_ACTIONS += [w.SetRange(ip, proto, 1025, 64511) for ip in IpVersion for proto in Protocol]
ALL_ACTIONS += [kind(ip, proto, start, number) for kind in (w.AddExcluded, w.DeleteExcluded) for ip in IpVersion
                for proto in Protocol for start, number in ((1, 1), (50000, 100), (65535, 1), (1, 65535))]


def all_scripts():
    """Every shape of script win_tcp and win_port_usage_info can send."""
    scripts = []
    for targets in ALL_TARGETS:
        scripts.append(w.build_read_script(targets))
        scripts.append(w.build_read_script(targets, listeners=True))
        scripts.append(w.build_apply_script(tuple(ALL_ACTIONS), targets))
        scripts.append(w.build_apply_script((), targets))
        scripts.append(w.build_apply_script(tuple(ALL_ACTIONS), targets, excluded=True))
        for hours in (0, 24, EVENT_HOURS_MAX):
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
            marker = script.marker
            for i in range(0, len(lines), 3):
                assert lines[i].startswith("Write-Output '@@%s:" % marker)
                assert lines[i + 2] in ('Write-Output "@@%s:rc:$LASTEXITCODE@@"' % marker,
                                        'Write-Output "@@%s:ok:$?@@"' % marker)

    def test_every_script_has_its_own_random_marker(self):
        """Issue 21: the marker is 16 random bytes per script, never a constant a host could copy."""
        markers = [script.marker for script in all_scripts()]
        assert len(set(markers)) == len(markers) and all(re.match(r"\Atcpstack-[0-9a-f]{32}\Z", m) for m in markers)
        assert "@@tcpstack:" not in "".join(all_scripts())

    @pytest.mark.parametrize("marker", ["tcpstack-x", "@@tcpstack:build@@", "tcpstack-" + "A" * 32, 7,
                                        "tcpstack-" + "0" * 31 + "'"])
    def test_only_a_marker_new_marker_makes_enters_a_script(self, marker):
        with pytest.raises(TypeError):
            w.build_read_script(((IP4, TCP),), marker=marker)

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
        assert w.build_read_script(((IP4, TCP),), marker=M).replace(M, "tcpstack") == (
            "Write-Output '@@tcpstack:build@@'\n"
            '& "$env:SystemRoot\\System32\\reg.exe" query \'HKLM\\SOFTWARE\\Microsoft\\Windows NT\\CurrentVersion\' /v CurrentBuildNumber\n'
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"\n'
            "Write-Output '@@tcpstack:params@@'\n"
            '& "$env:SystemRoot\\System32\\reg.exe" query \'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters\'\n'
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"\n'
            "Write-Output '@@tcpstack:range-ipv4-tcp@@'\n"
            '& "$env:SystemRoot\\System32\\netsh.exe" int ipv4 show dynamicportrange protocol=tcp\n'
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"\n'
            "Write-Output '@@tcpstack:excluded-ipv4-tcp@@'\n"
            '& "$env:SystemRoot\\System32\\netsh.exe" int ipv4 show excludedportrange protocol=tcp\n'
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"\n')

    def test_apply_script_exact(self):
        script = w.build_apply_script((w.SetDword(TWD, 30), w.DeleteValue(MUP), w.SetRange(IP6, UDP, 10000, 55536)),
                                      ((IP6, UDP),), marker=M).replace(M, "tcpstack")
        assert script.splitlines()[:9] == [
            "Write-Output '@@tcpstack:apply-0@@'",
            '& "$env:SystemRoot\\System32\\reg.exe" add \'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters\' '
            "/v TcpTimedWaitDelay /t REG_DWORD /d 30 /f",
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"',
            "Write-Output '@@tcpstack:apply-1@@'",
            '& "$env:SystemRoot\\System32\\reg.exe" delete \'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters\' '
            "/v MaxUserPort /f",
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"',
            "Write-Output '@@tcpstack:apply-2@@'",
            '& "$env:SystemRoot\\System32\\netsh.exe" int ipv6 set dynamicportrange protocol=udp startport=10000 '
            "numberofports=55536",
            'Write-Output "@@tcpstack:rc:$LASTEXITCODE@@"',
        ]
        assert "verify-params" in script and "verify-range-ipv6-udp" in script and "excluded" not in script

    def test_tools_are_called_by_full_path_never_through_path(self):
        """Issue 13 finding 8: no statement names reg, netsh or wevtutil bare (resolved through the host's PATH)."""
        for script in all_scripts():
            for line in script.splitlines():
                first = line.split(" ", 1)[0].lower().removesuffix(".exe")
                assert first not in ("reg", "netsh", "wevtutil"), line
                if "System32" in line:
                    assert line.startswith('& "$env:SystemRoot\\System32\\'), line

    def test_excluded_range_statements(self):
        add = w.AddExcluded(IP6, TCP, 50000, 100)
        assert w.describe(add) == "netsh int ipv6 add excludedportrange protocol=tcp startport=50000 numberofports=100 store=persistent"
        assert w.statement(w.DeleteExcluded(IP4, TCP, 50000, 1)) == (
            '& "$env:SystemRoot\\System32\\netsh.exe" int ipv4 delete excludedportrange protocol=tcp startport=50000 '
            "numberofports=1 store=persistent")
        script = w.build_apply_script((add,), ((IP6, TCP),), excluded=True)
        assert "verify-excluded-ipv6-tcp" in script

    def test_statement_is_built_from_the_action_not_from_describe(self, monkeypatch):
        """Issue 20: statement() once split describe()'s display text; the text sent is still, byte for byte, what
        it was then (these strings were taken from that code), and describe() is now only the tool's bare name
        and the same arguments."""
        sent = {
            w.SetDword(TWD, 2): '& "$env:SystemRoot\\System32\\reg.exe" add '
                                "'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters' /v TcpTimedWaitDelay "
                                "/t REG_DWORD /d 2 /f",
            w.DeleteValue(TWD): '& "$env:SystemRoot\\System32\\reg.exe" delete '
                                "'HKLM\\SYSTEM\\CurrentControlSet\\Services\\Tcpip\\Parameters' /v TcpTimedWaitDelay /f",
            w.SetRange(IP4, TCP, 1025, 64511): '& "$env:SystemRoot\\System32\\netsh.exe" int ipv4 set dynamicportrange '
                                               "protocol=tcp startport=1025 numberofports=64511",
            w.AddExcluded(IP4, TCP, 1, 1): '& "$env:SystemRoot\\System32\\netsh.exe" int ipv4 add excludedportrange '
                                           "protocol=tcp startport=1 numberofports=1 store=persistent",
            w.DeleteExcluded(IP6, UDP, 65535, 1): '& "$env:SystemRoot\\System32\\netsh.exe" int ipv6 delete '
                                                  "excludedportrange protocol=udp startport=65535 numberofports=1 "
                                                  "store=persistent",
        }
        shown = {action: w.describe(action) for action in sent}
        monkeypatch.setattr(w, "describe", lambda action: pytest.fail("statement() used the display text"))
        for action, text in sent.items():
            assert w.statement(action) == text
            tool_path = '& "$env:SystemRoot\\System32\\%s.exe"' % shown[action].split(" ", 1)[0]
            assert text == tool_path + shown[action][len(shown[action].split(" ", 1)[0]):]

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
        lambda: w.AddExcluded(IP4, TCP, 0, 10),
        lambda: w.AddExcluded(IP4, TCP, 65535, 2),
        lambda: w.DeleteExcluded(IP4, TCP, "50000", 1),
        lambda: w.AddExcluded("ipv4", TCP, 50000, 1),
        lambda: w.tool("powershell"),
    ])
    def test_builders_take_ints_and_enum_members_only(self, make):
        with pytest.raises(TypeError):
            make()


def test_encode_command_is_what_ansible_sends():
    """The winrm connection sends this command line unchanged, and would send the same for the bare script."""
    from ansible.plugins.loader import shell_loader  # pylint: disable=import-outside-toplevel

    shell = shell_loader.get("powershell")
    for script in all_scripts():
        encoded = w.encode_command(script)
        assert encoded == shell._encode_script(script, as_list=False, strict_mode=False, preserve_rc=False)
        assert encoded.startswith(shell._encode_script("", as_list=False, strict_mode=False, preserve_rc=False))
