"""linux_trace_sample: the events asked of the kernel, and how a traced sample joins the final dump; the caps of
linux_attribution's sampling maps."""

from __future__ import annotations

import socket

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_attribution import Attribution
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_trace import parse_lines
from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_trace_sample import (
    HostView,
    buffer_kb,
    trace_events,
    traced_processes,
)
from ansible_collections.tcpstack.tuning.plugins.module_utils.usage_model import identity
from tests.unit.plugins.module_utils.test_linux_trace import (
    DEST,
    LOOP4,
    STATE,
    FakeHost,
    connect,
    fork,
    leave,
    line,
)

from ansible_collections.tcpstack.tuning.plugins.module_utils.linux_trace import TraceTally


class FakeProcesses:
    scans = 1
    unreadable = {}

    def describe(self, pid):
        return identity(pid, name="live%d" % pid)


def traced(lines, alive, time_wait=0):
    tally = TraceTally(FakeHost(alive=alive))
    parse_lines("\n".join(lines) + "\n", tally)
    attribution = Attribution()
    if time_wait:
        attribution.add_time_wait({(4, socket.inet_pton(socket.AF_INET, "127.0.0.2"), LOOP4, 8080): (time_wait,
                                                                                                     time_wait)})
    return traced_processes(attribution, FakeProcesses(), tally, 2.0)


def test_the_filter_keeps_client_closes_of_the_range_only():
    events = dict((name, condition) for name, condition, dummy in trace_events((40000, 40999)))
    state = events["sock/inet_sock_set_state"]
    assert "sport >= 40000 && sport <= 40999" in state and "newstate == 2" in state
    assert events["syscalls/sys_exit_connect"] == "ret == -99"
    assert 512 <= buffer_kb(1) <= 8192 and buffer_kb(1024) == 512


def test_time_wait_of_the_final_dump_goes_to_who_closed_first_exactly():
    lines = [connect("c", 10, 1.0),
             line("c", 10, 1.1, "inet_sock_set_state", STATE % (40001, "ESTABLISHED", "FIN_WAIT1")),
             line("<idle>", 0, 1.2, "inet_sock_set_state", STATE % (40001, "FIN_WAIT2", "CLOSE"), tid=0)]
    records, info, unreadable = traced(lines, {10: 0.0}, time_wait=3)
    assert info["method"] == "tracepoints" and info["sampled_seconds"] == 2.0 and unreadable == []
    (record,) = records
    counts = record.destinations[DEST]
    assert record.pid == 10 and record.evidence == "exact" and record.name == "proc10"
    seen = (counts.new_connections, counts.time_wait_entered, counts.time_wait, counts.time_wait_inferred)
    assert seen == (1, 1, 1, 0)
    assert info["unattributed"][DEST].time_wait == 2  # older TIME_WAITs: no live owner to infer them to
    assert record.failed_connections == 0


def test_a_process_gone_is_its_own_record_never_the_live_pid():
    lines = [connect("old", 20, 1.0), leave("old", 20, 1.1), fork("init", 1, 20, 1.5), connect("new", 20, 1.6)]
    records, info, dummy = traced(lines, {1: 0.0, 20: 0.5})
    assert sorted((record.pid, record.destinations[DEST].new_connections) for record in records) == [(20, 1), (20, 1)]
    assert len({id(record) for record in records}) == 2


def test_a_spawn_loop_record():
    lines = []
    for child in (101, 102):
        lines += [fork("sh", 100, child, 1.0), connect("curl", child, 1.01), leave("curl", child, 1.02)]
    (record,), info, dummy = traced(lines, {100: 0.5})
    assert record.pid == 100 and record.spawned == {"command": "curl", "count": 2}
    assert record.destinations[DEST].new_connections == 2


def test_ports_bound_before_connect_are_seen_during_the_sample():
    # no live dump sees a socket bound for a moment: the trace's connect from a bound port counts it
    lines = [line("b", 30, 1.0, "inet_sock_set_state", STATE % (port, "CLOSE", "SYN_SENT")) for port in (40001, 0)]
    tally = TraceTally(FakeHost(alive={30: 0.5}), ephemeral=(40000, 40999))
    parse_lines("\n".join(lines) + "\n", tally)
    (record,), info, dummy = traced_processes(Attribution(), FakeProcesses(), tally, 2.0)
    assert (record.bound_inactive, record.bound_inactive_seen) == (0, 1)
    assert record.destinations[DEST].new_connections == 2


def test_the_sampling_maps_are_capped():
    attribution = Attribution(max_sockets=2)
    key = bytes(34)
    for cookie in range(5):
        attribution.observe_live(2, 1, b"\x1f\x90" + key[2:], cookie.to_bytes(8, "little"), 0, 0, 100 + cookie)
    assert len(attribution.seen) == 2 and attribution.capped["seen"] == 3
    assert len(attribution.pending) == 2 and "pending" not in attribution.capped


class FakeLinuxHost:
    def net_namespace(self, pid=None):
        if pid == 99:
            raise FileNotFoundError(2, "gone")
        return "net:[1]" if pid is None else "net:[%d]" % pid


def test_the_host_view_identifies_through_the_process_table():
    class Identifying(FakeProcesses):
        def identify(self, pid):
            return None if pid == 99 else dict(identity(pid, name="p"), start_time=1.5)

    view = HostView(FakeLinuxHost(), Identifying())
    assert view.own_netns == "net:[1]" and view.netns(7) == "net:[7]" and view.netns(99) is None
    assert view.identify(7)["start_time"] == 1.5 and view.identify(99) is None
