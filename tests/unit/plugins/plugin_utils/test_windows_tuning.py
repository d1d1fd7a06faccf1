"""windows_tuning: planning (property-based: the plan of a converged host is empty), rollback, verification, and
run() end to end against the simulated host (round trips, check mode, rollback after a failing tool, a lost
connection, an unreadable host)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import _windows_commands as c
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import windows_tuning as w
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_options import (
    IpVersion,
    Protocol,
    RegName,
    validate_win_tcp,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_kinds import (
    KINDS,
    DynamicRange,
    Exclusion,
    RegistryValue,
    nest,
)
from ansible_collections.tcpstack.tuning.plugins.plugin_utils._windows_parse import parse_read, range_value
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.windows_host import WindowsHost

from tests.support.windows_sim.connection import InProcessConnection, run_script, simulated_host

IP4, IP6 = IpVersion.IPV4, IpVersion.IPV6
TCP, UDP = Protocol.TCP, Protocol.UDP
TWD, MUP = RegName.TIME_WAIT_DELAY, RegName.MAX_USER_PORT
# plan keys
K_TWD, K_MUP = RegistryValue(TWD), RegistryValue(MUP)
K_IP4, K_IP6 = DynamicRange(IP4, TCP), DynamicRange(IP6, TCP)


def state_of(build=20348, registry=None, ranges=None, excluded=None, targets=((IP4, TCP), (IP6, TCP))):
    """What win_tcp's read finds on a simulated host with these settings."""
    host = simulated_host(build=build, registry=registry, ranges=ranges, excluded=excluded)
    script = c.build_read_script(targets)
    return parse_read(run_script(host, script), targets, marker=script.marker)


def plan_for(desired, state):
    return w.plan_win_tcp(desired, state)[1]


