"""Capacity, projection and verdict from what really holds ports (issue 21, item 4; item 3's failing client).

Only connections that leave a TIME_WAIT on this host hold a port after they close: the TIME_WAIT timers of one dump
tell how many entered TIME_WAIT in the last seconds (socket_table), the analysis projects that rate over the usable
ports (usage_rules.projected, one rule for destinations and processes), and the module, the metrics and the fleet
report give the one verdict of port_usage.analyse().
"""

from __future__ import annotations

import re
import struct

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils import port_usage as pu
from ansible_collections.tcpstack.tuning.plugins.module_utils import socket_table as st
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_usage_rules import LINUX
from ansible_collections.tcpstack.tuning.plugins.module_utils.prometheus import render
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_findings import FAILING_ADVICE, cure
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import (
    DestinationCounts,
    identity,
    process_record,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_rules import projected
from ansible_collections.tcpstack.tuning.plugins.plugin_utils.fleet_report import (
    build_report,
    culprit_text,
    host_row,
    render_markdown,
    render_summary,
)
from tests.unit.plugins.module_utils.test_socket_table import (
    EXPECTED_TUPLES,
    fixture,
    flags,
    netlink_tally,
    proc_tally,
)

REMOTE, LOCAL, OTHER = "198.51.100.2", "192.0.2.1", "203.0.113.9"
KEY = (4, LOCAL, REMOTE, 8080)
DEST = (4, REMOTE, 8080)
SERVER_FIRST_NOTE = "their peers close first, so their ports are free again at once"


def snap(tuples, recent=None, recent_seconds=10, opens=None, seconds=5.0, **fields):
    """A Linux Snapshot of a 1,000-port range (40000-40999) with plain-string address keys; ``recent`` the
    TIME_WAIT entries of the last ``recent_seconds`` per tuple; ``opens`` ActiveOpens per second over a sample."""
    base = dict(
        settings={"tw_reuse": 2, "timestamps": 1, "max_tw_buckets": 262144}, port_range=(40000, 40999),
        states={"ipv4": {"TIME_WAIT": sum(v[1] for v in tuples.values())}, "ipv6": {}}, tuples=tuples,
        format_address=lambda family, key: key, is_loopback=lambda family, key: key.startswith("127."),
        reuse_loopback=True, platform=LINUX, time_wait_recent=recent,
        time_wait_recent_seconds=recent_seconds if recent is not None else None)
    if opens is not None:
        base.update(counters={"ActiveOpens": 0}, counters_after={"ActiveOpens": int(opens * seconds)},
                    sample_seconds=seconds)
    base.update(fields)
    return pu.Snapshot(**base)


# ---------------------------------------------------------------- the TIME_WAIT timers of one dump
@pytest.mark.parametrize("reader", [proc_tally, netlink_tally], ids=["proc", "netlink"])
def test_recent_time_wait_from_the_timers_of_a_captured_dump(reader):
    """The fixtures were dumped right after their connections closed: every TIME_WAIT socket entered it within the
    last 10 s (59.7 s left of 60), none within the last 0.1 s."""
    recent = reader().time_wait_recent()
    assert recent == dict((key, value[1]) for key, value in EXPECTED_TUPLES.items())
    assert st.Tally(flags(), recent_seconds=0.1).recent_after_ms == 59900


def _narrow_reader(reader, seconds):
    """The busy fixtures read by ``reader``'s path into a Tally whose window is ``seconds``."""
    tally = st.Tally(flags(), recent_seconds=seconds)
    if reader is netlink_tally:
        for name, family in (("inet.bin", st.AF_INET), ("inet6.bin", st.AF_INET6)):
            st.tally_netlink(fixture("busy_" + name), family, tally)
    else:
        for name, family in (("tcp.txt", st.AF_INET), ("tcp6.txt", st.AF_INET6)):
            st.tally_proc_chunks([fixture("busy_" + name)], family, tally)
    return tally


@pytest.mark.parametrize("reader", [proc_tally, netlink_tally], ids=["proc", "netlink"])
def test_a_window_shorter_than_their_age_counts_none(reader):
    assert _narrow_reader(reader, 0.1).time_wait_recent() == {}
    assert _narrow_reader(reader, 1).time_wait_recent() == dict((k, v[1]) for k, v in EXPECTED_TUPLES.items())


def _time_wait_message(expires_ms, sport=40002, dport=8080):
    """One inet_diag message of an IPv4 TIME_WAIT socket 127.0.0.1:sport -> 127.0.0.1:dport."""
    body = struct.pack("=BBBB", st.AF_INET, st.TIME_WAIT, 3, 0)
    body += struct.pack(">HH", sport, dport) + bytes([127, 0, 0, 1]) + bytes(12) + bytes([127, 0, 0, 1]) + bytes(12)
    body += struct.pack("=I", 0) + bytes(8)  # interface, cookie
    body += struct.pack("=IIIII", expires_ms, 0, 0, 0, 0)
    return struct.pack("=IHHII", 16 + len(body), st.SOCK_DIAG_BY_FAMILY, 2, 1, 0) + body


@pytest.mark.parametrize("expires, recent", [(59999, 1), (50001, 1), (50000, 0), (1000, 0)])
def test_netlink_time_wait_recent_by_its_timer(expires, recent):
    tally = st.Tally(flags())
    st.tally_netlink(_time_wait_message(expires), st.AF_INET, tally)
    loop = bytes([127, 0, 0, 1])
    assert tally.tuples() == {(4, loop, loop, 8080): [1, 1]}
    assert tally.time_wait_recent() == ({(4, loop, loop, 8080): 1} if recent else {})


@pytest.mark.parametrize("rest, ticks", [
    (b"00000000:00000000 03:00001770 00000000 0 0 0 3", 6000),
    (b"00000000:00000000 03:0000175B", 5979),
    (b"00000000:00000000", -1),
    (b"", -1),
    (b"00000000:00000000 03:0000zz70 0", -1),
    (b"00000000:00000000 03-00001770 0", -1),
    (b"00000000:00000000 03:000017700 0", -1),
])
def test_proc_timer_column_is_parsed_or_refused(rest, ticks):
    assert st.proc_ticks_left(rest) == ticks


def test_a_proc_time_wait_line_with_an_odd_timer_is_counted_but_not_recent():
    line = (b"   3: 0100007F:9C42 0100007F:1F90 06 00000000:00000000 03:zz00175B 00000000     0        0 0 3 "
            b"00000000223a9b74")
    tally = st.Tally(flags())
    st.tally_proc_lines([line], st.AF_INET, tally, {})
    assert list(tally.tuples().values()) == [[1, 1]] and tally.time_wait_recent() == {} and tally.bad_lines == 0


# ---------------------------------------------------------------- the one rule of projection
@pytest.mark.parametrize("per_second, hold, expected", [
    (20, 60, ("critical", 1200)), (15, 60, ("critical", 900)), (12, 60, ("warning", 720)), (11, 60, ("ok", 660)),
    (20, 1.0, ("ok", 20)), (None, 60, ("ok", None)), (0, 60, ("ok", None)),
])
def test_projected(per_second, hold, expected):
    assert projected(per_second, hold, 1000, 70, 90) == expected


@pytest.mark.parametrize("count, verdict", [(200, "critical"), (150, "critical"), (120, "warning"), (110, "ok")])
def test_a_steady_rate_raises_the_verdict_before_anything_fails(count, verdict):
    """``count`` connections entered TIME_WAIT in 10 s towards one destination, 1,000 usable ports, 240 held now
    (24%): 20/s needs 1,200 ports, 15/s 900 (90%, the critical threshold), 12/s 720, 11/s 660.  No process, no
    sample: the timers of one dump suffice."""
    result = pu.analyse(snap({KEY: [240, 239]}, recent={KEY: count}))
    assert result["verdict"] == verdict
    dest = result["destinations"][0]
    assert dest["time_wait_entered_per_second"] == count / 10.0
    assert dest["projected_utilisation"] == round(count / 10.0 * 60 / 1000, 4)
    assert result["capacity"]["time_wait_entered_per_second"] == count / 10.0
    if verdict == "ok":
        assert result["findings"] == []
        return
    (finding,) = result["findings"]
    assert finding.startswith("at %s new connections per second that leave a TIME_WAIT here, 198.51.100.2:8080 will "
                              "hold %s of 1,000 usable ports (%s%%) within 60 s: "
                              % (pu.rate(count / 10.0), pu.number(count * 6), count * 6 // 10))
    assert finding.endswith("; it holds 240 (24%) now")
    assert ("connect() will fail with EADDRNOTAVAIL" in finding) == (count * 6 >= 1000)
    assert result["recommendations"] == {"tw_reuse": 1, "port_range": "32768 65535"}


def test_the_worse_of_now_and_projected_is_one_finding_per_destination():
    """750 held now (warning) and 20/s projected (critical): one critical finding for it, not two."""
    result = pu.analyse(snap({KEY: [750, 749]}, recent={KEY: 200}))
    assert result["verdict"] == "critical"
    assert len([f for f in result["findings"] if "198.51.100.2:8080" in f]) == 1
    assert result["findings"][0].endswith("; it holds 750 (75%) now")
    # projected no worse than now: the finding on now stays, alone
    now = pu.analyse(snap({KEY: [950, 949]}, recent={KEY: 200}))
    assert now["findings"] == ["198.51.100.2:8080 holds 950 of 1,000 usable ports (95%), 949 in TIME_WAIT, "
                               "from 192.0.2.1"]


def test_reuse_holds_a_port_for_the_reuse_delay_only():
    result = pu.analyse(snap({KEY: [240, 239]}, recent={KEY: 200}, reuse_remote=True,
                             settings={"tw_reuse": 1, "timestamps": 1}))
    assert result["verdict"] == "ok" and result["destinations"][0]["projected_utilisation"] == 0.02


def test_the_busiest_tuple_is_projected_not_the_sum_of_local_addresses():
    """100 entries from each of two local addresses: 10/s per tuple (600 ports each), ok; their sum would not be."""
    two = {KEY: [120, 119], (4, "192.0.2.7", REMOTE, 8080): [120, 119]}
    result = pu.analyse(snap(two, recent={KEY: 100, (4, "192.0.2.7", REMOTE, 8080): 100}))
    assert result["verdict"] == "ok" and result["destinations"][0]["time_wait_entered_per_second"] == 10.0
    assert result["capacity"]["time_wait_entered_per_second"] == 20.0


def test_a_destination_beyond_the_top_still_raises_the_verdict():
    tuples = {KEY: [500, 10], (4, LOCAL, OTHER, 443): [30, 29]}
    result = pu.analyse(snap(tuples, recent={(4, LOCAL, OTHER, 443): 200}), top=1)
    assert [d["endpoint"] for d in result["destinations"]] == ["198.51.100.2:8080"]
    assert result["verdict"] == "critical" and "203.0.113.9:443 will hold 1,200" in result["findings"][0]
    assert result["recommendations"]["tw_reuse"] == 1


def test_without_timers_nothing_is_projected_and_the_keys_say_unknown():
    result = pu.analyse(snap({KEY: [240, 239]}))
    assert result["verdict"] == "ok"
    assert result["destinations"][0]["time_wait_entered_per_second"] is None
    assert result["destinations"][0]["projected_utilisation"] is None
    assert result["capacity"]["time_wait_entered_per_second"] is None


# ---------------------------------------------------------------- the capacity sentence
def test_server_first_close_claims_no_limit():
    """ApacheBench without keep-alive: 9,214 opens per second, none leaves a TIME_WAIT here."""
    result = pu.analyse(snap({KEY: [3, 0]}, recent={}, opens=9214))
    assert result["verdict"] == "ok"
    (note,) = result["notes"]
    assert note.startswith("9,214 new outgoing connections per second over 5.0 s, of which 0 per second left a "
                           "TIME_WAIT here: " + SERVER_FIRST_NOTE)
    assert "sustains" not in note


def test_client_first_close_is_set_against_the_limit():
    result = pu.analyse(snap({KEY: [240, 239]}, recent={KEY: 200}, opens=20))
    (note,) = result["notes"]
    assert note == ("20 new outgoing connections per second over 5.0 s; 20 connections per second left a TIME_WAIT "
                    "here over the last 10 s; one remote destination sustains at most 16.7 such connections per "
                    "second")
    assert result["verdict"] == "critical"


def test_one_dump_alone_gives_the_rate_note():
    result = pu.analyse(snap({KEY: [50, 49]}, recent={KEY: 50}))
    assert result["notes"] == ["5 connections per second left a TIME_WAIT here over the last 10 s; one remote "
                               "destination sustains at most 16.7 such connections per second"]
    assert pu.analyse(snap({KEY: [50, 49]}, recent={}))["notes"] == []


# ---------------------------------------------------------------- processes: the failing client, the per-process truth
def _proc(pid, name, dests=None, failed=None, entered=None):
    out = process_record(identity(pid, name=name, cmdline=name, user="app", uid=1000, unit=name + ".service"),
                         failed_connections=failed)
    for key, (in_use, established, time_wait, new, dest_failed) in (dests or {}).items():
        out.destinations[key] = DestinationCounts(in_use=in_use, established=established, time_wait=time_wait,
                                                  time_wait_inferred=0, new_connections=new,
                                                  new_connections_inferred=0, time_wait_entered=entered,
                                                  failed_connections=dest_failed)
    return out


def attributed(processes, tuples, seconds=5.0, **fields):
    return pu.analyse(snap(tuples, processes=processes, attribution={"sampled_seconds": seconds, "unattributed": {}},
                           **fields))


def test_a_failing_client_is_named_critical_and_the_cure_names_it():
    """The range ran out: a loop fails 157 connect() calls per second towards 198.51.100.2:8080; no process opens
    connections that a pooling finding would flag."""
    loop = _proc(4242, "bash", {DEST: (0, 0, 0, 0, 785)}, failed=785)
    quiet = _proc(7, "sshd", {(4, OTHER, 22): (1, 1, 0, 0, None)})
    result = attributed([quiet, loop], {KEY: [1000, 1000], (4, LOCAL, OTHER, 22): [1, 0]})
    assert result["verdict"] == "critical"
    (finding,) = [f for f in result["client_findings"] if f["kind"] == "failing"]
    assert finding["pid"] == 4242 and finding["destination"] == "198.51.100.2:8080"
    assert finding["failed_connections"] == 785 and finding["failed_connections_per_second"] == 157.0
    assert finding["sentence"] == ("pid 4242 (bash, user app, unit bash.service) fails 157 connect() calls per second "
                                   "to 198.51.100.2:8080 for want of a local port (EADDRNOTAVAIL, 785 in 5.0 s): "
                                   + FAILING_ADVICE)
    assert finding["sentence"] in result["findings"] and finding["advice"] == FAILING_ADVICE
    assert result["client_findings"][0] is not None and result["client_findings"][0]["kind"] == "failing"
    assert result["cure"]["where"] == "both"
    assert result["cure"]["summary"].startswith("fix the client (pid 4242 (bash, user app, unit bash.service)), "
                                                "whose connect() calls fail for want of a local port,")
    row = host_row("web1", "linux", result)
    assert row["verdict"] == "critical" and row["culprit"]["kind"] == "failing" and row["culprit"]["pid"] == 4242
    assert culprit_text(row).endswith("(its connect() calls fail for want of ports)")


def test_failing_without_a_destination_or_a_sample():
    result = attributed([_proc(9, "curl", failed=12)], {}, seconds=None)
    (finding,) = result["client_findings"]
    assert finding["destination"] is None and finding["failed_connections_per_second"] is None
    assert finding["sentence"].startswith("pid 9 (curl, user app, unit curl.service) failed 12 connect() calls for "
                                          "want of a local port (EADDRNOTAVAIL): ")
    assert result["verdict"] == "critical" and result["cure"]["where"] == "both"
    assert cure({}, [finding]) == {"where": "client", "summary": "fix the client (pid 9 (curl, user app, unit "
                                                                 "curl.service)): its connect() calls fail for want "
                                                                 "of a local port"}


@pytest.mark.parametrize("failed", [None, 0])
def test_no_failing_finding_when_none_failed_or_not_measured(failed):
    result = attributed([_proc(9, "curl", {DEST: (1, 1, 0, 1, failed)}, failed=failed)], {KEY: [1, 0]})
    assert result["client_findings"] == [] and result["verdict"] == "ok"


def test_the_cure_names_failing_clients_first():
    findings = [{"kind": "pooling", "process": "pid 1 (a)"}, {"kind": "pooling", "process": "pid 2 (b)"},
                {"kind": "pooling", "process": "pid 3 (c)"}, {"kind": "failing", "process": "pid 9 (z)"}]
    assert cure({}, findings)["summary"].startswith("fix the client (pid 9 (z); pid 1 (a); pid 2 (b)): its connect()")


def test_the_per_process_truth_decides_a_pooling_projection():
    """120 new connections in 3 s (40/s) towards a destination holding 200: projected critical from the process's
    rate when its connections leave a TIME_WAIT here; when tracing measured that none did (its peer closed first),
    nothing is projected from it."""
    tuples = {KEY: [200, 199]}
    client_first = _proc(10, "churner", {DEST: (200, 1, 199, 120, None)}, entered=120)
    result = attributed([client_first], tuples, seconds=3.0)
    assert result["verdict"] == "critical" and "projection" in result["client_findings"][0]
    server_first = _proc(10, "churner", {DEST: (200, 1, 199, 120, None)}, entered=0)
    result = attributed([server_first], tuples, seconds=3.0)
    assert result["verdict"] == "ok" and "projection" not in result["client_findings"][0]


# ---------------------------------------------------------------- one verdict: module, metrics, fleet report
def _metric(text, name):
    found = re.findall(r"^%s(?:\{[^}]*\})? (\S+)$" % name, text, re.M)
    return [float(value) for value in found]


@pytest.mark.parametrize("tuples, recent, processes", [
    ({KEY: [240, 239]}, {KEY: 200}, None),
    ({KEY: [240, 239]}, {KEY: 120}, None),
    ({KEY: [240, 239]}, {KEY: 30}, None),
    ({KEY: [3, 0]}, {}, None),
    ({KEY: [1000, 1000]}, {KEY: 0}, [_proc(4242, "bash", {DEST: (0, 0, 0, 0, 785)}, failed=785)]),
])
def test_module_metrics_and_fleet_report_give_one_verdict(tuples, recent, processes):
    snapshot = snap(tuples, recent=recent, processes=processes,
                    attribution={"sampled_seconds": 5.0, "unattributed": {}} if processes else None)
    result = pu.analyse(snapshot)
    text = render(result, top=5)
    (metric,) = _metric(text, "tcpstack_verdict")
    assert {0.0: "ok", 1.0: "warning", 2.0: "critical"}[metric] == result["verdict"]
    assert host_row("h", "linux", result)["verdict"] == result["verdict"]
    dest = result["destinations"][0]
    assert _metric(text, "tcpstack_destination_time_wait_entered_per_second") == [dest["time_wait_entered_per_second"]]
    assert _metric(text, "tcpstack_destination_projected_utilisation_ratio") == [dest["projected_utilisation"]]
    assert _metric(text, "tcpstack_time_wait_entered_per_second") == [result["capacity"]["time_wait_entered_per_second"]]


# ---------------------------------------------------------------- no result contradicts itself
# (opens per second over the sample, TIME_WAIT entries per second towards the destination) of each close order
SHAPES = {
    "client_first": lambda rate: rate,  # every connection leaves a TIME_WAIT here
    "server_first": lambda rate: 0,  # the peer closes first: the port is free at once
    "reset": lambda rate: 0,  # RST: no TIME_WAIT at all
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("reuse", [False, True])
@pytest.mark.parametrize("per_second", [1, 10, 15, 20, 100, 9214])
@pytest.mark.parametrize("held_now", [5, 700, 1000])
def test_no_result_contradicts_itself(shape, reuse, per_second, held_now):
    entered = SHAPES[shape](per_second)
    time_wait = min(held_now, entered * 60) if not reuse else min(held_now, entered)
    tuples = {KEY: [held_now, time_wait]}
    result = pu.analyse(snap(tuples, recent={KEY: entered * 10}, opens=per_second, reuse_remote=reuse,
                             settings={"tw_reuse": 1 if reuse else 2, "timestamps": 1, "max_tw_buckets": 262144}))
    cap = result["capacity"]
    most = cap["remote"]["max_new_connections_per_second"]
    hold = cap["remote"]["port_hold_seconds"]
    dest = result["destinations"][0]
    verdict = result["verdict"]
    now = pu.level(dest["utilisation"], 70, 90)
    then = pu.level(dest["projected_utilisation"], 70, 90)
    # the verdict is the worse of the destination now and projected, never below either
    assert pu.SEVERITY[verdict] == max(pu.SEVERITY[now], pu.SEVERITY[then])
    assert dest["projected_utilisation"] == round(entered * hold / 1000.0, 4)
    # a rate beyond what the destination sustains is never "ok"; a rate the note calls free never raises it
    if entered >= most:
        assert verdict == "critical"
    if entered == 0:
        assert verdict == now
    # the notes: a limit is claimed only for connections that leave a TIME_WAIT here
    text = " ".join(result["notes"])
    if entered == 0:
        assert SERVER_FIRST_NOTE in text and "sustains" not in text
    else:
        assert "left a TIME_WAIT here" in text and "sustains at most %s" % pu.rate(most) in text
    # every finding's severity is within the verdict, and a projection finding says so in figures
    for finding in result["findings"]:
        if finding.startswith("at "):
            assert then != "ok" and pu.SEVERITY[then] > pu.SEVERITY[now]
            assert ("will fail with EADDRNOTAVAIL" in finding) == (entered * hold >= 1000)


def test_the_fleet_report_shows_the_projection_beside_the_ports_held_now():
    result = pu.analyse(snap({KEY: [288, 287]}, recent={KEY: 200}))
    row = host_row("web1", "linux", result)
    assert (row["verdict"], row["utilisation"], row["projected_utilisation"]) == ("critical", 0.288, 1.2)
    report = build_report([row, host_row("idle", "linux", pu.analyse(snap({KEY: [3, 0]}, recent={})))], "now")
    assert "28.8% (120% projected)" in render_summary(report) and "28.8% (120% projected)" in render_markdown(report)
    assert "0.3%" in render_summary(report) and "projected)" not in render_summary(report).splitlines()[3]
    hostile = dict(result, destinations=[dict(result["destinations"][0], projected_utilisation="NaN")])
    assert host_row("web1", "linux", hostile)["projected_utilisation"] is None


def test_a_host_already_full_shows_no_projection():
    row = host_row("web", "linux", pu.analyse(snap({KEY: [1000, 1000]}, recent={KEY: 1000})))
    assert row["projected_utilisation"] == 6.0 and row["utilisation"] == 1.0
    summary = render_summary(build_report([row], "now")).splitlines()[2].split()
    assert summary[:4] == ["web", "linux", "CRITICAL", "100%"]
