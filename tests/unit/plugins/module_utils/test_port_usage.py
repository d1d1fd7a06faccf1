"""port_usage: the OS-neutral capacity maths, top-N, verdict, findings and recommendations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ansible_collections.tcpstack.tuning.plugins.module_utils import port_usage as pu
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_usage_rules import LINUX
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import (
    DestinationCounts,
    identity,
    process_record,
)

REMOTE = "198.51.100.2"
LOCAL = "192.0.2.1"


def snap(tuples, port_range=(40000, 40999), reserved=(), **fields):
    """A Snapshot whose address keys are plain strings; 127.x and ::1 are loopback."""
    base = dict(
        settings={"tw_reuse": 2, "timestamps": 1, "somaxconn": 4096, "max_syn_backlog": 512, "max_tw_buckets": 262144},
        port_range=port_range,
        reserved=reserved,
        states={"ipv4": {"TIME_WAIT": sum(v[1] for v in tuples.values())}, "ipv6": {}},
        tuples=tuples,
        format_address=lambda family, key: key,
        is_loopback=lambda family, key: key.startswith("127.") or key == "::1",
        reuse_loopback=True,
        platform=LINUX,  # the Linux rules: tcp_tw_reuse, tcp_max_tw_buckets, the /proc/net counters
    )
    base.update(fields)
    return pu.Snapshot(**base)


# ---------------------------------------------------------------- figures
@pytest.mark.parametrize("value, text", [(0, "0"), (999, "999"), (1000, "1,000"), (1234567, "1,234,567")])
def test_number(value, text):
    assert pu.number(value) == text


@pytest.mark.parametrize("fraction, text", [(1.0, "100%"), (0.7, "70%"), (0.6999, "69.9%"), (0.12345, "12.3%"), (0, "0%")])
def test_percent_never_rounds_up_to_a_threshold(fraction, text):
    assert pu.percent(fraction) == text


def test_ephemeral_summary():
    assert pu.ephemeral_summary((32768, 60999), ()) == {
        "range": [32768, 60999], "size": 28232, "reserved": "", "reserved_in_range": 0, "usable": 28232}
    got = pu.ephemeral_summary((40000, 40999), ((8080, 8080), (40100, 40199), (40990, 41010)))
    assert (got["size"], got["reserved_in_range"], got["usable"]) == (1000, 110, 890)
    assert got["reserved"] == "8080,40100-40199,40990-41010"
    assert pu.ephemeral_summary((40000, 40999), ((1, 65535),))["usable"] == 0
    assert pu.ephemeral_summary(None, ())["usable"] is None


@pytest.mark.parametrize("usable, remote, loopback, delay, expected", [
    (1000, False, False, 1.0, (60.0, 16.67, 60.0, 16.67)),
    (1000, False, True, 1.0, (60.0, 16.67, 1.0, 1000.0)),
    (28232, True, True, 0.25, (0.25, 112928.0, 0.25, 112928.0)),
    (0, False, False, 1.0, (60.0, 0.0, 60.0, 0.0)),
    (None, False, False, 1.0, (60.0, None, 60.0, None)),
])
def test_capacity(usable, remote, loopback, delay, expected):
    cap = pu.capacity(usable, 60, remote, loopback, delay)
    got = (cap["remote"]["port_hold_seconds"], cap["remote"]["max_new_connections_per_second"],
           cap["loopback"]["port_hold_seconds"], cap["loopback"]["max_new_connections_per_second"])
    assert got == expected
    assert cap["usable_ports"] == usable and cap["time_wait_seconds"] == 60


# ---------------------------------------------------------------- verdicts
def test_exhausted_destination_is_critical_with_the_figures():
    result = pu.analyse(snap({(4, LOCAL, REMOTE, 8080): [1000, 998], (4, LOCAL, "203.0.113.9", 443): [20, 5]},
                             listening={22, 8080, 50000}))
    assert result["verdict"] == "critical"
    assert result["findings"][0] == "198.51.100.2:8080 holds 1,000 of 1,000 usable ports (100%), 998 in TIME_WAIT, from 192.0.2.1"
    first = result["destinations"][0]
    assert (first["endpoint"], first["in_use"], first["time_wait"], first["utilisation"]) == ("198.51.100.2:8080", 1000, 998, 1.0)
    assert result["recommendations"] == {"port_range": "32768 65535", "reserve_listening_ports": True, "tw_reuse": 1}
    assert result["ports_held"] == 1020


@pytest.mark.parametrize("in_use, verdict", [(900, "critical"), (899, "warning"), (700, "warning"), (699, "ok"), (0, "ok")])
def test_thresholds(in_use, verdict):
    result = pu.analyse(snap({(4, LOCAL, REMOTE, 80): [in_use, 0]}))
    assert result["verdict"] == verdict
    assert result["thresholds"] == {"warning_percent": 70, "critical_percent": 90}


def test_custom_thresholds():
    assert pu.analyse(snap({(4, LOCAL, REMOTE, 80): [500, 0]}), warning=40, critical=50)["verdict"] == "critical"


def test_limit_is_per_tuple_not_per_destination():
    """Two local addresses towards one destination each hold 600 of 1,000: 60%, not 120%."""
    result = pu.analyse(snap({(4, "192.0.2.1", REMOTE, 80): [600, 600], (4, "192.0.2.2", REMOTE, 80): [600, 0]}))
    dest = result["destinations"][0]
    assert (dest["in_use"], dest["time_wait"], dest["local_addresses"], dest["busiest_in_use"]) == (1200, 600, 2, 600)
    assert dest["utilisation"] == 0.6
    assert result["verdict"] == "ok"


def test_same_port_on_other_remote_port_is_another_tuple():
    result = pu.analyse(snap({(4, LOCAL, REMOTE, 80): [500, 0], (4, LOCAL, REMOTE, 443): [500, 0]}))
    assert [d["endpoint"] for d in result["destinations"]] == ["198.51.100.2:443", "198.51.100.2:80"]
    assert result["verdict"] == "ok"


def test_loopback_reuse_frees_time_wait():
    """tcp_tw_reuse 2: towards loopback TIME_WAIT ports are reusable, towards others they block."""
    tuples = {(4, "127.0.0.1", "127.0.0.1", 8080): [1000, 990], (6, "::1", "::1", 9090): [950, 950],
              (4, LOCAL, REMOTE, 80): [800, 790]}
    result = pu.analyse(snap(tuples))
    first = result["destinations"][0]
    assert (first["endpoint"], first["reuse"], first["blocking"]) == ("198.51.100.2:80", False, 800)
    others = {d["endpoint"]: d for d in result["destinations"][1:]}
    assert others["127.0.0.1:8080"]["blocking"] == 10 and others["[::1]:9090"]["blocking"] == 0
    assert result["verdict"] == "warning"
    assert result["recommendations"]["tw_reuse"] == 1


def test_reuse_everywhere_only_counts_non_time_wait():
    result = pu.analyse(snap({(4, LOCAL, REMOTE, 80): [1000, 998]}, reuse_remote=True,
                             settings={"tw_reuse": 1, "timestamps": 1}))
    dest = result["destinations"][0]
    assert dest["blocking"] == 2 and dest["utilisation"] == 0.002
    assert result["verdict"] == "ok"
    assert "TIME_WAIT reuse applies" not in " ".join(result["findings"])


def test_top_n_limits_and_ranks():
    tuples = dict(((4, LOCAL, "198.51.100.%d" % n, 80), [n, 0]) for n in range(1, 31))
    result = pu.analyse(snap(tuples), top=5)
    assert [d["in_use"] for d in result["destinations"]] == [30, 29, 28, 27, 26]


def test_more_hot_destinations_than_top():
    tuples = dict(((4, LOCAL, "198.51.100.%d" % n, 80), [950, 900]) for n in range(1, 6))
    result = pu.analyse(snap(tuples), top=2)
    assert len(result["destinations"]) == 2
    assert result["findings"][-1] == "3 more destinations beyond the top 2 hold at least 70% of the usable ports"


def test_fully_reserved_range_has_no_division_by_zero():
    result = pu.analyse(snap({}, reserved=((40000, 40999),)))
    assert result["ephemeral"]["usable"] == 0
    assert result["capacity"]["remote"]["max_new_connections_per_second"] == 0.0
    assert result["verdict"] == "critical"
    assert result["recommendations"]["port_range"] == "32768 65535"


def test_empty_table_is_ok():
    result = pu.analyse(snap({}))
    assert result["verdict"] == "ok" and result["destinations"] == [] and result["findings"] == []


def test_unknown_table_is_a_warning():
    result = pu.analyse(snap({}, states=None))
    assert result["sockets"] is None
    assert result["verdict"] == "warning"


def test_time_wait_near_max_tw_buckets():
    result = pu.analyse(snap({}, states={"ipv4": {"TIME_WAIT": 950}, "ipv6": {}},
                             settings={"max_tw_buckets": 1000}))
    assert result["findings"] == ["950 sockets in TIME_WAIT, 95% of tcp_max_tw_buckets (1,000): beyond it connections "
                                  "close without TIME_WAIT"]


# ---------------------------------------------------------------- recommendations
@pytest.mark.parametrize("port_range, usable, min_port, expected", [
    ((40000, 40999), 1000, 1024, [32768, 65535]),
    ((32768, 60999), 28232, 1024, [32768, 65535]),
    ((32768, 65535), 32768, 1024, [16384, 65535]),
    ((16384, 65535), 49152, 1024, [1024, 65535]),
    ((1024, 65535), 64512, 1024, None),
    ((40000, 40999), 1000, 50001, [50002, 65535]),  # never below the unprivileged start
    ((60000, 65535), 5536, 60001, None),  # nothing wider starts at or above it
    ((40000, 40999), 1000, 33333, [33334, 65535]),  # an odd start becomes even: LOW and HIGH differ in parity
    ((40000, 40999), 0, 1024, [32768, 65535]),
])
def test_recommended_range(port_range, usable, min_port, expected):
    assert pu.recommended_range(port_range, usable, min_port) == expected


def test_no_reuse_recommendation_when_already_1():
    result = pu.analyse(snap({(4, LOCAL, REMOTE, 80): [1000, 0]}, reuse_remote=True, settings={"tw_reuse": 1, "timestamps": 1}))
    assert result["verdict"] == "critical"
    assert "tw_reuse" not in result["recommendations"]
    assert result["recommendations"]["port_range"] == "32768 65535"
    assert "reserve_listening_ports" not in result["recommendations"]


def test_counters_without_sample_are_notes():
    result = pu.analyse(snap({}, counters={"ListenOverflows": 12, "TCPTimeWaitOverflow": 0}))
    assert result["verdict"] == "ok"
    assert result["notes"] == ["ListenOverflows is 12 since the network namespace started; "
                               "sample_seconds shows whether it is rising"]
    assert result["counters"] == {"values": {"ListenOverflows": 12, "TCPTimeWaitOverflow": 0}, "sample": None}
    assert result["capacity"]["measured"] is None


def test_sample_rates():
    result = pu.analyse(snap({}, counters={"ActiveOpens": 100, "AttemptFails": 1, "TCPTimeWaitOverflow": 3},
                             counters_after={"ActiveOpens": 1100, "AttemptFails": 1, "TCPTimeWaitOverflow": 9},
                             sample_seconds=4.0))
    assert result["capacity"]["measured"] == {"seconds": 4.0, "active_opens_per_second": 250.0,
                                              "passive_opens_per_second": None, "attempt_fails_per_second": 0.0}
    assert result["findings"] == ["TCPTimeWaitOverflow is rising: +6 in 4.0 s"]
    assert result["verdict"] == "warning"
    assert any("250 new outgoing connections per second" in note for note in result["notes"])


# ---------------------------------------------------------------- properties
_tuple = hs.tuples(hs.sampled_from([4, 6]), hs.sampled_from(["192.0.2.1", "127.0.0.1", "::1"]),
                   hs.sampled_from(["198.51.100.1", "198.51.100.2", "127.0.0.2", "::1"]), hs.integers(1, 65535))


@settings(max_examples=200, deadline=None)
@given(hs.dictionaries(_tuple, hs.integers(0, 70000).flatmap(lambda n: hs.tuples(hs.just(n), hs.integers(0, n))),
                       max_size=20),
       hs.integers(1, 65535), hs.integers(0, 70000), hs.booleans(), hs.booleans(), hs.integers(1, 20))
def test_analyse_never_fails_and_stays_consistent(tuples, low, span, reuse_remote, reuse_loopback, top):
    high = min(65535, low + span)
    reserved = ((low, low + span // 2),) if span % 3 == 0 else ()
    result = pu.analyse(snap(dict((k, list(v)) for k, v in tuples.items()), port_range=(low, high), reserved=reserved,
                             reuse_remote=reuse_remote, reuse_loopback=reuse_loopback), top=top)
    usable = result["ephemeral"]["usable"]
    assert 0 <= usable <= high - low + 1
    assert len(result["destinations"]) <= top
    assert result["verdict"] in ("ok", "warning", "critical")
    assert result["ports_held"] == sum(v[0] for v in tuples.values())
    ranks = [(d["blocking"], d["in_use"]) for d in result["destinations"]]
    assert ranks == sorted(ranks, reverse=True)
    for dest in result["destinations"]:
        assert 0 <= dest["time_wait"] <= dest["in_use"]
        assert dest["blocking"] <= dest["busiest_in_use"] <= dest["in_use"]
        if usable:
            assert dest["utilisation"] == round(dest["blocking"] / float(usable), 4)
        else:
            assert dest["utilisation"] is None
    if usable == 0:
        assert result["verdict"] == "critical"


# ---------------------------------------------------------------- processes: pooling, bind before connect, the cure
def proc(pid, name, dests, bound=0, bound_seen=0):
    """A process as the OS side gives it: dests {(family, remote, port): (in_use, established, time_wait, new)}."""
    out = process_record(identity(pid, name=name, cmdline=name, user="app", uid=1000, unit=name + ".service",
                                  cgroup="/system.slice/%s.service" % name), bound_inactive=bound,
                         bound_inactive_seen=bound_seen)
    for dest, (in_use, established, time_wait, new) in dests.items():
        out.destinations[dest] = DestinationCounts(in_use=in_use, established=established, time_wait=time_wait,
                                                   time_wait_inferred=0, new_connections=new,
                                                   new_connections_inferred=0 if new is not None else None)
    return out


def attributed(processes, seconds=3.0, tuples=None, **fields):
    return pu.analyse(snap(tuples or {}, processes=processes,
                           attribution={"sampled_seconds": seconds, "unattributed": {}}, **fields))


def test_same_volume_churner_blamed_pooled_not():
    """300 requests in 3 s each: the churner opened 300 connections (300 in TIME_WAIT), the pooled one 4."""
    result = attributed([proc(10, "churner", {(4, REMOTE, 8080): (301, 1, 300, 300)}),
                         proc(11, "pooled", {(4, REMOTE, 9090): (4, 4, 0, 0)})], port_range=(32768, 60999))
    (finding,) = result["client_findings"]
    assert finding["kind"] == "pooling" and finding["pid"] == 10 and finding["destination"] == REMOTE + ":8080"
    assert finding["new_connections_per_second"] == 100.0 and finding["time_wait_per_established"] == 300.0
    assert finding["sentence"].startswith("pid 10 (churner, user app, unit churner.service) opens 100 new "
                                          "connections per second to 198.51.100.2:8080 (300 in 3.0 s) and keeps 1 open "
                                          "(300 ports in TIME_WAIT, 300 per ESTABLISHED): pool the connections")
    assert finding["sentence"] in result["findings"]
    assert result["top_churner"]["pid"] == 10 and result["top_churner"]["new_connections_per_second"] == 100.0
    assert [p["pid"] for p in result["processes"]] == [10, 11]
    assert result["cure"]["where"] == "client" and "pid 10 (churner" in result["cure"]["summary"]
    assert result["verdict"] == "ok"


@pytest.mark.parametrize("dest, why", [
    ((301, 1, 300, 12), "under 5 per second"),
    ((301, 100, 200, 300), "keeps many open: 2 TIME_WAIT per ESTABLISHED"),
])
def test_no_pooling_finding_below_the_rules(dest, why):
    assert attributed([proc(10, "c", {(4, REMOTE, 8080): dest})])["client_findings"] == [], why


def test_without_a_rate_only_time_wait_seen_alive_counts():
    inferred = proc(10, "c", {(4, REMOTE, 8080): (500, 0, 500, None)})
    inferred.destinations[(4, REMOTE, 8080)].time_wait_inferred = 450
    assert attributed([inferred], seconds=None)["client_findings"] == []
    seen = proc(10, "c", {(4, REMOTE, 8080): (500, 0, 500, None)})
    (finding,) = attributed([seen], seconds=None)["client_findings"]
    assert finding["new_connections_per_second"] is None and "closed 500 connections" in finding["sentence"]
    assert any("sample_seconds above 0 follows each new connection" in note
               for note in attributed([seen], seconds=None)["notes"])


def test_bind_before_connect_advice():
    result = attributed([proc(12, "binder", {}, bound=3, bound_seen=40)])
    (finding,) = result["client_findings"]
    assert finding["kind"] == "bind_before_connect" and finding["bound_inactive"] == 3
    assert "IP_BIND_ADDRESS_NO_PORT" in finding["advice"] and "(Linux 4.2+)" in finding["advice"]
    assert "IP_LOCAL_PORT_RANGE" in finding["advice"] and "(Linux 6.3+)" in finding["advice"]
    assert result["verdict"] == "ok"
    assert "holds 3 ephemeral ports bound but not connected (bind before connect, 40 seen" in finding["sentence"]
    # none bound now, 40 connect()s from a bound port seen by the trace
    (finding,) = attributed([proc(12, "binder", {}, bound=0, bound_seen=40)])["client_findings"]
    assert "bound 40 ephemeral ports before connecting them during the sample" in finding["sentence"]


def test_pooling_takes_the_destination_severity_and_the_cure_is_both():
    """1,000 usable ports all in TIME_WAIT towards the churner's destination: critical, host and client."""
    tuples = {(4, LOCAL, REMOTE, 8080): [1000, 999]}
    result = attributed([proc(10, "churner", {(4, REMOTE, 8080): (1000, 1, 999, 300)})], tuples=tuples)
    assert result["verdict"] == "critical"
    assert result["findings"][0].startswith("198.51.100.2:8080 holds 1,000")
    assert any(f.startswith("pid 10 (churner") for f in result["findings"])
    assert result["recommendations"] and result["cure"]["where"] == "both"
    assert result["destinations"][0]["processes"] == [
        {"pid": 10, "name": "churner", "in_use": 1000, "time_wait": 999, "new_connections_per_second": 100.0}]