# ------------------------------------------------------------------ planning
class TestPlanning:
    def test_cold(self):
        desired = validate_win_tcp({"time_wait_delay": 30, "port_range": "10000 65535"})
        plan = plan_for(desired, state_of())
        assert plan.changed and plan.reboot_required
        assert [c.key.label for c in plan.changes] == ["TcpTimedWaitDelay", "ipv4 tcp dynamic port range",
                                                       "ipv6 tcp dynamic port range"]
        assert w.plan_actions(plan) == (c.SetDword(TWD, 30), c.SetRange(IP4, TCP, 10000, 55536),
                                        c.SetRange(IP6, TCP, 10000, 55536))

    def test_converged(self):
        desired = validate_win_tcp({"time_wait_delay": 30, "max_user_port": 65534, "port_range": "10000 65535"})
        state = state_of(registry={"TcpTimedWaitDelay": ("REG_DWORD", 30), "MaxUserPort": ("REG_DWORD", 65534)},
                         ranges={(IP4, TCP): (10000, 55536), (IP6, TCP): (10000, 55536)})
        plan = plan_for(desired, state)
        assert not plan.changed and not plan.reboot_required and w.plan_actions(plan) == ()
        assert plan.warnings == (w.MAX_USER_PORT_WARNING,)

    def test_range_only_no_reboot(self):
        plan = plan_for(validate_win_tcp({"port_range": [20000, 40000], "ip_versions": ["ipv4"]}), state_of())
        assert plan.changed and not plan.reboot_required
        assert w.plan_actions(plan) == (c.SetRange(IP4, TCP, 20000, 20001),)

    def test_wrong_type_corrected(self):
        state = state_of(registry={"TcpTimedWaitDelay": ("REG_SZ", "30")})
        plan = plan_for(validate_win_tcp({"time_wait_delay": 30}), state)
        assert plan.changed and plan.reboot_required
        assert plan.changes[0].before == {"type": "REG_SZ", "data": "30"}
        assert w.plan_actions(plan) == (c.SetDword(TWD, 30),)
        assert any("REG_SZ" in m for m in plan.warnings)

    def test_absent(self):
        state = state_of(registry={"TcpTimedWaitDelay": ("REG_DWORD", 30)}, ranges={(IP4, TCP): (10000, 55536)})
        plan = plan_for(validate_win_tcp({"state": "absent"}), state)
        assert w.plan_actions(plan) == (c.DeleteValue(TWD), c.SetRange(IP4, TCP, 49152, 16384))
        assert plan.reboot_required

    def test_absent_converged(self):
        plan = plan_for(validate_win_tcp({"state": "absent", "time_wait_delay": 5}), state_of())
        assert not plan.changed
        assert plan.warnings == ("state=absent restores Windows' defaults; time_wait_delay ignored",)

    def test_excluded_overlap_warning(self):
        state = state_of(excluded={(IP4, TCP): ((5357, 5357, False), (50000, 50059, True))})
        plan = plan_for(validate_win_tcp({"port_range": "10000 65535"}), state)
        warning = [m for m in plan.warnings if "excluded" in m]
        assert len(warning) == 1 and "50000-50059" in warning[0] and "5357" not in warning[0]
        assert "ipv4 tcp" in warning[0]

    def test_no_overlap_no_warning(self):
        state = state_of(excluded={(IP4, TCP): ((5357, 5357, False),)})
        assert plan_for(validate_win_tcp({"port_range": "10000 65535"}), state).warnings == ()

    def test_legacy_host_refused_before_planning(self):
        with pytest.raises(ValidationError, match="build 7601"):
            plan_for(validate_win_tcp({"time_wait_delay": 10}), state_of(build=7601))

    def test_host_range_below_minimum_is_read(self):
        state = state_of(ranges={(IP4, TCP): (1024, 64511)})
        plan = plan_for(validate_win_tcp({"port_range": "49152 65535", "ip_versions": "ipv4"}), state)
        assert plan.changes[0].before == {"start": 1024, "number": 64511, "end": 65534}

    def test_rollback(self):
        state = state_of(registry={"MaxUserPort": ("REG_DWORD", 5000)}, ranges={(IP4, TCP): (1024, 64511)})
        desired = validate_win_tcp({"time_wait_delay": 30, "max_user_port": 6000, "port_range": "10000 65535"})
        plan = plan_for(desired, state)
        actions = w.plan_actions(plan)
        undo, skipped = w.rollback_actions(plan, actions)
        # the 1024 start cannot be sent back (netsh would refuse it), and says so; ipv6 goes back to the default
        assert undo == (c.DeleteValue(TWD), c.SetDword(MUP, 5000), c.SetRange(IP6, TCP, 49152, 16384))
        assert skipped == ("ipv4 tcp dynamic port range (was start 1024, 64511 ports (1024-65534), outside netsh's rules)",)

    def test_verify(self):
        desired = validate_win_tcp({"time_wait_delay": 30})
        plan = plan_for(desired, state_of())
        wanted = {c.key: c.after for c in plan.changes}
        good = state_of(registry={"TcpTimedWaitDelay": ("REG_DWORD", 30)})
        assert w.verify(wanted, good) == []
        assert w.verify(wanted, state_of()) == [("TcpTimedWaitDelay", "30", "(absent)")]

    def test_nest_and_diff(self):
        values = {K_TWD: 30, K_MUP: None, K_IP4: range_value((10000, 55536))}
        assert nest(values) == {"registry": {"TcpTimedWaitDelay": 30, "MaxUserPort": None},
                                "dynamic_port_range": {"ipv4": {"tcp": {"start": 10000, "number": 55536, "end": 65535}}}}
        assert w.diff_text(values) == ("TcpTimedWaitDelay = 30\nMaxUserPort = (absent)\n"
                                       "ipv4 tcp dynamic port range = start 10000, 55536 ports (10000-65535)\n")

    @settings(max_examples=200, deadline=None)
    @given(tw=st.one_of(st.none(), st.integers(2, 300)), mup=st.one_of(st.none(), st.integers(5000, 65534)),
           start=st.integers(1025, 65281), data=st.data(), protos=st.sampled_from([["tcp"], ["udp"], ["tcp", "udp"]]),
           ips=st.sampled_from([["ipv4"], ["ipv6"], ["ipv4", "ipv6"]]))
    def test_plan_of_desired_is_empty(self, tw, mup, start, data, protos, ips):
        high = data.draw(st.integers(start + 254, 65535))
        desired = validate_win_tcp({"time_wait_delay": tw, "max_user_port": mup, "port_range": [start, high],
                                    "protocols": protos, "ip_versions": ips})
        targets = desired.targets
        registry = {}
        if tw is not None:
            registry["TcpTimedWaitDelay"] = ("REG_DWORD", tw)
        if mup is not None:
            registry["MaxUserPort"] = ("REG_DWORD", mup)
        ranges = {t: desired.port_range for t in targets}
        converged = state_of(registry=registry, ranges=ranges, targets=targets)
        assert not plan_for(desired, converged).changed
        cold = state_of(targets=targets)
        plan = plan_for(desired, cold)
        for action in w.plan_actions(plan):  # every action is buildable
            c.describe(action)
        assert plan.reboot_required == (tw is not None or mup is not None)


