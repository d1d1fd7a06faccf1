"""_windows_parse: the parsers (English, German and other label sets, CRLF) and whole reads of simulated hosts."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.tcpstack.tuning.plugins.plugin_utils import _windows_parse as w
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_commands import (
    PARAMETERS_KEY,
    Marked,
    build_read_script,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import IpVersion, Protocol, WinTcpError

from tests.support.windows_sim import Faults
from tests.support.windows_sim.connection import run_script, simulated_host
from tests.support.windows_sim.host import LANGUAGES, PROFILES
from tests.support.windows_sim.host import WindowsHost as SimHost

IP4, IP6 = IpVersion.IPV4, IpVersion.IPV6
TCP, UDP = Protocol.TCP, Protocol.UDP


# ------------------------------------------------------------------ output samples (docs/windows_commands.md)
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


M = "tcpstack-" + "5e" * 16  # the marker of the sections written here


def section(word, body, rc=0, marker=M):
    """One section of a script's output, as Marked text."""
    return Marked("@@%s:%s@@\n%s\n@@%s:rc:%s@@\n" % (marker, word, body, marker, rc), marker)


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
        with pytest.raises(WinTcpError, match="dynamic port range"):
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
        text = "noise\r\n" + section("a-b", "x\ny").replace("\n", "\r\n") + "@@%s:c@@\nz\n@@%s:rc:@@\n" % (M, M)
        sections = w.split_sections(text, M)
        assert sections["a-b"].lines == ["x", "y"] and sections["a-b"].ok
        assert sections["c"].rc == "" and not sections["c"].ok

    @pytest.mark.parametrize("de", [False, True])
    @pytest.mark.parametrize("newline", ["\n", "\r\n"])
    def test_read(self, de, newline):
        targets = ((IP4, TCP), (IP6, UDP))
        host = simulated_host(build=17763, language="de-DE" if de else "en-US",
                              registry={"TcpTimedWaitDelay": ("REG_DWORD", 60)}, ranges={(IP4, TCP): (1024, 64511)},
                              excluded={(IP6, UDP): ((50000, 50100, True),)})
        script = build_read_script(targets)
        out = run_script(host, script).replace("\r\n", newline)
        state = w.parse_read(out, targets, marker=script.marker)
        assert state.build == 17763
        assert state.registry["TcpTimedWaitDelay"].dword == 60
        assert state.ranges == {(IP4, TCP): (1024, 64511), (IP6, UDP): (49152, 16384)}
        assert state.excluded == {(IP4, TCP): (), (IP6, UDP): ((50000, 50100, True),)}

    def test_read_failed_section(self):
        faults = Faults()
        faults.fail_tool("reg", verb=("query", PARAMETERS_KEY))  # reg query of the parameters fails once
        script = build_read_script(((IP4, TCP), (IP6, TCP)))
        out = run_script(simulated_host(), script, faults)
        with pytest.raises(WinTcpError, match="reading params failed"):
            w.parse_read(out, ((IP4, TCP), (IP6, TCP)), marker=script.marker)

    def test_read_truncated(self):
        script = build_read_script(((IP4, TCP),))
        out = run_script(simulated_host(), script)
        with pytest.raises(WinTcpError, match="no 'range-ipv6-tcp' section"):
            w.parse_read(out, ((IP4, TCP), (IP6, TCP)), marker=script.marker)


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
        with pytest.raises(WinTcpError):
            w.parse_events(["<Event>"])


# ------------------------------------------------------------------ issue 15 item 5: the layouts of real captures
@pytest.mark.parametrize("language", LANGUAGES)
@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_every_profile_and_language_layout_reads_the_same(profile, language):
    """German title and header, English trailing padding, build 26200's 18-column labels: the same values."""
    host = SimHost(profile=profile, language=language, host_state={"winnat_blocks": 1})
    host.add_excluded(50000, 50059, administered=True)
    host.add_excluded(8000, 8000)
    host.set_dynamic_range(10000, 55536, ip="ipv6")
    targets = ((IP4, TCP), (IP6, TCP))
    script = build_read_script(targets)
    state = w.parse_read(run_script(host, script), targets, marker=script.marker)
    assert state.build == PROFILES[profile]["build"]
    assert state.ranges == {(IP4, TCP): (49152, 16384), (IP6, TCP): (10000, 55536)}
    assert state.excluded[(IP4, TCP)] == ((8000, 8000, False), (49153, 49252, False), (50000, 50059, True))
    assert state.excluded[(IP6, TCP)] == ((49153, 49252, False),)  # carved at boot, before the range changed


def test_captured_layouts_verbatim():
    german = ["", 'Portausschlussbereiche f\u00fcr das Protokoll "tcp"', "", "Startport      Endport",
              "----------    --------", "      5357        5357", "     50000       50059     *", "",
              "* - Verwaltete Portausschl\u00fcsse.", ""]
    assert w.parse_excluded_ranges(german) == ((5357, 5357, False), (50000, 50059, True))
    padded = ["", "Protocol tcp Port Exclusion Ranges", "", "Start Port    End Port      ", "----------    --------",
              "      5357        5357      ", "     50000       50059     *", "", "* - Administered port exclusions.", ""]
    assert w.parse_excluded_ranges(padded) == ((5357, 5357, False), (50000, 50059, True))
    build_26200 = ["Protocol tcp Dynamic Port Range", "---------------------------------", "Start Port        : 49152",
                   "Number of Ports   : 16384", ""]
    assert w.parse_dynamic_range(build_26200) == (49152, 16384)


