"""Property-based tests (hypothesis) for every parser and for the planning logic.

Parsers: port ranges and port lists, strict integers, sysctl.d files and the kernel's reading of values,
netsh and reg output (rendered by the Windows host simulator's own tools, in English and German, from random
host states), the script-output sections.  Planning: applying the plan for (current, desired) gives desired,
and the plan for (desired, desired) is empty, on Linux (through the settings model) and on Windows (the apply
script run on a simulated host, then read back).  Every parser either returns a well-formed value or raises
its documented error, whatever the input.

Example counts are written to $TCPSTACK_RELIABILITY_FIGURES (tools/reliability_report.py) when it is set.
"""

from __future__ import annotations

import collections
import json
import os
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import (
    BY_KEY,
    PORT_RANGE,
    RESERVED_PORTS,
    SETTINGS,
    canonical,
    kernel_value,
    loose,
    same,
    texts,
    validate_options,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_sysctl_d import parse, render
from ansible_collections.tcpstack.tuning.plugins.module_utils.plan import make_plan
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import (
    format_port_list,
    format_port_range,
    normalise_intervals,
    parse_port_list,
    parse_port_range,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError, strict_int
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import _windows_commands as wc
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import _windows_options as wo
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import _windows_parse as wp
from ansible_collections.tcpstack.tuning.plugins.plugin_utils import windows_tuning as wt

from tests.support.windows_sim.host import WindowsHost
from tests.support.windows_sim.script import run_powershell

EXAMPLES = collections.Counter()
FAST = settings(derandomize=True, max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def _record_examples():
    yield
    path = os.environ.get("TCPSTACK_RELIABILITY_FIGURES")
    if not path or not EXAMPLES:
        return
    target = Path(path)
    data = json.loads(target.read_text()) if target.exists() else {}
    data["properties"] = {"properties": len(EXAMPLES), "examples": sum(EXAMPLES.values()),
                          "per_property": dict(sorted(EXAMPLES.items()))}
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")


def seen(name):
    EXAMPLES[name] += 1


ports = st.integers(1, 65535)
blanks = st.text(alphabet=" \t", max_size=3)
junk = st.one_of(
    st.text(max_size=30),
    st.text(alphabet="0123456789 \t,-;'\"$`\n\u0660\u0663\uff11", max_size=30),
    st.integers(-10 ** 6, 10 ** 6),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.lists(st.one_of(st.integers(-5, 70000), st.text(max_size=8), st.booleans()), max_size=4),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
spans = st.lists(st.tuples(ports, ports).map(sorted).map(tuple), max_size=12)


# ---------------------------------------------------------------- port ranges and lists
@FAST
@given(ports, ports, st.sampled_from([" ", "\t", "-", " - ", "  \t"]), blanks, blanks, st.booleans())
def test_port_range_round_trip(a, b, sep, lead, trail, as_list):
    seen("port_range round trip")
    low, high = min(a, b), max(a, b)
    value = [low, high] if as_list else "%s%d%s%d%s" % (lead, low, sep, high, trail)
    assert parse_port_range(value) == (low, high)
    assert parse_port_range(format_port_range((low, high))) == (low, high)


@FAST
@given(junk)
def test_port_range_never_crashes(value):
    seen("port_range any input")
    try:
        low, high = parse_port_range(value, "port_range")
    except ValidationError as exc:
        assert str(exc).startswith("port_range: ") and exc.option == "port_range"
        return
    assert type(low) is int and type(high) is int and 1 <= low <= high <= 65535  # pylint: disable=unidiomatic-typecheck


@FAST
@given(spans, st.booleans(), st.randoms())
def test_port_list_round_trip(intervals, as_list, rnd):
    seen("port_list round trip")
    items = ["%d" % a if a == b else "%d-%d" % (a, b) for a, b in intervals]
    rnd.shuffle(items)
    value = items if as_list else ",".join(items)
    parsed = parse_port_list(value)
    assert parsed == normalise_intervals(intervals)
    assert parse_port_list(format_port_list(parsed)) == parsed
    # normalised: sorted, disjoint and not adjacent, every port kept
    assert all(b1 + 1 < a2 for (_a1, b1), (a2, _b2) in zip(parsed, parsed[1:]))
    assert {p for a, b in intervals for p in range(a, b + 1)} == {p for a, b in parsed for p in range(a, b + 1)}


@FAST
@given(junk)
def test_port_list_never_crashes(value):
    seen("port_list any input")
    try:
        parsed = parse_port_list(value, "reserved_ports")
    except ValidationError as exc:
        assert str(exc).startswith("reserved_ports: ")
        return
    assert parsed == normalise_intervals(parsed)
    assert all(1 <= a <= b <= 65535 for a, b in parsed)


@FAST
@given(st.one_of(junk, st.integers(-3, 3).map(str), st.from_regex(r"\A[ \t]*\+?[0-9]{1,6}[ \t]*\Z")))
def test_strict_int_accepts_only_ascii_integers(value):
    seen("strict_int any input")
    try:
        number = strict_int(value, "opt", 0, 99999)
    except ValidationError as exc:
        assert str(exc).startswith("opt: ") and "from 0 to 99999" in str(exc)
        return
    assert type(number) is int and 0 <= number <= 99999  # pylint: disable=unidiomatic-typecheck
    assert isinstance(value, int) and not isinstance(value, bool) or str(value).strip(" \t").lstrip("+").isascii()


# ---------------------------------------------------------------- sysctl.d files
keys = st.sampled_from([s.key for s in SETTINGS] + ["net.ipv4.tcp_keepalive_time", "kernel.pid_max"])
word = st.text(alphabet="abcdefghij0123456789 \t,-/.", min_size=1, max_size=20).map(str.strip).filter(bool)


@FAST
@given(st.dictionaries(keys, word, max_size=8), st.text(alphabet="abc \n#", max_size=40))
def test_sysctl_d_render_parse_round_trip(values, header):
    seen("sysctl.d render/parse")
    text = render(values, header)
    for init in ("systemd", "procps"):
        found = parse(text, "/etc/sysctl.d/x.conf", init)
        assert [(a.key, a.value) for a in found] == [(k, " ".join(v.split(" ")).strip()) for k, v in values.items()]
        assert all(1 <= a.line <= text.count("\n") + 1 for a in found)


@FAST
@given(st.text(max_size=200), st.sampled_from(["systemd", "procps"]))
def test_sysctl_d_parse_never_crashes(text, init):
    seen("sysctl.d any text")
    for assignment in parse(text, "/etc/sysctl.d/x.conf", init):
        # blanks as systemd and procps mean them (" \t\n\r"; the C locale's isspace also has \v and \f)
        assert assignment.key and assignment.key == assignment.key.strip(" \t\n\r")
        assert 1 <= assignment.line <= text.count("\n") + 1
        assert assignment.value is None or assignment.value == assignment.value.strip(" \t\n\r\v\f")


@FAST
@given(keys, st.text(alphabet="0123456789xX-, \t\nabc", max_size=20), st.sampled_from([None, "32768 60999"]))
def test_kernel_value_is_canonical_or_none(key, text, previous):
    seen("kernel_value any text")
    value = kernel_value(key, text, previous)
    if value is None or key not in BY_KEY:
        return
    if key == RESERVED_PORTS and value.split("-")[0].split(",")[0] == "0":
        return  # the kernel's bitmap takes port 0 ("0-5" reads back as "0-5"); our options start at 1
    assert canonical(key, value) == value


def test_host_reserving_port_0_does_not_blame_the_user():
    from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_settings import (  # pylint: disable=import-outside-toplevel
        validate_for_host,
    )
    validate_for_host({PORT_RANGE: parse_port_range("32768 60999")}, {RESERVED_PORTS: "0-5"}, [],
                      listening_ports=[40000])


# ---------------------------------------------------------------- netsh and reg output, from the simulator's tools
ranges = st.tuples(st.integers(1, 65535), st.integers(1, 65535))
reg_data = st.one_of(st.none(), st.integers(0, 0xFFFFFFFF))
TARGETS = tuple((ip, proto) for ip in wo.IpVersion for proto in wo.Protocol)


def _host(language, dynamic, excluded, time_wait, max_user_port, profile="server2022"):
    host = WindowsHost(profile=profile, language=language)
    for (ip, proto), (start, number) in zip(TARGETS, dynamic):
        host.set_dynamic_range(start, number, ip=ip.value, proto=proto.value, store="persistent")
        host._active_ranges[(ip.value, proto.value)] = (start, number)  # pylint: disable=protected-access
    for (ip, proto), rows in zip(TARGETS, excluded):
        for start, end, admin in rows:
            host.add_excluded(start, end, ip=ip.value, proto=proto.value, administered=admin)
    for name, value in (("TcpTimedWaitDelay", time_wait), ("MaxUserPort", max_user_port)):
        if value is not None:
            host.set_registry(name, "REG_DWORD", value)
    return host


def _run(host, script):
    """What ``script`` (Marked) prints on ``host``, Marked with its marker as WindowsHost.run() returns it."""
    return wc.Marked(run_powershell(host, script, []).stdout, script.marker)


excluded_rows = st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 50), st.booleans())
                         .map(lambda t: (t[0], min(65535, t[0] + t[1]), t[2])), max_size=3)


@FAST
@given(st.sampled_from(["en-US", "de-DE"]), st.lists(ranges, min_size=4, max_size=4),
       st.lists(excluded_rows, min_size=4, max_size=4), reg_data, reg_data)
def test_reg_and_netsh_output_parse_back_to_the_host_state(language, dynamic, excluded, time_wait, max_user_port):
    seen("netsh/reg output of random hosts")
    host = _host(language, dynamic, excluded, time_wait, max_user_port)
    state = wp.parse_read(_run(host, wc.build_read_script(TARGETS)), TARGETS)
    assert state.build == host.build
    for (ip, proto), want in zip(TARGETS, dynamic):
        assert state.ranges[(ip, proto)] == tuple(host.dynamic_range(ip.value, proto.value))
        assert state.ranges[(ip, proto)] == want
        rows = host.excluded_ranges(ip.value, proto.value)
        assert [(a, b) for a, b, _admin in state.excluded[(ip, proto)]] == [(r[0], r[1]) for r in rows]
    assert wp.reg_value(state, wo.RegName.TIME_WAIT_DELAY) == time_wait
    assert wp.reg_value(state, wo.RegName.MAX_USER_PORT) == max_user_port


@FAST
@given(st.lists(st.text(max_size=40), max_size=8))
def test_windows_parsers_never_crash(lines):
    seen("netsh/reg parsers any text")
    wp.parse_reg_query(lines)
    assert all(len(row) == 3 for row in wp.parse_excluded_ranges(lines))
    try:
        start, number = wp.parse_dynamic_range(lines)
        assert start >= 0 and number >= 0
    except wo.WinTcpError as exc:
        assert "dynamic port range" in str(exc)
    sections = wp.split_sections("\r\n".join(lines), "tcpstack-" + "0" * 32)
    assert all(isinstance(s.lines, list) for s in sections.values())


csv_field = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n\x00"), max_size=12)


@FAST
@given(st.lists(st.tuples(csv_field, csv_field, csv_field), max_size=6))
def test_convertto_csv_output_parses_back(rows):
    seen("ConvertTo-Csv output")

    def quote(text):
        return '"%s"' % text.replace('"', '""')

    lines = [",".join(map(quote, ("LocalAddress", "LocalPort", "State")))] + [",".join(map(quote, row)) for row in rows]
    assert wp.parse_csv(lines) == [dict(zip(("LocalAddress", "LocalPort", "State"), row)) for row in rows]


@FAST
@given(st.text(max_size=120), st.lists(st.sampled_from([4227, 4231, 1, 0]), max_size=4))
def test_wevtutil_output_parses_or_fails_clearly(noise, ids):
    seen("wevtutil XML output")
    events = ["<Event xmlns='http://schemas.microsoft.com/win/2004/08/events/event'><System><Provider Name='Tcpip'/>"
              "<EventID>%d</EventID><TimeCreated SystemTime='2026-11-24T10:00:00.0000000Z'/></System></Event>" % i
              for i in ids]
    assert [e["id"] for e in wp.parse_events(events)] == ids
    try:
        found = wp.parse_events([noise])
    except wo.WinTcpError as exc:
        assert "wevtutil" in str(exc)
        return
    assert isinstance(found, list)


# ---------------------------------------------------------------- planning: Linux
def _spell(key, value, rnd):
    """Another spelling of the same meaning, as the kernel or a user might write it."""
    if key == PORT_RANGE:
        low, high = value.split()
        return rnd.choice(["%s\t%s" % (low, high), "%s-%s" % (low, high), "  %s  %s " % (low, high)])
    if key == RESERVED_PORTS and value:
        items = value.split(",")
        rnd.shuffle(items)
        return ",".join(items)
    return value


linux_params = st.fixed_dictionaries({}, optional={
    "fin_timeout": st.integers(1, 86400),
    "port_range": st.tuples(ports, ports).map(sorted).map(list),
    "reserved_ports": spans,
    "tw_reuse": st.sampled_from([0, 1, 2]),
    "tw_reuse_delay": st.integers(1, 60000),
    "timestamps": st.sampled_from([0, 1, 2]),
    "somaxconn": st.integers(1, 2 ** 31 - 1),
    "max_syn_backlog": st.integers(1, 2 ** 31 - 1),
})


def _linux_desired(params):
    params = dict(params)
    if "reserved_ports" in params:
        params["reserved_ports"] = ["%d-%d" % span for span in params["reserved_ports"]]
    return texts(validate_options(params))


@FAST
@given(linux_params, linux_params, st.randoms())
def test_linux_plan_applied_gives_desired_and_desired_plans_nothing(current_params, desired_params, rnd):
    seen("linux plan")
    desired = _linux_desired(desired_params)
    current = {k: _spell(k, v, rnd) for k, v in _linux_desired(current_params).items()}
    assert not make_plan(desired, desired, same).changed
    # desired in other spellings (tabs, ranges split or merged) means the same: nothing to do
    assert not make_plan({k: _spell(k, v, rnd) for k, v in desired.items()}, desired, same).changed
    plan = make_plan(current, desired, same)
    state = dict(current)
    for change in plan.changes:
        assert change.before == current.get(change.key)
        assert not same(change.key, change.before, change.after)
        state[change.key] = change.after
    assert all(loose(k, state[k]) == loose(k, v) for k, v in desired.items())
    assert not make_plan(state, desired, same).changed


# ---------------------------------------------------------------- planning: Windows, applied on a simulated host
valid_range = st.integers(1025, 65535 - 254).flatmap(lambda s: st.tuples(st.just(s), st.integers(s + 254, 65535)))
win_args = st.fixed_dictionaries({}, optional={
    "time_wait_delay": st.integers(2, 300),
    "max_user_port": st.integers(5000, 65534),
    "port_range": valid_range.map(list),
    "protocols": st.lists(st.sampled_from(["tcp", "udp"]), min_size=1, max_size=2),
    "ip_versions": st.lists(st.sampled_from(["ipv4", "ipv6"]), min_size=1, max_size=2),
    "state": st.sampled_from(["present", "present", "absent"]),
})
start_ranges = st.tuples(st.integers(1025, 60000), st.integers(255, 5000)).filter(lambda r: r[0] + r[1] - 1 <= 65535)


@FAST
@given(win_args, st.lists(start_ranges, min_size=4, max_size=4), reg_data.filter(lambda v: v is None or v <= 300),
       st.one_of(st.none(), st.integers(5000, 65534)))
def test_windows_plan_applied_gives_desired_and_desired_plans_nothing(args, dynamic, time_wait, max_user_port):
    seen("windows plan on a simulated host")
    desired = wo.validate_win_tcp(args)
    targets = desired.targets
    host = _host("en-US", dynamic, [[], [], [], []], time_wait, max_user_port)
    state = wp.parse_read(_run(host, wc.build_read_script(targets)), targets)
    _current, plan = wt.plan_win_tcp(desired, state)
    if plan.changed:
        actions = wt.plan_actions(plan)
        out = _run(host, wc.build_apply_script(actions, targets))
        sections = wp.split_sections(out)
        assert all(sections["apply-%d" % i].ok for i in range(len(actions))), out
        wanted = {c.key: c.after for c in plan.changes}
        assert wt.verify(wanted, wp.parse_read(out, targets, prefix="verify-", excluded=False)) == []
    _current, again = wt.plan_win_tcp(desired, wp.parse_read(_run(host, wc.build_read_script(targets)), targets))
    assert not again.changed, again.changes
    # and (desired, desired) as pure values: empty
    values = wt.desired_values(desired)
    assert not make_plan(values, values, wt.same).changed