def test_plan_returns_what_the_host_has():
    desired = validate_win_tcp({"time_wait_delay": 30, "ip_versions": ["ipv4"], "port_range": "10000 65535"})
    current, plan = w.plan_win_tcp(desired, state_of(ranges={(IP4, TCP): (20000, 1000)}))
    assert current == {K_TWD: None, K_IP4: range_value((20000, 1000))}
    assert [change.before for change in plan.changes] == [current[K_TWD], current[K_IP4]]


# ------------------------------------------------------------------ run(), on a simulated host in this process
def tune(conn, args, check_mode=False, want_diff=False):
    """run() over ``conn``; returns (result, warnings, round trips)."""
    host = WindowsHost(conn, "win_tcp")
    result, warnings = w.run(args, host, check_mode, want_diff)
    assert host.round_trips == conn.round_trips
    return result, warnings, host.round_trips


def failure(conn, args):
    host = WindowsHost(conn, "win_tcp")
    with pytest.raises(w.TuningError) as info:
        w.run(args, host)
    return info.value, host.round_trips


ARGS = {"port_range": "10000 65535", "time_wait_delay": 30, "max_user_port": 65534}


def at_desired(host):
    return (host.registry_value("TcpTimedWaitDelay") == 30 and host.registry_value("MaxUserPort") == 65534
            and all(host.dynamic_range(ip, "tcp") == (10000, 55536) for ip in ("ipv4", "ipv6")))