def test_classic_tcpip_event():
    xml = ("<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System><Provider Name=\"Tcpip\" />"
           "<EventID Qualifiers='32768'>4231</EventID><Level>3</Level><Keywords>0x80000000000000</Keywords>"
           "<TimeCreated SystemTime='2026-11-24T10:00:00.0000000Z'/><Execution ProcessID='4' ThreadID='8'/>"
           "</System><EventData><Data></Data><Binary>0000000001000000</Binary></EventData></Event>")
    assert w.parse_events([xml]) == [{"id": 4231, "time": "2026-11-24T10:00:00.0000000Z"}]


def test_powershell_51_error_records_do_not_decide():
    """A failed reg as PowerShell 5.1 reports it (error records on stderr); the exit code in the marker decides."""
    host = simulated_host()
    script = build_read_script(((IP4, TCP),), marker=M).replace("CurrentBuildNumber", "NoSuchValue")
    sections = w.split_sections(run_script(host, script), M)
    assert not sections["build"].ok and sections["params"].ok and w.parse_build(sections) is None


class TestParseOutput:
    """parse_output(): the checks of a script's output that win_tcp and win_port_usage_info share."""

    def output(self, stdout, stderr="", rc=0):
        return SimpleNamespace(rc=rc, stdout=Marked(stdout, M), stderr=stderr)

    def test_parsed(self):
        out = self.output(section("params", reg_params({"TcpTimedWaitDelay": ("REG_DWORD", "0x1e")})))
        assert w.parse_output(out, lambda stdout: sorted(w.split_sections(stdout))) == ["params"]

    @pytest.mark.parametrize("stdout, stderr, message", [
        ("", "Access is denied.", "reading the host failed (rc=1): Access is denied."),
        ("  some text  ", "", "reading the host failed (rc=1): some text"),
    ])
    def test_a_script_that_did_not_run(self, stdout, stderr, message):
        with pytest.raises(WinTcpError) as info:
            w.parse_output(self.output(stdout, stderr, rc=1), pytest.fail)
        assert str(info.value) == message

    @pytest.mark.parametrize("stderr, message", [(" boom \n", "bad output; stderr: boom"), ("", "bad output")])
    def test_a_parse_error_gets_the_hosts_stderr(self, stderr, message):
        def parse(_stdout):
            raise WinTcpError("bad output")

        with pytest.raises(WinTcpError) as info:
            w.parse_output(self.output("@@%s:params@@\n" % M, stderr), parse)
        assert str(info.value) == message


class TestForgedSections:
    """Issue 21: a process or service name is host text.  One holding CR/LF and a copy of a marker must not forge a
    section, and a section that comes twice is refused, never silently replaced."""

    def forged_name(self, marker):
        return "evil\r\n%s\r\n@@%s:params@@\r\n    TcpTimedWaitDelay    REG_DWORD    0x1e\r\n@@%s:rc:0@@\r\nx" % (
            "@@%s:ok:True@@" % marker, marker, marker)

    def run(self, name, marker=None):
        from tests.support.windows_sim.connection import InProcessConnection
        from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import WindowsHost
        host = simulated_host(processes=[(4242, name)])
        script = build_read_script(((IP4, TCP),), marker=marker)
        script = Marked(script + "Get-Process | Select-Object -Property Id,ProcessName | ConvertTo-Csv "
                                 "-NoTypeInformation\n", script.marker)  # after the real params section
        return WindowsHost(InProcessConnection(host=host)).run(script)

    def test_a_name_copying_the_old_fixed_marker_forges_nothing(self):
        output = self.run(self.forged_name("tcpstack"))
        assert "@@tcpstack:params@@" in output.stdout  # the forged lines are there, as host text
        state = w.parse_read(output.stdout, ((IP4, TCP),))
        assert state.registry.get("TcpTimedWaitDelay") is None  # the host has none: the forged value is not read

    def test_a_name_copying_this_runs_marker_is_refused_not_merged(self):
        """Even a host that learnt this run's marker cannot replace a section: the second one is refused."""
        marker = "tcpstack-" + "ab" * 16
        output = self.run(self.forged_name(marker), marker=marker)
        with pytest.raises(WinTcpError, match="section 'params' twice"):
            w.parse_read(output.stdout, ((IP4, TCP),))

    def test_a_duplicate_section_is_refused(self):
        with pytest.raises(WinTcpError, match="section 'build' twice: refused"):
            w.split_sections(section("build", reg_build(7601)) + section("build", reg_build(1)), M)

    @pytest.mark.parametrize("stdout", ["@@tcpstack:build@@\n1\n@@tcpstack:rc:0@@\n", ""])
    def test_output_without_its_marker_is_never_split(self, stdout):
        with pytest.raises(TypeError):
            w.split_sections(stdout)
        assert w.split_sections(stdout, M) == {}