def test_no_process_keys_without_attribution():
    """Windows (and attribution: false) feed no processes: the result is as before."""
    result = pu.analyse(snap({}))
    assert not set(result) & {"processes", "client_findings", "top_churner", "attribution", "cure"}


def test_cure_host_only():
    tuples = {(4, LOCAL, REMOTE, 8080): [1000, 999]}
    result = attributed([proc(11, "pooled", {(4, REMOTE, 8080): (4, 4, 0, 0)})], tuples=tuples)
    assert result["cure"]["where"] == "host" and result["client_findings"] == []


def test_a_client_that_will_run_out_is_critical_before_it_has():
    """40 new connections per second, 60 s of TIME_WAIT each: 2,400 ports needed of 1,000, though 200 are held now."""
    tuples = {(4, LOCAL, REMOTE, 8080): [200, 199]}
    result = attributed([proc(10, "churner", {(4, REMOTE, 8080): (200, 1, 199, 120)})], tuples=tuples)
    assert result["verdict"] == "critical"
    (finding,) = result["client_findings"]
    assert finding["projection"] == ("at that rate it holds 2,400 ports (60 s each), 240% of the 1,000 usable: "
                                     "connect() will fail with EADDRNOTAVAIL")
    assert "; at that rate it holds 2,400 ports" in finding["sentence"] and finding["sentence"] == result["findings"][0]
    # with TIME_WAIT reuse towards it (1 s), the same rate needs 40 ports: no finding raised beyond "ok"
    reused = attributed([proc(10, "churner", {(4, REMOTE, 8080): (200, 1, 199, 120)})], tuples=tuples,
                        reuse_remote=True)
    assert reused["verdict"] == "ok" and "projection" not in reused["client_findings"][0]


def test_a_projected_exhaustion_recommends_reuse_and_a_wider_range():
    tuples = {(4, LOCAL, REMOTE, 8080): [200, 199]}
    result = attributed([proc(10, "churner", {(4, REMOTE, 8080): (200, 1, 199, 120)})], tuples=tuples)
    assert result["recommendations"] == {"tw_reuse": 1, "port_range": "32768 65535"}
    assert result["cure"]["where"] == "both"
