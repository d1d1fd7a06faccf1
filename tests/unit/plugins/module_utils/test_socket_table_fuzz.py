"""Fuzzing socket_table's parsers with hypothesis (issue 13): netlink messages and /proc/net/tcp lines.

Whatever the bytes, the netlink parser returns True/False or raises TableError, and the /proc parser counts or
refuses each line (Tally.bad_lines); neither lets IndexError, struct.error or ValueError out.  The runs are
deterministic (derandomize=True).  A coarse linear-time guard: a megabyte of either is parsed in well under a
second (the issue's bar for parsers of host output).
"""

from __future__ import annotations

import struct
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as hs

from ansible_collections.tcpstack.tuning.plugins.module_utils import socket_table as st
from ansible_collections.tcpstack.tuning.plugins.module_utils.ports import port_flags

FIXTURES = Path(__file__).resolve().parent / "fixtures"
DUMP = (FIXTURES / "busy_inet.bin").read_bytes()
DUMP6 = (FIXTURES / "busy_inet6.bin").read_bytes()
PROC = (FIXTURES / "busy_tcp.txt").read_bytes().split(b"\n")
FUZZ = settings(derandomize=True, max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))


def tally():
    return st.Tally(port_flags((1024, 65535), ()))


def parse_netlink(buf, family=st.AF_INET):
    try:
        done = st.tally_netlink(buf, family, tally())
    except st.TableError:
        return "refused"
    assert done in (True, False)
    return done


@FUZZ
@given(hs.binary(max_size=600))
def test_random_bytes(buf):
    parse_netlink(buf)


@FUZZ
@given(hs.integers(0, len(DUMP)), hs.sampled_from([st.AF_INET, st.AF_INET6]))
def test_truncated_dump(cut, family):
    parse_netlink((DUMP if family == st.AF_INET else DUMP6)[:cut], family)


@FUZZ
@given(hs.lists(hs.tuples(hs.integers(0, len(DUMP) - 1), hs.integers(0, 255)), min_size=1, max_size=8))
def test_corrupted_dump(flips):
    data = bytearray(DUMP)
    for offset, value in flips:
        data[offset] = value
    parse_netlink(bytes(data))


@FUZZ
@given(hs.integers(0, 0xFFFFFFFF), hs.integers(0, 0xFFFF), hs.binary(max_size=120))
def test_any_header(length, kind, body):
    parse_netlink(struct.pack("=IHHII", length, kind, 0, 1, 0) + body)


PROC_BYTES = hs.sampled_from([b"0", b"1", b"F", b"f", b"G", b":", b" ", b"\t", b"_", b"+", b"-", b"\xff", b"\x00",
                              b"0100007F", b":1F90", b" 06 ", b" 0A ", b"sl"])


@FUZZ
@given(hs.lists(hs.lists(PROC_BYTES, max_size=30).map(b"".join), max_size=10), hs.sampled_from([st.AF_INET, st.AF_INET6]))
def test_proc_lines(lines, family):
    counted = tally()
    st.tally_proc_lines(lines, family, counted, {})
    counted.tuples()
    counted.state_counts()
    assert counted.bad_lines <= len(lines)


@FUZZ
@given(hs.integers(0, len(PROC) - 1), hs.integers(0, 160), hs.binary(min_size=1, max_size=3))
def test_proc_line_mutated(index, offset, insert):
    line = PROC[index]
    counted = tally()
    st.tally_proc_lines([line[:offset] + insert + line[offset + 1:]], st.AF_INET, counted, {})
    counted.tuples()
    counted.state_counts()


@FUZZ
@given(hs.binary(max_size=300), hs.integers(1, 64))
def test_proc_chunks_any_bytes(data, size):
    counted = tally()
    st.tally_proc_chunks([data[i:i + size] for i in range(0, len(data), size)], st.AF_INET6, counted)
    counted.tuples()


def _seconds(func):
    started = time.process_time()
    func()
    return time.process_time() - started


def test_linear_time_guard():
    """A megabyte of each, good or bad, parses in well under a second."""
    megabyte = 1 << 20
    good = b"\n".join(PROC[1:]) + b"\n"
    lines = (good * (megabyte // len(good) + 1))[:megabyte]
    assert _seconds(lambda: st.tally_proc_chunks([lines], st.AF_INET, tally())) < 1.0
    one_line = b"   0: " + b" " * megabyte + b"x"
    assert _seconds(lambda: st.tally_proc_chunks([one_line], st.AF_INET, tally())) < 1.0
    body = DUMP[:-20]  # the messages without NLMSG_DONE
    dump = body * (megabyte // len(body) + 1)
    assert _seconds(lambda: st.tally_netlink(dump, st.AF_INET, tally())) < 1.0
    empty = b"\x00" * megabyte  # a header of length 0: refused at once
    assert _seconds(lambda: parse_netlink(empty)) < 1.0
