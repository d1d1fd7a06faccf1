from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import (
    clip,
    contains,
    count_ports,
    format_port_list,
    format_port_range,
    intersect,
    normalise_intervals,
    parse_port_list,
    parse_port_range,
    port_flags,
    start_count_range,
    usable_ports,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.validation import ValidationError


@pytest.mark.parametrize("value, expected", [
    ("32768 60999", (32768, 60999)),
    ("32768\t60999", (32768, 60999)),
    ("  1024 \t 65535 ", (1024, 65535)),
    ("1024-65535", (1024, 65535)),
    ("1024 - 65535", (1024, 65535)),
    ([1024, 65535], (1024, 65535)),
    (["1024", "65535"], (1024, 65535)),
    ((5000, 5000), (5000, 5000)),
])
def test_port_range_forms(value, expected):
    assert parse_port_range(value) == expected


@pytest.mark.parametrize("value, fragment", [
    ("0 100", "1 to 65535"),
    ("1024 65536", "1 to 65535"),
    ("2000 1000", "must not be above"),
    ("1024", "LOW HIGH"),
    ("1024 2048 4096", "LOW HIGH"),
    ("1024,2048", "LOW HIGH"),
    ("1024 2048\n", "LOW HIGH"),
    ("\u0661\u0660\u0662\u0664 2048", "LOW HIGH"),
    ("1024 2048; rm -rf /", "LOW HIGH"),
    ([1024], "LOW HIGH"),
    ([1024, 2048, 4096], "LOW HIGH"),
    ([True, 2048], "1 to 65535"),
    ([1024.5, 2048], "1 to 65535"),
    (1024, "LOW HIGH"),
    (None, "LOW HIGH"),
    ({"low": 1}, "LOW HIGH"),
])
def test_port_range_errors_name_option_value_and_rule(value, fragment):
    with pytest.raises(ValidationError) as err:
        parse_port_range(value, "port_range")
    message = str(err.value)
    assert message.startswith("port_range: ")
    assert repr(value) in message
    assert fragment in message


def test_port_list_normalised_like_the_kernel():
    # the kernel reads "40010-40019,40500,40020-40021" back as "40010-40021,40500"
    assert format_port_list(parse_port_list("40010-40019,40500,40020-40021")) == "40010-40021,40500"
    assert parse_port_list(["9000-9100", 8080, "8081"]) == ((8080, 8081), (9000, 9100))
    assert parse_port_list("") == ()
    assert parse_port_list([]) == ()
    assert parse_port_list(" 80 , 443 ") == ((80, 80), (443, 443))


@pytest.mark.parametrize("value", [
    "8080,,9000", "8080;9000", "9100-9000", "0", "65536", "80-", "-80", "a", "8080\n9000",
    [True], [1.5], [None], {"a": 1}, 8080, "8080 9000",
])
def test_port_list_errors(value):
    with pytest.raises(ValidationError) as err:
        parse_port_list(value, "reserved_ports")
    assert str(err.value).startswith("reserved_ports: ")


def test_interval_helpers():
    spans = parse_port_list("100-200,300")
    assert count_ports(spans) == 102
    assert intersect(spans, (150, 300)) == ((150, 200), (300, 300))
    assert contains(spans, 300) and not contains(spans, 250)
    assert format_port_range((1, 2)) == "1 2"


intervals = st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 50)).map(lambda t: (t[0], min(65535, t[0] + t[1]))),
                     max_size=30)


@given(intervals)
def test_normalise_is_idempotent_and_keeps_ports(spans):
    once = normalise_intervals(spans)
    assert normalise_intervals(once) == once
    ports = {p for a, b in spans for p in range(a, b + 1)}
    assert {p for a, b in once for p in range(a, b + 1)} == ports
    assert all(once[i][1] + 1 < once[i + 1][0] for i in range(len(once) - 1))


@given(intervals)
def test_port_list_text_round_trip(spans):
    text = format_port_list(normalise_intervals(spans))
    assert parse_port_list(text) == normalise_intervals(spans)


@given(st.integers(1, 65535), st.integers(1, 65535), st.sampled_from([" ", "\t", "-", " \t ", " - "]))
def test_port_range_text_round_trip(a, b, sep):
    low, high = min(a, b), max(a, b)
    assert parse_port_range("%d%s%d" % (low, sep, high)) == (low, high)


def test_ephemeral_flags():
    table = port_flags((40000, 40999), ((39990, 40004), (40500, 40500), (41000, 41010)))
    assert sum(table) == 1000 - 5 - 1
    assert not table[40004] and table[40005] and not table[40500] and not table[41000]
    assert sum(port_flags(None, ())) == 0


def test_start_count_range():
    assert start_count_range(49152, 16384) == (49152, 65535)
    assert start_count_range(60000, 16384) == (60000, 65535)  # capped
    assert start_count_range(50000, 0) == (50000, 49999)  # empty


@given(st.lists(st.tuples(st.integers(1, 65535), st.integers(0, 300)).map(lambda t: (t[0], min(65535, t[0] + t[1]))),
                max_size=6),
       st.integers(1, 65535), st.integers(-1, 2000))
def test_clip_usable_and_flags_agree(reserved, low, span):
    """One port set three ways: the clipped list, the usable count and the per-port table."""
    port_range = (low, min(65535, low + span))
    inside = clip(reserved, port_range)
    assert inside == normalise_intervals(inside)
    assert all(port_range[0] <= a <= b <= port_range[1] for a, b in inside)
    flags = port_flags(port_range, reserved)
    assert usable_ports(port_range, reserved) == sum(flags)
    for port in range(max(1, low - 2), min(65535, port_range[1] + 2) + 1, 7):
        expected = port_range[0] <= port <= port_range[1] and not contains(normalise_intervals(reserved), port)
        assert bool(flags[port]) == expected
        assert contains(inside, port) == (port_range[0] <= port <= port_range[1] and contains(reserved, port))