class TestRun:
    def test_cold_then_converged(self):
        conn = InProcessConnection()
        result, warnings, trips = tune(conn, ARGS)
        assert result["changed"] and result["reboot_required"] and trips == 2 and at_desired(conn.host)
        assert result["before"]["registry"] == {"TcpTimedWaitDelay": None, "MaxUserPort": None}
        assert result["after"] == nest({K_TWD: 30, K_MUP: 65534, K_IP4: range_value((10000, 55536)),
                                        K_IP6: range_value((10000, 55536))})
        assert warnings == [w.MAX_USER_PORT_WARNING]
        result, warnings, trips = tune(InProcessConnection(host=conn.host), ARGS)
        assert not result["changed"] and trips == 1

    def test_validation_before_the_first_round_trip(self):
        conn = InProcessConnection()
        with pytest.raises(ValidationError):
            w.run({"port_range": "1024 65535"}, WindowsHost(conn))
        assert conn.round_trips == 0

    def test_check_mode_and_diff(self):
        conn = InProcessConnection()
        before = conn.host.snapshot()
        result, _warnings, trips = tune(conn, {"time_wait_delay": 30}, check_mode=True, want_diff=True)
        assert result["changed"] and trips == 1 and conn.host.snapshot() == before
        assert result["diff"]["before"] == "TcpTimedWaitDelay = (absent)\n"
        assert result["diff"]["after"] == "TcpTimedWaitDelay = 30\n"

    def test_a_failing_tool_is_rolled_back(self):
        conn = InProcessConnection()
        conn.host.set_registry("MaxUserPort", "REG_DWORD", 5000)
        conn.faults.fail_tool("netsh", verb=("ipv6", "set"))
        error, trips = failure(conn, ARGS)
        assert trips == 3 and error.result["rolled_back"] and not error.result["changed"]
        assert "netsh int ipv6 set dynamicportrange" in str(error) and "The parameter is incorrect." in str(error)
        assert "undone" in str(error) and error.warnings == [w.MAX_USER_PORT_WARNING]
        assert conn.host.registry_value("MaxUserPort") == 5000 and conn.host.registry_value("TcpTimedWaitDelay") is None
        assert conn.host.dynamic_range("ipv4", "tcp") == (49152, 16384)

    def test_a_failing_rollback_says_so(self):
        conn = InProcessConnection()
        conn.faults.fail_tool("netsh", verb=("ipv6", "set"))
        conn.faults.fail_tool("reg", verb="delete")
        error, trips = failure(conn, ARGS)
        assert trips == 3 and error.result["rolled_back"] is False and error.result["changed"]
        assert "undone" not in str(error)

    def test_connection_lost_during_apply(self):
        conn = InProcessConnection()
        conn.faults.drop_command(2, execute=True)
        error, trips = failure(conn, ARGS)
        assert trips == 2 and at_desired(conn.host)
        assert "the connection failed while applying 4 change(s)" in str(error) and "run the task again" in str(error)
        assert error.result["changed"] and "rolled_back" not in error.result

    def test_connection_lost_on_the_read_is_the_connections_error(self):
        conn = InProcessConnection()
        conn.faults.drop_command(1)
        with pytest.raises(ConnectionResetError):
            w.run(ARGS, WindowsHost(conn))

    def test_refused_command(self):
        conn = InProcessConnection()
        conn.faults.refuse_command(1)
        error, trips = failure(conn, ARGS)
        assert trips == 1 and str(error) == "reading the host failed (rc=1): Access is denied."
        assert error.result == {}

    def test_verification_catches_a_value_that_did_not_stick(self):
        conn = InProcessConnection()
        conn.faults.fail_tool("reg", verb="add", output="The operation completed successfully.", exit_code=0)
        error, trips = failure(conn, {"time_wait_delay": 30})
        assert trips == 2
        assert str(error) == "after applying, the host reads back TcpTimedWaitDelay = (absent) (expected 30)"

    def test_legacy_build_is_refused_after_the_read(self):
        conn = InProcessConnection(profile="server2008r2")
        with pytest.raises(ValidationError, match="build 7601"):
            w.run({"time_wait_delay": 10}, WindowsHost(conn))
        assert conn.round_trips == 1


# ------------------------------------------------------------------ issue 15: excluded_ranges
EXCL = {"excluded_ranges": ["50000-50099", 60000]}


def administered(host, ip="ipv4", store="active"):
    return [(a, b) for a, b, admin in host.excluded_ranges(ip, "tcp", store=store) if admin]


