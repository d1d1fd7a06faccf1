"""The analysis wing's shared pieces: usage_rules (one function per rule), usage_model's builders, and how a
process is named (usage_wording.process_text)."""

from __future__ import annotations

import socket

import pytest

from ansible_collections.tcpstack.tuning.plugins.module_utils import usage_rules as ur
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import (
    COUNT_FIELDS,
    DestinationCounts,
    identity,
    process_record,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_wording import process_text


def v6(text):
    return socket.inet_pton(socket.AF_INET6, text)


def test_a_mapped_pair_is_counted_with_ipv4():
    assert ur.unmap_pair(v6("::ffff:10.0.0.1"), v6("::ffff:10.0.0.2")) == (bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))


@pytest.mark.parametrize("local, remote", [("::ffff:10.0.0.1", "2001:db8::2"), ("2001:db8::1", "::ffff:10.0.0.2"),
                                           ("::1", "::1")])
def test_a_pair_not_both_mapped_stays_ipv6(local, remote):
    assert ur.unmap_pair(v6(local), v6(remote)) is None


@pytest.mark.parametrize("text, expected", [
    ("::ffff:10.0.0.1", (4, "10.0.0.1")), (" ::FFFF:10.0.0.1 ", (4, "10.0.0.1")), ("10.0.0.1", (4, "10.0.0.1")),
    ("2001:db8::1", (6, "2001:db8::1")), ("::ffff:1:2", (6, "::ffff:1:2")), (None, (4, "")),
])
def test_an_address_as_text_is_unmapped_the_same_way(text, expected):
    assert ur.unmap_text(text) == expected


@pytest.mark.parametrize("live, heir", [([], None), ([42], 42), ([42, 43], None)])
def test_only_a_sole_live_owner_inherits_time_wait(live, heir):
    assert ur.time_wait_heir(live) == heir


def test_worst_and_level():
    assert ur.worst([]) == "ok" and ur.worst(["ok", "critical", "warning"]) == "critical"
    assert [ur.level(u, 70, 90) for u in (None, 0.69, 0.7, 0.9)] == ["ok", "ok", "warning", "critical"]


def test_a_process_is_named_one_way_with_or_without_its_host():
    assert process_text(1234, "curl", "alice", "web.service") == "pid 1234 (curl, user alice, unit web.service)"
    assert process_text(7, None, container="abc") == "pid 7 (?, container abc)"
    assert process_text(42, "python", host="web") == "python (pid 42)@web"
    assert process_text(None, "python", host="web") == "python@web"


def test_the_records_read_by_name_and_as_a_mapping():
    counts = DestinationCounts(in_use=3, established=1, time_wait=2)
    assert counts.keys() == list(COUNT_FIELDS) and counts["time_wait"] == 2 and counts.get("nothing", 0) == 0
    with pytest.raises(KeyError):
        counts["nothing"]  # pylint: disable=pointless-statement
    record = process_record(identity(9, name="java", unit="app.service"), {(4, "a", 80): counts}, bound_inactive=1)
    assert record.pid == 9 and record["unit"] == "app.service" and record.user is None
    assert record.destinations[(4, "a", 80)] is counts and record.bound_inactive == 1
    assert process_record(9) == process_record(identity(9))
    with pytest.raises(TypeError):
        identity(9, colour="red")
