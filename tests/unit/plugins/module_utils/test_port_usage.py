"""port_usage: the OS-neutral capacity maths, top-N, verdict, findings and recommendations."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as hs

from ansible_collections.tcpstack.tuning.plugins.module_utils import port_usage as pu

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