class TestExcludedRanges:
    def test_validation(self):
        assert validate_win_tcp({"excluded_ranges": "60000, 50000-50099"}).excluded_ranges == ((50000, 50099), (60000, 60000))
        assert validate_win_tcp({"excluded_ranges": [[50000, 50099]]}).excluded_ranges == ((50000, 50099),)
        assert validate_win_tcp({"excluded_ranges": []}).excluded_ranges == ()
        for bad in (["50000-50099", "50050-50150"], [0], [65536], "abc", {"a": 1}, [True], ["1-2-3"], [None],
                    list(range(1, 103))):
            with pytest.raises(ValidationError, match="excluded_ranges"):
                validate_win_tcp({"excluded_ranges": bad})

    def test_added_idempotently_and_kept_across_a_reboot(self):
        conn = InProcessConnection()
        conn.host.add_excluded(40000, 40009, administered=True)  # not given: never touched
        conn.host.add_excluded(55000, 55099)  # a system exclusion: never touched
        result, dummy, trips = tune(conn, EXCL)
        assert result["changed"] and trips == 2 and not result["reboot_required"]
        assert result["before"]["excluded_ranges"] == {
            ip: {"tcp": {"50000-50099": False, "60000-60000": False}} for ip in ("ipv4", "ipv6")}
        assert result["after"]["excluded_ranges"]["ipv6"]["tcp"] == {"50000-50099": True, "60000-60000": True}
        for ip in ("ipv4", "ipv6"):
            assert set(administered(conn.host, ip, "persistent")) >= {(50000, 50099), (60000, 60000)}
        assert administered(conn.host) == [(40000, 40009), (50000, 50099), (60000, 60000)]
        assert (55000, 55099, False) in conn.host.excluded_ranges("ipv4", "tcp")
        statements = [s for s in conn.log if "excludedportrange" in s and " add " in s]
        assert len(statements) == 4 and all(s.endswith("store=persistent") for s in statements)
        conn.host.reboot()
        result, dummy, trips = tune(InProcessConnection(host=conn.host), EXCL)
        assert not result["changed"] and trips == 1

    def test_absent_removes_only_the_listed(self):
        conn = InProcessConnection()
        for start in (40000, 50000, 60000):
            conn.host.add_excluded(start, start + 9, administered=True)
        conn.host.add_excluded(61000, 61099)  # system, and listed: left alone, with a warning
        args = {"state": "absent", "excluded_ranges": ["50000-50009", "61000-61099", "62000"], "ip_versions": "ipv4"}
        result, warnings, trips = tune(conn, args)
        assert result["changed"] and trips == 2
        assert administered(conn.host) == [(40000, 40009), (60000, 60009)]
        assert (61000, 61099, False) in conn.host.excluded_ranges("ipv4", "tcp")
        assert any("61000-61099 is a system exclusion" in w and "never removes" in w for w in warnings)
        result, dummy, trips = tune(InProcessConnection(host=conn.host), args)
        assert not result["changed"] and trips == 1

    @pytest.mark.parametrize("existing, administered_, words", [
        ((50050, 50149), False, "system exclusion"), ((50090, 50109), True, "administered exclusion 50090-50109")])
    def test_an_overlap_is_refused_before_anything_is_sent(self, existing, administered_, words):
        conn = InProcessConnection()
        conn.host.add_excluded(*existing, ip="ipv6", administered=administered_)
        before = conn.host.snapshot()
        with pytest.raises(ValidationError) as info:
            w.run(dict(EXCL, time_wait_delay=30), WindowsHost(conn))
        assert info.value.option == "excluded_ranges" and words in str(info.value) and "50000-50099" in str(info.value)
        assert conn.round_trips == 1 and conn.host.snapshot() == before

    def test_a_port_in_use_is_refused_before_anything_is_sent(self):
        conn = InProcessConnection()
        conn.host.add_connection("::", 60000, "::", 0, "Listen", 4)
        before = conn.host.snapshot()
        with pytest.raises(ValidationError) as info:
            w.run(dict(EXCL, time_wait_delay=30), WindowsHost(conn))
        assert info.value.option == "excluded_ranges" and "TCP port 60000 listens on ipv6" in str(info.value)
        assert conn.round_trips == 1 and conn.host.snapshot() == before
        assert "Get-NetTCPConnection -State Listen" in conn.scripts[0]
        absent = InProcessConnection()
        tune(absent, {"excluded_ranges": [60000], "state": "absent"})
        assert "Listen" not in absent.scripts[0]  # the listeners are read only when exclusions may be added

    def test_netsh_refusal_is_reported_with_its_message_and_rolled_back(self):
        """Server 2008 R2 has no Get-NetTCPConnection: the port in use is known to netsh only."""
        conn = InProcessConnection(profile="server2008r2")
        conn.host.add_connection("::", 60000, "::", 0, "Listen", 4)
        error, trips = failure(conn, dict(EXCL, time_wait_delay=30))
        assert trips == 3 and error.result["rolled_back"] is True and not error.result["changed"]
        assert "netsh int ipv6 add excludedportrange protocol=tcp startport=60000 numberofports=1" in str(error)
        assert "The process cannot access the file because it is being used by another process." in str(error)
        assert administered(conn.host) == [] and administered(conn.host, "ipv6") == []
        assert conn.host.registry_value("TcpTimedWaitDelay") is None

    def test_check_mode_and_diff(self):
        conn = InProcessConnection()
        before = conn.host.snapshot()
        result, dummy, trips = tune(conn, dict(EXCL, ip_versions="ipv4"), check_mode=True, want_diff=True)
        assert result["changed"] and trips == 1 and conn.host.snapshot() == before
        assert result["diff"]["before"] == ("ipv4 tcp excluded port range 50000-50099 = (not excluded)\n"
                                            "ipv4 tcp excluded port range 60000-60000 = (not excluded)\n")
        assert result["diff"]["after"] == ("ipv4 tcp excluded port range 50000-50099 = excluded (administered)\n"
                                           "ipv4 tcp excluded port range 60000-60000 = excluded (administered)\n")

    def test_rollback_actions_of_exclusions(self):
        plan = plan_for(validate_win_tcp({"excluded_ranges": [50000], "ip_versions": "ipv4"}), state_of())
        actions = w.plan_actions(plan)
        assert actions == (c.AddExcluded(IP4, TCP, 50000, 1),)
        assert w.rollback_actions(plan, actions) == ((c.DeleteExcluded(IP4, TCP, 50000, 1),), ())

    def test_an_active_only_exclusion_counts_until_the_reboot(self):
        """store=active (by hand) lasts until the next boot; win_tcp then adds it again, persistently."""
        conn = InProcessConnection()
        conn.host.add_excluded(60000, 60000, administered=True, persistent=False)
        args = {"excluded_ranges": [60000], "ip_versions": "ipv4"}
        assert not tune(conn, args)[0]["changed"]
        conn.host.reboot()
        assert tune(InProcessConnection(host=conn.host), args)[0]["changed"]
        assert administered(conn.host, store="persistent") == [(60000, 60000)]


@settings(derandomize=True, max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 650), min_size=0, max_size=6, unique=True), st.sampled_from(["present", "absent"]))
def test_plan_of_converged_exclusions_is_empty(blocks, state):
    """Listed ranges the host has as administered exclusions (present), or lacks (absent): nothing to do."""
    ranges = [(b * 100, b * 100 + 49) for b in blocks]
    desired = validate_win_tcp({"excluded_ranges": ["%d-%d" % r for r in ranges], "ip_versions": "ipv4",
                                **({"state": "absent"} if state == "absent" else {})})
    rows = tuple((a, b, True) for a, b in sorted(ranges)) if state == "present" else ()
    plan = plan_for(desired, state_of(excluded={(IP4, TCP): rows}, targets=((IP4, TCP),)))
    assert [c for c in plan.changes if isinstance(c.key, Exclusion)] == []


def test_each_kind_of_the_table_applies_undoes_shows_and_reports():
    """The table of _windows_kinds: one sample key per kind, through every method the rest of win_tcp calls."""
    default = range_value((49152, 16384))
    samples = {K_TWD: (None, 30), K_IP4: (default, range_value((10000, 55536))),
               Exclusion(IP6, UDP, 50000, 50099): (False, True)}
    assert {type(key) for key in samples} == set(KINDS)
    for key, (before, after) in samples.items():
        assert key.undo(before) == (key.apply(before), None)
        tool_name, arguments = c.describe(key.apply(after)).split(" ", 1)
        assert c.statement(key.apply(after)) == '& "$env:SystemRoot\\System32\\%s.exe" %s' % (tool_name, arguments)
    assert nest({key: after for key, (before, after) in samples.items()}) == {
        "registry": {"TcpTimedWaitDelay": 30}, "dynamic_port_range": {"ipv4": {"tcp": range_value((10000, 55536))}},
        "excluded_ranges": {"ipv6": {"udp": {"50000-50099": True}}}}
    assert [key.show(after) for key, (before, after) in samples.items()] == [
        "30", "start 10000, 55536 ports (10000-65535)", "excluded (administered)"]
    assert [key.reboot_required for key in samples] == [True, False, False]
    assert [key.reads_excluded for key in samples] == [False, False, True]
    # apply order: registry, exclusions removed, ranges, exclusions added
    assert sorted([(K_IP4, None), (Exclusion(IP4, TCP, 1, 1), True), (Exclusion(IP4, TCP, 2, 2), False),
                   (K_TWD, None)], key=lambda pair: pair[0].order(pair[1]))[1:3] == [
        (Exclusion(IP4, TCP, 2, 2), False), (K_IP4, None)]
